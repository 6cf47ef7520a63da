"""common/quality_metrics.py: PSNR/SSIM against hand-computed values, LPIPS through its local-weights loader, CLIP
score against a computation through transformers, per-video frame averaging and file pairing."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from tiny_text_models import save_tiny_clip_model

from common import quality_metrics, report
from common.checkpoint import CheckpointError
from common.quality_metrics import (
    CLIP_MODEL_ENV,
    LPIPS_WEIGHTS_ENV,
    PSNR_CAP_DB,
    ClipScorer,
    PairedImageMetrics,
    load_lpips,
    load_lpips_or_warn,
    lpips,
    pair_files,
    psnr,
    resolve_clip_model,
    resolve_lpips_weights,
    save_report,
    ssim,
    to_unit_float,
    video_metrics,
)

ALEXNET_FILE = "alexnet-owt-7be5be79.pth"
ALEXNET_URL = f"https://download.pytorch.org/models/{ALEXNET_FILE}"
PROMPTS = ["a red cat on a table", "a blue car in the city", "a small bird flying over the sea"]


def save_random_lpips_weights(path: Path, seed: int = 0) -> dict[str, torch.Tensor]:
    """A randomly initialised AlexNet's ``features.*`` tensors under torchvision's key names: what the loader reads
    from the real ``alexnet-owt-7be5be79.pth`` (which also holds the classifier, ignored), at 1/25 of its size."""
    torch.manual_seed(seed)
    features = {f"features.{k}": v for k, v in torchvision.models.alexnet().features.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(features, path)
    return features


@pytest.fixture(scope="module")
def lpips_weights(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("lpips") / ALEXNET_FILE
    save_random_lpips_weights(path)
    return path


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("clip") / "clip-vit-large-patch14"
    save_tiny_clip_model(path)
    return path


def random_images(n: int, size: int = 32, low: int = 0, high: int = 256, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(low, high, (n, 3, size, size), dtype=torch.uint8, generator=generator)


def test_psnr_of_constant_offsets_matches_the_formula():
    reference = random_images(3, high=200)
    offsets = torch.tensor([1, 5, 20], dtype=torch.uint8).view(3, 1, 1, 1)
    values = psnr(reference, reference + offsets)
    expected = [10 * math.log10(255**2 / d**2) for d in (1, 5, 20)]  # MSE = d^2 in uint8 units
    assert values.tolist() == pytest.approx(expected, abs=1e-4)
    # The same images as [0, 1] floats, and the pair order, give the same values.
    assert psnr(reference.float() / 255, (reference + offsets).float() / 255).tolist() == pytest.approx(
        expected, abs=1e-4
    )
    assert psnr(reference + offsets, reference).tolist() == pytest.approx(expected, abs=1e-4)


def test_psnr_of_identical_images_is_capped():
    images = random_images(2)
    assert psnr(images, images).tolist() == [PSNR_CAP_DB, PSNR_CAP_DB]


def test_ssim_is_one_for_identical_images_and_lower_otherwise():
    reference = random_images(2)
    assert ssim(reference, reference).tolist() == pytest.approx([1.0, 1.0], abs=1e-6)
    noisy = ssim(reference, random_images(2, seed=1))
    assert (noisy < 0.2).all()


def test_ssim_of_constant_images_matches_the_formula():
    """Constant images c and c + d: means c and c + d, no variance, so SSIM is the luminance term alone,
    (2 c (c + d) + C1) / (c^2 + (c + d)^2 + C1) with C1 = (0.01 * 255)^2 in uint8 units."""
    c, d = 100, 20
    c1 = (0.01 * 255) ** 2
    expected = (2 * c * (c + d) + c1) / (c**2 + (c + d) ** 2 + c1)  # 0.98358
    reference = torch.full((2, 3, 32, 32), c, dtype=torch.uint8)
    assert ssim(reference, reference + d).tolist() == pytest.approx([expected, expected], abs=1e-4)


def test_bad_inputs_are_value_errors():
    with pytest.raises(ValueError, match="shape"):
        psnr(random_images(2, size=32), random_images(2, size=48))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        to_unit_float(torch.full((1, 3, 16, 16), 2.0))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        to_unit_float(torch.zeros(1, 1, 16, 16, dtype=torch.uint8))


def test_lpips_loads_local_backbone_and_gives_zero_for_identical_images(lpips_weights, monkeypatch):
    """A random backbone saved in torchvision's format tests the loading path (file -> torchmetrics' slices) and the
    computation; values are not those of the real weights."""

    def no_download(*args, **kwargs):
        raise AssertionError("LPIPS tried to download weights")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", no_download, raising=False)
    model = load_lpips(lpips_weights)
    saved = torch.load(lpips_weights)
    backbone = model.net.state_dict()
    assert torch.equal(backbone["slice1.0.weight"], saved["features.0.weight"])
    assert torch.equal(backbone["slice5.10.bias"], saved["features.10.bias"])
    reference = random_images(2)
    assert lpips(reference, reference, model).tolist() == [0.0, 0.0]
    different = lpips(reference, random_images(2, seed=1), model)
    assert different.shape == (2,) and (different > 0).all()
    metrics = PairedImageMetrics(model)
    assert set(metrics(reference, reference)) == {"psnr", "ssim", "lpips"}


def test_load_lpips_or_warn_warns_once_and_gives_none_without_weights(lpips_weights, tmp_path, capsys, monkeypatch):
    model = load_lpips_or_warn(lpips_weights)
    assert model is not None and lpips(random_images(1), random_images(1), model).tolist() == [0.0]
    assert capsys.readouterr().err == ""
    # Named weights must load: a typo is an error, not a quietly missing metric.
    with pytest.raises(CheckpointError, match="missing.pth"):
        load_lpips_or_warn(tmp_path / "missing.pth")
    monkeypatch.setenv("TAYLORSEER_LPIPS_WEIGHTS", str(tmp_path / "env-missing.pth"))
    with pytest.raises(CheckpointError, match="env-missing.pth"):
        load_lpips_or_warn(None)
    # Nothing named and nothing at the default places: one warning and None.
    monkeypatch.delenv("TAYLORSEER_LPIPS_WEIGHTS")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.chdir(tmp_path)
    assert load_lpips_or_warn(None) is None
    err = capsys.readouterr().err
    assert err.startswith("warning: LPIPS skipped (null), PSNR and SSIM still run:") and err.count("\n") == 1
    assert ALEXNET_URL in err


def test_lpips_rejects_a_file_without_backbone_features(tmp_path):
    path = tmp_path / ALEXNET_FILE
    torch.save({"classifier.1.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(CheckpointError, match="features"):
        load_lpips(path)


def test_missing_lpips_weights_name_file_url_and_env_var(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.delenv(LPIPS_WEIGHTS_ENV, raising=False)
    with pytest.raises(CheckpointError) as info:
        resolve_lpips_weights()
    message = str(info.value)
    assert ALEXNET_FILE in message and ALEXNET_URL in message and LPIPS_WEIGHTS_ENV in message
    assert "pretrained_models" in message and "\n" not in message
    # An explicit path that does not exist is named as such.
    monkeypatch.setenv(LPIPS_WEIGHTS_ENV, str(tmp_path / "elsewhere.pth"))
    with pytest.raises(CheckpointError, match="elsewhere.pth"):
        resolve_lpips_weights()


def test_lpips_weights_are_found_in_pretrained_models_then_the_hub_cache(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.delenv(LPIPS_WEIGHTS_ENV, raising=False)
    hub_copy = tmp_path / "torch_home" / "hub" / "checkpoints" / ALEXNET_FILE
    hub_copy.parent.mkdir(parents=True)
    hub_copy.touch()
    assert resolve_lpips_weights() == hub_copy
    (tmp_path / "pretrained_models").mkdir()
    (tmp_path / "pretrained_models" / ALEXNET_FILE).touch()
    assert resolve_lpips_weights() == Path("pretrained_models") / ALEXNET_FILE


def hand_clip_scores(folder: Path, images: torch.Tensor, prompts: list[str]) -> list[float]:
    """The CLIP score computed step by step through the towers and projections of transformers' CLIPModel."""
    from PIL import Image
    from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

    model = CLIPModel.from_pretrained(folder).eval()
    pil = [Image.fromarray(image.permute(1, 2, 0).numpy()) for image in images]
    pixels = CLIPImageProcessor.from_pretrained(folder)(images=pil, return_tensors="pt")["pixel_values"]
    text = AutoTokenizer.from_pretrained(folder)(prompts, padding=True, return_tensors="pt")
    with torch.no_grad():
        image_embeds = model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output)
        text_embeds = model.text_projection(
            model.text_model(input_ids=text["input_ids"], attention_mask=text["attention_mask"]).pooler_output
        )
    scores = []
    for image_embed, text_embed in zip(image_embeds, text_embeds, strict=True):
        cosine = float(image_embed @ text_embed / (image_embed.norm() * text_embed.norm()))
        scores.append(100 * max(cosine, 0.0))
    return scores


def test_clip_score_matches_a_hand_computation(clip_dir):
    images = random_images(3, size=40)
    scores = ClipScorer(clip_dir)(images, PROMPTS)
    assert scores.tolist() == pytest.approx(hand_clip_scores(clip_dir, images, PROMPTS), abs=1e-4)
    assert (scores >= 0).all() and (scores <= 100).all()
    with pytest.raises(ValueError, match="3 images but 2 prompts"):
        ClipScorer(clip_dir)(images, PROMPTS[:2])


def test_missing_clip_model_names_the_download(tmp_path, monkeypatch, clip_dir):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(CLIP_MODEL_ENV, raising=False)
    with pytest.raises(CheckpointError, match="huggingface.co/openai/clip-vit-large-patch14"):
        resolve_clip_model()
    monkeypatch.setenv(CLIP_MODEL_ENV, str(clip_dir))
    assert resolve_clip_model() == clip_dir


def test_video_metrics_average_per_frame_values():
    generator = torch.Generator().manual_seed(0)
    reference = torch.randint(0, 200, (3, 32, 32, 3), dtype=torch.uint8, generator=generator)
    offsets = torch.tensor([2, 4, 8], dtype=torch.uint8).view(3, 1, 1, 1)
    values = video_metrics(reference.numpy(), (reference + offsets).numpy(), PairedImageMetrics(), batch_size=2)
    # The mean of the frames' PSNRs, not the PSNR of the mean MSE.
    assert values["psnr"] == pytest.approx(np.mean([20 * math.log10(255 / d) for d in (2, 4, 8)]), abs=1e-4)
    assert values["num_frames"] == 3 and 0 < values["ssim"] < 1 and "lpips" not in values
    with pytest.raises(ValueError, match="frame counts differ: reference 3, candidate 2"):
        video_metrics(reference, reference[:2], PairedImageMetrics())
    with pytest.raises(ValueError, match="frame sizes differ"):
        video_metrics(reference, reference[:, :16], PairedImageMetrics())


def test_pair_files_matches_names_and_skips_hidden_and_other_files(tmp_path):
    reference, candidate = tmp_path / "reference", tmp_path / "candidate"
    for folder, names in (
        (reference, ["a.png", "b.png", "c.PNG", "notes.txt"]),
        (candidate, ["b.png", "c.PNG", "d.png", ".a.png"]),
    ):
        folder.mkdir()
        for name in names:
            (folder / name).touch()
    pairs = pair_files(reference, candidate, [".png"])
    assert pairs.names == ["b.png", "c.PNG"]
    assert pairs.only_reference == ["a.png"] and pairs.only_candidate == ["d.png"]


def test_report_helpers_are_the_light_module_s(tmp_path):
    """quality_metrics re-exports common/report.py's helpers (one copy, also used by DiT without torchmetrics)."""
    for name in ("markdown_table", "resolve_device", "save_report"):
        assert getattr(quality_metrics, name) is getattr(report, name) and name in quality_metrics.__all__
    table = report.markdown_table(["run", "PSNR"], [["a", "1.0"], ["b", "2.0"]])
    assert table.splitlines() == ["| run | PSNR |", "| --- | ---: |", "| a | 1.0 |", "| b | 2.0 |"]


def test_save_report_writes_json_and_markdown_and_refuses_nan(tmp_path, capsys):
    output = save_report(tmp_path / "out" / "run.json", {"psnr": 30.5, "lpips": None}, "| a |")
    assert json.loads(output.read_text()) == {"psnr": 30.5, "lpips": None}
    assert output.with_suffix(".md").read_text() == "| a |\n" and "| a |" in capsys.readouterr().out
    for bad in (math.nan, math.inf):
        with pytest.raises(ValueError, match="NaN or infinity"):
            save_report(tmp_path / "bad" / "run.json", {"candidates": [{"ssim": bad}]}, "| a |")
        assert not (tmp_path / "bad").exists()  # refused before anything is written
