"""Is the regularized model more robust? Seed-level comparisons and the champion choice.

Training noise dominates test-sampling noise on small data: the same seed on two
machines has flipped the sign of a per-image "significant" difference. So the unit of
evidence is the training seed. For each seed s both variants share initial weights and
data order, and

    d_s = metric(reg_s) - metric(baseline_s)

on the same test images (per attack: averaged over the attacked eps). The verdict is
the mean of d_s with an interval that contains both noises: the union of the Student-t
interval over seeds (n - 1 degrees of freedom: the seed-to-seed spread) and a two-level
bootstrap (resample seeds, then test images within each seed: the test-sampling noise,
which a t-interval misses when every seed happens to give the same d_s, as small test
sets with discrete accuracies do). A side is *favoured* only when that interval excludes
0, and otherwise the report says "no detectable difference at n seeds" together with the
effect size n seeds could detect (80% power at the observed spread). Per-seed intervals
over test images stay available, labelled as test sampling only.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from robust_deepfake.bootstrap import bootstrap_counts, metric_replicates, percentile_ci
from robust_deepfake.config import EvalConfig
from robust_deepfake.explain.results import IincValues
from robust_deepfake.metrics import classification_metrics
from robust_deepfake.paths import ModelKey
from robust_deepfake.units import CLEAN
from robust_deepfake.robustness.sweep import SweepMetrics, SweepPredictions

HIGHER_IS_BETTER = {"accuracy": True, "f1": True, "auc": True, "asr": False, "score": True,
                    "iinc_stability": False, "iinc_localization": False}
POWER = 0.8
TWO_LEVEL_SALT = 7919  # the seed-level bootstrap's stream, apart from the image bootstrap's


def t_interval(values: np.ndarray, level: float) -> tuple[float, float, float]:
    """(mean, low, high): Student-t interval of the mean; NaN bounds with fewer than 2 values."""
    from scipy import stats

    values = np.asarray(values, dtype=float)
    mean = float(values.mean()) if values.size else math.nan
    if values.size < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf(0.5 + level / 2, values.size - 1) * values.std(ddof=1) / math.sqrt(values.size))
    return mean, mean - half, mean + half


def detectable_effect(values: np.ndarray, level: float, power: float = POWER) -> float:
    """The smallest mean difference n seeds would detect with `power` at this spread
    (one-sample t, two-sided): (t_{1-a/2} + t_{power}) * sd / sqrt(n)."""
    from scipy import stats

    values = np.asarray(values, dtype=float)
    if values.size < 2 or values.std(ddof=1) == 0:
        return math.nan  # no spread: nothing to scale an effect size by
    df = values.size - 1
    return float((stats.t.ppf(0.5 + level / 2, df) + stats.t.ppf(power, df)) * values.std(ddof=1)
                 / math.sqrt(values.size))


class SeedInterval:
    """What every paired difference over seeds with a t-interval shares: the subclass, a
    frozen dataclass, declares `seeds`, `per_seed`, `mean`, `ci_low`, `ci_high`, `level`
    and `detectable` (left out here so that it keeps its own field order)."""

    seeds: list[int]
    ci_low: float
    ci_high: float
    detectable: float

    @property
    def n_seeds(self) -> int:
        return len(self.seeds)

    @property
    def excludes_zero(self) -> bool:
        return self.ci_low > 0 or self.ci_high < 0

    def no_difference_wording(self) -> str:
        """The reading when the interval contains 0: what these seeds could have detected."""
        if math.isnan(self.detectable):
            return f"no detectable difference at {self.n_seeds} seeds (every seed gave the same difference)"
        return (f"no detectable difference at {self.n_seeds} seeds (could detect about "
                f"{self.detectable:.3f} with {POWER:.0%} power)")


@dataclass(frozen=True)
class SeedDifference(SeedInterval):
    """reg - baseline for one attack and metric, over paired seeds."""

    attack: str  # `clean` for eps = 0
    metric: str
    seeds: list[int]
    per_seed: list[float]  # d_s
    mean: float
    ci_low: float  # t-interval over seeds: includes training variance
    ci_high: float
    level: float
    detectable: float  # effect size these seeds could detect (80% power)
    per_image_ci: list[tuple[float, float]] = field(default_factory=list)  # per seed, test sampling only

    def _better(self, diff: float) -> str:
        return "reg" if (diff > 0) == HIGHER_IS_BETTER[self.metric] else "baseline"

    @property
    def favours(self) -> str:
        """The side the seed-level interval favours, or 'neither'."""
        return self._better(self.mean) if self.excludes_zero else "neither"

    @property
    def seeds_favouring(self) -> dict[str, int]:
        counts = {"reg": 0, "baseline": 0, "tie": 0}
        for d in self.per_seed:
            counts["tie" if d == 0 else self._better(d)] += 1
        return counts

    def wording(self) -> str:
        """The plain-language reading of this row."""
        if math.isnan(self.ci_low):
            return f"not decidable from {self.n_seeds} seed(s): at least 2 are needed for an interval"
        if self.excludes_zero:
            return f"favours {self.favours} ({self.n_seeds} seeds)"
        return self.no_difference_wording()

    def as_dict(self) -> dict:
        return {"attack": self.attack, "metric": self.metric, "mean": self.mean, "ci": [self.ci_low, self.ci_high],
                "level": self.level, "seeds": self.seeds, "per_seed": self.per_seed, "detectable": self.detectable,
                "per_image_ci": [list(ci) for ci in self.per_image_ci], "excludes_zero": self.excludes_zero,
                "favours": self.favours, "seeds_favouring": self.seeds_favouring}


def two_level_interval(replicates: list[np.ndarray], level: float, seed: int) -> tuple[float, float]:
    """Bootstrap seeds, then images: replicate b draws the seeds with replacement and
    takes each drawn seed's b-th image-bootstrap replicate of its d_s."""
    stacked = np.stack(replicates)  # (S, B)
    n_seeds, n_boot = stacked.shape
    rng = np.random.default_rng(seed)
    drawn = rng.integers(0, n_seeds, size=(n_boot, n_seeds))
    values = stacked[drawn, np.arange(n_boot)[:, None]].mean(axis=1)
    return percentile_ci(values[np.isfinite(values)], level) if np.isfinite(values).any() else (math.nan, math.nan)


def _paired(seeds: list[int], per_seed: list[float], per_image: list[tuple[float, float]], attack: str, metric: str,
            config: EvalConfig, replicates: list[np.ndarray] | None = None) -> SeedDifference:
    values = np.array(per_seed)
    mean, low, high = t_interval(values, config.ci)
    if replicates and len(replicates) >= 2 and config.n_bootstrap and math.isfinite(low):
        boot_low, boot_high = two_level_interval(replicates, config.ci, config.seed + TWO_LEVEL_SALT)
        low, high = min(low, boot_low), max(high, boot_high)
    return SeedDifference(attack, metric, list(seeds), [float(v) for v in per_seed], mean, low, high, config.ci,
                          detectable_effect(values, config.ci), per_image)


def _weighted_mean_replicates(per_image: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Bootstrap replicates (B,) of the mean of `per_image` (n,), NaN entries left out."""
    valid = np.isfinite(per_image)
    w = weights[:, valid]
    return (w @ per_image[valid]) / np.maximum(w.sum(axis=1), 1)


def sweep_differences(predictions: SweepPredictions, config: EvalConfig) -> list[SeedDifference]:
    """reg - baseline per seed in accuracy, macro-F1, AUC (clean row first, then each
    attack averaged over eps > 0) and attack success rate on the images both models of
    the seed classify correctly when clean."""
    labels = predictions.labels
    weights = bootstrap_counts(len(labels), max(config.n_bootstrap, 1), config.seed)
    attacked = [e for e, eps in enumerate(predictions.eps) if eps > 0]
    plan = [(CLEAN, 0, [0])] + [(attack, k, attacked) for k, attack in enumerate(predictions.attacks)]
    seeds = [s for s in predictions.seeds
             if ModelKey("baseline", s) in predictions.models and ModelKey("reg", s) in predictions.models]
    out = []
    for attack, k, eps_indices in plan:
        metrics = ("accuracy", "f1", "auc") + (("asr",) if attack != CLEAN else ())
        per_seed = {m: [] for m in metrics}
        per_image = {m: [] for m in metrics}
        seed_reps = {m: [] for m in metrics}
        for seed in seeds:
            ia, ib = predictions.index(ModelKey("baseline", seed)), predictions.index(ModelKey("reg", seed))
            both_correct = ((predictions.p_fake[ia, 0, 0] >= 0.5) == labels) & ((predictions.p_fake[ib, 0, 0] >= 0.5) == labels)
            point = {m: [] for m in metrics}
            reps = {m: [] for m in metrics}
            for e in eps_indices:
                pa, pb = predictions.p_fake[ia, k, e], predictions.p_fake[ib, k, e]
                ma, mb = classification_metrics(labels, pa), classification_metrics(labels, pb)
                ra, rb = metric_replicates(labels, pa, weights), metric_replicates(labels, pb, weights)
                for metric in ("accuracy", "f1", "auc"):
                    point[metric].append(mb[metric] - ma[metric])
                    reps[metric].append(rb[metric] - ra[metric])
                if "asr" in point:
                    flips = (((pb >= 0.5) != labels).astype(float) - ((pa >= 0.5) != labels).astype(float))
                    flips[~both_correct] = np.nan  # ASR counts only images both models got right
                    point["asr"].append(float(np.nanmean(flips)) if both_correct.any() else 0.0)
                    reps["asr"].append(_weighted_mean_replicates(flips, weights))
            for metric in metrics:
                per_seed[metric].append(float(np.mean(point[metric])))
                replicate = np.mean(reps[metric], axis=0)
                seed_reps[metric].append(replicate)
                per_image[metric].append(percentile_ci(replicate, config.ci) if config.n_bootstrap
                                         else (math.nan, math.nan))
        for metric in metrics:
            out.append(_paired(seeds, per_seed[metric], per_image[metric], attack, metric, config, seed_reps[metric]))
    return out


def iinc_differences(values: IincValues, config: EvalConfig) -> list[SeedDifference]:
    """reg - baseline in mean IINC per seed (stability, localization), per attack,
    averaged over eps and the CAM subset's images (paired per image within a seed)."""
    seeds = sorted({k.seed for k in values.models
                    if ModelKey("baseline", k.seed) in values.models and ModelKey("reg", k.seed) in values.models})
    weights = bootstrap_counts(len(values.indices), max(config.n_bootstrap, 1), config.seed)
    out = []
    for measure, array in (("stability", values.stability), ("localization", values.localization)):
        for a, attack in enumerate(values.attacks):
            per_seed, per_image, replicates = [], [], []
            for seed in seeds:
                ia, ib = values.index(ModelKey("baseline", seed)), values.index(ModelKey("reg", seed))
                diff = array[ib, a] - array[ia, a]  # (E, n)
                valid = np.isfinite(diff).any(axis=0)
                image_diff = np.full(diff.shape[1], np.nan)
                image_diff[valid] = np.nanmean(diff[:, valid], axis=0)  # average over eps, per image
                per_seed.append(float(np.nanmean(image_diff)) if valid.any() else math.nan)
                replicate = _weighted_mean_replicates(image_diff, weights)
                replicates.append(replicate)
                per_image.append(percentile_ci(replicate, config.ci) if config.n_bootstrap and valid.any()
                                 else (math.nan, math.nan))
            if not per_seed or any(math.isnan(d) for d in per_seed):
                continue
            out.append(_paired(seeds, per_seed, per_image, attack, f"iinc_{measure}", config, replicates))
    return out


# --- the champion ---------------------------------------------------------------------


def criterion_plan(criterion: str, attacks: Sequence[str]) -> tuple[list[str], str]:
    """The attacks and metric an attacked `report.select_by` criterion averages over eps > 0:
    pgd_accuracy / pgd_auc: PGD's accuracy / AUC; mean_attack_accuracy: every attack's
    accuracy. ValueError for clean_* (no attack), an unknown criterion, or pgd_* when
    `attacks` has no PGD."""
    attacks = [a for a in attacks if a != CLEAN]
    if criterion.startswith("pgd_"):
        if "pgd" not in attacks:
            raise ValueError("report.select_by: pgd_* needs pgd in attack.attacks")
        return ["pgd"], criterion.removeprefix("pgd_")
    if criterion == "mean_attack_accuracy":
        if not attacks:
            raise ValueError("report.select_by: mean_attack_accuracy needs at least one attack")
        return attacks, "accuracy"
    raise ValueError(f"report.select_by: {criterion!r} is not an attacked criterion "
                     "(pgd_accuracy, pgd_auc, mean_attack_accuracy)")


def curve_score(curves: Mapping[str, Mapping[Any, float]], attacks: Sequence[str],
                eps: Collection | None = None) -> float:
    """THE robustness score: the mean of `attacks`' curves (attack -> eps -> value, eps as a
    float or an MLflow step: only its sign and membership matter) over eps > 0, restricted
    to `eps` when given. Non-finite values (never logged to MLflow) do not count; NaN when
    nothing is left. `robustness_score` (the champion) and the scheduled re-evaluation
    (ops/reevaluation.py) both score through this function."""
    values = [
        float(value)
        for attack in attacks
        for key, value in curves.get(attack, {}).items()
        if key > 0 and (eps is None or key in eps) and math.isfinite(value)
    ]
    return float(np.mean(values)) if values else math.nan


def robustness_score(metrics: SweepMetrics, key: ModelKey, criterion: str) -> float:
    """One model's score under `report.select_by` (higher is better), from the sweep.

    pgd_accuracy / pgd_auc: mean over eps > 0 of PGD's metric; mean_attack_accuracy: over
    every attack and eps > 0 (criterion_plan, curve_score); clean_*: the unattacked row.
    The scheduled re-evaluation uses the same definition (ops/reevaluation.py)."""
    if criterion.startswith("clean_"):
        return float(getattr(metrics.get(key, CLEAN, 0.0), criterion.removeprefix("clean_")))
    attacks, metric = criterion_plan(criterion, metrics.attacks)
    if not metrics.attacked_eps:
        raise ValueError("report.select_by: the sweep has no eps > 0")
    curves = {attack: {eps: getattr(metrics.get(key, attack, eps), metric) for eps in metrics.attacked_eps}
              for attack in attacks}
    return curve_score(curves, attacks)


@dataclass(frozen=True)
class ChampionDecision:
    """Which registered model becomes @champion, and why."""

    champion: ModelKey  # the winning variant's seed closest to its variant's mean score
    challenger: ModelKey
    representatives: dict[str, ModelKey]  # per variant: the seed closest to its mean
    variant_scores: dict[str, float]  # seed-mean score per variant
    evidence: SeedDifference  # reg - baseline of the score, over seeds
    move_champion: bool  # False: the evidence is not enough to change @champion
    reason: str
    floor: QualityFloor

    @property
    def move_challenger(self) -> bool:
        """@challenger follows @champion, but never onto a model under the quality floor."""
        return self.move_champion and self.floor.variant_passes(self.challenger.variant)

    def as_dict(self) -> dict:
        return {"champion": self.champion.name, "challenger": self.challenger.name,
                "representatives": {v: k.name for v, k in self.representatives.items()},
                "variant_scores": self.variant_scores, "evidence": self.evidence.as_dict(),
                "move_champion": self.move_champion, "move_challenger": self.move_challenger,
                "reason": self.reason, "floor": self.floor.as_dict()}


@dataclass(frozen=True)
class QualityFloor:
    """Clean test ROC-AUC >= `min_clean_auc` (report.min_clean_auc) per model.

    Robustness scores alone reward degenerate models: a constant p(fake) keeps the class
    share as its accuracy and AUC 0.5 under any attack, while a real detector pushed past
    the decision boundary scores below both. A model under the floor can never be
    @champion/@challenger; a variant passes when every seed passes (a recipe that
    sometimes trains a useless model does not ship); `predict` refuses a version the
    report tagged as failing (ops/tracking.py)."""

    min_clean_auc: float
    clean_auc: dict[ModelKey, float]

    def passes(self, key: ModelKey) -> bool:
        value = self.clean_auc.get(key, math.nan)
        return math.isfinite(value) and value >= self.min_clean_auc

    def variant_passes(self, variant: str) -> bool:
        keys = [k for k in self.clean_auc if k.variant == variant]
        return bool(keys) and all(self.passes(k) for k in keys)

    def describe(self, key: ModelKey) -> str:
        """`passed` or `failed: clean AUC 0.500 < 0.75` (the version tag's value)."""
        verdict = "passed" if self.passes(key) else "failed"
        sign = ">=" if self.passes(key) else "<"
        return f"{verdict}: clean AUC {self.clean_auc.get(key, math.nan):.3f} {sign} report.min_clean_auc {self.min_clean_auc:g}"

    def as_dict(self) -> dict:
        return {"min_clean_auc": self.min_clean_auc,
                "models": {k.name: {"clean_auc": v, "passes": self.passes(k)} for k, v in sorted(self.clean_auc.items())}}


CRITERION_ROWS = {"pgd_accuracy": ("pgd", "accuracy"), "pgd_auc": ("pgd", "auc"),
                  "clean_accuracy": (CLEAN, "accuracy"), "clean_auc": (CLEAN, "auc")}


def choose_champion(metrics: SweepMetrics, criterion: str, config: EvalConfig,
                    current_champion: str | None = None,
                    differences: list[SeedDifference] | None = None,
                    min_clean_auc: float = 0.75) -> ChampionDecision:
    """Champion by the seed-mean score: the alias follows only a difference whose
    seed-level interval excludes 0; otherwise the current champion's variant stays (the
    baseline, the simpler model, when there is none). When `differences` holds the
    verdict's row for the criterion (e.g. PGD accuracy), that row is the evidence, so the
    report shows one interval for one question. Over all of it stands the QualityFloor: a
    variant under it never wins, and when both are under it no alias moves."""
    keys = metrics.models
    seeds = sorted({k.seed for k in keys if ModelKey("baseline", k.seed) in keys and ModelKey("reg", k.seed) in keys})
    scores = {key: robustness_score(metrics, key, criterion) for key in keys}
    floor = QualityFloor(min_clean_auc, {key: float(metrics.get(key, CLEAN, 0.0).auc)
                                         for key in keys if key.seed in seeds})
    variant_scores, representatives = {}, {}
    for variant in ("baseline", "reg"):
        members = [ModelKey(variant, s) for s in seeds]
        mean = float(np.mean([scores[k] for k in members]))
        variant_scores[variant] = mean
        representatives[variant] = min(members, key=lambda k: (abs(scores[k] - mean), k.seed))
    per_seed = [scores[ModelKey("reg", s)] - scores[ModelKey("baseline", s)] for s in seeds]
    evidence = _paired(seeds, per_seed, [], "select_by", "score", config)
    row = CRITERION_ROWS.get(criterion)
    matching = [d for d in differences or [] if (d.attack, d.metric) == row and d.seeds == seeds
                and np.allclose(d.per_seed, per_seed)]
    if matching:
        evidence = matching[0]
    if evidence.excludes_zero:
        winner = evidence.favours
        reason = (f"{winner} is better by {criterion} over {len(seeds)} seeds "
                  f"(reg - baseline {evidence.mean:+.3f}, {config.ci:.0%} CI [{evidence.ci_low:+.3f}, {evidence.ci_high:+.3f}])")
        move = True
    else:
        winner = current_champion if current_champion in ("baseline", "reg") else "baseline"
        reason = (f"no detectable difference by {criterion} at {len(seeds)} seeds "
                  f"(reg - baseline {evidence.mean:+.3f}, {config.ci:.0%} CI [{evidence.ci_low:+.3f}, {evidence.ci_high:+.3f}]): "
                  + ("@champion stays where it is" if current_champion else "the baseline becomes the first champion"))
        move = current_champion is None
    if not floor.variant_passes(winner):
        other = "reg" if winner == "baseline" else "baseline"
        failing = ", ".join(f"{k.name} {floor.clean_auc[k]:.3f}" for k in sorted(floor.clean_auc)
                            if k.variant == winner and not floor.passes(k))
        if floor.variant_passes(other):
            reason += (f"; but {winner} is under the quality floor (clean AUC {failing} < report.min_clean_auc "
                       f"{min_clean_auc:g}), so {other} becomes champion")
            winner, move = other, True
        else:
            reason += (f"; but no variant passes the quality floor (clean AUC >= report.min_clean_auc {min_clean_auc:g}): "
                       "@champion and @challenger stay where they are")
            move = False
    loser = "reg" if winner == "baseline" else "baseline"
    return ChampionDecision(representatives[winner], representatives[loser], representatives, variant_scores,
                            evidence, move, reason, floor)
