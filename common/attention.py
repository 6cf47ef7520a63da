"""Scaled dot-product attention: flash-attn on GPU when installed, PyTorch SDPA otherwise.

Set ``TAYLORSEER_ATTENTION=sdpa`` to force the PyTorch path (e.g. to compare kernels).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

try:
    from flash_attn import flash_attn_func
except ImportError:
    flash_attn_func = None

__all__ = ["attention", "flash_attn_available", "masked_attention"]


def flash_attn_available() -> bool:
    return flash_attn_func is not None and os.environ.get("TAYLORSEER_ATTENTION", "auto") != "sdpa"


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Softmax attention over (B, heads, L, head_dim) tensors; returns (B, heads, L, head_dim)."""
    if flash_attn_available() and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16):
        # flash-attn wants (B, L, heads, head_dim).
        out = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return out.transpose(1, 2)
    return F.scaled_dot_product_attention(q, k, v)


def masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
    """:func:`attention` over (B, heads, L, head_dim) tensors where only the keys with ``key_mask`` (B, L_k) True
    take part, e.g. to exclude padded text tokens; returns (B, heads, L_q, head_dim).

    ``key_mask=None`` attends to every key through :func:`attention` (flash-attn where available). With a mask the
    PyTorch SDPA path runs, which broadcasts the (B, 1, 1, L_k) boolean mask without materialising an L_q x L_k one.
    Every query must keep at least one key, or its row is NaN.
    """
    if key_mask is None:
        return attention(q, k, v)
    if key_mask.shape != (q.shape[0], k.shape[2]):
        raise ValueError(f"key_mask must be (batch, keys) = {(q.shape[0], k.shape[2])}, got {tuple(key_mask.shape)}")
    return F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask.bool()[:, None, None, :])
