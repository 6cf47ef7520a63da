"""Train the digits classifier that judges samples (class agreement) and provides FID features.

python TaylorSeer-DiT/train_classifier.py      # ~1 minute on 2 CPU cores; writes results/digits_classifier.safetensors

The shipped classifier (TaylorSeer-DiT/assets/digits_classifier.safetensors) is the default of every script that
judges samples; to replace it, pass that path to --output together with --overwrite.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from safetensors.torch import save_file

from common.cli import MAX_SEED, HelpFormatter, UsageError, check_output_file, int_range, run_cli
from common.io import atomic_write
from taylorseer_dit.digits import train_classifier

DEFAULT_OUTPUT = "results/digits_classifier.safetensors"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--epochs", type=int_range(1, 10_000), default=30, help="passes over the 80 %% training split")
    parser.add_argument("--seed", type=int_range(0, MAX_SEED), default=0, help="initialisation and shuffling seed")
    parser.add_argument("--output", default=DEFAULT_OUTPUT, help="safetensors path of the trained weights")
    parser.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    return parser


def check_output(args: argparse.Namespace) -> Path:
    """A writable .safetensors path that holds no file, unless --overwrite says to replace it."""
    output = check_output_file(args.output, "--output", (".safetensors",))
    if output.exists() and not args.overwrite:
        raise UsageError(f"--output {output} exists: add --overwrite to replace it, or choose another --output")
    return output


def main(args: argparse.Namespace) -> float:
    """Train, write --output (atomically: a killed run leaves no partial file) and return the held-out accuracy."""
    output = check_output(args)
    model, test_accuracy = train_classifier(epochs=args.epochs, seed=args.seed)
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(output, lambda temp: save_file(tensors, str(temp)))
    print(f"held-out accuracy {test_accuracy:.4f}; saved {output}")
    return test_accuracy


def cli(argv: list[str] | None = None) -> float:
    """Parse and run; a bad flag or output path ends in one ``error:`` line and exit code 2, before training."""
    return run_cli(main, build_parser().parse_args(argv))


if __name__ == "__main__":
    cli()
