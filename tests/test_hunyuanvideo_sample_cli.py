"""TaylorSeer-HunyuanVideo/sample_video.py end to end: FLOPs, mp4 output, VBench mode, torchrun, readable errors."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hunyuanvideo_testing import TINY_MODEL, TINY_TEXT_LEN, write_official_checkpoint

from common.taylor_cache import TaylorCache, TaylorSeerConfig
from common.video_io import read_video, video_to_uint8_frames, write_video
from taylorseer_hunyuanvideo.pipeline import HunyuanVideoPipeline
from taylorseer_hunyuanvideo.sample_video import (
    UsageError,
    build_parser,
    check_args,
    contiguous_share,
    main,
    single_prompt_file_name,
)
from taylorseer_hunyuanvideo.weights import find_model_files, load_components

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "TaylorSeer-HunyuanVideo" / "sample_video.py"
# One thread per process: torchrun's workers run one anyway, and equal thread counts keep the float sums identical.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
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


def test_flops_of_the_paper_setting_need_no_weights(tmp_path):
    """480x640, 65 frames, 50 steps, N=5 O=1 E=1: the reported 5.00x (reference-semantics §4.5: 4.995)."""
    command = [sys.executable, str(SCRIPT), *PAPER, "--test-FLOPs", "--model-base", str(tmp_path / "none")]
    result = subprocess.run(command, capture_output=True, text=True, env=ENV, check=True)
    report = last_json_line(result.stdout)
    assert report["speedup"] == pytest.approx(5.00, abs=0.01)
    assert (report["full_steps"], report["forecast_steps"]) == (10, 40)
    assert report["full_step_tflops"] == pytest.approx(595.4, rel=2e-3)  # the reference's calflops count
    assert report["full_tflops"] == pytest.approx(50 * report["full_step_tflops"])
    assert (report["model"], report["height"], report["width"], report["video_length"]) == (
        "HYVideo-T/2-cfgdistill", 480, 640, 65
    )  # fmt: skip
    assert "baseline:" in result.stdout and "TaylorSeer:" in result.stdout and "speedup:" in result.stdout


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
    assert len(re.findall(r"Success, time: \d+\.\d+ s \(TaylorSeer: 2 full, 4 forecast steps", out)) == 2
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
    with pytest.raises(UsageError, match=r"(?s)2 conflicting files.*seed42_a cat sitting on a table\.mp4: taylorseer"):
        run_main(tiny_argv(ckpts, tmp_path, "--prompt", PROMPTS[0], "--num-videos", "2", "--interval", "1"))


# --------------------------------------------------------------------------------------------------------- VBench


def test_vbench_mode_names_seeds_range_and_resume(ckpts, pipe, prompt_json, tmp_path):
    argv = tiny_argv(ckpts, tmp_path / "videos", "--prompt-json", str(prompt_json), "--index-start", "1",
                     "--index-end", "3", "--num-videos-per-prompt", "2")  # fmt: skip
    first = run_main(argv)
    # Prompts 1 and 2 (end exclusive), two seeds each; "/" became "_".
    expected = [f"{PROMPTS[1].replace('/', '_')}-0.mp4", f"{PROMPTS[1].replace('/', '_')}-1.mp4",
                f"{PROMPTS[2]}-0.mp4", f"{PROMPTS[2]}-1.mp4"]  # fmt: skip
    assert [Path(p).name for p in first["videos"]] == expected
    # No temporary file left; one settings record per video.
    assert sorted(p.name for p in (tmp_path / "videos").iterdir()) == sorted([*expected, "metadata.jsonl"])
    records = [json.loads(line) for line in (tmp_path / "videos" / "metadata.jsonl").read_text().splitlines()]
    assert [(r["file"], r["prompt"], r["seed"]) for r in records] == [
        (expected[0], PROMPTS[1], 42), (expected[1], PROMPTS[1], 43), (expected[2], PROMPTS[2], 42),
        (expected[3], PROMPTS[2], 43)]  # fmt: skip
    assert (records[0]["infer_steps"], records[0]["video_length"], records[0]["flow_reverse"]) == (6, 5, True)
    assert records[0]["taylorseer"]["interval"] == 5 and records[0]["precision"] == "float32"
    for k in (0, 1):
        assert_mp4_holds(tmp_path / "videos" / expected[2 + k], expected_frames(pipe, PROMPTS[2], 42 + k), tmp_path)

    before = {name: (tmp_path / "videos" / name).stat().st_mtime_ns for name in expected}
    again = run_main(argv)
    assert (again["videos"], again["skipped"], again["total"]) == ([], 4, 4)
    frames = read_video(tmp_path / "videos" / expected[1])
    (tmp_path / "videos" / expected[1]).unlink()
    (tmp_path / "videos" / ".tmp-4242-0.mp4").write_bytes(b"half a video")  # a killed run's: removed
    resumed = run_main(argv)
    assert [Path(p).name for p in resumed["videos"]] == [expected[1]] and resumed["skipped"] == 3
    np.testing.assert_array_equal(read_video(tmp_path / "videos" / expected[1]), frames)
    for name in (expected[0], *expected[2:]):
        assert (tmp_path / "videos" / name).stat().st_mtime_ns == before[name], f"{name} was rewritten"
    assert not (tmp_path / "videos" / ".tmp-4242-0.mp4").exists()
    assert len((tmp_path / "videos" / "metadata.jsonl").read_text().splitlines()) == 4  # nothing changed

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
                            capture_output=True, text=True, env=ENV)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    written = {int(rank): int(count) for rank, count in re.findall(r"rank (\d)/2: wrote (\d+) videos", result.stdout)}
    assert written == {0: 2, 1: 2}
    names = sorted(Path(p).name for p in one["videos"])
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted([*names, "metadata.jsonl"])
    for name in names:
        np.testing.assert_array_equal(read_video(tmp_path / "two" / name), read_video(tmp_path / "one" / name), name)
    # Contiguous chunks: rank 0 made both videos of prompt 0, rank 1 both of prompt 1.
    summaries = [json.loads(line) for line in result.stdout.splitlines() if line.startswith('{"rank"')]
    videos = {summary["rank"]: [Path(p).name for p in summary["videos"]] for summary in summaries}
    assert videos == {
        0: [f"{PROMPTS[0]}-0.mp4", f"{PROMPTS[0]}-1.mp4"],
        1: [f"{PROMPTS[1].replace('/', '_')}-0.mp4", f"{PROMPTS[1].replace('/', '_')}-1.mp4"],
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


# ------------------------------------------------------------------------------------------------------- errors


CAT = ["--prompt", "a cat"]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ([*CAT, "--video-length", "64"], "video length 64 must be 4k + 1 frames"),
        ([*CAT, "--video-size", "480", "650"], "must be positive multiples of 16"),
        ([*CAT, "--video-size", "-16", "32"], "must be positive multiples of 16"),
        ([*CAT, "--interval", "0"], "invalid TaylorSeer setting: interval must be >= 1"),
        ([*CAT, "--max-order", "-1"], "invalid TaylorSeer setting: max_order must be >= 0"),
        ([*CAT, "--first-enhance", "0"], "invalid TaylorSeer setting: first_enhance must be >= 1"),
        ([*CAT, "--cfg-scale", "0.5"], "--cfg-scale must be >= 1.0"),
        ([*CAT, "--infer-steps", "0"], "--infer-steps must be >= 1"),
        ([*CAT, "--flow-shift", "0"], "--flow-shift must be > 0"),
        ([*CAT, "--num-videos", "0"], "--num-videos must be >= 1"),
        (["--prompt", "   "], "--prompt is empty"),
        ([], "give exactly one of --prompt"),
        ([*CAT, "--prompt-json", "p.json"], "give exactly one of --prompt"),
        ([*CAT, "--model", "HYVideo-XL"], "invalid choice"),
        ([*CAT, "--ulysses-degree", "0"], "--ulysses-degree must be >= 1"),
        ([*CAT, "--ulysses-degree", "5"], "--ulysses-degree 5 must divide the 24 attention heads"),
        (
            [*CAT, "--ulysses-degree", "2", "--video-size", "16", "16", "--video-length", "1"],
            "divide the 1 video tokens",
        ),
    ],
)
def test_invalid_flags_exit_with_the_reason(arguments, message, capsys):
    parser = build_parser()
    with pytest.raises(SystemExit) as exit_info:
        check_args(parser.parse_args(arguments), parser)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("content", "extra", "message"),
    [
        (None, [], "not found (expected VBench's full-info JSON"),
        ("[]", [], "must be a non-empty list"),
        ("{not json", [], "is not valid JSON"),
        ('[{"prompt_en": "a cat"}, {"dimension": []}]', [], 'entry 1 has no non-empty "prompt_en"'),
        ('[{"prompt_en": "a cat"}]', ["--index-start", "1"], "--index-start 1 selects no prompt"),
        ('[{"prompt_en": "a cat"}]', ["--index-start", "1", "--index-end", "1"], "must be > --index-start"),
        (json.dumps([{"prompt_en": "cat " * 70}]), [], "too long for a file name"),
    ],
)
def test_bad_prompt_files_exit_with_the_reason(tmp_path, content, extra, message, capsys):
    path = tmp_path / "prompts.json"
    if content is not None:
        path.write_text(content)
    parser = build_parser()
    with pytest.raises(SystemExit) as exit_info:
        check_args(parser.parse_args(["--prompt-json", str(path), *extra]), parser)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


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


def test_save_path_naming_a_file_is_one_error_line(ckpts, tmp_path):
    (tmp_path / "out").write_text("not a folder")
    argv = tiny_argv(ckpts, tmp_path / "out", "--prompt", "a cat")
    result = subprocess.run([sys.executable, str(SCRIPT), *argv], capture_output=True, text=True, env=ENV)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    expected = f"--save-path {tmp_path / 'out'} exists and is not a folder: choose another --save-path"
    assert result.stderr == f"error: {expected}\n"


def test_corrupt_records_are_one_error_line(ckpts, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "metadata.jsonl").write_text('{"file": "a.mp4", "prompt": "a", "seed": 1}\n{"file": "b.mp4"}\n')
    argv = tiny_argv(ckpts, tmp_path / "out", "--prompt", "a cat")
    result = subprocess.run([sys.executable, str(SCRIPT), *argv], capture_output=True, text=True, env=ENV)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr == (
        f"error: {tmp_path / 'out' / 'metadata.jsonl'}, line 2: record without 'prompt', 'seed'; fix or delete that "
        "line\n"
    )


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
