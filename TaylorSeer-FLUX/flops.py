"""FLOPs of FLUX sampling with TaylorSeer, counted outside the model.

Convention ``matmul``: every matrix product of one forward (embeddings, modulations, qkv/output projections, the
attention's q @ k^T and attn @ v, MLPs, final layer) as 2 x MACs, measured with ``torch.utils.flop_counter`` on the
meta device (no weights, no memory). Elementwise work (norms, RoPE, softmax, activations) is not counted. This is
what the reference's calflops count with a naive (matmul) attention reports for the transformer: ~74.4 TFLOPs per
full FLUX-dev step at 1024x1024 with 512 text tokens. A forecast step costs only what runs outside the cached
modules: input embeddings, every block's modulation and the final layer.
"""

from __future__ import annotations

import math

import torch

from common.flops import FlopsReport, full_and_forecast_flops
from common.taylor_cache import TaylorSeerConfig

from .model import FLUX_PRESETS, Flux

__all__ = ["flux_step_flops", "flux_flops_report", "flux_image_seq_len"]

CONVENTION = "matmul"


def flux_image_seq_len(width: int, height: int) -> int:
    """Packed image tokens of a ``width`` x ``height`` pixel image: one per 16x16 pixels (8x VAE, 2x2 patches)."""
    return math.ceil(height / 16) * math.ceil(width / 16)


def flux_step_flops(model: Flux, batch: int, image_seq_len: int, text_len: int) -> tuple[float, float]:
    """(full step, forecast step) FLOPs of one forward of ``batch`` samples; measured on the model's device, so a
    model built on the meta device costs nothing to count."""
    params = model.params
    device = next(model.parameters()).device
    img = torch.zeros(batch, image_seq_len, params.in_channels, device=device)
    img_ids = torch.zeros(batch, image_seq_len, 3, device=device)
    txt = torch.zeros(batch, text_len, params.context_in_dim, device=device)
    txt_ids = torch.zeros(batch, text_len, 3, device=device)
    timesteps = torch.zeros(batch, device=device)
    y = torch.zeros(batch, params.vec_in_dim, device=device)
    guidance = torch.zeros(batch, device=device) if params.guidance_embed else None
    return full_and_forecast_flops(
        lambda cache: model(img, img_ids, txt, txt_ids, timesteps, y, guidance=guidance, cache=cache)
    )


def flux_flops_report(
    params_name: str,
    width: int,
    height: int,
    text_len: int,
    num_steps: int,
    config: TaylorSeerConfig,
    batch: int = 1,
) -> FlopsReport:
    """FLOPs of a ``num_steps``-step run of preset ``params_name`` at ``width`` x ``height`` pixels, ``text_len``
    text tokens and ``batch`` samples, under the TaylorSeer schedule ``config``."""
    if params_name not in FLUX_PRESETS:
        raise ValueError(f"unknown FLUX preset {params_name!r}; choose from {sorted(FLUX_PRESETS)}")
    with torch.device("meta"):
        model = Flux(FLUX_PRESETS[params_name]).eval()
    full, forecast = flux_step_flops(model, batch, flux_image_seq_len(width, height), text_len)
    return FlopsReport.for_schedule(CONVENTION, full, forecast, num_steps, config)
