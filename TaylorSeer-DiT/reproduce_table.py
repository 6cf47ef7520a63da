"""One command per DiT table: sample every row with sample_ddp.py, measure it, write the table beside the paper's.

    python TaylorSeer-DiT/reproduce_table.py        # the bundled digits DiT, every method (~15 min on 2 CPU cores)
    # the paper's Table 2 (DiT-XL/2, FID-50k), each row sampled on 8 GPUs:
    python TaylorSeer-DiT/reproduce_table.py TaylorSeer-DiT/tables/dit_xl2_table2.toml \\
        --launcher "torchrun --nproc_per_node=8" --reference VIRTUAL_imagenet256_labeled.npz \\
        --inception-weights pretrained_models/pt_inception-2015-12-05-6726825d.pth

A table file (format: common/paper_table.py) lists the rows as sample_ddp.py flags; ``settings`` are every row's,
and flags after ``--`` on this command line are appended to every row (e.g. ``-- --ckpt my.pt``). Every row samples
the same indices with sample_ddp.py, so sample i of every row has the same label and initial noise as sample i of
full compute (the first row): the comparisons are paired, and the table gives each row's difference to full compute
with a 95% interval of a bootstrap over the samples (the same resamples, within each label, for every row).

Per row:
* FLOPs speedup: every matmul of one counted run of the row's method on the first batch of sample indices (what the
  method computed, whatever it decided), against full compute's count; for full, TaylorSeer and FORA also the
  TaylorSeer paper's count (``details``). TeaCache decides per batch: its count is the first batch's.
* Latency speedup: full compute's sampling seconds over the row's on the first batch, each the fastest of
  --timing-repeats runs interleaved across the rows once every row is sampled (a whole row's sampling time would
  measure whatever else the machine did meanwhile, and a resumed row's only part of it; sample_ddp.py's own seconds
  per sample stay in ``details``).
* Quality: the bundled digits model is measured in the feature space of the shipped digits classifier (FID against
  the real digits, class agreement, relative L2 error of the 8-bit images against full compute); any other model by
  Inception FID against --reference (ADM's reference batch for ImageNet) and Inception Score. sFID is not computed
  (torch-fidelity has no sFID): its column stays empty beside the paper's number.

Rows resume: each finished row is a line of {results-dir}/rows.jsonl with everything that made its numbers (the
sampler flags, the weights by content, the evaluation); a rerun skips those, and sample_ddp.py itself resumes a row
stopped half-way. Outputs: table.md, table.json and quality_vs_speedup.png in --results-dir, samples under
{results-dir}/samples.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from common.cli import UsageError, int_range, parse_device, run_cli
from common.flops import FlopsReport, count_flops
from common.methods import make_cache
from common.paired_stats import (
    FrechetReference,
    bootstrap_fid,
    bootstrap_indices,
    bootstrap_mean,
    bootstrap_rel_l2,
)
from common.paper_table import RowLog, TableSpec, check_results_dir, load_table, resolve_table_paths, write_table
from common.taylor_cache import TaylorSeerConfig
from taylorseer_dit import sample_ddp
from taylorseer_dit.defaults import BUNDLED_MODEL
from taylorseer_dit.diffusion import create_diffusion
from taylorseer_dit.digits import DIGITS_IMAGE_SIZE, load_classifier
from taylorseer_dit.fidelity import compute_metrics, fid_features, fid_of_features
from taylorseer_dit.flops import reference_step_flops
from taylorseer_dit.models import DiT_models
from taylorseer_dit.pipeline import SamplingResult, sample_dit
from taylorseer_dit.sampling_args import latent_scale, load_model, weights_id

TREE = Path(__file__).resolve().parent
DEFAULT_TABLE = TREE / "tables" / "bundled_digits.toml"
SAMPLER = TREE / "sample_ddp.py"
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0
SCHEDULED = ("full", "taylorseer", "fora")  # methods whose cost the paper's FLOPs count covers
DIGITS = "digits"
# Sampler flags whose files a table names relative to its own folder.
TABLE_PATH_FLAGS = ("--ckpt", "--vae-path", "--full-step-list")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("table", nargs="?", default=str(DEFAULT_TABLE), help="table file (default: %(default)s)")
    parser.add_argument("--results-dir", help="where the table and samples go (default: results/tables/TABLE-NAME)")
    parser.add_argument(
        "--launcher",
        default=None,
        help='command that runs sample_ddp.py, e.g. "torchrun --nproc_per_node=8" (default: this Python)',
    )
    parser.add_argument(
        "--reference",
        default=None,
        help="reference images of FID for a model other than the bundled one: ADM .npz or PNG folder (the bundled "
        "model is always measured against the real digits)",
    )
    parser.add_argument("--inception-weights", default=None, help="Inception weights file (see evaluate.py)")
    parser.add_argument("--device", default="cpu", help="device of the FLOPs count, the timing and the evaluation")
    parser.add_argument(
        "--timing-repeats",
        type=int_range(1, 100),
        default=3,
        help="latency: every row's first batch is timed this many times, interleaved across rows; the fastest counts",
    )
    parser.epilog = "Flags after -- are appended to every row's sample_ddp.py flags."
    return parser


def row_argv(spec: TableSpec, flags: Sequence[str], extra: Sequence[str]) -> list[str]:
    """A row's sample_ddp.py flags: the table's settings, the row's (both with their files named relative to the
    table file), then the command line's extra flags (relative to the working directory)."""
    folder = spec.path.parent
    table = [
        *resolve_table_paths(spec.settings, folder, TABLE_PATH_FLAGS),
        *resolve_table_paths(flags, folder, TABLE_PATH_FLAGS),
    ]
    return [*table, *extra]


def parse_row(argv: Sequence[str], name: str) -> tuple[argparse.Namespace, object]:
    """sample_ddp.py's own parsing and checks of a row's flags: a bad row fails here, before any row samples."""
    parser = sample_ddp.build_parser()

    def refuse(message: str) -> None:
        raise UsageError(f"table row {name!r} (flags {shlex.join(argv)}): {message}")

    parser.error = refuse
    args = parser.parse_args(list(argv))
    config = sample_ddp.check_args(args, parser)
    return args, config


def is_bundled(args: argparse.Namespace) -> bool:
    return args.model == BUNDLED_MODEL and args.image_size == DIGITS_IMAGE_SIZE and args.vae == "none"


def run_sampler(launcher: Sequence[str], argv: Sequence[str], sample_dir: Path) -> dict:
    """sample_ddp.py as a child process (its progress bars on this stderr, its lines echoed); its summary."""
    command = [*launcher, str(SAMPLER), *argv, "--sample-dir", str(sample_dir)]
    print("$ " + shlex.join(command), flush=True)
    summary = None
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as child:
        for line in child.stdout:
            sys.stdout.write(line)
            if line.startswith("{") and '"npz"' in line:
                summary = json.loads(line)
    if child.returncode != 0:
        raise UsageError(f"sample_ddp.py failed (exit {child.returncode}) for: {shlex.join(command)}")
    if summary is None:
        raise UsageError(f"sample_ddp.py printed no summary for: {shlex.join(command)}")
    return summary


def seconds_per_sample(summary: dict) -> float | None:
    written = summary["samples_written"]
    return summary["sampling_seconds"] / written if written else None


class Yardstick:
    """What every row is measured with: the reference features, the labels of the samples and the shared bootstrap
    resamples (within each label), built once."""

    def __init__(self, args: argparse.Namespace, options: argparse.Namespace, device: torch.device):
        self.bundled = is_bundled(args)
        check_reference_files(options, self.bundled)
        self.options = options
        self.device = device
        self.extractor = DIGITS if self.bundled else "inception"
        if not self.bundled and options.reference is None:
            raise UsageError(
                f"{args.model} is measured by Inception FID against reference images: pass --reference "
                "(for ImageNet 256, ADM's VIRTUAL_imagenet256_labeled.npz)"
            )
        self.reference_source = DIGITS if self.bundled else options.reference
        labels, _, _ = sample_ddp.sample_inputs(range(args.num_fid_samples), args.global_seed, args.num_classes,
                                                (1, 1, 1))  # fmt: skip
        self.labels = np.asarray(labels)
        self.indices = bootstrap_indices(len(labels), BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, strata=self.labels)
        self.reference = self.features(self.reference_source, "reference")
        self.frechet = FrechetReference.of(self.reference.numpy().astype(np.float64))
        self.classifier = load_classifier() if self.bundled else None

    def features(self, source: str | Path, what: str) -> torch.Tensor:
        return fid_features(source, what, feature_extractor=self.extractor,
                            inception_weights=self.options.inception_weights, device=self.device)  # fmt: skip

    def settings(self) -> dict:
        return {
            "extractor": self.extractor,
            "reference": str(self.reference_source),
            "bootstrap": {"resamples": BOOTSTRAP_RESAMPLES, "seed": BOOTSTRAP_SEED, "strata": "label"},
        }

    def measure(self, npz: Path, full_npz: Path) -> tuple[dict, dict]:
        """The row's metrics and their bootstrap replicates under the shared resamples."""
        features = self.features(npz, "samples")
        metrics = {"fid": fid_of_features(features, self.reference)}
        replicates = {"fid": bootstrap_fid(features.numpy().astype(np.float64), self.frechet, self.indices)}
        images = pixels(npz)
        if self.bundled:
            correct = self.correct(images)
            metrics["agreement"] = float(correct.mean())
            replicates["agreement"] = bootstrap_mean(correct, self.indices)
            full = pixels(full_npz)
            errors = (images - full).flatten(1).square().sum(1).numpy()
            norms = full.flatten(1).square().sum(1).numpy()
            metrics["rel_l2"] = float(np.sqrt(errors.sum() / norms.sum()))
            replicates["rel_l2"] = bootstrap_rel_l2(errors, norms, self.indices)
        else:
            scores = compute_metrics(npz, self.reference_source, metrics=["isc"], feature_extractor="inception",
                                     inception_weights=self.options.inception_weights, device=self.device)  # fmt: skip
            metrics["is"] = scores.get("isc")
        return metrics, {key: np.asarray(values).tolist() for key, values in replicates.items()}

    @torch.no_grad()
    def correct(self, images: torch.Tensor) -> np.ndarray:
        """1.0 where the digits classifier sees the label the sample was drawn for, else 0.0."""
        predicted = self.classifier(images[:, :1].float()).argmax(1).numpy()
        return (predicted == self.labels).astype(np.float64)


def pixels(npz: Path) -> torch.Tensor:
    """The packed samples as float64 (N, C, H, W) in [-1, 1] (the 8-bit images, as written)."""
    with np.load(npz) as data:
        images = torch.from_numpy(data["arr_0"]).permute(0, 3, 1, 2).double()
    return images / 127.5 - 1


def first_batch(model, args: argparse.Namespace, config) -> Callable[[], SamplingResult]:
    """A run of the row's method on sample_ddp.py's first batch of indices (its labels, noise and generators)."""
    batch = range(min(args.per_proc_batch_size, args.num_fid_samples))
    latent_shape = (model.in_channels, model.input_size, model.input_size)
    labels, noise, generators = sample_ddp.sample_inputs(batch, args.global_seed, args.num_classes, latent_shape)
    diffusion = create_diffusion(str(args.num_sampling_steps))
    noise = noise.to(next(model.parameters()).device)

    def run() -> SamplingResult:
        return sample_dit(model, diffusion, labels, cfg_scale=args.cfg_scale, cache=make_cache(args.method, config),
                          ddim=args.ddim_sample, seed=args.global_seed, noise=noise, generator=generators)  # fmt: skip

    return run


def counted_flops(model, args: argparse.Namespace, config) -> tuple[float, int]:
    """Matmul FLOPs of one run of the row's method on the first batch, and its full steps."""
    run = first_batch(model, args, config)
    steps = {}

    def counted() -> None:
        steps["full"] = run().num_full_steps

    return float(count_flops(counted)), steps["full"]


def time_rows(model, rows: dict, repeats: int) -> dict[str, float]:
    """Row name -> the fastest of ``repeats`` timed runs of its first batch, the rows interleaved (A B C A B C ...)
    so that a busy phase of the machine slows every row alike, after one untimed run of each (warm-up)."""
    runs = {name: first_batch(model, args, config) for name, (_, args, config) in rows.items()}
    for run in runs.values():
        run()
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            seconds[name].append(run().seconds)
    return {name: min(values) for name, values in seconds.items()}


def paper_count_speedup(args: argparse.Namespace, config) -> float | None:
    """The TaylorSeer paper's FLOPs count (its DiT convention, meta device) for the methods whose schedule fixes
    their cost; None for the others."""
    if args.method not in SCHEDULED:
        return None
    with torch.device("meta"):
        model = DiT_models[args.model](input_size=args.image_size // latent_scale(args), in_channels=args.in_channels,
                                       num_classes=args.num_classes)  # fmt: skip
    step_flops = reference_step_flops(model, 2 if args.cfg_scale > 1 else 1)
    schedule = config if isinstance(config, TaylorSeerConfig) else TaylorSeerConfig(interval=1)
    return FlopsReport.for_schedule("reference", *step_flops, args.num_sampling_steps, schedule).speedup


def main(options: argparse.Namespace, extra: Sequence[str]) -> dict:
    spec = load_table(options.table)
    results_dir = check_results_dir(Path(options.results_dir or Path("results") / "tables" / spec.path.stem))
    device = parse_device(options.device)
    launcher = check_launcher(options.launcher)
    rows = {}
    for row in spec.rows:  # every row's flags checked by sample_ddp.py's parser before anything samples
        argv = row_argv(spec, row.flags, extra)
        rows[row.name] = (argv, *parse_row(argv, row.name))
    check_one_sampling(spec, rows)
    reference_args = rows[spec.reference.name][1]
    yardstick = Yardstick(reference_args, options, device)
    log = RowLog(results_dir / "rows.jsonl")
    sample_dir = results_dir / "samples"
    weights = weights_id(reference_args)
    model = load_model(reference_args, device)  # every row samples the same model (check_one_sampling)
    results: dict[str, dict] = {}
    for row in spec.rows:
        argv, args, config = rows[row.name]
        settings = {"argv": argv, "weights_id": weights, "evaluation": yardstick.settings()}
        done = log.finished(row.name, settings)
        if done is not None:
            results[row.name] = done
            continue
        summary = run_sampler(launcher, argv, sample_dir)
        full = results.get(spec.reference.name)
        if full is not None and not Path(full["details"]["npz"]).is_file():
            # Full compute's samples are the reference of the errors: resampled (identically) when they are gone.
            run_sampler(launcher, rows[spec.reference.name][0], sample_dir)
        flops, full_steps = counted_flops(model, args, config)
        npz = Path(summary["npz"])
        metrics, replicates = yardstick.measure(npz, npz if full is None else Path(full["details"]["npz"]))
        full_flops = flops if full is None else full["details"]["matmul_flops"]
        result = {
            "flops_speedup": full_flops / flops,
            "latency_speedup": None,  # from the interleaved timing of every row, below
            "metrics": metrics,
            "replicates": replicates,
            "details": {
                "matmul_flops": flops,
                "paper_count_speedup": paper_count_speedup(args, config),
                "full_steps_first_batch": full_steps,
                "mean_full_steps": summary.get("mean_full_steps"),
                "sampler_seconds_per_sample": seconds_per_sample(summary),
                "npz": str(npz),
                "method_settings": summary.get("method_settings"),
            },
        }
        log.record(row.name, settings, result)
        results[row.name] = result
    seconds = time_rows(model, rows, options.timing_repeats)
    for name, result in results.items():
        result["latency_speedup"] = seconds[spec.reference.name] / seconds[name]
        result["details"]["batch_seconds_min"] = seconds[name]
    lines = describe(spec, reference_args, yardstick, options.timing_repeats, device)
    return write_table(results_dir, spec, results, caveat=None, lines=lines)


def check_launcher(text: str | None) -> list[str]:
    """--launcher as a command line whose program exists (this Python when not given)."""
    if text is None:
        return [sys.executable]
    launcher = shlex.split(text)
    if not launcher or shutil.which(launcher[0]) is None:
        program = launcher[0] if launcher else "(empty)"
        raise UsageError(
            f"--launcher {text!r}: no program {program!r} on PATH; give a command such as "
            '"torchrun --nproc_per_node=8", or leave it out to use this Python'
        )
    return launcher


def check_reference_files(options: argparse.Namespace, bundled: bool) -> None:
    """--reference and --inception-weights name existing files, and only where they are read."""
    if bundled and options.reference is not None:
        raise UsageError("the bundled digits model is measured against the real digits: drop --reference")
    for flag, value in (("--reference", options.reference), ("--inception-weights", options.inception_weights)):
        if value is not None and not Path(value).expanduser().exists():
            raise UsageError(f"{flag} {value}: no such file or folder")


def check_one_sampling(spec: TableSpec, rows: dict) -> None:
    """Every row must sample the same indices of the same model, else no comparison is paired."""
    keys = ("model", "ckpt", "image_size", "num_classes", "num_fid_samples", "global_seed", "cfg_scale",
            "num_sampling_steps", "ddim_sample", "vae")  # fmt: skip
    reference = vars(rows[spec.reference.name][1])
    for name, (_, args, _) in rows.items():
        differing = [k for k in keys if vars(args)[k] != reference[k]]
        if differing:
            raise UsageError(
                f"{spec.path}: row {name!r} sets {', '.join('--' + k.replace('_', '-') for k in differing)} apart "
                "from full compute; a row may change only its method, so that every comparison is paired"
            )


def describe(
    spec: TableSpec, args: argparse.Namespace, yardstick: Yardstick, repeats: int, device: torch.device
) -> list[str]:
    sampler = "DDIM" if args.ddim_sample else "DDPM"
    lines = [
        f"Measured: {args.model} at {args.image_size}², {sampler} {args.num_sampling_steps} steps, CFG "
        f"{args.cfg_scale}, {args.num_fid_samples} samples of sample_ddp.py --global-seed {args.global_seed} (every "
        "row the same labels and noise, index by index).",
        "FLOPs speedup: every matmul of one counted run of the row on the first batch, against full compute's "
        "(TeaCache's skips depend on the batch). Latency speedup: full compute's sampling seconds of the first batch "
        f"over the row's, each the fastest of {repeats} runs interleaved across the rows (after a warm-up run), on "
        f"{device.type} ({os.cpu_count()} CPU cores here): timings of a shared machine are noisy, the FLOPs are not.",
    ]
    if yardstick.bundled:
        lines.append(
            "The bundled digits DiT: FID is measured in the digits classifier's feature space against the real "
            "digits, and so are class agreement and the relative L2 error against full compute; these numbers are "
            f"real but not comparable with the paper's {spec.paper_model} ImageNet FIDs: compare orderings, not values."
        )
    return lines


def cli(argv: Sequence[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--") if "--" in argv else len(argv)
    options = build_parser().parse_args(argv[:split])
    return run_cli(main, options, argv[split + 1 :])


if __name__ == "__main__":
    cli()
