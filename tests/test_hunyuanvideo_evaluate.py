"""TaylorSeer-HunyuanVideo/evaluate.py: paired-video metrics on small near-lossless mp4s, mismatch errors, VBench's
aggregation against a hand computation, the VBench hook (with a stand-in package) and the shipped prompt set."""

import json
import math
import runpy
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from test_quality_metrics import save_random_lpips_weights

from common.quality_metrics import LPIPS_WEIGHTS_ENV, PSNR_CAP_DB
from common.video_io import read_video, write_video
from taylorseer_hunyuanvideo import evaluate
from taylorseer_hunyuanvideo.evaluate import VBENCH_DIMENSIONS, aggregate_vbench

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "TaylorSeer-HunyuanVideo" / "evaluate.py"
NAMES = ("a cat-0.mp4", "a cat-1.mp4")  # VBench's "{prompt}-{k}.mp4"
NOISE = 10  # candidate = reference +- NOISE per value: PSNR = 20 log10(255 / 10) = 28.13 dB before the codec
FRAMES, SIZE = 4, 32


def video(seed: int) -> np.ndarray:
    """(T, H, W, 3) uint8 in 20..235, so that +-NOISE never clips."""
    return np.random.default_rng(seed).integers(20, 236, (FRAMES, SIZE, SIZE, 3), dtype=np.uint8)


def noisy(frames: np.ndarray, seed: int) -> np.ndarray:
    signs = np.random.default_rng(100 + seed).choice([-NOISE, NOISE], size=frames.shape)
    return (frames.astype(int) + signs).astype(np.uint8)


@pytest.fixture
def no_lpips(tmp_path, monkeypatch) -> Path:
    """No LPIPS weights anywhere: none named ($TAYLORSEER_LPIPS_WEIGHTS unset), the default places (pretrained_models/
    under the working directory, the torch hub cache) empty. Returns a path that holds no weights."""
    monkeypatch.delenv(LPIPS_WEIGHTS_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.chdir(tmp_path)
    return tmp_path / "missing.pth"


@pytest.fixture(scope="module")
def lpips_weights(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("lpips") / "alexnet-owt-7be5be79.pth"
    save_random_lpips_weights(path)
    return path


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("videos")
    folders = {name: root / name for name in ("full", "same", "noisy")}
    for seed, name in enumerate(NAMES):
        frames = video(seed)
        write_video(folders["full"] / name, frames, quality=None)
        write_video(folders["same"] / name, frames, quality=None)
        write_video(folders["noisy"] / name, noisy(frames, seed), quality=None)
    return folders


def run_main(*argv: str) -> dict:
    return evaluate.main(evaluate.build_parser().parse_args([*argv, "--device", "cpu", "--no-progress"]))


def run_script(monkeypatch, capsys, *argv: str) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), *argv, "--device", "cpu", "--no-progress"])
    with pytest.raises(SystemExit) as info:
        runpy.run_path(str(SCRIPT), run_name="__main__")
    return info.value.code, capsys.readouterr().err


def frame_psnr(reference: np.ndarray, candidate: np.ndarray) -> float:
    mse = np.mean((reference.astype(np.float64) - candidate.astype(np.float64)) ** 2)
    return min(PSNR_CAP_DB, 10 * math.log10(255**2 / mse)) if mse else PSNR_CAP_DB


def test_paired_videos_identical_and_noisy(videos, lpips_weights, tmp_path):
    output = tmp_path / "hv.json"
    record = run_main(
        "--reference-dir", str(videos["full"]), "--candidate-dir", str(videos["same"]), str(videos["noisy"]),
        "--lpips-weights", str(lpips_weights), "--batch-size", "3", "--output", str(output),
    )  # fmt: skip
    assert json.loads(output.read_text()) == record
    same, noise = record["candidates"]
    assert same["num_pairs"] == noise["num_pairs"] == 2 and same["num_frames"] == 2 * FRAMES
    # The same frames encoded twice decode identically: capped PSNR, SSIM 1, LPIPS 0.
    assert same["psnr"] == PSNR_CAP_DB and same["ssim"] == pytest.approx(1.0, abs=1e-5) and same["lpips"] == 0.0
    # Known noise: near the formula (the codec's RGB <-> YUV rounding adds up to 2 levels) ...
    assert noise["psnr"] == pytest.approx(20 * math.log10(255 / NOISE), abs=0.5)
    assert 0 < noise["ssim"] < 0.99 and noise["lpips"] > 0
    # ... and exactly the per-frame mean, per video then over videos, of the decoded frames.
    expected = []
    for name, per_video in zip(NAMES, noise["per_video"], strict=True):
        reference, candidate = read_video(videos["full"] / name), read_video(videos["noisy"] / name)
        frame_values = [frame_psnr(r, c) for r, c in zip(reference, candidate, strict=True)]
        assert per_video["file"] == name and per_video["psnr"] == pytest.approx(np.mean(frame_values), abs=1e-4)
        expected.append(np.mean(frame_values))
    assert noise["psnr"] == pytest.approx(np.mean(expected), abs=1e-4)
    markdown = output.with_suffix(".md").read_text().splitlines()
    assert markdown[0] == "| run | videos | frames | PSNR ↑ | SSIM ↑ | LPIPS ↓ |"
    assert markdown[3] == (
        f"| noisy | 2 | {2 * FRAMES} | {noise['psnr']:.3f} | {noise['ssim']:.4f} | {noise['lpips']:.4f} |"
    )


def test_each_video_is_decoded_once_with_two_candidates(videos, no_lpips, tmp_path, monkeypatch, capsys):
    """A reference video is read once, not once per candidate folder, and so is every candidate video."""
    reads: dict[Path, int] = {}
    read_frames = evaluate.read_frames

    def counting_read_frames(path: Path) -> np.ndarray:
        reads[path] = reads.get(path, 0) + 1
        return read_frames(path)

    monkeypatch.setattr(evaluate, "read_frames", counting_read_frames)
    record = run_main(
        "--reference-dir", str(videos["full"]), "--candidate-dir", str(videos["same"]), str(videos["noisy"]),
        "--output", str(tmp_path / "hv.json"),
    )  # fmt: skip
    assert reads == {videos[folder] / name: 1 for folder in ("full", "same", "noisy") for name in NAMES}
    same, noise = record["candidates"]
    assert [v["file"] for v in same["per_video"]] == [v["file"] for v in noise["per_video"]] == list(NAMES)
    assert same["psnr"] == PSNR_CAP_DB and 20 < noise["psnr"] < 40
    # LPIPS without weights: one warning from the shared helper, null values.
    err = capsys.readouterr().err
    assert err.count("LPIPS skipped (null), PSNR and SSIM still run") == 1 and same["lpips"] is None


def test_missing_lpips_weights_leave_lpips_null(videos, no_lpips, tmp_path, monkeypatch, capsys):
    record = run_main(
        "--reference-dir", str(videos["full"]), "--candidate-dir", str(videos["noisy"]),
        "--output", str(tmp_path / "hv.json"),
    )  # fmt: skip
    candidate = record["candidates"][0]
    assert candidate["lpips"] is None and candidate["psnr"] > 20
    assert "alexnet-owt-7be5be79.pth" in capsys.readouterr().err
    # Weights named with --lpips-weights must load: a missing file is an error, not a silent null.
    code, err = run_script(
        monkeypatch, capsys, "--reference-dir", str(videos["full"]), "--candidate-dir", str(videos["noisy"]),
        "--lpips-weights", str(no_lpips), "--output", str(tmp_path / "named.json"),
    )  # fmt: skip
    assert (
        code == 2 and err.count("error:") == 1 and "LPIPS backbone weights (alexnet-owt-7be5be79.pth) not found" in err
    )
    assert not (tmp_path / "named.json").exists()


@pytest.mark.parametrize(
    ("frames", "message"),
    [
        (video(0)[:3], "frame counts differ: reference 4, candidate 3"),
        (video(0)[:, :16], "frame sizes differ: reference 32x32, candidate 32x16"),
    ],
)
def test_frame_count_and_size_mismatches_are_errors(videos, no_lpips, tmp_path, monkeypatch, capsys, frames, message):
    candidate = tmp_path / "candidate"
    write_video(candidate / NAMES[0], frames, quality=None)
    code, err = run_script(
        monkeypatch, capsys, "--reference-dir", str(videos["full"]), "--candidate-dir", str(candidate),
        "--output", str(tmp_path / "out.json"),
    )  # fmt: skip
    assert code == 2
    error = err.splitlines()[-1]
    assert error.startswith(f"error: {NAMES[0]}") and message in error


def test_no_pairs_and_no_mode_are_errors(videos, tmp_path, monkeypatch, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, err = run_script(monkeypatch, capsys, "--reference-dir", str(videos["full"]), "--candidate-dir", str(empty))
    assert code == 2 and err.startswith("error: no video pairs") and err.count("\n") == 1
    code, err = run_script(monkeypatch, capsys)
    assert code == 2 and err.startswith("error: choose one mode")


RAW = {
    "subject_consistency": 0.95,
    "background_consistency": 0.96,
    "temporal_flickering": 0.99,
    "motion_smoothness": 0.98,
    "dynamic_degree": 0.6,
    "aesthetic_quality": 0.62,
    "imaging_quality": 0.65,
    "object_class": 0.85,
    "multiple_objects": 0.7,
    "human_action": 0.94,
    "color": 0.9,
    "spatial_relationship": 0.7,
    "scene": 0.5,
    "appearance_style": 0.2,
    "temporal_style": 0.24,
    "overall_consistency": 0.26,
}


def test_aggregate_vbench_matches_a_hand_computation():
    quality = (
        (0.95 - 0.1462) / (1 - 0.1462)
        + (0.96 - 0.2615) / (1 - 0.2615)
        + (0.99 - 0.6293) / (1 - 0.6293)
        + (0.98 - 0.706) / (0.9975 - 0.706)
        + 0.62
        + 0.65
        + 0.5 * 0.6
    ) / 6.5
    semantic = (
        0.85 + 0.7 + 0.94 + 0.9 + 0.7 + 0.5 / 0.8222 + (0.2 - 0.0009) / (0.2855 - 0.0009) + 0.24 / 0.364 + 0.26 / 0.364
    ) / 9
    result = aggregate_vbench(RAW)
    assert result["quality_score"] == pytest.approx(quality, abs=1e-12)
    assert result["semantic_score"] == pytest.approx(semantic, abs=1e-12)
    assert result["total_score"] == pytest.approx((4 * quality + semantic) / 5, abs=1e-12)
    assert result["normalized"]["scene"] == pytest.approx(0.5 / 0.8222) and result["missing"] == []
    # VBench's own spelling with spaces is accepted.
    assert aggregate_vbench({k.replace("_", " "): v for k, v in RAW.items()})["total_score"] == result["total_score"]


def test_aggregate_vbench_bounds_missing_and_unknown_dimensions():
    minima = {"subject_consistency": 0.1462, "background_consistency": 0.2615, "temporal_flickering": 0.6293}
    minima |= {"motion_smoothness": 0.706, "appearance_style": 0.0009}
    at_min = aggregate_vbench({**dict.fromkeys(VBENCH_DIMENSIONS, 0.0), **minima})
    assert at_min["quality_score"] == 0 and at_min["total_score"] == pytest.approx(0.0, abs=1e-12)
    maxima = {"motion_smoothness": 0.9975, "scene": 0.8222, "appearance_style": 0.2855}
    maxima |= {"temporal_style": 0.364, "overall_consistency": 0.364}
    at_max = aggregate_vbench({**dict.fromkeys(VBENCH_DIMENSIONS, 1.0), **maxima})
    assert at_max["total_score"] == pytest.approx(1.0, abs=1e-12)
    partial = aggregate_vbench({key: RAW[key] for key in evaluate.VBENCH_QUALITY})
    assert partial["quality_score"] == pytest.approx(aggregate_vbench(RAW)["quality_score"])
    assert partial["semantic_score"] is None and partial["total_score"] is None
    assert partial["missing"] == list(evaluate.VBENCH_SEMANTIC)
    with pytest.raises(ValueError, match="unknown VBench dimension 'sharpness'"):
        aggregate_vbench({"sharpness": 0.5})


def write_vbench_results(path: Path, scores: dict[str, float]) -> Path:
    """A file as VBench writes it: {dimension: [score, [per-video results]]}."""
    content = {k: [v, [{"video_path": "a cat-0.mp4", "video_results": v}]] for k, v in scores.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content))
    return path


def test_vbench_results_are_aggregated_without_the_package(tmp_path):
    keys = list(RAW)
    write_vbench_results(tmp_path / "results" / "gpu0_eval_results.json", {k: RAW[k] for k in keys[:8]})
    write_vbench_results(tmp_path / "results" / "gpu1_eval_results.json", {k: RAW[k] for k in keys[8:]})
    record = run_main("--vbench-results", str(tmp_path / "results"))
    assert record["total_score"] == pytest.approx(aggregate_vbench(RAW)["total_score"], abs=1e-12)
    assert len(record["results_files"]) == 2
    saved = tmp_path / "results" / "vbench-scores.json"
    assert json.loads(saved.read_text()) == record
    markdown = saved.with_suffix(".md").read_text()
    assert f"| **total score** |  |  | {100 * record['total_score']:.2f} |" in markdown
    assert "| dynamic_degree | quality | 60.00 | 60.00 |" in markdown


def test_vbench_hook_calls_the_package_in_standard_mode(videos, tmp_path, monkeypatch):
    calls = []

    class FakeVBench:
        def __init__(self, device, full_info, output_path):
            self.output_path = Path(output_path)
            calls.append({"full_info": full_info})

        def evaluate(self, videos_path, name, dimension_list, **kwargs):
            calls[-1].update(videos_path=videos_path, dimension_list=dimension_list, **kwargs)
            write_vbench_results(self.output_path / f"{name}_eval_results.json", {k: RAW[k] for k in dimension_list})

    monkeypatch.setitem(sys.modules, "vbench", types.SimpleNamespace(VBench=FakeVBench))
    info = ROOT / "TaylorSeer-HunyuanVideo" / "prompts" / "vbench_mini.json"
    record = run_main(
        "--vbench", str(videos["noisy"]), "--vbench-info", str(info), "--output", str(tmp_path / "v.json")
    )
    (call,) = calls
    assert call["mode"] == "vbench_standard" and call["imaging_quality_preprocessing_mode"] == "longer"
    assert call["dimension_list"] == list(VBENCH_DIMENSIONS) and call["full_info"] == str(info)
    assert call["videos_path"] == str(videos["noisy"])
    assert record["total_score"] == pytest.approx(aggregate_vbench(RAW)["total_score"], abs=1e-12)


def test_vbench_without_the_package_says_how_to_install(videos, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "vbench", None)  # makes `import vbench` fail as when it is not installed
    info = ROOT / "TaylorSeer-HunyuanVideo" / "prompts" / "vbench_mini.json"
    code, err = run_script(monkeypatch, capsys, "--vbench", str(videos["noisy"]), "--vbench-info", str(info))
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("error: VBench is not installed") and "pip install vbench" in err


def test_shipped_vbench_mini_prompts():
    entries = json.loads((ROOT / "TaylorSeer-HunyuanVideo" / "prompts" / "vbench_mini.json").read_text())
    assert 8 <= len(entries) <= 12
    assert all(isinstance(e["prompt_en"], str) and e["prompt_en"] for e in entries)
    dimensions = [d for e in entries for d in e["dimension"]]
    assert set(dimensions) == set(VBENCH_DIMENSIONS)
    # VBench reads these dimensions' targets from auxiliary_info[dimension].
    for entry in entries:
        for dimension in set(entry["dimension"]) & {"object_class", "multiple_objects", "color", "scene"}:
            assert dimension in entry["auxiliary_info"]
