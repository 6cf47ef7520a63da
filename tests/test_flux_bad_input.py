"""Every flag and file input of TaylorSeer-FLUX/sample.py and evaluate.py, given a bad value: exit code 2, one
``error:`` line that names the fix, and nothing written (tests/cli_testing.assert_refused). The coverage tests at the
end fail when a flag is added to either script without a row here."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from cli_testing import assert_refused
from flux_testing import save_tiny_flux_checkpoint
from PIL import Image

from common.cli import MAX_SEED
from taylorseer_flux import evaluate, sample
from taylorseer_flux.pipeline import FluxTextToImage

pytestmark = pytest.mark.usefixtures("one_thread")

WEIGHT_VARIABLES = ("FLUX_DEV", "FLUX_SCHNELL", "AE", "FLUX_T5", "FLUX_CLIP")
# Refused before any output exists whoever runs the tests; root writes into read-only folders.
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_tiny_flux_checkpoint(tmp_path_factory.mktemp("flux-dev"))


@pytest.fixture(autouse=True)
def no_weight_variables(monkeypatch):
    """The components come from --ckpt-dir only, whatever the environment of the test run says."""
    for name in WEIGHT_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def row_id(value) -> str:
    """A table row's flags as its test id."""
    return " ".join(value) if isinstance(value, list) else ""


def write_inputs(tmp_path) -> None:
    """The files the rows below name: prompt files, a file where a folder is expected, a read-only folder."""
    (tmp_path / "empty.txt").write_text("\n   \n\n")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    (tmp_path / "prompts.txt").write_text("a cat\na dog\n")
    (tmp_path / "folder").mkdir()
    (tmp_path / "file").write_text("not a folder")
    (tmp_path / "read-only").mkdir()
    (tmp_path / "read-only").chmod(0o555)


# --------------------------------------------------------------------------------------------------- sample.py

SAMPLE_BAD_INPUTS = [
    # (extra flags, fragment of the one error line)
    (["--prompt", "  "], "--prompt is empty"),
    (["--prompt", "a cat", "--prompt-file", "{tmp}/prompts.txt"], "not allowed with argument"),
    (["--prompt-file", "{tmp}/missing.txt"], "missing.txt does not exist (or is not a file)"),
    (["--prompt-file", "{tmp}/folder"], "folder does not exist (or is not a file)"),
    (["--prompt-file", "{tmp}/empty.txt"], "empty.txt holds no prompts: write one prompt per line"),
    (["--prompt-file", "{tmp}/latin1.txt"], "latin1.txt is not UTF-8 text (invalid continuation byte at byte 3): save"),
    (["--model-name", "flux-pro"], "argument --model-name: invalid choice: 'flux-pro'"),
    (["--model-name", "flux-schnell"], "--model-name flux-schnell does not match the transformer"),
    (["--ckpt-dir", "{tmp}/missing"], "FLUX.1-dev weights not found; nothing is downloaded"),
    (["--width", "40"], "--width 40 is not a positive multiple of 16 (8x autoencoder, 2x2 patches): use --width 32 or"),
    (["--width", "wide"], "argument --width: invalid int value: 'wide'"),
    (["--width", "4096"], "--width 4096 is outside 16..2048 pixels"),
    (["--height", "0"], "--height 0 is not a positive multiple of 16"),
    (["--height", "-32"], "--height -32 is not a positive multiple of 16"),
    (["--num-steps", "0"], "argument --num-steps: expected an integer >= 1, got 0"),
    (["--num-steps", "4.5"], "argument --num-steps: expected an integer >= 1, got '4.5'"),
    (["--guidance", "nan"], "argument --guidance: expected a finite number >= 0, got 'nan'"),
    (["--guidance", "inf"], "argument --guidance: expected a finite number >= 0, got 'inf'"),
    (["--guidance", "-1"], "argument --guidance: expected a finite number >= 0, got -1"),
    (["--guidance", "high"], "argument --guidance: expected a finite number >= 0, got 'high'"),
    (["--max-sequence-length", "0"], "argument --max-sequence-length: expected an integer in 1..512, got 0"),
    (["--max-sequence-length", "600"], "argument --max-sequence-length: expected an integer in 1..512, got 600"),
    (["--seed", "-1"], f"argument --seed: expected an integer in 0..{MAX_SEED}, got -1"),
    (["--seed", str(MAX_SEED + 1)], f"argument --seed: expected an integer in 0..{MAX_SEED}, got {MAX_SEED + 1}"),
    (["--seed", str(MAX_SEED), "--num-images-per-prompt", "2"],
     f"past the largest seed {MAX_SEED}; use --seed <= {MAX_SEED - 1}"),
    (["--num-images-per-prompt", "0"], "argument --num-images-per-prompt: expected an integer >= 1, got 0"),
    (["--batch-size", "0"], "argument --batch-size: expected an integer >= 1, got 0"),
    (["--output-dir", "{tmp}/file"], "exists and is not a folder: choose another --output-dir"),
    (["--output-dir", "{tmp}/file/out"], "is a file; choose another --output-dir"),
    (["--device", "cuda:99"], "--device cuda:99"),
    (["--device", "gpu"], "--device 'gpu' is not a torch device: use cpu, cuda or cuda:N"),
    (["--dtype", "float16"], "argument --dtype: invalid choice: 'float16' (choose from 'auto', 'bfloat16', 'float32')"),
    (["--offload=yes"], "argument --offload/--no-offload: ignored explicit argument 'yes'"),
    (["--test-FLOPs=1"], "argument --test-FLOPs: ignored explicit argument '1'"),
    (["--test-FLOPs", "--width", "4096"], "--width 4096 is outside 256..2048 pixels"),
    (["--interval", "0"], "invalid TaylorSeer setting: interval must be >= 1"),
    (["--max-order", "-1"], "invalid TaylorSeer setting: max_order must be >= 0"),
    (["--first-enhance", "0"], "invalid TaylorSeer setting: first_enhance must be >= 1"),
    (["--derivative-start-step", "3"], "would run as plain reuse (FORA): use a --derivative-start-step <= 2"),
    (["--derivative-start-step", "-1"], "invalid TaylorSeer setting: derivative_start_step must be >= 0"),
    (["--factor-dtype", "int8"], "argument --factor-dtype: invalid choice: 'int8'"),
    (["--forecaster", "spline"], "argument --forecaster: invalid choice: 'spline'"),
    (["--hermite-scale", "3"], "--hermite-scale: expected a finite number > 0 and <= 2, got 3"),
    (["--full-steps", "0"], "--full-steps: expected an integer >= 1, got 0"),
    (["--placement", "random"], "argument --placement: invalid choice: 'random'"),
    (["--placement-power", "0.5"], "--placement-power sets the late-dense placement"),
    # 4 steps: step 7 does not exist.
    (["--placement", "list", "--full-step-list", "0,7"], "past the last step 3"),
    (["--method", "pab"], "argument --method: invalid choice: 'pab'"),
    (["--method", "delta-dit", "--cached-blocks", "0"], "argument --cached-blocks: expected an integer >= 1, got 0"),
    # The tiny checkpoint has 1 double + 1 single block; refused once its config is read, before any weight is loaded.
    (["--method", "delta-dit", "--cached-blocks", "3"],
     "--cached-blocks 3 exceeds the 2 blocks of this transformer (1 double + 1 single): use --cached-blocks <= 2"),
    (["--test-FLOPs", "--width", "256", "--height", "256", "--method", "delta-dit", "--cached-blocks", "58"],
     "--cached-blocks 58 exceeds the 57 blocks of this transformer (19 double + 38 single)"),
    (["--delta-boundary", "1.5"], "argument --delta-boundary: expected a finite number >= 0 and <= 1, got 1.5"),
    (["--fresh-ratio", "nan"], "argument --fresh-ratio: expected a finite number >= 0 and <= 1, got 'nan'"),
    (["--fresh-ratio", "-0.1"], "argument --fresh-ratio: expected a finite number >= 0 and <= 1, got -0.1"),
    (["--toca-score", "attention"], "argument --toca-score: invalid choice: 'attention'"),
    (["--layer-schedule=yes"], "argument --layer-schedule/--no-layer-schedule: ignored explicit argument 'yes'"),
    (["--teacache-thresh", "-0.1"], "argument --teacache-thresh: expected a finite number >= 0, got -0.1"),
    (["--teacache-thresh", "inf"], "argument --teacache-thresh: expected a finite number >= 0, got 'inf'"),
    (["--teacache-coefficients", "sdxl"], "argument --teacache-coefficients: "),
]  # fmt: skip


def sample_argv(checkpoint, output) -> list[str]:
    """4 steps at 48x32: with the default N=6 O=2 E=3, steps 0-2 are full and step 3 is forecast."""
    return ["--ckpt-dir", str(checkpoint), "--width", "48", "--height", "32", "--num-steps", "4",
            "--max-sequence-length", "16", "--device", "cpu", "--output-dir", str(output)]  # fmt: skip


@pytest.mark.parametrize(("extra", "message"), SAMPLE_BAD_INPUTS, ids=row_id)
def test_sample_refuses_bad_input(extra, message, checkpoint, tmp_path, capsys) -> None:
    write_inputs(tmp_path)
    extra = [value.format(tmp=tmp_path) for value in extra]
    assert_refused(sample.cli, [*sample_argv(checkpoint, tmp_path / "out"), *extra], message, capsys, watch=tmp_path)


@pytest.mark.parametrize(
    ("variable", "message"),
    [("AE", "autoencoder: AE="), ("FLUX_T5", "T5-XXL text encoder: FLUX_T5="), ("FLUX_CLIP", "CLIP-L text encoder:")],
)
def test_sample_refuses_weight_variables_naming_nothing(variable, message, checkpoint, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(variable, str(tmp_path / "missing"))
    assert_refused(sample.cli, sample_argv(checkpoint, tmp_path / "out"), message, capsys, watch=tmp_path)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_sample_refuses_cuda_without_a_gpu(checkpoint, tmp_path, capsys) -> None:
    argv = [*sample_argv(checkpoint, tmp_path / "out"), "--device", "cuda"]
    assert_refused(sample.cli, argv, "--device cuda: no CUDA GPU is visible on this machine; use --device cpu", capsys,
                   watch=tmp_path)  # fmt: skip


def test_pipeline_refuses_non_finite_guidance(checkpoint) -> None:
    """The Python API too: a NaN guidance would embed NaN into every block and give black images."""
    pipe = FluxTextToImage.from_pretrained("flux-dev", checkpoint, max_sequence_length=16)
    with pytest.raises(ValueError, match="guidance must be a finite number, got nan"):
        pipe(["a cat"], [0], width=32, height=32, num_steps=1, guidance=float("nan"))


@pytest.mark.skipif(IS_ROOT, reason="root writes into read-only folders")
def test_sample_refuses_a_read_only_output_dir(checkpoint, tmp_path, capsys) -> None:
    write_inputs(tmp_path)
    argv = [*sample_argv(checkpoint, tmp_path / "read-only" / "out")]
    assert_refused(sample.cli, argv, "refuses new files", capsys, watch=tmp_path)


def test_sample_prompt_file_that_cannot_be_read(checkpoint, tmp_path, monkeypatch, capsys) -> None:
    """A prompt file the process may not read (root reads everything, so the refusal is simulated)."""
    write_inputs(tmp_path)

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(sample.Path, "read_text", refuse)
    argv = [*sample_argv(checkpoint, tmp_path / "out"), "--prompt-file", str(tmp_path / "prompts.txt")]
    assert_refused(sample.cli, argv, "prompts.txt cannot be read (Permission denied): check its permissions", capsys,
                   watch=tmp_path)  # fmt: skip


# ------------------------------------------------------------------------------------------------- evaluate.py

SIZE = 16


def write_folder(folder, count: int = 2, size: int = SIZE, prompts: tuple[str, ...] = ("a cat", "a dog")) -> None:
    """PNGs and metadata.jsonl as sample.py writes them."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    for index in range(count):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{index:05d}.png")
    lines = [json.dumps({"index": i, "file": f"{i:05d}.png", "prompt": prompts[i], "seed": i}) for i in range(count)]
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")


def truncate(path) -> None:
    path.write_bytes(path.read_bytes()[:-60])


def write_evaluate_inputs(tmp_path) -> None:
    """reference/ and candidate/ that evaluate fine, the prompt files, and the variants the rows break."""
    write_inputs(tmp_path)
    write_folder(tmp_path / "reference")
    write_folder(tmp_path / "candidate")
    (tmp_path / "no-pairs").mkdir()
    write_folder(tmp_path / "smaller", size=8)
    write_folder(tmp_path / "truncated-candidate")
    truncate(tmp_path / "truncated-candidate" / "00001.png")
    write_folder(tmp_path / "truncated-reference")
    truncate(tmp_path / "truncated-reference" / "00000.png")
    write_folder(tmp_path / "other-prompts", prompts=("a cat", "a horse"))
    write_folder(tmp_path / "corrupt-records")
    (tmp_path / "corrupt-records" / "metadata.jsonl").write_text('{"index": 0, "prompt": \n')
    write_folder(tmp_path / "latin1-records")
    (tmp_path / "latin1-records" / "metadata.jsonl").write_bytes(
        '{"index": 0, "prompt": "caf\xe9"}\n'.encode("latin-1")
    )
    (tmp_path / "table.md").mkdir()


EVALUATE_BAD_INPUTS = [
    # (flags replacing the defaults' folders or added to them, fragment of the one error line)
    (["--reference-dir", "{tmp}/missing"], "--reference-dir: reference folder not found"),
    (["--reference-dir", "{tmp}/file"], "--reference-dir: reference folder not found"),
    (["--reference-dir", "{tmp}/truncated-reference"], "truncated-reference/00000.png"),
    (["--candidate-dir", "{tmp}/missing"], "--candidate-dir: candidate folder not found"),
    (["--candidate-dir", "{tmp}/no-pairs"], "no image pairs"),
    (["--candidate-dir", "{tmp}/smaller"], "00000.png: reference is 16x16 but"),
    (["--candidate-dir", "{tmp}/truncated-candidate"], "cannot read image {tmp}/truncated-candidate/00001.png"),
    (["--candidate-dir", "{tmp}/other-prompts"], "00001.png has different prompts in"),
    (["--candidate-dir", "{tmp}/corrupt-records"], "metadata.jsonl:1: not JSON"),
    (["--candidate-dir", "{tmp}/latin1-records"], "metadata.jsonl is not UTF-8 text"),
    (["--prompt-file", "{tmp}/missing.txt"], "--prompt-file {tmp}/missing.txt not found (or not a file)"),
    (["--prompt-file", "{tmp}/folder"], "--prompt-file {tmp}/folder not found (or not a file)"),
    (["--prompt-file", "{tmp}/empty.txt"], "empty.txt holds no prompts: write one prompt per line"),
    (["--prompt-file", "{tmp}/latin1.txt"], "latin1.txt is not UTF-8 text (invalid continuation byte at byte 3): save"),
    (["--num-images-per-prompt", "0"], "argument --num-images-per-prompt: expected an integer >= 1, got 0"),
    (["--lpips-net", "resnet"], "argument --lpips-net: invalid choice: 'resnet'"),
    (["--batch-size", "0"], "argument --batch-size: expected an integer >= 1, got 0"),
    (["--batch-size", "many"], "argument --batch-size: expected an integer >= 1, got 'many'"),
    (["--device", "cuda:99"], "--device cuda:99"),
    (["--device", "gpu"], "--device 'gpu' is not a torch device"),
    (["--output", "{tmp}/metrics.txt"], "--output {tmp}/metrics.txt must end in .json"),
    (["--output", "{tmp}/folder.json"], "is a folder: give a file name"),
    (["--output", "{tmp}/file/metrics.json"], "{tmp}/file is a file; choose another --output"),
    (["--output", "{tmp}/table.json"], "the table's path {tmp}/table.md is a folder; choose another --output"),
    (["--progress=yes"], "argument --progress/--no-progress: ignored explicit argument 'yes'"),
    # A metric model the user named must load: a typo must not quietly turn a metric into null.
    (["--clip-model", "{tmp}/missing-clip"], "no CLIP model folder"),
    (["--image-reward", "{tmp}/missing.pt"], "ImageReward"),
    (["--image-reward", "{tmp}/prompts.txt", "--image-reward-med-config", "{tmp}/missing.json"], "ImageReward"),
    (["--lpips-weights", "{tmp}/missing.pth"], "LPIPS backbone weights (alexnet-owt-7be5be79.pth) not found at"),
]  # fmt: skip


def evaluate_argv(tmp_path, extra: list[str]) -> list[str]:
    """The good folders, unless ``extra`` names others (argparse takes the last value)."""
    argv = ["--reference-dir", str(tmp_path / "reference"), "--candidate-dir", str(tmp_path / "candidate")]
    return [*argv, "--device", "cpu", "--no-progress", *extra]


@pytest.mark.parametrize(("extra", "message"), EVALUATE_BAD_INPUTS, ids=row_id)
def test_evaluate_refuses_bad_input(extra, message, tmp_path, capsys) -> None:
    write_evaluate_inputs(tmp_path)
    (tmp_path / "folder.json").mkdir()
    extra = [value.format(tmp=tmp_path) for value in extra]
    message = message.format(tmp=tmp_path)
    assert_refused(evaluate.cli, evaluate_argv(tmp_path, extra), message, capsys, watch=tmp_path)


def test_evaluate_refuses_a_missing_required_folder(tmp_path, capsys) -> None:
    argv = ["--candidate-dir", str(tmp_path), "--device", "cpu"]
    assert_refused(evaluate.cli, argv, "the following arguments are required: --reference-dir", capsys, watch=tmp_path)


def test_evaluate_without_metric_models_warns_and_reports_null(tmp_path, capsys, monkeypatch) -> None:
    """By design (see evaluate.py's docstring) a metric model that was not named and is not at its default place is
    one warning and a null metric while the others run; everything else is computed and written."""
    for env in ("TAYLORSEER_CLIP_MODEL", "TAYLORSEER_IMAGE_REWARD", "TAYLORSEER_LPIPS_WEIGHTS"):
        monkeypatch.delenv(env, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.chdir(tmp_path)  # no pretrained_models/ here
    write_evaluate_inputs(tmp_path)
    output = tmp_path / "metrics.json"
    record = evaluate.cli(evaluate_argv(tmp_path, ["--output", str(output)]))
    err = capsys.readouterr().err
    for warning in ("CLIP score skipped (null)", "ImageReward skipped (null)", "LPIPS skipped (null)"):
        assert err.count(warning) == 1, err
    candidate = record["candidates"][0]
    assert candidate["psnr"] == 100.0 and candidate["lpips"] is None and candidate["clip_score"] is None
    assert json.loads(output.read_text()) == record


# ------------------------------------------------------------------------------------------------- coverage


def flags(rows) -> set[str]:
    return {value.split("=")[0] for extra, _ in rows for value in extra if value.startswith("--")}


def parser_flags(parser) -> set[str]:
    """Every option of ``parser`` but --help and the --no-X halves of boolean flags."""
    options = {option for action in parser._actions for option in action.option_strings}
    return {option for option in options if option.startswith("--") and not option.startswith(("--no-", "--help"))}


def test_every_sample_flag_has_a_bad_input_row() -> None:
    assert parser_flags(sample.build_parser()) == flags(SAMPLE_BAD_INPUTS)


def test_every_evaluate_flag_has_a_bad_input_row() -> None:
    assert parser_flags(evaluate.build_parser()) == flags(EVALUATE_BAD_INPUTS)
