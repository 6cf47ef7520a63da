"""Every flag and file input of train.py and train_classifier.py refused as the CLI contract says: exit code 2, one
``error:`` line naming the fix, and nothing written (no training starts). The coverage tests at the end fail when a
flag is added to either script without a row here."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from cli_testing import assert_refused

from taylorseer_dit import train, train_classifier

BIG_SEED = str(2**63)
Setup = Callable[[Path, Path], list[str]]  # (tmp_path, a finished 2-step run to copy) -> extra argv


def base_argv(tmp_path: Path) -> list[str]:
    return ["--model", "DiT-Tiny/4", "--batch-size", "4", "--steps", "2", "--results-dir", str(tmp_path / "run")]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A 2-step run of the base flags: its folder is copied where a case needs an existing run."""
    results = tmp_path_factory.mktemp("finished") / "run"
    train.cli(base_argv(results.parent))
    return results


def flags(*extra: str) -> Setup:
    return lambda tmp_path, run: list(extra)


def with_run(*extra: str) -> Setup:
    """Copy the finished run into results-dir, then pass ``extra``."""

    def setup(tmp_path: Path, run: Path) -> list[str]:
        shutil.copytree(run, tmp_path / "run")
        return list(extra)

    return setup


def with_file(name: str, content: bytes, *extra: str) -> Setup:
    """Write ``content`` to tmp_path/name (folders on the way created), then pass ``extra`` with {tmp} filled in."""

    def setup(tmp_path: Path, run: Path) -> list[str]:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        return [arg.format(tmp=tmp_path) for arg in extra]

    return setup


def with_folder(name: str, *extra: str) -> Setup:
    def setup(tmp_path: Path, run: Path) -> list[str]:
        (tmp_path / name).mkdir(parents=True)
        return [arg.format(tmp=tmp_path) for arg in extra]

    return setup


def with_foreign_checkpoint(tmp_path: Path, run: Path) -> list[str]:
    (tmp_path / "run").mkdir()
    torch.save({"model": {"w": torch.zeros(1)}}, tmp_path / "run" / "last.pt")
    return ["--resume"]


def with_log(content: str) -> Setup:
    """The finished run with its loss log replaced by ``content``, resumed."""

    def setup(tmp_path: Path, run: Path) -> list[str]:
        shutil.copytree(run, tmp_path / "run")
        (tmp_path / "run" / "loss.csv").write_text(content)
        return ["--resume", "--steps", "3"]

    return setup


NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")

TRAIN_CASES = [
    pytest.param(flags("--model", "DiT-Huge/4"), "invalid choice: 'DiT-Huge/4'", id="model-unknown"),
    pytest.param(flags("--image-size", "0"), "expected an integer in 1..256, got 0", id="image-size-0"),
    pytest.param(flags("--image-size", "512"), "expected an integer in 1..256, got 512", id="image-size-huge"),
    pytest.param(flags("--image-size", "1.5"), "expected an integer in 1..256, got '1.5'", id="image-size-float"),
    pytest.param(flags("--image-size", "18"), "patch size 4: use --image-size 16 or 20", id="image-size-patch"),
    pytest.param(flags("--image-size", "2"), "patch size 4: use --image-size 4", id="image-size-below-patch"),
    pytest.param(flags("--steps", "0"), "--steps: expected an integer >= 1, got 0", id="steps-0"),
    pytest.param(flags("--steps", "x"), "--steps: expected an integer >= 1, got 'x'", id="steps-text"),
    pytest.param(flags("--batch-size", "0"), "--batch-size: expected an integer >= 1, got 0", id="batch-size-0"),
    pytest.param(flags("--batch-size", "-8"), "--batch-size: expected an integer >= 1, got -8", id="batch-size-neg"),
    pytest.param(flags("--lr", "nan"), "--lr: expected a finite number > 0, got 'nan'", id="lr-nan"),
    pytest.param(flags("--lr", "inf"), "--lr: expected a finite number > 0, got 'inf'", id="lr-inf"),
    pytest.param(flags("--lr", "0"), "--lr: expected a finite number > 0, got 0", id="lr-0"),
    pytest.param(flags("--lr=-1e-3"), "--lr: expected a finite number > 0", id="lr-negative"),
    pytest.param(flags("--warmup-steps", "-1"), "--warmup-steps: expected an integer >= 0", id="warmup-negative"),
    pytest.param(flags("--ema-decay", "1"), "--ema-decay: expected a finite number >= 0 and < 1", id="ema-decay-1"),
    pytest.param(flags("--ema-decay", "nan"), "--ema-decay: expected a finite number >= 0", id="ema-decay-nan"),
    pytest.param(flags("--ema-decay", "-0.5"), "--ema-decay: expected a finite number >= 0", id="ema-decay-neg"),
    pytest.param(flags("--class-dropout-prob", "1"), "--class-dropout-prob: expected a finite", id="dropout-1"),
    pytest.param(flags("--class-dropout-prob", "nan"), "--class-dropout-prob: expected", id="dropout-nan"),
    pytest.param(flags("--seed", "-1"), "--seed: expected an integer in 0..9223372036854775807", id="seed-negative"),
    pytest.param(flags("--seed", BIG_SEED), f"--seed: expected an integer in 0..{2**63 - 1}", id="seed-huge"),
    pytest.param(flags("--ckpt-every", "0"), "--ckpt-every: expected an integer >= 1, got 0", id="ckpt-every-0"),
    pytest.param(flags("--log-every", "0"), "--log-every: expected an integer >= 1, got 0", id="log-every-0"),
    pytest.param(flags("--device", "gpu"), "--device 'gpu' is not a torch device", id="device-unknown"),
    pytest.param(flags("--device", "cuda"), "no CUDA GPU is visible", id="device-cuda", marks=NO_GPU),
    pytest.param(flags("--device", "cuda:3"), "no CUDA GPU is visible", id="device-cuda-index", marks=NO_GPU),
    pytest.param(flags("--resume"), "last.pt does not exist; run without --resume", id="resume-nothing"),
    pytest.param(with_run(), "already holds a run (last.pt): add --resume", id="rerun-without-resume"),
    pytest.param(
        with_run("--resume", "--model", "DiT-Tiny/2"),
        "--model DiT-Tiny/2 (checkpoint: DiT-Tiny/4)",
        id="resume-other-model",
    ),
    pytest.param(
        with_run("--resume", "--lr", "0.002", "--seed", "1"),
        "--lr 0.002 (checkpoint: 0.001); --seed 1 (checkpoint: 0)",
        id="resume-other-settings",
    ),
    pytest.param(with_run("--resume", "--steps", "1"), "pass --steps 2 or more", id="resume-fewer-steps"),
    pytest.param(
        with_file("run/last.pt", b"half a checkpoint", "--resume"), "Could not read checkpoint file", id="resume-cut"
    ),
    pytest.param(with_foreign_checkpoint, "is not a train.py checkpoint (no ema, opt", id="resume-foreign"),
    pytest.param(with_log("step,loss\n"), "is not a train.py loss log", id="resume-foreign-log"),
    pytest.param(
        with_log("step,loss,seconds\n1,0.5,1.0\n2,oops,2.0\n"), "line 3 is not a 'step,loss,seconds'", id="log-bad-row"
    ),
    pytest.param(
        with_file("taken", b"a file", "--results-dir", "{tmp}/taken"), "exists and is not a folder", id="dir-is-file"
    ),
    pytest.param(
        with_file("taken", b"a file", "--results-dir", "{tmp}/taken/run"), "taken is a file", id="dir-under-file"
    ),
    pytest.param(flags("--export", "weights.json"), "must end in .safetensors", id="export-json"),
    pytest.param(flags("--export", "weights"), "must end in .safetensors", id="export-no-suffix"),
    pytest.param(flags("--export", "w.pt"), "--export w.pt must end in .safetensors", id="export-pt"),
    pytest.param(with_folder("w.safetensors", "--export", "{tmp}/w.safetensors"), "is a folder", id="export-is-folder"),
    pytest.param(
        with_folder("w.json", "--export", "{tmp}/w.safetensors"), "its metadata path", id="export-meta-is-folder"
    ),
    pytest.param(
        with_file("taken", b"a file", "--export", "{tmp}/taken/w.safetensors"),
        "taken is a file",
        id="export-under-file",
    ),
]


@pytest.mark.parametrize(("setup", "message"), TRAIN_CASES)
def test_train_refuses_bad_input(setup, message, tmp_path, finished_run, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative --export paths land under the watched folder
    extra = setup(tmp_path, finished_run)
    assert_refused(train.cli, [*base_argv(tmp_path), *extra], message, capsys, watch=tmp_path)


def test_refused_rerun_leaves_the_run_byte_for_byte(tmp_path, finished_run, capsys):
    """The data-loss case itself: a rerun without --resume keeps the checkpoint and the log as they were."""
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    before = {path.name: path.read_bytes() for path in run.iterdir()}
    assert sorted(before) == ["last.pt", "loss.csv", "loss.png"]
    assert_refused(train.cli, base_argv(tmp_path), "add --resume to continue it", capsys)
    assert {path.name: path.read_bytes() for path in run.iterdir()} == before


CLASSIFIER_CASES = [
    pytest.param(flags("--epochs", "0"), "--epochs: expected an integer in 1..10000, got 0", id="epochs-0"),
    pytest.param(flags("--epochs", "2.5"), "--epochs: expected an integer in 1..10000", id="epochs-float"),
    pytest.param(flags("--epochs", "10001"), "--epochs: expected an integer in 1..10000", id="epochs-huge"),
    pytest.param(flags("--seed", "-1"), "--seed: expected an integer in 0..9223372036854775807", id="seed-negative"),
    pytest.param(flags("--seed", BIG_SEED), "--seed: expected an integer in 0..", id="seed-huge"),
    pytest.param(flags("--output", "c.pt"), "--output c.pt must end in .safetensors", id="output-pt"),
    pytest.param(flags("--output", "classifier"), "must end in .safetensors", id="output-no-suffix"),
    pytest.param(with_folder("c.safetensors", "--output", "{tmp}/c.safetensors"), "is a folder", id="output-is-folder"),
    pytest.param(
        with_file("taken", b"a file", "--output", "{tmp}/taken/c.safetensors"),
        "taken is a file",
        id="output-under-file",
    ),
    pytest.param(
        with_file("c.safetensors", b"weights", "--output", "{tmp}/c.safetensors"),
        "exists: add --overwrite to replace it",
        id="output-exists",
    ),
    pytest.param(
        with_file("results/digits_classifier.safetensors", b"weights"),
        "--output results/digits_classifier.safetensors exists: add --overwrite",
        id="default-output-exists",
    ),
    pytest.param(
        flags("--overwrite=yes"), "argument --overwrite: ignored explicit argument 'yes'", id="overwrite-value"
    ),
]


@pytest.mark.parametrize(("setup", "message"), CLASSIFIER_CASES)
def test_train_classifier_refuses_bad_input(setup, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default and relative --output paths land under the watched folder
    extra = setup(tmp_path, tmp_path)
    assert_refused(train_classifier.cli, ["--epochs", "1", *extra], message, capsys, watch=tmp_path)


# ------------------------------------------------------------------------------------------------- coverage


def row_flags(cases: list, tmp_path: Path) -> set[str]:
    """The flags the rows pass: each row's setup run in a folder of its own, with an empty stand-in for the run."""
    stand_in = tmp_path / "stand-in-run"
    stand_in.mkdir()
    argvs = []
    for number, case in enumerate(cases):
        folder = tmp_path / f"row{number}"
        folder.mkdir()
        argvs.append(case.values[0](folder, stand_in))
    return {value.split("=")[0] for argv in argvs for value in argv if value.startswith("--")}


def parser_flags(parser) -> set[str]:
    """Every option of ``parser`` but --help and the --no-X halves of boolean flags."""
    options = {option for action in parser._actions for option in action.option_strings}
    return {option for option in options if option.startswith("--") and not option.startswith(("--no-", "--help"))}


def test_every_train_flag_has_a_bad_input_row(tmp_path) -> None:
    assert parser_flags(train.build_parser()) == row_flags(TRAIN_CASES, tmp_path)


def test_every_train_classifier_flag_has_a_bad_input_row(tmp_path) -> None:
    assert parser_flags(train_classifier.build_parser()) == row_flags(CLASSIFIER_CASES, tmp_path)
