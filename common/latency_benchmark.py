"""Latency of full compute, FORA and TaylorSeer on one model: per full step, per forecast step, the whole loop, peak
memory and the bytes the cache holds.

Every tree's ``benchmark_latency.py`` builds a preset at full size with random weights (timing does not depend on the
weights' values) and hands this module ``run(cache)``, one denoising loop of the tree's own sampler on fixed inputs.
The sampler announces each step with ``cache.begin_step``; a :class:`StepClock` wrapped around that call timestamps
every step (after synchronising the device), so the per-step times come from the real loop, not from a separate
model call. Full compute runs through the base :class:`~common.caching.CacheMethod` (it computes everything and holds
nothing), so all three rows run the same code path.

    variants = paper_variants(TaylorSeerConfig(interval=5, max_order=3, first_enhance=2))
    results = measure(run, variants, num_steps=50, device=device, repeats=3)
    write_results(Path("results/latency"), results, title="...", settings={...})

Timings on a shared CPU are noisy: every variant runs once untimed, then ``repeats`` times interleaved (full, FORA,
TaylorSeer, full, ...), and each figure is the minimum over the repeats (per step index for the per-step times).
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .caching import CacheMethod
from .cli import (
    UsageError,
    add_taylorseer_args,
    check_output_folder,
    check_schedule_flags,
    int_range,
    parse_device,
    taylorseer_config_from_args,
)
from .compile import compile_blocks, compiled_weighted_sum
from .io import atomic_write
from .methods import fora_of
from .report import markdown_table
from .taylor_cache import Combine, TaylorCache, TaylorSeerConfig, full_step_indices

__all__ = [
    "RESULT_FILES",
    "Variant",
    "VariantResult",
    "StepClock",
    "add_latency_args",
    "config_from_args",
    "measure_paper_rows",
    "cache_footprint",
    "prepare_run",
    "cache_storage_bytes",
    "held_bytes",
    "measure",
    "paper_variants",
    "per_step_speedup",
    "pooled_full_step_seconds",
    "load_results",
    "results_markdown",
    "retain_freed_memory",
    "write_results",
]

RESULT_FILES = ("results.json", "results.md", "step_times.png")
GIB = 1024**3


@dataclass(frozen=True)
class Variant:
    """One row: a name, its TaylorSeer config (None: full compute) and how its forecasts are formed."""

    name: str
    config: TaylorSeerConfig | None = None
    combine: Combine | None = None
    """None: the eager :func:`~common.taylor_cache.weighted_sum`; e.g. common.compile.compiled_weighted_sum."""

    def make_cache(self) -> CacheMethod:
        return CacheMethod() if self.config is None else TaylorCache(self.config, combine=self.combine)


def paper_variants(config: TaylorSeerConfig, combine: Combine | None = None) -> list[Variant]:
    """Full compute, FORA at TaylorSeer's schedule (order 0), and TaylorSeer itself."""
    return [Variant("full"), Variant("FORA", fora_of(config), combine), Variant("TaylorSeer", config, combine)]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepClock:
    """Timestamps every ``cache.begin_step`` call (after synchronising ``device``): step i lasts from its mark to the
    next one, the last step until :meth:`stop`."""

    def __init__(self, cache: CacheMethod, device: torch.device) -> None:
        self.device = device
        self.marks: list[float] = []
        self.steps: list[int] = []
        self.full: list[bool] = []
        begin_step = cache.begin_step

        def timed_begin_step(step: int) -> bool:
            synchronize(device)
            self.marks.append(time.perf_counter())
            self.steps.append(step)
            is_full = begin_step(step)
            self.full.append(is_full)
            return is_full

        cache.begin_step = timed_begin_step  # an instance attribute: this cache only

    def stop(self) -> list[float]:
        """Seconds of each step, in the order announced."""
        synchronize(self.device)
        ends = [*self.marks[1:], time.perf_counter()]
        return [end - start for start, end in zip(self.marks, ends, strict=True)]


def held_bytes(cache: CacheMethod) -> int:
    """Bytes of the tensors the cache holds (each tensor's own elements)."""
    return sum(t.numel() * t.element_size() for t in _held(cache))


def cache_storage_bytes(cache: CacheMethod) -> int:
    """Bytes of the distinct storages the cache keeps alive. More than :func:`held_bytes` when a held tensor is a view
    of a larger buffer, whose other part nothing reads but which the cache cannot free."""
    storages = {}
    for tensor in _held(cache):
        storage = tensor.untyped_storage()
        key = (tensor.device, storage.data_ptr()) if tensor.device.type != "meta" else id(storage)
        storages[key] = storage.nbytes()
    return sum(storages.values())


def _held(cache: CacheMethod) -> list[torch.Tensor]:
    return cache.held_tensors() if isinstance(cache, TaylorCache) else []


@dataclass
class VariantResult:
    """The measured row of one variant (times in seconds, minimum over the repeats)."""

    name: str
    config: dict | None
    num_steps: int
    full_steps: list[int]
    loop_seconds: float
    full_step_seconds: float
    forecast_step_seconds: float | None
    step_seconds: list[float]
    """Per step index, minimum over the repeats."""
    cache_bytes: int
    cache_storage_bytes: int
    cache_tensors: int
    peak_memory_bytes: int | None
    """CUDA only: the allocator's peak during the run (None on CPU, which keeps no such count)."""
    stage_seconds: dict[str, float] = field(default_factory=dict)
    """Method-independent stages outside the loop (text encoders, VAE decode), timed once per repeat."""

    @property
    def step_ratio(self) -> float:
        """T / #full: the speedup if a forecast step cost nothing (about the FLOPs speedup)."""
        return self.num_steps / len(self.full_steps)

    @property
    def forecast_fraction(self) -> float | None:
        if self.forecast_step_seconds is None:
            return None
        return self.forecast_step_seconds / self.full_step_seconds

    @property
    def end_to_end_seconds(self) -> float | None:
        return self.loop_seconds + sum(self.stage_seconds.values()) if self.stage_seconds else None


def measure(
    run: Callable[[CacheMethod], object],
    variants: Sequence[Variant],
    *,
    num_steps: int,
    device: torch.device,
    repeats: int = 3,
    stages: Mapping[str, Callable[[], object]] | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[VariantResult]:
    """Time ``run(cache)`` (one denoising loop that announces ``num_steps`` steps) for each variant: one untimed run
    each, then ``repeats`` interleaved rounds; ``stages`` (name -> callable) are timed once per round too."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    runs: dict[str, list[tuple[list[float], float, int | None]]] = {v.name: [] for v in variants}
    flags: dict[str, list[bool]] = {}
    footprint: dict[str, tuple[int, int, int]] = {}
    stage_times: dict[str, list[float]] = {name: [] for name in stages or {}}
    for round_index in range(repeats + 1):
        timed = round_index > 0
        for variant in variants:
            cache = variant.make_cache()
            clock = StepClock(cache, device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            synchronize(device)
            start = time.perf_counter()
            run(cache)
            steps = clock.stop()
            loop = time.perf_counter() - start
            if clock.steps != list(range(num_steps)):
                raise RuntimeError(
                    f"run(cache) announced {len(clock.steps)} steps from {clock.steps[:3]}, not 0..{num_steps - 1}: "
                    "it must call cache.begin_step once per step of a run of --num-steps steps"
                )
            peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
            flags[variant.name] = clock.full
            footprint[variant.name] = (held_bytes(cache), cache_storage_bytes(cache), len(_held(cache)))
            if timed:
                runs[variant.name].append((steps, loop, peak))
            if progress:
                kind = f"round {round_index}/{repeats}" if timed else "warm-up"
                progress(f"{kind} {variant.name}: {loop:.3f} s")
            del cache
        if timed:
            for name, stage in (stages or {}).items():
                synchronize(device)
                start = time.perf_counter()
                stage()
                synchronize(device)
                stage_times[name].append(time.perf_counter() - start)
    results = []
    for variant in variants:
        measured = runs[variant.name]
        per_step = [min(r[0][i] for r in measured) for i in range(num_steps)]
        full = flags[variant.name]
        if variant.config is not None and [i for i, f in enumerate(full) if f] != full_step_indices(
            num_steps, variant.config
        ):
            raise RuntimeError(f"{variant.name} ran full steps other than its schedule's")
        full_times = [t for t, f in zip(per_step, full, strict=True) if f]
        forecast_times = [t for t, f in zip(per_step, full, strict=True) if not f]
        peaks = [r[2] for r in measured if r[2] is not None]
        held, storage, count = footprint[variant.name]
        results.append(
            VariantResult(
                name=variant.name,
                config=None if variant.config is None else _config_record(variant.config),
                num_steps=num_steps,
                full_steps=[i for i, f in enumerate(full) if f],
                loop_seconds=min(r[1] for r in measured),
                full_step_seconds=statistics.median(full_times),
                forecast_step_seconds=statistics.median(forecast_times) if forecast_times else None,
                step_seconds=per_step,
                cache_bytes=held,
                cache_storage_bytes=storage,
                cache_tensors=count,
                peak_memory_bytes=max(peaks) if peaks else None,
                stage_seconds={name: min(times) for name, times in stage_times.items()},
            )
        )
    return results


def _config_record(config: TaylorSeerConfig) -> dict:
    record = asdict(config)
    record["factor_dtype"] = None if config.factor_dtype is None else str(config.factor_dtype).removeprefix("torch.")
    return record


def config_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> TaylorSeerConfig:
    """The TaylorSeer config of the parsed flags, refusing full compute (every benchmark runs it anyway) and a
    schedule whose label would lie for --num-steps (through ``parser.error``)."""
    config = taylorseer_config_from_args(args, parser)
    if config.is_uncached:
        parser.error("--interval 1 is full compute, which the benchmark always runs: give the schedule to compare")
    check_schedule_flags(config, args.num_steps, parser)
    return config


def measure_paper_rows(
    run: Callable[[CacheMethod], object],
    config: TaylorSeerConfig,
    args: argparse.Namespace,
    *,
    blocks: Sequence[torch.nn.Module],
    stages: Mapping[str, Callable[[], object]] | None = None,
) -> list[VariantResult]:
    """Full compute, FORA and TaylorSeer of ``config`` measured as the flags say (``--compile`` compiles ``blocks``'
    regions and the forecasts first; they compile during each row's untimed run), the table printed."""
    combine = None
    if args.compile:
        compile_blocks(blocks)
        combine = compiled_weighted_sum
    results = measure(
        run,
        paper_variants(config, combine),
        num_steps=args.num_steps,
        device=args.device,
        repeats=args.repeats,
        stages=stages,
        progress=print,
    )
    print(results_markdown(results))
    return results


def retain_freed_memory() -> bool:
    """Ask glibc to keep freed memory instead of returning it to the OS (``mallopt``), so that a new multi-MB
    activation reuses pages instead of faulting in fresh ones. On a CPU, eager PyTorch allocates every op's output;
    with glibc's defaults each large one is a fresh ``mmap`` whose page faults can cost more than the op itself (20x
    on this project's VM for an elementwise op on 3 MB). jemalloc or tcmalloc (``LD_PRELOAD``) do the same. Returns
    False where the C library is not glibc."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(mallopt(m_mmap_threshold, 1 << 30)) and bool(mallopt(m_trim_threshold, 1 << 62))


def add_latency_args(
    parser: argparse.ArgumentParser,
    *,
    interval: int,
    max_order: int,
    first_enhance: int,
    derivative_start_step: int = 0,
    results_dir: str,
) -> None:
    """The flags every tree's latency benchmark shares: TaylorSeer's (the tree's paper setting as defaults), steps,
    repeats, device, allocator and output folder."""
    add_taylorseer_args(
        parser,
        interval=interval,
        max_order=max_order,
        first_enhance=first_enhance,
        derivative_start_step=derivative_start_step,
    )
    group = parser.add_argument_group("benchmark")
    group.add_argument("--num-steps", type=int_range(2, 1000), default=50, help="sampling steps T")
    group.add_argument("--repeats", type=int_range(1, 100), default=3, help="timed rounds (minimum kept)")
    group.add_argument("--device", default=None, help="cpu or cuda[:N] (default: cuda if visible, else cpu)")
    group.add_argument("--threads", type=int_range(1, 1024), default=None, help="torch CPU threads (default: torch's)")
    group.add_argument(
        "--malloc",
        choices=("retain", "default"),
        default="retain",
        help="CPU only: retain = glibc keeps freed memory (see retain_freed_memory); default = glibc's defaults",
    )
    group.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile each block's regions and the forecasts (common.compile); compiled in the untimed runs",
    )
    group.add_argument("--results-dir", default=results_dir, help="where results.json/.md and step_times.png go")


def prepare_run(args: argparse.Namespace) -> dict:
    """Resolve ``--device`` (into ``args.device``), apply ``--threads`` and ``--malloc``, check ``--results-dir``;
    returns what was applied, for the record."""
    device = parse_device(args.device)
    args.device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    args.results_dir = check_output_folder(args.results_dir, "--results-dir")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    retained = args.malloc == "retain" and args.device.type == "cpu" and retain_freed_memory()
    if args.malloc == "retain" and args.device.type == "cpu" and not retained:
        raise UsageError("--malloc retain needs glibc's mallopt, not found here: pass --malloc default")
    return {"threads": torch.get_num_threads(), "malloc": "retain" if retained else "default"}


def _ms(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds * 1e3:.1f}"


def pooled_full_step_seconds(results: Sequence[VariantResult]) -> float:
    """The median full step over every row's full steps: every row runs the same work at a full step (the cache's
    bookkeeping adds no tensor arithmetic there), so pooling them takes out the drift of a busy machine between
    rows."""
    return statistics.median(t for r in results for t, f in zip(r.step_seconds, _full_flags(r), strict=True) if f)


def _full_flags(result: VariantResult) -> list[bool]:
    full = set(result.full_steps)
    return [step in full for step in range(result.num_steps)]


def per_step_speedup(result: VariantResult, full_step: float) -> float:
    """T full steps over the row's schedule, from per-step medians: T * full / (#full * full + #forecast * forecast).
    Less noisy than the ratio of loop times, whose full steps (most of the time) swing with the machine."""
    forecasts = result.num_steps - len(result.full_steps)
    forecast = result.forecast_step_seconds or 0.0
    return result.num_steps * full_step / (len(result.full_steps) * full_step + forecasts * forecast)


def results_markdown(results: Sequence[VariantResult]) -> str:
    """The table: per-step times, the forecast step as a share of a full step, loop time and speedups (from the loop
    times, and from the per-step medians with a pooled full step), memory."""
    full = next((r for r in results if r.config is None), results[0])
    fora = next((r for r in results if r.name == "FORA"), None)
    pooled = pooled_full_step_seconds(results)
    header = ["method", "full steps", "ms / full step", "ms / forecast step", "forecast / full", "loop s",
              "speedup", "T / #full", "realized / ideal", "vs FORA", "per-step speedup", "per-step vs FORA",
              "cache GiB", "peak GiB"]  # fmt: skip
    rows = []
    for r in results:
        speedup = full.loop_seconds / r.loop_seconds
        vs_fora = "—" if fora is None or r is fora or r.config is None else f"{fora.loop_seconds / r.loop_seconds:.3f}"
        per_step = per_step_speedup(r, pooled)
        per_step_vs_fora = (
            "—" if fora is None or r is fora or r.config is None else f"{per_step / per_step_speedup(fora, pooled):.3f}"
        )
        rows.append([
            r.name,
            f"{len(r.full_steps)}/{r.num_steps}",
            _ms(r.full_step_seconds),
            _ms(r.forecast_step_seconds),
            "—" if r.forecast_fraction is None else f"{100 * r.forecast_fraction:.2f} %",
            f"{r.loop_seconds:.3f}",
            f"{speedup:.2f}x",
            f"{r.step_ratio:.2f}x",
            f"{speedup / r.step_ratio:.3f}",
            vs_fora,
            f"{per_step:.2f}x",
            per_step_vs_fora,
            f"{r.cache_bytes / GIB:.3f}",
            "—" if r.peak_memory_bytes is None else f"{r.peak_memory_bytes / GIB:.2f}",
        ])  # fmt: skip
    table = markdown_table(header, rows)
    stages = full.stage_seconds
    if stages:
        parts = ", ".join(f"{name} {seconds:.3f} s" for name, seconds in stages.items())
        ends = ", ".join(f"{r.name} {r.end_to_end_seconds:.3f} s" for r in results)
        table += f"\n\nOutside the loop (the same for every method): {parts}. End to end: {ends}."
    return table


def load_results(path: Path) -> list[VariantResult]:
    """The rows of a ``results.json`` (e.g. to re-render its table)."""
    fields = {f.name for f in VariantResult.__dataclass_fields__.values()}
    rows = json.loads(Path(path).read_text(encoding="utf-8"))["results"]
    return [VariantResult(**{k: v for k, v in row.items() if k in fields}) for row in rows]


def plot_step_times(results: Sequence[VariantResult], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    for r in results:
        ax.plot(range(r.num_steps), [t * 1e3 for t in r.step_seconds], marker="o", markersize=3, label=r.name)
    ax.set_yscale("log")
    ax.set_xlabel("sampling step")
    ax.set_ylabel("ms (minimum over repeats)")
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda temp: fig.savefig(temp, format="png", dpi=120))
    plt.close(fig)


def write_results(
    folder: Path,
    results: Sequence[VariantResult],
    *,
    title: str,
    settings: dict,
    lines: Sequence[str] = (),
    extra: dict | None = None,
) -> dict:
    """results.json (every figure, the settings, the machine and ``extra``), results.md (``lines`` and the table) and
    step_times.png."""
    folder.mkdir(parents=True, exist_ok=True)
    record = {
        "title": title,
        "settings": settings,
        "machine": machine_record(),
        "results": [
            {
                **asdict(r),
                "forecast_fraction": r.forecast_fraction,
                "step_ratio": r.step_ratio,
                "end_to_end_seconds": r.end_to_end_seconds,
            }  # fmt: skip
            for r in results
        ],
        **(extra or {}),
    }
    text = json.dumps(record, indent=2) + "\n"
    atomic_write(folder / "results.json", lambda temp: temp.write_text(text, encoding="utf-8"))
    markdown = "\n\n".join([f"# {title}", *lines, results_markdown(results)]) + "\n"
    atomic_write(folder / "results.md", lambda temp: temp.write_text(markdown, encoding="utf-8"))
    plot_step_times(results, folder / "step_times.png", title)
    return record


def machine_record() -> dict:
    """What ran the benchmark: torch, threads, and the GPU or CPU model."""
    record = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        record["gpu"] = torch.cuda.get_device_name()
    try:
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        cpu = None
    record["cpu"] = cpu
    return record


def cache_footprint(run: Callable[[CacheMethod], object], config: TaylorSeerConfig) -> dict:
    """Bytes the cache of ``config`` holds after one ``run(cache)``, untimed. With a model and inputs on the meta
    device this sizes the cache of a paper-size run (FLUX 1024², HunyuanVideo 480p) without allocating anything."""
    cache = TaylorCache(config)
    run(cache)
    return {"cache_bytes": held_bytes(cache), "cache_storage_bytes": cache_storage_bytes(cache),
            "cache_tensors": len(_held(cache))}  # fmt: skip
