"""Latency of full compute, FORA and TaylorSeer on a DiT with random weights: per step, per loop, memory, cache bytes.

    python TaylorSeer-DiT/benchmark_latency.py                  # CPU yardstick: DiT-S/2 256², 4 images + CFG, DDIM 50
    python TaylorSeer-DiT/benchmark_latency.py --device cuda    # the paper's size: DiT-XL/2 256², 8 images + CFG, bf16
    python TaylorSeer-DiT/benchmark_latency.py --interval 5 --max-order 3 --factor-dtype bfloat16

The model is a preset at full size with seeded random weights (every parameter N(0, 0.02), so that no block is the
identity that DiT's zero initialisation makes it): latency does not depend on the weights' values, and no checkpoint
is needed. Sampling is the tree's own ``sample_dit`` (DDIM, classifier-free guidance in one doubled batch), so the
per-step times are those of the real loop. The three rows share the TaylorSeer flags: FORA is the same schedule at
order 0. ``--decode`` also times the Stable Diffusion VAE (its real architecture, random weights) on the samples, the
same for every row, for an end-to-end figure.

The paper's size of the cache is reported too (``paper_cache_bytes`` in the JSON): the model at --paper-model size
on the meta device, run through the schedule without allocating anything, against reference-semantics §8.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import torch

from common.caching import CacheMethod
from common.cli import HelpFormatter, finite_float, int_range, run_cli
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
from common.taylor_cache import TaylorSeerConfig
from taylorseer_dit.diffusion import create_diffusion
from taylorseer_dit.models import DiT, DiT_models
from taylorseer_dit.pipeline import decode_latents, sample_dit

# The paper's DiT setting (TaylorSeer README, Table 2): DDIM 50, N=5, O=3, the reference's two warm-up steps.
INTERVAL, MAX_ORDER, FIRST_ENHANCE = 5, 3, 2
CPU_MODEL, CUDA_MODEL = "DiT-S/2", "DiT-XL/2"
CPU_IMAGES, CUDA_IMAGES = 4, 8
WEIGHT_STD = 0.02
LATENT_CHANNELS, LATENT_FACTOR = 4, 8
# The Stable Diffusion VAE that DiT samples are decoded with (sd-vae-ft-ema's config.json).
SD_VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 256,
}


def random_dit(name: str, image_size: int, seed: int, device: torch.device) -> DiT:
    """The preset ``name`` in float32 with every parameter N(0, 0.02) from ``seed`` (the sin-cos positions kept)."""
    model = DiT_models[name](input_size=image_size // LATENT_FACTOR).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param_name, param in model.named_parameters():
            if param_name != "pos_embed":
                param.copy_(torch.randn(param.shape, generator=generator) * WEIGHT_STD)
    return model.to(device)


def random_vae(seed: int, device: torch.device, dtype: torch.dtype):
    from diffusers import AutoencoderKL  # imported here: diffusers takes seconds to import

    torch.manual_seed(seed)
    return AutoencoderKL(**SD_VAE).to(device=device, dtype=dtype).eval()


def paper_cache_bytes(name: str, image_size: int, images: int, cfg_scale: float, num_steps: int, config) -> dict:
    """What the TaylorSeer and FORA caches of ``config`` hold after a ``num_steps``-step run of ``name`` at this size
    in float32 (the DiT reference's dtype), sized on the meta device: shapes only, nothing allocated."""
    with torch.device("meta"):
        model = DiT_models[name](input_size=image_size // LATENT_FACTOR).eval()
    rows = images * (2 if cfg_scale > 1 else 1)
    x = torch.zeros(rows, LATENT_CHANNELS, image_size // LATENT_FACTOR, image_size // LATENT_FACTOR, device="meta")
    y = torch.zeros(rows, dtype=torch.long, device="meta")

    @torch.no_grad()
    def run(cache: CacheMethod) -> None:
        cache.reset(num_steps)
        for step in range(num_steps):
            cache.begin_step(step)
            t = torch.full((rows,), num_steps - 1 - step, device="meta")
            model.forward_with_cfg(x, t, y, cfg_scale, cache=cache) if cfg_scale > 1 else model(x, t, y, cache=cache)

    record = {"model": name, "image_size": image_size, "images": images, "cfg_rows": rows, "dtype": "float32"}
    for label, variant in (("TaylorSeer", config), ("FORA", fora_of(config))):
        record[label] = cache_footprint(run, variant)
    return record


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument(
        "--model", choices=list(DiT_models), default=None, help=f"default: {CPU_MODEL} on CPU, {CUDA_MODEL} on CUDA"
    )
    parser.add_argument("--image-size", type=int, choices=[256, 512], default=256, help="pixels (latent = size / 8)")
    parser.add_argument(
        "--images", type=int_range(1, 1024), default=None, help=f"default: {CPU_IMAGES} on CPU, {CUDA_IMAGES} on CUDA"
    )
    parser.add_argument(
        "--cfg-scale", type=finite_float(1.0), default=1.5, help="> 1 doubles the batch with null labels"
    )
    parser.add_argument(
        "--dtype",
        choices=["auto", "float32", "bfloat16", "float16"],
        default="auto",
        help="compute dtype (autocast over float32 weights); auto: bfloat16 on CUDA, float32 on CPU",
    )
    parser.add_argument("--decode", action="store_true", help="also time the SD VAE decode (random weights)")
    parser.add_argument("--seed", type=int_range(0, 2**31 - 1), default=0, help="weights, labels and noise")
    parser.add_argument("--paper-model", choices=list(DiT_models), default=CUDA_MODEL, help="size the cache of")
    add_latency_args(
        parser,
        interval=INTERVAL,
        max_order=MAX_ORDER,
        first_enhance=FIRST_ENHANCE,
        results_dir="results/latency-dit",
    )
    return parser


def main(args: argparse.Namespace, config: TaylorSeerConfig) -> dict:
    applied = prepare_run(args)
    device = args.device
    cuda = device.type == "cuda"
    name = args.model or (CUDA_MODEL if cuda else CPU_MODEL)
    images = args.images or (CUDA_IMAGES if cuda else CPU_IMAGES)
    dtype = {"auto": torch.bfloat16 if cuda else torch.float32}.get(args.dtype) or getattr(torch, args.dtype)
    model = random_dit(name, args.image_size, args.seed, device)
    diffusion = create_diffusion(f"ddim{args.num_steps}")
    labels = torch.randint(0, model.y_embedder.num_classes, (images,), generator=torch.Generator().manual_seed(1))
    latents = {}

    def run(cache: CacheMethod) -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            result = sample_dit(
                model, diffusion, labels.tolist(), cfg_scale=args.cfg_scale, cache=cache, ddim=True, seed=args.seed
            )
        latents["last"] = result.samples

    stages = {}
    if args.decode:
        vae = random_vae(args.seed, device, dtype)
        stages["VAE decode"] = lambda: decode_latents(vae, latents["last"].to(dtype))
    # Lower precision through autocast, as DiT is usually run: float32 weights, bf16/fp16 matmuls and features.
    print(
        f"DiT latency: {name} {args.image_size}² random weights, {images} images"
        f"{' + CFG' if args.cfg_scale > 1 else ''}, DDIM {args.num_steps}, {dtype}, {device}, "
        f"{applied['threads']} threads, malloc {applied['malloc']}{', compiled' if args.compile else ''}; "
        f"{args.repeats} interleaved repeats (minimum kept)"
    )
    results = measure_paper_rows(run, config, args, blocks=model.blocks, stages=stages)
    sizing = paper_cache_bytes(args.paper_model, 256, CUDA_IMAGES, args.cfg_scale, args.num_steps, config)
    sizing_line = (
        f"Paper-size cache ({sizing['model']} 256², {sizing['images']} images + CFG, float32, sized on the meta "
        f"device): TaylorSeer {sizing['TaylorSeer']['cache_bytes'] / GIB:.2f} GiB, FORA "
        f"{sizing['FORA']['cache_bytes'] / GIB:.2f} GiB (reference-semantics §8: 2.36 MB per block, module and order "
        "per image with CFG)."
    )
    print(sizing_line)
    lines = [
        f"{name} {args.image_size}² with random weights (N(0, {WEIGHT_STD})), {images} images"
        f"{' + classifier-free guidance (batch doubled)' if args.cfg_scale > 1 else ''}, DDIM {args.num_steps} steps, "
        f"{dtype}, device {device}, {applied['threads']} threads, malloc {applied['malloc']}"
        f"{', blocks compiled (common.compile)' if args.compile else ''}. Every figure is the "
        f"minimum over {args.repeats} interleaved repeats after one untimed run; per-step figures are the median over "
        "the steps of a kind of each step's minimum.",
        sizing_line,
    ]
    settings = {**vars(args), **applied, "model": name, "images": images, "dtype": str(dtype), "device": str(device)}
    settings["results_dir"] = str(args.results_dir)
    title = f"Latency: {name} {args.image_size}², N={config.interval} O={config.max_order}, {device}"
    return write_results(
        args.results_dir, results, title=title, settings=settings, lines=lines, extra={"paper_cache_bytes": sizing}
    )


def cli(argv: Sequence[str] | None = None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    return run_cli(main, args, config_from_args(args, parser))


if __name__ == "__main__":
    cli()
