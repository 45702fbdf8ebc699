"""Classification metrics via scikit-learn, from p(fake) scores (never hard labels for AUC)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score
from sklearn.metrics import average_precision_score, roc_curve


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


# --- the field's detection metrics and the evasion threat model -------------------------
#
# Fake is the positive class throughout: a detection is p(fake) >= threshold, a false alarm
# is a real image scored fake. Scores, never hard labels, go into AP, EER and TPR@FPR.


@dataclass(frozen=True)
class MetricDefinition:
    """What a metric measures and which way is better for the detector (the defender)."""

    key: str
    higher_is_better: bool
    definition: str


METRIC_DEFINITIONS: dict[str, MetricDefinition] = {d.key: d for d in (
    MetricDefinition("accuracy", True, "share of images classified correctly at p(fake) >= 0.5"),
    MetricDefinition("f1", True, "macro-F1 over real and fake at p(fake) >= 0.5"),
    MetricDefinition("auc", True, "ROC-AUC of p(fake), fake positive (scikit-learn roc_auc_score)"),
    MetricDefinition("asr", False, "attack success rate: share of the correctly classified clean images "
                                   "that the attack misclassifies"),
    MetricDefinition("ap", True, "average precision of p(fake), fake positive (scikit-learn "
                                 "average_precision_score: sum of precision x recall increments)"),
    MetricDefinition("eer", False, "equal error rate: the false-positive rate where it equals the "
                                   "false-negative rate, on the ROC curve (linear between its points)"),
    MetricDefinition("tpr_at_fpr_1", True, "share of fakes detected at the best threshold whose "
                                           "false-positive rate is at most 1% (an attainable ROC point)"),
    MetricDefinition("tpr_at_fpr_5", True, "the same at a false-positive rate of at most 5%"),
    MetricDefinition("evasion_rate", False, "share of the fakes detected when clean that the attack "
                                            "turns into 'real' (the threat that matters for a detector)"),
    MetricDefinition("real_to_fake_rate", False, "share of the reals classified real when clean that the "
                                                 "attack turns into 'fake' (a false alarm; a lesser threat)"),
    MetricDefinition("iinc_localization", False, "IINC (Inverse Intersection Non-Containment; Dang et al., "
                                                 "CVPR 2020, the DFFD paper) between a fake's Grad-CAM and its "
                                                 "ground-truth manipulation mask: 0 = the same region, 1 = disjoint; "
                                                 "DFFD's use"),
    MetricDefinition("iinc_stability", False, "IINC between the clean and the adversarial Grad-CAM of the same "
                                              "image: how far the explanation moves under attack (0 = not at all); "
                                              "our extension of DFFD's localization measure"),
)}
TPR_AT_FPR = {"tpr_at_fpr_1": 0.01, "tpr_at_fpr_5": 0.05}
# What the sweep records per model, attack and eps (attack_metrics), in this order.
ATTACK_METRICS = ("accuracy", "f1", "auc", "asr", "evasion_rate", "real_to_fake_rate", "ap", "eer",
                  "tpr_at_fpr_1", "tpr_at_fpr_5")


def higher_is_better(key: str) -> bool:
    """The metric's direction for the detector (KeyError for an undefined key)."""
    return METRIC_DEFINITIONS[key].higher_is_better


def _both_classes(labels: np.ndarray) -> bool:
    return bool(np.any(labels == 1) and np.any(labels == 0))


def average_precision(labels: np.ndarray, p_fake: np.ndarray) -> float:
    """scikit-learn's AP of p(fake) with fake as positive; NaN unless both classes occur."""
    labels = np.asarray(labels).astype(int)
    if not _both_classes(labels):
        return math.nan
    return float(average_precision_score(labels, np.asarray(p_fake, dtype=np.float64), pos_label=1))


def equal_error_rate(labels: np.ndarray, p_fake: np.ndarray) -> float:
    """EER: the FPR at which FPR = FNR = 1 - TPR on scikit-learn's ROC curve, interpolated
    linearly between the two ROC points around the crossing (lower is better); NaN unless
    both classes occur."""
    labels = np.asarray(labels).astype(int)
    if not _both_classes(labels):
        return math.nan
    fpr, tpr, _ = roc_curve(labels, np.asarray(p_fake, dtype=np.float64), pos_label=1, drop_intermediate=False)
    gap = (1 - tpr) - fpr  # FNR - FPR: >= 0 at the first point (0, 0), <= 0 at the last (1, 1)
    i = int(np.argmax(gap <= 0))
    if i == 0 or gap[i] == 0:
        return float(fpr[i])
    t = gap[i - 1] / (gap[i - 1] - gap[i])
    return float(fpr[i - 1] + t * (fpr[i] - fpr[i - 1]))


def tpr_at_fpr(labels: np.ndarray, p_fake: np.ndarray, max_fpr: float) -> float:
    """The highest TPR among ROC points with FPR <= max_fpr: a threshold the detector can
    actually use, no interpolation (with n reals the FPR moves in steps of 1/n). NaN unless
    both classes occur."""
    labels = np.asarray(labels).astype(int)
    if not _both_classes(labels):
        return math.nan
    fpr, tpr, _ = roc_curve(labels, np.asarray(p_fake, dtype=np.float64), pos_label=1, drop_intermediate=False)
    return float(tpr[fpr <= max_fpr + 1e-12].max())


def detection_metrics(labels: np.ndarray, p_fake: np.ndarray) -> dict[str, float]:
    """AP, EER and TPR at FPR = 1% and 5% from p(fake) scores (clean or under attack)."""
    out = {"ap": average_precision(labels, p_fake), "eer": equal_error_rate(labels, p_fake)}
    out.update({key: tpr_at_fpr(labels, p_fake, fpr) for key, fpr in TPR_AT_FPR.items()})
    return out


def _flip_rate(labels, p_clean, p_adv, cls: int, threshold: float) -> float:
    labels = np.asarray(labels).astype(int)
    clean = (np.asarray(p_clean) >= threshold).astype(int)
    attacked = (np.asarray(p_adv) >= threshold).astype(int)
    right = (labels == cls) & (clean == cls)
    return float((attacked[right] != cls).mean()) if right.any() else math.nan


def evasion_rate(labels: np.ndarray, p_clean: np.ndarray, p_adv: np.ndarray, threshold: float = 0.5) -> float:
    """Share of the fakes detected when clean (p_clean >= threshold) that the attack turns
    into 'real' (p_adv < threshold); lower is better; NaN when no fake was detected."""
    return _flip_rate(labels, p_clean, p_adv, 1, threshold)


def real_to_fake_rate(labels: np.ndarray, p_clean: np.ndarray, p_adv: np.ndarray, threshold: float = 0.5) -> float:
    """Share of the reals classified real when clean that the attack turns into 'fake';
    lower is better; NaN when no real was classified real."""
    return _flip_rate(labels, p_clean, p_adv, 0, threshold)


def threat_metrics(labels: np.ndarray, p_clean: np.ndarray, p_adv: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """The evasion rate (fake -> real) and the real -> fake rate, reported separately."""
    return {"evasion_rate": evasion_rate(labels, p_clean, p_adv, threshold),
            "real_to_fake_rate": real_to_fake_rate(labels, p_clean, p_adv, threshold)}


def attack_success_rate(labels: np.ndarray, p_clean: np.ndarray, p_adv: np.ndarray, threshold: float = 0.5) -> float:
    """Share of the images classified correctly when clean that the attack misclassifies
    (both directions); 0 when none was correct."""
    labels = np.asarray(labels).astype(int)
    right = (np.asarray(p_clean) >= threshold).astype(int) == labels
    flipped = right & ((np.asarray(p_adv) >= threshold).astype(int) != labels)
    return float(flipped.sum() / max(right.sum(), 1))


def attack_metrics(labels: np.ndarray, p_clean: np.ndarray, p_adv: np.ndarray) -> dict[str, float]:
    """Every ATTACK_METRICS value of one model under one attack (p_adv = p_clean: the clean
    row, where the flip rates are 0): classification_metrics, the attack success rate,
    threat_metrics and detection_metrics of p_adv."""
    out = {**classification_metrics(labels, p_adv), "asr": attack_success_rate(labels, p_clean, p_adv),
           **threat_metrics(labels, p_clean, p_adv), **detection_metrics(labels, p_adv)}
    return {key: out[key] for key in ATTACK_METRICS}
