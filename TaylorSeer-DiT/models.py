"""DiT (Peebles & Xie, "Scalable Diffusion Models with Transformers") with TaylorSeer's cache calls inline.

Parameter names equal the keys of the original DiT checkpoints (``DiT-XL-2-256x256.pt``), so they load unchanged.
With ``cache=None`` every forward is the plain DiT. With a cache (any :class:`~common.caching.CacheMethod`), each
block's attention and MLP outputs (after their output projection, before the adaLN gate) go through it, exactly where
the TaylorSeer reference caches them: TaylorSeer computes and records them at full steps and forecasts them at the
others; ToCa recomputes the MLP of its fresh tokens only. The block stack runs through the cache too, which Δ-DiT,
DuCa and TeaCache use to bypass block ranges or the whole stack.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn

from common.attention import attention
from common.caching import CacheMethod, LayerCache, cached, cached_tokens, run_blocks

__all__ = ["DiT", "DiTBlock", "DiT_models", "get_2d_sincos_pos_embed"]


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class PatchEmbed(nn.Module):
    """Image to patch tokens with one strided convolution (timm's PatchEmbed, same ``proj`` parameter names)."""

    def __init__(self, img_size: int, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"input size {img_size} is not a multiple of the patch size {patch_size}")
        self.grid_size = img_size // patch_size
        self.num_patches = self.grid_size**2
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (N, C, H, W) -> (N, T, D)


class TimestepEmbedder(nn.Module):
    """Scalar timesteps -> vectors: sinusoidal frequencies, then a two-layer MLP."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size, bias=True),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size, bias=True),
        )
        self.frequency_embedding_size = frequency_embedding_size

    @staticmethod
    def timestep_embedding(t: torch.Tensor, dim: int, max_period: int = 10000) -> torch.Tensor:
        """(N,) timesteps, possibly fractional -> (N, dim) [cos | sin] embedding with frequencies 1 ... 1/max_period."""
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t[:, None].float() * freqs[None]
        embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        if dim % 2:
            embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
        return embedding

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.timestep_embedding(t, self.frequency_embedding_size))


class LabelEmbedder(nn.Module):
    """Class labels -> vectors. Index ``num_classes`` is the null label used for classifier-free guidance."""

    def __init__(self, num_classes: int, hidden_size: int, dropout_prob: float) -> None:
        super().__init__()
        use_cfg_embedding = dropout_prob > 0
        self.embedding_table = nn.Embedding(num_classes + use_cfg_embedding, hidden_size)
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob

    def token_drop(self, labels: torch.Tensor, force_drop_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Replace labels by the null label, at random (training) or where ``force_drop_ids == 1``."""
        if force_drop_ids is None:
            drop_ids = torch.rand(labels.shape[0], device=labels.device) < self.dropout_prob
        else:
            drop_ids = force_drop_ids == 1
        return torch.where(drop_ids, self.num_classes, labels)

    def forward(self, labels: torch.Tensor, train: bool, force_drop_ids: torch.Tensor | None = None) -> torch.Tensor:
        if (train and self.dropout_prob > 0) or force_drop_ids is not None:
            labels = self.token_drop(labels, force_drop_ids)
        return self.embedding_table(labels)


class Attention(nn.Module):
    """Multi-head self-attention with fused qkv (timm's ``Attention`` parameter names)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden size {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L, C = x.shape
        qkv = self.qkv(x).reshape(B, L, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, heads, L, head_dim)
        x = attention(q, k, v).transpose(1, 2).reshape(B, L, C)
        return self.proj(x)


class Mlp(nn.Module):
    """fc1 -> tanh-GELU -> fc2 (timm's ``Mlp`` parameter names)."""

    def __init__(self, in_features: int, hidden_features: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden_features, in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class DiTBlock(nn.Module):
    """Transformer block with adaptive layer norm zero (adaLN-Zero) conditioning."""

    compile_regions = ("attn", "mlp", "adaLN_modulation")
    """What common.compile.compile_blocks compiles: the cached modules and the per-step modulation."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads=num_heads, qkv_bias=True)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(in_features=hidden_size, hidden_features=int(hidden_size * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size, bias=True))

    def forward(self, x: torch.Tensor, c: torch.Tensor, cache: LayerCache | None = None) -> torch.Tensor:
        # The modulation is recomputed at every step, forecast steps included: the gates depend on t.
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        attn = cached(cache, "attn", lambda: self.attn(modulate(self.norm1(x), shift_msa, scale_msa)))
        # x + gate * out in one pass (addcmul): at a forecast step these residuals are most of what is left to run.
        x = torch.addcmul(x, gate_msa.unsqueeze(1), attn)
        # The MLP is token-wise: a method may run it on some tokens only (ToCa).
        mlp = cached_tokens(cache, "mlp", lambda: modulate(self.norm2(x), shift_mlp, scale_mlp), self.mlp)
        return torch.addcmul(x, gate_mlp.unsqueeze(1), mlp)

    def modulated_input(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """The attention's input: the timestep-modulated hidden state that TeaCache compares across steps."""
        shift_msa, scale_msa = self.adaLN_modulation(c).chunk(6, dim=1)[:2]
        return modulate(self.norm1(x), shift_msa, scale_msa)


class FinalLayer(nn.Module):
    def __init__(self, hidden_size: int, patch_size: int, out_channels: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels, bias=True)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size, bias=True))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class DiT(nn.Module):
    """Diffusion model with a Transformer backbone, class-conditional, predicting noise (and variance)."""

    def __init__(
        self,
        input_size: int = 32,
        patch_size: int = 2,
        in_channels: int = 4,
        hidden_size: int = 1152,
        depth: int = 28,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        class_dropout_prob: float = 0.1,
        num_classes: int = 1000,
        learn_sigma: bool = True,
    ) -> None:
        super().__init__()
        self.learn_sigma = learn_sigma
        self.in_channels = in_channels
        self.out_channels = in_channels * 2 if learn_sigma else in_channels
        self.patch_size = patch_size
        self.num_heads = num_heads

        self.x_embedder = PatchEmbed(input_size, patch_size, in_channels, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.y_embedder = LabelEmbedder(num_classes, hidden_size, class_dropout_prob)
        # Fixed 2D sin-cos table; a Parameter (not a buffer) because the original checkpoints store it.
        self.pos_embed = nn.Parameter(torch.zeros(1, self.x_embedder.num_patches, hidden_size), requires_grad=False)
        self.blocks = nn.ModuleList([DiTBlock(hidden_size, num_heads, mlp_ratio=mlp_ratio) for _ in range(depth)])
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """DiT's initialisation: Xavier linears, sin-cos positions, and zero adaLN/final layers (identity blocks)."""

        def _basic_init(module: nn.Module) -> None:
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.constant_(module.bias, 0)

        self.apply(_basic_init)
        if self.pos_embed.is_meta:
            return
        pos_embed = get_2d_sincos_pos_embed(self.pos_embed.shape[-1], self.x_embedder.grid_size)
        self.pos_embed.data.copy_(torch.from_numpy(pos_embed).float().unsqueeze(0))

        w = self.x_embedder.proj.weight.data
        nn.init.xavier_uniform_(w.view([w.shape[0], -1]))
        nn.init.constant_(self.x_embedder.proj.bias, 0)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for block in self.blocks:
            nn.init.constant_(block.adaLN_modulation[-1].weight, 0)
            nn.init.constant_(block.adaLN_modulation[-1].bias, 0)
        nn.init.constant_(self.final_layer.adaLN_modulation[-1].weight, 0)
        nn.init.constant_(self.final_layer.adaLN_modulation[-1].bias, 0)
        nn.init.constant_(self.final_layer.linear.weight, 0)
        nn.init.constant_(self.final_layer.linear.bias, 0)

    @property
    def depth(self) -> int:
        return len(self.blocks)

    @property
    def input_size(self) -> int:
        return self.x_embedder.grid_size * self.patch_size

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(N, T, patch_size**2 * C) -> (N, C, H, W)."""
        c, p = self.out_channels, self.patch_size
        h = w = self.x_embedder.grid_size
        x = x.reshape(x.shape[0], h, w, p, p, c)
        x = torch.einsum("nhwpqc->nchpwq", x)
        return x.reshape(x.shape[0], c, h * p, w * p)

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, cache: CacheMethod | None = None
    ) -> torch.Tensor:
        """x: (N, C, H, W) noisy input, t: (N,) diffusion timesteps, y: (N,) class labels -> (N, out_channels, H, W)."""
        x = self.x_embedder(x) + self.pos_embed  # (N, T, D), T = H * W / patch_size**2
        c = self.t_embedder(t) + self.y_embedder(y, self.training)  # (N, D)
        blocks = [
            lambda h, block=block, i=i: block(h, c, cache=None if cache is None else cache.layer(i))
            for i, block in enumerate(self.blocks)
        ]
        x = run_blocks(cache, blocks, x, signal=lambda: self.blocks[0].modulated_input(x, c))  # (N, T, D)
        x = self.final_layer(x, c)  # (N, T, patch_size**2 * out_channels)
        return self.unpatchify(x)

    def forward_with_cfg(
        self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, cfg_scale: float, cache: CacheMethod | None = None
    ) -> torch.Tensor:
        """Classifier-free guidance in one batched forward: the first half of the batch is conditional, the second
        half carries the null label. Because both halves run in the same forward, one TaylorCache serves both."""
        half = x[: len(x) // 2]
        combined = torch.cat([half, half], dim=0)
        model_out = self.forward(combined, t, y, cache=cache)
        # Upstream DiT guides only the first three channels "for exact reproducibility" of its published samples;
        # with 4 latent channels the fourth is left unguided. Kept so that original checkpoints sample identically.
        guided = min(3, self.in_channels)
        eps, rest = model_out[:, :guided], model_out[:, guided:]
        cond_eps, uncond_eps = torch.split(eps, len(eps) // 2, dim=0)
        half_eps = uncond_eps + cfg_scale * (cond_eps - uncond_eps)
        eps = torch.cat([half_eps, half_eps], dim=0)
        return torch.cat([eps, rest], dim=1)


def get_2d_sincos_pos_embed(embed_dim: int, grid_size: int) -> np.ndarray:
    """(grid_size**2, embed_dim) table: half the channels encode the row, half the column (MAE's layout)."""
    grid_h = np.arange(grid_size, dtype=np.float32)
    grid_w = np.arange(grid_size, dtype=np.float32)
    grid = np.stack(np.meshgrid(grid_w, grid_h), axis=0).reshape(2, 1, grid_size, grid_size)
    emb_h = _1d_sincos(embed_dim // 2, grid[0])
    emb_w = _1d_sincos(embed_dim // 2, grid[1])
    return np.concatenate([emb_h, emb_w], axis=1)


def _1d_sincos(embed_dim: int, pos: np.ndarray) -> np.ndarray:
    if embed_dim % 2:
        raise ValueError(f"sin-cos embedding needs an even dimension, got {embed_dim}")
    omega = 1.0 / 10000 ** (np.arange(embed_dim // 2, dtype=np.float64) / (embed_dim / 2.0))
    out = np.einsum("m,d->md", pos.reshape(-1), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def _preset(depth: int, hidden_size: int, num_heads: int, patch_size: int):
    def build(**kwargs) -> DiT:
        return DiT(depth=depth, hidden_size=hidden_size, num_heads=num_heads, patch_size=patch_size, **kwargs)

    build.__doc__ = f"DiT with depth {depth}, hidden size {hidden_size}, {num_heads} heads, patch size {patch_size}."
    return build


# The published sizes, plus XS for the small model trained and shipped here (TaylorSeer-DiT/assets).
_SIZES = {"XL": (28, 1152, 16), "L": (24, 1024, 16), "B": (12, 768, 12), "S": (12, 384, 6), "XS": (6, 128, 4)}

# Name -> constructor taking DiT's remaining keyword arguments (input_size, in_channels, num_classes, ...).
DiT_models = {
    f"DiT-{size}/{patch}": _preset(depth, hidden, heads, patch)
    for size, (depth, hidden, heads) in _SIZES.items()
    for patch in (2, 4, 8)
}
# Tiny members of the same class, for tests and CPU experiments.
DiT_models["DiT-Tiny/2"] = _preset(2, 64, 4, 2)
DiT_models["DiT-Tiny/4"] = _preset(2, 64, 4, 4)
