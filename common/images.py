"""Writing samples for people to look at: PNG grids."""

from __future__ import annotations

from pathlib import Path

import torch
from torchvision.utils import save_image

__all__ = ["save_grid", "save_labeled_rows", "to_displayable", "to_uint8"]


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) floats in [-1, 1] -> uint8 0..255 on the CPU, rounded (half up) as upstream DiT's sample_ddp.py."""
    return torch.clamp(127.5 * images.float() + 128.0, 0, 255).to("cpu", dtype=torch.uint8)


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


def save_labeled_rows(rows: dict[str, torch.Tensor], path: str | Path, min_size: int = 64) -> Path:
    """One PNG with a row of images per entry of ``rows`` (each (N, C, H, W) in [-1, 1]), its name on the left.

    Small images are enlarged (nearest neighbour) to at least ``min_size`` pixels so that 16x16 samples can be seen.
    """
    from PIL import Image, ImageDraw, ImageFont
    from torchvision.utils import make_grid

    font = ImageFont.load_default()
    grids = []
    for images in rows.values():
        images = to_displayable(images)
        scale = max(1, -(-min_size // images.shape[-1]))
        if scale > 1:
            images = images.repeat_interleave(scale, dim=-1).repeat_interleave(scale, dim=-2)
        grid = make_grid(images, nrow=len(images), normalize=True, value_range=(-1, 1), pad_value=1.0)
        grids.append(Image.fromarray(grid.mul(255).round().byte().permute(1, 2, 0).numpy()).convert("RGB"))
    label_width = 12 + max(int(ImageDraw.Draw(grids[0]).textlength(name, font=font)) for name in rows)
    canvas = Image.new("RGB", (label_width + max(g.width for g in grids), sum(g.height for g in grids)), "white")
    draw = ImageDraw.Draw(canvas)
    top = 0
    for name, grid in zip(rows, grids, strict=True):
        canvas.paste(grid, (label_width, top))
        draw.text((6, top + grid.height // 2 - 6), name, fill="black", font=font)
        top += grid.height
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path
