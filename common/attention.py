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

__all__ = ["attention", "flash_attn_available"]


def flash_attn_available() -> bool:
    return flash_attn_func is not None and os.environ.get("TAYLORSEER_ATTENTION", "auto") != "sdpa"


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Softmax attention over (B, heads, L, head_dim) tensors; returns (B, heads, L, head_dim)."""
    if flash_attn_available() and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16):
        # flash-attn wants (B, L, heads, head_dim).
        out = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return out.transpose(1, 2)
    return F.scaled_dot_product_attention(q, k, v)
