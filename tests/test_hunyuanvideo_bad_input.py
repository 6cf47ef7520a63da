"""Bad input to TaylorSeer-HunyuanVideo/sample_video.py and evaluate.py, flag by flag and file by file: exit code 2,
one ``error:`` line that names the fix, no traceback, nothing written (tests/cli_testing.assert_refused), in process.

Each table row is (arguments, expected message fragment, files to create first); "{tmp}" in an argument is the
test's folder, which is watched: no file may appear or change in it. The coverage tests at the end fail when a flag is
added to either script without a row here.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from cli_testing import assert_refused
from hunyuanvideo_testing import TINY_MODEL, TINY_TEXT_LEN, write_official_checkpoint

from common.cli import MAX_SEED
from common.quality_metrics import LPIPS_WEIGHTS_ENV
from common.video_io import write_video
from taylorseer_hunyuanvideo import evaluate, sample_video
from taylorseer_hunyuanvideo.pipeline import HunyuanVideoPipeline

pytestmark = pytest.mark.usefixtures("one_thread")

DIR = object()
"""In a row's files: make a folder."""
GOOD, SHORT, TRUNCATED = "<good mp4>", "<3-frame mp4>", "<truncated mp4>"
"""In a row's files: a sound 4-frame 32x32 mp4, a sound 3-frame one, and the first half of the sound one."""
CAT = ["--prompt", "a cat"]
PROMPT_JSON = ["--prompt-json", "{tmp}/p.json"]


def vbench_json(*prompts: str) -> str:
    return json.dumps([{"prompt_en": p, "dimension": ["scene"]} for p in prompts])


def collision() -> str:
    """A prompt whose literal text is the sanitized, hashed name of another prompt in the same file."""
    digest = hashlib.sha256(b"a cat/dog").hexdigest()[:8]
    return vbench_json("a cat/dog", f"a cat_dog~{digest}")


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> Path:
    return write_official_checkpoint(tmp_path_factory.mktemp("hunyuanvideo") / "ckpts")


@pytest.fixture(scope="module")
def mp4s(tmp_path_factory) -> dict[str, bytes]:
    folder = tmp_path_factory.mktemp("mp4s")
    frames = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    good = write_video(folder / "good.mp4", frames, quality=None).read_bytes()
    short = write_video(folder / "short.mp4", frames[:3], quality=None).read_bytes()
    return {GOOD: good, SHORT: short, TRUNCATED: good[: len(good) // 2]}


def make_files(root: Path, files: dict, mp4s: dict[str, bytes] | None = None) -> None:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if content is DIR:
            path.mkdir(exist_ok=True)
        elif isinstance(content, bytes):
            path.write_bytes(content)
        elif mp4s is not None and content in mp4s:
            path.write_bytes(mp4s[content])
        else:
            path.write_text(content)


def expand(argv: list[str], tmp_path: Path) -> list[str]:
    return [arg.replace("{tmp}", str(tmp_path)) for arg in argv]


# --------------------------------------------------------------------------------------------------- sample_video


def sample_base(ckpts: Path) -> list[str]:
    return ["--model", TINY_MODEL, "--model-base", str(ckpts), "--video-size", "32", "32", "--video-length", "5",
            "--infer-steps", "6", "--text-len", str(TINY_TEXT_LEN), "--save-path", "{tmp}/out",
            "--device", "cpu"]  # fmt: skip


NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")

SAMPLE_BAD_INPUTS = [
    # prompts
    pytest.param([], "give exactly one of --prompt", {}, id="no-prompt"),
    pytest.param([*CAT, *PROMPT_JSON], "give exactly one of --prompt", {"p.json": vbench_json("a")}, id="two-modes"),
    pytest.param(["--prompt", "   "], "--prompt is empty", {}, id="prompt-blank"),
    pytest.param([*CAT, "--neg-prompt", "blurry"], "--neg-prompt is used only with classifier-free", {}, id="neg"),
    pytest.param([*CAT, "--num-videos", "0"], "--num-videos: expected an integer >= 1, got 0", {}, id="videos-0"),
    pytest.param([*CAT, "--num-videos", "1.5"], "--num-videos: expected an integer >= 1", {}, id="videos-float"),
    pytest.param(
        [*PROMPT_JSON, "--num-videos", "2"],
        "--num-videos is for --prompt",
        {"p.json": vbench_json("a")},
        id="videos-in-vbench",
    ),
    pytest.param(
        ["--prompt-json", "{tmp}/none.json"], "not found (expected VBench's full-info JSON", {}, id="json-missing"
    ),
    pytest.param(PROMPT_JSON, "is a folder", {"p.json": DIR}, id="json-folder"),
    pytest.param(PROMPT_JSON, "is not valid JSON", {"p.json": ""}, id="json-empty-file"),
    pytest.param(PROMPT_JSON, "is not valid JSON", {"p.json": "{not json"}, id="json-invalid"),
    pytest.param(PROMPT_JSON, "is not valid JSON", {"p.json": b"\xff\xfe[]"}, id="json-not-utf8"),
    pytest.param(PROMPT_JSON, "must be a non-empty list", {"p.json": "[]"}, id="json-empty-list"),
    pytest.param(
        PROMPT_JSON,
        'entry 1 needs a non-empty "prompt_en" string',
        {"p.json": '[{"prompt_en": "a"}, {}]'},
        id="json-entry",
    ),
    pytest.param(PROMPT_JSON, "too long for a file name", {"p.json": vbench_json("cat " * 70)}, id="json-long"),
    pytest.param(PROMPT_JSON, "would both be saved as", {"p.json": collision()}, id="json-name-collision"),
    pytest.param(
        [*PROMPT_JSON, "--index-start", "-1"],
        "--index-start: expected an integer >= 0",
        {"p.json": vbench_json("a")},
        id="start-negative",
    ),
    pytest.param(
        [*PROMPT_JSON, "--index-start", "1"],
        "--index-start 1 selects no prompt",
        {"p.json": vbench_json("a")},
        id="start-past-end",
    ),
    pytest.param(
        [*PROMPT_JSON, "--index-end", "0"],
        "--index-end: expected an integer >= 1",
        {"p.json": vbench_json("a")},
        id="end-0",
    ),
    pytest.param(
        [*PROMPT_JSON, "--index-start", "1", "--index-end", "1"],
        "must be > --index-start",
        {"p.json": vbench_json("a", "b")},
        id="end-before-start",
    ),
    pytest.param([*CAT, "--index-start", "1"], "--index-start is for --prompt-json", {}, id="start-with-prompt"),
    pytest.param([*CAT, "--index-end", "2"], "--index-end is for --prompt-json", {}, id="end-with-prompt"),
    pytest.param(
        [*PROMPT_JSON, "--num-videos-per-prompt", "0"],
        "--num-videos-per-prompt: expected an integer >= 1",
        {"p.json": vbench_json("a")},
        id="per-prompt-0",
    ),
    pytest.param(
        [*CAT, "--num-videos-per-prompt", "2"],
        "--num-videos-per-prompt is for --prompt-json",
        {},
        id="per-prompt-with-prompt",
    ),
    # video and sampler
    pytest.param([*CAT, "--video-size", "480", "650"], "must be positive multiples of 16", {}, id="size-16"),
    pytest.param([*CAT, "--video-size", "-16", "32"], "must be positive multiples of 16", {}, id="size-negative"),
    pytest.param([*CAT, "--video-size", "32"], "--video-size: expected 2 arguments", {}, id="size-one-value"),
    pytest.param([*CAT, "--video-length", "64"], "video length 64 must be 4k + 1 frames", {}, id="length-4k1"),
    pytest.param([*CAT, "--video-length", "0"], "must be 4k + 1 frames", {}, id="length-0"),
    pytest.param([*CAT, "--video-length", "x"], "--video-length: invalid int value", {}, id="length-text"),
    pytest.param([*CAT, "--infer-steps", "0"], "--infer-steps: expected an integer >= 1", {}, id="steps-0"),
    pytest.param([*CAT, "--seed", "-1"], f"--seed: expected an integer in 0..{MAX_SEED}", {}, id="seed-negative"),
    pytest.param([*CAT, "--seed", str(MAX_SEED + 1)], "--seed: expected an integer in 0..", {}, id="seed-huge"),
    pytest.param(
        [*CAT, "--seed", str(MAX_SEED), "--num-videos", "2"], "past the largest seed", {}, id="seed-last-past-max"
    ),
    pytest.param(
        [*PROMPT_JSON, "--seed", str(MAX_SEED - 3)],
        f"use --seed <= {MAX_SEED - 4}",
        {"p.json": vbench_json("a")},
        id="seed-vbench-past-max",
    ),
    pytest.param([*CAT, "--flow-shift", "0"], "--flow-shift: expected a finite number > 0", {}, id="shift-0"),
    pytest.param([*CAT, "--flow-shift", "nan"], "--flow-shift: expected a finite number > 0", {}, id="shift-nan"),
    pytest.param([*CAT, "--flow-shift", "inf"], "--flow-shift: expected a finite number > 0", {}, id="shift-inf"),
    pytest.param(
        [*CAT, "--flow-reverse=yes"],
        "--flow-reverse/--no-flow-reverse: ignored explicit argument",
        {},
        id="reverse-value",
    ),
    pytest.param(
        [*CAT, "--embedded-cfg-scale", "nan"],
        "--embedded-cfg-scale: expected a finite number >= 0",
        {},
        id="embedded-nan",
    ),
    pytest.param(
        [*CAT, "--embedded-cfg-scale", "inf"], "--embedded-cfg-scale: expected a finite number", {}, id="embedded-inf"
    ),
    pytest.param(
        [*CAT, "--embedded-cfg-scale", "-1"],
        "--embedded-cfg-scale: expected a finite number >= 0",
        {},
        id="embedded-negative",
    ),
    pytest.param(
        [*CAT, "--embedded-cfg-scale", "100", "--precision", "fp16"],
        "x 1000 overflows fp16",
        {},
        id="embedded-fp16-overflow",
    ),
    pytest.param([*CAT, "--cfg-scale", "nan"], "--cfg-scale: expected a finite number >= 1", {}, id="cfg-nan"),
    pytest.param([*CAT, "--cfg-scale", "0.5"], "--cfg-scale: expected a finite number >= 1", {}, id="cfg-low"),
    pytest.param([*CAT, "--fps", "0"], "--fps: expected an integer in 1..1000", {}, id="fps-0"),
    pytest.param([*CAT, "--fps", "nan"], "--fps: expected an integer in 1..1000", {}, id="fps-nan"),
    # model and weights
    pytest.param([*CAT, "--model", "HYVideo-XL"], "--model: invalid choice", {}, id="model"),
    pytest.param([*CAT, "--model-base", "{tmp}/none"], "HunyuanVideo weights not found", {}, id="model-base"),
    pytest.param([*CAT, "--dit-weight", "{tmp}/none.pt"], "transformer (--dit-weight)", {}, id="dit-weight-missing"),
    pytest.param(
        [*CAT, "--dit-weight", "{tmp}/dit.pt"],
        "Could not read checkpoint file",
        {"dit.pt": "not torch"},
        id="dit-weight-garbage",
    ),
    pytest.param([*CAT, "--load-key", "ema"], "with its weights under 'ema'", {}, id="load-key"),
    pytest.param([*CAT, "--text-len", "0"], "--text-len: expected an integer >= 1", {}, id="text-len"),
    pytest.param(
        [*CAT, "--hidden-state-skip-layer", "-1"],
        "--hidden-state-skip-layer: expected an integer >= 0",
        {},
        id="skip-negative",
    ),
    pytest.param([*CAT, "--hidden-state-skip-layer", "99"], "cannot be used as asked", {}, id="skip-too-deep"),
    pytest.param(
        [*CAT, "--apply-final-norm=1"],
        "--apply-final-norm/--no-apply-final-norm: ignored explicit argument",
        {},
        id="norm",
    ),
    pytest.param([*CAT, "--vae-tiling=1"], "--vae-tiling/--no-vae-tiling: ignored explicit argument", {}, id="tiling"),
    pytest.param([*CAT, "--precision", "fp8"], "--precision: invalid choice", {}, id="precision"),
    pytest.param(
        [*CAT, "--text-encoder-precision", "int8"], "--text-encoder-precision: invalid choice", {}, id="text-precision"
    ),
    pytest.param([*CAT, "--vae-precision", "fp64"], "--vae-precision: invalid choice", {}, id="vae-precision"),
    pytest.param(
        [*CAT, "--use-cpu-offload=1"],
        "--use-cpu-offload/--no-use-cpu-offload: ignored explicit argument",
        {},
        id="offload",
    ),
    pytest.param([*CAT, "--device", "cuda"], "no CUDA GPU is visible", {}, id="device-cuda", marks=NO_CUDA),
    pytest.param([*CAT, "--device", "cuda:99"], "--device cuda:99", {}, id="device-index"),
    pytest.param([*CAT, "--device", "gpu"], "is not a torch device", {}, id="device-name"),
    # outputs
    pytest.param([*CAT, "--save-path", "{tmp}/out"], "exists and is not a folder", {"out": "a file"}, id="save-file"),
    pytest.param([*CAT, "--save-path", "{tmp}/f/out"], "cannot be created", {"f": "a file"}, id="save-under-file"),
    pytest.param(
        CAT,
        "line 2: record without 'prompt', 'seed'",
        {"out/metadata.jsonl": '{"file": "a.mp4", "prompt": "a", "seed": 1}\n{"file": "b.mp4"}\n'},
        id="records-corrupt",
    ),
    pytest.param(CAT, "line 1: not a JSON record", {"out/metadata.jsonl": "{cut\n"}, id="records-not-json"),
    pytest.param(CAT, "metadata.jsonl is not a file", {"out/metadata.jsonl": DIR}, id="records-folder"),
    pytest.param(
        CAT,
        "exists but has no record in metadata.jsonl",
        {"out/seed42_a cat.mp4": "someone's video"},
        id="video-without-record",
    ),
    pytest.param([*CAT, "--lossless=1"], "--lossless/--no-lossless: ignored explicit argument", {}, id="lossless"),
    pytest.param([*CAT, "--ulysses-degree", "0"], "--ulysses-degree: expected an integer >= 1", {}, id="ulysses-0"),
    pytest.param([*CAT, "--ulysses-degree", "3"], "must divide the 4 attention heads", {}, id="ulysses-heads"),
    pytest.param(
        [*CAT, "--ulysses-degree", "2"], "needs a number of processes divisible by it", {}, id="ulysses-processes"
    ),
    pytest.param([*CAT, "--test-FLOPs=1"], "--test-FLOPs: ignored explicit argument", {}, id="flops"),
    # TaylorSeer
    pytest.param([*CAT, "--interval", "0"], "interval must be >= 1", {}, id="interval"),
    pytest.param([*CAT, "--max-order", "-1"], "max_order must be >= 0", {}, id="order"),
    pytest.param([*CAT, "--first-enhance", "0"], "first_enhance must be >= 1", {}, id="enhance"),
    pytest.param(
        [*CAT, "--infer-steps", "12", "--derivative-start-step", "11"],
        "forms no derivative",
        {},
        id="derivative-start-past-schedule",
    ),
    pytest.param([*CAT, "--factor-dtype", "int8"], "--factor-dtype: invalid choice", {}, id="factor-dtype"),
    pytest.param([*CAT, "--forecaster", "spline"], "--forecaster: invalid choice", {}, id="forecaster"),
    pytest.param([*CAT, "--hermite-scale", "nan"], "--hermite-scale: expected a finite", {}, id="hermite-scale"),
    pytest.param([*CAT, "--full-steps", "0"], "--full-steps: expected an integer >= 1", {}, id="full-steps"),
    pytest.param([*CAT, "--placement", "random"], "--placement: invalid choice", {}, id="placement"),
    pytest.param([*CAT, "--placement-power", "2"], "sets the late-dense placement", {}, id="placement-power"),
    pytest.param(
        [*CAT, "--placement", "list", "--full-step-list", "missing.json"],
        "cannot read missing.json",
        {},
        id="full-step-list",
    ),
    # caching method
    pytest.param([*CAT, "--method", "magic"], "--method: invalid choice: 'magic'", {}, id="method"),
    pytest.param(
        [*CAT, "--method", "toca", "--interval", "0"],
        "invalid --method toca setting: interval must be an int >= 1",
        {},
        id="method-setting",
    ),
    pytest.param(
        [*CAT, "--method", "delta-dit", "--cached-blocks", "0"],
        "--cached-blocks: expected an integer >= 1, got 0",
        {},
        id="cached-blocks-0",
    ),
    pytest.param(
        [*CAT, "--method", "delta-dit", "--cached-blocks", "5"],
        "--cached-blocks 5 exceeds the 4 blocks of HYVideo-tiny: use 1..4",
        {},
        id="cached-blocks-past-depth",
    ),
    pytest.param(
        [*CAT, "--method", "delta-dit", "--delta-boundary", "1.5"],
        "--delta-boundary: expected a finite number >= 0 and <= 1, got 1.5",
        {},
        id="delta-boundary",
    ),
    pytest.param(
        [*CAT, "--method", "toca", "--fresh-ratio", "nan"],
        "--fresh-ratio: expected a finite number >= 0 and <= 1, got 'nan'",
        {},
        id="fresh-ratio-nan",
    ),
    pytest.param(
        [*CAT, "--method", "duca", "--fresh-ratio", "1.1"],
        "--fresh-ratio: expected a finite number >= 0 and <= 1, got 1.1",
        {},
        id="fresh-ratio-high",
    ),
    pytest.param(
        [*CAT, "--method", "toca", "--toca-score", "attention"],
        "--toca-score: invalid choice: 'attention'",
        {},
        id="toca-score",
    ),
    pytest.param(
        [*CAT, "--method", "toca", "--layer-schedule=1"],
        "--layer-schedule/--no-layer-schedule: ignored explicit argument",
        {},
        id="layer-schedule",
    ),
    pytest.param(
        [*CAT, "--method", "teacache", "--teacache-thresh", "-0.1"],
        "--teacache-thresh: expected a finite number >= 0, got -0.1",
        {},
        id="teacache-thresh",
    ),
    pytest.param(
        [*CAT, "--method", "teacache", "--teacache-thresh", "inf"],
        "--teacache-thresh: expected a finite number >= 0, got 'inf'",
        {},
        id="teacache-thresh-inf",
    ),
    pytest.param(
        [*CAT, "--method", "teacache", "--teacache-coefficients", "{tmp}/none.json"],
        "argument --teacache-coefficients: ",
        {},
        id="teacache-coefficients",
    ),
]


@pytest.mark.parametrize(("argv", "message", "files"), SAMPLE_BAD_INPUTS)
def test_sample_video_refuses_bad_input(ckpts, tmp_path, capsys, argv, message, files):
    make_files(tmp_path, files)
    assert_refused(sample_video.cli, expand([*sample_base(ckpts), *argv], tmp_path), message, capsys, watch=tmp_path)


def test_sample_video_refuses_an_unwritable_save_path(ckpts, tmp_path, capsys, monkeypatch):
    """A folder that refuses new files (read-only mount, permissions; simulated, since root writes anywhere)."""
    real = tempfile.TemporaryFile

    def refuse_in_tmp(*args, dir=None, **kwargs):
        if dir is not None and Path(dir) == tmp_path:
            raise PermissionError(13, "Permission denied")
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "TemporaryFile", refuse_in_tmp)
    argv = expand([*sample_base(ckpts), *CAT], tmp_path)
    assert_refused(sample_video.cli, argv, "refuses new files (Permission denied)", capsys, watch=tmp_path)


def test_sample_video_refuses_read_only_records(ckpts, tmp_path, capsys, monkeypatch):
    """A read-only metadata.jsonl would fail after the first video; refused first (simulated, as above)."""
    make_files(tmp_path, {"out/metadata.jsonl": ""})
    monkeypatch.setattr(sample_video.os, "access", lambda path, mode: Path(path).name != "metadata.jsonl")
    argv = expand([*sample_base(ckpts), *CAT], tmp_path)
    assert_refused(sample_video.cli, argv, "metadata.jsonl is read-only", capsys, watch=tmp_path)


def test_the_pipeline_refuses_non_finite_guidance():
    """The python API's own checks: NaN never reaches the sampler, and an fp16 guidance overflow is named."""
    fp16 = SimpleNamespace(
        transformer=SimpleNamespace(params=SimpleNamespace(guidance_embed=True)),
        device=torch.device("cpu"),
        dtype=torch.float16,
    )
    with pytest.raises(ValueError, match=r"embedded_guidance_scale 100\.0 x 1000 is not finite in the .* float16"):
        HunyuanVideoPipeline.guidance(fp16, 1, 100.0)
    assert HunyuanVideoPipeline.guidance(fp16, 1, 6.0).tolist() == [6000.0]
    pipe = object.__new__(HunyuanVideoPipeline)  # the checks run before any model is touched
    for kwargs, message in (
        ({"embedded_guidance_scale": float("nan")}, "embedded_guidance_scale must be finite"),
        ({"cfg_scale": float("inf")}, "cfg_scale must be finite and >= 1"),
        ({"flow_shift": float("nan")}, "flow_shift must be finite"),
    ):
        with pytest.raises(ValueError, match=message):
            pipe("a cat", height=32, width=32, video_length=5, **kwargs)


# ------------------------------------------------------------------------------------------------------- evaluate

PAIRED = ["--reference-dir", "{tmp}/ref", "--candidate-dir", "{tmp}/cand"]
PAIRS = {"ref/a-0.mp4": GOOD, "cand/a-0.mp4": GOOD}
VBENCH = ["--vbench", "{tmp}/videos", "--vbench-info", "{tmp}/info.json"]
VBENCH_FILES = {"videos/a-0.mp4": GOOD, "info.json": vbench_json("a")}
RESULTS = ["--vbench-results", "{tmp}/results"]
RESULTS_FILES = {"results/x_eval_results.json": json.dumps({"scene": [0.5, []]})}

EVALUATE_BAD_INPUTS = [
    # modes
    pytest.param([], "choose one mode", {}, id="no-mode"),
    pytest.param([*PAIRED, *RESULTS], "choose one mode", {**PAIRS, **RESULTS_FILES}, id="two-modes"),
    pytest.param(
        ["--reference-dir", "{tmp}/ref"], "needs both --reference-dir and --candidate-dir", PAIRS, id="reference-alone"
    ),
    # paired videos
    pytest.param(PAIRED, "reference folder not found", {"cand/a-0.mp4": GOOD}, id="reference-missing"),
    pytest.param(PAIRED, "reference folder not found", {"ref": "a file", "cand/a-0.mp4": GOOD}, id="reference-file"),
    pytest.param(PAIRED, "candidate folder not found", {"ref/a-0.mp4": GOOD}, id="candidate-missing"),
    pytest.param(PAIRED, "no video pairs", {"ref/a-0.mp4": GOOD, "cand/b-0.mp4": GOOD}, id="no-pairs"),
    pytest.param(PAIRED, "ref/a-0.mp4 does not decode", {**PAIRS, "ref/a-0.mp4": TRUNCATED}, id="reference-cut"),
    pytest.param(PAIRED, "cand/a-0.mp4 does not decode", {**PAIRS, "cand/a-0.mp4": TRUNCATED}, id="candidate-cut"),
    pytest.param(
        PAIRED, "cand/a-0.mp4 does not decode", {**PAIRS, "cand/a-0.mp4": "not a video"}, id="candidate-garbage"
    ),
    pytest.param(
        PAIRED, "frame counts differ: reference 4, candidate 3", {**PAIRS, "cand/a-0.mp4": SHORT}, id="frame-count"
    ),
    pytest.param([*PAIRED, "--lpips-weights", "{tmp}/none.pth"], "LPIPS backbone weights", PAIRS, id="lpips-missing"),
    pytest.param(
        [*PAIRED, "--lpips-weights", "{tmp}/w.pth"],
        "Could not read checkpoint file",
        {**PAIRS, "w.pth": "not weights"},
        id="lpips-garbage",
    ),
    pytest.param([*PAIRED, "--lpips-net", "resnet"], "--lpips-net: invalid choice", PAIRS, id="lpips-net"),
    pytest.param([*PAIRED, "--batch-size", "0"], "--batch-size: expected an integer >= 1", PAIRS, id="batch-0"),
    pytest.param([*PAIRED, "--batch-size", "nan"], "--batch-size: expected an integer >= 1", PAIRS, id="batch-nan"),
    pytest.param([*PAIRED, "--dimensions", "scene"], "--dimensions is for --vbench mode", PAIRS, id="paired-dims"),
    pytest.param(
        [*PAIRED, "--vbench-info", "{tmp}/i.json"], "--vbench-info is for --vbench mode", PAIRS, id="paired-info"
    ),
    # VBench
    pytest.param(VBENCH, "video folder not found", {"info.json": vbench_json("a")}, id="vbench-missing"),
    pytest.param(["--vbench", "{tmp}/videos"], "--vbench needs --vbench-info", VBENCH_FILES, id="info-none"),
    pytest.param(VBENCH, "--vbench-info", {"videos/a-0.mp4": GOOD}, id="info-missing"),
    pytest.param(VBENCH, "is a folder", {**VBENCH_FILES, "info.json": DIR}, id="info-folder"),
    pytest.param(VBENCH, "is not valid JSON", {**VBENCH_FILES, "info.json": "{"}, id="info-invalid"),
    pytest.param(VBENCH, "must be a non-empty list", {**VBENCH_FILES, "info.json": "[]"}, id="info-empty"),
    pytest.param(
        VBENCH,
        'needs a "prompt_en" string and a "dimension" list',
        {**VBENCH_FILES, "info.json": '[{"prompt_en": "a"}]'},
        id="info-entry",
    ),
    pytest.param(
        VBENCH, "videos/a-0.mp4 does not decode", {**VBENCH_FILES, "videos/a-0.mp4": TRUNCATED}, id="vbench-video-cut"
    ),
    pytest.param(VBENCH, "holds no .mp4 videos", {"videos": DIR, "info.json": vbench_json("a")}, id="vbench-empty"),
    pytest.param([*VBENCH, "--dimensions", "sharpness"], "--dimensions: invalid choice", VBENCH_FILES, id="dims"),
    pytest.param(
        [*VBENCH, "--vbench-output", "{tmp}/o"],
        "exists and is not a folder",
        {**VBENCH_FILES, "o": "f"},
        id="vbench-output-file",
    ),
    pytest.param([*VBENCH, "--vbench-local-checkpoints=1"], "ignored explicit argument", VBENCH_FILES, id="local"),
    pytest.param(
        [*VBENCH, "--batch-size", "4"],
        "--batch-size is for --reference-dir/--candidate-dir mode",
        VBENCH_FILES,
        id="vbench-batch",
    ),
    pytest.param(VBENCH, "VBench is not installed", VBENCH_FILES, id="vbench-not-installed"),
    # VBench results
    pytest.param(RESULTS, "VBench results not found", {}, id="results-missing"),
    pytest.param(RESULTS, "no *_eval_results.json files", {"results": DIR}, id="results-empty"),
    pytest.param(RESULTS, "cannot read VBench results", {"results/x_eval_results.json": "{"}, id="results-json"),
    pytest.param(
        RESULTS,
        "no finite score for dimension 'scene'",
        {"results/x_eval_results.json": '{"scene": [NaN]}'},
        id="results-nan",
    ),
    pytest.param(
        RESULTS,
        "unknown VBench dimension 'sharpness'",
        {"results/x_eval_results.json": '{"sharpness": [0.5]}'},
        id="results-dimension",
    ),
    pytest.param(
        [*RESULTS, "--vbench-output", "{tmp}/o"],
        "--vbench-output is for --vbench mode",
        RESULTS_FILES,
        id="results-output",
    ),
    # shared
    pytest.param([*RESULTS, "--device", "cuda:99"], "--device cuda:99", RESULTS_FILES, id="device-index"),
    pytest.param([*RESULTS, "--device", "gpu"], "is not a torch device", RESULTS_FILES, id="device-name"),
    pytest.param([*RESULTS, "--output", "{tmp}/scores.txt"], "must end in .json", RESULTS_FILES, id="output-suffix"),
    pytest.param(
        [*RESULTS, "--output", "{tmp}/o.json"], "is a folder", {**RESULTS_FILES, "o.json": DIR}, id="output-folder"
    ),
    pytest.param(
        [*PAIRED, "--output", "{tmp}/f/o.json"], "cannot be created", {**PAIRS, "f": "a file"}, id="output-under-file"
    ),
    pytest.param(
        [*RESULTS, "--progress=1"], "--progress/--no-progress: ignored explicit argument", RESULTS_FILES, id="progress"
    ),
]


@pytest.mark.parametrize(("argv", "message", "files"), EVALUATE_BAD_INPUTS)
def test_evaluate_refuses_bad_input(mp4s, tmp_path, capsys, monkeypatch, argv, message, files):
    # LPIPS null: none named, and nothing at the default places (the working directory's pretrained_models/, the hub)
    monkeypatch.delenv(LPIPS_WEIGHTS_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "vbench", None)  # `import vbench` fails as when it is not installed
    make_files(tmp_path, files, mp4s)
    argv = expand([*argv, "--device", "cpu", "--no-progress"] if "--device" not in argv else argv, tmp_path)
    assert_refused(evaluate.cli, argv, message, capsys, watch=tmp_path)


# ------------------------------------------------------------------------------------------------- coverage


def row_flags(rows: list) -> set[str]:
    return {value.split("=")[0] for row in rows for value in row.values[0] if value.startswith("--")}


def parser_flags(parser) -> set[str]:
    """Every option of ``parser`` but --help and the --no-X halves of boolean flags."""
    options = {option for action in parser._actions for option in action.option_strings}
    return {option for option in options if option.startswith("--") and not option.startswith(("--no-", "--help"))}


def test_every_sample_video_flag_has_a_bad_input_row() -> None:
    assert parser_flags(sample_video.build_parser()) == row_flags(SAMPLE_BAD_INPUTS)


def test_every_evaluate_flag_has_a_bad_input_row() -> None:
    assert parser_flags(evaluate.build_parser()) == row_flags(EVALUATE_BAD_INPUTS)
