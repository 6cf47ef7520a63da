"""TaylorSeer feature cache: finite-difference derivatives at full steps, Taylor forecasts in between.

Paper: "From Reusing to Forecasting: Accelerating Diffusion Models with TaylorSeers" (ICCV 2025, arXiv 2503.06923).

At a *full* step every cached module (a block's attention or MLP, before its gate) is computed and its output f
recorded; its Taylor factors are refreshed by backward divided differences against the previous full step:

    F_0 = f,   F_{i+1} = (F_i - F_i^old) / d        (d = steps since the previous full step)

At a *forecast* step the module is skipped and replaced by  sum_i F_i * x^i / i!,  x = steps since the last full step.
Orders build up one per full step, up to ``max_order``; ``max_order = 0`` is plain reuse (FORA).

This reproduces the published reference exactly, quirks included: every level divides by the *latest* spacing d even
when the previous spacing differed, so the forecast is not Newton's interpolation formula and carries an O(d) bias on
curved features (exact only for features linear in the step index). The time variable is the step index in sampling
order (0 = first, noisiest step); a tree whose reference counts down gives identical arithmetic, because d and x change
sign together.

The full-vs-forecast decision is the pure function :func:`is_full_step` of (step, config). The sampler calls
:meth:`TaylorCache.begin_step` once per step; blocks only call :meth:`TaylorCache.apply` (through :func:`cached`),
or :meth:`TaylorCache.apply_group` (through :func:`cached_group`) for one computation with several cached outputs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

import torch

from .caching import CacheMethod, LayerCache, cached, cached_group

__all__ = [
    "TaylorSeerConfig",
    "TaylorCache",
    "LayerCache",
    "cached",
    "cached_group",
    "is_full_step",
    "full_step_indices",
    "check_schedule",
    "update_factors",
    "taylor_forecast",
]


@dataclass(frozen=True)
class TaylorSeerConfig:
    """How TaylorSeer caches and forecasts. ``interval=1`` computes every step (the uncached baseline)."""

    interval: int = 1
    """N: after the warm-up, one full step every N steps."""
    max_order: int = 1
    """O: highest Taylor order of the forecast; 0 reuses the last full step's output (FORA)."""
    first_enhance: int = 1
    """E: number of warm-up steps at the start that are always full (the reference uses 2 for DiT, 3 for FLUX,
    1 for HunyuanVideo)."""
    derivative_start_step: int = 0
    """Full steps before this one record only F_0 and form no derivative. 0 everywhere except the reference's FLUX
    code, which forms derivatives only after step E - 2: with E=3 the feature of step 0 is discarded and the first
    derivative comes from steps 1 and 2 (reference-semantics §1.4); 2 reproduces that."""
    factor_dtype: torch.dtype | None = None
    """dtype of the stored Taylor factors; None keeps the feature's dtype (what the reference does, bf16 included).
    float32 makes the finite differences of bf16 models exact to fp32 rounding."""

    def __post_init__(self) -> None:
        _require_int("interval", self.interval, minimum=1)
        _require_int("max_order", self.max_order, minimum=0)
        _require_int("first_enhance", self.first_enhance, minimum=1)
        _require_int("derivative_start_step", self.derivative_start_step, minimum=0)
        if self.factor_dtype is not None and not (
            isinstance(self.factor_dtype, torch.dtype) and self.factor_dtype.is_floating_point
        ):
            raise ValueError(f"factor_dtype must be a floating torch.dtype or None, got {self.factor_dtype!r}")

    @property
    def is_uncached(self) -> bool:
        """True when every step is full, i.e. the method is switched off."""
        return self.interval == 1


def _require_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def is_full_step(step: int, config: TaylorSeerConfig) -> bool:
    """Whether sampling step ``step`` (0-based, in sampling order) runs the full model.

    Full <=> step < E  or  (step - (E - 1)) mod N == 0: the E warm-up steps, then every N-th step counted from the
    last warm-up step. No step is forced full at the end (the reference does not do it either).
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    return step < config.first_enhance or (step - (config.first_enhance - 1)) % config.interval == 0


def full_step_indices(num_steps: int, config: TaylorSeerConfig) -> list[int]:
    """The full steps of a ``num_steps``-step run, in sampling order."""
    return [s for s in range(num_steps) if is_full_step(s, config)]


def check_schedule(num_steps: int, config: TaylorSeerConfig) -> None:
    """Refuse a ``derivative_start_step`` that forms no derivative for any forecast of a ``num_steps``-step run
    (e.g. one past the last full step): every forecast would then be plain reuse, and a run labelled TaylorSeer of
    order >= 1 would silently be FORA. A ValueError names the largest value that still works."""
    _require_int("num_steps", num_steps, minimum=1)
    if config.is_uncached or config.max_order == 0 or config.derivative_start_step == 0:
        return
    full = full_step_indices(num_steps, config)
    full_set = set(full)
    forecasts = [s for s in range(num_steps) if s not in full_set]
    # Full steps that can form a derivative (they have a predecessor) and still have a forecast after them.
    useful = [s for s in full[1:] if forecasts and s < forecasts[-1]]
    if useful and config.derivative_start_step > useful[-1]:
        raise ValueError(
            f"derivative_start_step {config.derivative_start_step} forms no derivative before the last forecast of "
            f"this {num_steps}-step run (full steps {full}), so order {config.max_order} would run as plain reuse "
            f"(FORA): use a derivative_start_step <= {useful[-1]}, or max_order 0 for FORA"
        )


def update_factors(old: list[torch.Tensor], feature: torch.Tensor, distance: int, max_order: int) -> list[torch.Tensor]:
    """New Taylor factors after observing ``feature`` ``distance`` steps after the full step that produced ``old``.

    Backward divided differences, every level divided by the latest ``distance`` (the reference's recursion).
    The order grows by at most one per call: level i+1 needs an old level i.
    """
    new = [feature]
    for i in range(min(max_order, len(old))):
        new.append((new[i] - old[i]) / distance)
    return new


def taylor_forecast(factors: list[torch.Tensor], distance: int) -> torch.Tensor:
    """Truncated Taylor expansion sum_i F_i * x^i / i! at ``distance`` = x steps after the last full step."""
    out = factors[0]
    for i in range(1, len(factors)):
        out = out + factors[i] * (distance**i / math.factorial(i))
    return out


@dataclass
class _Slot:
    """Taylor state of one cached module: its factors and the full step they were last refreshed at."""

    factors: list[torch.Tensor]
    last_full_step: int
    feature_dtype: torch.dtype
    """dtype the module produced, restored on forecasts when the factors are kept in another dtype."""


class TaylorCache(CacheMethod):
    """Per-run cache state for one model. Create it, hand it to the model's forward, call :meth:`begin_step` each step.

    Slots are keyed by any hashable, e.g. ``(layer_index, "attn")``, and created lazily at the first full step, so
    the cache needs to know nothing about the model's depth or shapes.
    """

    def __init__(self, config: TaylorSeerConfig) -> None:
        super().__init__()
        self.config = config
        self._slots: dict[Hashable, _Slot] = {}

    @torch.compiler.disable
    def reset(self, num_steps: int | None = None) -> None:
        """Forget every feature and counter, so that no derivative is formed across runs."""
        super().reset(num_steps)
        self._slots.clear()

    def plan_step(self, step: int) -> bool:
        return is_full_step(step, self.config)

    def apply(self, key: Hashable, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        """Run ``compute()`` and record its output at a full step, or forecast it without running it otherwise."""
        if self.is_full_step:
            feature = compute()
            self.update(key, feature)
            return feature
        return self.predict(key)

    def apply_group(
        self, keys: Sequence[Hashable], compute: Callable[[], Sequence[torch.Tensor]]
    ) -> tuple[torch.Tensor, ...]:
        """:meth:`apply` for one computation with several outputs, ``keys[i]`` caching ``compute()[i]``: at a full
        step ``compute()`` runs once and each output is recorded in key order; otherwise each key is forecast and
        ``compute`` does not run."""
        if self.is_full_step:
            features = tuple(compute())
            if len(features) != len(keys):
                raise ValueError(f"compute() returned {len(features)} outputs for the {len(keys)} keys {tuple(keys)!r}")
            for key, feature in zip(keys, features, strict=True):
                self.update(key, feature)
            return features
        return tuple(self.predict(key) for key in keys)

    @torch.compiler.disable
    def update(self, key: Hashable, feature: torch.Tensor) -> None:
        """Record ``feature`` for ``key`` at the current (full) step and refresh its Taylor factors."""
        step = self._current_step("update")
        stored = feature.detach()
        if self.config.factor_dtype is not None:
            stored = stored.to(self.config.factor_dtype)
        slot = self._slots.get(key)
        if slot is None or step < self.config.derivative_start_step:
            self._slots[key] = _Slot([stored], step, feature.dtype)
            return
        if slot.last_full_step == step:
            raise RuntimeError(
                f"cache key {key!r} was already recorded at step {step}: the model ran twice in one step. "
                "Call cache.begin_step() once per sampler step (batch CFG, or give each separately-run branch "
                "its own TaylorCache)"
            )
        distance = step - slot.last_full_step
        slot.factors = update_factors(slot.factors, stored, distance, self.config.max_order)
        slot.last_full_step = step

    @torch.compiler.disable
    def predict(self, key: Hashable) -> torch.Tensor:
        """Taylor forecast of ``key`` at the current step from its last full step."""
        step = self._current_step("predict")
        slot = self._slots.get(key)
        if slot is None:
            raise RuntimeError(
                f"cannot forecast cache key {key!r} at step {step}: it was never computed at a full step. "
                "The first sampling step must be full (first_enhance >= 1) and the cache reset between runs"
            )
        return taylor_forecast(slot.factors, step - slot.last_full_step).to(slot.feature_dtype)

    def order(self, key: Hashable) -> int:
        """Highest Taylor order currently available for ``key`` (-1 if never computed)."""
        slot = self._slots.get(key)
        return -1 if slot is None else len(slot.factors) - 1

    def __len__(self) -> int:
        return len(self._slots)

    def _current_step(self, what: str) -> int:
        if self.step is None:
            raise RuntimeError(f"TaylorCache.{what}() before begin_step(): the sampler must announce each step")
        return self.step
