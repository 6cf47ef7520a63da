"""Latency of full compute, FORA and TaylorSeer on HunyuanVideo with random weights: per step, per loop, memory and
the bytes the cache holds.

    python TaylorSeer-HunyuanVideo/benchmark_latency.py --device cuda    # the paper's size: 13B model, 480x640x65, bf16
    python TaylorSeer-HunyuanVideo/benchmark_latency.py --device cpu     # the 1 + 1 block slice at 64x64x5
    python TaylorSeer-HunyuanVideo/benchmark_latency.py --cache-size-only    # the paper-size cache, on meta: no compute

The model is a HunyuanVideo preset with seeded random weights (every parameter N(0, 0.02)): latency does not depend on
the weights' values, and no checkpoint is needed. The loop is the tree's own ``HunyuanVideoPipeline.denoise`` (flow
shift 7, Euler, embedded guidance 6, batch 1 as for the released guidance-distilled weights) on fixed latents, with
random text embeddings in place of the text encoders' outputs, every token real. The three rows share the TaylorSeer
flags (defaults: sample_video.py's N=5, O=1, one warm-up step); FORA is the same schedule at order 0.

A CPU cannot hold the 13B model, so there the default is a *slice* of the preset: the same widths with fewer double-
and single-stream blocks (``--double-blocks``, ``--single-blocks``). Per block, a forecast step's cost against a full
step's does not depend on the depth; what runs at every step outside the blocks (embedders, the 2-block text token
refiner, the final layer) does not shrink with the slice, so a slice's per-step forecast share is larger than the
full model's. Every output says which model ran. 1 + 1 blocks is the smallest slice, and even it reads 3.4 GB of
float32 weights per full step (1.4 GB of them outside the blocks): on 2 CPU cores its default run (3 rows x 4 runs x
50 steps) costs about 14 CPU-minutes, 7 minutes or more of wall time.

The paper's cache is sized too (``paper_cache_bytes`` in the JSON; ``--cache-size-only`` does only that): the preset at
full depth, 480x640x65, bfloat16, batch 1, 256 text tokens (the reference's padded text length), run through the
schedule on the meta device without allocating anything, next to reference-semantics §8 (O=1: 30.5 GB, of which
10.2 GB is an unused single-stream ``attn`` the reference keeps; O=2: 45.7 GB) and to the analytic count.

On CUDA the VAE decode (its real architecture, random weights, fp16) is timed outside the loop for an end-to-end
figure (``--no-decode`` skips it). The text encoders are not timed: the tree builds them from tokenizer files only
(LLaVA-LLaMA-3-8B and CLIP-L), which cannot be made without a download.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
from torch import nn

from common.caching import CacheMethod
from common.cli import HelpFormatter, UsageError, int_range, run_cli
from common.io import atomic_write
from common.latency_benchmark import (
    GIB,
    add_latency_args,
    cache_footprint,
    config_from_args,
    measure_paper_rows,
    prepare_run,
    write_results,
)
from common.methods import fora_of
from common.taylor_cache import TaylorSeerConfig, full_step_indices
from taylorseer_hunyuanvideo.model import HUNYUAN_VIDEO_PRESETS, HunyuanVideo, HunyuanVideoParams
from taylorseer_hunyuanvideo.pipeline import HunyuanVideoPipeline, check_video_size, latent_shape
from taylorseer_hunyuanvideo.scheduler import flow_match_sigmas
from taylorseer_hunyuanvideo.text_encoders import TextEmbeddings

PRESET = "HYVideo-T/2-cfgdistill"  # the released text-to-video weights
# sample_video.py's TaylorSeer defaults (the reference HunyuanVideo setting).
INTERVAL, MAX_ORDER, FIRST_ENHANCE = 5, 1, 1
FLOW_SHIFT, EMBEDDED_GUIDANCE = 7.0, 6.0  # sample_video.py's defaults
PAPER_SIZE = (480, 640, 65)  # height, width, frames
PAPER_TEXT_TOKENS = 256  # upstream's text_len: the reference pads every prompt to it, and caches the padding
CPU_SIZE = (64, 64, 5)  # latent 2 x 8 x 8: 32 image tokens
CPU_TEXT_TOKENS = 16
CPU_DOUBLE_BLOCKS, CPU_SINGLE_BLOCKS = 1, 1
WEIGHT_STD = 0.02
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
GB = 1e9
# reference-semantics §8, HunyuanVideo 480x640x65 bf16: the reference's cache by order, and the part of it that is
# the single-stream `attn` output its Taylor mode never reads (O=1).
REFERENCE_CACHE_GB = {1: 30.5, 2: 45.7}
REFERENCE_UNUSED_ATTN_GB = {1: 10.2}
REFERENCE_PRESETS = ("HYVideo-T/2", "HYVideo-T/2-cfgdistill")  # the model §8 sizes (same blocks; guidance aside)
DEPTH_NOTE = (
    "Per block, a forecast step's cost against a full step's does not depend on the depth; the work outside the "
    "blocks (embedders, the 2-block text token refiner, the final layer) runs at every step and does not shrink with "
    "a slice, so a slice's forecast share of a step is larger than the full model's."
)
TEXT_ENCODER_NOTE = (
    "Text encoders not timed: the tree builds LLaVA-LLaMA-3-8B and CLIP-L from their tokenizer files, which cannot "
    "be made without a download."
)


@dataclass(frozen=True)
class VideoSize:
    """One run's video: pixels, frames and text tokens, with the token counts the transformer sees."""

    height: int
    width: int
    frames: int
    text_tokens: int

    def latent(self, params: HunyuanVideoParams) -> tuple[int, int, int, int]:
        return latent_shape(self.height, self.width, self.frames, params.in_channels)

    def image_tokens(self, params: HunyuanVideoParams) -> int:
        _, t, h, w = self.latent(params)
        pt, ph, pw = params.patch_size
        return (t // pt) * (h // ph) * (w // pw)

    def record(self, params: HunyuanVideoParams) -> dict:
        return {"height": self.height, "width": self.width, "video_length": self.frames,
                "latent": list(self.latent(params)), "image_tokens": self.image_tokens(params),
                "text_tokens": self.text_tokens}  # fmt: skip


class AbsentTextEncoder:
    """Stands in for a text encoder the benchmark never runs: random embeddings go straight to ``denoise``."""

    def __init__(self) -> None:
        self.model = nn.Identity()


class BenchmarkPipeline(HunyuanVideoPipeline):
    """The tree's pipeline without text encoders, whose ``guidance`` also works on the meta device: the pipeline's
    check that scale x 1000 is finite in the model's dtype reads a value, which a meta tensor does not have."""

    def __init__(self, transformer: HunyuanVideo, vae: nn.Module, device: torch.device | str) -> None:
        super().__init__(transformer, vae, AbsentTextEncoder(), AbsentTextEncoder(), device=device)

    def guidance(self, batch: int, embedded_guidance_scale: float | None) -> torch.Tensor | None:
        if self.device.type != "meta" or embedded_guidance_scale is None or not self.transformer.params.guidance_embed:
            return super().guidance(batch, embedded_guidance_scale)
        return torch.full((batch,), embedded_guidance_scale * 1000.0, dtype=self.dtype, device=self.device)


def sliced_params(preset: str, double_blocks: int | None, single_blocks: int | None) -> HunyuanVideoParams:
    """The preset with ``double_blocks`` / ``single_blocks`` blocks (None: the preset's), each at most the preset's."""
    params = HUNYUAN_VIDEO_PRESETS[preset]
    depths = {"--double-blocks": (double_blocks, params.mm_double_blocks_depth),
              "--single-blocks": (single_blocks, params.mm_single_blocks_depth)}  # fmt: skip
    for flag, (wanted, full) in depths.items():
        if wanted is not None and wanted > full:
            raise UsageError(f"{flag} {wanted}: the preset {preset} has {full}; a slice takes at most that many")
    return replace(
        params,
        mm_double_blocks_depth=params.mm_double_blocks_depth if double_blocks is None else double_blocks,
        mm_single_blocks_depth=params.mm_single_blocks_depth if single_blocks is None else single_blocks,
    )


def random_hunyuan_video(
    params: HunyuanVideoParams, seed: int, device: torch.device, dtype: torch.dtype
) -> HunyuanVideo:
    """The model in ``dtype`` on ``device`` with every parameter N(0, 0.02) from ``seed``, drawn in place on the
    device: built on the meta device first, so the 13B model never exists in float32 or twice."""
    with torch.device("meta"):
        model = HunyuanVideo(params).to(dtype)
    model = model.to_empty(device=device).eval()
    generator = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, WEIGHT_STD, generator=generator)
    return model


def random_inputs(
    params: HunyuanVideoParams, size: VideoSize, seed: int, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, TextEmbeddings]:
    """(1, C, T', H', W') float32 latents and text embeddings (LLM states and CLIP pooled vector in ``dtype``, no
    padding), drawn on the CPU from ``seed`` (meta: shapes only)."""
    shape = (1, *size.latent(params))
    states_shape = (1, size.text_tokens, params.text_states_dim)
    if device.type == "meta":
        text = TextEmbeddings(
            torch.empty(states_shape, dtype=dtype, device=device),
            None,
            torch.empty(1, params.text_states_dim_2, dtype=dtype, device=device),
        )
        return torch.empty(shape, device=device), text
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(shape, generator=generator)
    states = torch.randn(states_shape, generator=generator)
    pooled = torch.randn(1, params.text_states_dim_2, generator=generator)
    return latents.to(device), TextEmbeddings(states, None, pooled).to(device, dtype)


def sampler(
    pipe: HunyuanVideoPipeline, latents: torch.Tensor, text: TextEmbeddings, num_steps: int, outputs: dict
) -> Callable[[CacheMethod], None]:
    """``run(cache)``: one ``num_steps``-step ``denoise`` of ``pipe`` on fixed inputs; the final latents go to
    ``outputs["latents"]`` (for the VAE stage)."""
    sigmas = flow_match_sigmas(num_steps, FLOW_SHIFT, reverse=True)

    @torch.no_grad()
    def run(cache: CacheMethod) -> None:
        outputs["latents"] = pipe.denoise(
            latents, text, sigmas, embedded_guidance_scale=EMBEDDED_GUIDANCE, cfg_scale=1.0, cache=cache
        )

    return run


def analytic_cache_bytes(params: HunyuanVideoParams, size: VideoSize, stored: int, itemsize: int) -> int:
    """Cached modules x stored outputs x tokens x width x itemsize, batch 1: a double-stream block caches four
    outputs (image attention and MLP over the image tokens, text attention and MLP over the text tokens), a
    single-stream block one (``total``, over both)."""
    tokens = size.image_tokens(params) + size.text_tokens
    per_output = tokens * params.hidden_size * itemsize
    return stored * per_output * (2 * params.mm_double_blocks_depth + params.mm_single_blocks_depth)


def reference_unused_attn_bytes(params: HunyuanVideoParams, size: VideoSize, stored: int, itemsize: int) -> int:
    """What the reference keeps in addition: each single-stream block's raw ``attn`` output, per order."""
    tokens = size.image_tokens(params) + size.text_tokens
    return stored * params.mm_single_blocks_depth * tokens * params.hidden_size * itemsize


def stored_outputs(num_steps: int, config: TaylorSeerConfig) -> int:
    """Outputs per cached module at the end of a run: the last O + 1 full steps' (fewer if fewer ran)."""
    return min(config.max_order + 1, len(full_step_indices(num_steps, config)))


def paper_cache_bytes(preset: str, num_steps: int, config: TaylorSeerConfig) -> dict:
    """The TaylorSeer and FORA caches of ``config`` after a ``num_steps``-step run of the preset at the paper's size
    (480x640x65, bfloat16, batch 1, 256 text tokens), sized on the meta device, with the analytic count and the
    reference's figure."""
    params = HUNYUAN_VIDEO_PRESETS[preset]
    size = VideoSize(*PAPER_SIZE, PAPER_TEXT_TOKENS)
    device, dtype = torch.device("meta"), torch.bfloat16
    with torch.device("meta"):
        model = HunyuanVideo(params).to(dtype)
    pipe = BenchmarkPipeline(model, nn.Identity(), device)
    latents, text = random_inputs(params, size, 0, device, dtype)
    run = sampler(pipe, latents, text, num_steps, {})
    itemsize = dtype.itemsize
    record = {"preset": preset, **size.record(params), "dtype": "bfloat16", "batch": 1, "num_steps": num_steps,
              "double_blocks": params.mm_double_blocks_depth,
              "single_blocks": params.mm_single_blocks_depth}  # fmt: skip
    for label, variant in (("TaylorSeer", config), ("FORA", fora_of(config))):
        stored = stored_outputs(num_steps, variant)
        record[label] = {
            "max_order": variant.max_order,
            **cache_footprint(run, variant),
            "stored_outputs": stored,
            "analytic_bytes": analytic_cache_bytes(params, size, stored, itemsize),
        }
    stored = record["TaylorSeer"]["stored_outputs"]
    unused = reference_unused_attn_bytes(params, size, stored, itemsize)
    record["reference"] = {
        "source": "reference-semantics §8 (HunyuanVideo 480x640x65, bf16)",
        "max_order": config.max_order,
        "analytic_bytes": record["TaylorSeer"]["analytic_bytes"] + unused,
        "unused_attn_bytes": unused,
        "doc_gb": REFERENCE_CACHE_GB.get(config.max_order) if preset in REFERENCE_PRESETS else None,
        "doc_unused_attn_gb": REFERENCE_UNUSED_ATTN_GB.get(config.max_order) if preset in REFERENCE_PRESETS else None,
    }
    return record


def sizing_lines(sizing: dict) -> list[str]:
    """The paper-size cache in words, GB = 1e9 (the reference document's unit) and GiB."""
    ours, fora, ref = sizing["TaylorSeer"], sizing["FORA"], sizing["reference"]
    where = (
        f"{sizing['preset']} ({sizing['double_blocks']} + {sizing['single_blocks']} blocks) at "
        f"{sizing['height']}x{sizing['width']}x{sizing['video_length']}, {sizing['image_tokens']} image + "
        f"{sizing['text_tokens']} text tokens, bfloat16, batch 1, {sizing['num_steps']} steps, sized on the meta device"
    )
    doc = (
        f"reference-semantics §8: {ref['doc_gb']} GB, of which {ref['doc_unused_attn_gb']} GB is the unused "
        "single-stream attn"
        if ref["doc_gb"] is not None and ref["doc_unused_attn_gb"] is not None
        else f"reference-semantics §8: {ref['doc_gb']} GB"
        if ref["doc_gb"] is not None
        else "reference-semantics §8 has no figure for this preset and order"
    )
    return [
        f"Paper-size cache ({where}): TaylorSeer O={ours['max_order']} holds {ours['cache_bytes'] / GB:.2f} GB "
        f"({ours['cache_bytes'] / GIB:.2f} GiB, {ours['cache_tensors']} tensors, analytic "
        f"{ours['analytic_bytes'] / GB:.2f} GB); FORA {fora['cache_bytes'] / GB:.2f} GB "
        f"({fora['cache_bytes'] / GIB:.2f} GiB).",
        f"The reference at O={ref['max_order']} holds {ref['analytic_bytes'] / GB:.2f} GB by the same count plus its "
        f"unused single-stream attn ({ref['unused_attn_bytes'] / GB:.2f} GB) ({doc}); this cache keeps no attn.",
    ]


def parameter_counts(model: HunyuanVideo) -> dict:
    """Parameters per double-stream and single-stream block and outside the blocks (what every step runs)."""
    total = sum(p.numel() for p in model.parameters())
    double = sum(p.numel() for p in model.double_blocks[0].parameters()) if len(model.double_blocks) else 0
    single = sum(p.numel() for p in model.single_blocks[0].parameters()) if len(model.single_blocks) else 0
    blocks = double * len(model.double_blocks) + single * len(model.single_blocks)
    return {"total": total, "per_double_block": double, "per_single_block": single, "outside_blocks": total - blocks}


def random_vae(seed: int, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """HunyuanVideo's causal 3D VAE: diffusers' defaults are the released config (884-16c-hy); random weights."""
    from diffusers import AutoencoderKLHunyuanVideo  # imported here: diffusers takes seconds to import

    torch.manual_seed(seed)
    with torch.device(device):
        vae = AutoencoderKLHunyuanVideo()
    return vae.to(dtype).eval()


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return DTYPES[name]


def resolve_size(args: argparse.Namespace, cuda: bool) -> VideoSize:
    """The flags' video size, each unset one at the device's default; a size the VAE cannot make is a UsageError."""
    height, width, frames = PAPER_SIZE if cuda else CPU_SIZE
    size = VideoSize(
        args.height or height,
        args.width or width,
        args.video_length or frames,
        args.text_tokens or (PAPER_TEXT_TOKENS if cuda else CPU_TEXT_TOKENS),
    )
    try:
        check_video_size(size.height, size.width, size.frames)
    except ValueError as err:
        raise UsageError(f"--height/--width/--video-length: {err}") from None
    return size


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    model = parser.add_argument_group("model and video")
    model.add_argument("--preset", choices=list(HUNYUAN_VIDEO_PRESETS), default=PRESET, help="HunyuanVideo preset")
    model.add_argument(
        "--double-blocks",
        type=int_range(1, 1000),
        default=None,
        help=f"double-stream blocks of a slice (default: the preset's on CUDA, {CPU_DOUBLE_BLOCKS} on CPU)",
    )
    model.add_argument(
        "--single-blocks",
        type=int_range(1, 1000),
        default=None,
        help=f"single-stream blocks of a slice (default: the preset's on CUDA, {CPU_SINGLE_BLOCKS} on CPU)",
    )
    flags = ("--height", "--width", "--video-length")
    for flag, cuda_value, cpu_value in zip(flags, PAPER_SIZE, CPU_SIZE, strict=True):
        model.add_argument(
            flag, type=int_range(1, 100_000), default=None, help=f"default: {cuda_value} on CUDA, {cpu_value} on CPU"
        )
    model.add_argument(
        "--text-tokens",
        type=int_range(1, 4096),
        default=None,
        help=f"random text tokens, all real (default: {PAPER_TEXT_TOKENS} on CUDA, {CPU_TEXT_TOKENS} on CPU)",
    )
    model.add_argument(
        "--dtype",
        choices=["auto", *DTYPES],
        default="auto",
        help="weights and features; auto: bfloat16 on CUDA, float32 on CPU",
    )
    model.add_argument(
        "--decode",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also time the VAE decode (random weights) outside the loop (default: on CUDA only)",
    )
    model.add_argument("--seed", type=int_range(0, 2**31 - 1), default=0, help="weights and inputs")
    model.add_argument(
        "--cache-size-only",
        action="store_true",
        help="only size the paper-size cache on the meta device (writes paper_cache_bytes.json): no model, no timing",
    )
    add_latency_args(
        parser,
        interval=INTERVAL,
        max_order=MAX_ORDER,
        first_enhance=FIRST_ENHANCE,
        results_dir="results/latency-hunyuanvideo",
    )
    return parser


def size_cache_only(args: argparse.Namespace, config: TaylorSeerConfig) -> dict:
    """``--cache-size-only``: print the paper-size sizing and write it as paper_cache_bytes.json."""
    sizing = paper_cache_bytes(args.preset, args.num_steps, config)
    for line in sizing_lines(sizing):
        print(line)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"paper_cache_bytes": sizing}, indent=2) + "\n"
    atomic_write(args.results_dir / "paper_cache_bytes.json", lambda temp: temp.write_text(text, encoding="utf-8"))
    return sizing


def describe(params: HunyuanVideoParams, preset: str, size: VideoSize, dtype: torch.dtype) -> str:
    full = HUNYUAN_VIDEO_PRESETS[preset]
    depth = f"{params.mm_double_blocks_depth} + {params.mm_single_blocks_depth} blocks"
    if (params.mm_double_blocks_depth, params.mm_single_blocks_depth) != (
        full.mm_double_blocks_depth,
        full.mm_single_blocks_depth,
    ):
        depth = f"a slice of {depth} (of {full.mm_double_blocks_depth} + {full.mm_single_blocks_depth}), same widths"
    return (
        f"HunyuanVideo {preset}, {depth}, random weights N(0, {WEIGHT_STD}), {str(dtype).removeprefix('torch.')}; "
        f"{size.height}x{size.width}x{size.frames} ({size.image_tokens(params)} image + {size.text_tokens} random "
        f"text tokens), batch 1"
    )


def main(args: argparse.Namespace, config: TaylorSeerConfig) -> dict:
    applied = prepare_run(args)
    if args.cache_size_only:
        return size_cache_only(args, config)
    device = args.device
    cuda = device.type == "cuda"
    params = sliced_params(
        args.preset,
        args.double_blocks or (None if cuda else CPU_DOUBLE_BLOCKS),
        args.single_blocks or (None if cuda else CPU_SINGLE_BLOCKS),
    )
    size = resolve_size(args, cuda)
    dtype = resolve_dtype(args.dtype, device)
    decode = cuda if args.decode is None else args.decode
    model = random_hunyuan_video(params, args.seed, device, dtype)
    vae = random_vae(args.seed, device, torch.float16 if cuda else torch.float32) if decode else nn.Identity()
    pipe = BenchmarkPipeline(model, vae, device)
    latents, text = random_inputs(params, size, args.seed + 1, device, dtype)
    outputs: dict = {}
    run = sampler(pipe, latents, text, args.num_steps, outputs)
    stages = {"VAE decode": lambda: pipe.decode(outputs["latents"])} if decode else {}
    model_line = describe(params, args.preset, size, dtype)
    stage_line = ("VAE decode timed outside the loop (fp16 on CUDA). " if decode else "Only the transformer loop is "
                  "timed (no VAE decode). ") + TEXT_ENCODER_NOTE  # fmt: skip
    print(
        f"HunyuanVideo latency: {model_line}; {device}, {applied['threads']} threads, malloc {applied['malloc']}"
        f"{', compiled' if args.compile else ''}; "
        f"{args.num_steps} steps, {args.repeats} interleaved repeats (minimum kept)"
    )
    blocks = [*model.double_blocks, *model.single_blocks]
    results = measure_paper_rows(run, config, args, blocks=blocks, stages=stages)
    sizing = paper_cache_bytes(args.preset, args.num_steps, config)
    for line in sizing_lines(sizing):
        print(line)
    lines = [
        f"{model_line}. Loop: the tree's HunyuanVideoPipeline.denoise (flow shift {FLOW_SHIFT}, Euler, embedded "
        f"guidance {EMBEDDED_GUIDANCE}), {args.num_steps} steps; device {device}, {applied['threads']} threads, malloc "
        f"{applied['malloc']}. Every figure is the minimum over {args.repeats} interleaved repeats after one untimed "
        "run; per-step figures are the median over the steps of a kind of each step's minimum.",
        DEPTH_NOTE,
        stage_line,
        *sizing_lines(sizing),
    ]
    settings = {**vars(args), **applied, "device": str(device), "results_dir": str(args.results_dir),
                "dtype": str(dtype).removeprefix("torch."), "decode": decode,
                "double_blocks": params.mm_double_blocks_depth, "single_blocks": params.mm_single_blocks_depth,
                "preset_double_blocks": HUNYUAN_VIDEO_PRESETS[args.preset].mm_double_blocks_depth,
                "preset_single_blocks": HUNYUAN_VIDEO_PRESETS[args.preset].mm_single_blocks_depth,
                **size.record(params), "flow_shift": FLOW_SHIFT, "embedded_guidance_scale": EMBEDDED_GUIDANCE,
                "parameters": parameter_counts(model), "depth_note": DEPTH_NOTE, "stages_note": stage_line}  # fmt: skip
    title = f"Latency: HunyuanVideo {args.preset}, N={config.interval} O={config.max_order}, {device}"
    return write_results(
        args.results_dir, results, title=title, settings=settings, lines=lines, extra={"paper_cache_bytes": sizing}
    )


def cli(argv: Sequence[str] | None = None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    return run_cli(main, args, config_from_args(args, parser))


if __name__ == "__main__":
    cli()
