"""FLOPs accounting outside the model: per-step costs times the schedule's full/forecast counts.

torch's counter knows the CUDA attention kernels but not the CPU one (``_scaled_dot_product_flash_attention_for_cpu``),
so a run counted on the CPU would count no attention at all while the meta device (which decomposes attention into
matmuls) counts it. Importing this module registers the CPU kernel with torch's SDPA formula, so that a sampling run
counted on any device (the FLOPs of run-dependent methods) and a meta-device count agree.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

from .taylor_cache import TaylorCache, TaylorSeerConfig, full_step_indices

__all__ = ["FlopsReport", "count_cpu_attention", "count_flops", "full_and_forecast_flops"]


def count_cpu_attention() -> None:
    """Register torch's SDPA formula (two batched matmuls) for its CPU flash-attention kernel, unless it is known."""
    op = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    if op not in flop_counter.flop_registry and op.default not in flop_counter.flop_registry:
        flop_counter.register_flop_formula(op, get_raw=True)(flop_counter.sdpa_flop)


count_cpu_attention()


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of the matrix products (linear, conv, bmm, attention) that ``fn()`` runs, counted as 2 x MACs.

    Works on the meta device, so full-size models can be counted without weights or memory.
    """
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def full_and_forecast_flops(run: Callable[[TaylorCache], object]) -> tuple[float, float]:
    """(full step, forecast step) FLOPs of ``run(cache)``, one model forward with the given cache.

    ``run`` is called twice under ``torch.no_grad()`` with one cache whose step 0 is full and step 1 a forecast
    (interval 2, order 1), so the second call costs only what runs outside the cached modules.
    """
    cache = TaylorCache(TaylorSeerConfig(interval=2, max_order=1, first_enhance=1))
    flops = []
    with torch.no_grad():
        for step in (0, 1):
            cache.begin_step(step)
            flops.append(count_flops(lambda: run(cache)))
    return float(flops[0]), float(flops[1])


@dataclass(frozen=True)
class FlopsReport:
    """Total FLOPs of a sampling run: ``full_step_flops`` per full step, ``forecast_step_flops`` per forecast."""

    convention: str
    full_step_flops: float
    forecast_step_flops: float
    num_steps: int
    num_full_steps: int

    @classmethod
    def for_schedule(
        cls,
        convention: str,
        full_step_flops: float,
        forecast_step_flops: float,
        num_steps: int,
        config: TaylorSeerConfig,
    ) -> FlopsReport:
        return cls(
            convention, full_step_flops, forecast_step_flops, num_steps, len(full_step_indices(num_steps, config))
        )

    @property
    def num_forecast_steps(self) -> int:
        return self.num_steps - self.num_full_steps

    @property
    def baseline_flops(self) -> float:
        return self.num_steps * self.full_step_flops

    @property
    def flops(self) -> float:
        return self.num_full_steps * self.full_step_flops + self.num_forecast_steps * self.forecast_step_flops

    @property
    def speedup(self) -> float:
        return self.baseline_flops / self.flops

    def as_dict(self) -> dict:
        return {
            "convention": self.convention,
            "full_tflops": self.baseline_flops / 1e12,
            "tflops": self.flops / 1e12,
            "speedup": self.speedup,
            "full_steps": self.num_full_steps,
            "forecast_steps": self.num_forecast_steps,
            "full_step_tflops": self.full_step_flops / 1e12,
            "forecast_step_tflops": self.forecast_step_flops / 1e12,
        }

    def json_line(self, **extra) -> str:
        return json.dumps({**self.as_dict(), **extra})
