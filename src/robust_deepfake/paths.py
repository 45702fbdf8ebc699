"""Where every stage output lives, which model variants exist, and how to read a model's
meta.json: the one owner of the layout that dvc.yaml declares.

A stage, the report or a re-evaluation that needs a path asks this module; a test checks
that these paths agree with dvc.yaml's outs (tests/test_paths.py), so changing a path
means editing this file and dvc.yaml, nothing else. Bottom layer: imports nothing of
the project.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from robust_deepfake.errors import MissingInputError, StageError

# The trained variants, paired by seed (same initial weights, same data order).
# `baseline`: plain cross-entropy. `placebo`: the reg recipe with epsilon 0 (the
# alpha-weighted second pass through the late layers, no perturbation): a control.
# `reg`: with the shallow-statistics regularizer. Each is trained once per seed in
# train.seeds, all seeds of a variant by one stage, train_<variant>.
VARIANTS = ("baseline", "placebo", "reg")
# The variants that may become @champion / @challenger; the others are controls, registered
# and tagged (role=control) but never served.
CANDIDATE_VARIANTS = ("baseline", "reg")
CHECKPOINT_DIR = Path(".cache") / "checkpoints"  # resume state: outside every DVC out
# What one training run did on this machine (timing, MLflow run and version, resume):
# kept out of the DVC outs so that identical weights give identical outs (dvc.lock).
RUNS_DIR = Path(".cache") / "runs"
# The measured dose-response behind the demo's reg.epsilon (benchmarks/dose_response.py);
# the report shows it when present.
DOSE_RESPONSE = Path("benchmarks") / "results" / "dose_response.json"
# The folders every DVC out lives under (tests/test_paths.py checks dvc.yaml against it):
# files a run rewrites there do not make the git tree "dirty" (tracking/provenance.py).
OUT_ROOTS = ("data/splits", "models", "metrics", "plots", "eval", "reports")


def find_repo_root(start: Path | None = None) -> Path:
    """The nearest directory holding dvc.yaml (stages run from there), else cwd."""
    here = (start or Path.cwd()).resolve()
    for candidate in (here, *here.parents):
        if (candidate / "dvc.yaml").exists():
            return candidate
    return here


@dataclass(frozen=True, order=True)
class ModelKey:
    """One trained model: a variant and its training seed."""

    variant: str
    seed: int

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {self.variant!r}")

    @property
    def name(self) -> str:
        """`reg-seed1`: the model's name in logs, MLflow tags and aliases."""
        return f"{self.variant}-seed{self.seed}"


def resume_checkpoint(root: Path, key: ModelKey) -> Path:
    """A training's per-epoch resume state; RUN_MARKER beside it names its MLflow run."""
    return Path(root) / CHECKPOINT_DIR / key.variant / f"seed{key.seed}" / "last.pt"


RUN_MARKER = "mlflow_run.json"


def model_keys(seeds: list[int]) -> list[ModelKey]:
    """Every trained model of a run, variant-major (baseline seeds, placebo seeds, reg seeds)."""
    return [ModelKey(variant, seed) for variant in VARIANTS for seed in seeds]


@dataclass(frozen=True)
class TrainOutputs:
    """One seed's outs of the stage train_<variant> (which trains every seed of the variant;
    its outs are the folders `stage_outs` names)."""

    model_dir: Path
    metrics: Path
    plot: Path

    @property
    def weights(self) -> Path:
        return self.model_dir / "model.pt"

    @property
    def meta(self) -> Path:
        return self.model_dir / "meta.json"

    @classmethod
    def of(cls, root: Path, key: ModelKey) -> TrainOutputs:
        models, metrics, plots = cls.stage_outs(root, key.variant)
        stem = f"seed{key.seed}"
        return cls(models / stem, metrics / f"{stem}.json", plots / f"{stem}.csv")

    @staticmethod
    def stage_outs(root: Path, variant: str) -> tuple[Path, Path, Path]:
        """The out folders of train_<variant>: models/<variant>, metrics/train_<variant>,
        plots/train_<variant>."""
        return root / "models" / variant, root / "metrics" / f"train_{variant}", root / "plots" / f"train_{variant}"


@dataclass(frozen=True)
class ParamsCheckOutputs:
    """The out of check_params: the same bytes for every valid params file (the split
    depends on it, so a valid edit of params.yaml does not re-run the split)."""

    record: Path

    @classmethod
    def at(cls, root: Path) -> ParamsCheckOutputs:
        return cls(root / "metrics" / "params_check.json")


@dataclass(frozen=True)
class SplitOutputs:
    splits_dir: Path
    metrics: Path

    @classmethod
    def at(cls, root: Path, splits_dir: str = "data/splits") -> SplitOutputs:
        return cls(root / splits_dir, root / "metrics" / "split.json")


@dataclass(frozen=True)
class SweepOutputs:
    predictions: Path  # per-sample p(fake), SweepPredictions
    metrics: Path  # per model, attack and eps, SweepMetrics
    plot: Path  # long table for dvc plots and the report
    masking: Path  # the gradient-masking checks per model, MaskingChecks

    @classmethod
    def at(cls, root: Path) -> SweepOutputs:
        return cls(root / "eval" / "attack_predictions.npz", root / "eval" / "attack_sweep.json",
                   root / "plots" / "attack_sweep.csv", root / "eval" / "masking_checks.json")


@dataclass(frozen=True)
class CamOutputs:
    values: Path  # per-sample IINC, IincValues
    metrics: Path  # CamMetrics
    plot: Path
    figures: Path  # cam_<variant>_<attack>.png grids

    @classmethod
    def at(cls, root: Path) -> CamOutputs:
        return cls(root / "eval" / "cam_iinc_values.npz", root / "eval" / "cam_iinc.json",
                   root / "plots" / "iinc.csv", root / "reports" / "cam")


@dataclass(frozen=True)
class ReportOutputs:
    markdown: Path
    html: Path
    figures: Path
    plots: Path  # wide CSVs for dvc plots
    training: Path  # every model's per-epoch curves, one CSV each, for dvc plots
    metrics: Path  # the headline numbers (DVC metrics)
    verdict: Path  # the full verdict table
    machine: Path  # where the headline numbers were produced (committed beside them)

    @classmethod
    def at(cls, root: Path) -> ReportOutputs:
        reports = root / "reports"
        return cls(reports / "report.md", reports / "report.html", reports / "figures",
                   root / "plots" / "robustness", root / "plots" / "training", root / "metrics" / "report.json",
                   root / "eval" / "verdict.json", root / "metrics" / "machine.json")


def relative_to_root(path: str | Path, root: Path) -> str | None:
    """`path` relative to the repository `root` in POSIX form (as dvc.yaml names outs),
    or None outside it."""
    try:
        return Path(path).resolve().relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        return None


def read_json_file(path: Path, what: str = "run `dvc repro` first") -> dict:
    """A JSON output of an upstream stage, or a one-line error that says what to run."""
    if not path.exists():
        raise MissingInputError(f"{path}: missing; {what}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise StageError(f"{path}: not valid JSON ({error})") from None


def run_record_path(root: Path, key: ModelKey) -> Path:
    return root / RUNS_DIR / key.variant / f"seed{key.seed}.json"


def read_run_record(root: Path, key: ModelKey) -> dict:
    """This machine's record of the run that trained `key` ({} when it was not trained
    here, e.g. restored from the DVC cache)."""
    path = run_record_path(root, key)
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
