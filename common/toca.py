"""ToCa and DuCa: token-wise feature caching, and its alternation with whole-stack reuse.

ToCa: Zou et al., "Accelerating Diffusion Transformers with Token-wise Feature Caching" (ICLR 2025, arXiv
2410.05317). Full steps every ``interval`` steps (after ``first_enhance`` warm-up steps) compute everything and
cache every module's output. On the cached steps in between, attention outputs are reused, and each token-wise
module (an MLP) recomputes only its *fresh* tokens, the top ``ratio`` of them by score, scattering their new outputs
into the cache and reusing the rest. The ratio of layer l of a depth-D model is ``fresh_ratio * (1.5 - l / (D - 1))``
with ``layer_schedule`` (the reference's ``1.5 - l / 27``, which hard-codes DiT-XL's 28 blocks), clipped to [0, 1];
a layer whose every token is fresh runs in full, attention included, so ``fresh_ratio = 1`` without the layer
schedule is full compute. Scores: "norm" (L2 norm of each token's input, largest first) or "random" (seeded); the
attention-received score of the paper needs attention maps, which fused attention kernels never materialise.

DuCa: Zou et al., "Accelerating Diffusion Transformers with Dual Feature Caching" (arXiv 2412.18911). Between two
full steps, ToCa steps alternate with *aggressive* steps that bypass the whole block stack and take the stack's output
at the previous step (the reference's ``F C A C A F``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

import torch

from .caching import CacheMethod, State
from .taylor_cache import TaylorSeerConfig, is_full_step

__all__ = ["SCORES", "ToCaConfig", "ToCaCache", "DuCaCache", "fresh_count", "layer_ratio", "select_fresh"]

SCORES = ("norm", "random")


@dataclass(frozen=True)
class ToCaConfig:
    interval: int = 5
    """N: after the warm-up, one full step every N steps; the steps in between are cached steps."""
    fresh_ratio: float = 0.1
    """R: fraction of tokens each token-wise module recomputes on a cached step (before the layer schedule)."""
    score: str = "norm"
    """How fresh tokens are chosen: "norm" or "random"."""
    layer_schedule: bool = True
    """Scale the ratio by 1.5 - l / (D - 1): more fresh tokens in front layers, fewer at the back."""
    first_enhance: int = 1
    """Warm-up steps at the start that are always full."""
    seed: int = 0
    """Seed of the "random" score."""

    def __post_init__(self) -> None:
        for name, minimum in (("interval", 1), ("first_enhance", 1), ("seed", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
        ratio = self.fresh_ratio
        if not (isinstance(ratio, int | float) and math.isfinite(ratio) and 0 <= ratio <= 1):
            raise ValueError(f"fresh_ratio must be a finite number in [0, 1], got {ratio!r}")
        if self.score not in SCORES:
            raise ValueError(f"score must be one of {', '.join(SCORES)}, got {self.score!r}")

    @property
    def schedule(self) -> TaylorSeerConfig:
        return TaylorSeerConfig(interval=self.interval, max_order=0, first_enhance=self.first_enhance)


def layer_ratio(config: ToCaConfig, layer: int, depth: int) -> float:
    """The fresh ratio of block ``layer`` (0-based) of a ``depth``-block model."""
    if not config.layer_schedule or depth == 1:
        return config.fresh_ratio
    return min(1.0, max(0.0, config.fresh_ratio * (1.5 - layer / (depth - 1))))


def fresh_count(ratio: float, tokens: int) -> int:
    """Fresh tokens of a module with ``tokens`` tokens: round(ratio * tokens), at least one when ratio > 0."""
    if ratio <= 0:
        return 0
    return min(tokens, max(1, round(ratio * tokens)))


def select_fresh(tokens: torch.Tensor, count: int, score: str, generator: torch.Generator | None) -> torch.Tensor:
    """(B, count) indices of the fresh tokens of ``tokens`` (B, T, D), highest score first."""
    if score == "norm":
        scores = tokens.float().norm(dim=-1)
    else:
        scores = torch.rand(tokens.shape[:2], generator=generator, device=tokens.device)
    return scores.topk(count, dim=1).indices


class ToCaCache(CacheMethod):
    """ToCa's per-run state: every module's output at its last computation, tokens updated in place."""

    def __init__(self, config: ToCaConfig) -> None:
        super().__init__()
        self.config = config
        self._outputs: dict[Hashable, torch.Tensor] = {}
        self._depth = 0
        self._generator: torch.Generator | None = None
        self.fresh_tokens = 0
        """Tokens recomputed on cached steps in this run (for FLOPs and tests)."""

    @torch.compiler.disable
    def reset(self, num_steps: int | None = None) -> None:
        super().reset(num_steps)
        self._outputs.clear()
        self._depth = 0
        self._generator = None
        self.fresh_tokens = 0

    def plan_step(self, step: int) -> bool:
        return is_full_step(step, self.config.schedule)

    def _ratio(self, key: Hashable) -> float:
        layer = key[0] if isinstance(key, tuple) and key and isinstance(key[0], int) else 0
        return layer_ratio(self.config, layer, max(self._depth, 1))

    @torch.compiler.disable
    def _record(self, key: Hashable, output: torch.Tensor) -> torch.Tensor:
        self._outputs[key] = output
        if isinstance(key, tuple) and key and isinstance(key[0], int):
            self._depth = max(self._depth, key[0] + 1)
        return output

    def _cached(self, key: Hashable) -> torch.Tensor:
        output = self._outputs.get(key)
        if output is None:
            raise RuntimeError(f"ToCa has no cached output for {key!r}: the first step of a run must be full")
        return output

    def apply(self, key: Hashable, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        if self.is_full_step or self._ratio(key) >= 1:
            return self._record(key, compute())
        return self._cached(key)

    def apply_group(
        self, keys: Sequence[Hashable], compute: Callable[[], Sequence[torch.Tensor]]
    ) -> tuple[torch.Tensor, ...]:
        if self.is_full_step or min(self._ratio(key) for key in keys) >= 1:
            return tuple(self._record(key, out) for key, out in zip(keys, compute(), strict=True))
        return tuple(self._cached(key) for key in keys)

    def apply_tokens(
        self, key: Hashable, tokens: Callable[[], torch.Tensor], fn: Callable[[torch.Tensor], torch.Tensor]
    ) -> torch.Tensor:
        ratio = 1.0 if self.is_full_step else self._ratio(key)
        if ratio >= 1:
            return self._record(key, fn(tokens()))
        cached = self._cached(key)
        count = fresh_count(ratio, cached.shape[1])
        if count == 0:
            return cached
        tokens = tokens()
        if self.config.score == "random" and self._generator is None:
            self._generator = torch.Generator(device=tokens.device).manual_seed(self.config.seed)
        index = select_fresh(tokens, count, self.config.score, self._generator)  # (B, count)
        fresh = fn(tokens.gather(1, index[..., None].expand(-1, -1, tokens.shape[-1])))  # (B, count, D')
        updated = cached.scatter(1, index[..., None].expand(-1, -1, fresh.shape[-1]), fresh)
        self.fresh_tokens += count * tokens.shape[0]
        return self._record(key, updated)


class DuCaCache(ToCaCache):
    """DuCa: ToCa steps alternating with aggressive steps that reuse the block stack's previous output."""

    def __init__(self, config: ToCaConfig) -> None:
        super().__init__(config)
        self._last_full: int | None = None
        self._stack_output: State | None = None

    @torch.compiler.disable
    def reset(self, num_steps: int | None = None) -> None:
        super().reset(num_steps)
        self._last_full = None
        self._stack_output = None

    def is_aggressive(self, step: int) -> bool:
        """Cached steps alternate ToCa (odd distance from the last full step) and aggressive (even distance)."""
        return not self.is_full_step and self._last_full is not None and (step - self._last_full) % 2 == 0

    def run_blocks(
        self,
        blocks: Sequence[Callable[[State], State]],
        state: State,
        signal: Callable[[], torch.Tensor] | None = None,
    ) -> State:
        if self.is_full_step:
            self._last_full = self.step
        elif self.is_aggressive(self.step) and self._stack_output is not None:
            return self._stack_output
        for block in blocks:
            state = block(state)
        self._stack_output = state
        return state
