"""DVC stages `train_baseline@<seed>` / `train_reg@<seed>`: splits ->
models/<variant>/seed<k>/{model.pt,meta.json}, metrics/train_<variant>/seed<k>.json,
plots/train_<variant>/seed<k>.csv, an MLflow run and a registered version."""

from __future__ import annotations

import argparse

from robust_deepfake.paths import VARIANTS, ModelKey, find_repo_root
from robust_deepfake.pipeline.train import train_model
from robust_deepfake.stage_kit import run_stage_script
from robust_deepfake.tracking.register import MlflowTrainingTracker


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--variant", choices=VARIANTS, required=True, help="which model to train")
    parser.add_argument("--seed", type=int, required=True, help="training seed (one of train.seeds)")


def _summary(result) -> str:
    _, meta = result
    return (f"train {meta['variant']}-seed{meta['seed']}: best epoch {meta['best_epoch']}, registered "
            f"{meta['run'].get('registered_model')} version {meta['run'].get('registered_version')}")


def main() -> None:
    root = find_repo_root()
    run_stage_script(__doc__, lambda params, args: train_model(params, ModelKey(args.variant, args.seed), root,
                                                               MlflowTrainingTracker(params, root)),
                     _summary, arguments=_arguments)


if __name__ == "__main__":
    main()
