"""The one interface every training-free caching method offers the models: the models call it, never a method.

A model's forward hands the cache three kinds of work, and each method decides, per step, what actually runs:

- ``cached(cache, name, compute)``: one module output (a block's attention or MLP). TaylorSeer/FORA compute it at
  full steps and forecast or reuse it otherwise; ToCa reuses attention on its cached steps.
- ``cached_tokens(cache, name, tokens, fn)``: a token-wise module (an MLP), ``tokens()`` building its (B, T, D)
  input and ``fn`` mapping inputs to outputs for any subset T' of the T tokens. ToCa recomputes only its fresh tokens
  and reuses the rest; every other method treats it as :func:`cached` (``tokens`` is a thunk so that a step that
  computes nothing builds no input either).
- ``run_blocks(cache, blocks, state, signal)``: the model's block stack as a list of ``state -> state`` callables.
  Δ-DiT bypasses a block range with the residual cached at its last computed step; TeaCache and DuCa's aggressive
  steps bypass the whole stack; the others run every block. ``signal()`` (TeaCache only) returns the
  timestep-modulated input of the first block, which decides whether the step is skipped. Every block takes and
  returns the same state type (a residual is output minus input), so a model with two kinds of blocks keeps one
  state for both: FLUX passes the joint [txt, img] sequence, HunyuanVideo the (img, txt) pair.

The sampler stays generic: it calls :meth:`CacheMethod.reset` (with the run's step count) before a run and
:meth:`CacheMethod.begin_step` at each step. ``cache=None`` is the plain model, running the same code unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Union

import torch

__all__ = [
    "CacheMethod",
    "LayerCache",
    "State",
    "cached",
    "cached_group",
    "cached_tokens",
    "run_blocks",
]

State = Union[torch.Tensor, tuple[torch.Tensor, ...]]  # noqa: UP007 (a runtime alias: X | Y needs 3.10 objects)
"""What flows through a block stack: one hidden-state tensor, or a tuple of them (FLUX's image and text streams)."""


class CacheMethod:
    """Per-run state of one caching method. Subclasses override what they change; the defaults run everything."""

    def __init__(self) -> None:
        self.step: int | None = None
        self.num_steps: int | None = None
        self.is_full_step = True
        self.num_full_steps = 0
        self.num_forecast_steps = 0

    @torch.compiler.disable
    def reset(self, num_steps: int | None = None) -> None:
        """Forget every feature and counter before a run of ``num_steps`` steps (None: unknown)."""
        self.step = None
        self.num_steps = num_steps
        self.is_full_step = True
        self.num_full_steps = 0
        self.num_forecast_steps = 0

    @torch.compiler.disable
    def begin_step(self, step: int) -> bool:
        """Announce sampling step ``step``; returns whether it is computed in full. Steps must increase in a run."""
        if self.step is not None and step <= self.step:
            raise ValueError(
                f"{type(self).__name__}.begin_step({step}) after step {self.step}: steps must increase within a run; "
                "call cache.reset() before a new sampling run"
            )
        self.step = step
        self.is_full_step = self.plan_step(step)
        if self.is_full_step:
            self.num_full_steps += 1
        else:
            self.num_forecast_steps += 1
        return self.is_full_step

    def plan_step(self, step: int) -> bool:
        """Whether ``step`` is a full step: a pure function of (step, config) for every method that can know in
        advance; TeaCache, which decides from the step's input, reports its decision in :meth:`run_blocks`."""
        return True

    def apply(self, key: Hashable, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        return compute()

    def apply_group(
        self, keys: Sequence[Hashable], compute: Callable[[], Sequence[torch.Tensor]]
    ) -> tuple[torch.Tensor, ...]:
        return tuple(compute())

    def apply_tokens(
        self, key: Hashable, tokens: Callable[[], torch.Tensor], fn: Callable[[torch.Tensor], torch.Tensor]
    ) -> torch.Tensor:
        """A token-wise module: the methods that know no token selection treat it as :meth:`apply`."""
        return self.apply(key, lambda: fn(tokens()))

    def run_blocks(
        self,
        blocks: Sequence[Callable[[State], State]],
        state: State,
        signal: Callable[[], torch.Tensor] | None = None,
    ) -> State:
        for block in blocks:
            state = block(state)
        return state

    def layer(self, index: int) -> LayerCache:
        """A view that prefixes every key with a block index, handed to that block's forward."""
        return LayerCache(self, index)


class LayerCache:
    """The cache as seen by one block: keys become ``(layer_index, name)``."""

    __slots__ = ("cache", "index")

    def __init__(self, cache: CacheMethod, index: int) -> None:
        self.cache = cache
        self.index = index

    def apply(self, name: str, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        return self.cache.apply((self.index, name), compute)

    def apply_group(
        self, names: Sequence[str], compute: Callable[[], Sequence[torch.Tensor]]
    ) -> tuple[torch.Tensor, ...]:
        return self.cache.apply_group([(self.index, name) for name in names], compute)

    def apply_tokens(
        self, name: str, tokens: Callable[[], torch.Tensor], fn: Callable[[torch.Tensor], torch.Tensor]
    ) -> torch.Tensor:
        return self.cache.apply_tokens((self.index, name), tokens, fn)


def cached(cache: LayerCache | CacheMethod | None, name: Hashable, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
    """``compute()`` when there is no cache (the plain model, unchanged), else the method's compute-or-reuse."""
    if cache is None:
        return compute()
    return cache.apply(name, compute)


def cached_group(
    cache: LayerCache | CacheMethod | None,
    names: Sequence[Hashable],
    compute: Callable[[], Sequence[torch.Tensor]],
) -> tuple[torch.Tensor, ...]:
    """:func:`cached` for one computation with several outputs (e.g. a joint attention's image and text parts):
    ``names[i]`` caches ``compute()[i]``. Without a cache ``compute()`` just runs; at a full step it runs once and
    every output is recorded; at a forecast step every output is forecast and ``compute`` never runs."""
    if cache is None:
        return tuple(compute())
    return cache.apply_group(names, compute)


def cached_tokens(
    cache: LayerCache | CacheMethod | None,
    name: Hashable,
    tokens: Callable[[], torch.Tensor],
    fn: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """``fn(tokens())`` for a token-wise module (B, T, D) -> (B, T, D'); a method may run it on a subset of tokens."""
    if cache is None:
        return fn(tokens())
    return cache.apply_tokens(name, tokens, fn)


def run_blocks(
    cache: CacheMethod | None,
    blocks: Sequence[Callable[[State], State]],
    state: State,
    signal: Callable[[], torch.Tensor] | None = None,
) -> State:
    """Run the block stack ``blocks`` on ``state``; a method may bypass some blocks (see the module docstring)."""
    if cache is None:
        for block in blocks:
            state = block(state)
        return state
    return cache.run_blocks(blocks, state, signal)
