"""One training job: the body of the train_baseline@<seed> / train_reg@<seed> stages."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from robust_deepfake.config import ConfigError, Params, RegConfig
from robust_deepfake.data.dataset import ImageSet, load_split
from robust_deepfake.explain.layers import require_target_layer
from robust_deepfake.io import write_csv, write_json
from robust_deepfake.model.detector import Detector, build_detector, save_weights
from robust_deepfake.model.device import seed_everything
from robust_deepfake.model.training import FitResult, fit, predict_logits
from robust_deepfake.paths import CHECKPOINT_DIR, ModelKey, TrainOutputs, run_record_path
from robust_deepfake.pipeline.preamble import open_stage
from robust_deepfake.tracking.tracker import TrainingTracker

TIMING = ("seconds", "images_per_s")  # machine-dependent: MLflow and the run record, not DVC outs


def detector_config(params: Params) -> dict:
    """What it takes to rebuild the network from its state dict (saved with every model)."""
    return {
        "model": params.model.model_dump(mode="json"),
        "split_at": params.reg.split_at,
        "image_size": params.data.image_size,
    }


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fingerprint(params: Params, key: ModelKey) -> str:
    """Identity of a training run: a resume checkpoint is only reused when this matches."""
    splits = Path(params.data.splits_dir)
    train = params.train.model_dump(mode="json")
    train.pop("seeds")
    payload = {
        "variant": key.variant,
        "seed": key.seed,
        "model": params.model.model_dump(mode="json"),
        "reg": params.reg.model_dump(mode="json") if key.variant == "reg" else {"split_at": params.reg.split_at},
        "train": train,
        "image_size": params.data.image_size,
        "splits": {name: _file_digest(splits / f"{name}.csv") for name in ("train", "val")},
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def train_images_phrase(n_split: int, max_train_samples: int | None) -> str:
    """How many training images a run uses, and why when that is not the whole split:
    `256 of 1367 train images (train.max_train_samples)`."""
    if max_train_samples is None or max_train_samples >= n_split:
        return f"{n_split} train images"
    return f"{max_train_samples} of {n_split} train images (train.max_train_samples)"


def train_model(params: Params, key: ModelKey, root: Path, tracker: TrainingTracker) -> tuple[FitResult, dict]:
    """Train one variant at one seed and write its outs; `tracker` records the run and
    registers the model. Returns the fit result and the meta.json content (plus this
    machine's run record: timing, MLflow run and version, under `run`)."""
    if key.seed not in params.train.seeds:
        raise ConfigError(f"seed {key.seed} is not in train.seeds {params.train.seeds}: add it there, or train one "
                          "of those")
    # the CAM stage's layer is checked too: refused before hours of training, not after
    device = open_stage(params, tracker, checks=[require_target_layer])
    job = _set_up(params, key, root, device)
    with tracker.training_run(key, job.run_marker):
        result = fit(
            job.model, job.train_set, job.val_set, params.train, job.reg, device, seed=key.seed,
            checkpoint=job.checkpoint, fingerprint=job.identity, on_epoch=tracker.log_epoch,
            num_workers=params.data.num_workers,
        )
        # the epochs before a crash, so that the run holds every epoch
        tracker.log_resumed(result.history[: result.resumed_from] if result.resumed_from else [])
        summary, meta, record = _write_outs(job, result)
        tracker.log_training(job.outputs.plot, result.history, lambda: _val_confusion(job))
        record.update(tracker.register(key, job.outputs, meta["detector"], summary,
                                       {"train": job.n_train, "val": len(job.val_set)}, job.val_set.samples[0].path))
    write_json(job.outputs.meta, meta)
    write_json(run_record_path(root, key), record)
    for leftover in (job.checkpoint, job.run_marker):
        if leftover.exists():
            leftover.unlink()  # only needed to survive a crash; the outs now hold the result
    return result, {**meta, "run": record}


@dataclass(frozen=True)
class _Job:
    """One training, set up: its data, the seeded network, where its outs and resume state go."""

    params: Params
    key: ModelKey
    device: torch.device
    train_set: ImageSet
    val_set: ImageSet
    model: Detector
    outputs: TrainOutputs
    checkpoint: Path  # the resume state; `run_marker` beside it names the MLflow run
    identity: str  # fingerprint(): a checkpoint is only resumed when this matches

    @property
    def reg(self) -> RegConfig | None:
        return self.params.reg if self.key.variant == "reg" else None

    @property
    def n_train(self) -> int:
        return min(len(self.train_set), self.params.train.max_train_samples or len(self.train_set))

    @property
    def run_marker(self) -> Path:
        return self.checkpoint.parent / "mlflow_run.json"


def _set_up(params: Params, key: ModelKey, root: Path, device: torch.device) -> _Job:
    """Load the train and val splits, build the network from `key.seed` and say what will run."""
    data = params.data
    train_set = load_split(data.splits_dir, "train", data.image_size, data.cache_max_mb)
    val_set = load_split(data.splits_dir, "val", data.image_size, data.cache_max_mb)
    seed_everything(key.seed)  # same initial weights for both variants of a seed
    model = build_detector(params.model, params.reg.split_at)
    checkpoint = root / CHECKPOINT_DIR / key.variant / f"seed{key.seed}" / "last.pt"
    job = _Job(params, key, device, train_set, val_set, model, TrainOutputs.of(root, key), checkpoint,
               fingerprint(params, key))
    reg = job.reg
    print(
        f"train {key.name}: {train_images_phrase(len(train_set), params.train.max_train_samples)} / "
        f"{len(val_set)} val images at {data.image_size} px "
        f"on {device}, {params.train.num_threads} thread(s)"
        + (f", reg mode={reg.mode} alpha={reg.alpha} epsilon={reg.epsilon} ({reg.epsilon_scale})" if reg else ""),
        flush=True,
    )
    return job


def _write_outs(job: _Job, result: FitResult) -> tuple[dict, dict, dict]:
    """Weights, best-epoch metrics and the per-epoch CSV; returns the summary, meta.json's
    content (written once the run is closed) and this machine's run record."""
    save_weights(job.model, job.outputs.weights)
    summary = _summary(result)
    # meta.json is a DVC out: only what the params and data determine (same bytes on a rerun)
    meta = {
        "variant": job.key.variant,
        "seed": job.key.seed,
        "fingerprint": job.identity,
        "best_epoch": result.best_epoch + 1,  # 1-based, as in the logs and the report
        "epochs_run": len(result.history),
        "stopped_early": result.stopped_early,
        "class_weights": result.class_weights,
        "num_threads": job.params.train.num_threads,
        "detector": detector_config(job.params),
        "reg": job.params.reg.model_dump(mode="json") if job.reg else None,
    }
    record = {"timing": _timing(result), "resumed_from_epoch": result.resumed_from}
    write_json(job.outputs.metrics, summary)
    columns = [c for c in result.history[0] if c not in TIMING]
    # epochs are 1-based for people (logs, CSV, meta.json, MLflow steps); 0-based in FitResult
    write_csv(job.outputs.plot, columns, ({c: (r[c] + 1 if c == "epoch" else r[c]) for c in columns}
                                          for r in result.history))
    return summary, meta, record


def _val_confusion(job: _Job) -> dict:
    """The validation confusion matrix of the saved weights at p(fake) >= 0.5 (rows: true
    real/fake, columns: predicted), for the training run's artifacts."""
    logits, labels = predict_logits(job.model, job.val_set, job.params.train.batch_size, job.device,
                                    num_workers=job.params.data.num_workers)
    predicted = (logits[:, 1] >= logits[:, 0]).astype(int)  # p(fake) >= 0.5, as metrics.py
    matrix = [[int(np.sum((labels == t) & (predicted == q))) for q in (0, 1)] for t in (0, 1)]
    return {"threshold": 0.5, "labels": ["real", "fake"], "matrix": matrix}


def _summary(result: FitResult) -> dict:
    best = result.best
    summary = {
        "best_epoch": result.best_epoch + 1,
        "val_accuracy": best["val_accuracy"],
        "val_f1": best["val_f1"],
        "val_auc": best["val_auc"],
        "val_loss": best["val_loss"],
        "train_loss": best["train_loss"],
        "epochs_run": len(result.history),
    }
    if "train_loss_gap" in best and best["train_loss_gap"] == best["train_loss_gap"]:  # not NaN: regularized
        summary["train_loss_gap"] = best["train_loss_gap"]
        summary["train_perturbation_relative"] = best["train_perturbation_relative"]
    return summary


def _timing(result: FitResult) -> dict:
    seconds = sum(r["seconds"] for r in result.history)
    images = sum(r["images_per_s"] * r["seconds"] for r in result.history)
    return {"seconds": round(seconds, 1), "images_per_s": round(images / max(seconds, 1e-9), 1)}
