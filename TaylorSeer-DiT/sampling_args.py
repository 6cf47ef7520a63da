"""Flags shared by the DiT sampling scripts (sample.py, sample_ddp.py, fit_teacache.py): the model, its weights, the
sampler and (for the samplers) the caching method.

Sampling flags default to None and take the chosen model's values from defaults.py after parsing, so the bundled
digits model and DiT-XL/2 each get their own defaults while flags given on the command line always win. Every number
is range-checked by its argparse type (NaN and inf included), so a bad value ends in one ``error:`` line before any
weights are read.

``--method`` picks the caching method (TaylorSeer by default; common/methods.py). TeaCache's rescaling polynomial
defaults to the fit shipped for the bundled model (assets/teacache_dit_digits.json, written by fit_teacache.py); a run
whose weights are not the ones a fit file names gets a warning, since the polynomial then measures another model.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

from common.cli import (
    UsageError,
    add_taylorseer_args,
    check_schedule_flags,
    finite_float,
    int_range,
    parse_device,
    taylorseer_config_from_args,
    taylorseer_fields,
    warn,
)
from common.integrity import weights_fingerprint
from common.methods import (
    MethodConfig,
    add_method_args,
    fora_of,
    method_config_from_args,
    warn_unused_method_flags,
)
from common.taylor_cache import TaylorSeerConfig
from common.teacache import TEACACHE_COEFFICIENTS, read_fit
from taylorseer_dit.checkpoints import DEFAULT_DIR, VAE_DIR_ENV, find_dit_checkpoint, load_dit, load_vae
from taylorseer_dit.defaults import BUNDLED_MODEL, apply_sampling_defaults, sampling_defaults
from taylorseer_dit.models import DiT, DiT_models

__all__ = [
    "add_model_args",
    "add_sampler_args",
    "check_device",
    "check_model_args",
    "check_sampler_args",
    "dit_weights_id",
    "fora_config",
    "latent_scale",
    "load_model",
    "load_model_and_vae",
    "warn_about_teacache_fit",
    "weights_id",
    "TEACACHE_FIT",
    "MAX_CFG_SCALE",
    "MAX_CHANNELS",
    "MAX_CLASSES",
    "MAX_IMAGE_SIZE",
    "MAX_SAMPLING_STEPS",
    "NAN_SUSPECTS",
    "VAE_DOWNSAMPLE",
]

VAE_DOWNSAMPLE = 8
MAX_IMAGE_SIZE = 1024
# DiT's diffusion has 1000 training steps; respacing can pick each of them at most once.
MAX_SAMPLING_STEPS = 1000
# Published DiT guidance is 1.5 to 4; beyond 100 the guided eps dwarfs the noise and the samples blow up.
MAX_CFG_SCALE = 100.0
# Bounds that keep a typo (an extra zero or three) from building a label table or patch embedding of gigabytes.
MAX_CLASSES = 100_000
MAX_CHANNELS = 64
NAN_SUSPECTS = "--cfg-scale, --num-sampling-steps, the checkpoint"
"""What to check when the samples hold NaN or inf: a setting or weights, almost never the sampler."""
TEACACHE_FIT = Path(__file__).resolve().parent / "assets" / "teacache_dit_digits.json"
"""TeaCache's rescaling polynomial fitted on the bundled model (fit_teacache.py): the DiT default."""


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """The sampler's flags (:func:`add_sampler_args`), the TaylorSeer flags and the caching method's."""
    add_sampler_args(parser)
    add_taylorseer_args(parser, interval=4, max_order=4, first_enhance=2)
    add_method_args(parser, teacache_coefficients=str(TEACACHE_FIT))


def add_sampler_args(parser: argparse.ArgumentParser, *, decoder: bool = True) -> None:
    """--model, --ckpt, --vae(-path), sizes, classes, guidance, steps and DDIM: what full-compute sampling needs.
    ``decoder=False`` (a script that never decodes) leaves out --vae-path; --vae still sets the latent size."""
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
    if decoder:
        parser.add_argument(
            "--vae-path",
            help="local diffusers folder of the VAE; None = $TAYLORSEER_VAE_DIR/sd-vae-ft-KIND, else "
            "pretrained_models/sd-vae-ft-KIND",
        )
    parser.add_argument(
        "--image-size", type=int_range(1, MAX_IMAGE_SIZE), help="output image size; " + per_model("image_size")
    )
    parser.add_argument(
        "--in-channels", type=int_range(1, MAX_CHANNELS), help="model input channels; " + per_model("in_channels")
    )
    parser.add_argument(
        "--num-classes",
        type=int_range(1, MAX_CLASSES),
        help="classes the model was trained on; " + per_model("num_classes"),
    )
    parser.add_argument(
        "--cfg-scale",
        type=finite_float(1.0, MAX_CFG_SCALE),
        help="classifier-free guidance (1 = off); " + per_model("cfg_scale"),
    )
    parser.add_argument(
        "--num-sampling-steps",
        type=int_range(1, MAX_SAMPLING_STEPS),
        help="respaced steps; " + per_model("num_sampling_steps"),
    )
    parser.add_argument(
        "--ddim-sample",
        action=argparse.BooleanOptionalAction,
        help="DDIM (eta 0) instead of DDPM ancestral sampling; " + per_model("ddim_sample"),
    )


def check_model_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> MethodConfig:
    """Fill the model's defaults into unset flags; exit through ``parser.error`` on a bad one; return the config of
    ``--method`` (None for full compute)."""
    check_sampler_args(args, parser)
    # sample.py's FORA comparison row reads N and E whatever the method.
    compared = ("--interval", "--first-enhance") if getattr(args, "compare", False) else ()
    warn_unused_method_flags(args, parser, also_read=compared)
    # The TaylorSeer flags are checked whatever the method: FORA's row in sample.py's comparison takes N and E too.
    taylorseer_config_from_args(args, parser)
    config = method_config_from_args(args, parser)
    if args.method in ("taylorseer", "fora"):
        # Only now is the step count known (it may be the model's default): a schedule that would run TaylorSeer as
        # FORA under a TaylorSeer label is refused here, before any weights are read.
        check_schedule_flags(config, args.num_sampling_steps, parser)
    if args.method == "delta-dit":
        depth = model_depth(args)
        if args.cached_blocks > depth:
            parser.error(
                f"--cached-blocks {args.cached_blocks} exceeds the {depth} blocks of {args.model}: "
                f"use --cached-blocks 1..{depth}"
            )
    return config


def check_sampler_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Fill the model's defaults into unset sampler flags; exit through ``parser.error`` on a bad one."""
    apply_sampling_defaults(args)
    patch = int(args.model.rsplit("/", 1)[1])
    scale = latent_scale(args)
    if args.image_size % (scale * patch):
        parser.error(
            f"--image-size {args.image_size} must be a positive multiple of {scale * patch} up to {MAX_IMAGE_SIZE} "
            f"for {args.model}" + (f" with a VAE (downsampling {scale} x patch size {patch})" if scale > 1 else "")
        )


def model_depth(args: argparse.Namespace) -> int:
    """Blocks of the ``--model`` preset, read from a weightless copy."""
    with torch.device("meta"):
        return DiT_models[args.model](input_size=args.image_size // latent_scale(args), in_channels=1).depth


def fora_config(args: argparse.Namespace) -> TaylorSeerConfig:
    """FORA on the TaylorSeer flags' schedule (N and E, or the placement; TaylorSeer of order 0): the baseline row of
    sample.py's comparison. The flags must have passed :func:`check_model_args`."""
    return fora_of(TaylorSeerConfig(**taylorseer_fields(args)))


def warn_about_teacache_fit(args: argparse.Namespace) -> None:
    """Warnings when TeaCache runs with a fit file made for another DiT checkpoint (its polynomial maps the input
    change of another model to that model's output change) or for another number of steps or sampler (the per-step
    changes then lie outside the range it was fitted on). Call it once the weights are loaded."""
    spec = args.teacache_coefficients
    if args.method != "teacache" or spec in TEACACHE_COEFFICIENTS:
        return
    fit, weights = read_fit(spec), dit_weights_id(args)
    if fit.get("weights_id") not in (None, weights):
        warn(
            f"--teacache-coefficients {spec} was fitted for weights {fit['weights_id']}, these are {weights}: its "
            "rescaling measures another model; fit one for these weights with fit_teacache.py (same --model and "
            "--ckpt) and pass its --output"
        )
    fitted = (fit.get("steps"), fit.get("sampler"))
    run = (args.num_sampling_steps, "ddim" if args.ddim_sample else "ddpm")
    if None not in fitted and fitted != run:
        warn(
            f"--teacache-coefficients {spec} was fitted on {fitted[0]} {fitted[1].upper()} steps, this run takes "
            f"{run[0]} {run[1].upper()} steps: their changes lie outside the range the polynomial was fitted on; fit "
            "one with these --num-sampling-steps and --ddim-sample/--no-ddim-sample"
        )


def check_device(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Refuse a --device this machine lacks (CUDA without a GPU, a GPU index past the last) before any compute."""
    try:
        parse_device(args.device)
    except UsageError as err:
        parser.error(str(err))


def latent_scale(args: argparse.Namespace) -> int:
    """Image pixels per model input pixel: the VAE's downsampling, or 1 for pixel-space models."""
    return 1 if args.vae == "none" else VAE_DOWNSAMPLE


def load_model_and_vae(args: argparse.Namespace, device: torch.device) -> tuple[DiT, object | None]:
    """The DiT of the flags, and its VAE (None for pixel-space models), both loaded before any sampling starts so
    that a missing file is reported before minutes of compute."""
    model = load_model(args, device)
    vae = None if args.vae == "none" else load_vae(args.vae, args.vae_path, device)
    return model, vae


def load_model(args: argparse.Namespace, device: torch.device) -> DiT:
    """The DiT of the flags, without its VAE."""
    return load_dit(
        args.model,
        args.ckpt,
        image_size=args.image_size,
        latent_scale=latent_scale(args),
        in_channels=args.in_channels,
        num_classes=args.num_classes,
        device=device,
    )


def weights_id(args: argparse.Namespace) -> str:
    """Content identity (16 hex digits) of every weight file that makes the images: the DiT checkpoint that
    ``--ckpt`` (or the default) resolves to, and the VAE folder when there is one. Call it after the weights loaded,
    so that a missing file has already been reported with its download hint."""
    paths = [find_dit_checkpoint(args.model, args.image_size, args.ckpt)]
    if args.vae != "none":
        paths.append(_vae_folder(args))
    return weights_fingerprint(paths)


def dit_weights_id(args: argparse.Namespace) -> str:
    """Content identity of the DiT checkpoint alone: what a TeaCache fit depends on (the VAE only decodes). Equal to
    :func:`weights_id` for pixel-space models such as the bundled one."""
    return weights_fingerprint([find_dit_checkpoint(args.model, args.image_size, args.ckpt)])


def _vae_folder(args: argparse.Namespace) -> Path:
    """The folder :func:`load_vae` reads for these flags."""
    if args.vae_path is not None:
        return Path(args.vae_path)
    return Path(os.environ.get(VAE_DIR_ENV) or DEFAULT_DIR) / f"sd-vae-ft-{args.vae}"
