"""Explicit key mapping between our HunyuanVideo (= the official checkpoint keys) and diffusers'
``HunyuanVideoTransformer3DModel``.

The weights are published in both layouts (``mp_rank_00_model_states.pt`` in tencent/HunyuanVideo and the
``transformer/`` folder of hunyuanvideo-community/HunyuanVideo). They hold the same numbers, arranged differently:

=================================================  ==================================================================
ours (official)                                    diffusers
=================================================  ==================================================================
``img_in.proj``                                    ``x_embedder.proj``
``time_in.mlp.0`` / ``.2``                         ``time_text_embed.timestep_embedder.linear_1`` / ``linear_2``
``guidance_in.mlp.0`` / ``.2`` (cfgdistill)        ``time_text_embed.guidance_embedder.linear_1`` / ``linear_2``
``vector_in.in_layer`` / ``.out_layer``            ``time_text_embed.text_embedder.linear_1`` / ``linear_2``
``txt_in.input_embedder``                          ``context_embedder.proj_in``
``txt_in.t_embedder.mlp.0`` / ``.2``               ``context_embedder.time_text_embed.timestep_embedder.linear_1/2``
``txt_in.c_embedder.linear_1`` / ``linear_2``      ``context_embedder.time_text_embed.text_embedder.linear_1/2``
``txt_in.individual_token_refiner.blocks.{i}.``    ``context_embedder.token_refiner.refiner_blocks.{i}.``
  ``norm1`` / ``norm2``                              ``norm1`` / ``norm2``
  ``self_attn_qkv`` (fused)                          ``attn.to_q`` / ``to_k`` / ``to_v``
  ``self_attn_proj``                                 ``attn.to_out.0``
  ``mlp.fc1`` / ``mlp.fc2``                          ``ff.net.0.proj`` / ``ff.net.2``
  ``adaLN_modulation.1``                             ``norm_out.linear``
``double_blocks.{i}.``                             ``transformer_blocks.{i}.``
  ``img_mod.linear`` / ``txt_mod.linear``            ``norm1.linear`` / ``norm1_context.linear``
  ``img_attn_qkv`` (fused)                           ``attn.to_q`` / ``to_k`` / ``to_v``
  ``txt_attn_qkv`` (fused)                           ``attn.add_q_proj`` / ``add_k_proj`` / ``add_v_proj``
  ``img_attn_q_norm`` / ``img_attn_k_norm``          ``attn.norm_q`` / ``attn.norm_k``
  ``txt_attn_q_norm`` / ``txt_attn_k_norm``          ``attn.norm_added_q`` / ``attn.norm_added_k``
  ``img_attn_proj`` / ``txt_attn_proj``              ``attn.to_out.0`` / ``attn.to_add_out``
  ``img_mlp.fc1`` / ``.fc2``                         ``ff.net.0.proj`` / ``ff.net.2``
  ``txt_mlp.fc1`` / ``.fc2``                         ``ff_context.net.0.proj`` / ``ff_context.net.2``
``single_blocks.{i}.``                             ``single_transformer_blocks.{i}.``
  ``linear1`` (fused)                                ``attn.to_q`` / ``to_k`` / ``to_v`` + ``proj_mlp``
  ``linear2``                                        ``proj_out``
  ``q_norm`` / ``k_norm``                            ``attn.norm_q`` / ``attn.norm_k``
  ``modulation.linear``                              ``norm.linear``
``final_layer.linear``                             ``proj_out``
``final_layer.adaLN_modulation.1`` (shift|scale)   ``norm_out.linear`` (scale|shift: the two halves SWAPPED)
=================================================  ==================================================================

Fused projections are split along the output dimension in the official order (q, k, v[, mlp]). Both conversions
consume every input key exactly once and refuse inputs with missing or leftover keys, so nothing is dropped silently.
Depths and the presence of the guidance embedder are inferred from the keys.

Numerically both models compute the same function once converted (tests/test_hunyuanvideo_model.py): both take the
timestep in [0, 1000] and the embedded guidance already times 1000, and use the same sinusoidal embedding (diffusers'
``Timesteps(flip_sin_to_cos=True, downscale_freq_shift=0)``), LayerNorm/RMSNorm eps 1e-6, RoPE theta 256 and text
masking; none of diffusers' defaults needs overriding beyond the architecture sizes.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from common.checkpoint import CheckpointError, KeyPool
from common.key_mapping import LINEAR, has_prefix, infer_depth, linear_params, put, split_rows, swap_halves
from taylorseer_hunyuanvideo.model import HunyuanVideoParams

__all__ = [
    "official_to_diffusers",
    "diffusers_to_official",
    "diffusers_config",
    "hunyuan_params_from_diffusers_config",
    "is_diffusers_layout",
]

Tensor = torch.Tensor

# (ours, diffusers) prefixes of layers with weight and bias renamed one to one at the top level.
TOP_LEVEL_LINEARS = (
    ("img_in.proj", "x_embedder.proj"),
    ("time_in.mlp.0", "time_text_embed.timestep_embedder.linear_1"),
    ("time_in.mlp.2", "time_text_embed.timestep_embedder.linear_2"),
    ("vector_in.in_layer", "time_text_embed.text_embedder.linear_1"),
    ("vector_in.out_layer", "time_text_embed.text_embedder.linear_2"),
    ("txt_in.input_embedder", "context_embedder.proj_in"),
    ("txt_in.t_embedder.mlp.0", "context_embedder.time_text_embed.timestep_embedder.linear_1"),
    ("txt_in.t_embedder.mlp.2", "context_embedder.time_text_embed.timestep_embedder.linear_2"),
    ("txt_in.c_embedder.linear_1", "context_embedder.time_text_embed.text_embedder.linear_1"),
    ("txt_in.c_embedder.linear_2", "context_embedder.time_text_embed.text_embedder.linear_2"),
    ("final_layer.linear", "proj_out"),
)
GUIDANCE_LINEARS = (
    ("guidance_in.mlp.0", "time_text_embed.guidance_embedder.linear_1"),
    ("guidance_in.mlp.2", "time_text_embed.guidance_embedder.linear_2"),
)
# Stored (shift, scale) officially, (scale, shift) by diffusers' AdaLayerNormContinuous.
FINAL_MODULATION = ("final_layer.adaLN_modulation.1", "norm_out.linear")

OUR_REFINER, DIFFUSERS_REFINER = (
    "txt_in.individual_token_refiner.blocks",
    "context_embedder.token_refiner.refiner_blocks",
)
OUR_DOUBLE, DIFFUSERS_DOUBLE = "double_blocks", "transformer_blocks"
OUR_SINGLE, DIFFUSERS_SINGLE = "single_blocks", "single_transformer_blocks"

# Inside a refiner block (the LayerNorms have weight and bias like a linear).
REFINER_LINEARS = (
    ("norm1", "norm1"),
    ("norm2", "norm2"),
    ("self_attn_proj", "attn.to_out.0"),
    ("mlp.fc1", "ff.net.0.proj"),
    ("mlp.fc2", "ff.net.2"),
    ("adaLN_modulation.1", "norm_out.linear"),
)
REFINER_QKV = (("self_attn_qkv", ("attn.to_q", "attn.to_k", "attn.to_v")),)
# Inside a double block: renamed linears, renamed norm weights, fused qkvs.
DOUBLE_LINEARS = (
    ("img_mod.linear", "norm1.linear"),
    ("txt_mod.linear", "norm1_context.linear"),
    ("img_attn_proj", "attn.to_out.0"),
    ("txt_attn_proj", "attn.to_add_out"),
    ("img_mlp.fc1", "ff.net.0.proj"),
    ("img_mlp.fc2", "ff.net.2"),
    ("txt_mlp.fc1", "ff_context.net.0.proj"),
    ("txt_mlp.fc2", "ff_context.net.2"),
)
DOUBLE_NORMS = (
    ("img_attn_q_norm.weight", "attn.norm_q.weight"),
    ("img_attn_k_norm.weight", "attn.norm_k.weight"),
    ("txt_attn_q_norm.weight", "attn.norm_added_q.weight"),
    ("txt_attn_k_norm.weight", "attn.norm_added_k.weight"),
)
DOUBLE_QKV = (
    ("img_attn_qkv", ("attn.to_q", "attn.to_k", "attn.to_v")),
    ("txt_attn_qkv", ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj")),
)
# Inside a single block.
SINGLE_LINEARS = (
    ("linear2", "proj_out"),
    ("modulation.linear", "norm.linear"),
)
SINGLE_NORMS = (
    ("q_norm.weight", "attn.norm_q.weight"),
    ("k_norm.weight", "attn.norm_k.weight"),
)
# linear1 = [q | k | v | mlp_in] along the output dimension; q, k, v are hidden_size rows each.
SINGLE_LINEAR1 = ("linear1", ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"))

# A key only diffusers' layout has: how a state dict's layout is recognised.
DIFFUSERS_MARKER = "x_embedder.proj.weight"
# diffusers hard-codes the q/k norm type; the official model is configured with "rms".
DIFFUSERS_QK_NORM = "rms_norm"


def is_diffusers_layout(state_dict: Mapping[str, Tensor]) -> bool:
    """Whether a state dict uses diffusers' keys (rather than the official ones)."""
    return DIFFUSERS_MARKER in state_dict


def _split_fused(
    pool: KeyPool, out: dict[str, Tensor], src: str, dst: str, fused: str, parts: tuple[str, ...], sizes: list[int]
) -> None:
    """Split ``{src}.{fused}.{weight,bias}`` into ``{dst}.{part}.{weight,bias}`` by output rows."""
    for param in LINEAR:
        key = f"{src}.{fused}.{param}"
        tensor = pool.take(key)
        if tensor is not None:
            for part, piece in zip(parts, split_rows(tensor, sizes, key), strict=True):
                out[f"{dst}.{part}.{param}"] = piece


def _cat_fused(pool: KeyPool, out: dict[str, Tensor], src: str, dst: str, parts: tuple[str, ...], fused: str) -> None:
    """Concatenate ``{src}.{part}.{weight,bias}`` into ``{dst}.{fused}.{weight,bias}`` along the output rows."""
    for param in LINEAR:
        tensors = [pool.take(f"{src}.{part}.{param}") for part in parts]
        if all(t is not None for t in tensors):
            out[f"{dst}.{fused}.{param}"] = torch.cat(tensors, dim=0)


def _hidden_size(state_dict: Mapping[str, Tensor], key: str, layout: str) -> int:
    if key not in state_dict:
        raise CheckpointError(f"State dict is not a {layout} HunyuanVideo transformer: it has no {key}")
    return state_dict[key].shape[0]


def official_to_diffusers(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Official keys (our :class:`~taylorseer_hunyuanvideo.model.HunyuanVideo`) -> ``HunyuanVideoTransformer3DModel``
    keys. Split tensors are clones, so the result shares no memory between keys and can be saved with safetensors."""
    hidden = _hidden_size(state_dict, "img_in.proj.weight", "official")
    pool = KeyPool(state_dict, "official HunyuanVideo transformer")
    top = TOP_LEVEL_LINEARS + (GUIDANCE_LINEARS if has_prefix(state_dict, "guidance_in") else ())
    out: dict[str, Tensor] = {}
    for ours, theirs in linear_params(top):
        put(out, theirs, pool.take(ours))
    for ours, theirs in linear_params((FINAL_MODULATION,)):
        tensor = pool.take(ours)
        put(out, theirs, None if tensor is None else swap_halves(tensor))

    for i in range(infer_depth(state_dict, OUR_REFINER)):
        src, dst = f"{OUR_REFINER}.{i}", f"{DIFFUSERS_REFINER}.{i}"
        for ours, theirs in linear_params(REFINER_LINEARS):
            put(out, f"{dst}.{theirs}", pool.take(f"{src}.{ours}"))
        for fused, parts in REFINER_QKV:
            _split_fused(pool, out, src, dst, fused, parts, [hidden] * 3)

    for i in range(infer_depth(state_dict, OUR_DOUBLE)):
        src, dst = f"{OUR_DOUBLE}.{i}", f"{DIFFUSERS_DOUBLE}.{i}"
        for ours, theirs in linear_params(DOUBLE_LINEARS):
            put(out, f"{dst}.{theirs}", pool.take(f"{src}.{ours}"))
        for ours, theirs in DOUBLE_NORMS:
            put(out, f"{dst}.{theirs}", pool.take(f"{src}.{ours}"))
        for fused, parts in DOUBLE_QKV:
            _split_fused(pool, out, src, dst, fused, parts, [hidden] * 3)

    for i in range(infer_depth(state_dict, OUR_SINGLE)):
        src, dst = f"{OUR_SINGLE}.{i}", f"{DIFFUSERS_SINGLE}.{i}"
        for ours, theirs in linear_params(SINGLE_LINEARS):
            put(out, f"{dst}.{theirs}", pool.take(f"{src}.{ours}"))
        for ours, theirs in SINGLE_NORMS:
            put(out, f"{dst}.{theirs}", pool.take(f"{src}.{ours}"))
        fused, parts = SINGLE_LINEAR1
        linear1 = state_dict.get(f"{src}.{fused}.weight")
        mlp_rows = 0 if linear1 is None else linear1.shape[0] - 3 * hidden
        _split_fused(pool, out, src, dst, fused, parts, [hidden] * 3 + [mlp_rows])
    pool.finish()
    return out


def diffusers_to_official(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``HunyuanVideoTransformer3DModel`` keys -> official keys (our
    :class:`~taylorseer_hunyuanvideo.model.HunyuanVideo`)."""
    pool = KeyPool(state_dict, "diffusers HunyuanVideo transformer")
    guidance = has_prefix(state_dict, "time_text_embed.guidance_embedder")
    top = TOP_LEVEL_LINEARS + (GUIDANCE_LINEARS if guidance else ())
    out: dict[str, Tensor] = {}
    for ours, theirs in linear_params(top):
        put(out, ours, pool.take(theirs))
    for ours, theirs in linear_params((FINAL_MODULATION,)):
        tensor = pool.take(theirs)
        put(out, ours, None if tensor is None else swap_halves(tensor))

    for i in range(infer_depth(state_dict, DIFFUSERS_REFINER)):
        src, dst = f"{DIFFUSERS_REFINER}.{i}", f"{OUR_REFINER}.{i}"
        for ours, theirs in linear_params(REFINER_LINEARS):
            put(out, f"{dst}.{ours}", pool.take(f"{src}.{theirs}"))
        for fused, parts in REFINER_QKV:
            _cat_fused(pool, out, src, dst, parts, fused)

    for i in range(infer_depth(state_dict, DIFFUSERS_DOUBLE)):
        src, dst = f"{DIFFUSERS_DOUBLE}.{i}", f"{OUR_DOUBLE}.{i}"
        for ours, theirs in linear_params(DOUBLE_LINEARS):
            put(out, f"{dst}.{ours}", pool.take(f"{src}.{theirs}"))
        for ours, theirs in DOUBLE_NORMS:
            put(out, f"{dst}.{ours}", pool.take(f"{src}.{theirs}"))
        for fused, parts in DOUBLE_QKV:
            _cat_fused(pool, out, src, dst, parts, fused)

    for i in range(infer_depth(state_dict, DIFFUSERS_SINGLE)):
        src, dst = f"{DIFFUSERS_SINGLE}.{i}", f"{OUR_SINGLE}.{i}"
        for ours, theirs in linear_params(SINGLE_LINEARS):
            put(out, f"{dst}.{ours}", pool.take(f"{src}.{theirs}"))
        for ours, theirs in SINGLE_NORMS:
            put(out, f"{dst}.{ours}", pool.take(f"{src}.{theirs}"))
        fused, parts = SINGLE_LINEAR1
        _cat_fused(pool, out, src, dst, parts, fused)
    pool.finish()
    return out


def diffusers_config(params: HunyuanVideoParams) -> dict[str, object]:
    """Keyword arguments of ``HunyuanVideoTransformer3DModel`` for the same architecture; refuses what diffusers
    cannot express (square spatial patches and biases on every projection are hard-coded there)."""
    pt, ph, pw = params.patch_size
    if ph != pw:
        raise ValueError(
            f"diffusers' HunyuanVideoTransformer3DModel needs square spatial patches, got {params.patch_size}"
        )
    if not params.qkv_bias:
        raise ValueError("diffusers' HunyuanVideoTransformer3DModel always has qkv biases; qkv_bias=False has no twin")
    return {
        "in_channels": params.in_channels,
        "out_channels": params.out_channels,
        "num_attention_heads": params.heads_num,
        "attention_head_dim": params.head_dim,
        "num_layers": params.mm_double_blocks_depth,
        "num_single_layers": params.mm_single_blocks_depth,
        "num_refiner_layers": params.refiner_depth,
        "mlp_ratio": params.mlp_width_ratio,
        "patch_size": ph,
        "patch_size_t": pt,
        "qk_norm": DIFFUSERS_QK_NORM,
        "guidance_embeds": params.guidance_embed,
        "text_embed_dim": params.text_states_dim,
        "pooled_projection_dim": params.text_states_dim_2,
        "rope_theta": params.rope_theta,
        "rope_axes_dim": tuple(params.rope_dim_list),
        "image_condition_type": None,
    }


def hunyuan_params_from_diffusers_config(config: Mapping[str, object]) -> HunyuanVideoParams:
    """The inverse of :func:`diffusers_config`, for the ``transformer/config.json`` of a diffusers HunyuanVideo
    pipeline; missing entries take diffusers' defaults."""
    if config.get("image_condition_type") is not None:
        raise ValueError(
            f"image_condition_type {config['image_condition_type']!r} (an image-to-video transformer) is not supported"
        )
    if config.get("qk_norm", DIFFUSERS_QK_NORM) != DIFFUSERS_QK_NORM:
        raise ValueError(f"only qk_norm {DIFFUSERS_QK_NORM!r} exists officially, got {config['qk_norm']!r}")
    heads = int(config.get("num_attention_heads", 24))
    in_channels = int(config.get("in_channels", 16))
    patch = int(config.get("patch_size", 2))
    return HunyuanVideoParams(
        in_channels=in_channels,
        out_channels=int(config.get("out_channels") or in_channels),
        patch_size=(int(config.get("patch_size_t", 1)), patch, patch),
        hidden_size=heads * int(config.get("attention_head_dim", 128)),
        heads_num=heads,
        mlp_width_ratio=float(config.get("mlp_ratio", 4.0)),
        mm_double_blocks_depth=int(config.get("num_layers", 20)),
        mm_single_blocks_depth=int(config.get("num_single_layers", 40)),
        rope_dim_list=tuple(int(d) for d in config.get("rope_axes_dim", (16, 56, 56))),
        rope_theta=float(config.get("rope_theta", 256.0)),
        qkv_bias=True,
        guidance_embed=bool(config.get("guidance_embeds", True)),
        text_states_dim=int(config.get("text_embed_dim", 4096)),
        text_states_dim_2=int(config.get("pooled_projection_dim", 768)),
        refiner_depth=int(config.get("num_refiner_layers", 2)),
    )
