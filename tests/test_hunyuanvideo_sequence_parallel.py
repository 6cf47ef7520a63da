"""HunyuanVideo with Ulysses sequence parallelism on 2 gloo processes equals the single-process model, step by step,
with a cache on (each rank caching its own image shard) and padded text; TeaCache, which decides from the step's
input, takes the same decisions on every rank (its signal is gathered) as in one process."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from test_hunyuanvideo_model import TOLERANCE, inputs, relative_error, tiny_model
from test_sequence_parallel import free_port

from common.caching import CacheMethod
from common.sequence_parallel import SequenceParallel
from common.taylor_cache import TaylorCache, TaylorSeerConfig
from common.teacache import TEACACHE_COEFFICIENTS, TeaCache, TeaCacheConfig
from common.toca import ToCaCache, ToCaConfig

WORLD = 2
STEPS = 5
# Full steps 0, 2, 4; steps 1 and 3 are first-order forecasts, so forecasts of sharded features are checked too.
CONFIG = TaylorSeerConfig(interval=2, max_order=1, first_enhance=1)
# Relative input changes of about 0.4 a step: skips steps 1 and 3 (accumulated 0.41, then 0.76 >= 0.6 computes).
TEACACHE = TeaCacheConfig(threshold=0.6, coefficients=TEACACHE_COEFFICIENTS["identity"])
MODES = ("plain", "cached", "teacache", "toca")


def mode_cache(mode: str) -> CacheMethod | None:
    caches = {
        "plain": lambda: None,
        "cached": lambda: TaylorCache(CONFIG),
        "teacache": lambda: TeaCache(TEACACHE),
        # Each rank picks the fresh tokens of its own shard: the same count, not the same tokens as one process.
        "toca": lambda: ToCaCache(ToCaConfig(interval=2, fresh_ratio=0.5, layer_schedule=False)),
    }
    return caches[mode]()


def run_steps(sp: SequenceParallel | None, cache: CacheMethod | None) -> list[torch.Tensor]:
    """A small Euler-like loop: the input of each step depends on the previous prediction, as in sampling. With a
    cache, the last entry is the list of its full-step decisions."""
    model = tiny_model()
    x = inputs(padded=True)
    outputs, decisions = [], []
    if cache is not None:
        cache.reset(STEPS)
    with torch.no_grad():
        for step in range(STEPS):
            if cache is not None:
                cache.begin_step(step)
            out = model(**x, cache=cache, sequence_parallel=sp)
            outputs.append(out)
            decisions.append(True if cache is None else cache.is_full_step)
            x = {**x, "x": x["x"] - 0.2 * out, "t": x["t"] - 100.0}
    return [*outputs, decisions]


def worker(rank: int, port: int, out_dir: Path) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD, timeout=timedelta(seconds=60)
    )
    try:
        sp = SequenceParallel.from_default_group()
        teacache = mode_cache("teacache")
        results = {mode: run_steps(sp, teacache if mode == "teacache" else mode_cache(mode)) for mode in MODES}
        results["teacache_changes"] = teacache.changes
        torch.save(results, out_dir / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory) -> list[dict]:
    out_dir = tmp_path_factory.mktemp("hv_sp")
    mp.spawn(worker, args=(free_port(), out_dir), nprocs=WORLD, join=True)
    return [torch.load(out_dir / f"rank{rank}.pt") for rank in range(WORLD)]


@pytest.mark.parametrize("mode", ["plain", "cached", "teacache"])
def test_two_ranks_equal_one_process(rank_results: list[dict], mode: str) -> None:
    *reference, decisions = run_steps(None, mode_cache(mode))
    for rank in range(WORLD):
        *outputs, rank_decisions = rank_results[rank][mode]
        assert rank_decisions == decisions, (mode, rank)
        for step, (got, want) in enumerate(zip(outputs, reference, strict=True)):
            assert got.shape == want.shape
            assert relative_error(want, got) < TOLERANCE, (mode, rank, step)


def test_teacache_takes_one_decision_per_step_on_every_rank(rank_results: list[dict]) -> None:
    """Each rank holds half the image tokens, but measures the change of the gathered signal: the same number on
    every rank, the one-process change up to rounding, hence the same decisions."""
    assert rank_results[0]["teacache"][-1] == rank_results[1]["teacache"][-1] == [True, False, True, False, True]
    changes = rank_results[0]["teacache_changes"]
    assert rank_results[1]["teacache_changes"] == changes and changes[0] is None
    cache = mode_cache("teacache")
    run_steps(None, cache)
    assert changes[1:] == pytest.approx(cache.changes[1:], rel=1e-5)


def test_toca_ranks_stay_in_step_and_close_to_full_compute(rank_results: list[dict]) -> None:
    *plain, _ = rank_results[0]["plain"]
    *toca, decisions = rank_results[0]["toca"]
    assert decisions == [True, False, True, False, True]
    assert 0 < relative_error(plain[-1], toca[-1]) < 0.2


@pytest.mark.parametrize("mode", MODES)
def test_ranks_return_identical_predictions(rank_results: list[dict], mode: str) -> None:
    for a, b in zip(rank_results[0][mode][:-1], rank_results[1][mode][:-1], strict=True):
        assert torch.equal(a, b)


def test_forecast_steps_differ_from_full_compute(rank_results: list[dict]) -> None:
    # Steps 1 and 3 are forecasts: if the sharded cache were bypassed they would equal the plain run.
    plain, cached = rank_results[0]["plain"][:-1], rank_results[0]["cached"][:-1]
    assert torch.equal(plain[0], cached[0])
    for step in (1, 3):
        assert relative_error(plain[step], cached[step]) > 1e-4


def test_world_size_one_is_the_plain_model() -> None:
    sp = SequenceParallel(group=None, rank=0, world_size=1)
    for got, want in zip(run_steps(sp, None)[:-1], run_steps(None, None)[:-1], strict=True):
        assert torch.equal(got, want)


def test_indivisible_token_count_is_a_clear_error() -> None:
    model = tiny_model()
    x = inputs()
    x["x"] = x["x"][:, :, :1, :2, :2]  # 1 x 1 x 1 = 1 token, not divisible by 2 ranks
    fake = SequenceParallel(group=None, rank=0, world_size=WORLD)
    with pytest.raises(ValueError, match="evenly across 2 sequence-parallel ranks"):
        model(**x, sequence_parallel=fake)
