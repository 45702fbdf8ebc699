"""DVC stage `attack_sweep`: models/* + test split -> metrics/attack_sweep.json,
plots/attack_sweep.csv, eval/attack_predictions.npz, curves in each model's MLflow run."""

from __future__ import annotations

from robust_deepfake.cli_common import fail, stage_params
from robust_deepfake.sweep_job import attack_sweep, format_table
from robust_deepfake.tracking import find_repo_root


def main() -> None:
    params = stage_params(__doc__)
    try:
        compact, _ = attack_sweep(params, find_repo_root())
    except FileNotFoundError as error:
        fail(str(error))
    print(format_table(compact))


if __name__ == "__main__":
    main()
