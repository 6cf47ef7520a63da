"""A paper table as a config file, run row by row (resumable), written as markdown + JSON + a quality-vs-speedup plot.

Each tree's ``reproduce_table.py`` reads a table file (TOML), runs every row's sampler command with the row's flags,
evaluates it and hands the numbers to :func:`write_table`. This module holds what the three trees share: the table
file's format and its validation (:func:`load_table`), the log of finished rows that makes a rerun resume where it
stopped (:class:`RowLog`), the paired comparisons between rows (:func:`paired_difference`, :func:`ordering`) and the
outputs.

A table file::

    title = "DiT-XL/2, ImageNet 256², DDIM 50: FID-50k"
    source = "TaylorSeer (ICCV 2025), Table 2"
    paper_model = "DiT-XL/2"          # the model the published numbers come from
    settings = ["--num-sampling-steps", "50"]   # flags of every row's sampler
    plot = "fid"                      # the quality column plotted against the FLOPs speedup
    notes = ["free text, one paragraph per entry"]

    [[columns]]
    key = "fid"
    label = "FID"
    better = "lower"                  # or "higher"

    [[rows]]
    name = "DDIM 50 steps"
    flags = ["--method", "full"]      # the first row is full compute: the reference of speedups and differences
    paper = { speedup = 1.0, fid = 2.32 }   # published numbers by column key ("speedup": FLOPs); omit for none

A row's result (what a runner records) is a dict with ``flops_speedup`` and ``latency_speedup`` (None when unknown),
``metrics`` (column key -> value or None), optionally ``replicates`` (column key -> bootstrap replicates of the
metric, resample j identical for every row, so that differences between rows are paired) and free ``details``.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

if sys.version_info >= (3, 11):
    import tomllib
else:  # the same parser, published before it joined the standard library
    import tomli as tomllib

from .cli import UsageError, warn
from .paired_stats import DEFAULT_LEVEL, excludes_zero, percentile_interval

__all__ = [
    "Column",
    "RowLog",
    "TableRow",
    "TableSpec",
    "TABLE_OUTPUTS",
    "check_results_dir",
    "end_log_cleanly",
    "read_log",
    "load_table",
    "ordering",
    "paired_difference",
    "resolve_table_paths",
    "row_method",
    "table_markdown",
    "write_table",
]

ROW_LOG = "rows.jsonl"
TABLE_OUTPUTS = {ROW_LOG: "row log", "table.md": "table", "table.json": "summary", "quality_vs_speedup.png": "plot"}
SPEEDUP = "speedup"
BETTER = ("higher", "lower")
RESULT_FIELDS = ("flops_speedup", "latency_speedup", "metrics")
NOISE_MARK = "(noise)"


@dataclass(frozen=True)
class Column:
    """A quality column: its key in results and in ``paper``, its heading and which direction is better."""

    key: str
    label: str
    better: str
    digits: int = 3


@dataclass(frozen=True)
class TableRow:
    """One row: its name, the sampler flags that make it and the paper's numbers (column key -> value)."""

    name: str
    flags: tuple[str, ...]
    paper: Mapping[str, float]

    @property
    def method(self) -> str:
        return row_method(self.flags)


@dataclass(frozen=True)
class TableSpec:
    path: Path
    title: str
    source: str
    paper_model: str
    settings: tuple[str, ...]
    columns: tuple[Column, ...]
    plot: str
    rows: tuple[TableRow, ...]
    notes: tuple[str, ...] = ()
    comparisons: tuple[tuple[str, str], ...] = ()
    """Pairs of rows (A, B) whose paired differences A - B the table states in every column with replicates: the
    claims the table is for (e.g. TaylorSeer against FORA at the same N)."""

    def column(self, key: str) -> Column:
        return next(c for c in self.columns if c.key == key)

    @property
    def reference(self) -> TableRow:
        """Full compute, the first row: the reference of every speedup and every paired difference."""
        return self.rows[0]


def row_method(flags: Sequence[str]) -> str:
    """The value of the last ``--method`` in ``flags`` (as argparse reads it), or "" when there is none."""
    method = ""
    for i, flag in enumerate(flags):
        if flag == "--method" and i + 1 < len(flags):
            method = flags[i + 1]
        elif flag.startswith("--method="):
            method = flag.split("=", 1)[1]
    return method


def load_table(path: str | Path) -> TableSpec:
    """The table file at ``path``, checked; a :class:`UsageError` naming the file and the entry otherwise."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UsageError(f"no table file {path}: pass one of the tree's tables/*.toml or your own (see its format)")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise UsageError(f"{path} is not a TOML table file: {err}") from None

    def fail(what: str) -> UsageError:
        return UsageError(f"{path}: {what}")

    def text(entry: Mapping, key: str, where: str, default: str | None = None) -> str:
        value = entry.get(key, default)
        if not isinstance(value, str) or not value.strip():
            raise fail(f"{where} needs a non-empty string '{key}'")
        return value

    def strings(value: object, where: str) -> tuple[str, ...]:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise fail(f"{where} must be a list of strings (command-line flags)")
        return tuple(value)

    def check_keys(entry: Mapping, known: set[str], where: str) -> None:
        unknown = set(entry) - known
        if unknown:
            raise fail(f"{where}: unknown entries {sorted(unknown)}; it holds {sorted(known)}")

    check_keys(
        raw,
        {"title", "source", "paper_model", "settings", "columns", "rows", "plot", "notes", "comparisons"},
        "the file",
    )
    columns = []
    for i, entry in enumerate(raw.get("columns", [])):
        where = f"columns[{i}]"
        if not isinstance(entry, dict):
            raise fail(f"{where} must be a table")
        check_keys(entry, {"key", "label", "better", "digits"}, where)
        key = text(entry, "key", where)
        if key == SPEEDUP:
            raise fail(f"{where}: '{SPEEDUP}' is the FLOPs speedup every table has; name the column otherwise")
        better = entry.get("better")
        if better not in BETTER:
            raise fail(f"{where} ({key}): 'better' must be one of {BETTER}, got {better!r}")
        digits = entry.get("digits", 3)
        if isinstance(digits, bool) or not isinstance(digits, int) or not 0 <= digits <= 6:
            raise fail(f"{where} ({key}): 'digits' must be an integer 0..6, got {digits!r}")
        columns.append(Column(key, text(entry, "label", where), better, digits))
    if not columns:
        raise fail("no [[columns]]: a table needs at least one quality column")
    keys = [c.key for c in columns]
    if len(set(keys)) != len(keys):
        raise fail(f"column keys repeat: {keys}")
    rows = []
    for i, entry in enumerate(raw.get("rows", [])):
        where = f"rows[{i}]"
        if not isinstance(entry, dict):
            raise fail(f"{where} must be a table")
        check_keys(entry, {"name", "flags", "paper"}, where)
        name = text(entry, "name", where)
        flags = strings(entry.get("flags"), f"{where} ({name}) 'flags'")
        if not row_method(flags):
            raise fail(f"{where} ({name}): its flags name no --method; every row says which method it runs")
        paper = entry.get("paper", {})
        if not isinstance(paper, dict):
            raise fail(f"{where} ({name}): 'paper' must be a table of published numbers")
        for key, value in paper.items():
            if key != SPEEDUP and key not in keys:
                raise fail(f"{where} ({name}): paper number '{key}' is not a column ({SPEEDUP}, {', '.join(keys)})")
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise fail(f"{where} ({name}): paper number '{key}' must be a finite number, got {value!r}")
        rows.append(TableRow(name, flags, {k: float(v) for k, v in paper.items()}))
    if not rows:
        raise fail("no [[rows]]")
    names = [r.name for r in rows]
    if len(set(names)) != len(names):
        raise fail(f"row names repeat: {[n for n in names if names.count(n) > 1][0]!r}")
    if rows[0].method != "full":
        raise fail(f"the first row ({rows[0].name}) must be full compute (--method full): the reference of every row")
    plot = raw.get("plot", keys[0])
    if plot not in keys:
        raise fail(f"'plot' must name a column ({', '.join(keys)}), got {plot!r}")
    notes = raw.get("notes", [])
    comparisons = []
    for i, pair in enumerate(raw.get("comparisons", [])):
        pair = strings(pair, f"comparisons[{i}]")
        if len(pair) != 2 or pair[0] == pair[1] or not set(pair) <= set(names):
            raise fail(f"comparisons[{i}] must name two different rows of the table, got {list(pair)}")
        comparisons.append(pair)
    return TableSpec(
        path=path,
        title=text(raw, "title", "the file"),
        source=text(raw, "source", "the file"),
        paper_model=text(raw, "paper_model", "the file"),
        settings=strings(raw.get("settings", []), "'settings'"),
        columns=tuple(columns),
        plot=plot,
        rows=tuple(rows),
        notes=strings(notes, "'notes'"),
        comparisons=tuple(comparisons),
    )


def resolve_table_paths(flags: Sequence[str], folder: Path, path_flags: Sequence[str]) -> list[str]:
    """``flags`` with the values of the ``path_flags`` (e.g. --prompt-file) made absolute from the table file's
    ``folder``: a table names its files relative to itself, so that it works from any working directory."""
    out, pending = [], False
    for flag in flags:
        if pending:
            out.append(str((folder / Path(flag).expanduser()).resolve()))
            pending = False
            continue
        name, sep, value = flag.partition("=")
        if name in path_flags and sep:
            out.append(f"{name}={(folder / Path(value).expanduser()).resolve()}")
            continue
        pending = flag in path_flags
        out.append(flag)
    return out


def check_results_dir(folder: Path) -> Path:
    """``folder`` (nothing created) as a place for the table's files: a clear error before any sampling otherwise."""
    from .cli import check_output_folder

    folder = check_output_folder(folder, "--results-dir")
    for name, what in TABLE_OUTPUTS.items():
        file = folder / name
        if file.is_dir():
            raise UsageError(
                f"{file} is a folder where the table's {what} goes: move it or choose another --results-dir"
            )
        if file.exists() and not os.access(file, os.W_OK):
            raise UsageError(f"{file} is read-only: make it writable or choose another --results-dir")
    return folder


class RowLog:
    """``rows.jsonl``: one line per finished row, ``{"row", "settings", "result"}``, appended in one write.

    A rerun reuses a row only when its recorded settings equal the run's (the flags, the weights by content, the
    evaluation): a row recorded with others is run again, and said so. A last line cut short by a kill is dropped
    with a warning and cut off before the next append; a corrupt line elsewhere is an error naming it.
    """

    def __init__(self, path: Path):
        self.path = path
        self.entries: dict[str, dict] = {}
        if not path.exists():
            return
        for number, entry in read_log(path, "row", "run"):
            if not isinstance(entry, dict) or not isinstance(entry.get("row"), str):
                raise UsageError(f"{path}, line {number}: expected a row with a 'row' name; delete that line")
            problem = result_problem(entry.get("result"))
            if problem:
                raise UsageError(f"{path}, line {number}: row {entry['row']!r} {problem}; delete that line")
            self.entries[entry["row"]] = entry  # a later line of the same row (other settings) wins

    def finished(self, name: str, settings: Mapping) -> dict | None:
        """The result of row ``name`` if it was recorded with ``settings``, else None (with a warning when it was
        recorded with other settings)."""
        entry = self.entries.get(name)
        if entry is None:
            return None
        if entry.get("settings") != json.loads(json.dumps(settings)):
            warn(f"{self.path}: row {name!r} was recorded with other settings and is run again")
            return None
        return entry["result"]

    def record(self, name: str, settings: Mapping, result: Mapping) -> None:
        problem = result_problem(result)
        if problem:
            raise ValueError(f"row {name!r} {problem}")
        end_log_cleanly(self.path)
        entry = {"row": name, "settings": settings, "result": result}
        line = (json.dumps(entry, allow_nan=False) + "\n").encode("utf-8")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("ab") as file:
            file.write(line)
        self.entries[name] = json.loads(line)


def read_log(path: Path, what: str, redo: str) -> Iterator[tuple[int, object]]:
    """(line number, parsed JSON) of every non-blank line of the JSON-lines log at ``path``. A last line cut short
    (a kill during its append) is dropped with a warning ("it will be {redo} again"); a corrupt line elsewhere is a
    :class:`UsageError` naming it. ``what`` names an entry in the messages ("row", "cell")."""
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as err:
            if number == len(lines):
                warn(f"{path}, line {number}: dropped a {what} cut short ({err.msg}); it will be {redo} again")
                continue
            raise UsageError(f"{path}, line {number}: not a JSON {what} ({err.msg}); delete that line") from None
        yield number, entry


def end_log_cleanly(path: Path) -> None:
    """Make a JSON-lines log end in a newline before lines are appended, else the next line would merge with its
    last one: a partial last line (a kill during its append) is cut off, a complete one that lost its newline (a hand
    edit) is kept and ended."""
    if not path.exists():
        return
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return
    start = data.rfind(b"\n") + 1
    try:
        json.loads(data[start:])
    except ValueError:
        with path.open("r+b") as file:
            file.truncate(start)
    else:
        with path.open("ab") as file:
            file.write(b"\n")


def result_problem(result: object) -> str | None:
    """Why ``result`` is not a row result (see the module docstring), or None."""
    if not isinstance(result, Mapping):
        return "has no result"
    for field in RESULT_FIELDS:
        if field not in result:
            return f"has no '{field}'"
    for field in ("flops_speedup", "latency_speedup"):
        if not (result[field] is None or is_finite_number(result[field])):
            return f"has a non-numeric '{field}' ({result[field]!r})"
    metrics = result["metrics"]
    if not isinstance(metrics, Mapping) or not all(v is None or is_finite_number(v) for v in metrics.values()):
        return "has metrics that are not finite numbers or null"
    replicates = result.get("replicates", {})
    if not isinstance(replicates, Mapping):
        return "has replicates that are not a mapping"
    for key, values in replicates.items():
        if not isinstance(values, list) or not values or not all(map(is_finite_number, values)):
            return f"has replicates of '{key}' that are not a list of finite numbers"
    return None


def is_finite_number(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)


def paired_difference(
    result: Mapping, reference: Mapping, key: str, level: float = DEFAULT_LEVEL
) -> tuple[float, tuple[float, float]] | None:
    """result - reference in column ``key`` with the percentile interval of the paired bootstrap (both rows'
    replicates come from the same resamples); None when either row has no replicates of ``key``."""
    ours = result.get("replicates", {}).get(key)
    theirs = reference.get("replicates", {}).get(key)
    value, base = result["metrics"].get(key), reference["metrics"].get(key)
    if ours is None or theirs is None or value is None or base is None:
        return None
    if len(ours) != len(theirs):
        raise ValueError(f"unpaired replicates of '{key}': {len(ours)} against {len(theirs)} resamples")
    return value - base, percentile_interval(np.asarray(ours) - np.asarray(theirs), level)


def ordering(spec: TableSpec, results: Mapping[str, Mapping], key: str) -> list[dict]:
    """The rows ranked by column ``key`` (best first), each with its tier: a row opens a new tier only when the
    paired interval of its difference to the best row of the current tier excludes 0, so two rows of one tier are
    not told apart by the measurements. Rows without replicates of ``key`` are left out."""
    column = spec.column(key)
    sign = -1.0 if column.better == "higher" else 1.0
    ranked = sorted(
        (
            name
            for name in results
            if results[name]["metrics"].get(key) is not None and key in results[name].get("replicates", {})
        ),
        key=lambda name: sign * results[name]["metrics"][key],
    )
    tiers, tier, leader = [], 0, None
    for name in ranked:
        entry = {"row": name, "value": results[name]["metrics"][key]}
        if leader is not None:
            difference, interval = paired_difference(results[name], results[leader], key)
            entry["vs_tier_leader"] = {"row": leader, "difference": difference, "interval": list(interval)}
            if excludes_zero(interval):
                tier += 1
                leader = name
        else:
            leader = name
        entry["tier"] = tier + 1
        tiers.append(entry)
    return tiers


def is_zero_by_definition(reference: Mapping, key: str) -> bool:
    """Whether full compute's value of ``key`` and all its replicates are 0: a distance to full compute itself (the
    relative L2 error, say), whose difference to full compute is the value again, so its own interval is shown."""
    replicates = reference.get("replicates", {}).get(key)
    return reference["metrics"].get(key) == 0 and replicates is not None and not any(replicates)


def above_flops(result: Mapping) -> bool:
    """Whether the measured latency speedup exceeds the FLOPs speedup: only timing noise does that."""
    latency, flops = result["latency_speedup"], result["flops_speedup"]
    return latency is not None and flops is not None and latency > flops


def _number(value: float | None, digits: int, suffix: str = "") -> str:
    return "—" if value is None else f"{value:.{digits}f}{suffix}"


def _signed_interval(difference: float, interval: tuple[float, float], digits: int) -> str:
    text = f"{difference:+.{digits}f} [{interval[0]:+.{digits}f}, {interval[1]:+.{digits}f}]"
    return f"**{text}**" if excludes_zero(interval) else text


def table_markdown(
    spec: TableSpec, results: Mapping[str, Mapping], caveat: str | None, lines: Iterable[str] = ()
) -> str:
    """The table: every row's FLOPs and latency speedups and quality columns, each beside the paper's number, and
    the paired difference against full compute where the row has replicates; then the ordering by the plotted
    column, in tiers the intervals support."""
    reference = results.get(spec.reference.name)
    paired = {
        c.key
        for c in spec.columns
        if reference is not None
        and not is_zero_by_definition(reference, c.key)
        and any(paired_difference(r, reference, c.key) for r in results.values())
    }
    # Columns measured against full compute (PSNR against its images, say) have replicates in the rows but none in
    # full compute's own: each row's interval of the value itself is what they can show.
    own = {
        c.key
        for c in spec.columns
        if c.key not in paired and any(c.key in r.get("replicates", {}) for r in results.values())
    }
    published = {c.key for c in spec.columns if any(c.key in row.paper for row in spec.rows)}
    header = ["row", "FLOPs speedup", "paper", "latency speedup"]
    for column in spec.columns:
        arrow = "↑" if column.better == "higher" else "↓"
        header += [f"{column.label} {arrow}"] + (["paper"] if column.key in published else [])
        if column.key in paired:
            header.append(f"Δ{column.label} vs full [95% CI]")
        if column.key in own:
            header.append(f"{column.label} [95% CI]")
    body, noisy = [], False
    for row in spec.rows:
        result = results.get(row.name)
        cells = [row.name]
        if result is None:
            cells += ["not run"] + [""] * (len(header) - 2)
            body.append(cells)
            continue
        latency = _number(result["latency_speedup"], 2, "×")
        if above_flops(result):
            latency += f" {NOISE_MARK}"
            noisy = True
        cells += [_number(result["flops_speedup"], 2, "×"), _number(row.paper.get(SPEEDUP), 2, "×"), latency]
        for column in spec.columns:
            cells.append(_number(result["metrics"].get(column.key), column.digits))
            if column.key in published:
                cells.append(_number(row.paper.get(column.key), column.digits))
            if column.key in paired:
                compared = paired_difference(result, reference, column.key) if row is not spec.reference else None
                cells.append("" if compared is None else _signed_interval(*compared, column.digits))
            if column.key in own:
                values = result.get("replicates", {}).get(column.key)
                low, high = percentile_interval(np.asarray(values)) if values else (None, None)
                cells.append("" if low is None else f"[{low:.{column.digits}f}, {high:.{column.digits}f}]")
        body.append(cells)
    out = [f"# {spec.title}", "", f"Published numbers: {spec.source} ({spec.paper_model}).", ""]
    if caveat:
        out += [f"**{caveat}**", ""]
    out += list(lines)
    out += [""] if lines else []
    out += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(cells) + " |" for cells in body]
    if noisy:
        out += ["", f"{NOISE_MARK}: a latency speedup above the FLOPs speedup, which only timing noise gives (skipping "
                "work cannot save more time than it removes): rerun that row on an idle machine."]  # fmt: skip
    if paired:
        out += [
            "",
            "Δ columns: the row minus full compute on the same inputs (noise and labels, or prompts and seeds), "
            "with the 95% percentile interval of a paired bootstrap over the samples (the same resamples for every "
            "row). **Bold**: the interval excludes 0. "
            f"Intervals are per row, not corrected for the {len(spec.rows) - 1} comparisons.",
        ]
    ranked = ordering(spec, results, spec.plot) if spec.plot in paired | own else []
    if ranked:
        column = spec.column(spec.plot)
        out += ["", f"Rows ranked by {column.label} ({column.better} is better), in tiers: a row starts a new tier "
                "only when the paired interval of its difference to the first row of the current tier excludes 0.", "",
                f"| tier | row | {column.label} | vs the tier's first row [95% CI] |", "|---|---|---|---|"]  # fmt: skip
        for entry in ranked:
            versus = entry.get("vs_tier_leader")
            compared = (
                ""
                if versus is None
                else f"{versus['row']}: "
                + _signed_interval(versus["difference"], tuple(versus["interval"]), column.digits)
            )
            out.append(f"| {entry['tier']} | {entry['row']} | {entry['value']:.{column.digits}f} | {compared} |")
    out += comparison_lines(spec, results)
    if spec.notes:
        out += [""] + [f"{note}" for note in spec.notes]
    return "\n".join(out) + "\n"


def comparisons(spec: TableSpec, results: Mapping[str, Mapping]) -> list[dict]:
    """The table's ``comparisons``: for each pair (A, B) that both ran, A - B in every column where both rows have
    replicates, with its paired interval."""
    out = []
    for first, second in spec.comparisons:
        if first not in results or second not in results:
            continue
        for column in spec.columns:
            compared = paired_difference(results[first], results[second], column.key)
            if compared is not None:
                difference, interval = compared
                out.append({"rows": [first, second], "column": column.key, "difference": difference,
                            "interval": list(interval)})  # fmt: skip
    return out


def comparison_lines(spec: TableSpec, results: Mapping[str, Mapping]) -> list[str]:
    entries = comparisons(spec, results)
    if not entries:
        return []
    labels = {c.key: c for c in spec.columns}
    lines = ["", "Paired comparisons between rows (the same inputs and resamples; **bold**: the interval excludes 0):",
             "", "| comparison | column | difference [95% CI] |", "|---|---|---|"]  # fmt: skip
    for entry in entries:
        column = labels[entry["column"]]
        text = _signed_interval(entry["difference"], tuple(entry["interval"]), column.digits)
        lines.append(f"| {entry['rows'][0]} − {entry['rows'][1]} | {column.label} | {text} |")
    return lines


def plot_table(spec: TableSpec, results: Mapping[str, Mapping], path: Path, caveat: str | None) -> None:
    """The plotted column against the FLOPs speedup: the measured rows, and (in a second panel, the measured model
    need not be the paper's) the paper's rows. A distance to full compute (see :func:`is_zero_by_definition`) gets
    the 95% interval of each value; other columns get none, because a bootstrap of a value like FID is biased (a
    resample repeats samples) and only the paired differences in the table are fair. Rows are told apart by marker
    and colour in a legend beside the panels, which stays readable where rows share a speedup."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    column = spec.column(spec.plot)
    reference = results.get(spec.reference.name)
    bars = reference is not None and is_zero_by_definition(reference, column.key)
    measured = [r for r in spec.rows if r.name in results and results[r.name]["flops_speedup"] is not None
                and results[r.name]["metrics"].get(column.key) is not None]  # fmt: skip
    published = [r for r in spec.rows if SPEEDUP in r.paper and column.key in r.paper]
    panels = [("measured", measured)] + ([(f"paper ({spec.paper_model})", published)] if published else [])
    figure, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels) + 3, 5), squeeze=False)
    colours = plt.get_cmap("tab20")
    markers = "osD^v<>ph*"
    style = {row.name: (colours(i % 20), markers[i % len(markers)]) for i, row in enumerate(spec.rows)}
    for axis, (title, rows) in zip(axes[0], panels, strict=True):
        for row in rows:
            colour, marker = style[row.name]
            if title == "measured":
                result = results[row.name]
                x, y = result["flops_speedup"], result["metrics"][column.key]
                replicates = result.get("replicates", {}).get(column.key)
                if bars and replicates and any(v != y for v in replicates):
                    low, high = percentile_interval(np.asarray(replicates))
                    axis.errorbar(x, y, yerr=[[max(y - low, 0)], [max(high - y, 0)]], color=colour, capsize=2, lw=1)
            else:
                x, y = row.paper[SPEEDUP], row.paper[column.key]
            axis.scatter(x, y, s=36, color=colour, marker=marker, label=row.name, zorder=3)
        axis.set_xlabel("FLOPs speedup (×)")
        axis.set_ylabel(f"{column.label} ({column.better} is better)")
        axis.set_title(title)
        axis.grid(alpha=0.3)
    handles, labels = [], []
    for axis in axes[0]:
        for handle, label in zip(*axis.get_legend_handles_labels(), strict=True):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    figure.legend(handles, labels, loc="center right", fontsize=7, frameon=False)
    figure.suptitle(spec.title + (f"\n{caveat}" if caveat else ""), fontsize=9)
    figure.tight_layout(rect=(0, 0, 1 - 2.6 / (6 * len(panels) + 3), 1))
    temporary = path.with_name(f".{path.name}.tmp.png")
    figure.savefig(temporary, dpi=120)
    plt.close(figure)
    os.replace(temporary, path)


def write_table(
    folder: Path,
    spec: TableSpec,
    results: Mapping[str, Mapping],
    *,
    caveat: str | None,
    lines: Sequence[str] = (),
    details: Mapping | None = None,
) -> dict:
    """table.md, table.json and quality_vs_speedup.png in ``folder`` (each replaced atomically); returns the summary.

    ``caveat`` is said first in every output when the numbers must not be read as a reproduction (a tiny model:
    plumbing only), ``lines`` are the run's settings in words, ``details`` anything else the JSON should hold."""
    summary = {
        "title": spec.title,
        "source": spec.source,
        "paper_model": spec.paper_model,
        "table_file": str(spec.path),
        "caveat": caveat,
        "plumbing_only": caveat is not None,
        "settings": list(spec.settings),
        "rows": [
            {
                "name": row.name,
                "flags": list(row.flags),
                "paper": dict(row.paper),
                **(
                    {k: v for k, v in results[row.name].items() if k != "replicates"}
                    if row.name in results
                    else {"run": False}
                ),
            }
            for row in spec.rows
        ],
        "ordering": ordering(spec, results, spec.plot) if spec.reference.name in results else [],
        "comparisons": comparisons(spec, results),
        **(dict(details) if details else {}),
    }
    text = json.dumps(summary, indent=2, allow_nan=False) + "\n"
    markdown = table_markdown(spec, results, caveat, lines)
    for name, data in (("table.json", text), ("table.md", markdown)):
        temporary = folder / f".{name}.tmp"
        temporary.write_text(data, encoding="utf-8")
        os.replace(temporary, folder / name)
    plot_table(spec, results, folder / "quality_vs_speedup.png", caveat)
    print(markdown)
    print(f"saved {folder / 'table.md'}, {folder / 'table.json'} and {folder / 'quality_vs_speedup.png'}")
    return summary
