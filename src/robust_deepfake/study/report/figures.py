"""The study report's figures: a dose-response grid per primary group, one of held-out methods.

Each panel is one metric against the dose: the regularized model per line, the baseline
dashed and the placebo dotted; points are seed means, bars and bands the t-interval over
seeds within [0, 1], so training variance is part of the picture.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from robust_deepfake.report.figures import COLORS, pyplot, save_figure
from robust_deepfake.study.report.aggregate import StudyAggregate
from robust_deepfake.report.blocks import Figure
from robust_deepfake.study.report.points import group_label, shown
from robust_deepfake.study.spec import PLACEBO_KEY, StudySpec
from robust_deepfake.study.report.wording import METRIC_RANGE, beside_holdout, metric_title, ref_eps

LINE_COLORS = ("#d62728", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")


def _x(doses: Sequence[Any]) -> tuple[dict[Any, float], list[str]]:
    """x position per dose: the value itself when numeric, else its rank."""
    numeric = all(isinstance(d, float) for d in doses)
    xs = {d: (d if numeric else float(i)) for i, d in enumerate(doses)}
    return xs, [shown(d) for d in doses]


def _panel(axis, rows: list[dict], metric: str, lines: list[Any], lines_key: str | None,
           xs: dict[Any, float]) -> None:
    """One metric vs the dose: reg per line (error bars and band: the t-interval over
    seeds), the baseline dashed and the placebo dotted with their bands, all within [0, 1]."""
    mine = [r for r in rows if r["metric"] == metric and r["n"] > 0]
    span = (max(xs.values()) - min(xs.values())) or 1.0
    series = [(f"{variant} ({style_name})", None, members, COLORS[variant], style, 0.0)
              for variant, style, style_name in (("baseline", "--", "dashed"), ("placebo", ":", "dotted"))
              if (members := [r for r in mine if r["variant"] == variant])]
    for i, line in enumerate(lines):
        label = f"reg ({lines_key}={shown(line)})" if lines_key else "regularized"
        members = [r for r in mine if r["variant"] == "reg" and r["line"] == line]
        series.append((label, line, members, LINE_COLORS[i % len(LINE_COLORS)], "-",
                       0.015 * span * (i - (len(lines) - 1) / 2)))
    for label, _, members, color, style, dodge in series:
        if not members:
            continue
        x = np.array([xs[r["dose"]] for r in members]) + dodge
        mean, low, high = (np.array([r[k] for r in members], dtype=float) for k in ("mean", "ci_low", "ci_high"))
        low, high = np.clip(low, *METRIC_RANGE), np.clip(high, *METRIC_RANGE)  # every study metric lies in [0, 1]
        axis.plot(x, mean, linestyle=style, marker="o", markersize=4, color=color, label=label)
        axis.fill_between(x, low, high, color=color, alpha=0.12, linewidth=0)
        ok = np.isfinite(low) & np.isfinite(high)
        if ok.any() and style == "-":  # baseline and placebo have their band only: bars would hide reg's
            axis.errorbar(x[ok], mean[ok], yerr=[mean[ok] - low[ok], high[ok] - mean[ok]], fmt="none",
                          ecolor=color, capsize=3, linewidth=1)
    if not mine:
        axis.text(0.5, 0.5, "no finite values", transform=axis.transAxes, ha="center", va="center", color="grey")


def curve_figure(rows: list[dict], panels: Sequence[tuple[str, str]], spec: StudySpec, title: str,
                 path: Path, row_titles: Sequence[str] = ("",)) -> Path:
    """A grid of _panel's: one figure row per `row_titles` entry (rows carry `_row`)."""
    plt = pyplot()
    doses = list(dict.fromkeys(r["dose"] for r in rows))
    xs, ticks = _x(doses)
    lines = list(dict.fromkeys(r["line"] for r in rows if r["variant"] == "reg"))
    ncols = min(4, len(panels)) if len(row_titles) == 1 else len(panels)
    per_row = math.ceil(len(panels) / ncols)
    nrows = per_row * len(row_titles)
    figure, axes = plt.subplots(nrows, ncols, figsize=(3.7 * ncols, 2.9 * nrows + 0.7), squeeze=False)
    for r, row_title in enumerate(row_titles):
        subset = [x for x in rows if x.get("_row", "") == row_title]
        for k, (metric, name) in enumerate(panels):
            axis = axes[r * per_row + k // ncols][k % ncols]
            _panel(axis, subset, metric, lines, spec.lines, xs)
            axis.set_title(f"{row_title}\n{name}" if row_title else name, fontsize=8)
            axis.set_xticks(list(xs.values()), ticks, fontsize=7)
            axis.set_xlabel(spec.dose + (" (0 = placebo)" if spec.dose == PLACEBO_KEY else ""), fontsize=8)
            axis.grid(alpha=0.3)
    for k in range(len(panels), per_row * ncols):  # unused cells of the last row
        for r in range(len(row_titles)):
            axes[r * per_row + k // ncols][k % ncols].set_visible(False)
    for axis in axes.flat:  # the first panel with a line (the headline one may have no finite values)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=6)
            break
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    return save_figure(figure, path)


def _seeds_phrase(rows: list[dict], level: float) -> str:
    counts = sorted({r["n"] for r in rows if r["n"] > 0})
    if not counts:
        return "no finite values"
    n = f"{counts[-1]}" if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
    if counts[-1] < 2:
        return f"seed mean of {n} seed (interval undefined)"
    return f"seed mean, {level:.0%} t-interval over {n} seeds"


def draw_figures(agg: StudyAggregate, folder: Path) -> tuple[dict[tuple, Figure], Figure | None]:
    """The dose-response figure of each primary group, and the held-out figure if any."""
    spec, ref = agg.spec, ref_eps(agg)
    metrics = list(dict.fromkeys([spec.metric, "acc_clean", "auc_clean",
                                  *(f"{k}_{a}" for a in agg.attacks for k in ("acc", "auc")), "iinc_stab"]))
    panels = [(m, metric_title(m, ref)) for m in metrics]
    dose_figures = {}
    for i, group in enumerate(agg.primary):
        label = group_label(group)
        rows = [r for r in agg.dose if r["group"] == label]
        name = "dose_response.png" if len(agg.primary) == 1 else f"dose_response_{i + 1}.png"
        title = (f"{spec.name}: dose-response{f' ({label})' if label else ''}, {_seeds_phrase(rows, agg.level)}; "
                 "dashed: baseline, dotted: placebo")
        path = curve_figure(rows, panels, spec, title, folder / name)
        dose_figures[group] = Figure(path, f"dose-response {label}".strip(), title)
    if not agg.generalization:
        return dose_figures, None
    held = ["auc_clean", "acc_clean", *(f"auc_{a}" for a in agg.attacks)]
    def row_title(row: dict) -> str:
        other = beside_holdout(row["group"])
        return f"held-out {row['subset']}" + (f" ({other})" if other else "")

    rows = [{**r, "_row": row_title(r)} for r in agg.generalization]
    row_titles = list(dict.fromkeys(r["_row"] for r in rows))
    title = (f"{spec.name}: held-out methods (never seen in training), {_seeds_phrase(rows, agg.level)}; "
             "dashed: baseline")
    path = curve_figure(rows, [(m, metric_title(m, ref)) for m in held], spec, title,
                        folder / "generalization.png", row_titles)
    return dose_figures, Figure(path, "held-out methods", title)
