"""The body of the report stage: figures, report.md/.html, the seed-level verdict, the
headline metrics and (last, after every out is written) the MLflow aliases."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from robust_deepfake.config import Params, params_hash
from robust_deepfake.errors import MissingInputError
from robust_deepfake.explain.outputs import CamMetrics, IincValues
from robust_deepfake.io import atomic_open, write_csv, write_json
from robust_deepfake.paths import (
    DOSE_RESPONSE,
    VARIANTS,
    CamOutputs,
    ModelKey,
    ReportOutputs,
    SplitOutputs,
    SweepOutputs,
    TrainOutputs,
    model_keys,
    read_json_file,
)
from robust_deepfake.report import document as report_doc
from robust_deepfake.report.blocks import Contents, Heading, to_html, to_markdown
from robust_deepfake.report import figures as report_figures
from robust_deepfake import units
from robust_deepfake.units import CLEAN
from robust_deepfake.robustness.masking_outputs import MaskingChecks
from robust_deepfake.robustness.sweep import SweepMetrics, SweepPredictions
from robust_deepfake.tracking.model_card import report_section
from robust_deepfake.tracking.provenance import data_md5, machine_facts, run_origin
from robust_deepfake.tracking.tracker import Tracker
from robust_deepfake.verdict.champion import choose_champion
from robust_deepfake.verdict.claims import seeds_for_every
from robust_deepfake.verdict.differences import iinc_differences, sweep_differences
from robust_deepfake.verdict.seeds import SeedDifference


FOREST = "forest.png"


@dataclass(frozen=True)
class ReportInputs:
    split: dict
    train: dict[ModelKey, dict]
    history: pd.DataFrame  # every model's per-epoch record, with variant and seed columns
    sweep: SweepMetrics
    sweep_rows: pd.DataFrame
    predictions: SweepPredictions
    masking: MaskingChecks
    cam: CamMetrics
    iinc_rows: pd.DataFrame
    iinc_values: IincValues
    cam_figures: list[str]
    dose_response: dict | None

    @classmethod
    def read(cls, root: Path, seeds: list[int]) -> ReportInputs:
        keys = model_keys(seeds)
        sweep, cam = SweepOutputs.at(root), CamOutputs.at(root)
        histories = []
        for key in keys:
            path = TrainOutputs.of(root, key).plot
            if not path.exists():
                raise MissingInputError(f"{path}: missing; run `dvc repro train_{key.variant}` first")
            histories.append(pd.read_csv(path).assign(variant=key.variant, seed=key.seed))
        dose = root / DOSE_RESPONSE
        return cls(
            split=read_json_file(SplitOutputs.at(root).metrics, "run `dvc repro split` first"),
            train={key: read_json_file(TrainOutputs.of(root, key).metrics) for key in keys},
            history=pd.concat(histories, ignore_index=True),
            sweep=SweepMetrics.load(sweep.metrics),
            sweep_rows=_read_csv(sweep.plot),
            predictions=SweepPredictions.load(sweep.predictions),
            masking=MaskingChecks.load(sweep.masking),
            cam=CamMetrics.load(cam.metrics),
            iinc_rows=_read_csv(cam.plot),
            iinc_values=IincValues.load(cam.values),
            cam_figures=sorted(p.name for p in cam.figures.glob("cam_*.png")),
            dose_response=json.loads(dose.read_text()) if dose.exists() else None,
        )


def _read_csv(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise MissingInputError(f"{path}: missing; run the upstream stages (`dvc repro`) first")
    return pd.read_csv(path)


def figure_attack_and_eps(params: Params, predictions: SweepPredictions) -> tuple[str, float]:
    """The attack and eps of the headline, the per-source, ROC and confusion figures."""
    attack = "pgd" if "pgd" in predictions.attacks else predictions.attacks[0]
    attacked = [e for e in predictions.eps if e > 0] or predictions.eps
    return attack, min(attacked, key=lambda e: abs(e - params.report.reference_eps))


def build_report(params: Params, root: Path, tracker: Tracker) -> dict:
    """Write the report's outs, then hand the decision and model cards to `tracker` (last:
    the aliases move only once every out is in place). Returns the differences, the
    decision and the headline metrics."""
    tracker.require()  # an unreachable or read-only store fails now, not after the work
    inputs = ReportInputs.read(root, params.train.seeds)
    outputs = ReportOutputs.at(root)
    attack, ref_eps = figure_attack_and_eps(params, inputs.predictions)
    level = params.eval.ci

    robustness_figures = []
    for metric in ("accuracy", "auc", "evasion_rate", "asr"):
        name = f"robustness_{metric}.png"
        report_figures.robustness_curves(inputs.sweep_rows, metric, level, outputs.figures / name)
        robustness_figures.append(name)
    report_figures.iinc_curves(inputs.iinc_rows, level, outputs.figures / "iinc.png")
    report_figures.training_curves(inputs.history, outputs.figures / "training_curves.png")
    report_figures.per_source(inputs.sweep_rows, attack, ref_eps, outputs.figures / "per_source.png")
    report_figures.roc_curves(inputs.predictions, attack, ref_eps, outputs.figures / "roc.png")
    report_figures.confusion_matrices(inputs.predictions, attack, ref_eps, outputs.figures / "confusion.png")

    min_effect = params.report.min_effect
    differences = sweep_differences(inputs.predictions, params.eval, min_effect)
    differences += iinc_differences(inputs.iinc_values, params.eval, min_effect)
    report_figures.forest_plot(differences, outputs.figures / FOREST)
    current = tracker.alias_variant("champion")
    decision = choose_champion(inputs.sweep, params.report.select_by, params.eval, current, differences,
                               min_clean_auc=params.report.min_clean_auc, min_effect=min_effect)
    provenance = _provenance(params, root)

    blocks = [
        Heading(report_doc.TITLE, 1),
        *report_doc.setup_section(params, len(inputs.predictions.labels), inputs.predictions.eps,
                                  inputs.predictions.attacks, inputs.predictions.quantized),
        *report_doc.headline(differences, attack),
        Contents(),
        *report_doc.verdict_section(differences, decision, params.report.select_by, level, attack, FOREST),
        *report_doc.masking_verdict(inputs.masking),
        *report_doc.all_comparisons_section(differences, level),
        *report_doc.per_seed_section(differences, level, attack),
        *report_doc.data_section(inputs.split),
        *report_doc.training_section(inputs.train, inputs.sweep),
        *report_doc.robustness_section(inputs.sweep, robustness_figures),
        *report_doc.ensemble_note(params.attack.ensemble, inputs.sweep.attacks),
        *report_doc.threat_section(inputs.sweep, ref_eps),
        *report_doc.masking_section(inputs.masking),
        *report_doc.iinc_section(inputs.cam, inputs.cam_figures),
        *report_doc.per_source_section(inputs.sweep_rows, attack, ref_eps),
        *report_doc.provenance_section(provenance),
        *report_doc.how_to_read(),
        *report_doc.dose_response_section(inputs.dose_response),
        *report_doc.cam_appendix(inputs.cam_figures),
    ]
    with atomic_open(outputs.markdown) as handle:
        handle.write(to_markdown(blocks, outputs.markdown.parent))
    with atomic_open(outputs.html) as handle:
        handle.write(to_html(blocks, "Robust deepfake detection report", outputs.markdown.parent))
    _write_dvc_plots(outputs.plots, inputs.sweep_rows)
    _write_training_plots(outputs.training, inputs.history)
    write_json(outputs.verdict, {"differences": [d.as_dict() for d in differences], "decision": decision.as_dict(),
                                 "masking": inputs.masking.verdict_line(), "provenance": provenance})
    summary = headline_metrics(inputs, differences, attack, ref_eps)
    write_json(outputs.metrics, summary)
    write_json(outputs.machine, machine_record(params.train.num_threads))
    tracker.publish_report(decision, outputs, model_cards(inputs, differences, decision, level))
    return {"differences": differences, "decision": decision, "metrics": summary}


def model_cards(inputs: ReportInputs, differences: list[SeedDifference], decision, level: float) -> dict:
    """The report's section of each model's card: its test rows, the verdict, the floor."""
    verdict = [f"{d.attack.upper()} {d.metric}: {d.pair.label} {d.mean:+.3f}, {level:.0%} CI over "
               f"{d.n_seeds} seeds [{d.ci_low:+.3f}, {d.ci_high:+.3f}]: {d.reading()}" for d in differences
               if d.metric in ("accuracy", "auc")]
    cards = {}
    for key in decision.floor.clean_auc:
        rows = [{"attack": e.attack, "eps": e.eps, "accuracy": e.accuracy, "auc": e.auc}
                for e in inputs.sweep.entries if e.model == key]
        cards[key] = report_section(key, rows, verdict, decision.floor.describe(key), decision.reason)
    return cards


def headline_metrics(inputs: ReportInputs, differences: list[SeedDifference], attack: str, eps: float) -> dict:
    """The <= 24 numbers `dvc metrics show` and `dvc exp show` display (every other table is
    an out): seed means per variant of clean accuracy and of accuracy and evasion rate under
    the reference attack and eps, and per comparison (in question order) the verdict's accuracy
    difference under that attack: seed mean, interval and claim (+1 / -1: the first / second
    variant of the pair is higher, 0: no claim); `seeds_needed`: the seeds at which every one
    of those comparisons detects report.min_effect with 80% power at its observed spread
    (absent: nothing to plan with); `masking_warn`: how many (model, check) gradient-masking
    checks warn (0: every check passes, or none ran). Short names nested by variant or pair
    (`acc_pgd.placebo`, `pgd_acc_diff.reg_placebo.lo`) keep `dvc exp show` narrow and clear
    of the `reg.` params prefix; numbers only."""
    variants = [v for v in VARIANTS if v in inputs.predictions.variants]
    seeds = sorted({k.seed for k in inputs.sweep.models})

    def per_variant(attack_name: str, at: float, metric: str) -> dict[str, float]:
        return {v: float(np.mean([getattr(inputs.sweep.get(k, attack_name, at), metric)
                                  for k in inputs.sweep.models if k.variant == v])) for v in variants}

    rows = [d for d in differences if d.attack == attack and d.metric == "accuracy"]
    needed = seeds_for_every([d.claim for d in rows])
    return {
        "seeds": len(seeds),
        **({"seeds_needed": needed} if needed is not None else {}),
        "acc_clean": per_variant(CLEAN, 0.0, "accuracy"),
        f"acc_{attack}": per_variant(attack, eps, "accuracy"),
        f"evasion_{attack}": per_variant(attack, eps, "evasion_rate"),
        f"{attack}_acc_diff": {d.pair.key: {"mean": d.mean, "lo": d.ci_low, "hi": d.ci_high, "claim": d.claim.claim}
                               for d in rows},
        "masking_warn": sum(row.status == "WARN" for entry in inputs.masking.models for row in entry.rows),
    }



MACHINE_NOTE = ("Training floats differ by CPU model, accelerator and torch version from the first epoch, so "
                "another machine gives other numbers in metrics/report.json; the verdict's reading (a claimed sign) "
                "must not differ (docs/statistics.md, numbers that differ by machine).")


def machine_record(threads: int) -> dict:
    """Where the headline numbers were produced, committed beside metrics/report.json: the
    CPU model, the accelerator, the torch version and the pinned thread count (the same
    bytes on a rerun on one machine)."""
    facts = machine_facts(threads)
    return {"cpu": facts["cpu"], "accelerator": facts["accelerator"], "torch": facts["torch"],
            "torch_threads": threads, "note": MACHINE_NOTE}


def _provenance(params: Params, root: Path) -> dict[str, str]:
    """What the report was produced from and where: the commit (without `-dirty`: a run
    dirties its own outs, dvc.lock), whether tracked inputs had uncommitted changes, the
    data and params, and the machine (another CPU is another draw of training noise)."""
    origin = run_origin(root)
    machine = machine_facts(params.train.num_threads)
    return {"git commit": origin.git_commit.removesuffix("-dirty"),
            "uncommitted changes": f"yes ({len(origin.changed)} tracked files)" if origin.changed else "no",
            "data.dvc md5": data_md5(root), "params hash": params_hash(params),
            "CPU": machine["cpu"], "accelerator": machine["accelerator"], "torch": machine["torch"],
            "torch threads (train.num_threads)": machine["threads"]}


def _write_training_plots(directory: Path, history: pd.DataFrame) -> None:
    """One per-epoch CSV per model (epochs 1-based, as the train stage writes them) for `dvc plots show`."""
    directory.mkdir(parents=True, exist_ok=True)
    columns = [c for c in ("epoch", "train_loss", "val_loss", "val_auc", "train_loss_gap") if c in history]
    for (variant, seed), frame in history.groupby(["variant", "seed"], sort=False):
        records = [{c: (int(row.epoch) if c == "epoch" else row[c]) for c in columns} for _, row in frame.iterrows()]
        write_csv(directory / f"{ModelKey(variant, int(seed)).name}.csv", columns, records)


def _write_dvc_plots(directory: Path, sweep_rows: pd.DataFrame) -> None:
    """Wide CSVs for `dvc plots`: one file per attack, eps x (variant metric) seed means."""
    rows = sweep_rows[sweep_rows.source == "all"]
    clean = rows[rows.attack == CLEAN]
    directory.mkdir(parents=True, exist_ok=True)
    for attack in [a for a in dict.fromkeys(rows.attack) if a != CLEAN]:
        frame = pd.concat([clean, rows[rows.attack == attack]])
        wide = frame.pivot_table(index="eps", columns=["variant", "metric"], values="value", aggfunc="mean").sort_index()
        records = []
        for eps, values in wide.iterrows():
            record = {"eps_255": units.grey_levels(float(eps))}
            for (variant, metric), value in values.items():
                record[f"{variant}_{metric}"] = value
            records.append(record)
        write_csv(directory / f"{attack}.csv", list(records[0]), records)
