"""HunyuanVideo (Tencent) text-to-video diffusion transformer with the caching methods' calls inline.

Parameter names equal the keys of the official checkpoint (``mp_rank_00_model_states.pt``, weights under
``module``), so it loads unchanged. With ``cache=None`` every forward is the plain HunyuanVideo transformer; with a
:class:`~common.caching.CacheMethod` (TaylorSeer, FORA, Δ-DiT, ToCa, DuCa, TeaCache: ``common.methods``), the module
outputs below (after their output projection, before the adaLN gate) go through the cache, where the TaylorSeer
reference caches them (reference-semantics §4.2):

* double-stream block ``i`` -> ``cache.layer(i)``, keys ``"img_attn"``, ``"img_mlp"``, ``"txt_attn"``, ``"txt_mlp"``.
  The image and text attentions are ONE joint attention: at a full step it runs once and both projections are
  recorded; at a forecast step neither the qkv projections, the attention nor the output projections run. The two
  MLPs are token-wise (``cached_tokens``): ToCa recomputes only its fresh tokens.
* single-stream block ``j`` -> ``cache.layer(num_double_blocks + j)``, key ``"total"`` =
  ``linear2(cat(attn, gelu(mlp)))``. Its fused projections mix attention and MLP, so it is not split by token: ToCa
  reuses it on cached steps, which is what the reference HunyuanVideo ToCa ends up doing too (its single-stream
  ``update_cache`` is commented out, §4.4). (The reference also Taylor-updates the raw single-stream attention
  output, which its Taylor mode never reads; it is not kept here.)

The whole block stack runs through ONE ``run_blocks`` call per forward, as ``num_double_blocks +
num_single_blocks`` callables that each map the state (image tokens, text tokens) to the next one; a single-stream
block joins the two into its joint sequence and splits its output again (copies of the same values: the plain
model's numbers do not change). Every callable having the same state type is what lets a method bypass any range of
blocks (Δ-DiT; its ``cached_blocks = num_single_blocks`` is the reference FLUX variant's bypassed single-stream
stack) or the whole stack (TeaCache, DuCa) with one residual or output per stream. TeaCache's signal is the first
block's timestep-modulated image input, as TeaCache4HunyuanVideo computes it.

The embeddings, the text token refiner, every block's modulation and the final layer run at every step.

Conventions (as the official ``HYVideoDiffusionTransformer``): ``x`` (B, C, T, H, W) latents, ``t`` (B,) timesteps in
[0, 1000] as the flow-matching scheduler gives them, ``text_states`` (B, L, 4096) LLM hidden states with
``text_mask`` (B, L) 1 = real token / 0 = padding, ``text_states_2`` (B, 768) the CLIP pooled output, and
``guidance`` (B,) the embedded guidance scale already multiplied by 1000 (the official pipeline does that).

One deliberate difference in where things happen: the official pipeline computes the 3D RoPE tables and passes them
in; here the model computes them from the latent shape (same formula, fp32), so a sampler needs to know nothing about
positions.

Text padding is excluded from attention as keys, like the official flash-attn ``cu_seqlens``: real tokens see exactly
what they see officially. The official varlen call additionally lets padded text *queries* attend only among the
padding, where SDPA with a key mask lets them attend to the real tokens; padded tokens are never a key for a real
token, so the video output is the same either way. The mask is taken as given (the official code assumes right
padding and counts real tokens); for the right-padded masks tokenizers produce, both agree.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from common.caching import CacheMethod, LayerCache, cached, cached_group, cached_tokens
from common.caching import run_blocks as run_block_stack
from common.checkpoint import (
    CheckpointError,
    find_diffusers_model_folder,
    load_state_dict_checked,
    read_diffusers_folder,
    read_state_dict,
    require_path,
)
from common.sequence_parallel import (
    SequenceParallel,
    gather_sequence,
    joint_attention,
    shard_sequence,
    ulysses_joint_attention,
)

__all__ = [
    "HunyuanVideoParams",
    "HUNYUAN_VIDEO_PRESETS",
    "HunyuanVideo",
    "MMDoubleStreamBlock",
    "MMSingleStreamBlock",
    "JointAttention",
    "joint_attention",
    "timestep_embedding",
    "rope_frequencies",
    "apply_rope",
    "text_key_mask",
    "single_block_layer_index",
    "load_hunyuan_video",
]

TIME_EMBED_DIM = 256
REFINER_MLP_RATIO = 4.0


@dataclass(frozen=True)
class HunyuanVideoParams:
    """Architecture hyper-parameters, named as the official ``HYVideoDiffusionTransformer`` arguments.

    Fixed for every released checkpoint and therefore not fields: the tanh-GELU MLPs of the main blocks, RMS q/k
    norms (eps 1e-6), and the SiLU MLP, 4x width and missing q/k norms of the text token refiner.
    """

    in_channels: int
    out_channels: int
    patch_size: tuple[int, int, int]
    """(t, h, w) patch of the Conv3d patch embedding."""
    hidden_size: int
    heads_num: int
    mlp_width_ratio: float
    mm_double_blocks_depth: int
    mm_single_blocks_depth: int
    rope_dim_list: tuple[int, int, int]
    """Head-dim channels rotated by the t, h and w positions; they sum to the head dim."""
    rope_theta: float
    qkv_bias: bool
    guidance_embed: bool
    """True for the guidance-distilled model (``-cfgdistill``), which embeds the guidance scale."""
    text_states_dim: int
    text_states_dim_2: int
    refiner_depth: int = 2

    def __post_init__(self) -> None:
        positive = ("in_channels", "out_channels", "hidden_size", "heads_num", "text_states_dim", "text_states_dim_2")
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        for name in ("mm_double_blocks_depth", "mm_single_blocks_depth", "refiner_depth"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative int, got {value!r}")
        if len(self.patch_size) != 3 or any(not isinstance(p, int) or p < 1 for p in self.patch_size):
            raise ValueError(f"patch_size must be three positive ints (t, h, w), got {self.patch_size!r}")
        if self.hidden_size % self.heads_num:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by heads_num {self.heads_num}")
        if len(self.rope_dim_list) != 3 or sum(self.rope_dim_list) != self.head_dim:
            raise ValueError(
                f"rope_dim_list {self.rope_dim_list} must be 3 dims summing to the head dim {self.head_dim}"
            )
        if any(d % 2 for d in self.rope_dim_list):
            raise ValueError(f"every RoPE axis dim must be even, got {self.rope_dim_list}")
        if not self.mlp_width_ratio > 0 or not self.rope_theta > 0:
            raise ValueError(
                f"mlp_width_ratio and rope_theta must be positive, got {self.mlp_width_ratio}, {self.rope_theta}"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.heads_num

    @property
    def patch_volume(self) -> int:
        return math.prod(self.patch_size)


_HYVIDEO_T2 = HunyuanVideoParams(
    in_channels=16,
    out_channels=16,
    patch_size=(1, 2, 2),
    hidden_size=3072,
    heads_num=24,
    mlp_width_ratio=4.0,
    mm_double_blocks_depth=20,
    mm_single_blocks_depth=40,
    rope_dim_list=(16, 56, 56),
    rope_theta=256.0,
    qkv_bias=True,
    guidance_embed=False,
    text_states_dim=4096,
    text_states_dim_2=768,
)

HUNYUAN_VIDEO_PRESETS: dict[str, HunyuanVideoParams] = {
    "HYVideo-T/2": _HYVIDEO_T2,
    # The released text-to-video weights: guidance-distilled, run with cfg_scale 1 and an embedded guidance of 6.
    "HYVideo-T/2-cfgdistill": replace(_HYVIDEO_T2, guidance_embed=True),
    # Same class, tiny sizes: for tests and CPU smoke runs (head dim 16 = 4 + 6 + 6).
    "HYVideo-tiny": replace(
        _HYVIDEO_T2,
        hidden_size=64,
        heads_num=4,
        mm_double_blocks_depth=2,
        mm_single_blocks_depth=2,
        rope_dim_list=(4, 6, 6),
        guidance_embed=True,
        text_states_dim=32,
        text_states_dim_2=16,
    ),
}


# ----------------------------------------------------------------------------------------------------- functions


def timestep_embedding(t: torch.Tensor, dim: int = TIME_EMBED_DIM, max_period: int = 10000) -> torch.Tensor:
    """(N,) timesteps (already on the 0-1000 scale) -> (N, dim) fp32 [cos | sin] embedding, frequencies
    exp(-ln(max_period) * i / half) (the official formula; diffusers' ``Timesteps(flip_sin_to_cos=True,
    downscale_freq_shift=0)`` is the same function)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


def rope_frequencies(
    grid: Sequence[int], rope_dim_list: Sequence[int], theta: float, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """3D RoPE tables (cos, sin), each (T * H * W, head_dim) fp32, for the token grid ``grid`` = (T, H, W) in
    patch-embedding order (t slowest, w fastest).

    The official ``get_nd_rotary_pos_embed(rope_dim_list, grid, theta, use_real=True)``: axis i rotates its
    ``rope_dim_list[i]`` channels with frequencies theta^(-2k/d_i) times the integer position on that axis, each
    frequency repeated for the two channels of its (interleaved) pair.
    """
    axes = [torch.arange(n, dtype=torch.float32, device=device) for n in grid]
    positions = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=0).reshape(len(grid), -1)  # (3, L)
    cos, sin = [], []
    for pos, dim in zip(positions, rope_dim_list, strict=True):
        exponent = torch.arange(0, dim, 2, dtype=torch.float32, device=device)[: dim // 2] / dim
        freqs = torch.outer(pos, 1.0 / (theta**exponent))  # (L, dim / 2)
        cos.append(freqs.cos().repeat_interleave(2, dim=1))
        sin.append(freqs.sin().repeat_interleave(2, dim=1))
    return torch.cat(cos, dim=1), torch.cat(sin, dim=1)


def apply_rope(x: torch.Tensor, freqs: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Rotate the channel pairs (x[2i], x[2i+1]) of (B, L, heads, head_dim) by the (L, head_dim) tables, in fp32."""
    cos, sin = (f[None, :, None, :] for f in freqs)
    x_float = x.float()
    real, imag = x_float.reshape(*x.shape[:-1], -1, 2).unbind(-1)
    rotated = torch.stack([-imag, real], dim=-1).flatten(3)
    return (x_float * cos + rotated * sin).type_as(x)


def text_key_mask(text_mask: torch.Tensor | None) -> torch.Tensor | None:
    """(B, L_txt) boolean mask of the text tokens that may be attended to, or None when none is padding (so the
    unmasked, flash-capable attention runs). A meta tensor cannot be inspected and is kept as a mask."""
    if text_mask is None:
        return None
    mask = text_mask.bool()
    if not mask.is_meta and bool(mask.all()):
        return None
    return mask


JointAttention = Callable[..., tuple[torch.Tensor, torch.Tensor]]
"""Signature of :func:`~common.sequence_parallel.joint_attention`: ``(q_img, k_img, v_img, q_txt, k_txt, v_txt,
txt_mask) -> (out_img, out_txt)``, every tensor (B, L_stream, heads, head_dim), image first as officially; with
sequence parallelism :func:`~common.sequence_parallel.ulysses_joint_attention` takes its place (image tokens
sharded, text tokens whole)."""


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """(B, L, D) with (B, D) shift and scale."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def apply_gate(x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """(B, L, D) times a (B, D) gate."""
    return x * gate.unsqueeze(1)


def split_heads(x: torch.Tensor, num: int, heads: int) -> tuple[torch.Tensor, ...]:
    """(B, L, num * heads * head_dim) -> ``num`` tensors (B, L, heads, head_dim) (the official "B L (K H D)")."""
    B, L, _ = x.shape
    return x.reshape(B, L, num, heads, -1).unbind(2)


# ------------------------------------------------------------------------------------------------------- modules


class RMSNorm(nn.Module):
    """RMS norm over the last dim, computed in fp32, eps 1e-6, learned ``weight`` (the official q/k norm)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_float = x.float()
        normed = x_float * torch.rsqrt(x_float.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


class PatchEmbed(nn.Module):
    """(B, C, T, H, W) -> (B, T/pt * H/ph * W/pw, D) tokens by a strided Conv3d, t slowest and w fastest."""

    def __init__(self, patch_size: tuple[int, int, int], in_channels: int, hidden_size: int) -> None:
        super().__init__()
        self.proj = nn.Conv3d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class TimestepEmbedder(nn.Module):
    """Scalar (timestep or guidance, on the 0-1000 scale) -> (B, D) by a sinusoidal embedding and a SiLU MLP."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(TIME_EMBED_DIM, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_embedding(t).to(self.mlp[0].weight.dtype))


class MLPEmbedder(nn.Module):
    """The CLIP pooled vector -> (B, D)."""

    def __init__(self, in_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.in_layer = nn.Linear(in_dim, hidden_dim)
        self.silu = nn.SiLU()
        self.out_layer = nn.Linear(hidden_dim, hidden_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_layer(self.silu(self.in_layer(x)))


class TextProjection(nn.Module):
    """The token refiner's mean text state -> (B, D) context vector."""

    def __init__(self, in_channels: int, hidden_size: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(in_channels, hidden_size)
        self.act_1 = nn.SiLU()
        self.linear_2 = nn.Linear(hidden_size, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act_1(self.linear_1(x)))


class MLP(nn.Module):
    """fc1 -> activation -> fc2 (the official ``MLP`` without its identity norm and zero dropouts)."""

    def __init__(self, in_channels: int, hidden_channels: int, act: nn.Module) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_channels, hidden_channels)
        self.act = act
        self.fc2 = nn.Linear(hidden_channels, in_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Modulation(nn.Module):
    """vec (B, D) -> ``factor`` * D modulation parameters (the official ``ModulateDiT``)."""

    def __init__(self, hidden_size: int, factor: int) -> None:
        super().__init__()
        self.factor = factor
        self.act = nn.SiLU()
        self.linear = nn.Linear(hidden_size, factor * hidden_size)

    def forward(self, vec: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.linear(self.act(vec)).chunk(self.factor, dim=-1)


class IndividualTokenRefinerBlock(nn.Module):
    """Pre-norm self-attention + SiLU MLP over the text tokens, each gated by the (timestep + context) vector."""

    def __init__(self, hidden_size: int, heads_num: int, qkv_bias: bool) -> None:
        super().__init__()
        self.heads_num = heads_num
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=True, eps=1e-6)
        self.self_attn_qkv = nn.Linear(hidden_size, 3 * hidden_size, bias=qkv_bias)
        self.self_attn_proj = nn.Linear(hidden_size, hidden_size, bias=qkv_bias)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=True, eps=1e-6)
        self.mlp = MLP(hidden_size, int(hidden_size * REFINER_MLP_RATIO), nn.SiLU())
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        gate_msa, gate_mlp = self.adaLN_modulation(c).chunk(2, dim=1)  # (B, D) each
        q, k, v = split_heads(self.self_attn_qkv(self.norm1(x)), 3, self.heads_num)  # (B, L, heads, head_dim)
        attn = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask)
        x = x + apply_gate(self.self_attn_proj(attn.transpose(1, 2).flatten(2)), gate_msa)
        return x + apply_gate(self.mlp(self.norm2(x)), gate_mlp)


class IndividualTokenRefiner(nn.Module):
    def __init__(self, hidden_size: int, heads_num: int, depth: int, qkv_bias: bool) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            [IndividualTokenRefinerBlock(hidden_size, heads_num, qkv_bias) for _ in range(depth)]
        )
        self._mask_cache: tuple[torch.Tensor, int, torch.Tensor] | None = None

    def attention_mask(self, mask: torch.Tensor | None) -> torch.Tensor | None:
        """(B, 1, L, L) boolean attention mask of a (B, L) text mask, or None without one.

        The last one is kept while the same, unmodified ``mask`` tensor comes back (a sampler passes one mask at
        every step), so it is built once per video. (Inference tensors have no version counter: never kept.)"""
        if mask is None:
            return None
        keep = not mask.is_inference()
        cached_mask = self._mask_cache
        if keep and cached_mask is not None and cached_mask[0] is mask and cached_mask[1] == mask._version:
            return cached_mask[2]
        # The official mask: a pair attends iff both tokens are real; key 0 is always allowed so that the rows of
        # padding queries are not empty (NaN). (B, 1, L, L), small: text only.
        real = mask.bool()
        attn_mask = real[:, None, None, :] & real[:, None, :, None]
        attn_mask[..., 0] = True
        self._mask_cache = (mask, mask._version, attn_mask) if keep else None
        return attn_mask

    def forward(self, x: torch.Tensor, c: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        attn_mask = self.attention_mask(mask)
        for block in self.blocks:
            x = block(x, c, attn_mask)
        return x


class SingleTokenRefiner(nn.Module):
    """Refines the LLM text states: input projection, then ``depth`` refiner blocks conditioned on the timestep and
    the masked mean of the text states (LI-DiT, arXiv 2406.11831). Runs at every step: it depends on t."""

    def __init__(self, in_channels: int, hidden_size: int, heads_num: int, depth: int, qkv_bias: bool) -> None:
        super().__init__()
        self.input_embedder = nn.Linear(in_channels, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.c_embedder = TextProjection(in_channels, hidden_size)
        self.individual_token_refiner = IndividualTokenRefiner(hidden_size, heads_num, depth, qkv_bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """x (B, L, text_states_dim), t (B,), mask (B, L) or None -> (B, L, D)."""
        if mask is None:
            context = x.mean(dim=1)
        else:
            mask_float = mask.float().unsqueeze(-1)  # (B, L, 1)
            context = (x * mask_float).sum(dim=1) / mask_float.sum(dim=1)
        c = self.t_embedder(t) + self.c_embedder(context.to(x.dtype))  # (B, D)
        return self.individual_token_refiner(self.input_embedder(x), c, mask)


class MMDoubleStreamBlock(nn.Module):
    """Separate weights for the video and text streams, one joint attention over [img, txt] (SD3 / FLUX MM-DiT)."""

    compile_regions = ("img_mod", "txt_mod", "attention", "img_mlp", "txt_mlp")
    """What common.compile.compile_blocks compiles: the per-step modulations and what the cache wraps."""

    def __init__(self, hidden_size: int, heads_num: int, mlp_width_ratio: float, qkv_bias: bool) -> None:
        super().__init__()
        self.heads_num = heads_num
        head_dim = hidden_size // heads_num
        mlp_hidden_dim = int(hidden_size * mlp_width_ratio)

        self.img_mod = Modulation(hidden_size, factor=6)
        self.img_norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.img_attn_qkv = nn.Linear(hidden_size, 3 * hidden_size, bias=qkv_bias)
        self.img_attn_q_norm = RMSNorm(head_dim)
        self.img_attn_k_norm = RMSNorm(head_dim)
        self.img_attn_proj = nn.Linear(hidden_size, hidden_size, bias=qkv_bias)
        self.img_norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.img_mlp = MLP(hidden_size, mlp_hidden_dim, nn.GELU(approximate="tanh"))

        self.txt_mod = Modulation(hidden_size, factor=6)
        self.txt_norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.txt_attn_qkv = nn.Linear(hidden_size, 3 * hidden_size, bias=qkv_bias)
        self.txt_attn_q_norm = RMSNorm(head_dim)
        self.txt_attn_k_norm = RMSNorm(head_dim)
        self.txt_attn_proj = nn.Linear(hidden_size, hidden_size, bias=qkv_bias)
        self.txt_norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.txt_mlp = MLP(hidden_size, mlp_hidden_dim, nn.GELU(approximate="tanh"))

    def attention(
        self,
        img: torch.Tensor,
        txt: torch.Tensor,
        img_mod: tuple[torch.Tensor, ...],
        txt_mod: tuple[torch.Tensor, ...],
        freqs: tuple[torch.Tensor, torch.Tensor],
        txt_mask: torch.Tensor | None,
        attn_fn: JointAttention,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The un-projected joint attention outputs (img part, txt part), each (B, L_stream, D)."""
        img_q, img_k, img_v = split_heads(
            self.img_attn_qkv(modulate(self.img_norm1(img), img_mod[0], img_mod[1])), 3, self.heads_num
        )  # (B, L_img, heads, head_dim) each
        img_q = self.img_attn_q_norm(img_q).to(img_v)
        img_k = self.img_attn_k_norm(img_k).to(img_v)
        img_q, img_k = apply_rope(img_q, freqs), apply_rope(img_k, freqs)

        txt_q, txt_k, txt_v = split_heads(
            self.txt_attn_qkv(modulate(self.txt_norm1(txt), txt_mod[0], txt_mod[1])), 3, self.heads_num
        )  # (B, L_txt, heads, head_dim) each
        txt_q = self.txt_attn_q_norm(txt_q).to(txt_v)
        txt_k = self.txt_attn_k_norm(txt_k).to(txt_v)

        img_attn, txt_attn = attn_fn(img_q, img_k, img_v, txt_q, txt_k, txt_v, txt_mask)
        return img_attn.flatten(2), txt_attn.flatten(2)

    def forward(
        self,
        img: torch.Tensor,
        txt: torch.Tensor,
        vec: torch.Tensor,
        freqs: tuple[torch.Tensor, torch.Tensor],
        txt_mask: torch.Tensor | None,
        cache: LayerCache | None = None,
        attn_fn: JointAttention = joint_attention,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # Modulations are recomputed at every step, forecast steps included: the gates depend on t.
        img_mod = self.img_mod(vec)  # shift1, scale1, gate1, shift2, scale2, gate2, each (B, D)
        txt_mod = self.txt_mod(vec)

        # One joint attention feeds both projections: at a full step it runs once and both outputs are recorded; at a
        # forecast step both are forecast and it never runs.
        def joint_attn() -> tuple[torch.Tensor, torch.Tensor]:
            img_joint, txt_joint = self.attention(img, txt, img_mod, txt_mod, freqs, txt_mask, attn_fn)
            return self.img_attn_proj(img_joint), self.txt_attn_proj(txt_joint)

        img_attn, txt_attn = cached_group(cache, ("img_attn", "txt_attn"), joint_attn)  # (B, L_img, D), (B, L_txt, D)

        # The MLPs are token-wise: a method may run them on some tokens only (ToCa).
        img = img + apply_gate(img_attn, img_mod[2])
        img_mlp = cached_tokens(
            cache, "img_mlp", lambda: modulate(self.img_norm2(img), img_mod[3], img_mod[4]), self.img_mlp
        )
        img = img + apply_gate(img_mlp, img_mod[5])

        txt = txt + apply_gate(txt_attn, txt_mod[2])
        txt_mlp = cached_tokens(
            cache, "txt_mlp", lambda: modulate(self.txt_norm2(txt), txt_mod[3], txt_mod[4]), self.txt_mlp
        )
        txt = txt + apply_gate(txt_mlp, txt_mod[5])
        return img, txt

    def modulated_input(self, img: torch.Tensor, vec: torch.Tensor) -> torch.Tensor:
        """The image attention's input (B, L_img, D): the timestep-modulated image tokens TeaCache compares across
        steps (TeaCache4HunyuanVideo: ``img_mod`` shift1/scale1 applied to ``img_norm1(img)``)."""
        shift, scale = self.img_mod(vec)[:2]
        return modulate(self.img_norm1(img), shift, scale)


class MMSingleStreamBlock(nn.Module):
    """Parallel attention + MLP over the concatenated [img, txt] sequence with fused input/output projections
    (ViT-22B, arXiv 2302.05442); RoPE on the image tokens only."""

    compile_regions = ("modulation", "fused")
    """What common.compile.compile_blocks compiles: the per-step modulation and what the cache wraps."""

    def __init__(self, hidden_size: int, heads_num: int, mlp_width_ratio: float) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.heads_num = heads_num
        head_dim = hidden_size // heads_num
        self.mlp_hidden_dim = int(hidden_size * mlp_width_ratio)
        # qkv and mlp_in fused.
        self.linear1 = nn.Linear(hidden_size, 3 * hidden_size + self.mlp_hidden_dim)
        # proj and mlp_out fused.
        self.linear2 = nn.Linear(hidden_size + self.mlp_hidden_dim, hidden_size)
        self.q_norm = RMSNorm(head_dim)
        self.k_norm = RMSNorm(head_dim)
        self.pre_norm = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp_act = nn.GELU(approximate="tanh")
        self.modulation = Modulation(hidden_size, factor=3)

    def fused(
        self,
        x_mod: torch.Tensor,
        txt_len: int,
        freqs: tuple[torch.Tensor, torch.Tensor],
        txt_mask: torch.Tensor | None,
        attn_fn: JointAttention,
    ) -> torch.Tensor:
        """linear2(cat(attention, gelu(mlp))) of the modulated input (B, L, D): the block's output before its gate."""
        qkv, mlp = torch.split(self.linear1(x_mod), [3 * self.hidden_size, self.mlp_hidden_dim], dim=-1)
        q, k, v = split_heads(qkv, 3, self.heads_num)  # (B, L, heads, head_dim) each
        q = self.q_norm(q).to(v)
        k = self.k_norm(k).to(v)
        num_img = x_mod.shape[1] - txt_len
        img_q, txt_q = q[:, :num_img], q[:, num_img:]
        img_k, txt_k = k[:, :num_img], k[:, num_img:]
        img_q, img_k = apply_rope(img_q, freqs), apply_rope(img_k, freqs)
        img_attn, txt_attn = attn_fn(img_q, img_k, v[:, :num_img], txt_q, txt_k, v[:, num_img:], txt_mask)
        attn = torch.cat((img_attn, txt_attn), dim=1).flatten(2)  # (B, L, D)
        return self.linear2(torch.cat((attn, self.mlp_act(mlp)), dim=2))

    def forward(
        self,
        x: torch.Tensor,
        vec: torch.Tensor,
        txt_len: int,
        freqs: tuple[torch.Tensor, torch.Tensor],
        txt_mask: torch.Tensor | None,
        cache: LayerCache | None = None,
        attn_fn: JointAttention = joint_attention,
    ) -> torch.Tensor:
        shift, scale, gate = self.modulation(vec)  # (B, D) each
        # The fused projections mix attention and MLP channels, so the block is not split by token: ToCa reuses it
        # on cached steps (as the reference HunyuanVideo ToCa, whose single-stream token update is disabled).
        total = cached(
            cache,
            "total",
            lambda: self.fused(modulate(self.pre_norm(x), shift, scale), txt_len, freqs, txt_mask, attn_fn),
        )  # (B, L, D)
        return x + apply_gate(total, gate)

    def modulated_input(self, x: torch.Tensor, vec: torch.Tensor) -> torch.Tensor:
        """The timestep-modulated input (B, L, D) of the fused projections; token-wise, so any token subset may be
        passed."""
        shift, scale = self.modulation(vec)[:2]
        return modulate(self.pre_norm(x), shift, scale)


class FinalLayer(nn.Module):
    """adaLN-modulated LayerNorm and a linear to one patch of output channels per token."""

    def __init__(self, hidden_size: int, patch_volume: int, out_channels: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_volume * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: torch.Tensor, vec: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(vec).chunk(2, dim=1)  # stored (shift, scale), unlike diffusers
        return self.linear(modulate(self.norm_final(x), shift, scale))


def single_block_layer_index(params: HunyuanVideoParams, j: int) -> int:
    """Cache layer index of single-stream block ``j``: offset by the number of double blocks."""
    return params.mm_double_blocks_depth + j


class HunyuanVideo(nn.Module):
    """The HunyuanVideo diffusion transformer (the official ``HYVideoDiffusionTransformer``).

    The forward is split into small methods (:meth:`token_grid`, :meth:`patchify`, :meth:`rope`,
    :meth:`embed_conditions`, :meth:`run_blocks`, :meth:`final_layer`, :meth:`unpatchify`) so that a sequence-parallel
    wrapper can shard the image tokens after the patch embedding, slice the RoPE tables alike and pass its own joint
    attention to :meth:`run_blocks`.
    """

    def __init__(self, params: HunyuanVideoParams) -> None:
        super().__init__()
        self.params = params
        D = params.hidden_size
        self.img_in = PatchEmbed(params.patch_size, params.in_channels, D)
        self.txt_in = SingleTokenRefiner(
            params.text_states_dim, D, params.heads_num, params.refiner_depth, params.qkv_bias
        )
        self.time_in = TimestepEmbedder(D)
        self.vector_in = MLPEmbedder(params.text_states_dim_2, D)
        self.guidance_in = TimestepEmbedder(D) if params.guidance_embed else None
        self.double_blocks = nn.ModuleList(
            [
                MMDoubleStreamBlock(D, params.heads_num, params.mlp_width_ratio, params.qkv_bias)
                for _ in range(params.mm_double_blocks_depth)
            ]
        )
        self.single_blocks = nn.ModuleList(
            [
                MMSingleStreamBlock(D, params.heads_num, params.mlp_width_ratio)
                for _ in range(params.mm_single_blocks_depth)
            ]
        )
        self.final_layer = FinalLayer(D, params.patch_volume, params.out_channels)
        self._rope_cache: tuple[tuple, tuple[torch.Tensor, torch.Tensor]] | None = None

    def token_grid(self, latent_shape: Sequence[int]) -> tuple[int, int, int]:
        """(T, H, W) token grid of a (B, C, T, H, W) latent; every axis must be a whole number of patches."""
        *_, T, H, W = latent_shape
        if any(size % patch for size, patch in zip((T, H, W), self.params.patch_size, strict=True)):
            raise ValueError(
                f"latent (T, H, W) = {(T, H, W)} is not divisible by the patch size {self.params.patch_size}"
            )
        pt, ph, pw = self.params.patch_size
        return T // pt, H // ph, W // pw

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, T, H, W) latents -> (B, L_img, D) tokens in grid order (t slowest, w fastest)."""
        return self.img_in(x.to(self.img_in.proj.weight.dtype))

    def rope(self, grid: Sequence[int], device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, sin) RoPE tables, each (L_img, head_dim) fp32, of the token grid; rows follow :meth:`patchify`.

        The last tables are kept (one entry, keyed by grid and device), so the steps of a video build them once.
        Callers must not modify them in place."""
        key = (tuple(grid), torch.device(device) if device is not None else None, torch.is_inference_mode_enabled())
        if self._rope_cache is None or self._rope_cache[0] != key:
            self._rope_cache = (key, rope_frequencies(grid, self.params.rope_dim_list, self.params.rope_theta, device))
        return self._rope_cache[1]

    def embed_conditions(
        self,
        t: torch.Tensor,
        text_states: torch.Tensor,
        text_mask: torch.Tensor | None,
        text_states_2: torch.Tensor,
        guidance: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The modulation vector (B, D) and the refined text tokens (B, L_txt, D)."""
        dtype = self.vector_in.in_layer.weight.dtype
        vec = self.time_in(t) + self.vector_in(text_states_2.to(dtype))
        if self.guidance_in is not None:
            if guidance is None:
                raise ValueError(
                    "this HunyuanVideo preset is guidance-distilled (guidance_embed=True): pass guidance, the embedded "
                    "guidance scale times 1000 (e.g. 6.0 * 1000), one value per batch element"
                )
            vec = vec + self.guidance_in(guidance)
        txt = self.txt_in(text_states.to(dtype), t, text_mask)
        return vec, txt

    def run_blocks(
        self,
        img: torch.Tensor,
        txt: torch.Tensor,
        vec: torch.Tensor,
        freqs: tuple[torch.Tensor, torch.Tensor],
        txt_mask: torch.Tensor | None,
        cache: CacheMethod | None = None,
        attn_fn: JointAttention = joint_attention,
        sequence_parallel: SequenceParallel | None = None,
    ) -> torch.Tensor:
        """The double- then single-stream blocks over img (B, L_img, D) and txt (B, L_txt, D), in ONE call of the
        cache's ``run_blocks``; returns the image tokens (B, L_img, D). ``freqs`` rows correspond to the rows of
        ``img``, which under ``sequence_parallel`` are this rank's shard (the TeaCache signal is then gathered)."""
        blocks = [
            self._double_block_step(i, vec, freqs, txt_mask, cache, attn_fn) for i in range(len(self.double_blocks))
        ]
        blocks += [
            self._single_block_step(j, vec, freqs, txt_mask, cache, attn_fn) for j in range(len(self.single_blocks))
        ]
        signal = functools.partial(self.teacache_signal, img, txt, vec, sequence_parallel)
        img, _ = run_block_stack(cache, blocks, (img, txt), signal=signal)
        return img

    def _double_block_step(
        self,
        i: int,
        vec: torch.Tensor,
        freqs: tuple[torch.Tensor, torch.Tensor],
        txt_mask: torch.Tensor | None,
        cache: CacheMethod | None,
        attn_fn: JointAttention,
    ) -> Callable[[tuple[torch.Tensor, torch.Tensor]], tuple[torch.Tensor, torch.Tensor]]:
        """Double-stream block ``i`` as a (img, txt) -> (img, txt) step of the stack."""
        block, layer = self.double_blocks[i], None if cache is None else cache.layer(i)
        return lambda state: block(*state, vec, freqs, txt_mask, cache=layer, attn_fn=attn_fn)

    def _single_block_step(
        self,
        j: int,
        vec: torch.Tensor,
        freqs: tuple[torch.Tensor, torch.Tensor],
        txt_mask: torch.Tensor | None,
        cache: CacheMethod | None,
        attn_fn: JointAttention,
    ) -> Callable[[tuple[torch.Tensor, torch.Tensor]], tuple[torch.Tensor, torch.Tensor]]:
        """Single-stream block ``j`` as a (img, txt) -> (img, txt) step: it runs on the joint sequence [img; txt] and
        its output is split back, so that every step of the stack has the same state type."""
        block = self.single_blocks[j]
        layer = None if cache is None else cache.layer(single_block_layer_index(self.params, j))

        def step(state: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
            img, txt = state
            x = block(torch.cat(state, dim=1), vec, txt.shape[1], freqs, txt_mask, cache=layer, attn_fn=attn_fn)
            return x[:, : img.shape[1]], x[:, img.shape[1] :]

        return step

    def teacache_signal(
        self,
        img: torch.Tensor,
        txt: torch.Tensor,
        vec: torch.Tensor,
        sequence_parallel: SequenceParallel | None = None,
    ) -> torch.Tensor:
        """The first block's timestep-modulated image input (B, L_img, D), TeaCache's step-skip signal.

        Under sequence parallelism every rank holds a shard of the image tokens; the signal is gathered, so that all
        ranks of the group hold the same bytes and make the same skip decision (the one a single process makes)."""
        if len(self.double_blocks):
            signal = self.double_blocks[0].modulated_input(img, vec)
        else:  # token-wise, so the image rows of the joint input are the modulated image tokens alone
            signal = self.single_blocks[0].modulated_input(img, vec)
        if sequence_parallel is not None and sequence_parallel.world_size > 1:
            signal = gather_sequence(signal, 1, sequence_parallel)
        return signal

    def unpatchify(self, x: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
        """(B, T * H * W, patch_volume * C) -> (B, C, T * pt, H * ph, W * pw)."""
        T, H, W = grid
        pt, ph, pw = self.params.patch_size
        C = self.params.out_channels
        x = x.reshape(x.shape[0], T, H, W, C, pt, ph, pw)
        x = x.permute(0, 4, 1, 5, 2, 6, 3, 7)  # (B, C, T, pt, H, ph, W, pw)
        return x.reshape(x.shape[0], C, T * pt, H * ph, W * pw)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        text_states: torch.Tensor,
        text_mask: torch.Tensor | None,
        text_states_2: torch.Tensor,
        guidance: torch.Tensor | None = None,
        cache: CacheMethod | None = None,
        sequence_parallel: SequenceParallel | None = None,
    ) -> torch.Tensor:
        """x (B, C, T, H, W) latents, t (B,) in [0, 1000], text_states (B, L_txt, text_states_dim), text_mask (B, L_txt)
        1 = real token / 0 = padding (None: no padding), text_states_2 (B, text_states_dim_2), guidance (B,) embedded
        guidance scale x 1000 (guidance-distilled presets only; ignored otherwise, as officially) -> (B, C, T, H, W)
        velocity prediction, in the weights' dtype.

        With ``sequence_parallel`` (every rank of its group calls forward with the same inputs), each rank runs the
        blocks on its contiguous shard of the image tokens (and the whole text), attention goes through Ulysses
        all-to-alls, and the final tokens are gathered: every rank returns the full prediction. A cache passed in
        then holds this rank's shard only; every method's decisions are the same on all ranks of the group (the
        schedules are functions of the step, TeaCache's signal is gathered), so the ranks stay in step."""
        if x.ndim != 5 or text_states.ndim != 3:
            raise ValueError(
                f"x must be (B, C, T, H, W) and text_states (B, L, C); "
                f"got {tuple(x.shape)} and {tuple(text_states.shape)}"
            )
        grid = self.token_grid(x.shape)
        img = self.patchify(x)  # (B, L_img, D)
        freqs = self.rope(grid, device=x.device)  # 2 x (L_img, head_dim)
        vec, txt = self.embed_conditions(t, text_states, text_mask, text_states_2, guidance)  # (B, D), (B, L_txt, D)
        attn_fn: JointAttention = joint_attention
        if sequence_parallel is not None and sequence_parallel.world_size > 1:
            img = shard_sequence(img, 1, sequence_parallel)  # (B, L_img / K, D)
            freqs = tuple(shard_sequence(f, 0, sequence_parallel) for f in freqs)  # 2 x (L_img / K, head_dim)
            attn_fn = functools.partial(ulysses_joint_attention, sp=sequence_parallel)
        txt_mask = text_key_mask(text_mask)
        img = self.run_blocks(img, txt, vec, freqs, txt_mask, cache, attn_fn, sequence_parallel)  # (B, L_img[/K], D)
        img = self.final_layer(img, vec)  # (B, L_img[/K], patch_volume * C)
        if sequence_parallel is not None:
            img = gather_sequence(img, 1, sequence_parallel)  # (B, L_img, patch_volume * C)
        return self.unpatchify(img, grid)  # (B, C, T, H, W)


# ------------------------------------------------------------------------------------------------------- loading


def _missing_checkpoint_help() -> str:
    # Imported here: weights imports this module; it owns where the official files live.
    from .weights import DEFAULT_MODEL_BASE, OFFICIAL_DIT, OFFICIAL_REPO

    return (
        "The official HunyuanVideo transformer weights are mp_rank_00_model_states.pt from huggingface "
        f"{OFFICIAL_REPO}, placed at {DEFAULT_MODEL_BASE}/{OFFICIAL_DIT}, e.g.\n"
        f"  hf download {OFFICIAL_REPO} --local-dir ./{DEFAULT_MODEL_BASE}\n"
        "A .safetensors in the official layout, or a diffusers transformer/ folder (config.json + "
        "diffusion_pytorch_model*.safetensors, e.g. from hunyuanvideo-community/HunyuanVideo) works too."
    )


def load_hunyuan_video(
    path: str | Path,
    name: str = "HYVideo-T/2-cfgdistill",
    dtype: torch.dtype | None = None,
    load_key: str = "module",
) -> HunyuanVideo:
    """Build the model on the meta device and fill it from a checkpoint; the weights keep the file's dtype unless
    ``dtype`` is given. Any mismatch is one :class:`~common.checkpoint.CheckpointError` listing every missing,
    unexpected or mis-shaped key.

    ``path`` is one of: the official ``mp_rank_00_model_states.pt`` (weights under ``load_key``: ``module``, or
    ``ema``), a ``.safetensors`` / ``.pt`` state dict in the official layout (or in diffusers' layout, recognised by
    its keys and converted), or a diffusers ``transformer/`` folder, whose ``config.json`` then defines the
    architecture (``name`` is not used).
    """
    # Imported here: diffusers_format imports this module for HunyuanVideoParams.
    from .diffusers_format import diffusers_to_official, hunyuan_params_from_diffusers_config, is_diffusers_layout

    resolved = require_path(path, "HunyuanVideo transformer checkpoint", _missing_checkpoint_help())
    if resolved.is_dir():
        folder = find_diffusers_model_folder(resolved, "transformer", "HunyuanVideo diffusers transformer folder")
        weights, config = read_diffusers_folder(folder)
        try:
            params = hunyuan_params_from_diffusers_config(config)
        except (ValueError, TypeError) as exc:  # unsupported variant, or values HunyuanVideoParams refuses
            raise CheckpointError(
                f"{(folder / 'config.json').absolute()} is not a supported HunyuanVideo transformer config: {exc}\n"
                "Use the text-to-video transformer/ of hunyuanvideo-community/HunyuanVideo (image-to-video and "
                "other variants are not supported)."
            ) from exc
        state_dict = diffusers_to_official(weights)
        model_desc = f"HunyuanVideo from the diffusers config {folder / 'config.json'}"
    else:
        if name not in HUNYUAN_VIDEO_PRESETS:
            raise ValueError(f"unknown HunyuanVideo preset {name!r}; choose from {sorted(HUNYUAN_VIDEO_PRESETS)}")
        params = HUNYUAN_VIDEO_PRESETS[name]
        state_dict = read_state_dict(resolved, nested=(load_key,))
        if is_diffusers_layout(state_dict):
            state_dict = diffusers_to_official(state_dict)
        model_desc = f"HunyuanVideo preset {name!r}"
    with torch.device("meta"):
        model = HunyuanVideo(params)
    hint = (
        "HYVideo-T/2-cfgdistill (the released weights) has guidance_in.* keys and HYVideo-T/2 has none: pick the "
        "preset that matches the file. Official .pt files hold their weights under 'module' (or 'ema': load_key)."
    )
    load_state_dict_checked(model, state_dict, str(resolved), model_desc=model_desc, hint=hint)
    if dtype is not None:
        model = model.to(dtype)
    return model.eval()
