"""The seed-level verdict (the verdict package): the three comparisons in question order,
each row's interval and claim through claims.assess (floored at the seeds' own test SE),
the short readings, and the champion policy, on synthetic predictions whose per-seed
differences are known exactly."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from robust_deepfake import paths
from robust_deepfake.bootstrap import bootstrap_counts
from robust_deepfake.config import EvalConfig
from robust_deepfake.explain.outputs import IincValues
from robust_deepfake.metrics import evasion_rate
from robust_deepfake.paths import ModelKey
from robust_deepfake.robustness.sweep import SweepEntry, SweepMetrics, SweepPredictions, summarize_sweep
from robust_deepfake.verdict.champion import (
    EVIDENCE,
    NothingToScore,
    choose_champion,
    criterion_plan,
    robustness_score,
    score_drift,
    score_plan,
    sweep_curves,
    unoriented,
    watched_score,
)
from robust_deepfake.verdict.claims import MIN_SEEDS, PLAIN_MIN_SEEDS, assess
from robust_deepfake.verdict.differences import iinc_differences, sweep_differences
from robust_deepfake.verdict.seeds import COMPARISONS, seed_difference, t_interval

EPS = [0.0, 1 / 255, 2 / 255]
ATTACKS = ["fgsm", "pgd"]
SEEDS = [0, 1, 2]
N = 20
LABELS = np.array([0, 1] * (N // 2))  # interleaved: any prefix holds both classes
CONFIG = EvalConfig(n_bootstrap=200, ci=0.95, seed=0)
VARIANTS = ("baseline", "placebo", "reg")

# Images classified correctly (of N) per seed, under each attack at both attacked eps,
# as (baseline, placebo, reg). PGD: the second pass adds 1-2 images, the perturbation 1-2 more.
PGD_CORRECT = {0: (8, 9, 10), 1: (6, 8, 9), 2: (7, 8, 11)}
FGSM_CORRECT = {0: (12, 13, 14), 1: (13, 12, 11), 2: (10, 10, 11)}
CLEAN_CORRECT = 18


@pytest.fixture(autouse=True)
def _placebo_variant(monkeypatch):
    """ModelKey accepts the placebo (paths.VARIANTS holds it once the DAG trains it)."""
    if "placebo" not in paths.VARIANTS:
        monkeypatch.setattr(paths, "VARIANTS", VARIANTS)


def _scores(n_correct: int) -> np.ndarray:
    """p(fake) with exactly the first `n_correct` images classified correctly."""
    correct = np.arange(N) < n_correct
    truth = np.where(LABELS == 1, 0.8, 0.2)
    return np.where(correct, truth, 1 - truth)


def _predictions(variants=VARIANTS, seeds=SEEDS, pgd=PGD_CORRECT, skip=()) -> SweepPredictions:
    """Every (variant, seed) model but those in `skip`."""
    models = [ModelKey(v, s) for v in variants for s in seeds if (v, s) not in skip]
    p = np.zeros((len(models), len(ATTACKS), len(EPS), N))
    for m, key in enumerate(models):
        side = VARIANTS.index(key.variant)
        p[m, :, 0] = _scores(CLEAN_CORRECT)
        for a, table in ((0, FGSM_CORRECT), (1, pgd)):
            for e in (1, 2):
                p[m, a, e] = _scores(table.get(key.seed, (10, 10, 10))[side])
    sources = np.where(LABELS == 1, "fake_x", "real_a")
    return SweepPredictions(models, ATTACKS, EPS, np.arange(N), LABELS, sources, p)


def _diffs(table, first: str, second: str, seeds=SEEDS) -> list[float]:
    return [(table[s][VARIANTS.index(first)] - table[s][VARIANTS.index(second)]) / N for s in seeds]


def _accuracy_se(table, first: str, second: str, seed: int) -> float:
    """The SD of the accuracy difference over CONFIG's image-bootstrap resamples, computed
    directly from the correct-image masks."""
    weights = bootstrap_counts(N, CONFIG.n_bootstrap, CONFIG.seed)
    right = [(np.arange(N) < table[seed][VARIANTS.index(v)]).astype(float) for v in (first, second)]
    accuracy = [(weights @ r) / weights.sum(axis=1) for r in right]
    return float(np.std(accuracy[0] - accuracy[1], ddof=1))


_DEFAULT: list = []  # the rows of the default predictions, computed once (sklearn metrics take ~2 s)


def _rows(predictions=None, config=CONFIG):
    if predictions is None and config is CONFIG:
        if not _DEFAULT:
            _DEFAULT.append(sweep_differences(_predictions(), CONFIG))
        found = _DEFAULT[0]
    else:
        found = sweep_differences(predictions or _predictions(), config)
    return {(d.pair.key, d.attack, d.metric): d for d in found}


def test_the_three_comparisons_come_in_question_order():
    rows = list(_rows().values())
    assert [p.key for p in COMPARISONS] == ["reg_placebo", "placebo_baseline", "reg_baseline"]
    assert list(dict.fromkeys(d.pair.key for d in rows)) == ["reg_placebo", "placebo_baseline", "reg_baseline"]
    for pair in COMPARISONS:
        mine = [(d.attack, d.metric) for d in rows if d.pair == pair]
        assert mine == ([("clean", m) for m in ("accuracy", "f1", "auc")]
                        + [(a, m) for a in ATTACKS for m in ("accuracy", "f1", "auc", "asr", "evasion_rate")])


@pytest.mark.parametrize("first,second", [("reg", "placebo"), ("placebo", "baseline"), ("reg", "baseline")])
def test_each_row_is_assess_over_its_seeds_and_their_test_se(first, second):
    row = _rows()[(f"{first}_{second}", "pgd", "accuracy")]
    expected = _diffs(PGD_CORRECT, first, second)
    assert row.seeds == SEEDS and row.per_seed == pytest.approx(expected)
    ses = [_accuracy_se(PGD_CORRECT, first, second, s) for s in SEEDS]
    assert row.per_seed_se == pytest.approx(ses)
    same = assess(expected, ses, 0.95)
    assert (row.mean, row.ci_low, row.ci_high) == pytest.approx((same.mean, same.low, same.high))
    assert row.claim.claim == same.claim and row.claim.reason == same.reason
    spread = max(np.var(expected, ddof=1), np.mean(np.square(ses)))  # the floor: never below the test noise
    half = stats.t.ppf(0.975, 2) * math.sqrt(spread / 3)
    assert (row.ci_low, row.ci_high) == pytest.approx((np.mean(expected) - half, np.mean(expected) + half))


def test_a_clear_difference_is_claimed_and_read_in_a_few_words():
    big = {0: (4, 5, 14), 1: (5, 6, 15), 2: (4, 5, 15)}  # reg better by ~0.5 in every seed
    row = _rows(_predictions(pgd=big))[("reg_placebo", "pgd", "accuracy")]
    assert row.claimed and row.favours == "reg" and row.ci_low > 0
    assert row.reading() == "favours reg"
    assert row.seeds_favouring == {"reg": 3, "placebo": 0, "tie": 0}
    exported = row.as_dict()
    assert exported["comparison"] == "reg_placebo" and exported["claim"] == 1 and exported["verdict"] == "favours reg"


def test_a_noisy_row_favours_neither():
    row = _rows()[("reg_baseline", "fgsm", "accuracy")]
    assert row.per_seed == pytest.approx([0.10, -0.10, 0.05])
    assert row.ci_low < 0 < row.ci_high and not row.claimed and row.favours == "neither"
    assert row.reading() == "no detectable difference"
    assert row.seeds_favouring == {"reg": 2, "baseline": 1, "tie": 0}


def test_lower_is_better_metrics_favour_the_lower_side():
    asr = _rows(_predictions(pgd={0: (4, 5, 14), 1: (5, 6, 15), 2: (4, 5, 15)}))[("reg_baseline", "pgd", "asr")]
    # both models of a seed are right on the first 18 clean images; PGD flips 18 - correct of them
    assert asr.mean < 0 and asr.claimed and asr.favours == "reg"


def test_evasion_rows_are_the_evasion_rate_differences_with_their_bootstrap_se():
    """Each model's evasion rate over the fakes it detects when clean (metrics.evasion_rate),
    differenced per seed and averaged over the attacked eps; se_s from the same image
    resamples as every other row; lower is better."""
    big = {0: (4, 5, 14), 1: (5, 6, 15), 2: (4, 5, 15)}
    predictions = _predictions(pgd=big)
    row = _rows(predictions)[("reg_baseline", "pgd", "evasion_rate")]
    weights = bootstrap_counts(N, CONFIG.n_bootstrap, CONFIG.seed)
    clean = _scores(CLEAN_CORRECT)
    detected = (LABELS == 1) & (clean >= 0.5)
    expected, ses = [], []
    for seed in SEEDS:
        rates, replicates = [], []
        for variant in ("reg", "baseline"):
            adv = _scores(big[seed][VARIANTS.index(variant)])
            rates.append(evasion_rate(LABELS, clean, adv))
            evaded = (adv[detected] < 0.5).astype(float)
            replicates.append((weights[:, detected] @ evaded) / weights[:, detected].sum(axis=1))
        expected.append(rates[0] - rates[1])
        ses.append(float(np.std(replicates[0] - replicates[1], ddof=1)))
    assert row.per_seed == pytest.approx(expected) and all(d < 0 for d in expected)
    assert row.per_seed_se == pytest.approx(ses)
    assert row.claimed and row.favours == "reg"  # fewer evasions: reg is better
    metrics = summarize_sweep(predictions, CONFIG, holdout=[])[0]
    decision = choose_champion(metrics, "pgd_evasion", CONFIG, None, list(_rows(predictions).values()))
    assert decision.evidence.per_seed == pytest.approx([-d for d in expected])  # the score is 1 - evasion
    assert decision.evidence.per_seed_se == pytest.approx(ses)  # floored with the evasion row's test SE
    assert decision.champion.variant == "reg"


def test_an_evasion_row_is_left_out_where_a_model_detects_no_fake():
    predictions = _predictions()
    blind = predictions.models.index(ModelKey("placebo", 1))
    predictions.p_fake[blind, :, 0] = 0.1  # scores every clean image real
    rows = _rows(predictions)
    assert ("placebo_baseline", "pgd", "accuracy") in rows and ("reg_baseline", "pgd", "evasion_rate") in rows
    assert ("placebo_baseline", "pgd", "evasion_rate") not in rows
    assert ("reg_placebo", "pgd", "evasion_rate") not in rows


def test_without_the_placebo_only_reg_minus_baseline_is_there():
    rows = sweep_differences(_predictions(variants=("baseline", "reg")), CONFIG)
    assert {d.pair.key for d in rows} == {"reg_baseline"}
    row = next(d for d in rows if (d.attack, d.metric) == ("pgd", "accuracy"))
    assert row.per_seed == pytest.approx(_diffs(PGD_CORRECT, "reg", "baseline"))


def test_a_comparison_uses_the_seeds_where_both_variants_exist():
    rows = _rows(_predictions(skip={("placebo", 1)}))
    assert rows[("reg_placebo", "pgd", "accuracy")].seeds == [0, 2]
    assert rows[("placebo_baseline", "pgd", "accuracy")].seeds == [0, 2]
    assert rows[("reg_baseline", "pgd", "accuracy")].seeds == SEEDS


def test_no_claim_below_min_seeds():
    big = {0: (4, 5, 14)}
    row = _rows(_predictions(seeds=[0], pgd=big))[("reg_placebo", "pgd", "accuracy")]
    assert row.n_seeds == 1 < MIN_SEEDS and not row.claimed
    assert math.isnan(row.ci_low) and row.reading() == f"no claim below {MIN_SEEDS} seeds"
    assert row.claim.reading() == f"no claim below {MIN_SEEDS} seeds (1 usable)"


def test_identical_seeds_keep_the_test_sampling_width():
    """Every seed gives reg the same +2 of 20 images under PGD: the t-interval over seeds
    has zero width, but the images were few; the floor keeps their noise in the interval."""
    same = {s: (8, 8, 10) for s in SEEDS}
    row = _rows(_predictions(pgd=same))[("reg_baseline", "pgd", "accuracy")]
    assert row.per_seed == pytest.approx([0.1, 0.1, 0.1])
    _, t_low, t_high = t_interval(np.array(row.per_seed), 0.95)
    assert t_low == pytest.approx(t_high)  # the degenerate seed-only interval
    assert row.claim.floored and row.claim.test_se > 0 and row.claim.spread == pytest.approx(row.claim.test_se)
    assert row.ci_low < 0 < row.ci_high and not row.claimed  # 2 images of 20 per seed: not enough


def test_without_test_se_the_plain_minimum_applies():
    """eval.n_bootstrap 0: no test SE, so no floor: a claim needs PLAIN_MIN_SEEDS seeds."""
    big = {s: (4, 5, 14 + s % 2) for s in range(PLAIN_MIN_SEEDS)}
    few = _rows(_predictions(pgd=big), EvalConfig(n_bootstrap=0))[("reg_placebo", "pgd", "accuracy")]
    assert math.isnan(few.per_seed_se[0]) and not few.claim.has_test_se
    assert not few.claimed and few.reading() == f"no claim below {PLAIN_MIN_SEEDS} seeds (no test SE)"
    enough = _rows(_predictions(pgd=big, seeds=list(range(PLAIN_MIN_SEEDS))),
                   EvalConfig(n_bootstrap=0))[("reg_placebo", "pgd", "accuracy")]
    assert enough.claimed and enough.favours == "reg"


def test_iinc_rows_per_pair():
    models = [ModelKey(v, s) for v in VARIANTS for s in SEEDS]
    n, shape = 8, (len(models), 1, 2, 8)
    stability = np.zeros(shape)
    for m, key in enumerate(models):
        stability[m] = 0.4 - 0.05 * VARIANTS.index(key.variant) + 0.01 * key.seed
    values = IincValues(models, ["pgd"], EPS[1:], np.arange(n), np.ones(n, bool), stability,
                        np.full(shape, 0.3), np.full((len(models), n), 0.3))
    rows = {(d.pair.key, d.metric): d for d in iinc_differences(values, CONFIG)}
    assert rows[("reg_placebo", "iinc_stability")].per_seed == pytest.approx([-0.05] * 3)
    assert rows[("placebo_baseline", "iinc_stability")].per_seed == pytest.approx([-0.05] * 3)
    assert rows[("reg_baseline", "iinc_stability")].per_seed == pytest.approx([-0.10] * 3)
    assert rows[("reg_baseline", "iinc_localization")].per_seed == pytest.approx([0.0] * 3)
    # identical per-image values: no test noise and no spread, so no noise estimate and no claim
    assert rows[("reg_baseline", "iinc_stability")].reading() == "no claim: no noise estimate"


# --- the champion ---------------------------------------------------------------------


def _sweep(pgd_accuracy: dict[ModelKey, float]) -> SweepMetrics:
    """Sweep metrics with the given PGD accuracy at both attacked eps (AUC alongside)."""
    entries = []
    for key, accuracy in pgd_accuracy.items():
        entries.append(SweepEntry(key, "clean", 0.0, 0.9, 0.9, 0.95, 0.0, N))
        for eps in EPS[1:]:
            entries.append(SweepEntry(key, "pgd", eps, accuracy, accuracy, accuracy, 1 - accuracy, N))
    return SweepMetrics(entries, 0.95, True)


def _scores_by_seed(baseline: list[float], reg: list[float], placebo: list[float] | None = None) -> dict:
    scores = {**{ModelKey("baseline", s): v for s, v in zip(SEEDS, baseline)},
              **{ModelKey("reg", s): v for s, v in zip(SEEDS, reg)}}
    return scores | {ModelKey("placebo", s): v for s, v in zip(SEEDS, placebo or [])}


def _evidence(scores: dict, se: float = 0.02) -> list:
    """The verdict's PGD accuracy row for reg - baseline of `scores`, each seed with test SE `se`."""
    d = [scores[ModelKey("reg", s)] - scores[ModelKey("baseline", s)] for s in SEEDS]
    return [seed_difference(EVIDENCE, "pgd", "accuracy", SEEDS, d, [se] * len(SEEDS), 0.95)]


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
    decision = choose_champion(_sweep(NOISY), "pgd_accuracy", CONFIG, "reg", _evidence(NOISY))
    assert not decision.evidence.claimed
    assert decision.move_champion is False
    assert decision.champion.variant == "reg" and decision.challenger.variant == "baseline"
    assert "no detectable difference" in decision.reason


def test_a_noisy_difference_without_a_champion_picks_the_baseline():
    decision = choose_champion(_sweep(NOISY), "pgd_accuracy", CONFIG, None, _evidence(NOISY))
    assert decision.move_champion is True
    assert decision.champion.variant == "baseline" and decision.challenger.variant == "reg"
    assert decision.champion == ModelKey("baseline", 2)  # baseline mean 0.45: seed 2 (0.45) is closest


@pytest.mark.parametrize("current", [None, "baseline", "reg"])
def test_a_claim_moves_the_champion_to_the_better_variant(current):
    evidence = _evidence(CLEAR)
    decision = choose_champion(_sweep(CLEAR), "pgd_accuracy", CONFIG, current, evidence)
    assert decision.evidence is evidence[0]  # the verdict's own row: one interval for one question
    assert decision.evidence.claimed and decision.evidence.favours == "reg"
    assert decision.move_champion is True
    assert decision.variant_scores == pytest.approx({"baseline": np.mean([0.30, 0.36, 0.31]),
                                                     "reg": np.mean([0.50, 0.56, 0.60])})
    # reg mean 0.553: seed 1 (0.56) is closest; baseline mean 0.323: seed 2 (0.31)
    assert decision.champion == ModelKey("reg", 1)
    assert decision.challenger == ModelKey("baseline", 2)
    assert decision.representatives == {"baseline": ModelKey("baseline", 2), "reg": ModelKey("reg", 1)}
    exported = decision.as_dict()
    assert exported["champion"] == "reg-seed1" and exported["move_champion"] is True


def test_a_raw_interval_excluding_zero_is_not_enough():
    """The same clear scores with a large test SE per seed: the t-interval over seeds alone
    excludes 0, the floored one does not, so the champion stays."""
    d = [CLEAR[ModelKey("reg", s)] - CLEAR[ModelKey("baseline", s)] for s in SEEDS]
    assert t_interval(np.array(d), 0.95)[1] > 0
    decision = choose_champion(_sweep(CLEAR), "pgd_accuracy", CONFIG, "baseline", _evidence(CLEAR, se=0.2))
    assert not decision.evidence.claimed and decision.champion.variant == "baseline"
    assert not decision.move_champion
    # without any row there is no test SE: 3 seeds are below the plain minimum
    bare = choose_champion(_sweep(CLEAR), "pgd_accuracy", CONFIG, "baseline")
    assert not bare.evidence.claimed and bare.evidence.claim.reason == "below_plain_min_seeds"


def test_the_placebo_is_never_champion():
    """The placebo scores best by far; the choice is still between baseline and reg."""
    scores = _scores_by_seed([0.30, 0.36, 0.31], [0.50, 0.56, 0.60], placebo=[0.95, 0.96, 0.97])
    for current in (None, "placebo", "reg", "baseline"):
        decision = choose_champion(_sweep(scores), "pgd_accuracy", CONFIG, current, _evidence(scores))
        assert decision.champion.variant == "reg" and decision.challenger.variant == "baseline"
        assert set(decision.representatives) == {"baseline", "placebo", "reg"}  # @placebo: a control's alias
        assert ModelKey("placebo", 0) in decision.floor.clean_auc  # judged by the floor like every model


def test_a_claim_for_the_baseline_moves_the_champion_back():
    flipped = {ModelKey("reg" if k.variant == "baseline" else "baseline", k.seed): v for k, v in CLEAR.items()}
    decision = choose_champion(_sweep(flipped), "pgd_accuracy", CONFIG, "reg", _evidence(flipped))
    assert decision.move_champion is True
    assert decision.champion == ModelKey("baseline", 1)


def test_mean_attack_accuracy_floors_with_the_attack_rows_se():
    """No verdict row scores every attack at once: the evidence takes the mean of the
    attack rows' se_s per seed (an upper bound on the SE of their mean)."""
    predictions = _predictions()
    metrics = summarize_sweep(predictions, CONFIG, holdout=[])[0]
    rows = sweep_differences(predictions, CONFIG)
    decision = choose_champion(metrics, "mean_attack_accuracy", CONFIG, None, rows)
    parts = [d for d in rows if d.pair == EVIDENCE and d.metric == "accuracy" and d.attack in ATTACKS]
    assert decision.evidence.per_seed_se == pytest.approx(np.mean([d.per_seed_se for d in parts], axis=0))
    assert decision.evidence.per_seed == pytest.approx(np.mean([d.per_seed for d in parts], axis=0))


def _with_placebo(scores: dict[ModelKey, float], placebo: list[float]) -> dict[ModelKey, float]:
    return {**scores, **{ModelKey("placebo", s): v for s, v in zip(SEEDS, placebo)}}


@pytest.mark.parametrize("scores", [NOISY, CLEAR], ids=["noisy", "clear"])
@pytest.mark.parametrize("current", [None, "baseline", "reg", "placebo"])
def test_the_placebo_is_never_champion_or_challenger(scores, current):
    """The placebo is a control: even far above both candidates (and above the floor, with
    @champion pointing at it by hand) it gets a score and a representative, never an alias
    that serves."""
    with_placebo = _with_placebo(scores, [0.95, 0.97, 0.96])
    decision = choose_champion(_sweep(with_placebo), "pgd_accuracy", CONFIG, current_champion=current)
    assert {decision.champion.variant, decision.challenger.variant} == {"baseline", "reg"}
    assert decision.representatives["placebo"] == ModelKey("placebo", 2)  # closest to its mean 0.96
    assert decision.variant_scores["placebo"] == pytest.approx(0.96)
    # the candidates' decision is the one without the placebo, except that a champion that
    # points at the placebo is replaced as if there were none
    alone = choose_champion(_sweep(scores), "pgd_accuracy", CONFIG,
                            current_champion=None if current == "placebo" else current)
    assert (decision.champion, decision.challenger, decision.move_champion) == (
        alone.champion, alone.challenger, alone.move_champion)
    if current == "placebo" and not decision.evidence.claimed:
        assert "points at a control (placebo)" in decision.reason


def test_champion_rejects_a_criterion_the_sweep_cannot_score():
    sweep = _sweep(CLEAR)
    fgsm_only = SweepMetrics([SweepEntry(e.model, "fgsm" if e.attack == "pgd" else e.attack, e.eps, e.accuracy,
                                         e.f1, e.auc, e.asr, e.n) for e in sweep.entries], 0.95, True)
    with pytest.raises(ValueError, match="report.select_by"):
        choose_champion(fgsm_only, "pgd_accuracy", CONFIG)


def _with_constant_reg(constant_baseline: bool = False) -> tuple[SweepMetrics, list]:
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
    return summarize_sweep(predictions, CONFIG, holdout=[])[0], sweep_differences(predictions, CONFIG)


@pytest.mark.parametrize("criterion", ["pgd_auc", "pgd_accuracy", "mean_attack_accuracy"])
@pytest.mark.parametrize("current", [None, "reg", "baseline"])
def test_a_constant_classifier_never_becomes_champion(criterion, current):
    metrics, rows = _with_constant_reg()
    # the robustness scores alone prefer the constant model: that is what the floor is for
    assert robustness_score(metrics, ModelKey("reg", 0), criterion) > robustness_score(
        metrics, ModelKey("baseline", 0), criterion)
    decision = choose_champion(metrics, criterion, CONFIG, current, rows, min_clean_auc=0.75)
    assert decision.champion.variant == "baseline", decision.reason
    assert decision.move_champion and not decision.move_challenger  # @challenger never lands on it
    assert not decision.floor.variant_passes("reg") and decision.floor.variant_passes("baseline")
    assert decision.floor.describe(ModelKey("reg", 0)) == "failed: clean AUC 0.500 < report.min_clean_auc 0.75"
    assert "quality floor" in decision.reason or "better" in decision.reason


def test_no_alias_moves_when_every_variant_is_under_the_floor():
    metrics, rows = _with_constant_reg(constant_baseline=True)
    decision = choose_champion(metrics, "pgd_auc", CONFIG, None, rows, min_clean_auc=0.75)
    assert not decision.move_champion and not decision.move_challenger
    assert "no variant passes the quality floor" in decision.reason
    assert decision.as_dict()["floor"]["models"]["baseline-seed0"] == {"clean_auc": 0.5, "passes": False}


# --- the watched score ------------------------------------------------------------------


def _evasion_sweep(evasion: dict[ModelKey, float]) -> SweepMetrics:
    """PGD at both attacked eps with the given evasion rate and accuracy 0.5 everywhere."""
    entries = []
    for key, rate in evasion.items():
        entries.append(SweepEntry(key, "clean", 0.0, 0.9, 0.9, 0.95, 0.0, N, evasion_rate=0.0))
        entries += [SweepEntry(key, "pgd", eps, 0.5, 0.5, 0.5, 0.5, N, evasion_rate=rate) for eps in EPS[1:]]
    return SweepMetrics(entries, 0.95, True)


def test_pgd_evasion_is_a_criterion_where_lower_evasion_wins():
    seeds = range(5)  # no verdict row gives per-seed test SEs here: the plain claim rule's 5 seeds
    baseline, reg = [0.90, 0.85, 0.88, 0.86, 0.91], [0.60, 0.62, 0.55, 0.58, 0.63]
    evasion = {ModelKey("baseline", s): v for s, v in zip(seeds, baseline)}
    evasion |= {ModelKey("reg", s): v for s, v in zip(seeds, reg)}
    sweep = _evasion_sweep(evasion)
    assert criterion_plan("pgd_evasion", sweep.attacks) == (["pgd"], "evasion_rate")
    assert robustness_score(sweep, ModelKey("reg", 0), "pgd_evasion") == pytest.approx(1 - 0.60)  # oriented
    decision = choose_champion(sweep, "pgd_evasion", CONFIG, current_champion="baseline")
    assert decision.move_champion and decision.champion.variant == "reg"
    assert decision.variant_scores["reg"] == pytest.approx(1 - np.mean(reg))
    flipped = {ModelKey("reg" if k.variant == "baseline" else "baseline", k.seed): v for k, v in evasion.items()}
    back = choose_champion(_evasion_sweep(flipped), "pgd_evasion", CONFIG, current_champion="reg")
    assert back.move_champion and back.champion.variant == "baseline"  # the higher evasion loses
    # the re-evaluation watches the same oriented score on curves as logged (raw evasion rates)
    curves = sweep_curves(sweep, ModelKey("reg", 0), ["pgd"], "evasion_rate")
    assert curves == {"pgd": {1: 0.60, 2: 0.60}}
    assert watched_score(curves, "pgd_evasion") == (pytest.approx(0.40), "pgd")
    drift = score_drift({"pgd": {1: 0.70}}, {"pgd": {1: 0.60}}, "pgd_evasion")  # evasion up by 0.1
    assert drift.drop == pytest.approx(0.1) and drift.metric == "1-evasion_rate"
    with pytest.raises(ValueError, match="ensemble_"):
        criterion_plan("ensemble_accuracy", sweep.attacks)  # no ensemble in this sweep


@pytest.mark.parametrize("criterion", ["pgd_accuracy", "pgd_evasion", "ensemble_evasion"])
def test_a_simulated_previous_score_makes_the_drop_it_claims(criterion):
    """simulate-drop logs unoriented(previous) as the raw curve: scored like a real
    evaluation it reads as `previous`, so the drop is previous - the current score."""
    attacks, metric = score_plan(criterion, ["fgsm", "pgd", "ensemble"])
    current = {attack: {1: 0.30, 2: 0.40} for attack in attacks}  # raw values, as logged
    simulated = {attack: {1: unoriented(0.95, metric), 2: unoriented(0.95, metric)} for attack in attacks}
    drift = score_drift(current, simulated, criterion)
    now = 0.35 if metric == "accuracy" else 1 - 0.35
    assert drift.previous == pytest.approx(0.95) and drift.drop == pytest.approx(0.95 - now) and drift.drop > 0


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
    for criterion in ("pgd_accuracy", "pgd_auc", "pgd_evasion", "mean_attack_accuracy"):
        attacks, metric = score_plan(criterion, metrics.attacks)
        for key in metrics.models:
            curves = sweep_curves(metrics, key, attacks, metric)
            assert set(curves["pgd"]) == {1, 2}  # MLflow steps: grey levels (k of k/255)
            assert watched_score(curves, criterion)[0] == pytest.approx(robustness_score(metrics, key, criterion))
            assert score_drift(curves, curves, criterion).drop == 0
