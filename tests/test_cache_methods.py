"""The baselines behind the one cache interface (FORA, Δ-DiT, ToCa, DuCa, TeaCache): their invariants against full
compute and TaylorSeer, their decisions against hand-computed values, and their FLOPs counted during the run."""

from __future__ import annotations

import argparse

import pytest
import torch
from dit_testing import tiny_dit

from common.caching import CacheMethod, run_blocks
from common.cli import add_taylorseer_args
from common.delta_dit import DeltaDiTCache, DeltaDiTConfig
from common.flops import count_flops
from common.methods import (
    METHODS,
    add_method_args,
    describe,
    make_cache,
    method_config_from_args,
    method_record,
    warn_unused_method_flags,
)
from common.taylor_cache import TaylorCache, TaylorSeerConfig
from common.teacache import TEACACHE_COEFFICIENTS, TeaCache, TeaCacheConfig, relative_l1
from common.toca import DuCaCache, ToCaCache, ToCaConfig, fresh_count, layer_ratio
from taylorseer_dit.diffusion import create_diffusion
from taylorseer_dit.pipeline import sample_dit

pytestmark = pytest.mark.usefixtures("one_thread")
STEPS = 12


def sample(cache: CacheMethod | None, model=None, cfg_scale: float = 1.5):
    model = model or tiny_dit(depth=4)
    return sample_dit(model, create_diffusion(str(STEPS)), [1, 7], cfg_scale=cfg_scale, cache=cache, seed=3)


@pytest.fixture(scope="module")
def model():
    return tiny_dit(depth=4)


@pytest.fixture(scope="module")
def full(model):
    return sample(None, model)


def parse(*argv: str) -> tuple[str, object]:
    parser = argparse.ArgumentParser()
    add_taylorseer_args(parser, interval=4, max_order=2, first_enhance=2)
    add_method_args(parser)
    args = parser.parse_args(list(argv))
    return args.method, method_config_from_args(args, parser)


def test_fora_is_taylorseer_of_order_zero_bit_for_bit(model) -> None:
    method, config = parse("--method", "fora", "--interval", "3", "--max-order", "3")
    assert config == TaylorSeerConfig(interval=3, max_order=0, first_enhance=2)
    fora = sample(make_cache(method, config), model)
    order0 = sample(TaylorCache(TaylorSeerConfig(interval=3, max_order=0, first_enhance=2)), model)
    assert torch.equal(fora.samples, order0.samples) and describe(method, config) == "FORA N=3"


@pytest.mark.parametrize(
    ("argv", "full_steps"),
    [
        (("--method", "teacache", "--teacache-thresh", "0"), STEPS),
        # The schedule still has cached steps (full 0, 3, 6, 9), but every token of every layer is fresh on them.
        (("--method", "toca", "--fresh-ratio", "1", "--no-layer-schedule", "--interval", "3"), 5),
        (("--method", "duca", "--fresh-ratio", "1", "--no-layer-schedule", "--interval", "1"), STEPS),
        (("--method", "delta-dit", "--interval", "1", "--cached-blocks", "2"), STEPS),
        (("--method", "taylorseer", "--interval", "1"), STEPS),
    ],
    ids=["teacache-0", "toca-ratio-1", "duca-interval-1", "delta-interval-1", "taylorseer-interval-1"],
)
def test_settings_that_compute_everything_equal_full_compute(argv, full_steps, model, full) -> None:
    method, config = parse(*argv)
    result = sample(make_cache(method, config), model)
    assert torch.equal(result.samples, full.samples)
    assert (result.num_full_steps, result.num_forecast_steps) == (full_steps, STEPS - full_steps)


@pytest.mark.parametrize("method", [m for m in METHODS if m != "full"])
def test_every_method_runs_and_stays_close_to_full_compute(method, model, full) -> None:
    method, config = parse("--method", method, "--interval", "3", "--teacache-thresh", "0.05", "--cached-blocks", "2")
    result = sample(make_cache(method, config), model)
    error = float((result.samples - full.samples).norm() / full.samples.norm())
    assert 0 < error < 0.2, (method, error)
    assert result.num_forecast_steps > 0 and result.num_full_steps + result.num_forecast_steps == STEPS
    assert method_record(method, config)["method"] == method


def test_full_method_is_the_plain_model() -> None:
    method, config = parse("--method", "full")
    assert config is None and make_cache(method, config) is None and describe(method, config) == "full compute"


# ----------------------------------------------------------------------------------------------------- Δ-DiT


def affine_blocks(depth: int) -> list:
    """Block i maps h to 2h + i: residuals easy to compute by hand."""
    return [lambda h, i=i: 2 * h + i for i in range(depth)]


def test_delta_dit_bypasses_rear_blocks_early_and_front_blocks_late() -> None:
    cache = DeltaDiTCache(DeltaDiTConfig(interval=2, cached_blocks=1, boundary=0.5, first_enhance=1))
    cache.reset(num_steps=4)  # full steps 0 and 2; step 1 is early (< 2), step 3 late
    blocks = affine_blocks(3)
    x0 = torch.tensor([1.0])
    cache.begin_step(0)
    # Full: 1 -> 2 -> 5 -> 12; front residual (block 0) 2 - 1 = 1, rear residual (block 2) 12 - 5 = 7.
    assert run_blocks(cache, blocks, x0).item() == 12
    cache.begin_step(1)  # early: blocks 0 and 1 run (3 -> 6 -> 13), block 2 is its residual: 13 + 7
    assert run_blocks(cache, blocks, torch.tensor([3.0])).item() == 20
    cache.begin_step(2)
    assert run_blocks(cache, blocks, x0).item() == 12
    cache.begin_step(3)  # late: block 0 is its residual (3 + 1 = 4), then 4 -> 9 -> 20
    assert run_blocks(cache, blocks, torch.tensor([3.0])).item() == 20
    with pytest.raises(ValueError, match="cached_blocks 4 exceeds the model's 3 blocks"):
        DeltaDiTCache(DeltaDiTConfig(cached_blocks=4)).run_blocks(blocks, x0)


# -------------------------------------------------------------------------------------------------- ToCa/DuCa


def test_toca_layer_ratios_use_the_models_depth() -> None:
    config = ToCaConfig(fresh_ratio=0.2)
    assert [layer_ratio(config, layer, 5) for layer in range(5)] == pytest.approx([0.3, 0.25, 0.2, 0.15, 0.1])
    assert layer_ratio(ToCaConfig(fresh_ratio=0.8), 0, 28) == 1.0  # 0.8 * 1.5 clipped
    assert [fresh_count(r, 10) for r in (0.0, 0.01, 0.25, 0.5, 1.0)] == [0, 1, 2, 5, 10]


def test_toca_recomputes_the_fresh_tokens_and_reuses_the_rest() -> None:
    cache = ToCaCache(ToCaConfig(interval=2, fresh_ratio=0.5, score="norm", layer_schedule=False))
    cache.reset(num_steps=2)
    double = lambda t: 2 * t  # noqa: E731
    cache.begin_step(0)
    first = torch.arange(8.0).reshape(1, 4, 2)  # token norms grow with the index
    assert torch.equal(cache.layer(0).apply_tokens("mlp", lambda: first, double), 2 * first)
    assert torch.equal(cache.layer(0).apply("attn", lambda: torch.ones(1)), torch.ones(1))
    cache.begin_step(1)
    second = torch.tensor([[[9.0, 9.0], [0.0, 0.0], [5.0, 5.0], [1.0, 1.0]]])  # fresh: tokens 0 and 2 (largest)
    out = cache.layer(0).apply_tokens("mlp", lambda: second, double)
    expected = torch.tensor([[[18.0, 18.0], [4.0, 6.0], [10.0, 10.0], [12.0, 14.0]]])
    assert torch.equal(out, expected) and cache.fresh_tokens == 2
    # Attention is reused on cached steps.
    assert torch.equal(cache.layer(0).apply("attn", lambda: pytest.fail("attention ran")), torch.ones(1))


def test_duca_alternates_toca_and_aggressive_steps() -> None:
    cache = DuCaCache(ToCaConfig(interval=4, fresh_ratio=0.5, layer_schedule=False))
    cache.reset(num_steps=5)  # F C A C F
    ran = []
    blocks = [lambda h: ran.append(cache.step) or h + 1]
    outputs = []
    for step in range(5):
        cache.begin_step(step)
        outputs.append(run_blocks(cache, blocks, torch.tensor([float(step)])).item())
    assert ran == [0, 1, 3, 4]  # step 2 is aggressive: the stack does not run
    assert outputs == [1.0, 2.0, 2.0, 4.0, 5.0]  # step 2 takes step 1's stack output


# ---------------------------------------------------------------------------------------------------- TeaCache


def test_teacache_skips_while_the_accumulated_change_stays_under_the_threshold() -> None:
    cache = TeaCache(TeaCacheConfig(threshold=0.3, coefficients=TEACACHE_COEFFICIENTS["identity"]))
    cache.reset(num_steps=6)
    signals = [1.0, 1.1, 1.2, 1.5, 1.6, 1.7]
    # relative L1 changes: -, 0.1, 0.0909, 0.25, 0.0667, 0.0625; accumulated: 0.1 (skip), 0.1909 (skip),
    # 0.4409 (compute, restart), 0.0667 (skip), last step (compute).
    decisions, residual = [], None
    for step, value in enumerate(signals):
        cache.begin_step(step)
        blocks = [lambda h: h * 10]
        out = run_blocks(cache, blocks, torch.tensor([value]), signal=lambda v=value: torch.tensor([v]))
        decisions.append(cache.is_full_step)
        if not cache.is_full_step:  # the input plus the last computed residual
            assert out.item() == pytest.approx(value + residual)
        else:
            residual = 9 * value
    assert decisions == [True, False, False, True, False, True]
    assert (cache.num_full_steps, cache.num_forecast_steps) == (3, 3)
    assert relative_l1(torch.tensor([1.1]), torch.tensor([1.0])) == pytest.approx(0.1)
    assert cache.changes[1:] == pytest.approx([0.1, 0.1 / 1.1, 0.3 / 1.2, 0.1 / 1.5, 0.1 / 1.6])


def test_teacache_needs_the_models_signal() -> None:
    cache = TeaCache(TeaCacheConfig())
    cache.reset(2)
    cache.begin_step(0)
    with pytest.raises(ValueError, match="needs the model's signal"):
        cache.run_blocks([], torch.zeros(1))


# ------------------------------------------------------------------------------------------------------- FLOPs


def test_flops_are_counted_during_the_run(model, full) -> None:
    """What ran is what is counted: TeaCache at threshold 0 costs full compute (plus nothing: the signal is no
    matmul... except block 0's adaLN linear, once per step), and ToCa's cached steps cost their fresh tokens."""
    baseline = count_flops(lambda: sample(None, model))
    teacache = count_flops(lambda: sample(TeaCache(TeaCacheConfig(threshold=0)), model))
    hidden, batch, steps = 64, 4, STEPS  # 2 labels doubled for CFG
    adaln = 2 * batch * hidden * 6 * hidden  # block 0's modulation, recomputed for the signal
    assert teacache == baseline + steps * adaln
    fora = count_flops(lambda: sample(make_cache("fora", TaylorSeerConfig(interval=3, max_order=0)), model))
    toca = count_flops(lambda: sample(ToCaCache(ToCaConfig(interval=3, fresh_ratio=0.5, layer_schedule=False)), model))
    # On each cached step every block's MLP runs on half the 16 tokens: 2 matmuls of 64 x 256 per token.
    cached_steps = steps - 4  # full steps 0, 3, 6, 9 (E=1, N=3)
    mlp_half = 2 * (2 * batch * 8 * 64 * 256)
    assert toca == fora + cached_steps * 4 * mlp_half


def test_teacache_threshold_zero_computes_every_step_even_with_a_polynomial_below_zero() -> None:
    """A fit can go negative outside its range (here -1 + 0 * x): clamped at 0, threshold 0 still skips nothing."""
    cache = TeaCache(TeaCacheConfig(threshold=0.0, coefficients=(0.0, -1.0)))
    cache.reset(num_steps=4)
    for step in range(4):
        cache.begin_step(step)
        run_blocks(cache, [lambda h: h + 1], torch.zeros(1), signal=lambda s=step: torch.tensor([1.0 + s]))
        assert cache.is_full_step
    assert cache.changes[1:] == [0.0, 0.0, 0.0]


def test_attention_is_counted_alike_on_the_cpu_and_on_the_meta_device() -> None:
    """The CPU's fused attention kernel is registered with torch's SDPA formula (common.flops), so a real CPU run and
    a meta-device count agree: 2 batched matmuls of (L x d) by (d x L) and (L x L) by (L x d), 2 FLOPs per MAC."""
    batch, heads, length, dim = 2, 4, 16, 8
    expected = 2 * (2 * batch * heads * length * length * dim)
    for device in ("cpu", "meta"):
        q = torch.randn(batch, heads, length, dim, device=device)
        assert count_flops(lambda q=q: torch.nn.functional.scaled_dot_product_attention(q, q, q)) == expected


def test_a_method_flag_the_method_does_not_read_is_named_in_one_warning(capsys) -> None:
    parser = argparse.ArgumentParser()
    add_taylorseer_args(parser, interval=4, max_order=2, first_enhance=2)
    add_method_args(parser)
    args = parser.parse_args(["--method", "teacache", "--interval", "6", "--fresh-ratio", "0.3", "--max-order", "2"])
    assert warn_unused_method_flags(args, parser) == ["--interval", "--fresh-ratio"]  # --max-order is its default
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "warning: --interval is not a setting of --method teacache and is ignored: it is read by --method "
        "taylorseer / fora / delta-dit / toca / duca",
        "warning: --fresh-ratio is not a setting of --method teacache and is ignored: it is read by --method "
        "toca / duca",
    ]
    # A script that reads --interval anyway (DiT's FORA comparison row) says so.
    assert warn_unused_method_flags(args, parser, also_read=("--interval",)) == ["--fresh-ratio"]
    args = parser.parse_args(["--method", "toca", "--fresh-ratio", "0.3", "--interval", "3"])
    assert warn_unused_method_flags(args, parser) == []
