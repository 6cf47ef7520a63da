"""HunyuanVideo's flow-matching Euler sampler (upstream ``FlowMatchDiscreteScheduler``), as three pure functions.

    sigmas = flow_match_sigmas(50, shift=7.0, reverse=True)     # 51 values, 1 -> 0
    for i in range(50):
        v = model(x, timesteps(sigmas)[i])
        x = euler_step(x, v, sigmas[i], sigmas[i + 1])

Semantics (hyvideo/diffusion/schedulers/scheduling_flow_match_discrete.py):

* ``sigmas = linspace(1, 0, n + 1)`` in float32, then the SD3 time shift ``s * sigma / (1 + (s - 1) * sigma)``
  (``--flow-shift``, 7.0 for the 720p/480p text-to-video model), which crowds the steps towards sigma = 1 (noise);
* the model gets ``timestep = sigma * 1000`` (float32) and predicts the velocity ``v = dx / dsigma``; one Euler step
  is ``x + (sigma_next - sigma) * v``, computed in float32 whatever the model's dtype (upstream upcasts too).

``--flow-reverse`` (``reverse=True``) is the released weights' convention: sigma runs from 1 (pure noise) down to 0
(data), so ``sigma_next - sigma < 0``. It is what diffusers' ``FlowMatchEulerDiscreteScheduler(shift=7.0)`` does and
what every upstream example passes.

Without it (``reverse=False``) upstream takes ``sigmas = 1 - shift(linspace(1, 0))``: time runs from 0 to 1 with the
*same* step sizes in reverse order, i.e. the mirrored time variable ``t' = 1 - sigma`` of a model trained with
t' = 0 as noise and t' = 1 as data (the Lipman/Liu rectified-flow convention), whose velocity is ``v' = -v``. The
Euler steps then have ``dt > 0`` and spend the same small steps near the noise end. Exactly: sampling a model ``g``
without reverse equals sampling ``f(x, t) = -g(x, 1000 - t)`` with reverse (tested). For the released HunyuanVideo
weights, which predict v in the reverse convention, sampling without ``--flow-reverse`` starts from noise labelled as
clean data and gives garbage, which is why the CLI defaults to reverse.
"""

from __future__ import annotations

import torch

__all__ = ["NUM_TRAIN_TIMESTEPS", "sd3_time_shift", "flow_match_sigmas", "timesteps_from_sigmas", "euler_step"]

NUM_TRAIN_TIMESTEPS = 1000
"""The model's timestep input is sigma times this."""


def sd3_time_shift(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    """``shift * sigma / (1 + (shift - 1) * sigma)``: fixes 0 and 1 and moves everything in between towards 1."""
    return (shift * sigmas) / (1 + (shift - 1) * sigmas)


def flow_match_sigmas(num_steps: int, shift: float = 7.0, reverse: bool = True) -> torch.Tensor:
    """The ``num_steps + 1`` float32 sigmas of a run: shifted ``linspace(1, 0)``, or one minus that without reverse."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if shift <= 0:
        raise ValueError(f"shift must be > 0, got {shift}")
    sigmas = sd3_time_shift(torch.linspace(1, 0, num_steps + 1), shift)
    return sigmas if reverse else 1 - sigmas


def timesteps_from_sigmas(sigmas: torch.Tensor) -> torch.Tensor:
    """(num_steps,) float32 timesteps fed to the model: sigma * 1000 for every step's starting sigma."""
    return (sigmas[:-1] * NUM_TRAIN_TIMESTEPS).to(torch.float32)


def euler_step(
    x: torch.Tensor, velocity: torch.Tensor, sigma: float | torch.Tensor, sigma_next: float | torch.Tensor
) -> torch.Tensor:
    """One Euler step of the flow ODE in float32: ``x + (sigma_next - sigma) * v``."""
    return x.to(torch.float32) + velocity.to(torch.float32) * (sigma_next - sigma)
