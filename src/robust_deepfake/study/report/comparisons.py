"""Paired comparisons: first − second in one metric at one grid point, paired by seed, read
by the pipeline's rules (verdict/claims.assess).

Cells of one seed share initial weights and data order, so a difference is taken inside a
seed. The pairs are the pipeline's COMPARISONS in question order, inside each cell (the
cell trains every variant); cells without a placebo variant answer reg − placebo across
cells instead: reg at a strength − reg at the epsilon = 0 grid point of the same seed and
otherwise identical setting (no test SE then: the two models were scored in different
cells). Every interval is floored at the seeds' test-sampling SE (recorded per cell) and
no sign is claimed below claims.MIN_SEEDS seeds, nor where a compared model is under the
quality floor (clean test ROC-AUC < report.min_clean_auc): the comparison names those cells.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from robust_deepfake.study.report.points import (
    TEST,
    Getter,
    Point,
    attacks_of,
    grid_points,
    heldout_getter,
    is_placebo,
    pair_se,
    test_value,
)
from robust_deepfake.study.spec import PLACEBO_KEY, StudySpec
from robust_deepfake.verdict.claims import MIN_EFFECT, ClaimFigures, SeedClaim, assess
from robust_deepfake.verdict.seeds import COMPARISONS, Pair, present_pairs

FLOOR_METRIC = "auc_clean"
REG_BASELINE = next(p for p in COMPARISONS if p.key == "reg_baseline")
REG_PLACEBO = next(p for p in COMPARISONS if p.key == "reg_placebo")


@dataclass(frozen=True)
class StudyRules:
    """What a study comparison may claim: the interval's level, the minimum effect of
    interest for the power plan and the quality floor (0 switches it off); the base params'
    eval.ci, report.min_effect and report.min_clean_auc."""

    level: float = 0.95
    min_effect: float = MIN_EFFECT
    min_clean_auc: float = 0.75


def lower_is_better(metric: str) -> bool:
    """IINC is a distance between two maps (0 = identical): smaller is steadier."""
    return metric.startswith("iinc")


@dataclass(frozen=True)
class PairedDifference(ClaimFigures):
    """pair.first − pair.second in one metric at one grid point, over the seeds with both."""

    pair: Pair
    metric: str
    group: str
    line: Any
    dose: Any
    subset: str  # `test` or the held-out method
    seeds: list[int]
    claim: SeedClaim
    under_floor: tuple[WeakModel, ...] = ()  # the compared models under the quality floor
    placebo: bool = False  # the point is epsilon = 0 itself
    across_cells: bool = False  # reg − the epsilon = 0 cell's reg (cells without a placebo variant)

    @property
    def question(self) -> str:
        return self.pair.key if self.subset == TEST else f"heldout_{self.pair.key}"

    @property
    def sides(self) -> tuple[str, str]:
        return self.pair.first, self.pair.second

    @property
    def claimed(self) -> bool:
        """A sign is claimed: by claims.assess, and no compared model is under the floor."""
        return self.claim.claim != 0 and not self.under_floor

    @property
    def favours(self) -> str:
        """The side the claim favours, or 'neither'."""
        if not self.claimed:
            return "neither"
        return self.pair.first if (self.claim.claim > 0) != lower_is_better(self.metric) else self.pair.second

    def reading(self) -> str:
        """A few words: the claim, or why there is none."""
        if self.n_seeds == 0:
            return "no seed has both values: no claim"
        if self.under_floor:
            return "no claim: under the quality floor"
        if self.claimed:
            return f"favours {self.favours}"
        if self.claim.reason in ("below_min_seeds", "below_plain_min_seeds"):
            return f"no claim below {self.claim.min_seeds} seeds" + ("" if self.claim.has_test_se else " (no test SE)")
        if self.claim.reason == "no_noise_estimate":
            return "no claim: no noise estimate"
        return "no detectable difference"

    def as_dict(self) -> dict[str, Any]:
        return {"question": self.question, "comparison": self.pair.key, "metric": self.metric, "group": self.group,
                "line": self.line, "dose": self.dose, "subset": self.subset,
                "difference": f"{self.pair.first} - {self.pair.second}", "lower_is_better": lower_is_better(self.metric),
                "placebo": self.placebo, "across_cells": self.across_cells, "seeds": self.seeds,
                **self.claim.as_dict(), "under_floor": [str(m) for m in self.under_floor], "favours": self.favours,
                "verdict": self.reading()}


Side = Mapping[int, tuple[Mapping[str, Any], str]]  # seed -> (cell record, variant)


@dataclass(frozen=True)
class WeakModel:
    """A compared model under the quality floor: its cell, its variant, its clean test AUC."""

    cell: str  # the cell's label
    variant: str
    clean_auc: float  # NaN where the cell did not report it

    def __str__(self) -> str:
        shown = "n/a" if math.isnan(self.clean_auc) else f"{self.clean_auc:.3f}"
        return f"{self.cell}: {self.variant} clean AUC {shown}"


def _under_floor(records: Sequence[tuple[Mapping[str, Any], str]], rules: StudyRules) -> tuple[WeakModel, ...]:
    """The compared models under the quality floor, in the order compared."""
    if rules.min_clean_auc <= 0:
        return ()
    found = []
    for record, variant in records:
        auc = test_value(record, variant, FLOOR_METRIC)
        if not auc >= rules.min_clean_auc:
            found.append(WeakModel(str(record.get("label", record.get("cell"))), variant, auc))
    return tuple(dict.fromkeys(found))


def compare(pair: Pair, metric: str, point: Point, subset: str, first: Side, second: Side, rules: StudyRules,
            get: Getter = test_value, se: Callable[[Mapping[str, Any]], float] | None = None,
            across_cells: bool = False) -> PairedDifference:
    """first − second over the seeds where both are finite; `se(record)` is a seed's test
    SE of the difference (None: not known, so no floor and claims.PLAIN_MIN_SEEDS)."""
    seeds, diffs, ses, compared = [], [], [], []
    for seed in sorted(s for s in first if s in second):
        (record_a, variant_a), (record_b, variant_b) = first[seed], second[seed]
        d = get(record_a, variant_a, metric) - get(record_b, variant_b, metric)
        if not math.isfinite(d):
            continue
        seeds.append(seed)
        diffs.append(d)
        ses.append(se(record_a) if se else math.nan)
        compared += [(record_a, variant_a), (record_b, variant_b)]
    claim = assess(diffs, ses, rules.level, rules.min_effect)
    return PairedDifference(pair, metric, point.group_label, point.line, point.dose, subset, seeds, claim,
                            _under_floor(compared, rules), is_placebo(point), across_cells)


def _side(point: Point, variant: str) -> dict[int, tuple[Mapping[str, Any], str]]:
    return {s: (r, variant) for s, r in point.cells.items() if variant in (r.get("variants") or {})}


def variants_of(records: Sequence[Mapping[str, Any]]) -> list[str]:
    return list(dict.fromkeys(v for r in records for v in (r.get("variants") or {})))


def within_cells(spec: StudySpec, records: Sequence[Mapping[str, Any]], rules: StudyRules,
                 metric: str | None = None) -> dict[str, list[PairedDifference]]:
    """Per present pair (question order), its comparisons inside the cells. reg − placebo
    skips the epsilon = 0 points (there reg is the placebo); placebo − baseline does not
    depend on the regularizer's strength, so it is read once per group and line (at the
    first point); reg − baseline at epsilon = 0 is flagged `placebo`."""
    metric = metric or spec.metric
    points = grid_points(spec, records)
    out: dict[str, list[PairedDifference]] = {}
    for pair in present_pairs(variants_of(records)):
        seen: set[tuple] = set()
        found = []
        for point in points:
            if pair.key == "reg_placebo" and is_placebo(point):
                continue
            if pair.key == "placebo_baseline":
                if (point.group, point.line) in seen:
                    continue
                seen.add((point.group, point.line))
            first, second = _side(point, pair.first), _side(point, pair.second)
            if first and second:
                found.append(compare(pair, metric, point, TEST, first, second, rules,
                                     se=lambda record: pair_se(record, pair.key, metric)))
        if found:
            out[pair.key] = found
    return out


def reg_vs_placebo_across_cells(spec: StudySpec, records: Sequence[Mapping[str, Any]], rules: StudyRules,
                                metric: str | None = None) -> list[PairedDifference]:
    """reg at each epsilon > 0 − reg at epsilon = 0, same seed and every other setting
    equal: what the perturbation adds, for cells without a placebo variant. [] without
    epsilon = 0 cells."""
    metric = metric or spec.metric
    points = grid_points(spec, records)
    by_setting = {p.setting: p for p in points}
    out = []
    for point in points:
        if PLACEBO_KEY not in dict(point.setting) or is_placebo(point):
            continue
        partner = by_setting.get(point.replaced(PLACEBO_KEY, 0.0))
        if partner is not None:
            out.append(compare(REG_PLACEBO, metric, point, TEST, _side(point, "reg"), _side(partner, "reg"),
                               rules, across_cells=True))
    return out


def comparisons(spec: StudySpec, records: Sequence[Mapping[str, Any]], rules: StudyRules,
                metric: str | None = None) -> dict[str, list[PairedDifference]]:
    """Every question the cells can answer, in question order: inside the cells, and
    reg − placebo across cells where no cell has a placebo variant."""
    found = within_cells(spec, records, rules, metric)
    if "reg_placebo" not in found and (across := reg_vs_placebo_across_cells(spec, records, rules, metric)):
        found["reg_placebo"] = across
    return {p.key: found[p.key] for p in COMPARISONS if p.key in found}


def heldout_differences(spec: StudySpec, records: Sequence[Mapping[str, Any]], rules: StudyRules,
                        metrics: Sequence[str] | None = None) -> list[PairedDifference]:
    """reg − baseline per held-out method and grid point, on held-out AUC (clean and under
    each attack at the reference eps) unless `metrics` says otherwise. The quality floor
    is the cells' test-set one."""
    attacks = attacks_of(records)
    metrics = list(metrics or ["auc_clean", *(f"auc_{a}" for a in attacks)])
    out = []
    for point in grid_points(spec, records):
        for method in point.held_out:
            get = heldout_getter(method)
            for m in metrics:
                out.append(compare(REG_BASELINE, m, point, method, _side(point, "reg"), _side(point, "baseline"),
                                   rules, get, se=lambda record, m=m, method=method:
                                   pair_se(record, REG_BASELINE.key, m, method)))
    return out
