"""The seed-level verdict (the verdict package): Student-t intervals over training seeds,
the per-row wording, and the champion policy, on synthetic predictions whose per-seed
differences are known exactly."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from robust_deepfake.config import EvalConfig
from robust_deepfake.paths import ModelKey
from robust_deepfake.robustness.sweep import SweepEntry, SweepMetrics, SweepPredictions, summarize_sweep
from robust_deepfake.verdict.champion import (
    NothingToScore,
    choose_champion,
    robustness_score,
    score_drift,
    score_plan,
    sweep_curves,
    watched_score,
)
from robust_deepfake.verdict.differences import sweep_differences
from robust_deepfake.verdict.seeds import detectable_effect, t_interval, two_level_interval

EPS = [0.0, 1 / 255, 2 / 255]
ATTACKS = ["fgsm", "pgd"]
SEEDS = [0, 1, 2]
N = 20
LABELS = np.array([0, 1] * (N // 2))  # interleaved: any prefix holds both classes
CONFIG = EvalConfig(n_bootstrap=200, ci=0.95, seed=0)

# Accuracy (in correct images out of N) per seed, variant, attack and attacked eps.
# PGD: reg is better by 2, 3 and 4 images at both eps -> d_s = 0.10, 0.15, 0.20.
# FGSM: reg better, worse, better by 2, 2, 1 images -> d_s = +0.10, -0.10, +0.05 (noisy).
PGD_CORRECT = {0: (8, 10), 1: (6, 9), 2: (7, 11)}  # seed -> (baseline, reg)
FGSM_CORRECT = {0: (12, 14), 1: (13, 11), 2: (10, 11)}
CLEAN_CORRECT = 18
PGD_DIFFS = [(r - b) / N for b, r in PGD_CORRECT.values()]
FGSM_DIFFS = [(r - b) / N for b, r in FGSM_CORRECT.values()]


def _scores(n_correct: int) -> np.ndarray:
    """p(fake) with exactly the first `n_correct` images classified correctly."""
    correct = np.arange(N) < n_correct
    truth = np.where(LABELS == 1, 0.8, 0.2)
    return np.where(correct, truth, 1 - truth)


def _predictions() -> SweepPredictions:
    models = [ModelKey(v, s) for v in ("baseline", "reg") for s in SEEDS]
    p = np.zeros((len(models), len(ATTACKS), len(EPS), N))
    for m, key in enumerate(models):
        side = 0 if key.variant == "baseline" else 1
        p[m, :, 0] = _scores(CLEAN_CORRECT)
        for a, table in ((0, FGSM_CORRECT), (1, PGD_CORRECT)):
            for e in (1, 2):
                p[m, a, e] = _scores(table[key.seed][side])
    sources = np.where(LABELS == 1, "fake_x", "real_a")
    return SweepPredictions(models, ATTACKS, EPS, np.arange(N), LABELS, sources, p)


@pytest.fixture(scope="module")
def differences():
    return {(d.attack, d.metric): d for d in sweep_differences(_predictions(), CONFIG)}


@pytest.mark.parametrize("n", [2, 3, 7, 30])
@pytest.mark.parametrize("level", [0.8, 0.95])
def test_t_interval_equals_scipy(n, level):
    values = np.random.default_rng(n).normal(0.1, 0.3, n)
    mean, low, high = t_interval(values, level)
    expected = stats.t.interval(level, n - 1, loc=values.mean(), scale=stats.sem(values))
    assert mean == pytest.approx(values.mean())
    assert (low, high) == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_t_interval_needs_two_values():
    mean, low, high = t_interval(np.array([0.3]), 0.95)
    assert mean == 0.3 and math.isnan(low) and math.isnan(high)


def test_pgd_row_is_the_t_interval_of_the_per_seed_differences(differences):
    row = differences[("pgd", "accuracy")]
    assert row.seeds == SEEDS
    assert row.per_seed == pytest.approx(PGD_DIFFS)
    assert row.mean == pytest.approx(np.mean(PGD_DIFFS))
    low, high = stats.t.interval(0.95, len(SEEDS) - 1, loc=np.mean(PGD_DIFFS), scale=stats.sem(PGD_DIFFS))
    assert (row.ci_low, row.ci_high) == pytest.approx((low, high))
    # at least as wide as the seed spread requires: wider than the range of d_s itself here
    assert row.ci_low < min(PGD_DIFFS) and row.ci_high > max(PGD_DIFFS)
    assert row.detectable == pytest.approx(detectable_effect(np.array(PGD_DIFFS), 0.95))
    assert row.excludes_zero and row.favours == "reg"
    assert row.seeds_favouring == {"reg": 3, "baseline": 0, "tie": 0}
    assert row.wording() == "favours reg (3 seeds)"


def test_per_image_intervals_are_reported_per_seed(differences):
    row = differences[("pgd", "accuracy")]
    assert len(row.per_image_ci) == len(SEEDS)
    for d, (low, high) in zip(row.per_seed, row.per_image_ci):
        assert math.isfinite(low) and math.isfinite(high)
        assert low <= d <= high  # reg is right on a superset of the baseline's images
    exported = row.as_dict()
    assert exported["per_seed"] == pytest.approx(PGD_DIFFS)
    assert len(exported["per_image_ci"]) == len(SEEDS)


def test_every_attack_and_metric_has_a_row(differences):
    assert set(differences) == ({("clean", m) for m in ("accuracy", "f1", "auc")}
                                | {(a, m) for a in ATTACKS for m in ("accuracy", "f1", "auc", "asr")})
    clean = differences[("clean", "accuracy")]
    assert clean.per_seed == [0.0, 0.0, 0.0]


def test_a_row_whose_interval_includes_zero_favours_neither(differences):
    row = differences[("fgsm", "accuracy")]
    assert row.per_seed == pytest.approx(FGSM_DIFFS)
    assert row.ci_low < 0 < row.ci_high and not row.excludes_zero
    assert row.favours == "neither"
    assert row.wording().startswith("no detectable difference at 3 seeds")
    assert f"{row.detectable:.3f}" in row.wording()
    assert row.seeds_favouring == {"reg": 2, "baseline": 1, "tie": 0}
    assert row.as_dict()["favours"] == "neither"


def test_lower_is_better_metrics_favour_the_lower_side():
    row = sweep_differences(_predictions(), CONFIG)
    asr = next(d for d in row if d.attack == "pgd" and d.metric == "asr")
    # both models of a seed are right on the first 18 clean images; PGD flips 18 - correct of them
    expected = [((CLEAN_CORRECT - r) - (CLEAN_CORRECT - b)) / CLEAN_CORRECT for b, r in PGD_CORRECT.values()]
    assert asr.per_seed == pytest.approx(expected)
    assert asr.mean < 0 and asr.excludes_zero
    assert asr.favours == "reg"  # lower attack success is better


# --- the champion ---------------------------------------------------------------------


def _sweep(pgd_accuracy: dict[ModelKey, float]) -> SweepMetrics:
    """Sweep metrics with the given PGD accuracy at both attacked eps (AUC alongside)."""
    entries = []
    for key, accuracy in pgd_accuracy.items():
        entries.append(SweepEntry(key, "clean", 0.0, 0.9, 0.9, 0.95, 0.0, N))
        for eps in EPS[1:]:
            entries.append(SweepEntry(key, "pgd", eps, accuracy, accuracy, accuracy, 1 - accuracy, N))
    return SweepMetrics(entries, 0.95, True)


def _scores_by_seed(baseline: list[float], reg: list[float]) -> dict[ModelKey, float]:
    return {**{ModelKey("baseline", s): v for s, v in zip(SEEDS, baseline)},
            **{ModelKey("reg", s): v for s, v in zip(SEEDS, reg)}}


NOISY = _scores_by_seed([0.40, 0.50, 0.45], [0.50, 0.42, 0.47])  # d_s = +0.10, -0.08, +0.02
CLEAR = _scores_by_seed([0.30, 0.36, 0.31], [0.50, 0.56, 0.60])  # d_s = +0.20, +0.20, +0.29


def test_robustness_score_is_the_mean_over_attacked_eps():
    entries = _sweep(CLEAR).entries
    entries = [SweepEntry(e.model, e.attack, e.eps, e.accuracy + (0.1 if e.eps == EPS[2] else 0), e.f1, e.auc,
                          e.asr, e.n) for e in entries]
    sweep = SweepMetrics(entries, 0.95, True)
    assert robustness_score(sweep, ModelKey("reg", 0), "pgd_accuracy") == pytest.approx(0.55)
    assert robustness_score(sweep, ModelKey("reg", 0), "clean_accuracy") == pytest.approx(0.9)


def test_a_noisy_difference_keeps_the_current_champion():
    decision = choose_champion(_sweep(NOISY), "pgd_accuracy", CONFIG, current_champion="reg")
    assert not decision.evidence.excludes_zero
    assert decision.move_champion is False
    assert decision.champion.variant == "reg" and decision.challenger.variant == "baseline"
    assert "no detectable difference" in decision.reason


def test_a_noisy_difference_without_a_champion_picks_the_baseline():
    decision = choose_champion(_sweep(NOISY), "pgd_accuracy", CONFIG, current_champion=None)
    assert decision.move_champion is True
    assert decision.champion.variant == "baseline" and decision.challenger.variant == "reg"
    # baseline mean 0.45: seed 2 (0.45) is closest
    assert decision.champion == ModelKey("baseline", 2)


@pytest.mark.parametrize("current", [None, "baseline", "reg"])
def test_a_clear_difference_moves_the_champion_to_the_better_variant(current):
    decision = choose_champion(_sweep(CLEAR), "pgd_accuracy", CONFIG, current_champion=current)
    assert decision.evidence.excludes_zero and decision.evidence.favours == "reg"
    assert decision.evidence.per_seed == pytest.approx([0.20, 0.20, 0.29])
    assert decision.move_champion is True
    assert decision.variant_scores == pytest.approx({"baseline": np.mean([0.30, 0.36, 0.31]),
                                                     "reg": np.mean([0.50, 0.56, 0.60])})
    # reg mean 0.553: seed 1 (0.56) is closest; baseline mean 0.323: seed 2 (0.31)
    assert decision.champion == ModelKey("reg", 1)
    assert decision.challenger == ModelKey("baseline", 2)
    assert decision.representatives == {"baseline": ModelKey("baseline", 2), "reg": ModelKey("reg", 1)}
    exported = decision.as_dict()
    assert exported["champion"] == "reg-seed1" and exported["move_champion"] is True


def test_a_clear_difference_for_the_baseline_moves_the_champion_back():
    flipped = {ModelKey("reg" if k.variant == "baseline" else "baseline", k.seed): v for k, v in CLEAR.items()}
    decision = choose_champion(_sweep(flipped), "pgd_accuracy", CONFIG, current_champion="reg")
    assert decision.move_champion is True
    assert decision.champion == ModelKey("baseline", 1)


def test_champion_rejects_a_criterion_the_sweep_cannot_score():
    sweep = _sweep(CLEAR)
    fgsm_only = SweepMetrics([SweepEntry(e.model, "fgsm" if e.attack == "pgd" else e.attack, e.eps, e.accuracy,
                                         e.f1, e.auc, e.asr, e.n) for e in sweep.entries], 0.95, True)
    with pytest.raises(ValueError, match="report.select_by"):
        choose_champion(fgsm_only, "pgd_accuracy", CONFIG)


def _with_constant_reg(constant_baseline: bool = False) -> SweepMetrics:
    """reg answers p(fake) = 0.6 for every image: AUC 0.5 and the class share as accuracy,
    whatever the attack. The real baseline models rank images well when clean and are
    pushed below chance by PGD (a constant baseline too when `constant_baseline`)."""
    rng = np.random.default_rng(0)
    models = [ModelKey(v, s) for v in ("baseline", "reg") for s in SEEDS]
    p = np.full((len(models), len(ATTACKS), len(EPS), N), 0.6)
    for m, key in enumerate(models):
        if key.variant == "baseline" and not constant_baseline:
            clean = np.clip(np.where(LABELS == 1, 0.8, 0.2) + rng.normal(0, 0.1, N), 0, 1)
            p[m, :, 0] = clean
            for e in (1, 2):
                p[m, :, e] = np.clip(1 - clean + rng.normal(0, 0.15 / e, N), 0, 1)  # mostly flipped
    predictions = SweepPredictions(models, ATTACKS, EPS, np.arange(N), LABELS,
                                   np.where(LABELS == 1, "fake_x", "real_a"), p)
    return summarize_sweep(predictions, CONFIG, holdout=[])[0]


@pytest.mark.parametrize("criterion", ["pgd_auc", "pgd_accuracy", "mean_attack_accuracy"])
@pytest.mark.parametrize("current", [None, "reg", "baseline"])
def test_a_constant_classifier_never_becomes_champion(criterion, current):
    metrics = _with_constant_reg()
    # the robustness scores alone prefer the constant model: that is what the floor is for
    assert robustness_score(metrics, ModelKey("reg", 0), criterion) > robustness_score(
        metrics, ModelKey("baseline", 0), criterion)
    decision = choose_champion(metrics, criterion, CONFIG, current_champion=current, min_clean_auc=0.75)
    assert decision.champion.variant == "baseline", decision.reason
    assert decision.move_champion and not decision.move_challenger  # @challenger never lands on it
    assert not decision.floor.variant_passes("reg") and decision.floor.variant_passes("baseline")
    assert decision.floor.describe(ModelKey("reg", 0)) == "failed: clean AUC 0.500 < report.min_clean_auc 0.75"
    assert "quality floor" in decision.reason or "better" in decision.reason


def test_no_alias_moves_when_every_variant_is_under_the_floor():
    decision = choose_champion(_with_constant_reg(constant_baseline=True), "pgd_auc", CONFIG, min_clean_auc=0.75)
    assert not decision.move_champion and not decision.move_challenger
    assert "no variant passes the quality floor" in decision.reason
    assert decision.as_dict()["floor"]["models"]["baseline-seed0"] == {"clean_auc": 0.5, "passes": False}


def test_identical_seeds_keep_the_test_sampling_width():
    """Every seed gives reg the same +2 of 20 images under PGD: the t-interval over seeds
    has zero width, but the images were few; the two-level bootstrap (seeds, then
    images) keeps their noise in the verdict, so it cannot read as certain."""
    same = {seed: (8, 10) for seed in SEEDS}
    models = [ModelKey(v, s) for v in ("baseline", "reg") for s in SEEDS]
    p = np.zeros((len(models), 1, 2, N))
    for m, key in enumerate(models):
        p[m, 0, 0] = _scores(CLEAN_CORRECT)
        p[m, 0, 1] = _scores(same[key.seed][0 if key.variant == "baseline" else 1])
    sources = np.where(LABELS == 1, "fake_x", "real_a")
    predictions = SweepPredictions(models, ["pgd"], [0.0, 1 / 255], np.arange(N), LABELS, sources, p)
    row = next(d for d in sweep_differences(predictions, CONFIG) if d.attack == "pgd" and d.metric == "accuracy")
    assert row.per_seed == pytest.approx([0.1, 0.1, 0.1])
    t_mean, t_low, t_high = t_interval(np.array(row.per_seed), 0.95)
    assert t_low == pytest.approx(t_high)  # the degenerate seed-only interval
    assert row.ci_low < t_low and row.ci_high >= t_high  # widened by test sampling, still contains it
    assert row.ci_low <= 0 <= row.ci_high  # 2 images of 20 per seed: not enough to call it
    assert row.favours == "neither" and "same difference" in row.wording()


def test_two_level_interval_resamples_seeds_then_images():
    rng = np.random.default_rng(0)
    replicates = [rng.normal(loc, 0.01, 2000) for loc in (0.1, 0.2, 0.3)]
    low, high = two_level_interval(replicates, 0.95, seed=1)
    assert 0.1 <= low < 0.2 < high <= 0.3  # seed resampling spans the seeds' means
    flat = two_level_interval([rng.normal(0.2, 0.01, 2000) for _ in range(3)], 0.95, seed=1)
    assert flat[1] - flat[0] < 0.05  # equal seeds: only the image noise is left


def test_the_watched_score_falls_back_to_what_the_curves_can_score():
    assert watched_score({"pgd": {0: 0.9, 1: 0.6, 2: 0.4}, "fgsm": {1: 1.0}}) == (0.5, "pgd")
    # no PGD configured: pgd_accuracy falls back to the mean over every attack
    assert watched_score({"fgsm": {0: 1.0, 1: 0.6}, "bim": {1: 0.4}}) == (0.5, "bim+fgsm")
    assert watched_score({"pgd": {1: 0.6}, "fgsm": {1: 1.0}}, "mean_attack_accuracy") == (0.8, "fgsm+pgd")
    assert score_plan("pgd_auc", ["fgsm", "pgd"]) == (["pgd"], "auc")
    assert score_plan("clean_accuracy", ["fgsm", "pgd"]) == (["pgd"], "accuracy")
    with pytest.raises(NothingToScore, match="attack.attacks is empty"):
        score_plan("pgd_accuracy", ["clean"])


def test_drift_compares_on_the_shared_grid():
    # a new eps (4) is reported but not read as a drop
    drift = score_drift({"pgd": {0: 0.9, 1: 0.6, 4: 0.0}}, {"pgd": {0: 0.9, 1: 0.7}})
    assert drift.eps_steps == [1] and drift.drop == pytest.approx(0.1)
    assert score_drift({"pgd": {1: 0.6}}, {}).drop is None
    # PGD is the score: a previous evaluation without it is not compared on another attack
    assert score_drift({"pgd": {1: 0.6}, "fgsm": {1: 0.9}}, {"fgsm": {1: 1.0}}).previous is None


def test_the_watched_score_of_sweep_curves_is_the_champion_score():
    """The re-evaluation scores MLflow curves keyed by eps step; the champion scores the
    sweep keyed by eps: both read one model's sweep to the same number."""
    metrics = summarize_sweep(_predictions(), CONFIG, holdout=[])[0]
    for criterion in ("pgd_accuracy", "pgd_auc", "mean_attack_accuracy"):
        attacks, metric = score_plan(criterion, metrics.attacks)
        for key in metrics.models:
            curves = sweep_curves(metrics, key, attacks, metric)
            assert set(curves["pgd"]) == {1, 2}  # MLflow steps: grey levels (k of k/255)
            assert watched_score(curves, criterion)[0] == pytest.approx(robustness_score(metrics, key, criterion))
            assert score_drift(curves, curves, criterion).drop == 0
