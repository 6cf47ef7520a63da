"""Fit TeaCache's rescaling polynomial for a DiT from full-compute runs, and write it as a JSON file.

    python TaylorSeer-DiT/fit_teacache.py                        # the bundled digits model -> teacache_fit.json
    python TaylorSeer-DiT/fit_teacache.py --model DiT-XL/2 --ddim-sample --num-sampling-steps 50 --output xl.json
    python TaylorSeer-DiT/sample.py --method teacache --teacache-coefficients xl.json ...

TeaCache skips a step while the accumulated change of the first block's timestep-modulated input stays under its
threshold; the change of that input is cheap to know, but what a skip costs is the change of what the skipped blocks
would have produced. The published fits (TeaCache4FLUX, TeaCache4HunyuanVideo) map one onto the other with a degree-4
polynomial; this script makes that fit for a DiT. It samples ``--num-batches`` batches of ``--batch-size`` images with
full compute and the sampler's settings (CFG-doubled as sample.py does), on seeds ``--seed``, ``--seed`` + 1, ... that
the other scripts do not use by default, each batch with its own random labels. At every step after the first it
records two relative L1 changes against the previous step, measured over the whole batch as TeaCache measures them:
the first block's modulated input (DiTBlock.modulated_input, TeaCache's signal) and the block stack's residual (its
output minus its input: what a skipped step reuses). ``numpy.polyfit`` of degree 4 maps the first onto the second.

The output holds ``coefficients`` (highest power first, the form --teacache-coefficients reads), the model, the
content fingerprint of its DiT checkpoint (``weights_id``; sample.py and sample_ddp.py warn when a fit is used with
another), the settings, the fit's RMS error, the range of input changes it saw (a degree-4 polynomial means little
outside it: fit with the steps and batch size you sample with) and every recorded pair, so that the fit can be checked
or redone. The VAE of a latent model is not loaded: the fit never decodes.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from common.caching import CacheMethod, State
from common.cli import (
    MAX_SEED,
    HelpFormatter,
    UsageError,
    check_output_file,
    int_range,
    parse_device,
    run_cli,
    warn,
)
from common.delta_dit import subtract_states
from common.integrity import check_finite
from common.io import atomic_write
from common.teacache import relative_l1
from taylorseer_dit.diffusion import create_diffusion
from taylorseer_dit.models import DiT
from taylorseer_dit.pipeline import sample_dit
from taylorseer_dit.sampling_args import (
    NAN_SUSPECTS,
    add_sampler_args,
    check_device,
    check_sampler_args,
    dit_weights_id,
    load_model,
)

DEGREE = 4
"""The published fits' degree."""
DEFAULT_SEED = 1_000_000
"""First batch's seed: far from sample.py's default seed 0 and from the small seeds one tries by hand."""
MAX_BATCHES = 1000
MAX_BATCH_SIZE = 4096


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_sampler_args(parser, decoder=False)
    parser.add_argument(
        "--num-batches", type=int_range(1, MAX_BATCHES), default=4, help="full-compute runs whose steps are fitted"
    )
    parser.add_argument(
        "--batch-size",
        type=int_range(1, MAX_BATCH_SIZE),
        default=10,
        help="images per run (TeaCache measures the change over the whole batch, so fit at the batch size you "
        "sample with)",
    )
    parser.add_argument(
        "--seed",
        type=int_range(0, MAX_SEED),
        default=DEFAULT_SEED,
        help="seed of the first run (labels and noise); run b uses seed + b",
    )
    parser.add_argument("--output", default="teacache_fit.json", help="the JSON file the fit is written to")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    return parser


def check_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Path:
    """Fill the model's defaults, validate every flag and the output path (before any compute); return the path."""
    check_sampler_args(args, parser)
    if args.seed + args.num_batches - 1 > MAX_SEED:
        parser.error(f"--seed {args.seed} + --num-batches {args.num_batches} - 1 exceeds {MAX_SEED}: lower --seed")
    pairs = args.num_batches * (args.num_sampling_steps - 1)
    if pairs <= DEGREE:
        parser.error(
            f"--num-batches {args.num_batches} x (--num-sampling-steps {args.num_sampling_steps} - 1) gives {pairs} "
            f"step pairs; a degree-{DEGREE} fit needs at least {DEGREE + 1}: raise either"
        )
    check_device(args, parser)
    try:
        return check_output_file(args.output, "--output", (".json",))
    except UsageError as err:
        parser.error(str(err))


class ChangeRecorder(CacheMethod):
    """Full compute (every module runs) that records, at each step after the first, the relative L1 change of the
    first block's modulated input and of the block stack's residual against the previous step."""

    def __init__(self) -> None:
        super().__init__()
        self.input_changes: list[float] = []
        self.output_changes: list[float] = []
        self._previous: tuple[torch.Tensor, State] | None = None

    def reset(self, num_steps: int | None = None) -> None:
        """A new run: the first step has nothing to compare with. Recorded pairs are kept across runs."""
        super().reset(num_steps)
        self._previous = None

    def run_blocks(
        self,
        blocks: Sequence[Callable[[State], State]],
        state: State,
        signal: Callable[[], torch.Tensor] | None = None,
    ) -> State:
        if signal is None:
            raise ValueError("the fit needs the model's signal (the first block's timestep-modulated input)")
        current = signal()
        output = super().run_blocks(blocks, state)
        residual = subtract_states(output, state)
        if self._previous is not None:
            previous_signal, previous_residual = self._previous
            self.input_changes.append(relative_l1(current, previous_signal))
            self.output_changes.append(relative_l1(residual, previous_residual))
        self._previous = (current, residual)
        return output


def fit_polynomial(inputs: Sequence[float], outputs: Sequence[float], degree: int = DEGREE) -> tuple[float, ...]:
    """Least-squares polynomial (highest power first) from input changes to output changes; a ValueError when the
    pairs cannot determine it (too few distinct inputs, or non-finite values)."""
    x, y = np.asarray(inputs, dtype=np.float64), np.asarray(outputs, dtype=np.float64)
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("the recorded changes hold NaN or inf")
    if len(np.unique(x)) <= degree:
        raise ValueError(f"{len(np.unique(x))} distinct input changes cannot determine a degree-{degree} polynomial")
    return tuple(float(c) for c in np.polyfit(x, y, degree))


def batch_labels(seed: int, batch_size: int, num_classes: int) -> list[int]:
    """The run's labels, drawn from its seed: every class in proportion, as FID sampling draws them."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(num_classes, (batch_size,), generator=generator).tolist()


def record_changes(model: DiT, args: argparse.Namespace) -> ChangeRecorder:
    """Run the ``--num-batches`` full-compute samplings with the recorder; its lists hold every step pair."""
    recorder = ChangeRecorder()
    diffusion = create_diffusion(str(args.num_sampling_steps))
    for batch in range(args.num_batches):
        seed = args.seed + batch
        result = sample_dit(
            model,
            diffusion,
            batch_labels(seed, args.batch_size, args.num_classes),
            cfg_scale=args.cfg_scale,
            cache=recorder,
            ddim=args.ddim_sample,
            seed=seed,
        )
        check_finite(result.samples, f"the samples of run {batch} (seed {seed})", NAN_SUSPECTS)
        print(f"run {batch + 1}/{args.num_batches} (seed {seed}): {result.seconds:.2f} s")
    return recorder


class NonFittable(ValueError):
    """Recorded changes that determine no polynomial; printed as one error line."""


def fit_record(args: argparse.Namespace, weights: str, recorder: ChangeRecorder) -> dict:
    """What the output file holds: the coefficients first, then what they were fitted on."""
    try:
        coefficients = fit_polynomial(recorder.input_changes, recorder.output_changes)
    except ValueError as err:
        raise NonFittable(
            f"no fit: {err}; check the checkpoint, or raise --num-batches or --num-sampling-steps"
        ) from None
    x, y = np.asarray(recorder.input_changes), np.asarray(recorder.output_changes)
    rms = float(np.sqrt(np.mean((np.polyval(coefficients, x) - y) ** 2)))
    return {
        "coefficients": list(coefficients),
        "model": args.model,
        "weights_id": weights,
        "ckpt": None if args.ckpt is None else str(args.ckpt),
        "samples": args.num_batches * args.batch_size,
        "steps": args.num_sampling_steps,
        "batches": args.num_batches,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "cfg_scale": args.cfg_scale,
        "sampler": "ddim" if args.ddim_sample else "ddpm",
        "image_size": args.image_size,
        "degree": DEGREE,
        "input": "relative L1 change of the first block's modulated input (TeaCache's signal)",
        "target": "relative L1 change of the block stack's residual",
        "rms_error": rms,
        "input_range": [float(x.min()), float(x.max())],
        "input_changes": x.tolist(),
        "output_changes": y.tolist(),
    }


def fit_warnings(record: dict) -> list[str]:
    """What makes a fit unsafe to use: a polynomial that is negative somewhere between no change and the largest
    recorded one would have TeaCache count such steps as taking change back, and skip on."""
    grid = np.linspace(0.0, record["input_range"][1], 1001)
    negative = grid[np.polyval(record["coefficients"], grid) < 0]
    if not len(negative):
        return []
    return [
        f"the fitted polynomial is negative for input changes in [{negative.min():.4g}, {negative.max():.4g}]: "
        "TeaCache would skip on through such steps; record more runs (--num-batches) or check the checkpoint"
    ]


def main(args: argparse.Namespace, output: Path) -> dict:
    model = load_model(args, parse_device(args.device))  # the VAE only decodes: the fit needs none
    weights = dit_weights_id(args)
    recorder = record_changes(model, args)
    record = fit_record(args, weights, recorder)
    for line in fit_warnings(record):
        warn(line)
    if output.exists():
        warn(f"replacing {output}")
    output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(output, lambda temp: temp.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8"))
    shown = ", ".join(f"{c:.6g}" for c in record["coefficients"])
    print(f"fitted [{shown}] on {len(recorder.input_changes)} step pairs (RMS error {record['rms_error']:.4g})")
    print(f"saved {output}: pass it as --teacache-coefficients {output}")
    return record


def cli(argv: Sequence[str] | None = None) -> dict:
    """The command line: parse and check ``argv`` (default: sys.argv), run, and exit 2 with one line on bad input."""
    parser = build_parser()
    args = parser.parse_args(argv)
    output = check_args(args, parser)
    return run_cli(main, args, output, catch=(NonFittable,))


if __name__ == "__main__":
    cli()
