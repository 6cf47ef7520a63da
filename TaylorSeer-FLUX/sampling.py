"""FLUX.1 rectified-flow sampling (Black Forest Labs' ``flux.sampling``), with any caching method driven per step.

    img = get_noise(1, 1024, 1024, torch.bfloat16, seed=0, device="cuda")
    img_ids = image_ids(1, img.shape[-2] // 2, img.shape[-1] // 2)
    x = pack(img)
    timesteps = get_schedule(50, x.shape[1])
    x = denoise(model, x, img_ids, txt, txt_ids, vec, timesteps, guidance=3.5, cache=cache)
    latents = unpack(x, 1024, 1024)

Conventions as BFL: latents have 16 channels at 1/8 of the pixel size (rounded up to an even size); they are packed
into 2x2 patches, i.e. sequences of 64-channel tokens; times run from 1 (pure noise) to 0 (data) and the model
predicts the velocity v, so one Euler step is ``x <- x + (t_prev - t_curr) * v``.

The sampler knows nothing of the model's internals: it calls ``model(img=..., img_ids=..., txt=..., txt_ids=...,
timesteps=..., y=..., guidance=...)`` (plus ``cache=`` when a cache is given) and announces each step to the cache.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from einops import rearrange
from tqdm.auto import tqdm

from common.caching import CacheMethod

__all__ = [
    "LATENT_CHANNELS",
    "get_noise",
    "pack",
    "unpack",
    "image_ids",
    "text_ids",
    "time_shift",
    "get_lin_function",
    "get_schedule",
    "denoise",
]

LATENT_CHANNELS = 16
"""Channels of the FLUX autoencoder's latents."""


def get_noise(
    num_samples: int,
    height: int,
    width: int,
    dtype: torch.dtype | None,
    seed: int,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """(num_samples, 16, 2*ceil(height/16), 2*ceil(width/16)) standard normal latents, reproducible from ``seed``.

    The generator lives on ``device`` as in BFL's code, so the same seed gives different noise on CPU and CUDA.
    """
    generator = torch.Generator(device=device).manual_seed(seed)
    shape = (num_samples, LATENT_CHANNELS, 2 * math.ceil(height / 16), 2 * math.ceil(width / 16))
    return torch.randn(shape, device=device, dtype=dtype, generator=generator)


def pack(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) latents -> (B, H/2 * W/2, C * 4) tokens of 2x2 patches, row-major over the patch grid."""
    if latents.ndim != 4 or latents.shape[-2] % 2 or latents.shape[-1] % 2:
        raise ValueError(f"pack expects (B, C, H, W) latents with even H and W, got {tuple(latents.shape)}")
    return rearrange(latents, "b c (h ph) (w pw) -> b (h w) (c ph pw)", ph=2, pw=2)


def unpack(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`pack` for an image of ``height`` x ``width`` *pixels* (BFL's signature):
    (B, ceil(height/16) * ceil(width/16), C * 4) -> (B, C, 2*ceil(height/16), 2*ceil(width/16))."""
    h, w = math.ceil(height / 16), math.ceil(width / 16)
    if x.ndim != 3 or x.shape[1] != h * w:
        raise ValueError(f"unpack: {tuple(x.shape)} is not a packed {height}x{width} image ({h * w} tokens expected)")
    return rearrange(x, "b (h w) (c ph pw) -> b c (h ph) (w pw)", h=h, w=w, ph=2, pw=2)


def image_ids(
    batch: int, h_packed: int, w_packed: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """(batch, h_packed * w_packed, 3) position ids (0, row, col) of the packed tokens, in :func:`pack`'s order."""
    ids = torch.zeros(h_packed, w_packed, 3, device=device, dtype=dtype)
    ids[..., 1] = torch.arange(h_packed, device=device, dtype=ids.dtype)[:, None]
    ids[..., 2] = torch.arange(w_packed, device=device, dtype=ids.dtype)[None, :]
    return ids.reshape(1, h_packed * w_packed, 3).repeat(batch, 1, 1)


def text_ids(
    batch: int, length: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """(batch, length, 3) zeros: FLUX gives every text token the position (0, 0, 0)."""
    return torch.zeros(batch, length, 3, device=device, dtype=dtype)


def time_shift(mu: float, sigma: float, t: float) -> float:
    """exp(mu) / (exp(mu) + (1/t - 1)^sigma), with the limit 0 at t = 0 (and 1 at t = 1)."""
    if t <= 0:
        return 0.0
    return math.exp(mu) / (math.exp(mu) + (1 / t - 1) ** sigma)


def get_lin_function(x1: float = 256, y1: float = 0.5, x2: float = 4096, y2: float = 1.15) -> Callable[[float], float]:
    """The line through (x1, y1) and (x2, y2): image sequence length -> shift mu."""
    m = (y2 - y1) / (x2 - x1)
    b = y1 - m * x1
    return lambda x: m * x + b


def get_schedule(
    num_steps: int,
    image_seq_len: int,
    base_shift: float = 0.5,
    max_shift: float = 1.15,
    shift: bool = True,
) -> list[float]:
    """``num_steps + 1`` times from 1 down to 0: linspace(1, 0), shifted towards 1 (more steps at high noise) by
    mu = the linear function of ``image_seq_len`` through (256, base_shift) and (4096, max_shift). FLUX-dev uses the
    shift, FLUX-schnell does not (``shift=False``: plain linspace)."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    timesteps = torch.linspace(1, 0, num_steps + 1, dtype=torch.float64).tolist()
    if shift:
        mu = get_lin_function(y1=base_shift, y2=max_shift)(image_seq_len)
        timesteps = [time_shift(mu, 1.0, t) for t in timesteps]
    return timesteps


@torch.no_grad()
def denoise(
    model: torch.nn.Module,
    img: torch.Tensor,
    img_ids: torch.Tensor,
    txt: torch.Tensor,
    txt_ids: torch.Tensor,
    vec: torch.Tensor,
    timesteps: Sequence[float],
    guidance: float = 3.5,
    cache: CacheMethod | None = None,
    on_step: Callable[[int, float], None] | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Euler integration of the flow from ``timesteps[0]`` to ``timesteps[-1]``; returns the final packed latents.

    ``img`` (B, L, 64) packed noise, ``txt`` (B, L_txt, C) text embeddings, ``vec`` (B, D) pooled text vector.
    ``guidance`` is the distilled guidance scale, passed as a (B,) vector; models without a guidance embedder ignore it.
    With a ``cache`` (any :class:`~common.caching.CacheMethod`), it is reset first with the run's step count (Δ-DiT
    places its boundary by it, TeaCache always computes the last step) and step ``i`` (0 .. len(timesteps) - 2) is
    announced with ``cache.begin_step(i)`` right before the i-th model call; ``on_step(i, t_curr)`` is called before
    each step.
    """
    if len(timesteps) < 2:
        raise ValueError(f"need at least two timesteps (one step), got {len(timesteps)}")
    batch = img.shape[0]
    # Always passed: models without a guidance embedder (FLUX-schnell) ignore it, as BFL's Flux.forward does.
    guidance_vec = torch.full((batch,), guidance, device=img.device, dtype=img.dtype)
    extra = {} if cache is None else {"cache": cache}
    pairs = list(zip(timesteps[:-1], timesteps[1:], strict=True))
    if cache is not None:
        cache.reset(len(pairs))
    for i, (t_curr, t_prev) in enumerate(tqdm(pairs, disable=not progress, desc="FLUX steps", leave=False)):
        if on_step is not None:
            on_step(i, t_curr)
        if cache is not None:
            cache.begin_step(i)
        t_vec = torch.full((batch,), t_curr, device=img.device, dtype=img.dtype)
        pred = model(
            img=img,
            img_ids=img_ids,
            txt=txt,
            txt_ids=txt_ids,
            y=vec,
            timesteps=t_vec,
            guidance=guidance_vec,
            **extra,
        )
        img = img + (t_prev - t_curr) * pred
    return img
