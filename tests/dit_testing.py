"""Tiny DiT and VAE builders shared by the DiT tests."""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL

from taylorseer_dit.models import DiT


def randomised(model: DiT, seed: int = 0, std: float = 0.05) -> DiT:
    """Every parameter but the fixed sin-cos ``pos_embed`` drawn from N(0, std), in eval mode.

    DiT's own initialisation zeroes the adaLN gates and the final layer, which would make every block invisible.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name != "pos_embed":
                param.copy_(torch.randn(param.shape, generator=generator) * std)
    return model.eval()


def tiny_dit(
    *, depth: int = 2, patch_size: int = 2, input_size: int = 8, in_channels: int = 4, num_classes: int = 10, seed=0
) -> DiT:
    """A random DiT of the DiT-Tiny size (hidden 64, 4 heads) at any depth."""
    model = DiT(
        input_size=input_size,
        patch_size=patch_size,
        in_channels=in_channels,
        hidden_size=64,
        depth=depth,
        num_heads=4,
        num_classes=num_classes,
    )
    return randomised(model, seed)


def tiny_vae() -> AutoencoderKL:
    """An AutoencoderKL with SD's 4 latent channels but one tiny block (downsampling x1)."""
    torch.manual_seed(0)
    return AutoencoderKL(
        block_out_channels=(32,),
        down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=16,
    ).eval()
