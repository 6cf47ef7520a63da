"""VBench's full-info JSON (``VBench_full_info.json``: a list of ``{"prompt_en": ..., "dimension": [...]}``), read
and checked once for both scripts that take it: sample_video.py ``--prompt-json`` (its prompts) and evaluate.py
``--vbench-info`` (the dimensions too). A wrong file is one message naming the flag, not a traceback from VBench."""

from __future__ import annotations

import json
from pathlib import Path

from common.cli import UsageError

__all__ = ["read_vbench_info", "read_vbench_prompts"]


def read_vbench_info(path: str | Path, flag: str, *, need_dimensions: bool = False) -> list[dict]:
    """The entries of the full-info JSON at ``path``, each with a non-empty "prompt_en" string (and, with
    ``need_dimensions``, a "dimension" list); a :class:`UsageError` naming ``flag`` and the problem otherwise."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise UsageError(f"{flag} {path} is a folder: pass the JSON file itself, e.g. VBench_full_info.json")
    if not path.is_file():
        raise UsageError(f"{flag} {path} not found (expected VBench's full-info JSON, e.g. VBench_full_info.json)")
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"{flag} {path} is not valid JSON ({exc}): pass VBench's full-info JSON") from None
    except OSError as exc:
        raise UsageError(f"{flag} {path} cannot be read ({exc.strerror}): check its permissions") from None
    wanted = '"prompt_en" string and a "dimension" list' if need_dimensions else 'non-empty "prompt_en" string'
    if not isinstance(entries, list) or not entries:
        raise UsageError(f"{flag} {path} must be a non-empty list of objects, each with a {wanted}")
    for index, entry in enumerate(entries):
        prompt = entry.get("prompt_en") if isinstance(entry, dict) else None
        valid = isinstance(prompt, str) and bool(prompt.strip())
        if need_dimensions:
            valid = valid and isinstance(entry.get("dimension"), list)
        if not valid:
            raise UsageError(f"{flag} {path}: entry {index} needs a {wanted}, got {str(entry)[:80]}")
    return entries


def read_vbench_prompts(path: str | Path, flag: str = "--prompt-json") -> list[str]:
    """The ``prompt_en`` of every entry, in order."""
    return [entry["prompt_en"] for entry in read_vbench_info(path, flag)]
