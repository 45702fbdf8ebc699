"""The body of the report stage: figures, report.md/.html, verdict, champion/challenger."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from robust_deepfake import report_doc, report_figures
from robust_deepfake.config import Params
from robust_deepfake.evaluation import SweepPredictions, eps_label
from robust_deepfake.io import atomic_open, write_csv, write_json
from robust_deepfake.train_job import VARIANTS
from robust_deepfake.verdict import choose_champion, iinc_differences, sweep_differences


@dataclass(frozen=True)
class ReportInputs:
    split: dict
    train: dict[str, dict]
    history: dict[str, pd.DataFrame]
    sweep: dict
    sweep_rows: pd.DataFrame
    predictions: SweepPredictions
    cam: dict
    iinc_rows: pd.DataFrame
    iinc_values: dict[str, np.ndarray]
    cam_figures: list[str]
    timing: dict[str, dict]  # images/s etc. from models/<variant>/meta.json (absent: n/a)

    @classmethod
    def read(cls, root: Path) -> ReportInputs:
        def need(path: Path) -> Path:
            if not path.exists():
                raise FileNotFoundError(f"{path}: missing; run the upstream stages (`dvc repro`) first")
            return path

        with np.load(need(root / "eval" / "cam_iinc_values.npz"), allow_pickle=False) as data:
            values = {key: data[key] for key in data.files}
        return cls(
            split=json.loads(need(root / "metrics" / "split.json").read_text()),
            train={v: json.loads(need(root / "metrics" / f"train_{v}.json").read_text()) for v in VARIANTS},
            history={v: pd.read_csv(need(root / "plots" / f"train_{v}.csv")) for v in VARIANTS},
            sweep=json.loads(need(root / "metrics" / "attack_sweep.json").read_text()),
            sweep_rows=pd.read_csv(need(root / "plots" / "attack_sweep.csv")),
            predictions=SweepPredictions.load(need(root / "eval" / "attack_predictions.npz")),
            cam=json.loads(need(root / "metrics" / "cam_iinc.json").read_text()),
            iinc_rows=pd.read_csv(need(root / "plots" / "iinc.csv")),
            iinc_values=values,
            cam_figures=sorted(p.name for p in (root / "reports" / "cam").glob("cam_*.png")),
            timing={v: _meta(root, v).get("timing", {}) for v in VARIANTS},
        )


def _meta(root: Path, variant: str) -> dict:
    path = root / "models" / variant / "meta.json"
    return json.loads(path.read_text()) if path.exists() else {}


def reference(params: Params, predictions: SweepPredictions) -> tuple[str, float]:
    """The attack and eps of the per-source, ROC and confusion figures."""
    attack = "pgd" if "pgd" in predictions.attacks else predictions.attacks[0]
    attacked = [e for e in predictions.eps if e > 0] or predictions.eps
    return attack, min(attacked, key=lambda e: abs(e - params.report.reference_eps))


def build_report(params: Params, root: Path, track: bool = True) -> dict:
    inputs = ReportInputs.read(root)
    reports, figures = root / "reports", root / "reports" / "figures"
    attack, ref_eps = reference(params, inputs.predictions)

    robustness_figures = []
    for metric in ("accuracy", "f1", "auc"):
        name = f"robustness_{metric}.png"
        report_figures.robustness_curves(inputs.sweep_rows, metric, figures / name)
        robustness_figures.append(name)
    report_figures.iinc_curves(inputs.iinc_rows, figures / "iinc.png")
    report_figures.training_curves(inputs.history, figures / "training_curves.png")
    report_figures.per_source(inputs.sweep_rows, attack, ref_eps, figures / "per_source.png")
    report_figures.roc_curves(inputs.predictions, attack, ref_eps, figures / "roc.png")
    report_figures.confusion_matrices(inputs.predictions, attack, ref_eps, figures / "confusion.png")

    differences = sweep_differences(inputs.predictions, params.eval)
    cam_attacks = [a for a in inputs.cam[VARIANTS[0]] if a != "clean"]
    cam_eps = sorted({float(e) for e in inputs.iinc_rows.eps if e > 0})
    differences += iinc_differences(inputs.iinc_values, cam_attacks, cam_eps, params.eval)
    champion, challenger, scores = choose_champion(inputs.sweep, params.report.select_by)

    document = "\n\n".join([
        "# Robust deepfake detection: baseline vs regularized",
        f"Attacks {', '.join(a.upper() for a in inputs.predictions.attacks)} at eps "
        f"{', '.join(eps_label(e) for e in inputs.predictions.eps if e > 0)} on {len(inputs.predictions.labels)} "
        f"test images; regularization `{params.reg.mode}` with alpha={params.reg.alpha}, "
        f"epsilon={params.reg.epsilon}, split after block {params.reg.split_at}.",
        report_doc.verdict_section(differences, champion, challenger, params.report.select_by, scores, params.eval.ci),
        report_doc.data_section(inputs.split),
        report_doc.training_section(inputs.train, inputs.timing),
        report_doc.robustness_section(inputs.sweep, robustness_figures),
        report_doc.iinc_section(inputs.cam, inputs.cam_figures),
        report_doc.per_source_section(inputs.sweep_rows, attack, ref_eps),
        report_doc.reading_guide(),
    ]) + "\n"
    with atomic_open(reports / "report.md") as handle:
        handle.write(document)
    with atomic_open(reports / "report.html") as handle:
        handle.write(report_doc.to_html(document, reports, "Robust deepfake detection report"))
    _write_dvc_plots(root, inputs)

    summary = {
        "champion": champion,
        "challenger": challenger,
        "select_by": params.report.select_by,
        "scores": scores,
        "verdict": {f"{d.attack}_{d.metric}": d.as_dict() for d in differences},
    }
    write_json(root / "metrics" / "report.json", summary)
    if track:
        from robust_deepfake.tracking import publish_report

        summary["registry"] = publish_report(params, root, champion, challenger, scores, reports)
    return summary


def _write_dvc_plots(root: Path, inputs: ReportInputs) -> None:
    """Wide CSVs for `dvc plots`: one file per attack, eps x (model metric) columns."""
    rows = inputs.sweep_rows[inputs.sweep_rows.source == "all"]
    directory = root / "plots" / "robustness"
    directory.mkdir(parents=True, exist_ok=True)
    for attack, frame in rows.groupby("attack", sort=False):
        wide = frame.pivot_table(index="eps", columns=["model", "metric"], values="value").sort_index()
        records = []
        for eps, values in wide.iterrows():
            record = {"eps_255": round(float(eps) * 255, 4)}
            for (model, metric), value in values.items():
                record[f"{model}_{metric}"] = value
            records.append(record)
        write_csv(directory / f"{attack}.csv", list(records[0]), records)
