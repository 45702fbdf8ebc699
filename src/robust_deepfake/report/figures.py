"""The report's figures (matplotlib, Agg), each a function of the stage outputs.

Curves show every training seed as a thin line and the seed mean as a thick one, with a
band from the Student-t interval over seeds: training variance is part of the picture.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from robust_deepfake import units
from robust_deepfake.io import atomic_path
from robust_deepfake.report.names import metric_name
from robust_deepfake.robustness.sweep import SweepPredictions
from robust_deepfake.units import CLEAN
from robust_deepfake.verdict.seeds import HIGHER_IS_BETTER, SeedDifference, t_interval

COLORS = {"baseline": "#1f77b4", "placebo": "#7f7f7f", "reg": "#d62728"}
VARIANT_LABELS = {"baseline": "baseline", "placebo": "placebo", "reg": "regularized"}
METRIC_RANGE = (0.0, 1.0)  # accuracy, ROC-AUC, attack success rate, IINC
FOREST_FAMILIES = (("accuracy", ("accuracy",)), ("macro-F1", ("f1",)), ("ROC-AUC", ("auc",)),
                   ("attack success rate", ("asr",)), ("evasion rate", ("evasion_rate",)), ("IINC", ("iinc_stability", "iinc_localization")))


def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend: every figure is a file, so it runs headless."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure, path: Path) -> Path:
    """Write `figure` to `path` as PNG atomically (no half-written file), then close it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=110, format="png", bbox_inches="tight")
    pyplot().close(figure)
    return path


def _eps_axis(axis, eps_values: list[float]) -> None:
    axis.set_xticks([e * 255 for e in eps_values])
    axis.set_xticklabels([units.label(e).replace("/255", "") for e in eps_values], fontsize=8)
    axis.set_xlabel("eps (grey levels, x/255)")
    axis.grid(alpha=0.3)


def _seed_curves(axis, frame: pd.DataFrame, variant: str, level: float, value: str = "value") -> bool:
    """Thin line per seed, thick seed mean, band = t-interval over seeds at each eps, drawn
    within the metric's range [0, 1] (every curve's metric lies there). True when a band
    was clipped to that range."""
    color = COLORS.get(variant)
    for _, seed_frame in frame.groupby("seed"):
        seed_frame = seed_frame.sort_values("eps")
        axis.plot(seed_frame.eps * 255, seed_frame[value], color=color, alpha=0.35, linewidth=0.8)
    stats = []
    for eps, group in frame.groupby("eps"):
        mean, low, high = t_interval(group[value].to_numpy(), level)
        stats.append((eps, mean, low, high))
    stats.sort()
    x = np.array([s[0] for s in stats]) * 255
    axis.plot(x, [s[1] for s in stats], marker="o", color=color, linewidth=2,
              label=f"{VARIANT_LABELS.get(variant, variant)} (mean of {frame.seed.nunique()} seeds)")
    band = np.array([[s[2], s[3]] for s in stats], dtype=float)
    clipped = bool(np.any(band < METRIC_RANGE[0]) or np.any(band > METRIC_RANGE[1]))
    low, high = np.clip(band, *METRIC_RANGE).T
    axis.fill_between(x, low, high, color=color, alpha=0.15, linewidth=0)
    return clipped


def _clip_note(figure, clipped: bool) -> None:
    """Say under the figure that a band was cut at the metric's range (only when one was)."""
    if clipped:
        figure.text(0.01, -0.08, f"Bands clipped to the metric's range [{METRIC_RANGE[0]:g}, {METRIC_RANGE[1]:g}]: "
                    "the t-interval over few seeds reaches past it.", fontsize=8)


def robustness_curves(sweep: pd.DataFrame, metric: str, level: float, path: Path) -> Path:
    """metric vs eps per attack (eps 0 = clean), both variants, every seed."""
    plt = pyplot()
    overall = sweep[(sweep.source == "all") & (sweep.metric == metric)]
    attacks = [a for a in dict.fromkeys(overall.attack) if a != CLEAN]
    clean = overall[overall.attack == CLEAN]
    figure, axes = plt.subplots(1, len(attacks), figsize=(3.8 * len(attacks), 3.3), sharey=True, squeeze=False)
    clipped = False
    for axis, attack in zip(axes[0], attacks):
        rows = pd.concat([clean, overall[overall.attack == attack]])
        for variant, frame in rows.groupby("variant", sort=False):
            clipped |= _seed_curves(axis, frame, variant, level)
        axis.set_title(attack.upper())
        _eps_axis(axis, sorted(set(rows.eps)))
    axes[0][0].set_ylabel(metric_name(metric))
    axes[0][0].legend(fontsize=7)
    figure.suptitle(f"{metric_name(metric)} under attack: seeds (thin), seed mean (thick), "
                    f"{level:.0%} t-interval over seeds (band)", fontsize=10)
    _clip_note(figure, clipped)
    return save_figure(figure, path)


def iinc_curves(iinc: pd.DataFrame, level: float, path: Path) -> Path:
    """IINC stability and localization vs eps per attack (lower = steadier / better)."""
    plt = pyplot()
    attacks = [a for a in dict.fromkeys(iinc.attack) if a != CLEAN]
    measures = ["stability", "localization"]
    figure, axes = plt.subplots(2, len(attacks), figsize=(3.8 * len(attacks), 5.8), squeeze=False, sharex=True)
    clipped = False
    for row, measure in enumerate(measures):
        for col, attack in enumerate(attacks):
            axis = axes[row][col]
            rows = iinc[(iinc.measure == measure) & (iinc.attack.isin([attack, CLEAN]))]
            for variant, frame in rows.groupby("variant", sort=False):
                clipped |= _seed_curves(axis, frame, variant, level)
            axis.set_title(f"{attack.upper()}: {measure}", fontsize=9)
            _eps_axis(axis, sorted(set(iinc.eps)))
            if row == 0:
                axis.set_xlabel("")
        axes[row][0].set_ylabel("IINC" + (" (clean vs adv CAM)" if measure == "stability" else " (CAM vs GT mask)"),
                                fontsize=8)
    axes[0][0].legend(fontsize=7)
    figure.suptitle("Grad-CAM under attack: IINC (0 = identical maps; lower is better)", fontsize=10)
    _clip_note(figure, clipped)
    return save_figure(figure, path)


OUTLIER_FENCE = 3.0  # a loss above Q3 + 3 IQR of its panel is an outlier epoch


def outlier_ceiling(values: np.ndarray) -> float | None:
    """The y-axis top that keeps one outlier epoch from flattening every other curve: the
    panel's Q3 + OUTLIER_FENCE * IQR (with 5% headroom), or None when no finite value lies
    above it (or the outliers would barely stretch the axis, under 1.5 x that top)."""
    finite = values[np.isfinite(values)]
    if finite.size < 4:
        return None
    q1, q3 = np.percentile(finite, [25, 75])
    fence = q3 + OUTLIER_FENCE * (q3 - q1)
    top = fence + 0.05 * max(fence - finite.min(), abs(fence), 1e-12)
    return top if finite.max() > 1.5 * top and finite.max() > fence else None


def _clip_outliers(axis, history: pd.DataFrame, column: str, title: str) -> str:
    """Cut the panel's y-axis at outlier_ceiling and mark each epoch above it with a ▲ on
    the top edge; returns the panel title, which says so."""
    top = outlier_ceiling(history[column].to_numpy(dtype=float))
    if top is None:
        return title
    above = history[history[column] > top]
    bottom = float(np.nanmin(history[column].to_numpy(dtype=float)))
    axis.set_ylim(bottom - 0.05 * (top - bottom), top)
    for (variant, _), frame in above.groupby(["variant", "seed"], sort=False):
        axis.plot(frame.epoch, [top] * len(frame), linestyle="none", marker="^", markersize=7,
                  color=COLORS.get(variant), clip_on=False, zorder=6)
    return f"{title}\n(y-axis cut at {top:.3g}; epochs above it: {len(above)}, max {above[column].max():.3g}, ▲)"


def training_curves(history: pd.DataFrame, path: Path) -> Path:
    """Per-epoch curves of every model; `history` has variant and seed columns. A loss
    panel with an outlier epoch cuts its y-axis (outlier_ceiling) and says so in its title."""
    from matplotlib.ticker import MaxNLocator

    plt = pyplot()
    panels = [("train_loss", "train loss"), ("val_loss", "val loss"), ("val_auc", "val ROC-AUC"),
              ("train_loss_gap", "|L_perturbed - L_clean| (reg)")]
    figure, axes = plt.subplots(1, len(panels), figsize=(15, 3.2), squeeze=False)
    for axis, (column, title) in zip(axes[0], panels):
        for (variant, seed), frame in history.groupby(["variant", "seed"], sort=False):
            if column in frame and frame[column].notna().any():
                axis.plot(frame.epoch, frame[column], marker="o", markersize=3, color=COLORS.get(variant),
                          alpha=0.8, label=f"{VARIANT_LABELS.get(variant, variant)} seed {seed}")
        if column in history and column.endswith("loss") and history[column].notna().any():
            title = _clip_outliers(axis, history, column, title)
        axis.set_title(title, fontsize=9)
        axis.set_xlabel("epoch")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(alpha=0.3)
    axes[0][0].legend(fontsize=6)
    return save_figure(figure, path)


def per_source(sweep: pd.DataFrame, attack: str, eps: float, path: Path) -> Path:
    """Seed-mean accuracy per source/method (error bars: sd over seeds), clean and under
    `attack` at `eps`; held-out methods marked *."""
    plt = pyplot()
    rows = sweep[(sweep.metric == "accuracy") & (sweep.source != "all")]
    sources = sorted(set(rows.source))
    held = set(rows[rows.heldout.astype(str).str.lower() == "true"].source)
    figure, axes = plt.subplots(1, 2, figsize=(11, 3.4), sharey=True)
    variants = list(dict.fromkeys(rows.variant))
    width = 0.8 / len(variants)
    offsets = [(i - (len(variants) - 1) / 2) * width for i in range(len(variants))]
    for axis, (title, name, at_eps) in zip(axes, [("clean", CLEAN, 0.0),
                                                  (f"{attack.upper()} eps={units.label(eps)}", attack, eps)]):
        for offset, variant in zip(offsets, variants):
            frame = rows[(rows.variant == variant) & (rows.attack == name) & np.isclose(rows.eps, at_eps)]
            stats = frame.groupby("source").value.agg(["mean", "std"]).reindex(sources)
            x = np.arange(len(sources)) + offset
            axis.bar(x, stats["mean"], width, color=COLORS.get(variant), label=VARIANT_LABELS.get(variant, variant),
                     yerr=np.nan_to_num(stats["std"].to_numpy()), capsize=2, error_kw={"linewidth": 0.8})
        axis.set_xticks(np.arange(len(sources)))
        axis.set_xticklabels([f"{s}*" if s in held else s for s in sources], rotation=30, ha="right", fontsize=8)
        axis.set_title(title, fontsize=9)
        axis.set_ylim(0, 1.05)
        axis.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("accuracy (mean over seeds, ±sd)")
    axes[0].legend(fontsize=8)
    if held:
        figure.text(0.01, -0.02, "* held-out method: never seen in training", fontsize=8)
    return save_figure(figure, path)


def _eps_index(predictions: SweepPredictions, eps: float) -> int:
    return int(np.argmin(np.abs(np.array(predictions.eps) - eps)))


def roc_curves(predictions: SweepPredictions, attack: str, eps: float, path: Path) -> Path:
    """ROC of every model (one line per seed), clean and under `attack` at `eps`."""
    from sklearn.metrics import roc_curve

    plt = pyplot()
    a, e = predictions.attacks.index(attack), _eps_index(predictions, eps)
    figure, axes = plt.subplots(1, 2, figsize=(8, 3.6), sharey=True)
    for axis, (title, index) in zip(axes, [("clean", 0), (f"{attack.upper()} eps={units.label(predictions.eps[e])}", e)]):
        labelled = set()
        for m, key in enumerate(predictions.models):
            fpr, tpr, _ = roc_curve(predictions.labels, predictions.p_fake[m, a, index])
            label = None if key.variant in labelled else VARIANT_LABELS.get(key.variant, key.variant)
            labelled.add(key.variant)
            axis.plot(fpr, tpr, color=COLORS.get(key.variant), alpha=0.7, linewidth=1, label=label)
        axis.plot([0, 1], [0, 1], color="grey", linewidth=0.8, linestyle="--")
        axis.set_title(title, fontsize=9)
        axis.set_xlabel("false positive rate")
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("true positive rate")
    axes[0].legend(fontsize=8)
    return save_figure(figure, path)


def confusion_matrices(predictions: SweepPredictions, attack: str, eps: float, path: Path) -> Path:
    """Confusion counts per variant summed over its seeds, clean and under attack."""
    from sklearn.metrics import confusion_matrix

    plt = pyplot()
    a, e = predictions.attacks.index(attack), _eps_index(predictions, eps)
    panels = [(variant, idx) for variant in predictions.variants for idx in (0, e)]
    figure, axes = plt.subplots(1, len(panels), figsize=(3.0 * len(panels), 3.0), squeeze=False)
    for axis, (variant, idx) in zip(axes[0], panels):
        members = [m for m, key in enumerate(predictions.models) if key.variant == variant]
        matrix = sum(confusion_matrix(predictions.labels, (predictions.p_fake[m, a, idx] >= 0.5).astype(int),
                                      labels=[0, 1]) for m in members)
        axis.imshow(matrix, cmap="Blues", vmin=0, vmax=max(int(matrix.max()), 1))
        for (i, j), count in np.ndenumerate(matrix):  # dark text on light cells, white on dark
            axis.text(j, i, str(count), ha="center", va="center",
                      color="white" if count > 0.6 * matrix.max() else "black")
        axis.set_xticks([0, 1], ["real", "fake"])
        axis.set_yticks([0, 1], ["real", "fake"])
        axis.set_xlabel("predicted")
        when = "clean" if idx == 0 else f"{attack.upper()} {units.label(predictions.eps[idx])}"
        axis.set_title(f"{VARIANT_LABELS.get(variant, variant)}, {when}\n(summed over {len(members)} seeds)", fontsize=8)
    axes[0][0].set_ylabel("true")
    return save_figure(figure, path)


def _forest_label(d: SeedDifference) -> str:
    if d.metric.startswith("iinc_"):
        return f"{d.attack.upper()} {d.metric.removeprefix('iinc_')}"
    return d.attack.upper() if d.attack != CLEAN else "clean"


def forest_plot(differences: list[SeedDifference], path: Path) -> Path:
    """Every seed-level difference: one column per comparison (in question order), one row
    per metric family; per row of a panel the seeds' d_s (dots), the seed mean (marker) and
    its interval over seeds (line), filled where a sign is claimed, and the zero line."""
    plt = pyplot()
    pairs = list(dict.fromkeys(d.pair for d in differences))
    families = [(name, metrics) for name, metrics in FOREST_FAMILIES
                if any(d.metric in metrics for d in differences)]
    heights = [max(1, len({_forest_label(d) for d in differences if d.metric in metrics}))
               for _, metrics in families]
    figure, axes = plt.subplots(len(families), len(pairs), squeeze=False, sharey="row", sharex="row",
                                figsize=(3.6 * len(pairs) + 1.2, 0.42 * sum(heights) + 0.9 * len(families) + 0.6),
                                gridspec_kw={"height_ratios": [h + 1.2 for h in heights]})
    for r, (family, metrics) in enumerate(families):
        labels = list(dict.fromkeys(_forest_label(d) for d in differences if d.metric in metrics))
        for c, pair in enumerate(pairs):
            axis = axes[r][c]
            axis.axvline(0, color="black", linewidth=0.8)
            for d in (d for d in differences if d.pair == pair and d.metric in metrics):
                y = len(labels) - 1 - labels.index(_forest_label(d))
                dots = np.array([v for v in d.per_seed if np.isfinite(v)])
                jitter = np.linspace(-0.18, 0.18, dots.size) if dots.size > 1 else np.zeros(dots.size)
                axis.scatter(dots, y + jitter, s=12, color="#333333", alpha=0.55, linewidths=0, zorder=5)
                color = COLORS.get(d.favours, "#444444")
                if np.isfinite(d.ci_low) and np.isfinite(d.ci_high):
                    axis.plot([d.ci_low, d.ci_high], [y, y], color=color, linewidth=2, zorder=3)
                axis.plot([d.mean], [y], marker="D", markersize=6, zorder=4, color=color,
                          markerfacecolor=color if d.claimed else "white")
            axis.set_yticks(range(len(labels)), labels[::-1], fontsize=8)
            axis.set_ylim(-0.7, len(labels) - 0.3)
            axis.grid(axis="x", alpha=0.3)
            axis.tick_params(axis="x", labelsize=7)
            if r == 0:
                axis.set_title(f"{pair.label}\n{pair.question}", fontsize=9)
        better = "higher" if HIGHER_IS_BETTER[metrics[0]] else "lower"
        axes[r][0].set_ylabel(f"{family}\n({better} is better)", fontsize=8)
    figure.suptitle("Seed-level differences: dots = seeds, diamond = seed mean, line = interval over seeds;\n"
                    "filled and coloured (by the side it favours) where a sign is claimed", fontsize=9)
    figure.tight_layout()
    return save_figure(figure, path)
