"""DVC stage `attack_sweep`: models/* + test split -> metrics/attack_sweep.json,
plots/attack_sweep.csv, eval/attack_predictions.npz, curves in each model's MLflow run."""

from __future__ import annotations

import argparse

from robust_deepfake.cli_common import fail
from robust_deepfake.config import load_params_or_exit
from robust_deepfake.sweep_job import attack_sweep, format_table
from robust_deepfake.tracking import find_repo_root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()
    params = load_params_or_exit(args.params)
    try:
        compact, _ = attack_sweep(params, find_repo_root())
    except FileNotFoundError as error:
        fail(str(error))
    print(format_table(compact))


if __name__ == "__main__":
    main()
