"""TaylorSeer-FLUX/evaluate.py end to end on small PNG folders: paired metrics against hand-computed values, CLIP
score and (a stand-in for) ImageReward of candidate and reference, unmatched files, and bad input ending in one
``error:`` line with exit code 2."""

import json
import math
import runpy
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_testing import assert_refused
from PIL import Image
from test_quality_metrics import save_random_lpips_weights
from tiny_text_models import save_tiny_clip_model

from common.quality_metrics import ClipScorer
from taylorseer_flux import evaluate

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "TaylorSeer-FLUX" / "evaluate.py"
PROMPTS = ["a red cat on a table", "a dog in the snow", "a boat on the lake at sunset", "an old castle in the forest"]
OFFSETS = (2, 4, 8, 16)  # candidate image i = reference image i + OFFSETS[i]: PSNR = 20 log10(255 / d)
SIZE = 32


@pytest.fixture(autouse=True)
def no_default_metric_models(tmp_path_factory, monkeypatch) -> None:
    """Metric models exist only where a test names them: no env vars, and empty default places (pretrained_models/
    under the working directory, the torch hub cache), so the unnamed ones are skipped with a warning."""
    for env in ("TAYLORSEER_CLIP_MODEL", "TAYLORSEER_IMAGE_REWARD", "TAYLORSEER_LPIPS_WEIGHTS"):
        monkeypatch.delenv(env, raising=False)
    empty = tmp_path_factory.mktemp("empty-cwd")
    monkeypatch.setenv("TORCH_HOME", str(empty / "torch-home"))
    monkeypatch.chdir(empty)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    save_tiny_clip_model(root / "clip")
    save_random_lpips_weights(root / "alexnet-owt-7be5be79.pth")
    return {"clip": root / "clip", "lpips": root / "alexnet-owt-7be5be79.pth"}


def reference_images(n: int = len(PROMPTS)) -> np.ndarray:
    """(N, H, W, 3) uint8 in 0..199, so that adding the offsets never clips."""
    return np.random.default_rng(0).integers(0, 200, (n, SIZE, SIZE, 3), dtype=np.uint8)


def write_run(folder: Path, images: np.ndarray, prompts: list[str] | None = PROMPTS) -> Path:
    """A folder as sample.py writes it: {index:05d}.png and metadata.jsonl."""
    folder.mkdir(parents=True)
    for index, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{index:05d}.png")
    if prompts is not None:
        lines = [json.dumps({"index": i, "prompt": p, "seed": i}) for i, p in enumerate(prompts[: len(images)])]
        (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture
def runs(tmp_path) -> dict[str, Path]:
    reference = reference_images()
    offsets = np.array(OFFSETS, dtype=np.uint8).reshape(-1, 1, 1, 1)
    return {
        "reference": write_run(tmp_path / "full", reference),
        "shifted": write_run(tmp_path / "taylorseer", reference + offsets),
        "same": write_run(tmp_path / "copy", reference),
    }


def run_main(*argv: str) -> dict:
    return evaluate.main(evaluate.build_parser().parse_args([*argv, "--device", "cpu", "--no-progress"]))


def run_script(monkeypatch, capsys, *argv: str) -> tuple[int, str]:
    """The script as `python evaluate.py ...` would run it, in-process; returns its exit code and stderr."""
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), *argv, "--device", "cpu", "--no-progress"])
    with pytest.raises(SystemExit) as info:
        runpy.run_path(str(SCRIPT), run_name="__main__")
    return info.value.code, capsys.readouterr().err


def uint8_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2)


def test_end_to_end_metrics_json_and_markdown(runs, models, tmp_path, capsys):
    output = tmp_path / "out" / "flux.json"
    record = run_main(
        "--reference-dir", str(runs["reference"]),
        "--candidate-dir", str(runs["shifted"]), str(runs["same"]),
        "--clip-model", str(models["clip"]),
        "--lpips-weights", str(models["lpips"]),
        "--batch-size", "3",
        "--output", str(output),
    )  # fmt: skip
    assert json.loads(output.read_text()) == record
    shifted, same = record["candidates"]
    assert shifted["num_pairs"] == same["num_pairs"] == 4
    assert shifted["psnr"] == pytest.approx(np.mean([20 * math.log10(255 / d) for d in OFFSETS]), abs=1e-4)
    assert [r["psnr"] for r in shifted["per_image"]] == pytest.approx([20 * math.log10(255 / d) for d in OFFSETS])
    assert 0 < shifted["ssim"] < 1 and shifted["lpips"] > 0
    assert same["psnr"] == 100.0 and same["ssim"] == pytest.approx(1.0, abs=1e-6) and same["lpips"] == 0.0
    # CLIP score: the candidate's and the reference's, each the mean over the pairs of ClipScorer's values.
    scorer = ClipScorer(models["clip"])
    reference = uint8_tensor(reference_images())
    candidate = uint8_tensor(reference_images() + np.array(OFFSETS, dtype=np.uint8).reshape(-1, 1, 1, 1))
    assert shifted["clip_score"] == pytest.approx(float(scorer(candidate, PROMPTS).mean()), abs=1e-5)
    assert shifted["reference_clip_score"] == pytest.approx(float(scorer(reference, PROMPTS).mean()), abs=1e-5)
    assert same["clip_score"] == pytest.approx(same["reference_clip_score"], abs=1e-5)
    assert record["reference"] == {
        "num_images": 4,
        "clip_score": pytest.approx(shifted["reference_clip_score"]),
        "image_reward": None,
    }
    # ImageReward is not at its default place (nor installed here): one warning, null values, the rest computed.
    assert shifted["image_reward"] is None and shifted["reference_image_reward"] is None
    err = capsys.readouterr().err
    assert "ImageReward skipped" in err and "pip install image-reward" in err
    markdown = output.with_suffix(".md").read_text().splitlines()
    assert markdown[0] == "| run | pairs | ImageReward ↑ | CLIP ↑ | PSNR ↑ | SSIM ↑ | LPIPS ↓ |"
    assert markdown[2] == f"| reference: full | 4 | – | {record['reference']['clip_score']:.3f} | – | – | – |"
    assert markdown[3] == (
        f"| taylorseer | 4 | – | {shifted['clip_score']:.3f} | {shifted['psnr']:.3f} | {shifted['ssim']:.4f} | "
        f"{shifted['lpips']:.4f} |"
    )
    assert markdown[4] == f"| copy | 4 | – | {same['clip_score']:.3f} | 100.000 | 1.0000 | 0.0000 |"


def test_unmatched_files_are_listed_and_skipped(runs, tmp_path, capsys):
    (runs["shifted"] / "00003.png").unlink()
    Image.fromarray(reference_images(1)[0]).save(runs["shifted"] / "00099.png")
    record = run_main(
        "--reference-dir", str(runs["reference"]), "--candidate-dir", str(runs["shifted"]),
    )  # fmt: skip
    candidate = record["candidates"][0]
    assert candidate["num_pairs"] == 3
    assert candidate["only_in_reference"] == ["00003.png"] and candidate["only_in_candidate"] == ["00099.png"]
    assert candidate["psnr"] == pytest.approx(np.mean([20 * math.log10(255 / d) for d in OFFSETS[:3]]), abs=1e-4)
    # Without LPIPS weights or a CLIP model, their metrics are null and PSNR/SSIM still run.
    assert candidate["lpips"] is None and candidate["clip_score"] is None and candidate["ssim"] > 0
    err = capsys.readouterr().err
    assert "only in the reference folder, not scored: 00003.png" in err
    assert "only in the candidate folder, not scored: 00099.png" in err
    assert "alexnet-owt-7be5be79.pth" in err and "download.pytorch.org" in err
    assert "clip-vit-large-patch14" in err


def test_prompt_file_gives_prompts_in_index_order(runs, models, tmp_path):
    for folder in runs.values():
        (folder / "metadata.jsonl").unlink()
    prompt_file = tmp_path / "prompts.txt"
    prompt_file.write_text("\n".join(PROMPTS) + "\n\n")
    record = run_main(
        "--reference-dir", str(runs["reference"]), "--candidate-dir", str(runs["shifted"]),
        "--prompt-file", str(prompt_file), "--clip-model", str(models["clip"]),
    )  # fmt: skip
    candidate = uint8_tensor(reference_images() + np.array(OFFSETS, dtype=np.uint8).reshape(-1, 1, 1, 1))
    expected = ClipScorer(models["clip"])(candidate, PROMPTS).tolist()
    assert [r["clip_score"] for r in record["candidates"][0]["per_image"]] == pytest.approx(expected, abs=1e-5)
    assert record["prompts"] == str(prompt_file)


def test_image_reward_scores_candidate_and_reference_offline(runs, tmp_path, monkeypatch):
    """A stand-in for the image-reward package's model: the scoring, loading and averaging paths are ours."""
    import huggingface_hub.constants

    class FakeImageReward(torch.nn.Module):
        def __init__(self, med_config: str, device: str) -> None:
            super().__init__()
            assert Path(med_config).name == "med_config.json"
            assert huggingface_hub.constants.HF_HUB_OFFLINE  # BLIP's tokenizer may only come from the cache
            self.scale = torch.nn.Parameter(torch.zeros(()))

        def score(self, prompt: str, image: Image.Image) -> float:
            # The decoded image, never a path to open again (the package takes both).
            assert isinstance(image, Image.Image) and image.mode == "RGB"
            pixels = np.asarray(image, dtype=np.float64)
            return float(self.scale) * pixels.mean() / 255 + len(prompt) / 100

    module = types.ModuleType("ImageReward.ImageReward")
    module.ImageReward = FakeImageReward
    monkeypatch.setitem(sys.modules, "ImageReward", types.ModuleType("ImageReward"))
    monkeypatch.setitem(sys.modules, "ImageReward.ImageReward", module)
    weights = tmp_path / "ImageReward" / "ImageReward.pt"
    weights.parent.mkdir()
    torch.save({"scale": torch.tensor(2.0)}, weights)
    (weights.parent / "med_config.json").write_text("{}")
    offline_before = huggingface_hub.constants.HF_HUB_OFFLINE
    record = run_main(
        "--reference-dir", str(runs["reference"]), "--candidate-dir", str(runs["shifted"]),
        "--image-reward", str(weights),
    )  # fmt: skip
    assert huggingface_hub.constants.HF_HUB_OFFLINE == offline_before  # restored after loading

    def expected(images: np.ndarray) -> float:
        return float(np.mean([2 * im.mean() / 255 + len(p) / 100 for im, p in zip(images, PROMPTS, strict=True)]))

    candidate = record["candidates"][0]
    shifted = reference_images() + np.array(OFFSETS, dtype=np.uint8).reshape(-1, 1, 1, 1)
    assert candidate["image_reward"] == pytest.approx(expected(shifted), abs=1e-9)
    assert candidate["reference_image_reward"] == pytest.approx(expected(reference_images()), abs=1e-9)
    assert record["reference"]["image_reward"] == pytest.approx(expected(reference_images()), abs=1e-9)
    assert record["settings"]["image_reward"] == str(weights)


def test_each_file_is_decoded_once_with_two_candidates(runs, tmp_path, monkeypatch):
    """Reference images are read once, not once per candidate folder; every candidate image once too."""
    reads: dict[Path, int] = {}
    load_image = evaluate.load_image

    def counting_load_image(path: Path) -> torch.Tensor:
        reads[path] = reads.get(path, 0) + 1
        return load_image(path)

    monkeypatch.setattr(evaluate, "load_image", counting_load_image)
    (runs["same"] / "00003.png").unlink()  # a file only one candidate pairs
    record = run_main(
        "--reference-dir", str(runs["reference"]), "--candidate-dir", str(runs["shifted"]), str(runs["same"]),
        "--batch-size", "3",
    )  # fmt: skip
    names = [f"{i:05d}.png" for i in range(4)]
    expected = {runs["reference"] / n: 1 for n in names} | {runs["shifted"] / n: 1 for n in names}
    assert reads == expected | {runs["same"] / n: 1 for n in names[:3]}
    shifted, same = record["candidates"]
    assert [r["file"] for r in shifted["per_image"]] == names and [r["file"] for r in same["per_image"]] == names[:3]
    assert [r["psnr"] for r in shifted["per_image"]] == pytest.approx([20 * math.log10(255 / d) for d in OFFSETS])
    assert same["psnr"] == 100.0 and record["reference"]["num_images"] == 4


def test_num_images_per_prompt_maps_image_k_to_line_k_over_n(runs, models, tmp_path, capsys):
    """sample.py numbers image k = prompt_index * n + j: with n = 2, images 0, 1 have line 0 and 2, 3 line 1."""
    for folder in runs.values():
        (folder / "metadata.jsonl").unlink()
    prompt_file = tmp_path / "prompts.txt"
    prompt_file.write_text("\n".join(PROMPTS[:2]) + "\n")
    assert evaluate.read_prompt_file(prompt_file, 2) == {
        "00000.png": PROMPTS[0], "00001.png": PROMPTS[0], "00002.png": PROMPTS[1], "00003.png": PROMPTS[1],
    }  # fmt: skip
    args = ["--reference-dir", str(runs["reference"]), "--candidate-dir", str(runs["shifted"])]
    args += ["--prompt-file", str(prompt_file), "--clip-model", str(models["clip"])]
    record = run_main(*args, "--num-images-per-prompt", "2")
    candidate = uint8_tensor(reference_images() + np.array(OFFSETS, dtype=np.uint8).reshape(-1, 1, 1, 1))
    prompts = [PROMPTS[0], PROMPTS[0], PROMPTS[1], PROMPTS[1]]
    expected = ClipScorer(models["clip"])(candidate, prompts).tolist()
    assert [r["clip_score"] for r in record["candidates"][0]["per_image"]] == pytest.approx(expected, abs=1e-5)
    capsys.readouterr()
    # The default of 1 leaves images 2 and 3 without a prompt: the warning points at the flag.
    assert run_main(*args)["candidates"][0]["clip_score"] is None
    err = capsys.readouterr().err
    assert "no prompt for 00002.png, 00003.png" in err and "--num-images-per-prompt" in err
    with pytest.raises(evaluate.UsageError, match="--num-images-per-prompt must be >= 1, got 0"):
        evaluate.read_prompt_file(prompt_file, 0)


def test_no_pairs_is_one_error_line_with_exit_code_2(runs, tmp_path, monkeypatch, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, err = run_script(
        monkeypatch, capsys, "--reference-dir", str(runs["reference"]), "--candidate-dir", str(empty)
    )
    assert code == 2
    assert err.startswith("error: no image pairs") and err.count("\n") == 1


def test_missing_folder_and_size_mismatch_are_errors(runs, tmp_path, monkeypatch, capsys):
    code, err = run_script(
        monkeypatch, capsys, "--reference-dir", str(tmp_path / "nope"), "--candidate-dir", str(runs["shifted"])
    )
    assert code == 2 and err.startswith("error: --reference-dir: reference folder not found") and err.count("\n") == 1
    Image.fromarray(np.zeros((16, 16, 3), dtype=np.uint8)).save(runs["shifted"] / "00001.png")
    code, err = run_script(
        monkeypatch, capsys, "--reference-dir", str(runs["reference"]), "--candidate-dir", str(runs["shifted"])
    )
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("error: 00001.png: reference is 32x32") and "16x16" in err


def test_disagreeing_prompts_or_seeds_are_errors(runs):
    metadata = runs["shifted"] / "metadata.jsonl"
    metadata.write_text(json.dumps({"index": 0, "prompt": "something else"}) + "\n")
    with pytest.raises(evaluate.UsageError, match="different prompts"):
        run_main("--reference-dir", str(runs["reference"]), "--candidate-dir", str(runs["shifted"]))
    metadata.write_text(json.dumps({"index": 1, "file": "00001.png", "prompt": PROMPTS[1], "seed": 7}) + "\n")
    with pytest.raises(evaluate.UsageError, match="00001.png has seed 1 in .* but 7 in"):
        run_main("--reference-dir", str(runs["reference"]), "--candidate-dir", str(runs["shifted"]))


def test_shipped_prompt_set():
    lines = (ROOT / "TaylorSeer-FLUX" / "prompts" / "eval_prompts.txt").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 30 and all(line.strip() == line and line for line in lines)
    assert len(set(lines)) == len(lines)
    assert (
        evaluate.read_prompt_file(ROOT / "TaylorSeer-FLUX" / "prompts" / "eval_prompts.txt")["00029.png"] == lines[29]
    )


def test_without_prompts_text_metrics_are_null(runs, models, tmp_path, capsys):
    for folder in runs.values():
        (folder / "metadata.jsonl").unlink()
    record = run_main(
        "--reference-dir", str(runs["reference"]), "--candidate-dir", str(runs["shifted"]),
        "--clip-model", str(models["clip"]),
    )  # fmt: skip
    assert record["candidates"][0]["clip_score"] is None and record["prompts"] is None
    assert record["candidates"][0]["psnr"] > 0
    assert "no --prompt-file and no metadata.jsonl" in capsys.readouterr().err


def test_truncated_image_is_one_error_line_before_any_metric_runs(runs, tmp_path, monkeypatch, capsys):
    """A PNG cut short by a killed run decodes its header fine; it is found (decoded completely) before any model is
    loaded, and named with the fix."""

    def no_metrics(*args, **kwargs):
        raise AssertionError("a metric ran on bad input")

    monkeypatch.setattr(evaluate, "load_lpips_or_warn", no_metrics)
    path = runs["shifted"] / "00002.png"
    path.write_bytes(path.read_bytes()[:-40])
    argv = ["--reference-dir", str(runs["reference"]), "--candidate-dir", str(runs["shifted"]), "--device", "cpu"]
    line = assert_refused(evaluate.cli, argv, f"cannot read image {path}: ", capsys, watch=tmp_path)
    assert "rerun sample.py into its folder, which sets damaged PNGs aside and makes them again" in line


def test_output_is_checked_before_any_metric_runs(runs, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(evaluate, "load_lpips_or_warn", lambda *args: pytest.fail("a metric ran on bad input"))
    (tmp_path / "taken").write_text("a file")
    argv = ["--reference-dir", str(runs["reference"]), "--candidate-dir", str(runs["shifted"]), "--device", "cpu",
            "--output", str(tmp_path / "taken" / "metrics.json")]  # fmt: skip
    assert_refused(evaluate.cli, argv, "is a file; choose another --output", capsys, watch=tmp_path)


def test_image_damaged_after_the_check_is_one_error_naming_it(tmp_path):
    """load_image itself names the file (a file replaced while the metrics run)."""
    path = tmp_path / "00000.png"
    Image.fromarray(reference_images(1)[0]).save(path)
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(evaluate.UsageError, match=f"cannot read image {path}: "):
        evaluate.load_image(path)
