"""Train the digits classifier that judges samples (class agreement) and provides FID features.

python TaylorSeer-DiT/train_classifier.py      # ~1 minute on 2 CPU cores; writes assets/digits_classifier.safetensors
"""

from __future__ import annotations

import argparse

from safetensors.torch import save_file

from common.cli import run_cli
from taylorseer_dit.digits import CLASSIFIER_PATH, train_classifier


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--epochs", type=int, default=30, help="passes over the 80 % training split")
    parser.add_argument("--seed", type=int, default=0, help="initialisation and shuffling seed")
    parser.add_argument("--output", default=str(CLASSIFIER_PATH), help="safetensors path")
    args = parser.parse_args()
    model, test_accuracy = train_classifier(epochs=args.epochs, seed=args.seed)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, args.output)
    print(f"held-out accuracy {test_accuracy:.4f}; saved {args.output}")


if __name__ == "__main__":
    run_cli(main)
