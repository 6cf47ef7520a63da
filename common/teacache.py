"""TeaCache: skip whole steps while the timestep-modulated input barely changes.

Paper: Liu et al., "Timestep Embedding Tells: It's Time to Cache for Video Diffusion Model" (CVPR 2025, arXiv
2411.19108). At each step the model hands over the modulated input of its first block. Its relative L1 change
against the previous step, rescaled by a fitted polynomial, is accumulated; while the sum stays under ``threshold``
the step is skipped and the block stack's output is its input plus the residual recorded at the last computed step.
When the sum reaches the threshold the step is computed and the sum restarts. The first and the last step of a run
are always computed.

The decision depends on the step's input, so it cannot be known from (step, config) alone: it is made in
:meth:`TeaCache.run_blocks` and counted there, which is also where the run's FLOPs come from.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .caching import CacheMethod, State
from .delta_dit import add_states, subtract_states

__all__ = ["TEACACHE_COEFFICIENTS", "TeaCacheConfig", "TeaCache", "relative_l1"]

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
        change = float(np.polyval(self.config.coefficients, relative_l1(signal, previous)))
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
