"""The seed-level claim rule (verdict/claims.py): calibration by simulation, the interval
on edge cases, the power figures against known values and a direct simulation, and the
wording. Simulated studies come from benchmarks/claim_calibration.py: per-seed paired
accuracy differences on 128 binomially drawn test images (steps of 1/128, test SE ~ 0.02)
around a known effect with normal or t(3) training noise between seeds."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats

from benchmarks.claim_calibration import calibrate, simulate_studies
from robust_deepfake.verdict.claims import (
    MAX_SEEDS,
    MIN_SEEDS,
    assess,
    claim_sign,
    detectable_effect,
    power,
    seed_interval,
    seeds_needed,
    seeds_wording,
)

LEVEL = 0.95
PAIRS = 15000  # study pairs per cell: coverage over 30000 studies has MCSE 0.0013
Z = 3  # Monte Carlo tolerance in standard errors


@pytest.mark.parametrize("tails", ["normal", "t3"])
@pytest.mark.parametrize("spread", [0.012, 0.048, 0.1])
def test_rule_is_calibrated_and_replicates(tails, spread):
    """Coverage >= 95% up to Z Monte Carlo SEs (0.0038) and opposite-sign claims in <= 1%
    of independent study pairs, at MIN_SEEDS, 3, 5 and 10 seeds, effects 0, 0.02, 0.05."""
    rng = np.random.default_rng([7, int(spread * 1000), tails == "t3"])
    for effect in (0.0, 0.02, 0.05):
        for n in sorted({MIN_SEEDS, 3, 5, 10}):
            (row,) = calibrate(rng, PAIRS, n, effect, spread, tails, ("floor",), LEVEL, MIN_SEEDS)
            where = f"{tails} spread {spread} effect {effect} n {n}"
            assert row["coverage"] >= LEVEL - Z * row["coverage_mcse"], (where, row)
            assert row["opposite"] <= 0.01, (where, row)


def test_plain_three_seed_interval_undercovers():
    """Without the floor, 3 seeds with a small spread (SD 0.012, as the committed demo seeds
    showed) and discrete accuracies cover the effect in ~94.8% of studies: below 95% by
    more than Z Monte Carlo SEs (3 x 0.0003 with 500000 studies). The floored rule covers."""
    rows = calibrate(np.random.default_rng(11), 250000, 3, 0.02, 0.012, "normal", ("plain", "floor"), LEVEL)
    plain, floored = rows
    assert plain["coverage"] < LEVEL - Z * plain["coverage_mcse"], plain
    assert floored["coverage"] >= LEVEL, floored


def test_simulated_test_noise_is_discrete_with_se_near_002():
    d, se = simulate_studies(np.random.default_rng(3), 20000, 2, 0.0, 0.0)
    assert np.allclose(d * 128, np.round(d * 128))
    assert 0.018 < np.sqrt(np.mean(se**2)) < 0.022
    assert abs(d.std() - np.sqrt(np.mean(se**2))) < 0.001  # se_s estimates the real test noise


# --- the interval on edge cases ----------------------------------------------------------


def test_interval_equals_student_t_when_the_floor_does_not_bind():
    d = np.array([0.020, -0.012, -0.035, 0.008, -0.016, 0.098])
    found = assess(d, [0.02] * 6, LEVEL)
    low, high = stats.t.interval(LEVEL, 5, loc=d.mean(), scale=stats.sem(d))
    assert (found.low, found.high) == pytest.approx((low, high))
    assert not found.floored and found.spread == pytest.approx(d.std(ddof=1))


def test_zero_spread_is_floored_by_test_noise():
    step = 3 / 128  # every seed moved the same 3 images: discrete accuracies
    found = assess([step] * 4, [0.02, 0.01, 0.02, 0.03], LEVEL)
    floor = math.sqrt((0.02**2 + 0.01**2 + 0.02**2 + 0.03**2) / 4)
    half = stats.t.ppf(0.975, 3) * floor / 2
    assert found.floored and found.spread == pytest.approx(floor) and found.test_se == pytest.approx(floor)
    assert (found.low, found.high) == pytest.approx((step - half, step + half))
    assert found.claim == 0 and found.reason == "includes_zero"


def test_zero_spread_without_test_noise_claims_nothing():
    found = assess([0.05, 0.05, 0.05], [math.nan] * 3, LEVEL)
    assert found.spread == 0 and found.low == found.high == 0.05
    assert found.claim == 0 and found.reason == "no_noise_estimate"
    assert found.reading() == ("no claim: every seed gave the same difference and no test SE "
                               "was given")


def test_one_seed_and_no_seed():
    one = assess([0.3], [0.01], LEVEL)
    assert one.n == 1 and one.mean == 0.3 and math.isnan(one.low) and math.isnan(one.spread)
    assert one.claim == 0 and one.reason == "below_min_seeds"
    assert one.seeds_for_min_effect is None and math.isnan(one.detectable)
    assert one.reading() == f"no claim below {MIN_SEEDS} seeds (1 usable)"
    none = assess([], [], LEVEL)
    assert none.n == 0 and math.isnan(none.mean) and none.claim == 0


def test_nan_seeds_are_left_out():
    found = assess([0.04, math.nan, 0.05, 0.06], [0.01, 0.01, math.nan, 0.01], LEVEL)
    plain = assess([0.04, 0.05, 0.06], [0.01, 0.01, 0.01], LEVEL)
    assert found.n == 3
    assert (found.mean, found.low, found.high) == pytest.approx((plain.mean, plain.low, plain.high))
    assert found.test_se == pytest.approx(0.01)
    assert math.isnan(found.diffs[1]) and found.as_dict()["diffs"][1] is None


def test_vectorised_interval_matches_one_study_at_a_time():
    d, se = simulate_studies(np.random.default_rng(5), 50, 4, 0.02, 0.048)
    d[3, 1] = np.nan
    found = seed_interval(d, se, LEVEL)
    for i in (0, 3, 49):
        one = assess(d[i], se[i], LEVEL)
        assert (found["low"][i], found["high"][i]) == pytest.approx((one.low, one.high))
    assert list(found["n"][[0, 3]]) == [4, 3]


def test_claims_need_min_seeds_and_an_interval_excluding_zero():
    lows, highs = [0.01, -0.2, -0.1, 0.01], [0.2, -0.1, 0.1, 0.2]
    assert list(claim_sign(lows, highs, [5] * 4, [1] * 4)) == [1, -1, 0, 1]
    assert list(claim_sign([0.01, 0.01], [0.2, 0.2], [MIN_SEEDS - 1, MIN_SEEDS], [1, 1])) == [0, 1]
    assert list(claim_sign([0.01], [0.2], [5], [0.0])) == [0]


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="shape"):
        seed_interval(np.zeros(3), np.zeros(2))
    with pytest.raises(ValueError, match="level"):
        seed_interval(np.zeros(3), np.zeros(3), level=95)


# --- power --------------------------------------------------------------------------------


def test_seeds_needed_matches_known_sample_sizes():
    """One-sample t, two-sided 0.05, power 0.8 (G*Power): d = 0.8 -> 15, 0.5 -> 34, 0.2 -> 199."""
    assert [seeds_needed(d, 1.0, 0.95, 0.8, 500) for d in (0.8, 0.5, 0.2)] == [15, 34, 199]


def test_seeds_for_002_at_the_measured_spread():
    """The issue's ~45 seeds (0.02 at SD 0.048) is the normal approximation; the t-test needs 48."""
    normal_approx = ((stats.norm.ppf(0.975) + stats.norm.ppf(0.8)) * 0.048 / 0.02) ** 2
    assert 45 < normal_approx < 46
    assert seeds_needed(0.02, 0.048) == 48
    assert power(0.02, 0.048, 47) < 0.8 <= power(0.02, 0.048, 48)


@pytest.mark.parametrize("n", [4, 48])
def test_power_matches_a_direct_simulation(n):
    """Normal seeds, SD 0.048, effect 0.02: the share of studies whose plain t interval
    excludes 0 equals the noncentral-t power within Z Monte Carlo SEs."""
    rng = np.random.default_rng(n)
    studies = 40000
    d = 0.02 + 0.048 * rng.standard_normal((studies, n))
    found = seed_interval(d, np.full_like(d, np.nan), LEVEL)
    rejected = float(np.mean((found["low"] > 0) | (found["high"] < 0)))
    expected = float(power(0.02, 0.048, n))
    assert abs(rejected - expected) < Z * math.sqrt(expected * (1 - expected) / studies), (rejected, expected)


def test_detectable_effect_inverts_power():
    for n in (2, 3, 6, 10):
        effect = detectable_effect(0.048, n)
        assert float(power(effect, 0.048, n)) == pytest.approx(0.8, abs=1e-6)
    assert detectable_effect(0.048, 6) > detectable_effect(0.048, 10)
    assert math.isnan(detectable_effect(0.048, 1)) and math.isnan(detectable_effect(0.0, 5))


def test_absurd_seed_counts_are_capped():
    assert seeds_needed(0.001, 0.048) is None
    assert seeds_needed(0.0, 0.048) is None and seeds_needed(0.02, math.nan) is None
    assert seeds_wording(0.001, None) == f"0.001 would need more than {MAX_SEEDS} seeds at this spread"
    assert seeds_wording(-0.02, 48) == "0.02 would need ~48 seeds at this spread"


# --- the typed result and its wording -----------------------------------------------------


def test_measured_six_seeds_read_as_no_detectable_difference():
    found = assess([0.020, -0.012, -0.035, 0.008, -0.016, 0.098], [0.02] * 6, LEVEL)
    assert found.claim == 0 and found.reason == "includes_zero"
    assert found.seeds_for_min_effect == seeds_needed(0.02, found.spread) == 46
    assert found.seeds_for_observed == seeds_needed(found.mean, found.spread)
    assert found.reading() == "no detectable difference at 6 seeds; 0.02 would need ~46 seeds at this spread"


def test_a_claim_reads_its_sign_and_serialises():
    found = assess([-0.10, -0.12, -0.09, -0.11], [0.02] * 4, LEVEL, min_effect=0.05)
    assert found.claim == -1 and found.reason == "claimed" and found.high < 0
    assert found.reading() == "negative difference at 4 seeds"
    data = json.loads(json.dumps(found.as_dict(), allow_nan=False))
    assert data["claim"] == -1 and data["n"] == 4 and data["floored"] is True
    assert data["why"] == "the interval excludes 0" and data["min_effect"] == 0.05
    assert set(data) >= {"diffs", "ses", "mean", "low", "high", "level", "seeds_for_observed",
                         "seeds_for_min_effect", "reading"}


def test_as_dict_is_strict_json_on_edge_cases():
    for found in (assess([], []), assess([0.1], [math.nan]), assess([0.1, 0.1], [0.0, 0.0])):
        json.dumps(found.as_dict(), allow_nan=False)
