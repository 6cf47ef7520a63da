"""TaylorSeer-FLUX/reproduce_table.py end to end on a tiny checkpoint (four rows: full, TaylorSeer, FORA, TeaCache):
FLOPs speedups equal to the sampler's count, latency speedups from the recorded summaries, metrics equal to
evaluate.py's on the same folders with paired intervals, the plumbing-only caveat, resuming by row after a kill, bad
input refused in one line before any sampling, and the shipped FLUX.1-dev table: its rows, flags and FLOPs figures."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_testing import assert_refused
from flux_testing import TINY_DEV, save_tiny_flux_checkpoint
from PIL import Image
from test_quality_metrics import save_random_lpips_weights
from tiny_text_models import save_tiny_clip_model

from common.paper_table import load_table
from taylorseer_flux import evaluate, reproduce_table, sample
from taylorseer_flux.flops import method_flops_report
from taylorseer_flux.model import FLUX_PRESETS
from taylorseer_flux.reproduce_table import DEFAULT_TABLE, cli, row_slug

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPTS = ["a red fox sitting in the snow", "a small robot reading a book"]
TINY_FLAGS = ["--width", "48", "--height", "32", "--num-steps", "4", "--max-sequence-length", "16", "--device", "cpu"]
ROWS = {  # name -> flags; at 4 steps TaylorSeer (N=6, E=3) computes steps 0-2 and FORA (N=2, E=1) steps 0 and 2
    "full compute": ["--method", "full"],
    "TaylorSeer N=6 O=2": ["--method", "taylorseer"],
    "FORA (N=2)": ["--method", "fora", "--interval", "2", "--first-enhance", "1"],
    "TeaCache l=0.6": ["--method", "teacache", "--teacache-thresh", "0.6"],
}
TABLE = """title = "tiny FLUX table"
source = "a test"
paper_model = "FLUX.1-dev"
settings = ["--prompt-file", "prompts.txt", "--seed", "3"]
plot = "{plot}"
{columns}
{rows}"""
COLUMNS = (("imagereward", "higher"), ("clip", "higher"), ("psnr", "higher"), ("ssim", "higher"), ("lpips", "lower"))
# The FLOPs figures for the shipped table's rows (flux-dev, 1024², 512 text tokens, 50 steps).
SHIPPED_FLOPS = {
    "FLUX original, 50 steps": 1.0,
    "Δ-DiT (N=3)": 1.785,
    "FORA (N=3)": 2.776,
    "DuCa (N=5)": 4.012,
    "TaylorSeer (N=3, O=2)": 2.776,
    "FORA (N=6)": 4.994,
    "DuCa (N=6)": 4.725,
    "TaylorSeer (N=6, O=2)": 4.994,
}


def write_table(folder: Path, rows: dict[str, list[str]] = ROWS, columns=COLUMNS) -> Path:
    """A table file with its prompt file beside it (the table names it by a relative path)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    column_text = "\n".join(f'[[columns]]\nkey = "{k}"\nlabel = "{k}"\nbetter = "{b}"\n' for k, b in columns)
    row_text = "\n".join(f"[[rows]]\nname = {json.dumps(n)}\nflags = {json.dumps(f)}\n" for n, f in rows.items())
    path = folder / "table.toml"
    path.write_text(TABLE.format(plot=columns[0][0], columns=column_text, rows=row_text))
    return path


class FakeImageReward(torch.nn.Module):
    """A stand-in for the image-reward package's model (as in test_flux_evaluate.py): the loading and scoring paths
    are evaluate.py's, the score a known function of the image and the prompt."""

    def __init__(self, med_config: str, device: str) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.zeros(()))

    def score(self, prompt: str, image: Image.Image) -> float:
        return float(self.scale) * np.asarray(image, dtype=np.float64).mean() / 255 + len(prompt) / 100


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    """The tiny checkpoint, the metric models (tiny CLIP, random LPIPS, the ImageReward stand-in) and the table."""
    root = tmp_path_factory.mktemp("reproduce")
    models = root / "models"
    save_tiny_clip_model(models / "clip")
    save_random_lpips_weights(models / "alexnet-owt-7be5be79.pth")
    reward = models / "ImageReward" / "ImageReward.pt"
    reward.parent.mkdir()
    torch.save({"scale": torch.tensor(2.0)}, reward)
    (reward.parent / "med_config.json").write_text("{}")
    return {
        "checkpoint": save_tiny_flux_checkpoint(root / "flux-dev"),
        "table": write_table(root / "table"),
        "evaluation": [
            "--clip-model",
            str(models / "clip"),
            "--lpips-weights",
            str(models / "alexnet-owt-7be5be79.pth"),
            "--image-reward",
            str(reward),
            "--eval-device",
            "cpu",
        ],  # fmt: skip
    }


@pytest.fixture(scope="module")
def environment():
    """The ImageReward stand-in importable, and one thread per sampler process (2 shared cores)."""
    module = types.ModuleType("ImageReward.ImageReward")
    module.ImageReward = FakeImageReward
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, "ImageReward", types.ModuleType("ImageReward"))
        patch.setitem(sys.modules, "ImageReward.ImageReward", module)
        patch.setenv("OMP_NUM_THREADS", "1")
        yield


def table_argv(setup: dict, results: Path, table: Path | None = None) -> list[str]:
    return [str(table or setup["table"]), "--results-dir", str(results), *setup["evaluation"], "--",
            "--ckpt-dir", str(setup["checkpoint"]), *TINY_FLAGS]  # fmt: skip


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


@pytest.fixture(scope="module")
def first_run(setup, environment, tmp_path_factory) -> dict:
    """The whole table once: its results folder, returned summary and stdout (the samplers' summaries included)."""
    results = tmp_path_factory.mktemp("run") / "results"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        summary = cli(table_argv(setup, results))
    samplers = {Path(s["output_dir"]).name: s for s in json_lines(stdout.getvalue()) if "output_dir" in s}
    return {"results": results, "summary": summary, "samplers": samplers}


def recorded(results: Path) -> dict[str, dict]:
    return {entry["row"]: entry for entry in map(json.loads, (results / "rows.jsonl").read_text().splitlines())}


def table_rows(results: Path) -> dict[str, dict]:
    return {row["name"]: row for row in json.loads((results / "table.json").read_text())["rows"]}


def test_flops_speedups_are_the_samplers_count(first_run) -> None:
    rows = table_rows(first_run["results"])
    for name in ("full compute", "TaylorSeer N=6 O=2", "FORA (N=2)"):
        args, config = reproduce_table.parse_row(name, [*ROWS[name], *TINY_FLAGS])
        config = sample.fit_to_model(args, config, TINY_DEV)
        expected = method_flops_report(TINY_DEV, 48, 32, 16, 4, args.method, config)
        assert rows[name]["flops_speedup"] == pytest.approx(expected.speedup, rel=1e-12), name
    assert [rows[n]["details"]["flops"]["full_steps"] for n in ROWS if "TeaCache" not in n] == [4, 3, 2]
    assert rows["full compute"]["flops_speedup"] == 1.0
    # TeaCache's steps are the run's: its FLOPs are the count its sampler printed from the steps it computed.
    teacache = first_run["samplers"][row_slug("TeaCache l=0.6")]
    assert rows["TeaCache l=0.6"]["flops_speedup"] == teacache["speedup"] and teacache["speedup"] > 1
    assert rows["TeaCache l=0.6"]["details"]["flops"]["counted"] == "run"


def test_latency_speedup_is_full_time_over_row_time(first_run) -> None:
    rows, log = table_rows(first_run["results"]), recorded(first_run["results"])
    full_time = first_run["samplers"][row_slug("full compute")]["denoise_seconds_per_image"]
    for name in ROWS:
        sampler = first_run["samplers"][row_slug(name)]
        timing = log[name]["result"]["details"]["timing"]
        assert timing["denoise_seconds_per_image"] == sampler["denoise_seconds_per_image"] > 0
        assert timing["seconds_per_image"] == sampler["seconds_per_image"] and timing["written"] == 2
        assert rows[name]["latency_speedup"] == pytest.approx(full_time / sampler["denoise_seconds_per_image"])


def test_metrics_are_evaluate_py_numbers_with_paired_intervals(first_run, setup, tmp_path) -> None:
    results = first_run["results"]
    folders = {name: results / "rows" / row_slug(name) for name in ROWS}
    flags = setup["evaluation"][:-2]  # the models; evaluate.py names the device --device
    record = evaluate.cli(["--reference-dir", str(folders["full compute"]), "--candidate-dir",
                           *(str(folders[n]) for n in list(ROWS)[1:]), "--output", str(tmp_path / "q.json"),
                           *flags, "--device", "cpu", "--no-progress"])  # fmt: skip
    rows = table_rows(results)
    assert rows["full compute"]["metrics"] == {
        "imagereward": pytest.approx(record["reference"]["image_reward"], abs=1e-12),
        "clip": pytest.approx(record["reference"]["clip_score"], abs=1e-6),
        "psnr": None, "ssim": None, "lpips": None,
    }  # fmt: skip
    keys = {"imagereward": "image_reward", "clip": "clip_score", "psnr": "psnr", "ssim": "ssim", "lpips": "lpips"}
    for name, candidate in zip(list(ROWS)[1:], record["candidates"], strict=True):
        assert candidate["num_pairs"] == len(PROMPTS)
        for key, field in keys.items():
            assert candidate[field] is not None
            assert rows[name]["metrics"][key] == pytest.approx(candidate[field], rel=1e-6, abs=1e-9), (name, key)
    # The ImageReward stand-in's score: 2 x mean pixel / 255 + len(prompt) / 100, image k from prompt k.
    with Image.open(folders["full compute"] / "00001.png") as image:
        one = 2 * np.asarray(image.convert("RGB"), dtype=np.float64).mean() / 255 + len(PROMPTS[1]) / 100
    per_image = json.loads((results / "rows" / "full-compute-quality.json").read_text())["candidates"][0]["per_image"]
    assert per_image[1]["reference_image_reward"] == pytest.approx(one)
    # Paired bootstrap replicates (the same resamples for every row) give the Δ-vs-full columns of the markdown.
    replicates = recorded(results)["TaylorSeer N=6 O=2"]["result"]["replicates"]
    assert sorted(replicates) == sorted(keys) and all(len(v) == 1000 for v in replicates.values())
    assert "Δimagereward vs full [95% CI]" in (results / "table.md").read_text()


def test_tiny_model_is_said_to_be_plumbing_only(first_run) -> None:
    results = first_run["results"]
    summary = json.loads((results / "table.json").read_text())
    assert summary["plumbing_only"] and summary["caveat"].startswith("Plumbing only: the transformer is not FLUX.1-dev")
    assert "1 double + 1 single blocks of width 64" in summary["caveat"]
    markdown = (results / "table.md").read_text().splitlines()
    assert markdown[4] == f"**{summary['caveat']}**"  # after the title and the source, before any number
    assert "Not the paper's settings: 48×32 and 4 steps, against 1024×1024 and 50." in markdown
    assert (results / "quality_vs_speedup.png").stat().st_size > 0
    assert reproduce_table.plumbing_caveat([types.SimpleNamespace(params=FLUX_PRESETS["flux-dev"])]) is None


def test_killed_run_resumes_at_its_row(first_run, setup, environment, tmp_path, monkeypatch) -> None:
    """Rows 1-2 recorded, row 3's line cut short by the kill: the rerun samples rows 3 and 4 only (their images
    exist: sample.py makes none, so their timing is the earlier invocation's) and leaves the rest untouched."""
    results = tmp_path / "results"
    shutil.copytree(first_run["results"], results)
    lines = (results / "rows.jsonl").read_text().splitlines()
    (results / "rows.jsonl").write_text("\n".join(lines[:2]) + "\n" + lines[2][:40])
    pngs = {path: path.stat().st_mtime_ns for path in (results / "rows").rglob("0*.png")}
    sampled = []

    def resumed_sampler(name: str, command: list[str]) -> dict:
        """What sample.py prints when every PNG of the folder exists."""
        sampled.append(name)
        folder = Path(command[command.index("--output-dir") + 1])
        return {"output_dir": str(folder), "written": 0, "skipped": 2, "seconds_per_image": None,
                "denoise_seconds_per_image": None, "full_steps": None, "forecast_steps": None}  # fmt: skip

    monkeypatch.setattr(reproduce_table, "run_sampler", resumed_sampler)
    with contextlib.redirect_stdout(io.StringIO()):
        cli(table_argv(setup, results))
    assert sampled == ["FORA (N=2)", "TeaCache l=0.6"]
    assert {path: path.stat().st_mtime_ns for path in pngs} == pngs
    before, after = recorded(first_run["results"]), recorded(results)
    assert [after[name] for name in list(ROWS)[:2]] == [before[name] for name in list(ROWS)[:2]]
    assert after["FORA (N=2)"]["result"]["details"]["timing"]["timed_in"] == "an earlier invocation"
    old, new = table_rows(first_run["results"]), table_rows(results)
    for name in ROWS:
        for key in ("flops_speedup", "latency_speedup", "metrics"):
            assert new[name][key] == pytest.approx(old[name][key]), (name, key)

    # Everything recorded: a rerun samples nothing.
    monkeypatch.setattr(reproduce_table, "run_row", lambda *args: pytest.fail("a recorded row was run again"))
    with contextlib.redirect_stdout(io.StringIO()):
        cli(table_argv(setup, results))


def test_rows_recorded_with_other_settings_run_again(first_run, setup, environment, tmp_path, monkeypatch, capsys):
    """Another LPIPS backbone changes every row's evaluation: the first row is run again (the stub stops there)."""
    results = tmp_path / "results"
    shutil.copytree(first_run["results"], results)
    ran = []

    class Stop(Exception):
        pass

    def stub(plan, *args):
        ran.append(plan.name)
        raise Stop

    monkeypatch.setattr(reproduce_table, "run_row", stub)
    argv = table_argv(setup, results)
    with pytest.raises(Stop):
        cli([*argv[: argv.index("--")], "--lpips-net", "vgg", *argv[argv.index("--") :]])
    assert ran == ["full compute"]
    assert "row 'full compute' was recorded with other settings and is run again" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"table": "missing.toml"}, "no table file"),
        ({"rows": {"full": ["--method", "full"], "bad": ["--method", "fora", "--interval", "0"]}},
         "row 'bad': invalid TaylorSeer setting: interval must be >= 1"),
        ({"rows": {"full": ["--method", "full"], "bad": ["--method", "fora", "--intreval", "2"]}},
         "row 'bad': unrecognized arguments: --intreval 2"),
        ({"rows": {"full": ["--method", "full"], "x": ["--method", "fora", "--output-dir", "o"]}},
         "row 'x' sets --output-dir"),
        ({"columns": (("fid", "lower"),)}, "columns ['fid'] are not measured here"),
        ({"extra": ["--interval", "3"]}, "would override every row's method"),
        ({"extra": ["--output-dir", "elsewhere"]}, "--output-dir after `--`: the runner sets it"),
        ({"extra": ["--ckpt-dir", "/nonexistent/FLUX.1-dev"]}, "transformer/"),
        ({"runner": ["--clip-model", "/nonexistent/clip"]}, "--clip-model /nonexistent/clip not found"),
        ({"runner": ["--launcher", " "]}, "--launcher is empty"),
        ({"results_file": True}, "--results-dir"),
    ],
    ids=["no-table", "bad-row-flag", "unknown-row-flag", "row-output-dir", "unknown-column", "method-after-dashes",
         "output-dir-after", "no-weights", "no-clip", "empty-launcher", "results-is-a-file"],
)  # fmt: skip
def test_bad_input_is_one_error_line_before_any_sampling(change, message, setup, tmp_path, capsys) -> None:
    table = tmp_path / "missing.toml" if "table" in change else setup["table"]
    if "rows" in change or "columns" in change:
        table = write_table(tmp_path / "table", change.get("rows", ROWS), change.get("columns", COLUMNS))
    results = tmp_path / "results"
    if change.get("results_file"):
        results.write_text("not a folder")
    argv = table_argv(setup, results, table)
    at = argv.index("--")
    argv = [*argv[:at], *change.get("runner", []), *argv[at:], *change.get("extra", [])]
    assert_refused(cli, argv, message, capsys, watch=tmp_path)


def test_row_folders_are_named_from_the_rows() -> None:
    assert row_slug("Δ-DiT (N=3)") == "delta-dit-n-3"
    assert row_slug("TaylorSeer (N=6, O=2)") == "taylorseer-n-6-o-2"
    assert row_slug("FLUX original, 50 steps") == "flux-original-50-steps"


def test_shipped_table_rows_parse_and_count_the_papers_flops(monkeypatch) -> None:
    """tables/flux_table1.toml: the paper's 8 rows and numbers, the tree's prompts, each row's flags parsed by
    sample.py and counted at flux-dev 1024² (the FLUX.1-dev weights stand-in: only their architecture is read)."""
    spec = load_table(DEFAULT_TABLE)
    assert [row.name for row in spec.rows] == list(SHIPPED_FLOPS)
    assert [c.key for c in spec.columns] == [
        "imagereward",
        "clip",
        "psnr",
        "ssim",
        "lpips",
    ] and spec.plot == "imagereward"
    paper = {row.name: row.paper for row in spec.rows}
    assert paper["FLUX original, 50 steps"] == {"speedup": 1.0, "imagereward": 0.9898, "clip": 19.604}
    assert paper["TaylorSeer (N=3, O=2)"] == {"speedup": 2.82, "imagereward": 1.0181, "clip": 19.397,
                                               "psnr": 30.762, "ssim": 0.7818, "lpips": 0.2300}  # fmt: skip
    assert paper["DuCa (N=6)"]["lpips"] == 0.4182 and paper["Δ-DiT (N=3)"]["speedup"] == 1.95
    assert any("DrawBench" in note and "200" in note for note in spec.notes)
    assert any("2.776×" in note and "2.82×" in note for note in spec.notes)

    monkeypatch.setattr(reproduce_table, "find_flux_weights", lambda name, ckpt: types.SimpleNamespace(transformer=""))
    monkeypatch.setattr(reproduce_table, "flux_weights_id", lambda weights: "flux-dev")
    monkeypatch.setattr(reproduce_table, "transformer_params", lambda path, name: FLUX_PRESETS["flux-dev"])
    counted = {}

    def count_later(args, config, params):
        """Each meta-device count takes seconds on a loaded 2-core machine: the distinct schedules are counted below."""
        counted[len(counted)] = (args, config, params)
        return {"speedup": None}

    monkeypatch.setattr(reproduce_table, "count_flops", count_later)
    with contextlib.redirect_stdout(io.StringIO()):
        plans = reproduce_table.plan_rows(spec, [])
    prompts = DEFAULT_TABLE.parent.parent / "prompts" / "eval_prompts.txt"
    for plan in plans:
        args = plan.args
        assert (args.model_name, args.width, args.height, args.num_steps, args.guidance) == ("flux-dev", 1024, 1024,
                                                                                            50, 3.5)  # fmt: skip
        assert Path(args.prompt_file) == prompts.resolve() and len(args.prompts) == 30
    assert reproduce_table.plumbing_caveat(plans) is None
    monkeypatch.undo()
    # TaylorSeer N=3 and FORA N=6 have the step kinds of FORA N=3 and TaylorSeer N=6 (FORA is TaylorSeer at order 0).
    for index in (1, 2, 3, 6, 7):
        name = plans[index].name
        speedup = reproduce_table.count_flops(*counted[index])["speedup"]
        assert speedup == pytest.approx(SHIPPED_FLOPS[name], abs=5e-4), name
        if name == "TaylorSeer (N=6, O=2)":  # the figure sample.py --test-FLOPs prints for these flags
            assert speedup == pytest.approx(4.9939138492242625, rel=1e-12)
