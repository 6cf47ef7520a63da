"""Sample class-conditional images from a DiT with TaylorSeer feature forecasting.

    python TaylorSeer-DiT/sample.py                       # bundled digits model: full vs FORA vs TaylorSeer
    python TaylorSeer-DiT/sample.py --model DiT-XL/2 --ddim-sample --num-sampling-steps 50 --interval 5 --max-order 3
    python TaylorSeer-DiT/sample.py --model DiT-XL/2 --ddim-sample --num-sampling-steps 50 --interval 5 --test-FLOPs

Flags follow the TaylorSeer reference (and upstream DiT); ``--interval 1`` is the uncached model. Sampling flags
left unset take the chosen model's defaults (upstream DiT's for DiT-XL/2, see defaults.py). By default the same
seeds are sampled with full compute, FORA (order 0) and TaylorSeer, one grid row each; ``--no-compare`` runs only
the configured method.

Each method is timed ``--timing-repeats`` times, interleaved with the others, and the table shows the fastest run:
one run on a busy machine can swing several-fold. A wall speedup above the FLOPs speedup can only be such noise and
is flagged with a warning. Samples that hold NaN or inf end the run with one error naming the settings to check;
nothing is saved from them.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from common.cli import MAX_SEED, HelpFormatter, check_output_file, int_range, parse_device, run_cli, warn
from common.flops import FlopsReport
from common.images import save_grid, save_labeled_rows
from common.integrity import check_finite
from common.taylor_cache import TaylorCache, TaylorSeerConfig
from taylorseer_dit.diffusion import create_diffusion
from taylorseer_dit.flops import dit_flops_reports, reference_step_flops
from taylorseer_dit.models import DiT, DiT_models
from taylorseer_dit.pipeline import SamplingResult, decode_latents, sample_dit
from taylorseer_dit.sampling_args import (
    NAN_SUSPECTS,
    add_model_args,
    check_device,
    check_model_args,
    latent_scale,
    load_model_and_vae,
    weights_id,
)

FULL = TaylorSeerConfig(interval=1)
# Timed runs per method when comparing: the minimum of a few interleaved runs is what the machine can do; one run
# on a loaded machine swings from 1.8x to 7.5x.
COMPARE_TIMING_REPEATS = 3
MAX_TIMING_REPEATS = 100


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_model_args(parser)
    parser.add_argument(
        "--class-labels", type=int_range(0), nargs="+", help="one image per label; None = the model's default"
    )
    parser.add_argument(
        "--seed", type=int_range(0, MAX_SEED), default=0, help="seed of the initial noise (and DDPM noise)"
    )
    parser.add_argument(
        "--compare",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="sample full compute, FORA and TaylorSeer on the same seeds; --no-compare: only TaylorSeer",
    )
    parser.add_argument("--output", default="sample.png", help="PNG grid path; .npy files go next to it")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    parser.add_argument(
        "--timing-repeats",
        type=int_range(1, MAX_TIMING_REPEATS),
        help=f"timed runs of each method, interleaved; the table shows the fastest. None = {COMPARE_TIMING_REPEATS} "
        "with --compare, 1 with --no-compare",
    )
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
    check_device(args, parser)
    if args.timing_repeats is None:
        args.timing_repeats = COMPARE_TIMING_REPEATS if args.compare else 1
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

    @property
    def short_name(self) -> str:
        """The suffix of the method's .npy file: full, fora or taylorseer."""
        return self.name.split()[0].lower()


def methods_to_run(args: argparse.Namespace, config: TaylorSeerConfig) -> list[Method]:
    taylorseer = Method(f"TaylorSeer N={config.interval} O={config.max_order}", config)
    if not args.compare:
        return [taylorseer]
    fora = replace(config, max_order=0)
    methods = [Method("full compute", None), Method(f"FORA N={config.interval}", fora)]
    return methods + ([taylorseer] if config.max_order > 0 else [])


# Output files, checked before any weights are read.


def raw_path(output: Path, method: Method, num_methods: int) -> Path:
    """Where ``method``'s raw samples go: next to the grid, suffixed by the method when there are several."""
    suffix = "" if num_methods == 1 else "-" + method.short_name
    return output.with_name(output.stem + suffix + ".npy")


def check_outputs(args: argparse.Namespace, methods: Sequence[Method]) -> Path:
    """The grid path, once it and every .npy path next to it can be written (a :class:`UsageError` otherwise):
    minutes of sampling must never end in a path that cannot be written."""
    output = check_output_file(args.output, "--output", (".png",))
    if args.vae == "none":
        for method in methods:
            check_output_file(raw_path(output, method, len(methods)), "--output", (".npy",))
    return output


# Timing.


@dataclass
class Timed:
    """A method's samples (of its first run: every run gives the same) and the seconds of each of its runs."""

    result: SamplingResult
    seconds: list[float] = field(default_factory=list)

    @property
    def best(self) -> float:
        """The fastest run: what the machine can do; slower runs measured other processes too."""
        return min(self.seconds)


def time_methods(
    methods: Sequence[Method], sample_once: Callable[[Method], SamplingResult], repeats: int
) -> dict[str, Timed]:
    """Run each method ``repeats`` times, interleaved (A B C A B C ...) so that a busy phase of the machine slows
    every method alike rather than one; method name -> its first result and every run's seconds."""
    timed: dict[str, Timed] = {}
    for _ in range(repeats):
        for method in methods:
            result = sample_once(method)
            timed.setdefault(method.name, Timed(result)).seconds.append(result.seconds)
    return timed


def noise_warnings(entries: Sequence[dict]) -> list[str]:
    """A warning for each method whose wall speedup exceeds its FLOPs speedup: skipping work cannot save more time
    than the work takes, so such a figure is timing noise."""
    return [
        f"{m['method']}: wall speedup {m['wall_speedup']:.2f}x exceeds its FLOPs speedup {m['flops_speedup']:.2f}x, "
        "which can only be noise of a busy machine; rerun on an idle one or with a larger --timing-repeats"
        for m in entries
        if m["wall_speedup"] is not None and m["wall_speedup"] > m["flops_speedup"]
    ]


def main(args: argparse.Namespace, config: TaylorSeerConfig) -> dict:
    if args.test_FLOPs:
        print_flops(args, config)
        return {}
    methods = methods_to_run(args, config)
    output = check_outputs(args, methods)
    device = parse_device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = True
    model, vae = load_model_and_vae(args, device)
    diffusion = create_diffusion(str(args.num_sampling_steps))
    if len(methods) > 1:
        # One short untimed run first, so that one-time start-up costs are not billed to the first method.
        sample_dit(model, create_diffusion("2"), args.class_labels[:1], cfg_scale=args.cfg_scale, ddim=True)

    def sample_once(method: Method) -> SamplingResult:
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
        check_finite(result.samples, f"the {method.name} samples", NAN_SUSPECTS)
        return result

    timed = time_methods(methods, sample_once, args.timing_repeats)
    rows = {name: decoded(vae, entry.result.samples, name) for name, entry in timed.items()}
    summary = summarize(args, config, methods, timed)
    if args.compare:
        save_labeled_rows(rows, output)
    else:
        save_grid(next(iter(rows.values())), output)
    summary["grid"] = str(output)
    # Which weights made the grid, by content: the file name alone says nothing (every train.py checkpoint is last.pt).
    summary["ckpt"] = None if args.ckpt is None else str(args.ckpt)
    summary["weights_id"] = weights_id(args)
    if vae is None:
        summary["raw"] = _save_raw(methods, timed, output)
    _print_table(summary)
    for line in noise_warnings(summary["methods"]):
        warn(line)
    print(f"saved {output}" + (f" and {', '.join(summary['raw'])}" if vae is None else ""))
    print(json.dumps(summary))
    return summary


def decoded(vae, samples: torch.Tensor, method_name: str) -> torch.Tensor:
    """The images of ``samples``: the samples themselves for pixel-space models, else the VAE's decoding."""
    if vae is None:
        return samples
    images = decode_latents(vae, samples)
    check_finite(images, f"the VAE decoding of the {method_name} samples", "--vae, --vae-path (the VAE weights)")
    return images


def summarize(
    args: argparse.Namespace, config: TaylorSeerConfig, methods: Sequence[Method], timed: dict[str, Timed]
) -> dict:
    """One entry per method: steps, FLOPs and wall speedups (fastest runs), error against full compute."""
    step_flops = reference_step_flops(meta_model(args), cfg_batch(args))
    reference = timed[methods[0].name]
    summary = {"timing_repeats": args.timing_repeats, "methods": []}
    for method in methods:
        entry, result = timed[method.name], timed[method.name].result
        flops = FlopsReport.for_schedule("reference", *step_flops, args.num_sampling_steps, method.config or FULL)
        summary["methods"].append(
            {
                "method": method.name,
                "seconds": entry.best,
                "seconds_all": entry.seconds,
                "full_steps": result.num_full_steps,
                "forecast_steps": result.num_forecast_steps,
                "flops_speedup": flops.speedup,
                "wall_speedup": reference.best / entry.best if len(methods) > 1 else None,
                "rel_l2_vs_full": _relative_error(result.samples, reference.result.samples) if args.compare else None,
            }
        )
    return summary


def _relative_error(samples: torch.Tensor, reference: torch.Tensor) -> float:
    return ((samples - reference).norm() / reference.norm()).item()


def _save_raw(methods: Sequence[Method], timed: dict[str, Timed], output: Path) -> list[str]:
    """The raw model-space samples (pixel models: the images themselves) as .npy, one file per method."""
    paths = []
    for method in methods:
        path = raw_path(output, method, len(methods))
        np.save(path, timed[method.name].result.samples.float().cpu().numpy())
        paths.append(str(path))
    return paths


def _print_table(summary: dict) -> None:
    seconds = f"seconds, min of {summary['timing_repeats']}"
    print(f"{'method':<24} {'full':>5} {'forecast':>9} {'FLOPs speedup':>14} {seconds:>19} {'wall speedup':>13} "
          f"{'rel. L2 vs full':>16}")  # fmt: skip
    for m in summary["methods"]:
        wall = "" if m["wall_speedup"] is None else f"{m['wall_speedup']:.2f}x"
        error = "" if m["rel_l2_vs_full"] is None else f"{m['rel_l2_vs_full']:.4f}"
        print(
            f"{m['method']:<24} {m['full_steps']:>5} {m['forecast_steps']:>9} {m['flops_speedup']:>13.2f}x "
            f"{m['seconds']:>19.2f} {wall:>13} {error:>16}"
        )
    print("Total sampling took " + ", ".join(f"{m['seconds']:.2f}" for m in summary["methods"]) + " seconds")


def cli(argv: Sequence[str] | None = None) -> dict:
    """The command line: parse and check ``argv`` (default: sys.argv), run, and exit 2 with one line on bad input."""
    parser = build_parser()
    args = parser.parse_args(argv)
    config = check_args(args, parser)
    return run_cli(main, args, config)


if __name__ == "__main__":
    cli()
