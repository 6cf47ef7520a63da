"""TaylorSeer-DiT/benchmark_latency.py end to end on DiT-Tiny/2: each row's steps and schedule, cache bytes equal to
what the model's shapes say (no hidden buffers), the paper-size sizing on the meta device against reference-semantics
§8, the files, and one error line for bad input. Timing itself is not asserted."""

from __future__ import annotations

import json

import pytest
from cli_testing import assert_refused

from common.taylor_cache import TaylorSeerConfig, full_step_indices
from taylorseer_dit import benchmark_latency

pytestmark = pytest.mark.usefixtures("one_thread")

ARGS = ["--model", "DiT-Tiny/2", "--images", "1", "--num-steps", "8", "--interval", "3", "--max-order", "2",
        "--first-enhance", "1", "--repeats", "1", "--malloc", "default", "--paper-model", "DiT-Tiny/2"]  # fmt: skip
# DiT-Tiny/2 at 256²: 32x32 latents in 2x2 patches = 256 tokens of width 64, 2 blocks x (attn, mlp).
TOKENS, WIDTH, DEPTH = 256, 64, 2


@pytest.fixture(scope="module")
def record(tmp_path_factory):
    folder = tmp_path_factory.mktemp("latency")
    return folder, benchmark_latency.cli([*ARGS, "--results-dir", str(folder)])


def test_rows_follow_their_schedules(record) -> None:
    _, saved = record
    rows = {row["name"]: row for row in saved["results"]}
    config = TaylorSeerConfig(interval=3, max_order=2, first_enhance=1)
    assert list(rows) == ["full", "FORA", "TaylorSeer"]
    assert rows["full"]["full_steps"] == list(range(8))
    assert rows["FORA"]["full_steps"] == rows["TaylorSeer"]["full_steps"] == full_step_indices(8, config) == [0, 3, 6]
    assert rows["TaylorSeer"]["config"]["max_order"] == 2 and rows["FORA"]["config"]["max_order"] == 0
    assert all(len(row["step_seconds"]) == 8 for row in rows.values())


def test_cache_bytes_are_the_held_outputs_and_nothing_else(record) -> None:
    _, saved = record
    rows = {row["name"]: row for row in saved["results"]}
    one_output = 2 * TOKENS * WIDTH * 4  # 1 image + its CFG copy, float32
    assert rows["FORA"]["cache_bytes"] == DEPTH * 2 * one_output
    assert rows["TaylorSeer"]["cache_bytes"] == 3 * DEPTH * 2 * one_output  # O + 1 = 3 outputs per module
    for row in rows.values():
        assert row["cache_storage_bytes"] == row["cache_bytes"]
    assert rows["full"]["cache_bytes"] == 0


def test_paper_size_sizing_on_the_meta_device(record) -> None:
    _, saved = record
    sizing = saved["paper_cache_bytes"]
    per_output = 16 * TOKENS * WIDTH * 4  # 8 images + CFG at 256²
    assert sizing["TaylorSeer"]["cache_bytes"] == 3 * DEPTH * 2 * per_output
    assert sizing["FORA"]["cache_bytes"] == DEPTH * 2 * per_output


def test_paper_size_dit_xl_matches_reference_semantics() -> None:
    """reference-semantics §8: DiT-XL/2 256² float32 holds 2.36 MB per block, module and order per image with CFG."""
    sizing = benchmark_latency.paper_cache_bytes("DiT-XL/2", 256, 1, 1.5, 6, TaylorSeerConfig(interval=2, max_order=1))
    per_output = sizing["FORA"]["cache_bytes"] / (28 * 2)
    assert per_output == 2 * 256 * 1152 * 4 and round(per_output / 1e6, 2) == 2.36
    assert sizing["TaylorSeer"]["cache_bytes"] == 2 * sizing["FORA"]["cache_bytes"]


def test_files(record) -> None:
    folder, saved = record
    assert json.loads((folder / "results.json").read_text()) == json.loads(json.dumps(saved))
    markdown = (folder / "results.md").read_text()
    assert "DiT-Tiny/2 256² with random weights" in markdown and "| TaylorSeer | 3/8 |" in markdown
    assert (folder / "step_times.png").stat().st_size > 0


def test_bad_input(tmp_path, capsys) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert_refused(benchmark_latency.cli, [*ARGS, "--results-dir", str(blocker / "x")], "--results-dir", capsys)
    assert_refused(benchmark_latency.cli, [*ARGS, "--interval", "1"], "full compute", capsys, watch=tmp_path)
    assert_refused(benchmark_latency.cli, [*ARGS, "--repeats", "0"], "--repeats", capsys, watch=tmp_path)
    assert_refused(benchmark_latency.cli, [*ARGS, "--device", "cuda:7"], "--device", capsys, watch=tmp_path)


def test_compiled_run_keeps_the_bookkeeping(tmp_path) -> None:
    """--compile (regions and forecasts compiled in the untimed first runs) changes no step, schedule or byte."""
    saved = benchmark_latency.cli([*ARGS, "--compile", "--repeats", "1", "--results-dir", str(tmp_path)])
    rows = {row["name"]: row for row in saved["results"]}
    one_output = 2 * TOKENS * WIDTH * 4
    assert saved["settings"]["compile"] is True
    assert rows["TaylorSeer"]["full_steps"] == [0, 3, 6]
    assert rows["TaylorSeer"]["cache_bytes"] == 3 * DEPTH * 2 * one_output
