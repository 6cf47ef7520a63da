"""TaylorSeer-DiT/reproduce_table.py on the bundled digits model at tiny settings: FLOPs against hand counts,
latency from interleaved timings, metrics against evaluate.py's, resume by row, and bad input."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from cli_testing import assert_refused

from common.flops import FlopsReport
from common.paper_table import load_table
from common.taylor_cache import TaylorSeerConfig
from taylorseer_dit import reproduce_table
from taylorseer_dit.fidelity import compute_metrics
from taylorseer_dit.flops import matmul_step_flops, reference_step_flops
from taylorseer_dit.models import DiT_models

pytestmark = pytest.mark.usefixtures("one_thread")
STEPS, SAMPLES, BATCH = 6, 12, 6

TABLE = f"""
title = "tiny"
source = "a test"
paper_model = "DiT-XL/2"
settings = ["--num-fid-samples", "{SAMPLES}", "--num-sampling-steps", "{STEPS}", "--per-proc-batch-size", "{BATCH}"]

[[columns]]
key = "fid"
label = "FID"
better = "lower"

[[columns]]
key = "agreement"
label = "agreement"
better = "higher"

[[columns]]
key = "rel_l2"
label = "rel. L2"
better = "lower"

[[rows]]
name = "full"
flags = ["--method", "full"]
paper = {{ speedup = 1.0, fid = 2.32 }}

[[rows]]
name = "FORA N=3"
flags = ["--method", "fora", "--interval", "3"]
paper = {{ speedup = 2.77, fid = 3.55 }}
"""
TEACACHE_ROW = """
[[rows]]
name = "TeaCache"
flags = ["--method", "teacache", "--teacache-thresh", "0.2"]
"""


@pytest.fixture
def few_resamples(monkeypatch):
    monkeypatch.setattr(reproduce_table, "BOOTSTRAP_RESAMPLES", 50)


def table_file(folder: Path, text: str = TABLE) -> Path:
    path = folder / "tiny.toml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    """Two rows sampled by sample_ddp.py child processes: (results folder, summary, rows sampled)."""
    folder = tmp_path_factory.mktemp("table")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(reproduce_table, "BOOTSTRAP_RESAMPLES", 50)
        sampled = count_sampler_calls(patch)
        summary = reproduce_table.cli([str(table_file(folder)), "--results-dir", str(folder / "out")])
    return folder, summary, sampled


def count_sampler_calls(patch) -> list[str]:
    sampled = []
    original = reproduce_table.run_sampler

    def counting(launcher, argv, sample_dir):
        sampled.append(argv[argv.index("--method") + 1])
        return original(launcher, argv, sample_dir)

    patch.setattr(reproduce_table, "run_sampler", counting)
    return sampled


def test_flops_speedups_are_the_hand_counted_schedule(first_run) -> None:
    _, summary, _ = first_run
    full, fora = summary["rows"]
    assert full["flops_speedup"] == 1.0
    # E=2, N=3 over 6 steps: full steps 0, 1, 4 and forecast steps 2, 3, 5; CFG doubles the batch of 6.
    model = DiT_models["DiT-XS/4"](input_size=16, in_channels=1, num_classes=10)
    full_step, forecast_step = matmul_step_flops(model, 2 * BATCH)
    assert fora["flops_speedup"] == pytest.approx(6 * full_step / (3 * full_step + 3 * forecast_step), rel=1e-9)
    assert fora["details"]["full_steps_first_batch"] == 3
    paper_count = FlopsReport.for_schedule(
        "reference", *reference_step_flops(model, 2), STEPS, TaylorSeerConfig(3, 0, 2)
    )
    assert fora["details"]["paper_count_speedup"] == paper_count.speedup


def test_latency_is_full_computes_fastest_batch_over_the_rows(first_run) -> None:
    _, summary, _ = first_run
    full, fora = summary["rows"]
    seconds = [row["details"]["batch_seconds_min"] for row in (full, fora)]
    assert fora["latency_speedup"] == seconds[0] / seconds[1] and full["latency_speedup"] == 1.0
    recorded = [json.loads(Path(row["details"]["npz"]).with_suffix(".json").read_text()) for row in (full, fora)]
    assert [r["sampling_seconds"] / r["samples_written"] for r in recorded] == [
        row["details"]["sampler_seconds_per_sample"] for row in (full, fora)
    ]


def test_rows_are_timed_interleaved_after_a_warm_up_and_the_fastest_run_counts(monkeypatch) -> None:
    calls, scripted = [], {"a": iter([9.0, 3.0, 2.0, 4.0]), "b": iter([9.0, 5.0, 1.0, 6.0])}

    def fake_first_batch(model, args, config):
        def run():
            calls.append(args)
            return SimpleNamespace(seconds=next(scripted[args]))

        return run

    monkeypatch.setattr(reproduce_table, "first_batch", fake_first_batch)
    best = reproduce_table.time_rows(None, {"a": (None, "a", None), "b": (None, "b", None)}, repeats=3)
    assert calls == ["a", "b"] * 4 and best == {"a": 2.0, "b": 1.0}  # the warm-up's 9 s never count


def test_metrics_equal_evaluate_and_the_pixels(first_run) -> None:
    _, summary, _ = first_run
    full, fora = summary["rows"]
    fid = compute_metrics(Path(fora["details"]["npz"]), "digits", metrics=["fid"], feature_extractor="digits")["fid"]
    assert fora["metrics"]["fid"] == pytest.approx(fid, rel=1e-6)
    images = [np.load(row["details"]["npz"])["arr_0"][..., 0].astype(np.float64) / 127.5 - 1 for row in (full, fora)]
    expected = np.sqrt(((images[1] - images[0]) ** 2).sum() / (images[0] ** 2).sum())
    assert fora["metrics"]["rel_l2"] == pytest.approx(expected, rel=1e-12)
    assert full["metrics"]["rel_l2"] == 0.0
    assert 0.0 <= fora["metrics"]["agreement"] <= 1.0


def test_the_table_holds_paired_intervals_and_the_paper_numbers(first_run) -> None:
    folder, summary, _ = first_run
    text = (folder / "out" / "table.md").read_text()
    assert "ΔFID vs full [95% CI]" in text and "Rows ranked by FID" in text
    assert "| FORA N=3 |" in text and "| 2.77× |" in text and "| 3.550 |" in text
    assert summary["caveat"] is None and "compare orderings, not values" in text
    assert [entry["row"] for entry in summary["ordering"]] != []


def test_a_rerun_samples_nothing_and_a_new_row_only_itself(first_run, tmp_path, monkeypatch, few_resamples) -> None:
    folder, summary, sampled = first_run
    assert sampled == ["full", "fora"]
    calls = count_sampler_calls(monkeypatch)
    again = reproduce_table.cli([str(table_file(folder)), "--results-dir", str(folder / "out")])
    assert calls == [] and [without_timing(r) for r in again["rows"]] == [without_timing(r) for r in summary["rows"]]
    reproduce_table.cli([str(table_file(folder, TABLE + TEACACHE_ROW)), "--results-dir", str(folder / "out")])
    assert calls == ["teacache"]


def without_timing(row: dict) -> dict:
    """A table row without what the (redone) timing phase measures anew."""
    details = {k: v for k, v in row["details"].items() if k != "batch_seconds_min"}
    return {**{k: v for k, v in row.items() if k != "latency_speedup"}, "details": details}


def base(tmp_path: Path) -> list[str]:
    return [str(tmp_path / "tiny.toml"), "--results-dir", str(tmp_path / "out")]


BAD_INPUTS = [
    ("table", lambda p: [str(p / "missing.toml")], "no table file"),
    ("--results-dir", lambda p: [*base(p)[:2], "--results-dir", str(p / "tiny.toml")], "--results-dir"),
    ("--launcher", lambda p: [*base(p), "--launcher", "no-such-launcher -x"], "no program 'no-such-launcher'"),
    ("--reference", lambda p: [*base(p), "--reference", str(p / "ref.npz")], "drop --reference"),
    ("--inception-weights", lambda p: [*base(p), "--inception-weights", str(p / "w.pth")], "no such file"),
    ("--device", lambda p: [*base(p), "--device", "tpu"], "tpu"),
    ("--timing-repeats", lambda p: [*base(p), "--timing-repeats", "0"], "--timing-repeats: expected an integer"),
    ("row flags", lambda p: [*base(p), "--", "--interval", "0"], "table row 'full'"),
    ("unpaired row", base, None),
]


@pytest.mark.parametrize(("case", "argv", "message"), BAD_INPUTS, ids=[case for case, _, _ in BAD_INPUTS])
def test_bad_input_is_one_error_line_before_any_sampling(case, argv, message, tmp_path, capsys) -> None:
    table_file(tmp_path)
    if message is None:  # a table row that changes the sampling itself
        table_file(tmp_path, TABLE.replace('"--interval", "3"]', '"--interval", "3", "--global-seed", "1"]'))
        message = "sets --global-seed apart from full compute"
    assert_refused(reproduce_table.cli, argv(tmp_path), message, capsys, watch=tmp_path)


def test_every_flag_has_a_bad_input_row() -> None:
    parser = reproduce_table.build_parser()
    flags = {o for a in parser._actions for o in a.option_strings if o.startswith("--") and o != "--help"}
    assert flags == {case for case, _, _ in BAD_INPUTS if case.startswith("--")}


def test_a_model_other_than_the_bundled_one_needs_a_reference(tmp_path, capsys) -> None:
    table_file(tmp_path, TABLE.replace('"--num-fid-samples"', '"--model", "DiT-S/2", "--image-size", "32", "--vae", '
                                       '"none", "--in-channels", "1", "--num-fid-samples"'))  # fmt: skip
    assert_refused(reproduce_table.cli, base(tmp_path), "pass --reference", capsys, watch=tmp_path)


@pytest.mark.parametrize("name", ["bundled_digits.toml", "dit_xl2_table2.toml", "forecasters_bundled.toml"])
def test_the_shipped_tables_parse_row_by_row(name) -> None:
    spec = load_table(reproduce_table.TREE / "tables" / name)
    argvs = {row.name: reproduce_table.row_argv(spec, row.flags, []) for row in spec.rows}
    rows = {name: (None, *reproduce_table.parse_row(argv, name)) for name, argv in argvs.items()}
    reproduce_table.check_one_sampling(spec, rows)
    assert {args.method for _, args, _ in rows.values()} >= {"full", "taylorseer"}
