"""Class-conditional DiT sampling with an optional TaylorSeer cache, callable from Python.

    model = load_dit("DiT-XL/2", ckpt, image_size=256)
    diffusion = create_diffusion("50")
    cache = TaylorCache(TaylorSeerConfig(interval=5, max_order=3, first_enhance=2))
    result = sample_dit(model, diffusion, [207, 360], cfg_scale=1.5, cache=cache, ddim=True, seed=0)

The diffusion loops stay generic: the cache reaches the model through ``model_kwargs``, and the loop's
``on_step_begin`` hook tells it which step comes next, so the full-vs-forecast decision is made by the sampler.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from common.caching import CacheMethod

from .diffusion.gaussian_diffusion import GaussianDiffusion
from .models import DiT

__all__ = ["SamplingResult", "sample_dit", "decode_latents", "VAE_SCALE"]

# Latent scaling of the Stable Diffusion VAE that DiT was trained with.
VAE_SCALE = 0.18215


@dataclass
class SamplingResult:
    samples: torch.Tensor
    """(n, C, H, W) final samples in the model's space (VAE latents, or pixels for pixel-space models)."""
    seconds: float
    """Wall-clock time of the sampling loop (model forwards and sampler updates; no decoding)."""
    num_full_steps: int
    num_forecast_steps: int


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def sample_dit(
    model: DiT,
    diffusion: GaussianDiffusion,
    class_labels: Sequence[int],
    *,
    cfg_scale: float = 1.5,
    cache: CacheMethod | None = None,
    ddim: bool = True,
    seed: int = 0,
    noise: torch.Tensor | None = None,
    progress: bool = False,
    generator: torch.Generator | list[torch.Generator] | None = None,
) -> SamplingResult:
    """Sample one image per label. The same seed, labels and settings give the same samples.

    ``noise`` overrides the seeded initial noise (shape (n, C, H, W)); the seed still drives DDPM's per-step noise.
    ``generator`` overrides the seeded generator for the per-step noise only: one generator on the model's device, or a
    list of one generator per label (on any device), so that every sample's noise is its own whatever the batch.
    With ``cfg_scale > 1`` the batch is doubled with null labels and guided as upstream DiT does; a list of generators
    is doubled with it, so row i and its null-label copy n + i both draw from generator i.
    """
    if not math.isfinite(cfg_scale):
        # NaN or inf guidance turns every sample into NaN: refuse it rather than return black images.
        raise ValueError(f"cfg_scale must be a finite number, got {cfg_scale}")
    device = next(model.parameters()).device
    num_classes = model.y_embedder.num_classes
    labels = torch.as_tensor(list(class_labels), dtype=torch.long, device=device)
    if labels.ndim != 1 or len(labels) == 0:
        raise ValueError("class_labels must be a non-empty sequence of class indices")
    if bool(((labels < 0) | (labels >= num_classes)).any()):
        raise ValueError(f"class labels must be in [0, {num_classes - 1}], got {labels.tolist()}")

    seeded = torch.Generator(device=device).manual_seed(seed)
    shape = (len(labels), model.in_channels, model.input_size, model.input_size)
    if noise is None:
        noise = torch.randn(shape, generator=seeded, device=device)
    elif tuple(noise.shape) != shape:
        raise ValueError(f"noise must have shape {shape}, got {tuple(noise.shape)}")
    noise = noise.to(device)
    per_row = generator is not None and not isinstance(generator, torch.Generator)
    if generator is None:
        generator = seeded
    elif per_row and len(generator) != len(labels):
        raise ValueError(
            f"generator must be one torch.Generator or one per label, got {len(generator)} for {len(labels)}"
        )

    use_cfg = cfg_scale > 1.0
    if use_cfg:
        if model.y_embedder.dropout_prob <= 0:
            raise ValueError("cfg_scale > 1 needs a model trained with label dropout (it has no null class)")
        noise = torch.cat([noise, noise], dim=0)
        if per_row:
            generator = list(generator) + list(generator)
        labels = torch.cat([labels, torch.full_like(labels, num_classes)], dim=0)
        model_fn, model_kwargs = model.forward_with_cfg, {"y": labels, "cfg_scale": cfg_scale}
    else:
        model_fn, model_kwargs = model.forward, {"y": labels}

    on_step_begin = None
    if cache is not None:
        cache.reset(diffusion.num_timesteps)
        model_kwargs["cache"] = cache
        on_step_begin = cache.begin_step

    loop = diffusion.ddim_sample_loop if ddim else diffusion.p_sample_loop
    _synchronize(device)
    start = time.perf_counter()
    with torch.no_grad():
        samples = loop(
            model_fn,
            noise.shape,
            noise=noise,
            clip_denoised=False,
            model_kwargs=model_kwargs,
            device=device,
            progress=progress,
            generator=generator,
            on_step_begin=on_step_begin,
        )
    _synchronize(device)
    seconds = time.perf_counter() - start

    if use_cfg:
        samples, _ = samples.chunk(2, dim=0)  # drop the null-class half
    num_steps = diffusion.num_timesteps
    full = num_steps if cache is None else cache.num_full_steps
    return SamplingResult(samples, seconds, full, num_steps - full)


def decode_latents(vae, latents: torch.Tensor) -> torch.Tensor:
    """VAE latents -> images in [-1, 1]."""
    with torch.no_grad():
        return vae.decode(latents / VAE_SCALE).sample.clamp(-1, 1)
