"""TeaCache: skip whole steps while the timestep-modulated input barely changes.

Paper: Liu et al., "Timestep Embedding Tells: It's Time to Cache for Video Diffusion Model" (CVPR 2025, arXiv
2411.19108). At each step the model hands over the modulated input of its first block. Its relative L1 change
against the previous step, rescaled by a fitted polynomial, is accumulated; while the sum stays under ``threshold``
the step is skipped and the block stack's output is its input plus the residual recorded at the last computed step.
When the sum reaches the threshold the step is computed and the sum restarts. The first and the last step of a run
are always computed.

The decision depends on the step's input, so it cannot be known from (step, config) alone: it is made in
:meth:`TeaCache.run_blocks` and counted there, which is also where the run's FLOPs come from.

The rescaling polynomial is a published one by name (:data:`TEACACHE_COEFFICIENTS`) or a model's own fit, read from
the JSON file a fit script writes (``{"coefficients": [...], ...}``, see TaylorSeer-DiT/fit_teacache.py).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .caching import CacheMethod, State
from .delta_dit import add_states, subtract_states

__all__ = ["TEACACHE_COEFFICIENTS", "TeaCacheConfig", "TeaCache", "load_coefficients", "read_fit", "relative_l1"]

TEACACHE_COEFFICIENTS: dict[str, tuple[float, ...]] = {
    # Published with TeaCache (TeaCache4FLUX, TeaCache4HunyuanVideo), highest power first.
    "flux": (4.98651651e02, -2.83781631e02, 5.58554382e01, -3.82021401e00, 2.64230861e-01),
    "hunyuanvideo": (7.33226126e02, -4.01131952e02, 6.75869174e01, -3.14987800e00, 9.61237896e-02),
    # No rescaling: the raw relative L1 change (the fit for a new model starts from here).
    "identity": (1.0, 0.0),
}


@dataclass(frozen=True)
class TeaCacheConfig:
    threshold: float = 0.4
    """l: accumulated rescaled change under which steps are skipped; 0 computes every step."""
    coefficients: tuple[float, ...] = TEACACHE_COEFFICIENTS["identity"]
    """Rescaling polynomial of the relative L1 change, highest power first (numpy.polyval order)."""

    def __post_init__(self) -> None:
        if not (isinstance(self.threshold, int | float) and math.isfinite(self.threshold) and self.threshold >= 0):
            raise ValueError(f"threshold must be a finite number >= 0, got {self.threshold!r}")
        if not self.coefficients or not all(math.isfinite(float(c)) for c in self.coefficients):
            raise ValueError(f"coefficients must be finite numbers, got {self.coefficients!r}")


def load_coefficients(spec: str) -> tuple[float, ...]:
    """The polynomial named ``spec`` in :data:`TEACACHE_COEFFICIENTS`, else the one in the fit file at path ``spec``;
    a one-line ValueError that says what to pass otherwise."""
    if spec in TEACACHE_COEFFICIENTS:
        return TEACACHE_COEFFICIENTS[spec]
    return read_fit(spec)["coefficients"]


def read_fit(path: str | Path) -> dict:
    """A fit file's content, its ``"coefficients"`` checked (a non-empty list of finite numbers) and made a tuple."""
    path = Path(path)
    names = ", ".join(TEACACHE_COEFFICIENTS)
    if not path.is_file():
        raise ValueError(f"{path} is neither a published polynomial ({names}) nor a fit file: give one of those")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is not a JSON fit file ({exc}): refit it, or give one of {names}") from None
    coefficients = data.get("coefficients") if isinstance(data, dict) else None
    if not (isinstance(coefficients, list) and coefficients and all(_is_finite_number(c) for c in coefficients)):
        shown = json.dumps(coefficients)
        raise ValueError(
            f'{path}: "coefficients" must be a non-empty list of finite numbers (highest power first), got '
            f"{shown if len(shown) <= 80 else shown[:77] + '...'}: refit it, or give one of {names}"
        )
    return {**data, "coefficients": tuple(float(c) for c in coefficients)}


def _is_finite_number(value: object) -> bool:
    # json reads NaN and Infinity as floats, and 1e999 written as an integer as one too large for a float; a bool is
    # an int to Python but no coefficient.
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def relative_l1(current: torch.Tensor, previous: torch.Tensor) -> float:
    """mean |current - previous| / mean |previous|, TeaCache's change measure."""
    return float((current - previous).abs().mean() / previous.abs().mean())


class TeaCache(CacheMethod):
    """TeaCache's per-run state: the previous signal, the accumulated change and the stack's last residual."""

    def __init__(self, config: TeaCacheConfig) -> None:
        super().__init__()
        self.config = config
        self.changes: list[float | None] = []
        """The rescaled change of each step of the run (None for the first); what a coefficient fit reads."""
        self._previous: torch.Tensor | None = None
        self._accumulated = 0.0
        self._residual: State | None = None

    @torch.compiler.disable
    def reset(self, num_steps: int | None = None) -> None:
        super().reset(num_steps)
        self.changes = []
        self._previous = None
        self._accumulated = 0.0
        self._residual = None

    @torch.compiler.disable
    def _decide(self, signal: torch.Tensor) -> bool:
        """Whether this step is computed, from its modulated input; updates the accumulated change."""
        previous, self._previous = self._previous, signal.detach()
        last = self.num_steps is not None and self.step == self.num_steps - 1
        if previous is None:
            self.changes.append(None)
            return True
        # A fitted polynomial can dip below 0 outside the range it was fitted on; a change is never negative, and a
        # negative one would let threshold 0 skip steps. (The published code does not clamp: same values in range.)
        change = max(0.0, float(np.polyval(self.config.coefficients, relative_l1(signal, previous))))
        self.changes.append(change)
        self._accumulated += change
        if last or self._residual is None or self._accumulated >= self.config.threshold:
            self._accumulated = 0.0
            return True
        return False

    def run_blocks(
        self,
        blocks: Sequence[Callable[[State], State]],
        state: State,
        signal: Callable[[], torch.Tensor] | None = None,
    ) -> State:
        if signal is None:
            raise ValueError("TeaCache needs the model's signal (the first block's timestep-modulated input)")
        if not self._decide(signal()):
            self.is_full_step = False
            self.num_full_steps -= 1
            self.num_forecast_steps += 1
            return add_states(state, self._residual)
        start = state
        for block in blocks:
            state = block(state)
        self._residual = subtract_states(state, start)
        return state
