"""Paired bootstrap statistics: confidence intervals for the difference a method makes against a reference run.

A benchmark that samples every method on the same noise and labels as full compute can compare them sample by sample:
sample i of a method and sample i of full compute share everything but the method. Resampling the sample indices (the
same resampled indices for every method) then gives the spread of any statistic, and of any difference between two
methods, that the finite set of samples leaves; most of the sample-to-sample variation cancels in the difference.

Everything here is a pure numpy function of its inputs and seed:

* :func:`bootstrap_indices` draws the resamples (optionally within strata, e.g. the labels of a design that fixes
  how many samples each class gets);
* :func:`bootstrap_mean`, :func:`bootstrap_rel_l2` and :func:`bootstrap_fid` evaluate a statistic on every resample
  at once (FID from feature moments, against a fixed reference whose matrix square root is taken once);
* :func:`percentile_interval` turns replicates into an interval.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "DEFAULT_LEVEL",
    "FrechetReference",
    "bootstrap_indices",
    "resample_counts",
    "bootstrap_mean",
    "bootstrap_rel_l2",
    "bootstrap_fid",
    "frechet_distance",
    "percentile_interval",
    "excludes_zero",
]

DEFAULT_LEVEL = 0.95
# Resamples whose (d x d) second moments are held at once in bootstrap_fid: 64 x 128 x 128 float64 is 8 MB.
FID_CHUNK = 64


def bootstrap_indices(
    n: int, resamples: int, seed: int, strata: Sequence[int] | np.ndarray | None = None
) -> np.ndarray:
    """``resamples`` bootstrap resamples of ``range(n)`` as an int64 array (resamples, n), drawn with replacement.

    With ``strata`` (one key per index), each resample draws within every stratum as many indices as it has, in
    ``np.unique`` order of the keys: a design that fixed the count per stratum keeps it in every resample."""
    if n < 1 or resamples < 1:
        raise ValueError(f"need at least one index and one resample, got n={n}, resamples={resamples}")
    rng = np.random.default_rng(seed)
    if strata is None:
        return rng.integers(0, n, size=(resamples, n))
    keys = np.asarray(strata)
    if keys.shape != (n,):
        raise ValueError(f"strata must hold one key per index: expected shape ({n},), got {keys.shape}")
    parts = []
    for key in np.unique(keys):
        members = np.flatnonzero(keys == key)
        parts.append(members[rng.integers(0, len(members), size=(resamples, len(members)))])
    return np.concatenate(parts, axis=1)


def resample_counts(indices: np.ndarray, n: int) -> np.ndarray:
    """How often each of the ``n`` indices occurs in each resample: int64 (resamples, n), rows summing to the
    resample size. Statistics that are weighted sums need only these."""
    resamples = len(indices)
    flat = (indices + n * np.arange(resamples)[:, None]).ravel()
    return np.bincount(flat, minlength=resamples * n).reshape(resamples, n)


def bootstrap_mean(values: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """The mean of ``values`` (one per index) on every resample: float64 (resamples,)."""
    return np.asarray(values, dtype=np.float64)[indices].mean(axis=1)


def bootstrap_rel_l2(squared_errors: np.ndarray, squared_norms: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """``||x - y|| / ||y||`` over the whole resampled set, from each sample's ``||x_i - y_i||^2`` and ``||y_i||^2``:
    float64 (resamples,)."""
    errors = np.asarray(squared_errors, dtype=np.float64)[indices].sum(axis=1)
    norms = np.asarray(squared_norms, dtype=np.float64)[indices].sum(axis=1)
    return np.sqrt(errors / norms)


@dataclass(frozen=True)
class FrechetReference:
    """The fixed side of a Fréchet distance: mean, covariance (ddof 1), and the covariance's symmetric square root,
    taken once so that each resample costs one symmetric eigenvalue problem."""

    mean: np.ndarray
    cov: np.ndarray
    cov_sqrt: np.ndarray

    @classmethod
    def of(cls, features: np.ndarray) -> FrechetReference:
        features = np.asarray(features, dtype=np.float64)
        if features.ndim != 2 or len(features) < 2:
            raise ValueError(f"need at least two feature vectors (N, d), got shape {features.shape}")
        cov = np.cov(features, rowvar=False).reshape(features.shape[1], features.shape[1])
        return cls(features.mean(axis=0), cov, symmetric_sqrt(cov))


def symmetric_sqrt(matrix: np.ndarray) -> np.ndarray:
    """The PSD square root of a symmetric PSD matrix; eigenvalues that round-off made negative count as 0."""
    values, vectors = np.linalg.eigh(matrix)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def frechet_distance(mean: np.ndarray, cov: np.ndarray, reference: FrechetReference) -> np.ndarray:
    """FID of (stacks of) Gaussians ``mean`` (..., d), ``cov`` (..., d, d) against ``reference``.

    tr sqrt(cov @ ref_cov) is the sum of the square roots of the eigenvalues of ref_cov^1/2 @ cov @ ref_cov^1/2,
    a symmetric PSD matrix with the same eigenvalues: ``eigvalsh`` of it is exact where the general ``eigvals``
    (torch-fidelity's) may return tiny imaginary parts. Negative round-off eigenvalues count as 0, as there."""
    root = reference.cov_sqrt
    product = root @ cov @ root
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh(product), 0, None)).sum(axis=-1)
    diff = mean - reference.mean
    traces = np.trace(cov, axis1=-2, axis2=-1) + np.trace(reference.cov)
    return (diff * diff).sum(axis=-1) + traces - 2 * tr_covmean


def bootstrap_fid(features: np.ndarray, reference: FrechetReference, indices: np.ndarray) -> np.ndarray:
    """FID of ``features`` (N, d) against ``reference`` on every resample: float64 (resamples,).

    Each resample's mean and covariance (ddof 1) come from its index counts c: mean = c X / m and
    cov = (X^T diag(c) X - m mean mean^T) / (m - 1), m the resample size; the features are never copied per
    resample. Computed in chunks of resamples to bound memory."""
    x = np.asarray(features, dtype=np.float64)
    n, _ = x.shape
    counts = resample_counts(indices, n).astype(np.float64)
    size = indices.shape[1]
    if size < 2:
        raise ValueError("a covariance needs resamples of at least two indices")
    out = np.empty(len(indices))
    for start in range(0, len(indices), FID_CHUNK):
        weights = counts[start : start + FID_CHUNK]
        mean = weights @ x / size
        second = np.swapaxes(x[None] * weights[:, :, None], 1, 2) @ x
        cov = (second - size * mean[:, :, None] * mean[:, None, :]) / (size - 1)
        out[start : start + FID_CHUNK] = frechet_distance(mean, cov, reference)
    return out


def percentile_interval(replicates: np.ndarray | Sequence[float], level: float = DEFAULT_LEVEL) -> tuple[float, float]:
    """The central ``level`` percentile interval of bootstrap ``replicates``: their (1 - level) / 2 and
    (1 + level) / 2 quantiles, linearly interpolated between order statistics (numpy's default quantile)."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    values = np.asarray(replicates, dtype=np.float64)
    if values.ndim != 1 or len(values) == 0 or not np.isfinite(values).all():
        raise ValueError("replicates must be a non-empty 1-D array of finite numbers")
    low, high = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def excludes_zero(interval: tuple[float, float]) -> bool:
    """Whether 0 lies outside the closed ``interval``: the difference it bounds has a sign at that level."""
    low, high = interval
    return low > 0 or high < 0
