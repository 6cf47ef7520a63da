"""common/run_records.py and common/cli.run_cli: settings records per output file, and one-line errors."""

import json

import pytest

from common.checkpoint import CheckpointError
from common.cli import UsageError, run_cli
from common.run_records import append_records, check_consistent, read_records


def test_records_are_appended_only_when_changed_and_the_last_one_counts(tmp_path):
    path = tmp_path / "metadata.jsonl"
    planned = {"a.mp4": {"file": "a.mp4", "seed": 1}, "b.mp4": {"file": "b.mp4", "seed": 2}}
    assert append_records(path, read_records(path), planned) == 2
    assert append_records(path, read_records(path), planned) == 0
    changed = {"b.mp4": {"file": "b.mp4", "seed": 3}}
    assert append_records(path, read_records(path), changed) == 1
    assert [json.loads(line)["seed"] for line in path.read_text().splitlines()] == [1, 2, 3]
    assert read_records(path) == {"a.mp4": planned["a.mp4"], "b.mp4": changed["b.mp4"]}


def test_consistency_check_names_differences_and_unrecorded_files(tmp_path):
    for name in ("a.mp4", "b.mp4", "c.mp4"):
        (tmp_path / name).write_bytes(b"video")
    existing = {"a.mp4": {"file": "a.mp4", "steps": 50, "weights": "/x"}, "b.mp4": {"file": "b.mp4", "steps": 49}}
    planned = {name: {"file": name, "steps": 50, "weights": "/y"} for name in ("a.mp4", "b.mp4", "c.mp4", "d.mp4")}
    with pytest.raises(UsageError) as info:
        check_consistent(tmp_path, existing, planned, uncompared=("weights",), output_flag="--save-path")
    assert str(info.value) == (
        f"{tmp_path} holds files made with other settings than this run's, or with none recorded (2 conflicting "
        "files, per metadata.jsonl):\n  b.mp4: steps 49 -> 50\n  c.mp4: exists but has no record in "
        "metadata.jsonl, its settings are unknown\nUse another --save-path, or delete those files to regenerate them."
    )
    del planned["c.mp4"]
    existing["b.mp4"]["steps"] = 50  # and a.mp4's other weights path is only information
    check_consistent(tmp_path, existing, planned, uncompared=("weights",))  # a missing d.mp4 is no conflict


def test_not_utf8_records_are_a_usage_error(tmp_path):
    (tmp_path / "metadata.jsonl").write_bytes(b'{"file": "\xff"}\n')
    with pytest.raises(UsageError, match=r"metadata.jsonl is not UTF-8 text \(invalid start byte\)"):
        read_records(tmp_path / "metadata.jsonl")


@pytest.mark.parametrize("error", [UsageError("bad --flag"), CheckpointError("bad --flag"), ValueError("bad --flag")])
def test_run_cli_prints_one_error_line_and_exits_2(error, capsys):
    def fail(*args):
        assert args == (1, 2)
        raise error

    catch = (ValueError,) if type(error) is ValueError else ()
    with pytest.raises(SystemExit) as info:
        run_cli(fail, 1, 2, catch=catch)
    assert info.value.code == 2 and capsys.readouterr().err == "error: bad --flag\n"
    assert run_cli(lambda x: x + 1, 1) == 2


def test_run_cli_lets_other_errors_through():
    with pytest.raises(KeyError):
        run_cli(lambda: {}["x"])
