"""DVC stages `train_baseline` / `train_reg`: splits -> models/<variant>/{model.pt,meta.json},
metrics/train_<variant>.json, plots/train_<variant>.csv, an MLflow run and a registered version."""

from __future__ import annotations

import argparse

from robust_deepfake.cli_common import fail
from robust_deepfake.config import load_params_or_exit
from robust_deepfake.models import WeightsUnavailableError
from robust_deepfake.tracking import find_repo_root
from robust_deepfake.train_job import VARIANTS, train_variant


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--variant", choices=VARIANTS, required=True)
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()
    params = load_params_or_exit(args.params)
    try:
        _, meta = train_variant(params, args.variant, find_repo_root())
    except (WeightsUnavailableError, FileNotFoundError, RuntimeError) as error:
        fail(str(error))
    print(
        f"train_{args.variant}: best epoch {meta['best_epoch'] + 1}, registered "
        f"{meta.get('registered_model')} version {meta.get('registered_version')} "
        f"(alias @{args.variant})"
    )


if __name__ == "__main__":
    main()
