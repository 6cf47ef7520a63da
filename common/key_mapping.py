"""Small pieces shared by the explicit checkpoint key mappings (our names <-> diffusers' names) of every tree.

The mappings themselves stay in each tree's ``diffusers_format.py`` as readable tables; these helpers only move
tensors between the tables' keys, and every one of them fails loudly rather than guessing.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping

import torch
from torch import Tensor

from .checkpoint import CheckpointError, truncated_list

__all__ = ["LINEAR", "infer_depth", "has_prefix", "put", "linear_params", "swap_halves", "split_rows"]

LINEAR = ("weight", "bias")
"""Parameters of a linear (or conv) layer, renamed together."""


def infer_depth(state_dict: Mapping[str, Tensor], prefix: str) -> int:
    """Number of blocks ``{prefix}.{i}.*`` in the state dict (0 if none); the indices must be 0 ... n-1."""
    pattern = re.compile(rf"^{re.escape(prefix)}\.(\d+)\.")
    indices = {int(m.group(1)) for key in state_dict if (m := pattern.match(key))}
    if indices and indices != set(range(max(indices) + 1)):
        missing = sorted(set(range(max(indices) + 1)) - indices)
        raise CheckpointError(
            f"State dict has gaps in its {prefix} indices: missing {truncated_list([str(i) for i in missing])}"
        )
    return len(indices)


def has_prefix(state_dict: Mapping[str, Tensor], prefix: str) -> bool:
    """Whether any key lies under the module ``prefix``."""
    return any(key.startswith(prefix + ".") for key in state_dict)


def put(out: dict[str, Tensor], key: str, tensor: Tensor | None) -> None:
    """Store ``tensor`` unless it was missing from the input (the key pool reports missing keys together)."""
    if tensor is not None:
        out[key] = tensor


def linear_params(pairs: tuple[tuple[str, str], ...]) -> Iterator[tuple[str, str]]:
    """(ours, theirs) module pairs -> (ours, theirs) full keys of each one's weight and bias."""
    for ours, theirs in pairs:
        for param in LINEAR:
            yield f"{ours}.{param}", f"{theirs}.{param}"


def swap_halves(tensor: Tensor) -> Tensor:
    """(shift, scale) <-> (scale, shift) along the output dimension (an involution)."""
    first, second = tensor.chunk(2, dim=0)
    return torch.cat((second, first), dim=0)


def split_rows(tensor: Tensor, sizes: list[int], key: str) -> list[Tensor]:
    """Split a fused layer's output rows into ``sizes``; clones, so that the parts can be saved separately."""
    if tensor.shape[0] != sum(sizes):
        raise CheckpointError(
            f"{key} has {tensor.shape[0]} output rows, expected {sum(sizes)} = {' + '.join(map(str, sizes))}"
        )
    return [part.clone() for part in torch.split(tensor, sizes, dim=0)]
