"""The report's figures stay readable: a seed band never leaves the metric's range (and the
figure says when it was cut), one outlier epoch does not flatten the training curves (the
panel's axis is cut and its title says so), epochs get integer ticks."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from robust_deepfake.report import figures


@pytest.fixture
def captured(monkeypatch):
    """The matplotlib figures the functions would save, kept open for inspection."""
    kept = []
    monkeypatch.setattr(figures, "save_figure", lambda figure, path: kept.append(figure) or path)
    yield kept
    for figure in kept:
        figures.pyplot().close(figure)


def _sweep(values: dict[str, list[float]]) -> pd.DataFrame:
    """Clean and FGSM accuracy rows at eps 0 and 2/255; `values[variant]` = one per seed."""
    rows = []
    for variant, per_seed in values.items():
        for seed, value in enumerate(per_seed):
            rows.append(dict(variant=variant, seed=seed, attack="clean", eps=0.0, source="all", metric="accuracy",
                             value=min(1.0, value + 0.1)))
            rows.append(dict(variant=variant, seed=seed, attack="fgsm", eps=2 / 255, source="all", metric="accuracy",
                             value=value))
    return pd.DataFrame(rows)


def _band_limits(figure) -> tuple[float, float]:
    vertices = np.concatenate([c.get_paths()[0].vertices for axis in figure.axes for c in axis.collections
                               if hasattr(c, "get_paths") and c.get_paths()])
    return float(vertices[:, 1].min()), float(vertices[:, 1].max())


def _texts(figure) -> str:
    return " ".join(t.get_text() for t in figure.texts)


def test_a_band_reaching_past_the_range_is_clipped_and_says_so(captured):
    spread = {"baseline": [0.02, 0.9, 0.05], "reg": [0.5, 0.98, 1.0]}  # t-intervals far past [0, 1]
    figures.robustness_curves(_sweep(spread), "accuracy", 0.95, Path("unused.png"))
    low, high = _band_limits(captured[0])
    assert 0.0 <= low and high <= 1.0
    assert "clipped to the metric's range [0, 1]" in _texts(captured[0])


def test_a_band_inside_the_range_carries_no_clip_note(captured):
    figures.robustness_curves(_sweep({"baseline": [0.5, 0.52, 0.51], "reg": [0.6, 0.61, 0.6]}), "accuracy", 0.95,
                              Path("unused.png"))
    assert "clipped" not in _texts(captured[0])


def _history(outlier: float | None) -> pd.DataFrame:
    rows = []
    for variant in ("baseline", "reg"):
        for seed in (0, 1):
            for epoch in range(1, 7):
                loss = 0.7 / epoch + 0.01 * seed
                rows.append(dict(variant=variant, seed=seed, epoch=epoch, train_loss=loss, val_loss=loss + 0.05,
                                 val_auc=0.5 + 0.07 * epoch, train_loss_gap=0.03 if variant == "reg" else np.nan))
    history = pd.DataFrame(rows)
    if outlier is not None:
        history.loc[(history.variant == "reg") & (history.seed == 1) & (history.epoch == 1), "val_loss"] = outlier
    return history


def test_one_outlier_epoch_does_not_flatten_the_loss_curves(captured):
    figures.training_curves(_history(9.5), Path("unused.png"))
    val_loss = captured[0].axes[1]
    top = val_loss.get_ylim()[1]
    assert top < 2.0  # the other epochs (0.17 ... 0.77) fill the panel
    assert "epochs above it: 1, max 9.5" in val_loss.get_title()
    assert "y-axis cut" not in captured[0].axes[0].get_title()  # the train loss had no outlier
    ticks = [t for t in val_loss.get_xticks() if 1 <= t <= 6]
    assert ticks and all(float(t).is_integer() for t in ticks)


def test_curves_without_an_outlier_keep_their_full_axis(captured):
    figures.training_curves(_history(None), Path("unused.png"))
    assert all("y-axis cut" not in axis.get_title() for axis in captured[0].axes)
    assert figures.outlier_ceiling(_history(None).val_loss.to_numpy()) is None


def test_the_outlier_ceiling_ignores_missing_values():
    values = np.array([0.3, 0.25, np.nan, 0.2, 0.22, 0.21, 9.5])
    top = figures.outlier_ceiling(values)
    assert top is not None and 0.3 < top < 1.0
    assert figures.outlier_ceiling(np.array([np.nan, 1.0, 2.0])) is None
