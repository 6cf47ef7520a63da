"""common/io.py: atomic writes under short temporary names, and the clean-up of a killed run's temporaries."""

import os
import re

import pytest

from common.io import atomic_write, remove_stale_temps, temp_path


def test_atomic_write_renames_a_short_temporary_file(tmp_path):
    seen = []

    def write(temp):
        seen.append(temp)
        temp.write_text("done")

    target = tmp_path / ("x" * 255)  # the longest name a file system takes
    assert atomic_write(target, write) == target
    assert target.read_text() == "done" and [p.name for p in tmp_path.iterdir()] == [target.name]
    (temp,) = seen
    assert temp.parent == tmp_path and re.fullmatch(rf"\.tmp-{os.getpid()}-\d+\.tmp", temp.name)
    assert temp_path(target).name != temp.name  # a fresh name every call (counter)


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "a.png"
    target.write_text("old")

    def failing(temp):
        temp.write_text("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        atomic_write(target, failing)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.png"]


def test_temp_dir_and_suffix(tmp_path):
    (tmp_path / "run").mkdir()
    target = tmp_path / "run.npz"
    seen = []
    atomic_write(target, lambda temp: seen.append(temp) or temp.write_bytes(b"z"), temp_dir=tmp_path / "run",
                 suffix=".npz")  # fmt: skip
    assert seen[0].parent == tmp_path / "run" and seen[0].suffix == ".npz" and target.read_bytes() == b"z"


def test_remove_stale_temps_removes_only_temporaries(tmp_path):
    for name in (".tmp-1-0.tmp", ".tmp-22-3.mp4", "00000.png", ".hidden"):
        (tmp_path / name).write_text("x")
    removed = remove_stale_temps(tmp_path)
    assert [p.name for p in removed] == [".tmp-1-0.tmp", ".tmp-22-3.mp4"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".hidden", "00000.png"]
    assert remove_stale_temps(tmp_path / "missing") == []
