"""AP, EER, TPR@FPR and the evasion / real->fake rates against scikit-learn and brute force."""

import math
import warnings

import numpy as np
import pytest
from scipy.optimize import brentq
from sklearn.metrics import accuracy_score, average_precision_score, f1_score, roc_auc_score, roc_curve

from robust_deepfake.metrics import (
    ATTACK_METRICS,
    METRIC_DEFINITIONS,
    attack_metrics,
    average_precision,
    detection_metrics,
    equal_error_rate,
    evasion_rate,
    real_to_fake_rate,
    threat_metrics,
    tpr_at_fpr,
)


def _cases():
    rng = np.random.default_rng(0)
    for n, ties in [(50, False), (200, True), (37, True)]:
        labels = rng.integers(0, 2, n)
        scores = rng.normal(labels * 0.8, 1.0)
        if ties:
            scores = np.round(scores, 1)  # many tied scores
        yield labels, 1 / (1 + np.exp(-scores))


def _brute_tpr_at_fpr(labels, scores, max_fpr):
    best = 0.0
    for threshold in np.concatenate([np.unique(scores), [np.inf]]):
        predicted = scores >= threshold
        fpr = predicted[labels == 0].mean()
        if fpr <= max_fpr + 1e-12:
            best = max(best, predicted[labels == 1].mean())
    return best


@pytest.mark.parametrize("case", range(3))
def test_against_scikit_learn_and_brute_force(case):
    labels, scores = list(_cases())[case]
    assert average_precision(labels, scores) == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
    fpr, tpr, _ = roc_curve(labels, scores)
    eer_oracle = brentq(lambda x: 1 - x - np.interp(x, fpr, tpr), 0, 1)  # the usual definition
    assert equal_error_rate(labels, scores) == pytest.approx(eer_oracle, abs=1e-6)
    for max_fpr in (0.01, 0.05, 0.2):
        assert tpr_at_fpr(labels, scores, max_fpr) == pytest.approx(_brute_tpr_at_fpr(labels, scores, max_fpr))
    assert set(detection_metrics(labels, scores)) == {"ap", "eer", "tpr_at_fpr_1", "tpr_at_fpr_5"}


def test_perfect_and_inverted_detectors():
    labels = np.array([0, 0, 1, 1])
    good = np.array([0.1, 0.2, 0.8, 0.9])
    assert equal_error_rate(labels, good) == 0.0
    assert equal_error_rate(labels, 1 - good) == 1.0
    assert tpr_at_fpr(labels, good, 0.01) == 1.0 and tpr_at_fpr(labels, 1 - good, 0.01) == 0.0
    assert average_precision(labels, good) == 1.0


def test_a_missing_class_gives_nan_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for labels in (np.ones(5, int), np.zeros(5, int)):
            metrics = detection_metrics(labels, np.linspace(0, 1, 5))
            assert all(math.isnan(value) for value in metrics.values()), metrics


def test_evasion_and_real_to_fake_rates():
    labels = np.array([1, 1, 1, 1, 0, 0, 0])
    clean = np.array([0.9, 0.8, 0.7, 0.2, 0.1, 0.2, 0.6])  # 3 fakes detected, 2 reals right
    attacked = np.array([0.1, 0.9, 0.4, 0.1, 0.7, 0.1, 0.9])
    assert evasion_rate(labels, clean, attacked) == pytest.approx(2 / 3)  # the missed fake does not count
    assert real_to_fake_rate(labels, clean, attacked) == pytest.approx(1 / 2)
    assert threat_metrics(labels, clean, attacked) == {"evasion_rate": pytest.approx(2 / 3),
                                                        "real_to_fake_rate": pytest.approx(1 / 2)}
    assert math.isnan(evasion_rate(labels, np.zeros(7), attacked))  # no fake detected
    assert math.isnan(real_to_fake_rate(np.ones(3, int), np.ones(3), np.ones(3)))


def test_every_metric_has_one_definition_and_a_direction():
    keys = {"accuracy", "f1", "auc", "asr", "ap", "eer", "tpr_at_fpr_1", "tpr_at_fpr_5", "evasion_rate",
            "real_to_fake_rate", "iinc_stability", "iinc_localization"}
    assert set(METRIC_DEFINITIONS) == keys
    lower = {key for key, d in METRIC_DEFINITIONS.items() if not d.higher_is_better}
    assert lower == {"asr", "eer", "evasion_rate", "real_to_fake_rate", "iinc_stability", "iinc_localization"}
    assert set(ATTACK_METRICS) <= keys
    assert "Dang et al., CVPR 2020" in METRIC_DEFINITIONS["iinc_localization"].definition
    assert "extension" in METRIC_DEFINITIONS["iinc_stability"].definition
    assert all(d.definition and d.key == key for key, d in METRIC_DEFINITIONS.items())


def test_attack_metrics_of_one_cell_against_scikit_learn_and_by_hand():
    labels = np.array([0, 0, 0, 1, 1, 1, 1])
    clean = np.array([0.1, 0.2, 0.7, 0.9, 0.8, 0.6, 0.3])  # reals: right, right, wrong; fakes: 3 right, 1 wrong
    attacked = np.array([0.6, 0.1, 0.9, 0.2, 0.7, 0.4, 0.1])
    metrics = attack_metrics(labels, clean, attacked)
    assert list(metrics) == list(ATTACK_METRICS)
    predicted = (attacked >= 0.5).astype(int)
    assert metrics["accuracy"] == pytest.approx(accuracy_score(labels, predicted))
    assert metrics["f1"] == pytest.approx(f1_score(labels, predicted, average="macro"))
    assert metrics["auc"] == pytest.approx(roc_auc_score(labels, attacked))
    assert metrics["ap"] == pytest.approx(average_precision_score(labels, attacked))
    assert metrics["asr"] == pytest.approx(3 / 5)  # of the 5 right when clean, real 0 and fakes 3, 5 flip
    assert metrics["evasion_rate"] == pytest.approx(2 / 3)  # fakes 3 and 5 of the 3 detected
    assert metrics["real_to_fake_rate"] == pytest.approx(1 / 2)  # real 0 of the 2 right
    clean_row = attack_metrics(labels, clean, clean)
    assert clean_row["asr"] == clean_row["evasion_rate"] == clean_row["real_to_fake_rate"] == 0.0