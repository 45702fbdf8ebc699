"""The figures a pipeline run is judged by (`key_metrics`), read from whatever stage
outputs are present: pipeline knowledge that the Prefect flow shows as a table."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from robust_deepfake.config import ConfigError, Params, load_params
from robust_deepfake.errors import StageError

if TYPE_CHECKING:
    from robust_deepfake.orchestration.dvc_runner import StageGraph

PARAMS_FILE = "params.yaml"


def key_metrics(root: Path, graph: StageGraph | None = None) -> dict[str, float | str]:
    """The figures a run is judged by, from the outputs present (a run up to a target
    stage has only some), per variant and averaged over the training seeds:

    * metrics/report.json's per-variant numbers (the report's headline, e.g. `acc_clean`,
      `auc_pgd` at report.reference_eps, `iinc_stab`: {"base": …, "reg": …});
    * where the report is missing: val_auc from metrics/train_<variant>/seed<k>.json,
      clean_accuracy / clean_auc from eval/attack_sweep.json, iinc_stability from
      eval/cam_iinc.json;
    * `<variant>/robustness` from eval/attack_sweep.json: the champion score
      (report.select_by, scored as the re-evaluation scores it: monitoring.drift.score_plan,
      verdict.curve_score), named by `robustness_by`;
    * `champion`: the model eval/verdict.json's decision names (e.g. reg-seed1).

    With `graph` (the stages the run covered), a file no stage of it produces is ignored:
    after a run up to attack_sweep, metrics/report.json is from an earlier run."""
    from robust_deepfake.paths import (
        VARIANTS, CamOutputs, ModelKey, ReportOutputs, SweepOutputs, TrainOutputs, model_keys,
    )

    root = Path(root)
    params = _params(root)

    def read(path: Path) -> dict:
        if graph is not None and not graph.writes(_relative(path, root) or ""):
            return {}
        return _read_json(path)

    out: dict[str, float | str] = {}
    report = ReportOutputs.at(root)
    short = {"base": "baseline", "reg": "reg"}  # pipeline.report.headline_metrics' keys
    for name, values in read(report.metrics).items():
        for variant, value in (values.items() if isinstance(values, dict) else ()):
            if variant in short and _is_number(value):
                out[f"{short[variant]}/{name}"] = float(value)

    seeds = params.train.seeds if params is not None else None
    for variant in VARIANTS:
        if seeds is not None:
            paths = [TrainOutputs.of(root, key).metrics for key in model_keys(seeds) if key.variant == variant]
        else:  # no valid params.yaml: whatever seeds are there
            paths = sorted(TrainOutputs.of(root, ModelKey(variant, 0)).metrics.parent.glob("seed*.json"))
        values = [value for path in paths if _is_number(value := read(path).get("val_auc"))]
        if values:
            out.setdefault(f"{variant}/val_auc", _mean(values))

    sweep = _load_typed(SweepOutputs.at(root).metrics, "sweep", read)
    if sweep is not None:
        from robust_deepfake.monitoring.drift import ReevaluationError, score_plan
        from robust_deepfake.monitoring.reevaluate import sweep_curves
        from robust_deepfake.units import CLEAN
        from robust_deepfake.verdict.champion import curve_score

        try:
            attacks, metric = score_plan(params.report.select_by if params else "pgd_accuracy", sweep.attacks)
        except ReevaluationError:  # a sweep without attacks
            attacks, metric = [], "accuracy"
        if attacks:
            out["robustness_by"] = f"{'+'.join(attacks)} {metric}"
        for variant in VARIANTS:
            keys = [key for key in sweep.models if key.variant == variant]
            clean = [entry for entry in sweep.entries if entry.model in keys and entry.attack == CLEAN]
            if clean:
                out.setdefault(f"{variant}/clean_accuracy", _mean([e.accuracy for e in clean]))
                out.setdefault(f"{variant}/clean_auc", _mean([e.auc for e in clean]))
            scores = [curve_score(sweep_curves(sweep, key, attacks, metric), attacks) for key in keys]
            if attacks and scores:
                out[f"{variant}/robustness"] = _mean(scores)

    cam = _load_typed(CamOutputs.at(root).metrics, "cam", read)
    if cam is not None:
        for variant in VARIANTS:
            stability = [e.mean for e in cam.entries
                         if e.model.variant == variant and e.measure == "stability" and e.eps > 0 and _is_number(e.mean)]
            if stability:
                out.setdefault(f"{variant}/iinc_stability", _mean(stability))

    decision = read(report.verdict).get("decision")
    champion = decision.get("champion") if isinstance(decision, dict) else None
    if isinstance(champion, str):
        out["champion"] = champion
    return out


def _relative(path: Path, root: Path) -> str | None:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return None


def _params(root: Path) -> Params | None:
    try:
        return load_params(root / PARAMS_FILE)
    except (ConfigError, OSError, ValueError):
        return None


def _load_typed(path: Path, kind: str, read: Callable[[Path], dict]) -> Any:
    """SweepMetrics / CamMetrics from `path`, or None when it is missing, not produced by
    the run's stages, or not in the current format."""
    if not read(path):
        return None
    try:
        if kind == "sweep":
            from robust_deepfake.robustness.sweep import SweepMetrics

            return SweepMetrics.load(path)
        from robust_deepfake.explain.outputs import CamMetrics

        return CamMetrics.load(path)
    except (StageError, KeyError, TypeError, ValueError):
        return None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values))


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}
