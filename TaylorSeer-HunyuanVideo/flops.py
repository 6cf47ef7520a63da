"""FLOPs of HunyuanVideo sampling with TaylorSeer, counted outside the model.

Convention ``matmul``: every matrix product of one transformer forward (patch embedding, timestep/guidance/text
embeddings, the text token refiner, modulations, qkv/output projections, the attention's q @ k^T and attn @ v, MLPs,
final layer) as 2 x MACs, measured with ``torch.utils.flop_counter`` on the meta device (no weights, no memory).
Elementwise work (norms, RoPE, softmax, activations) is not counted. The reference's calflops count (reference-semantics
§4.5) is ~595.4 TFLOPs per full HYVideo-T/2-cfgdistill step at 480x640, 65 frames and 256 text tokens (20400 video +
256 text tokens, 60 blocks of ~9.92 TFLOPs). A forecast step costs only what runs outside the cached modules: the
embeddings, the token refiner, every block's modulation and the final layer.

The count assumes unpadded text (every one of ``text_len`` tokens attended), as the reference's FLOPs mode does.
"""

from __future__ import annotations

import torch

from common.flops import FlopsReport, full_and_forecast_flops
from common.taylor_cache import TaylorSeerConfig

from .model import HUNYUAN_VIDEO_PRESETS, HunyuanVideo
from .pipeline import latent_shape

__all__ = ["hunyuan_latent_shape", "hunyuan_step_flops", "hunyuan_flops_report"]

CONVENTION = "matmul"


def hunyuan_latent_shape(height: int, width: int, video_length: int) -> tuple[int, int, int]:
    """(T, H, W) latent grid of a ``video_length``-frame ``height`` x ``width`` video: :func:`.pipeline.latent_shape`
    without the channels (and its size checks)."""
    return latent_shape(height, width, video_length)[1:]


def hunyuan_step_flops(
    model: HunyuanVideo, batch: int, latent_shape: tuple[int, int, int], text_len: int
) -> tuple[float, float]:
    """(full step, forecast step) FLOPs of one forward of ``batch`` samples with a (T, H, W) latent and ``text_len``
    text tokens; measured on the model's device, so a model built on the meta device costs nothing to count."""
    params = model.params
    device = next(model.parameters()).device
    x = torch.zeros(batch, params.in_channels, *latent_shape, device=device)
    t = torch.zeros(batch, device=device)
    text_states = torch.zeros(batch, text_len, params.text_states_dim, device=device)
    text_states_2 = torch.zeros(batch, params.text_states_dim_2, device=device)
    guidance = torch.zeros(batch, device=device) if params.guidance_embed else None
    # text_mask None: no padding.
    return full_and_forecast_flops(lambda cache: model(x, t, text_states, None, text_states_2, guidance, cache=cache))


def hunyuan_flops_report(
    name: str,
    height: int,
    width: int,
    video_length: int,
    text_len: int,
    num_steps: int,
    config: TaylorSeerConfig,
    batch: int = 1,
) -> FlopsReport:
    """FLOPs of a ``num_steps``-step run of preset ``name`` for a ``video_length``-frame ``height`` x ``width`` video,
    ``text_len`` text tokens and ``batch`` samples, under the TaylorSeer schedule ``config``."""
    if name not in HUNYUAN_VIDEO_PRESETS:
        raise ValueError(f"unknown HunyuanVideo preset {name!r}; choose from {sorted(HUNYUAN_VIDEO_PRESETS)}")
    with torch.device("meta"):
        model = HunyuanVideo(HUNYUAN_VIDEO_PRESETS[name]).eval()
    full, forecast = hunyuan_step_flops(model, batch, hunyuan_latent_shape(height, width, video_length), text_len)
    return FlopsReport.for_schedule(CONVENTION, full, forecast, num_steps, config)
