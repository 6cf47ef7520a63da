"""Diffusion over a subset of the original timesteps (e.g. 250 of 1000) without retraining."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

from .gaussian_diffusion import GaussianDiffusion, ModelFn
from .schedules import space_timesteps

__all__ = ["SpacedDiffusion", "space_timesteps"]


class SpacedDiffusion(GaussianDiffusion):
    """A GaussianDiffusion that keeps only ``use_timesteps`` of a base process.

    Betas are rebuilt so that alphas_cumprod at the kept steps equal the base process's, and every model
    (and cond_fn) call is routed through a wrapper that maps spaced indices back to original timesteps, which is
    what the network was trained on.

    Args:
        use_timesteps: original timesteps to keep (e.g. from ``space_timesteps``).
        **kwargs: ``GaussianDiffusion`` arguments describing the base (unspaced) process.
    """

    def __init__(self, use_timesteps: Iterable[int], **kwargs: Any) -> None:
        self.use_timesteps = set(use_timesteps)
        self.original_num_steps = len(kwargs["betas"])
        base_diffusion = GaussianDiffusion(**kwargs)
        self.timestep_map: list[int] = []
        new_betas = []
        last_alpha_cumprod = 1.0
        for i, alpha_cumprod in enumerate(base_diffusion.alphas_cumprod):
            if i in self.use_timesteps:
                new_betas.append(1 - alpha_cumprod / last_alpha_cumprod)
                last_alpha_cumprod = alpha_cumprod
                self.timestep_map.append(i)
        kwargs["betas"] = np.array(new_betas)
        super().__init__(**kwargs)

    def p_mean_variance(self, model: ModelFn, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return super().p_mean_variance(self._wrap_model(model), *args, **kwargs)

    def training_losses(self, model: ModelFn, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        return super().training_losses(self._wrap_model(model), *args, **kwargs)

    def condition_mean(self, cond_fn: ModelFn, *args: Any, **kwargs: Any) -> torch.Tensor:
        return super().condition_mean(self._wrap_model(cond_fn), *args, **kwargs)

    def condition_score(self, cond_fn: ModelFn, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return super().condition_score(self._wrap_model(cond_fn), *args, **kwargs)

    def _wrap_model(self, model: ModelFn) -> _WrappedModel:
        if isinstance(model, _WrappedModel):
            return model
        return _WrappedModel(model, self.timestep_map, self.original_num_steps)


class _WrappedModel:
    """Calls ``model`` with original timesteps in place of spaced indices (no rescaling to [0, 1000))."""

    def __init__(self, model: ModelFn, timestep_map: list[int], original_num_steps: int) -> None:
        self.model = model
        self.timestep_map = timestep_map
        self.original_num_steps = original_num_steps

    def __call__(self, x: torch.Tensor, ts: torch.Tensor, **kwargs: Any) -> Any:
        map_tensor = torch.tensor(self.timestep_map, device=ts.device, dtype=ts.dtype)
        return self.model(x, map_tensor[ts], **kwargs)
