"""TaylorSeer-DiT/sample_ddp.py: multi-process FID sampling whose images depend neither on K nor on interruptions."""

import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_testing import assert_refused
from dit_testing import tiny_dit
from PIL import Image

from common.cli import UsageError
from common.integrity import weights_fingerprint
from common.run_records import read_records, record_written
from common.taylor_cache import TaylorCache, TaylorSeerConfig
from taylorseer_dit import sample_ddp
from taylorseer_dit.defaults import BUNDLED_WEIGHTS
from taylorseer_dit.diffusion import create_diffusion
from taylorseer_dit.models import DiT
from taylorseer_dit.pipeline import sample_dit
from taylorseer_dit.sample_ddp import (
    build_parser,
    check_args,
    cli,
    folder_name,
    main,
    pack_npz,
    sample_inputs,
    save_png_atomic,
    say,
    to_hwc_uint8,
)
from taylorseer_dit.sampling_args import weights_id

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "TaylorSeer-DiT" / "sample_ddp.py"
# Every process runs one thread: torchrun's workers do anyway, and on a shared 2-core machine more threads only wait.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
# 10 samples in global batches of 3: batches 0 and 2 (6 images) on rank 0, 1 and 3 (4 images, the last partial) on 1.
SMALL_RUN = ["--num-fid-samples", "10", "--per-proc-batch-size", "3"]


def calm_dit(gate_scale: float = 4.0) -> DiT:
    """A tiny DiT that predicts eps ~= x_t plus what its random blocks add, so that its 4-step samples stay in [-1, 1].

    A random DiT's samples reach +-100, i.e. PNGs that are black and white only, which would hide any difference.
    The patch embedding copies each patch into hidden channels 0..11 (and its negation into 12..23, so the token mean
    stays 0) next to a large constant channel that fixes the token's norm, so LayerNorm is a known scaling that the
    final linear undoes. ``gate_scale`` sets how much the blocks (and thus TaylorSeer's forecasts) change the images.
    """
    model = tiny_dit(input_size=8, in_channels=3)
    hidden, patch, channels = model.pos_embed.shape[-1], model.patch_size, model.in_channels
    size, big = channels * patch * patch, 1000.0
    with torch.no_grad():
        model.pos_embed.zero_()
        conv = model.x_embedder.proj
        conv.weight.zero_()
        conv.bias.zero_()
        identity = torch.eye(size).reshape(size, channels, patch, patch)
        conv.weight[:size], conv.weight[size : 2 * size] = identity, -identity
        conv.bias[2 * size], conv.bias[2 * size + 1] = big, -big
        for block in model.blocks:
            modulation = block.adaLN_modulation[-1]
            for gate in (2, 5):  # gate_msa and gate_mlp of the six chunks
                modulation.weight[gate * hidden : (gate + 1) * hidden] *= gate_scale
                modulation.bias[gate * hidden : (gate + 1) * hidden] *= gate_scale
        final = model.final_layer
        for param in (*final.adaLN_modulation.parameters(), *final.linear.parameters()):
            param.zero_()
        token_std = big / math.sqrt(hidden / 2)
        for i in range(patch):
            for j in range(patch):
                for c in range(channels):
                    # Output order (i, j, c) of unpatchify (eps channels first); conv order (c, i, j).
                    final.linear.weight[(i * patch + j) * 2 * channels + c, (c * patch + i) * patch + j] = token_std
    return model


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "calm.pt"
    torch.save(calm_dit().state_dict(), path)
    return path


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def argv(ckpt: Path, sample_dir: Path, *extra: str) -> list[str]:
    return ["--model", "DiT-Tiny/2", "--vae", "none", "--image-size", "8", "--in-channels", "3",
            "--num-classes", "10", "--num-sampling-steps", "4", "--ckpt", str(ckpt), "--sample-dir", str(sample_dir),
            "--device", "cpu", *extra]  # fmt: skip


def run_in_process(arguments: list[str]) -> dict:
    parser = build_parser()
    args = parser.parse_args(arguments)
    return main(args, check_args(args, parser))


def run_torchrun(arguments: list[str], cwd: Path) -> str:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(SCRIPT)]
    result = subprocess.run([*command, *arguments], capture_output=True, text=True, env=ENV, cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def read_pngs(folder: Path) -> dict[str, np.ndarray]:
    return {path.name: np.asarray(Image.open(path)) for path in sorted(folder.glob("*.png"))}


def sampled_pngs(arguments: list[str]) -> dict[str, np.ndarray]:
    return read_pngs(Path(run_in_process(arguments)["folder"]))


def names(count: int) -> list[str]:
    return [f"{i:06d}.png" for i in range(count)]


def only_folder(sample_dir: Path) -> Path:
    (folder,) = [path for path in sample_dir.iterdir() if path.is_dir()]
    return folder


def assert_same_images(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert sorted(a) == sorted(b)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


@pytest.mark.parametrize("sampler", ["--ddim-sample", "--no-ddim-sample"])
def test_two_processes_write_each_image_once_and_match_one_process(checkpoint, tmp_path, sampler):
    run = [*SMALL_RUN, sampler, "--interval", "2"]
    run_torchrun(argv(checkpoint, tmp_path / "two", *run), cwd=tmp_path)
    # What each rank did is read from the run's summary file: the ranks' stdout lines may come in any order.
    folder = only_folder(tmp_path / "two")
    record = json.loads((folder.parent / f"{folder.name}.json").read_text())
    assert [rank["samples_written"] for rank in record["ranks"]] == [6, 4]
    assert [rank["batches_sampled"] for rank in record["ranks"]] == [2, 2]
    assert sorted(path.name for path in folder.iterdir()) == [*names(10), "metadata.jsonl"]  # no temporary file
    two = read_pngs(folder)

    npz = np.load(folder.parent / f"{folder.name}.npz")
    assert list(npz) == ["arr_0"]
    assert npz["arr_0"].dtype == np.uint8 and npz["arr_0"].shape == (10, 8, 8, 3)
    np.testing.assert_array_equal(npz["arr_0"], np.stack([two[name] for name in names(10)]))
    counts = {key: record[key] for key in ("num_samples", "world_size", "samples_written", "full_steps")}
    assert counts == {"num_samples": 10, "world_size": 2, "samples_written": 10, "full_steps": 3}
    assert record["forecast_steps"] == 1
    # Both ranks recorded every PNG they wrote with its checksum, in whole lines.
    records = read_records(folder / "metadata.jsonl")
    assert sorted(records) == names(10) and all("sha256" in r for r in records.values())

    one = run_in_process(argv(checkpoint, tmp_path / "one", *run))
    assert Path(one["folder"]).name == folder.name
    assert_same_images(read_pngs(Path(one["folder"])), two)
    images = npz["arr_0"].astype(float)
    assert 0.9 < ((images > 0) & (images < 255)).mean() and images.std() > 20  # real images, not saturated


class WriteLog(io.StringIO):
    """A stdout that remembers each write call."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def write(self, text: str) -> int:
        self.calls.append(text)
        return super().write(text)


def test_status_lines_are_written_in_one_call(monkeypatch):
    """print() writes a line's text and its newline in two calls; between them another rank's line can land."""
    log = WriteLog()
    monkeypatch.setattr(sys, "stdout", log)
    say("rank 1/2: sampled 2 batches")
    assert log.calls == ["rank 1/2: sampled 2 batches\n"]


def test_images_do_not_depend_on_the_batch_size(checkpoint, tmp_path):
    """Each sample's noise is its own (DDPM steps included), so only float rounding of batched matmuls may differ."""
    run = ["--num-fid-samples", "6", "--no-ddim-sample", "--interval", "2"]
    alone = sampled_pngs(argv(checkpoint, tmp_path / "a", *run, "--per-proc-batch-size", "1"))
    batched = sampled_pngs(argv(checkpoint, tmp_path / "b", *run, "--per-proc-batch-size", "4"))
    assert sorted(alone) == sorted(batched) == names(6)
    for name in alone:
        assert np.abs(alone[name].astype(int) - batched[name]).max() <= 1


def test_rerun_samples_only_the_batches_with_missing_pngs(checkpoint, tmp_path):
    run = argv(checkpoint, tmp_path, *SMALL_RUN, "--no-ddim-sample", "--interval", "2")
    first = run_in_process(run)
    folder, npz = Path(first["folder"]), Path(first["npz"])
    before = {path.name: path.stat() for path in folder.glob("*.png")}
    images, packed = read_pngs(folder), np.load(npz)["arr_0"]
    deleted = ["000001.png", "000007.png"]  # from global batches 0 and 2
    for name in deleted:
        (folder / name).unlink()
    npz.unlink()

    second = run_in_process(run)
    assert (second["batches_sampled"], second["batches_skipped"], second["samples_written"]) == (2, 2, 2)
    assert_same_images(read_pngs(folder), images)
    for name, stat in before.items():
        if name not in deleted:
            after = (folder / name).stat()
            assert (after.st_ino, after.st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns), f"{name} was rewritten"
    np.testing.assert_array_equal(np.load(npz)["arr_0"], packed)


class Killed(KeyboardInterrupt):
    """What Ctrl-C or a scheduler's SIGINT raises in the middle of the run."""


def kill_after(monkeypatch, recorded: int) -> None:
    """Interrupt the run when it is about to record its ``recorded + 1``-th PNG: that PNG is on disk, unrecorded."""
    real = sample_ddp.record_written
    calls = iter(range(recorded + 1))

    def record_or_die(*args, **kwargs) -> None:
        if next(calls) == recorded:
            raise Killed
        real(*args, **kwargs)

    monkeypatch.setattr(sample_ddp, "record_written", record_or_die)


def test_killed_run_resumes_to_the_bytes_of_an_uninterrupted_run(checkpoint, tmp_path, monkeypatch):
    run = ["--num-fid-samples", "12", "--per-proc-batch-size", "2", "--no-ddim-sample", "--interval", "2"]
    reference = run_in_process(argv(checkpoint, tmp_path / "reference", *run))

    killed = argv(checkpoint, tmp_path / "killed", *run)
    with monkeypatch.context() as patch:
        kill_after(patch, recorded=5)  # 000005.png is written but its checksum is not recorded
        with pytest.raises(Killed):
            run_in_process(killed)
    folder = tmp_path / "killed" / Path(reference["folder"]).name
    assert sorted(path.name for path in folder.glob("*.png")) == names(6)
    assert not (tmp_path / "killed" / f"{folder.name}.npz").exists()
    (folder / ".tmp-12345-0.tmp").write_bytes(b"half a PNG")  # what a kill during a write leaves behind

    summary = run_in_process(killed)
    assert summary["samples_written"] == 12 - 6
    assert sorted(path.name for path in folder.iterdir()) == [*names(12), "metadata.jsonl"]
    assert all("sha256" in record for record in read_records(folder / "metadata.jsonl").values())
    assert Path(summary["npz"]).read_bytes() == Path(reference["npz"]).read_bytes()


def test_damaged_pngs_are_set_aside_and_sampled_again(checkpoint, tmp_path, capsys):
    run = argv(checkpoint, tmp_path, *SMALL_RUN, "--no-ddim-sample", "--interval", "2")
    first = run_in_process(run)
    folder, npz = Path(first["folder"]), Path(first["npz"])
    pngs, packed = {p.name: p.read_bytes() for p in folder.glob("*.png")}, npz.read_bytes()
    (folder / "000002.png").write_bytes(pngs["000002.png"][:40])  # truncated by a crash or a full disk
    (folder / "000004.png").write_bytes(pngs["000005.png"])  # swapped: decodes fine, at the right size
    capsys.readouterr()

    second = run_in_process(run)
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 2 and all("; it is made again" in line for line in warnings)
    assert second["samples_written"] == 2
    assert (folder / "000002.png.damaged").read_bytes() == pngs["000002.png"][:40]
    assert (folder / "000004.png.damaged").read_bytes() == pngs["000005.png"]
    assert {p.name: p.read_bytes() for p in folder.glob("*.png")} == pngs
    assert npz.read_bytes() == packed


def test_pngs_without_a_checksum_are_decoded_before_they_are_adopted(checkpoint, tmp_path):
    """A run killed between writing PNGs and recording them: the PNGs are checked by decoding them at their size."""
    run = argv(checkpoint, tmp_path, *SMALL_RUN, "--no-ddim-sample", "--interval", "2")
    first = run_in_process(run)
    folder, npz = Path(first["folder"]), Path(first["npz"])
    pngs, packed = {p.name: p.read_bytes() for p in folder.glob("*.png")}, npz.read_bytes()
    records = folder / "metadata.jsonl"
    planned_only = [line for line in records.read_text().splitlines() if '"sha256"' not in line]
    records.write_text("\n".join(planned_only) + "\n")
    (folder / "000003.png").write_bytes(pngs["000003.png"][:-30])  # truncated: no IEND chunk
    Image.new("RGB", (16, 16)).save(folder / "000008.png")  # a sound PNG of the wrong size

    second = run_in_process(run)
    assert second["samples_written"] == 2
    assert sorted(p.name for p in folder.glob("*.damaged")) == ["000003.png.damaged", "000008.png.damaged"]
    assert {p.name: p.read_bytes() for p in folder.glob("*.png")} == pngs
    assert all("sha256" in record for record in read_records(records).values())
    assert npz.read_bytes() == packed


def test_checkpoints_of_one_name_sample_into_their_own_folders(tmp_path):
    """Every train.py checkpoint is called last.pt: the weights fingerprint keeps their images apart."""
    checkpoints = []
    for name, gate_scale in (("a", 4.0), ("b", 2.0)):
        path = tmp_path / name / "last.pt"
        path.parent.mkdir()
        torch.save(calm_dit(gate_scale).state_dict(), path)
        checkpoints.append(path)
    run = ["--num-fid-samples", "2", "--no-ddim-sample", "--interval", "2"]
    a, b = (run_in_process(argv(ckpt, tmp_path / "samples", *run)) for ckpt in checkpoints)
    assert a["folder"] != b["folder"]
    for summary, ckpt in ((a, checkpoints[0]), (b, checkpoints[1])):
        assert f"-last-{weights_fingerprint([ckpt])[:8]}-" in Path(summary["folder"]).name
        assert summary["samples_written"] == 2 and summary["weights_id"] == weights_fingerprint([ckpt])
    assert not np.array_equal(np.load(a["npz"])["arr_0"], np.load(b["npz"])["arr_0"])


def test_a_folder_recorded_with_other_weights_is_refused(checkpoint, tmp_path, capsys):
    run = argv(checkpoint, tmp_path, "--num-fid-samples", "3", "--no-ddim-sample", "--interval", "2")
    folder = Path(run_in_process(run)["folder"])
    records = folder / "metadata.jsonl"
    weights = read_records(records)["000000.png"]["weights_id"]
    records.write_text(records.read_text().replace(weights, "0" * 16))
    line = assert_refused(cli, run, f"weights_id '{'0' * 16}' -> '{weights}'", capsys, watch=tmp_path)
    assert "holds files made with other settings" in line


def test_nan_samples_end_the_run_before_any_png_is_written(tmp_path, capsys):
    model = calm_dit()
    with torch.no_grad():
        model.final_layer.linear.bias.fill_(float("nan"))
    ckpt = tmp_path / "nan.pt"
    torch.save(model.state_dict(), ckpt)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        cli(argv(ckpt, tmp_path / "out", "--num-fid-samples", "3", "--no-ddim-sample", "--interval", "2"))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    (line,) = [line for line in err.splitlines() if "error:" in line]
    assert (
        "non-finite values (NaN or inf)" in line and "Check --cfg-scale, --num-sampling-steps, the checkpoint" in line
    )
    assert list((tmp_path / "out").rglob("*.png")) == [] and list((tmp_path / "out").glob("*.npz")) == []


def test_cfg_scale_one_samples_each_index_from_its_own_seed(checkpoint, tmp_path):
    summary = run_in_process(argv(checkpoint, tmp_path, "--cfg-scale", "1.0", "--num-fid-samples", "3",
                                  "--no-ddim-sample", "--interval", "2"))  # fmt: skip
    assert "-cfg-1.0-" in Path(summary["folder"]).name
    images = read_pngs(Path(summary["folder"]))

    # Sample i: a CPU generator seeded with SeedSequence([global_seed, i]) draws the label, the noise, the DDPM noise.
    seed = int(np.random.SeedSequence([0, 2]).generate_state(1)[0])
    labels, noise, generators = sample_inputs(range(3), 0, 10, (3, 8, 8))
    generator = torch.Generator().manual_seed(seed)
    assert labels[2] == int(torch.randint(10, (1,), generator=generator))
    torch.testing.assert_close(noise[2], torch.randn(3, 8, 8, generator=generator), rtol=0, atol=0)

    model = calm_dit()
    cache = TaylorCache(TaylorSeerConfig(interval=2, max_order=4, first_enhance=2))
    result = sample_dit(model, create_diffusion("4"), labels, cfg_scale=1.0, cache=cache, ddim=False, noise=noise,
                        generator=generators)  # fmt: skip
    assert_same_images(images, dict(zip(names(3), to_hwc_uint8(result.samples), strict=True)))


def write_recorded_pngs(folder: Path, images: np.ndarray) -> None:
    folder.mkdir()
    for index, image in enumerate(images):
        path = folder / f"{index:06d}.png"
        save_png_atomic(image, path)
        record_written(folder / "metadata.jsonl", {"file": path.name}, path)


def test_grayscale_images_are_packed_as_rgb(tmp_path):
    folder = tmp_path / "run"
    images = to_hwc_uint8(torch.linspace(-1.2, 1.2, 2 * 16).reshape(2, 1, 4, 4))
    assert images[0, 0, 0, 0] == 0 and images[1, -1, -1, 0] == 255  # clamped, as upstream
    write_recorded_pngs(folder, images)
    assert Image.open(folder / "000000.png").mode == "L"
    assert pack_npz(folder, 2, tmp_path / "run.npz", 4) == (2, 4, 4, 3)
    packed = np.load(tmp_path / "run.npz")["arr_0"]
    np.testing.assert_array_equal(packed, np.repeat(images, 3, axis=-1))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda path: path.unlink(), "000001.png is missing"),
        (lambda path: path.write_bytes(path.read_bytes()[:20]), "000001.png was changed"),
    ],
)
def test_only_pngs_that_match_their_checksum_are_packed(tmp_path, damage, message):
    folder = tmp_path / "run"
    write_recorded_pngs(folder, to_hwc_uint8(torch.zeros(2, 3, 4, 4)))
    damage(folder / "000001.png")
    with pytest.raises(UsageError, match=message):
        pack_npz(folder, 2, tmp_path / "run.npz", 4)
    assert not (tmp_path / "run.npz").exists()


def test_defaults_follow_the_model_and_name_the_folder(tmp_path):
    parser = build_parser()
    weights = "0123456789abcdef"
    args = parser.parse_args([])
    config = check_args(args, parser)
    assert (
        folder_name(args, config, weights)
        == "DiT-XS-4-bundled-01234567-size-16-vae-none-cfg-1.5-seed-0-ddim50-N4-O4-E2"
    )
    # The bundled model's fingerprint is its bundled weights file's.
    assert weights_id(args) == weights_fingerprint([BUNDLED_WEIGHTS])
    args = parser.parse_args(["--model", "DiT-XL/2", "--ckpt", str(tmp_path / "mine.pt"), "--interval", "5"])
    assert (
        folder_name(args, check_args(args, parser), weights)
        == "DiT-XL-2-mine-01234567-size-256-vae-mse-cfg-1.5-seed-0-ddpm250-N5-O4-E2"
    )
    # Runs that differ only in --derivative-start-step make other images: other folders.
    args = parser.parse_args(["--derivative-start-step", "2"])
    assert folder_name(args, check_args(args, parser), weights).endswith("-ddim50-N4-O4-E2-D2")
    args = parser.parse_args(["--derivative-start-step", "1", "--factor-dtype", "float32"])
    assert folder_name(args, check_args(args, parser), weights).endswith("-E2-D1-Ffloat32")


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--cfg-scale", "0.5"], "--cfg-scale: expected a finite number >= 1 and <= 100, got 0.5"),
        (["--cfg-scale", "nan"], "--cfg-scale: expected a finite number >= 1 and <= 100, got 'nan'"),
        (["--num-fid-samples", "0"], "--num-fid-samples: expected an integer in 1..1000000, got 0"),
        (["--per-proc-batch-size", "0"], "--per-proc-batch-size: expected an integer in 1..4096, got 0"),
        (["--global-seed", "-1"], "--global-seed: expected an integer in 0..9223372036854775807, got -1"),
        (["--global-seed", str(2**63)], "--global-seed: expected an integer in 0..9223372036854775807"),
        (["--interval", "0"], "interval must be >= 1"),
        (["--num-sampling-steps", "0"], "--num-sampling-steps: expected an integer in 1..1000, got 0"),
        (["--derivative-start-step", "46"], "use a --derivative-start-step <= 45"),
        (["--in-channels", "4"], "--in-channels must be 1 or 3"),
        (["--image-size", "18"], "must be a positive multiple of 4"),
        (["--model", "DiT-XL/2", "--image-size", "100"], "multiple of 16 up to 1024 for DiT-XL/2 with a VAE"),
        (["--vae", "kl"], "invalid choice"),
    ],
)
def test_invalid_flags_exit_with_the_reason(arguments, message, capsys):
    parser = build_parser()
    with pytest.raises(SystemExit) as exit_info:
        check_args(parser.parse_args(arguments), parser)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_missing_checkpoint_is_one_readable_message(tmp_path):
    arguments = argv(tmp_path / "missing.pt", tmp_path / "out")
    result = subprocess.run([sys.executable, str(SCRIPT), *arguments], capture_output=True, text=True, env=ENV)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and "missing.pt" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()  # nothing is written before the weights are found
