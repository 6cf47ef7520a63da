"""Whole-model CPU offload: a module visits the device only while it runs (diffusers' ``enable_model_cpu_offload``)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

__all__ = ["on_device"]


@contextlib.contextmanager
def on_device(module: nn.Module, device: torch.device, offload: bool) -> Iterator[nn.Module]:
    """``module`` on ``device`` for the duration of the block and back on the CPU after, when ``offload``; without
    offload the module stays where it is. Yields the module."""
    if not offload:
        yield module
        return
    module.to(device)
    try:
        yield module
    finally:
        module.to("cpu")
        if device.type == "cuda":
            torch.cuda.empty_cache()
