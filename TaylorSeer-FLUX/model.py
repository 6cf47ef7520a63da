"""FLUX.1 (Black Forest Labs) rectified-flow transformer with the caching methods' calls inline.

Parameter names equal the keys of BFL's checkpoints (``flux1-dev.safetensors``, ``flux1-schnell.safetensors``), so
they load unchanged. With ``cache=None`` every forward is the plain FLUX transformer; with a
:class:`~common.caching.CacheMethod` (TaylorSeer, FORA, Δ-DiT, ToCa, DuCa, TeaCache; see :mod:`common.methods`), the
method decides, step by step, which of these module outputs (after their output projection, before the adaLN gate)
are computed and which are forecast or reused, where the TaylorSeer reference caches them:

* double-stream block ``i`` -> ``cache.layer(i)``, keys ``"img_attn"``, ``"img_mlp"``, ``"txt_attn"``, ``"txt_mlp"``.
  The image and text attentions are ONE joint attention: when it is computed, it runs once and both projections are
  recorded; when it is not, neither the qkv projections, the attention nor the output projections run. The two MLPs
  are token-wise (:func:`~common.caching.cached_tokens`): ToCa recomputes them on its fresh tokens only.
* single-stream block ``j`` -> ``cache.layer(depth + j)`` (indices offset by the number of double blocks, so they
  never collide with the double blocks' keys), key ``"total"`` = ``linear2(cat(attn, gelu(mlp)))``.

The whole stack (double blocks, then single blocks) is ONE :func:`~common.caching.run_blocks` call per forward, on
the joint sequence ``[txt, img]`` (B, L_txt + L_img, D) from the first block to the last: each double block splits it
into its two streams and joins its outputs again. One state type from end to end is what lets Δ-DiT bypass any block
range (the reference's FLUX variant: the whole single-stream stack, ``cached_blocks = depth_single_blocks``),
TeaCache add the stack's residual, and DuCa reuse the stack's output. TeaCache's signal is the first double block's
modulated image input, ``img_mod1`` applied to ``img_norm1(img)``, as TeaCache4FLUX.

The modulations (adaLN shifts, scales and gates) depend on the timestep and are recomputed at every step.

Conventions (as BFL's ``flux.model.Flux``): ``timesteps`` are in [0, 1] (1 = pure noise) and are multiplied by 1000
before the sinusoidal embedding; ``guidance`` is the raw guidance scale (e.g. 3.5), embedded the same way (also times
1000); ``img_ids``/``txt_ids`` are (B, L, 3) position ids (t, h, w) for the 3-axis RoPE.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn as nn

from common.attention import attention
from common.caching import CacheMethod, LayerCache, cached, cached_group, cached_tokens, run_blocks
from common.checkpoint import (
    CheckpointError,
    find_diffusers_model_folder,
    load_state_dict_checked,
    read_diffusers_folder,
    read_state_dict,
    require_path,
)

__all__ = [
    "FluxParams",
    "FLUX_PRESETS",
    "Flux",
    "DoubleStreamBlock",
    "SingleStreamBlock",
    "timestep_embedding",
    "rope",
    "apply_rope",
    "single_block_layer_index",
    "load_flux",
]

TIME_FACTOR = 1000.0
TIME_EMBED_DIM = 256


@dataclass(frozen=True)
class FluxParams:
    """Architecture hyper-parameters, named as BFL's ``flux.model.FluxParams``."""

    in_channels: int
    vec_in_dim: int
    context_in_dim: int
    hidden_size: int
    mlp_ratio: float
    num_heads: int
    depth: int
    depth_single_blocks: int
    axes_dim: tuple[int, ...]
    theta: int
    qkv_bias: bool
    guidance_embed: bool

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        head_dim = self.hidden_size // self.num_heads
        if sum(self.axes_dim) != head_dim:
            raise ValueError(f"sum(axes_dim) = {sum(self.axes_dim)} must equal the head dim {head_dim}")
        if any(d % 2 for d in self.axes_dim):
            raise ValueError(f"every RoPE axis dim must be even, got {tuple(self.axes_dim)}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def out_channels(self) -> int:
        return self.in_channels


_FLUX_DEV = FluxParams(
    in_channels=64,
    vec_in_dim=768,
    context_in_dim=4096,
    hidden_size=3072,
    mlp_ratio=4.0,
    num_heads=24,
    depth=19,
    depth_single_blocks=38,
    axes_dim=(16, 56, 56),
    theta=10_000,
    qkv_bias=True,
    guidance_embed=True,
)

FLUX_PRESETS: dict[str, FluxParams] = {
    "flux-dev": _FLUX_DEV,
    "flux-schnell": replace(_FLUX_DEV, guidance_embed=False),
    # Same class, tiny sizes: for tests and CPU smoke runs (head dim 16 = 4 + 6 + 6).
    "flux-tiny": FluxParams(
        in_channels=64,
        vec_in_dim=16,
        context_in_dim=32,
        hidden_size=64,
        mlp_ratio=4.0,
        num_heads=4,
        depth=1,
        depth_single_blocks=1,
        axes_dim=(4, 6, 6),
        theta=10_000,
        qkv_bias=True,
        guidance_embed=True,
    ),
}


def timestep_embedding(
    t: torch.Tensor, dim: int, max_period: int = 10000, time_factor: float = TIME_FACTOR
) -> torch.Tensor:
    """(N,) times in [0, 1] -> (N, dim) [cos | sin] embedding of ``time_factor * t``, frequencies 1 ... 1/max_period.

    BFL's formula: frequencies exp(-ln(max_period) * i / half); diffusers' ``Timesteps(flip_sin_to_cos=True,
    downscale_freq_shift=0)`` applied to ``1000 * t`` is the same function.
    """
    t = time_factor * t
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    if torch.is_floating_point(t):
        embedding = embedding.to(t)
    return embedding


def rope(pos: torch.Tensor, dim: int, theta: int) -> torch.Tensor:
    """(..., L) positions -> (..., L, dim/2, 2, 2) rotation matrices [[cos, -sin], [sin, cos]] (computed in fp64)."""
    scale = torch.arange(0, dim, 2, dtype=torch.float64, device=pos.device) / dim
    omega = 1.0 / (theta**scale)
    angles = pos.to(torch.float64)[..., None] * omega
    cos, sin = torch.cos(angles), torch.sin(angles)
    out = torch.stack([cos, -sin, sin, cos], dim=-1)
    return out.reshape(*out.shape[:-1], 2, 2).float()


def apply_rope(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent channel pairs (x[2i], x[2i+1]) of (B, H, L, D) by ``freqs`` (B, 1, L, D/2, 2, 2)."""
    pairs = x.float().reshape(*x.shape[:-1], -1, 1, 2)
    out = freqs[..., 0] * pairs[..., 0] + freqs[..., 1] * pairs[..., 1]
    return out.reshape(*x.shape).type_as(x)


def rope_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pe: torch.Tensor) -> torch.Tensor:
    """Attention over (B, H, L, D) with RoPE on q and k; returns (B, L, H * D)."""
    q, k = apply_rope(q, pe), apply_rope(k, pe)
    x = attention(q, k, v)
    return x.transpose(1, 2).flatten(2)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """(B, L, D) with (B, 1, D) shift and scale."""
    return (1 + scale) * x + shift


class EmbedND(nn.Module):
    """RoPE over several position axes: each axis rotates its own slice of the head dimension."""

    def __init__(self, dim: int, theta: int, axes_dim: tuple[int, ...]) -> None:
        super().__init__()
        self.dim = dim
        self.theta = theta
        self.axes_dim = tuple(axes_dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, L, n_axes) ids -> (B, 1, L, head_dim/2, 2, 2)."""
        if ids.shape[-1] != len(self.axes_dim):
            raise ValueError(f"position ids have {ids.shape[-1]} axes, the model expects {len(self.axes_dim)}")
        emb = torch.cat([rope(ids[..., i], d, self.theta) for i, d in enumerate(self.axes_dim)], dim=-3)
        return emb.unsqueeze(1)


class MLPEmbedder(nn.Module):
    def __init__(self, in_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.in_layer = nn.Linear(in_dim, hidden_dim, bias=True)
        self.silu = nn.SiLU()
        self.out_layer = nn.Linear(hidden_dim, hidden_dim, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_layer(self.silu(self.in_layer(x)))


class RMSNorm(nn.Module):
    """RMS norm computed in fp32, eps 1e-6, learned ``scale`` (BFL's parameter name)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_dtype = x.dtype
        x = x.float()
        rrms = torch.rsqrt(torch.mean(x**2, dim=-1, keepdim=True) + 1e-6)
        return (x * rrms).to(dtype=x_dtype) * self.scale


class QKNorm(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.query_norm = RMSNorm(dim)
        self.key_norm = RMSNorm(dim)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.query_norm(q).to(v), self.key_norm(k).to(v)


class SelfAttention(nn.Module):
    """Holds a stream's qkv, q/k norms and output projection; the (joint) attention itself runs in the block."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = False) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.norm = QKNorm(dim // num_heads)
        self.proj = nn.Linear(dim, dim)

    def qkv_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, L, D) -> normalised q, k and v, each (B, heads, L, head_dim)."""
        B, L, D = x.shape
        qkv = self.qkv(x).reshape(B, L, 3, self.num_heads, D // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.norm(q, k, v)
        return q, k, v


class Modulation(nn.Module):
    """vec -> (shift, scale, gate) triples, each (B, 1, D): two for double blocks, one for single blocks."""

    def __init__(self, dim: int, double: bool) -> None:
        super().__init__()
        self.multiplier = 6 if double else 3
        self.lin = nn.Linear(dim, self.multiplier * dim, bias=True)

    def forward(self, vec: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.lin(nn.functional.silu(vec))[:, None, :].chunk(self.multiplier, dim=-1)


def _mlp(hidden_size: int, mlp_hidden_dim: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(hidden_size, mlp_hidden_dim, bias=True),
        nn.GELU(approximate="tanh"),
        nn.Linear(mlp_hidden_dim, hidden_size, bias=True),
    )


class DoubleStreamBlock(nn.Module):
    """Separate weights for the image and text streams, one joint attention over [txt, img]."""

    compile_regions = ("img_mod", "txt_mod", "joint_attention", "img_mlp", "txt_mlp")
    """What common.compile.compile_blocks compiles: the per-step modulations and what the cache wraps."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float, qkv_bias: bool = False) -> None:
        super().__init__()
        mlp_hidden_dim = int(hidden_size * mlp_ratio)
        self.num_heads = num_heads
        self.hidden_size = hidden_size
        self.img_mod = Modulation(hidden_size, double=True)
        self.img_norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.img_attn = SelfAttention(hidden_size, num_heads=num_heads, qkv_bias=qkv_bias)
        self.img_norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.img_mlp = _mlp(hidden_size, mlp_hidden_dim)

        self.txt_mod = Modulation(hidden_size, double=True)
        self.txt_norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.txt_attn = SelfAttention(hidden_size, num_heads=num_heads, qkv_bias=qkv_bias)
        self.txt_norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.txt_mlp = _mlp(hidden_size, mlp_hidden_dim)

    def joint_attention(
        self, img: torch.Tensor, txt: torch.Tensor, img_mod: tuple, txt_mod: tuple, pe: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The un-projected attention outputs (img part, txt part), each (B, L_stream, D)."""
        img_shift, img_scale = img_mod[0], img_mod[1]
        txt_shift, txt_scale = txt_mod[0], txt_mod[1]
        img_q, img_k, img_v = self.img_attn.qkv_heads(modulate(self.img_norm1(img), img_shift, img_scale))
        txt_q, txt_k, txt_v = self.txt_attn.qkv_heads(modulate(self.txt_norm1(txt), txt_shift, txt_scale))
        q = torch.cat((txt_q, img_q), dim=2)
        k = torch.cat((txt_k, img_k), dim=2)
        v = torch.cat((txt_v, img_v), dim=2)
        attn = rope_attention(q, k, v, pe)
        L_txt = txt.shape[1]
        return attn[:, L_txt:], attn[:, :L_txt]

    def forward(
        self,
        img: torch.Tensor,
        txt: torch.Tensor,
        vec: torch.Tensor,
        pe: torch.Tensor,
        cache: LayerCache | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # Modulations are recomputed at every step, forecast steps included: the gates depend on t.
        img_mod = self.img_mod(vec)  # shift1, scale1, gate1, shift2, scale2, gate2
        txt_mod = self.txt_mod(vec)

        # One joint attention feeds both projections: at a full step it runs once and both outputs are recorded; at a
        # forecast step both are forecast and it never runs.
        def joint_attn() -> tuple[torch.Tensor, torch.Tensor]:
            img_joint, txt_joint = self.joint_attention(img, txt, img_mod, txt_mod, pe)
            return self.img_attn.proj(img_joint), self.txt_attn.proj(txt_joint)

        img_attn, txt_attn = cached_group(cache, ("img_attn", "txt_attn"), joint_attn)  # (B, L_img, D), (B, L_txt, D)

        # The MLPs are token-wise: a method may run them on some tokens only (ToCa).
        img = img + img_mod[2] * img_attn
        img_mlp = cached_tokens(
            cache, "img_mlp", lambda: modulate(self.img_norm2(img), img_mod[3], img_mod[4]), self.img_mlp
        )
        img = img + img_mod[5] * img_mlp

        txt = txt + txt_mod[2] * txt_attn
        txt_mlp = cached_tokens(
            cache, "txt_mlp", lambda: modulate(self.txt_norm2(txt), txt_mod[3], txt_mod[4]), self.txt_mlp
        )
        txt = txt + txt_mod[5] * txt_mlp
        return img, txt

    def modulated_input(self, img: torch.Tensor, vec: torch.Tensor) -> torch.Tensor:
        """The image stream's attention input, ``img_mod1`` applied to ``img_norm1(img)``: TeaCache's signal."""
        shift, scale = self.img_mod(vec)[:2]
        return modulate(self.img_norm1(img), shift, scale)


class SingleStreamBlock(nn.Module):
    """Parallel attention + MLP over the concatenated [txt, img] sequence, with fused input/output projections."""

    compile_regions = ("modulation", "fused")
    """What common.compile.compile_blocks compiles: the per-step modulation and what the cache wraps."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        self.mlp_hidden_dim = int(hidden_size * mlp_ratio)
        # qkv and mlp_in fused.
        self.linear1 = nn.Linear(hidden_size, hidden_size * 3 + self.mlp_hidden_dim)
        # proj and mlp_out fused.
        self.linear2 = nn.Linear(hidden_size + self.mlp_hidden_dim, hidden_size)
        self.norm = QKNorm(hidden_size // num_heads)
        self.pre_norm = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp_act = nn.GELU(approximate="tanh")
        self.modulation = Modulation(hidden_size, double=False)

    def fused(self, x_mod: torch.Tensor, pe: torch.Tensor) -> torch.Tensor:
        """linear2(cat(attention, gelu(mlp))) of the modulated input: the block's output before its gate."""
        B, L, D = x_mod.shape
        qkv, mlp = torch.split(self.linear1(x_mod), [3 * D, self.mlp_hidden_dim], dim=-1)
        q, k, v = qkv.reshape(B, L, 3, self.num_heads, D // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = self.norm(q, k, v)
        attn = rope_attention(q, k, v, pe)
        return self.linear2(torch.cat((attn, self.mlp_act(mlp)), dim=2))

    def forward(
        self, x: torch.Tensor, vec: torch.Tensor, pe: torch.Tensor, cache: LayerCache | None = None
    ) -> torch.Tensor:
        shift, scale, gate = self.modulation(vec)
        # linear1 and linear2 fuse the attention with the MLP, so the block cannot run on a subset of tokens: it is one
        # cached output, which ToCa reuses whole on its cached steps (the reference's partial single-stream ToCa, which
        # re-slices linear1 per call, is not reproduced).
        total = cached(cache, "total", lambda: self.fused(modulate(self.pre_norm(x), shift, scale), pe))
        return x + gate * total


class LastLayer(nn.Module):
    def __init__(self, hidden_size: int, patch_size: int, out_channels: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels, bias=True)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size, bias=True))

    def forward(self, x: torch.Tensor, vec: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(vec).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift[:, None, :], scale[:, None, :]))


def single_block_layer_index(params: FluxParams, j: int) -> int:
    """Cache layer index of single-stream block ``j``: offset by the number of double blocks."""
    return params.depth + j


class Flux(nn.Module):
    """Transformer model for flow matching on sequences (BFL's ``flux.model.Flux``)."""

    def __init__(self, params: FluxParams) -> None:
        super().__init__()
        self.params = params
        self.in_channels = params.in_channels
        self.out_channels = params.out_channels
        self.hidden_size = params.hidden_size
        self.num_heads = params.num_heads
        self.pe_embedder = EmbedND(dim=params.head_dim, theta=params.theta, axes_dim=params.axes_dim)
        self.img_in = nn.Linear(self.in_channels, self.hidden_size, bias=True)
        self.time_in = MLPEmbedder(in_dim=TIME_EMBED_DIM, hidden_dim=self.hidden_size)
        self.vector_in = MLPEmbedder(params.vec_in_dim, self.hidden_size)
        self.guidance_in = (
            MLPEmbedder(in_dim=TIME_EMBED_DIM, hidden_dim=self.hidden_size) if params.guidance_embed else nn.Identity()
        )
        self.txt_in = nn.Linear(params.context_in_dim, self.hidden_size)
        self.double_blocks = nn.ModuleList(
            [
                DoubleStreamBlock(
                    self.hidden_size, self.num_heads, mlp_ratio=params.mlp_ratio, qkv_bias=params.qkv_bias
                )
                for _ in range(params.depth)
            ]
        )
        self.single_blocks = nn.ModuleList(
            [
                SingleStreamBlock(self.hidden_size, self.num_heads, mlp_ratio=params.mlp_ratio)
                for _ in range(params.depth_single_blocks)
            ]
        )
        self.final_layer = LastLayer(self.hidden_size, 1, self.out_channels)

    def forward(
        self,
        img: torch.Tensor,
        img_ids: torch.Tensor,
        txt: torch.Tensor,
        txt_ids: torch.Tensor,
        timesteps: torch.Tensor,
        y: torch.Tensor,
        guidance: torch.Tensor | None = None,
        cache: CacheMethod | None = None,
    ) -> torch.Tensor:
        """img (B, L_img, in_channels) packed latents, img_ids (B, L_img, 3), txt (B, L_txt, context_in_dim),
        txt_ids (B, L_txt, 3), timesteps (B,) in [0, 1], y (B, vec_in_dim) pooled text vector, guidance (B,) raw
        guidance scale (guidance-distilled models only) -> (B, L_img, out_channels) velocity prediction."""
        if img.ndim != 3 or txt.ndim != 3:
            raise ValueError("input img and txt tensors must have 3 dimensions (B, L, C)")
        img = self.img_in(img)
        vec = self.time_in(timestep_embedding(timesteps, TIME_EMBED_DIM))
        if self.params.guidance_embed:
            if guidance is None:
                raise ValueError("didn't get guidance strength for guidance distilled model")
            vec = vec + self.guidance_in(timestep_embedding(guidance, TIME_EMBED_DIM))
        vec = vec + self.vector_in(y)
        txt = self.txt_in(txt)

        pe = self.pe_embedder(torch.cat((txt_ids, img_ids), dim=1))
        txt_len = txt.shape[1]
        blocks = self.block_stack(vec, pe, txt_len, cache)
        signal = None if not self.double_blocks else lambda: self.double_blocks[0].modulated_input(img, vec)
        x = run_blocks(cache, blocks, torch.cat((txt, img), dim=1), signal=signal)  # (B, L_txt + L_img, D)
        img = x[:, txt_len:, ...]
        return self.final_layer(img, vec)  # (B, L_img, out_channels)

    def block_stack(
        self, vec: torch.Tensor, pe: torch.Tensor, txt_len: int, cache: CacheMethod | None
    ) -> list[Callable[[torch.Tensor], torch.Tensor]]:
        """Every block as an ``x -> x`` callable on the joint sequence [txt, img] (B, txt_len + L_img, D): the double
        blocks, then the single blocks, each handed its own view of the cache."""

        def layer(index: int) -> LayerCache | None:
            return None if cache is None else cache.layer(index)

        def double(block: DoubleStreamBlock, index: int) -> Callable[[torch.Tensor], torch.Tensor]:
            def run(x: torch.Tensor) -> torch.Tensor:
                # Contiguous streams, as the blocks had before the stack was joined (a no-op at batch 1): torch's
                # linear takes a strided 3-D input through matmul and a separate bias add instead of one addmm,
                # which can round differently on some backends.
                img, txt = x[:, txt_len:].contiguous(), x[:, :txt_len].contiguous()
                img, txt = block(img=img, txt=txt, vec=vec, pe=pe, cache=layer(index))
                return torch.cat((txt, img), dim=1)

            return run

        def single(block: SingleStreamBlock, index: int) -> Callable[[torch.Tensor], torch.Tensor]:
            return lambda x: block(x, vec=vec, pe=pe, cache=layer(index))

        stack = [double(block, i) for i, block in enumerate(self.double_blocks)]
        stack += [single(block, single_block_layer_index(self.params, j)) for j, block in enumerate(self.single_blocks)]
        return stack


def load_flux(path: str | Path, name: str | FluxParams = "flux-dev", dtype: torch.dtype | None = None) -> Flux:
    """The FLUX transformer, built on the meta device and filled from ``path``: a BFL single file (e.g.
    ``flux1-dev.safetensors``) or a diffusers ``transformer/`` folder (or the pipeline folder holding it), whose keys
    are converted with :func:`~taylorseer_flux.diffusers_format.diffusers_to_bfl`.

    ``name`` is the architecture: :class:`FluxParams`, or a preset name. With a preset name, a diffusers folder's
    ``config.json`` gives the architecture (it must agree with the preset on the guidance embedder) and a BFL file
    is loaded as the preset (its keys cannot tell the number of heads or the RoPE axes). The weights keep the file's
    dtype unless ``dtype`` is given; eval mode. Any problem is one
    :class:`~common.checkpoint.CheckpointError`, listing every missing, unexpected or mis-shaped key on a mismatch."""
    # Imported here: diffusers_format imports this module for FluxParams.
    from taylorseer_flux.diffusers_format import diffusers_to_bfl, flux_params_from_diffusers_config

    if isinstance(name, str) and name not in FLUX_PRESETS:
        raise ValueError(f"unknown FLUX preset {name!r}; choose from {sorted(FLUX_PRESETS)}")
    path = require_path(
        path,
        "FLUX transformer checkpoint",
        "Pass a BFL file (flux1-dev.safetensors / flux1-schnell.safetensors) or a diffusers transformer/ folder.",
    )
    params = name if isinstance(name, FluxParams) else FLUX_PRESETS[name]
    if path.is_dir():
        folder = find_diffusers_model_folder(path, "transformer", "FLUX diffusers transformer folder")
        weights, config = read_diffusers_folder(folder)
        if isinstance(name, str):
            try:
                params = flux_params_from_diffusers_config(config)
            except (ValueError, TypeError) as exc:
                raise CheckpointError(f"{folder / 'config.json'} is not a FLUX transformer config: {exc}") from exc
            if params.guidance_embed != FLUX_PRESETS[name].guidance_embed:
                raise CheckpointError(
                    f"The transformer in {folder.absolute()} has guidance_embeds={params.guidance_embed} in its "
                    f"config.json, preset {name!r} has guidance_embed={FLUX_PRESETS[name].guidance_embed}: pass the "
                    "preset of the checkpoint (flux-dev is guidance-distilled, flux-schnell is not)."
                )
        state_dict = diffusers_to_bfl(weights)
    else:
        state_dict = read_state_dict(path)
    with torch.device("meta"):
        model = Flux(params)
    preset = f"preset {name!r}" if isinstance(name, str) else "given params"
    hint = (
        "A BFL single file is loaded as the preset of the model name: flux1-dev.safetensors needs flux-dev, "
        "flux1-schnell.safetensors (no guidance_in.* keys) needs flux-schnell."
    )
    load_state_dict_checked(
        model,
        state_dict,
        str(path.absolute()),
        model_desc=f"FLUX transformer ({preset}: {params.depth} double + {params.depth_single_blocks} single blocks, "
        f"hidden {params.hidden_size}, guidance embedder: {params.guidance_embed})",
        hint=hint,
    )
    if dtype is not None:
        model = model.to(dtype)
    return model.eval()
