"""Text-to-video with HunyuanVideo and a caching method: upstream's sample_video.py flags plus VBench batch sampling.

    # the TaylorSeer paper's setting (N=5, O=1, E=1 are the defaults; --method full is the uncached model)
    python TaylorSeer-HunyuanVideo/sample_video.py --prompt "A cat walks on the grass, realistic" \\
        --video-size 480 640 --video-length 65 --infer-steps 50 --seed 42 --flow-reverse --use-cpu-offload
    # FLOPs of that run, no weights needed
    python TaylorSeer-HunyuanVideo/sample_video.py --video-size 480 640 --video-length 65 --test-FLOPs
    # another method, e.g. the paper's baselines: --method fora, toca (--fresh-ratio 0.1), duca, delta-dit, teacache
    python TaylorSeer-HunyuanVideo/sample_video.py --method teacache --teacache-thresh 0.4 --prompt "..." ...
    # VBench: 5 videos per prompt named "{prompt}-{k}.mp4", split over 8 GPUs, resumable
    torchrun --nproc_per_node=8 TaylorSeer-HunyuanVideo/sample_video.py --prompt-json VBench_full_info.json \\
        --video-size 480 640 --video-length 65 --save-path vbench_videos

--method picks the training-free method (common/methods.py), each with its own flags: TaylorSeer and FORA
(--interval, --max-order, --first-enhance, ...), Δ-DiT (--interval, --cached-blocks, --delta-boundary), ToCa and DuCa
(--interval, --fresh-ratio, --toca-score, --layer-schedule), TeaCache (--teacache-thresh, --teacache-coefficients).
HunyuanVideo's defaults: TaylorSeer N=5 O=1 E=1 (the paper); Δ-DiT bypasses the whole single-stream stack at every
cached step (--cached-blocks = the model's single-stream blocks, --delta-boundary 1: the reference's FLUX variant, the
only Δ-DiT the reference code has); ToCa/DuCa recompute 10% of the tokens (the reference's HunyuanVideo ToCa/DuCa
setting, here with the "norm" score where the reference draws them at random: --toca-score random); TeaCache uses
TeaCache4HunyuanVideo's published polynomial and its default threshold 0.15 (about 2.1x there; 0.1 is its slower,
about 1.6x setting; the TaylorSeer paper's HunyuanVideo row uses 0.4). A flag of another method than the one chosen is
ignored with a warning. --test-FLOPs counts a deterministic method over its real schedule; TeaCache skips steps by
the run's input, so it prints the cost of a computed and of a skipped step, and every run ends with its FLOPs (from
each video's step counts) in its summary.

Weights are read from --model-base (default $MODEL_BASE, else ckpts/ in the working directory: upstream's ckpts/
layout or the diffusers layout of hunyuanvideo-community/HunyuanVideo; see weights.py) and never downloaded: a missing
component ends the run with one message listing each expected path. With --prompt, --num-videos videos use seeds
seed, seed+1, ... and are saved as {save-path}/seed{seed}_{prompt}.mp4 (the prompt cut to 100 characters, and to the
255 bytes a file name may have). With --prompt-json (VBench's full-info JSON: a list of objects with "prompt_en"),
prompts index-start (inclusive) to index-end (exclusive) each get --num-videos-per-prompt videos with seeds
seed .. seed+k-1, saved as {save-path}/{prompt}-{k}.mp4, VBench's naming.

{save-path}/metadata.jsonl records the settings of every video (common/run_records.py), the caching method with all
its settings, the weights by content (weights_id), and each mp4's SHA-256 once it is written; in both modes a video
already there is skipped when it was made with this run's method, settings and weights, and the run is refused when it
was made with others (another method included) or has no record. A video whose content no longer matches its checksum
(truncated, replaced), or that has none and does not decode to the run's frames and size, is renamed to {name}.damaged
with a warning and made again. Every mp4 is written under a temporary name and renamed, so an interrupted run leaves
no partial video and a rerun resumes to the same files. A video whose latents or frames hold NaN or inf is not saved:
the run ends with one message naming the settings to check.
Under torchrun the pending videos are split over the ranks (gloo on CPU, NCCL on GPU) in contiguous chunks, so that
the consecutive seeds of one prompt stay on one rank.
With --ulysses-degree K, groups of K consecutive ranks make each video together (Ulysses sequence parallelism: every
rank holds 1/K of the video tokens and the method's cache of its shard; TeaCache's skip signal is gathered, so every
rank takes the same decision); the groups split the videos.

    # one video on 8 GPUs: sequence parallel, cache speedup x parallel speedup
    torchrun --nproc_per_node=8 TaylorSeer-HunyuanVideo/sample_video.py --ulysses-degree 8 --prompt "..." \\
        --video-size 480 640 --video-length 65
A "/" (or NUL) in a prompt becomes "_" in its file name, so that no prompt can name a sub-folder or a path outside
--save-path, and so does a leading ".", so that no video is hidden or taken for a killed write's temporary file. In
VBench mode such a prompt's name also gets "~" and 8 hex digits of the prompt's SHA-256 ("a cat_dog~1a2b3c4d-0.mp4"),
so that two prompts that differ only there ("a cat/dog", "a cat_dog") keep two files (VBench cannot look up a prompt
holding "/" under any file name); every other prompt keeps VBench's exact name. Two different videos planned under
one name are refused before anything runs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

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
)
from common.distributed import Distributed, launched_world_size, setup_distributed
from common.integrity import check_finite
from common.io import remove_stale_temps
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
    check_consistent,
    damaged_outputs,
    read_records,
    record_written,
    set_aside_damaged,
    sync_records,
)
from common.sequence_parallel import SequenceParallel
from common.video_io import verify_video, video_to_uint8_frames, write_video
from taylorseer_hunyuanvideo.flops import RunFlops, hunyuan_latent_shape, hunyuan_method_flops, teacache_step_flops
from taylorseer_hunyuanvideo.model import HUNYUAN_VIDEO_PRESETS, HunyuanVideoParams
from taylorseer_hunyuanvideo.pipeline import HunyuanVideoPipeline, check_video_size
from taylorseer_hunyuanvideo.vbench_info import read_vbench_prompts
from taylorseer_hunyuanvideo.weights import (
    PRECISIONS,
    check_model_files,
    default_model_base,
    find_model_files,
    load_components,
    weights_id,
)

MAX_FILE_NAME_BYTES = 255
SINGLE_PROMPT_NAME_CHARS = 100
"""Upstream names single-prompt videos after the first 100 characters of the prompt."""
NAME_HASH_CHARS = 8
"""Hex digits of the prompt's SHA-256 in the VBench name of a prompt that is not a safe file name as it stands."""
# Recorded for information only: where the weights lie does not change the videos (their content, weights_id, does).
UNCOMPARED_FIELDS = ("file", "weights")
NON_FINITE_SUSPECTS = (
    "--embedded-cfg-scale and --cfg-scale, --precision and --vae-precision (fp16 overflows: try bf16 or fp32), and "
    "the weights (--model-base, --dit-weight): a damaged or mismatched checkpoint makes NaN"
)
FP16_MAX = torch.finfo(torch.float16).max
TEACACHE_THRESH = 0.15
"""TeaCache4HunyuanVideo's default rel_l1_thresh (about 2.1x there; 0.1 gives about 1.6x)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    prompts = parser.add_argument_group("prompts")
    prompts.add_argument("--prompt", help="text prompt of the video(s); or use --prompt-json")
    prompts.add_argument("--neg-prompt", help="negative prompt for --cfg-scale > 1; None = upstream's default one")
    prompts.add_argument(
        "--num-videos", type=int_range(1), help="videos of --prompt, seeds seed, seed+1, ... (default: 1)"
    )
    prompts.add_argument(
        "--prompt-json", type=Path, help='VBench full-info JSON (a list of {"prompt_en": ...}): VBench batch mode'
    )
    prompts.add_argument(
        "--index-start", type=int_range(0), help="first prompt of --prompt-json (inclusive, 0-based; default: 0)"
    )
    prompts.add_argument(
        "--index-end",
        type=int_range(1),
        help="end of the prompt range of --prompt-json (exclusive); None = to the last prompt",
    )
    prompts.add_argument(
        "--num-videos-per-prompt",
        type=int_range(1),
        help="VBench mode: videos per prompt, seeds seed .. seed+k-1 (default: 5)",
    )

    video = parser.add_argument_group("video and sampler")
    video.add_argument(
        "--video-size",
        type=int,
        nargs=2,
        default=[720, 1280],
        metavar=("HEIGHT", "WIDTH"),
        help="pixels, multiples of 16 (upstream's default; the TaylorSeer paper uses 480 640)",
    )
    video.add_argument(
        "--video-length", type=int, default=129, help="frames, 4k+1 (upstream's default; the paper uses 65)"
    )
    video.add_argument("--infer-steps", type=int_range(1), default=50, help="denoising steps")
    video.add_argument(
        "--seed", type=int_range(0, MAX_SEED), default=42, help="seed of the first video's initial noise"
    )
    video.add_argument(
        "--flow-shift",
        type=finite_float(0, low_open=True),
        default=7.0,
        help="time shift s of sigma -> s*sigma/(1+(s-1)*sigma)",
    )
    video.add_argument(
        "--flow-reverse",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="sigma runs 1 -> 0, the released weights' convention (upstream's flag defaults off but every upstream "
        "example passes it; --no-flow-reverse is the mirrored t' = 1 - sigma convention, see scheduler.py)",
    )
    video.add_argument(
        "--embedded-cfg-scale",
        type=finite_float(0),
        default=6.0,
        help="guidance scale embedded by -cfgdistill models (x1000)",
    )
    video.add_argument(
        "--cfg-scale", type=finite_float(1), default=1.0, help="classifier-free guidance; 1 = off (batch 1)"
    )
    video.add_argument("--fps", type=int_range(1, 1000), default=24, help="frame rate of the written mp4")

    model = parser.add_argument_group("model and weights")
    model.add_argument(
        "--model", choices=list(HUNYUAN_VIDEO_PRESETS), default="HYVideo-T/2-cfgdistill", help="transformer preset"
    )
    model.add_argument(
        "--model-base",
        default=default_model_base(),
        help="checkpoint root: upstream ckpts/ layout or a diffusers HunyuanVideo folder ($MODEL_BASE overrides)",
    )
    model.add_argument(
        "--dit-weight",
        type=Path,
        help="transformer checkpoint (.pt / .safetensors / diffusers folder); None = the one under --model-base",
    )
    model.add_argument("--load-key", default="module", help="entry of an upstream .pt holding the weights (or ema)")
    model.add_argument("--text-len", type=int_range(1), default=256, help="LLM prompt tokens after the template crop")
    model.add_argument(
        "--hidden-state-skip-layer",
        type=int_range(0),
        default=2,
        help="use the LLM's hidden_states[-(k+1)]: its last k decoder layers skipped",
    )
    model.add_argument(
        "--apply-final-norm",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="apply the LLM's final norm to that hidden state",
    )
    model.add_argument(
        "--vae-tiling", action=argparse.BooleanOptionalAction, default=True, help="decode in tiles (bounded memory)"
    )
    model.add_argument(
        "--precision", choices=list(PRECISIONS), help="transformer dtype; None = bf16 on CUDA, fp32 on CPU"
    )
    model.add_argument(
        "--text-encoder-precision",
        choices=list(PRECISIONS),
        help="text encoders' dtype; None = fp16 on CUDA, fp32 on CPU",
    )
    model.add_argument("--vae-precision", choices=list(PRECISIONS), help="VAE dtype; None = fp16 on CUDA, fp32 on CPU")
    model.add_argument(
        "--use-cpu-offload",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="keep the text encoders and the VAE on the CPU except while they run (the transformer stays)",
    )
    model.add_argument(
        "--device", help="torch device; None = cuda:LOCAL_RANK under torchrun, cuda, or cpu without CUDA"
    )

    parser.add_argument("--save-path", type=Path, default=Path("results"), help="folder of the mp4 files")
    parser.add_argument(
        "--lossless",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="write near-lossless mp4s (H.264 crf 0, yuv444p) for frame-wise PSNR/SSIM/LPIPS comparisons",
    )
    parser.add_argument(
        "--ulysses-degree",
        type=int_range(1),
        default=1,
        help="ranks that make one video together by Ulysses sequence parallelism (torchrun; must divide the number "
        "of processes, the attention heads and the video tokens); 1 = each rank makes whole videos",
    )
    parser.add_argument(
        "--test-FLOPs",
        action="store_true",
        help="print the FLOPs of full compute and of --method with these settings and exit (needs no weights)",
    )
    add_taylorseer_args(parser, interval=5, max_order=1, first_enhance=1)
    add_method_args(parser, teacache_coefficients="hunyuanvideo", teacache_thresh=TEACACHE_THRESH)
    # Δ-DiT as the reference's FLUX variant: the whole single-stream stack, whose size depends on --model.
    parser.set_defaults(cached_blocks=None, delta_boundary=1.0)
    return parser


def safe_file_stem(prompt: str) -> str:
    """The prompt with "/" (and NUL) replaced by "_", a file name inside the save folder, never a path; and a leading
    "." too, so that no video is hidden or named like a temporary file (``.tmp-*``), which a rerun deletes."""
    stem = prompt.replace("/", "_").replace("\0", "_")
    return "_" + stem[1:] if stem.startswith(".") else stem


def vbench_stem(prompt: str) -> str:
    """The prompt itself where it is a safe file name (VBench finds videos by prompt); else its safe stem, "~" and a
    short hash of the prompt, so that prompts that sanitize alike ("a cat/dog", "a cat_dog") never share a file."""
    stem = safe_file_stem(prompt)
    if stem == prompt:
        return stem
    return f"{stem}~{hashlib.sha256(prompt.encode()).hexdigest()[:NAME_HASH_CHARS]}"


def vbench_file_name(prompt: str, k: int) -> str:
    """VBench's name for the k-th video of ``prompt``."""
    return f"{vbench_stem(prompt)}-{k}.mp4"


def single_prompt_file_name(prompt: str, seed: int) -> str:
    """Upstream's name without its time stamp: the seed and the first 100 characters of the prompt, cut further (at
    a character boundary) to fit the 255 bytes of a file name: 100 non-Latin characters can take 400 bytes."""
    head, tail = f"seed{seed}_", ".mp4"
    budget = max(0, MAX_FILE_NAME_BYTES - len(head.encode()) - len(tail))
    stem = safe_file_stem(prompt.strip()[:SINGLE_PROMPT_NAME_CHARS]).encode()[:budget].decode(errors="ignore")
    return f"{head}{stem}{tail}"


def check_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> MethodConfig:
    """Validate every flag (exit 2 through ``parser.error`` with the fix) and return the config of ``--method`` (None
    for full compute). Ranges and finiteness of single flags are argparse's (``type=``); this checks what depends on
    several, and the mode's flags.

    In VBench mode the prompt file is read here and its selected prompts stored in ``args.prompts`` as
    (index, prompt) pairs.
    """
    config = _method_config(args, parser)
    height, width = args.video_size
    try:
        check_video_size(height, width, args.video_length)
    except ValueError as exc:
        parser.error(f"--video-size/--video-length: {exc}")
    _check_guidance(args, parser)
    _check_ulysses_degree(args, parser)
    args.prompts = []
    if args.test_FLOPs:
        _fill_mode_defaults(args)
        return config
    if (args.prompt is None) == (args.prompt_json is None):
        parser.error("give exactly one of --prompt (one prompt) and --prompt-json (VBench batch mode)")
    _check_mode_flags(args, parser)
    _fill_mode_defaults(args)
    _check_last_seed(args, parser)
    try:
        parse_device(args.device)  # before any weights are read: a device this machine lacks is a typo
    except UsageError as err:
        parser.error(str(err))
    if args.prompt is not None:
        if not args.prompt.strip():
            parser.error("--prompt is empty: give the text of the video")
        return config
    args.prompts = _selected_prompts(args, parser)
    try:
        video_jobs(args)  # two prompts planned under one file name end here, before anything runs
    except UsageError as err:
        parser.error(str(err))
    return config


def _method_config(args: argparse.Namespace, parser: argparse.ArgumentParser) -> MethodConfig:
    """The config of --method from its flags, with the preset's Δ-DiT range filled in and checked; a flag that the
    method does not read is named in a warning."""
    warn_unused_method_flags(args, parser)
    blocks = _depth(HUNYUAN_VIDEO_PRESETS[args.model])
    if args.cached_blocks is None:
        args.cached_blocks = HUNYUAN_VIDEO_PRESETS[args.model].mm_single_blocks_depth
    elif args.cached_blocks > blocks:
        parser.error(
            f"--cached-blocks {args.cached_blocks} exceeds the {blocks} blocks of {args.model}: use 1..{blocks}"
        )
    config = method_config_from_args(args, parser)
    if args.method in ("taylorseer", "fora"):
        check_schedule_flags(config, args.infer_steps, parser)
    return config


def _depth(params: HunyuanVideoParams) -> int:
    """Blocks of the stack a method may bypass: the double-stream blocks, then the single-stream ones."""
    return params.mm_double_blocks_depth + params.mm_single_blocks_depth


_PROMPT_FLAGS = {"num_videos": "--num-videos"}
_VBENCH_FLAGS = {
    "index_start": "--index-start",
    "index_end": "--index-end",
    "num_videos_per_prompt": "--num-videos-per-prompt",
}


def _check_mode_flags(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """A flag of the other mode would be ignored without a word: refuse it instead."""
    if args.prompt is not None:
        for name, flag in _VBENCH_FLAGS.items():
            if getattr(args, name) is not None:
                parser.error(f"{flag} is for --prompt-json (VBench mode); with --prompt use --num-videos")
    else:
        for name, flag in _PROMPT_FLAGS.items():
            if getattr(args, name) is not None:
                parser.error(f"{flag} is for --prompt; with --prompt-json use --num-videos-per-prompt")


def _fill_mode_defaults(args: argparse.Namespace) -> None:
    for name, default in (("num_videos", 1), ("index_start", 0), ("num_videos_per_prompt", 5)):
        if getattr(args, name) is None:
            setattr(args, name, default)


def _check_guidance(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Settings that would be ignored, or that overflow, refused before anything is loaded."""
    if args.neg_prompt is not None and args.cfg_scale <= 1.0:
        parser.error(
            "--neg-prompt is used only with classifier-free guidance: add --cfg-scale > 1 (e.g. 6.0) or drop "
            "--neg-prompt"
        )
    # The guidance embedding gets scale x 1000 in the transformer's dtype (upstream's convention): fp16 ends at 65504.
    if args.precision == "fp16" and args.embedded_cfg_scale * 1000.0 > FP16_MAX:
        parser.error(
            f"--embedded-cfg-scale {args.embedded_cfg_scale} x 1000 overflows fp16 (max {FP16_MAX:g}): use "
            f"--embedded-cfg-scale <= {FP16_MAX / 1000:g} or --precision bf16"
        )


def _check_last_seed(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Video k of a prompt uses --seed + k: the last one must still be a seed the generators take."""
    count = args.num_videos if args.prompt is not None else args.num_videos_per_prompt
    if args.seed + count - 1 > MAX_SEED:
        parser.error(
            f"--seed {args.seed}: the last of {count} videos per prompt would use seed {args.seed + count - 1}, past "
            f"the largest seed {MAX_SEED}; use --seed <= {MAX_SEED - count + 1}"
        )


def _check_ulysses_degree(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Ulysses splits the video tokens and, inside attention, the heads: both must divide evenly."""
    degree = args.ulysses_degree
    if degree == 1:
        return
    params = HUNYUAN_VIDEO_PRESETS[args.model]
    if params.heads_num % degree:
        parser.error(f"--ulysses-degree {degree} must divide the {params.heads_num} attention heads of {args.model}")
    height, width = args.video_size
    frames, rows, cols = hunyuan_latent_shape(height, width, args.video_length)
    pt, ph, pw = params.patch_size
    tokens = (frames // pt) * (rows // ph) * (cols // pw)
    if tokens % degree:
        parser.error(
            f"--ulysses-degree {degree} must divide the {tokens} video tokens of {height}x{width}, "
            f"{args.video_length} frames; choose another degree or size"
        )


def _selected_prompts(args: argparse.Namespace, parser: argparse.ArgumentParser) -> list[tuple[int, str]]:
    try:
        prompts = read_vbench_prompts(args.prompt_json)
    except ValueError as exc:
        parser.error(str(exc))
    if args.index_end is not None and args.index_end <= args.index_start:
        parser.error(f"--index-end ({args.index_end}, exclusive) must be > --index-start ({args.index_start})")
    if args.index_start >= len(prompts):
        parser.error(f"--index-start {args.index_start} selects no prompt: {args.prompt_json} has {len(prompts)}")
    end = len(prompts) if args.index_end is None else min(args.index_end, len(prompts))
    selected = list(enumerate(prompts))[args.index_start : end]
    for index, prompt in selected:
        name = vbench_file_name(prompt, args.num_videos_per_prompt - 1)
        if len(name.encode()) > MAX_FILE_NAME_BYTES:
            parser.error(
                f"prompt {index} of --prompt-json is too long for a file name ({len(name.encode())} bytes > 255): "
                f"shorten it, or leave it out with --index-start/--index-end: {prompt!r}"
            )
    return selected


def print_flops(args: argparse.Namespace, config: MethodConfig) -> dict:
    """FLOPs of full compute and of --method with these settings, counted on the meta device over the method's real
    schedule; ends with one JSON line. TeaCache's depend on the run: the cost of each kind of its steps instead."""
    height, width = args.video_size
    batch = 2 if args.cfg_scale > 1.0 else 1
    label = describe(args.method, config)
    extra = {"model": args.model, "height": height, "width": width, "video_length": args.video_length}
    extra.update(num_steps=args.infer_steps, text_len=args.text_len, batch=batch)
    print(
        f"{args.model}, {height}x{width}, {args.video_length} frames, {args.infer_steps} steps, {args.text_len} text "
        f"tokens, batch {batch}, {label}"
    )
    if args.method == "teacache":
        return _print_teacache_flops(args, label, batch, extra)
    report = hunyuan_method_flops(
        args.model, height, width, args.video_length, args.text_len, args.infer_steps, args.method, config, batch
    )
    _print_row("baseline", f"{report.baseline_flops / 1e12:12.2f} TFLOPs ({args.infer_steps} full steps)")
    steps = f"({report.full_steps} full, {report.num_steps - report.full_steps} forecast steps)"
    _print_row(args.method, f"{report.flops / 1e12:12.2f} TFLOPs {steps}")
    _print_row("speedup", f"{report.speedup:12.3f}x")
    result = {**report.as_dict(), **extra}
    print(json.dumps(result))
    return result


def _print_row(name: str, text: str) -> None:
    print(f"{name + ':':<12}{text}")


def _print_teacache_flops(args: argparse.Namespace, label: str, batch: int, extra: dict) -> dict:
    """TeaCache skips a step by how much the step's input changed, so its FLOPs are known only after a run (whose
    summary reports them): the cost of a computed and of a skipped step."""
    latent = hunyuan_latent_shape(*args.video_size, args.video_length)
    baseline, computed, skipped = teacache_step_flops(args.model, batch, latent, args.text_len)
    _print_row("baseline", f"{args.infer_steps * baseline / 1e12:12.2f} TFLOPs ({args.infer_steps} full steps)")
    _print_row(
        "teacache",
        f"{computed / 1e12:12.2f} TFLOPs per computed step, {skipped / 1e12:.3f} per skipped step; which steps it "
        "skips depends on each video, so a run reports its FLOPs from its step counts",
    )
    result = {
        "convention": "matmul",
        "method": label,
        "full_tflops": args.infer_steps * baseline / 1e12,
        "full_step_tflops": baseline / 1e12,
        "computed_step_tflops": computed / 1e12,
        "skipped_step_tflops": skipped / 1e12,
        **extra,
    }
    print(json.dumps(result))
    return result


def contiguous_share(items: list, parts: int, part: int) -> list:
    """Part ``part`` of ``items`` cut into ``parts`` contiguous chunks whose sizes differ by at most one (the first
    ``len(items) % parts`` chunks are one longer), as the reference's launcher splits the prompts: the consecutive
    seeds of one prompt stay together, so a rank encodes each prompt once."""
    size, extra = divmod(len(items), parts)
    start = part * size + min(part, extra)
    return items[start : start + size + (part < extra)]


@dataclass(frozen=True)
class VideoRanks:
    """This process's place in the job (``process``), and its sequence-parallel group.

    Ranks form groups of ``ulysses_degree`` consecutive ranks; a group makes one video at a time (``sequence_parallel``
    is its group, None without sequence parallelism), the groups split the videos, and the group's first rank writes.
    """

    process: Distributed
    ulysses_degree: int = 1
    sequence_parallel: SequenceParallel | None = None

    @property
    def rank(self) -> int:
        return self.process.rank

    @property
    def world_size(self) -> int:
        return self.process.world_size

    @property
    def group_index(self) -> int:
        return self.rank // self.ulysses_degree

    @property
    def num_groups(self) -> int:
        return self.world_size // self.ulysses_degree

    @property
    def writes(self) -> bool:
        return self.rank % self.ulysses_degree == 0


def join_video_ranks(device_arg: str | None, ulysses_degree: int = 1) -> VideoRanks:
    """Join the job (:func:`~common.distributed.setup_distributed`); with ``ulysses_degree`` K > 1, every rank also
    creates the sequence-parallel groups (ranks 0..K-1, K..2K-1, ...)."""
    world_size = launched_world_size()
    if world_size % ulysses_degree:
        how = "a multiple of it" if world_size > 1 else f"torchrun --nproc_per_node={ulysses_degree} (or a multiple)"
        raise UsageError(
            f"--ulysses-degree {ulysses_degree} needs a number of processes divisible by it, got {world_size}: "
            f"launch with {how}"
        )
    process = setup_distributed(device_arg)
    sequence_parallel = None
    if ulysses_degree > 1:
        # new_group is collective: every rank creates every group, in the same order.
        for first in range(0, world_size, ulysses_degree):
            group = dist.new_group(list(range(first, first + ulysses_degree)))
            if first <= process.rank < first + ulysses_degree:
                sequence_parallel = SequenceParallel.from_group(group)
    return VideoRanks(process, ulysses_degree, sequence_parallel)


@dataclass(frozen=True)
class VideoJob:
    """One video to make: what, with which seed, and where it goes."""

    prompt: str
    seed: int
    path: Path


def video_jobs(args: argparse.Namespace) -> list[VideoJob]:
    """Every video of the run, each once, in a fixed order (the same on every rank); see :func:`unique_jobs`."""
    if args.prompt is not None:
        seeds = [args.seed + k for k in range(args.num_videos)]
        return [VideoJob(args.prompt, s, args.save_path / single_prompt_file_name(args.prompt, s)) for s in seeds]
    return unique_jobs(
        VideoJob(prompt, args.seed + k, args.save_path / vbench_file_name(prompt, k))
        for _, prompt in args.prompts
        for k in range(args.num_videos_per_prompt)
    )


def unique_jobs(jobs: Iterable[VideoJob]) -> list[VideoJob]:
    """``jobs`` with repeats dropped (a prompt listed twice makes the same videos); two different videos planned
    under one file name would overwrite each other, so that is a :class:`UsageError` naming both prompts."""
    by_name: dict[str, VideoJob] = {}
    for job in jobs:
        first = by_name.setdefault(job.path.name, job)
        if first != job:
            raise UsageError(
                f"prompts {first.prompt!r} and {job.prompt!r} would both be saved as {job.path.name!r}: reword one "
                "of them in --prompt-json, or make them in separate --save-path folders"
            )
    return list(by_name.values())


def _dtype(name: str | None, cuda_default: str, device: torch.device) -> torch.dtype:
    return PRECISIONS[name or (cuda_default if device.type == "cuda" else "fp32")]


def load_pipeline(
    args: argparse.Namespace, device: torch.device, sequence_parallel: SequenceParallel | None = None
) -> HunyuanVideoPipeline:
    """All components from --model-base / --dit-weight, placed for sampling on ``device``."""
    components = load_components(
        find_model_files(args.model_base, args.dit_weight),
        args.model,
        dtype=_dtype(args.precision, "bf16", device),
        text_encoder_dtype=_dtype(args.text_encoder_precision, "fp16", device),
        vae_dtype=_dtype(args.vae_precision, "fp16", device),
        load_key=args.load_key,
        text_len=args.text_len,
        hidden_state_skip_layer=args.hidden_state_skip_layer,
        apply_final_norm=args.apply_final_norm,
    )
    return HunyuanVideoPipeline.from_components(
        components,
        device=device,
        offload=args.use_cpu_offload,
        vae_tiling=args.vae_tiling,
        sequence_parallel=sequence_parallel,
    )


def run_settings(args: argparse.Namespace, config: MethodConfig, device: torch.device, weights: str) -> dict:
    """What, besides its prompt and seed, determines a video of this run: recorded with every file. ``weights`` is
    the content identity of the weights (:func:`~taylorseer_hunyuanvideo.weights.weights_id`)."""
    height, width = args.video_size
    return {
        "model": args.model,
        "height": height,
        "width": width,
        "video_length": args.video_length,
        "infer_steps": args.infer_steps,
        "flow_shift": args.flow_shift,
        "flow_reverse": args.flow_reverse,
        "embedded_cfg_scale": args.embedded_cfg_scale,
        "cfg_scale": args.cfg_scale,
        "neg_prompt": args.neg_prompt,
        "precision": str(_dtype(args.precision, "bf16", device)).removeprefix("torch."),
        "text_encoder_precision": str(_dtype(args.text_encoder_precision, "fp16", device)).removeprefix("torch."),
        "vae_precision": str(_dtype(args.vae_precision, "fp16", device)).removeprefix("torch."),
        "text_len": args.text_len,
        "hidden_state_skip_layer": args.hidden_state_skip_layer,
        "apply_final_norm": args.apply_final_norm,
        "load_key": args.load_key,
        "vae_tiling": args.vae_tiling,
        "fps": args.fps,
        "lossless": args.lossless,
        # The noise generator lives on the device, so CPU and CUDA runs draw different noise from the same seed.
        "noise_device": device.type,
        # The method and every setting of it: a folder never mixes videos of two methods or settings.
        "method": method_record(args.method, config) or {"method": "full"},
        "weights_id": weights,
        "weights": {
            "model_base": str(args.model_base),
            "dit_weight": None if args.dit_weight is None else str(args.dit_weight),
        },
    }


def video_record(job: VideoJob, settings: dict) -> dict:
    return {"file": job.path.name, "prompt": job.prompt, "seed": job.seed, **settings}


def run(args: argparse.Namespace, config: MethodConfig, ranks: VideoRanks, weights: str) -> dict:
    """Make this rank's share of the pending videos; returns what it did. ``weights`` is the weights' identity."""
    vbench = args.prompt is None
    jobs = video_jobs(args)
    settings = run_settings(args, config, ranks.process.device, weights)
    planned = {job.path.name: video_record(job, settings) for job in jobs}
    records_path = args.save_path / RECORDS_FILE
    existing = read_records(records_path, ("file", "prompt", "seed"))
    check_consistent(args.save_path, existing, planned, uncompared=UNCOMPARED_FIELDS, output_flag="--save-path")
    # Existing videos (made with these settings, as checked) are done unless damaged. Every rank gets the same list
    # before any rank writes, so all ranks split the pending videos the same way.
    damaged = _damaged_videos(args, existing, planned, ranks)
    pending = [job for job in jobs if not job.path.exists() or job.path.name in damaged]
    pipe = load_pipeline(args, ranks.process.device, ranks.sequence_parallel) if pending else None
    if pipe is not None:
        _check_loaded_depth(args, pipe.transformer.params)
    if ranks.rank == 0:  # loading worked: only now is anything written
        args.save_path.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(args.save_path)
        set_aside_damaged(args.save_path, damaged)
        sync_records(records_path, existing, planned)
    ranks.process.barrier()
    mine = contiguous_share(pending, ranks.num_groups, ranks.group_index)
    cache = make_cache(args.method, config)  # reset by the pipeline for every video
    label = describe(args.method, config)
    height, width = args.video_size
    written, seconds, denoise_seconds, step_counts = [], [], [], []
    full = forecast = None
    for job in tqdm(mine, desc="videos", disable=ranks.rank != 0 or not vbench):
        out = pipe(
            job.prompt,
            height=height,
            width=width,
            video_length=args.video_length,
            num_inference_steps=args.infer_steps,
            seed=job.seed,
            flow_shift=args.flow_shift,
            flow_reverse=args.flow_reverse,
            embedded_guidance_scale=args.embedded_cfg_scale,
            cfg_scale=args.cfg_scale,
            negative_prompt=args.neg_prompt,
            cache=cache,
            progress=ranks.rank == 0 and not vbench,
        )
        # Every rank checks, so that all ranks of a group stop together.
        check_finite(out.latents, f"The denoised latents of {job.path.name}", NON_FINITE_SUSPECTS)
        check_finite(out.video, f"The decoded video {job.path.name}", NON_FINITE_SUSPECTS)
        full, forecast = out.num_full_steps, out.num_forecast_steps
        if not ranks.writes:  # the group's first rank writes the video all its ranks made
            continue
        write_video(job.path, video_to_uint8_frames(out.video), fps=args.fps, quality=None if args.lossless else 8.0)
        record_written(records_path, planned[job.path.name], job.path)
        written.append(str(job.path))
        seconds.append(out.seconds)
        denoise_seconds.append(out.denoise_seconds)
        step_counts.append(full)
        # The newline in the text (end=""): one write per line, so that ranks sharing stdout never split a line.
        tqdm.write(
            f"Success, time: {out.seconds:.2f} s ({label}: {full} full, {forecast} forecast steps; "
            f"seed {job.seed}) -> {job.path}\n",
            end="",
        )
    _print_line(
        f"rank {ranks.rank}/{ranks.world_size}: wrote {len(written)} videos; {len(jobs) - len(pending)} of "
        f"{len(jobs)} were already there"
    )
    ranks.process.barrier()
    flops = _videos_flops(args, config, pipe.transformer.params, step_counts) if step_counts else None
    if flops is not None:
        _print_line(
            f"rank {ranks.rank}: {flops['tflops']:.2f} TFLOPs for {len(step_counts)} videos, "
            f"{flops['flops_speedup']:.3f}x fewer than full compute ({label}; matmul convention, --text-len tokens)"
        )
    summary = {
        "rank": ranks.rank,
        "world_size": ranks.world_size,
        "method": label,
        "videos": written,
        "seconds": seconds,  # per written video, the whole pipeline call
        "denoise_seconds": denoise_seconds,  # per written video, the denoising loop alone
        "skipped": len(jobs) - len(pending),
        "damaged": sorted(damaged),
        "total": len(jobs),
        "full_steps": full,
        "forecast_steps": forecast,
        "flops": flops,
    }
    _print_line(json.dumps(summary))
    return summary


def _check_loaded_depth(args: argparse.Namespace, params: HunyuanVideoParams) -> None:
    """A diffusers folder's config.json, not --model, defines the loaded architecture: Δ-DiT's range must fit it."""
    if args.method == "delta-dit" and args.cached_blocks > _depth(params):
        raise UsageError(
            f"--cached-blocks {args.cached_blocks} exceeds the {_depth(params)} blocks of the loaded transformer: use "
            f"1..{_depth(params)}, or the --model preset that matches the weights"
        )


def _videos_flops(
    args: argparse.Namespace, config: MethodConfig, params: HunyuanVideoParams, full_steps: list[int]
) -> dict:
    """FLOPs of the videos made with the full-step counts ``full_steps``, in --test-FLOPs's convention (matmul, text
    unpadded at --text-len tokens): TeaCache's from each video's counts, the other methods' from their schedule."""
    height, width = args.video_size
    batch = 2 if args.cfg_scale > 1.0 else 1
    steps = args.infer_steps
    if args.method == "teacache":
        latent = hunyuan_latent_shape(height, width, args.video_length)
        baseline, computed, skipped = teacache_step_flops(params, batch, latent, args.text_len)
        label = describe(args.method, config)
        runs = [RunFlops.from_step_counts(label, baseline, computed, skipped, steps, full) for full in full_steps]
    else:
        run = hunyuan_method_flops(
            params, height, width, args.video_length, args.text_len, steps, args.method, config, batch
        )
        runs = [run] * len(full_steps)
    total, baseline_total = sum(r.flops for r in runs), sum(r.baseline_flops for r in runs)
    return {
        "convention": runs[0].convention,
        "tflops": total / 1e12,
        "full_tflops": baseline_total / 1e12,
        "flops_speedup": baseline_total / total,
        "video_tflops": [r.flops / 1e12 for r in runs],
    }


def _print_line(text: str) -> None:
    """``text`` and its newline in ONE write, flushed: print() writes them separately, and unbuffered (as with
    PYTHONUNBUFFERED) another rank's line can land between them."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _damaged_videos(
    args: argparse.Namespace, existing: dict[str, dict], planned: dict[str, dict], ranks: VideoRanks
) -> dict[str, str]:
    """Name -> reason for the planned videos that exist but cannot be adopted: content differing from the recorded
    checksum, or (no checksum: a run killed between writing and recording) not decoding to the run's frames and
    size. Rank 0 reads the files and tells the others, so that the videos are read once."""
    damaged: dict[str, str] = {}
    if ranks.rank == 0:
        height, width = args.video_size
        damaged = damaged_outputs(
            args.save_path, existing, planned, lambda path: verify_video(path, args.video_length, (width, height))
        )
    if ranks.process.initialized:
        shared = [damaged]
        dist.broadcast_object_list(shared, src=0)
        damaged = shared[0]
    return damaged


def main(args: argparse.Namespace, config: MethodConfig) -> dict:
    """The FLOPs report, or this process's videos (one rank of a torchrun job, or alone). Everything that can be
    checked without the models (device, output folder, weights present) is, before any model is loaded."""
    if args.test_FLOPs:
        return print_flops(args, config)
    check_output_folder(args.save_path, "--save-path")
    _check_records_writable(args.save_path / RECORDS_FILE)
    files = find_model_files(args.model_base, args.dit_weight)
    check_model_files(files)
    weights = weights_id(files)
    _quiet_loading_bars()
    ranks = join_video_ranks(args.device, args.ulysses_degree)
    try:
        return run(args, config, ranks, weights)
    finally:
        ranks.process.close()


def _check_records_writable(path: Path) -> None:
    """The records file takes a line after every video: a read-only one would fail after the first video."""
    if path.is_file() and not os.access(path, os.W_OK):
        raise UsageError(f"{path.absolute()} is read-only: make it writable, or choose another --save-path")


def _quiet_loading_bars() -> None:
    """transformers and diffusers draw a bar per loaded model; the CLI shows only the sampling progress."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()


def cli(argv: Sequence[str] | None = None) -> dict:
    """The command line: parse ``argv`` (default: ``sys.argv``), validate, run; bad input exits 2 with one line."""
    parser = build_parser()
    arguments = parser.parse_args(argv)
    return run_cli(main, arguments, check_args(arguments, parser))


if __name__ == "__main__":
    cli()
