"""common/paper_table.py: table files and their errors, the row log's resume rules, paired differences and tiers
against hand-computed values, and the written table."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from common.cli import UsageError
from common.paper_table import (
    NOISE_MARK,
    RowLog,
    load_table,
    ordering,
    paired_difference,
    row_method,
    table_markdown,
    write_table,
)

GOOD = """
title = "T"
source = "paper, Table 9"
paper_model = "M"
settings = ["--steps", "50"]
plot = "q"
notes = ["a note"]

[[columns]]
key = "q"
label = "Q"
better = "lower"
digits = 2

[[columns]]
key = "r"
label = "R"
better = "higher"

[[rows]]
name = "full"
flags = ["--method", "full"]
paper = { speedup = 1.0, q = 2.5 }

[[rows]]
name = "fast"
flags = ["--method", "fora", "--interval", "3"]
paper = { speedup = 2.77, q = 3.0 }

[[rows]]
name = "faster"
flags = ["--method=taylorseer", "--interval", "5"]
"""


def write(tmp_path, text: str):
    path = tmp_path / "table.toml"
    path.write_text(text)
    return path


def test_a_table_file_is_read_with_its_rows_columns_and_paper_numbers(tmp_path) -> None:
    spec = load_table(write(tmp_path, GOOD))
    assert (spec.title, spec.source, spec.paper_model, spec.plot) == ("T", "paper, Table 9", "M", "q")
    assert spec.settings == ("--steps", "50") and spec.notes == ("a note",)
    assert [(c.key, c.better, c.digits) for c in spec.columns] == [("q", "lower", 2), ("r", "higher", 3)]
    assert [r.name for r in spec.rows] == ["full", "fast", "faster"]
    assert [r.method for r in spec.rows] == ["full", "fora", "taylorseer"]
    assert spec.rows[1].paper == {"speedup": 2.77, "q": 3.0} and spec.rows[2].paper == {}
    assert spec.reference.name == "full"


def test_the_last_method_flag_wins_as_in_argparse() -> None:
    assert row_method(["--method", "fora", "--method", "toca"]) == "toca"
    assert row_method(["--interval", "3"]) == ""


BAD_TABLES = [
    (GOOD.replace('title = "T"', ""), "needs a non-empty string 'title'"),
    ("extra = 1\n" + GOOD, "the file: unknown entries ['extra']"),
    (GOOD + "\npaprer = 1\n", "rows[2]: unknown entries ['paprer']"),
    (GOOD.replace("digits = 2", "digts = 2"), "columns[0]: unknown entries ['digts']"),
    (GOOD.replace('better = "lower"', 'better = "up"'), "'better' must be one of"),
    (GOOD.replace('key = "r"', 'key = "q"'), "column keys repeat"),
    (GOOD.replace('key = "r"', 'key = "speedup"'), "'speedup' is the FLOPs speedup"),
    (GOOD.replace("digits = 2", "digits = 9"), "'digits' must be an integer 0..6"),
    (GOOD.replace('name = "faster"', 'name = "fast"'), "row names repeat: 'fast'"),
    (GOOD.replace('["--method", "full"]', '["--method", "fora"]'), "must be full compute"),
    (GOOD.replace('["--method", "fora", "--interval", "3"]', '["--interval", "3"]'), "name no --method"),
    (GOOD.replace('["--method", "fora", "--interval", "3"]', '["--method", 3]'), "must be a list of strings"),
    (GOOD.replace("q = 3.0", "fid = 3.0"), "paper number 'fid' is not a column"),
    (GOOD.replace("q = 3.0", "q = nan"), "paper number 'q' must be a finite number"),
    (GOOD.replace('plot = "q"', 'plot = "x"'), "'plot' must name a column"),
    (GOOD.split("[[columns]]")[0] + "[[rows]]" + GOOD.split("[[rows]]", 1)[1], "no [[columns]]"),
    (GOOD.split("[[rows]]")[0], "no [[rows]]"),
    ("title = ", "is not a TOML table file"),
]


@pytest.mark.parametrize(("text", "message"), BAD_TABLES)
def test_a_bad_table_file_is_one_error_naming_the_file_and_the_entry(tmp_path, text, message) -> None:
    path = write(tmp_path, text)
    with pytest.raises(UsageError, match="table.toml") as err:
        load_table(path)
    assert message in str(err.value)


def test_a_missing_table_file_says_where_tables_are(tmp_path) -> None:
    with pytest.raises(UsageError, match="no table file .*tables/\\*.toml"):
        load_table(tmp_path / "nope.toml")


def result(value: float, replicates: list[float] | None = None, flops: float = 2.0, latency: float = 1.5) -> dict:
    out = {"flops_speedup": flops, "latency_speedup": latency, "metrics": {"q": value, "r": None}}
    if replicates is not None:
        out["replicates"] = {"q": replicates}
    return out


def test_the_row_log_resumes_rows_of_the_same_settings_only(tmp_path, capsys) -> None:
    path = tmp_path / "rows.jsonl"
    log = RowLog(path)
    log.record("full", {"argv": ["a"]}, result(1.0))
    log.record("fast", {"argv": ["b"]}, result(2.0))
    again = RowLog(path)
    assert again.finished("full", {"argv": ["a"]}) == result(1.0)
    assert again.finished("fast", {"argv": ["c"]}) is None
    assert "'fast' was recorded with other settings and is run again" in capsys.readouterr().err
    assert again.finished("other", {"argv": ["a"]}) is None


def test_a_row_cut_short_is_dropped_and_cut_off_before_the_next(tmp_path, capsys) -> None:
    path = tmp_path / "rows.jsonl"
    RowLog(path).record("full", {}, result(1.0))
    with path.open("a") as file:
        file.write('{"row": "fast", "sett')
    log = RowLog(path)
    assert "dropped a row cut short" in capsys.readouterr().err
    assert log.finished("fast", {}) is None
    log.record("fast", {}, result(2.0))
    lines = path.read_text().splitlines()
    assert [json.loads(line)["row"] for line in lines] == ["full", "fast"]


def test_a_corrupt_row_before_the_last_names_its_line(tmp_path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text('not json\n{"row": "x", "settings": {}, "result": ' + json.dumps(result(1.0)) + "}\n")
    with pytest.raises(UsageError, match="line 1: not a JSON row"):
        RowLog(path)
    path.write_text(json.dumps({"row": "x", "settings": {}, "result": {"metrics": {}}}) + "\n")
    with pytest.raises(UsageError, match="line 1: row 'x' has no 'flops_speedup'"):
        RowLog(path)


def test_a_non_finite_result_is_refused_before_it_is_written(tmp_path) -> None:
    log = RowLog(tmp_path / "rows.jsonl")
    with pytest.raises(ValueError, match="not finite numbers"):
        log.record("x", {}, result(float("nan")))
    assert not (tmp_path / "rows.jsonl").exists()


def test_a_paired_difference_is_the_percentile_interval_of_replicate_differences() -> None:
    # Replicate differences 1..100 (shuffled pairing would change them: the rows share resample j).
    full = result(10.0, list(np.arange(100.0)))
    row = result(13.0, list(2 * np.arange(100.0) + 1))
    difference, interval = paired_difference(row, full, "q")
    assert difference == 3.0
    assert interval == pytest.approx(
        (np.percentile(np.arange(100.0) + 1, 2.5), np.percentile(np.arange(100.0) + 1, 97.5))
    )
    assert paired_difference(result(1.0), full, "q") is None


def test_rows_fall_into_tiers_only_where_intervals_exclude_zero(tmp_path) -> None:
    spec = load_table(write(tmp_path, GOOD))
    base = np.linspace(-1, 1, 200)
    results = {
        "full": result(10.0, list(10 + base)),
        "fast": result(10.2, list(10.2 + 2 * base)),  # differences -0.8..1.2: not told apart from full
        "faster": result(12.0, list(12 + base)),  # differences 2.0 exactly: worse than the tier's first row
    }
    ranked = ordering(spec, results, "q")
    assert [(e["row"], e["tier"]) for e in ranked] == [("full", 1), ("fast", 1), ("faster", 2)]
    assert ranked[2]["vs_tier_leader"]["row"] == "full"
    assert ranked[2]["vs_tier_leader"]["interval"] == pytest.approx([2.0, 2.0])


def test_the_markdown_puts_paper_numbers_beside_measured_ones_and_marks_noise(tmp_path) -> None:
    spec = load_table(write(tmp_path, GOOD))
    results = {"full": result(10.0, flops=1.0, latency=1.0), "fast": result(11.0, flops=2.0, latency=2.5)}
    text = table_markdown(spec, results, "Plumbing only: tiny.", ["a line"])
    lines = text.splitlines()
    assert lines[0] == "# T" and "**Plumbing only: tiny.**" in lines
    header = next(line for line in lines if line.startswith("| row"))
    # Q has published numbers, R has none: a paper column for Q only.
    assert header == "| row | FLOPs speedup | paper | latency speedup | Q ↓ | paper | R ↑ |"
    assert "| fast | 2.00× | 2.77× | 2.50× (noise) | 11.00 | 3.00 | — |" in lines
    assert "| faster | not run |" in text
    assert f"{NOISE_MARK}: a latency speedup above the FLOPs speedup" in text


def test_write_table_writes_markdown_json_and_a_plot(tmp_path) -> None:
    spec = load_table(write(tmp_path, GOOD))
    results = {
        "full": result(10.0, list(10 + np.linspace(-1, 1, 50)), flops=1.0, latency=1.0),
        "fast": result(11.0, list(11 + np.linspace(-1, 1, 50))),
    }
    summary = write_table(tmp_path, spec, results, caveat=None, lines=["measured on M"], details={"extra": 1})
    saved = json.loads((tmp_path / "table.json").read_text())
    assert saved == summary and saved["extra"] == 1 and saved["plumbing_only"] is False
    assert [r["name"] for r in saved["rows"]] == ["full", "fast", "faster"]
    assert saved["rows"][1]["paper"] == {"speedup": 2.77, "q": 3.0} and saved["rows"][2] == {
        "name": "faster", "flags": ["--method=taylorseer", "--interval", "5"], "paper": {}, "run": False}  # fmt: skip
    assert "replicates" not in saved["rows"][0]
    assert "ΔQ vs full [95% CI]" in (tmp_path / "table.md").read_text()
    with Image.open(tmp_path / "quality_vs_speedup.png") as image:
        assert image.size[0] > 600
    assert not list(tmp_path.glob(".*tmp*"))


def test_a_column_measured_against_full_compute_shows_each_rows_own_interval(tmp_path) -> None:
    spec = load_table(write(tmp_path, GOOD))
    full = {"flops_speedup": 1.0, "latency_speedup": 1.0, "metrics": {"q": 1.0, "r": None}}
    fast = result(2.0) | {"metrics": {"q": 2.0, "r": 30.0}, "replicates": {"r": [float(v) for v in range(101)]}}
    lines = table_markdown(spec, {"full": full, "fast": fast}, None).splitlines()
    header = next(line for line in lines if line.startswith("| row"))
    assert header.endswith("| R ↑ | R [95% CI] |")
    # The 2.5th and 97.5th percentiles of 0..100.
    assert "| 30.000 | [2.500, 97.500] |" in next(line for line in lines if line.startswith("| fast"))


def test_a_distance_to_full_compute_shows_its_own_interval_not_a_difference(tmp_path) -> None:
    spec = load_table(write(tmp_path, GOOD))
    full = result(0.0, [0.0] * 101, flops=1.0, latency=1.0)
    fast = result(0.5, [v / 100 for v in range(101)])
    lines = table_markdown(spec, {"full": full, "fast": fast}, None).splitlines()
    header = next(line for line in lines if line.startswith("| row"))
    assert "ΔQ" not in header and "| Q [95% CI] |" in header
    assert "| 0.50 | 3.00 | [0.03, 0.97] |" in next(line for line in lines if line.startswith("| fast"))


def test_comparisons_state_paired_differences_between_named_rows(tmp_path) -> None:
    spec = load_table(write(tmp_path, 'comparisons = [["fast", "full"]]\n' + GOOD))
    assert spec.comparisons == (("fast", "full"),)
    results = {"full": result(10.0, list(np.arange(100.0))), "fast": result(13.0, list(2 * np.arange(100.0) + 1))}
    text = table_markdown(spec, results, None)
    low, high = np.percentile(np.arange(100.0) + 1, [2.5, 97.5])
    assert f"| fast − full | Q | **+3.00 [+{low:.2f}, +{high:.2f}]** |" in text
    summary = write_table(tmp_path, spec, results, caveat=None)
    assert summary["comparisons"][0]["rows"] == ["fast", "full"] and summary["comparisons"][0]["difference"] == 3.0
    with pytest.raises(UsageError, match="comparisons\\[0\\] must name two different rows"):
        load_table(write(tmp_path, 'comparisons = [["fast", "nope"]]\n' + GOOD))
