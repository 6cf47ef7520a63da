"""What every evaluate.py shares to report its numbers: the device check, a markdown table and the JSON + markdown
files. Light on purpose (torch only): DiT's torch-fidelity evaluation uses it without pulling in torchmetrics."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch

from .cli import parse_device

__all__ = ["markdown_table", "resolve_device", "save_report"]


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub markdown table; the first column is left-aligned, the others right-aligned."""
    lines = ["| " + " | ".join(header) + " |", "| --- |" + " ---: |" * (len(header) - 1)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def resolve_device(name: str | torch.device) -> torch.device:
    """``name`` as a torch device of this machine; an unknown name or a CUDA device on a machine without one is a
    :class:`common.cli.UsageError` (a ValueError) naming the fix."""
    return parse_device(str(name))


def save_report(output: str | Path, record: dict, markdown: str) -> Path:
    """Write ``record`` as JSON at ``output`` and ``markdown`` beside it (``.md``), print the table, return the path.

    NaN and infinity are refused (``allow_nan=False``, a ValueError before anything is written): a metric that could
    not be computed is null, never NaN.
    """
    output = Path(output).expanduser()
    try:
        text = json.dumps(record, indent=2, allow_nan=False) + "\n"
    except ValueError as exc:
        raise ValueError(f"not writing {output}: the record holds NaN or infinity ({exc})") from exc
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
    output.with_suffix(".md").write_text(markdown + "\n")
    print(markdown)
    print(f"saved {output} and {output.with_suffix('.md')}")
    return output
