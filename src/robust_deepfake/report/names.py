"""How metrics are named for people, in every report, table and figure: one table.

Keys are the metric names of the stage outputs (`accuracy`, `auc`, `asr`, ...); the study
writes a cell's metrics as `<short>_<where>` (`acc_clean`, `auc_pgd`), whose short forms
map onto the same names.
"""

from __future__ import annotations

METRIC_NAMES = {
    "accuracy": "accuracy",
    "f1": "macro-F1",
    "auc": "ROC-AUC",
    "asr": "attack success rate",
    "evasion_rate": "evasion rate",
    "real_to_fake_rate": "real→fake rate",
    "ap": "AP",
    "eer": "EER",
    "tpr_at_fpr_1": "TPR@FPR 1%",
    "tpr_at_fpr_5": "TPR@FPR 5%",
    "score": "champion score",
    "iinc_stability": "IINC stability",
    "iinc_localization": "IINC localization",
}
SHORT_KEYS = {"acc": "accuracy", "auc": "auc", "f1": "f1", "asr": "asr", "evasion": "evasion_rate"}  # the study's `<short>_<where>` keys


def metric_name(key: str) -> str:
    """The display name of a metric key or of a study key's short form; the key itself
    when it has none."""
    return METRIC_NAMES.get(SHORT_KEYS.get(key, key), key)
