"""Tiny FLUX components with random weights, written as a complete offline checkpoint folder.

:func:`save_tiny_flux_checkpoint` writes the layout of black-forest-labs/FLUX.1-dev at toy sizes: a diffusers
``transformer/`` (sharded, with its index json), ``vae/``, ``text_encoder/`` + ``tokenizer/`` (CLIP),
``text_encoder_2/`` + ``tokenizer_2/`` (T5), and BFL's single files ``flux1-dev.safetensors`` (or
``flux1-schnell.safetensors``) and ``ae.safetensors`` holding the same weights. Everything is seeded, so the same
arguments always write the same folder.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from diffusers import AutoencoderKL, FluxTransformer2DModel
from safetensors.torch import save_file
from tiny_text_models import save_tiny_clip_text_encoder, save_tiny_t5_encoder

from taylorseer_flux.autoencoder import FLUX_AE_CONFIG, diffusers_ae_to_bfl
from taylorseer_flux.diffusers_format import bfl_to_diffusers, diffusers_config
from taylorseer_flux.model import FLUX_PRESETS, Flux, FluxParams

__all__ = [
    "TINY_DEV",
    "TINY_SCHNELL",
    "TINY_AE_CONFIG",
    "tiny_flux",
    "tiny_autoencoder",
    "save_tiny_transformer",
    "save_tiny_flux_checkpoint",
]

TINY_DEV = FLUX_PRESETS["flux-tiny"]
TINY_SCHNELL = replace(TINY_DEV, guidance_embed=False)
# Four levels (8x downsampling, as FLUX's AE); 32 channels per norm group as BFL's code hard-codes; the channel
# count changes at the third level so that resnet shortcut convs exist and get converted.
TINY_AE_CONFIG = {**FLUX_AE_CONFIG, "block_out_channels": [32, 32, 64, 64], "layers_per_block": 1}
SHARD_SIZE = "200KB"


def tiny_flux(params: FluxParams = TINY_DEV, seed: int = 0) -> Flux:
    """Every parameter random (RMSNorm scales near 1, the rest small), so that no block is a no-op."""
    model = Flux(params).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            param.copy_(1 + 0.1 * noise if name.endswith(".scale") else 0.1 * noise)
    return model


def tiny_autoencoder(seed: int = 0) -> AutoencoderKL:
    torch.manual_seed(seed)
    return AutoencoderKL(**TINY_AE_CONFIG).eval()


def save_tiny_transformer(root: str | Path, params: FluxParams = TINY_DEV, seed: int = 0) -> Flux:
    """Write ``{root}/transformer/`` as diffusers does for FLUX.1-dev (config.json, shards and their index json);
    returns the same model in our BFL-named class."""
    model = tiny_flux(params, seed)
    twin = FluxTransformer2DModel(**diffusers_config(params))
    twin.load_state_dict(bfl_to_diffusers(model.state_dict()), strict=True)
    twin.save_pretrained(Path(root) / "transformer", max_shard_size=SHARD_SIZE)
    return model


def save_tiny_flux_checkpoint(root: str | Path, *, guidance_embed: bool = True, seed: int = 0) -> Path:
    """Write a complete tiny FLUX checkpoint folder (see the module docstring) and return it.

    The text encoders' widths are the tiny transformer's: T5 d_model = context_in_dim, CLIP hidden = vec_in_dim.
    """
    root = Path(root)
    params = TINY_DEV if guidance_embed else TINY_SCHNELL
    model = save_tiny_transformer(root, params, seed)
    bfl_name = "flux1-dev.safetensors" if guidance_embed else "flux1-schnell.safetensors"
    save_file(model.state_dict(), str(root / bfl_name))

    vae = tiny_autoencoder(seed)
    vae.save_pretrained(root / "vae")
    bfl_ae = {key: tensor.contiguous() for key, tensor in diffusers_ae_to_bfl(vae.state_dict()).items()}
    save_file(bfl_ae, str(root / "ae.safetensors"))

    save_tiny_clip_text_encoder(root / "text_encoder", root / "tokenizer", hidden_size=params.vec_in_dim, seed=seed)
    save_tiny_t5_encoder(
        root / "text_encoder_2", root / "tokenizer_2", d_model=params.context_in_dim, max_length=512, seed=seed
    )
    return root
