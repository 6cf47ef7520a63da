"""FID, Inception Score, KID and precision/recall of generated images, through torch-fidelity.

Images come from a folder of PNG/JPEG files, an ``.npz`` in the layout of the ADM evaluation suite (``arr_0``: uint8
(N, H, W, C), as written by ``sample_ddp.py``), a uint8 tensor (N, C, H, W), or ``"digits"`` (the real images of the
offline digits dataset). Every source becomes a Dataset of uint8 (3, H, W) tensors, grayscale repeated to three
channels, exactly as torch-fidelity's own folder loader does: the three kinds of input then give identical metrics.

Two feature spaces:

* ``inception``: torch-fidelity's ``inception-v3-compat`` (the network of the published FIDs), with weights from a
  local file only; a missing file is a :class:`CheckpointError` raised before torch-fidelity could start a download.
* ``digits``: the penultimate layer of the shipped digits classifier (see :class:`DigitsFeatureExtractor`).

torch-fidelity's defaults assume tens of thousands of images; :func:`compute_metrics` adapts the few settings that
fail or mislead with small sets (KID subset size, ISC splits, PRC neighbourhood). It runs torch-fidelity's feature
extraction and metric functions itself rather than ``calculate_metrics``, so that torch-fidelity never reads its own
feature cache (``torch.load`` with ``weights_only=False``: a planted file would run code). Features are cached only
when asked for, as ``.safetensors`` files (plain tensors, nothing to execute) that carry their key and checksums.

A damaged input (a truncated PNG or ``.npz`` left by a killed sampling run) ends in one message that names the file
and says to re-generate or delete it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import warnings
import zipfile
import zlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch_fidelity
from PIL import Image
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch.utils.data import Dataset
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3
from torch_fidelity.metric_fid import fid_featuresdict_to_statistics, fid_statistics_to_metric
from torch_fidelity.metric_isc import isc_featuresdict_to_metric
from torch_fidelity.metric_kid import kid_featuresdict_to_metric
from torch_fidelity.metric_prc import prc_featuresdict_to_metric
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY
from torch_fidelity.utils import (
    create_feature_extractor,
    get_featuresdict_from_dataset,
    resolve_feature_layer_for_metric,
)

from common.checkpoint import CheckpointError, read_state_dict, require_path
from common.cli import warn
from common.images import to_uint8
from common.integrity import verify_png
from common.report import resolve_device
from taylorseer_dit.digits import CLASSIFIER_PATH, DIGITS_IMAGE_SIZE, DigitClassifier, load_classifier, load_digits

__all__ = [
    "METRICS",
    "FEATURE_EXTRACTORS",
    "DIGITS_EXTRACTOR_NAME",
    "INCEPTION_EXTRACTOR_NAME",
    "INCEPTION_WEIGHTS_ENV",
    "DEFAULT_INCEPTION_WEIGHTS",
    "ImageSource",
    "DamagedImageError",
    "UInt8ImageDataset",
    "ImageFolderDataset",
    "DigitsDataset",
    "DigitsFeatureExtractor",
    "register_digits_extractor",
    "resolve_inception_weights",
    "open_images",
    "compute_metrics",
    "fid_features",
    "fid_of_features",
    "feature_cache_path",
]

METRICS = ("fid", "isc", "kid", "prc")
FEATURE_EXTRACTORS = ("inception", "digits")
DIGITS_EXTRACTOR_NAME = "digits-classifier"
INCEPTION_EXTRACTOR_NAME = "inception-v3-compat"
INCEPTION_WEIGHTS_ENV = "TAYLORSEER_INCEPTION_WEIGHTS"
# The file name torch-fidelity downloads, so that a copy fetched by hand is found where the docs say to put it.
DEFAULT_INCEPTION_WEIGHTS = Path("pretrained_models") / URL_INCEPTION_V3.rsplit("/", 1)[1]
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")  # what torch-fidelity's folder loader accepts
NPZ_KEY = "arr_0"
MIN_IMAGES = 2  # a covariance, an unbiased MMD and a nearest neighbour all need two points
KID_SUBSET_SIZE = 1000
ISC_SPLITS = 10
PRC_NEIGHBORHOOD = 3
# torch-fidelity's in-memory precision/recall holds three N1 x N2 float matrices: 3 x 10k^2 x 4 B = 1.2 GB.
PRC_FULL_MATRIX_MAX = 10_000
# Bumped whenever the cached features would change for the same images (conversion, feature layers, file layout).
CACHE_VERSION = "v2"
CACHE_SUFFIX = ".safetensors"
# torch-fidelity's result keys -> ours, in the order results are reported.
RESULT_KEYS = {
    torch_fidelity.KEY_METRIC_FID: "fid",
    torch_fidelity.KEY_METRIC_ISC_MEAN: "isc_mean",
    torch_fidelity.KEY_METRIC_ISC_STD: "isc_std",
    torch_fidelity.KEY_METRIC_KID_MEAN: "kid_mean",
    torch_fidelity.KEY_METRIC_KID_STD: "kid_std",
    torch_fidelity.KEY_METRIC_PRECISION: "precision",
    torch_fidelity.KEY_METRIC_RECALL: "recall",
    torch_fidelity.KEY_METRIC_F_SCORE: "f_score",
}

ImageSource = str | Path | torch.Tensor | Dataset


class DamagedImageError(ValueError):
    """An image file that does not decode (truncated by a killed writer, or not an image at all)."""


class UInt8ImageDataset(Dataset):
    """In-memory uint8 images (N, C, H, W), C 1 or 3, served one at a time as (3, H, W) as torch-fidelity expects."""

    def __init__(self, images: torch.Tensor, name: str = "tensor") -> None:
        if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8:
            kind = images.dtype if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"{name}: expected a uint8 tensor of images, got {kind}")
        if images.dim() != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"{name}: expected uint8 images of shape (N, 1 or 3, H, W), got {tuple(images.shape)}")
        self.images = images.cpu()
        self.name = name

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.images[index].expand(3, -1, -1)


class ImageFolderDataset(Dataset):
    """The PNG/JPEG files directly inside a folder, in sorted order, read lazily as uint8 (3, H, W) RGB tensors."""

    def __init__(self, folder: str | Path, what: str = "images") -> None:
        self.folder = Path(folder)
        self.what = what
        self.files = sorted(p for p in self.folder.iterdir() if is_image_file(p))
        if not self.files:
            raise ValueError(f"no {'/'.join(s[1:].upper() for s in IMAGE_SUFFIXES)} images in folder {self.folder}")
        self.size = self._common_size()

    def _common_size(self) -> tuple[int, int]:
        """Checked up front (headers only, ~2 s per 50k files): batches are stacked, and a stray size would otherwise
        fail inside a DataLoader worker, as a traceback."""
        sizes: dict[tuple[int, int], Path] = {}
        for path in self.files:
            try:
                with Image.open(path) as image:
                    sizes.setdefault(image.size, path)
            except OSError as exc:  # PIL's UnidentifiedImageError for a truncated or mislabelled file is one
                raise DamagedImageError(damaged_message(self.what, {path: str(exc)})) from None
            if len(sizes) > 1:
                (w0, h0), (w1, h1) = sizes
                raise ValueError(
                    f"images of two sizes in {self.folder}: {sizes[(w0, h0)].name} is {w0}x{h0}, "
                    f"{sizes[(w1, h1)].name} is {w1}x{h1}: metrics compare images of one size, so move the others "
                    "out (or re-generate them)"
                )
        return next(iter(sizes))

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> torch.Tensor:
        # Only the header was read up front: a file cut after it fails here, inside a DataLoader worker, whose
        # wrapped message would be a traceback; the type tells the extraction loop to find and name the file.
        path = self.files[index]
        try:
            with Image.open(path) as image:
                rgb = image.convert("RGB")
        except (OSError, SyntaxError, ValueError) as exc:
            raise DamagedImageError(f"cannot decode image {path}: {exc}") from exc
        return torch.from_numpy(np.asarray(rgb).copy()).permute(2, 0, 1)

    def damaged_files(self) -> dict[Path, str]:
        """Every file that does not decode completely at the common size, with the reason: one full decode of each
        file, so it is run only after a read has failed."""
        return {path: reason for path in self.files if (reason := verify_png(path, self.size))}


def damaged_message(what: str, damaged: dict[Path, str]) -> str:
    """One line naming the damaged files (the first three) and the fix."""
    names = [f"{path} ({' '.join(reason.split())})" for path, reason in list(damaged.items())[:3]]
    more = f" and {len(damaged) - 3} more" if len(damaged) > 3 else ""
    files, them = ("files", "them") if len(damaged) > 1 else ("file", "it")
    return (
        f"{what}: damaged image {files} {', '.join(names)}{more}: re-generate {them} (rerun the sampling command) "
        f"or delete {them}"
    )


def is_image_file(path: Path) -> bool:
    """A PNG/JPEG file that is not hidden: temporary files of interrupted writers and macOS '._*' files are."""
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


class DigitsDataset(UInt8ImageDataset):
    """The real digits dataset, quantised to uint8 as a PNG writer would; its own type so caching can recognise it."""

    def __init__(self) -> None:
        super().__init__(digits_uint8(), "digits")


def digits_uint8(image_size: int = DIGITS_IMAGE_SIZE) -> torch.Tensor:
    """The real digits as uint8 (N, 1, S, S)."""
    images, _ = load_digits(image_size)
    return to_uint8(images)


def read_npz(path: Path) -> torch.Tensor:
    """``arr_0`` of an ADM-style ``.npz``, uint8 (N, H, W, C), as a uint8 (N, C, H, W) tensor. A file cut short by
    a killed writer (no zip directory, a bad CRC, a short array) is a DamagedImageError naming the fix."""
    fix = "re-generate it (rerun the sampling command that wrote it) or delete it"
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DamagedImageError(f"{path} could not be read as an .npz file ({exc}): {fix}") from None
    if not isinstance(data, Mapping):  # np.load returns a bare array for a .npy file named .npz
        raise ValueError(f"{path} holds a single .npy array, not an .npz archive with '{NPZ_KEY}'")
    with data:
        if NPZ_KEY not in data.files:
            raise ValueError(
                f"{path} has no '{NPZ_KEY}' array (found: {', '.join(data.files) or 'nothing'}); "
                "expected the ADM layout: arr_0 = uint8 images (N, H, W, C)"
            )
        try:
            array = data[NPZ_KEY]
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
            raise DamagedImageError(f"{path}: '{NPZ_KEY}' is damaged ({exc}): {fix}") from None
    if array.dtype != np.uint8 or array.ndim != 4 or array.shape[-1] not in (1, 3):
        raise ValueError(
            f"{path}: '{NPZ_KEY}' must be uint8 images (N, H, W, C) with C 1 or 3, got {array.dtype} {array.shape}"
        )
    return torch.from_numpy(array).permute(0, 3, 1, 2)


def open_images(source: ImageSource, what: str = "images") -> Dataset:
    """Any supported image source as a torch Dataset of uint8 (3, H, W) tensors, with at least two images.

    The string ``"digits"`` always means the dataset; a folder of that name is reached as ``./digits``.
    """
    if isinstance(source, Dataset):
        dataset = source
    elif isinstance(source, torch.Tensor):
        dataset = UInt8ImageDataset(source, what)
    elif isinstance(source, str) and source == "digits":
        dataset = DigitsDataset()
    elif isinstance(source, str | Path):
        dataset = open_path(Path(source).expanduser(), what)
    else:
        raise ValueError(f"{what}: unsupported image source {type(source).__name__}")
    if len(dataset) < MIN_IMAGES:
        raise ValueError(f"{what}: need at least {MIN_IMAGES} images, got {len(dataset)}")
    return dataset


def open_path(path: Path, what: str) -> Dataset:
    if path.is_dir():
        return ImageFolderDataset(path, what)
    if path.is_file() and path.suffix.lower() == ".npz":
        return UInt8ImageDataset(read_npz(path), str(path))
    if not path.exists():
        raise ValueError(f"{what} not found: {path.absolute()}")
    raise ValueError(f"{what}: {path} is neither a folder of images nor an .npz file")


class DigitsFeatureExtractor(FeatureExtractorBase):
    """torch-fidelity feature extractor of the shipped digits classifier: the feature space of the offline benchmark.

    It exists because the standard Inception features cannot be used here: their weights are a download, which an
    offline machine cannot make, and Inception, trained on 299x299 photographs, says little about 16x16 grayscale
    digits anyway. The classifier's 128-d penultimate activations (``"128"``) play the role of Inception's pool3
    (FID, KID, precision/recall), and its logits without the output bias (``"logits_unbiased"``) that of Inception's
    unbiased logits (Inception Score, whose maximum is the 10 classes here). FIDs in this space are comparable with
    each other only, never with the ImageNet FIDs of the paper; KID in particular is orders of magnitude above
    Inception KIDs, because torch-fidelity's polynomial kernel sees these unnormalised activations.

    Inputs are what torch-fidelity feeds every extractor: uint8 (B, C, H, W) images, C 1 or 3. They are averaged to
    grayscale (exact for repeated channels), mapped to the classifier's [-1, 1] and resized to 16x16 if needed.
    """

    FEATURES = ("128", "logits_unbiased", "logits")

    def __init__(
        self,
        name: str,
        features_list: Sequence[str],
        feature_extractor_weights_path: str | Path | None = None,
        **kwargs: object,
    ) -> None:
        # torch-fidelity hands every extractor all of calculate_metrics' keyword arguments: the rest are not ours.
        super().__init__(name, list(features_list))
        self.classifier: DigitClassifier = load_classifier(feature_extractor_weights_path or CLASSIFIER_PATH)
        self.requires_grad_(False)
        self.eval()

    @staticmethod
    def get_provided_features_list() -> tuple[str, ...]:
        return DigitsFeatureExtractor.FEATURES

    @staticmethod
    def get_default_feature_layer_for_metric(metric: str) -> str:
        return {"isc": "logits_unbiased", "fid": "128", "kid": "128", "prc": "128"}[metric]

    @staticmethod
    def can_be_compiled() -> bool:
        return False  # a few thousand 16x16 images: compiling would cost more than it saves

    @staticmethod
    def get_dummy_input_for_compile() -> torch.Tensor:
        return torch.zeros(1, 3, DIGITS_IMAGE_SIZE, DIGITS_IMAGE_SIZE, dtype=torch.uint8)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"expected uint8 images (B, 1 or 3, H, W), got {images.dtype} {tuple(images.shape)}")
        x = images.float().mean(dim=1, keepdim=True) / 127.5 - 1
        features = self.classifier.features(x)
        head = self.classifier.head
        computed = {
            "128": features,
            "logits_unbiased": features @ head.weight.T,
            "logits": head(features),
        }
        return tuple(computed[name].float() for name in self.features_list)


def register_digits_extractor() -> str:
    """Register :class:`DigitsFeatureExtractor` with torch-fidelity (idempotent); returns its registered name.

    torch-fidelity refuses a second registration of a name, so an existing entry is kept; one left by an earlier
    import of this module (a reload: same qualified name, other class object) is replaced so that it runs this code.
    """
    registered = FEATURE_EXTRACTORS_REGISTRY.get(DIGITS_EXTRACTOR_NAME)
    if registered is None:
        torch_fidelity.register_feature_extractor(DIGITS_EXTRACTOR_NAME, DigitsFeatureExtractor)
    elif registered is not DigitsFeatureExtractor:
        if _qualified_name(registered) != _qualified_name(DigitsFeatureExtractor):
            raise ValueError(
                f"torch-fidelity already has a feature extractor named '{DIGITS_EXTRACTOR_NAME}': "
                f"{_qualified_name(registered)}"
            )
        FEATURE_EXTRACTORS_REGISTRY[DIGITS_EXTRACTOR_NAME] = DigitsFeatureExtractor
    return DIGITS_EXTRACTOR_NAME


def _qualified_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


register_digits_extractor()


def resolve_inception_weights(path: str | Path | None = None) -> Path:
    """The local Inception weights: ``path``, else $TAYLORSEER_INCEPTION_WEIGHTS, else the default file.

    Checked here because torch-fidelity, given no file, downloads one; a missing file is a CheckpointError that says
    where to get it and where to put it. The file is also read once with ``weights_only=True`` (torch-fidelity
    itself unpickles it without that guard), so a corrupt or foreign file fails readably and cannot run code.
    """
    chosen = path or os.environ.get(INCEPTION_WEIGHTS_ENV) or DEFAULT_INCEPTION_WEIGHTS
    how_to_get = (
        f"The Inception features of FID/IS/KID need torch-fidelity's InceptionV3 weights, which are never downloaded "
        f"here. Download them from\n  {URL_INCEPTION_V3}\nand put the file at {DEFAULT_INCEPTION_WEIGHTS} (relative "
        f"to the working directory), or point ${INCEPTION_WEIGHTS_ENV} or --inception-weights at it. Without them, "
        "use --feature-extractor digits for the bundled digits model."
    )
    resolved = require_path(chosen, "Inception weights", how_to_get)
    state_dict = read_state_dict(resolved)
    fc = state_dict.get("fc.weight")
    if fc is None or tuple(fc.shape) != (1008, 2048):
        raise CheckpointError(
            f"Not torch-fidelity's InceptionV3 weights (expected fc.weight of shape (1008, 2048)):\n"
            f"  {resolved.absolute()}\n{how_to_get}"
        )
    return resolved


def compute_metrics(
    samples: ImageSource,
    reference: ImageSource | None,
    *,
    metrics: Iterable[str] = ("fid", "isc", "kid"),
    feature_extractor: str = "inception",
    inception_weights: str | Path | None = None,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    kid_subset_size: int | None = None,
    cache_dir: str | Path | None = None,
    verbose: bool = False,
) -> dict[str, float]:
    """Metrics of ``samples`` against ``reference`` as a flat dict of floats.

    ``metrics`` among fid, isc (Inception Score of ``samples`` alone; ``reference`` may be None when it is the only
    one), kid and prc (precision, recall and their f_score; ``samples`` play the generated side). Keys: fid,
    isc_mean, isc_std, kid_mean, kid_std, precision, recall, f_score. ``kid_subset_size`` defaults to
    min(1000, N_samples, N_reference).

    Each of ``samples`` and ``reference`` is a folder of PNG/JPEG images, an ADM ``.npz``, a uint8 tensor
    (N, C, H, W), ``"digits"`` or a Dataset from :func:`open_images`.

    ``cache_dir`` keeps the features of a ``"digits"`` input there (see :func:`feature_cache_path`), so a later run
    skips their extraction; without it nothing is written to disk. A cache file that does not check out (another
    key, a bad checksum, a wrong shape, not safetensors at all) is replaced with a warning, never executed.
    """
    wanted = _check_metrics(metrics)
    if feature_extractor not in FEATURE_EXTRACTORS:
        raise ValueError(
            f"unknown feature extractor '{feature_extractor}'; choose from {', '.join(FEATURE_EXTRACTORS)}"
        )
    device = resolve_device(device)
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"torch-fidelity runs on the CPU or a CUDA GPU, not on '{device}'")
    inputs = {"samples": open_images(samples, "samples")}
    if wanted != {"isc"}:  # ISC is computed from the samples alone
        if reference is None:
            raise ValueError("a reference is needed for fid, kid and prc (isc alone is computed from the samples)")
        inputs["reference"] = open_images(reference, "reference")
    weights = resolve_inception_weights(inception_weights) if feature_extractor == "inception" else CLASSIFIER_PATH
    sizes = [len(dataset) for dataset in inputs.values()]
    settings = _fidelity_kwargs(wanted, sizes, feature_extractor, weights, batch_size, kid_subset_size, verbose)
    settings["cuda"] = device.type == "cuda"
    layers = {metric: resolve_feature_layer_for_metric(metric, **settings) for metric in sorted(wanted)}
    cache = None if cache_dir is None else Path(cache_dir).expanduser()
    with _cuda_device(device), warnings.catch_warnings():
        # torch-fidelity asks for up to 4 DataLoader workers whatever the core count, and torch warns about it.
        warnings.filterwarnings("ignore", message="This DataLoader will create", category=UserWarning)
        extractor = create_feature_extractor(settings["feature_extractor"], sorted(set(layers.values())), **settings)
        features = [_features(dataset, what, extractor, settings, cache, weights) for what, dataset in inputs.items()]
    results = _metrics_from_features(layers, features, settings)
    return {ours: float(results[theirs]) for theirs, ours in RESULT_KEYS.items() if theirs in results}


def fid_features(
    images: ImageSource,
    what: str = "images",
    *,
    feature_extractor: str = "inception",
    inception_weights: str | Path | None = None,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """The (N, d) features that :func:`compute_metrics` computes FID on, extracted exactly as it extracts them: with
    :func:`fid_of_features`, the same FID. For statistics that need the features themselves (a bootstrap over
    samples), and to extract a fixed reference once rather than once per comparison."""
    if feature_extractor not in FEATURE_EXTRACTORS:
        raise ValueError(
            f"unknown feature extractor '{feature_extractor}'; choose from {', '.join(FEATURE_EXTRACTORS)}"
        )
    device = resolve_device(device)
    dataset = open_images(images, what)
    weights = resolve_inception_weights(inception_weights) if feature_extractor == "inception" else CLASSIFIER_PATH
    settings = _fidelity_kwargs({"fid"}, [len(dataset)], feature_extractor, weights, batch_size, None, False)
    settings["cuda"] = device.type == "cuda"
    layer = resolve_feature_layer_for_metric("fid", **settings)
    with _cuda_device(device), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="This DataLoader will create", category=UserWarning)
        extractor = create_feature_extractor(settings["feature_extractor"], [layer], **settings)
        return _features(dataset, what, extractor, settings, None, weights)[layer]


def fid_of_features(samples: torch.Tensor, reference: torch.Tensor) -> float:
    """FID between two sets of :func:`fid_features`, by torch-fidelity's own functions (as in compute_metrics)."""
    stats = [fid_featuresdict_to_statistics({"fid": f}, "fid") for f in (samples, reference)]
    return float(fid_statistics_to_metric(*stats, False)[torch_fidelity.KEY_METRIC_FID])


def _check_metrics(metrics: Iterable[str]) -> set[str]:
    wanted = set(metrics)
    unknown = sorted(wanted - set(METRICS))
    if unknown or not wanted:
        raise ValueError(f"unknown or no metrics {unknown}; choose from {', '.join(METRICS)}")
    return wanted


def _fidelity_kwargs(
    wanted: set[str],
    sizes: list[int],
    feature_extractor: str,
    weights: Path,
    batch_size: int,
    kid_subset_size: int | None,
    verbose: bool,
) -> dict[str, object]:
    """torch-fidelity's keyword arguments (those its extractors and metric functions read), with the small-N
    settings that its defaults would fail on."""
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    kwargs: dict[str, object] = {
        # Always named: with none, torch-fidelity picks VGG16 for prc (another download) next to Inception for the rest.
        "feature_extractor": INCEPTION_EXTRACTOR_NAME if feature_extractor == "inception" else DIGITS_EXTRACTOR_NAME,
        "feature_extractor_weights_path": str(weights),
        "batch_size": batch_size,
        # Fewer than 10 images would leave empty ISC splits (NaN); N splits of one image give a finite 1.0.
        "isc_splits": min(ISC_SPLITS, sizes[0]),
        # The k-th neighbour of the precision/recall balls must exist in each set.
        "prc_neighborhood": min(PRC_NEIGHBORHOOD, min(sizes) - 1),
        # Large sets: the row-batched precision/recall, and no DataLoader workers (torch-fidelity ties both to this).
        "save_cpu_ram": "prc" in wanted and max(sizes) > PRC_FULL_MATRIX_MAX,
        "verbose": verbose,
    }
    if "kid" in wanted:
        kwargs["kid_subset_size"] = _kid_subset_size(kid_subset_size, sizes)
    return kwargs


def _kid_subset_size(requested: int | None, sizes: list[int]) -> int:
    """torch-fidelity draws subsets without replacement, so a subset cannot exceed the smaller set."""
    smallest = min(sizes)
    if requested is None:
        return min(KID_SUBSET_SIZE, smallest)
    if not MIN_IMAGES <= requested <= smallest:
        raise ValueError(f"KID subset size must be in [{MIN_IMAGES}, {smallest}] (the smaller set), got {requested}")
    return requested


def _metrics_from_features(
    layers: dict[str, str], features: list[dict[str, torch.Tensor]], settings: dict[str, object]
) -> dict[str, float]:
    """torch-fidelity's metrics of the extracted features, keyed as ``calculate_metrics`` keys them (the same
    functions it calls, in the same way: the numbers are identical)."""
    first, second = features[0], features[-1]
    results: dict[str, float] = {}
    if "isc" in layers:
        results |= isc_featuresdict_to_metric(first, layers["isc"], **settings)
    if "fid" in layers:
        stats = [fid_featuresdict_to_statistics(f, layers["fid"]) for f in (first, second)]
        results |= fid_statistics_to_metric(*stats, settings["verbose"])
    if "kid" in layers:
        results |= kid_featuresdict_to_metric(first, second, layers["kid"], **settings)
    if "prc" in layers:
        results |= prc_featuresdict_to_metric(first, second, layers["prc"], **settings)
    return results


def _features(
    dataset: Dataset,
    what: str,
    extractor: FeatureExtractorBase,
    settings: dict[str, object],
    cache_dir: Path | None,
    weights: Path,
) -> dict[str, torch.Tensor]:
    """The features of ``dataset``: from the cache when it holds them intact, else extracted (and then cached).

    Only the digits dataset is cached: samples change from run to run, and a cache keyed by their content would
    only grow."""
    if cache_dir is None or not isinstance(dataset, DigitsDataset):
        return _extract(dataset, what, extractor, settings)
    layers = sorted(extractor.get_requested_features_list())
    key = _cache_key(dataset, extractor.get_name(), layers, weights)
    path = feature_cache_path(cache_dir, dataset.name, extractor.get_name(), key)
    cached = _read_cache(path, key, _feature_dims(dataset, extractor, settings), len(dataset))
    if cached is not None:
        return cached
    features = _extract(dataset, what, extractor, settings)
    _write_cache(path, key, features)
    return features


def _extract(
    dataset: Dataset, what: str, extractor: FeatureExtractorBase, settings: dict[str, object]
) -> dict[str, torch.Tensor]:
    """torch-fidelity's feature extraction; a damaged image file ends in one message naming it (and any others)."""
    if isinstance(dataset, UInt8ImageDataset):
        return _extract_in_memory(dataset, extractor, settings)
    try:
        return get_featuresdict_from_dataset(
            dataset,
            extractor,
            settings["batch_size"],
            settings["cuda"],
            settings["save_cpu_ram"],
            settings["verbose"],
        )
    except DamagedImageError:
        # Raised in a DataLoader worker, the error arrives with the worker's traceback as its message: find the
        # files again here (a full decode of each) and name them all, so one rerun fixes everything.
        damaged = dataset.damaged_files() if isinstance(dataset, ImageFolderDataset) else {}
        if not damaged:
            raise DamagedImageError(
                f"{what}: an image could not be read while extracting features; check the files"
            ) from None
        raise DamagedImageError(damaged_message(what, damaged)) from None


def _extract_in_memory(
    dataset: UInt8ImageDataset, extractor: FeatureExtractorBase, settings: dict[str, object]
) -> dict[str, torch.Tensor]:
    """The batches torch-fidelity's loader would stack (same order, same size, contiguous), sliced straight from
    memory: its DataLoader would fork up to 4 workers per input only to index a tensor."""
    batch_size = min(settings["batch_size"], len(dataset))
    parts: dict[str, list[torch.Tensor]] = {}
    with torch.no_grad():
        for start in range(0, len(dataset), batch_size):
            batch = dataset.images[start : start + batch_size].expand(-1, 3, -1, -1).contiguous()
            if settings["cuda"]:
                batch = batch.cuda(non_blocking=True)
            features = extractor.convert_features_tuple_to_dict(extractor(batch))
            for name, tensor in features.items():
                parts.setdefault(name, []).append(tensor.cpu())
    return {name: torch.cat(tensors) for name, tensors in parts.items()}


def feature_cache_path(cache_dir: str | Path, input_name: str, extractor_name: str, key: str) -> Path:
    """Where the features of one input live in ``cache_dir``: the key (a hash of the images, the extractor, its
    layers and weights) in the name, so that another input or other weights never find this file."""
    return Path(cache_dir) / f"taylorseer-{input_name}-{extractor_name}-{key[:16]}{CACHE_SUFFIX}"


def _cache_key(dataset: UInt8ImageDataset, extractor_name: str, layers: list[str], weights: Path) -> str:
    """A hash of everything the cached features depend on: format version, extractor and its layers, the images and
    the extractor's weights."""
    digest = hashlib.sha256(json.dumps([CACHE_VERSION, extractor_name, layers]).encode())
    digest.update(dataset.images.numpy().tobytes())
    with open(weights, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _feature_dims(dataset: Dataset, extractor: FeatureExtractorBase, settings: dict[str, object]) -> dict[str, int]:
    """Each layer's feature width, from one image: what a cached tensor's shape must match."""
    image = dataset[0][None]
    with torch.no_grad():
        features = extractor(image.cuda() if settings["cuda"] else image)
    return {name: tensor.shape[1] for name, tensor in extractor.convert_features_tuple_to_dict(features).items()}


def _tensor_sha256(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.contiguous().numpy().tobytes()).hexdigest()


def _read_cache(path: Path, key: str, dims: dict[str, int], count: int) -> dict[str, torch.Tensor] | None:
    """The features stored at ``path`` if they are intact and are the ones asked for, else None (a warning says why
    when a file was there). safetensors holds raw tensors and a JSON header, so reading a planted file cannot run
    code; the checksums catch a damaged or edited one."""
    if path.is_dir():
        raise ValueError(f"feature cache {path} is a folder: move it away or choose another --cache-dir")
    if not path.exists():
        return None
    try:
        with safe_open(str(path), framework="pt") as file:
            metadata = file.metadata() or {}
            stored = set(file.keys())
            features = {name: file.get_tensor(name) for name in dims if name in stored}
    except (OSError, SafetensorError, ValueError) as exc:
        problem = f"is not a readable safetensors file ({' '.join(str(exc).split())})"
    else:
        problem = _cache_problem(metadata, features, key, dims, count)
    if problem is None:
        return features
    warn(f"feature cache {path} {problem}: extracting the features again and replacing it")
    return None


def _cache_problem(
    metadata: dict[str, str], features: dict[str, torch.Tensor], key: str, dims: dict[str, int], count: int
) -> str | None:
    """Why cached features cannot be used, or None."""
    if metadata.get("format") != CACHE_VERSION or metadata.get("key") != key:
        return "was written for other images, weights or settings"
    for name, width in dims.items():
        tensor = features.get(name)
        if tensor is None:
            return f"lacks the features of layer {name}"
        if tensor.dtype != torch.float32 or tuple(tensor.shape) != (count, width):
            return f"holds {tensor.dtype} {tuple(tensor.shape)} for layer {name}, expected float32 {(count, width)}"
        if metadata.get(f"sha256:{name}") != _tensor_sha256(tensor):
            return f"fails the checksum of layer {name} (damaged or edited)"
    return None


def _write_cache(path: Path, key: str, features: dict[str, torch.Tensor]) -> None:
    """Write the features to a temporary file beside ``path`` and rename it: a killed run leaves no half file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {name: tensor.float().contiguous() for name, tensor in features.items()}
    metadata = {"format": CACHE_VERSION, "key": key, **{f"sha256:{n}": _tensor_sha256(t) for n, t in tensors.items()}}
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file(tensors, str(temporary), metadata=metadata)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _cuda_device(device: torch.device) -> contextlib.AbstractContextManager:
    """torch-fidelity only knows ``cuda=True`` (the current GPU): make ``cuda:i`` the current one."""
    if device.type == "cuda" and device.index is not None:
        return torch.cuda.device(device.index)
    return contextlib.nullcontext()
