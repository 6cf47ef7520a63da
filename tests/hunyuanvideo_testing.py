"""Tiny HunyuanVideo components and complete checkpoint folders in both layouts, for CPU tests.

The real checkpoints (a 13B transformer, LLaVA-LLaMA-3-8B, CLIP-L, the 3D VAE) cannot be downloaded here, so every
component is built at tiny size with seeded random weights in exactly the folder layouts the loaders read:

* :func:`write_diffusers_checkpoint`: ``hunyuanvideo-community/HunyuanVideo``'s ``transformer/`` (diffusers
  ``HunyuanVideoTransformer3DModel``, converted with ``official_to_diffusers``), ``vae/``, ``text_encoder/``,
  ``tokenizer/``, ``text_encoder_2/``, ``tokenizer_2/``;
* :func:`write_official_checkpoint`: ``tencent/HunyuanVideo``'s ``ckpts`` with ``mp_rank_00_model_states.pt``
  (weights under ``module``), the upstream-style VAE folder (``AutoencoderKLCausal3D`` config + ``pytorch_model.pt``
  under ``state_dict`` with ``vae.`` prefixes), and encoders whose tokenizers share their folder.

Both hold the same weights, so both give the same videos.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKLHunyuanVideo, HunyuanVideoTransformer3DModel
from tiny_text_models import save_tiny_clip_text_encoder, save_tiny_llama_encoder

from taylorseer_hunyuanvideo.diffusers_format import diffusers_config, official_to_diffusers
from taylorseer_hunyuanvideo.model import HUNYUAN_VIDEO_PRESETS, HunyuanVideo

__all__ = [
    "TINY_MODEL",
    "TINY_VAE_CONFIG",
    "TINY_TEXT_LEN",
    "LLAMA_LAYERS",
    "tiny_transformer",
    "tiny_vae",
    "to_diffusers_transformer",
    "write_diffusers_checkpoint",
    "write_official_checkpoint",
]

TINY_MODEL = "HYVideo-tiny"
TINY_VAE_CONFIG = {
    "block_out_channels": (8, 8, 8, 8),  # four blocks: 8x spatial, as the real VAE
    "layers_per_block": 1,
    "norm_num_groups": 4,
    "latent_channels": 16,
}
TINY_TEXT_LEN = 16
"""Prompt positions after the template crop (--text-len): the tiny tokenizer's prompts are a few words."""
LLAMA_LAYERS = 4
"""Enough depth that hidden_states[-3] (skip 2) is an intermediate layer."""


def tiny_transformer(seed: int = 0) -> HunyuanVideo:
    """The ``HYVideo-tiny`` preset with seeded default-initialised weights, in eval mode."""
    torch.manual_seed(seed)
    return HunyuanVideo(HUNYUAN_VIDEO_PRESETS[TINY_MODEL]).eval()


def tiny_vae(seed: int = 0) -> AutoencoderKLHunyuanVideo:
    """A 4-block, 8-channel ``AutoencoderKLHunyuanVideo`` (8x spatial, 4x temporal, 16 latent channels)."""
    torch.manual_seed(seed)
    return AutoencoderKLHunyuanVideo(**TINY_VAE_CONFIG).eval()


def to_diffusers_transformer(model: HunyuanVideo) -> HunyuanVideoTransformer3DModel:
    """The same weights in diffusers' class, through the tree's own key conversion."""
    twin = HunyuanVideoTransformer3DModel(**diffusers_config(model.params))
    twin.load_state_dict(official_to_diffusers(model.state_dict()), strict=True)
    return twin.eval()


def _save_text_encoders(llama_dir: Path, llama_tok: Path, clip_dir: Path, clip_tok: Path) -> None:
    params = HUNYUAN_VIDEO_PRESETS[TINY_MODEL]
    save_tiny_llama_encoder(llama_dir, llama_tok, hidden_size=params.text_states_dim, num_layers=LLAMA_LAYERS)
    save_tiny_clip_text_encoder(clip_dir, clip_tok, hidden_size=params.text_states_dim_2)


def write_diffusers_checkpoint(root: str | Path, seed: int = 0) -> Path:
    """A complete diffusers-layout folder (``hunyuanvideo-community/HunyuanVideo``) of tiny components."""
    root = Path(root)
    to_diffusers_transformer(tiny_transformer(seed)).save_pretrained(root / "transformer")
    tiny_vae(seed).save_pretrained(root / "vae")
    _save_text_encoders(root / "text_encoder", root / "tokenizer", root / "text_encoder_2", root / "tokenizer_2")
    return root


def _official_vae_config(vae: AutoencoderKLHunyuanVideo) -> dict:
    """The config.json upstream ships with its VAE (``AutoencoderKLCausal3D`` field names)."""
    config = vae.config
    blocks = len(config.block_out_channels)
    return {
        "_class_name": "AutoencoderKLCausal3D",
        "_diffusers_version": "0.4.2",
        "act_fn": config.act_fn,
        "block_out_channels": list(config.block_out_channels),
        "down_block_types": ["DownEncoderBlockCausal3D"] * blocks,
        "in_channels": config.in_channels,
        "latent_channels": config.latent_channels,
        "layers_per_block": config.layers_per_block,
        "norm_num_groups": config.norm_num_groups,
        "out_channels": config.out_channels,
        "sample_size": 256,
        "sample_tsize": 64,
        "up_block_types": ["UpDecoderBlockCausal3D"] * blocks,
        "scaling_factor": config.scaling_factor,
        "time_compression_ratio": config.temporal_compression_ratio,
        "mid_block_add_attention": config.mid_block_add_attention,
    }


def write_official_checkpoint(root: str | Path, seed: int = 0) -> Path:
    """A complete upstream-layout ``ckpts`` folder (``tencent/HunyuanVideo``) with the same weights as
    :func:`write_diffusers_checkpoint` for the same seed."""
    root = Path(root)
    dit = root / "hunyuan-video-t2v-720p" / "transformers" / "mp_rank_00_model_states.pt"
    dit.parent.mkdir(parents=True)
    torch.save({"module": tiny_transformer(seed).state_dict()}, dit)
    vae = tiny_vae(seed)
    vae_dir = root / "hunyuan-video-t2v-720p" / "vae"
    vae_dir.mkdir(parents=True)
    (vae_dir / "config.json").write_text(json.dumps(_official_vae_config(vae), indent=2))
    torch.save({"state_dict": {f"vae.{k}": v for k, v in vae.state_dict().items()}}, vae_dir / "pytorch_model.pt")
    _save_text_encoders(root / "text_encoder", root / "text_encoder", root / "text_encoder_2", root / "text_encoder_2")
    return root
