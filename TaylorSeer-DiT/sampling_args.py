"""Flags shared by the DiT sampling scripts (sample.py, sample_ddp.py): the model, its weights and the sampler.

Sampling flags default to None and take the chosen model's values from defaults.py after parsing, so the bundled
digits model and DiT-XL/2 each get their own defaults while flags given on the command line always win.
"""

from __future__ import annotations

import argparse

import torch

from common.cli import add_taylorseer_args, taylorseer_config_from_args
from common.taylor_cache import TaylorSeerConfig
from taylorseer_dit.checkpoints import load_dit, load_vae
from taylorseer_dit.defaults import BUNDLED_MODEL, apply_sampling_defaults, sampling_defaults
from taylorseer_dit.models import DiT, DiT_models

__all__ = [
    "add_model_args",
    "check_model_args",
    "latent_scale",
    "load_model_and_vae",
    "MAX_IMAGE_SIZE",
    "VAE_DOWNSAMPLE",
]

VAE_DOWNSAMPLE = 8
MAX_IMAGE_SIZE = 1024


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """--model, --ckpt, --vae(-path), sizes, classes, guidance, steps, DDIM, and the TaylorSeer flags."""
    bundled, upstream = sampling_defaults(BUNDLED_MODEL), sampling_defaults("DiT-XL/2")

    def per_model(name: str) -> str:
        return f"None = the model's default: {bundled[name]} for {BUNDLED_MODEL}, else {upstream[name]}"

    parser.add_argument("--model", choices=list(DiT_models), default=BUNDLED_MODEL, help="DiT preset")
    parser.add_argument(
        "--ckpt",
        default=None,
        help="DiT checkpoint: original .pt, train.py checkpoint (uses 'ema'), .safetensors or a diffusers folder; "
        f"None = the bundled weights for {BUNDLED_MODEL}, $TAYLORSEER_DIT_CKPT_DIR or pretrained_models/"
        "DiT-XL-2-{size}x{size}.pt for DiT-XL/2",
    )
    parser.add_argument(
        "--vae",
        choices=["ema", "mse", "none"],
        help="sd-vae-ft-{ema,mse} decoder; none = the model works in pixel space; " + per_model("vae"),
    )
    parser.add_argument(
        "--vae-path",
        help="local diffusers folder of the VAE; None = $TAYLORSEER_VAE_DIR/sd-vae-ft-KIND, else "
        "pretrained_models/sd-vae-ft-KIND",
    )
    parser.add_argument("--image-size", type=int, help="output image size; " + per_model("image_size"))
    parser.add_argument("--in-channels", type=int, help="model input channels; " + per_model("in_channels"))
    parser.add_argument("--num-classes", type=int, help="classes the model was trained on; " + per_model("num_classes"))
    parser.add_argument("--cfg-scale", type=float, help="classifier-free guidance (1 = off); " + per_model("cfg_scale"))
    parser.add_argument("--num-sampling-steps", type=int, help="respaced steps; " + per_model("num_sampling_steps"))
    parser.add_argument(
        "--ddim-sample",
        action=argparse.BooleanOptionalAction,
        help="DDIM (eta 0) instead of DDPM ancestral sampling; " + per_model("ddim_sample"),
    )
    add_taylorseer_args(parser, interval=4, max_order=4, first_enhance=2)


def check_model_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> TaylorSeerConfig:
    """Fill the model's defaults into unset flags; exit through ``parser.error`` on a bad one; return the config."""
    apply_sampling_defaults(args)
    config = taylorseer_config_from_args(args, parser)
    if args.num_sampling_steps < 1:
        parser.error(f"--num-sampling-steps must be >= 1, got {args.num_sampling_steps}")
    if args.cfg_scale < 1.0:
        parser.error(f"--cfg-scale must be >= 1.0 (1.0 disables guidance), got {args.cfg_scale}")
    if args.num_classes < 1 or args.in_channels < 1:
        parser.error("--num-classes and --in-channels must be >= 1")
    patch = int(args.model.rsplit("/", 1)[1])
    scale = latent_scale(args)
    if not 1 <= args.image_size <= MAX_IMAGE_SIZE or args.image_size % (scale * patch):
        parser.error(
            f"--image-size {args.image_size} must be a positive multiple of {scale * patch} up to {MAX_IMAGE_SIZE} "
            f"for {args.model}" + (f" with a VAE (downsampling {scale} x patch size {patch})" if scale > 1 else "")
        )
    return config


def latent_scale(args: argparse.Namespace) -> int:
    """Image pixels per model input pixel: the VAE's downsampling, or 1 for pixel-space models."""
    return 1 if args.vae == "none" else VAE_DOWNSAMPLE


def load_model_and_vae(args: argparse.Namespace, device: torch.device) -> tuple[DiT, object | None]:
    """The DiT of the flags, and its VAE (None for pixel-space models), both loaded before any sampling starts so
    that a missing file is reported before minutes of compute."""
    model = load_dit(
        args.model,
        args.ckpt,
        image_size=args.image_size,
        latent_scale=latent_scale(args),
        in_channels=args.in_channels,
        num_classes=args.num_classes,
        device=device,
    )
    vae = None if args.vae == "none" else load_vae(args.vae, args.vae_path, device)
    return model, vae
