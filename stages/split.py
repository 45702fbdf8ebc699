"""DVC stage `split`: data/raw -> data/splits/{train,val,test}.csv + metrics/split.json."""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path

from robust_deepfake.cli_common import fail
from robust_deepfake.config import load_params_or_exit
from robust_deepfake.data.dataset import SPLIT_COLUMNS
from robust_deepfake.data.layout import SPLITS, LayoutError
from robust_deepfake.data.split import BadDataError, SplitError, build_splits
from robust_deepfake.io import write_csv, write_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--metrics", default="metrics/split.json")
    args = parser.parse_args()
    params = load_params_or_exit(args.params)

    try:
        outcome = build_splits(params.data.raw_dir, params.split, params.data.on_bad_file)
    except (LayoutError, SplitError, BadDataError) as error:
        fail(str(error))

    splits_dir = Path(params.data.splits_dir)
    for split in SPLITS:
        rows = [
            {key: value for key, value in asdict(record).items() if key in SPLIT_COLUMNS}
            for record in outcome.result.assignment[split]
        ]
        write_csv(splits_dir / f"{split}.csv", SPLIT_COLUMNS, rows)
    metrics = outcome.metrics(params.split.holdout_methods)
    write_json(args.metrics, metrics)
    summary = ", ".join(f"{s} {metrics[s]['total']}" for s in SPLITS)
    skipped = f"; skipped {len(outcome.bad_files)} bad file(s)" if outcome.bad_files else ""
    print(f"split: {summary}{skipped}")


if __name__ == "__main__":
    main()
