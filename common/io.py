"""Atomic file writes: write under a short hidden temporary name in the target's folder, then ``os.replace``.

A killed or failed write never leaves a partial file under the final name, so a resumed run cannot mistake it for a
finished one. Temporary names are ``.tmp-{pid}-{counter}.tmp`` (or another short suffix where a writer needs it):
short and independent of the final name's length, so any final name the file system accepts can be written. A name
derived from the final one, such as ``.{stem}.partial.mp4``, is longer and fails with "File name too long" for names
near the 255-byte limit.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from pathlib import Path

__all__ = ["TEMP_PREFIX", "TEMP_SUFFIX", "atomic_write", "remove_stale_temps", "temp_path"]

TEMP_PREFIX = ".tmp-"
TEMP_SUFFIX = ".tmp"  # not the final suffix, so that a glob for "*.png" or "*.mp4" never finds a temporary file
_counter = itertools.count()


def temp_path(path: str | Path, folder: str | Path | None = None, suffix: str = TEMP_SUFFIX) -> Path:
    """A fresh temporary name for ``path`` in ``folder`` (default: the folder of ``path``; it must be on the same
    file system): at most 5 + 7 + 1 + 20 + len(suffix) bytes whatever the length of ``path``'s name."""
    folder = Path(path).parent if folder is None else Path(folder)
    return folder / f"{TEMP_PREFIX}{os.getpid()}-{next(_counter)}{suffix}"


def atomic_write(
    path: str | Path,
    write_fn: Callable[[Path], object],
    *,
    temp_dir: str | Path | None = None,
    suffix: str = TEMP_SUFFIX,
) -> Path:
    """Call ``write_fn(temp)`` and rename ``temp`` to ``path``; on any failure the temporary file is removed and
    ``path`` is left as it was. ``temp_dir`` (same file system as ``path``) holds the temporary file instead of
    ``path``'s folder; ``suffix`` is the temporary name's, for writers that choose the format by it (ffmpeg)."""
    path = Path(path)
    temp = temp_path(path, temp_dir, suffix)
    try:
        write_fn(temp)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return path


def remove_stale_temps(folder: str | Path) -> list[Path]:
    """Delete the temporary files that killed writes left in ``folder``; call it before any process of a run writes.
    Returns what was removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = sorted(p for p in folder.glob(f"{TEMP_PREFIX}*") if p.is_file())
    for temp in stale:
        temp.unlink(missing_ok=True)
    return stale
