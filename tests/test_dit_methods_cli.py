"""Every caching method through the DiT scripts: sample.py's comparison rows and the FLOPs it counts during the run,
sample_ddp.py's folders and records, and fit_teacache.py (its polynomial fit, its file, the shipped fit, bad input)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_testing import assert_refused
from dit_testing import tiny_dit
from PIL import Image

from common.flops import count_flops
from common.integrity import weights_fingerprint
from common.methods import METHODS, method_record
from common.run_records import read_records
from common.taylor_cache import TaylorSeerConfig
from common.teacache import TeaCache, TeaCacheConfig, load_coefficients
from common.toca import ToCaCache, ToCaConfig
from taylorseer_dit import fit_teacache, sample, sample_ddp
from taylorseer_dit.checkpoints import load_dit
from taylorseer_dit.defaults import BUNDLED_MODEL, BUNDLED_WEIGHTS
from taylorseer_dit.diffusion import create_diffusion
from taylorseer_dit.fit_teacache import ChangeRecorder, fit_polynomial, fit_warnings
from taylorseer_dit.flops import dit_flops_reports
from taylorseer_dit.models import DiT, DiT_models
from taylorseer_dit.pipeline import sample_dit
from taylorseer_dit.sampling_args import TEACACHE_FIT

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS = 6
# N=2 (E=2: full steps 0, 1, 3, 5) and a TeaCache threshold that skips 2 of the tiny model's 6 steps; Δ-DiT bypasses
# one of its 2 blocks. The published identity polynomial: the default fit is the bundled model's (tested below).
METHOD_FLAGS = ["--interval", "2", "--cached-blocks", "1", "--teacache-thresh", "0.2", "--teacache-coefficients",
                "identity"]  # fmt: skip
SCHEDULED = ("full", "taylorseer", "fora")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    torch.save(tiny_dit(input_size=8, in_channels=3).state_dict(), path)
    return path


def model_argv(ckpt: Path) -> list[str]:
    return ["--model", "DiT-Tiny/2", "--vae", "none", "--image-size", "8", "--in-channels", "3", "--num-classes",
            "10", "--ckpt", str(ckpt), "--num-sampling-steps", str(STEPS), "--ddim-sample",
            "--device", "cpu"]  # fmt: skip


def run(script, argv: list[str]) -> dict:
    parser = script.build_parser()
    args = parser.parse_args(argv)
    return script.main(args, script.check_args(args, parser))


def expected_settings(script, argv: list[str]) -> dict:
    """What the records should say of the method: its config as parsed, in method_record's JSON form."""
    parser = script.build_parser()
    args = parser.parse_args(argv)
    return method_record(args.method, script.check_args(args, parser)) or {"method": "full"}


def meta_dit() -> DiT:
    with torch.device("meta"):
        return DiT_models["DiT-Tiny/2"](input_size=8, in_channels=3, num_classes=10)


def load_tiny(ckpt: Path) -> DiT:
    return load_dit("DiT-Tiny/2", ckpt, image_size=8, latent_scale=1, in_channels=3, num_classes=10)


# ------------------------------------------------------------------------------------------------------ sample.py


@pytest.mark.parametrize("method", METHODS)
def test_every_method_gets_its_row_next_to_full_compute_and_fora(method, checkpoint, tmp_path):
    output = tmp_path / "grid.png"
    argv = [*model_argv(checkpoint), *METHOD_FLAGS, "--method", method, "--class-labels", "1", "2",
            "--output", str(output), "--timing-repeats", "1"]  # fmt: skip
    summary = run(sample, argv)
    rows = {m["settings"]["method"]: m for m in summary["methods"]}
    # Full compute and FORA are the comparison's own rows: the chosen method adds a third only when it is another.
    expected = ["full", "fora"] + ([] if method in ("full", "fora") else [method])
    assert list(rows) == expected
    assert [Path(p).name for p in summary["raw"]] == [f"grid-{key}.npy" for key in expected]
    assert Image.open(output).height == len(expected) * (64 + 4)  # 8 px images enlarged to 64 px, 2 px padding
    full, chosen = rows["full"], rows[method]
    assert (full["rel_l2_vs_full"], full["flops_speedup"], full["matmul_speedup"]) == (0.0, 1.0, 1.0)
    assert chosen["settings"] == expected_settings(sample, argv)
    if method == "full":
        return
    assert chosen["full_steps"] + chosen["forecast_steps"] == STEPS and chosen["forecast_steps"] > 0
    assert chosen["rel_l2_vs_full"] > 0 and chosen["matmul_speedup"] > 1.0
    # The paper's count covers the schedule-fixed methods only; the matmul count covers every one, and for those
    # agrees with the schedule's count on the meta device (full and forecast steps' FLOPs without weights).
    assert (chosen["flops_speedup"] is None) == (method not in SCHEDULED)
    for key in ("fora", method) if method in SCHEDULED else ("fora",):
        config = TaylorSeerConfig(interval=2, max_order=0 if key == "fora" else 4, first_enhance=2)
        meta = dit_flops_reports(meta_dit(), 4, STEPS, config)["matmul"]  # 2 labels doubled for CFG
        assert rows[key]["matmul_tflops"] * 1e12 == pytest.approx(meta.flops, rel=1e-12)
    raw = {Path(p).stem.split("-", 1)[1]: np.load(p) for p in summary["raw"]}
    error = np.linalg.norm(raw[method] - raw["full"]) / np.linalg.norm(raw["full"])
    assert chosen["rel_l2_vs_full"] == pytest.approx(error, rel=1e-5)


def test_taylorseer_of_order_zero_is_the_fora_row(checkpoint, tmp_path):
    argv = [*model_argv(checkpoint), "--max-order", "0", "--class-labels", "1", "--output", str(tmp_path / "g.png"),
            "--timing-repeats", "1", "--interval", "2"]  # fmt: skip
    summary = run(sample, argv)
    assert [m["method"] for m in summary["methods"]] == ["full compute", "FORA N=2"]


def test_matmul_flops_are_those_each_run_computed(checkpoint, tmp_path, capsys):
    """Full compute's count (meta device) and ToCa's and TeaCache's (counted during the run) against independent
    counts: TeaCache at threshold 0 computes every step, plus block 0's adaLN linear for its signal each step."""
    labels = ["--class-labels", "1", "2"]
    common = [*model_argv(checkpoint), *labels, "--timing-repeats", "1", "--no-compare"]
    toca = run(sample, [*common, "--method", "toca", "--interval", "3", "--output", str(tmp_path / "t.png")])
    zero = ["--method", "teacache", "--teacache-thresh", "0", "--teacache-coefficients", "identity",
            "--output", str(tmp_path / "z.png")]  # fmt: skip
    teacache = run(sample, [*common, *zero])
    model, diffusion = load_tiny(checkpoint), create_diffusion(str(STEPS))

    def counted(cache) -> int:
        return count_flops(lambda: sample_dit(model, diffusion, [1, 2], cache=cache, ddim=True, seed=0))

    full = counted(None)
    assert toca["full_matmul_tflops"] * 1e12 == pytest.approx(full, rel=1e-12)
    toca_config = ToCaConfig(interval=3, fresh_ratio=0.1, first_enhance=2)
    (entry,) = toca["methods"]
    assert entry["matmul_tflops"] * 1e12 == pytest.approx(counted(ToCaCache(toca_config)), rel=1e-12)
    assert entry["matmul_speedup"] == pytest.approx(full / counted(ToCaCache(toca_config)), rel=1e-12)
    batch, hidden = 4, 64  # 2 labels doubled for CFG; DiT-Tiny's width
    (entry,) = teacache["methods"]
    assert entry["matmul_speedup"] == pytest.approx(full / (full + STEPS * 2 * batch * hidden * 6 * hidden), rel=1e-12)
    assert (entry["full_steps"], entry["forecast_steps"]) == (STEPS, 0)
    out = capsys.readouterr().out
    assert "matmul = every matmul, counted during an untimed run of the method" in out


def test_a_fit_for_other_weights_and_steps_is_used_with_warnings(checkpoint, tmp_path, capsys):
    """The DiT default is the bundled model's fit, made on 50 DDIM steps: with another checkpoint and 6 steps TeaCache
    still runs, and says why its decisions mean little."""
    argv = [*model_argv(checkpoint), "--method", "teacache", "--class-labels", "1", "--no-compare",
            "--output", str(tmp_path / "g.png")]  # fmt: skip
    capsys.readouterr()
    summary = run(sample, argv)
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    fitted = json.loads(TEACACHE_FIT.read_text())["weights_id"]
    assert warnings == [
        f"warning: --teacache-coefficients {TEACACHE_FIT} was fitted for weights {fitted}, these are "
        f"{weights_fingerprint([checkpoint])}: its rescaling measures another model; fit one for these weights with "
        "fit_teacache.py (same --model and --ckpt) and pass its --output",
        f"warning: --teacache-coefficients {TEACACHE_FIT} was fitted on 50 DDIM steps, this run takes {STEPS} DDIM "
        "steps: their changes lie outside the range the polynomial was fitted on; fit one with these "
        "--num-sampling-steps and --ddim-sample/--no-ddim-sample",
    ]
    assert summary["methods"][0]["settings"]["coefficients"] == json.loads(TEACACHE_FIT.read_text())["coefficients"]


def test_flops_without_weights_for_fora_and_full(capsys):
    flops = ["--model", "DiT-XL/2", "--ddim-sample", "--num-sampling-steps", "50", "--interval", "5", "--test-FLOPs"]
    run(sample, [*flops, "--method", "fora"])
    fora = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (fora["full_steps"], fora["speedup"]) == (11, pytest.approx(4.53, abs=0.005))  # the schedule of N=5
    run(sample, [*flops, "--method", "full"])
    full = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (full["full_steps"], full["speedup"], full["matmul_speedup"]) == (50, 1.0, 1.0)


# -------------------------------------------------------------------------------------------------- sample_ddp.py


def ddp_argv(ckpt: Path, sample_dir: Path, method: str, *extra: str) -> list[str]:
    return [*model_argv(ckpt), *METHOD_FLAGS, "--method", method, "--sample-dir", str(sample_dir),
            "--num-fid-samples", "3", "--per-proc-batch-size", "2", *extra]  # fmt: skip


@pytest.mark.parametrize("method", METHODS)
def test_every_method_samples_into_a_folder_of_its_own_and_records_itself(method, checkpoint, tmp_path):
    argv = ddp_argv(checkpoint, tmp_path, method)
    summary = run(sample_ddp, argv)
    # The plain model records no method settings (None), however it is asked for.
    settings = None if method == "full" else expected_settings(sample_ddp, argv)
    folder = Path(summary["folder"])
    records = read_records(folder / "metadata.jsonl")
    assert sorted(records) == ["000000.png", "000001.png", "000002.png"]
    assert all(record["method"] == settings and "sha256" in record for record in records.values())
    assert (summary["method"], summary["method_settings"]) == (method, settings)
    written = json.loads((folder.parent / f"{folder.name}.json").read_text())
    assert (written["method"], written["method_settings"]) == (method, settings)
    assert summary["full_steps"] + summary["forecast_steps"] == STEPS
    # Rerun: nothing left to sample, and the steps come from the settings where they can (not for TeaCache).
    again = run(sample_ddp, argv)
    assert (again["batches_sampled"], again["batches_skipped"]) == (0, 2)
    assert again["full_steps"] == (None if method == "teacache" else summary["full_steps"])
    assert again["mean_full_steps"] is None
    if method == "teacache":  # decided per batch (here one of 2 images, one of 1)
        assert 1 <= summary["mean_full_steps"] <= STEPS
    else:
        assert summary["mean_full_steps"] == summary["full_steps"]


def folder_of(argv: list[str]) -> str:
    parser = sample_ddp.build_parser()
    args = parser.parse_args(argv)
    return sample_ddp.folder_name(args, sample_ddp.check_args(args, parser), "0123456789abcdef")


def test_methods_and_their_settings_never_share_a_folder():
    base = "DiT-XS-4-bundled-01234567-size-16-vae-none-cfg-1.5-seed-0-ddim50"
    names = {
        "taylorseer": base + "-N4-O4-E2",
        "full": base + "-full",
        "fora": base + "-fora-N4-E2",
        "delta-dit": base + "-delta-dit-N4-k1-b0.5-E2",
        "toca": base + "-toca-N4-R0.1-norm-E2",
        "duca": base + "-duca-N4-R0.1-norm-E2",
    }
    for method, name in names.items():
        assert folder_of(["--method", method]) == name
    # The plain model is one setting however asked for: one folder.
    assert folder_of(["--interval", "1"]) == folder_of(["--method", "fora", "--interval", "1"]) == names["full"]
    variants = [
        ["--method", "toca", "--no-layer-schedule"],
        ["--method", "toca", "--toca-score", "random"],
        ["--method", "duca", "--fresh-ratio", "0.2"],
        ["--method", "delta-dit", "--delta-boundary", "0.25"],
        ["--method", "fora", "--factor-dtype", "float32"],
        ["--method", "teacache"],
        ["--method", "teacache", "--teacache-thresh", "0.2"],
        ["--method", "teacache", "--teacache-coefficients", "identity"],
        ["--method", "teacache", "--teacache-coefficients", "flux"],
    ]
    folders = [*names.values(), *(folder_of(argv) for argv in variants)]
    assert len(set(folders)) == len(folders)
    assert folder_of(["--method", "teacache"]).startswith(base + "-teacache-l0.4-c")


def test_a_folder_recorded_before_methods_existed_resumes(checkpoint, tmp_path):
    """Records of TaylorSeer runs made before --method held its settings as top-level keys (factor dtype "auto"):
    they are read as today's, so the run resumes, samples only what is missing, and packs the same bytes."""
    argv = ddp_argv(checkpoint, tmp_path, "taylorseer", "--max-order", "2")
    first = run(sample_ddp, argv)
    folder, npz = Path(first["folder"]), Path(first["npz"])
    packed = npz.read_bytes()
    records = folder / "metadata.jsonl"
    legacy = []
    for line in records.read_text().splitlines():
        record = json.loads(line)
        method = record.pop("method")
        del method["method"]
        legacy.append(json.dumps({**record, **method, "factor_dtype": "auto"}))
    records.write_text("\n".join(legacy) + "\n")
    (folder / "000002.png").unlink()
    npz.unlink()
    second = run(sample_ddp, argv)
    assert (second["samples_written"], second["batches_skipped"]) == (1, 1)
    assert npz.read_bytes() == packed
    old_plain = {"file": "000000.png", "interval": 1, "max_order": 4, "first_enhance": 2, "derivative_start_step": 0,
                 "factor_dtype": "auto"}  # fmt: skip
    assert sample_ddp.upgrade_record(old_plain) == {"file": "000000.png", "method": None}


class Killed(KeyboardInterrupt):
    """What Ctrl-C raises in the middle of a run."""


def test_a_killed_teacache_run_resumes_to_the_bytes_of_an_uninterrupted_one(checkpoint, tmp_path, monkeypatch):
    """TeaCache decides per batch: a resumed run recomputes whole batches, so it decides as the first run did."""
    extra = ["--num-fid-samples", "5", "--per-proc-batch-size", "2"]
    reference = run(sample_ddp, [*ddp_argv(checkpoint, tmp_path / "reference", "teacache"), *extra])
    real, calls = sample_ddp.record_written, []

    def record_or_die(*args, **kwargs) -> None:
        calls.append(1)
        if len(calls) == 3:  # the first PNG of the second batch is on disk, unrecorded
            raise Killed
        real(*args, **kwargs)

    killed = [*ddp_argv(checkpoint, tmp_path / "killed", "teacache"), *extra]
    with monkeypatch.context() as patch:
        patch.setattr(sample_ddp, "record_written", record_or_die)
        with pytest.raises(Killed):
            run(sample_ddp, killed)
    resumed = run(sample_ddp, killed)
    assert resumed["samples_written"] == 2  # batch 1's unrecorded PNG was adopted after decoding; batch 2 remained
    assert Path(resumed["npz"]).read_bytes() == Path(reference["npz"]).read_bytes()


# -------------------------------------------------------------------------------------------------- fit_teacache.py


def test_the_fit_recovers_a_known_polynomial():
    known = (-30.0, 12.0, -1.5, 0.8, 0.01)
    x = np.linspace(0.001, 0.2, 40)
    assert fit_polynomial(x, np.polyval(known, x)) == pytest.approx(known, rel=1e-6)
    # Noisy pairs: least squares, still close.
    noise = np.random.default_rng(0).normal(0, 1e-4, x.shape)
    assert fit_polynomial(x, np.polyval(known, x) + noise) == pytest.approx(known, rel=0.2, abs=0.01)


@pytest.mark.parametrize(
    ("inputs", "outputs", "message"),
    [
        ([0.1, 0.2, 0.1, 0.2, 0.1, 0.2], [1.0] * 6, "2 distinct input changes cannot determine a degree-4"),
        ([0.1, 0.2, 0.3, 0.4, float("nan")], [1.0] * 5, "the recorded changes hold NaN or inf"),
        ([0.1, 0.2, 0.3, 0.4, 0.5], [1.0, 1.0, float("inf"), 1.0, 1.0], "the recorded changes hold NaN or inf"),
    ],
)
def test_pairs_that_determine_no_polynomial_are_refused(inputs, outputs, message):
    with pytest.raises(ValueError, match=message):
        fit_polynomial(inputs, outputs)


def test_recording_changes_nothing_and_measures_what_teacache_measures(checkpoint):
    """The recorder's input changes are TeaCache's own (identity polynomial), its output changes those of the block
    stack's residual, captured here by hooks on the first and last block."""
    model, diffusion = load_tiny(checkpoint), create_diffusion(str(STEPS))
    stack_in, stack_out = [], []
    hooks = [
        model.blocks[0].register_forward_pre_hook(lambda module, args: stack_in.append(args[0])),
        model.blocks[-1].register_forward_hook(lambda module, args, output: stack_out.append(output)),
    ]
    recorder = ChangeRecorder()
    recorded = sample_dit(model, diffusion, [1, 2], cache=recorder, seed=5)
    for hook in hooks:
        hook.remove()
    plain = sample_dit(model, diffusion, [1, 2], seed=5)
    assert torch.equal(recorded.samples, plain.samples)
    teacache = TeaCache(TeaCacheConfig(threshold=0))
    sample_dit(model, diffusion, [1, 2], cache=teacache, seed=5)
    assert recorder.input_changes == teacache.changes[1:] and len(recorder.input_changes) == STEPS - 1
    residuals = [out - x for x, out in zip(stack_in, stack_out, strict=True)]
    by_hand = [float((b - a).abs().mean() / a.abs().mean()) for a, b in zip(residuals, residuals[1:], strict=False)]
    assert recorder.output_changes == pytest.approx(by_hand, rel=1e-6)


def fit_argv(ckpt: Path, output: Path, *extra: str) -> list[str]:
    return ["--model", "DiT-Tiny/2", "--vae", "none", "--image-size", "8", "--in-channels", "3", "--num-classes",
            "10", "--ckpt", str(ckpt), "--num-sampling-steps", str(STEPS), "--ddim-sample", "--device", "cpu",
            "--num-batches", "2", "--batch-size", "2", "--output", str(output), *extra]  # fmt: skip


def test_the_fit_script_writes_a_file_that_teacache_takes(checkpoint, tmp_path, capsys):
    output = tmp_path / "fits" / "tiny.json"
    record = fit_teacache.cli(fit_argv(checkpoint, output))
    data = json.loads(output.read_text())
    assert data == json.loads(json.dumps(record))
    assert list(data)[:5] == ["coefficients", "model", "weights_id", "ckpt", "samples"]
    assert (data["model"], data["weights_id"]) == ("DiT-Tiny/2", weights_fingerprint([checkpoint]))
    assert (data["samples"], data["steps"], data["batches"], data["seed"]) == (4, STEPS, 2, 1_000_000)
    assert len(data["input_changes"]) == len(data["output_changes"]) == 2 * (STEPS - 1)
    assert tuple(data["coefficients"]) == fit_polynomial(data["input_changes"], data["output_changes"])
    assert len(data["coefficients"]) == 5 and load_coefficients(str(output)) == tuple(data["coefficients"])
    assert f"saved {output}: pass it as --teacache-coefficients {output}" in capsys.readouterr().out
    # sample.py takes it, without the warning a fit for other weights gets.
    summary = run(sample, [*model_argv(checkpoint), "--method", "teacache", "--teacache-coefficients", str(output),
                           "--class-labels", "1", "--no-compare", "--output", str(tmp_path / "g.png")])  # fmt: skip
    assert "warning:" not in capsys.readouterr().err
    assert summary["methods"][0]["settings"]["coefficients"] == data["coefficients"]
    # Sampled with another sampler than it was fitted with: one warning, on the steps only.
    run(sample, [*model_argv(checkpoint), "--no-ddim-sample", "--method", "teacache", "--teacache-coefficients",
                 str(output), "--class-labels", "1", "--no-compare", "--output", str(tmp_path / "g.png")])  # fmt: skip
    (warning,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert f"was fitted on {STEPS} DDIM steps, this run takes {STEPS} DDPM steps" in warning


def test_a_killed_fit_writes_nothing_and_a_rerun_gives_the_same_bytes(checkpoint, tmp_path, monkeypatch):
    reference = tmp_path / "reference.json"
    fit_teacache.cli(fit_argv(checkpoint, reference))
    real = fit_teacache.sample_dit
    calls = []

    def sample_or_die(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise Killed
        return real(*args, **kwargs)

    output = tmp_path / "killed" / "fit.json"
    with monkeypatch.context() as patch:
        patch.setattr(fit_teacache, "sample_dit", sample_or_die)
        with pytest.raises(Killed):
            fit_teacache.cli(fit_argv(checkpoint, output))
    assert not output.parent.exists() or list(output.parent.iterdir()) == []
    fit_teacache.cli(fit_argv(checkpoint, output))
    assert output.read_bytes() == reference.read_bytes()


def test_the_shipped_fit_is_the_bundled_models_and_the_dit_default():
    data = json.loads(TEACACHE_FIT.read_text())
    assert (data["model"], data["weights_id"]) == (BUNDLED_MODEL, weights_fingerprint([BUNDLED_WEIGHTS]))
    # Fitted as sample.py samples the bundled model: DDIM 50, CFG 1.5, batches of its 10 labels.
    assert (data["steps"], data["sampler"], data["cfg_scale"], data["batch_size"]) == (50, "ddim", 1.5, 10)
    assert len(data["input_changes"]) == data["batches"] * (data["steps"] - 1)
    assert data["coefficients"] == pytest.approx(fit_polynomial(data["input_changes"], data["output_changes"]))
    assert fit_warnings(data) == []  # positive over every input change it saw
    for script in (sample, sample_ddp):
        assert script.build_parser().parse_args([]).teacache_coefficients == str(TEACACHE_FIT)


def test_a_negative_polynomial_is_flagged():
    record = {"coefficients": [1.0, -0.05], "input_range": [0.0, 0.1]}  # x - 0.05: negative below 0.05
    (warning,) = fit_warnings(record)
    assert warning.startswith("the fitted polynomial is negative for input changes in [0, 0.0499]")


# Bad input: every flag and the checkpoint, refused with one line before anything is computed or written.


def flags(*argv: str):
    return lambda folder: list(argv)


def file_at(folder: Path, name: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def output_is_a_folder(folder: Path) -> list[str]:
    (folder / "fit.json").mkdir()
    return ["--output", str(folder / "fit.json")]


FIT_FLAG_CASES = [
    ("model", flags("--model", "DiT-Huge/2"), "argument --model: invalid choice: 'DiT-Huge/2'"),
    ("vae", flags("--vae", "kl"), "argument --vae: invalid choice: 'kl'"),
    ("image-size zero", flags("--image-size", "0"), "--image-size: expected an integer in 1..1024, got 0"),
    ("image-size patch", flags("--image-size", "9"), "--image-size 9 must be a positive multiple of 2"),
    ("in-channels zero", flags("--in-channels", "0"), "--in-channels: expected an integer in 1..64, got 0"),
    ("num-classes zero", flags("--num-classes", "0"), "--num-classes: expected an integer in 1..100000, got 0"),
    ("cfg-scale nan", flags("--cfg-scale", "nan"), "--cfg-scale: expected a finite number >= 1 and <= 100, got 'nan'"),
    ("steps zero", flags("--num-sampling-steps", "0"), "--num-sampling-steps: expected an integer in 1..1000, got 0"),
    ("steps too few", flags("--num-sampling-steps", "3"), "gives 4 step pairs; a degree-4 fit needs at least 5"),
    ("ddim-sample value", flags("--ddim-sample=yes"), "argument --ddim-sample/--no-ddim-sample: ignored explicit"),
    ("num-batches zero", flags("--num-batches", "0"), "--num-batches: expected an integer in 1..1000, got 0"),
    ("batch-size zero", flags("--batch-size", "0"), "--batch-size: expected an integer in 1..4096, got 0"),
    ("seed negative", flags("--seed", "-1"), f"--seed: expected an integer in 0..{2**63 - 1}, got -1"),
    ("seed past the last", flags("--seed", str(2**63 - 1)), f"--num-batches 2 - 1 exceeds {2**63 - 1}: lower --seed"),
    ("output suffix", lambda f: ["--output", str(f / "fit.txt")], "must end in .json: e.g. --output"),
    ("output is a folder", output_is_a_folder, "is a folder: give a file name"),
    ("output under a file", lambda f: ["--output", str(file_at(f, "taken") / "fit.json")], "cannot be created: "),
    ("output unwritable", flags("--output", "/proc/taylorseer-test/fit.json"), "/proc refuses new files"),
    ("device unknown", flags("--device", "gpu0"), "--device 'gpu0' is not a torch device: use cpu, cuda or cuda:N"),
    ("unknown flag", flags("--vae-path", "vae"), "unrecognized arguments: --vae-path vae"),
]


@pytest.mark.parametrize(("case", "message"), [pytest.param(c, m, id=n) for n, c, m in FIT_FLAG_CASES])
def test_bad_fit_flags_are_refused_before_loading(case, message, checkpoint, tmp_path, capsys, monkeypatch):
    if sys.platform != "linux" and "/proc" in message:
        pytest.skip("/proc is the folder that refuses files even to root, on Linux only")

    def load(*args, **kwargs):
        raise AssertionError("the weights were loaded before the bad input was refused")

    monkeypatch.setattr(fit_teacache, "load_model", load)
    argv = [*fit_argv(checkpoint, tmp_path / "out" / "fit.json"), *case(tmp_path)]
    assert_refused(fit_teacache.cli, argv, message, capsys, watch=tmp_path)


def zero_checkpoint(folder: Path) -> Path:
    """A DiT whose every weight is 0: its signal never changes (0 / 0), so the pairs determine no polynomial."""
    model = tiny_dit(input_size=8, in_channels=3)
    with torch.no_grad():
        for param in model.parameters():
            param.zero_()
    path = folder / "zero.pt"
    torch.save(model.state_dict(), path)
    return path


FIT_FILE_CASES = [
    ("ckpt missing", lambda f: ["--ckpt", str(f / "missing.pt")], "DiT-Tiny/2 checkpoint not found"),
    ("ckpt not a checkpoint", lambda f: ["--ckpt", str(file_at(f, "junk.pt"))], "Could not read checkpoint file"),
    ("ckpt that fits nothing", lambda f: ["--ckpt", str(zero_checkpoint(f))], "no fit: the recorded changes hold NaN"),
]


@pytest.mark.parametrize(("case", "message"), [pytest.param(c, m, id=n) for n, c, m in FIT_FILE_CASES])
def test_bad_fit_checkpoints_are_refused_and_nothing_is_written(case, message, checkpoint, tmp_path, capsys):
    output = tmp_path / "out" / "fit.json"
    extra = case(tmp_path)
    assert_refused(fit_teacache.cli, [*fit_argv(checkpoint, output), *extra], message, capsys, watch=tmp_path)


def test_every_fit_flag_has_a_bad_input_row(tmp_path):
    parser = fit_teacache.build_parser()
    options = {option for action in parser._actions for option in action.option_strings}
    wanted = {option for option in options if option.startswith("--") and not option.startswith(("--no-", "--help"))}
    given = set()
    for index, (_name, case, message) in enumerate(FIT_FLAG_CASES + FIT_FILE_CASES):
        if "unrecognized arguments" in message:
            continue
        folder = tmp_path / f"row{index}"
        folder.mkdir()
        given |= {value.split("=")[0] for value in case(folder) if value.startswith("--")}
    assert given == wanted
