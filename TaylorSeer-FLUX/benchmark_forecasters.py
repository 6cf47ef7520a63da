"""Forecasters x full-step placements on a tiny random-weight FLUX: relative error to full compute, nothing more.

    python TaylorSeer-FLUX/benchmark_forecasters.py                          # T=50, K = 8 10 11 18, orders 1 2
    python TaylorSeer-FLUX/benchmark_forecasters.py --num-steps 28 --full-steps 6 8 --orders 1 2 3

The ``flux-tiny`` preset with seeded random weights (RMSNorm scales near 1, everything else small, so that no block
is a no-op), seeded random text embeddings in place of T5 and CLIP, and FLUX.1-dev's real sampler: the shifted
flow-matching schedule and the Euler loop of ``taylorseer_flux.sampling``. Each forecaster (taylor, newton, hermite)
of each order runs with each budget K of full steps placed uniform, late-dense, and as the paper's interval schedule
where some N spends exactly K (FLUX's reference warm-up, E=3, in every placement), and its final packed latents are
compared with full compute's on the same noise (:mod:`common.forecaster_benchmark`).

A random model draws no images, so the numbers say how well each forecast follows *these* features, not how the real
FLUX.1-dev's images would look: every output says so in its first line. Writes results.json, results.md and
rel_error_vs_full_steps.png in ``--results-dir``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import torch

from common.cli import HelpFormatter, run_cli
from common.forecaster_benchmark import (
    Grid,
    add_benchmark_args,
    grid_from_args,
    print_row,
    run_grid,
    tiny_model_caveat,
    write_results,
)
from common.taylor_cache import TaylorCache
from taylorseer_flux.model import FLUX_PRESETS, Flux
from taylorseer_flux.sampling import denoise, get_noise, get_schedule, image_ids, pack, text_ids

PRESET = "flux-tiny"
FIRST_ENHANCE = 3  # the reference FLUX code's warm-up (sample.py's default)
NUM_IMAGES, HEIGHT, WIDTH = 2, 128, 128  # 8 x 8 = 64 packed image tokens per image
TEXT_TOKENS = 16
GUIDANCE = 3.5  # FLUX.1-dev's distilled guidance
WEIGHT_SCALE = 0.1


def random_flux(seed: int, device: torch.device) -> Flux:
    """The ``flux-tiny`` preset with every parameter drawn from ``seed``: RMSNorm scales 1 + 0.1 N(0, 1), so that the
    norms keep activations O(1); everything else 0.1 N(0, 1)."""
    model = Flux(FLUX_PRESETS[PRESET]).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            param.copy_(1 + WEIGHT_SCALE * noise if name.endswith(".scale") else WEIGHT_SCALE * noise)
    return model.to(device)


def sampler(model: Flux, seed: int, num_steps: int, device: torch.device):
    """``run(cache)``: the final packed latents (B, 64, 64) of a ``num_steps``-step FLUX.1-dev run on fixed noise and
    text embeddings: text from ``seed + 1`` and noise from ``seed + 2`` (the weights took ``seed``: no input repeats
    the weights' random stream), drawn on the CPU so that every device sees the same inputs."""
    params = model.params
    generator = torch.Generator().manual_seed(seed + 1)
    txt = torch.randn(NUM_IMAGES, TEXT_TOKENS, params.context_in_dim, generator=generator).to(device)
    vec = torch.randn(NUM_IMAGES, params.vec_in_dim, generator=generator).to(device)
    noise = get_noise(NUM_IMAGES, HEIGHT, WIDTH, torch.float32, seed=seed + 2)  # (B, 16, 16, 16)
    img = pack(noise).to(device)  # (B, 64, 64)
    img_ids = image_ids(NUM_IMAGES, noise.shape[-2] // 2, noise.shape[-1] // 2, device=device)
    txt_ids = text_ids(NUM_IMAGES, TEXT_TOKENS, device=device)
    timesteps = get_schedule(num_steps, img.shape[1])  # FLUX.1-dev's shifted schedule

    def run(cache: TaylorCache | None) -> torch.Tensor:
        return denoise(model, img, img_ids, txt, txt_ids, vec, timesteps, guidance=GUIDANCE, cache=cache)

    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_benchmark_args(parser, results_dir="results/forecasters-flux-tiny")
    return parser


def main(args: argparse.Namespace, grid: Grid) -> dict:
    model = random_flux(args.seed, args.device)
    rows = run_grid(sampler(model, args.seed, grid.num_steps, args.device), grid, on_row=print_row)
    lines = [
        f"Model: FLUX `{PRESET}` preset, random weights (seed {args.seed}); {NUM_IMAGES} images of {HEIGHT}x{WIDTH} "
        f"pixels, {TEXT_TOKENS} random text tokens, guidance {GUIDANCE}; FLUX.1-dev's shifted schedule, Euler, "
        f"{grid.num_steps} steps; warm-up E={FIRST_ENHANCE}, no derivative discarded (derivative_start_step 0).",
    ]
    settings = {**vars(args), "results_dir": str(args.results_dir), "device": str(args.device)}
    return write_results(
        args.results_dir,
        rows,
        grid,
        title=f"Forecasters x placements: FLUX {PRESET} (random weights), {grid.num_steps} steps",
        caveat=tiny_model_caveat("image"),
        lines=lines,
        settings=settings,
    )


def cli(argv: Sequence[str] | None = None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    grid = grid_from_args(args, parser, first_enhance=FIRST_ENHANCE)
    return run_cli(main, args, grid)


if __name__ == "__main__":
    cli()
