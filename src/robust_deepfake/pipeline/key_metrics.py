"""The figures a pipeline run is judged by (`key_metrics`), read from whatever stage
outputs are present: what the Prefect pipeline flow shows as a table."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

from robust_deepfake.config import DEFAULT_PARAMS, ConfigError, Params, load_params
from robust_deepfake.errors import StageError
from robust_deepfake.explain.outputs import CamMetrics
from robust_deepfake.io import finite_number
from robust_deepfake.paths import (
    VARIANTS,
    CamOutputs,
    ModelKey,
    ReportOutputs,
    SweepOutputs,
    TrainOutputs,
    model_keys,
    read_json_file,
    relative_to_root,
)
from robust_deepfake.robustness.sweep import SweepMetrics
from robust_deepfake.verdict.champion import NothingToScore, curve_score, oriented, score_name, score_plan, sweep_curves
from robust_deepfake.units import CLEAN

T = TypeVar("T")
Figures = dict[str, float | str]


class CoveredOutputs(Protocol):
    """The outputs a run's stages produce (orchestration.dvc_runner.StageGraph is one)."""

    def writes(self, path: str) -> bool:
        """Whether `path` (POSIX, relative to the repository root) is one of them."""


def key_metrics(root: Path, graph: CoveredOutputs | None = None) -> Figures:
    """The figures a run is judged by, from the outputs present (a run up to a target
    stage has only some), per variant and averaged over the training seeds. Each source
    adds only the names no earlier one gave:

    * metrics/report.json's per-variant numbers (the report's headline, e.g. `acc_clean`,
      `auc_pgd` at report.reference_eps, `iinc_stab`: {"baseline": …, "reg": …});
    * val_auc from metrics/train_<variant>/seed<k>.json;
    * from eval/attack_sweep.json: clean_accuracy / clean_auc, and `<variant>/robustness`,
      the champion score (report.select_by, scored as the re-evaluation watches it:
      verdict.champion.score_plan, curve_score), named by `robustness_by`;
    * iinc_stability from eval/cam_iinc.json;
    * `champion`: the model eval/verdict.json's decision names (e.g. reg-seed1).

    With `graph` (the stages the run covered), a file no stage of it produces is ignored:
    after a run up to attack_sweep, metrics/report.json is from an earlier run."""
    outputs = _Outputs(Path(root), graph)
    params = _params(outputs.root)
    figures: Figures = {}
    for source in (_from_report, _from_training, _from_sweep, _from_cam, _from_verdict):
        for name, value in source(outputs, params).items():
            figures.setdefault(name, value)
    return figures


class _Outputs:
    """Reads the stage outputs of one repository that the run covered."""

    def __init__(self, root: Path, graph: CoveredOutputs | None) -> None:
        self.root, self.graph = root, graph

    def covered(self, path: Path) -> bool:
        return self.graph is None or self.graph.writes(relative_to_root(path, self.root) or "")

    def json(self, path: Path) -> dict:
        """The JSON object at `path`; {} when it is missing, unreadable or not covered."""
        if not self.covered(path):
            return {}
        try:
            data = read_json_file(path)
        except (StageError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def typed(self, path: Path, load: Callable[[Path], T]) -> T | None:
        """`load(path)`, or None when the file is missing, not covered or not in the current format."""
        if not self.json(path):
            return None
        try:
            return load(path)
        except (StageError, KeyError, TypeError, ValueError):
            return None


def _from_report(outputs: _Outputs, params: Params | None) -> Figures:
    figures: Figures = {}
    for name, values in outputs.json(ReportOutputs.at(outputs.root).metrics).items():
        for variant, value in (values.items() if isinstance(values, dict) else ()):
            if variant in VARIANTS and _is_number(value):
                figures[f"{variant}/{name}"] = float(value)
    return figures


def _from_training(outputs: _Outputs, params: Params | None) -> Figures:
    figures: Figures = {}
    for variant in VARIANTS:
        if params is not None:
            paths = [TrainOutputs.of(outputs.root, key).metrics for key in model_keys(params.train.seeds)
                     if key.variant == variant]
        else:  # no valid params file: whatever seeds are there
            paths = sorted(TrainOutputs.of(outputs.root, ModelKey(variant, 0)).metrics.parent.glob("seed*.json"))
        values = [value for path in paths if _is_number(value := outputs.json(path).get("val_auc"))]
        if values:
            figures[f"{variant}/val_auc"] = _mean(values)
    return figures


def _from_sweep(outputs: _Outputs, params: Params | None) -> Figures:
    sweep = outputs.typed(SweepOutputs.at(outputs.root).metrics, SweepMetrics.load)
    if sweep is None:
        return {}
    try:
        attacks, metric = score_plan(params.report.select_by if params else "pgd_accuracy", sweep.attacks)
    except NothingToScore:  # a sweep without attacks
        attacks, metric = [], "accuracy"
    figures: Figures = {"robustness_by": f"{'+'.join(attacks)} {score_name(metric)}"} if attacks else {}
    for variant in VARIANTS:
        keys = [key for key in sweep.models if key.variant == variant]
        clean = [entry for entry in sweep.entries if entry.model in keys and entry.attack == CLEAN]
        if clean:
            figures[f"{variant}/clean_accuracy"] = _mean([e.accuracy for e in clean])
            figures[f"{variant}/clean_auc"] = _mean([e.auc for e in clean])
        scores = [curve_score(oriented(sweep_curves(sweep, key, attacks, metric), metric), attacks) for key in keys]
        if attacks and scores:
            figures[f"{variant}/robustness"] = _mean(scores)
    return figures


def _from_cam(outputs: _Outputs, params: Params | None) -> Figures:
    cam = outputs.typed(CamOutputs.at(outputs.root).metrics, CamMetrics.load)
    if cam is None:
        return {}
    figures: Figures = {}
    for variant in VARIANTS:
        stability = [e.mean for e in cam.entries
                     if e.model.variant == variant and e.measure == "stability" and e.eps > 0 and _is_number(e.mean)]
        if stability:
            figures[f"{variant}/iinc_stability"] = _mean(stability)
    return figures


def _from_verdict(outputs: _Outputs, params: Params | None) -> Figures:
    decision = outputs.json(ReportOutputs.at(outputs.root).verdict).get("decision")
    champion = decision.get("champion") if isinstance(decision, dict) else None
    return {"champion": champion} if isinstance(champion, str) else {}


def _params(root: Path) -> Params | None:
    try:
        return load_params(root / DEFAULT_PARAMS)
    except (ConfigError, OSError, ValueError):
        return None


def _is_number(value: Any) -> bool:
    return finite_number(value) is not None


def _mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values))
