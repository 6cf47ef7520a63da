"""Quality of accelerated FLUX images against the full-compute images of the same prompts and seeds (paper Table 1).

    python TaylorSeer-FLUX/evaluate.py --reference-dir samples/flux-full \\
        --candidate-dir samples/flux-taylorseer-n3o2 samples/flux-taylorseer-n6o2 \\
        --clip-model pretrained_models/clip-vit-large-patch14 \\
        --image-reward pretrained_models/ImageReward/ImageReward.pt

Images are paired by file name (``sample.py`` writes ``{index:05d}.png`` and a ``metadata.jsonl`` with one
``{"index", "prompt", ...}`` object per line). Each candidate folder gets PSNR, SSIM and LPIPS against the reference
(per pair, then averaged), and the candidate's and the reference's ImageReward and CLIP score over the same pairs.
Prompts come from the folders' ``metadata.jsonl``, or from ``--prompt-file`` (one per line); as in ``sample.py``, image
k belongs to prompt line ``k // --num-images-per-prompt``. Each reference image is decoded and scored once, whatever
the number of candidate folders.

Every model is read from local files only, never downloaded. One that is named (by its flag or environment variable)
must load, else the run ends in one error; one that is not named and not at its default place is reported once and
its metric is null while the others run:

* LPIPS: torchvision's AlexNet weights ``alexnet-owt-7be5be79.pth`` (--lpips-weights, $TAYLORSEER_LPIPS_WEIGHTS,
  ``pretrained_models/`` or the torch hub cache); torchmetrics ships LPIPS' own linear layers.
* CLIP score: a local ``openai/clip-vit-large-patch14`` folder (--clip-model, $TAYLORSEER_CLIP_MODEL,
  ``pretrained_models/clip-vit-large-patch14``).
* ImageReward: the ``image-reward`` package (``pip install image-reward``), its ``ImageReward.pt`` and
  ``med_config.json`` (--image-reward, $TAYLORSEER_IMAGE_REWARD, ``pretrained_models/ImageReward/``), and the
  ``bert-base-uncased`` tokenizer in the Hugging Face cache.

Writes the metrics as JSON (per image and averaged) and the table as markdown next to it, and prints the table.
Bad input (a missing folder, no pairs, a size mismatch, an image that does not decode, disagreeing prompts, an
output path that cannot be written) ends in one ``error:`` line, exit code 2, before any metric runs.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from common.checkpoint import CheckpointError, read_state_dict, truncated_list
from common.cli import HelpFormatter, UsageError, check_output_file, existing_dir, int_range, run_cli, warn
from common.quality_metrics import (
    CLIP_MODEL_ENV,
    LPIPS_NETS,
    LPIPS_WEIGHTS_ENV,
    PSNR_CAP_DB,
    ClipScorer,
    FilePairs,
    PairedImageMetrics,
    format_value,
    load_lpips_or_warn,
    markdown_table,
    mean_or_none,
    pair_files,
    resolve_clip_model,
    resolve_device,
    save_report,
)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
METADATA_FILE = "metadata.jsonl"
IMAGE_REWARD_ENV = "TAYLORSEER_IMAGE_REWARD"
DEFAULT_IMAGE_REWARD = Path("pretrained_models") / "ImageReward" / "ImageReward.pt"
IMAGE_REWARD_URL = "https://huggingface.co/THUDM/ImageReward/resolve/main/ImageReward.pt"
MED_CONFIG_URL = "https://huggingface.co/THUDM/ImageReward/resolve/main/med_config.json"
# Per-image values -> table columns, with the paper's number of decimals; "reference_*" are the reference's scores.
TABLE_COLUMNS = (
    ("image_reward", "ImageReward ↑", 4),
    ("clip_score", "CLIP ↑", 3),
    ("psnr", "PSNR ↑", 3),
    ("ssim", "SSIM ↑", 4),
    ("lpips", "LPIPS ↓", 4),
)
PER_IMAGE_KEYS = (
    "psnr",
    "ssim",
    "lpips",
    "clip_score",
    "reference_clip_score",
    "image_reward",
    "reference_image_reward",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--reference-dir", required=True, help="full-compute images ({index:05d}.png)")
    parser.add_argument(
        "--candidate-dir", required=True, nargs="+", help="accelerated images, same file names; one table row each"
    )
    parser.add_argument(
        "--prompt-file",
        default=None,
        help="one prompt per line; image {k:05d}.png has line k // --num-images-per-prompt (default: the folders' "
        "metadata.jsonl)",
    )
    parser.add_argument(
        "--num-images-per-prompt",
        type=int_range(1),
        default=1,
        help="images per line of --prompt-file, as sample.py's flag of the same name numbered them",
    )
    parser.add_argument(
        "--clip-model", default=None, help=f"local CLIP folder (default: ${CLIP_MODEL_ENV}, else pretrained_models/)"
    )
    parser.add_argument(
        "--image-reward",
        default=None,
        help=f"ImageReward.pt of the image-reward package (default: ${IMAGE_REWARD_ENV}, else {DEFAULT_IMAGE_REWARD})",
    )
    parser.add_argument(
        "--image-reward-med-config", default=None, help="ImageReward's med_config.json (default: next to the .pt)"
    )
    parser.add_argument(
        "--lpips-weights",
        default=None,
        help=f"torchvision backbone weights for LPIPS (default: ${LPIPS_WEIGHTS_ENV}, else pretrained_models/)",
    )
    parser.add_argument("--lpips-net", choices=list(LPIPS_NETS), default="alex", help="LPIPS backbone")
    parser.add_argument("--batch-size", type=int_range(1), default=8, help="image pairs per metric batch")
    parser.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda[:i] for the metrics"
    )
    parser.add_argument(
        "--output", default=None, help="metrics JSON, with a .md table beside it (default: <candidate>-quality.json)"
    )
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="show progress bars")
    return parser


def image_name(index: int) -> str:
    """The file name ``sample.py`` gives image ``index``."""
    return f"{index:05d}.png"


def read_prompt_file(path: str | Path, num_images_per_prompt: int = 1) -> dict[str, str]:
    """Image file name -> prompt from the non-empty lines of a prompt file. ``sample.py`` numbers image
    ``k = i * num_images_per_prompt + j`` for line i and j < num_images_per_prompt, so image k has line
    ``k // num_images_per_prompt``."""
    if num_images_per_prompt < 1:
        raise UsageError(f"--num-images-per-prompt must be >= 1, got {num_images_per_prompt}")
    path = Path(path).expanduser()
    if not path.is_file():
        raise UsageError(
            f"--prompt-file {path.absolute()} not found (or not a file): pass a text file, one prompt a line"
        )
    prompts = [line.strip() for line in read_text(path, "--prompt-file").splitlines() if line.strip()]
    if not prompts:
        raise UsageError(f"--prompt-file {path.absolute()} holds no prompts: write one prompt per line")
    n = num_images_per_prompt
    return {image_name(i * n + j): prompt for i, prompt in enumerate(prompts) for j in range(n)}


def read_text(path: Path, what: str) -> str:
    """A UTF-8 text file's content; a file that is not UTF-8 or cannot be read is a :class:`UsageError` naming it."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(
            f"{what} {path.absolute()} is not UTF-8 text ({exc.reason} at byte {exc.start}): save it as UTF-8"
        ) from None
    except OSError as exc:
        raise UsageError(f"{what} {path.absolute()} cannot be read ({exc.strerror}): check its permissions") from None


def read_metadata(path: Path) -> dict[str, tuple[str, object]]:
    """``metadata.jsonl``: one JSON object per line with at least ``index`` and ``prompt`` (``file`` and ``seed`` when
    ``sample.py`` wrote it); returns file name -> (prompt, seed or None)."""
    entries: dict[str, tuple[str, object]] = {}
    for number, line in enumerate(read_text(path, "records file").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UsageError(
                f"{path}:{number}: not JSON ({exc.msg}); fix or delete that line, or pass --prompt-file"
            ) from exc
        if not isinstance(entry, dict) or not isinstance(entry.get("index"), int) or "prompt" not in entry:
            raise UsageError(
                f"{path}:{number}: expected an object with an integer 'index' and a 'prompt'; fix or delete that "
                "line, or pass --prompt-file"
            )
        name = str(entry.get("file") or image_name(entry["index"]))
        entries[name] = (str(entry["prompt"]), entry.get("seed"))
    return entries


def collect_prompts(
    prompt_file: str | None, folders: Sequence[Path], num_images_per_prompt: int = 1
) -> tuple[dict[str, str] | None, str | None]:
    """File name -> prompt, and where it came from: ``prompt_file`` (``num_images_per_prompt`` images per line), else
    every folder's ``metadata.jsonl``. These must agree on the prompt and seed of the images they share, else the runs
    are not comparable pair by pair. None if there is no source."""
    if prompt_file:
        return read_prompt_file(prompt_file, num_images_per_prompt), str(prompt_file)
    sources = [folder / METADATA_FILE for folder in folders if (folder / METADATA_FILE).is_file()]
    if not sources:
        return None, None
    first: dict[str, tuple[str, object, Path]] = {}
    for source in sources:
        for name, (prompt, seed) in read_metadata(source).items():
            prompt0, seed0, source0 = first.setdefault(name, (prompt, seed, source))
            if prompt != prompt0:
                raise UsageError(f"{name} has different prompts in {source0} and {source}: runs are not comparable")
            if seed is not None and seed0 is not None and seed != seed0:
                raise UsageError(
                    f"{name} has seed {seed0} in {source0} but {seed} in {source}: pairs must share prompt and seed"
                )
    return {name: prompt for name, (prompt, _, _) in first.items()}, ", ".join(map(str, sources))


def unreadable_image(path: Path, exc: Exception) -> UsageError:
    return UsageError(
        f"cannot read image {path}: {exc}; it is damaged (a killed run?): rerun sample.py into its folder, which "
        "sets damaged PNGs aside and makes them again, or move the file out of the folder"
    )


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image file, decoded completely: a truncated file fails here, naming it, before any
    metric runs."""
    try:
        with Image.open(path) as image:
            image.load()
            return image.size
    except (OSError, SyntaxError, ValueError) as exc:
        raise unreadable_image(path, exc) from None


def load_image(path: Path) -> torch.Tensor:
    """An image file as uint8 (3, H, W) RGB."""
    try:
        with Image.open(path) as image:
            rgb = image.convert("RGB")
    except (OSError, SyntaxError, ValueError) as exc:
        raise unreadable_image(path, exc) from None
    return torch.from_numpy(np.asarray(rgb).copy()).permute(2, 0, 1)


def check_sizes(reference_sizes: dict[str, tuple[int, int]], candidate_dir: Path, names: Sequence[str]) -> None:
    """Each candidate image has the size of its reference image (read once from the headers, before any metric
    runs); a mismatch is an UsageError."""
    for name in names:
        reference, candidate = reference_sizes[name], image_size(candidate_dir / name)
        if reference != candidate:
            raise UsageError(
                f"{name}: reference is {reference[0]}x{reference[1]} but {candidate_dir} has {candidate[0]}x"
                f"{candidate[1]}; pairs must have the same size"
            )


def batches(names: Sequence[str], sizes: Sequence[tuple[int, int]], batch_size: int) -> Iterator[list[str]]:
    """Consecutive names, at most ``batch_size`` at a time and of one image size (batches are stacked)."""
    batch: list[str] = []
    batch_image_size = None
    for name, size in zip(names, sizes, strict=True):
        if batch and (len(batch) == batch_size or size != batch_image_size):
            yield batch
            batch = []
        batch.append(name)
        batch_image_size = size
    if batch:
        yield batch


@contextlib.contextmanager
def hub_offline() -> Iterator[None]:
    """Hugging Face Hub offline mode for the duration: ``from_pretrained`` calls inside a third-party package (BLIP's
    ``bert-base-uncased`` tokenizer in ImageReward) read the local cache and never download."""
    import huggingface_hub.constants as hub_constants

    saved_env, saved_flag = os.environ.get("HF_HUB_OFFLINE"), hub_constants.HF_HUB_OFFLINE
    os.environ["HF_HUB_OFFLINE"] = "1"
    hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hub_constants.HF_HUB_OFFLINE = saved_flag
        if saved_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = saved_env


class ImageRewardScorer:
    """ImageReward-v1.0 (Xu et al., NeurIPS 2023), the paper's human-preference score, from local files only.

    The ``image-reward`` package provides the model; it is built with ``med_config`` (BLIP's text-encoder config),
    given the weights of ``checkpoint`` and scores one (prompt, image) at a time, the image already decoded (the
    package takes a PIL image as well as a path), so no file is read twice.
    """

    def __init__(self, checkpoint: Path, med_config: Path, device: torch.device) -> None:
        try:
            module = importlib.import_module("ImageReward.ImageReward")
        except ImportError as exc:
            raise CheckpointError(
                f"ImageReward needs the image-reward package, which is not installed ({exc}): pip install image-reward"
            ) from exc
        for path, url in ((checkpoint, IMAGE_REWARD_URL), (med_config, MED_CONFIG_URL)):
            if not path.is_file():
                raise CheckpointError(
                    f"ImageReward: {path.absolute()} not found; download {url} there (or point "
                    f"--image-reward / ${IMAGE_REWARD_ENV} at ImageReward.pt, with med_config.json beside it)"
                )
        try:
            with hub_offline():
                model = module.ImageReward(med_config=str(med_config), device=device)
        except (OSError, ValueError) as exc:
            raise CheckpointError(
                f"ImageReward: its BLIP text encoder could not be built offline ({exc}); it needs the "
                "bert-base-uncased tokenizer in the Hugging Face cache (huggingface-cli download bert-base-uncased)"
            ) from exc
        result = model.load_state_dict(read_state_dict(checkpoint), strict=False)
        parameters = dict(model.named_parameters())
        missing = [key for key in result.missing_keys if key in parameters]
        if missing:
            raise CheckpointError(
                f"ImageReward: {checkpoint} lacks {len(missing)} of the model's parameters "
                f"(e.g. {missing[0]}); it is not ImageReward.pt"
            )
        self.model = model.to(device).eval()
        self.checkpoint = checkpoint

    def __call__(self, prompt: str, image: torch.Tensor) -> float:
        """The reward of one uint8 (3, H, W) RGB image, as :func:`load_image` returns it, for ``prompt``."""
        pil_image = Image.fromarray(image.permute(1, 2, 0).cpu().numpy())
        with torch.no_grad():
            return float(self.model.score(prompt, pil_image))


def load_image_reward(args: argparse.Namespace, device: torch.device) -> ImageRewardScorer | None:
    """ImageReward, or None with one warning when it was not named and is not at its default place. A checkpoint
    named by --image-reward or $TAYLORSEER_IMAGE_REWARD must load: a CheckpointError otherwise."""
    chosen = args.image_reward or os.environ.get(IMAGE_REWARD_ENV)
    checkpoint = Path(chosen or DEFAULT_IMAGE_REWARD).expanduser()
    if not chosen and not checkpoint.is_file():
        warn(
            f"ImageReward skipped (null): no --image-reward, ${IMAGE_REWARD_ENV} or {DEFAULT_IMAGE_REWARD}; it needs "
            f"pip install image-reward and {IMAGE_REWARD_URL} with {MED_CONFIG_URL} beside it"
        )
        return None
    med_config = Path(args.image_reward_med_config or checkpoint.with_name("med_config.json")).expanduser()
    try:
        return ImageRewardScorer(checkpoint, med_config, device)
    except CheckpointError as err:
        if chosen or args.image_reward_med_config:
            raise
        warn(f"ImageReward skipped (null): {err}")
        return None


def load_clip(args: argparse.Namespace, device: torch.device) -> ClipScorer | None:
    """The CLIP scorer, or None with one warning when no folder was named and the default one is missing. A folder
    named by --clip-model or $TAYLORSEER_CLIP_MODEL must load: a CheckpointError otherwise."""
    named = args.clip_model or os.environ.get(CLIP_MODEL_ENV)
    try:
        return ClipScorer(resolve_clip_model(args.clip_model), device)
    except CheckpointError as err:
        if named:
            raise
        warn(f"CLIP score skipped (null): {err}")
        return None


@dataclass
class Scorers:
    """Everything that scores images; text metrics are None when their model or the prompts are missing."""

    paired: PairedImageMetrics
    clip: ClipScorer | None
    image_reward: ImageRewardScorer | None
    prompts: dict[str, str] | None


def text_scores(scorers: Scorers, images: torch.Tensor, prompts: Sequence[str] | None) -> list[dict[str, float | None]]:
    """CLIP score and ImageReward of each image of a uint8 batch; None where the model or the prompts are missing."""
    none = [None] * len(images)
    clip = scorers.clip(images, prompts).tolist() if scorers.clip and prompts else none
    rewards = (
        [scorers.image_reward(prompt, image) for prompt, image in zip(prompts, images, strict=True)]
        if scorers.image_reward and prompts
        else none
    )
    return [{"clip_score": c, "image_reward": r} for c, r in zip(clip, rewards, strict=True)]


def score_runs(
    reference_dir: Path,
    candidate_dirs: Sequence[Path],
    pairings: Sequence[FilePairs],
    reference_sizes: dict[str, tuple[int, int]],
    scorers: Scorers,
    batch_size: int,
    progress: bool,
) -> tuple[dict[str, dict[str, float | None]], list[list[dict[str, object]]]]:
    """The reference's own scores per image, and the per-image records of every candidate folder.

    Files are the outer loop: a batch of reference images is decoded and text-scored once, then compared with the
    same files of every candidate that has them, so only one reference batch and one candidate batch are in memory.
    """
    names = sorted({name for pairs in pairings for name in pairs.names})
    paired_names = [set(pairs.names) for pairs in pairings]
    reference_scores: dict[str, dict[str, float | None]] = {}
    records: list[list[dict[str, object]]] = [[] for _ in candidate_dirs]
    with tqdm(total=len(names), desc=reference_dir.name, unit="img", disable=not progress) as bar:
        for batch in batches(names, [reference_sizes[name] for name in names], batch_size):
            reference = torch.stack([load_image(reference_dir / name) for name in batch])
            prompts = [scorers.prompts[name] for name in batch] if scorers.prompts is not None else None
            reference_scores.update(zip(batch, text_scores(scorers, reference, prompts), strict=True))
            for folder, wanted, out in zip(candidate_dirs, paired_names, records, strict=True):
                rows = [i for i, name in enumerate(batch) if name in wanted]
                if not rows:
                    continue
                candidate = torch.stack([load_image(folder / batch[i]) for i in rows])
                paired = scorers.paired(reference[rows], candidate)
                row_prompts = None if prompts is None else [prompts[i] for i in rows]
                for k, (i, scores) in enumerate(zip(rows, text_scores(scorers, candidate, row_prompts), strict=True)):
                    own = reference_scores[batch[i]]
                    out.append(
                        {
                            "file": batch[i],
                            **{metric: float(values[k]) for metric, values in paired.items()},
                            "clip_score": scores["clip_score"],
                            "reference_clip_score": own["clip_score"],
                            "image_reward": scores["image_reward"],
                            "reference_image_reward": own["image_reward"],
                        }
                    )
            bar.update(len(batch))
    return reference_scores, records


def summarize(records: Sequence[dict[str, object]]) -> dict[str, float | None]:
    """Means over the pairs of every per-image value (None for a metric that was not computed)."""
    return {key: mean_or_none(record.get(key) for record in records) for key in PER_IMAGE_KEYS}


def default_output(candidate_dir: str) -> Path:
    """``samples/run/`` -> ``samples/run-quality.json``."""
    path = Path(candidate_dir).expanduser()
    return path.parent / f"{path.name}-quality.json"


def table(record: dict) -> str:
    """The paper's layout: the reference's ImageReward and CLIP first, then one row per candidate."""
    reference = record["reference"]
    rows = [
        [f"reference: {Path(record['reference_dir']).name}", str(reference["num_images"])]
        + [format_value(reference.get(key), digits) for key, _, digits in TABLE_COLUMNS]
    ]
    for candidate in record["candidates"]:
        name = Path(candidate["candidate_dir"]).name
        rows.append(
            [name, str(candidate["num_pairs"])] + [format_value(candidate[key], d) for key, _, d in TABLE_COLUMNS]
        )
    return markdown_table(["run", "pairs", *(title for _, title, _ in TABLE_COLUMNS)], rows)


def check_output(args: argparse.Namespace) -> Path:
    """The metrics JSON path, checked writable (with its .md beside it) before any metric runs."""
    output = check_output_file(args.output or default_output(args.candidate_dir[0]), "--output", (".json",))
    markdown = output.with_suffix(".md")
    if markdown.is_dir():
        raise UsageError(f"--output {output}: the table's path {markdown} is a folder; choose another --output")
    return output


def main(args: argparse.Namespace) -> dict:
    """Check every input and the output path, then score; returns the record written as JSON."""
    reference_dir = existing_dir(args.reference_dir, "--reference-dir: reference")
    candidate_dirs = [existing_dir(folder, "--candidate-dir: candidate") for folder in args.candidate_dir]
    device = resolve_device(args.device)
    output = check_output(args)
    pairings = []
    for folder in candidate_dirs:
        pairs = pair_files(reference_dir, folder, IMAGE_SUFFIXES)
        if not pairs.names:
            raise UsageError(
                f"no image pairs: {folder} and {reference_dir} share no file name "
                f"({len(pairs.only_candidate)} vs {len(pairs.only_reference)} images)"
            )
        pairings.append(pairs)
    # Checked before any model is loaded, so that bad input fails in seconds.
    paired = sorted({name for pairs in pairings for name in pairs.names})
    reference_sizes = {name: image_size(reference_dir / name) for name in paired}
    for folder, pairs in zip(candidate_dirs, pairings, strict=True):
        check_sizes(reference_sizes, folder, pairs.names)
    prompts, prompt_source = collect_prompts(
        args.prompt_file, [reference_dir, *candidate_dirs], args.num_images_per_prompt
    )

    unprompted = sorted(set(paired) - set(prompts or ()))
    clip = image_reward = None
    if prompts is None:
        warn(f"CLIP score and ImageReward skipped (null): no --prompt-file and no {METADATA_FILE} in the folders")
    elif unprompted:
        hint = (
            f" (line k // {args.num_images_per_prompt} of --prompt-file is the prompt of image k: is "
            "--num-images-per-prompt the one sample.py used?)"
            if args.prompt_file
            else ""
        )
        warn(f"CLIP score and ImageReward skipped (null): no prompt for {truncated_list(unprompted)}{hint}")
        prompts = None
    else:
        clip, image_reward = load_clip(args, device), load_image_reward(args, device)
    lpips_model = load_lpips_or_warn(args.lpips_weights, args.lpips_net, device)
    scorers = Scorers(PairedImageMetrics(lpips_model, device), clip, image_reward, prompts)

    for folder, pairs in zip(candidate_dirs, pairings, strict=True):
        for side, names in (("reference", pairs.only_reference), ("candidate", pairs.only_candidate)):
            if names:
                warn(f"{folder}: {len(names)} image(s) only in the {side} folder, not scored: {truncated_list(names)}")
    reference_scores, per_candidate = score_runs(
        reference_dir, candidate_dirs, pairings, reference_sizes, scorers, args.batch_size, args.progress
    )
    candidates = []
    for folder, pairs, records in zip(candidate_dirs, pairings, per_candidate, strict=True):
        candidates.append(
            {
                "candidate_dir": str(folder),
                "num_pairs": len(records),
                **summarize(records),
                "only_in_reference": pairs.only_reference,
                "only_in_candidate": pairs.only_candidate,
                "per_image": records,
            }
        )
    record = {
        "reference_dir": str(reference_dir),
        "prompts": prompt_source,
        "settings": {
            "lpips_net": args.lpips_net if scorers.paired.lpips_model is not None else None,
            "clip_model": str(clip.model_dir) if clip else None,
            "image_reward": str(image_reward.checkpoint) if image_reward else None,
            "psnr_cap_db": PSNR_CAP_DB,
        },
        "reference": {
            "num_images": len(reference_scores),
            "clip_score": mean_or_none(values["clip_score"] for values in reference_scores.values()),
            "image_reward": mean_or_none(values["image_reward"] for values in reference_scores.values()),
        },
        "candidates": candidates,
    }
    save_report(output, record, table(record))
    return record


def cli(argv: Sequence[str] | None = None) -> dict:
    """Parse and run; bad input ends in one ``error:`` line and exit code 2 (ValueError included: a size mismatch
    or a NaN that save_report refuses)."""
    return run_cli(main, build_parser().parse_args(argv), catch=(ValueError,))


if __name__ == "__main__":
    cli()
