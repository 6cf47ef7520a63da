"""FLOPs of DiT sampling with TaylorSeer, counted outside the model.

Two conventions:
* ``reference``: the published TaylorSeer-DiT count, which produced the paper's 2.77x / 3.57x / 4.53x. Transformer
  blocks only; attention and MLP matmuls as 2 x MACs plus softmax/GELU/LayerNorm element counts; the adaLN linear
  as MACs (1 x). A forecast step costs only the adaLN modulation. Embeddings and the final layer are not counted.
* ``matmul``: every matrix product of the whole forward (embeddings, adaLN, attention, MLP, final layer) as
  2 x MACs, measured with ``torch.utils.flop_counter`` on the meta device. Elementwise work is not counted.
"""

from __future__ import annotations

import torch

from common.flops import FlopsReport, full_and_forecast_flops
from common.taylor_cache import TaylorSeerConfig

from .models import DiT

__all__ = ["reference_step_flops", "matmul_step_flops", "dit_flops_reports"]


def reference_step_flops(model: DiT, batch: int) -> tuple[float, float]:
    """(full step, forecast step) FLOPs for ``batch`` images (CFG-doubled included) under the reference count."""
    block = model.blocks[0]
    B, N = batch, model.x_embedder.num_patches
    C = block.attn.proj.in_features
    H = block.attn.num_heads
    hd = C // H
    M = block.mlp.fc1.out_features
    attention = (
        B * N * C * 3 * C * 2  # qkv
        + B * H * N * hd  # query scaling
        + 2 * B * H * N * N * hd  # q @ k^T
        + 5 * B * H * N * N  # softmax
        + 2 * B * H * N * N * hd  # attn @ v
        + 2 * B * N * C * C  # proj
    )
    layer_norms = 2 * B * N * C
    modulation = B * C + 6 * B * C * C  # SiLU + adaLN linear (counted as MACs by the reference)
    mlp = 2 * B * N * C * M * 2 + 6 * B * N * M  # fc1, fc2, tanh-GELU
    depth = model.depth
    return depth * (attention + layer_norms + modulation + mlp), depth * modulation


def matmul_step_flops(model: DiT, batch: int) -> tuple[float, float]:
    """(full step, forecast step) FLOPs of every matmul of one forward, measured on the meta device."""
    device = next(model.parameters()).device
    x = torch.zeros(batch, model.in_channels, model.input_size, model.input_size, device=device)
    t = torch.zeros(batch, dtype=torch.long, device=device)
    y = torch.zeros(batch, dtype=torch.long, device=device)
    return full_and_forecast_flops(lambda cache: model(x, t, y, cache=cache))


def dit_flops_reports(model: DiT, batch: int, num_steps: int, config: TaylorSeerConfig) -> dict[str, FlopsReport]:
    """Reports of a ``num_steps``-step run of ``batch`` images under both conventions."""
    return {
        "reference": FlopsReport.for_schedule("reference", *reference_step_flops(model, batch), num_steps, config),
        "matmul": FlopsReport.for_schedule("matmul", *matmul_step_flops(model, batch), num_steps, config),
    }
