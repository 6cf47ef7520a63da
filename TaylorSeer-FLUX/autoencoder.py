"""FLUX's autoencoder as diffusers' ``AutoencoderKL``, from a diffusers ``vae/`` folder or BFL's ``ae.safetensors``.

FLUX's AE (16 latent channels, 8x downsampling, no quant convs) is published twice: as ``ae.safetensors`` in Black
Forest Labs' layout (``flux.modules.autoencoder.AutoEncoder``) and as the ``vae/`` folder of the diffusers pipeline.
Both hold the same numbers; :func:`bfl_ae_to_diffusers` and :func:`diffusers_ae_to_bfl` map one onto the other:

=====================================================  ==========================================================
BFL (``ae.safetensors``)                                diffusers (``AutoencoderKL``)
=====================================================  ==========================================================
``encoder.down.{i}.block.{j}.*``                        ``encoder.down_blocks.{i}.resnets.{j}.*``
``encoder.down.{i}.downsample.conv``                    ``encoder.down_blocks.{i}.downsamplers.0.conv``
``decoder.up.{n-1-i}.block.{j}.*``                      ``decoder.up_blocks.{i}.resnets.{j}.*`` (levels REVERSED)
``decoder.up.{n-1-i}.upsample.conv``                    ``decoder.up_blocks.{i}.upsamplers.0.conv``
``{enc,dec}oder.mid.block_1`` / ``block_2``             ``{enc,dec}oder.mid_block.resnets.0`` / ``.1``
``{enc,dec}oder.mid.attn_1.norm``                       ``{enc,dec}oder.mid_block.attentions.0.group_norm``
``{enc,dec}oder.mid.attn_1.{q,k,v,proj_out}`` (1x1 conv) ``...attentions.0.{to_q,to_k,to_v,to_out.0}`` (linear)
``*.nin_shortcut``                                      ``*.conv_shortcut``
``{enc,dec}oder.norm_out``                              ``{enc,dec}oder.conv_norm_out``
=====================================================  ==========================================================

BFL's decoder stores its levels from the highest resolution (``up.0``) to the lowest, while diffusers stores them in
the order they run (lowest resolution first). Both conversions consume every key exactly once (no key is silently
dropped) and infer the depth from the keys. diffusers' own ``convert_ldm_vae_checkpoint`` does the same renaming
with substring replacement and no check for leftovers; the tests compare the two.

Latent convention (BFL's ``AutoEncoder.decode``, diffusers' ``FluxPipeline``): the sampler's latents are scaled,
the decoder sees ``latents / scaling_factor + shift_factor``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from common.checkpoint import CheckpointError, KeyPool, load_state_dict_checked, read_state_dict, require_path
from common.key_mapping import infer_depth

if TYPE_CHECKING:
    from diffusers import AutoencoderKL

__all__ = [
    "FLUX_AE_CONFIG",
    "bfl_ae_to_diffusers",
    "diffusers_ae_to_bfl",
    "ae_config_from_bfl",
    "load_autoencoder",
    "decode_latents",
]

Tensor = torch.Tensor

FLUX_AE_CONFIG: dict[str, object] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "act_fn": "silu",
    "latent_channels": 16,
    "norm_num_groups": 32,
    "sample_size": 1024,
    "scaling_factor": 0.3611,
    "shift_factor": 0.1159,
    "force_upcast": True,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
    "mid_block_add_attention": True,
}
"""``AutoencoderKL`` arguments of FLUX's AE (the ``vae/config.json`` of black-forest-labs/FLUX.1-dev)."""

# What BFL's layout cannot express, fixed in its code: every GroupNorm has 32 groups, and there are no quant convs.
BFL_NORM_GROUPS = 32
PARAMS = ("weight", "bias")
RESNET_MODULES = (("norm1", "norm1"), ("conv1", "conv1"), ("norm2", "norm2"), ("conv2", "conv2"))
SHORTCUT = ("nin_shortcut", "conv_shortcut")
ATTENTION_NORM = ("norm", "group_norm")
# 1x1 convolutions in BFL, linear layers in diffusers: the weight gains / loses two trailing unit dimensions.
ATTENTION_PROJECTIONS = (("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("proj_out", "to_out.0"))
DIFFUSERS_CONFIG_FILE = "config.json"


def _module_pairs(levels: int, encoder_blocks: int, decoder_blocks: int) -> Iterator[tuple[str, str, str]]:
    """(BFL module, diffusers module, kind) for every module with parameters, in a fixed order.

    kind: ``"plain"``; ``"projection"`` (1x1 conv in BFL, linear in diffusers); ``"shortcut"`` (present only in the
    resnets that change their channel count, so taken only when the source has it).
    """

    def resnet(side: str, bfl: str, theirs: str) -> Iterator[tuple[str, str, str]]:
        for ours_name, their_name in RESNET_MODULES:
            yield f"{side}.{bfl}.{ours_name}", f"{side}.{theirs}.{their_name}", "plain"
        yield f"{side}.{bfl}.{SHORTCUT[0]}", f"{side}.{theirs}.{SHORTCUT[1]}", "shortcut"

    def middle(side: str) -> Iterator[tuple[str, str, str]]:
        yield from resnet(side, "mid.block_1", "mid_block.resnets.0")
        attn, their_attn = f"{side}.mid.attn_1", f"{side}.mid_block.attentions.0"
        yield f"{attn}.{ATTENTION_NORM[0]}", f"{their_attn}.{ATTENTION_NORM[1]}", "plain"
        for ours_name, their_name in ATTENTION_PROJECTIONS:
            yield f"{attn}.{ours_name}", f"{their_attn}.{their_name}", "projection"
        yield from resnet(side, "mid.block_2", "mid_block.resnets.1")

    yield "encoder.conv_in", "encoder.conv_in", "plain"
    for i in range(levels):
        for j in range(encoder_blocks):
            yield from resnet("encoder", f"down.{i}.block.{j}", f"down_blocks.{i}.resnets.{j}")
        if i != levels - 1:
            yield f"encoder.down.{i}.downsample.conv", f"encoder.down_blocks.{i}.downsamplers.0.conv", "plain"
    yield from middle("encoder")
    yield "encoder.norm_out", "encoder.conv_norm_out", "plain"
    yield "encoder.conv_out", "encoder.conv_out", "plain"

    yield "decoder.conv_in", "decoder.conv_in", "plain"
    yield from middle("decoder")
    for i in range(levels):
        bfl_level = levels - 1 - i  # BFL numbers the decoder's levels from the output end
        for j in range(decoder_blocks):
            yield from resnet("decoder", f"up.{bfl_level}.block.{j}", f"up_blocks.{i}.resnets.{j}")
        if bfl_level != 0:
            yield f"decoder.up.{bfl_level}.upsample.conv", f"decoder.up_blocks.{i}.upsamplers.0.conv", "plain"
    yield "decoder.norm_out", "decoder.conv_norm_out", "plain"
    yield "decoder.conv_out", "decoder.conv_out", "plain"


def _convert(state_dict: Mapping[str, Tensor], to_diffusers: bool) -> dict[str, Tensor]:
    layout = "BFL FLUX autoencoder (ae.safetensors)" if to_diffusers else "diffusers FLUX autoencoder (AutoencoderKL)"
    if to_diffusers:
        encoder, decoder, blocks = "encoder.down", "decoder.up", "block"
    else:
        encoder, decoder, blocks = "encoder.down_blocks", "decoder.up_blocks", "resnets"
    levels = infer_depth(state_dict, encoder)
    if levels == 0:
        raise CheckpointError(f"State dict is not a {layout}: it has no {encoder}.0.* keys.")
    encoder_blocks = infer_depth(state_dict, f"{encoder}.0.{blocks}")
    decoder_blocks = infer_depth(state_dict, f"{decoder}.0.{blocks}")
    pool = KeyPool(state_dict, layout)
    out: dict[str, Tensor] = {}
    for bfl, theirs, kind in _module_pairs(levels, encoder_blocks, decoder_blocks):
        source, target = (bfl, theirs) if to_diffusers else (theirs, bfl)
        if kind == "shortcut" and f"{source}.weight" not in state_dict:
            continue
        for param in PARAMS:
            tensor = pool.take(f"{source}.{param}")
            if tensor is None:
                continue
            if kind == "projection" and param == "weight":
                tensor = tensor.reshape(tensor.shape[:2]) if to_diffusers else tensor[:, :, None, None]
            out[f"{target}.{param}"] = tensor
    pool.finish()
    return out


def bfl_ae_to_diffusers(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """BFL ``ae.safetensors`` keys -> ``AutoencoderKL`` keys; refuses missing or leftover keys."""
    return _convert(state_dict, to_diffusers=True)


def diffusers_ae_to_bfl(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``AutoencoderKL`` keys -> BFL ``ae.safetensors`` keys (the inverse of :func:`bfl_ae_to_diffusers`)."""
    if any(key.startswith(("quant_conv.", "post_quant_conv.")) for key in state_dict):
        raise CheckpointError("This AutoencoderKL has quant convs: it is not FLUX's AE, which BFL's layout describes.")
    return _convert(state_dict, to_diffusers=False)


def ae_config_from_bfl(state_dict: Mapping[str, Tensor]) -> dict[str, object]:
    """``AutoencoderKL`` arguments for a BFL-layout AE: channel counts and depth read from the weights' shapes,
    everything else (32 norm groups, scaling and shift factors, no quant convs) fixed as in FLUX's AE. For the
    published ``ae.safetensors`` this is exactly :data:`FLUX_AE_CONFIG`."""
    try:
        levels = infer_depth(state_dict, "encoder.down")
        block_out = [int(state_dict[f"encoder.down.{i}.block.0.conv1.weight"].shape[0]) for i in range(levels)]
        layers = infer_depth(state_dict, "encoder.down.0.block")
        latent_channels = int(state_dict["decoder.conv_in.weight"].shape[1])
        in_channels = int(state_dict["encoder.conv_in.weight"].shape[1])
        out_channels = int(state_dict["decoder.conv_out.weight"].shape[0])
    except KeyError as err:
        raise CheckpointError(f"State dict is not a BFL FLUX autoencoder: it lacks {err}") from err
    if levels == 0:
        raise CheckpointError("State dict is not a BFL FLUX autoencoder: it has no encoder.down.* keys")
    return {
        **FLUX_AE_CONFIG,
        "in_channels": in_channels,
        "out_channels": out_channels,
        "down_block_types": ["DownEncoderBlock2D"] * levels,
        "up_block_types": ["UpDecoderBlock2D"] * levels,
        "block_out_channels": block_out,
        "layers_per_block": layers,
        "latent_channels": latent_channels,
        "norm_num_groups": BFL_NORM_GROUPS,
    }


def load_autoencoder(path: str | Path, dtype: torch.dtype = torch.float32) -> AutoencoderKL:
    """FLUX's AE in eval mode on the CPU: ``path`` is a diffusers ``vae/`` folder (loaded offline with
    ``local_files_only=True``) or a BFL ``ae.safetensors`` file (converted with :func:`bfl_ae_to_diffusers`)."""
    from diffusers import AutoencoderKL  # diffusers takes seconds to import; FLOPs counting needs none of it

    path = require_path(path, "FLUX autoencoder", "Pass a diffusers vae/ folder or BFL's ae.safetensors.")
    if path.is_dir():
        require_path(path / DIFFUSERS_CONFIG_FILE, "Autoencoder config", "A diffusers vae/ folder holds config.json.")
        try:
            vae = AutoencoderKL.from_pretrained(path, local_files_only=True, torch_dtype=dtype)
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"Could not load the autoencoder from {path.absolute()}:\n  {exc}") from exc
        return vae.eval().requires_grad_(False)
    state_dict = read_state_dict(path)
    config = ae_config_from_bfl(state_dict)
    # Cast here rather than with vae.to(dtype), which diffusers warns about for models built outside from_pretrained.
    converted = {key: tensor.to(dtype) for key, tensor in bfl_ae_to_diffusers(state_dict).items()}
    with torch.device("meta"):
        vae = AutoencoderKL(**config)
    load_state_dict_checked(
        vae,
        converted,
        str(path.absolute()),
        model_desc="FLUX autoencoder (AutoencoderKL with the architecture read from the file's shapes)",
        hint="The file is not a consistent BFL FLUX autoencoder (ae.safetensors): download it again.",
    )
    return vae.eval().requires_grad_(False)


@torch.no_grad()
def decode_latents(vae: AutoencoderKL, latents: torch.Tensor) -> torch.Tensor:
    """(B, 16, H/8, W/8) sampler latents -> (B, 3, H, W) images in [-1, 1] (float32, on the latents' device).

    The sampler works in scaled latents; the decoder expects ``latents / scaling_factor + shift_factor``.
    """
    config = vae.config
    z = latents / config.scaling_factor + config.shift_factor
    parameter = next(vae.parameters())
    images = vae.decode(z.to(device=parameter.device, dtype=parameter.dtype), return_dict=False)[0]
    return images.float().clamp(-1, 1).to(latents.device)
