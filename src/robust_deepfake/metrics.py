"""Classification metrics via scikit-learn, from p(fake) scores (never hard labels for AUC)."""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score


def classification_metrics(labels: np.ndarray, p_fake: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """accuracy and macro-F1 at `threshold`, ROC-AUC from the scores (NaN with one class)."""
    labels = np.asarray(labels).astype(int)
    p_fake = np.asarray(p_fake, dtype=np.float64)
    predicted = (p_fake >= threshold).astype(int)
    both = len(np.unique(labels)) == 2
    return {
        "accuracy": float(accuracy_score(labels, predicted)),
        "f1": float(f1_score(labels, predicted, average="macro", labels=[0, 1], zero_division=0)),
        "auc": float(roc_auc_score(labels, p_fake)) if both else math.nan,
    }
