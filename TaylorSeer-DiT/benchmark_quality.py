"""Quality against speed on the bundled digits model: TaylorSeer orders 1-4 against FORA (order 0) for N = 2..8.

    python TaylorSeer-DiT/benchmark_quality.py                    # ~30 min on 2 CPU cores; resumes if stopped

Every cell samples the same noise and labels as the full-compute run (DDIM 50, CFG) and reports the FLOPs speedup,
the wall-clock speedup, the relative L2 error of the final samples against full compute, the FID against the real
digits (in the feature space of the shipped digits classifier, see fidelity.py) and the class agreement judged by
that classifier. The FID of full compute over several noise seeds gives the seed-to-seed spread that a difference
must exceed to mean something. Cells are appended to cells.jsonl as they finish, each with the settings it was made
with (the weights by content, not by path); a rerun skips the finished cells of its own settings (cells recorded with
other settings are not reused, and it says so), and a last line cut short by a kill is dropped with a warning.
Outputs: results.md (markdown tables), results.json and quality_vs_speedup.png in --results-dir; a stopped run,
resumed, writes the same files as one that was never stopped (up to its wall-clock times).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from tqdm import tqdm

from common.cli import UsageError, check_output_folder, finite_float, int_range, parse_device, run_cli, warn
from common.flops import FlopsReport
from common.images import to_uint8
from common.integrity import check_finite, weights_fingerprint
from common.taylor_cache import TaylorCache, TaylorSeerConfig
from taylorseer_dit.checkpoints import find_dit_checkpoint, load_dit
from taylorseer_dit.defaults import BUNDLED_CFG_SCALE, BUNDLED_MODEL
from taylorseer_dit.diffusion import create_diffusion
from taylorseer_dit.digits import DIGITS_IMAGE_SIZE, load_classifier
from taylorseer_dit.fidelity import MIN_IMAGES, compute_metrics
from taylorseer_dit.flops import reference_step_flops
from taylorseer_dit.models import DiT
from taylorseer_dit.pipeline import sample_dit

FULL = TaylorSeerConfig(interval=1)
DIFFUSION_STEPS = 1000  # the training schedule that DDIM respaces: no more sampling steps than these
CELLS = "cells.jsonl"
# Every file the benchmark writes in --results-dir, and what it is (for the messages).
OUTPUTS = {CELLS: "cell log", "results.json": "summary", "results.md": "tables", "quality_vs_speedup.png": "plot"}
# The numbers each kind of cell holds: a cell without one of them cannot be summarised.
FULL_FIELDS = ("seed", "seconds", "fid", "agreement")
GRID_FIELDS = ("interval", "order", "seconds", "flops_speedup", "full_steps", "rel_l2", "fid", "agreement")
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
        default=3,
        help="noise seeds of full compute for the FID spread, >= 2",
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


def sample_set(model: DiT, args, config: TaylorSeerConfig, seed: int) -> tuple[torch.Tensor, float]:
    """``num_samples`` samples of one noise seed, in batches; returns them and the sampling seconds."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(args.num_samples, 1, DIGITS_IMAGE_SIZE, DIGITS_IMAGE_SIZE, generator=generator)
    labels = torch.arange(args.num_samples) % 10
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


@torch.no_grad()
def class_agreement(classifier, samples: torch.Tensor) -> float:
    labels = torch.arange(len(samples)) % 10
    return (classifier(samples.clamp(-1, 1)).argmax(1) == labels).float().mean().item()


def fid(samples: torch.Tensor) -> float:
    return compute_metrics(to_uint8(samples), "digits", metrics=("fid",), feature_extractor="digits")["fid"]


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
    }


def load_cells(path: Path, settings: dict) -> dict[str, dict]:
    """The cells of ``path`` recorded with ``settings``, by key. A last line cut short (a kill during its append) is
    dropped with a warning (:func:`end_cell_log` removes it before the next append), as are the cells of other
    settings; a corrupt line elsewhere, or a cell of these settings that lacks a number, is a :class:`UsageError`
    naming the line."""
    if not path.exists():
        return {}
    lines = path.read_text(encoding="utf-8").splitlines()
    cells, other = {}, 0
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            cell = json.loads(line)
        except json.JSONDecodeError as exc:
            if number == len(lines):
                warn(f"{path}, line {number}: dropped a cell cut short ({exc.msg}); it will be sampled again")
                continue
            raise UsageError(f"{path}, line {number}: not a JSON cell ({exc.msg}); delete that line") from None
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
    """Why ``cell`` cannot be summarised (a missing or non-finite number), or None."""
    fields = FULL_FIELDS if cell["key"].startswith("full-") else GRID_FIELDS
    for field in fields:
        value = cell.get(field)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return f"has no finite number '{field}' (got {value!r})"
    return None


def end_cell_log(path: Path) -> None:
    """Make the cell log end in a newline before cells are appended, else the next cell would merge with its last
    line into one corrupt line: a partial cell (a kill during its append) is cut off, a complete one (a hand edit
    that lost the final newline) is kept and ended."""
    if not path.exists():
        return
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return
    start = data.rfind(b"\n") + 1
    try:
        json.loads(data[start:])
    except ValueError:
        with path.open("r+b") as file:
            file.truncate(start)
    else:
        with path.open("ab") as file:
            file.write(b"\n")


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
    classifier = load_classifier()
    step_flops = reference_step_flops(model, 2 * args.batch_size)
    # Everything is read and checked: from here on, files are written.
    results.mkdir(parents=True, exist_ok=True)
    end_cell_log(cells_path)

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
            record(key, seed=seed, seconds=seconds, fid=fid(samples),
                   agreement=class_agreement(classifier, samples))  # fmt: skip
    for interval, order in tqdm(todo, desc="cells"):
        key = f"N{interval}-O{order}"
        config = TaylorSeerConfig(interval=interval, max_order=order, first_enhance=args.first_enhance)
        samples, seconds = sample_set(model, args, config, seed=0)
        flops = FlopsReport.for_schedule("reference", *step_flops, args.num_sampling_steps, config)
        record(key, interval=interval, order=order, seconds=seconds, flops_speedup=flops.speedup,
               full_steps=flops.num_full_steps,
               rel_l2=((samples - full_samples).norm() / full_samples.norm()).item(),
               fid=fid(samples), agreement=class_agreement(classifier, samples))  # fmt: skip
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
    """Aggregate the cells; wall speedups are taken against the fastest full-compute run (every seed is the same
    workload), so that a full run slowed by other work on the machine does not inflate them."""
    full = [cells[f"full-seed{s}"] for s in range(args.spread_seeds)]
    fids = [c["fid"] for c in full]
    full_seconds = min(c["seconds"] for c in full)
    grid = [cells[f"N{n}-O{o}"] for n in args.intervals for o in args.orders if f"N{n}-O{o}" in cells]
    return {
        "settings": {**{k: v for k, v in vars(args).items() if k != "device"}, "weights_id": weights_id},
        "full_compute": {
            "fid_per_seed": fids,
            "fid_mean": statistics.mean(fids),
            "fid_std": statistics.stdev(fids) if len(fids) > 1 else 0.0,
            "agreement_per_seed": [c["agreement"] for c in full],
            "seconds": full_seconds,
        },
        "cells": [
            {**{k: v for k, v in cell.items() if k != "settings"}, "wall_speedup": full_seconds / cell["seconds"]}
            for cell in grid
        ],
    }


def markdown(summary: dict) -> str:
    full = summary["full_compute"]
    lines = [
        f"Full compute (DDIM {summary['settings']['num_sampling_steps']}, CFG {summary['settings']['cfg_scale']}, "
        f"{summary['settings']['num_samples']} samples): FID {full['fid_mean']:.3f} ± {full['fid_std']:.3f} "
        f"(std over {len(full['fid_per_seed'])} noise seeds), class agreement "
        + ", ".join(f"{a:.3f}" for a in full["agreement_per_seed"])
        + f", {full['seconds']:.1f} s (fastest seed; wall speedups are against it).",
        "",
        "| N | order | full steps | FLOPs speedup | wall speedup | rel. L2 vs full | FID | class agreement |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in summary["cells"]:
        name = "FORA" if c["order"] == 0 else str(c["order"])
        lines.append(
            f"| {c['interval']} | {name} | {c['full_steps']} | {c['flops_speedup']:.2f}× | {c['wall_speedup']:.2f}× "
            f"| {c['rel_l2']:.4f} | {c['fid']:.3f} | {c['agreement']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    orders = sorted({c["order"] for c in summary["cells"]})
    for order in orders:
        cells = sorted((c for c in summary["cells"] if c["order"] == order), key=lambda c: c["flops_speedup"])
        label = "FORA (order 0)" if order == 0 else f"TaylorSeer order {order}"
        speedups = [c["flops_speedup"] for c in cells]
        axes[0].plot(speedups, [c["fid"] for c in cells], marker="o", label=label)
        axes[1].plot(speedups, [c["rel_l2"] for c in cells], marker="o", label=label)
        if order == 0:  # N=7 and N=8 both have 8 full steps at E=2, T=50: name every point
            for c in cells:
                axes[1].annotate(f"N={c['interval']}", (c["flops_speedup"], c["rel_l2"]), fontsize=7,
                                 textcoords="offset points", xytext=(-12, 6))  # fmt: skip
    full = summary["full_compute"]
    axes[0].axhspan(full["fid_mean"] - full["fid_std"], full["fid_mean"] + full["fid_std"], color="grey", alpha=0.3,
                    label="full compute ± seed std")  # fmt: skip
    axes[0].set(xlabel="FLOPs speedup", ylabel="FID vs real digits (classifier features)")
    axes[1].set(xlabel="FLOPs speedup", ylabel="relative L2 error vs full compute", yscale="log")
    axes[0].legend(fontsize=8)
    fig.suptitle("DiT-XS/4 on digits, DDIM 50 + CFG: quality against speed (lower is better)")
    fig.tight_layout()
    temporary = path.with_name(f".{path.name}.tmp")
    fig.savefig(temporary, dpi=120, format="png")
    plt.close(fig)
    os.replace(temporary, path)


def cli(argv: Sequence[str] | None = None) -> dict:
    """Parse, check and run; a bad flag or input ends in one ``error:`` line and exit code 2, before anything is
    written."""
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(args, parser)
    return run_cli(main, args)


if __name__ == "__main__":
    cli()
