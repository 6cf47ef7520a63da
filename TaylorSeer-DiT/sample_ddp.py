"""Sample many class-conditional images with DiT and a caching method (TaylorSeer by default) on one or more
processes, packed for FID evaluation.

    torchrun --nproc_per_node=8 TaylorSeer-DiT/sample_ddp.py --model DiT-XL/2 --image-size 256 \\
        --ddim-sample --num-sampling-steps 50 --interval 5 --max-order 3 --num-fid-samples 50000
    python TaylorSeer-DiT/sample_ddp.py --num-fid-samples 1000       # one process, the bundled digits model
    python TaylorSeer-DiT/sample_ddp.py --num-fid-samples 1000 --method toca --fresh-ratio 0.2

Every sample index i has its own seed, drawn from (--global-seed, i): its class label, its initial noise and, for DDPM,
its per-step noise. Indices are sampled in fixed global batches of --per-proc-batch-size consecutive indices, batch j on
rank j % K, so the images are bit-identical whatever the number of processes K. Each image is written atomically as
{sample-dir}/{name}/{i:06d}.png, where {name} holds every setting that changes the images, the caching method and its
settings included, and a fingerprint of the weights' content (every train.py checkpoint is called last.pt), so that
two methods never share a folder. {name}/metadata.jsonl records each PNG's settings (``method``: the method and its
settings, None for the plain model however asked: --method full, or --interval 1), weights fingerprint and, once
written, its SHA-256. Records written before --method existed (TaylorSeer's settings as top-level keys) are read as
today's, so that such a folder resumes.

Rerunning the same command after an interruption samples only the batches with missing PNGs. A folder whose records
name other settings or weights is refused; a PNG whose bytes differ from its recorded checksum (truncated, swapped), or
that has none and does not decode at the right size, is set aside as {i:06d}.png.damaged and sampled again. At the end
rank 0 packs the verified PNGs into {sample-dir}/{name}.npz (arr_0: (N, H, W, 3) uint8, the input of the ADM /
guided-diffusion FID evaluator) and writes the settings and each rank's
timings to {sample-dir}/{name}.json. Samples that hold NaN or inf end the run with one error before they are written.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image
from tqdm import tqdm

from common.caching import CacheMethod
from common.cli import (
    MAX_SEED,
    HelpFormatter,
    UsageError,
    check_output_folder,
    int_range,
    run_cli,
)
from common.distributed import Distributed, setup_distributed
from common.images import to_uint8
from common.integrity import check_finite, verify_png
from common.io import atomic_write, remove_stale_temps
from common.methods import MethodConfig, make_cache, method_record
from common.run_records import (
    CHECKSUM,
    RECORDS_FILE,
    check_consistent,
    damaged_outputs,
    read_records,
    record_written,
    set_aside_damaged,
    sync_records,
)
from common.taylor_cache import TaylorSeerConfig
from taylorseer_dit.checkpoints import find_dit_checkpoint
from taylorseer_dit.defaults import BUNDLED_MODEL
from taylorseer_dit.diffusion import GaussianDiffusion, create_diffusion
from taylorseer_dit.models import DiT
from taylorseer_dit.pipeline import SamplingResult, decode_latents, sample_dit
from taylorseer_dit.sampling_args import (
    NAN_SUSPECTS,
    add_model_args,
    check_device,
    check_model_args,
    load_model_and_vae,
    warn_about_teacache_fit,
    weights_id,
)

if TYPE_CHECKING:
    from diffusers import AutoencoderKL

# PNG names have six digits, so that a plain sort of the folder is the index order.
MAX_FID_SAMPLES = 1_000_000
# Larger batches only run out of memory; upstream DiT uses 32 per GPU.
MAX_BATCH_SIZE = 4096
# Characters of the weights fingerprint in the folder name: enough to tell checkpoints apart, short enough to read.
FOLDER_ID_CHARS = 8
# Record keys that are information, not settings: moving the weights or the VAE folder changes no image.
UNCOMPARED_FIELDS = ("ckpt", "vae_path")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_model_args(parser)
    parser.add_argument("--sample-dir", default="samples", help="parent folder of the run's PNG folder, .npz and .json")
    parser.add_argument(
        "--per-proc-batch-size",
        type=int_range(1, MAX_BATCH_SIZE),
        default=32,
        help="images per forward batch per process",
    )
    parser.add_argument(
        "--num-fid-samples", type=int_range(1, MAX_FID_SAMPLES), default=50000, help="number of images to sample"
    )
    parser.add_argument(
        "--global-seed",
        type=int_range(0, MAX_SEED),
        default=0,
        help="seed that, with its index, seeds every sample",
    )
    parser.add_argument(
        "--tf32",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="allow TF32 matmuls and convolutions on Ampere+ GPUs (faster, slightly less precise)",
    )
    parser.add_argument(
        "--device", default=None, help="torch device; None = cuda:LOCAL_RANK if CUDA is available, else cpu"
    )
    return parser


def check_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> MethodConfig:
    """Fill the per-model defaults, then exit through ``parser.error`` on any invalid flag."""
    config = check_model_args(args, parser)
    if args.vae == "none" and args.in_channels not in (1, 3):
        parser.error(
            f"--vae none writes the model output as the image: --in-channels must be 1 or 3, got {args.in_channels}"
        )
    check_device(args, parser)
    return config


def folder_name(args: argparse.Namespace, config: MethodConfig, weights: str) -> str:
    """Name of the run's folder: every setting that changes the images, so that a rerun resumes only its own run.

    ``weights`` is the weights' content fingerprint: every train.py checkpoint is called last.pt, so the file name
    alone would put two models' images in one folder."""
    if args.ckpt is not None:
        stem = Path(args.ckpt).stem
    else:
        stem = "bundled" if args.model == BUNDLED_MODEL and args.image_size == 16 else "default"
    sampler = "ddim" if args.ddim_sample else "ddpm"
    name = (
        f"{args.model.replace('/', '-')}-{stem}-{weights[:FOLDER_ID_CHARS]}-size-{args.image_size}-vae-{args.vae}"
        f"-cfg-{args.cfg_scale}-seed-{args.global_seed}-{sampler}{args.num_sampling_steps}"
    )
    return name + method_suffix(args.method, config)


def method_suffix(method: str, config: MethodConfig) -> str:
    """The method and each of its settings, for the folder name: TaylorSeer's is its schedule (-N-O-E, as before
    there were other methods), every other method's starts with its --method name, the plain model's is -full."""
    if is_plain(method, config):
        return "-full"
    if method in ("taylorseer", "fora"):
        if method == "fora":
            name = f"-fora-N{config.interval}-E{config.first_enhance}"
        else:
            name = f"-N{config.interval}-O{config.max_order}-E{config.first_enhance}"
        if config.derivative_start_step:
            name += f"-D{config.derivative_start_step}"
        if config.factor_dtype is not None:
            name += "-F" + str(config.factor_dtype).removeprefix("torch.")
        return name + forecast_suffix(config)
    if method == "delta-dit":
        return f"-delta-dit-N{config.interval}-k{config.cached_blocks}-b{config.boundary:g}-E{config.first_enhance}"
    if method in ("toca", "duca"):
        schedule = "" if config.layer_schedule else "-flat"
        return f"-{method}-N{config.interval}-R{config.fresh_ratio:g}-{config.score}{schedule}-E{config.first_enhance}"
    # TeaCache: the polynomial by an 8-hex digest of its values, whichever name or file gave it.
    digest = hashlib.sha256(json.dumps(list(config.coefficients)).encode()).hexdigest()[:FOLDER_ID_CHARS]
    return f"-teacache-l{config.threshold:g}-c{digest}"


def forecast_suffix(config: TaylorSeerConfig) -> str:
    """The forecaster and the placement, when set away from the paper's (whose folders keep their old names): e.g.
    -newton, -hermite-s0.5, -K8-late-dense-p0.7, -list-{8 hex digits of the steps}. A placed schedule makes N
    meaningless, but N stays in the name before it, as the flags gave it."""
    name = ""
    if config.forecaster != "taylor":
        name += f"-{config.forecaster}" + (f"-s{config.hermite_scale:g}" if config.forecaster == "hermite" else "")
    if config.placement == "list":
        digest = hashlib.sha256(json.dumps(list(config.full_step_list)).encode()).hexdigest()[:FOLDER_ID_CHARS]
        name += f"-list-{digest}"
    elif config.full_steps is not None:
        name += f"-K{config.full_steps}-{config.placement}" + (
            f"-p{config.power:g}" if config.placement == "late-dense" else ""
        )
    return name


# What each PNG is, in {folder}/metadata.jsonl.


def image_settings(args: argparse.Namespace, config: MethodConfig, weights: str) -> dict:
    """Everything that determines the images, ``weights_id`` and the method's settings included; plus the paths, as
    uncompared information."""
    return {
        "model": args.model,
        "weights_id": weights,
        "image_size": args.image_size,
        "in_channels": args.in_channels,
        "num_classes": args.num_classes,
        "vae": args.vae,
        "cfg_scale": args.cfg_scale,
        "sampler": "ddim" if args.ddim_sample else "ddpm",
        "num_sampling_steps": args.num_sampling_steps,
        "global_seed": args.global_seed,
        "method": method_settings(args.method, config),
        "ckpt": str(find_dit_checkpoint(args.model, args.image_size, args.ckpt).absolute()),
        "vae_path": args.vae_path,
    }


def is_plain(method: str, config: MethodConfig) -> bool:
    """Whether the run is the plain model: --method full, or a TaylorSeer/FORA schedule of every step (--interval 1)."""
    return make_cache(method, config) is None


def method_settings(method: str, config: MethodConfig) -> dict | None:
    """``{"method": name, **its settings}`` as JSON values; None for the plain model, one setting however asked."""
    return None if is_plain(method, config) else method_record(method, config)


# Before --method, records held TaylorSeer's settings as top-level keys, factor_dtype "auto" for the features' own.
LEGACY_TAYLORSEER_KEYS = ("interval", "max_order", "first_enhance", "derivative_start_step", "factor_dtype")


def upgrade_record(record: dict) -> dict:
    """A record written before --method existed as today's record of the same run, so that its folder resumes
    instead of being refused as made with other settings; today's records are returned as they are."""
    if "method" in record or "interval" not in record:
        return record
    upgraded = {key: value for key, value in record.items() if key not in LEGACY_TAYLORSEER_KEYS}
    old = {key: record.get(key) for key in LEGACY_TAYLORSEER_KEYS}
    old["factor_dtype"] = None if old["factor_dtype"] == "auto" else old["factor_dtype"]
    # An interval of 1 computed every step: the plain model.
    upgraded["method"] = None if old["interval"] == 1 else {"method": "taylorseer", **old}
    return upgraded


def read_image_records(folder: Path) -> dict[str, dict]:
    """File name -> record of the folder's metadata.jsonl, in today's form (:func:`upgrade_record`)."""
    return {name: upgrade_record(record) for name, record in read_records(folder / RECORDS_FILE).items()}


def plan_records(num_samples: int, settings: Mapping) -> dict[str, dict]:
    """PNG name -> its record, for every index of the run."""
    return {png_name(i): {"file": png_name(i), "index": i, **settings} for i in range(num_samples)}


def check_run_files(folder: Path) -> None:
    """Refuse a folder where the run's .npz or .json goes: found only after hours of sampling, it would lose them."""
    for extension in (".npz", ".json"):
        path = beside(folder, extension)
        if path.is_dir():
            raise UsageError(
                f"{path} is a folder, where this run writes its {extension} file: move it away or choose another "
                "--sample-dir"
            )


def prepare_folder(folder: Path, existing: Mapping[str, dict], planned: Mapping[str, dict], image_size: int) -> None:
    """Rank 0, before any rank samples: create the folder, drop killed writes' temporaries, set aside every PNG that
    cannot be adopted (checksum differs, or no checksum and it does not decode at the right size) so that it is
    sampled again, and record the planned PNGs, with the checksum of those adopted without one."""
    folder.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(folder)
    damaged = damaged_outputs(folder, existing, planned, lambda path: verify_png(path, (image_size, image_size)))
    set_aside_damaged(folder, damaged)
    # Also records the checksum of PNGs written by a run killed before it recorded them, now verified, so that the
    # packing (which packs only PNGs whose checksum matches) takes them.
    sync_records(folder / RECORDS_FILE, existing, planned)


# Distribution of the work.


def global_batches(num_samples: int, batch_size: int) -> list[range]:
    """The fixed split of [0, num_samples) into consecutive batches: the same for any number of processes."""
    return [range(start, min(start + batch_size, num_samples)) for start in range(0, num_samples, batch_size)]


# Per-sample randomness.


def sample_seed(global_seed: int, index: int) -> int:
    """Seed of sample ``index``: a hash of (global_seed, index), so neighbouring seeds give unrelated streams."""
    return int(np.random.SeedSequence([global_seed, index]).generate_state(1)[0])


def sample_inputs(
    indices: Sequence[int], global_seed: int, num_classes: int, latent_shape: tuple[int, int, int]
) -> tuple[list[int], torch.Tensor, list[torch.Generator]]:
    """Labels, initial noise (on CPU) and the generators left for the per-step noise, one per sample.

    Each sample's CPU generator draws its label, then its noise; the sampler goes on drawing from the same generator.
    """
    labels, noise, generators = [], [], []
    for index in indices:
        generator = torch.Generator().manual_seed(sample_seed(global_seed, index))
        labels.append(int(torch.randint(num_classes, (1,), generator=generator)))
        noise.append(torch.randn(latent_shape, generator=generator))
        generators.append(generator)
    return labels, torch.stack(noise), generators


# Image files.


def png_name(index: int) -> str:
    return f"{index:06d}.png"


def png_path(folder: Path, index: int) -> Path:
    return folder / png_name(index)


def beside(folder: Path, extension: str) -> Path:
    """``{folder}{extension}``; not ``Path.with_suffix``, which would take the ".5-seed-..." of "cfg-1.5" for one."""
    return folder.parent / f"{folder.name}{extension}"


def to_hwc_uint8(images: torch.Tensor) -> np.ndarray:
    """(n, C, H, W) images in [-1, 1] -> (n, H, W, C) uint8, the layout of PNGs and of the ADM npz."""
    return to_uint8(images).permute(0, 2, 3, 1).numpy()


def save_png_atomic(image: np.ndarray, path: Path) -> None:
    """Write a (H, W, 1 or 3) uint8 image under a temporary name, then rename it: a killed run leaves no partial PNG."""
    pixels = image[..., 0] if image.shape[-1] == 1 else image
    atomic_write(path, lambda temp: Image.fromarray(pixels).save(temp, format="PNG"))


def verified_rgb(path: Path, checksum: str | None, image_size: int) -> np.ndarray:
    """The PNG at ``path`` as (H, W, 3) uint8 (grayscale repeated to three channels, the layout FID evaluators read),
    once its bytes match ``checksum`` and it decodes at ``image_size``; else a :class:`UsageError` saying to rerun."""
    rerun = "rerun the same command: it sets damaged PNGs aside and samples them again"
    data = path.read_bytes() if path.is_file() else None
    if data is None or checksum is None or hashlib.sha256(data).hexdigest() != checksum:
        problem = "is missing" if data is None else "has no recorded checksum" if checksum is None else "was changed"
        raise UsageError(f"{path} {problem} since this run wrote it, so it is not packed: {rerun}")
    with Image.open(io.BytesIO(data)) as image:
        pixels = np.asarray(image.convert("RGB"))
    if pixels.shape != (image_size, image_size, 3):
        raise UsageError(f"{path} is {pixels.shape[1]}x{pixels.shape[0]}, expected {image_size}x{image_size}: {rerun}")
    return pixels


def pack_npz(folder: Path, num_samples: int, path: Path, image_size: int) -> tuple[int, ...]:
    """All PNGs in index order as ``arr_0`` (N, H, W, 3) uint8, grayscale repeated to RGB; returns the shape. Only
    PNGs whose bytes match the checksum recorded when they were written are packed: anything else is an error."""
    records = read_records(folder / RECORDS_FILE)
    # Filled in place: 50k ImageNet-256 images are ~10 GB, a list plus np.stack would need twice that.
    samples = np.empty((num_samples, image_size, image_size, 3), dtype=np.uint8)
    for index in range(num_samples):
        checksum = records.get(png_name(index), {}).get(CHECKSUM)
        samples[index] = verified_rgb(png_path(folder, index), checksum, image_size)

    # The temporary file lies in the PNG folder (same file system), whose stale temporaries the run removes: the
    # parent folder may hold other runs' temporaries.
    def write(temp: Path) -> None:
        with temp.open("wb") as file:  # a file object: np.savez would append ".npz" to a name
            np.savez(file, arr_0=samples)

    atomic_write(path, write, temp_dir=folder)
    return samples.shape


# Sampling.


@dataclass
class RankStats:
    """This rank's share of the work. Full/forecast steps are those of one sampling trajectory (the last batch's:
    TeaCache decides them per batch, so ``full_steps_sum`` adds up every sampled batch's)."""

    batches_sampled: int = 0
    batches_skipped: int = 0
    samples_written: int = 0
    sampling_seconds: float = 0.0
    full_steps: int | None = None
    forecast_steps: int | None = None
    full_steps_sum: int = 0

    def add(self, result: SamplingResult, written: int) -> None:
        self.batches_sampled += 1
        self.samples_written += written
        self.sampling_seconds += result.seconds
        self.full_steps, self.forecast_steps = result.num_full_steps, result.num_forecast_steps
        self.full_steps_sum += result.num_full_steps


@dataclass
class Sampler:
    """What a rank needs to turn a global batch of indices into images."""

    args: argparse.Namespace
    config: MethodConfig
    model: DiT
    diffusion: GaussianDiffusion
    cache: CacheMethod | None
    vae: AutoencoderKL | None

    @classmethod
    def load(cls, args: argparse.Namespace, config: MethodConfig, device: torch.device) -> Sampler:
        model, vae = load_model_and_vae(args, device)
        # One cache per process; sample_dit resets it for every batch.
        cache = make_cache(args.method, config)
        return cls(args, config, model, create_diffusion(str(args.num_sampling_steps)), cache, vae)

    def images(self, indices: range) -> tuple[np.ndarray, SamplingResult]:
        """The uint8 images (n, H, W, C) of one global batch: they depend only on its indices and the flags. Samples
        that hold NaN or inf end the run (:class:`NonFiniteOutputError`) before any of them is written."""
        args, model = self.args, self.model
        latent_shape = (model.in_channels, model.input_size, model.input_size)
        labels, noise, generators = sample_inputs(indices, args.global_seed, args.num_classes, latent_shape)
        result = sample_dit(
            model,
            self.diffusion,
            labels,
            cfg_scale=args.cfg_scale,
            cache=self.cache,
            ddim=args.ddim_sample,
            seed=args.global_seed,
            noise=noise,
            generator=generators,
        )
        what = f"the samples of indices {indices.start}..{indices.stop - 1}"
        check_finite(result.samples, what, NAN_SUSPECTS)
        if self.vae is None:
            return to_hwc_uint8(result.samples), result
        images = decode_latents(self.vae, result.samples)
        check_finite(images, f"the VAE decoding of {what}", "--vae, --vae-path (the VAE weights)")
        return to_hwc_uint8(images), result


def sample_rank_batches(sampler: Sampler, setup: Distributed, folder: Path, planned: Mapping[str, dict]) -> RankStats:
    """Sample this rank's global batches (j % K == rank), skipping those whose PNGs all exist; record each PNG's
    checksum right after writing it."""
    args = sampler.args
    records = folder / RECORDS_FILE
    stats = RankStats()
    batches = global_batches(args.num_fid_samples, args.per_proc_batch_size)[setup.rank :: setup.world_size]
    for indices in tqdm(batches, desc=f"rank {setup.rank} batches", disable=setup.rank != 0):
        missing = [i for i in indices if not png_path(folder, i).exists()]
        if not missing:
            stats.batches_skipped += 1
            continue
        # The whole batch is recomputed even when only some PNGs are missing: the same batch gives the same images.
        images, result = sampler.images(indices)
        for index in missing:
            path = png_path(folder, index)
            save_png_atomic(images[index - indices.start], path)
            record_written(records, planned[path.name], path)
        stats.add(result, len(missing))
    if stats.full_steps is None:  # nothing left to sample: report the schedule the batches were sampled with
        stats.full_steps = planned_full_steps(args.method, sampler.config, args.num_sampling_steps)
        stats.forecast_steps = None if stats.full_steps is None else args.num_sampling_steps - stats.full_steps
    return stats


def planned_full_steps(method: str, config: MethodConfig, num_steps: int) -> int | None:
    """Full steps of a ``num_steps``-step trajectory, known from the settings alone; None for TeaCache, which decides
    them from each batch's inputs."""
    if method == "teacache":
        return None
    cache = make_cache(method, config)
    if cache is None:
        return num_steps
    cache.reset(num_steps)
    return sum(cache.plan_step(step) for step in range(num_steps))


def say(line: str) -> None:
    """Print ``line`` and its newline in one write: print() under PYTHONUNBUFFERED writes them separately, and the
    lines of ranks that share one stdout would interleave between the two."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def gather_stats(setup: Distributed, stats: RankStats) -> list[RankStats]:
    """Every rank's stats, in rank order (collective: every rank must call it)."""
    if not setup.initialized:
        return [stats]
    everyone: list[RankStats | None] = [None] * setup.world_size
    dist.all_gather_object(everyone, stats)
    return everyone


def write_summary(
    args: argparse.Namespace,
    config: MethodConfig,
    setup: Distributed,
    folder: Path,
    weights: str,
    all_stats: Sequence[RankStats],
    shape: tuple[int, ...],
) -> dict:
    """Rank 0's record of the run, written to {folder}.json: totals over the ranks and each rank's share."""
    batches = sum(s.batches_sampled for s in all_stats)
    summary = {
        "folder": str(folder),
        "npz": str(beside(folder, ".npz")),
        "json": str(beside(folder, ".json")),
        "num_samples": args.num_fid_samples,
        "npz_shape": list(shape),
        "world_size": setup.world_size,
        "weights_id": weights,
        "method": "full" if is_plain(args.method, config) else args.method,
        "method_settings": method_settings(args.method, config),
        "settings": vars(args),
        "batches_sampled": sum(s.batches_sampled for s in all_stats),
        "batches_skipped": sum(s.batches_skipped for s in all_stats),
        "samples_written": sum(s.samples_written for s in all_stats),
        "sampling_seconds": sum(s.sampling_seconds for s in all_stats),
        "full_steps": all_stats[0].full_steps,
        "forecast_steps": all_stats[0].forecast_steps,
        # Per trajectory over every batch this run sampled: what TeaCache, deciding per batch, computed on average.
        "mean_full_steps": sum(s.full_steps_sum for s in all_stats) / batches if batches else None,
        "ranks": [asdict(s) for s in all_stats],
    }
    atomic_write(beside(folder, ".json"), lambda temp: temp.write_text(json.dumps(summary, indent=2) + "\n"))
    return summary


def run(args: argparse.Namespace, config: MethodConfig, setup: Distributed) -> dict:
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    torch.backends.cudnn.allow_tf32 = args.tf32
    sample_dir = check_output_folder(args.sample_dir, "--sample-dir")
    # Loaded before any file is written, so that a missing checkpoint fails without leaving an empty folder.
    sampler = Sampler.load(args, config, setup.device)
    weights = weights_id(args)
    if setup.rank == 0:
        warn_about_teacache_fit(args)
    folder = sample_dir / folder_name(args, config, weights)
    check_run_files(folder)
    planned = plan_records(args.num_fid_samples, image_settings(args, config, weights))
    existing = read_image_records(folder)
    check_consistent(folder, existing, planned, uncompared=UNCOMPARED_FIELDS, output_flag="--sample-dir")
    setup.barrier()  # every rank has checked the records before rank 0 changes them
    if setup.rank == 0:
        prepare_folder(folder, existing, planned, args.image_size)
    setup.barrier()
    stats = sample_rank_batches(sampler, setup, folder, planned)
    say(
        f"rank {setup.rank}/{setup.world_size}: sampled {stats.batches_sampled} batches, wrote "
        f"{stats.samples_written} PNGs, skipped {stats.batches_skipped} complete batches "
        f"({stats.sampling_seconds:.2f} s sampling)"
    )
    all_stats = gather_stats(setup, stats)  # also the barrier after which every PNG is written
    if setup.rank != 0:
        return asdict(stats)
    shape = pack_npz(folder, args.num_fid_samples, beside(folder, ".npz"), args.image_size)
    summary = write_summary(args, config, setup, folder, weights, all_stats, shape)
    say(f"{args.num_fid_samples} PNGs in {folder}/")
    say(f"saved {summary['npz']} (arr_0 {tuple(shape)} uint8) and {summary['json']}")
    say(json.dumps({k: v for k, v in summary.items() if k != "settings"}))
    return summary


def main(args: argparse.Namespace, config: MethodConfig) -> dict:
    """Sample on this process (one rank of a torchrun job, or alone); returns this rank's summary."""
    setup = setup_distributed(args.device)
    args.device = str(setup.device)
    try:
        return run(args, config, setup)
    finally:
        setup.close()


def cli(argv: Sequence[str] | None = None) -> dict:
    """The command line: parse and check ``argv`` (default: sys.argv), run, and exit 2 with one line on bad input."""
    parser = build_parser()
    args = parser.parse_args(argv)
    config = check_args(args, parser)
    return run_cli(main, args, config)


if __name__ == "__main__":
    cli()
