"""What a resumed run may trust: which weights made an output, whether an output file is intact, whether a tensor is
finite.

- :func:`weights_fingerprint` identifies a checkpoint (file or folder) by its content, cheaply: the size and sampled
  chunks of every weight file, so that moving the weights keeps the identity and fine-tuned weights (every tensor
  changed) get another one, without reading tens of GB.
- :func:`file_sha256` is the checksum a sampling script records for each file it wrote; on resume a file whose
  content no longer matches (truncated, swapped) is set aside and made again (:func:`set_aside`).
- :func:`verify_png` decodes a PNG completely, for files that have no checksum yet (a run killed between writing a
  file and recording it).
- :func:`check_finite` ends a run whose output holds NaN or inf with one message naming the settings to suspect,
  instead of saving black images and reporting success.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

import torch
from PIL import Image

from .cli import UsageError

__all__ = [
    "NonFiniteOutputError",
    "WEIGHT_SUFFIXES",
    "check_finite",
    "file_sha256",
    "set_aside",
    "verify_png",
    "weights_fingerprint",
]

WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt", ".gguf")
_CHUNK = 1 << 16
_SAMPLES = 16
_HEAD = 1 << 20
_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"


class NonFiniteOutputError(UsageError):
    """A model output held NaN or inf: nothing was saved from it."""


def check_finite(tensor: torch.Tensor, what: str, suspects: str) -> None:
    """Raise :class:`NonFiniteOutputError` when ``tensor`` holds NaN or inf; ``suspects`` names the settings to
    check (e.g. "--cfg-scale, --dtype"), since a non-finite output is almost always a setting, not a bug."""
    finite = torch.isfinite(tensor)
    if bool(finite.all()):
        return
    bad = int((~finite).sum())
    raise NonFiniteOutputError(
        f"{what} holds {bad} non-finite values (NaN or inf) of {tensor.numel()}; nothing was saved from it. "
        f"Check {suspects}"
    )


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _file_fingerprint(path: Path, digest: hashlib._Hash) -> None:
    """Feed ``path``'s size, first MiB, 16 evenly spaced 64 KiB chunks and last 64 KiB into ``digest``."""
    size = path.stat().st_size
    digest.update(str(size).encode())
    with path.open("rb") as file:
        digest.update(file.read(_HEAD))  # a safetensors header names every tensor, shape and offset
        for k in range(_SAMPLES):
            file.seek(size * k // _SAMPLES)
            digest.update(file.read(_CHUNK))
        file.seek(max(0, size - _CHUNK))
        digest.update(file.read(_CHUNK))


def _weight_files(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.rglob("*") if p.is_file() and (p.suffix in WEIGHT_SUFFIXES or p.name.endswith(".json"))
    )


def weights_fingerprint(paths: Iterable[str | Path]) -> str:
    """A content identity of the weights in ``paths`` (files, or folders whose weight and JSON files count by their
    path relative to the folder): 16 hex digits, the same wherever the weights are copied or moved."""
    digest = hashlib.sha256()
    for path in paths:
        path = Path(path)
        if path.is_dir():
            for file in _weight_files(path):
                digest.update(file.relative_to(path).as_posix().encode())
                _file_fingerprint(file, digest)
        elif path.is_file():
            digest.update(path.suffix.encode())
            _file_fingerprint(path, digest)
        else:
            raise UsageError(f"weights not found: {path.absolute()}")
    return digest.hexdigest()[:16]


def verify_png(path: str | Path, size: tuple[int, int] | None = None) -> str | None:
    """None if ``path`` decodes completely as an image (of ``size`` = (width, height) when given) and, for a PNG,
    ends in its IEND chunk, else the reason. (PIL decodes a PNG cut after its pixel data without complaint.)"""
    try:
        with Image.open(path) as image:
            image.load()
            actual = image.size
            is_png = image.format == "PNG"
    except (OSError, SyntaxError, ValueError) as exc:
        return f"does not decode ({exc})"
    if is_png:
        with Path(path).open("rb") as file:
            file.seek(0, os.SEEK_END)
            file.seek(max(0, file.tell() - len(_PNG_END)))
            if file.read() != _PNG_END:
                return "is cut short (no PNG end chunk)"
    if size is not None and tuple(actual) != tuple(size):
        return f"is {actual[0]}x{actual[1]}, expected {size[0]}x{size[1]}"
    return None


def set_aside(path: str | Path) -> Path:
    """Rename a damaged output to ``{name}.damaged`` (never deleted: it may be the user's file), so that the run
    makes it again and no glob for the output's suffix finds the old one; returns the new path."""
    path = Path(path)
    target = path.with_name(path.name + ".damaged")
    n = 1
    while target.exists():
        target = path.with_name(f"{path.name}.damaged{n}")
        n += 1
    os.replace(path, target)
    return target
