"""Vectorised bootstrap metrics against scikit-learn on the explicitly resampled sets."""

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

from robust_deepfake.bootstrap import bootstrap_counts, metric_replicates, percentile_ci, weighted_auc
from robust_deepfake.metrics import classification_metrics


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 120)
    scores = np.clip(labels * 0.3 + rng.random(120) * 0.7, 0, 1)
    scores[:10] = np.round(scores[:10], 1)  # ties
    return labels, scores


def test_replicates_equal_sklearn_on_the_resampled_sets(data):
    labels, scores = data
    counts = bootstrap_counts(len(labels), 25, seed=3)
    assert np.all(counts.sum(axis=1) == len(labels))
    replicates = metric_replicates(labels, scores, counts)
    for b in range(25):
        picked = np.repeat(np.arange(len(labels)), counts[b].astype(int))
        y, s = labels[picked], scores[picked]
        predicted = (s >= 0.5).astype(int)
        assert replicates["accuracy"][b] == pytest.approx(accuracy_score(y, predicted))
        assert replicates["f1"][b] == pytest.approx(f1_score(y, predicted, average="macro", labels=[0, 1], zero_division=0))
        assert replicates["auc"][b] == pytest.approx(roc_auc_score(y, s))


def test_unit_weights_give_the_point_estimates(data):
    labels, scores = data
    ones = np.ones((1, len(labels)))
    point = classification_metrics(labels, scores)
    replicate = metric_replicates(labels, scores, ones)
    for metric in ("accuracy", "f1", "auc"):
        assert replicate[metric][0] == pytest.approx(point[metric])


def test_auc_is_nan_with_one_class():
    assert np.isnan(weighted_auc(np.ones(5, int), np.linspace(0, 1, 5), np.ones((1, 5)))[0])


def test_same_seed_same_resamples_and_sensible_interval(data):
    labels, scores = data
    a = bootstrap_counts(len(labels), 200, seed=1)
    assert np.array_equal(a, bootstrap_counts(len(labels), 200, seed=1))
    low, high = percentile_ci(metric_replicates(labels, scores, a)["accuracy"], 0.95)
    point = classification_metrics(labels, scores)["accuracy"]
    assert low < point < high and high - low < 0.3
