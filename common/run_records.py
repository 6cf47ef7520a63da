"""One JSON record per output file, with the settings that made it, in ``{folder}/metadata.jsonl``.

A sampling script records, for every file it plans, what determines that file's content (model, sizes, steps,
guidance, precision, seed, prompt, TaylorSeer config, ...). A rerun into the same folder skips the files that exist
only when their record matches its own settings; an existing file made with other settings, or with no record at
all, is a conflict: the script refuses to run rather than mix results of different settings under one folder.

Records are appended (one write per run, only the changed ones), so that concurrent jobs over different files of one
folder do not lose each other's records; the last record of a file is its current one.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from .cli import UsageError

__all__ = ["RECORDS_FILE", "append_records", "check_consistent", "read_records"]

RECORDS_FILE = "metadata.jsonl"
MAX_SHOWN = 5


def read_records(path: str | Path, required: Sequence[str] = ("file",)) -> dict[str, dict]:
    """File name -> its last record, from a jsonl file ({} if there is none). Every non-blank line must be a JSON
    object holding the ``required`` keys; anything else is a :class:`UsageError` naming the line."""
    path = Path(path)
    if not path.exists():
        return {}
    if not path.is_file():
        raise UsageError(f"{path.absolute()} is not a file: move it away, or use another output folder")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(
            f"{path.absolute()} is not UTF-8 text ({exc.reason}): delete it or use another output folder"
        ) from None
    records: dict[str, dict] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path.absolute()}, line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UsageError(f"{where}: not a JSON record ({exc.msg}); fix or delete that line") from None
        if not isinstance(record, dict):
            raise UsageError(f"{where}: expected a JSON object, got {type(record).__name__}; fix or delete that line")
        missing = [key for key in required if key not in record]
        if missing:
            raise UsageError(f"{where}: record without {', '.join(map(repr, missing))}; fix or delete that line")
        records[str(record["file"])] = record
    return records


def check_consistent(
    folder: str | Path,
    existing: Mapping[str, dict],
    planned: Mapping[str, dict],
    *,
    uncompared: Iterable[str] = (),
    output_flag: str = "--output-dir",
) -> None:
    """Refuse (:class:`UsageError`) when a planned file already exists in ``folder`` and its record in ``existing``
    is missing or differs from ``planned``'s in any key outside ``uncompared``."""
    folder = Path(folder)
    ignored = set(uncompared)
    conflicts = []
    for name, record in planned.items():
        if not (folder / name).exists():
            continue
        old = existing.get(name)
        if old is None:
            conflicts.append(f"  {name}: exists but has no record in {RECORDS_FILE}, its settings are unknown")
            continue
        differing = sorted(k for k in record.keys() | old.keys() if k not in ignored and old.get(k) != record.get(k))
        if differing:
            changes = ", ".join(f"{k} {old.get(k)!r} -> {record.get(k)!r}" for k in differing)
            conflicts.append(f"  {name}: {changes}")
    if conflicts:
        shown = conflicts[:MAX_SHOWN]
        if len(conflicts) > MAX_SHOWN:
            shown.append(f"  ... and {len(conflicts) - MAX_SHOWN} more")
        raise UsageError(
            f"{folder.absolute()} holds files made with other settings than this run's, or with none recorded "
            f"({len(conflicts)} conflicting files, per {RECORDS_FILE}):\n" + "\n".join(shown) + "\n"
            f"Use another {output_flag}, or delete those files to regenerate them."
        )


def append_records(path: str | Path, existing: Mapping[str, dict], planned: Mapping[str, dict]) -> int:
    """Append the ``planned`` records that differ from (or are missing in) ``existing``, in one write; returns how
    many were appended."""
    new = [record for name, record in planned.items() if existing.get(name) != record]
    if new:
        with Path(path).open("a", encoding="utf-8") as file:
            file.write("".join(json.dumps(record) + "\n" for record in new))
    return len(new)
