"""A study's cell records -> the numbers its report may claim (pure functions, no I/O).

The unit of evidence is the training seed (docs/architecture.md, "Comparing the variants").
This module holds the curves (dose-response, held-out methods: each variant's seed mean
with a descriptive Student-t interval over seeds) and the cost tables; the grid points are
study/report/points.py's, the paired comparisons and their claims study/report/comparisons.py's, and
`aggregate` computes all of them once for the report.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from robust_deepfake.io import jsonable
from robust_deepfake.study.report.comparisons import (
    PairedDifference,
    StudyRules,
    comparisons,
    heldout_differences,
    variants_of,
)
from robust_deepfake.study.report.points import (
    TEST,
    Getter,
    Point,
    as_float,
    attacks_of,
    grid_points,
    group_label,
    groups_of,
    heldout_getter,
    primary_groups,
    test_value,
)
from robust_deepfake.study.spec import StudySpec
from robust_deepfake.verdict.seeds import t_interval

def dose_metrics(attacks: Sequence[str]) -> list[str]:
    """The dose-response metrics: clean, each attack at the reference eps, IINC stability."""
    return ["acc_clean", "auc_clean", *(f"{k}_{a}" for a in attacks for k in ("acc", "auc")), "iinc_stab"]


def heldout_metric_names(attacks: Sequence[str]) -> list[str]:
    """What a cell reports per held-out method (no IINC: no CAMs are made on those images)."""
    return ["auc_clean", "acc_clean", *(f"{k}_{a}" for a in attacks for k in ("auc", "acc"))]


# --- seed-level summaries ---------------------------------------------------------------


def seed_summary(by_seed: Mapping[int, float], level: float) -> dict[str, Any]:
    """Seed mean and t-interval over the seeds with a finite value (NaN bounds below 2)."""
    finite = {s: float(v) for s, v in sorted(by_seed.items()) if math.isfinite(v)}
    mean, low, high = t_interval(np.array(list(finite.values())), level)
    return {"n": len(finite), "mean": mean, "ci_low": low, "ci_high": high, "seeds": list(finite)}


POOLED = ("baseline", "placebo")  # variants the regularizer's strength does not change


def _curve_rows(members: Sequence[Point], metrics: Sequence[str], get: Getter, subset: str,
                level: float, pooled: Sequence[str]) -> list[dict[str, Any]]:
    """Per dose: reg per line, and each `pooled` variant (baseline, placebo) pooled over
    lines (per seed the mean of its cells: reg params do not touch them, so each seed has
    one such model)."""
    rows = []
    doses = list(dict.fromkeys(p.dose for p in members))
    for dose in doses:
        at = [p for p in members if p.dose == dose]
        head = {"group": at[0].group_label, "group_setting": dict(at[0].group),
                "held_out": any(p.held_out for p in members), "subset": subset, "dose": dose}
        for metric in metrics:
            for point in at:
                values = {s: get(r, "reg", metric) for s, r in point.cells.items()}
                rows.append({**head, "line": point.line, "variant": "reg", "metric": metric,
                             **seed_summary(values, level)})
            for variant in pooled:
                per_seed: dict[int, list[float]] = {}
                for point in at:
                    for seed, record in point.cells.items():
                        per_seed.setdefault(seed, []).append(get(record, variant, metric))
                means = {s: float(np.mean(f)) if (f := [v for v in vs if math.isfinite(v)]) else math.nan
                         for s, vs in per_seed.items()}
                rows.append({**head, "line": None, "variant": variant, "metric": metric,
                             **seed_summary(means, level)})
    return rows


def dose_response(spec: StudySpec, records: Sequence[Mapping[str, Any]], *, level: float,
                  metrics: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Test-set metrics vs the dose, for every group: rows of group, line, dose, variant,
    metric, n, mean, ci_low, ci_high, seeds (baseline rows have line None: pooled)."""
    metrics = list(metrics or dose_metrics(attacks_of(records)))
    pooled = [v for v in POOLED if v in variants_of(records)]
    rows = []
    for members in groups_of(grid_points(spec, records)).values():
        rows += _curve_rows(members, metrics, test_value, TEST, level, pooled)
    return rows


def generalization(spec: StudySpec, records: Sequence[Mapping[str, Any]], *, level: float,
                   metrics: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Per held-out method: its metrics vs the dose, rows as dose_response's (subset = method)."""
    metrics = list(metrics or heldout_metric_names(attacks_of(records)))
    points = grid_points(spec, records)
    rows = []
    for method in dict.fromkeys(m for p in points for m in p.held_out):
        for members in groups_of([p for p in points if method in p.held_out]).values():
            rows += _curve_rows(members, metrics, heldout_getter(method), method, level, ["baseline"])
    return rows


# --- cost -------------------------------------------------------------------------------


def _seconds(record: Mapping[str, Any]) -> float:
    value = as_float(record.get("device_seconds"))
    return value if math.isfinite(value) else 0.0


def cost_table(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per cell: where it ran and the device time it took (reused: taken from an earlier run)."""
    return [{"cell": r.get("cell"), "label": r.get("label"), "seed": r.get("seed"), "worker": r.get("worker"),
             "host": r.get("host"), "device": r.get("device"), "cuda_visible_devices": r.get("cuda_visible_devices"),
             "device_seconds": as_float(r.get("device_seconds")), "reused": bool(r.get("reused"))} for r in records]


def cost_totals(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Device-seconds this study computed vs those it reused from cells finished before."""
    computed = [r for r in records if not r.get("reused")]
    reused = [r for r in records if r.get("reused")]
    return {"cells": len(records), "computed_cells": len(computed), "reused_cells": len(reused),
            "computed_device_seconds": float(sum(map(_seconds, computed))),
            "reused_device_seconds": float(sum(map(_seconds, reused)))}


def workers_table(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """How the cells were spread: one row per (worker, host, device, CUDA_VISIBLE_DEVICES)."""
    rows: dict[tuple, dict[str, Any]] = {}
    for r in records:
        key = (r.get("worker"), r.get("host"), r.get("device"), r.get("cuda_visible_devices"))
        row = rows.setdefault(key, {"worker": key[0], "host": key[1], "device": key[2],
                                    "cuda_visible_devices": key[3], "cells": 0, "computed_cells": 0,
                                    "reused_cells": 0, "computed_device_seconds": 0.0})
        row["cells"] += 1
        row["reused_cells" if r.get("reused") else "computed_cells"] += 1
        row["computed_device_seconds"] += 0.0 if r.get("reused") else _seconds(r)
    return list(rows.values())


# --- everything at once -----------------------------------------------------------------


@dataclass(frozen=True)
class StudyAggregate:
    """Every number the study report shows, computed once."""

    spec: StudySpec
    rules: StudyRules
    attacks: list[str]
    seeds: list[int]
    points: list[Point]
    primary: list[tuple]  # the groups the headline answers read (primary_groups)
    dose: list[dict[str, Any]]
    comparisons: dict[str, list[PairedDifference]]  # per pair key, in question order
    heldout: list[PairedDifference]
    generalization: list[dict[str, Any]]
    cost: list[dict[str, Any]]
    totals: dict[str, Any]
    workers: list[dict[str, Any]]

    @property
    def level(self) -> float:
        return self.rules.level

    def as_json(self) -> dict[str, Any]:
        """study.json: strict JSON (undefined numbers are null); intervals as computed, not clipped."""
        return jsonable({
            "study": self.spec.name, "spec": self.spec.model_dump(mode="json"), "level": self.level,
            "rules": {"min_effect": self.rules.min_effect, "min_clean_auc": self.rules.min_clean_auc,
                      "interval": "Student-t over seeds, spread floored at the seeds' test-sampling SE "
                                  "(verdict/claims.assess)"},
            "attacks": self.attacks, "seeds": self.seeds, "cells": len(self.cost),
            "ref_eps_255": sorted({r.get("ref_eps_255") for p in self.points for r in p.cells.values()
                                   if r.get("ref_eps_255") is not None}),
            "primary_groups": [group_label(g) for g in self.primary],
            "dose_response": self.dose,
            "verdicts": {**{key: [c.as_dict() for c in found] for key, found in self.comparisons.items()},
                         "heldout_reg_baseline": [c.as_dict() for c in self.heldout]},
            "generalization": self.generalization,
            "cost": {"cells": self.cost, "totals": self.totals, "workers": self.workers},
        })


def aggregate(spec: StudySpec, records: Sequence[Mapping[str, Any]], rules: StudyRules) -> StudyAggregate:
    """Every number of the study report, read by `rules` (the base params' eval.ci,
    report.min_effect and report.min_clean_auc)."""
    points = grid_points(spec, records)
    return StudyAggregate(
        spec, rules, attacks_of(records), sorted({int(r["seed"]) for r in records}), points,
        primary_groups(points), dose_response(spec, records, level=rules.level),
        comparisons(spec, records, rules), heldout_differences(spec, records, rules),
        generalization(spec, records, level=rules.level), cost_table(records), cost_totals(records),
        workers_table(records))
