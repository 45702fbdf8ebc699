"""report.md and a self-contained report.html (figures embedded) from the stage outputs.

Every number in the document is read from the metrics files: nothing is hand-written.
"""

from __future__ import annotations

import base64
import math
import re
from pathlib import Path

import pandas as pd

from robust_deepfake.evaluation import eps_label
from robust_deepfake.verdict import Difference

METRIC_NAMES = {"accuracy": "accuracy", "f1": "macro-F1", "auc": "ROC-AUC",
                "iinc_stability": "IINC stability", "iinc_localization": "IINC localization"}


def _f(value: float, digits: int = 3) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _ci(interval) -> str:
    low, high = interval
    return f"[{_f(low)}, {_f(high)}]"


def _signed(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:+.3f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def verdict_section(differences: list[Difference], champion: str, challenger: str, criterion: str,
                    scores: dict[str, float], level: float) -> str:
    rows = [
        [d.attack.upper(), METRIC_NAMES[d.metric],
         _signed(d.diff), _ci((d.ci_low, d.ci_high)), "yes" if d.excludes_zero else "no", d.favours]
        for d in differences
    ]
    pct = int(round(level * 100))
    return "\n\n".join([
        "## Verdict",
        f"Difference **regularized − baseline** on clean images and, per attack, averaged over the attacked "
        f"eps (eps > 0), with a paired "
        f"bootstrap {pct}% interval (both models scored on the same resampled images). For accuracy, F1 and "
        "AUC higher is better; for IINC lower is better (the explanation moves less under attack / overlaps "
        "the manipulation more). *Favours* names the better model only when the interval excludes 0.",
        _table(["attack", "metric", "reg − baseline", f"{pct}% CI", "excludes 0", "favours"], rows),
        f"**Champion** (MLflow alias `@champion`) by `report.select_by: {criterion}`: **{champion}** "
        f"(score {_f(scores[champion])} vs {_f(scores[challenger])} for {challenger}, now `@challenger`).",
    ])


def data_section(split: dict) -> str:
    rows = []
    for name in ("train", "val", "test"):
        entry = split[name]
        rows.append([name, str(entry["real"]), str(entry["fake"]), str(entry["total"]), str(entry["groups"])])
    sources = sorted({s for name in ("train", "val", "test") for s in split[name]["by_source"]})
    per_source = [[s] + [str(split[name]["by_source"].get(s, 0)) for name in ("train", "val", "test")] for s in sources]
    holdout = ", ".join(split.get("holdout_methods") or []) or "none"
    notes = f"Held-out methods (test only): {holdout}. Skipped unreadable files: {split.get('skipped_bad_files', 0)}."
    return "\n\n".join([
        "## Data",
        _table(["split", "real", "fake", "total", "identities"], rows),
        _table(["source", "train", "val", "test"], per_source),
        notes,
    ])


def training_section(train: dict[str, dict], timing: dict[str, dict]) -> str:
    def speed(model: str) -> str:
        value = timing.get(model, {}).get("images_per_s")
        return f"{value:.0f}" if value else "n/a"

    rows = [[model, str(m["best_epoch"] + 1), str(m["epochs_run"]), _f(m["val_accuracy"]), _f(m["val_f1"]),
             _f(m["val_auc"]), _f(m["val_loss"]), speed(model)] for model, m in train.items()]
    return "\n\n".join([
        "## Training",
        _table(["model", "best epoch", "epochs run", "val accuracy", "val macro-F1", "val ROC-AUC", "val loss", "img/s"], rows),
        "![training curves](figures/training_curves.png)",
    ])


def robustness_section(sweep: dict, figures: list[str]) -> str:
    parts = ["## Robustness",
             "Metrics on the attacked test subset, 95% bootstrap intervals in brackets; ASR = share of "
             "initially correct images the attack flips."]
    models = list(sweep)
    for attack in sweep[models[0]]:
        rows = []
        for label in sweep[models[0]][attack]:
            row = [label]
            for metric in ("accuracy", "f1", "auc"):
                for model in models:
                    entry = sweep[model][attack][label]
                    row.append(f"{_f(entry[metric])} {_ci(entry.get(metric + '_ci', [math.nan, math.nan]))}")
            row += [_f(sweep[model][attack][label]["asr"]) for model in models]
            rows.append(row)
        header = ["eps"] + [f"{m} {name}" for name in ("acc", "F1", "AUC") for m in models] + [f"{m} ASR" for m in models]
        parts += [f"### {attack.upper()}", _table(header, rows)]
    parts += [f"![{name}](figures/{name})" for name in figures]
    return "\n\n".join(parts)


def iinc_section(cam: dict, cam_figures: list[str]) -> str:
    models = list(cam)
    rows = [["clean", "0", "—", "—"] + [_f(cam[m]["clean"]["localization"]["mean"]) for m in models]]
    for attack in [a for a in cam[models[0]] if a != "clean"]:
        for label in cam[models[0]][attack]:
            row = [attack.upper(), label]
            row += [_f(cam[m][attack][label]["stability"]["mean"]) for m in models]
            row += [_f(cam[m][attack][label]["localization"]["mean"]) for m in models]
            rows.append(row)
    header = ["attack", "eps"] + [f"{m} stability" for m in models] + [f"{m} localization" for m in models]
    n = next(iter(cam.values()))["clean"]["localization"]["n"]
    return "\n\n".join([
        "## Explanations: Grad-CAM and IINC",
        "IINC (Dang et al., CVPR 2020) between two maps: 0 = identical, 1 = disjoint. *Stability*: clean CAM vs "
        "adversarial CAM (how far the explanation moves under attack). *Localization*: CAM vs the ground-truth "
        f"manipulation mask, on the {n} fakes with masks. Lower is better for both.",
        _table(header, rows),
        "![IINC vs eps](figures/iinc.png)",
        *[f"![{name}](cam/{name})" for name in cam_figures],
    ])


def per_source_section(sweep_rows: pd.DataFrame, attack: str, eps: float) -> str:
    frame = sweep_rows[(sweep_rows.metric == "accuracy") & (sweep_rows.source != "all") & (sweep_rows.attack == attack)]
    rows = []
    for source in sorted(set(frame.source)):
        held = frame[frame.source == source].heldout.astype(str).str.lower().eq("true").any()
        row = [source, "yes" if held else "no"]
        for at in (0.0, eps):
            for model in ("baseline", "reg"):
                value = frame[(frame.source == source) & (frame.model == model) & ((frame.eps - at).abs() < 1e-9)].value
                row.append(_f(float(value.iloc[0])) if len(value) else "n/a")
        rows.append(row)
    label = f"{attack.upper()} {eps_label(eps)}"
    return "\n\n".join([
        "## Per-source generalization",
        _table(["source", "held out", "baseline clean", "reg clean", f"baseline {label}", f"reg {label}"], rows),
        "![per-source accuracy](figures/per_source.png)",
        "## ROC curves and confusion matrices",
        "![ROC](figures/roc.png)",
        "![confusion matrices](figures/confusion.png)",
    ])


def reading_guide() -> str:
    return "\n\n".join([
        "## How to read this report",
        "- The verdict compares the two models on the *same* images, so its intervals are narrower than the "
        "per-model intervals in the tables. An interval that contains 0 means this run gives no evidence either way.",
        "- Compare each attack row with the *clean* row: if the regularized model is better under attack by about "
        "as much as it is better on clean images, the gain is accuracy, not robustness.",
        "- The intervals cover the sampling of test images only, not training randomness: each model was trained "
        "once. Re-train with other seeds (`dvc exp run -S train.seed=1`, ...) before trusting a small difference.",
        "- The sample data are synthetic and small: the figures show the pipeline works, not how DFFD behaves. "
        "Run on DFFD (README: *Using DFFD instead*) for real conclusions.",
        "- Regenerate with `dvc repro`; compare parameter variants with `dvc exp run -S ...` and `dvc exp show`.",
    ])


def to_html(markdown_text: str, base: Path, title: str) -> str:
    """Self-contained HTML: markdown tables rendered, PNGs embedded as data URIs."""
    import markdown

    body = markdown.markdown(markdown_text, extensions=["tables"])

    def embed(match: re.Match) -> str:
        path = base / match.group(2)
        if not path.exists():
            return match.group(0)
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        return f'{match.group(1)}data:image/png;base64,{data}"'

    body = re.sub(r'(<img alt="[^"]*" src=")([^"]+)"', embed, body)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: -apple-system, Segoe UI, Helvetica, Arial, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; font-size: 0.85em; }}
th, td {{ border: 1px solid #ccc; padding: 3px 8px; text-align: right; }}
th:first-child, td:first-child {{ text-align: left; }}
thead {{ background: #f2f2f2; }}
img {{ max-width: 100%; display: block; margin: 1em 0; }}
code {{ background: #f5f5f5; padding: 0 3px; }}
</style></head><body>
{body}
</body></html>
"""
