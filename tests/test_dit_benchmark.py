"""benchmark_quality.py on a random DiT-XS/4 with tiny settings: outputs, numbers, and resuming by cell."""

import json

import pytest
import torch
from dit_testing import randomised

from common.cli import UsageError
from common.flops import FlopsReport
from common.taylor_cache import TaylorSeerConfig
from taylorseer_dit import benchmark_quality
from taylorseer_dit.flops import reference_step_flops
from taylorseer_dit.models import DiT_models


def run(tmp_path, monkeypatch, orders: list[str], *extra: str) -> tuple[dict, list[str]]:
    ckpt = tmp_path / "xs.pt"
    if not ckpt.exists():
        model = DiT_models["DiT-XS/4"](input_size=16, in_channels=1, num_classes=10)
        torch.save(randomised(model, std=0.02).state_dict(), ckpt)
    sampled = []
    original = benchmark_quality.sample_set

    def counting_sample_set(model, args, config, seed):
        sampled.append(f"N{config.interval}-O{config.max_order}-seed{seed}")
        return original(model, args, config, seed)

    monkeypatch.setattr(benchmark_quality, "sample_set", counting_sample_set)
    args = benchmark_quality.build_parser().parse_args(
        ["--ckpt", str(ckpt), "--intervals", "3", "--orders", *orders, "--num-samples", "12", "--spread-seeds", "2",
         "--num-sampling-steps", "7", "--batch-size", "6", "--results-dir", str(tmp_path / "out"), "--device", "cpu",
         *extra]
    )  # fmt: skip
    return benchmark_quality.run(args), sampled


def test_benchmark_writes_tables_and_resumes_by_cell(tmp_path, monkeypatch):
    summary, sampled = run(tmp_path, monkeypatch, ["0"])
    assert sampled == ["N1-O1-seed0", "N1-O1-seed1", "N3-O0-seed0"]
    (fora,) = summary["cells"]
    # E=2, N=3 over 7 steps: full steps 0, 1, 4.
    model = DiT_models["DiT-XS/4"](input_size=16, in_channels=1, num_classes=10)
    flops = FlopsReport.for_schedule("reference", *reference_step_flops(model, 12), 7, TaylorSeerConfig(3, 0, 2))
    assert (fora["full_steps"], fora["flops_speedup"]) == (3, flops.speedup)
    assert fora["rel_l2"] > 0 and fora["fid"] > 0 and 0 <= fora["agreement"] <= 1
    assert len(summary["full_compute"]["fid_per_seed"]) == 2 and summary["full_compute"]["fid_std"] > 0

    summary, sampled = run(tmp_path, monkeypatch, ["0", "2"])
    assert sampled == ["N1-O1-seed0", "N3-O2-seed0"]  # the reference run again, and only the missing cell
    assert [c["key"] for c in summary["cells"]] == ["N3-O0", "N3-O2"]
    _, sampled = run(tmp_path, monkeypatch, ["0", "2"])
    assert sampled == []

    out = tmp_path / "out"
    assert json.loads((out / "results.json").read_text())["cells"][1]["order"] == 2
    table = (out / "results.md").read_text()
    assert "| 3 | FORA | 3 |" in table and "| 3 | 2 | 3 |" in table
    assert (out / "quality_vs_speedup.png").stat().st_size > 10_000


def test_cells_of_other_settings_are_not_reused_and_a_cut_line_is_skipped(tmp_path, monkeypatch, capsys):
    run(tmp_path, monkeypatch, ["0"])
    cells_path = tmp_path / "out" / "cells.jsonl"
    first = [json.loads(line) for line in cells_path.read_text().splitlines()]
    assert [c["key"] for c in first] == ["full-seed0", "full-seed1", "N3-O0"]
    settings = {"ckpt": str(tmp_path / "xs.pt"), "first_enhance": 2, "num_samples": 12, "num_sampling_steps": 7,
                "cfg_scale": benchmark_quality.BUNDLED_CFG_SCALE, "batch_size": 6, "device": "cpu"}  # fmt: skip
    assert all(cell["settings"] == settings for cell in first)
    capsys.readouterr()

    # --first-enhance 1: full steps 0, 3, 6 (not 0, 1, 4); the E=2 cell must not be reused under the new setting.
    summary, sampled = run(tmp_path, monkeypatch, ["0"], "--first-enhance", "1")
    assert sampled == ["N1-O1-seed0", "N1-O1-seed1", "N3-O0-seed0"]
    assert summary["cells"][0]["full_steps"] == 3 and "settings" not in summary["cells"][0]
    assert "3 cells were recorded with other settings than" in capsys.readouterr().err

    # Killed during an append: the cut last line is skipped with a warning, the complete cells are reused.
    complete = cells_path.read_text()
    cells_path.write_text(complete + '{"key": "N3-O2", "interval": 3, "ord')
    _, sampled = run(tmp_path, monkeypatch, ["0"], "--first-enhance", "1")
    assert sampled == []
    err = capsys.readouterr().err
    assert "line 7: skipped a cell cut short" in err and err.count("warning:") == 2


def test_a_corrupt_line_before_the_last_is_an_error(tmp_path):
    path = tmp_path / "cells.jsonl"
    path.write_text('{"key": "N3-O0"\n\n{"key": "N3-O1", "settings": {}}\n')
    with pytest.raises(UsageError, match=r"cells.jsonl, line 1: not a JSON cell"):
        benchmark_quality.load_cells(path, {})
    path.write_text('\n{"key": "N3-O1", "settings": {}}\n\n')
    assert list(benchmark_quality.load_cells(path, {})) == ["N3-O1"]  # blank lines, even the last, are skipped


def test_missing_weights_are_one_readable_error(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "TaylorSeer-DiT" / "benchmark_quality.py"
    result = subprocess.run([sys.executable, str(script), "--ckpt", str(tmp_path / "none.pt")], capture_output=True,
                            text=True, cwd=tmp_path)  # fmt: skip
    assert result.returncode == 2 and "none.pt" in result.stderr and "Traceback" not in result.stderr
