"""TaylorSeer-DiT/fidelity.py and evaluate.py: torch-fidelity metrics in the digits feature space, input formats,
the offline Inception weights check and the CLI."""

import json
import math
import os
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch_fidelity
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from threadpoolctl import threadpool_limits
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from common import report
from common.checkpoint import CheckpointError
from taylorseer_dit import fidelity
from taylorseer_dit.fidelity import (
    DIGITS_EXTRACTOR_NAME,
    INCEPTION_WEIGHTS_ENV,
    DigitsFeatureExtractor,
    compute_metrics,
    digits_uint8,
    open_images,
    register_digits_extractor,
)

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "TaylorSeer-DiT" / "evaluate.py"
INCEPTION_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
)
ALL_METRICS = ("fid", "isc", "kid", "prc")
ALL_KEYS = {"fid", "isc_mean", "isc_std", "kid_mean", "kid_std", "precision", "recall", "f_score"}
# KID's default 100 subsets of up to 1000 images cost seconds each time; 100 images per subset keep tests fast.
FAST_KID = 100


@pytest.fixture(scope="module", autouse=True)
def single_threaded():
    """One thread for torch and BLAS: on two busy cores, oversubscribed BLAS threads made KID ~100x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    return digits_uint8()


@pytest.fixture(scope="module")
def halves(digits) -> tuple[torch.Tensor, torch.Tensor]:
    order = torch.randperm(len(digits), generator=torch.Generator().manual_seed(0))
    return digits[order[: len(digits) // 2]], digits[order[len(digits) // 2 :]]


def noise_images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 1, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def digits_metrics(samples, reference="digits", metrics=("fid",), **kwargs) -> dict[str, float]:
    return compute_metrics(samples, reference, metrics=metrics, feature_extractor="digits", **kwargs)


def write_pngs(images: torch.Tensor, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        Image.fromarray(image[0].numpy()).save(folder / f"{i:06d}.png")
    return folder


def test_digits_extractor_is_registered_idempotently():
    assert FEATURE_EXTRACTORS_REGISTRY[DIGITS_EXTRACTOR_NAME] is DigitsFeatureExtractor
    assert register_digits_extractor() == register_digits_extractor() == DIGITS_EXTRACTOR_NAME
    # A reloaded module defines a new class of the same qualified name: it takes over the entry.
    stale = type("DigitsFeatureExtractor", (DigitsFeatureExtractor,), {"__module__": DigitsFeatureExtractor.__module__})
    FEATURE_EXTRACTORS_REGISTRY[DIGITS_EXTRACTOR_NAME] = stale
    try:
        register_digits_extractor()
        assert FEATURE_EXTRACTORS_REGISTRY[DIGITS_EXTRACTOR_NAME] is DigitsFeatureExtractor
        # Someone else's extractor under our name is an error, not silently replaced.
        FEATURE_EXTRACTORS_REGISTRY[DIGITS_EXTRACTOR_NAME] = type("Other", (DigitsFeatureExtractor,), {})
        with pytest.raises(ValueError, match="already has a feature extractor"):
            register_digits_extractor()
    finally:
        FEATURE_EXTRACTORS_REGISTRY[DIGITS_EXTRACTOR_NAME] = DigitsFeatureExtractor


def test_digits_extractor_features(digits):
    extractor = DigitsFeatureExtractor(DIGITS_EXTRACTOR_NAME, ["128", "logits_unbiased", "logits"])
    gray = digits[:8]
    features, unbiased, logits = extractor(gray)
    assert features.shape == (8, 128) and unbiased.shape == logits.shape == (8, 10)
    assert torch.allclose(logits - unbiased, extractor.classifier.head.bias.expand(8, -1), atol=1e-5)
    # Three repeated channels (what the datasets serve) give the same features as one.
    assert torch.equal(extractor(gray.expand(-1, 3, -1, -1))[0], features)
    assert DigitsFeatureExtractor.get_default_feature_layer_for_metric("isc") == "logits_unbiased"
    assert DigitsFeatureExtractor.get_default_feature_layer_for_metric("fid") == "128"


def test_fid_orders_same_halves_and_noise(digits, halves):
    # Measured: same 0.0 (-0.0), halves 28.1, noise vs digits 2201.
    same = digits_metrics("digits", "digits")["fid"]
    split = digits_metrics(*halves)["fid"]
    noise = digits_metrics(noise_images(len(digits) // 2))["fid"]
    assert abs(same) < 1e-3
    assert 5 < split < 60
    assert noise > 500 and noise > 20 * split


def test_all_metrics_keys_and_magnitudes(halves):
    real = digits_metrics(*halves, metrics=ALL_METRICS, kid_subset_size=FAST_KID)
    noise = digits_metrics(noise_images(300), metrics=ALL_METRICS, kid_subset_size=FAST_KID)
    assert set(real) == set(noise) == ALL_KEYS
    assert all(math.isfinite(v) for v in [*real.values(), *noise.values()])
    # Measured: ISC 9.3 on real digits (10 classes at most), 2.5 on noise; KID 22 vs 6700; precision 0.91 vs 0.03.
    assert real["isc_mean"] > 8 and noise["isc_mean"] < 4
    assert noise["kid_mean"] > 20 * max(real["kid_mean"], 1.0)
    assert real["precision"] > 0.7 and real["recall"] > 0.7 and noise["precision"] < 0.2


def test_isc_alone_needs_no_reference(digits):
    scores = compute_metrics(digits, None, metrics=["isc"], feature_extractor="digits")
    assert set(scores) == {"isc_mean", "isc_std"} and scores["isc_mean"] > 8


def test_small_sets_adapt_kid_isc_and_prc(digits):
    # torch-fidelity's defaults fail here: KID subsets of 1000 > 5 images, 10 ISC splits of 5 images (NaN), and the
    # 3rd neighbour of precision/recall among 3 images.
    five = digits_metrics(digits[:5], metrics=ALL_METRICS)
    assert set(five) == ALL_KEYS and all(math.isfinite(v) for v in five.values())
    three = digits_metrics(digits[:3], digits[3:6], metrics=ALL_METRICS)
    assert all(math.isfinite(v) for v in three.values())
    with pytest.raises(ValueError, match="at least 2 images"):
        digits_metrics(digits[:1])
    with pytest.raises(ValueError, match="KID subset size"):
        digits_metrics(digits[:5], metrics=["kid"], kid_subset_size=6)


def test_npz_png_folder_and_tensor_give_identical_metrics(digits, tmp_path):
    images = torch.cat([digits[100:130], noise_images(10)])  # a mix, so that no metric is trivially saturated
    np.savez(tmp_path / "gray.npz", images.permute(0, 2, 3, 1).numpy())
    np.savez(tmp_path / "rgb.npz", arr_0=images.expand(-1, 3, -1, -1).permute(0, 2, 3, 1).numpy())
    folder = write_pngs(images, tmp_path / "pngs")
    (folder / "._000000.png").write_bytes(b"macOS metadata")  # hidden files are not images
    reference = digits[::4]
    results = [
        digits_metrics(source, reference, metrics=ALL_METRICS, kid_subset_size=20)
        for source in (images, tmp_path / "gray.npz", str(tmp_path / "rgb.npz"), folder)
    ]
    assert all(result == results[0] for result in results[1:])


def test_unreadable_sources_are_readable_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    np.savez(tmp_path / "other.npz", images=np.zeros((4, 16, 16, 3), np.uint8))
    np.savez(tmp_path / "float.npz", np.zeros((4, 16, 16, 3), np.float32))
    (tmp_path / "corrupt.npz").write_bytes(b"not a zip")
    write_pngs(torch.zeros(2, 1, 16, 16, dtype=torch.uint8), tmp_path / "mixed")
    Image.new("L", (20, 20)).save(tmp_path / "mixed" / "big.png")
    write_pngs(torch.zeros(2, 1, 16, 16, dtype=torch.uint8), tmp_path / "broken")
    (tmp_path / "broken" / "000001.png").write_bytes(b"not a png")
    cases = {
        tmp_path / "empty": "no PNG/JPG/JPEG images",
        tmp_path / "mixed": "images of two sizes",
        tmp_path / "broken": "damaged image file",
        tmp_path / "corrupt.npz": "could not be read as an .npz",
        tmp_path / "other.npz": "no 'arr_0' array",
        tmp_path / "float.npz": "must be uint8",
        tmp_path / "missing": "not found",
    }
    for source, message in cases.items():
        with pytest.raises(ValueError, match=message):
            open_images(source, "samples")
    with pytest.raises(ValueError, match="uint8"):
        open_images(torch.zeros(4, 1, 16, 16))
    with pytest.raises(ValueError, match="unsupported device type .meta.; use cpu or cuda"):
        digits_metrics(tmp_path / "empty", device="meta")


def test_digits_reference_is_cached_only_in_the_given_folder(halves, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    uncached = digits_metrics(halves[0])
    assert not (tmp_path / "torch_home").exists()
    cache = tmp_path / "cache"
    first = digits_metrics(halves[0], cache_dir=cache)
    (entry,) = cache.iterdir()  # one file for the digits reference; the samples are never cached
    assert entry.name.startswith(f"taylorseer-digits-{DIGITS_EXTRACTOR_NAME}-") and entry.suffix == ".safetensors"
    written = entry.stat().st_mtime_ns

    def no_extraction(*args, **kwargs):
        raise AssertionError("the cached reference was extracted again")

    extract = fidelity.get_featuresdict_from_dataset
    monkeypatch.setattr(fidelity, "get_featuresdict_from_dataset", no_extraction)
    assert digits_metrics("digits", "digits", cache_dir=cache)["fid"] == pytest.approx(0, abs=1e-3)
    monkeypatch.setattr(fidelity, "get_featuresdict_from_dataset", extract)
    assert digits_metrics(halves[0], cache_dir=cache) == first == uncached
    assert list(cache.iterdir()) == [entry] and entry.stat().st_mtime_ns == written  # read back, nothing rewritten


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
def test_our_pipeline_gives_torch_fidelity_calculate_metrics_exactly(halves):
    """compute_metrics runs torch-fidelity's extraction and metric functions itself (so that its pickle cache is
    never reached): the numbers must be those of torch-fidelity's own entry point."""
    samples, reference = halves[0][:300], halves[1][:400]
    ours = digits_metrics(samples, reference, metrics=ALL_METRICS, kid_subset_size=FAST_KID)
    theirs = torch_fidelity.calculate_metrics(
        input1=fidelity.UInt8ImageDataset(samples), input2=fidelity.UInt8ImageDataset(reference), fid=True, isc=True,
        kid=True, prc=True, feature_extractor=DIGITS_EXTRACTOR_NAME, batch_size=64, isc_splits=10,
        kid_subset_size=FAST_KID, prc_neighborhood=3, cache=False, cuda=False, verbose=False,
        feature_extractor_weights_path=str(fidelity.CLASSIFIER_PATH),
    )  # fmt: skip
    assert ours == {name: float(theirs[key]) for key, name in fidelity.RESULT_KEYS.items()}


def safe_metadata(path: Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as file:
        return file.metadata()


class PlantedPayload:
    """Unpickling it creates ``marker``: what a hostile file in a cache folder could do with weights_only=False."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_planted_pickles_in_the_cache_folder_never_run(halves, tmp_path, monkeypatch, capsys):
    uncached = digits_metrics(halves[0])
    honest = tmp_path / "honest"
    digits_metrics(halves[0], cache_dir=honest)
    names = sorted(p.name for p in honest.iterdir())
    # Every name a cache run writes, and the names torch-fidelity's own cache would look for.
    names += [f"digits-{DIGITS_EXTRACTOR_NAME}-features-128.pt", f"digits-{DIGITS_EXTRACTOR_NAME}-stat-fid-128.pt"]
    planted, marker = tmp_path / "planted", tmp_path / "code-ran"
    planted.mkdir()
    for name in names:
        torch.save(PlantedPayload(marker), planted / name)
    loads = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *args, **kwargs: loads.append(args) or real_load(*args, **kwargs))
    capsys.readouterr()

    assert digits_metrics(halves[0], cache_dir=planted) == uncached
    assert not marker.exists() and loads == []
    err = capsys.readouterr().err
    assert err.count("is not a readable safetensors file") == 1 and "extracting the features again" in err
    # The planted file at our name was replaced by intact features, which the next run reads without a warning.
    assert digits_metrics(halves[0], cache_dir=planted) == uncached
    assert capsys.readouterr().err == "" and not marker.exists()


def test_damaged_cache_files_are_replaced_with_one_warning(halves, tmp_path, capsys):
    cache = tmp_path / "cache"
    expected = digits_metrics(halves[0], cache_dir=cache)
    (entry,) = cache.iterdir()
    intact = entry.read_bytes()

    stored = {name: tensor.clone() for name, tensor in load_file(entry).items()}  # not a view of the file
    metadata = safe_metadata(entry)
    edited = {**stored, "128": stored["128"] * 1.5}
    cases = {
        "fails the checksum of layer 128": lambda: entry.write_bytes(
            intact[:-4] + bytes(b ^ 0xFF for b in intact[-4:])
        ),
        "is not a readable safetensors file": lambda: entry.write_bytes(intact[: len(intact) // 2]),
        "holds torch.float32 (10, 128) for layer 128": lambda: save_file(
            {"128": stored["128"][:10].contiguous()}, entry, metadata
        ),
        "was written for other images, weights or settings": lambda: save_file(
            stored, entry, {**metadata, "key": "0" * 64}
        ),
        "fails the checksum of layer 128 (damaged or edited)": lambda: save_file(edited, entry, metadata),
    }
    for problem, damage in cases.items():
        damage()
        capsys.readouterr()
        assert digits_metrics(halves[0], cache_dir=cache) == expected, problem
        err = capsys.readouterr().err
        assert err.count("warning:") == 1 and problem in err and str(entry) in err, err
        # Replaced by the intact features (safetensors orders its header at random: compare the content).
        replaced = load_file(entry)
        assert replaced.keys() == stored.keys() and torch.equal(replaced["128"], stored["128"]), problem
        assert safe_metadata(entry) == metadata, problem

    entry.unlink()
    entry.mkdir()
    with pytest.raises(ValueError, match="is a folder: move it away or choose another --cache-dir"):
        digits_metrics(halves[0], cache_dir=cache)


def test_inception_without_weights_names_the_url_and_env_var(digits, tmp_path, monkeypatch):
    missing = tmp_path / "nowhere" / "inception.pth"
    monkeypatch.setenv(INCEPTION_WEIGHTS_ENV, str(missing))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))

    def no_download(*args, **kwargs):
        raise AssertionError("torch-fidelity was reached: it would have downloaded the weights")

    monkeypatch.setattr(torch_fidelity, "calculate_metrics", no_download)
    monkeypatch.setattr(fidelity, "create_feature_extractor", no_download)
    monkeypatch.setattr("torch_fidelity.feature_extractor_inceptionv3.load_state_dict_from_url", no_download)
    with pytest.raises(CheckpointError) as info:
        compute_metrics(digits[:8], digits[8:16], metrics=["fid"])
    message = str(info.value)
    assert INCEPTION_URL in message and INCEPTION_WEIGHTS_ENV in message and str(missing) in message
    assert not (tmp_path / "torch_home").exists()


class FakeInception(FeatureExtractorBase):
    """Stands in for InceptionV3 (whose weights are a download): 8 pixels of each image as its "2048" features."""

    def __init__(self, name, features_list, **kwargs):
        super().__init__(name, features_list)

    @staticmethod
    def get_provided_features_list():
        return ("2048",)

    def forward(self, images):
        return (images[:, 0].flatten(1)[:, 100:108].float(),)


def test_inception_weights_path_reaches_torch_fidelity(digits, tmp_path, monkeypatch):
    seen = {}

    def fake_create(name, layers, cuda=True, **kwargs):
        seen.update(kwargs, name=name, layers=layers, cuda=cuda)
        return FakeInception(name, layers)

    monkeypatch.setattr(fidelity, "create_feature_extractor", fake_create)
    weights = tmp_path / "inception.pth"
    torch.save({"fc.weight": torch.zeros(1008, 2048)}, weights)
    result = compute_metrics(digits[:8], digits[8:16], metrics=["fid", "prc"], inception_weights=weights)
    assert set(result) == {"fid", "precision", "recall", "f_score"} and result["fid"] > 0
    assert seen["name"] == "inception-v3-compat"  # also for prc, whose own default would be VGG16
    assert seen["layers"] == ["2048"] and seen["feature_extractor_weights_path"] == str(weights)
    assert seen["cuda"] is False and "cache" not in seen
    torch.save({"fc.weight": torch.zeros(10, 128)}, weights)
    with pytest.raises(CheckpointError, match="Not torch-fidelity's InceptionV3 weights"):
        compute_metrics(digits[:8], digits[8:16], metrics=["fid"], inception_weights=weights)


def run_cli(*argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(SCRIPT), *argv], capture_output=True, text=True, env=env, cwd=ROOT)


def test_cli_writes_json_and_prints_a_table(digits, tmp_path):
    folder = write_pngs(digits[:24], tmp_path / "samples")
    result = run_cli("--samples", str(folder), "--reference", "digits", "--feature-extractor", "digits",
                     "--metrics", *ALL_METRICS, "--device", "cpu")  # fmt: skip
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout.strip().splitlines()[-1])
    assert ALL_KEYS <= set(record) and record["num_samples"] == 24 and record["num_reference"] == len(digits)
    assert json.loads((tmp_path / "samples-metrics.json").read_text()) == record
    assert "| metric | value |" in result.stdout and "| fid |" in result.stdout
    # The table is also saved beside the JSON, by the shared report writer.
    table = (tmp_path / "samples-metrics.md").read_text().splitlines()
    assert table[:2] == ["| metric | value |", "| --- | ---: |"] and table[2] == f"| fid | {record['fid']:.6g} |"
    assert len(table) == 2 + len(ALL_KEYS) and "\n".join(table) in result.stdout


def test_dit_uses_the_shared_light_report_helpers():
    """One copy of the device check and the report writer (common/report.py), and DiT's evaluation does not pull in
    torchmetrics for them."""
    from taylorseer_dit import evaluate

    assert fidelity.resolve_device is report.resolve_device
    assert evaluate.save_report is report.save_report and evaluate.markdown_table is report.markdown_table
    code = "import sys, taylorseer_dit.evaluate; sys.exit('torchmetrics' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True).returncode == 0


def test_cuda_without_a_gpu_is_a_value_error(digits, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="cuda:1: no CUDA GPU is visible on this machine; use --device cpu"):
        compute_metrics(digits[:8], digits[8:16], metrics=["fid"], device="cuda:1")
    with pytest.raises(ValueError, match="unsupported device type 'meta'"):
        compute_metrics(digits[:8], digits[8:16], metrics=["fid"], device="meta")


def test_cli_empty_folder_is_one_readable_error(tmp_path, monkeypatch, capsys):
    # In-process (run as __main__) to save a second interpreter start: one error line on stderr, exit code 2.
    (tmp_path / "empty").mkdir()
    argv = [
        "evaluate.py",
        "--samples",
        str(tmp_path / "empty"),
        "--reference",
        "digits",
        "--feature-extractor",
        "digits",
    ]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as info:
        runpy.run_path(str(SCRIPT), run_name="__main__")
    assert info.value.code == 2
    assert capsys.readouterr().err == f"error: no PNG/JPG/JPEG images in folder {tmp_path / 'empty'}\n"
    assert not list(tmp_path.glob("*.json")) and not list(tmp_path.glob("*.md"))


def test_default_output_is_next_to_the_samples(tmp_path):
    from taylorseer_dit.evaluate import default_output

    (tmp_path / "run.npz").touch()
    (tmp_path / "run").mkdir()
    assert default_output(str(tmp_path / "run.npz")) == tmp_path / "run-metrics.json"
    assert default_output(str(tmp_path / "run") + "/") == tmp_path / "run-metrics.json"
    assert fidelity.DEFAULT_INCEPTION_WEIGHTS.name == INCEPTION_URL.rsplit("/", 1)[1]
