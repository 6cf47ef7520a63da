"""The shared validation every script uses: argparse types for finite floats and int ranges, the device check,
output paths checked before any compute, and the TaylorSeer schedule check that keeps a label honest."""

from __future__ import annotations

import argparse
import tempfile

import pytest
import torch

from common import cli
from common.cli import (
    UsageError,
    check_output_file,
    check_output_folder,
    check_schedule_flags,
    finite_float,
    int_range,
    parse_device,
)
from common.taylor_cache import TaylorSeerConfig, check_schedule, full_step_indices


def parser_with(type_fn) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="script")
    parser.add_argument("--x", type=type_fn)
    return parser


@pytest.mark.parametrize("text", ["nan", "NaN", "inf", "-inf", "1e999", "abc", ""])
def test_finite_float_refuses_non_numbers(text, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        parser_with(finite_float()).parse_args([f"--x={text}"])
    err = capsys.readouterr().err
    assert info.value.code == 2
    assert "argument --x: expected a finite number" in err and err.count("error:") == 1


@pytest.mark.parametrize(
    ("kwargs", "text", "ok"),
    [
        ({"low": 0.0}, "0", True),
        ({"low": 0.0, "low_open": True}, "0", False),
        ({"low": 0.0, "low_open": True}, "1e-9", True),
        ({"low": 1.0, "high": 2.0}, "2", True),
        ({"low": 1.0, "high": 2.0, "high_open": True}, "2", False),
        ({"low": 1.0, "high": 2.0}, "0.999", False),
    ],
)
def test_finite_float_range_ends(kwargs, text, ok) -> None:
    parse = finite_float(**kwargs)
    if ok:
        assert parse(text) == float(text)
    else:
        with pytest.raises(argparse.ArgumentTypeError, match="expected a finite number"):
            parse(text)


def test_finite_float_message_names_the_range() -> None:
    with pytest.raises(argparse.ArgumentTypeError) as info:
        finite_float(0.0, 1.0, low_open=True)("3")
    assert str(info.value) == "expected a finite number > 0 and <= 1, got 3"


@pytest.mark.parametrize(
    ("low", "high", "text", "expected"),
    [
        (1, None, "1", 1),
        (1, None, "0", "expected an integer >= 1, got 0"),
        (0, 9, "10", "expected an integer in 0..9, got 10"),
        (None, 5, "6", "expected an integer <= 5, got 6"),
        (0, None, "1.5", "expected an integer >= 0, got '1.5'"),
        (0, cli.MAX_SEED, str(2**63), f"expected an integer in 0..{2**63 - 1}, got {2**63}"),
    ],
)
def test_int_range(low, high, text, expected) -> None:
    parse = int_range(low, high)
    if isinstance(expected, int):
        assert parse(text) == expected
    else:
        with pytest.raises(argparse.ArgumentTypeError) as info:
            parse(text)
        assert str(info.value) == expected


@pytest.mark.parametrize(
    ("arg", "message"),
    [
        ("gpu", "is not a torch device: use cpu, cuda or cuda:N"),
        ("cuda:x", "is not a torch device"),
        ("meta", "unsupported device type 'meta'; use cpu or cuda"),
    ],
)
def test_parse_device_refuses_unknown_devices(arg, message) -> None:
    with pytest.raises(UsageError, match=message):
        parse_device(arg)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_parse_device_refuses_cuda_without_a_gpu() -> None:
    with pytest.raises(UsageError, match="no CUDA GPU is visible on this machine; use --device cpu"):
        parse_device("cuda")
    with pytest.raises(UsageError, match="use --gpu cpu"):
        parse_device("cuda:1", flag="--gpu")


def test_parse_device_accepts_cpu_and_none() -> None:
    assert parse_device("cpu") == torch.device("cpu")
    assert parse_device(None) is None


def test_output_file_checks(tmp_path) -> None:
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "folder.json").mkdir()
    cases = {
        tmp_path / "out": "must end in .json: e.g. --out",
        tmp_path / "out.txt": "must end in .json",
        tmp_path / "folder.json": "is a folder: give a file name",
        tmp_path / "a_file" / "out.json": "cannot be created: .*a_file is a file; choose another --out",
    }
    for path, message in cases.items():
        with pytest.raises(UsageError, match=message):
            check_output_file(path, "--out", (".json",))
    assert check_output_file(tmp_path / "new" / "deeper" / "out.JSON", "--out", (".json",)).name == "out.JSON"
    assert not (tmp_path / "new").exists()  # creates nothing


def test_unwritable_folder_is_found_before_any_compute(tmp_path, monkeypatch) -> None:
    """Permission bits say nothing for root (CI runs as root) or read-only mounts, so the check creates a file;
    here the file system refuses it as a read-only mount would."""

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "TemporaryFile", refuse)
    with pytest.raises(UsageError, match=r"refuses new files \(Permission denied\); choose another --output-dir"):
        check_output_folder(tmp_path / "sub", "--output-dir")
    with pytest.raises(UsageError, match="refuses new files"):
        check_output_file(tmp_path / "x.json", "--out", (".json",))


# Full steps of the reference FLUX setting N=6, E=3 over 50 steps, by hand: 0, 1, 2, then every 6th from step 2.
FLUX_FULL = [0, 1, 2, 8, 14, 20, 26, 32, 38, 44]


def test_schedule_check_refuses_a_derivative_start_past_the_last_useful_full_step() -> None:
    config = TaylorSeerConfig(interval=6, max_order=2, first_enhance=3, derivative_start_step=45)
    assert full_step_indices(50, config) == FLUX_FULL
    # The last forecast is step 49, so the last full step that can still feed a forecast is 44.
    with pytest.raises(ValueError, match=r"use a derivative_start_step <= 44, or max_order 0 for FORA"):
        check_schedule(50, config)
    check_schedule(50, TaylorSeerConfig(interval=6, max_order=2, first_enhance=3, derivative_start_step=44))


@pytest.mark.parametrize(
    "config",
    [
        TaylorSeerConfig(interval=6, max_order=0, first_enhance=3, derivative_start_step=99),  # FORA: no derivative
        TaylorSeerConfig(interval=1, max_order=2, first_enhance=3, derivative_start_step=99),  # uncached
        TaylorSeerConfig(interval=6, max_order=2, first_enhance=3, derivative_start_step=2),  # the reference's
    ],
)
def test_schedule_check_passes_settings_whose_label_holds(config) -> None:
    check_schedule(50, config)
    check_schedule(4, config)  # schnell: steps 0-2 full, step 3 forecast


def test_schedule_flags_name_the_flag(capsys) -> None:
    parser = argparse.ArgumentParser(prog="sample.py")
    config = TaylorSeerConfig(interval=5, max_order=3, first_enhance=2, derivative_start_step=60)
    with pytest.raises(SystemExit) as info:
        check_schedule_flags(config, 50, parser)
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("error:") == 1
    assert "error: --derivative-start-step 60 forms no derivative" in err
    assert "use a --derivative-start-step <= 46, or --max-order 0 for FORA" in err
