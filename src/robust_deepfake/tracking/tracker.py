"""The seam between a stage body and MLflow: the body computes and writes its outs, and
hands what MLflow should record to a tracker.

`MlflowTracker` records to the store params.yaml's `tracking` names; `NullTracker`
records nothing (tests and benchmarks run the bodies with it). The train
stages use `register.MlflowTrainingTracker`, which also registers the trained model: the
only tracker that reaches the serving code, so no other stage depends on it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from robust_deepfake.config import Params
from robust_deepfake.paths import ModelKey, TrainOutputs
from robust_deepfake.tracking.registry import alias_variant, publish_report
from robust_deepfake.tracking.runs import close_dead_trainings, log_eps_curves
from robust_deepfake.tracking.store import require_store


class Tracker(Protocol):
    """What any stage records."""

    def require(self) -> None:
        """Fail now, in one line (StageError), when records cannot be written later."""

    def log_eps_curves(self, keys: Sequence[ModelKey], rows: list[dict], prefix: str) -> None:
        """Metric-vs-eps curves on each model's training run (runs.log_eps_curves)."""

    def alias_variant(self, alias: str) -> str | None:
        """The variant the registered model's `alias` points at; None when unknown."""

    def publish_report(self, decision: Any, outputs: Any, cards: dict[ModelKey, str]) -> dict:
        """The report run, the versions' tags and cards, the aliases (registry.publish_report)."""


class TrainingRun(Protocol):
    """One training's record, open from its first epoch to its registration."""

    def log_epoch(self, record: dict) -> None: ...

    def log_resumed(self, records: list[dict]) -> None:
        """The epochs a resumed training ran before it was killed."""

    def log_training(self, history_csv: Path, history: list[dict], confusion: dict) -> None:
        """Per-epoch history and the validation confusion matrix."""

    def register(self, outputs: TrainOutputs, detector_config: dict, summary: dict, data: dict,
                 example_image: Path) -> dict:
        """Register the trained weights; returns this machine's run record entries."""

    def close(self, status: str) -> None:
        """End the record: FINISHED, FAILED, or KILLED (stopped because another training failed)."""


class TrainingTracker(Tracker, Protocol):
    """What the train stages record: one TrainingRun per training; several may be open at once."""

    def open_training(self, key: ModelKey, marker: Path) -> TrainingRun:
        """Start `key`'s record; `marker` (beside the resume checkpoint) names it, so a
        training killed mid-run is closed when it resumes."""


class NullTrainingRun:
    """Records nothing."""

    def log_epoch(self, record: dict) -> None:
        pass

    def log_resumed(self, records: list[dict]) -> None:
        pass

    def log_training(self, history_csv: Path, history: list[dict], confusion: dict) -> None:
        pass

    def register(self, outputs: TrainOutputs, detector_config: dict, summary: dict, data: dict,
                 example_image: Path) -> dict:
        return {}

    def close(self, status: str) -> None:
        pass


class NullTracker:
    """Records nothing; every stage body runs the same without a store."""

    def require(self) -> None:
        pass

    def log_eps_curves(self, keys: Sequence[ModelKey], rows: list[dict], prefix: str) -> None:
        pass

    def alias_variant(self, alias: str) -> str | None:
        return None

    def publish_report(self, decision: Any, outputs: Any, cards: dict[ModelKey, str]) -> dict:
        return {}

    def open_training(self, key: ModelKey, marker: Path) -> TrainingRun:
        return NullTrainingRun()


class MlflowTracker:
    """Records to the MLflow store of `params.tracking` (store.tracking_uri) for the
    repository at `root`."""

    def __init__(self, params: Params, root: Path) -> None:
        self.params = params
        self.root = Path(root)

    def require(self) -> None:
        """The store check; then, with the store configured, closes what killed trainings
        left behind (runs.close_dead_trainings: every stage passes here first)."""
        require_store(self.params.tracking, self.root)
        for note in close_dead_trainings(self.root):
            print(f"note: {note}", flush=True)

    def log_eps_curves(self, keys: Sequence[ModelKey], rows: list[dict], prefix: str) -> None:
        log_eps_curves(self.params, self.root, list(keys), rows, prefix)

    def alias_variant(self, alias: str) -> str | None:
        return alias_variant(self.params, self.root, alias)

    def publish_report(self, decision: Any, outputs: Any, cards: dict[ModelKey, str]) -> dict:
        return publish_report(self.params, self.root, decision, outputs, cards)
