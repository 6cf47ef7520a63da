"""One JSON record per output file, with the settings that made it, in ``{folder}/metadata.jsonl``.

A sampling script records, for every file it plans, what determines that file's content (model, sizes, steps,
guidance, precision, seed, prompt, TaylorSeer config, ...). A rerun into the same folder skips the files that exist
only when their record matches its own settings; an existing file made with other settings, or with no record at
all, is a conflict: the script refuses to run rather than mix results of different settings under one folder.

Records are appended (one write per run, only the changed ones), so that concurrent jobs over different files of one
folder do not lose each other's records; the last record of a file is its current one.

Every record names the weights that make the file by content (``weights_id``, see
:func:`common.integrity.weights_fingerprint`), so a rerun with other weights is refused like any other setting.
Once a file is written, :func:`record_written` appends its record again with the file's SHA-256 (one ``write`` call
of one line, so processes writing into one folder never interleave within a line). On resume :func:`damaged_outputs`
checks every file to adopt: against its checksum when one is recorded, else with a decoder the script passes (a run
killed between writing and recording); the script sets the damaged ones aside and makes them again.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

from .cli import UsageError, warn
from .integrity import file_sha256, set_aside

__all__ = [
    "CHECKSUM",
    "RECORDS_FILE",
    "append_records",
    "check_consistent",
    "damaged_outputs",
    "read_records",
    "record_adopted",
    "record_written",
    "set_aside_damaged",
    "sync_records",
]

RECORDS_FILE = "metadata.jsonl"
CHECKSUM = "sha256"
"""Key of the written file's checksum; never compared as a setting."""
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
    ignored = {*uncompared, CHECKSUM}
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
    new = [record for name, record in planned.items() if _without_checksum(existing.get(name)) != record]
    if new:
        _append_text(path, "".join(_json_line(record) for record in new))
    return len(new)


def record_written(path: str | Path, record: Mapping, written: str | Path) -> None:
    """Append ``record`` with the SHA-256 of the file ``written`` (just written for it) to the records file."""
    _append_text(path, _json_line({**record, CHECKSUM: file_sha256(written)}))


def damaged_outputs(
    folder: str | Path, existing: Mapping[str, dict], names: Iterable[str], verify: Callable[[Path], str | None]
) -> dict[str, str]:
    """Of the ``names`` that exist in ``folder``: name -> why it cannot be adopted. A file with a recorded checksum
    must match it; one without (killed between writing and recording) must pass ``verify(path)``, which returns None
    for a sound file or the reason it is not."""
    folder = Path(folder)
    damaged = {}
    for name in names:
        path = folder / name
        if not path.exists():
            continue
        expected = (existing.get(name) or {}).get(CHECKSUM)
        if expected is not None:
            if file_sha256(path) != expected:
                damaged[name] = "its content differs from what this folder's run wrote (truncated or replaced)"
        else:
            reason = verify(path)
            if reason is not None:
                damaged[name] = reason
    return damaged


def set_aside_damaged(folder: str | Path, damaged: Mapping[str, str]) -> None:
    """Rename every damaged file (``name -> reason``, from :func:`damaged_outputs`) to ``{name}.damaged``, never
    deleting it (it may be worth a look, or the user's), with one warning each, so that the run makes it again."""
    folder = Path(folder)
    for name, reason in sorted(damaged.items()):
        moved = set_aside(folder / name)
        warn(f"{folder / name} {reason}: moved to {moved.name}; it is made again")


def record_adopted(
    path: str | Path, existing: Mapping[str, dict], planned: Mapping[str, dict], pending: Iterable[str]
) -> None:
    """Record the checksum of every planned file that the run adopts (it exists, is not ``pending``) but whose last
    record has none: a run killed between writing and recording it, whose file was verified by decoding. The
    records then end as an uninterrupted run's would. Files lie beside the records file."""
    folder = Path(path).parent
    skip = set(pending)
    for name, record in planned.items():
        if name not in skip and (folder / name).exists() and CHECKSUM not in existing.get(name, {}):
            record_written(path, record, folder / name)


def sync_records(path: str | Path, existing: Mapping[str, dict], planned: Mapping[str, dict]) -> None:
    """Bring the records in line with the files beside them before a run writes: append the planned records that
    are new or changed; drop the checksum of a planned file that is gone (set aside, deleted), so that a run killed
    right after making it again verifies the new file by decoding rather than against the old checksum; and record
    the checksum of every file adopted without one (:func:`record_adopted`)."""
    folder = Path(path).parent
    gone = {name for name in planned if not (folder / name).exists()}
    current = {name: record for name, record in existing.items() if not (name in gone and CHECKSUM in record)}
    append_records(path, current, planned)
    record_adopted(path, existing, planned, pending=gone)


def _without_checksum(record: Mapping | None) -> dict | None:
    return None if record is None else {k: v for k, v in record.items() if k != CHECKSUM}


def _json_line(record: Mapping) -> str:
    # allow_nan=False: a NaN setting must never make the file invalid JSON (settings are validated finite upstream).
    return json.dumps(record, allow_nan=False) + "\n"


def _append_text(path: str | Path, text: str) -> None:
    """Append ``text`` with one ``write`` on an O_APPEND descriptor: atomic against other appending processes."""
    data = text.encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        written = os.write(fd, data)
        if written != len(data):
            raise OSError(f"short write to {path}: {written} of {len(data)} bytes")
    finally:
        os.close(fd)
