"""Gaussian diffusion (DDPM/DDIM) with timestep respacing, written for the DiT tree; knows nothing of caching."""

from __future__ import annotations

from collections.abc import Sequence

from .gaussian_diffusion import GaussianDiffusion, LossType, ModelMeanType, ModelVarType
from .respace import SpacedDiffusion
from .schedules import get_named_beta_schedule, space_timesteps

__all__ = [
    "GaussianDiffusion",
    "LossType",
    "ModelMeanType",
    "ModelVarType",
    "SpacedDiffusion",
    "create_diffusion",
    "get_named_beta_schedule",
    "space_timesteps",
]


def _loss_type(use_kl: bool, rescale_learned_sigmas: bool) -> LossType:
    if use_kl:
        return LossType.RESCALED_KL
    if rescale_learned_sigmas:
        return LossType.RESCALED_MSE
    return LossType.MSE


def _var_type(sigma_small: bool, learn_sigma: bool) -> ModelVarType:
    if learn_sigma:
        return ModelVarType.LEARNED_RANGE
    return ModelVarType.FIXED_SMALL if sigma_small else ModelVarType.FIXED_LARGE


def create_diffusion(
    timestep_respacing: str | Sequence[int] | None,
    noise_schedule: str = "linear",
    use_kl: bool = False,
    sigma_small: bool = False,
    predict_xstart: bool = False,
    learn_sigma: bool = True,
    rescale_learned_sigmas: bool = False,
    diffusion_steps: int = 1000,
) -> SpacedDiffusion:
    """Build the diffusion DiT uses, with DiT's defaults (linear schedule, eps prediction, learned-range sigma).

    Args:
        timestep_respacing: None or "" for all ``diffusion_steps``; otherwise anything ``space_timesteps``
            accepts, e.g. "250", "ddim50" or "10,20".
    """
    betas = get_named_beta_schedule(noise_schedule, diffusion_steps)
    if timestep_respacing is None or timestep_respacing == "":
        timestep_respacing = [diffusion_steps]
    return SpacedDiffusion(
        use_timesteps=space_timesteps(diffusion_steps, timestep_respacing),
        betas=betas,
        model_mean_type=ModelMeanType.START_X if predict_xstart else ModelMeanType.EPSILON,
        model_var_type=_var_type(sigma_small, learn_sigma),
        loss_type=_loss_type(use_kl, rescale_learned_sigmas),
    )
