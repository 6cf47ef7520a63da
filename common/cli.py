"""What every tree's scripts share on the command line: the TaylorSeer flags (1:1 onto :class:`TaylorSeerConfig`),
the help formatter, and the one error type that scripts print as a single ``error:`` line with exit code 2."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch

from .checkpoint import CheckpointError
from .taylor_cache import TaylorSeerConfig

T = TypeVar("T")

__all__ = [
    "add_taylorseer_args",
    "taylorseer_config_from_args",
    "HelpFormatter",
    "UsageError",
    "warn",
    "existing_dir",
    "check_output_folder",
    "run_cli",
]

_DTYPES = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


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


def existing_dir(path: str | Path, what: str) -> Path:
    """``path`` as a folder that exists, or a :class:`UsageError` naming it."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise UsageError(f"{what} folder not found: {folder.absolute()}")
    return folder


def check_output_folder(path: str | Path, flag: str) -> Path:
    """``path`` as a folder that exists or can be created (nothing on the way is a file), else a :class:`UsageError`
    naming ``flag``; creates nothing."""
    folder = Path(path).expanduser()
    for ancestor in (folder, *folder.absolute().parents):
        if not ancestor.exists():
            continue
        if ancestor == folder and not folder.is_dir():
            raise UsageError(f"{flag} {folder.absolute()} exists and is not a folder: choose another {flag}")
        if not ancestor.is_dir():
            raise UsageError(
                f"{flag} {folder.absolute()} cannot be created: {ancestor} is a file; choose another {flag}"
            )
        break
    return folder


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
        choices=list(_DTYPES),
        default="auto",
        help="dtype of the stored Taylor factors; auto = the features' dtype (as the reference)",
    )
    return group


def taylorseer_config_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> TaylorSeerConfig:
    """The config for parsed flags; an invalid value exits through ``parser.error`` with the reason."""
    try:
        return TaylorSeerConfig(
            interval=args.interval,
            max_order=args.max_order,
            first_enhance=args.first_enhance,
            derivative_start_step=args.derivative_start_step,
            factor_dtype=_DTYPES[args.factor_dtype],
        )
    except (TypeError, ValueError) as err:
        parser.error(f"invalid TaylorSeer setting: {err}")
