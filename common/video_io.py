"""mp4 writing and reading through imageio's bundled ffmpeg (no system ffmpeg needed).

Frames are uint8 arrays (T, H, W, 3). Writing goes to a temporary name first and is renamed into place, so an
interrupted job never leaves a truncated video that a resumed run would mistake for a finished one.
"""

from __future__ import annotations

from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import torch

from .io import atomic_write

__all__ = ["video_to_uint8_frames", "write_video", "read_video"]


def video_to_uint8_frames(video: torch.Tensor) -> np.ndarray:
    """(C, T, H, W) float video in [-1, 1] (a VAE's output) -> (T, H, W, C) uint8 frames."""
    if video.ndim != 4:
        raise ValueError(f"expected a (C, T, H, W) video, got shape {tuple(video.shape)}")
    frames = ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return frames.permute(1, 2, 3, 0).cpu().numpy()


def write_video(path: str | Path, frames: np.ndarray, fps: int = 24, quality: float | None = 8.0) -> Path:
    """Write (T, H, W, 3) uint8 ``frames`` as an H.264 mp4, atomically. ``quality`` is imageio's 0-10 scale;
    ``None`` writes at constant rate factor 0 in yuv444p: only the RGB <-> YUV rounding remains (at most 2 levels
    per channel), for comparisons frame by frame."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected uint8 frames of shape (T, H, W, 3), got {frames.dtype} {frames.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if quality is None:
        options = {"codec": "libx264", "quality": None, "ffmpeg_params": ["-crf", "0"], "pixelformat": "yuv444p"}
    else:
        options = {"codec": "libx264", "quality": quality, "pixelformat": "yuv420p"}

    def write(temp: Path) -> None:
        # yuv420p needs even sizes; ffmpeg's block size of 16 is not required, so keep imageio from resizing.
        with imageio.get_writer(temp, format="FFMPEG", mode="I", fps=fps, macro_block_size=1, **options) as writer:
            for frame in frames:
                writer.append_data(frame)

    # A short temporary name, so any final name the file system takes can be written; ".mp4" is ffmpeg's container.
    atomic_write(path, write, suffix=path.suffix or ".mp4")
    return path


def read_video(path: str | Path) -> np.ndarray:
    """All frames of a video file as (T, H, W, 3) uint8."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video not found: {path}")
    with imageio.get_reader(path, format="FFMPEG") as reader:
        return np.stack([np.asarray(frame)[..., :3] for frame in reader])
