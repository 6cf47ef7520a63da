"""Beta schedules and timestep respacing, numerically identical to guided-diffusion / DiT."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np


def linear_beta_schedule(num_diffusion_timesteps: int) -> np.ndarray:
    """DDPM's linear schedule, rescaled so that any step count spans the same noise range as 1000 steps."""
    scale = 1000 / num_diffusion_timesteps
    return np.linspace(scale * 0.0001, scale * 0.02, num_diffusion_timesteps, dtype=np.float64)


def betas_for_alpha_bar(
    num_diffusion_timesteps: int, alpha_bar: Callable[[float], float], max_beta: float = 0.999
) -> np.ndarray:
    """Discretise a continuous cumulative-alpha function ``alpha_bar(t)``, t in [0, 1], into betas."""
    betas = []
    for i in range(num_diffusion_timesteps):
        t1 = i / num_diffusion_timesteps
        t2 = (i + 1) / num_diffusion_timesteps
        # The cap avoids a singular beta of 1 at the very end of the cosine schedule.
        betas.append(min(1 - alpha_bar(t2) / alpha_bar(t1), max_beta))
    return np.array(betas, dtype=np.float64)


def _cosine_alpha_bar(t: float) -> float:
    return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2


def get_named_beta_schedule(schedule_name: str, num_diffusion_timesteps: int) -> np.ndarray:
    """Return float64 betas for ``"linear"`` or ``"squaredcos_cap_v2"`` (improved-DDPM cosine)."""
    if schedule_name == "linear":
        return linear_beta_schedule(num_diffusion_timesteps)
    if schedule_name == "squaredcos_cap_v2":
        return betas_for_alpha_bar(num_diffusion_timesteps, _cosine_alpha_bar)
    raise ValueError(f"unknown beta schedule: {schedule_name}")


def _ddim_stride_timesteps(num_timesteps: int, desired_count: int) -> set[int]:
    for stride in range(1, num_timesteps):
        steps = range(0, num_timesteps, stride)
        if len(steps) == desired_count:
            return set(steps)
    raise ValueError(f"cannot create exactly {desired_count} steps with an integer stride")


def _section_timesteps(start_idx: int, size: int, section_count: int) -> list[int]:
    if size < section_count:
        raise ValueError(f"cannot divide section of {size} steps into {section_count}")
    frac_stride = 1 if section_count <= 1 else (size - 1) / (section_count - 1)
    # Accumulating the stride (rather than multiplying) reproduces upstream's float rounding exactly.
    cur_idx = 0.0
    taken_steps = []
    for _ in range(section_count):
        taken_steps.append(start_idx + round(cur_idx))
        cur_idx += frac_stride
    return taken_steps


def space_timesteps(num_timesteps: int, section_counts: str | Sequence[int]) -> set[int]:
    """Choose which of ``num_timesteps`` original steps a respaced process keeps.

    ``section_counts`` is either a list of per-section step counts (or a comma-separated string of them),
    splitting the original steps into equal sections and striding evenly (fractionally) through each, or
    ``"ddimN"``, which picks the integer stride that yields exactly N steps starting from 0, as in DDIM.
    """
    if isinstance(section_counts, str):
        if section_counts.startswith("ddim"):
            return _ddim_stride_timesteps(num_timesteps, int(section_counts[len("ddim") :]))
        section_counts = [int(x) for x in section_counts.split(",")]
    size_per = num_timesteps // len(section_counts)
    extra = num_timesteps % len(section_counts)
    start_idx = 0
    all_steps: list[int] = []
    for i, section_count in enumerate(section_counts):
        size = size_per + (1 if i < extra else 0)
        all_steps += _section_timesteps(start_idx, size, section_count)
        start_idx += size
    return set(all_steps)
