"""mp4 writing and reading through imageio's bundled ffmpeg (no system ffmpeg needed).

Frames are uint8 arrays (T, H, W, 3). Writing goes to a temporary name first and is renamed into place, so an
interrupted job never leaves a truncated video that a resumed run would mistake for a finished one. Reading a file that
does not decode is a :class:`VideoDecodeError` with a one-line reason (ffmpeg's log stays out of the message);
:func:`verify_video` says whether a finished-looking file is really whole (every frame decodes, count and size match).
"""

from __future__ import annotations

from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import torch

from .io import atomic_write

__all__ = ["VideoDecodeError", "video_to_uint8_frames", "write_video", "read_video", "verify_video"]


class VideoDecodeError(ValueError):
    """A video file that exists but does not decode (truncated, not a video, no frames); ``reason`` says why."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"video {path} {reason}")
        self.reason = reason


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
    """All frames of a video file as (T, H, W, 3) uint8; :class:`VideoDecodeError` naming the file when it does not
    decode, FileNotFoundError when it is not there."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video not found: {path}")
    try:
        with imageio.get_reader(path, format="FFMPEG") as reader:
            frames = [np.asarray(frame)[..., :3] for frame in reader]
    except (OSError, RuntimeError, ValueError, IndexError) as exc:
        raise VideoDecodeError(path, f"does not decode ({_first_line(exc)})") from None
    if not frames:
        raise VideoDecodeError(path, "holds no frames")
    return np.stack(frames)


def verify_video(path: str | Path, frames: int | None = None, size: tuple[int, int] | None = None) -> str | None:
    """None when ``path`` decodes completely, with ``frames`` frames of ``size`` = (width, height) when given; else
    the reason it cannot be trusted. For files that have no recorded checksum (a run killed between writing and
    recording), where decoding every frame is the only check left."""
    try:
        video = read_video(path)
    except VideoDecodeError as exc:
        return exc.reason
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    if frames is not None and len(video) != frames:
        return f"has {len(video)} frames, expected {frames}"
    height, width = video.shape[1:3]
    if size is not None and (width, height) != tuple(size):
        return f"is {width}x{height}, expected {size[0]}x{size[1]}"
    return None


def _first_line(exc: BaseException) -> str:
    """The first non-blank line of an error: imageio appends ffmpeg's whole log to its messages."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__
