"""The offline dataset of the bundled model: scikit-learn's 8x8 handwritten digits (1797 images, 10 classes).

Also the small CNN classifier that judges samples: its predicted class gives the class agreement of generated
digits, and its penultimate activations are the feature space of the FID used by the benchmark (Inception weights
cannot be downloaded here, and Inception features mean little on 16x16 digits anyway).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["DIGITS_IMAGE_SIZE", "load_digits", "DigitClassifier", "train_classifier", "load_classifier"]

DIGITS_IMAGE_SIZE = 16
ASSETS = Path(__file__).resolve().parent / "assets"
CLASSIFIER_PATH = ASSETS / "digits_classifier.safetensors"


def load_digits(image_size: int = DIGITS_IMAGE_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (1797, 1, S, S) in [-1, 1], labels (1797,)), upsampled bilinearly from 8x8."""
    from sklearn.datasets import load_digits as sklearn_digits  # scikit-learn ships the data; nothing is downloaded

    data = sklearn_digits()
    images = torch.from_numpy(data.images).float().unsqueeze(1) / 16.0  # pixel values are 0..16
    if image_size != 8:
        images = F.interpolate(images, size=(image_size, image_size), mode="bilinear", align_corners=False)
    return images.clamp(0, 1) * 2 - 1, torch.from_numpy(data.target).long()


def split_indices(n: int, test_fraction: float = 0.2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed train/test split of ``n`` items."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_test = int(n * test_fraction)
    return order[n_test:], order[:n_test]


class DigitClassifier(nn.Module):
    """16x16 grayscale digits in [-1, 1] -> 10 logits; ``features`` gives the 128-d penultimate activations."""

    feature_dim = 128

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1),  # 8x8
            nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=2, padding=1),  # 4x4
            nn.ReLU(),
        )
        self.fc = nn.Linear(64 * 4 * 4, self.feature_dim)
        self.head = nn.Linear(self.feature_dim, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != DIGITS_IMAGE_SIZE:
            x = F.interpolate(x, size=(DIGITS_IMAGE_SIZE, DIGITS_IMAGE_SIZE), mode="bilinear", align_corners=False)
        return F.relu(self.fc(self.conv(x).flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def train_classifier(epochs: int = 30, seed: int = 0) -> tuple[DigitClassifier, float]:
    """Train on 80 % of the digits with small random shifts; returns the model and its held-out accuracy."""
    torch.manual_seed(seed)
    images, labels = load_digits()
    train, test = split_indices(len(images))
    model = DigitClassifier()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    for _ in range(epochs):
        model.train()
        for batch in torch.randperm(len(train)).split(64):
            x, y = images[train[batch]], labels[train[batch]]
            shift = torch.randint(-1, 2, (2,)).tolist()  # robustness to the small misalignments of samples
            x = torch.roll(x, shifts=shift, dims=(2, 3))
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval(), accuracy(model, images[test], labels[test])


@torch.no_grad()
def accuracy(model: DigitClassifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    model.eval()
    return (model(images).argmax(1) == labels).float().mean().item()


def load_classifier(path: str | Path = CLASSIFIER_PATH) -> DigitClassifier:
    """The shipped classifier (``python TaylorSeer-DiT/train_classifier.py --output
    TaylorSeer-DiT/assets/digits_classifier.safetensors --overwrite`` rebuilds it)."""
    from common.checkpoint import load_state_dict_checked, read_state_dict, require_path

    path = require_path(
        path,
        "digits classifier",
        (
            "Rebuild it with `python TaylorSeer-DiT/train_classifier.py "
            "--output TaylorSeer-DiT/assets/digits_classifier.safetensors --overwrite`."
        ),
    )
    model = DigitClassifier()
    load_state_dict_checked(model, read_state_dict(path), source=str(path))
    return model.eval()
