"""Quality against speed on the bundled digits model: TaylorSeer orders 1-4 against FORA (order 0) for N = 2..8.

    python TaylorSeer-DiT/benchmark_quality.py                    # ~30 min on 2 CPU cores; resumes if stopped

Every cell samples the same noise and labels as the full-compute run (DDIM 50, CFG) and reports the FLOPs speedup,
the wall-clock speedup, the relative L2 error of the final samples against full compute, the FID against the real
digits (in the feature space of the shipped digits classifier, see fidelity.py) and the class agreement judged by
that classifier. The FID of full compute over several noise seeds gives the seed-to-seed spread that a difference
must exceed to mean something. Cells are appended to cells.jsonl as they finish, each with the settings it was made
with; a rerun skips the finished cells of its own settings (cells recorded with other settings are not reused, and it
says so), and a last line cut short by a kill is skipped with a warning.
Outputs: results.md (markdown tables), results.json and quality_vs_speedup.png in --results-dir.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch
from tqdm import tqdm

from common.cli import UsageError, run_cli, warn
from common.flops import FlopsReport
from common.images import to_uint8
from common.taylor_cache import TaylorCache, TaylorSeerConfig
from taylorseer_dit.checkpoints import load_dit
from taylorseer_dit.defaults import BUNDLED_CFG_SCALE, BUNDLED_MODEL
from taylorseer_dit.diffusion import create_diffusion
from taylorseer_dit.digits import DIGITS_IMAGE_SIZE, load_classifier
from taylorseer_dit.fidelity import compute_metrics
from taylorseer_dit.flops import reference_step_flops
from taylorseer_dit.models import DiT
from taylorseer_dit.pipeline import sample_dit

FULL = TaylorSeerConfig(interval=1)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", default=None, help="DiT-XS/4 digits weights (default: the bundled ones)")
    parser.add_argument("--intervals", type=int, nargs="+", default=list(range(2, 9)), help="N values")
    parser.add_argument("--orders", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="orders (0 = FORA)")
    parser.add_argument("--first-enhance", type=int, default=2, help="E, the reference's DiT value")
    parser.add_argument("--num-samples", type=int, default=1000, help="samples per cell (labels cycle 0..9)")
    parser.add_argument("--spread-seeds", type=int, default=3, help="noise seeds of full compute for the FID spread")
    parser.add_argument("--num-sampling-steps", type=int, default=50, help="DDIM steps")
    parser.add_argument("--cfg-scale", type=float, default=BUNDLED_CFG_SCALE, help="classifier-free guidance")
    parser.add_argument("--batch-size", type=int, default=500, help="samples per forward (CFG doubles it)")
    parser.add_argument("--results-dir", default="results/benchmark-digits", help="where results are written")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    return parser


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
    return torch.cat(samples), seconds


@torch.no_grad()
def class_agreement(classifier, samples: torch.Tensor) -> float:
    labels = torch.arange(len(samples)) % 10
    return (classifier(samples.clamp(-1, 1)).argmax(1) == labels).float().mean().item()


def fid(samples: torch.Tensor) -> float:
    return compute_metrics(to_uint8(samples), "digits", metrics=("fid",), feature_extractor="digits")["fid"]


def cell_settings(args) -> dict:
    """Everything besides (N, O, seed) that changes a cell's numbers: a cell is reused only under the same."""
    return {
        "ckpt": None if args.ckpt is None else str(Path(args.ckpt).absolute()),
        "first_enhance": args.first_enhance,
        "num_samples": args.num_samples,
        "num_sampling_steps": args.num_sampling_steps,
        "cfg_scale": args.cfg_scale,
        "batch_size": args.batch_size,
        "device": torch.device(args.device).type,
    }


def load_cells(path: Path, settings: dict) -> dict[str, dict]:
    """The cells of ``path`` recorded with ``settings``, by key. A last line cut short (a kill during its append) is
    skipped with a warning, as are the cells of other settings; a corrupt line elsewhere is a :class:`UsageError`."""
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
                warn(f"{path}, line {number}: skipped a cell cut short ({exc.msg}); it will be sampled again")
                continue
            raise UsageError(f"{path}, line {number}: not a JSON cell ({exc.msg}); delete that line") from None
        if not isinstance(cell, dict) or "key" not in cell:
            raise UsageError(f"{path}, line {number}: expected a cell with a 'key'; delete that line")
        if cell.get("settings") == settings:
            cells[cell["key"]] = cell
        else:
            other += 1
    if other:
        warn(f"{path}: {other} cells were recorded with other settings than {settings} and are not reused")
    return cells


def run(args) -> dict:
    results = Path(args.results_dir)
    results.mkdir(parents=True, exist_ok=True)
    cells_path = results / "cells.jsonl"
    settings = cell_settings(args)
    cells = load_cells(cells_path, settings)
    device = torch.device(args.device)
    model = load_dit(BUNDLED_MODEL, args.ckpt, image_size=16, latent_scale=1, in_channels=1, num_classes=10,
                     device=device)  # fmt: skip
    classifier = load_classifier()
    step_flops = reference_step_flops(model, 2 * args.batch_size)

    def record(key: str, **values) -> dict:
        cells[key] = {"key": key, **values, "settings": settings}
        with cells_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(cells[key]) + "\n")
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
    summary = summarise(cells, args)
    (results / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    (results / "results.md").write_text(markdown(summary))
    plot(summary, results / "quality_vs_speedup.png")
    print(markdown(summary))
    return summary


def summarise(cells: dict[str, dict], args) -> dict:
    """Aggregate the cells; wall speedups are taken against the fastest full-compute run (every seed is the same
    workload), so that a full run slowed by other work on the machine does not inflate them."""
    full = [cells[f"full-seed{s}"] for s in range(args.spread_seeds)]
    fids = [c["fid"] for c in full]
    full_seconds = min(c["seconds"] for c in full)
    grid = [cells[f"N{n}-O{o}"] for n in args.intervals for o in args.orders if f"N{n}-O{o}" in cells]
    return {
        "settings": {k: v for k, v in vars(args).items() if k != "device"},
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
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    run_cli(run, build_parser().parse_args())
