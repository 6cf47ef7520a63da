"""Every caching method on the tiny HunyuanVideo transformer: settings that compute everything equal full compute bit
for bit, FORA is TaylorSeer of order 0, every method stays close to full compute, Δ-DiT's range and TeaCache's signal
are the ones meant, and the FLOPs (counted by step kind on the meta device) equal what a real run counts.

A pretend sampling loop of the model alone (its input moves with each prediction, as in Euler sampling); fp32 on CPU.
"""

from __future__ import annotations

import argparse

import pytest
import torch
import torch.nn.functional as F
from test_hunyuanvideo_model import BATCH, L_TXT, LATENT_H, LATENT_T, LATENT_W, TINY, inputs, relative_error, tiny_model
from torch.nn.attention import SDPBackend, sdpa_kernel

from common.caching import CacheMethod
from common.cli import add_taylorseer_args
from common.flops import count_flops
from common.methods import METHODS, add_method_args, describe, make_cache, method_config_from_args
from common.taylor_cache import TaylorCache, TaylorSeerConfig, full_step_indices
from common.teacache import TEACACHE_COEFFICIENTS, TeaCache, TeaCacheConfig
from common.toca import ToCaCache, ToCaConfig, fresh_count
from taylorseer_hunyuanvideo.flops import RunFlops, hunyuan_method_flops, schedule_step_kinds, teacache_step_flops

pytestmark = pytest.mark.usefixtures("one_thread")
STEPS = 8
# Pixel sizes of the tests' latent (3, 4, 6): 4k + 1 frames, 8x the latent's height and width.
VIDEO = {"height": 8 * LATENT_H, "width": 8 * LATENT_W, "video_length": 4 * (LATENT_T - 1) + 1}
NUM_DOUBLE, NUM_SINGLE = TINY.mm_double_blocks_depth, TINY.mm_single_blocks_depth


def sample(model, cache: CacheMethod | None, padded: bool = True) -> torch.Tensor:
    """The final latents of a STEPS-step loop; the cache is reset first and told every step, as the pipeline does."""
    x = inputs(padded=padded)
    if cache is not None:
        cache.reset(STEPS)
    with torch.no_grad():
        for step in range(STEPS):
            if cache is not None:
                cache.begin_step(step)
            x = {**x, "x": x["x"] - 0.1 * model(**x, cache=cache), "t": x["t"] - 40.0}
    return x["x"]


def parse(*argv: str) -> tuple[str, object]:
    """The method and config of flags, as sample_video.py builds them (its defaults: N=5, O=1, E=1)."""
    parser = argparse.ArgumentParser()
    add_taylorseer_args(parser, interval=5, max_order=1, first_enhance=1)
    add_method_args(parser, teacache_coefficients="hunyuanvideo", teacache_thresh=0.15)
    args = parser.parse_args(list(argv))
    return args.method, method_config_from_args(args, parser)


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def full(model) -> torch.Tensor:
    return sample(model, None)


# ------------------------------------------------------------------------------------------------- invariants


@pytest.mark.parametrize(
    ("argv", "full_steps"),
    [
        (("--method", "teacache", "--teacache-thresh", "0"), STEPS),
        # Cached steps stay in the schedule (full 0, 3, 6), but every token of every layer is fresh on them.
        (("--method", "toca", "--fresh-ratio", "1", "--no-layer-schedule", "--interval", "3"), 3),
        (("--method", "duca", "--fresh-ratio", "1", "--no-layer-schedule", "--interval", "1"), STEPS),
        (("--method", "delta-dit", "--interval", "1", "--cached-blocks", "2"), STEPS),
        (("--method", "taylorseer", "--interval", "1"), STEPS),
    ],
    ids=["teacache-0", "toca-ratio-1", "duca-interval-1", "delta-interval-1", "taylorseer-interval-1"],
)
def test_settings_that_compute_everything_equal_full_compute(model, full, argv, full_steps) -> None:
    method, config = parse(*argv)
    cache = make_cache(method, config)
    assert torch.equal(sample(model, cache), full)
    if cache is not None:
        assert (cache.num_full_steps, cache.num_forecast_steps) == (full_steps, STEPS - full_steps)


def test_fora_is_taylorseer_of_order_zero_bit_for_bit(model) -> None:
    method, config = parse("--method", "fora", "--interval", "3")
    fora = sample(model, make_cache(method, config))
    order0 = sample(model, TaylorCache(TaylorSeerConfig(interval=3, max_order=0, first_enhance=1)))
    assert torch.equal(fora, order0) and describe(method, config) == "FORA N=3"


@pytest.mark.parametrize("method", [m for m in METHODS if m != "full"])
def test_every_method_runs_and_stays_close_to_full_compute(model, full, method) -> None:
    method, config = parse("--method", method, "--interval", "3", "--fresh-ratio", "0.3", "--teacache-thresh", "0.5")
    cache = make_cache(method, config)
    error = relative_error(full, sample(model, cache))
    assert 0 < error < 0.2, (method, error)
    assert cache.num_forecast_steps > 0 and cache.num_full_steps + cache.num_forecast_steps == STEPS


# ---------------------------------------------------------------------------------------- what each method does


def blocks_run(model, cache: CacheMethod) -> list[tuple[str, ...]]:
    """Per step of :func:`sample`, the blocks whose forward ran ("d0", "d1", "s0", ...)."""
    steps: list[list[str]] = []
    named = [(f"d{i}", b) for i, b in enumerate(model.double_blocks)]
    named += [(f"s{j}", b) for j, b in enumerate(model.single_blocks)]
    hooks = [block.register_forward_hook(lambda *_, n=name: steps[-1].append(n)) for name, block in named]
    original = cache.begin_step

    def begin_step(step: int) -> bool:
        steps.append([])
        return original(step)

    cache.begin_step = begin_step
    try:
        sample(model, cache)
    finally:
        for hook in hooks:
            hook.remove()
        del cache.begin_step
    return [tuple(step) for step in steps]


def test_delta_dit_over_the_single_stream_stack_is_the_reference_flux_variant(model, full) -> None:
    """cached_blocks = the single-stream depth and boundary 1: every cached step runs the double blocks and adds the
    single-stream stack's residual (the reference's Δ-DiT); boundary 0 bypasses the front blocks, the double ones."""
    every, doubles, singles = ("d0", "d1", "s0", "s1"), ("d0", "d1"), ("s0", "s1")
    for boundary, cached_step in ((1.0, doubles), (0.0, singles)):
        method, config = parse("--method", "delta-dit", "--interval", "3", "--cached-blocks", str(NUM_SINGLE),
                               "--delta-boundary", str(boundary))  # fmt: skip
        ran = blocks_run(model, make_cache(method, config))
        # Full steps 0, 3, 6 (E=1, N=3); the others bypass one range.
        assert ran == [every, cached_step, cached_step] * 2 + [every, cached_step]
    # Any range of the stack is a valid one: every block keeps the state (image tokens, text tokens).
    for blocks in range(1, NUM_DOUBLE + NUM_SINGLE + 1):
        method, config = parse("--method", "delta-dit", "--interval", "2", "--cached-blocks", str(blocks))
        assert 0 < relative_error(full, sample(model, make_cache(method, config))) < 0.1


def test_duca_skips_the_stack_on_its_aggressive_steps(model) -> None:
    method, config = parse("--method", "duca", "--interval", "4")
    every = ("d0", "d1", "s0", "s1")
    # F C A C F C A C: ToCa steps run the blocks (reusing their attention), aggressive steps run none.
    assert blocks_run(model, make_cache(method, config)) == [every, every, (), every] * 2


class SignalSpy(TeaCache):
    """TeaCache that keeps every signal the model hands it."""

    def __init__(self, config: TeaCacheConfig) -> None:
        super().__init__(config)
        self.signals: list[torch.Tensor] = []

    def _decide(self, signal: torch.Tensor) -> bool:
        self.signals.append(signal)
        return super()._decide(signal)


@torch.no_grad()
def test_teacache_signal_is_the_first_double_blocks_modulated_image_input(model) -> None:
    """TeaCache4HunyuanVideo's: img_mod of double block 0 (shift1, scale1) applied to img_norm1 of the embedded image
    tokens, before any block runs."""
    cache = SignalSpy(TeaCacheConfig(threshold=0.0))
    cache.reset(1)
    cache.begin_step(0)
    x = inputs(padded=True)
    model(**x, cache=cache)
    block = model.double_blocks[0]
    vec = model.embed_conditions(x["t"], x["text_states"], x["text_mask"], x["text_states_2"], x["guidance"])[0]
    shift, scale = block.img_mod.linear(F.silu(vec)).chunk(6, dim=-1)[:2]
    img = model.patchify(x["x"])  # (B, 18, D)
    expected = F.layer_norm(img, (TINY.hidden_size,), eps=1e-6) * (1 + scale[:, None]) + shift[:, None]
    assert len(cache.signals) == 1 and cache.signals[0].shape == (BATCH, LATENT_T * 2 * 3, TINY.hidden_size)
    torch.testing.assert_close(cache.signals[0], expected, rtol=1e-6, atol=1e-6)


def test_teacache_skipped_steps_add_the_stacks_residual(model) -> None:
    """A skipped step's final layer gets its embedded image tokens plus the image residual of the last computed
    step: no block runs, the whole stack is replaced at once."""
    cache = TeaCache(TeaCacheConfig(threshold=1e9, coefficients=TEACACHE_COEFFICIENTS["identity"]))
    cache.reset(3)
    embedded, final_in = [], []
    hooks = [
        model.img_in.register_forward_hook(lambda _m, _i, out: embedded.append(out)),
        model.final_layer.register_forward_hook(lambda _m, args, _o: final_in.append(args[0])),
    ]
    try:
        with torch.no_grad():
            for step in range(2):
                cache.begin_step(step)
                model(**{**inputs(padded=True), "x": inputs(seed=10 + step)["x"]}, cache=cache)
    finally:
        for hook in hooks:
            hook.remove()
    assert (cache.num_full_steps, cache.num_forecast_steps) == (1, 1)
    torch.testing.assert_close(final_in[1], embedded[1] + (final_in[0] - embedded[0]), rtol=0, atol=1e-6)
    assert relative_error(final_in[0], final_in[1]) > 1e-3


# ------------------------------------------------------------------------------------------------------- FLOPs


def counted_run(model, cache: CacheMethod | None) -> int:
    """FLOPs of a real run, with unpadded text as in the FLOPs convention. Attention runs PyTorch's math kernel, as on
    the meta device: the flop counter has no formula for the CPU's fused attention kernel, which it would skip."""
    with sdpa_kernel(SDPBackend.MATH):
        return count_flops(lambda: sample(model, cache, padded=False))


@pytest.mark.parametrize(
    "argv",
    [
        ("--method", "full"),
        ("--method", "taylorseer", "--interval", "3", "--max-order", "2"),
        ("--method", "fora", "--interval", "3"),
        ("--method", "toca", "--interval", "3", "--fresh-ratio", "0.3", "--toca-score", "random"),
        ("--method", "duca", "--interval", "4", "--fresh-ratio", "0.3"),
        ("--method", "delta-dit", "--interval", "3", "--cached-blocks", "3", "--delta-boundary", "0.5"),
    ],
    ids=lambda argv: argv[1],
)
def test_flops_counted_by_step_kind_equal_a_real_runs(model, argv) -> None:
    method, config = parse(*argv)
    report = hunyuan_method_flops(TINY, **VIDEO, text_len=L_TXT, num_steps=STEPS, method=method, config=config,
                                  batch=BATCH)  # fmt: skip
    cache = make_cache(method, config)
    assert report.flops == counted_run(model, cache)
    assert report.baseline_flops == counted_run(model, None)
    assert report.full_steps == (STEPS if cache is None else cache.num_full_steps)
    assert report.method == describe(method, config) and (report.speedup > 1) == (cache is not None)


def test_step_kinds_follow_the_schedule() -> None:
    method, config = parse("--method", "duca", "--interval", "4")
    generator = torch.random.get_rng_state()
    kinds = schedule_step_kinds(TINY, lambda: make_cache(method, config), STEPS)
    every = (0, 1, 2, 3)
    assert kinds == [(True, every), (False, every), (False, ()), (False, every)] * 2
    assert torch.equal(torch.random.get_rng_state(), generator)  # the stand-in's weights leave the caller's alone


def test_toca_cached_step_flops_by_hand(model) -> None:
    """On a cached step ToCa runs, beyond what a FORA forecast step runs, each double block's two MLPs on their fresh
    tokens only (2 matmuls of D x 4D per token); attention and the fused single blocks are reused."""
    ratio, interval = 0.5, 4  # full steps 0 and 4: six cached steps
    toca = counted_run(model, ToCaCache(ToCaConfig(interval=interval, fresh_ratio=ratio, layer_schedule=False)))
    fora = counted_run(model, TaylorCache(TaylorSeerConfig(interval=interval, max_order=0)))
    img_tokens = LATENT_T * (LATENT_H // 2) * (LATENT_W // 2)  # 18
    fresh = fresh_count(ratio, img_tokens) + fresh_count(ratio, L_TXT)  # 9 + 2 (round half to even)
    assert fresh == 11
    mlp_per_token = 2 * 2 * TINY.hidden_size * 4 * TINY.hidden_size
    assert toca == fora + 6 * NUM_DOUBLE * BATCH * fresh * mlp_per_token


def test_teacache_flops_from_step_counts_equal_a_real_runs(model) -> None:
    baseline, computed, skipped = teacache_step_flops(TINY, BATCH, (LATENT_T, LATENT_H, LATENT_W), L_TXT)
    assert computed - baseline == 2 * BATCH * TINY.hidden_size * 6 * TINY.hidden_size  # the signal's img_mod
    cache = TeaCache(TeaCacheConfig(threshold=0.5, coefficients=TEACACHE_COEFFICIENTS["hunyuanvideo"]))
    counted = counted_run(model, cache)
    assert 0 < cache.num_forecast_steps < STEPS - 1
    run = RunFlops.from_step_counts("TeaCache l=0.5", baseline, computed, skipped, STEPS, cache.num_full_steps)
    assert run.flops == counted and run.baseline_flops == counted_run(model, None)
    with pytest.raises(ValueError, match="TeaCache's FLOPs depend on the run"):
        hunyuan_method_flops(TINY, **VIDEO, text_len=L_TXT, num_steps=STEPS, method="teacache", config=cache.config)


@pytest.mark.parametrize(
    ("forecaster", "schedule"),
    [
        ("taylor", ("--full-steps", "4")),
        ("newton", ("--full-steps", "4", "--placement", "late-dense")),
        ("hermite", ("--full-steps", "4", "--placement", "late-dense", "--placement-power", "0.5")),
        ("newton", ("--placement", "list", "--full-step-list", "0,2,5,6")),
    ],
    ids=["taylor-uniform", "newton-late-dense", "hermite-late-dense", "newton-list"],
)
def test_every_forecaster_and_placement_runs(forecaster, schedule, model, full) -> None:
    method, config = parse("--forecaster", forecaster, "--max-order", "2", *schedule)
    cache = make_cache(method, config)
    out = sample(model, cache)
    assert cache.num_full_steps == len(full_step_indices(STEPS, config)) == 4
    error = relative_error(full, out)
    assert 0 < error < 0.2, (forecaster, schedule, error)
