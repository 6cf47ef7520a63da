"""Quality of accelerated HunyuanVideo videos: PSNR/SSIM/LPIPS against the full-compute videos, and VBench (Table 3).

    # paired videos: the same file names in both folders (e.g. VBench's "{prompt}-{k}.mp4")
    python TaylorSeer-HunyuanVideo/evaluate.py --reference-dir results/hv-full \\
        --candidate-dir results/hv-taylorseer-n5o1 results/hv-fora-n5
    # VBench (pip install vbench) over one folder of "{prompt}-{k}.mp4" videos, then the paper's aggregation
    python TaylorSeer-HunyuanVideo/evaluate.py --vbench results/hv-taylorseer-n5o1 --vbench-info VBench_full_info.json
    # the aggregation alone, over *_eval_results.json files VBench wrote earlier (e.g. one per GPU and dimension)
    python TaylorSeer-HunyuanVideo/evaluate.py --vbench-results evaluation_results/

Paired mode scores every frame pair (frame counts and sizes must match), averages over the frames of each video,
then over the videos; each reference video is decoded once, whatever the number of candidate folders. LPIPS needs
torchvision's AlexNet weights ``alexnet-owt-7be5be79.pth`` from a local file ($TAYLORSEER_LPIPS_WEIGHTS,
``pretrained_models/`` or the torch hub cache) and is null, with a warning, without them; weights named with
--lpips-weights must load, or the run ends with one error line.

VBench mode calls ``VBench(device, full_info_json, output_path).evaluate(..., mode="vbench_standard")`` on the chosen
dimensions (default: the 16 standard ones), then :func:`aggregate_vbench`: each dimension min-max normalised with
VBench's constants, quality = weighted mean of the 7 quality dimensions (dynamic degree weighs 0.5), semantic = mean
of the 9 semantic dimensions, total = (4 quality + semantic) / 5. VBench fetches its own models into its cache
(~/.cache/vbench); this script downloads nothing itself.

Prompts: ``prompts/vbench_mini.json`` (11 prompts covering the 16 dimensions, VBench's full-info format) is a smoke
test only. The paper's VBench score uses VBench's ``VBench_full_info.json`` (946 prompts, five seeds each, from
https://github.com/Vchitect/VBench/blob/master/vbench/VBench_full_info.json): generate its videos as
``{prompt}-{k}.mp4`` for k = 0..4 and pass the same file as --vbench-info.

Writes the metrics as JSON and the table as markdown next to it, and prints the table. Bad input (a missing folder,
no pairs, a video that does not decode, mismatched frames, an unwritable --output, a flag of another mode, VBench not
installed) ends in one ``error:`` line naming the file or flag, exit code 2, before anything is written; the output
paths are checked before any video is read, and every video of a --vbench folder is decoded once before VBench runs.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from common.checkpoint import CheckpointError, truncated_list
from common.cli import (
    HelpFormatter,
    UsageError,
    check_output_file,
    check_output_folder,
    existing_dir,
    int_range,
    warn,
)
from common.quality_metrics import (
    LPIPS_NETS,
    LPIPS_WEIGHTS_ENV,
    PAIRED_METRICS,
    PSNR_CAP_DB,
    PairedImageMetrics,
    format_value,
    load_lpips_or_warn,
    markdown_table,
    mean_or_none,
    pair_files,
    resolve_device,
    save_report,
    video_metrics,
)
from common.video_io import VideoDecodeError, read_video, verify_video
from taylorseer_hunyuanvideo.vbench_info import read_vbench_info

VIDEO_SUFFIXES = (".mp4",)
REPORT_SUFFIXES = (".json",)
DEFAULT_BATCH_SIZE = 16

# VBench's standard aggregation, from Vchitect/VBench scripts/constant.py (NORMALIZE_DIC, DIM_WEIGHT, QUALITY_LIST,
# SEMANTIC_LIST, QUALITY_WEIGHT = 4, SEMANTIC_WEIGHT = 1) as scripts/cal_final_score.py applies them; dimension names
# as VBench's API spells them. (min, max) of each dimension's raw score:
VBENCH_NORMALIZATION = {
    "subject_consistency": (0.1462, 1.0),
    "background_consistency": (0.2615, 1.0),
    "temporal_flickering": (0.6293, 1.0),
    "motion_smoothness": (0.706, 0.9975),
    "dynamic_degree": (0.0, 1.0),
    "aesthetic_quality": (0.0, 1.0),
    "imaging_quality": (0.0, 1.0),
    "object_class": (0.0, 1.0),
    "multiple_objects": (0.0, 1.0),
    "human_action": (0.0, 1.0),
    "color": (0.0, 1.0),
    "spatial_relationship": (0.0, 1.0),
    "scene": (0.0, 0.8222),
    "appearance_style": (0.0009, 0.2855),
    "temporal_style": (0.0, 0.364),
    "overall_consistency": (0.0, 0.364),
}
VBENCH_DIMENSIONS = tuple(VBENCH_NORMALIZATION)
VBENCH_QUALITY = (
    "subject_consistency",
    "background_consistency",
    "temporal_flickering",
    "motion_smoothness",
    "aesthetic_quality",
    "imaging_quality",
    "dynamic_degree",
)
VBENCH_SEMANTIC = (
    "object_class",
    "multiple_objects",
    "human_action",
    "color",
    "spatial_relationship",
    "scene",
    "appearance_style",
    "temporal_style",
    "overall_consistency",
)
VBENCH_WEIGHTS = {"dynamic_degree": 0.5}  # every other dimension weighs 1
VBENCH_QUALITY_WEIGHT, VBENCH_SEMANTIC_WEIGHT = 4, 1
VBENCH_RESULTS_SUFFIX = "_eval_results.json"
VBENCH_INSTALL = (
    "VBench is not installed ({reason}): pip install vbench, plus detectron2 for the object, colour and spatial "
    "dimensions (pip install 'git+https://github.com/facebookresearch/detectron2.git'); VBench keeps its model "
    "weights in ~/.cache/vbench (or $VBENCH_CACHE_DIR), see https://github.com/Vchitect/VBench#installation"
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    paired = parser.add_argument_group("paired videos", "PSNR, SSIM and LPIPS against the full-compute videos")
    paired.add_argument("--reference-dir", default=None, help="full-compute videos (.mp4)")
    paired.add_argument(
        "--candidate-dir", default=None, nargs="+", help="accelerated videos, same file names; one table row each"
    )
    paired.add_argument(
        "--lpips-weights",
        default=None,
        help=f"torchvision backbone weights for LPIPS, which must load (default: ${LPIPS_WEIGHTS_ENV}, else "
        "pretrained_models/, else LPIPS is null)",
    )
    paired.add_argument("--lpips-net", choices=list(LPIPS_NETS), help="LPIPS backbone (default: alex)")
    paired.add_argument(
        "--batch-size", type=int_range(1), help=f"frame pairs per metric batch (default: {DEFAULT_BATCH_SIZE})"
    )
    vbench = parser.add_argument_group("VBench", "the vbench package on one folder, and the paper's aggregation")
    vbench.add_argument("--vbench", default=None, metavar="VIDEO_DIR", help="run VBench on this folder of videos")
    vbench.add_argument("--vbench-info", default=None, help="VBench's full-info JSON (prompt_en, dimension)")
    vbench.add_argument(
        "--dimensions",
        nargs="+",
        choices=VBENCH_DIMENSIONS,
        metavar="DIM",
        help=f"VBench dimensions, among {', '.join(VBENCH_DIMENSIONS)} (default: all 16)",
    )
    vbench.add_argument(
        "--vbench-output", default=None, help="folder for VBench's own files (default: <VIDEO_DIR>-vbench)"
    )
    vbench.add_argument(
        "--vbench-local-checkpoints",
        action=argparse.BooleanOptionalAction,
        help="VBench's local=True: read its models from its default local paths (default: off)",
    )
    vbench.add_argument(
        "--vbench-results",
        default=None,
        nargs="+",
        help="aggregate these *_eval_results.json files (or folders of them) without running VBench",
    )
    parser.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda[:i] for the metrics"
    )
    parser.add_argument(
        "--output", default=None, help="metrics .json, with a .md table beside it (default: next to the videos)"
    )
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="show progress bars")
    return parser


def aggregate_vbench(scores: Mapping[str, float]) -> dict:
    """VBench's quality, semantic and total scores from raw per-dimension scores (fractions, as VBench reports them).

    Keys are VBench dimension names ("subject_consistency"; "subject consistency" is accepted too). Each score is
    min-max normalised with VBench's constants; quality is the weighted mean of the normalised quality dimensions
    (dynamic degree weighs 0.5, the others 1), semantic the mean of the semantic dimensions, and total
    ``(4 quality + semantic) / 5``. A group with a missing dimension has no score (None; VBench's own script would
    count it as 0), and neither has the total. Returns ``scores``, ``normalized``, ``quality_score``,
    ``semantic_score``, ``total_score`` (fractions; the paper reports total x 100) and ``missing``.
    """
    raw: dict[str, float] = {}
    for name, value in scores.items():
        key = name.replace(" ", "_")
        if key not in VBENCH_NORMALIZATION:
            raise ValueError(f"unknown VBench dimension '{name}'; known: {', '.join(VBENCH_DIMENSIONS)}")
        raw[key] = float(value)
    normalized = {
        key: (value - VBENCH_NORMALIZATION[key][0]) / (VBENCH_NORMALIZATION[key][1] - VBENCH_NORMALIZATION[key][0])
        for key, value in raw.items()
    }

    def group_score(group: Sequence[str]) -> float | None:
        if any(key not in normalized for key in group):
            return None
        weights = [VBENCH_WEIGHTS.get(key, 1.0) for key in group]
        return sum(w * normalized[key] for w, key in zip(weights, group, strict=True)) / sum(weights)

    quality, semantic = group_score(VBENCH_QUALITY), group_score(VBENCH_SEMANTIC)
    total = None
    if quality is not None and semantic is not None:
        total = (VBENCH_QUALITY_WEIGHT * quality + VBENCH_SEMANTIC_WEIGHT * semantic) / (
            VBENCH_QUALITY_WEIGHT + VBENCH_SEMANTIC_WEIGHT
        )
    return {
        "scores": {key: raw[key] for key in VBENCH_DIMENSIONS if key in raw},
        "normalized": {key: normalized[key] for key in VBENCH_DIMENSIONS if key in normalized},
        "quality_score": quality,
        "semantic_score": semantic,
        "total_score": total,
        "missing": [key for key in VBENCH_DIMENSIONS if key not in raw],
    }


def read_vbench_results(paths: Sequence[str | Path]) -> tuple[dict[str, float], list[str]]:
    """Raw per-dimension scores from VBench's ``*_eval_results.json`` files (``{dimension: [score, per-video]}``),
    given as files or folders holding them; returns the scores and the files read. A dimension found in two files
    with different scores is an UsageError."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(path.glob(f"*{VBENCH_RESULTS_SUFFIX}"))
            if not found:
                raise UsageError(f"no *{VBENCH_RESULTS_SUFFIX} files in {path.absolute()}")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise UsageError(f"VBench results not found: {path.absolute()}")
    scores: dict[str, float] = {}
    origin: dict[str, Path] = {}
    for file in files:
        try:
            content = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise UsageError(f"cannot read VBench results {file}: {exc}") from exc
        if not isinstance(content, dict):
            raise UsageError(f"{file}: expected VBench's {{dimension: [score, per-video results]}} object")
        for dimension, value in content.items():
            score = value[0] if isinstance(value, list) and value else value
            if not isinstance(score, int | float) or not math.isfinite(score):
                raise UsageError(f"{file}: no finite score for dimension '{dimension}' (got {str(value)[:40]})")
            if dimension in scores and scores[dimension] != score:
                raise UsageError(
                    f"dimension '{dimension}' scores {scores[dimension]} in {origin[dimension]} but {score} in {file}"
                )
            scores[dimension], origin[dimension] = float(score), file
    return scores, [str(file) for file in files]


def check_videos_decode(folder: Path, progress: bool) -> int:
    """Decode every video of ``folder`` once (VBench would fail on a damaged one hours in); returns how many."""
    videos = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
    if not videos:
        raise UsageError(f"--vbench {folder.absolute()} holds no .mp4 videos: pass the --save-path of sample_video.py")
    for path in tqdm(videos, desc="checking videos", unit="video", disable=not progress):
        reason = verify_video(path)
        if reason is not None:
            raise UsageError(f"video {path} {reason}: regenerate it (sample_video.py remakes damaged videos)")
    return len(videos)


def run_vbench(
    videos: Path, info: Path, dimensions: Sequence[str], output_dir: Path, device: torch.device, local: bool
) -> Path:
    """Run VBench's standard evaluation of ``dimensions`` on ``videos``; returns the results JSON it wrote."""
    try:
        from vbench import VBench
    except ImportError as exc:
        raise UsageError(VBENCH_INSTALL.format(reason=exc)) from exc
    name = videos.name
    VBench(device, str(info), str(output_dir)).evaluate(
        videos_path=str(videos),
        name=name,
        dimension_list=list(dimensions),
        local=local,
        mode="vbench_standard",
        # VBench's own evaluate.py default, as the reference's calc_vbench.py passes it.
        imaging_quality_preprocessing_mode="longer",
    )
    return output_dir / f"{name}{VBENCH_RESULTS_SUFFIX}"


def vbench_table(record: dict) -> str:
    groups = {**dict.fromkeys(VBENCH_QUALITY, "quality"), **dict.fromkeys(VBENCH_SEMANTIC, "semantic")}
    rows = [
        [name, groups[name], format_value(100 * raw, 2), format_value(100 * record["normalized"][name], 2)]
        for name, raw in record["scores"].items()
    ]
    for key in ("quality_score", "semantic_score", "total_score"):
        value = record[key]
        rows.append([f"**{key.replace('_', ' ')}**", "", "", format_value(None if value is None else 100 * value, 2)])
    return markdown_table(["dimension", "group", "raw (%)", "normalized (%)"], rows)


def read_frames(path: Path) -> np.ndarray:
    """All frames of ``path``; a file that does not decode is one :class:`UsageError` naming it."""
    try:
        return read_video(path)
    except VideoDecodeError as exc:
        raise UsageError(f"video {path} {exc.reason}: regenerate it (sample_video.py remakes damaged videos)") from None
    except OSError as exc:
        raise UsageError(f"cannot read video {path}: {exc.strerror or exc}") from None


def evaluate_pairs(args: argparse.Namespace, device: torch.device) -> tuple[dict, str]:
    reference_dir = existing_dir(args.reference_dir, "reference")
    candidate_dirs = [existing_dir(folder, "candidate") for folder in args.candidate_dir]
    pairings = []
    for folder in candidate_dirs:
        pairs = pair_files(reference_dir, folder, VIDEO_SUFFIXES)
        if not pairs.names:
            raise UsageError(
                f"no video pairs: {folder} and {reference_dir} share no file name "
                f"({len(pairs.only_candidate)} vs {len(pairs.only_reference)} videos)"
            )
        pairings.append(pairs)
    lpips_model = load_lpips_or_warn(args.lpips_weights, args.lpips_net, device)
    metrics = PairedImageMetrics(lpips_model, device)
    for folder, pairs in zip(candidate_dirs, pairings, strict=True):
        for side, names in (("reference", pairs.only_reference), ("candidate", pairs.only_candidate)):
            if names:
                warn(f"{folder}: {len(names)} video(s) only in the {side} folder, not scored: {truncated_list(names)}")
    # Files are the outer loop: each reference video is decoded once and compared with every candidate that has it;
    # one reference and one candidate video are in memory at a time.
    names = sorted({name for pairs in pairings for name in pairs.names})
    paired_names = [set(pairs.names) for pairs in pairings]
    videos: list[list[dict]] = [[] for _ in candidate_dirs]
    for name in tqdm(names, desc=reference_dir.name, unit="video", disable=not args.progress):
        reference = read_frames(reference_dir / name)
        for folder, wanted, per_video in zip(candidate_dirs, paired_names, videos, strict=True):
            if name not in wanted:
                continue
            candidate = read_frames(folder / name)
            try:
                values = video_metrics(reference, candidate, metrics, args.batch_size)
            except ValueError as exc:
                raise UsageError(f"{name} in {folder} vs {reference_dir}: {exc}") from exc
            per_video.append({"file": name, **values, **({"lpips": None} if lpips_model is None else {})})
    candidates = []
    for folder, pairs, per_video in zip(candidate_dirs, pairings, videos, strict=True):
        candidates.append(
            {
                "candidate_dir": str(folder),
                "num_pairs": len(per_video),
                "num_frames": sum(video["num_frames"] for video in per_video),
                **{key: mean_or_none(video[key] for video in per_video) for key in PAIRED_METRICS},
                "only_in_reference": pairs.only_reference,
                "only_in_candidate": pairs.only_candidate,
                "per_video": per_video,
            }
        )
    record = {
        "reference_dir": str(reference_dir),
        "averaging": "frame-wise over all frames, averaged per video, then over videos",
        "settings": {"lpips_net": args.lpips_net if lpips_model is not None else None, "psnr_cap_db": PSNR_CAP_DB},
        "candidates": candidates,
    }
    columns = (("psnr", "PSNR ↑", 3), ("ssim", "SSIM ↑", 4), ("lpips", "LPIPS ↓", 4))
    rows = [
        [Path(c["candidate_dir"]).name, str(c["num_pairs"]), str(c["num_frames"])]
        + [format_value(c[key], digits) for key, _, digits in columns]
        for c in candidates
    ]
    return record, markdown_table(["run", "videos", "frames", *(title for _, title, _ in columns)], rows)


def evaluate_vbench(args: argparse.Namespace, device: torch.device) -> tuple[dict, str]:
    if args.vbench_results:
        scores, files = read_vbench_results(args.vbench_results)
        videos = None
    else:
        videos = existing_dir(args.vbench, "video")
        if not args.vbench_info:
            raise UsageError("--vbench needs --vbench-info, VBench's full-info JSON (e.g. VBench_full_info.json)")
        info = Path(args.vbench_info).expanduser()
        read_vbench_info(info, "--vbench-info", need_dimensions=True)
        output_dir = Path(args.vbench_output or videos.parent / f"{videos.name}-vbench").expanduser()
        check_output_folder(output_dir, "--vbench-output")
        check_videos_decode(videos, args.progress)
        results = run_vbench(videos, info, args.dimensions, output_dir, device, args.vbench_local_checkpoints)
        scores, files = read_vbench_results([results])
    try:
        aggregated = aggregate_vbench(scores)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    if aggregated["missing"]:
        warn(f"VBench dimensions missing, their group scores are null: {', '.join(aggregated['missing'])}")
    record = {"videos": None if videos is None else str(videos), "results_files": files, **aggregated}
    return record, vbench_table(record)


def default_output(args: argparse.Namespace) -> Path:
    """Next to the inputs: ``<candidate>-quality.json``, ``<videos>-vbench.json`` or ``vbench-scores.json`` beside
    the first results path."""
    if args.vbench_results:
        first = Path(args.vbench_results[0]).expanduser()
        return (first if first.is_dir() else first.parent) / "vbench-scores.json"
    folder = Path(args.vbench or args.candidate_dir[0]).expanduser()
    return folder.parent / f"{folder.name}-{'vbench' if args.vbench else 'quality'}.json"


# Flags that only one mode reads: given in another mode they would be ignored without a word.
MODE_FLAGS = {
    "paired": {"lpips_weights": "--lpips-weights", "lpips_net": "--lpips-net", "batch_size": "--batch-size"},
    "vbench": {
        "vbench_info": "--vbench-info",
        "dimensions": "--dimensions",
        "vbench_output": "--vbench-output",
        "vbench_local_checkpoints": "--vbench-local-checkpoints",
    },
}
MODE_NAMES = {"paired": "--reference-dir/--candidate-dir", "vbench": "--vbench", "results": "--vbench-results"}


def check_mode(args: argparse.Namespace) -> str:
    """The one mode chosen ("paired", "vbench" or "results"), its flags' defaults filled in; a flag of another
    mode, or no mode or two, is a :class:`UsageError`."""
    chosen = [
        mode
        for mode, given in (
            ("paired", args.reference_dir or args.candidate_dir),
            ("vbench", args.vbench),
            ("results", args.vbench_results),
        )
        if given
    ]
    if len(chosen) != 1:
        raise UsageError("choose one mode: --reference-dir with --candidate-dir, --vbench, or --vbench-results")
    mode = chosen[0]
    if mode == "paired" and not (args.reference_dir and args.candidate_dir):
        raise UsageError("paired mode needs both --reference-dir and --candidate-dir")
    for owner, flags in MODE_FLAGS.items():
        for name, flag in flags.items():
            if owner != mode and getattr(args, name) is not None:
                raise UsageError(f"{flag} is for {MODE_NAMES[owner]} mode, not {MODE_NAMES[mode]}: drop {flag}")
    args.lpips_net = args.lpips_net or "alex"
    args.batch_size = args.batch_size or DEFAULT_BATCH_SIZE
    args.dimensions = args.dimensions or list(VBENCH_DIMENSIONS)
    args.vbench_local_checkpoints = bool(args.vbench_local_checkpoints)
    return mode


def main(args: argparse.Namespace) -> dict:
    """Check the mode, the device and the output path (before any video is read), then evaluate and save."""
    mode = check_mode(args)
    device = resolve_device(args.device)
    output = check_output_file(args.output or default_output(args), "--output", REPORT_SUFFIXES)
    record, markdown = evaluate_pairs(args, device) if mode == "paired" else evaluate_vbench(args, device)
    save_report(output, record, markdown)
    return record


def cli(argv: Sequence[str] | None = None) -> dict:
    """The command line: parse ``argv`` (default: ``sys.argv``) and run; bad input exits 2 with one ``error:`` line
    (whitespace collapsed, so that a message is one line)."""
    arguments = build_parser().parse_args(argv)
    try:
        return main(arguments)
    except (ValueError, CheckpointError) as err:  # UsageError included, and the metric helpers' ValueErrors
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    cli()
