"""What one re-evaluation reports (monitoring/outcome.py): the line, the record and the
alert carry the evasion rate beside the watched score, read the score's direction from the
criterion, and an undefined evasion rate is left out rather than printed as nan. (The
end-to-end alert through a webhook is test_alerts.py, slow tier.)"""

from __future__ import annotations

import math

import pytest

from robust_deepfake.monitoring.outcome import Outcome, drop_alert
from robust_deepfake.paths import ModelKey
from robust_deepfake.verdict.champion import score_drift


def _outcome(current: dict, previous: dict | None, criterion: str, evasion: float) -> Outcome:
    drift = score_drift(current, previous, criterion)
    return Outcome("champion", "detector", "3", ModelKey("reg", 1), "run-now", drift.current, drift,
                   "run-before" if previous else None, 0.9, 0.2, evasion_rate=evasion)


def test_the_line_and_the_record_carry_the_evasion_rate():
    outcome = _outcome({"pgd": {1: 0.60, 2: 0.40}}, {"pgd": {1: 0.80, 2: 0.70}}, "pgd_accuracy", 0.35)
    line = outcome.describe(0.05)
    assert line == ("@champion (detector v3): mean pgd accuracy over eps [1/255, 2/255] now 0.500, previous "
                    "evaluation 0.750 (run run-before): dropped by 0.250 > reevaluate.max_drop 0.05; "
                    "evasion rate 0.350; run run-now")
    assert outcome.as_dict()["evasion_rate"] == 0.35 and outcome.status(0.05) == "dropped"
    alert = drop_alert([outcome], 0.05)
    assert alert.subject == "Robustness drop: detector @champion v3" and alert.lines == [f"robustness drop: {line}"]


def test_an_evasion_criterion_drops_when_evasion_rises():
    outcome = _outcome({"pgd": {1: 0.70}}, {"pgd": {1: 0.30}}, "pgd_evasion", 0.70)  # raw evasion rates
    assert outcome.drift.metric == "1-evasion_rate"
    assert outcome.drift.drop == pytest.approx(0.40) and outcome.dropped(0.05)
    assert "mean pgd 1-evasion_rate over eps [1/255] now 0.300, previous evaluation 0.700" in outcome.describe(0.05)


def test_an_undefined_evasion_rate_is_left_out_of_the_line():
    outcome = _outcome({"pgd": {1: 0.60}}, None, "pgd_accuracy", math.nan)
    assert outcome.describe(0.05) == "@champion (detector v3): mean pgd accuracy 0.600 (no previous evaluation); run run-now"
    assert outcome.status(0.05) == "no_previous" and drop_alert([outcome], 0.05) is None
