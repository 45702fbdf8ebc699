"""The champion: THE robustness score and the choice of @champion / @challenger.

`curve_score` is the one definition of robustness: the mean of a criterion's attack
curves over eps > 0. The report's champion (`robustness_score`, `choose_champion`) and the
scheduled re-evaluation (`score_plan`, `watched_score`, `score_drift` on MLflow curves keyed
by eps steps) all score through it, so the score that chose @champion is the one watched.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from robust_deepfake import units
from robust_deepfake.config import EvalConfig
from robust_deepfake.errors import StageError
from robust_deepfake.metrics import higher_is_better
from robust_deepfake.paths import CANDIDATE_VARIANTS, VARIANTS, ModelKey
from robust_deepfake.robustness.sweep import ENSEMBLE, SweepMetrics
from robust_deepfake.units import CLEAN
from robust_deepfake.verdict.claims import MIN_EFFECT
from robust_deepfake.verdict.seeds import COMPARISONS, SeedDifference, paired_seeds, seed_difference

Curves = Mapping[str, Mapping[Any, float]]  # attack -> eps (or eps step) -> metric value


CRITERION_METRICS = {"accuracy": "accuracy", "auc": "auc", "evasion": "evasion_rate"}  # <attack>_<short>
CRITERION_ATTACKS = ("pgd", ENSEMBLE)


def criterion_plan(criterion: str, attacks: Sequence[str]) -> tuple[list[str], str]:
    """The attacks and metric an attacked `report.select_by` criterion averages over eps > 0:
    <attack>_<accuracy|auc|evasion> for attack pgd or ensemble (evasion: the evasion rate,
    scored as 1 - evasion, see `oriented`); mean_attack_accuracy: every attack's accuracy.
    ValueError for clean_* (no attack), an unknown criterion, or an attack the sweep lacks."""
    attacks = [a for a in attacks if a != CLEAN]
    attack, _, short = criterion.partition("_")
    if attack in CRITERION_ATTACKS and short in CRITERION_METRICS:
        if attack not in attacks:
            raise ValueError(f"report.select_by: {attack}_* needs {attack} in the sweep's attacks"
                             + (" (attack.ensemble.enabled)" if attack == ENSEMBLE else " (attack.attacks)"))
        return [attack], CRITERION_METRICS[short]
    if criterion == "mean_attack_accuracy":
        if not attacks:
            raise ValueError("report.select_by: mean_attack_accuracy needs at least one attack")
        return attacks, "accuracy"
    raise ValueError(f"report.select_by: {criterion!r} is not an attacked criterion "
                     f"({', '.join(f'{a}_{m}' for a in CRITERION_ATTACKS for m in CRITERION_METRICS)}, "
                     "mean_attack_accuracy)")


def oriented(curves: Curves, metric: str) -> dict[str, dict[Any, float]]:
    """`curves` with higher = more robust: the metric's values, or 1 - value for a rate where
    lower is better (metrics.higher_is_better: the evasion rate), so every score, drift and
    champion comparison reads one way."""
    flip = not higher_is_better(metric)
    return {attack: {key: (1 - value if flip else value) for key, value in values.items()}
            for attack, values in curves.items()}


def unoriented(score: float, metric: str) -> float:
    """The raw value of `metric` whose oriented score (see `oriented`) is `score`: `score`
    itself, or 1 - score for a rate where lower is better."""
    return score if higher_is_better(metric) else 1 - score


def score_name(metric: str) -> str:
    """How the oriented score of `metric` is named: `accuracy`, or `1-evasion_rate`."""
    return metric if higher_is_better(metric) else f"1-{metric}"


def curve_score(curves: Curves, attacks: Sequence[str],
                eps: Collection | None = None) -> float:
    """THE robustness score: the mean of `attacks`' curves (attack -> eps -> value, eps as a
    float or an MLflow step: only its sign and membership matter) over eps > 0, restricted
    to `eps` when given. Non-finite values (never logged to MLflow) do not count; NaN when
    nothing is left. `robustness_score` (the champion) and `watched_score` / `score_drift`
    (the scheduled re-evaluation) all score through this function, on `oriented` curves."""
    values = [
        float(value)
        for attack in attacks
        for key, value in curves.get(attack, {}).items()
        if key > 0 and (eps is None or key in eps) and math.isfinite(value)
    ]
    return float(np.mean(values)) if values else math.nan


def robustness_score(metrics: SweepMetrics, key: ModelKey, criterion: str) -> float:
    """One model's score under `report.select_by` (higher is better), from the sweep.

    <attack>_<metric>: mean over eps > 0 of that attack's metric (1 - the evasion rate for
    *_evasion); mean_attack_accuracy: over
    every attack and eps > 0 (criterion_plan, curve_score); clean_*: the unattacked row.
    The scheduled re-evaluation watches the same score (score_plan, watched_score)."""
    if criterion.startswith("clean_"):
        return float(getattr(metrics.get(key, CLEAN, 0.0), criterion.removeprefix("clean_")))
    attacks, metric = criterion_plan(criterion, metrics.attacks)
    if not metrics.attacked_eps:
        raise ValueError("report.select_by: the sweep has no eps > 0")
    curves = {attack: {eps: getattr(metrics.get(key, attack, eps), metric) for eps in metrics.attacked_eps}
              for attack in attacks}
    return curve_score(oriented(curves, metric), attacks)


def sweep_curves(metrics: SweepMetrics, key: ModelKey, attacks: Iterable[str], metric: str) -> dict[str, dict[int, float]]:
    """attack -> eps step -> `metric` of one model, for eps > 0 (the shape of the MLflow
    curves: the step is eps in grey levels, units.to_step)."""
    return {attack: {units.to_step(e.eps): float(getattr(e, metric)) for e in metrics.entries
                     if e.model == key and e.attack == attack and e.eps > 0}
            for attack in attacks}


class NothingToScore(StageError, ValueError):
    """No attack to score: attack.attacks is empty."""


def score_plan(select_by: str, attacks: Iterable[str]) -> tuple[list[str], str]:
    """The attacks and metric a re-evaluation watches: `report.select_by`'s (criterion_plan),
    so the score that chose @champion is the one watched. A criterion it cannot score
    (clean_*, or pgd_* without PGD in `attacks`) falls back to PGD accuracy, else the mean
    accuracy over every attack. NothingToScore when `attacks` holds no attack."""
    attacks = sorted({a for a in attacks if a != CLEAN})
    for criterion in (select_by, "pgd_accuracy", "mean_attack_accuracy"):
        try:
            return criterion_plan(criterion, attacks)
        except ValueError:
            continue
    raise NothingToScore("attack.attacks is empty in params.yaml: there is nothing to re-evaluate")


def watched_score(curves: Curves, select_by: str = "pgd_accuracy", eps: Collection | None = None) -> tuple[float, str]:
    """The score of `curves` (of score_plan's metric, as logged) and the attacks it averages,
    joined by `+`: curve_score of the oriented curves over eps > 0, restricted to `eps` when given."""
    attacks, metric = score_plan(select_by, curves)
    return curve_score(oriented(curves, metric), attacks, eps), "+".join(attacks)


@dataclass
class Drift:
    """One evaluation's score (oriented: higher is more robust) against the previous one's,
    on the attacks and eps both have."""

    current: float
    previous: float | None = None
    attacks: str = ""
    metric: str = "accuracy"
    eps_steps: list[int] = field(default_factory=list)
    note: str = ""

    @property
    def drop(self) -> float | None:
        """previous - current (positive: less robust now); None without a previous score."""
        return None if self.previous is None else self.previous - self.current


def score_drift(current: Curves, previous: Curves | None, select_by: str = "pgd_accuracy") -> Drift:
    """Score both curves (attack -> eps step -> metric value, as logged) the same way, oriented,
    on the attacks of score_plan that both have and the eps > 0 all of those share; with
    nothing in common (or no previous evaluation) only the current score, over its whole grid."""
    attacks, metric = score_plan(select_by, current)
    current, previous = oriented(current, metric), oriented(previous, metric) if previous else previous
    name = score_name(metric)
    whole = Drift(curve_score(current, attacks), attacks="+".join(attacks), metric=name)
    if not previous:
        whole.note = "no previous evaluation"
        return whole
    common = [attack for attack in attacks if attack in previous]
    shared: set = set()
    for position, attack in enumerate(common):
        steps = {k for k in current[attack] if k > 0} & {k for k in previous[attack] if k > 0}
        shared = steps if position == 0 else shared & steps
    if not shared:
        whole.note = "no attack and eps in common with the previous evaluation"
        return whole
    return Drift(curve_score(current, common, shared), curve_score(previous, common, shared),
                 "+".join(common), name, sorted(shared))


EVIDENCE = next(p for p in COMPARISONS if (p.first, p.second) == ("reg", "baseline"))


@dataclass(frozen=True)
class ChampionDecision:
    """Which registered model becomes @champion, and why."""

    champion: ModelKey  # the winning variant's seed closest to its variant's mean score
    challenger: ModelKey
    representatives: dict[str, ModelKey]  # per variant: the seed closest to its mean
    variant_scores: dict[str, float]  # seed-mean score per variant
    evidence: SeedDifference  # reg - baseline of the score, over seeds: its claim decides
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
    report tagged as failing (tracking/registry.py)."""

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


def _evidence(metrics: SweepMetrics, criterion: str, seeds: list[int], per_seed: list[float],
              differences: Sequence[SeedDifference], config: EvalConfig, min_effect: float) -> SeedDifference:
    """reg - baseline of the criterion over `seeds`: the verdict's own row when it scores the
    same thing (so the report shows one interval for one question); otherwise a claim on
    the per-seed scores whose se_s is the mean of the se_s of the verdict rows the score
    averages (the SD of a mean is at most the mean of the SDs: a floor that is never too
    narrow), or none (no floor: claims.PLAIN_MIN_SEEDS applies)."""
    rows = [d for d in differences if d.pair.key == EVIDENCE.key and d.seeds == seeds]
    row = CRITERION_ROWS.get(criterion)
    for d in rows:
        if (d.attack, d.metric) == row and np.allclose(d.per_seed, per_seed, equal_nan=True):
            return d
    ses = [math.nan] * len(seeds)
    if not criterion.startswith("clean_"):
        attacks, metric = criterion_plan(criterion, metrics.attacks)
        parts = [d for d in rows if d.attack in attacks and d.metric == metric]
        if len(parts) == len(attacks):
            ses = list(np.mean([d.per_seed_se for d in parts], axis=0))
    return seed_difference(EVIDENCE, "select_by", "score", seeds, per_seed, ses, config.ci, min_effect)


def choose_champion(metrics: SweepMetrics, criterion: str, config: EvalConfig,
                    current_champion: str | None = None,
                    differences: Sequence[SeedDifference] = (),
                    min_clean_auc: float = 0.75, min_effect: float = MIN_EFFECT) -> ChampionDecision:
    """Champion among CANDIDATE_VARIANTS (baseline, reg) by the seed-mean score: the alias
    follows only a claim (claims.assess) on reg - baseline of the criterion; otherwise the
    current champion's variant stays (the baseline, the simpler model, when there is none;
    a champion that points at a control is replaced). The evidence is the verdict's row
    for the criterion when `differences` holds it (e.g. PGD accuracy). Over all of it
    stands the QualityFloor: a variant under it never wins, and when both are under it no
    alias moves. A control (the placebo), when trained at every paired seed, gets a score
    and a representative seed (its @placebo alias), never @champion or @challenger."""
    seeds = paired_seeds(metrics.models, EVIDENCE)
    if not seeds:
        raise ValueError("no seed has both a baseline and a reg model: nothing to choose a champion from")
    present = [v for v in VARIANTS
               if v in CANDIDATE_VARIANTS or all(ModelKey(v, s) in metrics.models for s in seeds)]
    scores = {key: robustness_score(metrics, key, criterion) for key in metrics.models
              if key.seed in seeds and key.variant in present}
    floor = QualityFloor(min_clean_auc, {key: float(metrics.get(key, CLEAN, 0.0).auc)
                                         for key in metrics.models if key.seed in seeds})
    variant_scores, representatives = {}, {}
    for variant in present:
        members = [ModelKey(variant, s) for s in seeds]
        mean = float(np.mean([scores[k] for k in members]))
        variant_scores[variant] = mean
        representatives[variant] = min(members, key=lambda k: (abs(scores[k] - mean), k.seed))
    per_seed = [scores[ModelKey("reg", s)] - scores[ModelKey("baseline", s)] for s in seeds]
    evidence = _evidence(metrics, criterion, seeds, per_seed, differences, config, min_effect)
    shown = (f"reg - baseline {evidence.mean:+.3f}, {config.ci:.0%} CI [{evidence.ci_low:+.3f}, "
             f"{evidence.ci_high:+.3f}] over {evidence.n_seeds} seeds")
    if evidence.claimed:
        winner = evidence.favours
        reason = f"{winner} is better by {criterion} ({shown})"
        move = True
    else:
        kept = current_champion if current_champion in CANDIDATE_VARIANTS else None  # a control never stays
        winner = kept or "baseline"
        reason = (f"no claim by {criterion} ({shown}: {evidence.reading()}): "
                  + ("@champion stays where it is" if kept else
                     f"@champion points at a control ({current_champion}): the baseline replaces it" if current_champion
                     else "the baseline becomes the first champion"))
        move = kept is None
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
