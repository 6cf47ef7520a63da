"""Where FLUX's four components come from, and the one way they are loaded (offline, never downloaded).

The weights live in a local copy of the Hugging Face repository black-forest-labs/FLUX.1-dev (or FLUX.1-schnell),
passed as ``--ckpt-dir`` (default ``pretrained_models/FLUX.1-dev``). Each component can instead come from an
environment variable, as in BFL's ``flux`` package:

==================  ===============================================================  ===============================
component           in ``--ckpt-dir`` (first found wins)                             environment variable (wins)
==================  ===============================================================  ===============================
transformer         ``transformer/`` (diffusers), then ``flux1-dev.safetensors``     ``FLUX_DEV`` / ``FLUX_SCHNELL``
                    / ``flux1-schnell.safetensors`` (BFL)                            (a BFL file, as BFL's code)
autoencoder         ``vae/`` (diffusers), then ``ae.safetensors`` (BFL)               ``AE`` (either kind)
CLIP-L              ``text_encoder/`` + ``tokenizer/``                                ``FLUX_CLIP``
T5-XXL              ``text_encoder_2/`` + ``tokenizer_2/``                            ``FLUX_T5``
==================  ===============================================================  ===============================

``FLUX_CLIP`` / ``FLUX_T5`` name a folder that holds both the model and its tokenizer (the layout of
openai/clip-vit-large-patch14 and google/t5-v1_1-xxl), or a FLUX checkpoint folder with the subfolder pair above.
An empty variable counts as unset. When anything is missing, :func:`find_flux_weights` raises ONE
:class:`~common.checkpoint.CheckpointError` listing every missing component with its expected paths and variable.

The transformer's architecture comes from the checkpoint when it can: a diffusers ``transformer/config.json`` is
read with :func:`~taylorseer_flux.diffusers_format.flux_params_from_diffusers_config` (so small test checkpoints
work through the same code), a BFL single file uses the preset of the model name (its keys cannot tell the number of
heads or the RoPE axes). The model name itself selects the published model's sampling defaults (steps, T5 length,
schedule shift) and must agree with the checkpoint on whether a guidance embedder exists.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from common.checkpoint import CheckpointError, read_json_object
from common.integrity import weights_fingerprint
from taylorseer_flux.autoencoder import load_autoencoder
from taylorseer_flux.diffusers_format import flux_params_from_diffusers_config
from taylorseer_flux.model import FLUX_PRESETS, Flux, FluxParams, load_flux
from taylorseer_flux.sampling import LATENT_CHANNELS
from taylorseer_flux.text_encoders import HFEmbedder, load_clip, load_t5

if TYPE_CHECKING:
    from diffusers import AutoencoderKL

__all__ = [
    "FluxModelSpec",
    "FLUX_MODELS",
    "TextEncoderFiles",
    "FluxWeights",
    "FluxComponents",
    "default_ckpt_dir",
    "find_flux_weights",
    "flux_weights_id",
    "flux_weights_paths",
    "transformer_params",
    "load_transformer",
    "load_flux_components",
    "AE_ENV",
    "T5_ENV",
    "CLIP_ENV",
]

AE_ENV = "AE"
T5_ENV = "FLUX_T5"
CLIP_ENV = "FLUX_CLIP"
DEFAULT_ROOT = "pretrained_models"
"""Relative to the working directory, like the DiT tree's default folder."""

CONFIG = "config.json"
DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.safetensors.index.json")
TRANSFORMERS_WEIGHTS = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "spiece.model", "vocab.json")
AE_FILE = "ae.safetensors"
# The FLUX autoencoder downsamples 8x (four levels): get_noise's latent size assumes it.
VAE_LEVELS = 4


@dataclass(frozen=True)
class FluxModelSpec:
    """A published FLUX model: its architecture preset, where its weights live and its sampling defaults."""

    preset: str
    repo: str
    bfl_file: str
    env: str
    num_steps: int
    max_sequence_length: int
    """T5 tokens (BFL: 512 for dev, 256 for schnell)."""
    shift: bool
    """Resolution-dependent schedule shift (dev) or plain linspace (schnell, distilled for few steps)."""
    gated: bool
    """The Hugging Face repository asks to accept a license before downloading."""


FLUX_MODELS: dict[str, FluxModelSpec] = {
    "flux-dev": FluxModelSpec(
        preset="flux-dev",
        repo="black-forest-labs/FLUX.1-dev",
        bfl_file="flux1-dev.safetensors",
        env="FLUX_DEV",
        num_steps=50,
        max_sequence_length=512,
        shift=True,
        gated=True,
    ),
    "flux-schnell": FluxModelSpec(
        preset="flux-schnell",
        repo="black-forest-labs/FLUX.1-schnell",
        bfl_file="flux1-schnell.safetensors",
        env="FLUX_SCHNELL",
        num_steps=4,
        max_sequence_length=256,
        shift=False,
        gated=False,
    ),
}


@dataclass(frozen=True)
class TextEncoderFiles:
    model: Path
    tokenizer: Path


@dataclass(frozen=True)
class FluxWeights:
    """The resolved location of every component."""

    transformer: Path
    """A diffusers ``transformer/`` folder or a BFL single file."""
    autoencoder: Path
    """A diffusers ``vae/`` folder or BFL's ``ae.safetensors``."""
    clip: TextEncoderFiles
    t5: TextEncoderFiles


@dataclass
class FluxComponents:
    """The loaded models of a FLUX text-to-image pipeline (on the CPU until a pipeline places them)."""

    transformer: Flux
    autoencoder: AutoencoderKL
    t5: HFEmbedder
    clip: HFEmbedder


def _spec(model_name: str) -> FluxModelSpec:
    if model_name not in FLUX_MODELS:
        raise ValueError(f"unknown FLUX model {model_name!r}; choose from {', '.join(FLUX_MODELS)}")
    return FLUX_MODELS[model_name]


def default_ckpt_dir(model_name: str) -> Path:
    """``pretrained_models/FLUX.1-dev`` (or ``-schnell``): the repository's name under the default root."""
    return Path(DEFAULT_ROOT) / _spec(model_name).repo.split("/")[1]


def _has_any(folder: Path, names: tuple[str, ...]) -> bool:
    return any((folder / name).is_file() for name in names)


def _is_model_folder(folder: Path, weight_files: tuple[str, ...]) -> bool:
    return (folder / CONFIG).is_file() and _has_any(folder, weight_files)


def _is_text_pair(model: Path, tokenizer: Path) -> bool:
    return _is_model_folder(model, TRANSFORMERS_WEIGHTS) and _has_any(tokenizer, TOKENIZER_FILES)


def _env(environ: Mapping[str, str], name: str) -> Path | None:
    value = environ.get(name, "")
    return Path(value).expanduser() if value else None


def _find_transformer(spec: FluxModelSpec, ckpt_dir: Path, environ: Mapping[str, str]) -> Path | str:
    """The transformer's path, or the lines describing where it was expected."""
    from_env = _env(environ, spec.env)
    if from_env is not None:
        if from_env.is_file():
            return from_env
        return f"transformer: {spec.env}={from_env.absolute()} is not a file (it must name BFL's {spec.bfl_file})"
    folder, single = ckpt_dir / "transformer", ckpt_dir / spec.bfl_file
    if _is_model_folder(folder, DIFFUSERS_WEIGHTS):
        return folder
    if single.is_file():
        return single
    return (
        "transformer: expected one of\n"
        f"      {folder.absolute()}/  (diffusers: {CONFIG} + diffusion_pytorch_model*.safetensors)\n"
        f"      {single.absolute()}  (BFL single file)\n"
        f"    or set {spec.env} to a {spec.bfl_file} file"
    )


def _find_autoencoder(ckpt_dir: Path, environ: Mapping[str, str]) -> Path | str:
    from_env = _env(environ, AE_ENV)
    if from_env is not None:
        if from_env.is_file() or _is_model_folder(from_env, DIFFUSERS_WEIGHTS):
            return from_env
        return (
            f"autoencoder: {AE_ENV}={from_env.absolute()} is neither a file ({AE_FILE}) nor a diffusers vae/ folder "
            f"({CONFIG} + diffusion_pytorch_model.safetensors)"
        )
    folder, single = ckpt_dir / "vae", ckpt_dir / AE_FILE
    if _is_model_folder(folder, DIFFUSERS_WEIGHTS):
        return folder
    if single.is_file():
        return single
    return (
        "autoencoder: expected one of\n"
        f"      {folder.absolute()}/  (diffusers: {CONFIG} + diffusion_pytorch_model.safetensors)\n"
        f"      {single.absolute()}  (BFL single file)\n"
        f"    or set {AE_ENV} to either"
    )


def _find_text_encoder(
    what: str, subfolders: tuple[str, str], env: str, example: str, ckpt_dir: Path, environ: Mapping[str, str]
) -> TextEncoderFiles | str:
    model_sub, tokenizer_sub = subfolders
    from_env = _env(environ, env)
    if from_env is not None:
        for model, tokenizer in ((from_env, from_env), (from_env / model_sub, from_env / tokenizer_sub)):
            if _is_text_pair(model, tokenizer):
                return TextEncoderFiles(model, tokenizer)
        return (
            f"{what}: {env}={from_env.absolute()} holds neither a model with its tokenizer ({CONFIG}, model "
            f"weights, tokenizer files; e.g. {example}) nor the pair {model_sub}/ + {tokenizer_sub}/"
        )
    model, tokenizer = ckpt_dir / model_sub, ckpt_dir / tokenizer_sub
    if _is_text_pair(model, tokenizer):
        return TextEncoderFiles(model, tokenizer)
    return (
        f"{what}: expected {model.absolute()}/ ({CONFIG} + model.safetensors) and {tokenizer.absolute()}/\n"
        f"    or set {env} to a folder holding the model and its tokenizer (e.g. {example})"
    )


def find_flux_weights(
    model_name: str, ckpt_dir: str | Path | None = None, environ: Mapping[str, str] | None = None
) -> FluxWeights:
    """Every component's location, from the environment variables and ``ckpt_dir`` (default:
    :func:`default_ckpt_dir`); one CheckpointError naming everything that is missing and how to get it."""
    spec = _spec(model_name)
    environ = os.environ if environ is None else environ
    folder = Path(ckpt_dir).expanduser() if ckpt_dir is not None else default_ckpt_dir(model_name)
    found = {
        "transformer": _find_transformer(spec, folder, environ),
        "autoencoder": _find_autoencoder(folder, environ),
        "clip": _find_text_encoder(
            "CLIP-L text encoder",
            ("text_encoder", "tokenizer"),
            CLIP_ENV,
            "openai/clip-vit-large-patch14",
            folder,
            environ,
        ),
        "t5": _find_text_encoder(
            "T5-XXL text encoder", ("text_encoder_2", "tokenizer_2"), T5_ENV, "google/t5-v1_1-xxl", folder, environ
        ),
    }
    missing = [value for value in found.values() if isinstance(value, str)]
    if missing:
        raise CheckpointError(_missing_message(spec, folder, missing))
    return FluxWeights(**found)


def flux_weights_paths(weights: FluxWeights) -> dict[str, str]:
    """Where each component was found, for the records: information only (moving the weights changes nothing)."""
    return {
        "transformer": str(weights.transformer),
        "autoencoder": str(weights.autoencoder),
        "t5": str(weights.t5.model),
        "t5_tokenizer": str(weights.t5.tokenizer),
        "clip": str(weights.clip.model),
        "clip_tokenizer": str(weights.clip.tokenizer),
    }


def flux_weights_id(weights: FluxWeights) -> str:
    """The content identity of all four components and their tokenizers
    (:func:`~common.integrity.weights_fingerprint`: sizes and sampled chunks, a few MB read whatever the model size):
    images made from other weights get another id, moved or copied weights keep theirs."""
    paths = list(dict.fromkeys(Path(path) for path in flux_weights_paths(weights).values()))
    return weights_fingerprint(paths)


def _missing_message(spec: FluxModelSpec, folder: Path, missing: list[str]) -> str:
    other = next(s for s in FLUX_MODELS.values() if s is not spec)
    gated = " (gated: accept its license on huggingface.co first)" if spec.gated else ""
    lines = [
        f"{spec.repo.split('/')[1]} weights not found; nothing is downloaded: put the files in place and rerun.",
        f"  checkpoint folder (--ckpt-dir): {folder.absolute()}" + ("" if folder.is_dir() else "  (does not exist)"),
        *(f"  {entry}" for entry in missing),
        f"All four components are in the Hugging Face repository {spec.repo}{gated}:",
        f"  hf download {spec.repo} --local-dir {folder}",
        f"then pass --ckpt-dir {folder} (the {other.preset} model is {other.repo}).",
    ]
    return "\n".join(lines)


def transformer_params(path: str | Path, model_name: str) -> FluxParams:
    """The architecture of the transformer at ``path``: from a diffusers folder's config.json, else the preset of
    ``model_name``. Refuses a checkpoint whose guidance embedder disagrees with the model name."""
    spec = _spec(model_name)
    path = Path(path)
    preset = FLUX_PRESETS[spec.preset]
    if not path.is_dir():
        return preset
    config_path = path / CONFIG
    try:
        params = flux_params_from_diffusers_config(read_json_object(config_path, "Transformer config"))
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{config_path.absolute()} is not a FLUX transformer config: {exc}") from exc
    if params.guidance_embed != preset.guidance_embed:
        kind = "guidance-distilled (FLUX.1-dev)" if params.guidance_embed else "without guidance embedder (schnell)"
        raise CheckpointError(
            f"--model-name {model_name} does not match the transformer in {path.absolute()}: its config.json has "
            f"guidance_embeds={str(params.guidance_embed).lower()}, a transformer {kind}.\n"
            "Pass the --model-name of the checkpoint (flux-dev or flux-schnell), or the other model's --ckpt-dir."
        )
    return params


load_transformer = load_flux
"""The transformer loader (:func:`taylorseer_flux.model.load_flux`), under the name this module has always used."""


def _check_fits(params: FluxParams, components: FluxComponents, weights: FluxWeights) -> None:
    """The text encoders' widths and the AE's latents must be what the transformer reads."""
    problems = []
    for name, path, width, expected in (
        ("T5", weights.t5.model, components.t5.encoder.config.d_model, params.context_in_dim),
        ("CLIP", weights.clip.model, components.clip.encoder.config.hidden_size, params.vec_in_dim),
    ):
        if width != expected:
            problems.append(f"{name} at {path} has width {width}, the transformer reads {expected}")
    vae = components.autoencoder.config
    if vae.latent_channels != LATENT_CHANNELS or len(vae.block_out_channels) != VAE_LEVELS:
        problems.append(
            f"the autoencoder at {weights.autoencoder} has {vae.latent_channels} latent channels and "
            f"{len(vae.block_out_channels)} levels; FLUX's has {LATENT_CHANNELS} and {VAE_LEVELS} (8x downsampling)"
        )
    if problems:
        raise CheckpointError("The FLUX components do not fit together:\n  " + "\n  ".join(problems))


def load_flux_components(
    weights: FluxWeights,
    params: FluxParams,
    *,
    dtype: torch.dtype = torch.float32,
    max_sequence_length: int = 512,
) -> FluxComponents:
    """Load all four components on the CPU in ``dtype`` (the text encoders offline, ``local_files_only=True``)."""
    components = FluxComponents(
        transformer=load_flux(weights.transformer, params, dtype).requires_grad_(False),
        autoencoder=load_autoencoder(weights.autoencoder, dtype),
        t5=load_t5(weights.t5.model, weights.t5.tokenizer, max_sequence_length, dtype),
        clip=load_clip(weights.clip.model, weights.clip.tokenizer, dtype),
    )
    _check_fits(params, components, weights)
    return components
