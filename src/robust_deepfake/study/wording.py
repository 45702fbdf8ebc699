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
from robust_deepfake.study.aggregate import StudyAggregate
from robust_deepfake.study.comparisons import PairedDifference
from robust_deepfake.study.points import HOLDOUT_KEY, shown
from robust_deepfake.study.spec import StudySpec

def fmt(value: float, signed: bool = False) -> str:
    """Three decimals (signed for differences); `n/a` where undefined (None, NaN, inf)."""
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def estimate(row: dict[str, Any] | None, seeds: int) -> str:
    """`0.812 [0.700, 0.924]`; the seed count when it differs from the row's."""
    if row is None or row["n"] == 0:
        return "n/a"
    text = fmt(row["mean"]) + (f" [{fmt(row['ci_low'])}, {fmt(row['ci_high'])}]" if row["n"] > 1 else "")
    return text + (f" (n={row['n']})" if row["n"] != seeds else "")


def interval(c: PairedDifference) -> str:
    """A comparison's interval as `[-0.012, +0.034]`; `undefined` below 2 seeds."""
    return "undefined" if math.isnan(c.ci_low) else f"[{fmt(c.ci_low, True)}, {fmt(c.ci_high, True)}]"


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
    return (f"{_where(c, spec, with_group)}: {c.sides[0]} − {c.sides[1]} in {c.metric} = {fmt(c.mean, True)}, "
            f"{c.level:.0%} CI {interval(c)} over {c.n_seeds} seed(s): {c.wording()}")


def answer(comparisons: Sequence[PairedDifference], first: str, second: str) -> str:
    """One sentence over a question's comparisons: where each side is favoured, where not."""
    if not comparisons:
        return "Nothing to compare in this study."
    undecided = [c for c in comparisons if math.isnan(c.ci_low)]
    if len(undecided) == len(comparisons):
        seeds = max(c.n_seeds for c in comparisons)
        return (f"No claim: with {seeds} seed(s) per point the interval over seeds is undefined "
                "(at least 2 seeds are needed).")
    n = len(comparisons)
    counts = {side: sum(c.favours == side for c in comparisons) for side in (first, second)}
    neither = n - len(undecided) - sum(counts.values())
    text = (f"Favours {first} at {counts[first]} of {n} point(s), favours {second} at {counts[second]}, "
            f"no detectable difference at {neither}")
    return text + (f", no claim at {len(undecided)} (fewer than 2 seeds)." if undecided else ".")
