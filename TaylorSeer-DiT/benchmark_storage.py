"""Memory and error of the cache's storage dtype (--factor-dtype), together, on the bundled digits model.

    python TaylorSeer-DiT/benchmark_storage.py                  # 200 samples, DDIM 50, N=5, O=3 and FORA; ~3 min

The cache keeps each cached module's outputs at the last O + 1 full steps; ``--factor-dtype bfloat16`` or ``float16``
stores them at half the bytes of the model's float32, and every forecast still accumulates in float32. What that
rounding costs is measured where it matters, on the final samples: every row samples the same noise and labels as
full compute (labels cycling 0..9), and its relative L2 distance to full compute's samples comes with a 95% bootstrap
interval (resampling the sample indices within labels), as does its paired difference to the same method with
float32 storage. The method's own error (float32 storage) is the yardstick: storage rounding is worth its memory when
the difference is small against it.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from common.cli import (
    FACTOR_DTYPES,
    HelpFormatter,
    check_output_folder,
    finite_float,
    int_range,
    run_cli,
)
from common.io import atomic_write
from common.latency_benchmark import held_bytes
from common.methods import fora_of
from common.paired_stats import bootstrap_indices, bootstrap_rel_l2, percentile_interval
from common.report import markdown_table
from common.taylor_cache import TaylorCache, TaylorSeerConfig
from taylorseer_dit.checkpoints import load_dit
from taylorseer_dit.defaults import BUNDLED_CFG_SCALE, BUNDLED_MODEL, BUNDLED_WEIGHTS
from taylorseer_dit.diffusion import create_diffusion
from taylorseer_dit.digits import DIGITS_IMAGE_SIZE
from taylorseer_dit.pipeline import sample_dit

STORAGES = ("auto", "bfloat16", "float16")
RESAMPLES = 1000


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--samples", type=int_range(10, 10000), default=200, help="images (labels cycle 0..9)")
    parser.add_argument("--interval", type=int_range(2, 50), default=5, help="N")
    parser.add_argument("--max-order", type=int_range(1, 4), default=3, help="O of the TaylorSeer rows")
    parser.add_argument("--first-enhance", type=int_range(1, 10), default=2, help="E (the DiT reference's 2)")
    parser.add_argument("--num-steps", type=int_range(5, 1000), default=50, help="DDIM steps")
    parser.add_argument("--cfg-scale", type=finite_float(1.0), default=BUNDLED_CFG_SCALE, help="guidance")
    parser.add_argument("--seed", type=int_range(0, 2**31 - 1), default=0, help="noise seed")
    parser.add_argument("--results-dir", default="results/storage-dit", help="results.json and results.md go here")
    return parser


def main(args: argparse.Namespace) -> dict:
    folder = check_output_folder(args.results_dir, "--results-dir")
    model = load_dit(
        BUNDLED_MODEL, BUNDLED_WEIGHTS, image_size=DIGITS_IMAGE_SIZE, latent_scale=1, in_channels=1, num_classes=10
    )
    diffusion = create_diffusion(f"ddim{args.num_steps}")
    labels = [i % 10 for i in range(args.samples)]

    def sample(cache: TaylorCache | None) -> np.ndarray:
        result = sample_dit(model, diffusion, labels, cfg_scale=args.cfg_scale, cache=cache, seed=args.seed)
        return result.samples.double().flatten(1).numpy()

    full = sample(None)
    norms = (full**2).sum(axis=1)
    indices = bootstrap_indices(args.samples, RESAMPLES, seed=args.seed, strata=labels)
    taylorseer = TaylorSeerConfig(interval=args.interval, max_order=args.max_order, first_enhance=args.first_enhance)
    rows, replicates, rel_l2 = [], {}, {}
    for method, base in (("TaylorSeer", taylorseer), ("FORA", fora_of(taylorseer))):
        for storage in STORAGES:
            config = TaylorSeerConfig(**{**base.__dict__, "factor_dtype": FACTOR_DTYPES[storage]})
            cache = TaylorCache(config)
            errors = ((sample(cache) - full) ** 2).sum(axis=1)
            reps = bootstrap_rel_l2(errors, norms, indices)
            replicates[method, storage] = reps
            rel_l2[method, storage] = float(np.sqrt(errors.sum() / norms.sum()))
            row = {
                "method": method,
                "storage": "float32 (auto)" if storage == "auto" else storage,
                "max_order": config.max_order,
                "cache_bytes": held_bytes(cache),
                "rel_l2": rel_l2[method, storage],
                "rel_l2_interval": percentile_interval(reps),
            }
            if storage != "auto":
                row["delta_vs_float32_interval"] = percentile_interval(reps - replicates[method, "auto"])
                row["delta_vs_float32"] = rel_l2[method, storage] - rel_l2[method, "auto"]
            rows.append(row)
            print(f"{method} {row['storage']}: rel L2 {row['rel_l2']:.5f}, cache {row['cache_bytes'] / 1e6:.2f} MB")
    return write(folder, rows, args, tokens=model.x_embedder.num_patches)


def _interval(interval: Sequence[float]) -> str:
    return f"[{interval[0]:+.5f}, {interval[1]:+.5f}]"


def write(folder: Path, rows: list[dict], args: argparse.Namespace, tokens: int) -> dict:
    header = ["method", "storage", "cache MB", "rel. L2 to full [95% CI]", "Δ vs float32 storage [95% CI]"]
    table = [
        [
            row["method"],
            row["storage"],
            f"{row['cache_bytes'] / 1e6:.2f}",
            f"{row['rel_l2']:.5f} [{row['rel_l2_interval'][0]:.5f}, {row['rel_l2_interval'][1]:.5f}]",
            "—"
            if "delta_vs_float32" not in row
            else f"{row['delta_vs_float32']:+.5f} " + _interval(row["delta_vs_float32_interval"]),
        ]
        for row in rows
    ]
    title = (
        f"Cache storage dtype: {BUNDLED_MODEL} digits, {args.samples} samples, DDIM {args.num_steps}, "
        f"N={args.interval}, E={args.first_enhance}"
    )
    caption = (
        "Every row samples full compute's noise and labels; relative L2 of the final samples to full compute's, with "
        f"{RESAMPLES} paired bootstrap resamples within labels. The cache bytes are those of this small model "
        f"({tokens} tokens per image); they scale with the model and batch, the ratio between rows does not."
    )
    markdown = f"# {title}\n\n{caption}\n\n{markdown_table(header, table)}\n"
    record = {"title": title, "settings": {**vars(args), "results_dir": str(args.results_dir)}, "rows": rows}
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / "results.json", lambda temp: temp.write_text(json.dumps(record, indent=2) + "\n"))
    atomic_write(folder / "results.md", lambda temp: temp.write_text(markdown))
    print(markdown)
    return record


def cli(argv: Sequence[str] | None = None) -> dict:
    return run_cli(main, build_parser().parse_args(argv))


if __name__ == "__main__":
    cli()
