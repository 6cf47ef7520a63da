"""benchmark_storage.py on the bundled model, small: every row's cache bytes (half for 16-bit storage, 1/(O+1) for
FORA), relative errors inside their intervals, float16 storage of these features indistinguishable from float32, and
one error line for bad input."""

from __future__ import annotations

import json

import pytest
from cli_testing import assert_refused

from taylorseer_dit import benchmark_storage

pytestmark = pytest.mark.usefixtures("one_thread")

ARGS = ["--samples", "10", "--num-steps", "10", "--interval", "3", "--max-order", "2"]


def test_rows_bytes_and_intervals(tmp_path) -> None:
    record = benchmark_storage.cli([*ARGS, "--results-dir", str(tmp_path)])
    rows = {(row["method"], row["storage"]): row for row in record["rows"]}
    assert list(rows) == [(m, s) for m in ("TaylorSeer", "FORA") for s in ("float32 (auto)", "bfloat16", "float16")]
    # DiT-XS/4 on 16x16 digits: 16 tokens of width 128, 6 blocks x 2 modules, 10 images + their CFG copies.
    output = 20 * 16 * 128 * 4
    assert rows["TaylorSeer", "float32 (auto)"]["cache_bytes"] == 3 * 12 * output
    for storage in ("bfloat16", "float16"):
        assert rows["TaylorSeer", storage]["cache_bytes"] == 3 * 6 * output
    assert rows["FORA", "float32 (auto)"]["cache_bytes"] == 12 * output
    for row in rows.values():
        low, high = row["rel_l2_interval"]
        assert 0 < low <= row["rel_l2"] <= high
    low, high = rows["TaylorSeer", "float16"]["delta_vs_float32_interval"]
    assert low <= rows["TaylorSeer", "float16"]["delta_vs_float32"] <= high and high - low < 1e-3
    assert json.loads((tmp_path / "results.json").read_text()) == json.loads(json.dumps(record))
    assert "| TaylorSeer | bfloat16 |" in (tmp_path / "results.md").read_text()


def test_bad_input(tmp_path, capsys) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert_refused(benchmark_storage.cli, [*ARGS, "--results-dir", str(blocker / "x")], "--results-dir", capsys)
    assert_refused(benchmark_storage.cli, [*ARGS, "--samples", "3"], "--samples", capsys, watch=tmp_path)
