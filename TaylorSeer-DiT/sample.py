"""Sample class-conditional images from a DiT with a training-free caching method (TaylorSeer by default).

    python TaylorSeer-DiT/sample.py                       # bundled digits model: full vs FORA vs TaylorSeer
    python TaylorSeer-DiT/sample.py --method toca         # full vs FORA vs ToCa (any --method, same N)
    python TaylorSeer-DiT/sample.py --model DiT-XL/2 --ddim-sample --num-sampling-steps 50 --interval 5 --max-order 3
    python TaylorSeer-DiT/sample.py --model DiT-XL/2 --ddim-sample --num-sampling-steps 50 --interval 5 --test-FLOPs

Flags follow the TaylorSeer reference (and upstream DiT); ``--interval 1`` is the uncached model. Sampling flags
left unset take the chosen model's defaults (upstream DiT's for DiT-XL/2, see defaults.py). By default the same
seeds are sampled with full compute, FORA (order 0, the same N) and ``--method``, one grid row each (two rows when
the method is full compute or FORA); ``--no-compare`` runs only ``--method``.

FLOPs speedups over full compute come in two counts. "ref." is the TaylorSeer paper's count (transformer blocks,
adaLN as MACs) of a schedule, for TaylorSeer and FORA only, whose cost the schedule fixes. "matmul" counts every
matmul of one more, untimed run of each method (torch's FlopCounterMode): exact for every method, ToCa's partial
tokens and TeaCache's run-dependent skips included.

Each method is timed ``--timing-repeats`` times, interleaved with the others, and the table shows the fastest run:
one run on a busy machine can swing several-fold. A wall speedup above the FLOPs speedup can only be such noise and
is flagged with a warning. Samples that hold NaN or inf end the run with one error naming the settings to check;
nothing is saved from them.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from common.cli import MAX_SEED, HelpFormatter, check_output_file, int_range, parse_device, run_cli, warn
from common.flops import FlopsReport, count_flops
from common.images import save_grid, save_labeled_rows
from common.integrity import check_finite
from common.methods import MethodConfig, describe, make_cache, method_record
from common.taylor_cache import TaylorSeerConfig
from taylorseer_dit.diffusion import create_diffusion
from taylorseer_dit.flops import dit_flops_reports, matmul_step_flops, reference_step_flops
from taylorseer_dit.models import DiT, DiT_models
from taylorseer_dit.pipeline import SamplingResult, decode_latents, sample_dit
from taylorseer_dit.sampling_args import (
    NAN_SUSPECTS,
    add_model_args,
    check_device,
    check_model_args,
    fora_config,
    latent_scale,
    load_model_and_vae,
    warn_about_teacache_fit,
    weights_id,
)

FULL = TaylorSeerConfig(interval=1)
# Methods whose cost a schedule fixes, so that the paper's reference count applies; --test-FLOPs counts only these.
SCHEDULED = ("full", "taylorseer", "fora")
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
        help="sample full compute, FORA (same N) and --method on the same seeds; --no-compare: only --method",
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
        help="print baseline and accelerated FLOPs for these settings and exit (needs no weights; full, taylorseer "
        "and fora only: the other methods' FLOPs are counted during their run)",
    )
    return parser


def check_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> MethodConfig:
    """Fill the model's defaults into unset flags, validate everything, and return the config of --method."""
    config = check_model_args(args, parser)
    if args.test_FLOPs and args.method not in SCHEDULED:
        parser.error(
            f"--test-FLOPs counts the schedules of {', '.join(SCHEDULED)} without weights; --method {args.method} "
            "decides during the run: drop --test-FLOPs, and its matmul FLOPs are counted while it samples"
        )
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


def print_flops(args: argparse.Namespace, config: TaylorSeerConfig | None) -> None:
    """FLOPs of this run (full compute, TaylorSeer or FORA) computed on the meta device: no weights, no memory."""
    batch = cfg_batch(args)
    schedule = config or FULL
    reports = dit_flops_reports(meta_model(args), batch, args.num_sampling_steps, schedule)
    print(
        f"{args.model}, {args.image_size}x{args.image_size}, {args.num_sampling_steps} steps, batch {batch} "
        f"(CFG-doubled: {args.cfg_scale > 1.0}), {describe(args.method, config)}, "
        f"N={schedule.interval} O={schedule.max_order} E={schedule.first_enhance}"
    )
    header = ("convention", "baseline TFLOPs", "method TFLOPs", "speedup", "full", "forecast")
    print("{:<10} {:>16} {:>14} {:>8} {:>5} {:>9}".format(*header))
    for report in reports.values():
        print(
            f"{report.convention:<10} {report.baseline_flops / 1e12:>16.4f} {report.flops / 1e12:>14.4f} "
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
    key: str
    """The --method name: full, taylorseer, fora, delta-dit, toca, duca or teacache."""
    config: MethodConfig
    """None = the plain model with no cache."""

    @property
    def name(self) -> str:
        """The row label, e.g. "TaylorSeer N=4 O=4"."""
        return describe(self.key, self.config)

    @property
    def short_name(self) -> str:
        """The suffix of the method's .npy file: its --method name."""
        return self.key


def methods_to_run(args: argparse.Namespace, config: MethodConfig) -> list[Method]:
    """--no-compare: the chosen method. --compare: full compute, FORA with the same N, and the chosen method unless
    one of those two already is it (full, FORA, or TaylorSeer of order 0, which is FORA bit for bit)."""
    chosen = Method(args.method, config)
    if not args.compare:
        return [chosen]
    rows = [Method("full", None), Method("fora", fora_config(args))]
    if args.method in ("full", "fora") or (args.method == "taylorseer" and config.max_order == 0):
        return rows
    return [*rows, chosen]


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


def flops_ceiling(entry: dict) -> float:
    """The larger of a method's FLOPs speedups: a wall speedup above both can only be noise (either count leaves out
    some work: the reference count everything outside the blocks, the matmul count the elementwise work)."""
    return max(s for s in (entry["flops_speedup"], entry["matmul_speedup"]) if s is not None)


def noise_warnings(entries: Sequence[dict]) -> list[str]:
    """A warning for each method whose wall speedup exceeds its FLOPs speedup: skipping work cannot save more time
    than the work takes, so such a figure is timing noise."""
    return [
        f"{m['method']}: wall speedup {m['wall_speedup']:.2f}x exceeds its FLOPs speedup {flops_ceiling(m):.2f}x, "
        "which can only be noise of a busy machine; rerun on an idle one or with a larger --timing-repeats"
        for m in entries
        if m["wall_speedup"] is not None and m["wall_speedup"] > flops_ceiling(m)
    ]


def main(args: argparse.Namespace, config: MethodConfig) -> dict:
    if args.test_FLOPs:
        print_flops(args, config)
        return {}
    methods = methods_to_run(args, config)
    output = check_outputs(args, methods)
    device = parse_device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = True
    model, vae = load_model_and_vae(args, device)
    # Which weights made the grid, by content: the file name alone says nothing (every train.py checkpoint is last.pt).
    weights = weights_id(args)
    warn_about_teacache_fit(args)
    diffusion = create_diffusion(str(args.num_sampling_steps))
    if len(methods) > 1:
        # One short untimed run first, so that one-time start-up costs are not billed to the first method.
        sample_dit(model, create_diffusion("2"), args.class_labels[:1], cfg_scale=args.cfg_scale, ddim=True)

    def sample_once(method: Method, progress: bool = True) -> SamplingResult:
        result = sample_dit(
            model,
            diffusion,
            args.class_labels,
            cfg_scale=args.cfg_scale,
            cache=make_cache(method.key, method.config),
            ddim=args.ddim_sample,
            seed=args.seed,
            progress=progress,
        )
        check_finite(result.samples, f"the {method.name} samples", NAN_SUSPECTS)
        return result

    timed = time_methods(methods, sample_once, args.timing_repeats)
    counted = counted_matmul_flops(methods, sample_once)
    rows = {name: decoded(vae, entry.result.samples, name) for name, entry in timed.items()}
    summary = summarize(args, methods, timed, counted)
    if args.compare:
        save_labeled_rows(rows, output)
    else:
        save_grid(next(iter(rows.values())), output)
    summary["grid"] = str(output)
    summary["ckpt"] = None if args.ckpt is None else str(args.ckpt)
    summary["weights_id"] = weights
    if vae is None:
        summary["raw"] = _save_raw(methods, timed, output)
    _print_table(summary)
    for line in noise_warnings(summary["methods"]):
        warn(line)
    print(f"saved {output}" + (f" and {', '.join(summary['raw'])}" if vae is None else ""))
    print(json.dumps(summary))
    return summary


def counted_matmul_flops(
    methods: Sequence[Method], sample_once: Callable[[Method, bool], SamplingResult]
) -> dict[str, float]:
    """Method name -> the FLOPs of every matmul of one more run of it, untimed (the counter slows every operation):
    what the method actually computed, whatever it decided during the run. Methods that run the plain model are
    left out: their count is full compute's, known without running (:func:`full_matmul_flops`)."""
    return {
        method.name: float(count_flops(lambda method=method: sample_once(method, False)))
        for method in methods
        if make_cache(method.key, method.config) is not None
    }


def full_matmul_flops(args: argparse.Namespace) -> float:
    """Every matmul of a full-compute run, counted on the meta device: steps x one CFG-batched forward (the sampler
    around the model runs no matmul)."""
    return args.num_sampling_steps * matmul_step_flops(meta_model(args), cfg_batch(args))[0]


def decoded(vae, samples: torch.Tensor, method_name: str) -> torch.Tensor:
    """The images of ``samples``: the samples themselves for pixel-space models, else the VAE's decoding."""
    if vae is None:
        return samples
    images = decode_latents(vae, samples)
    check_finite(images, f"the VAE decoding of the {method_name} samples", "--vae, --vae-path (the VAE weights)")
    return images


def reference_speedup(args: argparse.Namespace, method: Method) -> float | None:
    """The FLOPs speedup under the TaylorSeer paper's count, for the methods whose cost their schedule fixes."""
    if method.key not in SCHEDULED:
        return None
    step_flops = reference_step_flops(meta_model(args), cfg_batch(args))
    return FlopsReport.for_schedule("reference", *step_flops, args.num_sampling_steps, method.config or FULL).speedup


def summarize(
    args: argparse.Namespace, methods: Sequence[Method], timed: dict[str, Timed], counted: dict[str, float]
) -> dict:
    """One entry per method: its settings, steps, FLOPs and wall speedups (fastest runs), error against full compute."""
    full_flops = full_matmul_flops(args)
    reference = timed[methods[0].name]
    summary = {"timing_repeats": args.timing_repeats, "full_matmul_tflops": full_flops / 1e12, "methods": []}
    for method in methods:
        entry, result = timed[method.name], timed[method.name].result
        flops = counted.get(method.name, full_flops)
        summary["methods"].append(
            {
                "method": method.name,
                "settings": method_record(method.key, method.config) or {"method": method.key},
                "seconds": entry.best,
                "seconds_all": entry.seconds,
                "full_steps": result.num_full_steps,
                "forecast_steps": result.num_forecast_steps,
                "flops_speedup": reference_speedup(args, method),
                "matmul_speedup": full_flops / flops,
                "matmul_tflops": flops / 1e12,
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


def _speedup(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}x"


def _print_table(summary: dict) -> None:
    seconds = f"seconds, min of {summary['timing_repeats']}"
    print(f"{'method':<22} {'full':>5} {'cached':>7} {'ref. speedup':>13} {'matmul speedup':>15} {seconds:>19} "
          f"{'wall speedup':>13} {'rel. L2 vs full':>16}")  # fmt: skip
    for m in summary["methods"]:
        error = "" if m["rel_l2_vs_full"] is None else f"{m['rel_l2_vs_full']:.4f}"
        print(
            f"{m['method']:<22} {m['full_steps']:>5} {m['forecast_steps']:>7} {_speedup(m['flops_speedup']):>13} "
            f"{_speedup(m['matmul_speedup']):>15} {m['seconds']:>19.2f} {_speedup(m['wall_speedup']):>13} "
            f"{error:>16}"
        )
    print(
        "FLOPs speedups over full compute: ref. = the TaylorSeer paper's count of the schedule (TaylorSeer and FORA "
        "only); matmul = every matmul, counted during an untimed run of the method"
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
