"""Explicit key mapping between our DiT (= facebookresearch/DiT checkpoint keys) and diffusers' DiTTransformer2DModel.

DiT weights are also published in diffusers' layout (huggingface ``facebook/DiT-XL-2-256``, a pipeline folder with
``transformer/``). The two layouts hold the same numbers, arranged differently:

==========================================  ============================================================
ours (original DiT)                          diffusers
==========================================  ============================================================
``x_embedder.proj``                          ``pos_embed.proj``
``pos_embed`` (frozen Parameter, stored)     ``pos_embed.pos_embed`` (non-persistent buffer, NOT stored)
``t_embedder.mlp.0`` / ``.mlp.2``            ``transformer_blocks.{i}.norm1.emb.timestep_embedder.linear_1`` / ``_2``
``y_embedder.embedding_table``               ``transformer_blocks.{i}.norm1.emb.class_embedder.embedding_table``
``blocks.{i}.adaLN_modulation.1``            ``transformer_blocks.{i}.norm1.linear``
``blocks.{i}.attn.qkv`` (fused)              ``transformer_blocks.{i}.attn1.to_q`` / ``to_k`` / ``to_v``
``blocks.{i}.attn.proj``                     ``transformer_blocks.{i}.attn1.to_out.0``
``blocks.{i}.mlp.fc1`` / ``mlp.fc2``         ``transformer_blocks.{i}.ff.net.0.proj`` / ``ff.net.2``
``final_layer.adaLN_modulation.1``           ``proj_out_1``
``final_layer.linear``                       ``proj_out_2``
==========================================  ============================================================

The embedders are one module in DiT but COPIED into every block in diffusers, so converting back requires all copies
to be identical, and ``pos_embed`` must be DiT's fixed sin-cos table because diffusers recomputes it instead of
storing it. Both conversions consume every input key exactly once and refuse inputs with leftovers, so nothing is
dropped silently. Depth is always inferred from the keys.

One numerical difference is NOT a key mapping and cannot be fixed here: diffusers embeds timesteps with
``downscale_freq_shift=1`` (frequencies ``exp(-ln(10000) * i / (half - 1))``) where DiT divides by ``half``; diffusers
also defaults ``norm_eps`` to 1e-5 where DiT uses 1e-6. Our DiT computes DiT's own formulas, so diffusers-format
weights run here exactly as the original checkpoint they were converted from.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from common.checkpoint import (
    CheckpointError,
    KeyPool,
    find_diffusers_model_folder,
    read_diffusers_folder,
    truncated_list,
)
from common.key_mapping import LINEAR, infer_depth, put, split_rows
from taylorseer_dit.models import DiT, get_2d_sincos_pos_embed

__all__ = [
    "dit_to_diffusers",
    "diffusers_to_dit",
    "diffusers_config",
    "dit_kwargs_from_diffusers_config",
    "load_diffusers_dit_folder",
    "sincos_pos_embed",
]

Tensor = torch.Tensor
EMBEDDING = ("weight",)

# (ours, diffusers, parameter names) for modules renamed one to one at the top level.
TOP_LEVEL = (
    ("x_embedder.proj", "pos_embed.proj", LINEAR),
    ("final_layer.adaLN_modulation.1", "proj_out_1", LINEAR),
    ("final_layer.linear", "proj_out_2", LINEAR),
)
# Same, inside block i: blocks.{i}.<ours> <-> transformer_blocks.{i}.<diffusers>.
PER_BLOCK = (
    ("adaLN_modulation.1", "norm1.linear", LINEAR),
    ("attn.proj", "attn1.to_out.0", LINEAR),
    ("mlp.fc1", "ff.net.0.proj", LINEAR),
    ("mlp.fc2", "ff.net.2", LINEAR),
)
# The fused qkv projection, split along the output dimension in q, k, v order (DiT's Attention.forward order).
QKV = "attn.qkv"
QKV_PARTS = ("attn1.to_q", "attn1.to_k", "attn1.to_v")
# Conditioning embedders: top level in DiT, copied into transformer_blocks.{i}.norm1.emb.<diffusers> in diffusers.
EMBEDDERS = (
    ("t_embedder.mlp.0", "timestep_embedder.linear_1", LINEAR),
    ("t_embedder.mlp.2", "timestep_embedder.linear_2", LINEAR),
    ("y_embedder.embedding_table", "class_embedder.embedding_table", EMBEDDING),
)
POS_EMBED = "pos_embed"
OUR_BLOCKS = "blocks"
DIFFUSERS_BLOCKS = "transformer_blocks"
EMBEDDER_PREFIX = "norm1.emb"
# diffusers' CombinedTimestepLabelEmbeddings hard-codes these; a DiT that differs has no diffusers twin.
DIFFUSERS_FREQUENCY_EMBEDDING_SIZE = 256
DIFFUSERS_MLP_RATIO = 4.0
DIFFUSERS_CLASS_DROPOUT = 0.1
DIFFUSERS_CLASS_NAMES = ("DiTTransformer2DModel", "Transformer2DModel")  # the hub's config still names the old one
PIPELINE_SUBFOLDER = "transformer"


def dit_to_diffusers(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Our (original DiT) keys -> ``DiTTransformer2DModel`` keys.

    The embedders are copied into every block and the qkv weights split; those new tensors are clones, so the result
    shares no memory between keys and can be written with ``safetensors.torch.save_file`` directly. ``pos_embed`` is
    checked to be the sin-cos table (diffusers recomputes it) and then dropped.
    """
    pool = KeyPool(state_dict, "original DiT")
    depth = _depth(state_dict, OUR_BLOCKS)
    out: dict[str, Tensor] = {}
    for ours, theirs in _param_pairs(TOP_LEVEL):
        put(out, theirs, pool.take(ours))
    for i in range(depth):
        for ours, theirs in _param_pairs(PER_BLOCK):
            put(out, f"{DIFFUSERS_BLOCKS}.{i}.{theirs}", pool.take(f"{OUR_BLOCKS}.{i}.{ours}"))
        for param in LINEAR:
            key = f"{OUR_BLOCKS}.{i}.{QKV}.{param}"
            fused = pool.take(key)
            if fused is not None:
                for part, tensor in zip(QKV_PARTS, split_rows(fused, [fused.shape[0] // 3] * 3, key), strict=True):
                    out[f"{DIFFUSERS_BLOCKS}.{i}.{part}.{param}"] = tensor
    for ours, theirs in _param_pairs(EMBEDDERS):
        shared = pool.take(ours)
        for i in range(depth):
            put(out, f"{DIFFUSERS_BLOCKS}.{i}.{EMBEDDER_PREFIX}.{theirs}", None if shared is None else shared.clone())
    pos_embed = pool.take(POS_EMBED)
    pool.finish()
    _check_sincos(pos_embed)
    return out


def diffusers_to_dit(state_dict: Mapping[str, Tensor], *, grid_size: int) -> dict[str, Tensor]:
    """``DiTTransformer2DModel`` keys -> our (original DiT) keys.

    The embedders come from block 0 after checking that every block holds an identical copy (our DiT has one shared
    embedder, so diverged copies cannot be represented). ``pos_embed`` is not stored by diffusers and is recomputed
    as DiT's sin-cos table for a ``grid_size`` x ``grid_size`` token grid (``sample_size // patch_size``).
    """
    pool = KeyPool(state_dict, "diffusers DiT")
    depth = _depth(state_dict, DIFFUSERS_BLOCKS)
    out: dict[str, Tensor] = {}
    for ours, theirs in _param_pairs(TOP_LEVEL):
        put(out, ours, pool.take(theirs))
    for i in range(depth):
        for ours, theirs in _param_pairs(PER_BLOCK):
            put(out, f"{OUR_BLOCKS}.{i}.{ours}", pool.take(f"{DIFFUSERS_BLOCKS}.{i}.{theirs}"))
        for param in LINEAR:
            parts = [pool.take(f"{DIFFUSERS_BLOCKS}.{i}.{part}.{param}") for part in QKV_PARTS]
            if all(p is not None for p in parts):
                out[f"{OUR_BLOCKS}.{i}.{QKV}.{param}"] = torch.cat(parts, dim=0)
    diverged = []
    for ours, theirs in _param_pairs(EMBEDDERS):
        copies = [pool.take(f"{DIFFUSERS_BLOCKS}.{i}.{EMBEDDER_PREFIX}.{theirs}") for i in range(depth)]
        put(out, ours, copies[0])
        diverged += [f"{DIFFUSERS_BLOCKS}.{i}.{EMBEDDER_PREFIX}.{theirs}" for i in _differing_copies(copies)]
    pool.finish()
    if diverged:
        raise CheckpointError(
            "The per-block copies of the timestep/label embedders differ from block 0's:\n"
            f"  {truncated_list(sorted(diverged))}\n"
            "The original DiT has ONE embedder shared by all blocks, so these weights (fine-tuned in diffusers?) "
            "cannot be converted without changing the model."
        )
    hidden = out["x_embedder.proj.weight"].shape[0]
    out[POS_EMBED] = sincos_pos_embed(hidden, grid_size).to(out["x_embedder.proj.weight"].dtype)
    return out


def sincos_pos_embed(hidden_size: int, grid_size: int) -> Tensor:
    """DiT's fixed (1, grid_size**2, hidden_size) position table, computed exactly as ``DiT.initialize_weights``."""
    return torch.from_numpy(get_2d_sincos_pos_embed(hidden_size, grid_size)).float().unsqueeze(0)


def _depth(state_dict: Mapping[str, Tensor], blocks_prefix: str) -> int:
    """Number of blocks ``{blocks_prefix}.{i}.*`` (indices checked by :func:`~common.key_mapping.infer_depth`)."""
    depth = infer_depth(state_dict, blocks_prefix)
    if depth == 0:
        raise CheckpointError(f"State dict has no '{blocks_prefix}.<i>.*' keys: it is not a DiT in this layout.")
    return depth


def diffusers_config(model: DiT) -> dict[str, Any]:
    """``DiTTransformer2DModel(**config)`` keyword arguments for the diffusers twin of ``model``.

    Raises ValueError for a DiT that diffusers cannot express (its embedders and MLP ratio are hard-coded).
    ``norm_eps`` is set to our value (1e-6) instead of diffusers' default 1e-5, so the twin computes the same thing.
    """
    hidden_size = model.pos_embed.shape[-1]
    block = model.blocks[0]
    if block.mlp.fc1.out_features != int(hidden_size * DIFFUSERS_MLP_RATIO):
        raise ValueError(f"diffusers' DiT has a fixed MLP ratio of {DIFFUSERS_MLP_RATIO}")
    if model.y_embedder.dropout_prob <= 0:
        raise ValueError("diffusers' DiT label embedder always has the null (classifier-free guidance) label row")
    if model.t_embedder.frequency_embedding_size != DIFFUSERS_FREQUENCY_EMBEDDING_SIZE:
        raise ValueError(f"diffusers' DiT has a fixed frequency embedding size of {DIFFUSERS_FREQUENCY_EMBEDDING_SIZE}")
    return {
        "num_attention_heads": model.num_heads,
        "attention_head_dim": hidden_size // model.num_heads,
        "in_channels": model.in_channels,
        "out_channels": model.out_channels,
        "num_layers": model.depth,
        "dropout": 0.0,
        "attention_bias": True,
        "sample_size": model.input_size,
        "patch_size": model.patch_size,
        "activation_fn": "gelu-approximate",
        "num_embeds_ada_norm": model.y_embedder.num_classes,
        "upcast_attention": False,
        "norm_type": "ada_norm_zero",
        "norm_elementwise_affine": False,
        "norm_eps": block.norm2.eps,
    }


def dit_kwargs_from_diffusers_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """``DiT(**kwargs)`` keyword arguments from a diffusers transformer ``config.json``.

    Absent optional entries take ``DiTTransformer2DModel``'s defaults, which is what diffusers itself does when it
    remaps the hub's ``Transformer2DModel`` config. ``norm_eps`` is ignored: our DiT uses the original 1e-6.
    """
    problems = []
    class_name = config.get("_class_name", DIFFUSERS_CLASS_NAMES[0])
    if class_name not in DIFFUSERS_CLASS_NAMES:
        problems.append(f"_class_name is {class_name!r}, expected one of {DIFFUSERS_CLASS_NAMES}")
    # (key, DiTTransformer2DModel's default, the only value our DiT can mirror)
    fixed = (
        ("norm_type", None, "ada_norm_zero"),
        ("activation_fn", "gelu-approximate", "gelu-approximate"),
        ("attention_bias", True, True),
        ("norm_elementwise_affine", False, False),
    )
    for key, default, want in fixed:
        if config.get(key, default) != want:
            problems.append(f"{key} is {config.get(key, default)!r}, expected {want!r}")
    required = ("num_attention_heads", "attention_head_dim", "num_layers", "sample_size", "patch_size")
    required += ("in_channels", "num_embeds_ada_norm")
    problems += [f"{key} is missing" for key in required if config.get(key) is None]
    if problems:
        raise CheckpointError("Not a DiT transformer config.json:\n  " + "\n  ".join(problems))
    in_channels = int(config["in_channels"])
    out_channels = int(config.get("out_channels") or in_channels)
    if out_channels not in (in_channels, 2 * in_channels):
        raise CheckpointError(f"DiT config has out_channels={out_channels}: expected in_channels or 2 * in_channels.")
    heads = int(config["num_attention_heads"])
    return {
        "input_size": int(config["sample_size"]),
        "patch_size": int(config["patch_size"]),
        "in_channels": in_channels,
        "hidden_size": heads * int(config["attention_head_dim"]),
        "depth": int(config["num_layers"]),
        "num_heads": heads,
        "mlp_ratio": DIFFUSERS_MLP_RATIO,
        "class_dropout_prob": DIFFUSERS_CLASS_DROPOUT,
        "num_classes": int(config["num_embeds_ada_norm"]),
        "learn_sigma": out_channels == 2 * in_channels,
    }


def load_diffusers_dit_folder(path: str | Path) -> dict[str, Tensor]:
    """Read a diffusers-format DiT as a state dict in our (original DiT) keys.

    ``path`` is either the model folder (``config.json`` + ``diffusion_pytorch_model.safetensors``, ``.bin``, or
    shards with an index json) or a pipeline folder holding it in ``transformer/`` (the layout of huggingface
    ``facebook/DiT-XL-2-256``). The config is checked to describe a DiT and gives the token grid of ``pos_embed``.
    """
    folder = find_diffusers_model_folder(path, PIPELINE_SUBFOLDER, "Diffusers DiT folder")
    weights, config = read_diffusers_folder(folder)
    kwargs = dit_kwargs_from_diffusers_config(config)
    return diffusers_to_dit(weights, grid_size=kwargs["input_size"] // kwargs["patch_size"])


def _param_pairs(table: tuple[tuple[str, str, tuple[str, ...]], ...]) -> list[tuple[str, str]]:
    """Module-level (ours, diffusers, params) rows -> parameter-level (ours key, diffusers key) pairs."""
    return [(f"{ours}.{param}", f"{theirs}.{param}") for ours, theirs, params in table for param in params]


def _differing_copies(copies: list[Tensor | None]) -> list[int]:
    """Indices of the copies that differ (in shape or any value) from copy 0; missing copies are reported elsewhere."""
    first = copies[0]
    if first is None:
        return []
    return [i for i, c in enumerate(copies) if c is not None and not torch.equal(c, first)]


def _check_sincos(pos_embed: Tensor | None) -> None:
    """Refuse a ``pos_embed`` that is not DiT's sin-cos table: diffusers would replace it by the table silently.

    The tolerance admits the rounding of an EMA update (DiT's train.py averages the frozen table too) and of
    half-precision storage, nothing more.
    """
    if pos_embed is None:
        return
    if pos_embed.dim() != 3 or pos_embed.shape[0] != 1 or math.isqrt(pos_embed.shape[1]) ** 2 != pos_embed.shape[1]:
        raise CheckpointError(f"pos_embed has shape {tuple(pos_embed.shape)}; expected (1, grid**2, hidden size).")
    table = sincos_pos_embed(pos_embed.shape[2], math.isqrt(pos_embed.shape[1]))
    tolerance = max(1e-5, torch.finfo(pos_embed.dtype).eps) if pos_embed.is_floating_point() else 0.0
    max_diff = (pos_embed.float() - table).abs().max().item()
    if max_diff > tolerance:
        raise CheckpointError(
            f"pos_embed differs from DiT's sin-cos table by up to {max_diff:.3g}; diffusers does not store it and "
            "would recompute the table, so converting these weights would change the model."
        )
