"""FLOPs of FLUX sampling with any caching method, counted outside the model on the meta device.

Convention ``matmul``: every matrix product of one forward (embeddings, modulations, qkv/output projections, the
attention's q @ k^T and attn @ v, MLPs, final layer) as 2 x MACs, measured with ``torch.utils.flop_counter`` on the
meta device (no weights, no memory). Elementwise work (norms, RoPE, softmax, activations, Taylor forecasts, residual
additions) is not counted. This is what the reference's calflops count with a naive (matmul) attention reports for the
transformer: ~74.4 TFLOPs per full FLUX-dev step at 1024x1024 with 512 text tokens.

Deterministic methods (TaylorSeer, FORA, Δ-DiT, ToCa, DuCa) decide every step from (step, config) and the model's
shape, never from values, so :func:`method_flops_report` runs the model on the meta device through the steps of the
method's real schedule, with the method's own cache, and counts each step: a TaylorSeer forecast step costs what runs
outside the cached modules, a ToCa step its fresh tokens, a Δ-DiT step the blocks it does not bypass, a DuCa
aggressive step no block at all. TeaCache decides from the values of each step's input, so its FLOPs are known only
after a real run: :func:`teacache_step_flops` gives the cost of one computed and one skipped step, and a run's counts of
each give its total (:func:`teacache_flops`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Hashable
from dataclasses import dataclass, replace

import torch

from common.caching import CacheMethod
from common.delta_dit import DeltaDiTCache
from common.flops import FlopsReport, count_flops, full_and_forecast_flops
from common.methods import MethodConfig, describe, make_cache
from common.taylor_cache import TaylorCache, TaylorSeerConfig
from common.teacache import TeaCache, TeaCacheConfig
from common.toca import DuCaCache, ToCaCache, ToCaConfig

from .model import FLUX_PRESETS, Flux, FluxParams

__all__ = [
    "CONVENTION",
    "MethodFlops",
    "flux_flops_report",
    "flux_image_seq_len",
    "flux_step_flops",
    "method_flops_report",
    "plain_step_flops",
    "schedule_step_flops",
    "step_kinds",
    "teacache_flops",
    "teacache_step_flops",
]

CONVENTION = "matmul"


def flux_image_seq_len(width: int, height: int) -> int:
    """Packed image tokens of a ``width`` x ``height`` pixel image: one per 16x16 pixels (8x VAE, 2x2 patches)."""
    return math.ceil(height / 16) * math.ceil(width / 16)


def _meta_model(params: str | FluxParams) -> Flux:
    """The transformer of ``params`` (a preset name or the params) on the meta device: shapes only, no memory."""
    if isinstance(params, str):
        if params not in FLUX_PRESETS:
            raise ValueError(f"unknown FLUX preset {params!r}; choose from {sorted(FLUX_PRESETS)}")
        params = FLUX_PRESETS[params]
    with torch.device("meta"):
        return Flux(params).eval()


def _forward(model: Flux, batch: int, image_seq_len: int, text_len: int) -> Callable[[CacheMethod | None], object]:
    """``run(cache)``: one forward of ``batch`` samples on zero inputs on the model's device."""
    params = model.params
    device = next(model.parameters()).device
    inputs = {
        "img": torch.zeros(batch, image_seq_len, params.in_channels, device=device),
        "img_ids": torch.zeros(batch, image_seq_len, 3, device=device),
        "txt": torch.zeros(batch, text_len, params.context_in_dim, device=device),
        "txt_ids": torch.zeros(batch, text_len, 3, device=device),
        "timesteps": torch.zeros(batch, device=device),
        "y": torch.zeros(batch, params.vec_in_dim, device=device),
        "guidance": torch.zeros(batch, device=device) if params.guidance_embed else None,
    }
    return lambda cache: model(**inputs, cache=cache)


def flux_step_flops(model: Flux, batch: int, image_seq_len: int, text_len: int) -> tuple[float, float]:
    """(full step, TaylorSeer forecast step) FLOPs of one forward of ``batch`` samples; measured on the model's
    device, so a model built on the meta device costs nothing to count."""
    return full_and_forecast_flops(_forward(model, batch, image_seq_len, text_len))


def flux_flops_report(
    params_name: str,
    width: int,
    height: int,
    text_len: int,
    num_steps: int,
    config: TaylorSeerConfig,
    batch: int = 1,
) -> FlopsReport:
    """FLOPs of a ``num_steps``-step TaylorSeer run of preset ``params_name`` at ``width`` x ``height`` pixels,
    ``text_len`` text tokens and ``batch`` samples, under the schedule ``config`` (one full and one forecast step
    counted: every TaylorSeer step is one of the two)."""
    model = _meta_model(params_name)
    full, forecast = flux_step_flops(model, batch, flux_image_seq_len(width, height), text_len)
    return FlopsReport.for_schedule(CONVENTION, full, forecast, num_steps, config)


def step_kinds(cache: CacheMethod, num_steps: int) -> list[Hashable]:
    """One key per step of a ``num_steps``-step run of a deterministic ``cache`` (reset for that run), equal for
    steps that run the same modules on the same tokens, hence cost the same: TaylorSeer/FORA and ToCa have full and
    cached steps, Δ-DiT's cached steps bypass the rear or the front range, DuCa's alternate ToCa and aggressive steps
    (as :meth:`DuCaCache.is_aggressive`). A method not listed here gets one kind per step: every step is counted."""
    full = [cache.plan_step(step) for step in range(num_steps)]
    if isinstance(cache, DuCaCache):
        kinds: list[Hashable] = []
        last_full = 0
        for step, is_full in enumerate(full):
            last_full = step if is_full else last_full
            kinds.append("full" if is_full else ("aggressive" if (step - last_full) % 2 == 0 else "toca"))
        return kinds
    if isinstance(cache, DeltaDiTCache):
        return ["full" if is_full else ("rear" if cache.bypasses_rear(step) else "front") for step, is_full in
                enumerate(full)]  # fmt: skip
    if type(cache) in (TaylorCache, ToCaCache):
        return ["full" if is_full else "cached" for is_full in full]
    return list(range(num_steps))


def schedule_step_flops(run: Callable[[CacheMethod | None], object], cache: CacheMethod, num_steps: int) -> list[float]:
    """FLOPs of each step of a ``num_steps``-step run of ``run(cache)`` (one model forward), counted while the
    cache goes through the run as in sampling (reset, then ``begin_step`` before each forward).

    Steps of one kind (:func:`step_kinds`) cost the same, so forwards run in order only until every kind of the run
    has been counted once (so that each counted step sees the cache state of a real run); the later steps take their
    kind's count. Two counted steps of one kind that differ mean the kinds are wrong: a RuntimeError."""
    cache.reset(num_steps)
    kinds = step_kinds(cache, num_steps)
    last_counted = max(kinds.index(kind) for kind in set(kinds))
    counted: dict[Hashable, float] = {}
    flops = []
    with torch.no_grad():
        for step, kind in enumerate(kinds):
            cache.begin_step(step)
            if step <= last_counted:
                value = float(count_flops(lambda: run(cache)))
                if counted.setdefault(kind, value) != value:
                    raise RuntimeError(
                        f"{type(cache).__name__} step {step} costs {value:.6g} FLOPs, another step of its kind "
                        f"{kind!r} {counted[kind]:.6g}: its step kinds are wrong"
                    )
            flops.append(counted[kind])
    return flops


@dataclass(frozen=True)
class MethodFlops:
    """FLOPs of one sampling run of a deterministic method (per sample), step by step, against full compute."""

    convention: str
    method: str
    label: str
    """The method and its settings in words (:func:`common.methods.describe`)."""
    full_step_flops: float
    """One step of the plain model."""
    step_flops: tuple[float, ...]
    """Each step of the method's run, in sampling order."""
    num_full_steps: int
    """Steps the method computes in full (its schedule's), the others reuse, forecast or skip some of the work."""

    @property
    def num_steps(self) -> int:
        return len(self.step_flops)

    @property
    def num_cached_steps(self) -> int:
        return self.num_steps - self.num_full_steps

    @property
    def baseline_flops(self) -> float:
        return self.num_steps * self.full_step_flops

    @property
    def flops(self) -> float:
        return sum(self.step_flops)

    @property
    def speedup(self) -> float:
        return self.baseline_flops / self.flops

    def step_costs(self) -> dict[float, int]:
        """Each distinct step cost -> how many steps cost it, most expensive first."""
        costs: dict[float, int] = {}
        for value in sorted(self.step_flops, reverse=True):
            costs[value] = costs.get(value, 0) + 1
        return costs

    def as_dict(self) -> dict:
        return {
            "convention": self.convention,
            "method": self.method,
            "label": self.label,
            "full_tflops": self.baseline_flops / 1e12,
            "tflops": self.flops / 1e12,
            "speedup": self.speedup,
            "full_steps": self.num_full_steps,
            "forecast_steps": self.num_cached_steps,
            "full_step_tflops": self.full_step_flops / 1e12,
            "step_tflops": [value / 1e12 for value in self.step_flops],
        }

    def json_line(self, **extra) -> str:
        return json.dumps({**self.as_dict(), **extra})


def _counting_cache(method: str, config: MethodConfig) -> CacheMethod | None:
    """The cache whose run is counted: the method's own, but ToCa's random score chooses its tokens by norm, since
    the meta device draws no random numbers; which tokens are fresh changes no FLOPs, only their count does."""
    if isinstance(config, ToCaConfig) and config.score != "norm":
        config = replace(config, score="norm")
    return make_cache(method, config)


def method_flops_report(
    params: str | FluxParams,
    width: int,
    height: int,
    text_len: int,
    num_steps: int,
    method: str,
    config: MethodConfig,
    batch: int = 1,
) -> MethodFlops:
    """FLOPs of a ``num_steps``-step run of ``method`` with ``config`` (:mod:`common.methods`) on the transformer
    ``params`` (preset name or params) at ``width`` x ``height`` pixels, ``text_len`` text tokens and ``batch``
    samples, each step counted on the meta device (:func:`schedule_step_flops`). TeaCache is a ValueError: its
    steps depend on the run (:func:`teacache_step_flops`)."""
    if isinstance(config, TeaCacheConfig):
        raise ValueError("TeaCache's FLOPs depend on the run (which steps it skips): count them with a real run")
    model = _meta_model(params)
    run = _forward(model, batch, flux_image_seq_len(width, height), text_len)
    full = _plain_flops(run)
    cache = _counting_cache(method, config)
    if cache is None:
        steps, num_full = [full] * num_steps, num_steps
    else:
        steps = schedule_step_flops(run, cache, num_steps)
        num_full = cache.num_full_steps
    return MethodFlops(CONVENTION, method, describe(method, config), full, tuple(steps), num_full)


def _plain_flops(run: Callable[[CacheMethod | None], object]) -> float:
    with torch.no_grad():
        return float(count_flops(lambda: run(None)))


def plain_step_flops(params: str | FluxParams, width: int, height: int, text_len: int, batch: int = 1) -> float:
    """FLOPs of one step of the plain model (no cache) on the transformer ``params``."""
    return _plain_flops(_forward(_meta_model(params), batch, flux_image_seq_len(width, height), text_len))


class _ScriptedTeaCache(TeaCache):
    """TeaCache with its decisions given instead of read from values, so that its computed and skipped steps can be
    counted on the meta device; everything else (the signal, the residual) is TeaCache's own."""

    def __init__(self, config: TeaCacheConfig, computed: list[bool]) -> None:
        super().__init__(config)
        self.computed = computed

    def _decide(self, signal: torch.Tensor) -> bool:
        return self.computed[self.step]


def teacache_step_flops(
    params: str | FluxParams, width: int, height: int, text_len: int, batch: int = 1
) -> tuple[float, float]:
    """(computed step, skipped step) FLOPs of TeaCache on the transformer ``params``: a computed step is a full step
    plus the signal (the first block's image modulation); a skipped step is the embeddings, the signal and the final
    layer."""
    model = _meta_model(params)
    run = _forward(model, batch, flux_image_seq_len(width, height), text_len)
    cache = _ScriptedTeaCache(TeaCacheConfig(), computed=[True, False])
    cache.reset(2)
    flops = []
    with torch.no_grad():
        for step in (0, 1):
            cache.begin_step(step)
            flops.append(float(count_flops(lambda: run(cache))))
    return flops[0], flops[1]


def teacache_flops(computed_steps: float, skipped_steps: float, step_flops: tuple[float, float]) -> float:
    """A TeaCache run's FLOPs from its step counts and :func:`teacache_step_flops`."""
    computed, skipped = step_flops
    return computed_steps * computed + skipped_steps * skipped
