"""How the study report writes numbers, labels and comparisons as text.

Shared by the figures (titles) and the document's sections, so a metric, the reference eps
or a comparison reads the same everywhere. Every claim names its interval over seeds, and
a side is said to be favoured only where that interval excludes 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from robust_deepfake.report.names import metric_name
from robust_deepfake.study.report.aggregate import StudyAggregate
from robust_deepfake.study.report.comparisons import PairedDifference
from robust_deepfake.study.report.points import HOLDOUT_KEY, shown
from robust_deepfake.study.spec import StudySpec

def fmt(value: float, signed: bool = False) -> str:
    """Three decimals (signed for differences); `n/a` where undefined (None, NaN, inf)."""
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:+.3f}" if signed else f"{value:.3f}"


METRIC_RANGE = (0.0, 1.0)  # every study metric (accuracy, ROC-AUC, F1, IINC) lies in [0, 1]
CLIP_NOTE = ("* clipped to the metric's range: a t-interval over few seeds can reach past it; study.json keeps "
             "each interval as computed.")


def _bounds(low: float, high: float, lowest: float, highest: float, signed: bool) -> str:
    """`[low, high]` within [lowest, highest], marked `*` where that clipped it."""
    clipped = low < lowest or high > highest
    low, high = max(low, lowest), min(high, highest)
    return f"[{fmt(low, signed)}, {fmt(high, signed)}]" + ("*" if clipped else "")


def estimate(row: dict[str, Any] | None, seeds: int) -> str:
    """`0.812 [0.700, 0.924]` (the interval within [0, 1]); the seed count when it differs from the row's."""
    if row is None or row["n"] == 0:
        return "n/a"
    text = fmt(row["mean"])
    if row["n"] > 1 and math.isfinite(row["ci_low"]):
        text += " " + _bounds(row["ci_low"], row["ci_high"], *METRIC_RANGE, signed=False)
    return text + (f" (n={row['n']})" if row["n"] != seeds else "")


def interval(c: PairedDifference) -> str:
    """A comparison's interval as `[-0.012, +0.034]` within [-1, 1]; `undefined` below 2 seeds."""
    if not math.isfinite(c.ci_low):
        return "undefined"
    span = METRIC_RANGE[1] - METRIC_RANGE[0]
    return _bounds(c.ci_low, c.ci_high, -span, span, signed=True)


def seeds_for(c: PairedDifference) -> str:
    """The seeds report.min_effect would need with 80% power at this comparison's spread."""
    if not c.claim.spread > 0:
        return "n/a"
    needed = c.claim.seeds_for_min_effect
    return str(needed) if needed is not None else f"> {c.claim.max_seeds}"


def seconds(value: float) -> str:
    """Device-seconds to 0.1 s; `n/a` where undefined."""
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.1f}"


def ref_eps(agg: StudyAggregate) -> str:
    """`eps 1/255` when every cell attacked at one reference eps; else a phrase that names none."""
    refs = sorted({r.get("ref_eps_255") for p in agg.points for r in p.cells.values()
                   if r.get("ref_eps_255") is not None})
    return f"eps {shown(refs[0])}/255" if len(refs) == 1 else "the reference eps"


def metric_title(metric: str, ref: str) -> str:
    """`accuracy under PGD (eps 1/255)`, `clean ROC-AUC`, `IINC stability (lower is better)`."""
    if metric == "iinc_stab":
        return "IINC stability (clean vs attacked CAM; lower is better)"
    kind, _, where = metric.partition("_")
    name = metric_name(kind)
    return f"clean {name}" if where == "clean" else f"{name} under {where.upper()} ({ref})"


def beside_holdout(group: str) -> str:
    """A group label without its held-out setting (the method is named on its own)."""
    return " ".join(t for t in group.split(" ") if not t.startswith(f"{HOLDOUT_KEY}="))


def _where(c: PairedDifference, spec: StudySpec, with_group: bool) -> str:
    parts = []
    if c.subset != "test":
        parts.append(f"held-out {c.subset}")
        if with_group and beside_holdout(c.group):
            parts.append(beside_holdout(c.group))
    elif with_group and c.group:
        parts.append(c.group)
    if spec.lines:
        parts.append(f"{spec.lines}={shown(c.line)}")
    parts.append(f"{spec.dose}={shown(c.dose)}")
    return ", ".join(parts)


def claim(c: PairedDifference, spec: StudySpec, with_group: bool) -> str:
    """One bullet: where, which difference, its interval over seeds and what it says."""
    text = (f"{_where(c, spec, with_group)}: {c.sides[0]} − {c.sides[1]} in {c.metric} = {fmt(c.mean, True)}, "
            f"{c.level:.0%} CI {interval(c)} over {c.n_seeds} seed(s): {c.reading()}")
    return text + (f" ({len(c.under_floor)} model(s) under the floor)" if c.under_floor else "")


def answer(comparisons: Sequence[PairedDifference], floor: float) -> str:
    """One sentence over a question's comparisons: where a side is favoured, and why the
    others claim nothing."""
    if not comparisons:
        return "Nothing to compare in this study."
    if all(c.under_floor for c in comparisons):
        return (f"Cannot answer: at every point a compared model is under the quality floor (clean ROC-AUC < "
                f"{floor:g}, `report.min_clean_auc`); the table above names the cells.")
    first, second = comparisons[0].sides
    n = len(comparisons)
    counts = {side: sum(c.favours == side for c in comparisons) for side in (first, second)}
    text = f"Favours {first} at {counts[first]} of {n} point(s), favours {second} at {counts[second]}"
    others: dict[str, int] = {}
    for c in comparisons:
        if not c.claimed:
            others[c.reading()] = others.get(c.reading(), 0) + 1
    return text + "".join(f", {reading} at {count}" for reading, count in others.items()) + "."
