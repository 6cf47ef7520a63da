"""TaylorSeer-FLUX/sample.py end to end on a tiny checkpoint folder: PNGs and metadata, seeds, batching, resume
(after a kill, with damaged PNGs, with other weights, from records written before --method), torchrun, the other
caching methods (records, summaries, FLOPs counted per step or, for TeaCache, from a run), the paper's FLOPs figures,
and one readable message (exit code 2) for a non-finite output and bad output folders. The table of bad flags is
tests/test_flux_bad_input.py."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_testing import assert_refused, snapshot
from flux_testing import TINY_DEV, TINY_SCHNELL, save_tiny_flux_checkpoint, save_tiny_transformer
from PIL import Image
from safetensors.torch import load_file, save_file

from common.integrity import file_sha256
from common.run_records import read_records
from taylorseer_flux import sample
from taylorseer_flux.flops import plain_step_flops, teacache_flops, teacache_step_flops
from taylorseer_flux.model import FLUX_PRESETS
from taylorseer_flux.sample import METADATA, cli, upgrade_record
from taylorseer_flux.weights import find_flux_weights, flux_weights_id

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "TaylorSeer-FLUX" / "sample.py"
# One thread per process: torchrun's workers do anyway, and on a shared 2-core machine more threads only wait.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
PROMPTS = ["a red fox sitting in the snow", "", "a small robot reading a book", "   "]
SEED = 5


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """As torchrun's workers (OMP_NUM_THREADS=1), so that in-process and torchrun images round alike."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_tiny_flux_checkpoint(tmp_path_factory.mktemp("flux-dev"))


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    path.write_text("\n".join(PROMPTS) + "\n")
    return path


def argv(checkpoint: Path, output: Path, *extra: str) -> list[str]:
    """4 steps: with the default N=6 O=2 E=3, steps 0-2 are full and step 3 is forecast."""
    return ["--ckpt-dir", str(checkpoint), "--width", "48", "--height", "32", "--num-steps", "4",
            "--max-sequence-length", "16", "--device", "cpu", "--output-dir", str(output), *extra]  # fmt: skip


def read_pngs(folder: Path) -> dict[str, np.ndarray]:
    return {path.name: np.asarray(Image.open(path)) for path in sorted(folder.glob("*.png"))}


def last_json_line(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def first_run(checkpoint, prompt_file, tmp_path_factory) -> tuple[Path, dict, str]:
    """Two prompts x two images at batch size 1: (folder, summary, stdout)."""
    folder = tmp_path_factory.mktemp("run") / "out"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        summary = cli(argv(checkpoint, folder, "--prompt-file", str(prompt_file), "--num-images-per-prompt", "2",
                           "--seed", str(SEED)))  # fmt: skip
    return folder, summary, stdout.getvalue()


def test_run_writes_one_png_per_index_and_their_settings(first_run, checkpoint) -> None:
    folder, summary, stdout = first_run
    names = [f"{i:05d}.png" for i in range(4)]
    assert sorted(path.name for path in folder.iterdir()) == sorted([*names, METADATA, "overview"])  # no temp file
    images = read_pngs(folder)
    assert all(image.shape == (32, 48, 3) and image.dtype == np.uint8 for image in images.values())
    assert images["00000.png"].std() > 10  # a real image, not a constant
    assert not np.array_equal(images["00000.png"], images["00001.png"])  # same prompt, different seeds

    lines = [json.loads(line) for line in (folder / METADATA).read_text().splitlines()]
    # Per image: its settings before the PNG is written, then the same record with the written PNG's checksum.
    assert [r["index"] for r in lines] == [0, 0, 1, 1, 2, 2, 3, 3]
    for plan, done in zip(lines[::2], lines[1::2], strict=True):
        assert "sha256" not in plan and done == {**plan, "sha256": file_sha256(folder / plan["file"])}
    records = lines[::2]
    prompts = [p for p in PROMPTS if p.strip()]
    for k, record in enumerate(records):
        assert record["file"] == names[k] and record["seed"] == SEED + k
        assert (record["prompt_index"], record["image_in_prompt"], record["prompt"]) == (k // 2, k % 2, prompts[k // 2])
        assert (record["width"], record["height"], record["num_steps"], record["guidance"]) == (48, 32, 4, 3.5)
        assert record["method"] == {"method": "taylorseer", "interval": 6, "max_order": 2, "first_enhance": 3,
                                    "derivative_start_step": 2, "factor_dtype": None}  # fmt: skip
        assert (record["model_name"], record["dtype"], record["noise_device"]) == ("flux-dev", "float32", "cpu")
        assert re.fullmatch("[0-9a-f]{16}", record["weights_id"]) and record["weights_id"] == records[0]["weights_id"]
        assert record["weights"]["transformer"] == str(checkpoint / "transformer")

    assert (summary["written"], summary["skipped"], summary["full_steps"], summary["forecast_steps"]) == (4, 0, 3, 1)
    assert (summary["method"], summary["label"]) == ("taylorseer", "TaylorSeer N=6 O=2")
    assert "wall time per image:" in stdout and "TaylorSeer N=6 O=2: 3 full + 1 forecast steps of 4" in stdout
    assert last_json_line(stdout)["seconds_per_image"] > 0
    # The overview: the 4 images of 48x32 side by side (torchvision's 2-pixel padding), outside the paired PNGs.
    assert summary["overview"] == str(folder / "overview" / "grid.png")
    with Image.open(summary["overview"]) as grid:
        assert grid.size == (2 + 4 * (48 + 2), 2 + 32 + 2)
        first = np.asarray(grid)[2 : 2 + 32, 2 : 2 + 48]
    np.testing.assert_array_equal(first, read_pngs(folder)["00000.png"][..., :3])


def test_image_k_is_drawn_from_seed_plus_k(first_run, checkpoint, tmp_path) -> None:
    folder, _, _ = first_run
    # Index 3 = prompt 1, image 1: seed SEED + 3. Alone, as image 0 of a run seeded SEED + 3, it is the same image.
    cli(argv(checkpoint, tmp_path, "--prompt", "a small robot reading a book", "--seed", str(SEED + 3)))
    np.testing.assert_array_equal(read_pngs(tmp_path)["00000.png"], read_pngs(folder)["00003.png"])


def test_batch_size_does_not_change_the_images(first_run, checkpoint, prompt_file, tmp_path) -> None:
    folder, _, _ = first_run
    cli(argv(checkpoint, tmp_path, "--prompt-file", str(prompt_file), "--num-images-per-prompt", "2",
             "--seed", str(SEED), "--batch-size", "3"))  # fmt: skip
    one, batched = read_pngs(folder), read_pngs(tmp_path)
    assert sorted(one) == sorted(batched)
    for name in one:  # each image's own noise; only float rounding of batched matmuls may differ
        assert np.abs(one[name].astype(int) - batched[name]).max() <= 1, name


def test_rerun_generates_only_the_missing_pngs(first_run, checkpoint, prompt_file, tmp_path, capsys) -> None:
    original, _, _ = first_run
    folder = tmp_path / "out"
    shutil.copytree(original, folder)
    (folder / "00002.png").unlink()
    (folder / ".tmp-4242-0.tmp").write_bytes(b"half a PNG")  # what a killed run leaves behind
    before = {path.name: path.stat() for path in folder.glob("*.png")}

    summary = cli(argv(checkpoint, folder, "--prompt-file", str(prompt_file), "--num-images-per-prompt", "2",
                       "--seed", str(SEED)))  # fmt: skip
    assert (summary["written"], summary["skipped"], summary["files"]) == (1, 3, ["00002.png"])
    assert "skipped 3" in capsys.readouterr().out
    for name, stat in before.items():
        after = (folder / name).stat()
        assert (after.st_ino, after.st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns), f"{name} was rewritten"
    assert (folder / "00002.png").read_bytes() == (original / "00002.png").read_bytes()
    assert not list(folder.glob(".tmp-*"))
    # The made PNG's two lines are added: its settings (the last record held the deleted file's checksum), its checksum.
    assert len((folder / METADATA).read_text().splitlines()) == 10
    assert read_records(folder / METADATA) == read_records(original / METADATA)


def test_rerun_with_other_settings_is_refused(first_run, checkpoint, prompt_file, capsys) -> None:
    folder, _, _ = first_run
    with pytest.raises(SystemExit) as exit_info:
        cli(argv(checkpoint, folder, "--prompt-file", str(prompt_file), "--num-images-per-prompt", "2",
                 "--seed", str(SEED), "--interval", "2"))  # fmt: skip
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "other settings" in err and "taylorseer" in err and "00000.png" in err


def test_two_processes_write_the_images_of_one(first_run, checkpoint, prompt_file, tmp_path) -> None:
    folder, _, _ = first_run
    output = tmp_path / "two"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(SCRIPT)]
    arguments = argv(checkpoint, output, "--prompt-file", str(prompt_file), "--num-images-per-prompt", "2",
                     "--seed", str(SEED))  # fmt: skip
    result = subprocess.run([*command, *arguments], capture_output=True, text=True, env=ENV, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = last_json_line(result.stdout)
    assert (summary["written"], summary["world_size"]) == (4, 2)
    assert re.search(r"wrote 4 images to .* on 2 process", result.stdout)
    two, one = read_pngs(output), read_pngs(folder)
    assert sorted(two) == sorted(one)
    for name in one:
        np.testing.assert_array_equal(two[name], one[name], err_msg=name)
    # The processes append their lines in any order; the last record of every file is the same.
    assert read_records(output / METADATA) == read_records(folder / METADATA)


def test_schnell_defaults_and_components_from_environment_variables(checkpoint, tmp_path, monkeypatch) -> None:
    """flux-schnell: 4 steps, 256 T5 tokens, no guidance; the transformer from --ckpt-dir, the rest from AE,
    FLUX_T5 (a checkpoint folder with its subfolder pair) and FLUX_CLIP."""
    schnell = tmp_path / "schnell"
    save_tiny_transformer(schnell, TINY_SCHNELL)
    monkeypatch.setenv("AE", str(checkpoint / "ae.safetensors"))
    monkeypatch.setenv("FLUX_T5", str(checkpoint))
    monkeypatch.setenv("FLUX_CLIP", str(checkpoint))
    output = tmp_path / "out"
    summary = cli(["--model-name", "flux-schnell", "--ckpt-dir", str(schnell), "--width", "32", "--height", "32",
                   "--device", "cpu", "--output-dir", str(output), "--interval", "1"])  # fmt: skip
    record = read_records(output / METADATA)["00000.png"]
    assert (record["num_steps"], record["max_sequence_length"], record["guidance"]) == (4, 256, None)
    assert record["method"] is None and record["weights"]["autoencoder"].endswith("ae.safetensors")
    assert (summary["method"], summary["label"]) == ("full", "full compute")
    assert (summary["written"], summary["full_steps"], summary["forecast_steps"]) == (1, 4, 0)


def test_flops_reproduce_the_paper(capsys) -> None:
    """flux-dev at 1024x1024, 512 text tokens, 50 steps, TaylorSeer N=6 O=2 E=3 (the defaults): the paper's 4.99x;
    every step counted on the meta device, no weights needed."""
    cli(["--test-FLOPs", "--ckpt-dir", "/nonexistent"])
    out = capsys.readouterr().out
    report = last_json_line(out)
    assert report["speedup"] == pytest.approx(4.99, abs=0.01)
    assert (report["full_steps"], report["forecast_steps"]) == (10, 40)
    assert (report["method"], report["label"]) == ("taylorseer", "TaylorSeer N=6 O=2")
    assert (report["width"], report["height"], report["text_len"], report["num_steps"]) == (1024, 1024, 512, 50)
    assert report["full_step_tflops"] == pytest.approx(74.4, abs=0.1)  # reference-semantics §3.4
    assert report["full_tflops"] == pytest.approx(50 * report["full_step_tflops"])
    # Steps 0, 1, 2 (warm-up) and every 6th after are full; the others cost the embeddings and modulations only.
    full = [step < 3 or (step - 2) % 6 == 0 for step in range(50)]
    forecast = min(report["step_tflops"])
    assert forecast < 1e-3 * report["full_step_tflops"]
    assert report["step_tflops"] == [report["full_step_tflops"] if f else forecast for f in full]
    assert "TaylorSeer N=6 O=2 E=3;" in out and "10 x 74.3847 + 40 x 0.0227 TFLOPs" in out
    for label in ("full step:", "baseline:", "TaylorSeer N=6 O=2: 744.7531 TFLOPs (10 full + 40 forecast steps)",
                  "speedup:               4.994x"):  # fmt: skip
        assert label in out


def test_missing_weights_are_one_message_naming_every_component(tmp_path) -> None:
    output = tmp_path / "out"
    arguments = ["--ckpt-dir", str(tmp_path / "FLUX.1-dev"), "--output-dir", str(output), "--device", "cpu"]
    env = {k: v for k, v in ENV.items() if k not in ("FLUX_DEV", "AE", "FLUX_T5", "FLUX_CLIP")}
    result = subprocess.run([sys.executable, str(SCRIPT), *arguments], capture_output=True, text=True, env=env)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and result.stderr.count("error:") == 1
    assert "Traceback" not in result.stderr
    for expected in ("transformer/", "flux1-dev.safetensors", "FLUX_DEV", "vae/", "ae.safetensors", "AE",
                     "text_encoder/", "FLUX_CLIP", "text_encoder_2/", "FLUX_T5", "black-forest-labs/FLUX.1-dev",
                     "black-forest-labs/FLUX.1-schnell"):  # fmt: skip
        assert expected in result.stderr, expected
    assert not output.exists()  # nothing is written before the weights are found


def test_existing_png_without_a_record_is_a_conflict(first_run, checkpoint, tmp_path, capsys) -> None:
    """A PNG whose settings are unknown is not adopted as this run's: the run is refused, naming the file."""
    folder = tmp_path / "out"
    folder.mkdir()
    shutil.copy(first_run[0] / "00000.png", folder / "00000.png")
    with pytest.raises(SystemExit) as exit_info:
        cli(argv(checkpoint, folder, "--prompt", "a cat"))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1
    assert "00000.png: exists but has no record in metadata.jsonl" in err
    assert "Use another --output-dir, or delete those files to regenerate them." in err
    assert not (folder / METADATA).exists()  # nothing recorded for the refused run


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"index": 0, "file": "00000.png"\n', "metadata.jsonl, line 1: not a JSON record"),
        ('{"index": 0, "file": "00000.png", "prompt": "a", "seed": 0}\n{"file": "00001.png", "prompt": "a", '
         '"seed": 1}\n', "metadata.jsonl, line 2: record without 'index'; fix or delete that line"),
        ("[1, 2]\n", "metadata.jsonl, line 1: expected a JSON object, got list"),
    ],
)  # fmt: skip
def test_corrupt_metadata_is_one_error_line(content, message, checkpoint, tmp_path, capsys) -> None:
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / METADATA).write_text(content)
    with pytest.raises(SystemExit) as exit_info:
        cli(argv(checkpoint, folder, "--prompt", "a cat"))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("error:") == 1 and message in err
    assert sorted(p.name for p in folder.iterdir()) == [METADATA]


def test_output_dir_naming_a_file_is_one_error_line(checkpoint, tmp_path) -> None:
    (tmp_path / "out").write_text("not a folder")
    result = subprocess.run([sys.executable, str(SCRIPT), *argv(checkpoint, tmp_path / "out", "--prompt", "a cat")],
                            capture_output=True, text=True, env=ENV, cwd=tmp_path)  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    expected = f"--output-dir {tmp_path / 'out'} exists and is not a folder: choose another --output-dir"
    assert result.stderr == f"error: {expected}\n"


def test_output_dir_under_a_file_is_one_error_line(checkpoint, tmp_path, capsys) -> None:
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(SystemExit) as exit_info:
        cli(argv(checkpoint, tmp_path / "file" / "out", "--prompt", "a cat"))
    assert exit_info.value.code == 2
    expected = f"--output-dir {tmp_path / 'file' / 'out'} cannot be created: {tmp_path / 'file'} is a file"
    assert capsys.readouterr().err == f"error: {expected}; choose another --output-dir\n"


def first_run_argv(checkpoint: Path, folder: Path, prompt_file: Path, *extra: str) -> list[str]:
    """The command of ``first_run``, into ``folder``."""
    return argv(checkpoint, folder, "--prompt-file", str(prompt_file), "--num-images-per-prompt", "2",
                "--seed", str(SEED), *extra)  # fmt: skip


def file_bytes(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.mark.parametrize("killed", ["before writing a PNG", "after writing a PNG, before recording it"])
def test_killed_run_resumes_to_the_files_of_an_uninterrupted_run(
    killed, first_run, checkpoint, prompt_file, tmp_path, monkeypatch, capsys
) -> None:
    """Killed (KeyboardInterrupt) after 2 of 4 images, then rerun: every PNG, metadata.jsonl and the overview are
    byte for byte those of the uninterrupted run."""
    original, _, _ = first_run
    folder = tmp_path / "out"
    name = "save_png" if killed.startswith("before") else "record_written"
    real = getattr(sample, name)
    calls = []

    def killing(*args) -> None:
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(args)
        real(*args)

    with monkeypatch.context() as patch:
        patch.setattr(sample, name, killing)
        with pytest.raises(KeyboardInterrupt):
            cli(first_run_argv(checkpoint, folder, prompt_file))
    expected_pngs = ["00000.png", "00001.png"] + (["00002.png"] if name == "record_written" else [])
    assert sorted(path.name for path in folder.glob("*.png")) == expected_pngs
    summary = cli(first_run_argv(checkpoint, folder, prompt_file))
    assert (summary["written"], summary["skipped"]) == (4 - len(expected_pngs), len(expected_pngs))
    assert "warning" not in capsys.readouterr().err
    assert file_bytes(folder) == file_bytes(original)


@pytest.mark.parametrize("checksums", [True, False], ids=["recorded checksums", "no checksums yet"])
def test_damaged_pngs_are_set_aside_and_made_again(
    checksums, first_run, checkpoint, prompt_file, tmp_path, capsys
) -> None:
    """A truncated PNG, two swapped PNGs (with recorded checksums) or a PNG of another size (without) are renamed to
    .damaged with a warning and made again; the intact PNG is adopted untouched."""
    original, _, _ = first_run
    folder = tmp_path / "out"
    shutil.copytree(original, folder)
    if not checksums:  # as a run killed between writing each PNG and recording its checksum leaves it
        lines = (folder / METADATA).read_text().splitlines(keepends=True)
        (folder / METADATA).write_text("".join(line for line in lines if '"sha256"' not in line))
    truncated = (original / "00000.png").read_bytes()[:-100]
    (folder / "00000.png").write_bytes(truncated)
    if checksums:
        (folder / "00001.png").write_bytes((original / "00002.png").read_bytes())
        (folder / "00002.png").write_bytes((original / "00001.png").read_bytes())
        damaged = ["00000.png", "00001.png", "00002.png"]
    else:
        Image.new("RGB", (16, 16)).save(folder / "00001.png")
        damaged = ["00000.png", "00001.png"]
    intact = (folder / "00003.png").stat()

    summary = cli(first_run_argv(checkpoint, folder, prompt_file))
    assert (summary["written"], summary["skipped"], summary["files"]) == (len(damaged), 4 - len(damaged), damaged)
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == len(damaged)
    for line, name in zip(warnings, damaged, strict=True):
        assert line.startswith(f"warning: {folder / name} ")
        assert line.endswith(f"moved to {name}.damaged; it is made again")
    if checksums:
        assert "its content differs from what this folder's run wrote (truncated or replaced)" in warnings[0]
    else:
        assert "does not decode" in warnings[0] and "is 16x16, expected 48x32" in warnings[1]
    assert (folder / "00000.png.damaged").read_bytes() == truncated
    after = (folder / "00003.png").stat()
    assert (after.st_ino, after.st_mtime_ns) == (intact.st_ino, intact.st_mtime_ns)
    for name in ["00000.png", "00001.png", "00002.png", "00003.png"]:
        assert (folder / name).read_bytes() == (original / name).read_bytes(), name
    assert read_records(folder / METADATA) == read_records(original / METADATA)  # every PNG has its checksum again


def test_other_weights_are_refused_and_moved_weights_adopted(
    first_run, checkpoint, prompt_file, tmp_path, capsys
) -> None:
    original, _, _ = first_run
    folder = tmp_path / "out"
    shutil.copytree(original, folder)
    moved = tmp_path / "moved-checkpoint"
    shutil.copytree(checkpoint, moved)
    before = snapshot(folder)
    summary = cli(first_run_argv(moved, folder, prompt_file))
    assert (summary["written"], summary["skipped"]) == (0, 4)  # the same weights elsewhere: same images
    assert {k: v for k, v in snapshot(folder).items() if not k.startswith("overview")} == {
        k: v for k, v in before.items() if not k.startswith("overview")
    }
    save_tiny_transformer(moved, TINY_DEV, seed=1)  # fine-tuned: every tensor changed, same files and sizes
    old_id = read_records(folder / METADATA)["00000.png"]["weights_id"]
    new_id = flux_weights_id(find_flux_weights("flux-dev", moved))
    assert new_id != old_id
    # Only the weights differ: the conflict names weights_id alone, for every image.
    assert_refused(cli, first_run_argv(moved, folder, prompt_file), f"00003.png: weights_id {old_id!r} -> {new_id!r}\n",
                   capsys, watch=folder)  # fmt: skip


def nan_checkpoint(checkpoint: Path, folder: Path) -> Path:
    """A copy of ``checkpoint`` whose transformer's output projection is NaN, as a damaged download can be."""
    shutil.copytree(checkpoint, folder)
    for shard in (folder / "transformer").glob("*.safetensors"):
        tensors = load_file(str(shard))
        if "proj_out.weight" in tensors:
            tensors["proj_out.weight"] = torch.full_like(tensors["proj_out.weight"], float("nan"))
            save_file(tensors, str(shard))
            return folder
    raise AssertionError("no proj_out.weight in the tiny transformer")


def test_non_finite_output_saves_nothing_and_names_the_suspects(checkpoint, tmp_path, capsys) -> None:
    broken = nan_checkpoint(checkpoint, tmp_path / "nan-checkpoint")
    output = tmp_path / "out"
    line = assert_refused(cli, argv(broken, output, "--prompt", "a cat"), "non-finite values (NaN or inf)", capsys,
                          watch=tmp_path)  # fmt: skip
    assert line.startswith("error: The final latents of 00000.png holds")
    assert "nothing was saved from it. Check --guidance, --dtype" in line and "--ckpt-dir" in line
    assert not output.exists()


# ---------------------------------------------------------------------------------------------- other methods

TOCA = ("--method", "toca", "--interval", "2", "--first-enhance", "1")


@pytest.fixture(scope="module")
def toca_run(checkpoint, prompt_file, tmp_path_factory) -> tuple[Path, dict, str]:
    """The command of ``first_run`` with ToCa N=2 (full steps 0 and 2 of 4)."""
    folder = tmp_path_factory.mktemp("toca") / "out"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        summary = cli(first_run_argv(checkpoint, folder, prompt_file, *TOCA))
    return folder, summary, stdout.getvalue()


def test_a_method_is_recorded_and_named_and_another_is_refused(toca_run, first_run, checkpoint, prompt_file, capsys):
    folder, summary, stdout = toca_run
    record = read_records(folder / METADATA)["00003.png"]
    assert record["method"] == {"method": "toca", "interval": 2, "fresh_ratio": 0.1, "score": "norm",
                                "layer_schedule": True, "first_enhance": 1, "seed": 0}  # fmt: skip
    assert (summary["label"], summary["full_steps"], summary["forecast_steps"]) == ("ToCa N=2 R=0.1", 2, 2)
    assert "ToCa N=2 R=0.1: 2 full + 2 cached steps of 4" in stdout
    assert not np.array_equal(read_pngs(folder)["00000.png"], read_pngs(first_run[0])["00000.png"])
    # DuCa shares ToCa's settings; its records differ in the method's name, so its images never mix with ToCa's.
    before = snapshot(folder)
    with pytest.raises(SystemExit) as exit_info:
        cli(first_run_argv(checkpoint, folder, prompt_file, *TOCA[2:], "--method", "duca"))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("error:") == 1 and "other settings" in err
    assert "00000.png: method {'method': 'toca'," in err and "-> {'method': 'duca'," in err
    assert snapshot(folder) == before


def test_killed_method_run_resumes_to_the_files_of_an_uninterrupted_run(
    toca_run, checkpoint, prompt_file, tmp_path, monkeypatch
) -> None:
    original, _, _ = toca_run
    folder = tmp_path / "out"
    real, calls = sample.save_png, []

    def killing(*args) -> None:
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(args)
        real(*args)

    with monkeypatch.context() as patch:
        patch.setattr(sample, "save_png", killing)
        with pytest.raises(KeyboardInterrupt):
            cli(first_run_argv(checkpoint, folder, prompt_file, *TOCA))
    summary = cli(first_run_argv(checkpoint, folder, prompt_file, *TOCA))
    assert (summary["written"], summary["skipped"]) == (2, 2)
    assert file_bytes(folder) == file_bytes(original)


def test_records_written_before_methods_existed_resume(first_run, checkpoint, prompt_file, tmp_path) -> None:
    """A TaylorSeer folder whose records hold the old ``taylorseer`` key is adopted as it is: nothing made again,
    no file changed."""
    folder = tmp_path / "out"
    shutil.copytree(first_run[0], folder)
    old_lines = []
    for line in (folder / METADATA).read_text().splitlines():
        record = json.loads(line)
        taylorseer = {k: v for k, v in record.pop("method").items() if k != "method"}
        old_lines.append(json.dumps({**record, "taylorseer": {**taylorseer, "factor_dtype": "auto"}}))
    (folder / METADATA).write_text("\n".join(old_lines) + "\n")
    before = file_bytes(folder)
    summary = cli(first_run_argv(checkpoint, folder, prompt_file))
    assert (summary["written"], summary["skipped"]) == (0, 4)
    assert {k: v for k, v in file_bytes(folder).items() if not k.startswith("overview")} == {
        k: v for k, v in before.items() if not k.startswith("overview")
    }


def test_old_records_become_todays() -> None:
    plain = {"index": 0, "file": "00000.png", "taylorseer": None}
    assert upgrade_record(plain) == {"index": 0, "file": "00000.png", "method": None}
    settings = {"interval": 6, "max_order": 2, "first_enhance": 3, "derivative_start_step": 2}
    old = {"file": "a.png", "taylorseer": {**settings, "factor_dtype": "float32"}}
    expected = {"method": "taylorseer", **settings, "factor_dtype": "float32"}
    assert upgrade_record(old) == {"file": "a.png", "method": expected}
    assert upgrade_record({"file": "a.png", "method": None}) == {"file": "a.png", "method": None}


def test_teacache_run_counts_its_flops_from_the_steps_it_computed(checkpoint, tmp_path, capsys) -> None:
    """A threshold no change reaches: every batch computes its first and last step and skips the two between."""
    teacache = (
        "--method",
        "teacache",
        "--teacache-thresh",
        "1000",
        "--prompt",
        "a cat",
        "--num-images-per-prompt",
        "2",
    )
    summary = cli(argv(checkpoint, tmp_path / "out", *teacache))
    out = capsys.readouterr().out
    assert (summary["label"], summary["full_steps"], summary["forecast_steps"]) == ("TeaCache l=1000", 2, 2)
    step_flops = teacache_step_flops(TINY_DEV, 48, 32, 16)
    full = plain_step_flops(TINY_DEV, 48, 32, 16)
    assert summary["tflops"] * 1e12 == pytest.approx(teacache_flops(2, 2, step_flops), rel=1e-12)
    assert summary["full_tflops"] * 1e12 == pytest.approx(4 * full, rel=1e-12)
    assert step_flops[0] > full > step_flops[1] > 0
    assert "TeaCache l=1000: 2 computed + 2 skipped steps of 4 per image" in out
    record = read_records(tmp_path / "out" / METADATA)["00001.png"]
    assert record["method"]["method"] == "teacache" and record["method"]["threshold"] == 1000
    assert record["method"]["coefficients"] == pytest.approx([4.98651651e02, -2.83781631e02, 5.58554382e01,
                                                              -3.82021401e00, 2.64230861e-01])  # fmt: skip


# A shallow flux-dev (2 double + 4 single blocks) at 256x256 with 64 text tokens: the published model's block sizes,
# counted in seconds. L = 256 image + 64 text tokens, D = 3072, MLP 12288.
SHALLOW = replace(FLUX_PRESETS["flux-dev"], depth=2, depth_single_blocks=4)
FLOPS_ARGV = ["--test-FLOPs", "--width", "256", "--height", "256", "--max-sequence-length", "64", "--num-steps", "7"]
L, D, M = 320, 3072, 12288
SINGLE_BLOCK = 2 * L * D * (3 * D + M) + 2 * (2 * L * L * D) + 2 * L * (D + M) * D + 2 * D * 3 * D


def test_delta_dit_flops_are_counted_per_step(monkeypatch, capsys) -> None:
    """The default Δ-DiT range is the transformer's single-stream stack: a cached step costs a full step less its
    four single blocks (modulations included); full steps 0, 3, 6 (N=3, E=1)."""
    monkeypatch.setitem(FLUX_PRESETS, "flux-dev", SHALLOW)
    cli([*FLOPS_ARGV, "--method", "delta-dit", "--interval", "3", "--first-enhance", "1"])
    out = capsys.readouterr().out
    report = last_json_line(out)
    full = report["full_step_tflops"] * 1e12
    cached = full - 4 * SINGLE_BLOCK
    assert [t * 1e12 for t in report["step_tflops"]] == [full, cached, cached, full, cached, cached, full]
    assert (report["label"], report["full_steps"], report["forecast_steps"]) == ("Δ-DiT N=3 k=4", 3, 4)
    assert report["speedup"] == pytest.approx(7 * full / (3 * full + 4 * cached), rel=1e-12)
    assert "Δ-DiT N=3 k=4 E=1;" in out and "(3 full + 4 cached steps)" in out


def test_teacache_flops_are_left_to_the_run(monkeypatch, capsys) -> None:
    monkeypatch.setitem(FLUX_PRESETS, "flux-dev", SHALLOW)
    cli([*FLOPS_ARGV, "--method", "teacache"])
    out = capsys.readouterr().out
    report = last_json_line(out)
    assert (report["tflops"], report["speedup"], report["label"]) == (None, None, "TeaCache l=0.4")
    signal = 2 * D * 6 * D  # block 0's image modulation
    assert report["computed_step_tflops"] * 1e12 == report["full_step_tflops"] * 1e12 + signal
    assert "its FLOPs depend on the run" in out


def test_full_compute_flops(monkeypatch, capsys) -> None:
    monkeypatch.setitem(FLUX_PRESETS, "flux-dev", SHALLOW)
    cli([*FLOPS_ARGV, "--method", "full"])
    report = last_json_line(capsys.readouterr().out)
    assert (report["label"], report["speedup"], report["full_steps"]) == ("full compute", 1.0, 7)
