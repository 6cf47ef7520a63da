"""Sample class-conditional images from a DiT with TaylorSeer feature forecasting.

    python TaylorSeer-DiT/sample.py --ddim-sample --num-sampling-steps 50 --interval 5 --max-order 3
    python TaylorSeer-DiT/sample.py --ddim-sample --num-sampling-steps 50 --interval 5 --test-FLOPs   # no weights

Flags follow the TaylorSeer reference (and upstream DiT); ``--interval 1`` is the uncached model.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import torch

from common.checkpoint import CheckpointError
from common.cli import add_taylorseer_args, taylorseer_config_from_args
from common.images import save_grid
from common.taylor_cache import TaylorCache, TaylorSeerConfig
from taylorseer_dit.checkpoints import load_dit, load_vae
from taylorseer_dit.diffusion import create_diffusion
from taylorseer_dit.flops import dit_flops_reports
from taylorseer_dit.models import DiT_models
from taylorseer_dit.pipeline import decode_latents, sample_dit

IMAGE_SIZES = (16, 32, 64, 128, 256, 512)
VAE_DOWNSAMPLE = 8
# Upstream DiT's sample.py labels: retriever, otter, red panda, geyser, arctic wolf, volcano, balloon, arctic fox.
DEFAULT_LABELS = [207, 360, 387, 974, 88, 979, 417, 279]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", choices=list(DiT_models), default="DiT-XL/2", help="DiT preset")
    parser.add_argument(
        "--vae",
        choices=["ema", "mse", "none"],
        default="mse",
        help="sd-vae-ft-{ema,mse} decoder; none = the model works in pixel space and its output is the image",
    )
    parser.add_argument(
        "--vae-path",
        default=None,
        help="local diffusers folder of the VAE; default $TAYLORSEER_VAE_DIR/sd-vae-ft-KIND, else "
        "pretrained_models/sd-vae-ft-KIND",
    )
    parser.add_argument("--image-size", type=int, choices=IMAGE_SIZES, default=256, help="output image size")
    parser.add_argument("--in-channels", type=int, default=4, help="model input channels (4 = SD latents, 3 = RGB)")
    parser.add_argument("--num-classes", type=int, default=1000, help="number of classes the model was trained on")
    parser.add_argument("--class-labels", type=int, nargs="+", default=DEFAULT_LABELS, help="one image per label")
    parser.add_argument("--cfg-scale", type=float, default=1.5, help="classifier-free guidance scale (1 = off)")
    parser.add_argument("--num-sampling-steps", type=int, default=250, help="respaced diffusion steps")
    parser.add_argument("--ddim-sample", action="store_true", help="DDIM (eta 0) instead of DDPM ancestral sampling")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initial noise (and DDPM noise)")
    parser.add_argument(
        "--ckpt",
        default=None,
        help="DiT checkpoint: original .pt, train.py checkpoint (uses 'ema'), .safetensors or a diffusers folder; "
        "default for DiT-XL/2: $TAYLORSEER_DIT_CKPT_DIR or pretrained_models/DiT-XL-2-{size}x{size}.pt",
    )
    parser.add_argument("--output", default="sample.png", help="PNG grid path (the .npy goes next to it)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    parser.add_argument(
        "--test-FLOPs",
        action="store_true",
        help="print baseline and accelerated FLOPs for these settings and exit (needs no weights)",
    )
    add_taylorseer_args(parser, interval=4, max_order=4, first_enhance=2)
    return parser


def check_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> TaylorSeerConfig:
    config = taylorseer_config_from_args(args, parser)
    if args.num_sampling_steps < 1:
        parser.error(f"--num-sampling-steps must be >= 1, got {args.num_sampling_steps}")
    if args.cfg_scale < 1.0:
        parser.error(f"--cfg-scale must be >= 1.0 (1.0 disables guidance), got {args.cfg_scale}")
    if args.num_classes < 1 or args.in_channels < 1:
        parser.error("--num-classes and --in-channels must be >= 1")
    bad = [label for label in args.class_labels if not 0 <= label < args.num_classes]
    if bad:
        parser.error(f"--class-labels {bad} are outside [0, {args.num_classes - 1}]")
    patch = int(args.model.rsplit("/", 1)[1])
    scale = latent_scale(args)
    if args.image_size % (scale * patch):
        parser.error(
            f"--image-size {args.image_size} must be a multiple of {scale * patch} for {args.model}"
            + (f" with a VAE (downsampling {scale} x patch size {patch})" if scale > 1 else "")
        )
    return config


def latent_scale(args: argparse.Namespace) -> int:
    return 1 if args.vae == "none" else VAE_DOWNSAMPLE


def print_flops(args: argparse.Namespace, config: TaylorSeerConfig) -> None:
    """FLOPs of this run computed on the meta device: no weights, no memory."""
    with torch.device("meta"):
        model = DiT_models[args.model](
            input_size=args.image_size // latent_scale(args), in_channels=args.in_channels, num_classes=args.num_classes
        )
    batch = len(args.class_labels) * (2 if args.cfg_scale > 1.0 else 1)
    reports = dit_flops_reports(model, batch, args.num_sampling_steps, config)
    print(
        f"{args.model}, {args.image_size}x{args.image_size}, {args.num_sampling_steps} steps, batch {batch} "
        f"(CFG-doubled: {args.cfg_scale > 1.0}), N={config.interval} O={config.max_order} E={config.first_enhance}"
    )
    header = ("convention", "baseline TFLOPs", "TaylorSeer TFLOPs", "speedup", "full", "forecast")
    print("{:<10} {:>16} {:>18} {:>8} {:>5} {:>9}".format(*header))
    for report in reports.values():
        print(
            f"{report.convention:<10} {report.baseline_flops / 1e12:>16.4f} {report.flops / 1e12:>18.4f} "
            f"{report.speedup:>7.3f}x {report.num_full_steps:>5} {report.num_forecast_steps:>9}"
        )
    print(
        "reference = the TaylorSeer paper's count (transformer blocks only, adaLN linear as MACs; gives its "
        "2.77x/3.57x/4.53x); matmul = every matmul of the forward as 2 x MACs (torch.utils.flop_counter)"
    )
    matmul = reports["matmul"]
    print(
        reports["reference"].json_line(
            matmul_speedup=matmul.speedup,
            matmul_full_tflops=matmul.baseline_flops / 1e12,
            matmul_tflops=matmul.flops / 1e12,
        )
    )


def main(args: argparse.Namespace, config: TaylorSeerConfig) -> dict:
    if args.test_FLOPs:
        print_flops(args, config)
        return {}
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = True
    model = load_dit(
        args.model,
        args.ckpt,
        image_size=args.image_size,
        latent_scale=latent_scale(args),
        in_channels=args.in_channels,
        num_classes=args.num_classes,
        device=device,
    )
    # Load the decoder before sampling, so that a missing VAE is reported before minutes of compute.
    vae = None if args.vae == "none" else load_vae(args.vae, args.vae_path, device)
    diffusion = create_diffusion(str(args.num_sampling_steps))
    cache = None if config.is_uncached else TaylorCache(config)
    result = sample_dit(
        model,
        diffusion,
        args.class_labels,
        cfg_scale=args.cfg_scale,
        cache=cache,
        ddim=args.ddim_sample,
        seed=args.seed,
        progress=True,
    )
    images = result.samples if vae is None else decode_latents(vae, result.samples)
    output = save_grid(images, args.output)
    summary = {
        "grid": str(output),
        "seconds": result.seconds,
        "full_steps": result.num_full_steps,
        "forecast_steps": result.num_forecast_steps,
    }
    if vae is None:
        raw = output.with_suffix(".npy")
        np.save(raw, result.samples.float().cpu().numpy())
        summary["raw"] = str(raw)
    print(f"Total sampling took {result.seconds:.2f} seconds")
    print(f"full steps: {result.num_full_steps}, forecast steps: {result.num_forecast_steps}")
    print(f"saved {output}" + (f" and {summary['raw']}" if "raw" in summary else ""))
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    parser = build_parser()
    arguments = parser.parse_args()
    taylorseer_config = check_args(arguments, parser)
    try:
        main(arguments, taylorseer_config)
    except CheckpointError as err:
        sys.exit(f"error: {err}")
