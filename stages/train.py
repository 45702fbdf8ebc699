"""DVC stages `train_baseline`, `train_placebo`, `train_reg`: splits -> for every seed k
of train.seeds, models/<variant>/seed<k>/{model.pt,meta.json}, metrics/train_<variant>/seed<k>.json,
plots/train_<variant>/seed<k>.csv, an MLflow run and a registered version; train.workers
trainings at a time."""

from __future__ import annotations

import argparse

from robust_deepfake.paths import VARIANTS, find_repo_root
from robust_deepfake.pipeline.train import train_variant
from robust_deepfake.stage_kit import run_stage_script
from robust_deepfake.tracking.register import MlflowTrainingTracker


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--variant", choices=VARIANTS, required=True, help="which variant to train (every seed)")


def _summary(metas: list[dict]) -> str:
    versions = [str(meta["run"].get("registered_version")) for meta in metas if meta["run"].get("registered_version")]
    best = ", ".join(f"seed{meta['seed']} epoch {meta['best_epoch']}" for meta in metas)
    registered = (f"; registered {metas[0]['run'].get('registered_model')} versions {', '.join(versions)}"
                  if versions else "")
    return f"train_{metas[0]['variant']}: {len(metas)} model(s), best {best}{registered}"


def main() -> None:
    root = find_repo_root()
    run_stage_script(__doc__, lambda params, args: train_variant(params, args.variant, root,
                                                                 MlflowTrainingTracker(params, root)),
                     _summary, arguments=_arguments)


if __name__ == "__main__":
    main()
