"""TaylorSeer-FLUX/sample.py end to end on a tiny checkpoint folder: PNGs and metadata, seeds, batching, resume,
torchrun, the paper's FLOPs figures, and one readable message (exit code 2) for every bad input."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from flux_testing import TINY_SCHNELL, save_tiny_flux_checkpoint, save_tiny_transformer
from PIL import Image

from taylorseer_flux.sample import METADATA, cli

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


def test_run_writes_one_png_per_index_and_their_settings(first_run) -> None:
    folder, summary, stdout = first_run
    names = [f"{i:05d}.png" for i in range(4)]
    assert sorted(path.name for path in folder.iterdir()) == sorted([*names, METADATA, "overview"])  # no temp file
    images = read_pngs(folder)
    assert all(image.shape == (32, 48, 3) and image.dtype == np.uint8 for image in images.values())
    assert images["00000.png"].std() > 10  # a real image, not a constant
    assert not np.array_equal(images["00000.png"], images["00001.png"])  # same prompt, different seeds

    records = [json.loads(line) for line in (folder / METADATA).read_text().splitlines()]
    assert [r["index"] for r in records] == [0, 1, 2, 3]
    prompts = [p for p in PROMPTS if p.strip()]
    for k, record in enumerate(records):
        assert record["file"] == names[k] and record["seed"] == SEED + k
        assert (record["prompt_index"], record["image_in_prompt"], record["prompt"]) == (k // 2, k % 2, prompts[k // 2])
        assert (record["width"], record["height"], record["num_steps"], record["guidance"]) == (48, 32, 4, 3.5)
        assert record["taylorseer"] == {"interval": 6, "max_order": 2, "first_enhance": 3, "derivative_start_step": 2,
                                        "factor_dtype": "auto"}  # fmt: skip
        assert (record["model_name"], record["dtype"], record["noise_device"]) == ("flux-dev", "float32", "cpu")

    assert (summary["written"], summary["skipped"], summary["full_steps"], summary["forecast_steps"]) == (4, 0, 3, 1)
    assert "wall time per image:" in stdout and "3 full + 1 forecast steps" in stdout
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
    np.testing.assert_array_equal(read_pngs(folder)["00002.png"], read_pngs(original)["00002.png"])
    assert not list(folder.glob(".tmp-*"))
    assert len((folder / METADATA).read_text().splitlines()) == 4


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
    assert (output / METADATA).read_text() == (folder / METADATA).read_text()


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
    record = json.loads((output / METADATA).read_text())
    assert (record["num_steps"], record["max_sequence_length"], record["guidance"]) == (4, 256, None)
    assert record["taylorseer"] is None and record["weights"]["autoencoder"].endswith("ae.safetensors")
    assert (summary["written"], summary["full_steps"], summary["forecast_steps"]) == (1, 4, 0)


@pytest.mark.parametrize(("interval", "speedup", "full_steps"), [(6, 4.99, 10), (5, 4.16, 12), (4, 3.57, 14)])
def test_flops_reproduce_the_paper(interval, speedup, full_steps, capsys) -> None:
    """flux-dev at 1024x1024, 512 text tokens, 50 steps (the defaults); no weights needed."""
    cli(["--test-FLOPs", "--interval", str(interval), "--ckpt-dir", "/nonexistent"])
    out = capsys.readouterr().out
    report = last_json_line(out)
    assert report["speedup"] == pytest.approx(speedup, abs=0.01)
    assert (report["full_steps"], report["forecast_steps"]) == (full_steps, 50 - full_steps)
    assert (report["width"], report["height"], report["text_len"], report["num_steps"]) == (1024, 1024, 512, 50)
    assert report["full_step_tflops"] == pytest.approx(74.4, abs=0.1)  # reference-semantics §3.4
    assert report["full_tflops"] == pytest.approx(50 * report["full_step_tflops"])
    for label in ("full step:", "forecast step:", "baseline:", "TaylorSeer:", "speedup:"):
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


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ["--width", "40"],
            "--width 40 is not a positive multiple of 16 (8x autoencoder, 2x2 patches): use --width 32 or 48",
        ),  # noqa: E501
        (["--height", "0"], "--height 0 is not a positive multiple of 16"),
        (["--prompt-file", "{tmp}/missing.txt"], "missing.txt does not exist"),
        (["--prompt-file", "{tmp}/empty.txt"], "empty.txt holds no prompts"),
        (["--prompt", "  "], "--prompt is empty"),
        (["--interval", "0"], "invalid TaylorSeer setting: interval must be >= 1"),
        (["--max-order", "-1"], "invalid TaylorSeer setting: max_order must be >= 0"),
        (["--num-steps", "0"], "--num-steps must be >= 1"),
        (["--batch-size", "0"], "--batch-size must be >= 1"),
        (["--max-sequence-length", "600"], "--max-sequence-length must be <= 512"),
        (["--model-name", "flux-pro"], "invalid choice: 'flux-pro'"),
        (["--prompt", "a cat", "--prompt-file", "{tmp}/empty.txt"], "not allowed with argument"),
        (["--test-FLOPs", "--width", "4096"], "--width 4096 is outside 256..2048 pixels"),
        (["--model-name", "flux-schnell"], "--model-name flux-schnell does not match the transformer"),
    ],
)
def test_bad_input_is_one_clear_message_and_exit_code_2(extra, message, checkpoint, tmp_path, capsys) -> None:
    (tmp_path / "empty.txt").write_text("\n   \n\n")
    extra = [value.format(tmp=tmp_path) for value in extra]
    with pytest.raises(SystemExit) as exit_info:
        cli(argv(checkpoint, tmp_path / "out", *extra))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("error:") == 1
    assert not (tmp_path / "out").exists()


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


def test_non_utf8_prompt_file_is_one_error_line(checkpoint, tmp_path, capsys) -> None:
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    with pytest.raises(SystemExit) as exit_info:
        cli(argv(checkpoint, tmp_path / "out", "--prompt-file", str(tmp_path / "latin1.txt")))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1
    assert f"--prompt-file {tmp_path / 'latin1.txt'} is not UTF-8 text (invalid continuation byte at byte 3)" in err
    assert not (tmp_path / "out").exists()


def test_float16_is_not_offered(checkpoint, tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli(argv(checkpoint, tmp_path / "out", "--dtype", "float16"))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "argument --dtype: invalid choice: 'float16' (choose from 'auto', 'bfloat16', 'float32')" in err
