"""FID, Inception Score, KID and precision/recall of generated samples against a reference, via torch-fidelity.

    python TaylorSeer-DiT/evaluate.py --samples samples/run.npz --reference VIRTUAL_imagenet256.npz \\
        --inception-weights pretrained_models/weights-inception-2015-12-05-6726825d.pth
    python TaylorSeer-DiT/evaluate.py --samples samples/digits-run --reference digits --feature-extractor digits

Samples and reference are folders of PNG images, ADM-style .npz files (arr_0: uint8 N x H x W x C), or ``digits``
(the offline digits dataset). ``--feature-extractor digits`` measures in the feature space of the bundled digits
classifier: its numbers compare with each other only, never with Inception FIDs. Prints a markdown table, writes the
metrics as JSON and the table as markdown beside it, and ends with the same record as one JSON line.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import torch

from common.cli import UsageError, check_output_file, check_output_folder, int_range, parse_device, run_cli, warn
from common.report import markdown_table, save_report
from taylorseer_dit.fidelity import (
    DEFAULT_INCEPTION_WEIGHTS,
    FEATURE_EXTRACTORS,
    INCEPTION_WEIGHTS_ENV,
    METRICS,
    MIN_IMAGES,
    compute_metrics,
    open_images,
)

DEFAULT_METRICS = ["fid", "isc", "kid"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", required=True, help="generated images: PNG folder or .npz (or 'digits')")
    parser.add_argument(
        "--reference", default=None, help="real images: PNG folder, .npz or 'digits'; not needed for isc alone"
    )
    parser.add_argument("--metrics", nargs="+", choices=METRICS, default=DEFAULT_METRICS, help="default: %(default)s")
    parser.add_argument(
        "--feature-extractor",
        choices=FEATURE_EXTRACTORS,
        default="inception",
        help="inception = torch-fidelity's InceptionV3 (local weights needed); digits = the bundled digits "
        "classifier (default: %(default)s)",
    )
    parser.add_argument(
        "--inception-weights",
        default=None,
        help=f"torch-fidelity's InceptionV3 weights (default: ${INCEPTION_WEIGHTS_ENV}, else "
        f"{DEFAULT_INCEPTION_WEIGHTS})",
    )
    parser.add_argument(
        "--batch-size", type=int_range(1), default=64, help="feature extraction batch (default: %(default)s)"
    )
    parser.add_argument(
        "--kid-subset-size",
        type=int_range(MIN_IMAGES),
        default=None,
        help="KID subset size, at most the smaller set (default: min(1000, smaller set))",
    )
    parser.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="cpu or cuda[:i] (default: %(default)s)",
    )
    parser.add_argument(
        "--cache-dir",
        default=None,
        help="keep the features of a 'digits' input here for later runs, as .safetensors files that are checked "
        "before use (default: cache nothing)",
    )
    parser.add_argument(
        "--output", default=None, help="metrics JSON; the table goes beside it as .md (default: <samples>-metrics.json)"
    )
    return parser


def default_output(samples: str) -> Path:
    """``run/`` -> ``run-metrics.json``, ``run.npz`` -> ``run-metrics.json``, next to the samples."""
    path = Path(samples)
    stem = path.with_suffix("") if path.is_file() else path
    return stem.parent / f"{stem.name}-metrics.json"


def metrics_table(metrics: dict[str, float]) -> str:
    return markdown_table(["metric", "value"], [[name, f"{value:.6g}"] for name, value in metrics.items()])


def uses_reference(args: argparse.Namespace) -> bool:
    return set(args.metrics) != {"isc"}  # the Inception Score is computed from the samples alone


def check_args(args: argparse.Namespace) -> tuple[torch.device, Path]:
    """Everything that can be checked before any image is read: the device, the flags that go together and the
    paths that will be written. Returns the device and the output path."""
    device = parse_device(args.device)
    if uses_reference(args) and args.reference is None:
        raise UsageError(
            f"--metrics {' '.join(args.metrics)} compares with real images: give --reference (a PNG folder, .npz or "
            "'digits'), or use --metrics isc alone"
        )
    if not uses_reference(args) and args.reference is not None:
        warn("--reference is not used: the Inception Score is computed from the samples alone")
    if args.feature_extractor != "inception" and args.inception_weights is not None:
        warn(f"--inception-weights is not used with --feature-extractor {args.feature_extractor}")
    if args.cache_dir is not None:
        check_output_folder(args.cache_dir, "--cache-dir")
        if "digits" not in (args.samples, args.reference if uses_reference(args) else None):
            warn("--cache-dir keeps the features of a 'digits' input only; nothing is cached in this run")
    output = check_output_file(args.output or default_output(args.samples), "--output", (".json",))
    if output.with_suffix(".md").is_dir():
        raise UsageError(f"{output.with_suffix('.md').absolute()} (the table beside --output) is a folder: choose "
                         "another --output")  # fmt: skip
    return device, output


def main(args: argparse.Namespace) -> dict:
    device, output = check_args(args)
    samples = open_images(args.samples, "samples")
    reference_source = args.reference if uses_reference(args) else None
    reference = None if reference_source is None else open_images(reference_source, "reference")
    metrics = compute_metrics(
        samples,
        reference,
        metrics=args.metrics,
        feature_extractor=args.feature_extractor,
        inception_weights=args.inception_weights,
        batch_size=args.batch_size,
        device=device,
        kid_subset_size=args.kid_subset_size,
        cache_dir=args.cache_dir,
    )
    record = {
        "samples": args.samples,
        "reference": reference_source,
        "feature_extractor": args.feature_extractor,
        "num_samples": len(samples),
        "num_reference": None if reference is None else len(reference),
        **metrics,
    }
    print(f"{args.samples} ({len(samples)} images) vs {reference_source}, {args.feature_extractor} features")
    save_report(output, record, metrics_table(metrics))
    print(json.dumps(record))
    return record


def cli(argv: Sequence[str] | None = None) -> dict:
    """Parse and run; a bad flag, a missing or damaged input or an unwritable output ends in one ``error:`` line
    and exit code 2, before anything is written."""
    args = build_parser().parse_args(argv)
    return run_cli(main, args, catch=(ValueError,))


if __name__ == "__main__":
    cli()
