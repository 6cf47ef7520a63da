"""Generate images from text prompts with FLUX.1 and TaylorSeer feature forecasting, or another caching method.

    python TaylorSeer-FLUX/sample.py --prompt "a red fox in the snow" --ckpt-dir pretrained_models/FLUX.1-dev
    python TaylorSeer-FLUX/sample.py --prompt-file prompts.txt --num-images-per-prompt 4 --output-dir samples/flux
    torchrun --nproc_per_node=8 TaylorSeer-FLUX/sample.py --prompt-file prompts.txt --output-dir samples/flux
    python TaylorSeer-FLUX/sample.py --model-name flux-schnell --ckpt-dir pretrained_models/FLUX.1-schnell
    python TaylorSeer-FLUX/sample.py --interval 1 --output-dir samples/flux-full      # the uncached model
    python TaylorSeer-FLUX/sample.py --test-FLOPs --interval 6                         # needs no weights
    python TaylorSeer-FLUX/sample.py --method toca --interval 5 --output-dir samples/flux-toca-n5
    python TaylorSeer-FLUX/sample.py --method teacache --teacache-thresh 0.6 --output-dir samples/flux-teacache

Image k (k = prompt_index * num_images_per_prompt + j) is drawn from its own seed, --seed + k, so it does not depend
on the batch size or the number of processes. Each image is written atomically as {output-dir}/{k:05d}.png as soon
as its batch is done; {output-dir}/metadata.jsonl records its settings just before (prompt, seed, size, steps,
guidance, the caching method and its settings under ``method``, and the weights by content: ``weights_id``) and its
SHA-256 just after. Folders written before ``--method`` existed (a ``taylorseer`` key) are read as TaylorSeer's.
Rerunning the same command skips the indices whose PNG exists and is intact; a rerun whose settings or weights
differ from the recorded ones for an existing PNG, or that finds a PNG with no record, is refused. A PNG whose
content no longer matches its checksum (truncated, replaced), or that does not decode at the run's size, is renamed
to ``{name}.damaged`` with a warning and made again. A batch whose output is NaN or inf saves nothing and ends the
run with one message naming the settings to check. Under torchrun the pending indices are split across the
processes (gloo on CPU, NCCL on CUDA), each writing its own files.

Weights: see taylorseer_flux/weights.py (a local black-forest-labs/FLUX.1-dev folder, or FLUX_DEV / FLUX_SCHNELL /
AE / FLUX_T5 / FLUX_CLIP); nothing is ever downloaded. The TaylorSeer defaults are the paper's FLUX setting
(N=6, O=2, E=3) with the reference's discarded step-0 feature (--derivative-start-step 2); --interval 1 runs the
plain model, as --method full does.

Methods (--method, see common/methods.py): --interval and --first-enhance are every method's schedule. Δ-DiT defaults
to the reference's FLUX variant: the whole single-stream stack bypassed by its residual at every cached step
(--cached-blocks = the transformer's single-stream blocks, --delta-boundary 1). TeaCache uses the published FLUX
coefficients. --test-FLOPs counts each step of the method's schedule on the meta device; TeaCache's steps depend on
the run, so a real TeaCache run prints its FLOPs at the end, from the steps it computed and skipped.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image
from tqdm import tqdm

from common.cli import (
    MAX_SEED,
    HelpFormatter,
    UsageError,
    add_taylorseer_args,
    check_output_folder,
    check_schedule_flags,
    finite_float,
    int_range,
    parse_device,
    run_cli,
    taylorseer_config_from_args,
)
from common.delta_dit import DeltaDiTConfig
from common.distributed import Distributed, setup_distributed
from common.images import save_grid, to_uint8
from common.integrity import check_finite, verify_png
from common.io import atomic_write, remove_stale_temps
from common.methods import (
    MethodConfig,
    add_method_args,
    describe,
    make_cache,
    method_config_from_args,
    method_record,
    warn_unused_method_flags,
)
from common.run_records import (
    RECORDS_FILE,
    append_records,
    check_consistent,
    damaged_outputs,
    read_records,
    record_adopted,
    record_written,
    set_aside_damaged,
)
from common.teacache import TeaCacheConfig
from taylorseer_flux.flops import method_flops_report, plain_step_flops, teacache_flops, teacache_step_flops
from taylorseer_flux.model import FLUX_PRESETS, FluxParams
from taylorseer_flux.pipeline import IMAGE_MULTIPLE, FluxImages, FluxTextToImage
from taylorseer_flux.text_encoders import T5_MAX_LENGTH
from taylorseer_flux.weights import (
    FLUX_MODELS,
    default_ckpt_dir,
    find_flux_weights,
    flux_weights_id,
    flux_weights_paths,
    transformer_params,
)

# BFL's flux.cli default prompt.
DEFAULT_PROMPT = (
    'a photo of a forest with mist swirling around the tree trunks. The word "FLUX" is painted over it in big, red '
    "brush strokes with visible texture"
)
# No float16: FLUX's and T5-XXL's activations overflow its range (diffusers clips them to run fp16 at all).
DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}
# Sizes the published models were trained around; smaller custom (test) transformers accept down to one patch.
PUBLISHED_SIZE_RANGE = (256, 2048)
CUSTOM_SIZE_RANGE = (IMAGE_MULTIPLE, 2048)
METADATA = RECORDS_FILE
# What TaylorSeer-FLUX/evaluate.py reads from every record.
REQUIRED_FIELDS = ("index", "file", "prompt", "seed")
# A contact sheet of the first images, in a sub-folder so that evaluate.py (which pairs the folder's own PNGs) never
# mistakes it for a sample.
OVERVIEW = Path("overview") / "grid.png"
OVERVIEW_IMAGES = 16
OVERVIEW_THUMBNAIL = 256
# Recorded for information only: moving the weights does not change the images (their content, weights_id, is compared).
UNCOMPARED_FIELDS = ("index", "file", "weights")
# What to check when an output is NaN or inf: the settings that can make it so, then the weights.
NON_FINITE_SUSPECTS = (
    "--guidance, --dtype (try --dtype float32) and the weights (--ckpt-dir, or FLUX_DEV / FLUX_SCHNELL / AE / "
    "FLUX_T5 / FLUX_CLIP): a damaged or mismatched checkpoint makes NaN"
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    prompts = parser.add_mutually_exclusive_group()
    prompts.add_argument("--prompt", default=None, help=f"one prompt; None = BFL's example prompt: {DEFAULT_PROMPT}")
    prompts.add_argument("--prompt-file", default=None, help="text file, one prompt per line (blank lines ignored)")
    parser.add_argument(
        "--model-name", choices=list(FLUX_MODELS), default="flux-dev", help="published model: defaults and weights"
    )
    parser.add_argument(
        "--ckpt-dir",
        default=None,
        help="local copy of black-forest-labs/FLUX.1-dev (or -schnell); None = "
        f"{default_ckpt_dir('flux-dev')} (or {default_ckpt_dir('flux-schnell')})",
    )
    size_help = f"in pixels, a multiple of {IMAGE_MULTIPLE} ({PUBLISHED_SIZE_RANGE[0]}..{PUBLISHED_SIZE_RANGE[1]})"
    parser.add_argument("--width", type=int, default=1024, help=f"image width {size_help}")
    parser.add_argument("--height", type=int, default=1024, help=f"image height {size_help}")
    parser.add_argument(
        "--num-steps", type=int_range(1), default=None, help="sampling steps; None = 50 for dev, 4 for schnell"
    )
    parser.add_argument(
        "--guidance", type=finite_float(0), default=3.5, help="distilled guidance scale (dev; schnell has none)"
    )
    parser.add_argument(
        "--max-sequence-length",
        type=int_range(1, T5_MAX_LENGTH),
        default=None,
        help=f"T5 tokens per prompt (at most {T5_MAX_LENGTH}); None = 512 for dev, 256 for schnell",
    )
    parser.add_argument("--seed", type=int_range(0, MAX_SEED), default=0, help="image k is drawn from seed + k")
    parser.add_argument(
        "--num-images-per-prompt", type=int_range(1), default=1, help="images per prompt, seeds consecutive"
    )
    parser.add_argument("--batch-size", type=int_range(1), default=1, help="images per forward pass on each process")
    parser.add_argument("--output-dir", default="samples/flux", help="folder of the PNGs and metadata.jsonl")
    parser.add_argument(
        "--device", default=None, help="torch device; None = cuda:LOCAL_RANK if CUDA is available, else cpu"
    )
    parser.add_argument(
        "--dtype",
        choices=["auto", *DTYPES],
        default="auto",
        help="dtype of every component; auto = bfloat16 on CUDA, float32 on CPU (no float16: FLUX's and T5-XXL's "
        "activations overflow it)",
    )
    parser.add_argument(
        "--offload",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="keep the components on the CPU and move each to the device only while it runs (one at a time)",
    )
    parser.add_argument(
        "--test-FLOPs",
        action="store_true",
        help="print the FLOPs of full compute and of --method for these settings and exit (needs no weights)",
    )
    add_taylorseer_args(parser, interval=6, max_order=2, first_enhance=3, derivative_start_step=2)
    add_method_args(parser, method="taylorseer", teacache_coefficients="flux")
    # The reference's FLUX Δ-DiT: the whole single-stream stack, at every cached step; its size comes from the model.
    parser.set_defaults(cached_blocks=None, delta_boundary=1.0)
    parser._option_string_actions["--cached-blocks"].help += "; None = the transformer's single-stream blocks"
    return parser


def read_prompts(path: str | Path) -> list[str]:
    """The non-blank lines of a UTF-8 prompt file, stripped; :class:`UsageError` if it is not readable UTF-8 text."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(
            f"--prompt-file {Path(path).absolute()} is not UTF-8 text ({exc.reason} at byte {exc.start}): "
            "save it as UTF-8"
        ) from None
    except OSError as exc:
        raise UsageError(
            f"--prompt-file {Path(path).absolute()} cannot be read ({exc.strerror}): check its permissions"
        ) from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def nearest_multiples(value: int, multiple: int = IMAGE_MULTIPLE) -> str:
    below = max(multiple, value // multiple * multiple)
    above = below + multiple if below < value else below
    return f"{below}" if below == above else f"{below} or {above}"


def check_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> MethodConfig:
    """Fill the model's defaults into unset flags, read the prompts, exit through ``parser.error`` on a bad flag;
    returns the config of ``args.method`` (None for full compute). Ranges and finiteness of single flags are
    argparse's (``type=``); this checks what depends on several."""
    # The TaylorSeer flags hold every method's schedule (--interval, --first-enhance): always checked.
    taylorseer = taylorseer_config_from_args(args, parser)
    spec = FLUX_MODELS[args.model_name]
    if args.num_steps is None:
        args.num_steps = spec.num_steps
    if args.max_sequence_length is None:
        args.max_sequence_length = spec.max_sequence_length
    warn_unused_method_flags(args, parser)
    # Unset: the whole single-stream stack of the published model, made the checkpoint's own once it is read.
    args.whole_single_stack = args.cached_blocks is None
    if args.whole_single_stack:
        args.cached_blocks = FLUX_PRESETS[spec.preset].depth_single_blocks
    config = method_config_from_args(args, parser)
    if args.method in ("taylorseer", "fora"):
        check_schedule_flags(taylorseer, args.num_steps, parser)
    for name in ("width", "height"):
        value = getattr(args, name)
        if value <= 0 or value % IMAGE_MULTIPLE:
            parser.error(
                f"--{name} {value} is not a positive multiple of {IMAGE_MULTIPLE} (8x autoencoder, 2x2 patches): "
                f"use --{name} {nearest_multiples(max(value, 1))}"
            )
    args.prompts = _prompts(args, parser)
    _check_last_seed(args, parser)
    if not args.test_FLOPs:
        try:
            parse_device(args.device)  # before any weights are read: a device this machine lacks is a typo
        except UsageError as err:
            parser.error(str(err))
    return config


def fit_to_model(args: argparse.Namespace, config: MethodConfig, params: FluxParams) -> MethodConfig:
    """``config`` for the transformer ``params``: Δ-DiT's default range becomes its single-stream stack, and a range
    longer than its stack is a :class:`UsageError` naming the largest value."""
    if not isinstance(config, DeltaDiTConfig):
        return config
    if args.whole_single_stack:
        config = replace(config, cached_blocks=params.depth_single_blocks)
        args.cached_blocks = config.cached_blocks
    depth = params.depth + params.depth_single_blocks
    if config.cached_blocks > depth:
        raise UsageError(
            f"--cached-blocks {config.cached_blocks} exceeds the {depth} blocks of this transformer ({params.depth} "
            f"double + {params.depth_single_blocks} single): use --cached-blocks <= {depth} (its single-stream "
            f"stack: {params.depth_single_blocks})"
        )
    return config


def is_plain(method: str, config: MethodConfig) -> bool:
    """Whether the run is the plain model: --method full, or TaylorSeer computing every step (--interval 1)."""
    return make_cache(method, config) is None


def method_label(method: str, config: MethodConfig) -> str:
    return "full compute" if is_plain(method, config) else describe(method, config)


def _check_last_seed(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Image k is drawn from --seed + k: the last one must still be a seed the generators take."""
    count = len(args.prompts) * args.num_images_per_prompt
    if args.seed + count - 1 > MAX_SEED:
        parser.error(
            f"--seed {args.seed}: the last of the {count} images would be drawn from seed {args.seed + count - 1}, "
            f"past the largest seed {MAX_SEED}; use --seed <= {MAX_SEED - count + 1}"
        )


def _prompts(args: argparse.Namespace, parser: argparse.ArgumentParser) -> list[str]:
    if args.prompt_file is None:
        prompt = DEFAULT_PROMPT if args.prompt is None else args.prompt.strip()
        if not prompt:
            parser.error("--prompt is empty")
        return [prompt]
    path = Path(args.prompt_file)
    if not path.is_file():
        parser.error(f"--prompt-file {path.absolute()} does not exist (or is not a file)")
    try:
        prompts = read_prompts(path)
    except UsageError as err:
        parser.error(str(err))
    if not prompts:
        parser.error(f"--prompt-file {path.absolute()} holds no prompts: write one prompt per line")
    return prompts


def check_image_size(width: int, height: int, params: FluxParams) -> None:
    """Refuse sizes outside the range the architecture makes sense for: 256..2048 pixels for the published models."""
    published = params in (FLUX_PRESETS["flux-dev"], FLUX_PRESETS["flux-schnell"])
    low, high = PUBLISHED_SIZE_RANGE if published else CUSTOM_SIZE_RANGE
    for name, value in (("width", width), ("height", height)):
        if not low <= value <= high:
            fix = low if value < low else high
            raise UsageError(
                f"--{name} {value} is outside {low}..{high} pixels, the range FLUX.1 works in: use --{name} {fix} "
                "(or another multiple of 16 in range)"
            )


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return DTYPES[name]


def print_flops(args: argparse.Namespace, config: MethodConfig) -> dict:
    """FLOPs of one image under these settings, counted on the meta device (no weights, no memory): every step of
    the method's schedule; for TeaCache, whose steps depend on the run, the cost of a computed and a skipped step."""
    spec = FLUX_MODELS[args.model_name]
    params = FLUX_PRESETS[spec.preset]
    check_image_size(args.width, args.height, params)
    config = fit_to_model(args, config, params)
    size = (args.width, args.height, args.max_sequence_length)
    label = method_label(args.method, config)
    extra = {"model": args.model_name, "width": args.width, "height": args.height,
             "text_len": args.max_sequence_length, "num_steps": args.num_steps}  # fmt: skip
    warm_up = (
        "" if is_plain(args.method, config) or not hasattr(config, "first_enhance") else f" E={config.first_enhance}"
    )
    print(
        f"{args.model_name}, {args.width}x{args.height}, {args.max_sequence_length} text tokens, {args.num_steps} "
        f"steps, {label}{warm_up}; per image, convention 'matmul' (every matmul of the transformer as 2 x MACs)"
    )
    if isinstance(config, TeaCacheConfig):
        return print_teacache_step_flops(spec.preset, size, label, extra)
    report = method_flops_report(spec.preset, *size, args.num_steps, args.method, config, batch=1)
    costs = " + ".join(f"{count} x {value / 1e12:.4f}" for value, count in report.step_costs().items())
    print(f"  full step:      {report.full_step_flops / 1e12:12.4f} TFLOPs")
    print(f"  steps:          {costs} TFLOPs")
    print(f"  baseline:       {report.baseline_flops / 1e12:12.4f} TFLOPs ({args.num_steps} full steps)")
    print(
        f"  {label}: {report.flops / 1e12:.4f} TFLOPs ({report.num_full_steps} full + {report.num_cached_steps} "
        f"{cached_steps_word(args.method)} steps)"
    )
    print(f"  speedup:        {report.speedup:12.3f}x")
    print(report.json_line(**extra))
    return {**report.as_dict(), **extra}


def print_teacache_step_flops(preset: str, size: tuple[int, int, int], label: str, extra: dict) -> dict:
    """TeaCache's --test-FLOPs: its step costs, and why its total is only known from a run."""
    full = plain_step_flops(preset, *size)
    computed, skipped = teacache_step_flops(preset, *size)
    print(f"  full step:      {full / 1e12:12.4f} TFLOPs")
    print(f"  computed step:  {computed / 1e12:12.4f} TFLOPs (a full step and the signal)")
    print(f"  skipped step:   {skipped / 1e12:12.4f} TFLOPs (embeddings, the signal and the final layer)")
    print(
        f"  {label}: its FLOPs depend on the run (which steps it skips); a real run counts them at the end, "
        "computed steps x the computed step + skipped steps x the skipped step"
    )
    record = {
        "convention": "matmul",
        "method": "teacache",
        "label": label,
        "tflops": None,
        "speedup": None,
        "full_step_tflops": full / 1e12,
        "computed_step_tflops": computed / 1e12,
        "skipped_step_tflops": skipped / 1e12,
        **extra,
    }
    print(json.dumps(record))
    return record


def cached_steps_word(method: str) -> str:
    """What a method's non-full steps are called in the summaries."""
    return {"taylorseer": "forecast", "fora": "reused", "teacache": "skipped"}.get(method, "cached")


def planned_full_steps(method: str, config: MethodConfig, num_steps: int) -> int | None:
    """Full steps of a ``num_steps``-step run, from the method's schedule; None for TeaCache (decided by the run)."""
    cache = make_cache(method, config)
    if cache is None:
        return num_steps
    if isinstance(config, TeaCacheConfig):
        return None
    cache.reset(num_steps)
    return sum(cache.plan_step(step) for step in range(num_steps))


@dataclass(frozen=True)
class ImageJob:
    index: int
    prompt_index: int
    image_in_prompt: int
    prompt: str
    seed: int


def plan_images(prompts: list[str], num_images_per_prompt: int, seed: int) -> list[ImageJob]:
    """Every image of the run: index k = prompt_index * num_images_per_prompt + j, seeded with seed + k."""
    jobs = []
    for p, prompt in enumerate(prompts):
        for j in range(num_images_per_prompt):
            index = p * num_images_per_prompt + j
            jobs.append(ImageJob(index, p, j, prompt, seed + index))
    return jobs


def png_path(folder: Path, index: int) -> Path:
    return folder / f"{index:05d}.png"


def image_record(job: ImageJob, settings: dict) -> dict:
    """One line of metadata.jsonl: everything that determines image ``job.index``."""
    return {"index": job.index, "file": png_path(Path(), job.index).name, "prompt_index": job.prompt_index,
            "image_in_prompt": job.image_in_prompt, "prompt": job.prompt, "seed": job.seed, **settings}  # fmt: skip


def run_settings(
    args: argparse.Namespace, config: MethodConfig, params: FluxParams, dtype: torch.dtype, device: torch.device
) -> dict:
    """The settings shared by every image of the run."""
    return {
        "model_name": args.model_name,
        "width": args.width,
        "height": args.height,
        "num_steps": args.num_steps,
        "guidance": args.guidance if params.guidance_embed else None,
        "max_sequence_length": args.max_sequence_length,
        "dtype": str(dtype).removeprefix("torch."),
        # The noise generator lives on the device, so CPU and CUDA runs draw different noise from the same seed.
        "noise_device": device.type,
        # The plain model is one setting however it is asked for (--method full, or TaylorSeer at --interval 1).
        "method": None if is_plain(args.method, config) else method_record(args.method, config),
    }


def read_metadata(folder: Path) -> dict[str, dict]:
    """File name -> record of ``folder``'s metadata.jsonl (in today's form, see :func:`upgrade_record`); a corrupt
    line is a :class:`UsageError` naming it."""
    return {name: upgrade_record(record) for name, record in read_records(folder / METADATA, REQUIRED_FIELDS).items()}


def upgrade_record(record: dict) -> dict:
    """A record written before --method existed, whose ``taylorseer`` key held the TaylorSeer settings (None: the
    plain model, factor dtype "auto" for the features' own), as today's ``method`` record of the same run, so that
    such a folder resumes instead of being refused as made with other settings."""
    if "taylorseer" not in record or "method" in record:
        return record
    upgraded = {key: value for key, value in record.items() if key != "taylorseer"}
    taylorseer = record["taylorseer"]
    if isinstance(taylorseer, dict):
        factor_dtype = None if taylorseer.get("factor_dtype") == "auto" else taylorseer.get("factor_dtype")
        taylorseer = {"method": "taylorseer", **taylorseer, "factor_dtype": factor_dtype}
    upgraded["method"] = taylorseer
    return upgraded


def damaged_pngs(folder: Path, existing: dict[str, dict], planned: dict[str, dict], size: tuple[int, int]) -> dict:
    """Name -> reason for the planned PNGs in ``folder`` that cannot be adopted: content differing from the recorded
    checksum, or (no checksum yet: killed between writing and recording) not decoding at ``size``."""
    return damaged_outputs(folder, existing, planned, verify=lambda path: verify_png(path, size))


def check_batch_finite(result: FluxImages, batch: list[ImageJob]) -> None:
    """A NaN or inf anywhere in a batch's latents or images ends the run before any of its PNGs is saved."""
    names = ", ".join(png_path(Path(), job.index).name for job in batch)
    check_finite(result.latents, f"The final latents of {names}", NON_FINITE_SUSPECTS)
    check_finite(result.images, f"The decoded image of {names}", NON_FINITE_SUSPECTS)


def save_png(image: torch.Tensor, path: Path) -> None:
    """(3, H, W) in [-1, 1] -> an RGB PNG, written atomically."""
    array = to_uint8(image[None])[0].permute(1, 2, 0).numpy()
    atomic_write(path, lambda temp: Image.fromarray(array).save(temp, format="PNG"))


@dataclass(frozen=True)
class ImageWriter:
    """Writes each image of a run with its record: the settings first (so that a PNG whose run was killed before its
    checksum is recorded still has known settings), then the PNG, atomically, then the record with its SHA-256."""

    folder: Path
    existing: dict[str, dict]
    """The records the run found (a settings record without checksum that is already there is not written again)."""
    planned: dict[str, dict]

    def write(self, job: ImageJob, image: torch.Tensor) -> Path:
        path = png_path(self.folder, job.index)
        record = self.planned[path.name]
        self.folder.mkdir(parents=True, exist_ok=True)  # only now: a run refused or failed before creates nothing
        if self.existing.get(path.name) != record:  # none yet, or one with the checksum of a file set aside
            append_records(self.folder / METADATA, {}, {path.name: record})
        save_png(image, path)
        record_written(self.folder / METADATA, record, path)
        return path


@dataclass
class RankStats:
    """What one process generated."""

    written: int = 0
    seconds: float = 0.0
    denoise_seconds: float = 0.0
    image_full_steps: int = 0
    """Full (for TeaCache: computed) steps of the batches, each counted once per image of its batch."""
    files: list[str] = field(default_factory=list)

    def add(self, result: FluxImages, files: list[str]) -> None:
        self.written += len(files)
        self.seconds += result.seconds
        self.denoise_seconds += result.denoise_seconds
        self.image_full_steps += len(files) * result.num_full_steps
        self.files += files


def generate(args: argparse.Namespace, config: MethodConfig, setup: Distributed) -> dict:
    """Check everything cheap first (output folder, weights present, sizes, the records of existing PNGs), then load
    and sample this rank's share."""
    folder = check_output_folder(args.output_dir, "--output-dir")
    weights = find_flux_weights(args.model_name, args.ckpt_dir)
    params = transformer_params(weights.transformer, args.model_name)
    check_image_size(args.width, args.height, params)
    config = fit_to_model(args, config, params)
    dtype = resolve_dtype(args.dtype, setup.device)

    settings = run_settings(args, config, params, dtype, setup.device)
    settings["weights_id"] = flux_weights_id(weights)
    settings["weights"] = flux_weights_paths(weights)
    jobs = plan_images(args.prompts, args.num_images_per_prompt, args.seed)
    planned = {png_path(Path(), job.index).name: image_record(job, settings) for job in jobs}
    existing = read_metadata(folder)
    check_consistent(folder, existing, planned, uncompared=UNCOMPARED_FIELDS)
    if setup.rank == 0:
        remove_stale_temps(folder)
        set_aside_damaged(folder, damaged_pngs(folder, existing, planned, (args.width, args.height)))
    setup.barrier()  # damaged PNGs are out of the way before any process lists what exists
    pending = [job for job in jobs if not png_path(folder, job.index).exists()]
    setup.barrier()  # every process has listed the existing PNGs before any new one is written
    if setup.rank == 0:
        record_adopted(folder / METADATA, existing, planned, [png_path(Path(), job.index).name for job in pending])

    # Global batches of consecutive pending indices, dealt round-robin: the same batches whatever the process count.
    batches = [pending[i : i + args.batch_size] for i in range(0, len(pending), args.batch_size)]
    mine = batches[setup.rank :: setup.world_size]
    stats = RankStats()
    if mine:
        pipe = FluxTextToImage.from_weights(
            weights,
            params,
            args.model_name,
            device=setup.device,
            dtype=dtype,
            offload=args.offload,
            max_sequence_length=args.max_sequence_length,
        )
        writer = ImageWriter(folder, existing, planned)
        sample_batches(pipe, mine, args, config, writer, stats, setup.rank == 0)
    setup.barrier()
    all_stats = [stats]
    if setup.initialized:
        all_stats = [None] * setup.world_size
        dist.all_gather_object(all_stats, stats)
    if setup.rank != 0:
        return asdict(stats)
    return report(args, config, params, folder, all_stats, len(jobs) - len(pending), setup.world_size)


def sample_batches(
    pipe: FluxTextToImage,
    batches: list[list[ImageJob]],
    args: argparse.Namespace,
    config: MethodConfig,
    writer: ImageWriter,
    stats: RankStats,
    show_progress: bool,
) -> None:
    """Sample each batch, check that it is finite, then write its PNGs."""
    with tqdm(total=sum(map(len, batches)), desc="images", unit="img", disable=not show_progress) as bar:
        for batch in batches:
            result = pipe(
                [job.prompt for job in batch],
                [job.seed for job in batch],
                width=args.width,
                height=args.height,
                num_steps=args.num_steps,
                guidance=args.guidance,
                config=config,
                method=args.method,
                progress=show_progress,
            )
            check_batch_finite(result, batch)
            files = [writer.write(job, image).name for job, image in zip(batch, result.images, strict=True)]
            stats.add(result, files)
            bar.update(len(batch))


def save_overview(folder: Path) -> Path | None:
    """``overview/grid.png``: the folder's first 16 images (by index), 4 per row, at most 256 pixels a side, so a run
    can be judged at a glance; None when the folder holds no image."""
    paths = sorted(folder.glob("[0-9]*.png"))[:OVERVIEW_IMAGES]
    if not paths:
        return None
    thumbnails = []
    for path in paths:
        with Image.open(path) as image:
            image = image.convert("RGB")
            image.thumbnail((OVERVIEW_THUMBNAIL, OVERVIEW_THUMBNAIL))
            pixels = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float()
            thumbnails.append(pixels / 127.5 - 1)  # [-1, 1] as save_grid expects
    return save_grid(torch.stack(thumbnails), folder / OVERVIEW, nrow=4)


def report(
    args: argparse.Namespace,
    config: MethodConfig,
    params: FluxParams,
    folder: Path,
    all_stats: list[RankStats],
    skipped: int,
    world_size: int,
) -> dict:
    """Rank 0's summary of the whole run: images, wall time per image, the method and its step counts (for TeaCache
    the average over this run's images, and the FLOPs they cost)."""
    written = sum(s.written for s in all_stats)
    seconds = sum(s.seconds for s in all_stats)
    denoise_seconds = sum(s.denoise_seconds for s in all_stats)
    label = method_label(args.method, config)
    full = planned_full_steps(args.method, config, args.num_steps)
    if full is None:  # TeaCache: what the batches of this run computed
        full = sum(s.image_full_steps for s in all_stats) / written if written else None
    summary = {
        "output_dir": str(folder),
        "metadata": str(folder / METADATA),
        "written": written,
        "skipped": skipped,
        "world_size": world_size,
        "method": "full" if is_plain(args.method, config) else args.method,
        "label": label,
        "seconds_per_image": seconds / written if written else None,
        "denoise_seconds_per_image": denoise_seconds / written if written else None,
        "full_steps": full,
        "forecast_steps": None if full is None else args.num_steps - full,
        "files": sorted(f for s in all_stats for f in s.files),
    }
    print(
        f"wrote {written} images to {folder}/ on {world_size} process(es); skipped {skipped} whose PNG already existed"
    )
    if written:
        print(
            f"wall time per image: {summary['seconds_per_image']:.3f} s (sampling loop "
            f"{summary['denoise_seconds_per_image']:.3f} s; text encoding and decoding included in the total)"
        )
    word = "forecast" if is_plain(args.method, config) else cached_steps_word(args.method)
    if isinstance(config, TeaCacheConfig):
        summary.update(report_teacache(args, params, summary, word))
    else:
        print(f"{label}: {full:g} full + {args.num_steps - full:g} {word} steps of {args.num_steps}")
    overview = save_overview(folder)
    summary["overview"] = None if overview is None else str(overview)
    if overview is not None:
        print(f"overview of the first images: {overview}")
    print(json.dumps({k: v for k, v in summary.items() if k != "files"}))
    return summary


def report_teacache(args: argparse.Namespace, params: FluxParams, summary: dict, word: str) -> dict:
    """TeaCache's steps and FLOPs per image, counted from the steps this run's batches computed and skipped (each
    batch decides for all its images), with each kind of step counted once on the meta device."""
    if summary["full_steps"] is None:
        print(f"{summary['label']}: no image made in this run, so no step of it to count")
        return {"tflops": None, "full_tflops": None, "speedup": None}
    full, skipped = summary["full_steps"], summary["forecast_steps"]
    size = (args.width, args.height, args.max_sequence_length)
    step_flops = teacache_step_flops(params, *size)
    baseline = args.num_steps * plain_step_flops(params, *size)
    flops = teacache_flops(full, skipped, step_flops)
    print(
        f"{summary['label']}: {full:g} computed + {skipped:g} {word} steps of {args.num_steps} per image (average "
        f"over this run's images); FLOPs per image {flops / 1e12:.4f} TFLOPs against {baseline / 1e12:.4f} for full "
        f"compute ({baseline / flops:.3f}x), counted as computed x {step_flops[0] / 1e12:.4f} + {word} x "
        f"{step_flops[1] / 1e12:.4f} TFLOPs"
    )
    return {"tflops": flops / 1e12, "full_tflops": baseline / 1e12, "speedup": baseline / flops}


def main(args: argparse.Namespace, config: MethodConfig) -> dict:
    """Generate (on this process: one rank of a torchrun job, or alone) or count FLOPs; returns the summary."""
    if args.test_FLOPs:
        return print_flops(args, config)
    setup = setup_distributed(args.device)
    try:
        return generate(args, config, setup)
    finally:
        setup.close()


def cli(argv: list[str] | None = None) -> dict:
    """Parse, validate and run; a missing file or unusable setting ends in one ``error:`` message and exit code 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    config = check_args(args, parser)
    return run_cli(main, args, config)


if __name__ == "__main__":
    cli()
