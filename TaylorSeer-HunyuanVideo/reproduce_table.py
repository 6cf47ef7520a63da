"""One command for the paper's HunyuanVideo table: sample every row with sample_video.py, measure it, write the table.

    # the paper's table (tables/hunyuanvideo_table3.toml), every row sampled on 8 GPUs, VBench on the paper's prompts
    python TaylorSeer-HunyuanVideo/reproduce_table.py --launcher "torchrun --nproc_per_node=8" \\
        --vbench-info VBench_full_info.json -- --model-base ckpts
    # a smoke run: the tree's 11 VBench prompts (the default), one video each, no VBench
    python TaylorSeer-HunyuanVideo/reproduce_table.py -- --model-base ckpts --num-videos-per-prompt 1

A table file (format: common/paper_table.py) lists the rows as sample_video.py flags; its ``settings`` are every
row's, and the flags after ``--`` on this command line are appended to every row (``--model-base``, smaller sizes;
the last of a repeated flag wins). Every row makes the videos of the same prompts and seeds (``--prompts``, VBench's
full-info JSON, given to sample_video.py as --prompt-json), so video k of every row starts from the noise of video k
of full compute (the first row): the comparisons are paired. A row may change only its method: a row that changes
anything else that makes the videos is refused before anything samples, and so is a row whose flags sample_video.py
refuses, and missing weights.

Per row:
* FLOPs speedup: sample_video.py --test-FLOPs's count of the row's method over its schedule (meta device, matmul
  convention); TeaCache's, which depends on each video, from the FLOPs of the run's videos (their step counts).
* Latency speedup: full compute's denoising seconds per video over the row's (the denoising loop's wall time as
  sample_video.py reports it, averaged over the videos it timed); end to end (encoding and decoding too) in details.
* PSNR, SSIM, LPIPS against full compute's video of the same prompt and seed (evaluate.py's functions: frame-wise,
  averaged per video, then over the videos), each with the replicates of a bootstrap over the videos (the same 1000
  resamples for every row), so rows compare pairwise; LPIPS is null without local AlexNet weights (see evaluate.py).
* VBench (total score, %): only with --vbench-info and the vbench package installed (evaluate.py's aggregation);
  otherwise the column is null and the table says why. It has no interval: the score aggregates dimensions that each
  use their own prompts.

Rows resume: each finished row is a line of {results-dir}/rows.jsonl with what made its numbers (the sampler flags,
the prompts and weights by content, the evaluation, and full compute's flags); a rerun reuses those, and
sample_video.py itself resumes a row stopped half-way. The sampler's per-video timings and FLOPs are kept in
{results-dir}/rows/<row>.runs.jsonl, so a row resumed after its videos were made keeps them. Outputs: table.md,
table.json and quality_vs_speedup.png in --results-dir, the videos under {results-dir}/rows/<row>/.

A model other than HunyuanVideo's (a tiny test preset) runs end to end, and every output says that its numbers are
plumbing only.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import numpy as np
import torch

from common.checkpoint import CheckpointError
from common.cli import HelpFormatter, UsageError, check_output_folder, int_range, run_cli, warn
from common.integrity import file_sha256, weights_fingerprint
from common.methods import MethodConfig, describe
from common.paired_stats import bootstrap_indices, bootstrap_mean, percentile_interval
from common.paper_table import ROW_LOG, RowLog, TableRow, TableSpec, check_results_dir, load_table, write_table
from common.quality_metrics import LPIPS_NETS, PSNR_CAP_DB, resolve_device, resolve_lpips_weights
from taylorseer_hunyuanvideo import evaluate, sample_video
from taylorseer_hunyuanvideo.model import HUNYUAN_VIDEO_PRESETS
from taylorseer_hunyuanvideo.vbench_info import read_vbench_info
from taylorseer_hunyuanvideo.weights import check_model_files, find_model_files, weights_id

TREE = Path(__file__).resolve().parent
DEFAULT_TABLE = TREE / "tables" / "hunyuanvideo_table3.toml"
DEFAULT_PROMPTS = TREE / "prompts" / "vbench_mini.json"
SAMPLER = TREE / "sample_video.py"
PAPER_PRESET = "HYVideo-T/2-cfgdistill"
PAPER_SETTING = {"video_size": [480, 640], "video_length": 65, "infer_steps": 50}
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0
PAIRED_METRICS = ("psnr", "ssim", "lpips")
VBENCH = "vbench"
RUNS_SUFFIX = ".runs.jsonl"
# sample_video.py settings that decide which videos a row makes, besides its method: equal in every row, or the
# comparisons with full compute would not be paired.
SHARED_SETTINGS = (
    "model", "model_base", "dit_weight", "load_key", "video_size", "video_length", "infer_steps", "seed",
    "flow_shift", "flow_reverse", "embedded_cfg_scale", "cfg_scale", "neg_prompt", "text_len",
    "hidden_state_skip_layer", "apply_final_norm", "precision", "text_encoder_precision", "vae_precision", "prompts",
    "num_videos_per_prompt", "fps", "lossless",
)  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=HelpFormatter,
        usage="%(prog)s [TABLE] [options] [-- sample_video.py flags for every row]",
    )
    parser.add_argument("table", nargs="?", default=str(DEFAULT_TABLE), help="table file (common/paper_table.py)")
    parser.add_argument("--results-dir", help="folder of the table and the videos (default: results/tables/TABLE)")
    parser.add_argument(
        "--launcher",
        help='command that runs sample_video.py, e.g. "torchrun --nproc_per_node=8" (default: this Python)',
    )
    parser.add_argument(
        "--prompts",
        type=Path,
        help="VBench full-info JSON of the prompts (sample_video.py --prompt-json); default: --vbench-info if given, "
        f"else the smoke set {DEFAULT_PROMPTS.relative_to(TREE.parent)}",
    )
    evaluation = parser.add_argument_group("evaluation", "as evaluate.py measures it")
    evaluation.add_argument(
        "--vbench-info", type=Path, help="VBench's full-info JSON: run VBench on every row (needs pip install vbench)"
    )
    evaluation.add_argument(
        "--dimensions",
        nargs="+",
        choices=evaluate.VBENCH_DIMENSIONS,
        metavar="DIM",
        help="VBench dimensions (default: all 16; the total score needs all)",
    )
    evaluation.add_argument(
        "--lpips-weights", help="LPIPS backbone weights, which must load (default: as evaluate.py finds them)"
    )
    evaluation.add_argument("--lpips-net", choices=list(LPIPS_NETS), default="alex", help="LPIPS backbone")
    evaluation.add_argument(
        "--batch-size", type=int_range(1), default=evaluate.DEFAULT_BATCH_SIZE, help="frame pairs per metric batch"
    )
    evaluation.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", help="device of the evaluation"
    )
    return parser


# ------------------------------------------------------------------------------------------------------- the rows


@dataclass(frozen=True)
class PreparedRow:
    """A table row checked by sample_video.py's own parser: its flags (the save path aside), parsed."""

    row: TableRow
    slug: str
    argv: tuple[str, ...]
    args: argparse.Namespace
    config: MethodConfig

    @property
    def name(self) -> str:
        return self.row.name


def row_slug(name: str) -> str:
    """The row's folder name: lower-case letters and digits, runs of anything else as one "-"."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "row"


def parse_row(spec: TableSpec, name: str, argv: Sequence[str]) -> tuple[argparse.Namespace, MethodConfig]:
    """sample_video.py's parsing and checks of a row's flags; what it refuses is one UsageError naming the row."""
    parser = sample_video.build_parser()
    where = f"{spec.path}: row {name!r}:"

    def refuse(message: str) -> NoReturn:
        raise UsageError(f"{where} {message}")

    parser.error = refuse  # argparse and check_args report through parser.error: one line, not usage and exit
    args = parser.parse_args(list(argv))
    try:
        return args, sample_video.check_args(args, parser)
    except UsageError as err:
        if str(err).startswith(where):
            raise
        raise UsageError(f"{where} {err}") from None


def scheduled_flops(args: argparse.Namespace, config: MethodConfig) -> dict | None:
    """sample_video.py --test-FLOPs's report of the row (its printout swallowed); None for TeaCache."""
    if args.method == "teacache":
        return None
    with contextlib.redirect_stdout(io.StringIO()):
        return sample_video.print_flops(args, config)


def prepare_rows(spec: TableSpec, prompts: Path, extra: Sequence[str]) -> list[PreparedRow]:
    """Every row parsed and checked to differ from full compute only in its method: a bad row ends the run here,
    before any row samples."""
    rows = []
    for row in spec.rows:
        argv = ("--prompt-json", str(prompts), *spec.settings, *row.flags, *extra)
        args, config = parse_row(spec, row.name, argv)
        rows.append(PreparedRow(row, row_slug(row.name), argv, args, config))
    slugs = [r.slug for r in rows]
    for r in rows:
        if slugs.count(r.slug) > 1:
            raise UsageError(f"{spec.path}: two rows share the folder name {r.slug!r}: rename one of them")
    reference = vars(rows[0].args)
    for r in rows[1:]:
        differing = [key for key in SHARED_SETTINGS if vars(r.args)[key] != reference[key]]
        if differing:
            flags = ", ".join("--" + key.replace("_", "-") for key in differing)
            raise UsageError(
                f"{spec.path}: row {r.name!r} sets {flags} apart from full compute ({rows[0].name!r}); a row may "
                "change only its method, so that every comparison is paired"
            )
    return rows


def row_weights_id(args: argparse.Namespace) -> str:
    """The content identity of the row's weights, as sample_video.py records it; missing weights end the run."""
    files = find_model_files(args.model_base, args.dit_weight)
    check_model_files(files)
    return weights_id(files)


def video_names(row: PreparedRow, folder: Path) -> list[str]:
    """The file names of the row's videos, sorted (the same in every row: the same prompts and seeds)."""
    planned = argparse.Namespace(**{**vars(row.args), "save_path": folder})
    return sorted(job.path.name for job in sample_video.video_jobs(planned))


# ---------------------------------------------------------------------------------------------------- sampling


def run_sampler(launcher: Sequence[str], row: PreparedRow, folder: Path) -> list[dict]:
    """sample_video.py as a child process for ``row`` (its stderr and progress pass through, its lines are echoed);
    returns the summary line of each of its ranks."""
    command = [*launcher, str(SAMPLER), *row.argv, "--save-path", str(folder)]
    print("$ " + shlex.join(command), flush=True)
    summaries = []
    environment = {**os.environ, "PYTHONUNBUFFERED": "1"}  # its lines as they come, not when it ends
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=environment) as child:
        for line in child.stdout:
            sys.stdout.write(line)
            start = line.find('{"rank"')  # anywhere in the line: a launcher may prefix its workers' lines
            if start >= 0:
                summaries.append(json.loads(line[start:]))
    if child.returncode != 0:
        raise UsageError(
            f"sample_video.py failed (exit {child.returncode}, its message is above) on row {row.name!r}: "
            f"{shlex.join(command)}"
        )
    if not summaries:
        raise UsageError(f"sample_video.py printed no summary on row {row.name!r}: {shlex.join(command)}")
    return summaries


def record_runs(path: Path, summaries: Sequence[dict]) -> None:
    """Append one sampler invocation's rank summaries to the row's runs file (one line, one write)."""
    with path.open("a", encoding="utf-8") as file:
        file.write(json.dumps({"summaries": list(summaries)}, allow_nan=False) + "\n")


def timed_videos(path: Path) -> dict[str, dict]:
    """Video file name -> its seconds, denoising seconds and TFLOPs (and full compute's), from every invocation in
    the runs file (the latest wins). Videos of an invocation that was killed have none."""
    videos: dict[str, dict] = {}
    if not path.exists():
        return videos
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            summaries = json.loads(line)["summaries"]
        except (json.JSONDecodeError, KeyError, TypeError):
            continue  # a line cut short by a kill: its videos count as untimed
        for summary in summaries:
            written = summary["videos"]
            flops = summary.get("flops") or {}
            per_video = flops.get("video_tflops") or [None] * len(written)
            for k, video in enumerate(written):
                videos[Path(video).name] = {
                    "seconds": summary["seconds"][k],
                    "denoise_seconds": summary.get("denoise_seconds", [None] * len(written))[k],
                    "tflops": per_video[k],
                    "full_tflops": flops["full_tflops"] / len(written) if per_video[k] is not None else None,
                }
    return videos


def mean_of(videos: Mapping[str, dict], key: str) -> float | None:
    values = [v[key] for v in videos.values() if v.get(key) is not None]
    return float(np.mean(values)) if values else None


def run_flops_speedup(videos: Mapping[str, dict]) -> float | None:
    """Full compute's FLOPs over the row's, summed over the videos whose counts the runs file holds."""
    counted = [v for v in videos.values() if v["tflops"] is not None]
    if not counted:
        return None
    return sum(v["full_tflops"] for v in counted) / sum(v["tflops"] for v in counted)


# -------------------------------------------------------------------------------------------------- evaluation


class Yardstick:
    """What every row is measured with, fixed once: the videos, the shared bootstrap resamples, LPIPS and VBench."""

    def __init__(self, options: argparse.Namespace, names: Sequence[str], prompts: Path):
        self.options = options
        self.names = list(names)
        self.device = resolve_device(options.device)
        self.indices = bootstrap_indices(len(self.names), BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED)
        self.lpips_weights = self._lpips_weights(options)
        self.vbench_note = None
        self.vbench_info = options.vbench_info
        if self.vbench_info is not None:
            read_vbench_info(self.vbench_info, "--vbench-info", need_dimensions=True)
            if self.vbench_info.resolve() != prompts.resolve():
                raise UsageError(
                    f"--vbench-info {self.vbench_info} and --prompts {prompts} differ: VBench finds each video by "
                    "its prompt, so the videos must be made from the same file (drop --prompts)"
                )
            if not vbench_installed():
                self.vbench_note = "VBench not run: the vbench package is not installed (pip install vbench)."
                warn(self.vbench_note + " The VBench column stays empty.")
                self.vbench_info = None
        else:
            self.vbench_note = "VBench not run: pass --vbench-info (VBench_full_info.json) to fill its column."

    @staticmethod
    def _lpips_weights(options: argparse.Namespace) -> Path | None:
        """The LPIPS weights evaluate.py would use; weights named on the command line must exist."""
        try:
            return resolve_lpips_weights(options.lpips_weights, options.lpips_net)
        except CheckpointError:
            if options.lpips_weights is not None:
                raise
            return None

    def settings(self) -> dict:
        return {
            "videos": self.names,
            "lpips": None
            if self.lpips_weights is None
            else {"net": self.options.lpips_net, "weights": weights_fingerprint([self.lpips_weights])},
            "psnr_cap_db": PSNR_CAP_DB,
            "bootstrap": {"resamples": BOOTSTRAP_RESAMPLES, "seed": BOOTSTRAP_SEED, "over": "videos"},
            "vbench": None
            if self.vbench_info is None
            else {"info_sha256": file_sha256(self.vbench_info), "dimensions": self.dimensions},
        }

    @property
    def dimensions(self) -> list[str]:
        return list(self.options.dimensions or evaluate.VBENCH_DIMENSIONS)

    def paired(self, reference: Path, candidate: Path) -> tuple[dict, dict]:
        """PSNR/SSIM/LPIPS of ``candidate``'s videos against ``reference``'s (evaluate.py's paired mode) and their
        bootstrap replicates over the videos."""
        request = argparse.Namespace(
            reference_dir=str(reference),
            candidate_dir=[str(candidate)],
            lpips_weights=None if self.lpips_weights is None else str(self.lpips_weights),
            lpips_net=self.options.lpips_net,
            batch_size=self.options.batch_size,
            progress=True,
        )
        record, _ = evaluate.evaluate_pairs(request, self.device)
        per_video = {video["file"]: video for video in record["candidates"][0]["per_video"]}
        missing = [name for name in self.names if name not in per_video]
        if missing:
            raise UsageError(f"{candidate} or {reference} lacks {len(missing)} of the videos, e.g. {missing[0]!r}")
        metrics, replicates = {}, {}
        for key in PAIRED_METRICS:
            values = [per_video[name][key] for name in self.names]
            if any(value is None for value in values):
                metrics[key] = None
                continue
            metrics[key] = float(np.mean(values))
            replicates[key] = bootstrap_mean(np.asarray(values), self.indices).tolist()
        return metrics, replicates

    def vbench(self, videos: Path, output: Path) -> float | None:
        """VBench's total score (%) of the folder, by evaluate.py's run and aggregation; None when not run."""
        if self.vbench_info is None:
            return None
        check_output_folder(output, "VBench's output folder")
        output.mkdir(parents=True, exist_ok=True)
        results = evaluate.run_vbench(videos, self.vbench_info, self.dimensions, output, self.device, local=False)
        scores, _ = evaluate.read_vbench_results([results])
        total = evaluate.aggregate_vbench(scores)["total_score"]
        return None if total is None else 100 * total


def vbench_installed() -> bool:
    return importlib.util.find_spec("vbench") is not None


# ---------------------------------------------------------------------------------------------------------- rows


def measure_row(
    row: PreparedRow,
    reference: PreparedRow,
    results: Mapping[str, dict],
    yardstick: Yardstick,
    rows_dir: Path,
    results_dir: Path,
) -> dict:
    """The row's result (see common/paper_table.py) from its runs file and its videos against full compute's."""
    runs = timed_videos(rows_dir / f"{row.slug}{RUNS_SUFFIX}")
    videos = {name: runs[name] for name in yardstick.names if name in runs}
    is_reference = row is reference
    schedule = scheduled_flops(row.args, row.config)
    if schedule is not None:
        flops_speedup, flops_source = schedule["speedup"], "schedule (sample_video.py --test-FLOPs)"
    else:
        flops_speedup, flops_source = run_flops_speedup(videos), "the run's videos (their step counts)"
    denoise, end_to_end = mean_of(videos, "denoise_seconds"), mean_of(videos, "seconds")
    full = None if is_reference else results[reference.name]["details"]
    full_denoise = denoise if full is None else full["denoise_seconds_per_video"]
    full_end_to_end = end_to_end if full is None else full["seconds_per_video"]
    metrics: dict = {VBENCH: yardstick.vbench(rows_dir / row.slug, results_dir / "vbench" / row.slug)}
    replicates: dict = {}
    if is_reference:
        metrics.update(dict.fromkeys(PAIRED_METRICS))  # full compute is the reference of these
    else:
        paired, replicates = yardstick.paired(rows_dir / reference.slug, rows_dir / row.slug)
        metrics.update(paired)
    return {
        "flops_speedup": flops_speedup,
        "latency_speedup": ratio(full_denoise, denoise),
        "metrics": metrics,
        "replicates": replicates,
        "details": {
            "method": describe(row.args.method, row.config),
            "videos": str(rows_dir / row.slug),
            "num_videos": len(yardstick.names),
            "timed_videos": len(videos),
            "flops_speedup_from": flops_source,
            "tflops_per_video": mean_of(videos, "tflops"),
            "denoise_seconds_per_video": denoise,
            "seconds_per_video": end_to_end,
            "end_to_end_latency_speedup": ratio(full_end_to_end, end_to_end),
            "interval_95": {key: list(percentile_interval(np.asarray(v))) for key, v in replicates.items()},
        },
    }


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    return numerator / denominator if numerator and denominator else None


def ensure_videos(launcher: Sequence[str], row: PreparedRow, folder: Path, runs: Path, names: Sequence[str]) -> None:
    """Run the row's sampler unless all its videos are there (it resumes: only the missing ones are made)."""
    if all((folder / name).is_file() for name in names):
        return
    summaries = run_sampler(launcher, row, folder)
    record_runs(runs, summaries)


def row_settings(
    row: PreparedRow, reference: PreparedRow, weights: Mapping[str, str], prompts_sha256: str, yardstick: Yardstick
) -> dict:
    """What made the row's numbers (full compute's videos are the reference of its metrics, so theirs too): a rerun
    reuses the row only when these are equal."""
    return {
        "sampler": list(row.argv),
        "prompts_sha256": prompts_sha256,
        "weights_id": weights[row.name],
        "evaluation": yardstick.settings(),
        "reference": None
        if row is reference
        else {"sampler": list(reference.argv), "weights_id": weights[reference.name]},
    }


# ---------------------------------------------------------------------------------------------------------- main


def plumbing_caveat(args: argparse.Namespace) -> str | None:
    """Said first in every output when the model is not HunyuanVideo's architecture (a tiny test preset)."""
    ours, paper = HUNYUAN_VIDEO_PRESETS[args.model], HUNYUAN_VIDEO_PRESETS[PAPER_PRESET]
    shape = ("hidden_size", "heads_num", "mm_double_blocks_depth", "mm_single_blocks_depth")
    if all(getattr(ours, key) == getattr(paper, key) for key in shape):
        return None
    size = ", ".join(f"{key} {getattr(ours, key)} (paper {getattr(paper, key)})" for key in shape)
    return (
        f"Plumbing only: {args.model} is not HunyuanVideo's architecture ({PAPER_PRESET}): {size}; the numbers say "
        "nothing about the methods."
    )


def describe_run(rows: Sequence[PreparedRow], prompts: Path, yardstick: Yardstick, results: Mapping) -> list[str]:
    args = rows[0].args
    height, width = args.video_size
    lines = [
        f"Measured: {args.model}, {height}×{width}, {args.video_length} frames, {args.infer_steps} steps, "
        f"{len(args.prompts)} prompts of {prompts.name}, {seed_range(args)} each: {len(yardstick.names)} videos per "
        "row, the same prompts and noise in every row.",
        "FLOPs speedup: the schedule's count (matmul convention), TeaCache's from its videos' step counts; latency: "
        "denoising seconds per video, full compute's over the row's (end to end in table.json).",
        "PSNR/SSIM/LPIPS against full compute's video of the same prompt and seed, frame-wise, averaged per video "
        f"then over videos; 95% bootstrap intervals over the videos ({BOOTSTRAP_RESAMPLES} resamples, the same for "
        "every row):",
    ]
    for row in rows[1:]:
        intervals = results[row.name]["details"]["interval_95"]
        if intervals:
            parts = [f"{key.upper()} [{low:.4g}, {high:.4g}]" for key, (low, high) in intervals.items()]
            lines.append(f"- {row.name}: " + ", ".join(parts))
    if yardstick.lpips_weights is None:
        lines.append("LPIPS not measured: no local AlexNet weights (evaluate.py --help says where to put them).")
    if yardstick.vbench_note:
        lines.append(yardstick.vbench_note)
    differing = [f"{key} {getattr(args, key)}" for key, value in PAPER_SETTING.items() if getattr(args, key) != value]
    if differing:
        lines.append(f"Not the paper's setting (480×640, 65 frames, 50 steps): {', '.join(differing)}.")
    return lines


def seed_range(args: argparse.Namespace) -> str:
    last = args.seed + args.num_videos_per_prompt - 1
    return f"seed {args.seed}" if last == args.seed else f"seeds {args.seed}..{last}"


def main(options: argparse.Namespace, extra: Sequence[str]) -> dict:
    """Check everything (table, rows, weights, evaluation, output folder), then sample and measure every row not
    already in the row log, and write the table."""
    spec = load_table(options.table)
    results_dir = check_results_dir(Path(options.results_dir or Path("results") / "tables" / spec.path.stem))
    launcher = shlex.split(options.launcher) if options.launcher is not None else [sys.executable]
    if not launcher:
        raise UsageError('--launcher is empty: give a command such as "torchrun --nproc_per_node=8", or drop it')
    prompts = (options.prompts or options.vbench_info or DEFAULT_PROMPTS).expanduser().absolute()
    rows = prepare_rows(spec, prompts, extra)
    reference = rows[0]
    weights = {row.name: row_weights_id(row.args) for row in rows}
    rows_dir = results_dir / "rows"
    names = video_names(reference, rows_dir / reference.slug)
    yardstick = Yardstick(options, names, prompts)
    prompts_sha256 = file_sha256(prompts)
    log = RowLog(results_dir / ROW_LOG)
    results: dict[str, dict] = {}
    for row in rows:
        settings = row_settings(row, reference, weights, prompts_sha256, yardstick)
        done = log.finished(row.name, settings)
        if done is not None:
            results[row.name] = done
            continue
        rows_dir.mkdir(parents=True, exist_ok=True)
        runs = rows_dir / f"{row.slug}{RUNS_SUFFIX}"
        record_runs(runs, run_sampler(launcher, row, rows_dir / row.slug))
        if row is not reference:  # full compute's videos are every row's reference: made again if gone
            reference_runs = rows_dir / f"{reference.slug}{RUNS_SUFFIX}"
            ensure_videos(launcher, reference, rows_dir / reference.slug, reference_runs, names)
        results[row.name] = measure_row(row, reference, results, yardstick, rows_dir, results_dir)
        log.record(row.name, settings, results[row.name])
    details = {"prompts": str(prompts), "launcher": launcher, "evaluation": yardstick.settings()}
    lines = describe_run(rows, prompts, yardstick, results)
    return write_table(results_dir, spec, results, caveat=plumbing_caveat(reference.args), lines=lines,
                       details=details)  # fmt: skip


def split_sampler_flags(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """This script's flags, and the sample_video.py flags after the first ``--`` (appended to every row)."""
    argv = list(argv)
    if "--" not in argv:
        return argv, []
    cut = argv.index("--")
    return argv[:cut], argv[cut + 1 :]


def cli(argv: Sequence[str] | None = None) -> dict:
    """The command line: parse ``argv`` (default: ``sys.argv``) and run; bad input exits 2 with one line."""
    own, extra = split_sampler_flags(sys.argv[1:] if argv is None else argv)
    options = build_parser().parse_args(own)
    return run_cli(main, options, extra)


if __name__ == "__main__":
    cli()
