"""The contract every script keeps on bad input, as one assertion for table-driven tests: exit code 2, exactly one
``error:`` line on stderr that contains the expected hint, nothing on stdout past the usage, and no file written.

    @pytest.mark.parametrize(("extra", "message"), BAD_INPUTS)
    def test_bad_input(extra, message, tmp_path, capsys):
        assert_refused(cli, [*base_argv(tmp_path), *extra], message, capsys, watch=tmp_path)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under ``folder``: relative path -> (size, mtime_ns); folders have size -1."""
    if not folder.exists():
        return {}
    state = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            path = Path(root) / name
            state[str(path.relative_to(folder))] = (-1, 0)
        for name in files:
            path = Path(root) / name
            stat = path.stat()
            state[str(path.relative_to(folder))] = (stat.st_size, stat.st_mtime_ns)
    return state


def assert_refused(
    cli: Callable[[Sequence[str]], object],
    argv: Sequence[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
    *,
    watch: Path | None = None,
) -> str:
    """Run ``cli(argv)`` in this process and assert the bad-input contract: SystemExit(2), one ``error:`` line that
    contains ``message``, and (with ``watch``) no file or folder under ``watch`` created or changed. Returns the
    error line."""
    before = snapshot(watch) if watch is not None else None
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        cli(list(argv))
    out, err = capsys.readouterr()
    assert exit_info.value.code == 2, f"exit code {exit_info.value.code}, stderr:\n{err}"
    error_lines = [line for line in err.splitlines() if "error:" in line]
    assert len(error_lines) == 1, f"expected one error line, got:\n{err}"
    assert "Traceback" not in err, err
    assert message in err, f"{message!r} not in:\n{err}"
    if watch is not None:
        assert snapshot(watch) == before, f"files changed under {watch} on refused input"
    return error_lines[0]
