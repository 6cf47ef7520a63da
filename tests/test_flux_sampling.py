"""FLUX sampling (schedule, packing, ids, Euler loop with a caching method) and FLOPs accounting.

The denoise tests use the tiny preset with random weights on CPU; the FLOPs tests build flux-dev on the meta device.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from flux_testing import tiny_flux

from common.delta_dit import DeltaDiTCache, DeltaDiTConfig
from common.flops import FlopsReport
from common.taylor_cache import TaylorCache, TaylorSeerConfig, full_step_indices
from common.teacache import TeaCache, TeaCacheConfig
from taylorseer_flux.flops import flux_flops_report, flux_image_seq_len
from taylorseer_flux.sampling import (
    denoise,
    get_noise,
    get_schedule,
    image_ids,
    pack,
    text_ids,
    unpack,
)

# ---------------------------------------------------------------------------------------------------------- schedule


@pytest.mark.parametrize("num_steps", [1, 4, 28, 50])
@pytest.mark.parametrize("shift", [True, False])
def test_schedule_endpoints_and_monotone(num_steps: int, shift: bool) -> None:
    ts = get_schedule(num_steps, 4096, shift=shift)
    assert len(ts) == num_steps + 1
    assert ts[0] == pytest.approx(1.0, abs=1e-12)
    assert ts[-1] == 0.0
    assert all(a > b for a, b in zip(ts[:-1], ts[1:], strict=True))


def test_schedule_shift_by_hand_at_1024px() -> None:
    # 1024x1024 -> 64x64 packed tokens = 4096, the right end of the line: mu = max_shift = 1.15.
    assert flux_image_seq_len(1024, 1024) == 4096
    ts = get_schedule(4, 4096)
    mu = 1.15
    # t = 0.75: exp(mu) / (exp(mu) + (1/0.75 - 1)) = e^1.15 / (e^1.15 + 1/3)
    assert ts[1] == pytest.approx(math.exp(mu) / (math.exp(mu) + 1 / 3), rel=1e-12)
    # t = 0.5: e^1.15 / (e^1.15 + 1)
    assert ts[2] == pytest.approx(math.exp(mu) / (math.exp(mu) + 1), rel=1e-12)
    # 512x512 -> 1024 tokens: mu = 0.5 + (1024 - 256) * 0.65 / 3840 = 0.63
    ts = get_schedule(4, 1024)
    assert ts[2] == pytest.approx(math.exp(0.63) / (math.exp(0.63) + 1), rel=1e-12)


def test_schedule_without_shift_is_linspace() -> None:
    np.testing.assert_allclose(get_schedule(7, 4096, shift=False), np.linspace(1, 0, 8), atol=1e-15)


@pytest.mark.parametrize("seq_len", [256, 1024, 4096])
def test_schedule_matches_diffusers(seq_len: int) -> None:
    from diffusers import FlowMatchEulerDiscreteScheduler

    num_steps = 28
    scheduler = FlowMatchEulerDiscreteScheduler(
        use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096
    )
    # As diffusers' FluxPipeline: sigmas linspace(1, 1/T), mu from the same line through (256, 0.5), (4096, 1.15).
    mu = 0.5 + (seq_len - 256) * (1.15 - 0.5) / (4096 - 256)
    scheduler.set_timesteps(num_steps, sigmas=np.linspace(1.0, 1 / num_steps, num_steps), mu=mu)
    np.testing.assert_allclose(get_schedule(num_steps, seq_len), scheduler.sigmas.numpy(), atol=1e-6)


# ------------------------------------------------------------------------------------------------- packing and ids


def test_noise_shape_and_seed() -> None:
    a = get_noise(2, 100, 72, torch.float32, seed=3, device="cpu")
    assert a.shape == (2, 16, 2 * math.ceil(100 / 16), 2 * math.ceil(72 / 16)) == (2, 16, 14, 10)
    torch.testing.assert_close(a, get_noise(2, 100, 72, torch.float32, seed=3, device="cpu"), rtol=0, atol=0)
    assert not torch.equal(a, get_noise(2, 100, 72, torch.float32, seed=4, device="cpu"))


def test_pack_unpack_round_trip() -> None:
    latents = get_noise(2, 100, 72, torch.float32, seed=0)
    packed = pack(latents)
    assert packed.shape == (2, 7 * 5, 64)
    # Token (row 1, col 2) holds channel-major 2x2 patch latents[:, c, 2:4, 4:6].
    torch.testing.assert_close(packed[:, 1 * 5 + 2], latents[:, :, 2:4, 4:6].reshape(2, 64), rtol=0, atol=0)
    assert torch.equal(unpack(packed, 100, 72), latents)


def test_ids_for_a_2x3_grid() -> None:
    ids = image_ids(2, 2, 3)
    expected = torch.tensor([[0, 0, 0], [0, 0, 1], [0, 0, 2], [0, 1, 0], [0, 1, 1], [0, 1, 2]], dtype=ids.dtype)
    assert ids.shape == (2, 6, 3)
    assert torch.equal(ids[0], expected) and torch.equal(ids[1], expected)
    txt = text_ids(2, 5)
    assert txt.shape == (2, 5, 3) and not txt.any()


# ----------------------------------------------------------------------------------------------------------- denoise

HEIGHT, WIDTH, L_TXT, STEPS = 48, 64, 5, 7


@pytest.fixture(scope="module")
def run_denoise():
    model = tiny_flux()
    params = model.params
    generator = torch.Generator().manual_seed(1)
    noise = get_noise(1, HEIGHT, WIDTH, torch.float32, seed=0)
    img = pack(noise)
    ids = image_ids(1, noise.shape[-2] // 2, noise.shape[-1] // 2)
    txt = torch.randn(1, L_TXT, params.context_in_dim, generator=generator)
    vec = torch.randn(1, params.vec_in_dim, generator=generator)
    timesteps = get_schedule(STEPS, img.shape[1])

    def run(cache: TaylorCache | None = None, on_step=None) -> torch.Tensor:
        return denoise(model, img, ids, txt, text_ids(1, L_TXT), vec, timesteps, cache=cache, on_step=on_step)

    return run


def test_denoise_interval_1_equals_uncached(run_denoise) -> None:
    reference = run_denoise()
    assert reference.shape == (1, (HEIGHT // 16) * (WIDTH // 16), 64)
    cache = TaylorCache(TaylorSeerConfig(interval=1))
    torch.testing.assert_close(run_denoise(cache), reference, rtol=0, atol=0)
    assert cache.num_full_steps == STEPS and cache.num_forecast_steps == 0


def test_denoise_with_forecasts(run_denoise) -> None:
    reference = run_denoise()
    config = TaylorSeerConfig(interval=3, max_order=1, first_enhance=3)
    cache = TaylorCache(config)
    out = run_denoise(cache)
    assert cache.num_full_steps == len(full_step_indices(STEPS, config)) < STEPS
    assert cache.num_forecast_steps == STEPS - cache.num_full_steps
    assert torch.isfinite(out).all()
    assert not torch.allclose(out, reference)
    # A forecast, not garbage: measured 0.112 relative error (7 steps, 3 of them forecast, first-order factors).
    assert ((out - reference).norm() / reference.norm()).item() < 0.2
    # A second run with the same cache object is reset at the start and gives the same result.
    torch.testing.assert_close(run_denoise(cache), out, rtol=0, atol=0)


def test_denoise_tells_the_cache_the_runs_step_count(run_denoise) -> None:
    """Δ-DiT places its boundary by the step count (it refuses to run without one); TeaCache computes the last step
    whatever its threshold, so a threshold no change reaches computes the first and the last step only."""
    delta = DeltaDiTCache(DeltaDiTConfig(interval=3, cached_blocks=1, boundary=0.5))
    out = run_denoise(delta)
    assert delta.num_steps == STEPS and torch.isfinite(out).all()
    assert (delta.num_full_steps, delta.num_forecast_steps) == (3, 4)  # full steps 0, 3, 6
    teacache = TeaCache(TeaCacheConfig(threshold=1e9))
    run_denoise(teacache)
    assert (teacache.num_steps, teacache.num_full_steps, teacache.num_forecast_steps) == (STEPS, 2, STEPS - 2)


def test_denoise_on_step(run_denoise) -> None:
    calls: list[tuple[int, float]] = []
    run_denoise(on_step=lambda i, t: calls.append((i, t)))
    assert [i for i, _ in calls] == list(range(STEPS))
    assert [t for _, t in calls] == get_schedule(STEPS, (HEIGHT // 16) * (WIDTH // 16))[:-1]


# ------------------------------------------------------------------------------------------------------------- FLOPs


@pytest.fixture(scope="module")
def flux_dev_reports():
    """flux-dev at 1024x1024, 512 text tokens, 50 steps: built once (meta device) for N = 6, the full and forecast
    step counts reused for the schedules of N = 5 and 4."""
    configs = {n: TaylorSeerConfig(interval=n, max_order=2, first_enhance=3) for n in (6, 5, 4)}
    report = flux_flops_report("flux-dev", 1024, 1024, 512, 50, configs[6])
    return {
        n: FlopsReport.for_schedule(report.convention, report.full_step_flops, report.forecast_step_flops, 50, config)
        for n, config in configs.items()
    }


@pytest.mark.parametrize(("interval", "speedup"), [(6, 4.99), (5, 4.16), (4, 3.57)])
def test_flux_dev_speedups(flux_dev_reports, interval: int, speedup: float) -> None:
    assert flux_dev_reports[interval].speedup == pytest.approx(speedup, abs=0.01)


def test_flux_dev_full_step_flops(flux_dev_reports) -> None:
    report = flux_dev_reports[6]
    assert report.convention == "matmul"
    # The reference's calflops count with naive attention: 74.39 TFLOPs per full step at batch 1.
    assert report.full_step_flops / 1e12 == pytest.approx(74.39, rel=0.02)
    assert report.forecast_step_flops < 1e-3 * report.full_step_flops
