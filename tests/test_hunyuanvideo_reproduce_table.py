"""TaylorSeer-HunyuanVideo/reproduce_table.py: one command for the paper's HunyuanVideo table.

A tiny random-weight HunyuanVideo runs a four-row table end to end (full, TaylorSeer, FORA, TeaCache; 2 prompts,
6 steps, 32x32, 5 frames). The numbers are checked against their sources: FLOPs against sample_video.py
--test-FLOPs and, for TeaCache, against the per-step costs and the step counts its videos used; latency against the
sampler's recorded timings; PSNR/SSIM against evaluate.py on the same folders; replicates against the shared
bootstrap resamples. A killed run resumes by row, bad input is one error line before anything samples, and the
shipped table gives the paper's 4.995x for N=5."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from cli_testing import assert_refused
from hunyuanvideo_testing import TINY_MODEL, TINY_TEXT_LEN, write_official_checkpoint

from common.methods import describe
from common.paired_stats import bootstrap_indices
from common.paper_table import load_table
from common.teacache import TEACACHE_COEFFICIENTS
from taylorseer_hunyuanvideo import evaluate, reproduce_table, sample_video
from taylorseer_hunyuanvideo.flops import hunyuan_latent_shape, teacache_step_flops

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPTS = ["a cat walks on the grass", "a red car on a street"]
STEPS = 6
TINY_SETTINGS = ["--model", TINY_MODEL, "--video-size", "32", "32", "--video-length", "5", "--infer-steps",
                 str(STEPS), "--text-len", str(TINY_TEXT_LEN), "--device", "cpu",
                 "--num-videos-per-prompt", "1"]  # fmt: skip
ROWS = {
    "full": ["--method", "full"],
    "TaylorSeer N=3": ["--method", "taylorseer", "--interval", "3", "--max-order", "1"],
    "FORA N=3": ["--method", "fora", "--interval", "3"],
    "TeaCache l=0.4": ["--method", "teacache", "--teacache-thresh", "0.4"],
}
COLUMNS = """
[[columns]]
key = "vbench"
label = "VBench (%)"
better = "higher"

[[columns]]
key = "psnr"
label = "PSNR"
better = "higher"

[[columns]]
key = "ssim"
label = "SSIM"
better = "higher"

[[columns]]
key = "lpips"
label = "LPIPS"
better = "lower"
"""


def write_table_file(path: Path, rows: dict[str, list[str]], settings: list[str] = TINY_SETTINGS) -> Path:
    head = [
        'title = "tiny HunyuanVideo"',
        'source = "a test"',
        'paper_model = "HunyuanVideo"',
        f"settings = {json.dumps(settings)}",
        'plot = "vbench"',
    ]
    body = [
        f'[[rows]]\nname = "{name}"\nflags = {json.dumps(flags)}\npaper = {{ speedup = 5.0, psnr = 16.8 }}\n'
        for name, flags in rows.items()
    ]
    path.write_text("\n".join(head) + "\n" + COLUMNS + "\n" + "\n".join(body), encoding="utf-8")
    return path


def write_prompts(path: Path) -> Path:
    path.write_text(json.dumps([{"prompt_en": p, "dimension": ["subject_consistency"]} for p in PROMPTS]))
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("hv_table")
    return {
        "root": root,
        "ckpts": write_official_checkpoint(root / "ckpts"),
        "prompts": write_prompts(root / "prompts.json"),
        "table": write_table_file(root / "tiny.toml", ROWS),
    }


def argv(setup: dict, results: Path, *extra: str) -> list[str]:
    return [str(setup["table"]), "--results-dir", str(results), "--prompts", str(setup["prompts"]),
            "--device", "cpu", *extra, "--", "--model-base", str(setup["ckpts"])]  # fmt: skip


@pytest.fixture(scope="module")
def table_run(setup) -> dict:
    """The four-row table run once (the sampler as a child process per row, one thread each: two cores are shared);
    its summary and folder."""
    results = setup["root"] / "results"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")
        summary = reproduce_table.cli(argv(setup, results))
    return {"summary": summary, "results": results, "rows": {row["name"]: row for row in summary["rows"]}}


def runs_of(results: Path, name: str) -> list[dict]:
    """Every rank summary the sampler printed for the row, from the runner's runs file."""
    path = results / "rows" / f"{reproduce_table.row_slug(name)}.runs.jsonl"
    return [s for line in path.read_text().splitlines() for s in json.loads(line)["summaries"]]


def logged_rows(results: Path) -> dict[str, dict]:
    return {entry["row"]: entry for entry in map(json.loads, (results / "rows.jsonl").read_text().splitlines())}


def sampler_argv(setup: dict, name: str) -> list[str]:
    return ["--prompt-json", str(setup["prompts"]), *TINY_SETTINGS, *ROWS[name], "--model-base", str(setup["ckpts"])]


# ------------------------------------------------------------------------------------------------------ numbers


def test_flops_speedups_are_the_samplers_counts(setup, table_run, capsys):
    """Scheduled methods: sample_video.py --test-FLOPs's speedup. TeaCache: full compute's FLOPs over those of the
    steps its videos computed and skipped, each video's full-step count recovered from its FLOPs and the per-step
    costs, and the sampler's own figure."""
    for name in ("full", "TaylorSeer N=3", "FORA N=3"):
        report = sample_video.cli([*sampler_argv(setup, name), "--test-FLOPs"])
        assert table_run["rows"][name]["flops_speedup"] == report["speedup"], name
        assert report["full_steps"] == (STEPS if name == "full" else 2)
    assert table_run["rows"]["full"]["flops_speedup"] == 1.0

    baseline, computed, skipped = teacache_step_flops(TINY_MODEL, 1, hunyuan_latent_shape(32, 32, 5), TINY_TEXT_LEN)
    (run,) = runs_of(table_run["results"], "TeaCache l=0.4")
    full_steps = [round((v * 1e12 - STEPS * skipped) / (computed - skipped)) for v in run["flops"]["video_tflops"]]
    assert all(1 <= f <= STEPS for f in full_steps)
    for f, v in zip(full_steps, run["flops"]["video_tflops"], strict=True):
        assert v * 1e12 == pytest.approx(f * computed + (STEPS - f) * skipped)
    spent = sum(f * computed + (STEPS - f) * skipped for f in full_steps)
    teacache = table_run["rows"]["TeaCache l=0.4"]
    assert teacache["flops_speedup"] == pytest.approx(len(PROMPTS) * STEPS * baseline / spent)
    assert teacache["flops_speedup"] == pytest.approx(run["flops"]["flops_speedup"])
    assert teacache["details"]["flops_speedup_from"].startswith("the run's videos")


def test_latency_speedup_is_full_computes_denoising_time_over_the_rows(table_run):
    """Denoising seconds per video, full compute's over the row's, from the sampler's summaries; end to end too."""
    full = runs_of(table_run["results"], "full")[0]
    for name, row in table_run["rows"].items():
        (run,) = runs_of(table_run["results"], name)
        assert len(run["denoise_seconds"]) == len(PROMPTS) and all(s > 0 for s in run["denoise_seconds"])
        assert all(d < s for d, s in zip(run["denoise_seconds"], run["seconds"], strict=True))
        expected = np.mean(full["denoise_seconds"]) / np.mean(run["denoise_seconds"])
        assert row["latency_speedup"] == pytest.approx(expected, rel=1e-12), name
        end_to_end = np.mean(full["seconds"]) / np.mean(run["seconds"])
        assert row["details"]["end_to_end_latency_speedup"] == pytest.approx(end_to_end, rel=1e-12), name
        assert row["details"]["timed_videos"] == row["details"]["num_videos"] == len(PROMPTS)


def test_metrics_and_replicates_are_evaluate_pys(setup, table_run, tmp_path):
    """PSNR/SSIM equal evaluate.py's paired mode on the same folders; every replicate is the mean of the per-video
    values under the shared resample; LPIPS is null without local weights, and full compute has none."""
    folders = table_run["results"] / "rows"
    names = [name for name in ROWS if name != "full"]
    record = evaluate.cli(["--reference-dir", str(folders / "full"), "--candidate-dir",
                           *(str(folders / reproduce_table.row_slug(n)) for n in names),
                           "--output", str(tmp_path / "quality.json"), "--device", "cpu"])  # fmt: skip
    indices = bootstrap_indices(len(PROMPTS), 1000, 0)
    logged = logged_rows(table_run["results"])
    for name, candidate in zip(names, record["candidates"], strict=True):
        metrics = table_run["rows"][name]["metrics"]
        assert (metrics["psnr"], metrics["ssim"]) == (candidate["psnr"], candidate["ssim"]), name
        assert metrics["lpips"] is None and metrics["vbench"] is None
        assert 20 < metrics["psnr"] < 100 and 0.5 < metrics["ssim"] < 1
        per_video = sorted(candidate["per_video"], key=lambda video: video["file"])
        replicates = logged[name]["result"]["replicates"]
        assert sorted(replicates) == ["psnr", "ssim"]
        for key in ("psnr", "ssim"):
            values = np.array([video[key] for video in per_video])
            np.testing.assert_allclose(replicates[key], values[indices].mean(axis=1), rtol=1e-12)
            low, high = table_run["rows"][name]["details"]["interval_95"][key]
            assert values.min() <= low <= metrics[key] <= high <= values.max()
    assert table_run["rows"]["full"]["metrics"] == {"vbench": None, "psnr": None, "ssim": None, "lpips": None}


def test_tiny_model_is_said_to_be_plumbing_only(setup, table_run):
    markdown = (table_run["results"] / "table.md").read_text()
    caveat = markdown.split("\n\n")[2]
    assert caveat.startswith("**Plumbing only: HYVideo-tiny is not HunyuanVideo's architecture")
    summary = json.loads((table_run["results"] / "table.json").read_text())
    assert summary["plumbing_only"] is True and summary["caveat"].startswith("Plumbing only")
    assert "VBench not run: pass --vbench-info" in markdown
    assert "Not the paper's setting (480×640, 65 frames, 50 steps): video_size [32, 32]" in markdown
    assert (table_run["results"] / "quality_vs_speedup.png").stat().st_size > 0
    paper_args = sample_video.build_parser().parse_args(["--model", "HYVideo-T/2-cfgdistill"])
    assert reproduce_table.plumbing_caveat(paper_args) is None


# --------------------------------------------------------------------------------------------------------- resume


def test_a_killed_run_resumes_by_row(setup, table_run, tmp_path, monkeypatch):
    """The last row's line cut from rows.jsonl (a kill before it was recorded): a rerun samples that row alone (its
    videos are there, so the sampler makes none, as sample_video.py would) and measures it as before, its timings
    and FLOPs read from the runs file; a rerun of a finished table samples nothing."""
    results = tmp_path / "results"
    shutil.copytree(table_run["results"], results)
    log = results / "rows.jsonl"
    lines = log.read_text().splitlines(keepends=True)
    log.write_text("".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])  # a half-written last line too
    mtimes = {path: path.stat().st_mtime_ns for path in results.rglob("*.mp4")}
    sampled = []

    def resumed_sampler(launcher, row, folder):
        sampled.append(row.name)
        return [{"rank": 0, "world_size": 1, "videos": [], "seconds": [], "denoise_seconds": [], "flops": None}]

    monkeypatch.setattr(reproduce_table, "run_sampler", resumed_sampler)
    again = reproduce_table.cli(argv(setup, results))
    assert sampled == ["TeaCache l=0.4"]
    rows = {row["name"]: row for row in again["rows"]}
    for name, row in table_run["rows"].items():
        assert {k: v for k, v in rows[name].items() if k != "details"} == {
            k: v for k, v in row.items() if k != "details"}, name  # fmt: skip
    assert {path: path.stat().st_mtime_ns for path in results.rglob("*.mp4")} == mtimes
    assert len(log.read_text().splitlines()) == len(ROWS)

    sampled.clear()
    reproduce_table.cli(argv(setup, results))
    assert sampled == []


def test_vbench_column_is_evaluate_pys_aggregation_of_each_rows_run(setup, table_run, tmp_path, monkeypatch, capsys):
    """With --vbench-info (and vbench installed: stood in for by a stub that scores each folder), every row is
    measured again (the evaluation changed) and its VBench column is evaluate.py's total score, in %."""
    results = tmp_path / "results"
    shutil.copytree(table_run["results"], results)
    scored = []

    def fake_vbench(videos, info, dimensions, output, device, local):
        scored.append((videos.name, Path(info), list(dimensions)))
        score = 0.5 + 0.1 * len(scored)
        path = output / f"{videos.name}{evaluate.VBENCH_RESULTS_SUFFIX}"
        path.write_text(json.dumps({dimension: [score, []] for dimension in dimensions}))
        return path

    monkeypatch.setattr(reproduce_table, "vbench_installed", lambda: True)
    monkeypatch.setattr(evaluate, "run_vbench", fake_vbench)
    monkeypatch.setattr(reproduce_table, "run_sampler", lambda launcher, row, folder: [])
    summary = reproduce_table.cli(argv(setup, results, "--vbench-info", str(setup["prompts"])))
    assert "recorded with other settings and is run again" in capsys.readouterr().err
    assert [name for name, _, _ in scored] == [reproduce_table.row_slug(name) for name in ROWS]
    assert all(info == setup["prompts"] and len(dims) == 16 for _, info, dims in scored)
    for k, row in enumerate(summary["rows"], start=1):
        expected = evaluate.aggregate_vbench(dict.fromkeys(evaluate.VBENCH_DIMENSIONS, 0.5 + 0.1 * k))["total_score"]
        assert row["metrics"]["vbench"] == pytest.approx(100 * expected)
        assert row["metrics"]["psnr"] == table_run["rows"][row["name"]]["metrics"]["psnr"]
    assert "VBench not run" not in (results / "table.md").read_text()


# ------------------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    ("rows", "extra", "message"),
    [
        ({"full": ["--method", "full"], "bad": ["--method", "taylorseer", "--interval", "0"]}, [],
         "row 'bad': invalid --method taylorseer setting: interval must be >= 1"),
        ({"full": ["--method", "full"], "bad": ["--method", "magic"]}, [], "row 'bad': argument --method: invalid"),
        ({"full": ["--method", "full"], "big": ["--method", "fora", "--video-size", "64", "64"]}, [],
         "row 'big' sets --video-size apart from full compute"),
        ({"full": ["--method", "full"], "a b": ["--method", "fora"], "a-b": ["--method", "fora"]}, [],
         "two rows share the folder name 'a-b'"),
        (ROWS, ["--launcher", ""], "--launcher is empty"),
        (ROWS, ["--vbench-info", "{prompts}x"], "--vbench-info"),
        (ROWS, ["--lpips-weights", "{root}/none.pth"], "none.pth"),
    ],
)  # fmt: skip
def test_bad_input_is_one_error_line_before_anything_runs(setup, tmp_path, capsys, rows, extra, message):
    table = write_table_file(tmp_path / "table.toml", rows)
    extra = [flag.format(prompts=setup["prompts"], root=tmp_path) for flag in extra]
    command = [str(table), "--results-dir", str(tmp_path / "results"), "--prompts", str(setup["prompts"]), *extra,
               "--", "--model-base", str(setup["ckpts"])]  # fmt: skip
    assert_refused(reproduce_table.cli, command, message, capsys, watch=tmp_path)


def test_missing_table_weights_and_bad_sampler_flags_are_refused(setup, tmp_path, capsys):
    results = ["--results-dir", str(tmp_path / "results"), "--prompts", str(setup["prompts"])]
    assert_refused(reproduce_table.cli, [str(tmp_path / "none.toml"), *results], "no table file", capsys,
                   watch=tmp_path)  # fmt: skip
    assert_refused(reproduce_table.cli, [str(setup["table"]), *results, "--", "--model-base", str(tmp_path / "no")],
                   "transformer", capsys, watch=tmp_path)  # fmt: skip
    assert_refused(reproduce_table.cli, [str(setup["table"]), *results, "--", "--infer-steps", "0"],
                   "row 'full': argument --infer-steps", capsys, watch=tmp_path)  # fmt: skip
    assert_refused(reproduce_table.cli, [str(setup["table"]), *results, "--bogus"], "unrecognized arguments",
                   capsys, watch=tmp_path)  # fmt: skip


# --------------------------------------------------------------------------------------------- the shipped table


def test_the_shipped_table_parses_and_counts_the_papers_speedups():
    """tables/hunyuanvideo_table3.toml: the paper's four rows and numbers, every row's flags accepted by
    sample_video.py, and FORA / TaylorSeer N=5 at 480x640, 65 frames, 50 steps give 4.995x (10 full steps)."""
    spec = load_table(reproduce_table.DEFAULT_TABLE)
    assert [c.key for c in spec.columns] == ["vbench", "psnr", "ssim", "lpips"] and spec.plot == "vbench"
    assert [r.paper.get("vbench") for r in spec.rows] == [80.66, 78.83, 79.36, 79.93]
    assert spec.rows[3].paper == {"speedup": 5.0, "vbench": 79.93, "psnr": 16.796, "ssim": 0.7039, "lpips": 0.2691}
    rows = reproduce_table.prepare_rows(spec, reproduce_table.DEFAULT_PROMPTS, [])
    labels = [describe(r.args.method, r.config) for r in rows]
    assert labels == ["full compute", "FORA N=5", "TeaCache l=0.4", "TaylorSeer N=5 O=1"]
    assert tuple(rows[2].config.coefficients) == tuple(TEACACHE_COEFFICIENTS["hunyuanvideo"])
    args = rows[0].args
    assert (args.video_size, args.video_length, args.infer_steps, args.num_videos_per_prompt) == ([480, 640], 65, 50, 5)
    assert len(args.prompts) == 11 and reproduce_table.plumbing_caveat(args) is None
    assert reproduce_table.scheduled_flops(rows[2].args, rows[2].config) is None  # TeaCache's: from its videos
    for row in (rows[1], rows[3]):
        report = reproduce_table.scheduled_flops(row.args, row.config)
        assert report["speedup"] == pytest.approx(4.995, abs=5e-4) and report["full_steps"] == 10
