"""Sample class-conditional images from a DiT with TaylorSeer feature forecasting.

    python TaylorSeer-DiT/sample.py                       # bundled digits model: full vs FORA vs TaylorSeer
    python TaylorSeer-DiT/sample.py --model DiT-XL/2 --ddim-sample --num-sampling-steps 50 --interval 5 --max-order 3
    python TaylorSeer-DiT/sample.py --model DiT-XL/2 --ddim-sample --num-sampling-steps 50 --interval 5 --test-FLOPs

Flags follow the TaylorSeer reference (and upstream DiT); ``--interval 1`` is the uncached model. Sampling flags
left unset take the chosen model's defaults (upstream DiT's for DiT-XL/2, see defaults.py). By default the same
seeds are sampled with full compute, FORA (order 0) and TaylorSeer, one grid row each; ``--no-compare`` runs only
the configured method.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, replace

import numpy as np
import torch

from common.cli import HelpFormatter, run_cli
from common.flops import FlopsReport
from common.images import save_grid, save_labeled_rows
from common.taylor_cache import TaylorCache, TaylorSeerConfig
from taylorseer_dit.diffusion import create_diffusion
from taylorseer_dit.flops import dit_flops_reports, reference_step_flops
from taylorseer_dit.models import DiT, DiT_models
from taylorseer_dit.pipeline import decode_latents, sample_dit
from taylorseer_dit.sampling_args import (
    add_model_args,
    check_model_args,
    latent_scale,
    load_model_and_vae,
)

FULL = TaylorSeerConfig(interval=1)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_model_args(parser)
    parser.add_argument("--class-labels", type=int, nargs="+", help="one image per label; None = the model's default")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initial noise (and DDPM noise)")
    parser.add_argument(
        "--compare",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="sample full compute, FORA and TaylorSeer on the same seeds; --no-compare: only TaylorSeer",
    )
    parser.add_argument("--output", default="sample.png", help="PNG grid path; .npy files go next to it")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    parser.add_argument(
        "--test-FLOPs",
        action="store_true",
        help="print baseline and accelerated FLOPs for these settings and exit (needs no weights)",
    )
    return parser


def check_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> TaylorSeerConfig:
    """Fill the model's defaults into unset flags, validate everything, and return the TaylorSeer config."""
    config = check_model_args(args, parser)
    bad = [label for label in args.class_labels if not 0 <= label < args.num_classes]
    if bad:
        parser.error(f"--class-labels {bad} are outside [0, {args.num_classes - 1}]")
    return config


def meta_model(args: argparse.Namespace) -> DiT:
    """The model without weights, for counting FLOPs."""
    with torch.device("meta"):
        return DiT_models[args.model](
            input_size=args.image_size // latent_scale(args), in_channels=args.in_channels, num_classes=args.num_classes
        )


def cfg_batch(args: argparse.Namespace) -> int:
    return len(args.class_labels) * (2 if args.cfg_scale > 1.0 else 1)


def print_flops(args: argparse.Namespace, config: TaylorSeerConfig) -> None:
    """FLOPs of this run computed on the meta device: no weights, no memory."""
    batch = cfg_batch(args)
    reports = dit_flops_reports(meta_model(args), batch, args.num_sampling_steps, config)
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


@dataclass(frozen=True)
class Method:
    name: str
    config: TaylorSeerConfig | None
    """None = the plain model with no cache."""


def methods_to_run(args: argparse.Namespace, config: TaylorSeerConfig) -> list[Method]:
    taylorseer = Method(f"TaylorSeer N={config.interval} O={config.max_order}", config)
    if not args.compare:
        return [taylorseer]
    fora = replace(config, max_order=0)
    methods = [Method("full compute", None), Method(f"FORA N={config.interval}", fora)]
    return methods + ([taylorseer] if config.max_order > 0 else [])


def main(args: argparse.Namespace, config: TaylorSeerConfig) -> dict:
    if args.test_FLOPs:
        print_flops(args, config)
        return {}
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = True
    model, vae = load_model_and_vae(args, device)
    diffusion = create_diffusion(str(args.num_sampling_steps))
    methods = methods_to_run(args, config)
    if len(methods) > 1:
        # One short untimed run first, so that one-time start-up costs are not billed to the first method.
        sample_dit(model, create_diffusion("2"), args.class_labels[:1], cfg_scale=args.cfg_scale, ddim=True)

    step_flops = reference_step_flops(meta_model(args), cfg_batch(args))
    results, rows = [], {}
    for method in methods:
        cache = None if method.config is None or method.config.is_uncached else TaylorCache(method.config)
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
        rows[method.name] = result.samples if vae is None else decode_latents(vae, result.samples)
        results.append((method, result))

    reference = results[0][1]
    summary = {"methods": []}
    for method, result in results:
        flops = FlopsReport.for_schedule("reference", *step_flops, args.num_sampling_steps, method.config or FULL)
        entry = {
            "method": method.name,
            "seconds": result.seconds,
            "full_steps": result.num_full_steps,
            "forecast_steps": result.num_forecast_steps,
            "flops_speedup": flops.speedup,
            "wall_speedup": reference.seconds / result.seconds if len(results) > 1 else None,
            "rel_l2_vs_full": _relative_error(result.samples, reference.samples) if args.compare else None,
        }
        summary["methods"].append(entry)
    if args.compare:
        output = save_labeled_rows(rows, args.output)
    else:
        output = save_grid(next(iter(rows.values())), args.output)
    summary["grid"] = str(output)
    if vae is None:
        summary["raw"] = _save_raw(results, output)
    _print_table(summary)
    print(f"saved {output}" + (f" and {', '.join(summary['raw'])}" if vae is None else ""))
    print(json.dumps(summary))
    return summary


def _relative_error(samples: torch.Tensor, reference: torch.Tensor) -> float:
    return ((samples - reference).norm() / reference.norm()).item()


def _save_raw(results, output) -> list[str]:
    """The raw model-space samples (pixel models: the images themselves) as .npy, one file per method."""
    paths = []
    for method, result in results:
        suffix = "" if len(results) == 1 else "-" + method.name.split()[0].lower()
        path = output.with_name(output.stem + suffix + ".npy")
        np.save(path, result.samples.float().cpu().numpy())
        paths.append(str(path))
    return paths


def _print_table(summary: dict) -> None:
    print(f"{'method':<24} {'full':>5} {'forecast':>9} {'FLOPs speedup':>14} {'seconds':>8} {'wall speedup':>13} "
          f"{'rel. L2 vs full':>16}")  # fmt: skip
    for m in summary["methods"]:
        wall = "" if m["wall_speedup"] is None else f"{m['wall_speedup']:.2f}x"
        error = "" if m["rel_l2_vs_full"] is None else f"{m['rel_l2_vs_full']:.4f}"
        print(
            f"{m['method']:<24} {m['full_steps']:>5} {m['forecast_steps']:>9} {m['flops_speedup']:>13.2f}x "
            f"{m['seconds']:>8.2f} {wall:>13} {error:>16}"
        )
    print("Total sampling took " + ", ".join(f"{m['seconds']:.2f}" for m in summary["methods"]) + " seconds")


if __name__ == "__main__":
    parser = build_parser()
    arguments = parser.parse_args()
    taylorseer_config = check_args(arguments, parser)
    run_cli(main, arguments, taylorseer_config)
