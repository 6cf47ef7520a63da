"""Where the DiT tree's weights come from, and the one way it loads them: :func:`load_dit` and :func:`load_vae`.

Accepted DiT checkpoints: the original plain state dicts (``DiT-XL-2-256x256.pt``), DiT ``train.py`` checkpoints
(``{"model", "ema", "opt", "args"}``; the EMA weights are used, as upstream ``sample.py`` does), ``.safetensors``
files with the same keys, and diffusers-format folders (see :mod:`taylorseer_dit.diffusers_format`). Every failure
is a :class:`~common.checkpoint.CheckpointError` whose message says what to download or which flag to fix.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from common.checkpoint import CheckpointError, load_state_dict_checked, read_state_dict, require_path
from taylorseer_dit.defaults import BUNDLED_MODEL, BUNDLED_WEIGHTS
from taylorseer_dit.diffusers_format import load_diffusers_dit_folder
from taylorseer_dit.models import DiT, DiT_models

if TYPE_CHECKING:
    from diffusers import AutoencoderKL

__all__ = [
    "find_dit_checkpoint",
    "read_dit_checkpoint",
    "load_dit",
    "load_vae",
    "CKPT_DIR_ENV",
    "VAE_DIR_ENV",
    "DEFAULT_DIR",
]

CKPT_DIR_ENV = "TAYLORSEER_DIT_CKPT_DIR"
VAE_DIR_ENV = "TAYLORSEER_VAE_DIR"
# Relative to the working directory, like upstream DiT's download.py.
DEFAULT_DIR = "pretrained_models"
# The only published DiT weights: DiT-XL/2 at these image sizes.
PUBLISHED_MODEL = "DiT-XL/2"
PUBLISHED_SIZES = (256, 512)
PUBLISHED_URL = "https://dl.fbaipublicfiles.com/DiT/models/{name}"
# Entry of a train.py checkpoint that holds the weights to sample with.
TRAIN_CHECKPOINT_WEIGHTS = ("ema",)
VAE_KINDS = ("ema", "mse")
VAE_REPO = "stabilityai/sd-vae-ft-{kind}"


def find_dit_checkpoint(model_name: str, image_size: int, ckpt: str | Path | None) -> Path:
    """The checkpoint to load: ``ckpt`` if given (it must exist), else the bundled or the published default.

    The bundled model (``DiT-XS/4`` at 16x16, trained here on the digits) ships its weights in the repository.

    The default is ``$TAYLORSEER_DIT_CKPT_DIR/DiT-XL-2-{s}x{s}.pt`` (directory ``pretrained_models`` when the
    variable is unset), for image sizes 256 and 512, the only published weights. Nothing is downloaded: a missing
    default names the URL and the folder to put it in.
    """
    _check_model_name(model_name)
    if ckpt is not None:
        return require_path(
            ckpt, f"{model_name} checkpoint", "Pass an existing .pt/.safetensors file or diffusers folder to --ckpt."
        )
    if model_name == BUNDLED_MODEL and image_size == 16:
        return require_path(
            BUNDLED_WEIGHTS,
            "Bundled DiT-XS/4 digits weights",
            "They are part of the repository (git checkout the file), or rebuild them with the command in "
            f"{BUNDLED_WEIGHTS.with_suffix('.json').name}.",
        )
    if model_name != PUBLISHED_MODEL or image_size not in PUBLISHED_SIZES:
        raise CheckpointError(
            f"No default checkpoint for {model_name} at image size {image_size}: only {PUBLISHED_MODEL} at image "
            f"size {' or '.join(map(str, PUBLISHED_SIZES))} has published weights.\n"
            "--ckpt is required: pass a .pt/.safetensors file or a diffusers folder for this model and size."
        )
    folder = Path(os.environ.get(CKPT_DIR_ENV) or DEFAULT_DIR)
    name = f"DiT-XL-2-{image_size}x{image_size}.pt"
    url = PUBLISHED_URL.format(name=name)
    return require_path(
        folder / name,
        f"Default {PUBLISHED_MODEL} checkpoint for image size {image_size}",
        f"Download {url}\n"
        f"into {folder.absolute()}/ (e.g. `mkdir -p {folder} && wget -P {folder} {url}`),\n"
        f"or set {CKPT_DIR_ENV} to the folder that holds {name}, or pass --ckpt PATH.",
    )


def read_dit_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict in our (original DiT) keys from any accepted checkpoint format; see the module docstring."""
    path = Path(path)
    if path.is_dir():
        return load_diffusers_dit_folder(path)
    return read_state_dict(path, nested=TRAIN_CHECKPOINT_WEIGHTS)


def load_dit(
    model_name: str,
    ckpt: str | Path | None,
    *,
    image_size: int,
    latent_scale: int = 8,
    in_channels: int = 4,
    num_classes: int = 1000,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> DiT:
    """Build ``model_name`` for ``image_size`` and fill it with the checkpoint's weights, in eval mode.

    The model's input is the latent, ``image_size // latent_scale`` wide (``latent_scale=1`` for pixel-space
    models). It is built on the meta device, so no memory is spent on a random init that the checkpoint overwrites;
    a checkpoint for another model or size fails with one message listing the keys and shapes that do not fit.
    """
    _check_model_name(model_name)
    if image_size % latent_scale:
        raise CheckpointError(f"--image-size {image_size} is not a multiple of the latent scale {latent_scale}.")
    input_size = image_size // latent_scale
    path = find_dit_checkpoint(model_name, image_size, ckpt)
    state_dict = read_dit_checkpoint(path)
    with torch.device("meta"):
        model = DiT_models[model_name](input_size=input_size, in_channels=in_channels, num_classes=num_classes)
    load_state_dict_checked(
        model,
        state_dict,
        source=str(path.absolute()),
        model_desc=(
            f"{model_name} at image size {image_size} (latent {input_size}x{input_size}, {in_channels} channels, "
            f"{num_classes} classes)"
        ),
        hint=(
            "Check that --model (size and patch) and --image-size match the checkpoint; e.g. DiT-XL-2-256x256.pt is "
            "--model DiT-XL/2 --image-size 256."
        ),
    )
    return model.to(device=device, dtype=dtype).eval()


def load_vae(kind: str, vae_path: str | Path | None, device: str | torch.device = "cpu") -> AutoencoderKL:
    """The Stable Diffusion VAE that DiT was trained with (``sd-vae-ft-ema`` or ``-mse``), offline, in eval mode.

    The folder is ``vae_path`` if given, else ``$TAYLORSEER_VAE_DIR/sd-vae-ft-{kind}``, else
    ``pretrained_models/sd-vae-ft-{kind}``; it is never downloaded (``local_files_only=True``), so a missing folder is
    a CheckpointError naming the huggingface repository to fetch.
    """
    from diffusers import AutoencoderKL  # imported here: diffusers takes seconds to import, DiT loading needs none

    if kind not in VAE_KINDS:
        raise CheckpointError(f"Unknown VAE kind {kind!r}; choices: {', '.join(VAE_KINDS)}.")
    repo = VAE_REPO.format(kind=kind)
    if vae_path is not None:
        folder = Path(vae_path)
    else:
        folder = Path(os.environ.get(VAE_DIR_ENV) or DEFAULT_DIR) / f"sd-vae-ft-{kind}"
    how_to_get = (
        f"Download huggingface {repo} (config.json and diffusion_pytorch_model.safetensors) into\n"
        f"{folder.absolute()}/, e.g.\n"
        f"  hf download {repo} config.json diffusion_pytorch_model.safetensors --local-dir {folder}\n"
        f"or set {VAE_DIR_ENV} to the folder that holds sd-vae-ft-{kind}/, or pass --vae-path."
    )
    require_path(folder / "config.json", f"VAE {repo}", how_to_get)
    try:
        vae = AutoencoderKL.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"Could not load the VAE from {folder.absolute()}:\n  {exc}\n{how_to_get}") from exc
    return vae.to(device).eval()


def _check_model_name(model_name: str) -> None:
    if model_name not in DiT_models:
        raise CheckpointError(f"Unknown DiT model {model_name!r}; choices: {', '.join(DiT_models)}.")
