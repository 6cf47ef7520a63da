"""TaylorSeer-DiT/sample.py end to end: FLOPs figures of the paper, sampling from checkpoints, readable errors."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_testing import assert_refused
from dit_testing import tiny_dit, tiny_vae
from PIL import Image

from common.images import save_grid
from common.integrity import weights_fingerprint
from common.taylor_cache import TaylorCache, TaylorSeerConfig
from taylorseer_dit import sample as sample_script
from taylorseer_dit.checkpoints import load_dit
from taylorseer_dit.defaults import BUNDLED_WEIGHTS
from taylorseer_dit.diffusion import create_diffusion
from taylorseer_dit.pipeline import SamplingResult, decode_latents, sample_dit
from taylorseer_dit.sample import Method, build_parser, check_args, cli, main, noise_warnings, time_methods

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "TaylorSeer-DiT" / "sample.py"
PAPER_FLOPS = ["--model", "DiT-XL/2", "--image-size", "256", "--ddim-sample", "--num-sampling-steps", "50",
               "--cfg-scale", "1.5", "--test-FLOPs"]  # fmt: skip


def run_main(argv: list[str]) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    return main(args, check_args(args, parser))


def last_json_line(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


@pytest.mark.parametrize(
    ("interval", "speedup", "full_steps"),
    # The paper's DiT-XL/2 figures (2.77x, 3.57x, 4.53x) under the reference count; N=6 from reference-semantics §2.4.
    [(3, 2.77, 18), (4, 3.56, 14), (5, 4.53, 11), (6, 4.98, 10)],
)
def test_flops_reproduce_the_paper(interval, speedup, full_steps, capsys):
    run_main([*PAPER_FLOPS, "--interval", str(interval), "--max-order", "3"])
    report = last_json_line(capsys.readouterr().out)
    assert report["speedup"] == pytest.approx(speedup, abs=0.005)
    assert (report["full_steps"], report["forecast_steps"]) == (full_steps, 50 - full_steps)
    assert report["convention"] == "reference"
    # 8 labels x CFG 2 = batch 16; the reference's 0.4747 TFLOPs per full step is for batch 2.
    assert report["full_step_tflops"] == pytest.approx(8 * 0.4747, rel=1e-4)
    assert report["full_tflops"] == pytest.approx(50 * report["full_step_tflops"])


def test_flops_cli_prints_both_conventions_and_ends_with_json():
    result = subprocess.run(
        [sys.executable, str(SCRIPT), *PAPER_FLOPS, "--interval", "5", "--class-labels", "1"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    report = last_json_line(result.stdout)
    assert report["speedup"] == pytest.approx(4.53, abs=0.005)
    assert report["matmul_speedup"] == pytest.approx(4.51, abs=0.005)
    assert report["full_tflops"] == pytest.approx(50 * 0.4747, rel=1e-4)  # the paper's 23.74 TFLOPs baseline
    assert "reference" in result.stdout and "matmul" in result.stdout


@pytest.fixture
def pixel_checkpoint(tmp_path) -> Path:
    """A tiny pixel-space RGB DiT saved in the original checkpoint format (a plain state dict)."""
    path = tmp_path / "tiny.pt"
    torch.save(tiny_dit(input_size=16, in_channels=3).state_dict(), path)
    return path


def pixel_argv(ckpt: Path, output: Path, *extra: str) -> list[str]:
    return ["--model", "DiT-Tiny/2", "--vae", "none", "--image-size", "16", "--in-channels", "3",
            "--num-classes", "10", "--ckpt", str(ckpt), "--ddim-sample", "--num-sampling-steps", "10",
            "--class-labels", "1", "2", "3", "--output", str(output), "--device", "cpu", "--no-compare",
            *extra]  # fmt: skip


def test_sampling_from_an_original_format_checkpoint(pixel_checkpoint, tmp_path):
    output = tmp_path / "out" / "grid.png"
    summary = run_main(pixel_argv(pixel_checkpoint, output, "--interval", "3", "--max-order", "2", "--seed", "4"))
    (method,) = summary["methods"]
    assert (method["full_steps"], method["forecast_steps"]) == (4, 6)  # full steps 0, 1, 4, 7

    (raw_path,) = summary["raw"]
    raw = np.load(raw_path)
    assert raw.shape == (3, 3, 16, 16)
    model = load_dit("DiT-Tiny/2", pixel_checkpoint, image_size=16, latent_scale=1, in_channels=3, num_classes=10)
    cache = TaylorCache(TaylorSeerConfig(interval=3, max_order=2, first_enhance=2))
    expected = sample_dit(model, create_diffusion("10"), [1, 2, 3], cfg_scale=1.5, cache=cache, seed=4).samples
    np.testing.assert_array_equal(raw, expected.numpy())
    # One row of three 16 px images with torchvision's 2 px padding.
    assert Image.open(output).size == (3 * 18 + 2, 18 + 2)


def test_compare_mode_samples_full_fora_and_taylorseer_on_the_same_seeds(pixel_checkpoint, tmp_path):
    output = tmp_path / "compare.png"
    argv = [
        a for a in pixel_argv(pixel_checkpoint, output, "--interval", "3", "--max-order", "2") if a != "--no-compare"
    ]
    summary = run_main(argv)
    names = [m["method"] for m in summary["methods"]]
    assert names == ["full compute", "FORA N=3", "TaylorSeer N=3 O=2"]
    full, fora, taylor = summary["methods"]
    assert (full["full_steps"], fora["full_steps"], taylor["full_steps"]) == (10, 4, 4)
    assert full["rel_l2_vs_full"] == 0.0 and full["flops_speedup"] == 1.0
    assert fora["flops_speedup"] == taylor["flops_speedup"] > 2.0  # 10 steps / 4 full, less the forecast cost
    arrays = {Path(p).stem: np.load(p) for p in summary["raw"]}
    assert set(arrays) == {"compare-full", "compare-fora", "compare-taylorseer"}
    model = load_dit("DiT-Tiny/2", pixel_checkpoint, image_size=16, latent_scale=1, in_channels=3, num_classes=10)
    plain = sample_dit(model, create_diffusion("10"), [1, 2, 3], cfg_scale=1.5, seed=0).samples.numpy()
    np.testing.assert_array_equal(arrays["compare-full"], plain)
    for name, entry in (("compare-fora", fora), ("compare-taylorseer", taylor)):
        error = np.linalg.norm(arrays[name] - plain) / np.linalg.norm(plain)
        assert entry["rel_l2_vs_full"] == pytest.approx(error, rel=1e-5) and error > 0
    rows = Image.open(output)
    assert rows.height == 3 * (64 + 4)  # three rows of 16 px images enlarged to 64 px, 2 px padding each side


def test_script_runs_uncached_and_reports_steps(pixel_checkpoint, tmp_path):
    output = tmp_path / "grid.png"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), *pixel_argv(pixel_checkpoint, output, "--interval", "1")],
        capture_output=True, text=True, check=True, cwd=tmp_path,
    )  # fmt: skip
    (method,) = last_json_line(result.stdout)["methods"]
    assert (method["full_steps"], method["forecast_steps"]) == (10, 0)
    assert "Total sampling took" in result.stdout
    assert output.exists() and output.with_suffix(".npy").exists()


def test_sampling_with_a_local_vae_folder(tmp_path):
    """Latent-space DiT (4 channels) decoded by a VAE loaded from a local diffusers folder."""
    model = tiny_dit(input_size=4)  # 32 px images / 8 = 4 latent pixels
    ckpt = tmp_path / "latent.pt"
    torch.save(model.state_dict(), ckpt)
    vae = tiny_vae()
    vae.save_pretrained(tmp_path / "vae")
    output = tmp_path / "grid.png"
    run_main(["--model", "DiT-Tiny/2", "--vae", "ema", "--vae-path", str(tmp_path / "vae"), "--image-size", "32",
              "--num-classes", "10", "--ckpt", str(ckpt), "--num-sampling-steps", "6", "--class-labels", "0", "9",
              "--output", str(output), "--interval", "2", "--device", "cpu", "--no-compare"])  # fmt: skip
    assert not output.with_suffix(".npy").exists()

    cache = TaylorCache(TaylorSeerConfig(interval=2, max_order=4, first_enhance=2))
    latents = sample_dit(model, create_diffusion("6"), [0, 9], cfg_scale=1.5, cache=cache, ddim=False).samples
    expected = save_grid(decode_latents(vae, latents), tmp_path / "expected.png")
    np.testing.assert_array_equal(np.asarray(Image.open(output)), np.asarray(Image.open(expected)))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--interval", "0"], "interval must be >= 1"),
        (["--max-order", "-1"], "max_order must be >= 0"),
        (["--model", "DiT-XL/2", "--class-labels", "1000"], "outside [0, 999]"),
        (["--class-labels", "10"], "outside [0, 9]"),  # the bundled digits model has 10 classes
        (["--cfg-scale", "0.5"], "--cfg-scale: expected a finite number >= 1 and <= 100, got 0.5"),
        (["--cfg-scale", "nan"], "--cfg-scale: expected a finite number >= 1 and <= 100, got 'nan'"),
        (["--cfg-scale", "inf"], "--cfg-scale: expected a finite number >= 1 and <= 100, got 'inf'"),
        (["--num-sampling-steps", "0"], "--num-sampling-steps: expected an integer in 1..1000, got 0"),
        (["--model", "DiT-XL/8", "--image-size", "32"], "must be a positive multiple of 64"),
        (["--image-size", "2048"], "--image-size: expected an integer in 1..1024, got 2048"),
        (["--image-size", "18"], "must be a positive multiple of 4"),
        # 50 DDIM steps, E=2, N=4: full steps 0, 1, 5, ..., 49; step 45 is the last that still precedes a forecast.
        (["--derivative-start-step", "46"], "use a --derivative-start-step <= 45"),
        (["--num-sampling-steps", "10", "--derivative-start-step", "6"], "use a --derivative-start-step <= 5"),
        (["--seed", str(2**63)], "--seed: expected an integer in 0..9223372036854775807"),
        (["--timing-repeats", "0"], "--timing-repeats: expected an integer in 1..100, got 0"),
    ],
)
def test_invalid_flags_exit_with_the_reason(argv, message, capsys):
    parser = build_parser()
    with pytest.raises(SystemExit) as exit_info:
        check_args(parser.parse_args(argv), parser)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_a_derivative_start_step_the_schedule_uses_is_accepted():
    parser = build_parser()
    args = parser.parse_args(["--derivative-start-step", "45"])
    assert check_args(args, parser).derivative_start_step == 45


def test_missing_checkpoint_is_one_readable_message(tmp_path):
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--model", "DiT-XL/2", "--ddim-sample", "--num-sampling-steps", "5"],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2
    assert "https://dl.fbaipublicfiles.com/DiT/models/DiT-XL-2-256x256.pt" in result.stderr
    assert "Traceback" not in result.stderr


def test_readme_main_job_runs_the_bundled_model_without_flags(tmp_path, monkeypatch, capsys):
    """`python TaylorSeer-DiT/sample.py` with no flags: the bundled digits model, full vs FORA vs TaylorSeer."""
    monkeypatch.chdir(tmp_path)
    # One timed run per method: the repeats are tested on the tiny model below, this test is about the images.
    monkeypatch.setattr(sample_script, "COMPARE_TIMING_REPEATS", 1)
    summary = cli([])
    assert last_json_line(capsys.readouterr().out) == summary
    full, fora, taylor = summary["methods"]
    assert [m["method"] for m in summary["methods"]] == ["full compute", "FORA N=4", "TaylorSeer N=4 O=4"]
    assert (full["full_steps"], fora["full_steps"], taylor["full_steps"]) == (50, 14, 14)  # E=2, N=4, 50 DDIM steps
    assert fora["flops_speedup"] == taylor["flops_speedup"] == pytest.approx(3.44, abs=0.01)
    # Counted during the run, every matmul included (embeddings, final layer): a little less than the reference.
    assert fora["matmul_speedup"] == taylor["matmul_speedup"] == pytest.approx(3.25, abs=0.01)
    assert full["matmul_speedup"] == 1.0
    assert [m["settings"]["method"] for m in summary["methods"]] == ["full", "fora", "taylorseer"]
    # The paper's claim on the bundled model: forecasting beats reuse at the same FLOPs.
    assert 0 < taylor["rel_l2_vs_full"] < fora["rel_l2_vs_full"]
    assert all(m["wall_speedup"] > 0 for m in summary["methods"])
    grid = Image.open(tmp_path / "sample.png")
    assert grid.height == 3 * (64 + 4) and grid.width > 10 * (64 + 2)  # three rows of ten digits, enlarged
    assert [Path(p).name for p in summary["raw"]] == ["sample-full.npy", "sample-fora.npy", "sample-taylorseer.npy"]
    # The weights that made the grid, by content: the bundled file's fingerprint.
    assert summary["ckpt"] is None and summary["weights_id"] == weights_fingerprint([BUNDLED_WEIGHTS])


def test_the_bundled_model_is_timed_three_times_when_comparing():
    parser = build_parser()
    args = parser.parse_args([])
    check_args(args, parser)
    assert args.timing_repeats == 3
    args = parser.parse_args(["--no-compare"])
    check_args(args, parser)
    assert args.timing_repeats == 1


# Timing: min of k interleaved runs, and a warning for a wall speedup that only noise can give.


def fake_result(seconds: float, value: float = 0.0) -> SamplingResult:
    return SamplingResult(torch.full((1, 1, 2, 2), value), seconds, 4, 0)


def test_methods_are_timed_k_times_interleaved_and_the_fastest_run_counts():
    methods = [Method("full", None), Method("fora", TaylorSeerConfig(interval=2, max_order=0))]
    scripted = {"full compute": [5.0, 3.0, 4.0], "FORA N=2": [2.0, 2.5, 1.0]}
    calls = []

    def sample_once(method: Method) -> SamplingResult:
        calls.append(method.name)
        run = sum(1 for name in calls if name == method.name) - 1
        return fake_result(scripted[method.name][run], value=run)

    timed = time_methods(methods, sample_once, repeats=3)
    assert calls == ["full compute", "FORA N=2"] * 3  # interleaved: a busy phase slows both alike
    assert timed["full compute"].seconds == [5.0, 3.0, 4.0] and timed["full compute"].best == 3.0
    assert timed["FORA N=2"].seconds == [2.0, 2.5, 1.0] and timed["FORA N=2"].best == 1.0
    assert float(timed["FORA N=2"].result.samples[0, 0, 0, 0]) == 0.0  # the first run's samples are kept


def test_a_wall_speedup_above_the_flops_speedup_is_flagged_as_noise():
    entries = [
        {"method": "full compute", "wall_speedup": 1.0, "flops_speedup": 1.0, "matmul_speedup": 1.0},
        {"method": "FORA N=4", "wall_speedup": 3.0, "flops_speedup": 3.44, "matmul_speedup": 3.31},
        {"method": "TaylorSeer N=4 O=4", "wall_speedup": 7.5, "flops_speedup": 3.44, "matmul_speedup": 3.31},
        {"method": "alone", "wall_speedup": None, "flops_speedup": 3.44, "matmul_speedup": 3.31},
        # Between the two counts: either count leaves some work out, so only a speedup above both is noise.
        {"method": "between", "wall_speedup": 3.4, "flops_speedup": 3.44, "matmul_speedup": 3.31},
        # Methods the reference count does not cover are held to the matmul count.
        {"method": "ToCa N=4 R=0.1", "wall_speedup": 3.0, "flops_speedup": None, "matmul_speedup": 2.9},
    ]
    first, second = noise_warnings(entries)
    assert first.startswith("TaylorSeer N=4 O=4: wall speedup 7.50x exceeds its FLOPs speedup 3.44x")
    assert second.startswith("ToCa N=4 R=0.1: wall speedup 3.00x exceeds its FLOPs speedup 2.90x")
    assert "can only be noise" in first


def test_the_table_reports_the_fastest_of_k_runs_and_warns_on_noise(pixel_checkpoint, tmp_path, monkeypatch, capsys):
    """main with --timing-repeats 2 on scripted sampling times: FORA's second run is impossibly fast."""
    seconds = iter([9.0, 4.0, 8.0, 0.5])  # full, FORA, full, FORA (the untimed runs are not counted)
    real_sample_dit = sample_script.sample_dit

    def scripted_sample_dit(*args, **kwargs) -> SamplingResult:
        result = real_sample_dit(*args, **kwargs)
        if not kwargs.get("progress"):  # the untimed runs: the warm-up, and FORA's while its FLOPs are counted
            return result
        result.seconds = next(seconds)
        return result

    monkeypatch.setattr(sample_script, "sample_dit", scripted_sample_dit)
    argv = [a for a in pixel_argv(pixel_checkpoint, tmp_path / "g.png", "--interval", "3", "--max-order", "0",
                                  "--timing-repeats", "2") if a != "--no-compare"]  # fmt: skip
    summary = run_main(argv)
    out, err = capsys.readouterr()
    full, fora = summary["methods"]
    assert (full["seconds_all"], full["seconds"]) == ([9.0, 8.0], 8.0)
    assert (fora["seconds_all"], fora["seconds"]) == ([4.0, 0.5], 0.5)
    assert fora["wall_speedup"] == 16.0 > fora["flops_speedup"]
    assert summary["timing_repeats"] == 2 and "seconds, min of 2" in out
    assert "warning: FORA N=3: wall speedup 16.00x exceeds its FLOPs speedup" in err


# Non-finite samples end the run with one message, and nothing is saved.


def test_nan_samples_end_the_run_with_one_message_and_no_files(tmp_path, capsys):
    model = tiny_dit(input_size=16, in_channels=3)
    with torch.no_grad():
        model.final_layer.linear.bias.fill_(float("nan"))
    ckpt = tmp_path / "nan.pt"
    torch.save(model.state_dict(), ckpt)
    output = tmp_path / "out" / "grid.png"
    line = assert_refused(cli, pixel_argv(ckpt, output), "non-finite values (NaN or inf)", capsys, watch=tmp_path)
    assert "Check --cfg-scale, --num-sampling-steps, the checkpoint" in line
    assert not (tmp_path / "out").exists()


def test_sample_dit_refuses_non_finite_guidance():
    model = tiny_dit(input_size=8, in_channels=3)
    for scale in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="cfg_scale must be a finite number"):
            sample_dit(model, create_diffusion("2"), [1], cfg_scale=scale)
