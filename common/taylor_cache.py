"""TaylorSeer feature cache: finite-difference derivatives at full steps, Taylor forecasts in between.

Paper: "From Reusing to Forecasting: Accelerating Diffusion Models with TaylorSeers" (ICCV 2025, arXiv 2503.06923).

At a *full* step every cached module (a block's attention or MLP, before its gate) is computed and its output f
recorded; its Taylor factors are refreshed by backward divided differences against the previous full step:

    F_0 = f,   F_{i+1} = (F_i - F_i^old) / d        (d = steps since the previous full step)

At a *forecast* step the module is skipped and replaced by  sum_i F_i * x^i / i!,  x = steps since the last full step.
Orders build up one per full step, up to ``max_order``; ``max_order = 0`` is plain reuse (FORA).

This reproduces the published reference's arithmetic, quirks included: every level divides by the *latest* spacing
d even when the previous spacing differed, so the forecast is not Newton's interpolation formula and carries an O(d)
bias on curved features (exact only for features linear in the step index). The time variable is the step index in
sampling order (0 = first, noisiest step); a tree whose reference counts down gives identical arithmetic, because d
and x change sign together.

How it is computed (see :class:`TaylorCache`): the cache keeps each module's outputs at the last O+1 full steps and
runs the recursion above on weight vectors, once per step, so that a full step does no tensor arithmetic and a
forecast is one weighted sum of the kept outputs. The result is the reference's up to rounding.

Beyond the paper (all off by default, so that the defaults reproduce the reference):

* ``forecaster``: how the factors forecast. ``taylor`` is the paper's; ``newton`` forms true divided differences on
  the actual full-step positions and evaluates Newton's interpolation polynomial (exact on polynomials of degree
  <= the order at any spacing); ``hermite`` is HiCache's scaled-Hermite basis (Feng et al., "HiCache: Training-free
  Acceleration of Diffusion Models via Hermite Polynomial-based Feature Caching", arXiv 2508.16984, ICLR 2026):
  the same factors F_i as Taylor, forecast as  F_0 + sum_i F_i * s^i * H_i(s x) / i!  with the physicists' Hermite
  polynomials H_i and the contraction s (``hermite_scale``).
* Full-step placement by budget (:func:`full_step_indices`): ``full_steps`` = K full steps per run, placed
  ``uniform``-ly or ``late-dense`` (positions of the non-warm-up full steps ∝ u^power, denser towards the end, where
  the features change fastest), or at an explicit ``list`` of steps; placements never spend a full step on the
  last step, whose output the sampler scales down most (DDIM's last update weighs the prediction by ~0.01).

The full-vs-forecast decision is the pure function :func:`is_full_step` of (step, config, step count). The sampler calls
:meth:`TaylorCache.begin_step` once per step; blocks only call :meth:`TaylorCache.apply` (through :func:`cached`),
or :meth:`TaylorCache.apply_group` (through :func:`cached_group`) for one computation with several cached outputs.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .caching import CacheMethod, LayerCache, cached, cached_group

__all__ = [
    "FORECASTERS",
    "PLACEMENTS",
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
    "hermite_forecast",
    "update_divided_differences",
    "newton_forecast",
    "placed_full_steps",
    "factor_weights",
    "divided_difference_weights",
    "forecast_weights",
    "weighted_sum",
    "Combine",
]

FORECASTERS = ("taylor", "newton", "hermite")
PLACEMENTS = ("uniform", "late-dense", "list")
# The placement power that the digits trial found best for Newton O=2 (issue 11): positions ∝ u^0.7.
LATE_DENSE_POWER = 0.7
MAX_PLACEMENT_POWER = 4.0
MAX_HERMITE_SCALE = 2.0


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
    """dtype the cache stores the recorded module outputs in; None keeps the module's dtype. bfloat16 or float16 halves
    the cache of a float32 model at the cost of rounding each stored output; forecasts accumulate in float32 at least
    whatever this is, so float32 storage gains a bf16 model nothing but memory."""
    forecaster: str = "taylor"
    """How the factors forecast: taylor (the paper's), newton or hermite (see the module docstring)."""
    hermite_scale: float = 0.5
    """s of the hermite forecaster, in (0, 2]: HiCache's contraction of the Hermite argument and terms."""
    full_steps: int | None = None
    """K: full steps per run, placed by ``placement`` instead of one every ``interval`` steps (None: the interval
    schedule)."""
    placement: str = "uniform"
    """Where the K full steps go: uniform, late-dense, or list (``full_step_list``)."""
    placement_power: float | None = None
    """late-dense: the power of u in the positions (< 1 is denser late); None = 0.7."""
    full_step_list: tuple[int, ...] | None = None
    """placement list: the full steps themselves, increasing, starting at 0."""

    def __post_init__(self) -> None:
        _require_int("interval", self.interval, minimum=1)
        _require_int("max_order", self.max_order, minimum=0)
        _require_int("first_enhance", self.first_enhance, minimum=1)
        _require_int("derivative_start_step", self.derivative_start_step, minimum=0)
        if self.factor_dtype is not None and not (
            isinstance(self.factor_dtype, torch.dtype) and self.factor_dtype.is_floating_point
        ):
            raise ValueError(f"factor_dtype must be a floating torch.dtype or None, got {self.factor_dtype!r}")
        if self.forecaster not in FORECASTERS:
            raise ValueError(f"forecaster must be one of {', '.join(FORECASTERS)}, got {self.forecaster!r}")
        _require_float("hermite_scale", self.hermite_scale, 0.0, MAX_HERMITE_SCALE)
        if self.placement not in PLACEMENTS:
            raise ValueError(f"placement must be one of {', '.join(PLACEMENTS)}, got {self.placement!r}")
        if self.full_steps is not None:
            _require_int("full_steps", self.full_steps, minimum=1)
            if self.full_steps < self.first_enhance:
                raise ValueError(
                    f"full_steps {self.full_steps} is below first_enhance {self.first_enhance}, whose warm-up steps "
                    "are full steps too: raise full_steps or lower first_enhance"
                )
        if self.placement_power is not None:
            if self.placement != "late-dense":
                raise ValueError("placement_power sets the late-dense placement: use placement late-dense")
            _require_float("placement_power", self.placement_power, 0.0, MAX_PLACEMENT_POWER)
        if self.placement == "list":
            self._check_list()
        elif self.full_step_list is not None:
            raise ValueError("full_step_list is the list placement's: use placement list")
        elif self.placement == "late-dense" and self.full_steps is None:
            raise ValueError("placement late-dense places full_steps full steps: set full_steps")

    def _check_list(self) -> None:
        steps = self.full_step_list
        if self.full_steps is not None:
            raise ValueError("placement list takes its full steps from full_step_list: leave full_steps unset")
        if (
            not isinstance(steps, tuple)
            or not steps
            or any(isinstance(s, bool) or not isinstance(s, int) for s in steps)
        ):
            raise ValueError(f"placement list needs full_step_list, a non-empty tuple of ints, got {steps!r}")
        if steps[0] != 0 or any(b <= a for a, b in zip(steps, steps[1:], strict=False)):
            raise ValueError(
                f"full_step_list must start at step 0 (nothing to forecast from before it) and increase, got {steps}"
            )

    @property
    def uses_placement(self) -> bool:
        """True when the full steps are placed by budget or listed rather than one every ``interval`` steps."""
        return self.full_steps is not None or self.placement == "list"

    @property
    def power(self) -> float:
        """The exponent of the placement: 1 for uniform, ``placement_power`` (default 0.7) for late-dense."""
        if self.placement == "late-dense":
            return LATE_DENSE_POWER if self.placement_power is None else self.placement_power
        return 1.0

    @property
    def is_uncached(self) -> bool:
        """True when every step is full, i.e. the method is switched off."""
        return self.interval == 1 and not self.uses_placement


def _require_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def _require_float(name: str, value: object, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if not low < value <= high:
        raise ValueError(f"{name} must be in ({low:g}, {high:g}], got {value}")


def is_full_step(step: int, config: TaylorSeerConfig, num_steps: int | None = None) -> bool:
    """Whether sampling step ``step`` (0-based, in sampling order) of a ``num_steps``-step run runs the full model.

    The interval schedule: full <=> step < E  or  (step - (E - 1)) mod N == 0: the E warm-up steps, then every N-th
    step counted from the last warm-up step; no step is forced full at the end (the reference does not do it either),
    and ``num_steps`` is not needed. A placement (``config.uses_placement``) depends on the step count, which must be
    given: see :func:`full_step_indices`.
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if not config.uses_placement:
        return step < config.first_enhance or (step - (config.first_enhance - 1)) % config.interval == 0
    if num_steps is None:
        raise ValueError("a placed schedule (full_steps or a full-step list) needs the run's step count")
    return step in _placed_set(num_steps, config)


@functools.lru_cache(maxsize=64)
def _placed_set(num_steps: int, config: TaylorSeerConfig) -> frozenset[int]:
    return frozenset(full_step_indices(num_steps, config))


def full_step_indices(num_steps: int, config: TaylorSeerConfig) -> list[int]:
    """The full steps of a ``num_steps``-step run, in sampling order: the interval schedule's, the K placed ones
    (:func:`placed_full_steps`) or the listed ones (each below ``num_steps``, else a ValueError)."""
    _require_int("num_steps", num_steps, minimum=1)
    if config.placement == "list":
        beyond = [s for s in config.full_step_list if s >= num_steps]
        if beyond:
            raise ValueError(f"full_step_list holds steps {beyond} past the last step {num_steps - 1} of this run")
        return list(config.full_step_list)
    if config.full_steps is not None:
        return placed_full_steps(num_steps, config.full_steps, config.first_enhance, config.power)
    return [s for s in range(num_steps) if is_full_step(s, config)]


def placed_full_steps(num_steps: int, full_steps: int, first_enhance: int, power: float) -> list[int]:
    """K = ``full_steps`` full steps of a T = ``num_steps``-step run: the E = ``first_enhance`` warm-up steps 0..E-1,
    then m = K - E steps at round(E - 1 + (T - 2 - (E - 1)) * (j / m)^power), j = 1..m (rounded half up, and moved
    apart where two round alike). The last lands on step T - 2: the last step's output is the one the sampler weighs
    least (DDIM's final update scales the prediction by ~0.01), so no full step is spent there. power 1 spreads them
    evenly; power < 1 packs them towards the end. K >= T is every step."""
    if full_steps >= num_steps:
        return list(range(num_steps))
    if first_enhance > full_steps:
        raise ValueError(f"first_enhance {first_enhance} warm-up steps exceed the {full_steps} full steps")
    warm = list(range(first_enhance))
    count, start, last = full_steps - first_enhance, first_enhance - 1, num_steps - 2
    if count == 0:
        return warm
    # count <= num_steps - 1 - first_enhance = last - start: there is always room for one step each.
    placed = [start + math.floor((last - start) * (j / count) ** power + 0.5) for j in range(1, count + 1)]
    for j in range(count):  # apart from the previous one...
        placed[j] = max(placed[j], (placed[j - 1] if j else start) + 1)
    for j in reversed(range(count)):  # ...and room left for the next ones, the last at T - 2 at most
        placed[j] = min(placed[j], (placed[j + 1] if j + 1 < count else last + 1) - 1)
    return warm + placed


def check_schedule(num_steps: int, config: TaylorSeerConfig) -> None:
    """Refuse a ``derivative_start_step`` that forms no derivative for any forecast of a ``num_steps``-step run
    (e.g. one past the last full step): every forecast would then be plain reuse, and a run labelled TaylorSeer of
    order >= 1 would silently be FORA. A ValueError names the largest value that still works."""
    _require_int("num_steps", num_steps, minimum=1)
    full = full_step_indices(num_steps, config)  # a placement that does not fit the run fails here
    if config.is_uncached or config.max_order == 0 or config.derivative_start_step == 0:
        return
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


def hermite_polynomial(n: int, x: float) -> float:
    """The physicists' Hermite polynomial H_n(x): H_0 = 1, H_1 = 2x, H_{k+1} = 2x H_k - 2k H_{k-1}."""
    previous, current = 1.0, 2.0 * x
    if n == 0:
        return previous
    for k in range(1, n):
        previous, current = current, 2.0 * x * current - 2.0 * k * previous
    return current


def hermite_forecast(factors: list[torch.Tensor], distance: int, scale: float) -> torch.Tensor:
    """HiCache's forecast from the Taylor factors: F_0 + sum_i F_i * s^i * H_i(s x) / i!  (x = ``distance``,
    s = ``scale``)."""
    out = factors[0]
    for i in range(1, len(factors)):
        out = out + factors[i] * (scale**i * hermite_polynomial(i, scale * distance) / math.factorial(i))
    return out


def update_divided_differences(
    old: list[torch.Tensor], positions: list[int], feature: torch.Tensor, step: int, max_order: int
) -> list[torch.Tensor]:
    """Newton's divided differences after observing ``feature`` at ``step``: ``old[k]`` = f[t_n, ..., t_{n-k}] over
    the earlier full steps ``positions`` (newest first); the new k-th difference divides by the true span
    step - t_{n-k+1}, whatever the spacing. The order grows by at most one per call."""
    new = [feature]
    for k in range(1, min(max_order, len(old)) + 1):
        new.append((new[k - 1] - old[k - 1]) / (step - positions[k - 1]))
    return new


def newton_forecast(differences: list[torch.Tensor], positions: list[int], step: int) -> torch.Tensor:
    """Newton's interpolation polynomial through the full steps ``positions`` (newest first), evaluated at ``step``
    in Horner form: d_0 + (t - t_0)(d_1 + (t - t_1)(d_2 + ...))."""
    out = differences[-1]
    for k in range(len(differences) - 2, -1, -1):
        out = differences[k] + out * (step - positions[k])
    return out


def _unit(length: int) -> np.ndarray:
    vector = np.zeros(length)
    vector[0] = 1.0
    return vector


def _shifted(levels: list[np.ndarray]) -> list[np.ndarray]:
    """Weight vectors over the features of one full step earlier, re-indexed after a newer feature was recorded."""
    return [np.concatenate([[0.0], level]) for level in levels]


@functools.lru_cache(maxsize=1024)
def factor_weights(positions: tuple[int, ...], max_order: int) -> tuple[np.ndarray, ...]:
    """The Taylor factors F_0.. of features recorded at the full steps ``positions`` (newest first), each as weights
    over those features: the reference's recursion (:func:`update_factors`) run on weight vectors instead of tensors.
    Level i depends on the newest i + 1 features only, so the last ``max_order + 1`` full steps determine them all."""
    if len(positions) == 1:
        return (_unit(1),)
    older = _shifted(list(factor_weights(positions[1:], max_order)))
    return tuple(update_factors(older, _unit(len(positions)), positions[0] - positions[1], max_order))


@functools.lru_cache(maxsize=1024)
def divided_difference_weights(positions: tuple[int, ...], max_order: int) -> tuple[np.ndarray, ...]:
    """Newton's divided differences f[t_0], f[t_0, t_1], ... over the full steps ``positions`` (newest first), each
    as weights over the features recorded there (:func:`update_divided_differences` on weight vectors)."""
    if len(positions) == 1:
        return (_unit(1),)
    older = _shifted(list(divided_difference_weights(positions[1:], max_order)))
    return tuple(update_divided_differences(older, list(positions[1:]), _unit(len(positions)), positions[0], max_order))


@functools.lru_cache(maxsize=4096)
def forecast_weights(positions: tuple[int, ...], step: int, config: TaylorSeerConfig) -> tuple[float, ...]:
    """The forecast at ``step`` as weights over the features recorded at ``positions`` (newest first): every
    forecaster is linear in those features, so it is one weighted sum, whose weights are computed here once per
    (positions, step) instead of once per cached module."""
    order = config.max_order
    if config.forecaster == "newton":
        weights = newton_forecast(list(divided_difference_weights(positions, order)), list(positions), step)
    elif config.forecaster == "hermite":
        weights = hermite_forecast(list(factor_weights(positions, order)), step - positions[0], config.hermite_scale)
    else:
        weights = taylor_forecast(list(factor_weights(positions, order)), step - positions[0])
    return tuple(float(w) for w in weights)


def weighted_sum(features: Sequence[torch.Tensor], weights: Sequence[float], dtype: torch.dtype) -> torch.Tensor:
    """sum_j weights[j] * features[j] in ``dtype``: one output buffer, each term added by one fused multiply-add pass,
    accumulated in float32 at least (the terms of a high-order forecast nearly cancel: bf16 partial sums would lose
    the difference). A lone weight of 1 (plain reuse) returns the feature itself, converted only if need be."""
    first = features[0]
    if len(features) == 1 and weights[0] == 1.0:
        return first.to(dtype)
    if first.dtype.itemsize >= 4:
        out = torch.mul(first, weights[0])
    else:  # one float32 copy, scaled in place: no second buffer for the 16-bit storage
        out = first.to(torch.float32).mul_(weights[0])
    for feature, weight in zip(features[1:], weights[1:], strict=True):
        out.add_(feature, alpha=weight)
    return out.to(dtype)


Combine = Callable[[Sequence[torch.Tensor], Sequence[float], torch.dtype], torch.Tensor]
"""How a forecast is formed from the kept outputs and their weights (see :func:`weighted_sum`)."""


@dataclass
class _Slot:
    """Forecast state of one cached module: its outputs at the last ``max_order + 1`` full steps (fewer until that
    many ran), newest first, and the full steps they come from."""

    features: list[torch.Tensor]
    positions: list[int]
    feature_dtype: torch.dtype
    """dtype the module produced, restored on forecasts when the features are kept in another dtype."""

    @property
    def last_full_step(self) -> int:
        return self.positions[0]


class TaylorCache(CacheMethod):
    """Per-run cache state for one model. Create it, hand it to the model's forward, call :meth:`begin_step` each step.

    Slots are keyed by any hashable, e.g. ``(layer_index, "attn")``, and created lazily at the first full step, so
    the cache needs to know nothing about the model's depth or shapes.

    A slot keeps the module's outputs at its last ``max_order + 1`` full steps, not the Taylor factors: every
    forecaster is linear in those outputs, so a full step only keeps a reference to the new output (no tensor
    arithmetic at all), and a forecast is one weighted sum (:func:`weighted_sum`) with weights from
    :func:`forecast_weights`. In exact arithmetic this is the reference's recursion; only the rounding differs. The
    cache takes over the outputs it records: they must not be modified in place afterwards.
    """

    def __init__(self, config: TaylorSeerConfig, combine: Combine | None = None) -> None:
        """``combine(features, weights, dtype)`` forms each forecast: :func:`weighted_sum` by default, or a fused
        equivalent such as :func:`common.compile.compiled_weighted_sum`."""
        super().__init__()
        self.config = config
        self.combine = combine or weighted_sum
        self._slots: dict[Hashable, _Slot] = {}

    @torch.compiler.disable
    def reset(self, num_steps: int | None = None) -> None:
        """Forget every feature and counter, so that no derivative is formed across runs."""
        super().reset(num_steps)
        self._slots.clear()

    def plan_step(self, step: int) -> bool:
        return is_full_step(step, self.config, self.num_steps)

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
        """Record ``feature`` for ``key`` at the current (full) step, dropping the output no forecast reads any more."""
        step = self._current_step("update")
        stored = feature.detach()
        if self.config.factor_dtype is not None:
            stored = stored.to(self.config.factor_dtype)
        slot = self._slots.get(key)
        if slot is None or step < self.config.derivative_start_step:
            self._slots[key] = _Slot([stored], [step], feature.dtype)
            return
        if slot.last_full_step == step:
            raise RuntimeError(
                f"cache key {key!r} was already recorded at step {step}: the model ran twice in one step. "
                "Call cache.begin_step() once per sampler step (batch CFG, or give each separately-run branch "
                "its own TaylorCache)"
            )
        keep = self.config.max_order  # the order grows by one per full step, up to max_order
        slot.features = [stored, *slot.features[:keep]]
        slot.positions = [step, *slot.positions[:keep]]

    @torch.compiler.disable
    def predict(self, key: Hashable) -> torch.Tensor:
        """The forecast of ``key`` at the current step from its recorded outputs."""
        step = self._current_step("predict")
        slot = self._slots.get(key)
        if slot is None:
            raise RuntimeError(
                f"cannot forecast cache key {key!r} at step {step}: it was never computed at a full step. "
                "The first sampling step must be full (first_enhance >= 1) and the cache reset between runs"
            )
        weights = forecast_weights(tuple(slot.positions), step, self.config)
        return self.combine(slot.features, weights, slot.feature_dtype)

    def factors(self, key: Hashable) -> list[torch.Tensor]:
        """The current factors of ``key`` as tensors (float32 at least), for inspection: Newton's divided differences
        for ``forecaster="newton"``, else the Taylor factors F_0, F_1, ... The forecasts never form them."""
        slot = self._slots[key]
        positions = tuple(slot.positions)
        if self.config.forecaster == "newton":
            levels = divided_difference_weights(positions, self.config.max_order)
        else:
            levels = factor_weights(positions, self.config.max_order)
        dtype = torch.promote_types(slot.features[0].dtype, torch.float32)
        return [weighted_sum(slot.features, [float(w) for w in level], dtype) for level in levels]

    def held_tensors(self) -> list[torch.Tensor]:
        """Every tensor the cache holds (the recorded outputs), e.g. to count its memory."""
        return [feature for slot in self._slots.values() for feature in slot.features]

    def order(self, key: Hashable) -> int:
        """Highest Taylor order currently available for ``key`` (-1 if never computed)."""
        slot = self._slots.get(key)
        return -1 if slot is None else len(slot.features) - 1

    def __len__(self) -> int:
        return len(self._slots)

    def _current_step(self, what: str) -> int:
        if self.step is None:
            raise RuntimeError(f"TaylorCache.{what}() before begin_step(): the sampler must announce each step")
        return self.step
