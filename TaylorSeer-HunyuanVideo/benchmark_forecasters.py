"""Forecasters x full-step placements on a tiny random-weight HunyuanVideo: relative error to full compute only.

    python TaylorSeer-HunyuanVideo/benchmark_forecasters.py                  # T=50, K = 8 10 11 18, orders 1 2
    python TaylorSeer-HunyuanVideo/benchmark_forecasters.py --num-steps 30 --full-steps 6 8 --orders 1 2 3

The ``HYVideo-tiny`` preset (guidance-distilled, as the released weights) with seeded random weights (norm scales near
1, everything else small, so that no block is a no-op), seeded random text embeddings in place of LLaVA-LLaMA and
CLIP, and the released model's sampler: the flow-matching sigmas with shift 7 (``scheduler.flow_match_sigmas``,
reverse) and its float32 Euler step, an embedded guidance of 6, as the pipeline's denoising loop does. Each
forecaster (taylor, newton, hermite) of each order runs with each budget K of full steps placed uniform, late-dense,
and as the paper's interval schedule where some N spends exactly K (HunyuanVideo's reference warm-up, E=1, in every
placement), and its final latents are compared with full compute's on the same noise
(:mod:`common.forecaster_benchmark`).

A random model makes no videos, so the numbers say how well each forecast follows *these* features, not how the real
HunyuanVideo's videos would look: every output says so in its first line. Writes results.json, results.md and
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
from taylorseer_hunyuanvideo.model import HUNYUAN_VIDEO_PRESETS, HunyuanVideo
from taylorseer_hunyuanvideo.scheduler import euler_step, flow_match_sigmas, timesteps_from_sigmas

PRESET = "HYVideo-tiny"
FIRST_ENHANCE = 1  # the reference HunyuanVideo code's warm-up (sample_video.py's default)
LATENT_FRAMES, LATENT_HEIGHT, LATENT_WIDTH = 5, 8, 8  # a 17-frame 64x64 video: 5 x 4 x 4 = 80 tokens
TEXT_TOKENS = 16
FLOW_SHIFT = 7.0  # the 720p/480p text-to-video model's
EMBEDDED_GUIDANCE = 6.0  # the guidance-distilled release's, fed to the model x 1000
WEIGHT_SCALE = 0.1


def random_hunyuan_video(seed: int, device: torch.device) -> HunyuanVideo:
    """The ``HYVideo-tiny`` preset with every parameter drawn from ``seed``: the weights of norm layers
    1 + 0.1 N(0, 1), so that the norms keep activations O(1); everything else 0.1 N(0, 1)."""
    model = HunyuanVideo(HUNYUAN_VIDEO_PRESETS[PRESET]).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            is_norm_scale = "norm" in name.split(".")[-2] and name.endswith(".weight")
            param.copy_(1 + WEIGHT_SCALE * noise if is_norm_scale else WEIGHT_SCALE * noise)
    return model.to(device)


def sampler(model: HunyuanVideo, seed: int, num_steps: int, device: torch.device):
    """``run(cache)``: the final float32 latents (1, 16, 5, 8, 8) of a ``num_steps``-step run on fixed noise and
    text embeddings, all from ``seed + 1`` (the weights took ``seed``), drawn on the CPU so that every device sees the
    same inputs. The loop is the pipeline's ``denoise`` without CFG: reset the cache, announce each step, Euler."""
    params = model.params
    generator = torch.Generator().manual_seed(seed + 1)
    shape = (1, params.in_channels, LATENT_FRAMES, LATENT_HEIGHT, LATENT_WIDTH)
    noise = torch.randn(shape, generator=generator).to(device)
    text_states = torch.randn(1, TEXT_TOKENS, params.text_states_dim, generator=generator).to(device)
    text_states_2 = torch.randn(1, params.text_states_dim_2, generator=generator).to(device)
    guidance = torch.full((1,), EMBEDDED_GUIDANCE * 1000.0, device=device)
    sigmas = flow_match_sigmas(num_steps, shift=FLOW_SHIFT, reverse=True).to(device)  # 1 -> 0
    timesteps = timesteps_from_sigmas(sigmas)  # sigma * 1000

    @torch.no_grad()
    def run(cache: TaylorCache | None) -> torch.Tensor:
        latents = noise
        if cache is not None:
            cache.reset(num_steps)
        for i in range(num_steps):
            if cache is not None:
                cache.begin_step(i)
            # No padding in the random text: mask None runs the joint attention unmasked, as the pipeline does.
            velocity = model(latents, timesteps[i : i + 1], text_states, None, text_states_2, guidance, cache=cache)
            latents = euler_step(latents, velocity, sigmas[i], sigmas[i + 1])
        return latents

    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_benchmark_args(parser, results_dir="results/forecasters-hunyuanvideo-tiny")
    return parser


def main(args: argparse.Namespace, grid: Grid) -> dict:
    model = random_hunyuan_video(args.seed, args.device)
    rows = run_grid(sampler(model, args.seed, grid.num_steps, args.device), grid, on_row=print_row)
    lines = [
        f"Model: HunyuanVideo `{PRESET}` preset, random weights (seed {args.seed}); one latent video of "
        f"{LATENT_FRAMES}x{LATENT_HEIGHT}x{LATENT_WIDTH} (frames x height x width), {TEXT_TOKENS} random text tokens, "
        f"embedded guidance {EMBEDDED_GUIDANCE:g}; flow-matching sigmas with shift {FLOW_SHIFT:g}, Euler, "
        f"{grid.num_steps} steps; warm-up E={FIRST_ENHANCE}.",
    ]
    settings = {**vars(args), "results_dir": str(args.results_dir), "device": str(args.device)}
    return write_results(
        args.results_dir,
        rows,
        grid,
        title=f"Forecasters x placements: HunyuanVideo {PRESET} (random weights), {grid.num_steps} steps",
        caveat=tiny_model_caveat("video"),
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
