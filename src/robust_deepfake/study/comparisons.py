"""Paired comparisons: sides[0] − sides[1] in one metric at one grid point, paired by seed.

Cells of one seed share initial weights and data order, so a difference is taken inside a
seed and the interval is a Student-t interval over those per-seed differences: reg −
baseline inside the same cells, or reg at a strength − reg at the epsilon = 0 placebo of
the same seed and otherwise identical setting (does the regularizer beat the loss
reweighting alone?).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from robust_deepfake.verdict.seeds import SeedInterval, detectable_effect, t_interval
from robust_deepfake.study.points import (
    TEST,
    Getter,
    Point,
    attacks_of,
    grid_points,
    heldout_getter,
    is_placebo,
    test_value,
)
from robust_deepfake.study.spec import PLACEBO_KEY, StudySpec


def lower_is_better(metric: str) -> bool:
    """IINC is a distance between two maps (0 = identical): smaller is steadier."""
    return metric.startswith("iinc")


@dataclass(frozen=True)
class PairedDifference(SeedInterval):
    """sides[0] − sides[1] in one metric at one grid point, paired by seed. The wording
    follows verdict.SeedDifference: a side is favoured only when the interval excludes 0."""

    question: str  # reg_vs_baseline | reg_vs_placebo | heldout_reg_vs_baseline
    metric: str
    group: str
    line: Any
    dose: Any
    subset: str  # `test` or the held-out method
    sides: tuple[str, str]
    seeds: list[int]
    per_seed: list[float]
    mean: float
    ci_low: float
    ci_high: float
    level: float
    detectable: float  # the effect these seeds could detect (80% power at their spread)
    placebo: bool = False  # the point is epsilon = 0 itself

    @property
    def favours(self) -> str:
        """The side the seed-level interval favours, or 'neither'."""
        if not self.excludes_zero:
            return "neither"
        return self.sides[0] if (self.mean > 0) != lower_is_better(self.metric) else self.sides[1]

    def wording(self) -> str:
        """The plain reading of this comparison."""
        n = self.n_seeds
        if n == 0:
            return "no seed has both values: no claim"
        if math.isnan(self.ci_low) and n == 1:
            return f"interval undefined with {n} seed (at least 2 are needed): no claim"
        if math.isnan(self.ci_low):
            return (f"every one of {n} seeds gave the same difference ({self.mean:+.3f}): with no spread over seeds "
                    "the interval is undefined: no claim (add seeds)")
        if self.excludes_zero:
            return f"favours {self.favours} ({n} seeds)"
        return self.no_difference_wording()

    def as_dict(self) -> dict[str, Any]:
        return {"question": self.question, "metric": self.metric, "group": self.group, "line": self.line,
                "dose": self.dose, "subset": self.subset, "difference": f"{self.sides[0]} - {self.sides[1]}",
                "lower_is_better": lower_is_better(self.metric), "placebo": self.placebo, "mean": self.mean,
                "ci": [self.ci_low, self.ci_high], "level": self.level, "n_seeds": self.n_seeds,
                "seeds": self.seeds, "per_seed": self.per_seed, "detectable": self.detectable,
                "excludes_zero": self.excludes_zero, "favours": self.favours, "wording": self.wording()}


def paired(question: str, metric: str, point: Point, subset: str, sides: tuple[str, str],
           first: Mapping[int, float], second: Mapping[int, float], level: float) -> PairedDifference:
    """first − second over the seeds where both are finite, with its t-interval."""
    seeds = sorted(s for s in first if s in second and math.isfinite(first[s]) and math.isfinite(second[s]))
    diffs = np.array([first[s] - second[s] for s in seeds], dtype=float)
    mean, low, high = t_interval(diffs, level)
    if diffs.size >= 2 and np.ptp(diffs) == 0 and mean != 0:
        # identical non-zero differences (accuracy moves in steps of 1/n images): a
        # zero-width t-interval is an artefact, not evidence; the spread is unknown
        low = high = math.nan
    return PairedDifference(question, metric, point.group_label, point.line, point.dose, subset, sides, seeds,
                      [float(d) for d in diffs], mean, low, high, level, detectable_effect(diffs, level),
                      is_placebo(point))


def _by_seed(point: Point, variant: str, metric: str, get: Getter = test_value) -> dict[int, float]:
    return {s: get(r, variant, metric) for s, r in point.cells.items()}


def reg_vs_baseline(spec: StudySpec, records: Sequence[Mapping[str, Any]], metric: str | None = None,
                    *, level: float) -> list[PairedDifference]:
    """reg − baseline inside the same cells, at every grid point (the placebo's flagged)."""
    metric = metric or spec.metric
    return [paired("reg_vs_baseline", metric, p, TEST, ("reg", "baseline"), _by_seed(p, "reg", metric),
                   _by_seed(p, "baseline", metric), level) for p in grid_points(spec, records)]


def reg_vs_placebo(spec: StudySpec, records: Sequence[Mapping[str, Any]], metric: str | None = None,
                   *, level: float) -> list[PairedDifference]:
    """reg at each epsilon > 0 − reg at epsilon = 0, same seed and every other setting equal:
    what the perturbation adds over the loss reweighting alone. [] without placebo cells."""
    metric = metric or spec.metric
    points = grid_points(spec, records)
    by_setting = {p.setting: p for p in points}
    out = []
    for point in points:
        if PLACEBO_KEY not in dict(point.setting) or is_placebo(point):
            continue
        partner = by_setting.get(point.replaced(PLACEBO_KEY, 0.0))
        if partner is not None:
            out.append(paired("reg_vs_placebo", metric, point, TEST, ("reg", "placebo"),
                              _by_seed(point, "reg", metric), _by_seed(partner, "reg", metric), level))
    return out


def heldout_differences(spec: StudySpec, records: Sequence[Mapping[str, Any]],
                        metrics: Sequence[str] | None = None, *, level: float) -> list[PairedDifference]:
    """reg − baseline per held-out method and grid point, on held-out AUC (clean and under
    each attack at the reference eps) unless `metrics` says otherwise."""
    attacks = attacks_of(records)
    metrics = list(metrics or ["auc_clean", *(f"auc_{a}" for a in attacks)])
    out = []
    for point in grid_points(spec, records):
        for method in point.held_out:
            get = heldout_getter(method)
            out += [paired("heldout_reg_vs_baseline", m, point, method, ("reg", "baseline"),
                           _by_seed(point, "reg", m, get), _by_seed(point, "baseline", m, get), level)
                    for m in metrics]
    return out
