"""benchmark_quality.py on a random DiT-XS/4 with tiny settings: outputs, numbers, and resuming by cell."""

import json
import shutil

import numpy as np
import pytest
import torch
from dit_testing import randomised

from common.cli import UsageError
from common.flops import FlopsReport
from common.integrity import weights_fingerprint
from common.paper_table import end_log_cleanly
from common.taylor_cache import TaylorSeerConfig
from taylorseer_dit import benchmark_quality
from taylorseer_dit.fidelity import compute_metrics, digits_uint8, fid_features, fid_of_features
from taylorseer_dit.flops import reference_step_flops
from taylorseer_dit.models import DiT_models
from taylorseer_dit.sample_ddp import sample_inputs

pytestmark = pytest.mark.usefixtures("one_thread")
RESAMPLES = 40  # bootstrap resamples in these tests: the real run's 1000 would only cost time


@pytest.fixture(autouse=True)
def few_resamples(monkeypatch):
    monkeypatch.setattr(benchmark_quality, "BOOTSTRAP_RESAMPLES", RESAMPLES)


# Fewer, shorter samples for the tests that only count what is sampled and compare files.
SMALL = ("--num-samples", "4", "--num-sampling-steps", "4", "--batch-size", "4")


def make_ckpt(path, seed: int = 0):
    model = DiT_models["DiT-XS/4"](input_size=16, in_channels=1, num_classes=10)
    torch.save(randomised(model, seed=seed, std=0.02).state_dict(), path)
    return path


def run(tmp_path, monkeypatch, orders: list[str], *extra: str, fixed_seconds: bool = False) -> tuple[dict, list[str]]:
    """The benchmark on a random DiT-XS/4 with tiny settings; returns the summary and the sets sampled.
    ``fixed_seconds`` replaces the measured wall-clock times by numbers of the cell (below its FLOPs speedup), for
    byte comparisons and a stderr that timing noise cannot change."""
    ckpt = tmp_path / "xs.pt"
    if not ckpt.exists():
        make_ckpt(ckpt)
    sampled = []
    original = benchmark_quality.sample_set

    def counting_sample_set(model, args, config, seed):
        sampled.append(f"N{config.interval}-O{config.max_order}-seed{seed}")
        samples, seconds = original(model, args, config, seed)
        return samples, (10.0 + seed) / config.interval**0.5 if fixed_seconds else seconds

    monkeypatch.setattr(benchmark_quality, "sample_set", counting_sample_set)
    argv = ["--ckpt", str(ckpt), "--intervals", "3", "--orders", *orders, "--num-samples", "12", "--spread-seeds",
            "2", "--num-sampling-steps", "7", "--batch-size", "6", "--results-dir", str(tmp_path / "out"),
            "--device", "cpu", *extra]  # fmt: skip
    return benchmark_quality.cli(argv), sampled


def test_benchmark_writes_tables_and_resumes_by_cell(tmp_path, monkeypatch):
    summary, sampled = run(tmp_path, monkeypatch, ["0"])
    assert sampled == ["N1-O1-seed0", "N1-O1-seed1", "N3-O0-seed0"]
    (fora,) = summary["cells"]
    # E=2, N=3 over 7 steps: full steps 0, 1, 4.
    model = DiT_models["DiT-XS/4"](input_size=16, in_channels=1, num_classes=10)
    flops = FlopsReport.for_schedule("reference", *reference_step_flops(model, 12), 7, TaylorSeerConfig(3, 0, 2))
    assert (fora["full_steps"], fora["flops_speedup"]) == (3, flops.speedup)
    assert fora["rel_l2"] > 0 and fora["fid"] > 0 and 0 <= fora["agreement"] <= 1
    full = summary["full_compute"]
    assert full["num_seeds"] == 2 and len(full["fid_per_seed"]) == 2 and full["fid_std"] > 0
    assert full["fid_min"] == min(full["fid_per_seed"]) and full["fid_bootstrap_std"] > 0
    assert fora["delta_fid"] == fora["fid"] - full["fid_per_seed"][0]
    assert fora["rel_l2_ci"][0] <= fora["rel_l2"] <= fora["rel_l2_ci"][1]

    summary, sampled = run(tmp_path, monkeypatch, ["0", "2"])
    assert sampled == ["N1-O1-seed0", "N3-O2-seed0"]  # the reference run again, and only the missing cell
    assert [c["key"] for c in summary["cells"]] == ["N3-O0", "N3-O2"]
    _, sampled = run(tmp_path, monkeypatch, ["0", "2"])
    assert sampled == []

    out = tmp_path / "out"
    assert json.loads((out / "results.json").read_text())["cells"][1]["order"] == 2
    table = (out / "results.md").read_text()
    assert "| 3 | FORA | 3 |" in table and "| 3 | 2 | 3 |" in table
    assert "over 2 noise seeds 0..1" in table and f"({RESAMPLES} resamples within each label, seed 0" in table
    assert "| ΔFID vs full [95% CI] |" in table and "| ΔFID vs FORA [95% CI] | rel. L2 ÷ FORA's [95% CI] |" in table
    assert (out / "quality_vs_speedup.png").stat().st_size > 10_000


def test_cells_of_other_settings_are_not_reused_and_a_cut_line_is_skipped(tmp_path, monkeypatch, capsys):
    run(tmp_path, monkeypatch, ["0"])
    cells_path = tmp_path / "out" / "cells.jsonl"
    first = [json.loads(line) for line in cells_path.read_text().splitlines()]
    assert [c["key"] for c in first] == ["full-seed0", "full-seed1", "N3-O0"]
    settings = {"weights_id": weights_fingerprint([tmp_path / "xs.pt"]), "first_enhance": 2, "num_samples": 12,
                "num_sampling_steps": 7, "cfg_scale": benchmark_quality.BUNDLED_CFG_SCALE, "batch_size": 6,
                "device": "cpu", "bootstrap": {"resamples": RESAMPLES, "seed": 0, "strata": "label"}}  # fmt: skip
    assert all(cell["settings"] == settings for cell in first)
    capsys.readouterr()

    # --first-enhance 1: full steps 0, 3, 6 (not 0, 1, 4); the E=2 cell must not be reused under the new setting.
    summary, sampled = run(tmp_path, monkeypatch, ["0"], "--first-enhance", "1", fixed_seconds=True)
    assert sampled == ["N1-O1-seed0", "N1-O1-seed1", "N3-O0-seed0"]
    assert summary["cells"][0]["full_steps"] == 3 and "settings" not in summary["cells"][0]
    assert "3 cells were recorded with other settings than" in capsys.readouterr().err

    # Killed during an append: the cut last line is dropped with a warning, the complete cells are reused.
    complete = cells_path.read_text()
    cells_path.write_text(complete + '{"key": "N3-O2", "interval": 3, "ord')
    _, sampled = run(tmp_path, monkeypatch, ["0"], "--first-enhance", "1", fixed_seconds=True)
    assert sampled == []
    err = capsys.readouterr().err
    assert "line 7: dropped a cell cut short" in err and err.count("warning:") == 2
    # ... and the next cell is appended on a line of its own, not glued to the cut one: the next run reads it.
    _, sampled = run(tmp_path, monkeypatch, ["0", "2"], "--first-enhance", "1", fixed_seconds=True)
    assert sampled == ["N1-O1-seed0", "N3-O2-seed0"]
    assert cells_path.read_text().startswith(complete) and len(cells_path.read_text().splitlines()) == 7
    capsys.readouterr()
    reread = benchmark_quality.load_cells(cells_path, {**settings, "first_enhance": 1})
    assert list(reread) == ["full-seed0", "full-seed1", "N3-O0", "N3-O2"] and "cut short" not in capsys.readouterr().err


def test_other_weights_at_the_same_path_are_not_mixed_in(tmp_path, monkeypatch, capsys):
    run(tmp_path, monkeypatch, ["0"], *SMALL)
    make_ckpt(tmp_path / "xs.pt", seed=1)  # fine-tuned weights written over the same file
    _, sampled = run(tmp_path, monkeypatch, ["0"], *SMALL)
    assert sampled == ["N1-O1-seed0", "N1-O1-seed1", "N3-O0-seed0"]
    assert "3 cells were recorded with other settings" in capsys.readouterr().err


def test_a_killed_run_resumes_to_the_same_files(tmp_path, monkeypatch):
    outputs = ("results.json", "results.md", "quality_vs_speedup.png")
    run(tmp_path, monkeypatch, ["0", "2"], *SMALL, fixed_seconds=True)
    out = tmp_path / "out"
    uninterrupted = {name: (out / name).read_bytes() for name in outputs}
    log = (out / "cells.jsonl").read_text().splitlines()
    shutil.rmtree(out)

    # Killed (Ctrl-C) while measuring the second cell, after the full-compute seeds and the first cell were logged.
    calls = []
    real_measure = benchmark_quality.measure

    def interrupted_measure(*args):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real_measure(*args)

    monkeypatch.setattr(benchmark_quality, "measure", interrupted_measure)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, monkeypatch, ["0", "2"], *SMALL, fixed_seconds=True)
    assert [json.loads(line)["key"] for line in (out / "cells.jsonl").read_text().splitlines()] == [
        "full-seed0", "full-seed1", "N3-O0"
    ]  # fmt: skip
    assert not any((out / name).exists() for name in outputs)
    monkeypatch.setattr(benchmark_quality, "measure", real_measure)
    _, sampled = run(tmp_path, monkeypatch, ["0", "2"], *SMALL, fixed_seconds=True)
    assert sampled == ["N1-O1-seed0", "N3-O2-seed0"]
    assert {name: (out / name).read_bytes() for name in outputs} == uninterrupted
    assert (out / "cells.jsonl").read_text().splitlines() == log


def test_a_wall_speedup_above_the_flops_speedup_is_flagged_as_noise(capsys):
    cell = {"interval": 3, "order": 2, "flops_speedup": 2.29}
    benchmark_quality.warn_timing_noise({"cells": [{**cell, "wall_speedup": 2.1}, {**cell, "wall_speedup": 2.0}]})
    assert capsys.readouterr().err == ""
    benchmark_quality.warn_timing_noise({"cells": [{**cell, "wall_speedup": 3.0}, {**cell, "interval": 4,
                                                                                  "wall_speedup": 1.0}]})  # fmt: skip
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "above the FLOPs speedup in N=3 order 2 (3.00× > 2.29×):" in err
    assert "N=4" not in err and "rerun on an idle machine" in err


def test_the_cell_log_ends_in_a_newline_before_an_append(tmp_path):
    path = tmp_path / "cells.jsonl"
    path.write_bytes(b'{"key": "a"}\n{"key": "b", "fi')
    end_log_cleanly(path)
    assert path.read_bytes() == b'{"key": "a"}\n'  # the cut cell is dropped
    path.write_bytes(b'{"key": "a"}\n{"key": "b"}')
    end_log_cleanly(path)
    assert path.read_bytes() == b'{"key": "a"}\n{"key": "b"}\n'  # a complete cell is kept
    path.write_bytes(b"")
    end_log_cleanly(path)
    assert path.read_bytes() == b""


def test_a_corrupt_line_before_the_last_is_an_error(tmp_path):
    path = tmp_path / "cells.jsonl"
    path.write_text('{"key": "N3-O0"\n\n{"key": "N3-O1", "settings": {}}\n')
    with pytest.raises(UsageError, match=r"cells.jsonl, line 1: not a JSON cell"):
        benchmark_quality.load_cells(path, {})
    replicates = dict.fromkeys(benchmark_quality.GRID_REPLICATES, [1.0] * RESAMPLES)
    cell = {"key": "N3-O1", "settings": {}, **dict.fromkeys(benchmark_quality.GRID_FIELDS, 1), "bootstrap": replicates}
    path.write_text("\n" + json.dumps(cell) + "\n\n")
    assert list(benchmark_quality.load_cells(path, {})) == ["N3-O1"]  # blank lines, even the last, are skipped
    # A cell of these settings without a number it needs, or with NaN (which Python's json reads), is refused.
    path.write_text(json.dumps({**cell, "fid": None}) + "\n")
    with pytest.raises(UsageError, match=r"line 1: cell N3-O1 has no finite number 'fid' \(got None\); delete"):
        benchmark_quality.load_cells(path, {})
    path.write_text(json.dumps({**cell, "key": "full-seed0", "seed": 0, "agreement": float("nan")}) + "\n")
    with pytest.raises(UsageError, match=r"cell full-seed0 has no finite number 'agreement' \(got nan\)"):
        benchmark_quality.load_cells(path, {})
    # ... as is one without all its bootstrap replicates (the intervals are computed from them), or with a NaN one.
    path.write_text(json.dumps({**cell, "bootstrap": {**replicates, "rel_l2": [1.0] * (RESAMPLES - 1)}}) + "\n")
    with pytest.raises(UsageError, match=rf"cell N3-O1 lacks its {RESAMPLES} finite bootstrap replicates of 'rel_l2'"):
        benchmark_quality.load_cells(path, {})
    path.write_text(
        json.dumps(
            {
                **cell,
                "key": "full-seed0",
                "seed": 0,
                "bootstrap": {"fid": [1.0] * RESAMPLES, "agreement": [float("nan")]},
            }
        )
    )
    with pytest.raises(UsageError, match="cell full-seed0 lacks its 40 finite bootstrap replicates of 'agreement'"):
        benchmark_quality.load_cells(path, {})
    # Full compute of the other seeds is not paired with anything: it needs no replicates.
    path.write_text(json.dumps({**cell, "key": "full-seed1", "seed": 1, "bootstrap": None}) + "\n")
    assert list(benchmark_quality.load_cells(path, {})) == ["full-seed1"]


def test_missing_weights_are_one_readable_error(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "TaylorSeer-DiT" / "benchmark_quality.py"
    result = subprocess.run([sys.executable, str(script), "--ckpt", str(tmp_path / "none.pt")], capture_output=True,
                            text=True, cwd=tmp_path)  # fmt: skip
    assert result.returncode == 2 and "none.pt" in result.stderr and "Traceback" not in result.stderr


def test_fid_from_extracted_features_is_compute_metrics_fid_exactly():
    samples = digits_uint8()[::7]
    features = fid_features(samples, feature_extractor="digits")
    reference = fid_features("digits", feature_extractor="digits")
    expected = compute_metrics(samples, "digits", metrics=("fid",), feature_extractor="digits")["fid"]
    assert features.shape == (len(samples), 128) and fid_of_features(features, reference) == expected


def test_every_set_is_sampled_on_the_same_noise_and_labels(tmp_path, monkeypatch):
    inputs = []
    original = benchmark_quality.sample_dit

    def recording_sample_dit(model, diffusion, labels, **kwargs):
        if kwargs.get("noise") is not None:  # not the warm-up
            inputs.append((kwargs["cache"] is None, kwargs["seed"], list(labels), kwargs["noise"].clone()))
        return original(model, diffusion, labels, **kwargs)

    monkeypatch.setattr(benchmark_quality, "sample_dit", recording_sample_dit)
    run(tmp_path, monkeypatch, ["0", "2"], *SMALL)
    full, other_seed, *cells = inputs
    assert [(uncached, seed) for uncached, seed, _, _ in inputs] == [(True, 0), (True, 1), (False, 0), (False, 0)]
    assert full[2] == [0, 1, 2, 3] and all(cell[2] == full[2] for cell in [other_seed, *cells])
    assert all(torch.equal(cell[3], full[3]) for cell in cells) and not torch.equal(other_seed[3], full[3])
    # The noise is sample_ddp.py's for --global-seed 0 and 1: only the labels differ between the two scripts.
    for seed, (_, _, _, noise) in enumerate([full, other_seed]):
        assert torch.equal(noise, sample_inputs(range(4), seed, 10, (1, 16, 16))[1])


def test_resamples_draw_within_each_label_and_are_shared_by_every_cell(tmp_path, monkeypatch):
    yardstick = benchmark_quality.Yardstick.build(30)
    labels = np.arange(30) % 10
    # np.unique order: the 3 samples of label 0 first, then label 1's, ...: each resample keeps 3 per label.
    assert (labels[yardstick.indices] == np.repeat(np.arange(10), 3)).all()
    assert np.array_equal(yardstick.indices, benchmark_quality.Yardstick.build(30).indices)

    summary, _ = run(tmp_path, monkeypatch, ["0", "2"], *SMALL)
    cells = {c["key"]: c for c in map(json.loads, (tmp_path / "out" / "cells.jsonl").read_text().splitlines())}
    full, fora, taylor = (np.array(cells[k]["bootstrap"]["fid"]) for k in ("full-seed0", "N3-O0", "N3-O2"))
    summarised = {c["key"]: c for c in summary["cells"]}
    assert summarised["N3-O2"]["delta_fid_ci"] == percentile(taylor - full)
    assert summarised["N3-O2"]["delta_fid_vs_fora_ci"] == percentile(taylor - fora)
    assert "delta_fid_vs_fora" not in summarised["N3-O0"]


def percentile(replicates: np.ndarray) -> tuple[float, float]:
    low, high = np.quantile(replicates, [0.025, 0.975])
    return float(low), float(high)


def test_a_cell_equal_to_full_compute_has_intervals_of_exactly_zero(tmp_path, monkeypatch):
    original = benchmark_quality.sample_set

    def full_compute_everywhere(model, args, config, seed):
        return original(model, args, benchmark_quality.FULL, seed)

    monkeypatch.setattr(benchmark_quality, "sample_set", full_compute_everywhere)
    summary, _ = run(tmp_path, monkeypatch, ["0", "2"], *SMALL)
    for cell in summary["cells"]:
        assert (cell["delta_fid"], cell["delta_agreement"], cell["rel_l2"]) == (0.0, 0.0, 0.0)
        assert cell["delta_fid_ci"] == cell["delta_agreement_ci"] == cell["rel_l2_ci"] == (0.0, 0.0)
    assert (
        summary["cells"][1]["delta_fid_vs_fora_ci"] == (0.0, 0.0) and "rel_l2_ratio_to_fora" not in summary["cells"][1]
    )
    table = (tmp_path / "out" / "results.md").read_text()
    assert "| 0.0000 [0.0000, 0.0000] |" in table and "| +0.00 [+0.00, +0.00] |" in table and "**+" not in table
    assert "| 3 | 2 | +0.00 [+0.00, +0.00] | – |" in table


def test_a_wall_speedup_above_the_flops_speedup_is_marked_in_the_table():
    cell = {"flops_speedup": 2.29, "wall_speedup": 2.1}
    assert benchmark_quality.wall_speedup(cell) == "2.10×"
    assert benchmark_quality.wall_speedup({**cell, "wall_speedup": 3.0}) == "3.00× (noise)"


def test_an_interval_that_excludes_zero_is_bold():
    assert benchmark_quality.with_interval(1.5, (0.2, 2.5), 2) == "**+1.50 [+0.20, +2.50]**"
    assert benchmark_quality.with_interval(-0.5, (-1.0, 0.0), 2) == "-0.50 [-1.00, +0.00]"
    assert benchmark_quality.with_interval(0.0123, (0.01, 0.02), 4, signed=False) == "0.0123 [0.0100, 0.0200]"
