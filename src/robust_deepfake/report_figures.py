"""The report's figures (matplotlib, Agg), each a function of the stage outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from robust_deepfake.evaluation import SweepPredictions, eps_label

COLORS = {"baseline": "#1f77b4", "reg": "#d62728"}
LABELS = {"baseline": "baseline", "reg": "regularized"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure, path: Path) -> Path:
    from robust_deepfake.io import atomic_path

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=110, format="png", bbox_inches="tight")
    _plt().close(figure)
    return path


def _eps_axis(axis, eps_values: list[float]) -> None:
    axis.set_xticks([e * 255 for e in eps_values])
    axis.set_xticklabels([eps_label(e).replace("/255", "") for e in eps_values], fontsize=8)
    axis.set_xlabel("eps (x/255)")
    axis.grid(alpha=0.3)


def robustness_curves(sweep: pd.DataFrame, metric: str, path: Path) -> Path:
    """metric vs eps per attack, both models, 95% bootstrap bands."""
    plt = _plt()
    overall = sweep[(sweep.source == "all") & (sweep.metric == metric)]
    attacks = list(dict.fromkeys(overall.attack))
    figure, axes = plt.subplots(1, len(attacks), figsize=(3.6 * len(attacks), 3.2), sharey=True, squeeze=False)
    for axis, attack in zip(axes[0], attacks):
        for model, frame in overall[overall.attack == attack].groupby("model", sort=False):
            frame = frame.sort_values("eps")
            x = frame.eps * 255
            axis.plot(x, frame.value, marker="o", color=COLORS.get(model), label=LABELS.get(model, model))
            axis.fill_between(x, frame.ci_low, frame.ci_high, color=COLORS.get(model), alpha=0.15, linewidth=0)
        axis.set_title(attack.upper())
        _eps_axis(axis, sorted(set(overall.eps)))
    axes[0][0].set_ylabel({"f1": "macro-F1", "auc": "ROC-AUC"}.get(metric, metric))
    axes[0][0].legend(fontsize=8)
    figure.suptitle(f"{ {'f1': 'macro-F1', 'auc': 'ROC-AUC'}.get(metric, metric)} under attack (95% CI bands)", fontsize=10)
    return _save(figure, path)


def iinc_curves(iinc: pd.DataFrame, path: Path) -> Path:
    """IINC stability and localization vs eps per attack (lower = steadier / better)."""
    plt = _plt()
    attacks = [a for a in dict.fromkeys(iinc.attack) if a != "none"]
    measures = ["stability", "localization"]
    figure, axes = plt.subplots(2, len(attacks), figsize=(3.6 * len(attacks), 5.6), squeeze=False, sharex=True)
    for row, measure in enumerate(measures):
        for col, attack in enumerate(attacks):
            axis = axes[row][col]
            for model, frame in iinc[(iinc.measure == measure) & (iinc.attack == attack)].groupby("model", sort=False):
                frame = frame.sort_values("eps")
                if measure == "localization":  # prepend the clean localization at eps 0
                    clean = iinc[(iinc.measure == measure) & (iinc.attack == "none") & (iinc.model == model)]
                    frame = pd.concat([clean, frame])
                x = frame.eps * 255
                axis.plot(x, frame.value, marker="o", color=COLORS.get(model), label=LABELS.get(model, model))
                axis.fill_between(x, frame.ci_low, frame.ci_high, color=COLORS.get(model), alpha=0.15, linewidth=0)
            axis.set_title(f"{attack.upper()}: {measure}", fontsize=9)
            _eps_axis(axis, sorted(set(iinc.eps)))
            if row == 0:
                axis.set_xlabel("")
        axes[row][0].set_ylabel("IINC" + (" (clean vs adv CAM)" if measure == "stability" else " (CAM vs GT mask)"), fontsize=8)
    axes[0][0].legend(fontsize=8)
    figure.suptitle("Grad-CAM under attack: IINC (0 = identical maps; lower is better)", fontsize=10)
    return _save(figure, path)


def training_curves(history: dict[str, pd.DataFrame], path: Path) -> Path:
    plt = _plt()
    panels = [("train_loss", "train loss"), ("val_loss", "val loss"), ("val_auc", "val ROC-AUC"), ("val_accuracy", "val accuracy")]
    figure, axes = plt.subplots(1, len(panels), figsize=(14, 3.0), squeeze=False)
    for axis, (column, title) in zip(axes[0], panels):
        for model, frame in history.items():
            axis.plot(frame.epoch + 1, frame[column], marker="o", color=COLORS.get(model), label=LABELS.get(model, model))
        axis.set_title(title, fontsize=9)
        axis.set_xlabel("epoch")
        axis.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    return _save(figure, path)


def per_source(sweep: pd.DataFrame, attack: str, eps: float, path: Path) -> Path:
    """Accuracy per source/method, clean and under `attack` at `eps`; held-out methods marked *."""
    plt = _plt()
    rows = sweep[(sweep.metric == "accuracy") & (sweep.source != "all") & (sweep.attack == attack)]
    sources = sorted(set(rows.source))
    held = set(rows[rows.heldout.astype(str).str.lower() == "true"].source)
    figure, axes = plt.subplots(1, 2, figsize=(11, 3.4), sharey=True)
    width = 0.38
    for axis, (title, at_eps) in zip(axes, [("clean", 0.0), (f"{attack.upper()} eps={eps_label(eps)}", eps)]):
        for offset, model in zip((-width / 2, width / 2), ("baseline", "reg")):
            frame = rows[(rows.model == model) & np.isclose(rows.eps, at_eps)].set_index("source").reindex(sources)
            x = np.arange(len(sources)) + offset
            errors = np.vstack([frame.value - frame.ci_low, frame.ci_high - frame.value])
            axis.bar(x, frame.value, width, color=COLORS[model], label=LABELS[model],
                     yerr=np.nan_to_num(errors.clip(min=0)), capsize=2, error_kw={"linewidth": 0.8})
        axis.set_xticks(np.arange(len(sources)))
        axis.set_xticklabels([f"{s}*" if s in held else s for s in sources], rotation=30, ha="right", fontsize=8)
        axis.set_title(title, fontsize=9)
        axis.set_ylim(0, 1.05)
        axis.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("accuracy")
    axes[0].legend(fontsize=8)
    if held:
        figure.text(0.01, -0.02, "* held-out method: never seen in training", fontsize=8)
    return _save(figure, path)


def roc_curves(predictions: SweepPredictions, attack: str, eps: float, path: Path) -> Path:
    from sklearn.metrics import roc_curve

    plt = _plt()
    a = predictions.attacks.index(attack)
    e = int(np.argmin(np.abs(np.array(predictions.eps) - eps)))
    figure, axes = plt.subplots(1, 2, figsize=(8, 3.6), sharey=True)
    for axis, (title, index) in zip(axes, [("clean", 0), (f"{attack.upper()} eps={eps_label(predictions.eps[e])}", e)]):
        for m, model in enumerate(predictions.models):
            fpr, tpr, _ = roc_curve(predictions.labels, predictions.p_fake[m, a, index])
            axis.plot(fpr, tpr, color=COLORS.get(model), label=LABELS.get(model, model))
        axis.plot([0, 1], [0, 1], color="grey", linewidth=0.8, linestyle="--")
        axis.set_title(title, fontsize=9)
        axis.set_xlabel("false positive rate")
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("true positive rate")
    axes[0].legend(fontsize=8)
    return _save(figure, path)


def confusion_matrices(predictions: SweepPredictions, attack: str, eps: float, path: Path) -> Path:
    from sklearn.metrics import confusion_matrix

    plt = _plt()
    a = predictions.attacks.index(attack)
    e = int(np.argmin(np.abs(np.array(predictions.eps) - eps)))
    panels = [(m, name, idx) for m, name in enumerate(predictions.models) for idx in (0, e)]
    figure, axes = plt.subplots(1, len(panels), figsize=(3.0 * len(panels), 3.0), squeeze=False)
    for axis, (m, name, idx) in zip(axes[0], panels):
        matrix = confusion_matrix(predictions.labels, (predictions.p_fake[m, a, idx] >= 0.5).astype(int), labels=[0, 1])
        axis.imshow(matrix, cmap="Blues", vmin=0, vmax=max(int(matrix.max()), 1))
        for (i, j), count in np.ndenumerate(matrix):  # dark text on light cells, white on dark
            axis.text(j, i, str(count), ha="center", va="center",
                      color="white" if count > 0.6 * matrix.max() else "black")
        axis.set_xticks([0, 1], ["real", "fake"])
        axis.set_yticks([0, 1], ["real", "fake"])
        axis.set_xlabel("predicted")
        when = "clean" if idx == 0 else f"{attack.upper()} {eps_label(predictions.eps[idx])}"
        axis.set_title(f"{LABELS.get(name, name)}, {when}", fontsize=9)
    axes[0][0].set_ylabel("true")
    return _save(figure, path)
