"""common/paired_stats.py against hand-computed values on tiny inputs."""

import numpy as np
import pytest
import torch
from torch_fidelity import KEY_METRIC_FID
from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

from common import paired_stats as ps


def test_bootstrap_indices_are_seeded_in_range_and_keep_strata_counts():
    first = ps.bootstrap_indices(5, 3, seed=7)
    assert first.shape == (3, 5) and first.dtype == np.int64 and first.min() >= 0 and first.max() <= 4
    assert np.array_equal(first, ps.bootstrap_indices(5, 3, seed=7))
    assert not np.array_equal(first, ps.bootstrap_indices(5, 3, seed=8))
    strata = [0, 1, 0, 1, 1, 2]
    drawn = ps.bootstrap_indices(6, 200, seed=0, strata=strata)
    # Stratum 0 (indices 0, 2) fills the first two columns, stratum 1 (1, 3, 4) the next three, stratum 2 the last.
    assert set(np.unique(drawn[:, :2])) == {0, 2} and set(np.unique(drawn[:, 2:5])) == {1, 3, 4}
    assert (drawn[:, 5] == 5).all()
    # Every index its own stratum: each resample is the identity, so any statistic has a zero-width interval.
    identity = ps.bootstrap_indices(4, 3, seed=0, strata=[3, 2, 1, 0])
    assert identity.tolist() == [[3, 2, 1, 0]] * 3


@pytest.mark.parametrize(
    ("n", "resamples", "strata", "message"),
    [(0, 3, None, "at least one index"), (3, 0, None, "one resample"), (3, 2, [0, 1], r"shape \(3,\)")],
)
def test_bootstrap_indices_refuse_empty_or_mismatched_inputs(n, resamples, strata, message):
    with pytest.raises(ValueError, match=message):
        ps.bootstrap_indices(n, resamples, seed=0, strata=strata)


def test_resample_counts_and_the_statistics_of_given_resamples():
    indices = np.array([[0, 0, 0, 0], [3, 3, 3, 3], [0, 1, 2, 3], [1, 1, 2, 0]])
    assert ps.resample_counts(indices, 4).tolist() == [[4, 0, 0, 0], [0, 0, 0, 4], [1, 1, 1, 1], [1, 2, 1, 0]]
    assert ps.bootstrap_mean(np.array([1.0, 2.0, 3.0, 4.0]), indices).tolist() == [1.0, 4.0, 2.5, 2.0]
    # Resample [1, 1, 2, 0] sums the squared errors 4 + 4 + 0 + 9 = 17 over the squared norms 1 + 1 + 1 + 4 = 7.
    errors, norms = np.array([9.0, 4.0, 0.0, 16.0]), np.array([4.0, 1.0, 1.0, 4.0])
    expected = [np.sqrt(36 / 16), np.sqrt(64 / 16), np.sqrt(29 / 10), np.sqrt(17 / 7)]
    assert ps.bootstrap_rel_l2(errors, norms, indices) == pytest.approx(expected, rel=1e-15)


def test_frechet_distance_in_one_dimension_is_the_hand_formula():
    # d = 1: FID = (m1 - m2)^2 + (s1 - s2)^2 with standard deviations s (ddof 1).
    reference = ps.FrechetReference.of(np.array([[1.0], [3.0]]))  # mean 2, variance 2
    assert ps.frechet_distance(np.array([0.0]), np.array([[8.0]]), reference) == pytest.approx(4 + 2, rel=1e-12)
    # Resample [0, 0, 1, 1] of features (0, 4): mean 2, variance 16/3; resample [0, 0, 0, 0]: mean 0, variance 0.
    fids = ps.bootstrap_fid(np.array([[0.0], [4.0]]), reference, np.array([[0, 0, 1, 1], [0, 0, 0, 0]]))
    assert fids == pytest.approx([(np.sqrt(16 / 3) - np.sqrt(2)) ** 2, 4 + 2], rel=1e-12)


def test_bootstrap_fid_equals_torch_fidelity_on_each_resample():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(40, 5)) * [1, 2, 3, 0.5, 1]
    real = rng.normal(size=(60, 5)) + 0.3
    indices = ps.bootstrap_indices(40, 70, seed=1)  # more than one chunk of FID_CHUNK resamples
    fids = ps.bootstrap_fid(features, ps.FrechetReference.of(real), indices)
    stats_real = fid_features_to_statistics(torch.from_numpy(real))
    for row, fid in zip(indices, fids, strict=True):
        stats = fid_features_to_statistics(torch.from_numpy(features[row]))
        assert fid == pytest.approx(fid_statistics_to_metric(stats, stats_real, False)[KEY_METRIC_FID],
                                    rel=1e-9)  # fmt: skip


def test_identical_samples_give_a_difference_interval_of_exactly_zero():
    rng = np.random.default_rng(3)
    features = rng.normal(size=(30, 4))
    reference = ps.FrechetReference.of(rng.normal(size=(50, 4)))
    indices = ps.bootstrap_indices(30, 100, seed=0, strata=np.arange(30) % 10)
    cell, full = ps.bootstrap_fid(features, reference, indices), ps.bootstrap_fid(features.copy(), reference, indices)
    assert ps.percentile_interval(cell - full) == (0.0, 0.0)
    correct = rng.integers(0, 2, size=30).astype(float)
    agreement = ps.bootstrap_mean(correct, indices) - ps.bootstrap_mean(correct, indices)
    assert ps.percentile_interval(agreement) == (0.0, 0.0)
    assert not ps.excludes_zero((0.0, 0.0))


def test_percentile_interval_is_the_interpolated_order_statistics():
    assert ps.percentile_interval([3, 1, 2, 5, 4], level=0.5) == (2.0, 4.0)  # quantiles 0.25, 0.75 at positions 1, 3
    # (1 - level) / 2 is 0.025 and 0.05 up to a rounding of the last bit, hence approx.
    assert ps.percentile_interval(np.arange(1001.0)) == pytest.approx((25.0, 975.0), abs=1e-12)  # 0.025 x 1000
    assert ps.percentile_interval(np.arange(11.0), level=0.9) == pytest.approx((0.5, 9.5), abs=1e-12)  # halfway
    assert ps.percentile_interval([7.0]) == (7.0, 7.0)
    assert ps.excludes_zero((0.1, 2.0)) and ps.excludes_zero((-2.0, -0.1)) and not ps.excludes_zero((-1.0, 0.0))


@pytest.mark.parametrize(
    ("replicates", "level", "message"),
    [([1.0], 1.0, "level must be in"), ([1.0], 0.0, "level must be in"), ([], 0.95, "non-empty"),
     ([1.0, float("nan")], 0.95, "finite")],
)  # fmt: skip
def test_percentile_interval_refuses_bad_inputs(replicates, level, message):
    with pytest.raises(ValueError, match=message):
        ps.percentile_interval(replicates, level)
