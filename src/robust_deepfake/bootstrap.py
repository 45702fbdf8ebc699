"""Vectorised bootstrap of accuracy, macro-F1 and ROC-AUC.

A bootstrap replicate is a multiset of the n samples, represented by its count vector
w (B, n). Weighted metrics over w equal the metrics of the resampled set, so all B
replicates are computed with a few array operations instead of B scikit-learn calls
(tests/test_bootstrap.py checks replicates against scikit-learn on the expanded sets).
The same w for two models gives paired differences (same resampled test images).
"""

from __future__ import annotations

import numpy as np


def bootstrap_counts(n: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n) int counts: each row a resample of n items with replacement."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float64)


def weighted_accuracy(labels: np.ndarray, predicted: np.ndarray, w: np.ndarray) -> np.ndarray:
    correct = (labels == predicted).astype(np.float64)
    total = w.sum(axis=-1)
    hits = (w * correct).sum(axis=-1)
    # a replicate that drew none of these images has no accuracy (NaN, skipped by percentile_ci)
    return np.divide(hits, total, out=np.full_like(hits, np.nan, dtype=np.float64), where=total > 0)


def weighted_macro_f1(labels: np.ndarray, predicted: np.ndarray, w: np.ndarray) -> np.ndarray:
    scores = []
    for c in (0, 1):
        tp = (w * ((predicted == c) & (labels == c))).sum(axis=-1)
        fp = (w * ((predicted == c) & (labels != c))).sum(axis=-1)
        fn = (w * ((predicted != c) & (labels == c))).sum(axis=-1)
        denominator = 2 * tp + fp + fn
        scores.append(np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0))
    return (scores[0] + scores[1]) / 2


def weighted_auc(labels: np.ndarray, scores: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Mann-Whitney AUC with ties counted 1/2, for each row of weights; NaN if a class is absent."""
    w = np.atleast_2d(w)
    order = np.argsort(scores, kind="mergesort")
    s, y, w = scores[order], labels[order], w[:, order]
    # group equal scores: ties contribute half
    _, starts = np.unique(s, return_index=True)
    pos = np.add.reduceat(w * (y == 1), starts, axis=1)
    neg = np.add.reduceat(w * (y == 0), starts, axis=1)
    neg_below = np.cumsum(neg, axis=1) - neg
    numerator = (pos * (neg_below + 0.5 * neg)).sum(axis=1)
    denominator = pos.sum(axis=1) * neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, numerator / denominator, np.nan)


def metric_replicates(labels: np.ndarray, p_fake: np.ndarray, w: np.ndarray, threshold: float = 0.5) -> dict[str, np.ndarray]:
    predicted = (p_fake >= threshold).astype(int)
    return {
        "accuracy": weighted_accuracy(labels, predicted, w),
        "f1": weighted_macro_f1(labels, predicted, w),
        "auc": weighted_auc(labels, p_fake, w),
    }


def percentile_ci(replicates: np.ndarray, level: float) -> tuple[float, float]:
    finite = replicates[np.isfinite(replicates)]
    if finite.size == 0:
        return float("nan"), float("nan")
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(finite, [tail, 100 - tail])
    return float(low), float(high)


def mean_with_ci(values: np.ndarray, n_boot: int, level: float, seed: int) -> tuple[float, float, float]:
    """Mean of the finite values and its percentile bootstrap interval (NaN when undefined)."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(values.mean())
    if n_boot == 0 or values.size < 2:
        return mean, float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    replicates = values[rng.integers(0, values.size, size=(n_boot, values.size))].mean(axis=1)
    low, high = percentile_ci(replicates, level)
    return mean, low, high
