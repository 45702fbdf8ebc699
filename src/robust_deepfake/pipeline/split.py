"""The body of the split stage: data/raw -> data/splits/{train,val,test}.csv and
metrics/split.json (identity-disjoint, source-stratified; see data/split.py), after
checking that data/raw is data someone accepted (the data guard, data/materialize.py)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from robust_deepfake.config import Params
from robust_deepfake.data.dataset import SPLIT_COLUMNS
from robust_deepfake.data.layout import SPLITS
from robust_deepfake.data.materialize import DVC_FILE, check_data_accepted
from robust_deepfake.data.split import build_splits
from robust_deepfake.io import write_csv, write_json
from robust_deepfake.paths import SplitOutputs


def split(params: Params, root: Path) -> dict:
    """Write the three split CSVs and the split metrics; returns the metrics.

    First of all, the data guard: data/raw must be what data.dvc records at git HEAD, or
    what `robust-deepfake data track` accepted (materialize.check_data_accepted); `dvc
    repro` re-records data.dvc by itself before this runs, so it cannot tell."""
    note = check_data_accepted(root / params.data.raw_dir, root / DVC_FILE)
    if note:
        print(note)
    outcome = build_splits(params.data.raw_dir, params.split, params.data.on_bad_file,
                           min_image_size=params.data.min_image_size)
    outputs = SplitOutputs.at(root, params.data.splits_dir)
    for name in SPLITS:
        rows = [
            {key: value for key, value in asdict(record).items() if key in SPLIT_COLUMNS}
            for record in outcome.result.assignment[name]
        ]
        write_csv(outputs.splits_dir / f"{name}.csv", SPLIT_COLUMNS, rows)
    metrics = outcome.metrics(params.split.holdout_methods)
    write_json(outputs.metrics, metrics)
    n_train, cap = metrics["train"]["total"], params.train.max_train_samples
    if cap is not None and cap < n_train:
        # the summary line counts the split; training itself sees fewer
        print(f"note: each training run uses {cap} of these {n_train} train images (train.max_train_samples)")
    return metrics


def format_summary(metrics: dict) -> str:
    summary = ", ".join(f"{name} {metrics[name]['total']}" for name in SPLITS)
    notes = [f"skipped {n} {what}" for n, what in (
        (metrics.get("skipped_bad_files", 0), "bad file(s)"),
        (metrics.get("skipped_small_images", 0), f"image(s) under {metrics.get('min_image_size')} px"),
        ((metrics.get("exact_duplicates") or {}).get("dropped", 0), "duplicate file(s)")) if n]
    near = sum(((metrics.get("near_duplicates") or {}).get("across_splits") or {}).values())
    if near:
        notes.append(f"{near} near-duplicate pair(s) across splits (metrics/split.json lists examples)")
    return f"split: {summary}" + ("; " + "; ".join(notes) if notes else "")
