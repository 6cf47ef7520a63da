"""Every flag and file input of TaylorSeer-DiT/sample.py and sample_ddp.py, given bad values: exit code 2, one
``error:`` line that names the fix, and nothing written (tests/cli_testing.assert_refused).

Each case is the extra argv appended to a valid command (argparse keeps the last value of a repeated flag), built by a
function of the test folder that first creates whatever obstacle the case needs (a file where a folder should be, ...).
Cases that need no weights run with the model loader replaced by a failure: they must be refused before any loading.
The coverage tests at the end fail when a flag is added to either script without a row here.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from cli_testing import assert_refused
from dit_testing import tiny_dit, tiny_vae

from taylorseer_dit import sample, sample_ddp
from taylorseer_dit.sampling_args import weights_id

pytestmark = pytest.mark.usefixtures("one_thread")

Case = Callable[[Path], list[str]]


def flags(*argv: str) -> Case:
    return lambda folder: list(argv)


def file_in(folder: Path, name: str, content: bytes = b"x") -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def fit_file(content: bytes) -> Case:
    """--teacache-coefficients naming a fit file with ``content``, written before the run."""
    return lambda folder: ["--teacache-coefficients", str(file_in(folder, "fit.json", content))]


# Model, sampler and TaylorSeer flags: shared by both scripts (sampling_args.py).
MODEL_FLAG_CASES = [
    ("model", flags("--model", "DiT-Huge/2"), "argument --model: invalid choice: 'DiT-Huge/2'"),
    ("vae", flags("--vae", "kl"), "argument --vae: invalid choice: 'kl'"),
    ("image-size zero", flags("--image-size", "0"), "--image-size: expected an integer in 1..1024, got 0"),
    ("image-size text", flags("--image-size", "big"), "--image-size: expected an integer in 1..1024, got 'big'"),
    ("image-size huge", flags("--image-size", "4096"), "--image-size: expected an integer in 1..1024, got 4096"),
    ("image-size patch", flags("--image-size", "9"), "--image-size 9 must be a positive multiple of 2"),
    ("image-size vae", flags("--vae", "ema", "--image-size", "24"), "multiple of 16 up to 1024 for DiT-Tiny/2 with"),
    ("in-channels zero", flags("--in-channels", "0"), "--in-channels: expected an integer in 1..64, got 0"),
    ("in-channels huge", flags("--in-channels", "65"), "--in-channels: expected an integer in 1..64, got 65"),
    ("num-classes zero", flags("--num-classes", "0"), "--num-classes: expected an integer in 1..100000, got 0"),
    ("num-classes huge", flags("--num-classes", "10000000"), "--num-classes: expected an integer in 1..100000"),
    ("cfg-scale nan", flags("--cfg-scale", "nan"), "--cfg-scale: expected a finite number >= 1 and <= 100, got 'nan'"),
    ("cfg-scale inf", flags("--cfg-scale", "inf"), "--cfg-scale: expected a finite number >= 1 and <= 100, got 'inf'"),
    ("cfg-scale -inf", flags("--cfg-scale=-inf"), "--cfg-scale: expected a finite number >= 1 and <= 100"),
    ("cfg-scale low", flags("--cfg-scale", "0.5"), "--cfg-scale: expected a finite number >= 1 and <= 100, got 0.5"),
    ("cfg-scale high", flags("--cfg-scale", "1e6"), "--cfg-scale: expected a finite number >= 1 and <= 100"),
    ("cfg-scale text", flags("--cfg-scale", "strong"), "--cfg-scale: expected a finite number >= 1 and <= 100"),
    ("steps zero", flags("--num-sampling-steps", "0"), "--num-sampling-steps: expected an integer in 1..1000, got 0"),
    ("steps huge", flags("--num-sampling-steps", "1001"), "--num-sampling-steps: expected an integer in 1..1000"),
    ("steps float", flags("--num-sampling-steps", "4.5"), "--num-sampling-steps: expected an integer in 1..1000"),
    ("ddim-sample value", flags("--ddim-sample=yes"), "argument --ddim-sample/--no-ddim-sample: ignored explicit"),
    ("interval zero", flags("--interval", "0"), "interval must be >= 1, got 0"),
    ("interval text", flags("--interval", "x"), "argument --interval: invalid int value: 'x'"),
    ("max-order negative", flags("--max-order", "-1"), "max_order must be >= 0, got -1"),
    ("first-enhance zero", flags("--first-enhance", "0"), "first_enhance must be >= 1, got 0"),
    ("derivative-start negative", flags("--derivative-start-step", "-1"), "derivative_start_step must be >= 0"),
    # 4 steps, E=2, N=4: full steps 0 and 1, forecasts 2 and 3; a derivative from step 2 on would never be formed.
    ("derivative-start FORA", flags("--derivative-start-step", "2"), "use a --derivative-start-step <= 1"),
    ("factor-dtype", flags("--factor-dtype", "int8"), "argument --factor-dtype: invalid choice: 'int8'"),
    ("forecaster", flags("--forecaster", "spline"), "argument --forecaster: invalid choice: 'spline'"),
    ("hermite-scale zero", flags("--hermite-scale", "0"), "--hermite-scale: expected a finite number > 0 and <= 2"),
    ("full-steps zero", flags("--full-steps", "0"), "--full-steps: expected an integer >= 1, got 0"),
    ("full-steps below E", flags("--full-steps", "1"), "--full-steps 1 is below first_enhance 2"),
    ("placement", flags("--placement", "random"), "argument --placement: invalid choice: 'random'"),
    ("late-dense without K", flags("--placement", "late-dense"), "set --full-steps"),
    ("placement-power uniform", flags("--placement-power", "0.5"), "--placement-power sets the late-dense placement"),
    (
        "placement-power nan",
        flags("--placement", "late-dense", "--full-steps", "3", "--placement-power", "nan"),
        "--placement-power: expected a finite number > 0 and <= 4, got 'nan'",
    ),
    ("full-step-list text", flags("--placement", "list", "--full-step-list", "0,a"), "neither comma-separated"),
    ("full-step-list no 0", flags("--placement", "list", "--full-step-list", "1,2"), "must start at step 0"),
    # 4 steps: step 9 does not exist.
    ("full-step-list beyond", flags("--placement", "list", "--full-step-list", "0,9"), "past the last step 3"),
    ("list without steps", flags("--placement", "list"), "placement list needs --full-step-list"),
    ("method", flags("--method", "tgate"), "argument --method: invalid choice: 'tgate'"),
    ("cached-blocks zero", flags("--cached-blocks", "0"), "--cached-blocks: expected an integer >= 1, got 0"),
    # DiT-Tiny/2 has 2 blocks: a range of 3 is found only once the model is known, still before any weights.
    (
        "cached-blocks deep",
        flags("--method", "delta-dit", "--cached-blocks", "3"),
        "--cached-blocks 3 exceeds the 2 blocks of DiT-Tiny/2: use --cached-blocks 1..2",
    ),
    (
        "delta-boundary high",
        flags("--delta-boundary", "1.5"),
        "--delta-boundary: expected a finite number >= 0 and <= 1",
    ),
    (
        "delta-boundary nan",
        flags("--delta-boundary", "nan"),
        "--delta-boundary: expected a finite number >= 0 and <= 1",
    ),
    ("fresh-ratio negative", flags("--fresh-ratio=-0.1"), "--fresh-ratio: expected a finite number >= 0 and <= 1"),
    (
        "fresh-ratio inf",
        flags("--fresh-ratio", "inf"),
        "--fresh-ratio: expected a finite number >= 0 and <= 1, got 'inf'",
    ),
    ("toca-score", flags("--toca-score", "attention"), "argument --toca-score: invalid choice: 'attention'"),
    ("layer-schedule value", flags("--layer-schedule=1"), "--layer-schedule/--no-layer-schedule: ignored explicit"),
    (
        "teacache-thresh negative",
        flags("--teacache-thresh=-1"),
        "--teacache-thresh: expected a finite number >= 0, got -1",
    ),
    ("teacache-thresh nan", flags("--teacache-thresh", "nan"), "--teacache-thresh: expected a finite number >= 0"),
    (
        "teacache-coefficients name",
        flags("--teacache-coefficients", "dit"),
        "dit is neither a published polynomial (flux, hunyuanvideo, identity) nor a fit file: give one of those",
    ),
    ("teacache-coefficients folder", lambda f: ["--teacache-coefficients", str(f)], "nor a fit file: give one of"),
    ("teacache-coefficients not JSON", fit_file(b"{not json"), "is not a JSON fit file (Expecting property name"),
    ("teacache-coefficients not UTF-8", fit_file(b"\xff\xfe"), "is not a JSON fit file ("),
    (
        "teacache-coefficients list",
        fit_file(b"[1.0, 2.0]"),
        '"coefficients" must be a non-empty list of finite numbers',
    ),
    ("teacache-coefficients none", fit_file(b'{"model": "x"}'), "must be a non-empty list of finite numbers (highest"),
    ("teacache-coefficients empty", fit_file(b'{"coefficients": []}'), "finite numbers (highest power first), got []"),
    (
        "teacache-coefficients NaN",
        fit_file(b'{"coefficients": [1.0, NaN]}'),
        "finite numbers (highest power first), got [1.0, NaN]",
    ),
    ("teacache-coefficients inf", fit_file(b'{"coefficients": [1e999]}'), "got [Infinity]: refit it, or give one of"),
    ("teacache-coefficients huge int", fit_file(b'{"coefficients": [1' + b"0" * 400 + b"]}"), "got [1000000"),
    ("teacache-coefficients text", fit_file(b'{"coefficients": ["0.1"]}'), 'got ["0.1"]: refit it'),
    ("teacache-coefficients bool", fit_file(b'{"coefficients": [true]}'), "got [true]: refit it"),
    ("device unknown", flags("--device", "gpu0"), "--device 'gpu0' is not a torch device: use cpu, cuda or cuda:N"),
    ("device cuda", flags("--device", "cuda"), "--device cuda: no CUDA GPU is visible on this machine"),
    ("device cuda:3", flags("--device", "cuda:3"), "--device cuda:3: no CUDA GPU is visible on this machine"),
    ("device meta", flags("--device", "meta"), "--device meta: unsupported device type 'meta'"),
    ("unknown flag", flags("--guidance", "2"), "unrecognized arguments: --guidance 2"),
]


def output_under_a_file(folder: Path) -> list[str]:
    return ["--output", str(file_in(folder, "taken") / "grid.png")]


def output_is_a_folder(folder: Path) -> list[str]:
    (folder / "grid.png").mkdir()
    return ["--output", str(folder / "grid.png")]


def npy_is_a_folder(folder: Path) -> list[str]:
    (folder / "out" / "grid.npy").mkdir(parents=True)  # --no-compare: the raw samples go to grid.npy
    return ["--output", str(folder / "out" / "grid.png")]


def compare_npy_is_a_folder(folder: Path) -> list[str]:
    (folder / "out" / "grid-fora.npy").mkdir(parents=True)
    return ["--output", str(folder / "out" / "grid.png"), "--compare"]


SAMPLE_CASES = [
    ("class-labels range", flags("--class-labels", "3", "10"), "--class-labels [10] are outside [0, 9]"),
    ("class-labels negative", flags("--class-labels", "-1"), "--class-labels: expected an integer >= 0, got -1"),
    ("class-labels text", flags("--class-labels", "cat"), "--class-labels: expected an integer >= 0, got 'cat'"),
    ("seed negative", flags("--seed", "-1"), "--seed: expected an integer in 0..9223372036854775807, got -1"),
    ("seed 2**63", flags("--seed", str(2**63)), f"--seed: expected an integer in 0..{2**63 - 1}, got {2**63}"),
    ("seed 2**64", flags("--seed", str(2**64)), f"--seed: expected an integer in 0..{2**63 - 1}, got {2**64}"),
    ("compare value", flags("--compare=1"), "argument --compare/--no-compare: ignored explicit argument '1'"),
    ("test-FLOPs value", flags("--test-FLOPs=1"), "argument --test-FLOPs: ignored explicit argument '1'"),
    (
        "test-FLOPs run-dependent",
        flags("--test-FLOPs", "--method", "teacache"),
        "--test-FLOPs counts the schedules of full, taylorseer, fora without weights; --method teacache decides",
    ),
    ("timing-repeats zero", flags("--timing-repeats", "0"), "--timing-repeats: expected an integer in 1..100, got 0"),
    ("timing-repeats huge", flags("--timing-repeats", "1000"), "--timing-repeats: expected an integer in 1..100"),
    ("output no suffix", lambda f: ["--output", str(f / "grid")], "must end in .png: e.g. --output"),
    ("output wrong suffix", lambda f: ["--output", str(f / "grid.jpg")], "must end in .png"),
    ("output under a file", output_under_a_file, "cannot be created: "),
    ("output is a folder", output_is_a_folder, "is a folder: give a file name"),
    ("output npy is a folder", npy_is_a_folder, "grid.npy is a folder: give a file name"),
    ("compare npy is a folder", compare_npy_is_a_folder, "grid-fora.npy is a folder: give a file name"),
    ("output unwritable", flags("--output", "/proc/taylorseer-test/grid.png"), "/proc refuses new files"),
]


def sample_dir_is_a_file(folder: Path) -> list[str]:
    return ["--sample-dir", str(file_in(folder, "samples"))]


def sample_dir_under_a_file(folder: Path) -> list[str]:
    return ["--sample-dir", str(file_in(folder, "taken") / "samples")]


SAMPLE_DDP_CASES = [
    ("in-channels for pixels", flags("--in-channels", "4"), "--vae none writes the model output as the image"),
    ("batch size zero", flags("--per-proc-batch-size", "0"), "--per-proc-batch-size: expected an integer in 1..4096"),
    ("batch size text", flags("--per-proc-batch-size", "x"), "--per-proc-batch-size: expected an integer in 1..4096"),
    ("samples zero", flags("--num-fid-samples", "0"), "--num-fid-samples: expected an integer in 1..1000000, got 0"),
    ("samples huge", flags("--num-fid-samples", "2000000"), "--num-fid-samples: expected an integer in 1..1000000"),
    ("global-seed negative", flags("--global-seed", "-1"), f"--global-seed: expected an integer in 0..{2**63 - 1}"),
    ("global-seed 2**63", flags("--global-seed", str(2**63)), f"in 0..{2**63 - 1}, got {2**63}"),
    ("tf32 value", flags("--tf32=no"), "argument --tf32/--no-tf32: ignored explicit argument 'no'"),
    ("sample-dir is a file", sample_dir_is_a_file, "exists and is not a folder: choose another --sample-dir"),
    ("sample-dir under a file", sample_dir_under_a_file, "cannot be created: "),
    ("sample-dir unwritable", flags("--sample-dir", "/proc/taylorseer-test"), "/proc refuses new files"),
]


# The valid commands the cases change, on tiny pixel-space (and latent-space) checkpoints.


@pytest.fixture
def weights(tmp_path) -> dict[str, Path]:
    """Checkpoints and VAE folders the file cases use, in tmp_path/weights."""
    folder = tmp_path / "weights"
    folder.mkdir()
    paths = {"pixel": folder / "pixel.pt", "latent": folder / "latent.pt", "five": folder / "five-classes.pt"}
    torch.save(tiny_dit(input_size=8, in_channels=3).state_dict(), paths["pixel"])
    torch.save(tiny_dit(input_size=2, in_channels=4).state_dict(), paths["latent"])  # 16 px images / VAE's 8
    torch.save(tiny_dit(input_size=8, in_channels=3, num_classes=5).state_dict(), paths["five"])
    paths["junk"] = file_in(folder, "junk.pt", b"not a checkpoint")
    paths["empty folder"] = folder / "empty"
    paths["empty folder"].mkdir()
    paths["vae"] = folder / "vae"
    tiny_vae().save_pretrained(paths["vae"])
    paths["broken vae"] = folder / "broken-vae"
    file_in(paths["broken vae"], "config.json", b"{not json")
    return paths


def model_argv(ckpt: Path) -> list[str]:
    return ["--model", "DiT-Tiny/2", "--vae", "none", "--image-size", "8", "--in-channels", "3", "--num-classes",
            "10", "--ckpt", str(ckpt), "--num-sampling-steps", "4", "--device", "cpu"]  # fmt: skip


def sample_argv(ckpt: Path, folder: Path) -> list[str]:
    return [*model_argv(ckpt), "--class-labels", "1", "--output", str(folder / "out" / "grid.png"), "--no-compare"]


def sample_ddp_argv(ckpt: Path, folder: Path) -> list[str]:
    return [*model_argv(ckpt), "--sample-dir", str(folder / "samples"), "--num-fid-samples", "2"]


SCRIPTS = {"sample": (sample, sample_argv), "sample_ddp": (sample_ddp, sample_ddp_argv)}


@pytest.fixture
def no_gpu(monkeypatch):
    """This machine as one without CUDA, wherever the tests run."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


def forbid_loading(monkeypatch, script) -> None:
    def load(*args, **kwargs):
        raise AssertionError("the weights were loaded before the bad input was refused")

    monkeypatch.setattr(script, "load_model_and_vae", load)


def run_case(script_name: str, case: Case, message: str, tmp_path: Path, capsys, extra_base=()) -> str:
    script, base = SCRIPTS[script_name]
    ckpt = tmp_path / "pixel.pt"
    if not ckpt.exists():
        torch.save(tiny_dit(input_size=8, in_channels=3).state_dict(), ckpt)
    argv = [*base(ckpt, tmp_path), *extra_base, *case(tmp_path)]
    return assert_refused(script.cli, argv, message, capsys, watch=tmp_path)


def cases(table: list) -> list:
    return [pytest.param(case, message, id=name) for name, case, message in table]


@pytest.mark.usefixtures("no_gpu")
@pytest.mark.parametrize("script_name", list(SCRIPTS))
@pytest.mark.parametrize(("case", "message"), cases(MODEL_FLAG_CASES))
def test_bad_model_flags_are_refused_before_loading(script_name, case, message, tmp_path, capsys, monkeypatch):
    forbid_loading(monkeypatch, SCRIPTS[script_name][0])
    run_case(script_name, case, message, tmp_path, capsys)


@pytest.mark.usefixtures("no_gpu")
@pytest.mark.parametrize(("case", "message"), cases(SAMPLE_CASES))
def test_bad_sample_flags_and_outputs_are_refused_before_loading(case, message, tmp_path, capsys, monkeypatch):
    if sys.platform != "linux" and "/proc" in message:
        pytest.skip("/proc is the folder that refuses files even to root, on Linux only")
    forbid_loading(monkeypatch, sample)
    run_case("sample", case, message, tmp_path, capsys)


@pytest.mark.usefixtures("no_gpu")
@pytest.mark.parametrize(("case", "message"), cases(SAMPLE_DDP_CASES))
def test_bad_sample_ddp_flags_and_outputs_are_refused_before_loading(case, message, tmp_path, capsys, monkeypatch):
    if sys.platform != "linux" and "/proc" in message:
        pytest.skip("/proc is the folder that refuses files even to root, on Linux only")
    forbid_loading(monkeypatch, sample_ddp)
    run_case("sample_ddp", case, message, tmp_path, capsys)


# File inputs: these are read, so they are refused once loading finds them wrong, still before any output.

FILE_CASES = [
    ("ckpt missing", lambda w: ["--ckpt", str(w["pixel"].with_name("missing.pt"))], "DiT-Tiny/2 checkpoint not found"),
    ("ckpt not a checkpoint", lambda w: ["--ckpt", str(w["junk"])], "Could not read checkpoint file"),
    ("ckpt other classes", lambda w: ["--ckpt", str(w["five"])], "Checkpoint does not fit the model"),
    ("ckpt other size", lambda w: ["--ckpt", str(w["latent"])], "Checkpoint does not fit the model"),
    ("ckpt empty folder", lambda w: ["--ckpt", str(w["empty folder"])], "is not a diffusers model folder"),
    (
        "vae-path missing",
        lambda w: [
            "--ckpt",
            str(w["latent"]),
            "--vae",
            "ema",
            "--image-size",
            "16",
            "--in-channels",
            "4",
            "--vae-path",
            str(w["vae"].with_name("missing")),
        ],  # fmt: skip
        "VAE stabilityai/sd-vae-ft-ema not found",
    ),
    (
        "vae-path broken",
        lambda w: [
            "--ckpt",
            str(w["latent"]),
            "--vae",
            "mse",
            "--image-size",
            "16",
            "--in-channels",
            "4",
            "--vae-path",
            str(w["broken vae"]),
        ],  # fmt: skip
        "Could not load the VAE from",
    ),
    (
        "vae for a pixel model",
        lambda w: ["--vae", "ema", "--image-size", "16", "--vae-path", str(w["vae"])],
        "Checkpoint does not fit the model",
    ),
]


@pytest.mark.parametrize("script_name", list(SCRIPTS))
@pytest.mark.parametrize(("case", "message"), cases(FILE_CASES))
def test_bad_checkpoints_and_vae_folders_are_refused(script_name, case, message, weights, tmp_path, capsys):
    script, base = SCRIPTS[script_name]
    argv = [*base(weights["pixel"], tmp_path), *case(weights)]
    assert_refused(script.cli, argv, message, capsys, watch=tmp_path)


def run_folder(weights: dict[str, Path], tmp_path: Path) -> Path:
    """The folder sample_ddp.py would sample into for the valid command."""
    parser = sample_ddp.build_parser()
    args = parser.parse_args(sample_ddp_argv(weights["pixel"], tmp_path))
    config = sample_ddp.check_args(args, parser)
    return tmp_path / "samples" / sample_ddp.folder_name(args, config, weights_id(args))


def test_an_npz_path_that_is_a_folder_is_refused_before_sampling(weights, tmp_path, capsys):
    folder = run_folder(weights, tmp_path)
    (folder.parent / f"{folder.name}.npz").mkdir(parents=True)
    argv = sample_ddp_argv(weights["pixel"], tmp_path)
    assert_refused(
        sample_ddp.cli, argv, ".npz is a folder, where this run writes its .npz file", capsys, watch=tmp_path
    )


@pytest.mark.parametrize(
    ("records", "message"),
    [
        ("{not json\n", "line 1: not a JSON record"),
        ('["000000.png"]\n', "line 1: expected a JSON object, got list"),
        (json.dumps({"file": "000000.png", "model": "DiT-XL/2"}) + "\n", "holds files made with other settings"),
    ],
)
def test_a_damaged_or_foreign_records_file_is_refused(records, message, weights, tmp_path, capsys):
    folder = run_folder(weights, tmp_path)
    folder.mkdir(parents=True)
    (folder / "metadata.jsonl").write_text(records)
    (folder / "000000.png").write_bytes(b"an image made by someone else")
    argv = sample_ddp_argv(weights["pixel"], tmp_path)
    assert_refused(sample_ddp.cli, argv, message, capsys, watch=tmp_path)


# ------------------------------------------------------------------------------------------------- coverage


class StandInWeights(dict):
    """The ``weights`` fixture's paths, not written: a file case only needs them to build its argv."""

    def __init__(self, folder: Path) -> None:
        super().__init__()
        self.folder = folder

    def __missing__(self, name: str) -> Path:
        return self.folder / name


def row_flags(tables: list[list], tmp_path: Path) -> set[str]:
    """The flags the rows pass, each row's case run in a folder of its own; the unknown-flag row names no flag of the
    script, so it is left out."""
    argvs = []
    for table in tables:
        for _name, case, message in table:
            if "unrecognized arguments" in message:
                continue
            folder = tmp_path / f"row{len(argvs)}"
            folder.mkdir()
            argvs.append(case(StandInWeights(folder) if table is FILE_CASES else folder))
    return {value.split("=")[0] for argv in argvs for value in argv if value.startswith("--")}


def parser_flags(parser) -> set[str]:
    """Every option of ``parser`` but --help and the --no-X halves of boolean flags."""
    options = {option for action in parser._actions for option in action.option_strings}
    return {option for option in options if option.startswith("--") and not option.startswith(("--no-", "--help"))}


def test_every_sample_flag_has_a_bad_input_row(tmp_path) -> None:
    tables = [MODEL_FLAG_CASES, SAMPLE_CASES, FILE_CASES]
    assert parser_flags(sample.build_parser()) == row_flags(tables, tmp_path)


def test_every_sample_ddp_flag_has_a_bad_input_row(tmp_path) -> None:
    tables = [MODEL_FLAG_CASES, SAMPLE_DDP_CASES, FILE_CASES]
    assert parser_flags(sample_ddp.build_parser()) == row_flags(tables, tmp_path)
