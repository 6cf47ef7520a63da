"""Reading checkpoints and loading them into models, with one readable error per failure.

Every model tree loads its weights through these helpers so that a wrong path, a corrupt file or a checkpoint for a
different model ends in a single :class:`CheckpointError` whose message says what was expected and how to fix it,
instead of a traceback from deep inside ``torch.load`` or ``load_state_dict``. CLIs catch it and print the message.

Models are meant to be built on the meta device (no memory, no random init) and filled with
:func:`load_state_dict_checked`, which assigns the checkpoint's tensors in place of the meta ones. Non-persistent
buffers are not in checkpoints, so they would stay on meta: a model that has them must pass ``rebuild_buffers``,
which recomputes them after the weights are assigned (e.g. with ``module.register_buffer(name, value,
persistent=False)``); a model that still holds a meta tensor afterwards is refused, so a forgotten buffer is an error
at load time rather than a crash at the first forward.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import torch
import torch.nn as nn

__all__ = [
    "CheckpointError",
    "require_path",
    "read_checkpoint_file",
    "read_state_dict",
    "load_state_dict_checked",
    "truncated_list",
    "KeyPool",
    "find_diffusers_model_folder",
    "read_json_object",
    "read_diffusers_weights",
    "read_diffusers_folder",
]

TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
SAFETENSORS_SUFFIX = ".safetensors"
# Globals that weights-only unpickling may construct: training checkpoints (e.g. DiT's train.py) store their
# command-line arguments as an argparse.Namespace next to the weights.
SAFE_GLOBALS: tuple[type, ...] = (argparse.Namespace,)
MAX_LISTED = 20
# Wrappers that prefix every key: DistributedDataParallel ("module."), torch.compile ("_orig_mod."), Lightning-style
# training wrappers ("model."). Recognised only to suggest the fix in the error message.
KNOWN_KEY_PREFIXES = ("module.", "_orig_mod.", "model.")
DIFFUSERS_CONFIG = "config.json"
# (sharded index, single file) of a diffusers model folder, in order of preference: safetensors first, as diffusers.
DIFFUSERS_WEIGHT_FILES = (
    ("diffusion_pytorch_model.safetensors.index.json", "diffusion_pytorch_model.safetensors"),
    ("diffusion_pytorch_model.bin.index.json", "diffusion_pytorch_model.bin"),
)


class CheckpointError(Exception):
    """A checkpoint could not be found, read or loaded. The message is complete and multi-line and names the fix."""


def require_path(path: str | Path, what: str, how_to_get: str) -> Path:
    """Return ``path`` as a Path if it exists; otherwise raise a CheckpointError saying what was expected where.

    The absolute path is spelled out because defaults are relative to the working directory, which is the usual
    reason a file that "is there" is not found.
    """
    resolved = Path(path).expanduser()
    if resolved.exists():
        return resolved
    raise CheckpointError(f"{what} not found.\n  expected at: {resolved.absolute()}\n{how_to_get}")


def read_checkpoint_file(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint file as stored: a flat state dict, or a training checkpoint (a dict of dicts and args).

    ``.safetensors`` goes through safetensors; ``.pt/.pth/.bin/.ckpt`` through ``torch.load`` onto the CPU with
    ``weights_only=True``, so a checkpoint cannot run code when it is read. Any failure becomes a CheckpointError
    naming the file.
    """
    path = require_path(path, "Checkpoint file", "Check the path (and the working directory it is relative to).")
    if path.is_dir():
        raise CheckpointError(f"Expected a checkpoint file but got a directory:\n  {path.absolute()}")
    suffix = path.suffix.lower()
    try:
        if suffix == SAFETENSORS_SUFFIX:
            from safetensors.torch import load_file

            loaded: Any = load_file(str(path), device="cpu")
        elif suffix in TORCH_SUFFIXES:
            with _allow_safe_globals(SAFE_GLOBALS):
                loaded = torch.load(path, map_location="cpu", weights_only=True)
        else:
            supported = ", ".join((SAFETENSORS_SUFFIX, *TORCH_SUFFIXES))
            raise CheckpointError(
                f"Unsupported checkpoint format '{suffix or '(no suffix)'}':\n  {path.absolute()}\n"
                f"Supported suffixes: {supported}."
            )
    except CheckpointError:
        raise
    except Exception as exc:  # torch.load and safetensors raise many unrelated types for a damaged file
        raise CheckpointError(
            f"Could not read checkpoint file:\n  {path.absolute()}\n"
            f"  reason: {type(exc).__name__}: {_first_line(exc)}\n"
            "The file may be truncated (an interrupted download: download it again) or not a checkpoint at all. "
            "Pickled files are read with weights_only=True and may only contain tensors, containers, numbers, "
            "strings and argparse.Namespace; a whole pickled model (torch.save(model)) is refused: save "
            "model.state_dict() instead."
        ) from exc
    if not isinstance(loaded, Mapping):
        raise CheckpointError(
            f"Checkpoint file holds a {type(loaded).__name__}, not a dict of tensors:\n  {path.absolute()}"
        )
    return dict(loaded)


def read_state_dict(path: str | Path, *, nested: Sequence[str] = ()) -> dict[str, torch.Tensor]:
    """Read a flat ``{name: tensor}`` state dict from a file.

    A training checkpoint stores several dicts side by side (DiT's train.py: ``model``, ``ema``, ``opt``, ``args``);
    ``nested`` names, in order of preference, the entries that hold the weights to use (DiT samples with ``ema``).
    """
    content = top_level = read_checkpoint_file(path)
    for key in nested:
        if isinstance(content.get(key), Mapping):
            content = dict(content[key])
            break
    not_tensors = sorted(k for k, v in content.items() if not isinstance(v, torch.Tensor))
    if not_tensors:
        expected = f" with its weights under {' or '.join(map(repr, nested))}" if nested else ""
        raise CheckpointError(
            f"Checkpoint file does not hold a state dict of tensors:\n  {Path(path).absolute()}\n"
            f"  entries that are not tensors: {truncated_list(not_tensors)}\n"
            f"  top-level keys: {truncated_list(sorted(top_level))}\n"
            f"Expected a flat {{name: tensor}} dict or a training checkpoint{expected}."
        )
    return content


def load_state_dict_checked(
    model: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    source: str,
    *,
    model_desc: str | None = None,
    hint: str = "",
    rebuild_buffers: Callable[[nn.Module], None] | None = None,
) -> nn.Module:
    """``model.load_state_dict(state_dict, strict=False, assign=True)`` after checking that it fits exactly.

    Keys and shapes are compared first, and every problem (missing, unexpected, shape-mismatched keys) is reported
    in ONE CheckpointError naming ``model_desc`` (e.g. the preset and input size) and ``source`` (the file), plus the
    tree-specific ``hint`` (which flags to check). ``assign=True`` makes it work for a model built on the meta
    device: the checkpoint's tensors become the parameters (keeping each parameter's ``requires_grad``); dtypes are
    taken from the checkpoint, so cast the model afterwards. ``rebuild_buffers(model)`` then recomputes the
    non-persistent buffers, and any tensor still on meta is an error. Returns ``model``.
    """
    desc = model_desc or type(model).__name__
    expected = model.state_dict()
    problems = _fit_problems(expected, state_dict)
    if problems:
        lines = ["Checkpoint does not fit the model.", f"  model: {desc}", f"  file:  {source}", *problems]
        prefix_hint = _prefix_hint(expected, state_dict)
        lines += [line for line in (prefix_hint, hint) if line]
        raise CheckpointError("\n".join(lines))
    model.load_state_dict(state_dict, strict=False, assign=True)
    if rebuild_buffers is not None:
        rebuild_buffers(model)
    on_meta = sorted(name for name, t in _named_tensors(model) if t.is_meta)
    if on_meta:
        raise CheckpointError(
            f"After loading {source} into {desc}, these tensors are still on the meta device:\n"
            f"  {truncated_list(on_meta)}\n"
            "They are not stored in the checkpoint (non-persistent buffers): the model tree must recompute them "
            "after loading (pass rebuild_buffers to load_state_dict_checked)."
        )
    return model


def _fit_problems(expected: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor]) -> list[str]:
    """One line per kind of mismatch between the model's state dict and the checkpoint's; empty when they fit."""
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    mismatched = sorted(
        f"{k}: checkpoint {tuple(given[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(expected) & set(given)
        if tuple(given[k].shape) != tuple(expected[k].shape)
    )
    sections = (
        ("missing from the checkpoint", missing),
        ("unexpected in the checkpoint", unexpected),
        ("shape mismatches", mismatched),
    )
    indent = "\n    "
    return [f"  {title} ({len(keys)}):{indent}{truncated_list(keys, sep=indent)}" for title, keys in sections if keys]


def _prefix_hint(expected: Mapping[str, Any], given: Mapping[str, Any]) -> str:
    """Suggest the fix when every checkpoint key carries a wrapper prefix that the model's keys lack."""
    for prefix in KNOWN_KEY_PREFIXES:
        if given and all(k.startswith(prefix) for k in given):
            if {k[len(prefix) :] for k in given} == set(expected):
                return f"Every checkpoint key starts with '{prefix}' (a training wrapper): strip it before loading."
    return ""


def _named_tensors(model: nn.Module) -> Iterable[tuple[str, torch.Tensor]]:
    yield from model.named_parameters()
    yield from model.named_buffers()


def truncated_list(items: Sequence[str], limit: int = MAX_LISTED, sep: str = ", ") -> str:
    """At most ``limit`` items joined by ``sep``, then how many were left out: error messages stay readable."""
    shown = list(items[:limit])
    rest = len(items) - limit
    return sep.join([*shown, f"... and {rest} more"] if rest > 0 else shown)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else "(no message)"


def _allow_safe_globals(types: Sequence[type]) -> contextlib.AbstractContextManager:
    """Allow ``types`` in weights-only unpickling: scoped where torch has ``safe_globals`` (>= 2.5), global before."""
    if hasattr(torch.serialization, "safe_globals"):
        return torch.serialization.safe_globals(list(types))
    torch.serialization.add_safe_globals(list(types))
    return contextlib.nullcontext()


class KeyPool:
    """A state dict from which a key-mapping function must take every key exactly once.

    Missing keys are collected rather than raised at once, so that :meth:`finish` reports every missing and every
    leftover key in one error; the model trees' checkpoint converters use it so no key is ever silently dropped.
    """

    def __init__(self, state_dict: Mapping[str, torch.Tensor], layout: str) -> None:
        self._left = dict(state_dict)
        self._taken: set[str] = set()
        self._missing: list[str] = []
        self._layout = layout

    def take(self, key: str) -> torch.Tensor | None:
        if key in self._taken:
            raise RuntimeError(f"conversion bug: key {key!r} consumed twice")
        self._taken.add(key)
        if key not in self._left:
            self._missing.append(key)
            return None
        return self._left.pop(key)

    def finish(self) -> None:
        if not (self._missing or self._left):
            return
        lines = [f"State dict is not a complete {self._layout} state dict:"]
        if self._missing:
            lines.append(f"  missing keys ({len(self._missing)}): {truncated_list(sorted(self._missing))}")
        if self._left:
            lines.append(f"  keys no mapping consumes ({len(self._left)}): {truncated_list(sorted(self._left))}")
        raise CheckpointError("\n".join(lines))


def find_diffusers_model_folder(path: str | Path, subfolder: str, what: str = "Checkpoint folder") -> Path:
    """The diffusers model folder at ``path``: ``path`` itself when it holds ``config.json``, else its ``subfolder``
    (e.g. ``transformer/`` of a pipeline folder) when that does; anything else is a CheckpointError."""
    path = require_path(path, what, f"Pass a diffusers model folder or a pipeline folder with {subfolder}/.")
    for candidate in (path, path / subfolder):
        if (candidate / DIFFUSERS_CONFIG).is_file():
            return candidate
    raise CheckpointError(
        f"{what} is not a diffusers model folder:\n  {path.absolute()}\n"
        f"Expected {DIFFUSERS_CONFIG} and diffusion_pytorch_model.safetensors (or shards with their index json) in "
        f"it (a model folder), or in its {subfolder}/ subfolder (a pipeline folder)."
    )


def read_json_object(path: str | Path, what: str) -> dict[str, Any]:
    """The JSON object (dict) in the file ``path``; a missing, unreadable or non-object file is a CheckpointError."""
    path = require_path(path, what, "Pass a complete diffusers folder (download it again if a file is missing).")
    try:
        content = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(
            f"Could not read {what} as JSON:\n  {path.absolute()}\n  reason: {type(exc).__name__}: {_first_line(exc)}"
        ) from exc
    if not isinstance(content, dict):
        raise CheckpointError(f"{what} does not hold a JSON object:\n  {path.absolute()}")
    return content


def read_diffusers_weights(folder: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a diffusers model folder: one ``diffusion_pytorch_model.safetensors`` (or ``.bin``), or the
    shards listed in its ``.index.json``, each checked to hold exactly the tensors the index assigns to it."""
    folder = Path(folder)
    for index_name, single_name in DIFFUSERS_WEIGHT_FILES:
        if (folder / index_name).is_file():
            return _read_sharded(folder / index_name)
        if (folder / single_name).is_file():
            return read_state_dict(folder / single_name)
    present = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    raise CheckpointError(
        f"No diffusers weights in {folder.absolute()}\n"
        f"  expected one of: {', '.join(name for pair in DIFFUSERS_WEIGHT_FILES for name in pair)}\n"
        f"  found: {', '.join(present) or '(empty or no folder)'}"
    )


def read_diffusers_folder(folder: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(state dict, config)`` of a diffusers model folder (see :func:`find_diffusers_model_folder`): the tensors
    of :func:`read_diffusers_weights` in the file's keys and dtypes, and ``config.json`` as a dict."""
    folder = Path(folder)
    config = read_json_object(folder / DIFFUSERS_CONFIG, f"Diffusers {DIFFUSERS_CONFIG}")
    return read_diffusers_weights(folder), config


def _confined_shard(index: Path, shard: str, key: str) -> Path:
    """The file that the index entry ``key -> shard`` names, refused (CheckpointError naming the entry) unless it is
    inside the index's folder: an index from an untrusted download must not make us read any other file of the
    machine (absolute paths, ``..``, or a symlink out of the folder). Hugging Face's cache is the one exception it
    needs: a snapshot's files are symlinks into the same repository's ``blobs/``."""
    folder = index.parent
    windows = PureWindowsPath(shard)  # also splits at backslashes and sees drives, so "..\\x" or "C:x" are caught
    escapes = (
        not PurePosixPath(shard).parts
        or PurePosixPath(shard).is_absolute()
        or windows.is_absolute()
        or windows.drive != ""
        or ".." in windows.parts
    )
    path = folder / shard
    if not escapes:  # resolve() follows symlinks, dangling ones too
        target = path.resolve()
        escapes = not any(target.is_relative_to(root) for root in _allowed_shard_roots(folder))
    if escapes:
        raise CheckpointError(
            f"Sharded weights index lists a shard outside its folder:\n  {index.absolute()}\n"
            f"  entry: {key!r} -> {shard!r}\n"
            f"Shards must be files inside {folder.absolute()}/ (no absolute path, '..' or symlink out of it); the "
            "index is corrupt or was tampered with: download the checkpoint again from its source."
        )
    return path


def _allowed_shard_roots(folder: Path) -> list[Path]:
    """Where a shard may resolve to: the index's folder, and for a folder inside a Hugging Face cache snapshot
    (``models--org--name/snapshots/<revision>/...``) that repository's ``blobs/``, where its symlinks point."""
    roots = [folder.resolve()]
    absolute = folder.absolute()
    for ancestor in (absolute, *absolute.parents):
        if ancestor.parent.name == "snapshots":
            roots.append((ancestor.parent.parent / "blobs").resolve())
            break
    return roots


def _read_sharded(index: Path) -> dict[str, torch.Tensor]:
    """Merge the shards listed in a diffusers/transformers ``*.index.json``; every listed key must be in its shard
    and every shard's key must be listed, so a stale index or a shard from another download is refused."""
    weight_map = read_json_object(index, "Sharded weights index").get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map or not all(isinstance(v, str) for v in weight_map.values()):
        raise CheckpointError(
            f"Sharded weights index has no 'weight_map' of tensor names to shard files:\n  {index.absolute()}\n"
            "The index is corrupt: download it again."
        )
    merged: dict[str, torch.Tensor] = {}
    problems = []
    for shard in sorted(set(weight_map.values())):
        path = _confined_shard(index, shard, next(key for key, file in weight_map.items() if file == shard))
        how = f"The index {index.name} lists it: download the missing shard into {index.parent.absolute()}/."
        tensors = read_state_dict(require_path(path, f"Shard {shard!r}", how))
        listed = {key for key, file in weight_map.items() if file == shard}
        absent, unlisted = sorted(listed - set(tensors)), sorted(set(tensors) - listed)
        if absent:
            problems.append(f"  listed for {shard} but absent from it ({len(absent)}): {truncated_list(absent)}")
        if unlisted:
            problems.append(f"  in {shard} but not listed for it ({len(unlisted)}): {truncated_list(unlisted)}")
        merged.update(tensors)
    if problems:
        raise CheckpointError(
            f"The shards do not hold the tensors their index lists:\n  {index.absolute()}\n"
            + "\n".join(problems)
            + "\nThe index and the shards come from different downloads, or a shard is damaged: download them again."
        )
    return merged
