"""Δ-DiT: cache the deviation (residual) of a block range and recompute the rest.

Paper: Chen et al., "Δ-DiT: A Training-Free Acceleration Method Tailored for Diffusion Transformers" (arXiv
2406.01125). Early denoising steps shape the outline, which the front blocks produce, so the *rear* blocks are
bypassed then; later steps refine details, which the rear blocks produce, so the *front* blocks are bypassed. A
bypassed range adds the residual (its output minus its input) recorded at the last full step.

The step kind is a pure function of (step, config): full every ``interval`` steps after ``first_enhance`` warm-up
steps (TaylorSeer's schedule), Δ-cached in between; ``boundary`` is the fraction of the run after which the front
range is bypassed instead of the rear one. The range size ``cached_blocks`` is checked against the model's depth,
which the cache learns from the block list, never from a literal.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .caching import CacheMethod, State
from .taylor_cache import TaylorSeerConfig, is_full_step

__all__ = ["DeltaDiTConfig", "DeltaDiTCache", "add_states", "subtract_states"]


@dataclass(frozen=True)
class DeltaDiTConfig:
    interval: int = 3
    """N: after the warm-up, one full step every N steps; the steps in between bypass a block range."""
    cached_blocks: int = 1
    """How many blocks the bypassed range holds (front or rear); at most the model's depth."""
    boundary: float = 0.5
    """Fraction of the run (0..1) before which the rear blocks are bypassed and after which the front ones are."""
    first_enhance: int = 1
    """Warm-up steps at the start that are always full."""

    def __post_init__(self) -> None:
        for name, minimum in (("interval", 1), ("cached_blocks", 1), ("first_enhance", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
        if not (isinstance(self.boundary, int | float) and math.isfinite(self.boundary) and 0 <= self.boundary <= 1):
            raise ValueError(f"boundary must be a finite number in [0, 1], got {self.boundary!r}")

    @property
    def schedule(self) -> TaylorSeerConfig:
        """The full-step schedule, shared with TaylorSeer."""
        return TaylorSeerConfig(interval=self.interval, max_order=0, first_enhance=self.first_enhance)


def add_states(state: State, delta: State) -> State:
    if isinstance(state, torch.Tensor):
        return state + delta
    return tuple(s + d for s, d in zip(state, delta, strict=True))


def subtract_states(a: State, b: State) -> State:
    if isinstance(a, torch.Tensor):
        return a - b
    return tuple(x - y for x, y in zip(a, b, strict=True))


class DeltaDiTCache(CacheMethod):
    """Δ-DiT's per-run state: the residuals of the front and rear ranges at the last full step."""

    def __init__(self, config: DeltaDiTConfig) -> None:
        super().__init__()
        self.config = config
        self._front: State | None = None
        self._rear: State | None = None

    @torch.compiler.disable
    def reset(self, num_steps: int | None = None) -> None:
        super().reset(num_steps)
        self._front = self._rear = None

    def plan_step(self, step: int) -> bool:
        return is_full_step(step, self.config.schedule)

    def bypasses_rear(self, step: int) -> bool:
        """Whether a Δ step bypasses the rear range (early in the run) rather than the front one."""
        if self.num_steps is None:
            raise RuntimeError("DeltaDiTCache needs the run's step count: call cache.reset(num_steps) before a run")
        return step < self.config.boundary * self.num_steps

    def run_blocks(
        self,
        blocks: Sequence[Callable[[State], State]],
        state: State,
        signal: Callable[[], torch.Tensor] | None = None,
    ) -> State:
        depth, k = len(blocks), self.config.cached_blocks
        if k > depth:
            raise ValueError(f"Δ-DiT cached_blocks {k} exceeds the model's {depth} blocks")
        if self.is_full_step:
            return self._run_and_record(blocks, state, k)
        if self._front is None:
            raise RuntimeError("Δ-DiT has no residual: the first step of a run must be full (reset between runs)")
        if self.bypasses_rear(self.step):
            for block in blocks[: depth - k]:
                state = block(state)
            return add_states(state, self._rear)
        state = add_states(state, self._front)
        for block in blocks[k:]:
            state = block(state)
        return state

    def _run_and_record(self, blocks: Sequence[Callable[[State], State]], state: State, k: int) -> State:
        depth = len(blocks)
        start = state
        for index, block in enumerate(blocks):
            if index == depth - k:
                rear_input = state
            state = block(state)
            if index == k - 1:
                self._front = subtract_states(state, start)
        self._rear = subtract_states(state, rear_input)
        return state
