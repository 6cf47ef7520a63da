"""Quality against speed on the bundled digits model: TaylorSeer orders 1-4 against FORA (order 0) for N = 2..8.

    python TaylorSeer-DiT/benchmark_quality.py                    # ~40 min on 2 CPU cores; resumes if stopped

Every cell samples the same noise and labels as the full-compute run of seed 0 (DDIM 50, CFG; the noise of
sample_ddp.py --global-seed 0, index by index, but labels that cycle 0..9 rather than its random ones, so that every
class gets the same number of samples) and reports the FLOPs speedup, the wall-clock speedup, the relative L2
error of the final samples against full compute, the FID against the real digits (in the feature space of the shipped
digits classifier, see fidelity.py) and the class agreement judged by that classifier.

Differences are paired: sample i of a cell and sample i of full compute share their noise and label, so a bootstrap
that resamples the sample indices (the same resampled indices for every cell and for full compute, within each label)
gives 95% intervals of FID(cell) - FID(full), of the class agreement's difference, of the L2 error, and of each
TaylorSeer cell against FORA at the same N (see common/paired_stats.py). Full compute is also sampled on further noise
seeds, whose FIDs give the seed-to-seed spread (reported with the number of seeds).

Cells are appended to cells.jsonl as they finish, each with the settings it was made with (the weights by content,
not by path) and its bootstrap replicates, from which the intervals are computed; a rerun skips the finished cells of
its own settings (cells recorded with other settings are not reused, and it says so), and a last line cut short by a
kill is dropped with a warning. Outputs: results.md (markdown tables), results.json and quality_vs_speedup.png in
--results-dir; a stopped run, resumed, writes the same files as one that was never stopped (up to its wall-clock
times).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from common.cli import UsageError, check_output_folder, finite_float, int_range, parse_device, run_cli, warn
from common.flops import FlopsReport
from common.images import to_uint8
from common.integrity import check_finite, weights_fingerprint
from common.paired_stats import (
    FrechetReference,
    bootstrap_fid,
    bootstrap_indices,
    bootstrap_mean,
    bootstrap_rel_l2,
    excludes_zero,
    percentile_interval,
)
from common.paper_table import end_log_cleanly, read_log
from common.taylor_cache import TaylorCache, TaylorSeerConfig
from taylorseer_dit.checkpoints import find_dit_checkpoint, load_dit
from taylorseer_dit.defaults import BUNDLED_CFG_SCALE, BUNDLED_MODEL
from taylorseer_dit.diffusion import create_diffusion
from taylorseer_dit.digits import DIGITS_IMAGE_SIZE, DigitClassifier, load_classifier
from taylorseer_dit.fidelity import MIN_IMAGES, fid_features, fid_of_features
from taylorseer_dit.flops import reference_step_flops
from taylorseer_dit.models import DiT
from taylorseer_dit.pipeline import sample_dit
from taylorseer_dit.sample_ddp import sample_inputs

FULL = TaylorSeerConfig(interval=1)
DIFFUSION_STEPS = 1000  # the training schedule that DDIM respaces: no more sampling steps than these
CELLS = "cells.jsonl"
# Every file the benchmark writes in --results-dir, and what it is (for the messages).
OUTPUTS = {CELLS: "cell log", "results.json": "summary", "results.md": "tables", "quality_vs_speedup.png": "plot"}
# The numbers each kind of cell holds: a cell without one of them cannot be summarised.
FULL_FIELDS = ("seed", "seconds", "fid", "agreement")
GRID_FIELDS = ("interval", "order", "seconds", "flops_speedup", "full_steps", "rel_l2", "fid", "agreement")
# The bootstrap replicates each kind of cell holds (full compute: seed 0 only, the reference of every difference).
FULL_REPLICATES = ("fid", "agreement")
GRID_REPLICATES = ("fid", "agreement", "rel_l2")
# The paired bootstrap: resamples of the sample indices within each label, the same for every cell (fixed seed).
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0
LEVEL = 0.95
NUM_CLASSES = 10
WALL_NOISE_MARK = "(noise)"
SUSPECTS = "--cfg-scale and --ckpt (a non-finite sample comes from the guidance or the weights)"


def explained(parse: Callable[[str], int], why: str) -> Callable[[str], int]:
    """An argparse ``type=`` that refuses what ``parse`` refuses, with ``why`` the limit is what it is."""

    def parse_explained(text: str) -> int:
        try:
            return parse(text)
        except argparse.ArgumentTypeError as err:
            raise argparse.ArgumentTypeError(f"{err} ({why})") from None

    parse_explained.__name__ = parse.__name__
    return parse_explained


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", default=None, help="DiT-XS/4 digits weights (default: the bundled ones)")
    parser.add_argument(
        "--intervals",
        type=explained(int_range(2), "N=1 is full compute, the reference of every cell"),
        nargs="+",
        default=list(range(2, 9)),
        help="N values, each >= 2",
    )
    parser.add_argument("--orders", type=int_range(0), nargs="+", default=[0, 1, 2, 3, 4], help="orders (0 = FORA)")
    parser.add_argument(
        "--first-enhance", type=int_range(1), default=2, help="E, the reference's DiT value; below the step count"
    )
    parser.add_argument(
        "--num-samples",
        type=explained(int_range(MIN_IMAGES), f"FID needs at least {MIN_IMAGES} samples"),
        default=1000,
        help="samples per cell (labels cycle 0..9)",
    )
    parser.add_argument(
        "--spread-seeds",
        type=explained(int_range(2), "a seed-to-seed spread needs two seeds; seed 0 is also every cell's reference"),
        default=6,
        help="noise seeds of full compute for the seed-to-seed FID spread, >= 2",
    )
    parser.add_argument(
        "--num-sampling-steps",
        type=explained(int_range(1, DIFFUSION_STEPS), f"DDIM respaces the {DIFFUSION_STEPS} training steps"),
        default=50,
        help="DDIM steps",
    )
    parser.add_argument(
        "--cfg-scale",
        type=finite_float(1.0, 100.0),
        default=BUNDLED_CFG_SCALE,
        help="classifier-free guidance (1 = off)",
    )
    parser.add_argument("--batch-size", type=int_range(1), default=500, help="samples per forward (CFG doubles it)")
    parser.add_argument("--results-dir", default="results/benchmark-digits", help="where results are written")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda[:i]")
    return parser


def check_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """The flags that only go wrong together: exits through ``parser.error`` with the fix."""
    for flag, values in (("--intervals", args.intervals), ("--orders", args.orders)):
        repeated = sorted({v for v in values if values.count(v) > 1})
        if repeated:
            parser.error(f"{flag} lists {', '.join(map(str, repeated))} more than once: give each value once")
    if args.first_enhance >= args.num_sampling_steps:
        # Steps 0..E-1 are full and step E is always a forecast (N >= 2): E < T leaves at least one forecast.
        parser.error(
            f"--first-enhance {args.first_enhance} makes all {args.num_sampling_steps} steps full warm-up steps, so "
            f"every cell would be full compute: use --first-enhance < {args.num_sampling_steps}"
        )


def check_results_dir(path: str | Path) -> Path:
    """``path`` as a folder the benchmark can write its files in (nothing is created): checked before the model is
    loaded, so that a half-hour run never ends in an unwritable path."""
    folder = check_output_folder(path, "--results-dir")
    for name, what in OUTPUTS.items():
        file = folder / name
        if file.is_dir():
            raise UsageError(
                f"{file.absolute()} is a folder where the benchmark writes its {what}: move it away or choose "
                "another --results-dir"
            )
        if file.exists() and not os.access(file, os.W_OK):
            raise UsageError(f"{file.absolute()} is read-only: make it writable or choose another --results-dir")
    return folder


def sample_labels(num_samples: int) -> torch.Tensor:
    """The labels of every set: 0..9 in turn, so each class gets the same count. The real digits are near-balanced
    (178 +- 5 per class), and FID in the classifier's features moves by several points with the class proportions of
    1000 samples: sample_ddp.py's uniformly random labels (upstream DiT's protocol, meant for 50k samples) would make
    each seed's FID a lottery of its label draw."""
    return torch.arange(num_samples) % NUM_CLASSES


def sample_noise(num_samples: int, seed: int) -> torch.Tensor:
    """The initial noise of ``sample_ddp.py --global-seed seed``, index by index (sample i's own generator draws its
    label, unused here, then its noise): the two scripts differ in the labels only. DDIM (eta 0) draws nothing else."""
    _, noise, _ = sample_inputs(range(num_samples), seed, NUM_CLASSES, (1, DIGITS_IMAGE_SIZE, DIGITS_IMAGE_SIZE))
    return noise


def sample_set(model: DiT, args, config: TaylorSeerConfig, seed: int) -> tuple[torch.Tensor, float]:
    """``num_samples`` samples of one noise seed, in batches; returns them and the sampling seconds."""
    noise = sample_noise(args.num_samples, seed)
    labels = sample_labels(args.num_samples)
    diffusion = create_diffusion(str(args.num_sampling_steps))
    cache = None if config.is_uncached else TaylorCache(config)
    samples, seconds = [], 0.0
    for start in range(0, args.num_samples, args.batch_size):
        chunk = slice(start, start + args.batch_size)
        result = sample_dit(model, diffusion, labels[chunk].tolist(), cfg_scale=args.cfg_scale, cache=cache,
                            ddim=True, seed=seed, noise=noise[chunk])  # fmt: skip
        samples.append(result.samples.cpu())
        seconds += result.seconds
    samples = torch.cat(samples)
    check_finite(samples, f"the samples of N={config.interval}, order {config.max_order}, seed {seed}", SUSPECTS)
    return samples, seconds


@dataclass(frozen=True)
class Yardstick:
    """What every set is measured with: the classifier, the real digits' features (extracted once) and the
    bootstrap resamples of the sample indices, shared by all cells so that their replicates are paired."""

    classifier: DigitClassifier
    real_features: torch.Tensor
    reference: FrechetReference
    indices: np.ndarray

    @classmethod
    def build(cls, num_samples: int) -> Yardstick:
        real = fid_features("digits", "reference", feature_extractor="digits")
        strata = sample_labels(num_samples).numpy()
        indices = bootstrap_indices(num_samples, BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, strata)
        return cls(load_classifier(), real, FrechetReference.of(real.numpy()), indices)


@torch.no_grad()
def correct_labels(classifier, samples: torch.Tensor) -> np.ndarray:
    """Per sample, 1.0 where the classifier sees the class it was sampled for, else 0.0."""
    predicted = classifier(samples.clamp(-1, 1)).argmax(1)
    return (predicted == sample_labels(len(samples))).double().numpy()


def measure(samples: torch.Tensor, yardstick: Yardstick, full: torch.Tensor | None = None) -> dict:
    """FID and class agreement of ``samples`` (and, given the full-compute samples of the same noise, the relative L2
    error against them), each with its bootstrap replicates under the shared resamples."""
    features = fid_features(to_uint8(samples), feature_extractor="digits")
    correct = correct_labels(yardstick.classifier, samples)
    values = {"fid": fid_of_features(features, yardstick.real_features), "agreement": float(correct.mean())}
    replicates = {
        "fid": bootstrap_fid(features.numpy(), yardstick.reference, yardstick.indices),
        "agreement": bootstrap_mean(correct, yardstick.indices),
    }
    if full is not None:
        errors = (samples - full).double().flatten(1).square().sum(1).numpy()
        norms = full.double().flatten(1).square().sum(1).numpy()
        values["rel_l2"] = math.sqrt(errors.sum() / norms.sum())
        replicates["rel_l2"] = bootstrap_rel_l2(errors, norms, yardstick.indices)
    return {**values, "bootstrap": {name: array.tolist() for name, array in replicates.items()}}


def cell_settings(args, weights_id: str) -> dict:
    """Everything besides (N, O, seed) that changes a cell's numbers: a cell is reused only under the same. The
    weights count by content (a path can hold other weights tomorrow)."""
    return {
        "weights_id": weights_id,
        "first_enhance": args.first_enhance,
        "num_samples": args.num_samples,
        "num_sampling_steps": args.num_sampling_steps,
        "cfg_scale": args.cfg_scale,
        "batch_size": args.batch_size,
        "device": torch.device(args.device).type,
        "bootstrap": {"resamples": BOOTSTRAP_RESAMPLES, "seed": BOOTSTRAP_SEED, "strata": "label"},
    }


def load_cells(path: Path, settings: dict) -> dict[str, dict]:
    """The cells of ``path`` recorded with ``settings``, by key. A last line cut short (a kill during its append) is
    dropped with a warning (:func:`end_log_cleanly` removes it before the next append), as are the cells of other
    settings; a corrupt line elsewhere, or a cell of these settings that lacks a number, is a :class:`UsageError`
    naming the line."""
    if not path.exists():
        return {}
    cells, other = {}, 0
    for number, cell in read_log(path, "cell", "sampled"):
        if not isinstance(cell, dict) or not isinstance(cell.get("key"), str):
            raise UsageError(f"{path}, line {number}: expected a cell with a 'key'; delete that line")
        if cell.get("settings") != settings:
            other += 1
            continue
        problem = cell_problem(cell)
        if problem:
            raise UsageError(f"{path}, line {number}: cell {cell['key']} {problem}; delete that line")
        cells[cell["key"]] = cell
    if other:
        warn(f"{path}: {other} cells were recorded with other settings than {settings} and are not reused")
    return cells


def cell_problem(cell: dict) -> str | None:
    """Why ``cell`` cannot be summarised (a missing or non-finite number, or missing bootstrap replicates), or None."""
    full = cell["key"].startswith("full-")
    for field in FULL_FIELDS if full else GRID_FIELDS:
        value = cell.get(field)
        if not is_number(value):
            return f"has no finite number '{field}' (got {value!r})"
    if full and cell["key"] != "full-seed0":
        return None
    replicates = cell.get("bootstrap")
    for field in FULL_REPLICATES if full else GRID_REPLICATES:
        values = replicates.get(field) if isinstance(replicates, dict) else None
        if not isinstance(values, list) or len(values) != BOOTSTRAP_RESAMPLES or not all(map(is_number, values)):
            return f"lacks its {BOOTSTRAP_RESAMPLES} finite bootstrap replicates of '{field}'"
    return None


def is_number(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)


def append_cell(path: Path, cell: dict) -> None:
    """One line per cell in one write (NaN refused: it would not be JSON), so a kill cuts at most the last line."""
    line = (json.dumps(cell, allow_nan=False) + "\n").encode("utf-8")
    with path.open("ab") as file:
        file.write(line)


def write_atomic(path: Path, data: bytes) -> None:
    """Write beside ``path`` and rename over it: a killed run leaves the previous file, never half of one."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def main(args: argparse.Namespace) -> dict:
    """Sample and measure every missing cell, then write the tables, summary and plot; returns the summary."""
    device = parse_device(args.device)
    results = check_results_dir(args.results_dir)
    weights = find_dit_checkpoint(BUNDLED_MODEL, DIGITS_IMAGE_SIZE, args.ckpt)
    weights_id = weights_fingerprint([weights])
    settings = cell_settings(args, weights_id)
    cells_path = results / CELLS
    cells = load_cells(cells_path, settings)
    model = load_dit(BUNDLED_MODEL, weights, image_size=DIGITS_IMAGE_SIZE, latent_scale=1, in_channels=1,
                     num_classes=10, device=device)  # fmt: skip
    yardstick = Yardstick.build(args.num_samples)
    step_flops = reference_step_flops(model, 2 * args.batch_size)
    # Everything is read and checked: from here on, files are written.
    results.mkdir(parents=True, exist_ok=True)
    end_log_cleanly(cells_path)

    def record(key: str, **values) -> dict:
        cells[key] = {"key": key, **values, "settings": settings}
        append_cell(cells_path, cells[key])
        return cells[key]

    sample_dit(model, create_diffusion("2"), [0], cfg_scale=args.cfg_scale)  # warm-up, untimed
    grid = [(n, o) for n in args.intervals for o in args.orders]
    todo = [(n, o) for n, o in grid if f"N{n}-O{o}" not in cells]
    # Seed 0 of full compute is the reference of every cell's error, so it is resampled whenever cells remain.
    for seed in range(args.spread_seeds):
        key = f"full-seed{seed}"
        if key in cells and not (seed == 0 and todo):
            continue
        samples, seconds = sample_set(model, args, FULL, seed)
        if seed == 0:
            full_samples = samples
        if key not in cells:
            measured = measure(samples, yardstick)
            if seed != 0:  # only seed 0 is paired with the cells: the other seeds give the spread of the FID alone
                del measured["bootstrap"]
            record(key, seed=seed, seconds=seconds, **measured)
    for interval, order in tqdm(todo, desc="cells"):
        key = f"N{interval}-O{order}"
        config = TaylorSeerConfig(interval=interval, max_order=order, first_enhance=args.first_enhance)
        samples, seconds = sample_set(model, args, config, seed=0)
        flops = FlopsReport.for_schedule("reference", *step_flops, args.num_sampling_steps, config)
        record(key, interval=interval, order=order, seconds=seconds, flops_speedup=flops.speedup,
               full_steps=flops.num_full_steps, **measure(samples, yardstick, full_samples))  # fmt: skip
    summary = summarise(cells, args, weights_id)
    write_atomic(results / "results.json", (json.dumps(summary, indent=2) + "\n").encode())
    write_atomic(results / "results.md", markdown(summary).encode())
    plot(summary, results / "quality_vs_speedup.png")
    print(markdown(summary))
    warn_timing_noise(summary)
    return summary


def warn_timing_noise(summary: dict) -> None:
    """A forecast step costs less than a full one, never nothing: a wall speedup above the FLOPs speedup can only be
    noise of a busy machine (or one that sped up), so say that the wall column is not to be trusted."""
    noisy = [c for c in summary["cells"] if c["wall_speedup"] > c["flops_speedup"]]
    if noisy:
        names = ", ".join(f"N={c['interval']} order {c['order']} ({c['wall_speedup']:.2f}× > {c['flops_speedup']:.2f}×)"
                          for c in noisy)  # fmt: skip
        warn(
            f"wall speedup above the FLOPs speedup in {names}: only timing noise does that, so the wall-clock "
            "column is unreliable; rerun on an idle machine (finished cells are kept: delete cells.jsonl to retime)"
        )


def summarise(cells: dict[str, dict], args, weights_id: str) -> dict:
    """Aggregate the cells, with the paired intervals their replicates give; wall speedups are taken against the
    fastest full-compute run (every seed is the same workload), so that a full run slowed by other work on the
    machine does not inflate them."""
    full = [cells[f"full-seed{s}"] for s in range(args.spread_seeds)]
    fids = [c["fid"] for c in full]
    full_seconds = min(c["seconds"] for c in full)
    reference = replicates_of(full[0])
    grid = [cells[f"N{n}-O{o}"] for n in args.intervals for o in args.orders if f"N{n}-O{o}" in cells]
    fora = {c["interval"]: c for c in grid if c["order"] == 0}
    return {
        "settings": {
            **{k: v for k, v in vars(args).items() if k != "device"},
            "weights_id": weights_id,
            "bootstrap": {"resamples": BOOTSTRAP_RESAMPLES, "seed": BOOTSTRAP_SEED, "strata": "label", "level": LEVEL},
        },
        "full_compute": {
            "num_seeds": len(fids),
            "fid_per_seed": fids,
            "fid_mean": statistics.mean(fids),
            "fid_std": statistics.stdev(fids),
            "fid_min": min(fids),
            "fid_max": max(fids),
            # The same spread from seed 0's samples alone: a noise seed is one more draw of num_samples noises.
            "fid_bootstrap_std": float(np.std(reference["fid"], ddof=1)),
            "agreement_per_seed": [c["agreement"] for c in full],
            "seconds": full_seconds,
        },
        "cells": [summarise_cell(cell, full[0], reference, fora.get(cell["interval"]), full_seconds) for cell in grid],
    }


def replicates_of(cell: dict) -> dict[str, np.ndarray]:
    return {name: np.asarray(values) for name, values in cell["bootstrap"].items()}


def summarise_cell(cell: dict, full: dict, reference: dict, fora: dict | None, full_seconds: float) -> dict:
    """One cell's numbers, and the intervals of its paired differences: against full compute, and, for TaylorSeer
    orders, against FORA at the same N (the same resamples of the same noise)."""
    own = replicates_of(cell)
    summary = {k: v for k, v in cell.items() if k not in ("settings", "bootstrap")}
    summary |= {
        "wall_speedup": full_seconds / cell["seconds"],
        "rel_l2_ci": percentile_interval(own["rel_l2"], LEVEL),
        "delta_fid": cell["fid"] - full["fid"],
        "delta_fid_ci": percentile_interval(own["fid"] - reference["fid"], LEVEL),
        "delta_agreement": cell["agreement"] - full["agreement"],
        "delta_agreement_ci": percentile_interval(own["agreement"] - reference["agreement"], LEVEL),
    }
    if fora is not None and cell["order"] != 0:
        theirs = replicates_of(fora)
        summary |= {
            "delta_fid_vs_fora": cell["fid"] - fora["fid"],
            "delta_fid_vs_fora_ci": percentile_interval(own["fid"] - theirs["fid"], LEVEL),
        }
        if (theirs["rel_l2"] > 0).all():  # a FORA equal to full compute (a test's stand-in) has no ratio
            summary |= {
                "rel_l2_ratio_to_fora": cell["rel_l2"] / fora["rel_l2"],
                "rel_l2_ratio_to_fora_ci": percentile_interval(own["rel_l2"] / theirs["rel_l2"], LEVEL),
            }
    return summary


def with_interval(value: float, interval: Sequence[float], digits: int, signed: bool = True) -> str:
    """``value [low, high]``, in bold when the interval excludes 0 (the difference has a sign at that level)."""
    spec = f"{'+' if signed else ''}.{digits}f"
    text = f"{value:{spec}} [{interval[0]:{spec}}, {interval[1]:{spec}}]"
    return f"**{text}**" if signed and excludes_zero(tuple(interval)) else text


def markdown(summary: dict) -> str:
    settings, full = summary["settings"], summary["full_compute"]
    boot, level = settings["bootstrap"], f"{settings['bootstrap']['level']:.0%}"
    lines = [
        f"Full compute (DDIM {settings['num_sampling_steps']}, CFG {settings['cfg_scale']}, "
        f"{settings['num_samples']} samples, labels 0..9 in turn) over {full['num_seeds']} noise seeds "
        f"0..{full['num_seeds'] - 1}: FID mean {full['fid_mean']:.3f}, std {full['fid_std']:.3f} (n = "
        f"{full['num_seeds']}, ddof 1), range {full['fid_min']:.3f}..{full['fid_max']:.3f}; per seed "
        + ", ".join(f"{f:.3f}" for f in full["fid_per_seed"])
        + f". Bootstrap std of seed 0's FID over its samples: {full['fid_bootstrap_std']:.3f}. Class agreement "
        + ", ".join(f"{a:.3f}" for a in full["agreement_per_seed"])
        + f"; {full['seconds']:.1f} s (fastest seed; wall speedups are against it).",
        "",
        f"Every cell uses seed 0's noise and labels. Intervals: {level} percentile intervals of a paired bootstrap "
        f"over the samples ({boot['resamples']} resamples within each label, seed {boot['seed']}, the same sample "
        "indices for every cell and for full compute). **Bold**: the interval excludes 0. The intervals are per "
        f"cell, not corrected for the {len(summary['cells'])} comparisons: about 1 in 20 excludes 0 by chance. "
        f"{WALL_NOISE_MARK}: a wall speedup above the FLOPs speedup, which only timing noise gives.",
        "",
        f"| N | order | full steps | FLOPs speedup | wall speedup | rel. L2 vs full [{level} CI] | FID "
        f"| ΔFID vs full [{level} CI] | class agreement | Δagreement vs full [{level} CI] |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in summary["cells"]:
        lines.append(
            f"| {c['interval']} | {order_name(c['order'])} | {c['full_steps']} | {c['flops_speedup']:.2f}× "
            f"| {wall_speedup(c)} | {with_interval(c['rel_l2'], c['rel_l2_ci'], 4, signed=False)} "
            f"| {c['fid']:.3f} | {with_interval(c['delta_fid'], c['delta_fid_ci'], 2)} | {c['agreement']:.3f} "
            f"| {with_interval(c['delta_agreement'], c['delta_agreement_ci'], 3)} |"
        )
    paired = [c for c in summary["cells"] if "delta_fid_vs_fora" in c]
    if paired:
        lines += [
            "",
            "TaylorSeer against FORA at the same N (same noise, labels and resamples; ratio < 1: closer to full "
            "compute than FORA, **bold** when the interval excludes 1):",
            "",
            f"| N | order | ΔFID vs FORA [{level} CI] | rel. L2 ÷ FORA's [{level} CI] |",
            "|---|---|---|---|",
        ]
        for c in paired:
            ratio = "–"
            if "rel_l2_ratio_to_fora" in c:
                ratio = with_interval(c["rel_l2_ratio_to_fora"], c["rel_l2_ratio_to_fora_ci"], 3, signed=False)
                if excludes_zero(tuple(x - 1 for x in c["rel_l2_ratio_to_fora_ci"])):
                    ratio = f"**{ratio}**"
            delta = with_interval(c["delta_fid_vs_fora"], c["delta_fid_vs_fora_ci"], 2)
            lines.append(f"| {c['interval']} | {c['order']} | {delta} | {ratio} |")
    return "\n".join(lines) + "\n"


def wall_speedup(cell: dict) -> str:
    """The wall speedup, marked where it exceeds the FLOPs speedup: a forecast step is cheaper than a full one, never
    free, so such a number is the noise of a busy machine, not a measurement (see :func:`warn_timing_noise`)."""
    text = f"{cell['wall_speedup']:.2f}×"
    return f"{text} {WALL_NOISE_MARK}" if cell["wall_speedup"] > cell["flops_speedup"] else text


def order_name(order: int) -> str:
    return "FORA" if order == 0 else str(order)


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    orders = sorted({c["order"] for c in summary["cells"]})
    for rank, order in enumerate(orders):
        cells = sorted((c for c in summary["cells"] if c["order"] == order), key=lambda c: c["flops_speedup"])
        label = "FORA (order 0)" if order == 0 else f"TaylorSeer order {order}"
        # Every order of one N has the same speedup: a small shift keeps their error bars apart.
        speedups = [c["flops_speedup"] * (1 + 0.012 * (rank - (len(orders) - 1) / 2)) for c in cells]
        axes[0].errorbar(speedups, [c["delta_fid"] for c in cells], yerr=error_bars(cells, "delta_fid"), marker="o",
                         capsize=2, label=label)  # fmt: skip
        axes[1].errorbar(speedups, [c["rel_l2"] for c in cells], yerr=error_bars(cells, "rel_l2"), marker="o",
                         capsize=2, label=label)  # fmt: skip
        if order == 0:  # N=7 and N=8 both have 8 full steps at E=2, T=50: name every point
            for c, x in zip(cells, speedups, strict=True):
                axes[1].annotate(f"N={c['interval']}", (x, c["rel_l2"]), fontsize=7, textcoords="offset points",
                                 xytext=(-12, 6))  # fmt: skip
    full = summary["full_compute"]
    axes[0].axhline(0, color="black", linewidth=0.8)
    axes[0].axhspan(-full["fid_std"], full["fid_std"], color="grey", alpha=0.25,
                    label=f"± full compute's seed std (n = {full['num_seeds']})")  # fmt: skip
    level = f"{summary['settings']['bootstrap']['level']:.0%}"
    axes[0].set(xlabel="FLOPs speedup", ylabel=f"FID(cell) - FID(full), paired {level} CI")
    scale = "log" if any(c["rel_l2"] > 0 for c in summary["cells"]) else "linear"  # all 0: a test's stand-in
    axes[1].set(xlabel="FLOPs speedup", ylabel=f"relative L2 error vs full compute, {level} CI", yscale=scale)
    axes[0].legend(fontsize=8)
    fig.suptitle("DiT-XS/4 on digits, DDIM 50 + CFG: quality against speed (lower is better)")
    fig.tight_layout()
    temporary = path.with_name(f".{path.name}.tmp")
    fig.savefig(temporary, dpi=120, format="png")
    plt.close(fig)
    os.replace(temporary, path)


def error_bars(cells: list[dict], field: str) -> np.ndarray:
    """matplotlib's (2, n) distances from each value down to its interval's low end and up to its high end."""
    values = np.array([c[field] for c in cells])
    intervals = np.array([c[f"{field}_ci"] for c in cells])
    return np.clip(np.stack([values - intervals[:, 0], intervals[:, 1] - values]), 0, None)


def cli(argv: Sequence[str] | None = None) -> dict:
    """Parse, check and run; a bad flag or input ends in one ``error:`` line and exit code 2, before anything is
    written."""
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(args, parser)
    return run_cli(main, args)


if __name__ == "__main__":
    cli()
