"""Forecasters x full-step placements at equal budgets: how far each one's output lands from full compute.

Issue 11 asks which forecaster (TaylorSeer's Taylor expansion, Newton's interpolation, HiCache's Hermite basis) and
which placement of K full steps (uniform, late-dense, or the paper's one-every-N schedule where some N spends exactly
K) gets closest to full compute. On the tiny random-weight FLUX and HunyuanVideo models the only honest measure is the
relative L2 distance of the final latents to full compute's on the same inputs: a random model makes no images worth
scoring, so every output says so first (:func:`tiny_model_caveat`).

    grid = Grid(num_steps=50, budgets=(8, 10), orders=(1, 2), first_enhance=3)
    rows = run_grid(lambda cache: sample(model, inputs, cache), grid)   # cache=None: full compute
    write_results(Path("results/forecasters"), rows, grid, title="...", caveat=tiny_model_caveat("image"))

``run(cache)`` is one full sampling run on fixed inputs that resets the cache with its step count and announces every
step (what every tree's sampler does). The budget K is FLOPs-free: a forecast step runs no cached module, so K full
steps of T cost about K/T of full compute whatever the forecaster; each row records the full steps the cache really
ran, which must equal :func:`~common.taylor_cache.full_step_indices` of its config.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .cli import MAX_SEED, UsageError, check_output_folder, int_range, parse_device
from .integrity import check_finite
from .io import atomic_write, remove_stale_temps
from .taylor_cache import FORECASTERS, TaylorCache, TaylorSeerConfig, full_step_indices

__all__ = [
    "BUDGET_PLACEMENTS",
    "INTERVAL",
    "RESULT_FILES",
    "Grid",
    "Setting",
    "add_benchmark_args",
    "grid_from_args",
    "grid_settings",
    "interval_for_budget",
    "relative_error",
    "results_markdown",
    "print_row",
    "run_grid",
    "tiny_model_caveat",
    "write_results",
]

BUDGET_PLACEMENTS = ("uniform", "late-dense")
"""The placements that put K full steps anywhere (the ``list`` placement needs a searched list: not a grid axis)."""
INTERVAL = "interval"
"""The placement name of the paper's schedule: the E warm-up steps, then one full step every N steps."""
RESULT_FILES = ("results.json", "results.md", "rel_error_vs_full_steps.png")
MAX_ORDER = 4
MAX_STEPS = 1000
DEFAULT_BUDGETS = (8, 10, 11, 18)
DEFAULT_ORDERS = (1, 2)


def tiny_model_caveat(output: str = "image") -> str:
    """The first line of every output of a random-weight model (``output``: what the real model makes)."""
    return f"Tiny random-weight model: relative error only; says nothing about the real model's {output} quality."


@dataclass(frozen=True)
class Grid:
    """What to measure: every forecaster x placement x order x budget K of a ``num_steps``-step run."""

    num_steps: int
    """T: sampling steps of every run."""
    budgets: tuple[int, ...]
    """The K values: full steps per run, each above the warm-up and below T."""
    orders: tuple[int, ...]
    """Forecast orders O (0 is plain reuse, where every forecaster is FORA)."""
    first_enhance: int = 1
    """E: warm-up steps, full in every placement (the tree's reference value: 3 for FLUX, 1 for HunyuanVideo)."""
    forecasters: tuple[str, ...] = FORECASTERS
    placements: tuple[str, ...] = BUDGET_PLACEMENTS
    interval_schedule: bool = True
    """Also measure the paper's interval schedule at each K some N spends exactly (see :func:`interval_for_budget`)."""
    hermite_scale: float = 0.5
    """s of the hermite forecaster (HiCache's contraction)."""

    def __post_init__(self) -> None:
        if self.num_steps < 2:
            raise ValueError(f"num_steps must be >= 2 (a full step and a forecast), got {self.num_steps}")
        if not self.budgets or not self.orders or not self.forecasters:
            raise ValueError("a grid needs at least one budget, one order and one forecaster")
        for budget in self.budgets:
            if not self.first_enhance < budget < self.num_steps:
                raise ValueError(
                    f"full-step budget {budget} must exceed the {self.first_enhance} warm-up steps (which are full "
                    f"steps too) and stay below the {self.num_steps} steps (all full is full compute)"
                )
        if any(order < 0 for order in self.orders):
            raise ValueError(f"orders must be >= 0, got {self.orders}")
        unknown = [f for f in self.forecasters if f not in FORECASTERS] + [
            p for p in self.placements if p not in BUDGET_PLACEMENTS
        ]
        if unknown:
            raise ValueError(f"unknown forecasters or placements {unknown}: use {FORECASTERS} and {BUDGET_PLACEMENTS}")


@dataclass(frozen=True)
class Setting:
    """One row of the grid: a forecaster of one order with K full steps placed one way."""

    forecaster: str
    placement: str
    """uniform, late-dense, or :data:`INTERVAL`."""
    max_order: int
    budget: int
    interval: int | None = None
    """N of the interval schedule (None for the budget placements)."""

    def config(self, grid: Grid) -> TaylorSeerConfig:
        common = {"max_order": self.max_order, "first_enhance": grid.first_enhance, "forecaster": self.forecaster,
                  "hermite_scale": grid.hermite_scale}  # fmt: skip
        if self.placement == INTERVAL:
            return TaylorSeerConfig(interval=self.interval, **common)
        return TaylorSeerConfig(full_steps=self.budget, placement=self.placement, **common)

    @property
    def placement_label(self) -> str:
        return f"{INTERVAL} N={self.interval}" if self.placement == INTERVAL else self.placement


def interval_for_budget(num_steps: int, budget: int, first_enhance: int) -> int | None:
    """The largest N whose interval schedule (E warm-up steps, then every N-th step) has exactly ``budget`` full steps
    in a ``num_steps``-step run, or None when no N does. Where several N spend K, the largest spreads them furthest
    towards the end, as the budget placements do (e.g. T=50, E=3, K=8: N=8 and N=9; N=9 ends at step 47, not 42)."""
    matches = [
        n
        for n in range(1, num_steps + 1)
        if len(full_step_indices(num_steps, TaylorSeerConfig(interval=n, first_enhance=first_enhance))) == budget
    ]
    return max(matches) if matches else None


def grid_settings(grid: Grid) -> list[Setting]:
    """Every row of ``grid``, by order, then budget, then forecaster, then placement (the interval schedule last,
    present only at budgets some N spends)."""
    settings = []
    for order in grid.orders:
        for budget in grid.budgets:
            interval = (
                interval_for_budget(grid.num_steps, budget, grid.first_enhance) if grid.interval_schedule else None
            )
            for forecaster in grid.forecasters:
                settings += [Setting(forecaster, placement, order, budget) for placement in grid.placements]
                if interval is not None:
                    settings.append(Setting(forecaster, INTERVAL, order, budget, interval))
    return settings


def relative_error(output: torch.Tensor, reference: torch.Tensor) -> float:
    """||output - reference|| / ||reference|| in float64 (so that a tiny difference is not lost to rounding)."""
    reference = reference.detach().double().cpu()
    return float((output.detach().double().cpu() - reference).norm() / reference.norm())


def run_grid(
    run: Callable[[TaylorCache | None], torch.Tensor],
    grid: Grid,
    on_row: Callable[[dict], None] | None = None,
    progress: bool = False,
) -> list[dict]:
    """Full compute once (``run(None)``), then every row of ``grid``: its relative error to full compute and the full
    steps its cache ran. ``on_row(row)`` sees each row as it is measured. A run that does not announce the grid's T
    steps to the cache is a RuntimeError: its rows would compare unequal budgets."""
    full = run(None)
    check_finite(full, "full compute's output", "the model's weights and inputs")
    if not bool(full.abs().sum() > 0):
        raise ValueError("full compute's output is all zeros: a relative error to it is undefined")
    rows = []
    for setting in tqdm(grid_settings(grid), desc="forecasters x placements", disable=not progress):
        config = setting.config(grid)
        cache = TaylorCache(config)
        output = run(cache)
        check_finite(output, f"the output of {setting}", "the forecaster's order and the model's inputs")
        planned = full_step_indices(grid.num_steps, config)
        if (cache.num_full_steps, cache.num_full_steps + cache.num_forecast_steps) != (len(planned), grid.num_steps):
            raise RuntimeError(
                f"run(cache) announced {cache.num_full_steps + cache.num_forecast_steps} steps "
                f"({cache.num_full_steps} full) for a grid of {grid.num_steps} steps with {len(planned)} full: it "
                "must reset the cache with its step count and call begin_step once per step"
            )
        row = {
            **asdict(setting),
            "placement_label": setting.placement_label,
            "full_steps": cache.num_full_steps,
            "full_step_list": planned,
            "rel_l2": relative_error(output, full),
        }
        rows.append(row)
        if on_row is not None:
            on_row(row)
    return rows


# ------------------------------------------------------------------------------------------------------ outputs


def _format_error(value: float) -> str:
    return f"{value:.4g}"


def _errors_table(rows: Sequence[Mapping], grid: Grid) -> list[str]:
    """One line per (order, forecaster, placement), one column per budget K; the smallest error of each (order, K)
    in bold. The interval schedule's cells name their N, which differs by K."""
    header = ["order", "forecaster", "placement", *(f"K={k}" for k in grid.budgets)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    best = {}
    for row in rows:
        key = (row["max_order"], row["budget"])
        best[key] = min(best.get(key, math.inf), row["rel_l2"])
    for order in grid.orders:
        for forecaster in grid.forecasters:
            for placement in (*grid.placements, INTERVAL):
                cells = []
                for budget in grid.budgets:
                    line = (order, forecaster, placement)
                    found = [r for r in rows if _line_of(r) == line and r["budget"] == budget]
                    if not found:
                        cells.append("—")
                        continue
                    text = _format_error(found[0]["rel_l2"])
                    text = f"**{text}**" if found[0]["rel_l2"] == best[(order, budget)] else text
                    cells.append(f"{text} (N={found[0]['interval']})" if placement == INTERVAL else text)
                if any(cell != "—" for cell in cells):
                    lines.append("| " + " | ".join([str(order), forecaster, placement, *cells]) + " |")
    return lines


def _schedules_table(rows: Sequence[Mapping], grid: Grid) -> list[str]:
    """The full steps of each placement at each budget (the same for every forecaster and order)."""
    lines = ["| K | placement | full steps (count) |", "|---|---|---|"]
    seen = set()
    for row in rows:
        key = (row["budget"], row["placement_label"])
        if key not in seen:
            seen.add(key)
            steps = ", ".join(map(str, row["full_step_list"]))
            lines.append(f"| {row['budget']} | {row['placement_label']} | {steps} ({row['full_steps']}) |")
    return lines


def results_markdown(
    rows: Sequence[Mapping], grid: Grid, *, title: str, caveat: str | None, lines: Sequence[str] = ()
) -> str:
    """The results as markdown: the caveat as the very first line, then the errors by budget and the schedules."""
    same = " At order 1 Taylor and Newton are one forecast (the same first divided difference)."
    out = [caveat, ""] if caveat else []
    out += [f"# {title}", "", *lines, "" if lines else None]
    out += [
        f"Relative L2 error of the final latents against full compute on the same inputs (lower is better), by "
        f"budget K = full steps of the {grid.num_steps} steps (the warm-up E={grid.first_enhance} among them, full "
        "in every placement). **Bold**: the smallest error at that order and K. Interval rows exist only at budgets "
        "that some N spends exactly (the largest such N)." + (same if 1 in grid.orders else ""),
        "",
        *_errors_table(rows, grid),
        "",
        "Full steps of each placement:",
        "",
        *_schedules_table(rows, grid),
    ]
    return "\n".join(line for line in out if line is not None) + "\n"


def _line_of(row: Mapping) -> tuple[int, str, str]:
    """The plot line (and markdown line) a row belongs to: its order, forecaster and placement."""
    return row["max_order"], row["forecaster"], row["placement"]


def plot_results(rows: Sequence[Mapping], grid: Grid, path: Path, *, title: str, caveat: str | None) -> None:
    """Relative error against K, one panel per order, one line per forecaster x placement (the interval schedule
    only at the budgets some N spends); written atomically to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(grid.orders), figsize=(5.5 * len(grid.orders), 4.5), squeeze=False)
    markers = {"uniform": "o", "late-dense": "s", INTERVAL: "^"}
    colors = {name: f"C{i}" for i, name in enumerate(FORECASTERS)}
    log_scale = all(row["rel_l2"] > 0 for row in rows)
    for axis, order in zip(axes[0], grid.orders, strict=True):
        for forecaster in grid.forecasters:
            for placement in (*grid.placements, INTERVAL):
                line = (order, forecaster, placement)
                points = sorted((r["budget"], r["rel_l2"]) for r in rows if _line_of(r) == line)
                if points:
                    style = {"marker": markers[placement], "color": colors[forecaster],
                             "linestyle": "--" if placement == INTERVAL else "-"}  # fmt: skip
                    axis.plot(*zip(*points, strict=True), label=f"{forecaster}, {placement}", **style)
        axis.set_xticks(list(grid.budgets))
        axis.set_xlabel(f"full steps K of {grid.num_steps}")
        axis.set_ylabel("relative L2 error vs full compute")
        axis.set_title(f"order {order}")
        if log_scale:
            axis.set_yscale("log")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    figure.suptitle(title + (f"\n{caveat}" if caveat else ""), fontsize=9)
    figure.tight_layout()
    # savefig picks the format from the name; the temporary name ends in .tmp, so say it.
    atomic_write(path, lambda temp: figure.savefig(temp, dpi=120, format="png"))
    plt.close(figure)


def write_results(
    folder: Path,
    rows: Sequence[Mapping],
    grid: Grid,
    *,
    title: str,
    caveat: str | None,
    lines: Sequence[str] = (),
    settings: Mapping | None = None,
) -> dict:
    """results.json, results.md and rel_error_vs_full_steps.png in ``folder`` (created if needed), each replaced
    atomically; prints the markdown and returns the JSON's content. ``caveat`` (see :func:`tiny_model_caveat`) is the
    first line of the markdown and the JSON's first field; ``lines`` describe the run; ``settings`` are its flags."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(folder)
    summary = {
        "caveat": caveat,
        "title": title,
        "grid": asdict(grid),
        "settings": dict(settings or {}),
        "rows": list(rows),
    }
    text = json.dumps(summary, indent=2, allow_nan=False) + "\n"
    markdown = results_markdown(rows, grid, title=title, caveat=caveat, lines=lines)
    json_file, markdown_file, plot_file = (folder / name for name in RESULT_FILES)
    atomic_write(json_file, lambda temp: temp.write_text(text, encoding="utf-8"))
    atomic_write(markdown_file, lambda temp: temp.write_text(markdown, encoding="utf-8"))
    plot_results(rows, grid, plot_file, title=title, caveat=caveat)
    print(markdown)
    print(f"saved {markdown_file}, {json_file} and {plot_file}")
    return summary


# ----------------------------------------------------------------------------------------------- the scripts' CLI


def add_benchmark_args(parser: argparse.ArgumentParser, *, results_dir: str, num_steps: int = 50) -> None:
    """The flags every tree's benchmark_forecasters.py takes."""
    parser.add_argument("--num-steps", type=int_range(2, MAX_STEPS), default=num_steps, help="T: sampling steps")
    parser.add_argument(
        "--full-steps",
        type=int_range(1),
        nargs="+",
        default=list(DEFAULT_BUDGETS),
        help="the budgets K: full steps per run, each above the warm-up steps and below --num-steps",
    )
    parser.add_argument(
        "--orders", type=int_range(0, MAX_ORDER), nargs="+", default=list(DEFAULT_ORDERS), help="forecast orders O"
    )
    parser.add_argument(
        "--seed", type=int_range(0, MAX_SEED), default=0, help="seed of the random weights, noise and text embeddings"
    )
    parser.add_argument("--results-dir", default=results_dir, help="folder of results.json, results.md and the plot")
    parser.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:N)")


def grid_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser, *, first_enhance: int) -> Grid:
    """The grid of parsed flags, with the output folder and the device checked before any compute: a bad value
    exits through ``parser.error`` with one line naming the flag. Sets ``args.results_dir`` and ``args.device``."""
    outside = [k for k in args.full_steps if not first_enhance < k < args.num_steps]
    if outside:
        parser.error(
            f"--full-steps {' '.join(map(str, outside))}: each budget must exceed the {first_enhance} warm-up steps "
            f"(full in every placement) and stay below --num-steps {args.num_steps}"
        )
    try:
        args.results_dir = check_output_folder(args.results_dir, "--results-dir")
        args.device = parse_device(args.device) or torch.device("cpu")
    except UsageError as err:
        parser.error(str(err))
    return Grid(
        num_steps=args.num_steps,
        budgets=tuple(sorted(set(args.full_steps))),
        orders=tuple(sorted(set(args.orders))),
        first_enhance=first_enhance,
    )


def print_row(row: Mapping) -> None:
    """One measured row, as the grid runs."""
    tqdm.write(
        f"O={row['max_order']} K={row['budget']:>3} {row['forecaster']:>8} {row['placement_label']:<16} "
        f"rel. L2 {_format_error(row['rel_l2'])}"
    )
