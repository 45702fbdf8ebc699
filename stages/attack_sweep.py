"""DVC stage `attack_sweep`: every trained model + the test split -> eval/attack_sweep.json,
eval/attack_predictions.npz, plots/attack_sweep.csv, curves in each model's MLflow run."""

from __future__ import annotations

from robust_deepfake.paths import find_repo_root
from robust_deepfake.pipeline.attack_sweep import attack_sweep, format_table
from robust_deepfake.stage_kit import run_stage_script
from robust_deepfake.tracking.tracker import MlflowTracker


def main() -> None:
    root = find_repo_root()
    run_stage_script(__doc__, lambda params: attack_sweep(params, root, MlflowTracker(params, root)), format_table)


if __name__ == "__main__":
    main()
