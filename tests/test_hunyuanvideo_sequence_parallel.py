"""HunyuanVideo with Ulysses sequence parallelism on 2 gloo processes equals the single-process model, step by step,
with the TaylorSeer cache on (each rank caching its own image shard) and padded text."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from test_hunyuanvideo_model import TOLERANCE, inputs, relative_error, tiny_model
from test_sequence_parallel import free_port

from common.sequence_parallel import SequenceParallel
from common.taylor_cache import TaylorCache, TaylorSeerConfig

WORLD = 2
STEPS = 5
# Full steps 0, 2, 4; steps 1 and 3 are first-order forecasts, so forecasts of sharded features are checked too.
CONFIG = TaylorSeerConfig(interval=2, max_order=1, first_enhance=1)


def run_steps(sp: SequenceParallel | None, cache: TaylorCache | None) -> list[torch.Tensor]:
    """A small Euler-like loop: the input of each step depends on the previous prediction, as in sampling."""
    model = tiny_model()
    x = inputs(padded=True)
    outputs = []
    if cache is not None:
        cache.reset()
    with torch.no_grad():
        for step in range(STEPS):
            if cache is not None:
                cache.begin_step(step)
            out = model(**x, cache=cache, sequence_parallel=sp)
            outputs.append(out)
            x = {**x, "x": x["x"] - 0.2 * out, "t": x["t"] - 100.0}
    return outputs


def worker(rank: int, port: int, out_dir: Path) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD, timeout=timedelta(seconds=60)
    )
    try:
        sp = SequenceParallel.from_default_group()
        results = {"plain": run_steps(sp, None), "cached": run_steps(sp, TaylorCache(CONFIG))}
        torch.save(results, out_dir / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory) -> list[dict]:
    out_dir = tmp_path_factory.mktemp("hv_sp")
    mp.spawn(worker, args=(free_port(), out_dir), nprocs=WORLD, join=True)
    return [torch.load(out_dir / f"rank{rank}.pt") for rank in range(WORLD)]


@pytest.mark.parametrize("mode", ["plain", "cached"])
def test_two_ranks_equal_one_process(rank_results: list[dict], mode: str) -> None:
    reference = run_steps(None, TaylorCache(CONFIG) if mode == "cached" else None)
    for rank in range(WORLD):
        for step, (got, want) in enumerate(zip(rank_results[rank][mode], reference, strict=True)):
            assert got.shape == want.shape
            assert relative_error(want, got) < TOLERANCE, (mode, rank, step)


def test_ranks_return_identical_predictions(rank_results: list[dict]) -> None:
    for mode in ("plain", "cached"):
        for a, b in zip(rank_results[0][mode], rank_results[1][mode], strict=True):
            assert torch.equal(a, b)


def test_forecast_steps_differ_from_full_compute(rank_results: list[dict]) -> None:
    # Steps 1 and 3 are forecasts: if the sharded cache were bypassed they would equal the plain run.
    plain, cached = rank_results[0]["plain"], rank_results[0]["cached"]
    assert torch.equal(plain[0], cached[0])
    for step in (1, 3):
        assert relative_error(plain[step], cached[step]) > 1e-4


def test_world_size_one_is_the_plain_model() -> None:
    sp = SequenceParallel(group=None, rank=0, world_size=1)
    for got, want in zip(run_steps(sp, None), run_steps(None, None), strict=True):
        assert torch.equal(got, want)


def test_indivisible_token_count_is_a_clear_error() -> None:
    model = tiny_model()
    x = inputs()
    x["x"] = x["x"][:, :, :1, :2, :2]  # 1 x 1 x 1 = 1 token, not divisible by 2 ranks
    fake = SequenceParallel(group=None, rank=0, world_size=WORLD)
    with pytest.raises(ValueError, match="evenly across 2 sequence-parallel ranks"):
        model(**x, sequence_parallel=fake)
