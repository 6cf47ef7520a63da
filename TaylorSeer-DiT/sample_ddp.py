"""Sample many class-conditional images with DiT + TaylorSeer on one or more processes, packed for FID evaluation.

    torchrun --nproc_per_node=8 TaylorSeer-DiT/sample_ddp.py --model DiT-XL/2 --image-size 256 \\
        --ddim-sample --num-sampling-steps 50 --interval 5 --max-order 3 --num-fid-samples 50000
    python TaylorSeer-DiT/sample_ddp.py --num-fid-samples 1000       # one process, the bundled digits model

Every sample index i has its own seed, drawn from (--global-seed, i): its class label, its initial noise and, for DDPM,
its per-step noise. Indices are sampled in fixed global batches of --per-proc-batch-size consecutive indices, batch j on
rank j % K, so the images are bit-identical whatever the number of processes K. Each image is written atomically as
{sample-dir}/{name}/{i:06d}.png; rerunning the same command after an interruption samples only the batches with
missing PNGs. At the end rank 0 packs them into {sample-dir}/{name}.npz (arr_0: (N, H, W, 3) uint8, the input of the
ADM / guided-diffusion FID evaluator) and writes the settings and timings to {sample-dir}/{name}.json.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from common.cli import HelpFormatter, run_cli
from common.distributed import Distributed, setup_distributed
from common.images import to_uint8
from common.io import atomic_write, remove_stale_temps
from common.taylor_cache import TaylorCache, TaylorSeerConfig, full_step_indices
from taylorseer_dit.defaults import BUNDLED_MODEL
from taylorseer_dit.diffusion import GaussianDiffusion, create_diffusion
from taylorseer_dit.models import DiT
from taylorseer_dit.pipeline import SamplingResult, decode_latents, sample_dit
from taylorseer_dit.sampling_args import add_model_args, check_model_args, load_model_and_vae

if TYPE_CHECKING:
    from diffusers import AutoencoderKL


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_model_args(parser)
    parser.add_argument("--sample-dir", default="samples", help="parent folder of the run's PNG folder, .npz and .json")
    parser.add_argument("--per-proc-batch-size", type=int, default=32, help="images per forward batch per process")
    parser.add_argument("--num-fid-samples", type=int, default=50000, help="number of images to sample")
    parser.add_argument("--global-seed", type=int, default=0, help="seed that, with its index, seeds every sample")
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


def check_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> TaylorSeerConfig:
    """Fill the per-model defaults, then exit through ``parser.error`` on any invalid flag."""
    config = check_model_args(args, parser)
    if args.num_fid_samples < 1:
        parser.error(f"--num-fid-samples must be >= 1, got {args.num_fid_samples}")
    if args.per_proc_batch_size < 1:
        parser.error(f"--per-proc-batch-size must be >= 1, got {args.per_proc_batch_size}")
    if args.global_seed < 0:
        parser.error(f"--global-seed must be >= 0, got {args.global_seed}")
    if args.vae == "none" and args.in_channels not in (1, 3):
        parser.error(
            f"--vae none writes the model output as the image: --in-channels must be 1 or 3, got {args.in_channels}"
        )
    return config


def folder_name(args: argparse.Namespace, config: TaylorSeerConfig) -> str:
    """Name of the run's folder: every setting that changes the images, so that a rerun resumes only its own run."""
    if args.ckpt is not None:
        weights = Path(args.ckpt).stem
    else:
        weights = "bundled" if args.model == BUNDLED_MODEL and args.image_size == 16 else "default"
    sampler = "ddim" if args.ddim_sample else "ddpm"
    name = (
        f"{args.model.replace('/', '-')}-{weights}-size-{args.image_size}-vae-{args.vae}-cfg-{args.cfg_scale}"
        f"-seed-{args.global_seed}-{sampler}{args.num_sampling_steps}"
        f"-N{config.interval}-O{config.max_order}-E{config.first_enhance}"
    )
    if config.derivative_start_step:
        name += f"-D{config.derivative_start_step}"
    if args.factor_dtype != "auto":
        name += f"-F{args.factor_dtype}"
    return name


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


def png_path(folder: Path, index: int) -> Path:
    return folder / f"{index:06d}.png"


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


def read_rgb(path: Path) -> np.ndarray:
    """A PNG as (H, W, 3) uint8; grayscale is repeated to three channels, the layout FID evaluators read."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def pack_npz(folder: Path, num_samples: int, path: Path) -> tuple[int, ...]:
    """All PNGs in index order as ``arr_0`` (N, H, W, 3) uint8, grayscale repeated to RGB; returns the shape."""
    missing = [i for i in range(num_samples) if not png_path(folder, i).exists()]
    if missing:
        raise RuntimeError(f"{len(missing)} PNGs are missing from {folder} (first: {png_path(folder, missing[0])})")
    first = read_rgb(png_path(folder, 0))
    # Filled in place: 50k ImageNet-256 images are ~10 GB, a list plus np.stack would need twice that.
    samples = np.empty((num_samples, *first.shape), dtype=np.uint8)
    for index in range(num_samples):
        samples[index] = read_rgb(png_path(folder, index))

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
    """This rank's share of the work; full/forecast steps are those of one sampling trajectory."""

    batches_sampled: int = 0
    batches_skipped: int = 0
    samples_written: int = 0
    sampling_seconds: float = 0.0
    full_steps: int | None = None
    forecast_steps: int | None = None

    def add(self, result: SamplingResult, written: int) -> None:
        self.batches_sampled += 1
        self.samples_written += written
        self.sampling_seconds += result.seconds
        self.full_steps, self.forecast_steps = result.num_full_steps, result.num_forecast_steps


@dataclass
class Sampler:
    """What a rank needs to turn a global batch of indices into images."""

    args: argparse.Namespace
    config: TaylorSeerConfig
    model: DiT
    diffusion: GaussianDiffusion
    cache: TaylorCache | None
    vae: AutoencoderKL | None

    @classmethod
    def load(cls, args: argparse.Namespace, config: TaylorSeerConfig, device: torch.device) -> Sampler:
        model, vae = load_model_and_vae(args, device)
        # One cache per process; sample_dit resets it for every batch.
        cache = None if config.is_uncached else TaylorCache(config)
        return cls(args, config, model, create_diffusion(str(args.num_sampling_steps)), cache, vae)

    def images(self, indices: range) -> tuple[np.ndarray, SamplingResult]:
        """The uint8 images (n, H, W, C) of one global batch: they depend only on its indices and the flags."""
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
        images = result.samples if self.vae is None else decode_latents(self.vae, result.samples)
        return to_hwc_uint8(images), result


def sample_rank_batches(sampler: Sampler, setup: Distributed, folder: Path) -> RankStats:
    """Sample this rank's global batches (j % K == rank), skipping those whose PNGs all exist."""
    args = sampler.args
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
            save_png_atomic(images[index - indices.start], png_path(folder, index))
        stats.add(result, len(missing))
    if stats.full_steps is None:  # nothing left to sample: report the schedule the batches were sampled with
        stats.full_steps = len(full_step_indices(args.num_sampling_steps, sampler.config))
        stats.forecast_steps = args.num_sampling_steps - stats.full_steps
    return stats


def write_summary(
    args: argparse.Namespace, setup: Distributed, folder: Path, stats: RankStats, shape: tuple[int, ...]
) -> dict:
    """Rank 0's record of the run, written to {folder}.json."""
    summary = {
        "folder": str(folder),
        "npz": str(beside(folder, ".npz")),
        "json": str(beside(folder, ".json")),
        "num_samples": args.num_fid_samples,
        "npz_shape": list(shape),
        "world_size": setup.world_size,
        "settings": vars(args),
        "stats_of_rank": setup.rank,
        **asdict(stats),
    }
    atomic_write(beside(folder, ".json"), lambda temp: temp.write_text(json.dumps(summary, indent=2) + "\n"))
    return summary


def run(args: argparse.Namespace, config: TaylorSeerConfig, setup: Distributed) -> dict:
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    torch.backends.cudnn.allow_tf32 = args.tf32
    # Loaded before any file is written, so that a missing checkpoint fails without leaving an empty folder.
    sampler = Sampler.load(args, config, setup.device)
    folder = Path(args.sample_dir) / folder_name(args, config)
    if setup.rank == 0:
        folder.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(folder)
    setup.barrier()
    stats = sample_rank_batches(sampler, setup, folder)
    print(
        f"rank {setup.rank}/{setup.world_size}: sampled {stats.batches_sampled} batches, wrote "
        f"{stats.samples_written} PNGs, skipped {stats.batches_skipped} complete batches "
        f"({stats.sampling_seconds:.2f} s sampling)",
        flush=True,
    )
    setup.barrier()
    if setup.rank != 0:
        return asdict(stats)
    shape = pack_npz(folder, args.num_fid_samples, beside(folder, ".npz"))
    summary = write_summary(args, setup, folder, stats, shape)
    print(f"{args.num_fid_samples} PNGs in {folder}/")
    print(f"saved {summary['npz']} (arr_0 {tuple(shape)} uint8) and {summary['json']}")
    print(json.dumps({k: v for k, v in summary.items() if k != "settings"}))
    return summary


def main(args: argparse.Namespace, config: TaylorSeerConfig) -> dict:
    """Sample on this process (one rank of a torchrun job, or alone); returns this rank's summary."""
    setup = setup_distributed(args.device)
    args.device = str(setup.device)
    try:
        return run(args, config, setup)
    finally:
        setup.close()


if __name__ == "__main__":
    parser = build_parser()
    arguments = parser.parse_args()
    taylorseer_config = check_args(arguments, parser)
    run_cli(main, arguments, taylorseer_config)
