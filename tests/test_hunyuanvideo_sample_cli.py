"""TaylorSeer-HunyuanVideo/sample_video.py end to end: FLOPs, mp4 output, VBench mode, torchrun, readable errors,
file names that never collide, weights identity, damaged videos remade, killed runs resumed to identical bytes."""

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hunyuanvideo_testing import TINY_MODEL, TINY_TEXT_LEN, write_official_checkpoint

from common.integrity import file_sha256
from common.run_records import read_records
from common.taylor_cache import TaylorCache, TaylorSeerConfig
from common.teacache import TEACACHE_COEFFICIENTS, TeaCache, TeaCacheConfig
from common.video_io import read_video, video_to_uint8_frames, write_video
from taylorseer_hunyuanvideo import sample_video
from taylorseer_hunyuanvideo.flops import teacache_step_flops
from taylorseer_hunyuanvideo.pipeline import HunyuanVideoPipeline
from taylorseer_hunyuanvideo.sample_video import (
    UsageError,
    build_parser,
    check_args,
    cli,
    contiguous_share,
    main,
    single_prompt_file_name,
    vbench_file_name,
)
from taylorseer_hunyuanvideo.weights import find_model_files, load_components

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "TaylorSeer-HunyuanVideo" / "sample_video.py"
# One thread per process: torchrun's workers run one anyway, and equal thread counts keep the float sums identical.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
# Unbuffered output, the worst case for two ranks sharing stdout: every status line must still be one write.
UNBUFFERED = {**ENV, "PYTHONUNBUFFERED": "1"}
PAPER = ["--video-size", "480", "640", "--video-length", "65", "--infer-steps", "50"]
PROMPTS = ["a cat sitting on a table", "a red car on a street/road", "a bird flying over the sea", "a horse"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> Path:
    return write_official_checkpoint(tmp_path_factory.mktemp("hunyuanvideo") / "ckpts")


@pytest.fixture(scope="module")
def pipe(ckpts):
    components = load_components(
        find_model_files(ckpts),
        TINY_MODEL,
        dtype=torch.float32,
        text_encoder_dtype=torch.float32,
        vae_dtype=torch.float32,
        text_len=TINY_TEXT_LEN,
    )
    return HunyuanVideoPipeline.from_components(components)


@pytest.fixture
def prompt_json(tmp_path) -> Path:
    path = tmp_path / "VBench_full_info.json"
    path.write_text(json.dumps([{"prompt_en": p, "dimension": ["subject_consistency"]} for p in PROMPTS]))
    return path


def tiny_argv(ckpts: Path, save_path: Path, *extra: str) -> list[str]:
    return ["--model", TINY_MODEL, "--model-base", str(ckpts), "--video-size", "32", "32", "--video-length", "5",
            "--infer-steps", "6", "--text-len", str(TINY_TEXT_LEN), "--save-path", str(save_path), "--device", "cpu",
            *extra]  # fmt: skip


def run_main(argv: list[str]) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    return main(args, check_args(args, parser))


def last_json_line(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


def write_prompts(path: Path, prompts: list[str]) -> Path:
    path.write_text(json.dumps([{"prompt_en": p, "dimension": ["subject_consistency"]} for p in prompts]))
    return path


def strict_records(folder: Path) -> list[dict]:
    """Every line of the folder's metadata.jsonl, parsed as strict JSON (NaN or Infinity would raise)."""

    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} in metadata.jsonl")

    text = (folder / "metadata.jsonl").read_text()
    return [json.loads(line, parse_constant=refuse) for line in text.splitlines()]


def mp4_bytes(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.glob("*.mp4"))}


def assert_records_match_files(folder: Path) -> None:
    """Each video's last record holds the SHA-256 of the file, as after an uninterrupted run."""
    records = read_records(folder / "metadata.jsonl")
    for path in folder.glob("*.mp4"):
        assert records[path.name]["sha256"] == file_sha256(path), path.name


def expected_frames(pipe, prompt: str, seed: int, interval: int = 5) -> np.ndarray:
    """The uint8 frames the CLI should have written, from the python API (TaylorSeer N, O=1, E=1)."""
    cache = TaylorCache(TaylorSeerConfig(interval=interval, max_order=1, first_enhance=1))
    out = pipe(prompt, height=32, width=32, video_length=5, num_inference_steps=6, seed=seed, cache=cache)
    return video_to_uint8_frames(out.video)


def assert_mp4_holds(path: Path, frames: np.ndarray, tmp_path: Path) -> None:
    """``path`` is a 5-frame 32x32 mp4 of ``frames``: decoded, it equals ``frames`` written by the same encoder
    (H.264 at quality 8 is lossy, but deterministic)."""
    video = read_video(path)
    assert video.shape == (5, 32, 32, 3) and video.dtype == np.uint8
    reference = write_video(tmp_path / "reference" / path.name, frames, fps=24)
    np.testing.assert_array_equal(video, read_video(reference), err_msg=path.name)


# ---------------------------------------------------------------------------------------------------------- FLOPs


def test_flops_of_the_paper_setting_need_no_weights(tmp_path, capsys):
    """480x640, 65 frames, 50 steps, N=5 O=1 E=1: the reported 5.00x (reference-semantics §4.5: 4.995), a full step of
    ~595.4 TFLOPs and a forecast step of ~0.147, counted on the meta device over the real schedule."""
    report = run_main([*PAPER, "--test-FLOPs", "--model-base", str(tmp_path / "none")])
    assert report == last_json_line(capsys.readouterr().out)
    assert report["speedup"] == pytest.approx(4.995, abs=5e-4)
    assert (report["full_steps"], report["forecast_steps"], report["method"]) == (10, 40, "TaylorSeer N=5 O=1")
    assert report["full_step_tflops"] == pytest.approx(595.4, rel=2e-3)  # the reference's calflops count
    assert report["full_tflops"] == pytest.approx(50 * report["full_step_tflops"])
    forecast = (report["tflops"] - 10 * report["full_step_tflops"]) / 40
    assert forecast == pytest.approx(0.147, rel=0.05)
    assert (report["model"], report["height"], report["width"], report["video_length"]) == (
        "HYVideo-T/2-cfgdistill", 480, 640, 65
    )  # fmt: skip


def test_flops_follow_the_interval_and_the_cfg_batch(capsys):
    tiny = ["--model", TINY_MODEL, "--video-size", "32", "32", "--video-length", "5", "--test-FLOPs"]
    baseline = run_main([*tiny, "--interval", "1"])
    assert baseline["speedup"] == 1.0 and baseline["forecast_steps"] == 0
    cfg = run_main([*tiny, "--interval", "1", "--cfg-scale", "2.0"])
    assert cfg["full_step_tflops"] == pytest.approx(2 * baseline["full_step_tflops"])
    assert last_json_line(capsys.readouterr().out)["batch"] == 2


# ------------------------------------------------------------------------------------------------ single prompt


def test_prompt_run_writes_taylorseer_mp4s_with_consecutive_seeds(ckpts, pipe, tmp_path, capsys):
    summary = run_main(tiny_argv(ckpts, tmp_path, "--prompt", PROMPTS[0], "--num-videos", "2"))
    names = [Path(path).name for path in summary["videos"]]
    assert names == [f"seed42_{PROMPTS[0]}.mp4", f"seed43_{PROMPTS[0]}.mp4"]
    assert (summary["full_steps"], summary["forecast_steps"]) == (2, 4)  # the paper's N=5, O=1, E=1 over 6 steps
    out = capsys.readouterr().out
    assert len(re.findall(r"Success, time: \d+\.\d+ s \(TaylorSeer N=5 O=1: 2 full, 4 forecast steps", out)) == 2
    assert summary["method"] == "TaylorSeer N=5 O=1" and summary["flops"]["video_tflops"] == [
        pytest.approx(summary["flops"]["tflops"] / 2)] * 2  # fmt: skip
    for seed, path in zip((42, 43), summary["videos"], strict=True):
        assert_mp4_holds(Path(path), expected_frames(pipe, PROMPTS[0], seed), tmp_path)
    assert not np.array_equal(read_video(summary["videos"][0]), read_video(summary["videos"][1]))
    # What TaylorSeer changed: the frames differ from full compute's (--interval 1), by a little.
    taylorseer, full = expected_frames(pipe, PROMPTS[0], 42), expected_frames(pipe, PROMPTS[0], 42, interval=1)
    assert 0 < np.abs(taylorseer.astype(float) - full).mean() < 2.0

    # A rerun skips the videos made with its settings (no silent overwrite), and refuses other settings.
    mtimes = [Path(path).stat().st_mtime_ns for path in summary["videos"]]
    again = run_main(tiny_argv(ckpts, tmp_path, "--prompt", PROMPTS[0], "--num-videos", "2"))
    assert (again["videos"], again["skipped"], again["total"]) == ([], 2, 2)
    assert [Path(path).stat().st_mtime_ns for path in summary["videos"]] == mtimes
    conflict = r"(?s)2 conflicting files.*seed42_a cat sitting on a table\.mp4: method .*'interval': 5.*'interval': 1"
    with pytest.raises(UsageError, match=conflict):
        run_main(tiny_argv(ckpts, tmp_path, "--prompt", PROMPTS[0], "--num-videos", "2", "--interval", "1"))


def test_another_method_is_recorded_and_never_mixed_with_the_first(ckpts, pipe, tmp_path, capsys):
    """TeaCache at HunyuanVideo's defaults (TeaCache4HunyuanVideo's polynomial, threshold 0.15): the video of the
    python API with the same cache, the method and its settings in metadata.jsonl, the FLOPs from its step counts;
    a rerun with another method is refused."""
    name = f"seed42_{PROMPTS[0]}.mp4"
    summary = run_main(tiny_argv(ckpts, tmp_path, "--prompt", PROMPTS[0], "--method", "teacache"))
    cache = TeaCache(TeaCacheConfig(threshold=0.15, coefficients=TEACACHE_COEFFICIENTS["hunyuanvideo"]))
    out = pipe(PROMPTS[0], height=32, width=32, video_length=5, num_inference_steps=6, seed=42, cache=cache)
    assert_mp4_holds(tmp_path / name, video_to_uint8_frames(out.video), tmp_path)
    assert (summary["full_steps"], summary["forecast_steps"]) == (3, 3) == (cache.num_full_steps, 3)
    assert summary["method"] == "TeaCache l=0.15"
    assert re.search(r"Success, time: \d+\.\d+ s \(TeaCache l=0\.15: 3 full, 3 forecast steps", capsys.readouterr().out)
    record = read_records(tmp_path / "metadata.jsonl")[name]
    coefficients = list(TEACACHE_COEFFICIENTS["hunyuanvideo"])
    assert record["method"] == {"method": "teacache", "threshold": 0.15, "coefficients": coefficients}
    baseline, computed, skipped = teacache_step_flops(TINY_MODEL, 1, (2, 4, 4), TINY_TEXT_LEN)
    assert summary["flops"]["tflops"] == pytest.approx((3 * computed + 3 * skipped) / 1e12)
    assert summary["flops"]["full_tflops"] == pytest.approx(6 * baseline / 1e12)
    with pytest.raises(UsageError, match=rf"(?s){re.escape(name)}: method .*'teacache'.*'toca'"):
        run_main(tiny_argv(ckpts, tmp_path, "--prompt", PROMPTS[0], "--method", "toca"))


def test_flags_of_another_method_are_named_in_a_warning(capsys):
    tiny = ["--model", TINY_MODEL, "--video-size", "32", "32", "--video-length", "5", "--test-FLOPs"]
    report = run_main([*tiny, "--method", "toca", "--max-order", "2", "--teacache-thresh", "0.3", "--interval", "3"])
    assert report["method"] == "ToCa N=3 R=0.1"
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert warnings == [
        "warning: --max-order is not a setting of --method toca and is ignored: it is read by --method taylorseer",
        "warning: --teacache-thresh is not a setting of --method toca and is ignored: it is read by --method teacache",
    ]


def test_teacache_flops_are_per_step_kind_without_a_run(capsys):
    tiny = ["--model", TINY_MODEL, "--video-size", "32", "32", "--video-length", "5", "--test-FLOPs"]
    report = run_main([*tiny, "--method", "teacache", "--infer-steps", "10"])
    baseline, computed, skipped = teacache_step_flops(TINY_MODEL, 1, (2, 4, 4), 256)
    assert (report["computed_step_tflops"], report["skipped_step_tflops"]) == (computed / 1e12, skipped / 1e12)
    assert report["full_tflops"] == pytest.approx(10 * baseline / 1e12) and "speedup" not in report
    assert "depends on each video, so a run reports its FLOPs from its step counts" in capsys.readouterr().out


# --------------------------------------------------------------------------------------------------------- VBench


def test_vbench_mode_names_seeds_range_and_resume(ckpts, pipe, prompt_json, tmp_path):
    argv = tiny_argv(ckpts, tmp_path / "videos", "--prompt-json", str(prompt_json), "--index-start", "1",
                     "--index-end", "3", "--num-videos-per-prompt", "2")  # fmt: skip
    first = run_main(argv)
    # Prompts 1 and 2 (end exclusive), two seeds each; "/" became "_", plus the prompt's hash; VBench's exact name
    # "{prompt}-{k}.mp4" for the prompt that is a file name as it stands.
    digest = hashlib.sha256(PROMPTS[1].encode()).hexdigest()[:8]
    expected = [f"a red car on a street_road~{digest}-0.mp4", f"a red car on a street_road~{digest}-1.mp4",
                f"{PROMPTS[2]}-0.mp4", f"{PROMPTS[2]}-1.mp4"]  # fmt: skip
    assert [Path(p).name for p in first["videos"]] == expected
    # No temporary file left; one settings record per video, then the same with the mp4's checksum once written.
    assert sorted(p.name for p in (tmp_path / "videos").iterdir()) == sorted([*expected, "metadata.jsonl"])
    records = strict_records(tmp_path / "videos")
    planned = [(expected[0], PROMPTS[1], 42), (expected[1], PROMPTS[1], 43), (expected[2], PROMPTS[2], 42),
               (expected[3], PROMPTS[2], 43)]  # fmt: skip
    assert [(r["file"], r["prompt"], r["seed"]) for r in records] == planned + planned
    assert ["sha256" in r for r in records] == [False] * 4 + [True] * 4
    assert_records_match_files(tmp_path / "videos")
    assert (records[0]["infer_steps"], records[0]["video_length"], records[0]["flow_reverse"]) == (6, 5, True)
    assert records[0]["method"]["method"] == "taylorseer" and records[0]["method"]["interval"] == 5
    assert records[0]["precision"] == "float32"
    assert re.fullmatch("[0-9a-f]{16}", records[0]["weights_id"])
    for k in (0, 1):
        assert_mp4_holds(tmp_path / "videos" / expected[2 + k], expected_frames(pipe, PROMPTS[2], 42 + k), tmp_path)

    before = {name: (tmp_path / "videos" / name).stat().st_mtime_ns for name in expected}
    again = run_main(argv)
    assert (again["videos"], again["skipped"], again["total"]) == ([], 4, 4)
    assert len(strict_records(tmp_path / "videos")) == 8  # nothing to record
    original = (tmp_path / "videos" / expected[1]).read_bytes()
    (tmp_path / "videos" / expected[1]).unlink()
    (tmp_path / "videos" / ".tmp-4242-0.mp4").write_bytes(b"half a video")  # a killed run's: removed
    resumed = run_main(argv)
    assert [Path(p).name for p in resumed["videos"]] == [expected[1]] and resumed["skipped"] == 3
    assert (tmp_path / "videos" / expected[1]).read_bytes() == original  # made again, byte for byte
    for name in (expected[0], *expected[2:]):
        assert (tmp_path / "videos" / name).stat().st_mtime_ns == before[name], f"{name} was rewritten"
    assert not (tmp_path / "videos" / ".tmp-4242-0.mp4").exists()
    # The remade video's record: again without its old checksum while it was pending, then with the new one.
    assert [(r["file"], "sha256" in r) for r in strict_records(tmp_path / "videos")[8:]] == [
        (expected[1], False), (expected[1], True)]  # fmt: skip
    assert_records_match_files(tmp_path / "videos")

    # Other settings for existing videos: refused, naming the difference, before any model is loaded.
    with pytest.raises(UsageError, match=r"(?s)other settings.*infer_steps 6 -> 7.*another --save-path"):
        run_main([*argv, "--infer-steps", "7"])
    # A video with no record (made by something else): refused too, not adopted.
    (tmp_path / "videos" / expected[1]).rename(tmp_path / "videos" / f"{PROMPTS[3]}-0.mp4")
    argv_all = tiny_argv(ckpts, tmp_path / "videos", "--prompt-json", str(prompt_json), "--index-start", "3",
                         "--num-videos-per-prompt", "1")  # fmt: skip
    with pytest.raises(UsageError, match=f"{PROMPTS[3]}-0.mp4: exists but has no record in metadata.jsonl"):
        run_main(argv_all)


def test_torchrun_two_processes_write_the_videos_of_one(ckpts, prompt_json, tmp_path):
    common = ["--prompt-json", str(prompt_json), "--index-end", "2", "--num-videos-per-prompt", "2"]
    one = run_main(tiny_argv(ckpts, tmp_path / "one", *common))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(SCRIPT)]
    result = subprocess.run([*command, *tiny_argv(ckpts, tmp_path / "two", *common)],
                            capture_output=True, text=True, env=UNBUFFERED)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    written = {int(rank): int(count) for rank, count in re.findall(r"rank (\d)/2: wrote (\d+) videos", result.stdout)}
    assert written == {0: 2, 1: 2}
    names = sorted(Path(p).name for p in one["videos"])
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted([*names, "metadata.jsonl"])
    for name in names:
        np.testing.assert_array_equal(read_video(tmp_path / "two" / name), read_video(tmp_path / "one" / name), name)
    assert_records_match_files(tmp_path / "two")  # both ranks recorded their checksums, no line torn
    # Contiguous chunks: rank 0 made both videos of prompt 0, rank 1 both of prompt 1.
    summaries = [json.loads(line) for line in result.stdout.splitlines() if line.startswith('{"rank"')]
    videos = {summary["rank"]: [Path(p).name for p in summary["videos"]] for summary in summaries}
    assert videos == {
        0: [vbench_file_name(PROMPTS[0], 0), vbench_file_name(PROMPTS[0], 1)],
        1: [vbench_file_name(PROMPTS[1], 0), vbench_file_name(PROMPTS[1], 1)],
    }


def test_ulysses_two_ranks_make_the_video_of_one_process(ckpts, tmp_path):
    """--ulysses-degree 2: both ranks make the same video together (each holding half the tokens and the cache of its
    half; TaylorSeer N=5 forecasts included) and rank 0 writes it; it equals the single-process video."""
    common = ["--prompt", "a cat sitting on a table", "--num-videos", "2", "--lossless"]
    one = run_main(tiny_argv(ckpts, tmp_path / "one", *common))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(SCRIPT)]
    argv = tiny_argv(ckpts, tmp_path / "two", *common, "--ulysses-degree", "2")
    result = subprocess.run([*command, *argv], capture_output=True, text=True, env=ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    written = {int(rank): int(count) for rank, count in re.findall(r"rank (\d)/2: wrote (\d+) videos", result.stdout)}
    assert written == {0: 2, 1: 0}
    names = sorted(Path(p).name for p in one["videos"])
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted([*names, "metadata.jsonl"])
    for name in names:
        single, parallel = (read_video(tmp_path / run / name).astype(int) for run in ("one", "two"))
        # Near-lossless mp4s of float-rounding-equal videos: at most one level of YUV rounding apart.
        assert np.abs(single - parallel).max() <= 1, name


def test_ulysses_degree_needs_a_matching_number_of_processes(ckpts, tmp_path):
    argv = tiny_argv(ckpts, tmp_path / "videos", "--prompt", "a cat", "--ulysses-degree", "2")
    with pytest.raises(UsageError, match=r"--ulysses-degree 2 needs a number of processes divisible by it, got 1"):
        run_main(argv)
    assert not (tmp_path / "videos").exists()


# ----------------------------------------------------------------------------------------------------- helpers


def test_contiguous_share_keeps_neighbours_together():
    items = list(range(7))
    assert [contiguous_share(items, 3, part) for part in range(3)] == [[0, 1, 2], [3, 4], [5, 6]]
    assert [contiguous_share(items[:2], 4, part) for part in range(4)] == [[0], [1], [], []]
    assert contiguous_share(items, 1, 0) == items


def test_single_prompt_file_names_fit_255_bytes():
    chinese = "一只猫在草地上走" * 20  # 160 characters of 3 bytes
    name = single_prompt_file_name(chinese, 42)
    assert name == "seed42_" + chinese[:81] + ".mp4" and len(name.encode()) == 254  # 7 + 243 + 4, whole characters
    assert single_prompt_file_name("a/b " * 40, 7) == "seed7_" + "a_b " * 25 + ".mp4"  # 100 characters, as upstream


def test_missing_weights_are_one_message_listing_each_component(tmp_path):
    save_path = tmp_path / "out"
    argv = ["--prompt", "a cat", "--model-base", str(tmp_path / "ckpts"), "--save-path", str(save_path)]
    result = subprocess.run([sys.executable, str(SCRIPT), *argv], capture_output=True, text=True, env=ENV)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and result.stderr.count("error:") == 1
    assert "Traceback" not in result.stderr
    for component in ("transformer:", "vae:", "text_encoder + tokenizer:", "text_encoder_2 + tokenizer_2:"):
        assert component in result.stderr
    assert "mp_rank_00_model_states.pt" in result.stderr and "tencent/HunyuanVideo" in result.stderr
    assert "hunyuanvideo-community/HunyuanVideo" in result.stderr
    assert not save_path.exists()  # nothing is written before the weights are found


# ---------------------------------------------------------------------------------------------------- file names


def test_prompts_that_sanitize_alike_keep_two_files(ckpts, tmp_path):
    """ "a cat/dog" and "a cat_dog" were both "a cat_dog-0.mp4": the second video overwrote the first."""
    prompts = write_prompts(tmp_path / "prompts.json", ["a cat/dog", "a cat_dog"])
    folder = tmp_path / "videos"
    summary = run_main(tiny_argv(ckpts, folder, "--prompt-json", str(prompts), "--num-videos-per-prompt", "1"))
    digest = hashlib.sha256(b"a cat/dog").hexdigest()[:8]
    assert [Path(p).name for p in summary["videos"]] == [f"a cat_dog~{digest}-0.mp4", "a cat_dog-0.mp4"]
    assert sorted(mp4_bytes(folder)) == sorted([f"a cat_dog~{digest}-0.mp4", "a cat_dog-0.mp4"])
    records = read_records(folder / "metadata.jsonl")
    assert records[f"a cat_dog~{digest}-0.mp4"]["prompt"] == "a cat/dog"
    assert records["a cat_dog-0.mp4"]["prompt"] == "a cat_dog"
    assert_records_match_files(folder)


def test_videos_named_like_temporary_files_survive_a_rerun(ckpts, tmp_path):
    """A prompt starting with ".tmp-" made ".tmp-....mp4", which the next run deleted as a killed write's leftover;
    a leading "." also hid the video from evaluate.py."""
    prompts = write_prompts(tmp_path / "prompts.json", [".tmp-cat", ".hidden cat", "cat.tmp"])
    folder = tmp_path / "videos"
    argv = tiny_argv(ckpts, folder, "--prompt-json", str(prompts), "--num-videos-per-prompt", "1")
    first = run_main(argv)
    names = [Path(p).name for p in first["videos"]]
    assert [name[:9] for name in names] == ["_tmp-cat~", "_hidden c", "cat.tmp-0"]
    assert not any(name.startswith(".") for name in names)
    before = mp4_bytes(folder)
    again = run_main(argv)
    assert (again["videos"], again["skipped"]) == ([], 3)
    assert mp4_bytes(folder) == before


# -------------------------------------------------------------------------------------------- non-finite outputs


def nan_weights_checkpoint(ckpts: Path, root: Path) -> Path:
    """A copy of ``ckpts`` whose transformer has one NaN weight: a damaged checkpoint."""
    shutil.copytree(ckpts, root)
    dit = root / "hunyuan-video-t2v-720p" / "transformers" / "mp_rank_00_model_states.pt"
    state = torch.load(dit, weights_only=True)
    key = next(k for k in state["module"] if k.startswith("final_layer") and k.endswith("weight"))
    state["module"][key][0, 0] = float("nan")
    torch.save(state, dit)
    return root


def test_a_nan_video_is_not_saved_and_ends_the_run_with_one_message(ckpts, tmp_path, capsys):
    broken = nan_weights_checkpoint(ckpts, tmp_path / "broken")
    folder = tmp_path / "videos"
    with pytest.raises(SystemExit) as exit_info:
        cli(tiny_argv(broken, folder, "--prompt", "a cat", "--num-videos", "2"))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    (line,) = [line for line in err.splitlines() if "error:" in line]
    assert "The denoised latents of seed42_a cat.mp4 holds" in line and "non-finite" in line
    assert "--embedded-cfg-scale" in line and "--precision" in line and "--model-base" in line
    assert list(folder.glob("*.mp4")) == [] and list(folder.glob(".tmp-*")) == []
    strict_records(folder)  # valid JSON: no NaN anywhere


# ----------------------------------------------------------------------------------------------- weights identity


def other_weights_checkpoint(ckpts: Path, root: Path) -> Path:
    """A copy of ``ckpts`` with fine-tuned (slightly changed) transformer weights: same paths, sizes and keys."""
    shutil.copytree(ckpts, root)
    dit = root / "hunyuan-video-t2v-720p" / "transformers" / "mp_rank_00_model_states.pt"
    state = torch.load(dit, weights_only=True)
    state["module"] = {k: v + 1e-3 if v.is_floating_point() else v for k, v in state["module"].items()}
    torch.save(state, dit)
    return root


def test_videos_of_other_weights_are_refused_and_moved_weights_adopted(ckpts, tmp_path):
    folder = tmp_path / "videos"
    first = run_main(tiny_argv(ckpts, folder, "--prompt", "a cat"))
    before = mp4_bytes(folder)
    # The same weights in another folder: the same videos, adopted.
    moved = run_main(tiny_argv(shutil.copytree(ckpts, tmp_path / "moved"), folder, "--prompt", "a cat"))
    assert (moved["videos"], moved["skipped"]) == ([], 1)
    # Other weights under the same paths (the folder layout a fine-tune keeps): refused, nothing changed.
    other = other_weights_checkpoint(ckpts, tmp_path / "other")
    with pytest.raises(UsageError, match=r"(?s)1 conflicting files.*seed42_a cat\.mp4: weights_id '[0-9a-f]{16}' -> "):
        run_main(tiny_argv(other, folder, "--prompt", "a cat"))
    assert mp4_bytes(folder) == before and len(first["videos"]) == 1


# ------------------------------------------------------------------------------------------------ damaged outputs


def test_damaged_videos_are_set_aside_and_made_again(ckpts, tmp_path, capsys):
    """Truncated and swapped mp4s were adopted on resume; now the checksum finds them, and without a checksum (a run
    killed before recording it) decoding does."""
    prompts = write_prompts(tmp_path / "prompts.json", ["a cat"])
    folder = tmp_path / "videos"
    argv = tiny_argv(ckpts, folder, "--prompt-json", str(prompts), "--num-videos-per-prompt", "4")
    run_main(argv)
    good = mp4_bytes(folder)
    v0, v1, v2, v3 = sorted(good)
    (folder / v0).write_bytes(good[v0][: len(good[v0]) // 2])  # truncated
    (folder / v1).write_bytes(good[v2])  # swapped: each is a sound video, of the other seed
    (folder / v2).write_bytes(good[v1])
    untouched = (folder / v3).stat().st_mtime_ns
    capsys.readouterr()
    summary = run_main(argv)
    assert summary["damaged"] == [v0, v1, v2] and summary["skipped"] == 1
    assert mp4_bytes(folder) == good
    assert (folder / v3).stat().st_mtime_ns == untouched
    assert (folder / f"{v0}.damaged").read_bytes() == good[v0][: len(good[v0]) // 2]  # set aside, not deleted
    assert (folder / f"{v1}.damaged").read_bytes() == good[v2]
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 3 and "differs from what this folder's run wrote" in warnings[0]
    assert_records_match_files(folder)

    # No checksums recorded (killed between writing and recording): every file is decoded and checked.
    lines = (folder / "metadata.jsonl").read_text().splitlines()
    (folder / "metadata.jsonl").write_text("".join(f"{line}\n" for line in lines if "sha256" not in line))
    (folder / v0).write_bytes(good[v0][:100])  # does not decode
    write_video(folder / v1, read_video(folder / v1)[:3])  # a sound mp4 of 3 frames instead of 5
    summary = run_main(argv)
    assert summary["damaged"] == [v0, v1] and summary["videos"] == [str(folder / v0), str(folder / v1)]
    assert mp4_bytes(folder) == good
    err = capsys.readouterr().err
    assert "does not decode" in err and "has 3 frames, expected 5" in err
    assert_records_match_files(folder)  # the adopted ones got their checksums


# ----------------------------------------------------------------------------------------------------- kill/resume


def test_a_killed_run_resumes_to_the_bytes_of_an_uninterrupted_one(ckpts, prompt_json, tmp_path, monkeypatch):
    """mp4 bytes are deterministic for identical frames (libx264 at a fixed quality on one machine), so a resumed
    run must give the very files of an uninterrupted one, whichever point the kill hit."""
    common = ["--prompt-json", str(prompt_json), "--index-end", "2", "--num-videos-per-prompt", "2"]
    whole = tmp_path / "whole"
    run_main(tiny_argv(ckpts, whole, *common))
    expected = mp4_bytes(whole)
    assert len(expected) == 4

    killed = tmp_path / "killed"
    real_record, real_write = sample_video.record_written, sample_video.write_video

    def killed_before_recording(path, record, written):
        if record["seed"] == 43:  # the second video: written, its checksum never recorded
            raise KeyboardInterrupt
        real_record(path, record, written)

    monkeypatch.setattr(sample_video, "record_written", killed_before_recording)
    with pytest.raises(KeyboardInterrupt):
        run_main(tiny_argv(ckpts, killed, *common))
    assert len(mp4_bytes(killed)) == 2

    def killed_while_writing(path, frames, **kwargs):
        (path.parent / ".tmp-999-0.mp4").write_bytes(b"half a video")  # what a hard kill leaves
        raise KeyboardInterrupt

    monkeypatch.setattr(sample_video, "record_written", real_record)
    monkeypatch.setattr(sample_video, "write_video", killed_while_writing)
    with pytest.raises(KeyboardInterrupt):
        run_main(tiny_argv(ckpts, killed, *common))
    monkeypatch.setattr(sample_video, "write_video", real_write)
    resumed = run_main(tiny_argv(ckpts, killed, *common))
    assert resumed["skipped"] == 2 and len(resumed["videos"]) == 2
    assert mp4_bytes(killed) == expected
    assert sorted(p.name for p in killed.iterdir()) == sorted([*expected, "metadata.jsonl"])
    assert_records_match_files(killed)
