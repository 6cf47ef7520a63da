"""Paired quality metrics: how close accelerated outputs stay to the full-compute outputs, and CLIP score.

The paper scores an accelerated FLUX or HunyuanVideo run against the images or videos of the full-compute run with the
same prompts and seeds: PSNR, SSIM and LPIPS per aligned pair, then averaged (TaylorSeer, arXiv 2503.06923, Tables 1
and 3). Images are (N, 3, H, W) tensors, uint8 0..255 or floats in [0, 1]; every metric works on [0, 1] floats.

* PSNR: torchmetrics' ``peak_signal_noise_ratio`` per pair (data range 1), capped at :data:`PSNR_CAP_DB`.
* SSIM: torchmetrics' ``structural_similarity_index_measure`` per pair (Gaussian window 11, sigma 1.5, k1 0.01,
  k2 0.03; the three channels averaged).
* LPIPS: torchmetrics' LPIPS network (its shipped linear layers) on a torchvision backbone whose ImageNet weights are
  read from a local file only (:func:`load_lpips`); nothing is ever downloaded.
* Videos (:func:`video_metrics`): every frame pair is scored, the values are averaged over the frames of a video, and
  the callers average those per-video values over the videos.

CLIP score (:class:`ClipScorer`) is ``100 * max(cos(image embedding, text embedding), 0)`` per image, as torchmetrics'
CLIPScore defines it, from a local folder in the layout of ``openai/clip-vit-large-patch14``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from PIL import Image
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from common.checkpoint import CheckpointError, KeyPool, load_state_dict_checked, read_state_dict
from common.cli import warn
from common.report import markdown_table, resolve_device, save_report

__all__ = [
    "save_report",
    "PSNR_CAP_DB",
    "LPIPS_NETS",
    "LPIPS_WEIGHTS_ENV",
    "CLIP_MODEL_ENV",
    "DEFAULT_CLIP_MODEL",
    "CLIP_MODEL_URL",
    "PAIRED_METRICS",
    "FilePairs",
    "to_unit_float",
    "psnr",
    "ssim",
    "lpips",
    "lpips_weights_url",
    "default_lpips_weights",
    "resolve_lpips_weights",
    "load_lpips",
    "load_lpips_or_warn",
    "PairedImageMetrics",
    "video_metrics",
    "resolve_clip_model",
    "ClipScorer",
    "pair_files",
    "mean_or_none",
    "format_value",
    "markdown_table",
    "resolve_device",
]

# Identical pairs (MSE 0) have an infinite PSNR, which would make every mean that contains one infinite (and is not
# valid JSON). Values are capped here; a uint8 pair reaches the cap only when (nearly) identical.
PSNR_CAP_DB = 100.0
PAIRED_METRICS = ("psnr", "ssim", "lpips")

# LPIPS backbone name (torchmetrics) -> torchvision's constructor and weights enum, which names the file and its URL.
LPIPS_NETS = {
    "alex": ("alexnet", "AlexNet_Weights"),
    "vgg": ("vgg16", "VGG16_Weights"),
    "squeeze": ("squeezenet1_1", "SqueezeNet1_1_Weights"),
}
LPIPS_WEIGHTS_ENV = "TAYLORSEER_LPIPS_WEIGHTS"
PRETRAINED_DIR = Path("pretrained_models")
# torchmetrics' LPIPS keeps the backbone's layers in slices, each child named by its index in torchvision's
# ``features``: "slice2.3.weight" (AlexNet, VGG) or "slices.1.3.squeeze.weight" (SqueezeNet) is "features.3...".
_LPIPS_SLICE_KEY = re.compile(r"^(?:slice\d+|slices\.\d+)\.(\d+)\.(.+)$")

CLIP_MODEL_ENV = "TAYLORSEER_CLIP_MODEL"
DEFAULT_CLIP_MODEL = PRETRAINED_DIR / "clip-vit-large-patch14"
CLIP_MODEL_URL = "https://huggingface.co/openai/clip-vit-large-patch14"


def to_unit_float(images: torch.Tensor, name: str = "images") -> torch.Tensor:
    """(N, 3, H, W) uint8 0..255 or float in [0, 1] -> float32 in [0, 1]; anything else is a ValueError."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"{name}: expected RGB images of shape (N, 3, H, W), got {shape}")
    if images.dtype == torch.uint8:
        return images.float() / 255
    if not images.is_floating_point():
        raise ValueError(f"{name}: expected uint8 or floating-point images, got {images.dtype}")
    if images.numel() and (images.min() < 0 or images.max() > 1):
        raise ValueError(f"{name}: float images must lie in [0, 1], got [{images.min():.4g}, {images.max():.4g}]")
    return images.float()


def _unit_pair(reference: torch.Tensor, candidate: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    reference, candidate = to_unit_float(reference, "reference"), to_unit_float(candidate, "candidate")
    if reference.shape != candidate.shape:
        raise ValueError(
            f"reference and candidate differ in shape: {tuple(reference.shape)} vs {tuple(candidate.shape)}"
        )
    return reference, candidate.to(reference.device)


def psnr(reference: torch.Tensor, candidate: torch.Tensor) -> torch.Tensor:
    """PSNR in dB of each aligned pair, (N,), capped at :data:`PSNR_CAP_DB`."""
    reference, candidate = _unit_pair(reference, candidate)
    values = peak_signal_noise_ratio(candidate, reference, data_range=1.0, reduction="none", dim=(1, 2, 3))
    return values.clamp(max=PSNR_CAP_DB)


def ssim(reference: torch.Tensor, candidate: torch.Tensor) -> torch.Tensor:
    """SSIM of each aligned pair, (N,); images need at least 11 x 11 pixels (the Gaussian window)."""
    reference, candidate = _unit_pair(reference, candidate)
    return structural_similarity_index_measure(candidate, reference, data_range=1.0, reduction="none")


def lpips(reference: torch.Tensor, candidate: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """LPIPS distance of each aligned pair, (N,), with a network from :func:`load_lpips`."""
    reference, candidate = _unit_pair(reference, candidate)
    device = next(model.parameters()).device
    with torch.no_grad():
        # normalize=True: the network maps [0, 1] inputs to the [-1, 1] that LPIPS was trained on.
        distances = model(reference.to(device), candidate.to(device), normalize=True)  # (N, 1, 1, 1)
    return distances.flatten().to(reference.device)


def lpips_weights_url(net: str = "alex") -> str:
    """The URL from which torchvision would download the ImageNet weights of LPIPS' ``net`` backbone."""
    import torchvision.models

    _, weights_enum = _lpips_net(net)
    return getattr(torchvision.models, weights_enum).DEFAULT.url


def default_lpips_weights(net: str = "alex") -> Path:
    """``pretrained_models/<torchvision's file name>``, e.g. ``pretrained_models/alexnet-owt-7be5be79.pth``."""
    return PRETRAINED_DIR / lpips_weights_url(net).rsplit("/", 1)[1]


def _lpips_net(net: str) -> tuple[str, str]:
    if net not in LPIPS_NETS:
        raise ValueError(f"unknown LPIPS backbone '{net}'; choose from {', '.join(LPIPS_NETS)}")
    return LPIPS_NETS[net]


def resolve_lpips_weights(path: str | Path | None = None, net: str = "alex") -> Path:
    """The local backbone weights of LPIPS: ``path``, else $TAYLORSEER_LPIPS_WEIGHTS, else
    ``pretrained_models/<file>``, else the copy torchvision keeps in the torch hub cache ($TORCH_HOME).

    None found is a one-paragraph :class:`CheckpointError` naming the file, its URL and where to put it.
    """
    url = lpips_weights_url(net)
    filename = url.rsplit("/", 1)[1]
    default = default_lpips_weights(net)
    how_to_get = (
        f"download {url} to {default} (relative to the working directory), or point --lpips-weights or "
        f"${LPIPS_WEIGHTS_ENV} at the file; it is never downloaded here"
    )
    chosen = path or os.environ.get(LPIPS_WEIGHTS_ENV)
    if chosen:
        resolved = Path(chosen).expanduser()
        if resolved.is_file():
            return resolved
        raise CheckpointError(f"LPIPS backbone weights ({filename}) not found at {resolved.absolute()}: {how_to_get}")
    hub_copy = Path(torch.hub.get_dir()) / "checkpoints" / filename
    for candidate in (default, hub_copy):
        if candidate.is_file():
            return candidate
    raise CheckpointError(
        f"LPIPS needs torchvision's {LPIPS_NETS[net][0]} weights {filename}, found neither at {default.absolute()} "
        f"nor in the torch hub cache {hub_copy.parent}: {how_to_get}"
    )


def load_lpips(weights: str | Path | None = None, net: str = "alex", device: str | torch.device = "cpu") -> nn.Module:
    """torchmetrics' LPIPS network with torchvision backbone weights from a local file (see
    :func:`resolve_lpips_weights`); raises :class:`CheckpointError` when there is none or it does not fit.

    The network is built with a randomly initialised backbone, which downloads nothing, and its linear layers come
    from the file torchmetrics ships; the backbone's ``features.*`` tensors are then taken from the file (a full
    torchvision state dict, whose classifier is ignored, or its ``features`` part alone).
    """
    from torchmetrics.functional.image.lpips import _NoTrainLpips

    path = resolve_lpips_weights(weights, net)
    state_dict = read_state_dict(path)
    features = {key: value for key, value in state_dict.items() if key.startswith("features.")}
    if not features:
        raise CheckpointError(
            f"{path.absolute()} holds no 'features.*' tensors: not torchvision {LPIPS_NETS[net][0]} weights "
            f"(expected {lpips_weights_url(net).rsplit('/', 1)[1]})"
        )
    model = _NoTrainLpips(net=net, pretrained=True, pnet_rand=True)
    pool = KeyPool(features, f"torchvision {LPIPS_NETS[net][0]} features")
    backbone: dict[str, torch.Tensor] = {}
    for key in model.net.state_dict():
        match = _LPIPS_SLICE_KEY.match(key)
        if match is None:
            raise RuntimeError(f"unexpected key {key!r} in torchmetrics' LPIPS backbone")
        tensor = pool.take(f"features.{match[1]}.{match[2]}")
        if tensor is not None:
            backbone[key] = tensor
    pool.finish()
    load_state_dict_checked(model.net, backbone, str(path), model_desc=f"LPIPS {net} backbone")
    return model.to(device).eval()


def load_lpips_or_warn(
    weights: str | Path | None = None, net: str = "alex", device: str | torch.device = "cpu"
) -> nn.Module | None:
    """:func:`load_lpips`. Weights the user named (``weights`` or $TAYLORSEER_LPIPS_WEIGHTS) must load: a
    :class:`CheckpointError` otherwise, since a typo must not quietly drop a metric. Without a name, the default
    places are tried and, when they hold nothing usable, one warning on stderr and None: the evaluate.py scripts
    then report LPIPS as null while PSNR and SSIM still run."""
    if weights or os.environ.get(LPIPS_WEIGHTS_ENV):
        return load_lpips(weights, net, device)
    try:
        return load_lpips(None, net, device)
    except CheckpointError as err:
        warn(f"LPIPS skipped (null), PSNR and SSIM still run: {err}")
        return None


class PairedImageMetrics:
    """PSNR, SSIM and (given an LPIPS network) LPIPS of aligned batches, computed on ``device``.

    Calling it on (N, 3, H, W) reference and candidate batches returns ``{"psnr", "ssim"[, "lpips"]}``, each a
    float64 CPU tensor of N per-pair values.
    """

    def __init__(self, lpips_model: nn.Module | None = None, device: str | torch.device = "cpu") -> None:
        self.lpips_model = lpips_model
        self.device = torch.device(device)

    @property
    def names(self) -> tuple[str, ...]:
        return PAIRED_METRICS if self.lpips_model is not None else PAIRED_METRICS[:2]

    def __call__(self, reference: torch.Tensor, candidate: torch.Tensor) -> dict[str, torch.Tensor]:
        reference, candidate = reference.to(self.device), candidate.to(self.device)
        values = {"psnr": psnr(reference, candidate), "ssim": ssim(reference, candidate)}
        if self.lpips_model is not None:
            values["lpips"] = lpips(reference, candidate, self.lpips_model)
        return {name: value.detach().double().cpu() for name, value in values.items()}


def _frames_tensor(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(T, H, W, 3) uint8 frames (what :func:`common.video_io.read_video` returns) -> (T, 3, H, W)."""
    frames = torch.as_tensor(np.asarray(frames)) if not isinstance(frames, torch.Tensor) else frames
    if frames.dim() != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected video frames of shape (T, H, W, 3), got {tuple(frames.shape)}")
    return frames.permute(0, 3, 1, 2)


def video_metrics(
    reference: np.ndarray | torch.Tensor,
    candidate: np.ndarray | torch.Tensor,
    metrics: PairedImageMetrics,
    batch_size: int = 16,
) -> dict[str, float]:
    """Frame-wise metrics of two aligned videos (T, H, W, 3), averaged over the T frames; ``num_frames`` is added.

    The frame counts and frame sizes must agree (a ValueError says which differs). Frames are scored
    ``batch_size`` at a time, so a long video never sits on the device as floats all at once.
    """
    reference, candidate = _frames_tensor(reference), _frames_tensor(candidate)
    if len(reference) != len(candidate):
        raise ValueError(f"frame counts differ: reference {len(reference)}, candidate {len(candidate)}")
    if reference.shape[2:] != candidate.shape[2:]:
        (h0, w0), (h1, w1) = reference.shape[2:], candidate.shape[2:]
        raise ValueError(f"frame sizes differ: reference {w0}x{h0}, candidate {w1}x{h1}")
    if len(reference) == 0:
        raise ValueError("videos without frames")
    totals = dict.fromkeys(metrics.names, 0.0)
    for start in range(0, len(reference), batch_size):
        values = metrics(reference[start : start + batch_size], candidate[start : start + batch_size])
        for name, value in values.items():
            totals[name] += float(value.sum())
    return {"num_frames": len(reference), **{name: total / len(reference) for name, total in totals.items()}}


def resolve_clip_model(path: str | Path | None = None) -> Path:
    """The local CLIP folder: ``path``, else $TAYLORSEER_CLIP_MODEL, else ``pretrained_models/clip-vit-large-patch14``.

    A folder without ``config.json`` is a one-paragraph :class:`CheckpointError` saying where to get one.
    """
    chosen = Path(path or os.environ.get(CLIP_MODEL_ENV) or DEFAULT_CLIP_MODEL).expanduser()
    if (chosen / "config.json").is_file():
        return chosen
    raise CheckpointError(
        f"no CLIP model folder (config.json, weights, tokenizer and preprocessor_config.json) at "
        f"{chosen.absolute()}: download {CLIP_MODEL_URL} into {DEFAULT_CLIP_MODEL} (e.g. huggingface-cli download "
        f"openai/clip-vit-large-patch14 --local-dir {DEFAULT_CLIP_MODEL}), or point --clip-model or "
        f"${CLIP_MODEL_ENV} at one; it is never downloaded here"
    )


class ClipScorer:
    """CLIP score of images against their prompts: ``100 * max(cos(E_image, E_text), 0)`` per image.

    ``model_dir`` is a local Hugging Face folder holding a ``CLIPModel``, its ``CLIPImageProcessor`` and its
    tokenizer (the ``openai/clip-vit-large-patch14`` layout); it is read with ``local_files_only=True``. Prompts
    longer than the text encoder's positions (77 tokens for CLIP) are truncated, as torchmetrics does.
    """

    def __init__(self, model_dir: str | Path, device: str | torch.device = "cpu") -> None:
        from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

        self.model_dir = Path(model_dir)
        try:
            self.model = CLIPModel.from_pretrained(self.model_dir, local_files_only=True).eval().to(device)
            self.processor = CLIPImageProcessor.from_pretrained(self.model_dir, local_files_only=True)
            self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"could not load the CLIP model in {self.model_dir.absolute()}: {exc}") from exc
        self.device = torch.device(device)
        self.max_length = self.model.config.text_config.max_position_embeddings

    @torch.no_grad()
    def __call__(self, images: torch.Tensor | Sequence[Image.Image], prompts: Sequence[str]) -> torch.Tensor:
        """Per-image CLIP scores (N,) of N images (uint8/[0, 1] (N, 3, H, W) tensor or PIL images) and N prompts."""
        if isinstance(images, torch.Tensor):
            uint8 = (to_unit_float(images) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
            images = [Image.fromarray(image) for image in uint8]
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        pixels = self.processor(images=list(images), return_tensors="pt")["pixel_values"].to(self.device)
        text = self.tokenizer(
            list(prompts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.device)
        # The joint forward returns both projected embeddings in every transformers version (get_*_features
        # changed their return type in transformers 5).
        output = self.model(input_ids=text["input_ids"], attention_mask=text["attention_mask"], pixel_values=pixels)
        image_embeds = nn.functional.normalize(output.image_embeds.float(), dim=-1)  # (N, D)
        text_embeds = nn.functional.normalize(output.text_embeds.float(), dim=-1)  # (N, D)
        return (100 * (image_embeds * text_embeds).sum(-1)).clamp(min=0).double().cpu()


@dataclass
class FilePairs:
    """Files of the same name in a reference and a candidate folder, and those found on one side only."""

    names: list[str]
    only_reference: list[str] = field(default_factory=list)
    only_candidate: list[str] = field(default_factory=list)


def pair_files(reference_dir: str | Path, candidate_dir: str | Path, suffixes: Iterable[str]) -> FilePairs:
    """Pair the files directly inside two folders by name; only ``suffixes`` (case-insensitive) count, and hidden
    files (the partial files of an interrupted writer) are ignored."""
    wanted = {suffix.lower() for suffix in suffixes}

    def listing(folder: str | Path) -> set[str]:
        return {
            p.name
            for p in Path(folder).iterdir()
            if p.is_file() and p.suffix.lower() in wanted and not p.name.startswith(".")
        }

    reference, candidate = listing(reference_dir), listing(candidate_dir)
    return FilePairs(sorted(reference & candidate), sorted(reference - candidate), sorted(candidate - reference))


def mean_or_none(values: Iterable[float | None]) -> float | None:
    """The mean of ``values``; None when there are none or any is None (a metric that was not computed)."""
    values = list(values)
    if not values or any(value is None for value in values):
        return None
    return float(sum(values) / len(values))


def format_value(value: float | None, digits: int) -> str:
    """``value`` with ``digits`` decimals, or an en dash for a metric that was not computed."""
    return "–" if value is None else f"{value:.{digits}f}"
