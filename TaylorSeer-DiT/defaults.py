"""Sampling defaults of the CLIs per model: upstream DiT's for the published models, its own for the bundled model.

A flag left unset (None) takes the value for the chosen ``--model``; flags given on the command line always win.
"""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["BUNDLED_MODEL", "BUNDLED_WEIGHTS", "BUNDLED_CFG_SCALE", "sampling_defaults", "apply_sampling_defaults"]

BUNDLED_MODEL = "DiT-XS/4"
BUNDLED_WEIGHTS = Path(__file__).resolve().parent / "assets" / "dit_xs4_digits_ema.safetensors"
BUNDLED_CFG_SCALE = 1.5

_UPSTREAM = {
    "vae": "mse",
    "image_size": 256,
    "in_channels": 4,
    "num_classes": 1000,
    # Upstream DiT's sample.py labels: retriever, otter, red panda, geyser, arctic wolf, volcano, balloon, arctic fox.
    "class_labels": [207, 360, 387, 974, 88, 979, 417, 279],
    "cfg_scale": 1.5,
    "num_sampling_steps": 250,
    "ddim_sample": False,
}
# The bundled model: 16x16 grayscale digits in pixel space, sampled as in the paper's DiT runs (DDIM 50, CFG).
_BUNDLED = {
    "vae": "none",
    "image_size": 16,
    "in_channels": 1,
    "num_classes": 10,
    "class_labels": list(range(10)),
    "cfg_scale": BUNDLED_CFG_SCALE,
    "num_sampling_steps": 50,
    "ddim_sample": True,
}


def sampling_defaults(model_name: str) -> dict:
    return dict(_BUNDLED if model_name == BUNDLED_MODEL else _UPSTREAM)


def apply_sampling_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """Fill every sampling flag that is None (and exists on ``args``) with the model's default."""
    for name, value in sampling_defaults(args.model).items():
        if hasattr(args, name) and getattr(args, name) is None:
            setattr(args, name, value)
    return args
