"""Every flag and file input of TaylorSeer-DiT/evaluate.py and benchmark_quality.py, given bad values: exit code 2,
one ``error:`` line that names the fix, and nothing written (tests/cli_testing.assert_refused).

Each case is the extra argv appended to a valid command (argparse keeps the last value of a repeated flag), built by a
function of the test folder that first creates whatever obstacle the case needs: a truncated PNG, a cut ``.npz``, a
file where a folder should be. The benchmark's cases that need no weights run with the model loader replaced by a
failure: they must be refused before any loading. The coverage tests at the end fail when a flag is added to either
script without a row here.
"""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_testing import assert_refused
from PIL import Image

from taylorseer_dit import benchmark_quality, evaluate
from taylorseer_dit.digits import CLASSIFIER_PATH
from taylorseer_dit.fidelity import digits_uint8

pytestmark = pytest.mark.usefixtures("one_thread")

Case = Callable[[Path], list[str]]


def flags(*argv: str) -> Case:
    return lambda folder: list(argv)


def cases(table: list) -> list:
    return [pytest.param(case, message, id=name) for name, case, message in table]


@pytest.fixture
def no_gpu(monkeypatch):
    """This machine as one without CUDA, wherever the tests run."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


# --- inputs of evaluate.py -------------------------------------------------------------------------------------------


def png_folder(folder: Path, count: int = 6, size: int = 16) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(digits_uint8()[:count]):
        picture = Image.fromarray(image[0].numpy())
        (picture if size == 16 else picture.resize((size, size))).save(folder / f"{i:06d}.png")
    return folder


def npz_bytes(array: np.ndarray, save=np.savez) -> bytes:
    buffer = io.BytesIO()
    save(buffer, array)
    return buffer.getvalue()


def truncated_png(folder: Path) -> list[str]:
    samples = png_folder(folder / "cut")
    data = (samples / "000003.png").read_bytes()
    (samples / "000003.png").write_bytes(data[: len(data) // 2])  # the header survives: found only when decoded
    return ["--samples", str(samples)]


def truncated_npz(folder: Path) -> list[str]:
    data = npz_bytes(digits_uint8()[:6].permute(0, 2, 3, 1).numpy())
    (folder / "cut.npz").write_bytes(data[: len(data) - 40])  # a kill before the zip directory was written
    return ["--samples", str(folder / "cut.npz")]


def damaged_npz_member(folder: Path) -> list[str]:
    data = bytearray(npz_bytes(digits_uint8()[:6].permute(0, 2, 3, 1).numpy()))
    data[200] ^= 0xFF  # inside arr_0's data: the zip directory is intact, the CRC is not
    (folder / "flipped.npz").write_bytes(bytes(data))
    return ["--samples", str(folder / "flipped.npz")]


def write_file(name: str, content: bytes, flag: str = "--samples") -> Case:
    def make(folder: Path) -> list[str]:
        (folder / name).write_bytes(content)
        return [flag, str(folder / name)]

    return make


def npz_file(name: str, **arrays: np.ndarray) -> Case:
    def make(folder: Path) -> list[str]:
        np.savez(folder / name, **arrays)
        return ["--samples", str(folder / name)]

    return make


def samples_folder(**kwargs) -> Case:
    def make(folder: Path) -> list[str]:
        return ["--samples", str(png_folder(folder / "other", **kwargs))]

    return make


def mixed_sizes(folder: Path) -> list[str]:
    samples = png_folder(folder / "mixed")
    Image.new("L", (20, 20)).save(samples / "big.png")
    return ["--samples", str(samples)]


def header_only(folder: Path) -> list[str]:
    samples = png_folder(folder / "broken")
    (samples / "000001.png").write_bytes(b"not a png")
    return ["--samples", str(samples)]


def empty_folder(folder: Path) -> list[str]:
    (folder / "empty").mkdir()
    return ["--samples", str(folder / "empty")]


def damaged_reference(folder: Path) -> list[str]:
    reference = png_folder(folder / "real")
    data = (reference / "000002.png").read_bytes()
    (reference / "000002.png").write_bytes(data[:-30])
    return ["--reference", str(reference)]


def file_at(name: str, flag: str, value: str | None = None) -> Case:
    """A file where ``flag`` needs a folder (``value`` is the path given, relative to the test folder)."""

    def make(folder: Path) -> list[str]:
        (folder / name).write_text("a file")
        return [flag, str(folder / (value or name))]

    return make


def folder_at(name: str, flag: str, value: str | None = None) -> Case:
    """A folder where ``flag`` (or a file beside it) needs a file."""

    def make(folder: Path) -> list[str]:
        (folder / name).mkdir(parents=True)
        return [flag, str(folder / (value or name))]

    return make


class PlantedPayload:
    """Unpickling it creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def hostile_inception_weights(folder: Path) -> list[str]:
    torch.save(PlantedPayload(folder / "code-ran"), folder / "inception.pth")
    return ["--feature-extractor", "inception", "--inception-weights", str(folder / "inception.pth")]


def wrong_inception_weights(folder: Path) -> list[str]:
    torch.save({"fc.weight": torch.zeros(10, 128)}, folder / "inception.pth")
    return ["--feature-extractor", "inception", "--inception-weights", str(folder / "inception.pth")]


def cache_entry_is_a_folder(folder: Path) -> list[str]:
    """The cache file's name (found by an honest run elsewhere) taken by a folder in the cache given."""
    scratch = folder.parent / f"{folder.name}-scratch"
    evaluate.main(evaluate.build_parser().parse_args([*evaluate_base(scratch), "--cache-dir", str(scratch / "c")]))
    (entry,) = (scratch / "c").iterdir()
    (folder / "cache" / entry.name).mkdir(parents=True)
    return ["--cache-dir", str(folder / "cache")]


def evaluate_base(folder: Path) -> list[str]:
    samples = folder / "samples"
    if not samples.exists():
        png_folder(samples)
    return ["--samples", str(samples), "--reference", "digits", "--feature-extractor", "digits", "--metrics", "fid",
            "--device", "cpu"]  # fmt: skip


REGENERATE = ": re-generate it (rerun the sampling command"
EVALUATE_CASES = [
    # --samples and --reference: every kind of source, missing, damaged or of the wrong kind.
    ("samples missing", flags("--samples", "nowhere"), "samples not found: "),
    ("samples empty folder", empty_folder, "no PNG/JPG/JPEG images in folder"),
    (
        "samples truncated png",
        truncated_png,
        ("samples: damaged image file {}/cut/000003.png (does not decode", REGENERATE),
    ),
    (
        "samples not a png",
        header_only,
        ("samples: damaged image file {}/broken/000001.png (cannot identify image", REGENERATE),
    ),
    ("samples two sizes", mixed_sizes, "images of two sizes in {}/mixed: 000000.png is 16x16, big.png is 20x20"),
    ("samples one image", samples_folder(count=1), "samples: need at least 2 images, got 1"),
    (
        "samples truncated npz",
        truncated_npz,
        ("{}/cut.npz could not be read as an .npz file (File is not a zip file): ", REGENERATE),
    ),
    ("samples damaged npz", damaged_npz_member, ("{}/flipped.npz: 'arr_0' is damaged (", REGENERATE)),
    ("samples npz no arr_0", npz_file("other.npz", images=np.zeros((4, 16, 16, 3), np.uint8)), "no 'arr_0' array"),
    ("samples npz float", npz_file("float.npz", arr_0=np.zeros((4, 16, 16, 3), np.float32)), "must be uint8 images"),
    ("samples npz shape", npz_file("flat.npz", arr_0=np.zeros((4, 16), np.uint8)), "must be uint8 images (N, H, W"),
    (
        "samples npy as npz",
        write_file("one.npz", npz_bytes(np.zeros((4, 16, 16, 1), np.uint8), np.save)),
        "one.npz holds a single .npy array, not an .npz archive with 'arr_0'",
    ),
    ("samples text file", write_file("notes.txt", b"hello"), "is neither a folder of images nor an .npz file"),
    ("reference damaged", damaged_reference, ("reference: damaged image file {}/real/000002.png", REGENERATE)),
    ("reference missing", flags("--reference", "nowhere"), "reference not found: "),
    ("reference needed", flags("--metrics", "fid", "--reference"), "argument --reference: expected one argument"),
    # --metrics, --feature-extractor and the Inception weights.
    ("metrics unknown", flags("--metrics", "lpips"), "argument --metrics: invalid choice: 'lpips'"),
    ("metrics none", flags("--metrics"), "argument --metrics: expected at least one argument"),
    ("extractor unknown", flags("--feature-extractor", "clip"), "argument --feature-extractor: invalid choice"),
    (
        "inception missing",
        flags("--feature-extractor", "inception", "--inception-weights", "none.pth"),
        "Inception weights not found.",
    ),
    ("inception wrong", wrong_inception_weights, "Not torch-fidelity's InceptionV3 weights"),
    ("inception hostile", hostile_inception_weights, "inception.pth"),
    # Sizes.
    ("batch-size zero", flags("--batch-size", "0"), "argument --batch-size: expected an integer >= 1, got 0"),
    ("batch-size text", flags("--batch-size", "many"), "argument --batch-size: expected an integer >= 1, got 'many'"),
    ("kid-subset one", flags("--kid-subset-size", "1"), "argument --kid-subset-size: expected an integer >= 2, got 1"),
    (
        "kid-subset large",
        flags("--metrics", "kid", "--kid-subset-size", "7"),
        "KID subset size must be in [2, 6] (the smaller set), got 7",
    ),
    # --device.
    (
        "device cuda",
        flags("--device", "cuda"),
        "--device cuda: no CUDA GPU is visible on this machine; use --device cpu",
    ),
    ("device unknown", flags("--device", "tpu0"), "--device 'tpu0' is not a torch device: use cpu, cuda or cuda:N"),
    ("device meta", flags("--device", "meta"), "--device meta: unsupported device type 'meta'; use cpu or cuda"),
    # --cache-dir and --output.
    ("cache-dir is a file", file_at("cache", "--cache-dir"), "--cache-dir {}/cache exists and is not a folder"),
    ("cache-dir under a file", file_at("cache", "--cache-dir", "cache/sub"), "{}/cache is a file; choose another"),
    ("cache-dir unwritable", flags("--cache-dir", "/proc/features"), "--cache-dir /proc/features cannot be written"),
    ("cache entry a folder", cache_entry_is_a_folder, "is a folder: move it away or choose another --cache-dir"),
    ("output suffix", flags("--output", "metrics.txt"), "--output metrics.txt must end in .json"),
    ("output is a folder", folder_at("m.json", "--output"), "--output {}/m.json is a folder: give a file name"),
    ("output under a file", file_at("m", "--output", "m/x.json"), "{}/m is a file; choose another --output"),
    ("output unwritable", flags("--output", "/proc/m.json"), "/proc/m.json cannot be written"),
    ("output table a folder", folder_at("m.md", "--output", "m.json"), "{}/m.md (the table beside --output) is a"),
]


@pytest.mark.usefixtures("no_gpu")
@pytest.mark.parametrize(("case", "message"), cases(EVALUATE_CASES))
def test_evaluate_refuses_bad_input_and_writes_nothing(case, message, tmp_path, capsys):
    if sys.platform != "linux" and "/proc" in message:
        pytest.skip("/proc is the folder that refuses files even to root, on Linux only")
    argv = [*evaluate_base(tmp_path), *case(tmp_path)]
    first, *more = (message,) if isinstance(message, str) else message
    line = assert_refused(evaluate.cli, argv, first.format(tmp_path), capsys, watch=tmp_path)
    assert all(fragment in line for fragment in more), line
    assert not (tmp_path / "code-ran").exists()


def test_reference_is_required_for_fid_and_no_reference_is_read_for_isc_alone(tmp_path, capsys):
    samples = png_folder(tmp_path / "samples")
    assert_refused(evaluate.cli, ["--samples", str(samples), "--feature-extractor", "digits", "--metrics", "fid",
                                  "kid"], "--metrics fid kid compares with real images: give --reference",
                   capsys, watch=tmp_path)  # fmt: skip
    # isc alone: a --reference given anyway is not read (even a missing one), and the run says so.
    record = evaluate.cli(["--samples", str(samples), "--reference", "nowhere", "--feature-extractor", "digits",
                           "--metrics", "isc", "--device", "cpu"])  # fmt: skip
    assert record["reference"] is None and {"isc_mean", "isc_std"} <= set(record)
    assert "warning: --reference is not used" in capsys.readouterr().err


def test_damaged_files_are_all_named_in_one_line(tmp_path, capsys):
    samples = png_folder(tmp_path / "samples", count=8)
    for i in (1, 4, 5, 7):
        path = samples / f"{i:06d}.png"
        path.write_bytes(path.read_bytes()[:-30])
    argv = ["--samples", str(samples), "--reference", "digits", "--feature-extractor", "digits", "--device", "cpu",
            "--metrics", "fid"]  # fmt: skip
    line = assert_refused(evaluate.cli, argv, "samples: damaged image files ", capsys, watch=tmp_path)
    assert all(f"{i:06d}.png" in line for i in (1, 4, 5)) and "and 1 more: re-generate them" in line
    # Deleting them, as the message says, is enough.
    for i in (1, 4, 5, 7):
        (samples / f"{i:06d}.png").unlink()
    assert evaluate.cli(argv)["num_samples"] == 4


def test_cache_dir_without_a_digits_input_says_nothing_is_cached(tmp_path, capsys):
    samples = png_folder(tmp_path / "samples")
    reference = png_folder(tmp_path / "reference", count=8)
    evaluate.cli(["--samples", str(samples), "--reference", str(reference), "--feature-extractor", "digits",
                  "--metrics", "fid", "--device", "cpu", "--cache-dir", str(tmp_path / "cache")])  # fmt: skip
    assert "warning: --cache-dir keeps the features of a 'digits' input only" in capsys.readouterr().err
    assert not (tmp_path / "cache").exists()


# --- benchmark_quality.py --------------------------------------------------------------------------------------------


def benchmark_base(folder: Path) -> list[str]:
    return ["--intervals", "3", "--orders", "0", "--num-samples", "4", "--spread-seeds", "2",
            "--num-sampling-steps", "4", "--batch-size", "4", "--results-dir", str(folder / "out"), "--device",
            "cpu"]  # fmt: skip


def cells_log(*lines: str) -> Case:
    def make(folder: Path) -> list[str]:
        (folder / "out").mkdir()
        (folder / "out" / "cells.jsonl").write_text("".join(f"{line}\n" for line in lines))
        return []

    return make


def incomplete_cell(folder: Path) -> list[str]:
    """A cell of this very run's settings without its FID."""
    args = benchmark_quality.build_parser().parse_args(benchmark_base(folder))
    weights = benchmark_quality.find_dit_checkpoint("DiT-XS/4", 16, None)
    settings = benchmark_quality.cell_settings(args, benchmark_quality.weights_fingerprint([weights]))
    cell = {"key": "full-seed0", "seed": 0, "seconds": 1.0, "agreement": 0.5, "settings": settings}
    return cells_log(json.dumps(cell))(folder)


def results_file_is_a_folder(name: str) -> Case:
    def make(folder: Path) -> list[str]:
        (folder / "out" / name).mkdir(parents=True)
        return []

    return make


BENCHMARK_CASES = [
    ("intervals zero", flags("--intervals", "0"), "--intervals: expected an integer >= 2, got 0 (N=1 is full compute"),
    ("intervals one", flags("--intervals", "2", "1"), "expected an integer >= 2, got 1 (N=1 is full compute, the"),
    ("intervals text", flags("--intervals", "x"), "--intervals: expected an integer >= 2, got 'x'"),
    ("intervals twice", flags("--intervals", "3", "4", "3"), "--intervals lists 3 more than once: give each value"),
    ("orders negative", flags("--orders", "-1"), "argument --orders: expected an integer >= 0, got -1"),
    ("orders twice", flags("--orders", "1", "1"), "--orders lists 1 more than once"),
    ("first-enhance zero", flags("--first-enhance", "0"), "--first-enhance: expected an integer >= 1, got 0"),
    ("first-enhance all", flags("--first-enhance", "4"), "every cell would be full compute: use --first-enhance < 4"),
    ("num-samples one", flags("--num-samples", "1"), "--num-samples: expected an integer >= 2, got 1 (FID needs at"),
    ("num-samples zero", flags("--num-samples", "0"), "--num-samples: expected an integer >= 2, got 0"),
    ("spread-seeds zero", flags("--spread-seeds", "0"), "--spread-seeds: expected an integer >= 2, got 0 (a seed-to"),
    ("spread-seeds one", flags("--spread-seeds", "1"), "expected an integer >= 2, got 1 (a seed-to-seed spread needs"),
    ("steps zero", flags("--num-sampling-steps", "0"), "--num-sampling-steps: expected an integer in 1..1000, got 0"),
    ("steps huge", flags("--num-sampling-steps", "1001"), "got 1001 (DDIM respaces the 1000 training steps)"),
    ("cfg-scale nan", flags("--cfg-scale", "nan"), "--cfg-scale: expected a finite number >= 1 and <= 100, got 'nan'"),
    ("cfg-scale inf", flags("--cfg-scale", "inf"), "--cfg-scale: expected a finite number >= 1 and <= 100, got 'inf'"),
    ("cfg-scale low", flags("--cfg-scale", "0.5"), "--cfg-scale: expected a finite number >= 1 and <= 100, got 0.5"),
    ("batch-size zero", flags("--batch-size", "0"), "argument --batch-size: expected an integer >= 1, got 0"),
    ("device cuda", flags("--device", "cuda"), "--device cuda: no CUDA GPU is visible on this machine; use --device"),
    ("device unknown", flags("--device", "gpu"), "--device 'gpu' is not a torch device: use cpu, cuda or cuda:N"),
    ("results-dir a file", file_at("res", "--results-dir"), "--results-dir {}/res exists and is not a folder"),
    ("results-dir under a file", file_at("res", "--results-dir", "res/b"), "{}/res is a file; choose another"),
    ("results-dir unwritable", flags("--results-dir", "/proc/bench"), "--results-dir /proc/bench cannot be written"),
    ("results.json a folder", results_file_is_a_folder("results.json"),
     "{}/out/results.json is a folder where the benchmark writes its summary: move it away or choose another"),
    ("cells.jsonl a folder", results_file_is_a_folder("cells.jsonl"), "{}/out/cells.jsonl is a folder where the"),
    ("plot a folder", results_file_is_a_folder("quality_vs_speedup.png"), "writes its plot: move it away"),
    ("cells corrupt line", cells_log('{"key": "N3-O0"', "{}"), "cells.jsonl, line 1: not a JSON cell"),
    ("cells without key", cells_log("[1, 2]", "{}"), "cells.jsonl, line 1: expected a cell with a 'key'; delete that"),
    ("cells incomplete", incomplete_cell, "line 1: cell full-seed0 has no finite number 'fid' (got None); delete"),
]  # fmt: skip


def forbid_loading(monkeypatch) -> None:
    def load(*args, **kwargs):
        raise AssertionError("the weights were loaded before the bad input was refused")

    monkeypatch.setattr(benchmark_quality, "load_dit", load)


@pytest.mark.usefixtures("no_gpu")
@pytest.mark.parametrize(("case", "message"), cases(BENCHMARK_CASES))
def test_benchmark_refuses_bad_input_before_loading_and_writes_nothing(case, message, tmp_path, capsys, monkeypatch):
    if sys.platform != "linux" and "/proc" in message:
        pytest.skip("/proc is the folder that refuses files even to root, on Linux only")
    forbid_loading(monkeypatch)
    argv = [*benchmark_base(tmp_path), *case(tmp_path)]
    assert_refused(benchmark_quality.cli, argv, message.format(tmp_path), capsys, watch=tmp_path)


def text_weights(folder: Path) -> list[str]:
    (folder / "notes.pt").write_text("not weights")
    return ["--ckpt", str(folder / "notes.pt")]


BENCHMARK_WEIGHTS_CASES = [
    ("ckpt missing", flags("--ckpt", "none.pt"), "DiT-XS/4 checkpoint not found."),
    ("ckpt not weights", text_weights, "notes.pt"),
    (
        "ckpt other model",
        flags("--ckpt", str(CLASSIFIER_PATH)),
        "Check that --model (size and patch) and --image-size match",
    ),
    ("ckpt empty folder", folder_at("ckpt", "--ckpt"), "ckpt"),
]


@pytest.mark.parametrize(("case", "message"), cases(BENCHMARK_WEIGHTS_CASES))
def test_benchmark_refuses_bad_weights_and_writes_nothing(case, message, tmp_path, capsys):
    argv = [*benchmark_base(tmp_path), *case(tmp_path)]
    assert_refused(benchmark_quality.cli, argv, message, capsys, watch=tmp_path)


# --- coverage --------------------------------------------------------------------------------------------------------


def row_flags(tables: list[list], tmp_path: Path) -> set[str]:
    """The flags the rows pass, each row's case run in a folder of its own."""
    argvs = []
    for table in tables:
        for _name, case, _message in table:
            folder = tmp_path / f"row{len(argvs)}"
            folder.mkdir()
            argvs.append(case(folder))
    return {value.split("=")[0] for argv in argvs for value in argv if value.startswith("--")}


def parser_flags(parser) -> set[str]:
    """Every option of ``parser`` but --help and the --no-X halves of boolean flags."""
    options = {option for action in parser._actions for option in action.option_strings}
    return {option for option in options if option.startswith("--") and not option.startswith(("--no-", "--help"))}


def test_every_evaluate_flag_has_a_bad_input_row(tmp_path) -> None:
    assert parser_flags(evaluate.build_parser()) == row_flags([EVALUATE_CASES], tmp_path)


def test_every_benchmark_flag_has_a_bad_input_row(tmp_path) -> None:
    tables = [BENCHMARK_CASES, BENCHMARK_WEIGHTS_CASES]
    assert parser_flags(benchmark_quality.build_parser()) == row_flags(tables, tmp_path)
