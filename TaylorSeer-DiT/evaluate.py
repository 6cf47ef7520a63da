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
from pathlib import Path

import torch

from common.cli import run_cli
from common.report import markdown_table, save_report
from taylorseer_dit.fidelity import (
    DEFAULT_INCEPTION_WEIGHTS,
    FEATURE_EXTRACTORS,
    INCEPTION_WEIGHTS_ENV,
    METRICS,
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
    parser.add_argument("--batch-size", type=int, default=64, help="feature extraction batch (default: %(default)s)")
    parser.add_argument(
        "--kid-subset-size", type=int, default=None, help="KID subset size (default: min(1000, smaller set))"
    )
    parser.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="cpu or cuda[:i] (default: %(default)s)",
    )
    parser.add_argument(
        "--cache-dir",
        default=None,
        help="keep the features of a 'digits' input here for later runs (default: cache nothing)",
    )
    parser.add_argument("--output", default=None, help="metrics JSON (default: <samples>-metrics.json beside them)")
    return parser


def default_output(samples: str) -> Path:
    """``run/`` -> ``run-metrics.json``, ``run.npz`` -> ``run-metrics.json``, next to the samples."""
    path = Path(samples)
    stem = path.with_suffix("") if path.is_file() else path
    return stem.parent / f"{stem.name}-metrics.json"


def metrics_table(metrics: dict[str, float]) -> str:
    return markdown_table(["metric", "value"], [[name, f"{value:.6g}"] for name, value in metrics.items()])


def main(args: argparse.Namespace) -> dict:
    samples = open_images(args.samples, "samples")
    reference = None if args.reference is None else open_images(args.reference, "reference")
    metrics = compute_metrics(
        samples,
        reference,
        metrics=args.metrics,
        feature_extractor=args.feature_extractor,
        inception_weights=args.inception_weights,
        batch_size=args.batch_size,
        device=args.device,
        kid_subset_size=args.kid_subset_size,
        cache_dir=args.cache_dir,
    )
    record = {
        "samples": args.samples,
        "reference": args.reference,
        "feature_extractor": args.feature_extractor,
        "num_samples": len(samples),
        "num_reference": None if reference is None else len(reference),
        **metrics,
    }
    print(f"{args.samples} ({len(samples)} images) vs {args.reference}, {args.feature_extractor} features")
    save_report(args.output or default_output(args.samples), record, metrics_table(metrics))
    print(json.dumps(record))
    return record


if __name__ == "__main__":
    arguments = build_parser().parse_args()
    run_cli(main, arguments, catch=(ValueError,))
