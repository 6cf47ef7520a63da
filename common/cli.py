"""What every tree's scripts share on the command line: the TaylorSeer flags (1:1 onto :class:`TaylorSeerConfig`),
the help formatter, and the one error type that scripts print as a single ``error:`` line with exit code 2."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import torch

from .checkpoint import CheckpointError
from .taylor_cache import (
    FORECASTERS,
    MAX_HERMITE_SCALE,
    MAX_PLACEMENT_POWER,
    PLACEMENTS,
    TaylorSeerConfig,
    check_schedule,
)

T = TypeVar("T")

__all__ = [
    "add_taylorseer_args",
    "taylorseer_config_from_args",
    "HelpFormatter",
    "UsageError",
    "warn",
    "existing_dir",
    "check_output_folder",
    "check_output_file",
    "check_schedule_flags",
    "finite_float",
    "int_range",
    "parse_device",
    "run_cli",
    "MAX_SEED",
]

MAX_SEED = 2**63 - 1
"""Largest seed any script takes (torch generators take 64-bit seeds; seed + index must stay below this)."""

FACTOR_DTYPES = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Every flag's default in its help, and the module docstring's usage lines kept as written."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or "default:" in (action.help or ""):
            return action.help  # no value to show, or the help already says what happens without the flag
        return super()._get_help_string(action)


class UsageError(ValueError):
    """A setting or input that cannot work as given (a missing folder, a launch that does not fit the flags, ...);
    the message says how to fix it. Scripts print it as one ``error:`` line and exit with code 2."""


def warn(message: str) -> None:
    """One ``warning:`` line on stderr, whitespace collapsed."""
    print(f"warning: {' '.join(message.split())}", file=sys.stderr)


def run_cli(main_fn: Callable[..., T], *args, catch: tuple[type[Exception], ...] = ()) -> T:
    """``main_fn(*args)``; a :class:`CheckpointError` or :class:`UsageError` (a missing file, an unusable setting),
    or one of the exception types in ``catch``, ends the process with one ``error:`` line on stderr and exit code 2,
    the code argparse uses, instead of a traceback."""
    try:
        return main_fn(*args)
    except (CheckpointError, UsageError, *catch) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def finite_float(
    low: float | None = None, high: float | None = None, *, low_open: bool = False, high_open: bool = False
) -> Callable[[str], float]:
    """An argparse ``type=`` for a finite float in [low, high] (open ends with ``low_open``/``high_open``): NaN, inf
    and out-of-range values end in argparse's one ``error:`` line naming the flag and the range."""
    lower = "" if low is None else f"{'>' if low_open else '>='} {low:g}"
    upper = "" if high is None else f"{'<' if high_open else '<='} {high:g}"
    wanted = " and ".join(part for part in (lower, upper) if part)
    wanted = f"a finite number {wanted}".rstrip()

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}")
        too_low = low is not None and (value <= low if low_open else value < low)
        too_high = high is not None and (value >= high if high_open else value > high)
        if too_low or too_high:
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text}")
        return value

    parse.__name__ = "finite_float"
    return parse


def int_range(low: int | None = None, high: int | None = None) -> Callable[[str], int]:
    """An argparse ``type=`` for an int in [low, high]; anything else ends in one ``error:`` line with the range."""
    if low is not None and high is not None:
        wanted = f"an integer in {low}..{high}"
    elif low is not None:
        wanted = f"an integer >= {low}"
    elif high is not None:
        wanted = f"an integer <= {high}"
    else:
        wanted = "an integer"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}") from None
        if (low is not None and value < low) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {value}")
        return value

    parse.__name__ = "int_range"
    return parse


def parse_device(device_arg: str | None, flag: str = "--device") -> torch.device | None:
    """``device_arg`` as a torch device that exists on this machine (None stays None: the script's default), else a
    :class:`UsageError` naming the fix: an unknown device string, CUDA without a visible GPU, or a GPU index past the
    last one."""
    if device_arg is None:
        return None
    try:
        device = torch.device(device_arg)
    except RuntimeError:
        raise UsageError(f"{flag} {device_arg!r} is not a torch device: use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"{flag} {device_arg}: no CUDA GPU is visible on this machine; use {flag} cpu")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise UsageError(f"{flag} {device_arg}: this machine has {count} CUDA device(s), cuda:0..cuda:{count - 1}")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"{flag} {device_arg}: MPS is not available here; use {flag} cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise UsageError(f"{flag} {device_arg}: unsupported device type {device.type!r}; use cpu or cuda")
    return device


def existing_dir(path: str | Path, what: str) -> Path:
    """``path`` as a folder that exists, or a :class:`UsageError` naming it."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise UsageError(f"{what} folder not found: {folder.absolute()}")
    return folder


def check_output_folder(path: str | Path, flag: str) -> Path:
    """``path`` as a folder that exists or can be created (nothing on the way is a file) and that this process can
    write in, else a :class:`UsageError` naming ``flag``; creates nothing. Call it before any compute starts."""
    folder = Path(path).expanduser()
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{flag} {folder.absolute()} exists and is not a folder: choose another {flag}")
    _check_creatable(folder, folder, flag)
    return folder


def check_output_file(path: str | Path, flag: str, suffixes: Sequence[str]) -> Path:
    """``path`` as a file that can be written, with one of ``suffixes`` (e.g. ``(".json",)``): its folder exists or
    can be created and is writable, and ``path`` is not a folder. Else a :class:`UsageError` naming ``flag``;
    creates nothing. Call it before any compute starts, so that hours of work never end in an unwritable path."""
    file = Path(path).expanduser()
    if file.suffix.lower() not in {s.lower() for s in suffixes}:
        wanted = " or ".join(suffixes)
        raise UsageError(f"{flag} {file} must end in {wanted}: e.g. {flag} {file.with_suffix(suffixes[0])}")
    if file.is_dir():
        raise UsageError(f"{flag} {file.absolute()} is a folder: give a file name, e.g. {file / ('out' + suffixes[0])}")
    _check_creatable(file.absolute().parent, file, flag)
    if file.exists() and not os.access(file, os.W_OK):
        raise UsageError(f"{flag} {file.absolute()} is read-only: choose another {flag} or make it writable")
    return file


def _check_creatable(folder: Path, target: Path, flag: str) -> None:
    """``folder`` exists or can be created (no file on the way) and its nearest existing folder takes new files."""
    for ancestor in (folder.absolute(), *folder.absolute().parents):
        if not ancestor.exists():
            continue
        if not ancestor.is_dir():
            raise UsageError(
                f"{flag} {target.absolute()} cannot be created: {ancestor} is a file; choose another {flag}"
            )
        _check_writable(ancestor, target, flag)
        return


def _check_writable(existing: Path, target: Path, flag: str) -> None:
    """Create and delete a temporary file in ``existing`` (the nearest folder of ``target`` that exists): the one
    test that also holds for root, read-only mounts and full quotas, where permission bits say nothing."""
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise UsageError(
            f"{flag} {target.absolute()} cannot be written: {existing} refuses new files ({exc.strerror}); "
            f"choose another {flag}"
        ) from None


def add_taylorseer_args(
    parser: argparse.ArgumentParser,
    *,
    interval: int,
    max_order: int,
    first_enhance: int,
    derivative_start_step: int = 0,
) -> argparse._ArgumentGroup:
    """Add one flag per TaylorSeerConfig field, with a tree's reference defaults."""
    group = parser.add_argument_group("TaylorSeer", "feature forecasting; --interval 1 is the uncached model")
    group.add_argument(
        "--interval", type=int, default=interval, help="N: one full step every N steps after the warm-up"
    )
    group.add_argument(
        "--max-order", type=int, default=max_order, help="O: Taylor order of the forecast; 0 = reuse (FORA)"
    )
    group.add_argument("--first-enhance", type=int, default=first_enhance, help="E: warm-up steps that are always full")
    group.add_argument(
        "--derivative-start-step",
        type=int,
        default=derivative_start_step,
        help="full steps before this one keep no derivative (the reference FLUX code: E - 1)",
    )
    group.add_argument(
        "--factor-dtype",
        choices=list(FACTOR_DTYPES),
        default="auto",
        help="dtype the cache stores module outputs in (auto: as produced); forecasts accumulate in float32 at least",
    )
    group.add_argument(
        "--forecaster",
        choices=FORECASTERS,
        default="taylor",
        help="taylor: the paper's forecast; newton: divided differences on the true full-step positions; hermite: "
        "HiCache's scaled Hermite basis",
    )
    group.add_argument(
        "--hermite-scale",
        type=finite_float(0, MAX_HERMITE_SCALE, low_open=True),
        default=0.5,
        help="s of --forecaster hermite (HiCache's contraction)",
    )
    group.add_argument(
        "--full-steps",
        type=int_range(1),
        default=None,
        help="K full steps per run, placed by --placement (replaces --interval); the warm-up steps count among them",
    )
    group.add_argument(
        "--placement",
        choices=PLACEMENTS,
        default="uniform",
        help="where the --full-steps go: uniform, late-dense (denser towards the end), or list (--full-step-list)",
    )
    group.add_argument(
        "--placement-power",
        type=finite_float(0, MAX_PLACEMENT_POWER, low_open=True),
        default=None,
        help="late-dense: positions ∝ u^power (< 1 denser late); default 0.7",
    )
    group.add_argument(
        "--full-step-list",
        type=full_step_list_arg,
        default=None,
        metavar="STEPS|FILE",
        help='--placement list: comma-separated full steps (e.g. 0,1,5,9), or a JSON file with a "full_steps" '
        "list (what search_placement.py writes)",
    )
    return group


def full_step_list_arg(text: str) -> tuple[int, ...]:
    """argparse ``type=`` of --full-step-list: "0,1,5" or a JSON file holding ``{"full_steps": [0, 1, 5, ...]}``."""
    path = Path(text).expanduser()
    if path.suffix == ".json" or path.is_file():
        try:
            steps = json.loads(path.read_text(encoding="utf-8"))["full_steps"]
        except OSError as err:
            raise argparse.ArgumentTypeError(f"cannot read {path}: {err.strerror}") from None
        except (ValueError, KeyError, TypeError):
            raise argparse.ArgumentTypeError(f'{path} is not a JSON file with a "full_steps" list') from None
        if not isinstance(steps, list) or not all(isinstance(s, int) and not isinstance(s, bool) for s in steps):
            raise argparse.ArgumentTypeError(f'{path}: "full_steps" must be a list of integers')
        return tuple(steps)
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither comma-separated integers (e.g. 0,1,5,9) nor a JSON file"
        ) from None


def taylorseer_fields(args: argparse.Namespace) -> dict:
    """The TaylorSeerConfig fields of parsed flags (one mapping, shared by every place that builds the config)."""
    return {
        "interval": args.interval,
        "max_order": args.max_order,
        "first_enhance": args.first_enhance,
        "derivative_start_step": args.derivative_start_step,
        "factor_dtype": FACTOR_DTYPES[args.factor_dtype],
        "forecaster": args.forecaster,
        "hermite_scale": args.hermite_scale,
        "full_steps": args.full_steps,
        "placement": args.placement,
        "placement_power": args.placement_power,
        "full_step_list": args.full_step_list,
    }


def taylorseer_config_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> TaylorSeerConfig:
    """The config for parsed flags; an invalid value exits through ``parser.error`` with the reason."""
    try:
        return TaylorSeerConfig(**taylorseer_fields(args))
    except (TypeError, ValueError) as err:
        message = str(err)
        for field in ("full_step_list", "full_steps", "placement_power", "hermite_scale"):
            message = message.replace(field, "--" + field.replace("_", "-"))
        parser.error(f"invalid TaylorSeer setting: {message}")


def check_schedule_flags(config: TaylorSeerConfig, num_steps: int, parser: argparse.ArgumentParser) -> None:
    """:func:`check_schedule` for the parsed flags: a schedule whose TaylorSeer label would lie (see there) exits
    through ``parser.error`` with the flag to change."""
    try:
        check_schedule(num_steps, config)
    except (TypeError, ValueError) as err:
        message = str(err).replace("derivative_start_step", "--derivative-start-step")
        parser.error(message.replace("max_order", "--max-order"))
