"""HunyuanVideo's causal 3D VAE ("884-16c-hy": 8x spatial, 4x temporal, 16 channels) through diffusers.

Decoding uses diffusers' ``AutoencoderKLHunyuanVideo``. Two folder layouts are read:

* diffusers (``hunyuanvideo-community/HunyuanVideo/vae``): ``config.json`` naming ``AutoencoderKLHunyuanVideo`` and
  ``diffusion_pytorch_model.safetensors``, loaded with ``from_pretrained``;
* upstream (``tencent/HunyuanVideo``: ``ckpts/hunyuan-video-t2v-720p/vae``): ``config.json`` of upstream's
  ``AutoencoderKLCausal3D`` and ``pytorch_model.pt``. Its module tree is the one diffusers' class reproduces, so the
  weights keep their names (diffusers' own ``scripts/convert_hunyuan_video_to_diffusers.py`` loads them strictly
  with an empty rename table); :func:`official_vae_state_dict` only unwraps ``state_dict`` and strips the ``vae.``
  prefix of training checkpoints, as upstream ``hyvideo/vae/__init__.py`` does, and the loader then checks every
  key and shape against the model (``common.checkpoint.load_state_dict_checked``).

Latents are divided by the config's ``scaling_factor`` (0.476986) before decoding. Tiling is diffusers' (256-pixel
tiles with 64-pixel overlap, 16-frame windows): it bounds memory at 720p but blends tiles differently from upstream's
own tiled decoder, so tiled videos match upstream's up to the blending at tile seams.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

__all__ = [
    "OFFICIAL_VAE_WEIGHTS",
    "official_vae_config",
    "official_vae_state_dict",
    "decode_latents",
]

OFFICIAL_VAE_WEIGHTS = "pytorch_model.pt"
"""Weights file of an upstream-layout VAE folder."""

_OFFICIAL_DOWN_BLOCK = "DownEncoderBlockCausal3D"
_OFFICIAL_UP_BLOCK = "UpDecoderBlockCausal3D"
_DIFFUSERS_DOWN_BLOCK = "HunyuanVideoDownBlock3D"
_DIFFUSERS_UP_BLOCK = "HunyuanVideoUpBlock3D"
# Upstream config fields that diffusers' class takes under the same name.
_SAME_NAME_FIELDS = (
    "in_channels",
    "out_channels",
    "latent_channels",
    "block_out_channels",
    "layers_per_block",
    "act_fn",
    "norm_num_groups",
    "scaling_factor",
    "mid_block_add_attention",
)
# Upstream fields that only size its own tiling or training: no counterpart in the diffusers model.
_IGNORED_FIELDS = ("sample_size", "sample_tsize", "force_upcast", "_class_name", "_diffusers_version")


def official_vae_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """``AutoencoderKLHunyuanVideo`` keyword arguments for an upstream ``AutoencoderKLCausal3D`` config.json."""
    unknown = sorted(set(config) - set(_SAME_NAME_FIELDS) - set(_IGNORED_FIELDS) - {
        "down_block_types", "up_block_types", "time_compression_ratio", "spatial_compression_ratio"
    })  # fmt: skip
    if unknown:
        raise ValueError(f"unexpected fields in an AutoencoderKLCausal3D config: {', '.join(unknown)}")
    kwargs = {name: config[name] for name in _SAME_NAME_FIELDS if name in config}
    down = list(config.get("down_block_types", []))
    up = list(config.get("up_block_types", []))
    if any(block != _OFFICIAL_DOWN_BLOCK for block in down) or any(block != _OFFICIAL_UP_BLOCK for block in up):
        raise ValueError(
            f"only {_OFFICIAL_DOWN_BLOCK}/{_OFFICIAL_UP_BLOCK} blocks have a diffusers counterpart, got {down} / {up}"
        )
    if down:
        kwargs["down_block_types"] = tuple(_DIFFUSERS_DOWN_BLOCK for _ in down)
    if up:
        kwargs["up_block_types"] = tuple(_DIFFUSERS_UP_BLOCK for _ in up)
    if "time_compression_ratio" in config:
        kwargs["temporal_compression_ratio"] = config["time_compression_ratio"]
    blocks = config.get("block_out_channels")
    spatial = config.get("spatial_compression_ratio")
    if spatial is None and blocks is not None:
        spatial = 2 ** (len(blocks) - 1)  # one 2x downsampling per block but the last, as upstream computes it
    if spatial is not None:
        kwargs["spatial_compression_ratio"] = spatial
    return kwargs


def official_vae_state_dict(checkpoint: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The VAE weights of an upstream ``pytorch_model.pt``, under diffusers' names (which are upstream's names).

    Accepts a flat state dict, one nested under ``state_dict``, and training checkpoints whose VAE keys carry a
    ``vae.`` prefix (the other keys are then not the VAE's and are dropped, as upstream does).
    """
    state = checkpoint.get("state_dict", checkpoint)
    if not isinstance(state, Mapping):
        raise ValueError("the VAE checkpoint's 'state_dict' entry is not a dict of tensors")
    if any(key.startswith("vae.") for key in state):
        state = {key[len("vae.") :]: value for key, value in state.items() if key.startswith("vae.")}
    return dict(state)


@torch.no_grad()
def decode_latents(vae: torch.nn.Module, latents: torch.Tensor, tiling: bool = True) -> torch.Tensor:
    """(B, 16, T', H/8, W/8) denoised latents -> (B, 3, 4(T'-1)+1, H, W) float32 video in [-1, 1] (clamped)."""
    if tiling:
        vae.enable_tiling()
    else:
        vae.disable_tiling()
    parameter = next(vae.parameters())
    latents = latents.to(device=parameter.device, dtype=parameter.dtype) / vae.config.scaling_factor
    video = vae.decode(latents, return_dict=False)[0]
    return video.float().clamp(-1, 1)
