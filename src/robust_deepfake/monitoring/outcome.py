"""What one re-evaluation of an alias found, and how a robustness drop is told to people.

The score and its drift are verdict.champion's (score_plan, curve_score, score_drift): the score
that chose @champion is the one watched, compared with the previous evaluation on the
attacks and eps both have (drop = previous - current).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from robust_deepfake import units
from robust_deepfake.errors import StageError
from robust_deepfake.paths import ModelKey
from robust_deepfake.verdict.champion import Drift


class ReevaluationError(StageError, RuntimeError):
    """A model cannot be re-evaluated (no such alias, no test split); str() says what to do."""


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
    evasion_rate: float = math.nan  # mean over eps > 0 of the scored attacks' evasion rate (lower is better)

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
        evasion = f"; evasion rate {self.evasion_rate:.3f}" if math.isfinite(self.evasion_rate) else ""
        if d.previous is None:
            return f"{who}: mean {d.attacks} {d.metric} {self.robustness:.3f}{evasion} ({d.note}){run}"
        verdict = f"dropped by {d.drop:.3f} > reevaluate.max_drop {max_drop}" if self.dropped(max_drop) \
            else f"change {d.current - d.previous:+.3f} (max_drop {max_drop})"
        grid = ", ".join(units.label(units.from_step(step)) for step in d.eps_steps)
        return (f"{who}: mean {d.attacks} {d.metric} over eps [{grid}] now {d.current:.3f}, previous evaluation "
                f"{d.previous:.3f} (run {self.previous_run_id}): {verdict}{evasion}{run}")

    def as_dict(self) -> dict[str, Any]:
        return {
            "alias": self.alias, "version": self.version, "model": self.model.name, "run_id": self.run_id,
            "robustness": self.robustness, "robustness_by": f"{self.drift.attacks} {self.drift.metric}",
            "previous": self.drift.previous, "drop": self.drift.drop,
            "previous_run_id": self.previous_run_id, "clean_accuracy": self.clean_accuracy,
            "iinc_stability": self.iinc_stability, "evasion_rate": self.evasion_rate,
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
