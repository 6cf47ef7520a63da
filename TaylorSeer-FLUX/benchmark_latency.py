"""Latency of full compute, FORA and TaylorSeer on FLUX with random weights: per step, per loop, memory, cache bytes.

    python TaylorSeer-FLUX/benchmark_latency.py                  # CUDA: flux-dev 1024², bf16, 512 text tokens
    python TaylorSeer-FLUX/benchmark_latency.py --device cpu     # a slice: flux-dev widths, 1 + 1 blocks, 128²
    python TaylorSeer-FLUX/benchmark_latency.py --device cpu --double-blocks 2 --single-blocks 2 --height 256
    python TaylorSeer-FLUX/benchmark_latency.py --cache-size-only    # paper-size cache bytes on the meta device

The paper's FLUX setting by default (N=6, O=2, E=3, the reference's discarded step-0 feature: --derivative-start-step
2, as sample.py), FLUX.1-dev's sampler (``taylorseer_flux.sampling``: shifted schedule, Euler, distilled guidance),
a preset with seeded random weights (timing does not depend on their values) and fixed random tensors in place of the
T5 and CLIP outputs. FORA is the same schedule at order 0; full compute runs every step.

A CPU cannot hold flux-dev (float32 weights 48 GB), so there the defaults keep its widths but run a slice of its
blocks (--double-blocks, --single-blocks) at a small image and text length. Every block of a kind does the same work,
and a forecast step skips the same part of each, so the per-block ratio of forecast to full step does not depend on
the depth; the outputs say so. On CUDA the VAE decode (FLUX's autoencoder architecture, random weights) is timed as a
stage outside the loop; the text encoders are not (the tree builds them only from downloaded checkpoints).

Every run also sizes the cache at the paper's size (flux-dev 1024², batch 1, bf16, 512 text tokens) on the meta
device, nothing allocated, against reference-semantics §8 (``paper_cache_bytes`` in results.json);
``--cache-size-only`` does only that, writing cache_size.json and cache_size.md.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from common.caching import CacheMethod
from common.cli import (
    MAX_SEED,
    HelpFormatter,
    UsageError,
    check_output_folder,
    finite_float,
    int_range,
    run_cli,
)
from common.io import atomic_write
from common.latency_benchmark import (
    add_latency_args,
    cache_footprint,
    config_from_args,
    measure_paper_rows,
    prepare_run,
    write_results,
)
from common.methods import fora_of
from common.report import markdown_table
from common.taylor_cache import TaylorSeerConfig, full_step_indices
from taylorseer_flux.autoencoder import FLUX_AE_CONFIG, decode_latents
from taylorseer_flux.model import FLUX_PRESETS, Flux, FluxParams
from taylorseer_flux.sampling import LATENT_CHANNELS, denoise, get_noise, get_schedule, image_ids, pack, text_ids
from taylorseer_flux.text_encoders import T5_MAX_LENGTH

# The paper's FLUX setting (sample.py's defaults): N=6, O=2, E=3, derivatives from step 2 on (reference §1.4).
INTERVAL, MAX_ORDER, FIRST_ENHANCE, DERIVATIVE_START_STEP = 6, 2, 3, 2
GUIDANCE = 3.5  # FLUX.1-dev's distilled guidance
CUDA_SIZE, CUDA_TEXT_TOKENS = 1024, T5_MAX_LENGTH
# About 5 minutes for the whole benchmark (3 variants x 4 runs x 50 steps) on 2 cores: ~0.5 s per full step.
CPU_SIZE, CPU_TEXT_TOKENS, CPU_DOUBLE_BLOCKS, CPU_SINGLE_BLOCKS = 128, 32, 1, 1
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
GB = 1e9  # reference-semantics §8 counts decimal GB
# reference-semantics §8, FLUX 1024² bf16 batch 1: the reference's cache by order, and the raw single-stream
# attention it keeps for ToCa (included in both), which this cache does not hold.
REFERENCE_GB = {1: 5.38, 2: 7.53}
REFERENCE_TOCA_ATTENTION_GB = 1.08


@dataclass(frozen=True)
class Workload:
    """What one denoising loop runs on: the architecture, the batch, the image and text sizes, the dtype."""

    params: FluxParams
    batch: int
    height: int
    width: int
    text_tokens: int
    dtype: torch.dtype

    @property
    def patches(self) -> tuple[int, int]:
        """Packed tokens per image side: the 16-channel latents are 1/8 of the pixels, packed in 2x2 patches."""
        return math.ceil(self.height / 16), math.ceil(self.width / 16)

    @property
    def image_tokens(self) -> int:
        rows, cols = self.patches
        return rows * cols

    def output_set_bytes(self) -> int:
        """Bytes of one output of every cached module: per double block img_attn and img_mlp (image tokens),
        txt_attn and txt_mlp (text tokens); per single block ``total`` (both), each ``hidden_size`` wide."""
        tokens = self.image_tokens + self.text_tokens
        modules = 2 * self.params.depth + self.params.depth_single_blocks
        return modules * self.batch * tokens * self.params.hidden_size * self.dtype.itemsize

    def record(self) -> dict:
        p = self.params
        return {"double_blocks": p.depth, "single_blocks": p.depth_single_blocks, "hidden_size": p.hidden_size,
                "batch": self.batch, "height": self.height, "width": self.width, "image_tokens": self.image_tokens,
                "text_tokens": self.text_tokens, "dtype": str(self.dtype).removeprefix("torch.")}  # fmt: skip


PAPER = Workload(FLUX_PRESETS["flux-dev"], batch=1, height=1024, width=1024, text_tokens=512, dtype=torch.bfloat16)


def paper_workload(preset: str) -> Workload:
    """The paper's size (1024², batch 1, bf16, 512 text tokens) with the architecture of ``preset``."""
    return replace(PAPER, params=FLUX_PRESETS[preset])


def has_reference(workload: Workload) -> bool:
    """Whether reference-semantics §8's figures are of this workload: flux-dev's blocks at the paper's size."""
    return replace(workload, params=replace(workload.params, guidance_embed=True)) == PAPER


def random_flux(params: FluxParams, dtype: torch.dtype, device: torch.device, seed: int) -> Flux:
    """``params`` in ``dtype`` on ``device`` (built on the meta device: no float32 copy first): RMSNorm scales 1,
    weights N(0, 1/fan_in) from ``seed`` (activations stay O(1) through the stack, no overflow or denormals to skew
    the timing), biases 0. On the meta device only the shapes exist."""
    with torch.device("meta"):
        model = Flux(params)
    model = model.to(dtype=dtype).eval().requires_grad_(False)
    if device.type == "meta":
        return model
    model = model.to_empty(device=device)
    generator = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(".scale"):
                param.fill_(1.0)
            elif param.ndim == 2:
                param.normal_(0.0, param.shape[1] ** -0.5, generator=generator)
            else:
                param.zero_()
    return model


def flux_loop(
    model: Flux, workload: Workload, num_steps: int, guidance: float, device: torch.device, seed: int
) -> Callable[[CacheMethod], torch.Tensor]:
    """``run(cache)``: one ``num_steps``-step run of the tree's sampler on fixed inputs, drawn once on the CPU from
    ``seed`` (noise) and ``seed + 1`` (random tensors in place of the T5 sequence and the CLIP vector)."""
    params = model.params
    generator = torch.Generator().manual_seed(seed + 1)
    txt = torch.randn(workload.batch, workload.text_tokens, params.context_in_dim, generator=generator)
    vec = torch.randn(workload.batch, params.vec_in_dim, generator=generator)
    noise = get_noise(workload.batch, workload.height, workload.width, torch.float32, seed=seed)
    img = pack(noise).to(device=device, dtype=workload.dtype)
    txt, vec = txt.to(device=device, dtype=workload.dtype), vec.to(device=device, dtype=workload.dtype)
    img_ids = image_ids(workload.batch, *workload.patches, device=device)
    txt_ids = text_ids(workload.batch, workload.text_tokens, device=device)
    timesteps = get_schedule(num_steps, img.shape[1])

    def run(cache: CacheMethod) -> torch.Tensor:
        return denoise(model, img, img_ids, txt, txt_ids, vec, timesteps, guidance=guidance, cache=cache)

    return run


def kept_outputs(num_steps: int, config: TaylorSeerConfig) -> int:
    """Outputs per cached module at the end of a run: one more per full step from ``derivative_start_step`` on
    (earlier full steps start over), at most ``max_order + 1``."""
    later = [s for s in full_step_indices(num_steps, config)[1:] if s >= config.derivative_start_step]
    return min(config.max_order + 1, 1 + len(later))


def sizing_variants(config: TaylorSeerConfig) -> dict[str, TaylorSeerConfig]:
    """FORA and TaylorSeer at O=1 and O=2 (the reference's figures) on ``config``'s schedule, plus ``config``'s own
    order if another."""
    orders = sorted({1, 2, config.max_order} - {0})
    return {"FORA": fora_of(config), **{f"TaylorSeer O={o}": replace(config, max_order=o) for o in orders}}


def cache_sizes(preset: str, workload: Workload, num_steps: int, config: TaylorSeerConfig) -> dict:
    """Bytes each cache of :func:`sizing_variants` holds at the end of a ``num_steps``-step run of ``workload``,
    from a run on the meta device: shapes only, nothing allocated, so the paper's size fits on any machine."""
    meta = torch.device("meta")
    run = flux_loop(random_flux(workload.params, workload.dtype, meta, 0), workload, num_steps, GUIDANCE, meta, 0)
    record = {"preset": preset, **workload.record(), "num_steps": num_steps}
    record["output_set_bytes"] = workload.output_set_bytes()
    record["reference_gb"] = (
        {f"TaylorSeer O={o}": gb for o, gb in REFERENCE_GB.items()} if has_reference(workload) else {}
    )
    for label, variant in sizing_variants(config).items():
        record[label] = {**cache_footprint(run, variant), "outputs_kept": kept_outputs(num_steps, variant)}
    return record


def sizing_markdown(sizing: dict) -> str:
    """The sizing table next to reference-semantics §8 (decimal GB)."""
    header = ["cache", "outputs kept per module", "GB", "reference GB", "reference without ToCa's attention GB"]
    rows = []
    for label, entry in sizing.items():
        if not label.startswith(("FORA", "TaylorSeer")):
            continue
        reference = sizing["reference_gb"].get(label)
        rows.append([
            label,
            str(entry["outputs_kept"]),
            f"{entry['cache_bytes'] / GB:.2f}",
            "—" if reference is None else f"{reference:.2f}",
            "—" if reference is None else f"{reference - REFERENCE_TOCA_ATTENTION_GB:.2f}",
        ])  # fmt: skip
    return markdown_table(header, rows)


def sizing_line(sizing: dict, config: TaylorSeerConfig) -> str:
    """What was sized, and where reference-semantics §8 has figures for it, what they include."""
    line = (
        f"Cache at the paper's size ({sizing['preset']} {sizing['height']}x{sizing['width']}, batch {sizing['batch']}, "
        f"{sizing['dtype']}, {sizing['text_tokens']} text tokens; this run's schedule, T={sizing['num_steps']}, full "
        f"steps {full_step_indices(sizing['num_steps'], config)}, derivatives from step {config.derivative_start_step}"
        f"), sized on the meta device, GB = 1e9: one output of every cached module = "
        f"{sizing['output_set_bytes'] / GB:.2f} GB."
    )
    if sizing["reference_gb"]:
        line += (
            f" Reference-semantics §8: O=1 {REFERENCE_GB[1]} GB, O=2 {REFERENCE_GB[2]} GB, each including "
            f"{REFERENCE_TOCA_ATTENTION_GB} GB of raw single-stream attention kept for ToCa, not held here."
        )
    return line


def vae_stage(vae_config: dict, workload: Workload, device: torch.device, seed: int) -> Callable[[], torch.Tensor]:
    """The VAE decode of a batch of fixed latents: ``vae_config`` (FLUX's AE architecture) with random weights."""
    from diffusers import AutoencoderKL  # diffusers takes seconds to import

    torch.manual_seed(seed)
    with torch.device(device):
        vae = AutoencoderKL(**vae_config)
    vae = vae.to(dtype=workload.dtype).eval().requires_grad_(False)
    rows, cols = workload.patches
    latents = torch.randn(
        workload.batch, LATENT_CHANNELS, 2 * rows, 2 * cols, generator=torch.Generator().manual_seed(seed)
    )
    latents = latents.to(device)
    return lambda: decode_latents(vae, latents)


def available_memory(device: torch.device) -> int | None:
    """Free bytes on ``device``: the CUDA allocator's view, or the kernel's MemAvailable (None if unknown)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        line = next(x for x in Path("/proc/meminfo").read_text().splitlines() if x.startswith("MemAvailable:"))
    except (OSError, StopIteration):
        return None
    return int(line.split()[1]) * 1024


def check_fits(workload: Workload, device: torch.device) -> None:
    """Refuse a model whose weights alone exceed the device's free memory, before building it."""
    with torch.device("meta"):
        weights = sum(p.numel() for p in Flux(workload.params).parameters()) * workload.dtype.itemsize
    free = available_memory(device)
    if free is not None and weights > free:
        raise UsageError(
            f"the model's weights need {weights / GB:.1f} GB ({workload.params.depth} double + "
            f"{workload.params.depth_single_blocks} single blocks, {workload.dtype}), {device} has {free / GB:.1f} GB "
            "free: pass fewer --double-blocks/--single-blocks or a smaller --dtype"
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--preset", choices=sorted(FLUX_PRESETS), default="flux-dev", help="architecture")
    parser.add_argument(
        "--double-blocks",
        type=int_range(1),
        default=None,
        help=f"the first N double blocks of the preset (default: all on CUDA, {CPU_DOUBLE_BLOCKS} on CPU)",
    )
    parser.add_argument(
        "--single-blocks",
        type=int_range(1),
        default=None,
        help=f"the first M single blocks of the preset (default: all on CUDA, {CPU_SINGLE_BLOCKS} on CPU)",
    )
    for side in ("height", "width"):
        parser.add_argument(
            f"--{side}",
            type=int_range(16, 4096),
            default=None,
            help=f"pixels (default: {CUDA_SIZE} CUDA, {CPU_SIZE} CPU)",
        )
    parser.add_argument("--batch", type=int_range(1, 64), default=1, help="images per loop")
    parser.add_argument(
        "--text-tokens",
        type=int_range(1, T5_MAX_LENGTH),
        default=None,
        help=f"length of the random T5 sequence (default: {CUDA_TEXT_TOKENS} on CUDA, {CPU_TEXT_TOKENS} on CPU)",
    )
    parser.add_argument("--guidance", type=finite_float(0), default=GUIDANCE, help="distilled guidance scale")
    parser.add_argument(
        "--dtype",
        choices=["auto", *DTYPES],
        default="auto",
        help="weights and features; auto: bfloat16 CUDA, float32 CPU",
    )
    parser.add_argument("--seed", type=int_range(0, MAX_SEED - 1), default=0, help="weights, noise and text tensors")
    parser.add_argument(
        "--paper-preset", choices=sorted(FLUX_PRESETS), default="flux-dev", help="the model whose cache is sized"
    )
    parser.add_argument(
        "--cache-size-only",
        action="store_true",
        help="only size the caches at the paper's size on the meta device (no timing, no weights)",
    )
    add_latency_args(
        parser,
        interval=INTERVAL,
        max_order=MAX_ORDER,
        first_enhance=FIRST_ENHANCE,
        derivative_start_step=DERIVATIVE_START_STEP,
        results_dir="results/latency-flux",
    )
    return parser


def workload_from_args(args: argparse.Namespace, cuda: bool) -> tuple[Workload, list[str]]:
    """The workload of the flags, with the device's defaults for those not given; also the defaults it took."""
    preset = FLUX_PRESETS[args.preset]
    picked = {
        "double_blocks": (args.double_blocks, preset.depth if cuda else min(CPU_DOUBLE_BLOCKS, preset.depth)),
        "single_blocks": (
            args.single_blocks,
            preset.depth_single_blocks if cuda else min(CPU_SINGLE_BLOCKS, preset.depth_single_blocks),
        ),
        "height": (args.height, CUDA_SIZE if cuda else CPU_SIZE),
        "width": (args.width, CUDA_SIZE if cuda else CPU_SIZE),
        "text_tokens": (args.text_tokens, CUDA_TEXT_TOKENS if cuda else CPU_TEXT_TOKENS),
    }
    values = {name: default if given is None else given for name, (given, default) in picked.items()}
    defaults = [f"--{name.replace('_', '-')} {values[name]}" for name, (given, _) in picked.items() if given is None]
    for flag, value, limit in (
        ("--double-blocks", values["double_blocks"], preset.depth),
        ("--single-blocks", values["single_blocks"], preset.depth_single_blocks),
    ):
        if value > limit:
            raise UsageError(f"{flag} {value}: preset {args.preset} has {limit}; pass at most {limit}")
    params = replace(preset, depth=values["double_blocks"], depth_single_blocks=values["single_blocks"])
    dtype = (torch.bfloat16 if cuda else torch.float32) if args.dtype == "auto" else DTYPES[args.dtype]
    workload = Workload(
        params, args.batch, values["height"], values["width"], values["text_tokens"], dtype
    )  # fmt: skip
    return workload, defaults


def slice_note(preset_name: str, workload: Workload) -> str | None:
    """Why a slice of the preset's blocks measures what the whole model would (None when it is the whole model)."""
    preset, p = FLUX_PRESETS[preset_name], workload.params
    if (p.depth, p.depth_single_blocks) == (preset.depth, preset.depth_single_blocks):
        return None
    return (
        f"A slice of {preset_name}: every block of a kind does the same work and a forecast step skips the same part "
        "of each, so the per-block ratio of forecast to full step does not depend on the depth; the loop times do "
        "(the block part scales with it), and the embedders and final layer, which run at every step, weigh more in "
        "a shallower stack."
    )


def describe(args: argparse.Namespace, workload: Workload, device: torch.device, applied: dict) -> list[str]:
    """The lines above the table: the model (and why a slice is enough), what is timed, how."""
    preset = FLUX_PRESETS[args.preset]
    p = workload.params
    blocks = f"{p.depth} of {preset.depth} double and {p.depth_single_blocks} of {preset.depth_single_blocks} single"
    lines = [
        f"FLUX `{args.preset}` ({blocks} blocks, hidden {p.hidden_size}) with random weights (seed {args.seed}); "
        f"{workload.batch} image(s) of {workload.height}x{workload.width} px ({workload.image_tokens} image tokens), "
        f"{workload.text_tokens} random text tokens in place of T5 and a random CLIP vector, guidance {args.guidance}; "
        f"FLUX.1-dev's shifted schedule, Euler, {args.num_steps} steps; {workload.dtype}, {device}, "
        f"{applied['threads']} threads, malloc {applied['malloc']}. Every figure is the minimum over {args.repeats} "
        "interleaved repeats after one untimed run; per-step figures are the median over the steps of a kind of "
        "each step's minimum."
    ]
    note = slice_note(args.preset, workload)
    if note:
        lines.append(note)
    if workload.image_tokens + workload.text_tokens < PAPER.image_tokens + PAPER.text_tokens:
        lines.append(
            f"At {workload.image_tokens + workload.text_tokens} tokens a forecast step's remaining work (every "
            "block's modulation, whose weights are read at every step, the embedders and the final layer) is a "
            f"larger share of a full step than at 1024² ({PAPER.image_tokens + PAPER.text_tokens} tokens)."
        )
    if device.type == "cuda":
        lines.append(
            "End to end = the transformer loop + the VAE decode (FLUX's autoencoder architecture, random weights). "
            "The text encoders are not timed: text_encoders.py builds T5-XXL and CLIP-L only from downloaded "
            "checkpoints; random tensors stand in for their outputs."
        )
    else:
        lines.append(
            "Transformer loop only: no VAE decode or text encoders on CPU; random tensors stand in for the T5 and "
            "CLIP outputs."
        )
    return lines


def size_only(args: argparse.Namespace, config: TaylorSeerConfig) -> dict:
    """--cache-size-only: the paper-size sizing, printed and written as cache_size.json/.md."""
    folder = check_output_folder(args.results_dir, "--results-dir")
    sizing = cache_sizes(args.paper_preset, paper_workload(args.paper_preset), args.num_steps, config)
    text = "\n\n".join([sizing_line(sizing, config), sizing_markdown(sizing)]) + "\n"
    print(text, end="")
    folder.mkdir(parents=True, exist_ok=True)
    record = {"paper_cache_bytes": sizing, "settings": settings_record(args)}
    atomic_write(folder / "cache_size.json", lambda temp: temp.write_text(json.dumps(record, indent=2) + "\n"))
    atomic_write(folder / "cache_size.md", lambda temp: temp.write_text(text))
    return record


def settings_record(args: argparse.Namespace) -> dict:
    return {**vars(args), "results_dir": str(args.results_dir), "device": str(args.device)}


def main(args: argparse.Namespace, config: TaylorSeerConfig) -> dict:
    if args.cache_size_only:
        return size_only(args, config)
    applied = prepare_run(args)
    device = args.device
    workload, defaults = workload_from_args(args, device.type == "cuda")
    check_fits(workload, device)
    if defaults:
        where = "CUDA" if device.type == "cuda" else "CPU (a slice at a small size: about 5 minutes on 2 cores)"
        print(f"defaults for {where}: {' '.join(defaults)}")
    model = random_flux(workload.params, workload.dtype, device, args.seed)
    run = flux_loop(model, workload, args.num_steps, args.guidance, device, args.seed)
    stages = {"VAE decode": vae_stage(FLUX_AE_CONFIG, workload, device, args.seed)} if device.type == "cuda" else {}
    lines = describe(args, workload, device, applied)
    print("\n".join(lines))
    blocks = [*model.double_blocks, *model.single_blocks]
    results = measure_paper_rows(run, config, args, blocks=blocks, stages=stages)
    sizing = cache_sizes(args.paper_preset, paper_workload(args.paper_preset), args.num_steps, config)
    lines.append(sizing_line(sizing, config) + "\n\n" + sizing_markdown(sizing))
    print(lines[-1])
    settings = {**settings_record(args), **applied, "workload": workload.record(), "defaults_taken": defaults}
    settings["slice"] = slice_note(args.preset, workload)
    p = workload.params
    title = (
        f"Latency: FLUX {args.preset} ({p.depth}+{p.depth_single_blocks} blocks) {workload.height}x{workload.width}, "
        f"N={config.interval} O={config.max_order}, {device}"
    )
    return write_results(
        args.results_dir, results, title=title, settings=settings, lines=lines, extra={"paper_cache_bytes": sizing}
    )


def cli(argv: Sequence[str] | None = None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    return run_cli(main, args, config_from_args(args, parser))


if __name__ == "__main__":
    cli()
