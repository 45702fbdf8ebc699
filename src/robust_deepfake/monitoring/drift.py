"""How a re-evaluation compares with the model's previous evaluation, and how a drop is
worded for people.

"Robustness" is the score that chose @champion: `report.select_by` scored by
verdict.champion (criterion_plan, curve_score), e.g. the mean PGD accuracy over eps > 0.
A criterion a re-evaluation cannot score (clean_*, or pgd_* without PGD in
attack.attacks) falls back to PGD accuracy, else the mean accuracy over every attack
(score_plan). Curves map attack -> eps step (grey levels, units.to_step) -> metric value;
two evaluations are compared on the attacks and eps they share, so a new eps is never
read as a drop; drop = previous - current.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from robust_deepfake.errors import StageError
from robust_deepfake.paths import ModelKey
from robust_deepfake.verdict.champion import criterion_plan, curve_score
from robust_deepfake import units
from robust_deepfake.units import CLEAN

Curves = Mapping[str, Mapping[Any, float]]  # attack -> eps (or eps step) -> metric value


class ReevaluationError(StageError, RuntimeError):
    """A model cannot be re-evaluated (no such alias, no test split); str() says what to do."""


def score_plan(select_by: str, attacks: Iterable[str]) -> tuple[list[str], str]:
    """The attacks and metric a re-evaluation scores: `report.select_by`'s
    (verdict.criterion_plan), so the score that chose @champion is the one watched. A
    criterion it cannot score (clean_*, or pgd_* without PGD in `attacks`) falls back to
    PGD accuracy, else the mean accuracy over every attack."""
    attacks = sorted({a for a in attacks if a != CLEAN})
    for criterion in (select_by, "pgd_accuracy", "mean_attack_accuracy"):
        try:
            return criterion_plan(criterion, attacks)
        except ValueError:
            continue
    raise ReevaluationError("attack.attacks is empty in params.yaml: there is nothing to re-evaluate")


def robustness(curves: Curves, select_by: str = "pgd_accuracy", eps: set | None = None) -> tuple[float, str]:
    """The score of `curves` (of score_plan's metric) and the attacks it averages, joined
    by `+`: verdict.curve_score over eps > 0, restricted to `eps` when given."""
    attacks, _ = score_plan(select_by, curves)
    return curve_score(curves, attacks, eps), "+".join(attacks)


@dataclass
class Drift:
    """This evaluation against the previous one, on the attacks and eps both have."""

    current: float
    previous: float | None = None
    attacks: str = ""
    metric: str = "accuracy"
    eps_steps: list[int] = field(default_factory=list)
    note: str = ""

    @property
    def drop(self) -> float | None:
        return None if self.previous is None else self.previous - self.current


def compare(current: Curves, previous: Curves | None, select_by: str = "pgd_accuracy") -> Drift:
    """Score both curves the same way on the attacks of score_plan that both have and the
    eps > 0 all of those share; with nothing in common (or no previous evaluation) only
    the current score, over its whole grid."""
    attacks, metric = score_plan(select_by, current)
    whole = Drift(curve_score(current, attacks), attacks="+".join(attacks), metric=metric)
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
                 "+".join(common), metric, sorted(shared))


@dataclass
class Outcome:
    """One alias's re-evaluation: what was evaluated, where it was logged, how it compares."""

    alias: str
    registered_model: str
    version: str
    model: ModelKey  # from the version's variant / seed tags
    run_id: str
    robustness: float  # over the whole current grid
    drift: Drift
    previous_run_id: str | None
    clean_accuracy: float
    iinc_stability: float

    def dropped(self, max_drop: float) -> bool:
        drop = self.drift.drop
        return drop is not None and drop > max_drop

    def status(self, max_drop: float) -> str:
        """`no_previous`, `dropped` or `ok` (the run's and the version's tag)."""
        if self.drift.previous is None:
            return "no_previous"
        return "dropped" if self.dropped(max_drop) else "ok"

    def describe(self, max_drop: float) -> str:
        """One readable line: the figures, the verdict and the run to open."""
        run = f"; run {self.run_id}" if self.run_id else ""
        who = f"@{self.alias} ({self.registered_model} v{self.version})"
        d = self.drift
        if d.previous is None:
            return f"{who}: mean {d.attacks} {d.metric} {self.robustness:.3f} ({d.note}){run}"
        verdict = f"dropped by {d.drop:.3f} > reevaluate.max_drop {max_drop}" if self.dropped(max_drop) \
            else f"change {d.current - d.previous:+.3f} (max_drop {max_drop})"
        grid = ", ".join(units.label(units.from_step(step)) for step in d.eps_steps)
        return (f"{who}: mean {d.attacks} {d.metric} over eps [{grid}] now {d.current:.3f}, previous evaluation "
                f"{d.previous:.3f} (run {self.previous_run_id}): {verdict}{run}")

    def as_dict(self) -> dict[str, Any]:
        return {
            "alias": self.alias, "version": self.version, "model": self.model.name, "run_id": self.run_id,
            "robustness": self.robustness, "robustness_by": f"{self.drift.attacks} {self.drift.metric}",
            "previous": self.drift.previous, "drop": self.drift.drop,
            "previous_run_id": self.previous_run_id, "clean_accuracy": self.clean_accuracy,
            "iinc_stability": self.iinc_stability,
        }


@dataclass
class Alert:
    """What a robustness drop tells people: one line per alias that dropped (Outcome.describe,
    which names the registered model, version, alias, attacks, eps as k/255, both figures,
    the drop and reevaluate.max_drop) and a subject naming the model and versions."""

    subject: str
    lines: list[str]

    @property
    def body(self) -> str:
        return "\n".join(self.lines)


def drop_alert(outcomes: Iterable[Outcome], max_drop: float) -> Alert | None:
    """The alert for the outcomes that dropped by more than `max_drop`; None when none did."""
    dropped = [outcome for outcome in outcomes if outcome.dropped(max_drop)]
    if not dropped:
        return None
    versions = ", ".join(f"@{outcome.alias} v{outcome.version}" for outcome in dropped)
    return Alert(f"Robustness drop: {dropped[0].registered_model} {versions}",
                 [f"robustness drop: {outcome.describe(max_drop)}" for outcome in dropped])
