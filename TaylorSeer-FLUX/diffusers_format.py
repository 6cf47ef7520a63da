"""Explicit key mapping between our FLUX (= Black Forest Labs checkpoint keys) and diffusers' FluxTransformer2DModel.

FLUX weights are published in both layouts (``flux1-dev.safetensors`` and the ``transformer/`` folder of the
diffusers pipeline). They hold the same numbers, arranged differently:

==============================================  ===================================================================
ours (BFL)                                       diffusers
==============================================  ===================================================================
``img_in`` / ``txt_in``                          ``x_embedder`` / ``context_embedder``
``time_in.in_layer`` / ``.out_layer``            ``time_text_embed.timestep_embedder.linear_1`` / ``linear_2``
``guidance_in.*`` (dev only)                     ``time_text_embed.guidance_embedder.*``
``vector_in.*``                                  ``time_text_embed.text_embedder.*``
``double_blocks.{i}.img_mod.lin``                ``transformer_blocks.{i}.norm1.linear``
``double_blocks.{i}.txt_mod.lin``                ``transformer_blocks.{i}.norm1_context.linear``
``double_blocks.{i}.img_attn.qkv`` (fused)       ``transformer_blocks.{i}.attn.to_q`` / ``to_k`` / ``to_v``
``double_blocks.{i}.txt_attn.qkv`` (fused)       ``transformer_blocks.{i}.attn.add_{q,k,v}_proj``
``double_blocks.{i}.img_attn.norm.*_norm.scale`` ``transformer_blocks.{i}.attn.norm_q`` / ``norm_k`` ``.weight``
``double_blocks.{i}.txt_attn.norm.*_norm.scale`` ``transformer_blocks.{i}.attn.norm_added_q`` / ``norm_added_k``
``double_blocks.{i}.img_attn.proj``              ``transformer_blocks.{i}.attn.to_out.0``
``double_blocks.{i}.txt_attn.proj``              ``transformer_blocks.{i}.attn.to_add_out``
``double_blocks.{i}.img_mlp.0`` / ``.2``         ``transformer_blocks.{i}.ff.net.0.proj`` / ``ff.net.2``
``double_blocks.{i}.txt_mlp.0`` / ``.2``         ``transformer_blocks.{i}.ff_context.net.0.proj`` / ``ff_context.net.2``
``single_blocks.{i}.linear1`` (fused)            ``single_transformer_blocks.{i}.attn.to_q`` / ``to_k`` / ``to_v``
                                                 + ``single_transformer_blocks.{i}.proj_mlp``
``single_blocks.{i}.linear2``                    ``single_transformer_blocks.{i}.proj_out``
``single_blocks.{i}.norm.*_norm.scale``          ``single_transformer_blocks.{i}.attn.norm_q`` / ``norm_k`` ``.weight``
``single_blocks.{i}.modulation.lin``             ``single_transformer_blocks.{i}.norm.linear``
``final_layer.linear``                           ``proj_out``
``final_layer.adaLN_modulation.1`` (shift|scale) ``norm_out.linear`` (scale|shift: the two halves SWAPPED)
==============================================  ===================================================================

Fused projections are split along the output dimension in BFL's order (q, k, v[, mlp]). Both conversions consume
every input key exactly once and refuse inputs with missing or leftover keys, so nothing is dropped silently. Depths
and the presence of the guidance embedder are inferred from the keys.

Numerically both models compute the same function once converted (see tests/test_flux_model.py): both take
``timestep`` in [0, 1] and the raw ``guidance`` scale and multiply them by 1000 before the sinusoidal embedding.
diffusers (0.42) takes 2D ``img_ids``/``txt_ids`` (L, 3), BFL 3D (B, L, 3).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from common.checkpoint import KeyPool
from common.key_mapping import LINEAR, has_prefix, infer_depth, linear_params, put, split_rows, swap_halves
from taylorseer_flux.model import FluxParams

__all__ = ["bfl_to_diffusers", "diffusers_to_bfl", "diffusers_config", "flux_params_from_diffusers_config"]

Tensor = torch.Tensor

# (ours, diffusers) prefixes of linear layers renamed one to one at the top level.
TOP_LEVEL_LINEARS = (
    ("img_in", "x_embedder"),
    ("txt_in", "context_embedder"),
    ("time_in.in_layer", "time_text_embed.timestep_embedder.linear_1"),
    ("time_in.out_layer", "time_text_embed.timestep_embedder.linear_2"),
    ("vector_in.in_layer", "time_text_embed.text_embedder.linear_1"),
    ("vector_in.out_layer", "time_text_embed.text_embedder.linear_2"),
    ("final_layer.linear", "proj_out"),
)
GUIDANCE_LINEARS = (
    ("guidance_in.in_layer", "time_text_embed.guidance_embedder.linear_1"),
    ("guidance_in.out_layer", "time_text_embed.guidance_embedder.linear_2"),
)
# Stored (shift, scale) by BFL, (scale, shift) by diffusers' AdaLayerNormContinuous.
FINAL_MODULATION = ("final_layer.adaLN_modulation.1", "norm_out.linear")

OUR_DOUBLE, DIFFUSERS_DOUBLE = "double_blocks", "transformer_blocks"
OUR_SINGLE, DIFFUSERS_SINGLE = "single_blocks", "single_transformer_blocks"

# Inside a double block: renamed linears, renamed norm scales, fused qkvs.
DOUBLE_LINEARS = (
    ("img_mod.lin", "norm1.linear"),
    ("txt_mod.lin", "norm1_context.linear"),
    ("img_attn.proj", "attn.to_out.0"),
    ("txt_attn.proj", "attn.to_add_out"),
    ("img_mlp.0", "ff.net.0.proj"),
    ("img_mlp.2", "ff.net.2"),
    ("txt_mlp.0", "ff_context.net.0.proj"),
    ("txt_mlp.2", "ff_context.net.2"),
)
DOUBLE_NORMS = (
    ("img_attn.norm.query_norm.scale", "attn.norm_q.weight"),
    ("img_attn.norm.key_norm.scale", "attn.norm_k.weight"),
    ("txt_attn.norm.query_norm.scale", "attn.norm_added_q.weight"),
    ("txt_attn.norm.key_norm.scale", "attn.norm_added_k.weight"),
)
DOUBLE_QKV = (
    ("img_attn.qkv", ("attn.to_q", "attn.to_k", "attn.to_v")),
    ("txt_attn.qkv", ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj")),
)
# Inside a single block.
SINGLE_LINEARS = (
    ("linear2", "proj_out"),
    ("modulation.lin", "norm.linear"),
)
SINGLE_NORMS = (
    ("norm.query_norm.scale", "attn.norm_q.weight"),
    ("norm.key_norm.scale", "attn.norm_k.weight"),
)
# linear1 = [q | k | v | mlp_in] along the output dimension; q, k, v are hidden_size rows each.
SINGLE_LINEAR1 = ("linear1", ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"))

# diffusers hard-codes these; a FLUX that differs has no diffusers twin.
DIFFUSERS_MLP_RATIO = 4.0
DIFFUSERS_THETA = 10_000


def bfl_to_diffusers(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """BFL keys (our :class:`~taylorseer_flux.model.Flux`) -> ``FluxTransformer2DModel`` keys.

    Split tensors are clones, so the result shares no memory between keys and can be saved with safetensors.
    """
    pool = KeyPool(state_dict, "BFL FLUX transformer")
    depth = infer_depth(state_dict, OUR_DOUBLE)
    depth_single = infer_depth(state_dict, OUR_SINGLE)
    top = TOP_LEVEL_LINEARS + (GUIDANCE_LINEARS if has_prefix(state_dict, "guidance_in") else ())
    out: dict[str, Tensor] = {}
    for ours, theirs in linear_params(top):
        put(out, theirs, pool.take(ours))
    ours_mod, theirs_mod = FINAL_MODULATION
    for param in LINEAR:
        tensor = pool.take(f"{ours_mod}.{param}")
        put(out, f"{theirs_mod}.{param}", None if tensor is None else swap_halves(tensor))

    for i in range(depth):
        src, dst = f"{OUR_DOUBLE}.{i}", f"{DIFFUSERS_DOUBLE}.{i}"
        for ours, theirs in linear_params(DOUBLE_LINEARS):
            put(out, f"{dst}.{theirs}", pool.take(f"{src}.{ours}"))
        for ours, theirs in DOUBLE_NORMS:
            put(out, f"{dst}.{theirs}", pool.take(f"{src}.{ours}"))
        for ours, parts in DOUBLE_QKV:
            for param in LINEAR:
                key = f"{src}.{ours}.{param}"
                fused = pool.take(key)
                if fused is None:
                    continue
                rows = fused.shape[0] // 3
                for part, tensor in zip(parts, split_rows(fused, [rows] * 3, key), strict=True):
                    out[f"{dst}.{part}.{param}"] = tensor

    for i in range(depth_single):
        src, dst = f"{OUR_SINGLE}.{i}", f"{DIFFUSERS_SINGLE}.{i}"
        for ours, theirs in linear_params(SINGLE_LINEARS):
            put(out, f"{dst}.{theirs}", pool.take(f"{src}.{ours}"))
        for ours, theirs in SINGLE_NORMS:
            put(out, f"{dst}.{theirs}", pool.take(f"{src}.{ours}"))
        ours, parts = SINGLE_LINEAR1
        weight_key, bias_key = f"{src}.{ours}.weight", f"{src}.{ours}.bias"
        weight, bias = pool.take(weight_key), pool.take(bias_key)
        if weight is None:
            continue
        hidden = weight.shape[1]  # linear1 maps hidden -> 3 * hidden + mlp_hidden
        sizes = [hidden] * 3 + [weight.shape[0] - 3 * hidden]
        for part, tensor in zip(parts, split_rows(weight, sizes, weight_key), strict=True):
            out[f"{dst}.{part}.weight"] = tensor
        if bias is not None:
            for part, tensor in zip(parts, split_rows(bias, sizes, bias_key), strict=True):
                out[f"{dst}.{part}.bias"] = tensor
    pool.finish()
    return out


def diffusers_to_bfl(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``FluxTransformer2DModel`` keys -> BFL keys (our :class:`~taylorseer_flux.model.Flux`)."""
    pool = KeyPool(state_dict, "diffusers FLUX transformer")
    depth = infer_depth(state_dict, DIFFUSERS_DOUBLE)
    depth_single = infer_depth(state_dict, DIFFUSERS_SINGLE)
    guidance = has_prefix(state_dict, "time_text_embed.guidance_embedder")
    top = TOP_LEVEL_LINEARS + (GUIDANCE_LINEARS if guidance else ())
    out: dict[str, Tensor] = {}
    for ours, theirs in linear_params(top):
        put(out, ours, pool.take(theirs))
    ours_mod, theirs_mod = FINAL_MODULATION
    for param in LINEAR:
        tensor = pool.take(f"{theirs_mod}.{param}")
        put(out, f"{ours_mod}.{param}", None if tensor is None else swap_halves(tensor))

    def take_cat(prefix: str, parts: tuple[str, ...], param: str) -> Tensor | None:
        tensors = [pool.take(f"{prefix}.{part}.{param}") for part in parts]
        if any(t is None for t in tensors):
            return None
        return torch.cat(tensors, dim=0)

    for i in range(depth):
        src, dst = f"{DIFFUSERS_DOUBLE}.{i}", f"{OUR_DOUBLE}.{i}"
        for ours, theirs in linear_params(DOUBLE_LINEARS):
            put(out, f"{dst}.{ours}", pool.take(f"{src}.{theirs}"))
        for ours, theirs in DOUBLE_NORMS:
            put(out, f"{dst}.{ours}", pool.take(f"{src}.{theirs}"))
        for ours, parts in DOUBLE_QKV:
            for param in LINEAR:
                put(out, f"{dst}.{ours}.{param}", take_cat(src, parts, param))

    for i in range(depth_single):
        src, dst = f"{DIFFUSERS_SINGLE}.{i}", f"{OUR_SINGLE}.{i}"
        for ours, theirs in linear_params(SINGLE_LINEARS):
            put(out, f"{dst}.{ours}", pool.take(f"{src}.{theirs}"))
        for ours, theirs in SINGLE_NORMS:
            put(out, f"{dst}.{ours}", pool.take(f"{src}.{theirs}"))
        ours, parts = SINGLE_LINEAR1
        for param in LINEAR:
            put(out, f"{dst}.{ours}.{param}", take_cat(src, parts, param))
    pool.finish()
    return out


def diffusers_config(params: FluxParams) -> dict[str, object]:
    """Keyword arguments of ``FluxTransformer2DModel`` for the same architecture; refuses what diffusers cannot
    express (it hard-codes mlp_ratio 4, RoPE theta 10000 and biases on every projection)."""
    if params.mlp_ratio != DIFFUSERS_MLP_RATIO:
        raise ValueError(f"diffusers' FluxTransformer2DModel hard-codes mlp_ratio 4, got {params.mlp_ratio}")
    if params.theta != DIFFUSERS_THETA:
        raise ValueError(f"diffusers' FluxTransformer2DModel hard-codes RoPE theta 10000, got {params.theta}")
    if not params.qkv_bias:
        raise ValueError("diffusers' FluxTransformer2DModel always has qkv biases; qkv_bias=False has no twin")
    return {
        "patch_size": 1,
        "in_channels": params.in_channels,
        "out_channels": params.out_channels,
        "num_layers": params.depth,
        "num_single_layers": params.depth_single_blocks,
        "attention_head_dim": params.head_dim,
        "num_attention_heads": params.num_heads,
        "joint_attention_dim": params.context_in_dim,
        "pooled_projection_dim": params.vec_in_dim,
        "guidance_embeds": params.guidance_embed,
        "axes_dims_rope": tuple(params.axes_dim),
    }


def flux_params_from_diffusers_config(config: Mapping[str, object]) -> FluxParams:
    """The inverse of :func:`diffusers_config` (for a ``transformer/config.json`` of a diffusers FLUX pipeline)."""
    if config.get("patch_size", 1) != 1:
        raise ValueError(f"only patch_size 1 is supported (FLUX packs 2x2 patches outside), got {config['patch_size']}")
    in_channels = int(config.get("in_channels", 64))
    out_channels = config.get("out_channels") or in_channels
    if out_channels != in_channels:
        raise ValueError(f"out_channels {out_channels} != in_channels {in_channels} has no BFL counterpart")
    heads = int(config.get("num_attention_heads", 24))
    return FluxParams(
        in_channels=in_channels,
        vec_in_dim=int(config.get("pooled_projection_dim", 768)),
        context_in_dim=int(config.get("joint_attention_dim", 4096)),
        hidden_size=heads * int(config.get("attention_head_dim", 128)),
        mlp_ratio=DIFFUSERS_MLP_RATIO,
        num_heads=heads,
        depth=int(config.get("num_layers", 19)),
        depth_single_blocks=int(config.get("num_single_layers", 38)),
        axes_dim=tuple(int(d) for d in config.get("axes_dims_rope", (16, 56, 56))),
        theta=DIFFUSERS_THETA,
        qkv_bias=True,
        guidance_embed=bool(config.get("guidance_embeds", False)),
    )
