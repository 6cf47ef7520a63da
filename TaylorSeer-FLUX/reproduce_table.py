"""Run a FLUX paper table row by row, evaluate every row against full compute, and write the table beside the paper's.

    python TaylorSeer-FLUX/reproduce_table.py --clip-model pretrained_models/clip-vit-large-patch14 \\
        --image-reward pretrained_models/ImageReward/ImageReward.pt \\
        --lpips-weights pretrained_models/alexnet-owt-7be5be79.pth -- --ckpt-dir pretrained_models/FLUX.1-dev
    python TaylorSeer-FLUX/reproduce_table.py --launcher "torchrun --nproc_per_node=8" -- --ckpt-dir ...
    python TaylorSeer-FLUX/reproduce_table.py my_table.toml --results-dir results/tiny -- --ckpt-dir tiny/ --width 48 \\
        --height 32 --num-steps 4 --max-sequence-length 16 --device cpu

TABLE (default: tables/flux_table1.toml, the paper's FLUX.1-dev table; format in common/paper_table.py) lists the
rows; each row runs ``sample.py`` with the table's settings, the row's flags and the flags after ``--`` (weights,
device, smaller sizes), in that order, into ``{results-dir}/rows/{row}/``. Paths in the table (--prompt-file,
--ckpt-dir) are relative to the table file, paths after ``--`` to the working directory.

Before any sampling every row's flags are parsed by sample.py's own checks and its FLOPs counted on the meta device
as ``sample.py --test-FLOPs`` counts them, so that a bad row fails in seconds, not after hours. Then, row by row
(the full row first, the reference of all others):

* sampling: ``[*launcher, sample.py, ...]`` as a child process (it resumes its own images), its messages streamed;
* FLOPs speedup: that count, on the architecture of the weights that run; for TeaCache, whose steps depend on the
  images, the run's own count;
* latency speedup: the full row's denoising-loop seconds per image over the row's, from sample.py's summaries. A
  resumed row is timed on the images of its last sample.py invocation that made any (null if none did);
* quality: evaluate.py's PSNR/SSIM/LPIPS against the full row's images, ImageReward and CLIP score of the row's own
  (null where a model is missing locally), with paired bootstrap replicates over the images (the same resamples for
  every row) so that the table shows the difference to full compute with its interval;
* the row is appended to ``rows.jsonl``: a rerun skips every row recorded with the same sampler flags, weights (by
  content), full-row flags and evaluation models, so a killed run resumes at the row it was in.

Writes table.md, table.json and quality_vs_speedup.png in the results folder. When the transformer is not
FLUX.1-dev's architecture (a tiny test model), every output says first that its numbers are plumbing only.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from common.cli import HelpFormatter, UsageError, int_range, run_cli
from common.methods import METHOD_FLAGS, MethodConfig
from common.paired_stats import bootstrap_indices, bootstrap_mean
from common.paper_table import (
    ROW_LOG,
    RowLog,
    TableRow,
    TableSpec,
    check_results_dir,
    load_table,
    resolve_table_paths,
    write_table,
)
from common.quality_metrics import LPIPS_NETS
from common.teacache import TeaCacheConfig
from taylorseer_flux import evaluate, sample
from taylorseer_flux.flops import method_flops_report
from taylorseer_flux.model import FLUX_PRESETS, FluxParams
from taylorseer_flux.weights import find_flux_weights, flux_weights_id, transformer_params

TREE = Path(__file__).resolve().parent
SAMPLER = TREE / "sample.py"
DEFAULT_TABLE = TREE / "tables" / "flux_table1.toml"
PAPER_PARAMS = FLUX_PRESETS["flux-dev"]
PAPER_SIZE = {"width": 1024, "height": 1024, "num_steps": 50}
# The same resamples of the images for every row, so that differences between rows are paired.
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0
# Table column key -> (evaluate.py's per-image key of a compared row, of the full row itself; None: not defined,
# as PSNR of the reference against itself).
METRICS = {
    "imagereward": ("image_reward", "reference_image_reward"),
    "clip": ("clip_score", "reference_clip_score"),
    "psnr": ("psnr", None),
    "ssim": ("ssim", None),
    "lpips": ("lpips", None),
}
# Sampler flags whose paths a table gives relative to its own folder.
TABLE_PATH_FLAGS = ("--prompt-file", "--ckpt-dir")
# Flags the runner sets itself, and flags that would override every row's method if given after `--`.
RUNNER_FLAGS = ("--output-dir", "--test-FLOPs")
METHOD_SETTINGS = ("--method", *METHOD_FLAGS)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=HelpFormatter,
        usage="%(prog)s [TABLE] [--results-dir DIR] [--launcher CMD] [evaluation flags] [-- sampler flags]",
    )
    parser.add_argument("table", nargs="?", default=str(DEFAULT_TABLE), help="the table file (TOML)")
    parser.add_argument(
        "--results-dir",
        default=None,
        help="where rows/, rows.jsonl and the table go; None = results/tables/<TABLE stem>",
    )
    parser.add_argument(
        "--launcher",
        default=None,
        help='how each row\'s sample.py is started, e.g. "torchrun --nproc_per_node=8"; None = this Python',
    )
    group = parser.add_argument_group("evaluation", "the models of evaluate.py (local files only; a missing one: null)")
    group.add_argument("--clip-model", default=None, help="local CLIP folder (default: evaluate.py's)")
    group.add_argument("--image-reward", default=None, help="ImageReward.pt (default: evaluate.py's)")
    group.add_argument("--image-reward-med-config", default=None, help="med_config.json (default: next to the .pt)")
    group.add_argument("--lpips-weights", default=None, help="torchvision backbone weights for LPIPS")
    group.add_argument("--lpips-net", choices=list(LPIPS_NETS), default="alex", help="LPIPS backbone")
    group.add_argument("--eval-batch-size", type=int_range(1), default=8, help="image pairs per metric batch")
    group.add_argument("--eval-device", default=None, help="device of the metrics; None = cuda if available, else cpu")
    return parser


@dataclass
class RowPlan:
    """A row ready to run: its sampler flags (all but the output folder), parsed and counted."""

    row: TableRow
    slug: str
    argv: list[str]
    args: argparse.Namespace
    flops: dict
    weights_id: str
    params: FluxParams

    @property
    def name(self) -> str:
        return self.row.name


def split_sampler_flags(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """The runner's own flags and the sampler flags after the first ``--``."""
    argv = list(argv)
    if "--" not in argv:
        return argv, []
    at = argv.index("--")
    return argv[:at], argv[at + 1 :]


def flag_names(flags: Sequence[str]) -> set[str]:
    """The option names in ``flags`` (``--a=1`` counts as ``--a``)."""
    return {flag.split("=", 1)[0] for flag in flags if flag.startswith("--")}


def check_extra_flags(extra: Sequence[str]) -> None:
    """Flags after ``--`` apply to every row: the rows' methods and the runner's own flags are not among them."""
    names = flag_names(extra)
    for flag in RUNNER_FLAGS:
        if flag in names:
            raise UsageError(f"{flag} after `--`: the runner sets it for every row (the rows go under --results-dir)")
    taken = sorted(names & set(METHOD_SETTINGS))
    if taken:
        raise UsageError(
            f"{', '.join(taken)} after `--` would override every row's method: set methods in the table's rows"
        )


def row_slug(name: str) -> str:
    """A row's folder name: lowercase ASCII words, other letters by their Unicode name ("Δ-DiT (N=3)" ->
    "delta-dit-n-3")."""
    parts = []
    for char in name.lower():
        if char.isascii() and char.isalnum():
            parts.append(char)
        elif char.isalpha():
            parts.append(f"-{unicodedata.name(char, 'x').split()[-1].lower()}-")
        else:
            parts.append("-")
    return re.sub("-+", "-", "".join(parts)).strip("-") or "row"


def parse_row(name: str, argv: list[str]) -> tuple[argparse.Namespace, MethodConfig]:
    """sample.py's parser and checks on a row's flags; a bad flag is a :class:`UsageError` naming the row."""
    parser = sample.build_parser()

    def refuse(message: str) -> None:
        raise UsageError(f"row {name!r}: {message} (sample.py flags: {shlex.join(argv)})")

    parser.error = refuse
    args = parser.parse_args(argv)
    return args, sample.check_args(args, parser)


def count_flops(args: argparse.Namespace, config: MethodConfig, params: FluxParams) -> dict:
    """The row's FLOPs per image as ``sample.py --test-FLOPs`` counts them (every step of the method's schedule on the
    meta device), on the architecture of the weights that run (FLUX.1-dev's for the real ones, where the two are the
    same count). TeaCache's steps depend on the images: its speedup is None until its run counts them."""
    sample.check_image_size(args.width, args.height, params)
    config = sample.fit_to_model(args, config, params)
    if isinstance(config, TeaCacheConfig):
        return {"speedup": None, "tflops": None, "full_tflops": None, "full_steps": None, "forecast_steps": None}
    size = (args.width, args.height, args.max_sequence_length, args.num_steps)
    report = method_flops_report(params, *size, args.method, config).as_dict()
    return {key: report[key] for key in ("speedup", "tflops", "full_tflops", "full_steps", "forecast_steps")}


def plan_rows(spec: TableSpec, extra: Sequence[str]) -> list[RowPlan]:
    """Every row's flags parsed and FLOPs counted, its weights found and identified: all before any sampling."""
    settings = resolve_table_paths(spec.settings, spec.path.parent, TABLE_PATH_FLAGS)
    identities: dict[tuple[str, str | None], tuple[str, FluxParams]] = {}
    plans, slugs = [], {}
    for row in spec.rows:
        flags = resolve_table_paths(row.flags, spec.path.parent, TABLE_PATH_FLAGS)
        for flag in RUNNER_FLAGS:
            if flag in flag_names([*settings, *flags]):
                raise UsageError(f"{spec.path}: row {row.name!r} sets {flag}, which the runner sets for every row")
        argv = [*settings, *flags, *extra]
        args, config = parse_row(row.name, argv)
        slug = row_slug(row.name)
        if slug in slugs:
            raise UsageError(f"{spec.path}: rows {slugs[slug]!r} and {row.name!r} share the folder name {slug!r}")
        slugs[slug] = row.name
        key = (args.model_name, args.ckpt_dir)
        if key not in identities:
            weights = find_flux_weights(args.model_name, args.ckpt_dir)
            identities[key] = (flux_weights_id(weights), transformer_params(weights.transformer, args.model_name))
        flops = count_flops(args, config, identities[key][1])
        plans.append(RowPlan(row, slug, argv, args, flops, *identities[key]))
        speedup = "from its run" if flops["speedup"] is None else f"{flops['speedup']:.3f}x"
        print(f"row {row.name!r}: flags parsed; FLOPs speedup {speedup}", flush=True)
    return plans


def plumbing_caveat(plans: Sequence[RowPlan]) -> str | None:
    """Said first in every output when a row's transformer is not FLUX.1-dev's architecture. The architecture is the
    one sample.py builds: a diffusers folder's config.json, else the preset, whose shapes the weights must then fit
    to load at all, so a run that loads with other params than the preset's is not FLUX.1-dev."""
    for plan in plans:
        params = plan.params
        if params != PAPER_PARAMS:
            return (
                f"Plumbing only: the transformer is not FLUX.1-dev's architecture ({params.depth} double + "
                f"{params.depth_single_blocks} single blocks of width {params.hidden_size}, against "
                f"{PAPER_PARAMS.depth} + {PAPER_PARAMS.depth_single_blocks} of {PAPER_PARAMS.hidden_size}); "
                "the numbers say nothing about the method."
            )
    return None


def check_columns(spec: TableSpec) -> None:
    unknown = [c.key for c in spec.columns if c.key not in METRICS]
    if unknown:
        raise UsageError(f"{spec.path}: columns {unknown} are not measured here; FLUX rows have {', '.join(METRICS)}")


def evaluation_flags(args: argparse.Namespace) -> list[str]:
    """The runner's evaluation flags as evaluate.py's, checked: a model file named here must exist."""
    flags = ["--lpips-net", args.lpips_net, "--batch-size", str(args.eval_batch_size)]
    named = (
        ("--clip-model", args.clip_model, Path.is_dir),
        ("--image-reward", args.image_reward, Path.is_file),
        ("--image-reward-med-config", args.image_reward_med_config, Path.is_file),
        ("--lpips-weights", args.lpips_weights, Path.is_file),
    )
    for flag, value, exists in named:
        if value is None:
            continue
        path = Path(value).expanduser().absolute()
        if not exists(path):
            raise UsageError(f"{flag} {path} not found: name a local copy (nothing is downloaded)")
        flags += [flag, str(path)]
    if args.eval_device is not None:
        flags += ["--device", args.eval_device]
    return flags


def evaluation_models(evaluation: Sequence[str]) -> dict[str, str]:
    """The models among the evaluation flags (not the batch size or the device, which change no metric)."""
    pairs = dict(zip(evaluation[::2], evaluation[1::2], strict=True))
    return {flag: value for flag, value in pairs.items() if flag not in ("--batch-size", "--device")}


def row_settings(plan: RowPlan, reference: RowPlan, evaluation: Sequence[str]) -> dict:
    """What makes a recorded row reusable: its sampler flags, the weights by content, the full row's flags (its
    images are what the row is compared with) and the evaluation's models."""
    return {
        "sampler_argv": plan.argv,
        "weights_id": plan.weights_id,
        "reference_argv": reference.argv,
        "evaluation": evaluation_models(evaluation),
    }


def last_json_object(lines: Sequence[str]) -> dict | None:
    for line in reversed(lines):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


def run_sampler(name: str, command: Sequence[str]) -> dict:
    """Run one row's sample.py, its stdout echoed line by line and its stderr (progress bars) passed through; returns
    the summary it prints last. A failure is a :class:`UsageError` (its own message is already on stderr)."""
    print(f"row {name!r}: {shlex.join(command)}", flush=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # its lines as they come, not when its buffer fills
    lines = []
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env) as child:
        for line in child.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            lines.append(line)
    if child.returncode != 0:
        raise UsageError(
            f"row {name!r}: sample.py exited with code {child.returncode} (its message is above); fix that and rerun "
            "this command: finished rows and images are kept"
        )
    summary = last_json_object(lines)
    if summary is None:
        raise UsageError(f"row {name!r}: sample.py printed no JSON summary")
    return summary


TIMING_FIELDS = ("written", "skipped", "seconds_per_image", "denoise_seconds_per_image", "full_steps", "forecast_steps")
TEACACHE_FLOPS_FIELDS = ("tflops", "full_tflops", "speedup")


def sampler_timing(plan: RowPlan, summary: Mapping, record_path: Path) -> dict:
    """The row's timing: from this invocation of sample.py when it made images (kept in ``record_path`` for a later
    resume), else from the last invocation with the same flags that made any (a rerun after a kill during the
    evaluation makes none), else nothing."""
    kept = {key: summary.get(key) for key in (*TIMING_FIELDS, *TEACACHE_FLOPS_FIELDS) if key in summary}
    if summary.get("written"):
        record_path.parent.mkdir(parents=True, exist_ok=True)
        record_path.write_text(json.dumps({"sampler_argv": plan.argv, "summary": kept}) + "\n", encoding="utf-8")
        return {**kept, "timed_in": "this invocation"}
    if record_path.is_file():
        try:
            earlier = json.loads(record_path.read_text(encoding="utf-8"))
        except ValueError:
            earlier = None
        if isinstance(earlier, dict) and earlier.get("sampler_argv") == plan.argv:
            return {**earlier["summary"], "timed_in": "an earlier invocation"}
    return {**kept, "timed_in": None}


def row_flops(plan: RowPlan, timing: Mapping) -> dict:
    """The row's FLOPs: the --test-FLOPs count, or for TeaCache the count of the steps its images computed."""
    flops = {key: plan.flops.get(key) for key in ("speedup", "tflops", "full_tflops", "full_steps", "forecast_steps")}
    if plan.flops["speedup"] is None:  # TeaCache: its run decided the steps
        flops.update({key: timing.get(key) for key in TEACACHE_FLOPS_FIELDS})
        flops.update(full_steps=timing.get("full_steps"), forecast_steps=timing.get("forecast_steps"), counted="run")
    else:
        flops["counted"] = "test-FLOPs"
    return flops


def evaluate_row(folder: Path, reference_folder: Path, output: Path, evaluation: Sequence[str]) -> dict:
    """evaluate.py on the row's images against the full row's (the full row against itself gives its own scores);
    its JSON and markdown are kept at ``output``. Every image of the full row must have its pair."""
    argv = ["--reference-dir", str(reference_folder), "--candidate-dir", str(folder), "--output", str(output)]
    record = evaluate.main(evaluate.build_parser().parse_args([*argv, *evaluation]))
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # the metric models are gone; the next row's sampler gets the memory
    candidate = record["candidates"][0]
    for side in ("only_in_reference", "only_in_candidate"):
        if candidate[side]:
            raise UsageError(
                f"{folder} and {reference_folder} differ in their images ({side.replace('_', ' ')}: "
                f"{', '.join(candidate[side][:3])}): rerun this command to complete both rows with the same flags"
            )
    return record


def quality(record: Mapping, is_reference: bool, keys: Sequence[str]) -> tuple[dict, dict]:
    """The table's metrics (evaluate.py's means) and their paired bootstrap replicates over the images, for the
    columns ``keys``. The full row has its own ImageReward and CLIP, and no difference to itself."""
    candidate = record["candidates"][0]
    per_image = candidate["per_image"]
    indices = bootstrap_indices(len(per_image), BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED)
    metrics, replicates = {}, {}
    for key in keys:
        compared, own = METRICS[key]
        field = own if is_reference else compared
        if field is None:
            metrics[key] = None
            continue
        metrics[key] = record["reference"][compared] if is_reference else candidate[field]
        values = [image.get(field) for image in per_image]
        if metrics[key] is not None and None not in values:
            replicates[key] = bootstrap_mean(np.asarray(values, dtype=np.float64), indices).tolist()
    return metrics, replicates


def latency_speedup(result: Mapping, reference: Mapping | None) -> float | None:
    """Full compute's denoising-loop seconds per image over the row's; None when either was not timed."""
    if reference is None:
        return None
    base = reference["details"]["timing"].get("denoise_seconds_per_image")
    own = result["details"]["timing"].get("denoise_seconds_per_image")
    return base / own if base and own else None


def run_row(
    plan: RowPlan,
    reference: RowPlan,
    results_dir: Path,
    launcher: Sequence[str],
    evaluation: Sequence[str],
    keys: Sequence[str],
    reference_result: Mapping | None,
) -> dict:
    """Sample one row (resuming its images), evaluate it against the full row and return its result."""
    rows = results_dir / "rows"
    folder = rows / plan.slug
    summary = run_sampler(plan.name, [*launcher, str(SAMPLER), *plan.argv, "--output-dir", str(folder)])
    timing = sampler_timing(plan, summary, rows / f"{plan.slug}.timing.json")
    flops = row_flops(plan, timing)
    output = rows / f"{plan.slug}-quality.json"
    record = evaluate_row(folder, rows / reference.slug, output, evaluation)
    metrics, replicates = quality(record, plan is reference, keys)
    result = {
        "flops_speedup": flops["speedup"],
        "latency_speedup": None,
        "metrics": metrics,
        "replicates": replicates,
        "details": {
            "label": summary.get("label"),
            "folder": str(folder),
            "images": record["candidates"][0]["num_pairs"],
            "flops": flops,
            "timing": timing,
            "evaluation": str(output),
        },
    }
    result["latency_speedup"] = latency_speedup(result, result if plan is reference else reference_result)
    return result


def describe_run(plans: Sequence[RowPlan], launcher: Sequence[str], evaluation: Sequence[str]) -> list[str]:
    """The run's settings in words, for the markdown."""
    args = plans[0].args
    images = len(args.prompts) * args.num_images_per_prompt
    prompts = args.prompt_file or "--prompt"
    lines = [
        f"Sampler: {args.model_name}, {args.width}×{args.height}, {args.num_steps} steps, guidance {args.guidance}, "
        f"{args.max_sequence_length} text tokens; {images} images ({len(args.prompts)} prompts from {prompts} × "
        f"{args.num_images_per_prompt}), image k from seed {args.seed} + k; started as `{shlex.join(launcher)} "
        "sample.py`.",
    ]
    size = {"width": args.width, "height": args.height, "num_steps": args.num_steps}
    if size != PAPER_SIZE:
        lines.append(
            f"Not the paper's settings: {args.width}×{args.height} and {args.num_steps} steps, against 1024×1024 "
            "and 50."
        )
    lines += [
        "FLOPs speedup: every step of the row's schedule counted on the meta device as sample.py --test-FLOPs counts "
        "it (every matmul as 2 × MACs), on the transformer that runs, at these sizes; TeaCache's from the steps its "
        "run computed and skipped.",
        "Latency speedup: the full row's denoising-loop seconds per image ÷ the row's (sample.py's summaries); a "
        "resumed row is timed on the images of its last sample.py invocation that made any.",
        f"Quality: evaluate.py ({shlex.join(evaluation)}): PSNR/SSIM/LPIPS against the full row's images, ImageReward "
        "and CLIP score of each row's own; — where a model is missing locally.",
    ]
    return lines


def with_latency(results: Mapping[str, dict], reference: str) -> dict[str, dict]:
    """Every result with its latency speedup against the full row's timing as recorded now (a full row run again
    after the others is their reference too)."""
    base = results.get(reference)
    return {name: {**result, "latency_speedup": latency_speedup(result, base)} for name, result in results.items()}


def default_results_dir(spec: TableSpec) -> Path:
    return Path("results") / "tables" / spec.path.stem


def main(args: argparse.Namespace, extra: Sequence[str]) -> dict:
    """Check the table, the flags of every row and the output folder, then run, evaluate and record the rows not
    recorded yet, and write the table; returns its summary."""
    spec = load_table(args.table)
    check_columns(spec)
    check_extra_flags(extra)
    results_dir = check_results_dir(Path(args.results_dir) if args.results_dir else default_results_dir(spec))
    launcher = shlex.split(args.launcher) if args.launcher is not None else [sys.executable]
    if not launcher:
        raise UsageError('--launcher is empty: pass a command such as "torchrun --nproc_per_node=8", or omit it')
    evaluation = evaluation_flags(args)
    plans = plan_rows(spec, extra)
    caveat = plumbing_caveat(plans)
    keys = [column.key for column in spec.columns]
    log = RowLog(results_dir / ROW_LOG)
    reference = plans[0]
    results: dict[str, dict] = {}
    for plan in plans:
        settings = row_settings(plan, reference, evaluation)
        result = log.finished(plan.name, settings)
        if result is None:
            result = run_row(plan, reference, results_dir, launcher, evaluation, keys, results.get(reference.name))
            log.record(plan.name, settings, result)
        else:
            print(f"row {plan.name!r}: recorded in {log.path} with these settings, not run again", flush=True)
        results[plan.name] = result
    details = {
        "results_dir": str(results_dir),
        "launcher": launcher,
        "sampler_flags": list(extra),
        "evaluation_flags": list(evaluation),
        "weights_id": reference.weights_id,
        "bootstrap": {"resamples": BOOTSTRAP_RESAMPLES, "seed": BOOTSTRAP_SEED},
    }
    lines = describe_run(plans, launcher, evaluation)
    return write_table(
        results_dir, spec, with_latency(results, reference.name), caveat=caveat, lines=lines, details=details
    )


def cli(argv: Sequence[str] | None = None) -> dict:
    """Parse and run; bad input ends in one ``error:`` line and exit code 2 before any row is sampled."""
    own, extra = split_sampler_flags(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(own)
    return run_cli(main, args, extra, catch=(ValueError,))


if __name__ == "__main__":
    cli()
