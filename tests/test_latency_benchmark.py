"""The latency benchmark's bookkeeping on a toy model: the steps each row ran, the bytes its cache holds (the sum of
the held tensors, with no larger buffer kept alive behind a view), the stages outside the loop, and what the files
say. No timing is asserted: speed is measured by the benchmark scripts, not by tests."""

from __future__ import annotations

import json

import pytest
import torch

from common.caching import CacheMethod, cached, cached_group
from common.latency_benchmark import (
    RESULT_FILES,
    StepClock,
    VariantResult,
    cache_footprint,
    cache_storage_bytes,
    held_bytes,
    load_results,
    measure,
    paper_variants,
    per_step_speedup,
    pooled_full_step_seconds,
    results_markdown,
    write_results,
)
from common.taylor_cache import TaylorCache, TaylorSeerConfig, full_step_indices

CONFIG = TaylorSeerConfig(interval=3, max_order=2, first_enhance=1)
STEPS = 10


def toy_run(shapes: dict[str, tuple[int, ...]], num_steps: int = STEPS):
    """``run(cache)``: a "sampler" of ``num_steps`` steps whose model is one cached module per entry of ``shapes``."""

    def run(cache: CacheMethod) -> None:
        cache.reset(num_steps)
        for step in range(num_steps):
            cache.begin_step(step)
            for name, shape in shapes.items():
                cached(cache, name, lambda shape=shape, step=step: torch.full(shape, float(step)))

    return run


def test_rows_record_their_schedules_steps_and_cache_bytes() -> None:
    shapes = {"attn": (2, 8, 4), "mlp": (2, 8, 4)}
    calls = []
    results = measure(
        toy_run(shapes), paper_variants(CONFIG), num_steps=STEPS, device=torch.device("cpu"), repeats=2,
        stages={"decode": lambda: calls.append(1)},
    )  # fmt: skip
    assert [r.name for r in results] == ["full", "FORA", "TaylorSeer"]
    full, fora, taylorseer = results
    assert full.full_steps == list(range(STEPS)) and full.forecast_step_seconds is None
    assert fora.full_steps == taylorseer.full_steps == full_step_indices(STEPS, CONFIG) == [0, 3, 6, 9]
    assert len(taylorseer.step_seconds) == STEPS and all(t > 0 for t in taylorseer.step_seconds)
    assert taylorseer.step_ratio == pytest.approx(2.5)
    # Bytes: 2 modules x 64 float32 elements; FORA keeps 1 output each, TaylorSeer O + 1 = 3; full compute none.
    assert (full.cache_bytes, fora.cache_bytes, taylorseer.cache_bytes) == (0, 2 * 64 * 4, 3 * 2 * 64 * 4)
    assert (fora.cache_tensors, taylorseer.cache_tensors) == (2, 6)
    assert taylorseer.cache_storage_bytes == taylorseer.cache_bytes
    assert calls == [1, 1] and set(full.stage_seconds) == {"decode"}
    assert taylorseer.end_to_end_seconds == pytest.approx(taylorseer.loop_seconds + full.stage_seconds["decode"])
    assert full.peak_memory_bytes is None  # CPU: no allocator count


def test_a_view_of_a_larger_buffer_counts_the_whole_buffer_in_storage_bytes() -> None:
    """A module whose cached output is half of a buffer keeps the other half alive: held bytes count the half,
    storage bytes the buffer; the benchmark reports both, and the models' tests require them equal."""
    cache = TaylorCache(TaylorSeerConfig(interval=2, max_order=0))
    cache.reset(1)
    cache.begin_step(0)
    cached_group(cache, ["img"], lambda: [torch.zeros(2, 10)[:, :4]])
    assert (held_bytes(cache), cache_storage_bytes(cache)) == (2 * 4 * 4, 2 * 10 * 4)


def test_footprint_on_the_meta_device_allocates_nothing_and_counts_every_byte() -> None:
    shapes = {"attn": (16, 4096, 3072)}  # a FLUX-like image stream: 201 MB per output in float32

    def run(cache: CacheMethod) -> None:
        cache.reset(STEPS)
        for step in range(STEPS):
            cache.begin_step(step)
            cached(cache, "attn", lambda: torch.empty(shapes["attn"], device="meta"))

    footprint = cache_footprint(run, CONFIG)
    assert footprint == {"cache_bytes": 3 * 16 * 4096 * 3072 * 4, "cache_storage_bytes": 3 * 16 * 4096 * 3072 * 4,
                         "cache_tensors": 3}  # fmt: skip


def test_a_run_that_does_not_announce_its_steps_is_refused() -> None:
    with pytest.raises(RuntimeError, match="begin_step once per step"):
        measure(toy_run({"m": (1,)}, num_steps=4), paper_variants(CONFIG), num_steps=STEPS, device=torch.device("cpu"))


def test_step_clock_times_every_announced_step() -> None:
    cache = TaylorCache(CONFIG)
    clock = StepClock(cache, torch.device("cpu"))
    toy_run({"m": (3,)}, num_steps=5)(cache)
    seconds = clock.stop()
    assert clock.steps == [0, 1, 2, 3, 4] and clock.full == [True, False, False, True, False]
    assert len(seconds) == 5 and all(s >= 0 for s in seconds)


def test_files_hold_the_table_and_every_figure(tmp_path) -> None:
    results = measure(toy_run({"m": (4, 4)}), paper_variants(CONFIG), num_steps=STEPS, device=torch.device("cpu"),
                      repeats=1)  # fmt: skip
    record = write_results(tmp_path, results, title="toy", settings={"a": 1}, lines=["a line"], extra={"x": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(RESULT_FILES)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved == json.loads(json.dumps(record))
    assert saved["x"] == 2 and saved["settings"] == {"a": 1} and "threads" in saved["machine"]
    rows = {row["name"]: row for row in saved["results"]}
    assert rows["TaylorSeer"]["full_steps"] == [0, 3, 6, 9] and rows["TaylorSeer"]["cache_bytes"] == 3 * 16 * 4
    markdown = (tmp_path / "results.md").read_text()
    assert markdown.startswith("# toy\n\na line\n") and "| TaylorSeer | 4/10 |" in markdown


def _row(name: str, full_steps: list[int], full: float, forecast: float) -> VariantResult:
    steps = [full if step in full_steps else forecast for step in range(10)]
    return VariantResult(name, None if name == "full" else {}, 10, full_steps, sum(steps), full,
                         None if len(full_steps) == 10 else forecast, steps, 0, 0, 0, None)  # fmt: skip


def test_per_step_speedup_uses_the_pooled_full_step() -> None:
    """Full steps: 10 of 1.0 s (full compute) and 4 + 4 of 1.2 s (FORA, TaylorSeer): the pooled median is 1.0; with
    forecasts of 0.1 and 0.2 s the per-step speedups are 10 / (4 + 6 * 0.1) and 10 / (4 + 6 * 0.2)."""
    results = [_row("full", list(range(10)), 1.0, 0.0), _row("FORA", [0, 3, 6, 9], 1.2, 0.1),
               _row("TaylorSeer", [0, 3, 6, 9], 1.2, 0.2)]  # fmt: skip
    pooled = pooled_full_step_seconds(results)
    assert pooled == 1.0
    assert [per_step_speedup(r, pooled) for r in results] == pytest.approx([1.0, 10 / 4.6, 10 / 5.2])
    table = results_markdown(results)
    assert f"| {10 / 5.2:.2f}x | {4.6 / 5.2:.3f} |" in table


def test_results_round_trip_through_the_json(tmp_path) -> None:
    results = measure(toy_run({"m": (2, 3)}), paper_variants(CONFIG), num_steps=STEPS, device=torch.device("cpu"),
                      repeats=1, stages={"decode": lambda: None})  # fmt: skip
    write_results(tmp_path, results, title="t", settings={})
    assert load_results(tmp_path / "results.json") == results
