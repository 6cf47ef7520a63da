"""A check shared by the FLUX and HunyuanVideo model tests: what a TaylorSeer forecast step computes."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from common.taylor_cache import TaylorCache, TaylorSeerConfig

__all__ = ["assert_forecast_step_replaces_cached_outputs_by_taylor_forecast"]


@torch.no_grad()
def assert_forecast_step_replaces_cached_outputs_by_taylor_forecast(
    model: torch.nn.Module,
    cached: Sequence[torch.nn.Module],
    skipped: Sequence[torch.nn.Module],
    step_inputs: Callable[[int], dict],
) -> None:
    """Full steps 0 and 1 (warm-up), then a forecast at step 2 with first-order factors, must give the plain
    model at step 2 with each module of ``cached`` returning ``f1 + (f1 - f0)`` (its plain outputs at steps 0 and
    1; to float32 rounding), and must run neither a ``cached`` module nor a ``skipped`` one (the attention inputs)."""
    cache = TaylorCache(TaylorSeerConfig(interval=3, max_order=1, first_enhance=2))

    # Reference features f0, f1 of the plain model, recorded with forward hooks.
    recorded: list[list[torch.Tensor | None]] = []
    for step in range(2):
        outputs: list[torch.Tensor | None] = [None] * len(cached)
        handles = [
            m.register_forward_hook(lambda _m, _i, out, k=k, acc=outputs: acc.__setitem__(k, out))
            for k, m in enumerate(cached)
        ]
        model(**step_inputs(step))
        for handle in handles:
            handle.remove()
        assert all(output is not None for output in outputs)
        recorded.append(outputs)
        assert cache.begin_step(step)
        assert torch.equal(model(**step_inputs(step), cache=cache), model(**step_inputs(step)))

    # Plain model at step 2 with every cached module's output replaced by f1 + (f1 - f0).
    forecasts = [f1 + (f1 - f0) for f0, f1 in zip(recorded[0], recorded[1], strict=True)]
    handles = [m.register_forward_hook(lambda _m, _i, _out, f=f: f) for m, f in zip(cached, forecasts, strict=True)]
    expected = model(**step_inputs(2))
    for handle in handles:
        handle.remove()

    # At the forecast step neither the attention inputs (hence the attention) nor the cached modules run.
    calls: list[str] = []
    handles = [m.register_forward_hook(lambda m, _i, _o: calls.append(type(m).__name__)) for m in [*cached, *skipped]]
    assert not cache.begin_step(2)
    got = model(**step_inputs(2), cache=cache)
    for handle in handles:
        handle.remove()
    assert calls == []
    # The cache forms f1 + (f1 - f0) as one weighted sum 2 f1 - f0: equal up to float32 rounding (one ulp of f).
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(got, model(**step_inputs(2)))
