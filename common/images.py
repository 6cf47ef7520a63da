"""Writing samples for people to look at: PNG grids."""

from __future__ import annotations

from pathlib import Path

import torch
from torchvision.utils import save_image

__all__ = ["save_grid", "to_displayable"]


def to_displayable(images: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) in [-1, 1] -> (N, 1 or 3, H, W); other channel counts (raw latents) show their first three."""
    if images.shape[1] not in (1, 3):
        images = images[:, :3]
    return images.float().cpu()


def save_grid(images: torch.Tensor, path: str | Path, nrow: int = 4) -> Path:
    """Save (N, C, H, W) images in [-1, 1] as one PNG grid, ``nrow`` images per row; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(to_displayable(images), path, nrow=nrow, normalize=True, value_range=(-1, 1))
    return path
