"""The shared Taylor cache: schedules, derivative updates and forecasts against hand-computed numbers."""

import pytest
import torch

from common.taylor_cache import (
    TaylorCache,
    TaylorSeerConfig,
    cached,
    full_step_indices,
    is_full_step,
    taylor_forecast,
    update_factors,
)


def dit_descending(indices: list[int], num_steps: int = 50) -> list[int]:
    """Sampling-order steps -> the DiT reference's descending respaced indices (49 ... 0)."""
    return sorted((num_steps - 1 - s for s in indices), reverse=True)


# reference-semantics.md §1.3, DiT column (E=2, T=50, indices count down from 49).
DIT_FULL_STEPS = {
    2: [49, 48, *range(46, -1, -2)],
    3: [49, 48, 45, 42, 39, 36, 33, 30, 27, 24, 21, 18, 15, 12, 9, 6, 3, 0],
    4: [49, 48, 44, 40, 36, 32, 28, 24, 20, 16, 12, 8, 4, 0],
    5: [49, 48, 43, 38, 33, 28, 23, 18, 13, 8, 3],
    6: [49, 48, 42, 36, 30, 24, 18, 12, 6, 0],
    7: [49, 48, 41, 34, 27, 20, 13, 6],
    8: [49, 48, 40, 32, 24, 16, 8, 0],
}


@pytest.mark.parametrize("interval", sorted(DIT_FULL_STEPS))
def test_dit_schedule_matches_reference_tables(interval):
    config = TaylorSeerConfig(interval=interval, max_order=3, first_enhance=2)
    assert dit_descending(full_step_indices(50, config)) == DIT_FULL_STEPS[interval]


@pytest.mark.parametrize(
    ("interval", "first_enhance", "expected_count"),
    # FLUX (E=3) and HunyuanVideo (E=1) columns of the same table.
    [(3, 3, 18), (4, 3, 14), (5, 3, 12), (6, 3, 10), (3, 1, 17), (4, 1, 13), (5, 1, 10), (6, 1, 9)],
)
def test_other_tree_schedule_counts(interval, first_enhance, expected_count):
    config = TaylorSeerConfig(interval=interval, first_enhance=first_enhance)
    assert len(full_step_indices(50, config)) == expected_count


def test_flux_and_hunyuan_full_steps():
    assert full_step_indices(50, TaylorSeerConfig(interval=6, first_enhance=3)) == [0, 1, 2, 8, 14, 20, 26, 32, 38, 44]
    assert full_step_indices(50, TaylorSeerConfig(interval=5, first_enhance=1)) == list(range(0, 50, 5))


def test_interval_one_is_all_full():
    config = TaylorSeerConfig(interval=1, max_order=4, first_enhance=2)
    assert config.is_uncached
    assert all(is_full_step(s, config) for s in range(100))


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"interval": 0}, ValueError),
        ({"max_order": -1}, ValueError),
        ({"first_enhance": 0}, ValueError),
        ({"derivative_start_step": -1}, ValueError),
        ({"interval": 2.5}, TypeError),
        ({"interval": True}, TypeError),
        ({"factor_dtype": torch.int32}, ValueError),
        ({"factor_dtype": "float32"}, ValueError),
    ],
)
def test_config_validation(kwargs, error):
    with pytest.raises(error):
        TaylorSeerConfig(**kwargs)


def run_sequence(config: TaylorSeerConfig, feature, num_steps: int) -> dict[int, float]:
    """Feed feature(step) at full steps; return every forecast by step."""
    cache = TaylorCache(config)
    forecasts = {}
    for step in range(num_steps):
        full = cache.begin_step(step)
        value = cache.apply("f", lambda s=step: torch.tensor([feature(s)], dtype=torch.float64))
        if not full:
            forecasts[step] = value.item()
    return forecasts


@pytest.mark.parametrize("max_order", [1, 2, 3, 4])
@pytest.mark.parametrize(("interval", "first_enhance"), [(4, 2), (5, 2), (6, 3), (5, 1)])
def test_linear_features_forecast_exactly(max_order, interval, first_enhance):
    config = TaylorSeerConfig(interval=interval, max_order=max_order, first_enhance=first_enhance)
    forecasts = run_sequence(config, lambda s: 3.0 + 2.0 * s, 50)
    # With E=1 the first interval only has F0 (one full step so far): plain reuse of f(0) = 3.
    first_full_pair = full_step_indices(50, config)[1]
    for step, value in forecasts.items():
        expected = 3.0 if step < first_full_pair else 3.0 + 2.0 * step
        assert value == pytest.approx(expected, abs=1e-12), step


def test_order_zero_reuses_last_full_output():
    config = TaylorSeerConfig(interval=4, max_order=0, first_enhance=2)
    forecasts = run_sequence(config, lambda s: float(s * s), 20)
    # Full steps 0, 1, 5, 9, 13, 17.
    assert forecasts == {2: 1.0, 3: 1.0, 4: 1.0, 6: 25.0, 7: 25.0, 8: 25.0, 10: 81.0, 11: 81.0, 12: 81.0,
                         14: 169.0, 15: 169.0, 16: 169.0, 18: 289.0, 19: 289.0}  # fmt: skip


def test_quadratic_bias_dit_schedule():
    """f = s^2, E=2, N=4, O=2 (full steps 0, 1, 5, 9, ...), worked by hand.

    After 0, 1 (d=1): F = [1, 1]; forecasts 1 + x: 2, 3, 4 at steps 2, 3, 4.
    After 5 (d=4): F0 = 25, F1 = (25-1)/4 = 6, F2 = (6-1)/4 = 1.25; forecasts 25 + 6x + 0.625x^2.
    After 9 (d=4): F = [81, 14, 2]; forecasts 81 + 14x + x^2, i.e. an error of -d*x = -4x against (9+x)^2:
    the backward differences' O(d) bias, which the reference has too.
    """
    forecasts = run_sequence(TaylorSeerConfig(interval=4, max_order=2, first_enhance=2), lambda s: float(s * s), 13)
    assert forecasts == pytest.approx(
        {2: 2.0, 3: 3.0, 4: 4.0, 6: 31.625, 7: 39.5, 8: 48.625, 10: 96.0, 11: 113.0, 12: 132.0}, abs=1e-12
    )
    errors = {s: forecasts[s] - s * s for s in (10, 11, 12)}
    assert errors == pytest.approx({10: -4.0, 11: -8.0, 12: -12.0})


def test_quadratic_bias_flux_like_schedule():
    """f = s^2, E=3, N=6, O=2: F = [4, 3, 2] after steps 0, 1, 2; the forecast 4 + 3x + x^2 misses (2+x)^2 by -x."""
    forecasts = run_sequence(TaylorSeerConfig(interval=6, max_order=2, first_enhance=3), lambda s: float(s * s), 8)
    assert {s: forecasts[s] - s * s for s in range(3, 8)} == pytest.approx({3: -1, 4: -2, 5: -3, 6: -4, 7: -5})


def test_reference_flux_discards_the_first_warmup_feature():
    """The reference FLUX guard (derivatives only after step E-2): with E=3, steps 0 and 1 keep F_0 only, so the
    first interval extrapolates 4 + 3x with order 1 although O=2; reference-semantics §1.5 lists these errors."""
    config = TaylorSeerConfig(interval=6, max_order=2, first_enhance=3, derivative_start_step=2)
    forecasts = run_sequence(config, lambda s: float(s * s), 8)
    assert {s: forecasts[s] - s * s for s in range(3, 8)} == pytest.approx({3: -2, 4: -6, 5: -12, 6: -20, 7: -30})


def test_orders_build_up_one_per_full_step():
    cache = TaylorCache(TaylorSeerConfig(interval=2, max_order=3, first_enhance=1))
    orders = []
    for step in range(0, 12):
        if cache.begin_step(step):
            cache.update("k", torch.zeros(1))
            orders.append(cache.order("k"))
    assert orders == [0, 1, 2, 3, 3, 3]
    assert cache.order("missing") == -1


def test_update_divides_every_level_by_latest_distance():
    old = [torch.tensor([1.0]), torch.tensor([1.0])]  # f(1)=1 and slope 1, as after full steps 0 and 1 of s^2
    new = update_factors(old, torch.tensor([25.0]), distance=4, max_order=2)
    assert [t.item() for t in new] == [25.0, 6.0, 1.25]
    assert taylor_forecast(new, 2).item() == 25.0 + 12.0 + 1.25 * 4 / 2


def test_counters_and_reset():
    config = TaylorSeerConfig(interval=3, max_order=1, first_enhance=2)
    cache = TaylorCache(config)
    for step in range(10):
        cache.begin_step(step)
        cache.apply(("block", "attn"), lambda: torch.ones(2))
    assert (cache.num_full_steps, cache.num_forecast_steps) == (len(full_step_indices(10, config)), 10 - 4)
    assert len(cache) == 1
    cache.reset()
    assert (cache.num_full_steps, cache.num_forecast_steps, len(cache), cache.step) == (0, 0, 0, None)


def test_misuse_gives_clear_errors():
    cache = TaylorCache(TaylorSeerConfig(interval=2, first_enhance=1))
    with pytest.raises(RuntimeError, match="before begin_step"):
        cache.update("k", torch.zeros(1))
    cache.begin_step(0)
    cache.update("k", torch.zeros(1))
    with pytest.raises(RuntimeError, match="ran twice in one step"):
        cache.update("k", torch.zeros(1))
    cache.begin_step(1)
    with pytest.raises(RuntimeError, match="never computed"):
        cache.predict("other")
    with pytest.raises(ValueError, match="reset"):
        cache.begin_step(1)


@pytest.mark.parametrize("factor_dtype", [None, torch.float32])
def test_bf16_features_forecast_with_float32_arithmetic(factor_dtype):
    """bf16 features 1 and 1 + 2^-7, three steps apart: the slope 2^-7 / 3 comes out within float32 rounding of the
    features (1e-7), where bf16 arithmetic (the reference's) would miss it by 5e-6, whatever the storage: the weighted
    sum accumulates in float32. Forecasts come back in bf16."""
    cache = TaylorCache(TaylorSeerConfig(interval=3, max_order=1, first_enhance=1, factor_dtype=factor_dtype))
    for step, value in [(0, 1.0), (3, 1.0078125)]:
        cache.begin_step(step)
        cache.update("k", torch.tensor([value], dtype=torch.bfloat16))
    cache.begin_step(4)
    forecast = cache.predict("k")
    assert forecast.dtype == torch.bfloat16
    assert forecast.item() == torch.tensor(1.0078125 + 0.0078125 / 3).to(torch.bfloat16).item()
    slope = cache.factors("k")[1]
    exact = 0.0078125 / 3
    assert slope.dtype == torch.float32 and abs(slope.item() - exact) < 1.2e-7
    assert abs(torch.tensor(exact).to(torch.bfloat16).item() - exact) > 5e-6
    stored = {t.dtype for t in cache.held_tensors()}
    assert stored == {factor_dtype or torch.bfloat16}


def test_lower_precision_storage_halves_memory_and_rounds_only_the_stored_features():
    """float32 features kept as bf16: half the bytes, and the forecast is exactly the one of the bf16-rounded
    features, in float32."""
    values = [torch.tensor([1.0, -2.0]) + torch.tensor([1e-3, 3e-3]) * s for s in (0, 2, 4)]
    results = {}
    for dtype in (None, torch.bfloat16):
        cache = TaylorCache(TaylorSeerConfig(interval=2, max_order=2, first_enhance=1, factor_dtype=dtype))
        for step, value in zip((0, 2, 4), values, strict=True):
            cache.begin_step(step)
            cache.update("k", value.clone())
        cache.begin_step(5)
        results[dtype] = (cache.predict("k"), sum(t.numel() * t.element_size() for t in cache.held_tensors()))
    (full_precision, full_bytes), (bf16, bf16_bytes) = results[None], results[torch.bfloat16]
    assert (full_bytes, bf16_bytes) == (3 * 2 * 4, 3 * 2 * 2)
    assert bf16.dtype == torch.float32
    rounded = [v.to(torch.bfloat16).float() for v in values]
    # Uniform spacing 2, x = 1: F0 + x F1 + x^2/2 F2 with F1 = (f4 - f2)/2, F2 = (f4 - 2 f2 + f0)/4.
    expected = rounded[2] + (rounded[2] - rounded[1]) / 2 + (rounded[2] - 2 * rounded[1] + rounded[0]) / 8
    torch.testing.assert_close(bf16, expected, rtol=1e-6, atol=0)
    assert not torch.equal(bf16, full_precision)
    torch.testing.assert_close(full_precision, values[2] + torch.tensor([1e-3, 3e-3]), rtol=1e-6, atol=0)


def test_cached_helper_without_cache_just_computes():
    calls = []
    assert cached(None, "k", lambda: calls.append(1) or torch.tensor(5.0)).item() == 5.0
    assert calls == [1]


def test_forecast_step_does_not_compute():
    cache = TaylorCache(TaylorSeerConfig(interval=3, first_enhance=1))
    calls = []

    def compute():
        calls.append(cache.step)
        return torch.tensor([float(cache.step)])

    for step in range(7):
        cache.begin_step(step)
        cache.layer(0).apply("attn", compute)
    assert calls == [0, 3, 6]
