"""The body of the stages train_baseline, train_placebo and train_reg: every seed of
train.seeds of one variant, `train.workers` at a time (pipeline/train_pool.py).

A training (`train_seed`, run in a worker process or here) sets up its data and seeded
network, fits, writes its weights, metrics and history, and reports its epochs and outcome;
this process records them (`_Recorder`: the MLflow run opened when the training starts,
its epochs as they come, the registered version) and then writes meta.json and the run
record. The resume checkpoints stay until every seed of the stage is done, so a stage
that failed or was killed resumes each unfinished seed and restores each finished one
from its last checkpoint instead of training it again.""" 

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from robust_deepfake.config import ConfigError, Params, RegConfig
from robust_deepfake.data.dataset import ImageSet, load_split
from robust_deepfake.errors import StageError
from robust_deepfake.explain.layers import require_target_layer
from robust_deepfake.io import write_csv, write_json
from robust_deepfake.model.detector import Detector, build_detector, save_weights
from robust_deepfake.model.device import seed_everything
from robust_deepfake.model.training import FitResult, fit, predict_logits
from robust_deepfake.model.variants import training_reg
from robust_deepfake.paths import RUN_MARKER, ModelKey, TrainOutputs, resume_checkpoint, run_record_path
from robust_deepfake.pipeline.preamble import open_stage
from robust_deepfake.pipeline.train_pool import Emit, Job, PoolFailure, run_jobs, worker_devices
from robust_deepfake.tracking.tracker import TrainingRun, TrainingTracker

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
        "reg": _recipe(params, key.variant),
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


def _recipe(params: Params, variant: str) -> dict:
    """The regularizer settings `variant` trains with, as they go into its fingerprint:
    only the split for the baseline (no reg.alpha / reg.epsilon), no epsilon for the placebo."""
    recipe = training_reg(params.reg, variant)
    return recipe.model_dump(mode="json") if recipe is not None else {"split_at": params.reg.split_at}


def train_variant(params: Params, variant: str, root: Path, tracker: TrainingTracker) -> list[dict]:
    """Train every seed of train.seeds of `variant`, train.workers at a time, and write
    their outs; `tracker` records each run and registers each model. Returns each model's
    meta.json content plus this machine's run record (under `run`), in seed order.
    A failure stops every training: the one-line error names the seed, open runs are
    closed (FAILED, the others KILLED) and the seeds' outs are removed."""
    keys = [ModelKey(variant, seed) for seed in params.train.seeds]
    # the CAM stage's layer is checked too: refused before hours of training, not after
    device = open_stage(params, tracker, params.train.num_threads, checks=[require_target_layer])
    devices = worker_devices(device, params.train.device, params.train.workers, len(keys))
    print(f"train_{variant}: {len(keys)} model(s) (seeds {', '.join(map(str, params.train.seeds))}), "
          f"{len(devices)} at a time, {params.train.num_threads} thread(s) each, on {', '.join(sorted(set(devices)))}",
          flush=True)
    recorder = _Recorder(root, tracker)
    _run_recorded(recorder, [Job(key, params, root) for key in keys], devices, params, f"train_{variant}")
    for key in keys:
        _discard_resume_state(root, key)
    return [recorder.finished[key] for key in keys]


def train_model(params: Params, key: ModelKey, root: Path, tracker: TrainingTracker) -> tuple[FitResult, dict]:
    """Train one model in this process (tests, benchmarks): what train_variant does for
    one seed. Returns the fit result and the meta.json content plus the run record (`run`)."""
    if key.seed not in params.train.seeds:
        raise ConfigError(f"seed {key.seed} is not in train.seeds {params.train.seeds}: add it there, or train one "
                          "of those")
    device = open_stage(params, tracker, params.train.num_threads, checks=[require_target_layer])
    recorder = _Recorder(root, tracker)
    results: list[FitResult] = []

    def work(job: Job, where: torch.device, emit: Emit) -> None:
        results.append(train_seed(job, where, emit))

    try:
        _run_recorded(recorder, [Job(key, params, root)], [str(device)], params, f"train_{key.variant}", work)
    except PoolFailure as failure:
        raise StageError(str(failure)) from None
    _discard_resume_state(root, key)
    return results[0], recorder.finished[key]


def _run_recorded(recorder: _Recorder, jobs: list[Job], devices: list[str], params: Params, title: str,
                  work=None) -> None:
    """run_jobs with `recorder` handling the events; on any failure the open runs are
    closed and the jobs' outs removed before the error goes on."""
    try:
        run_jobs(jobs, work or train_seed, devices, params.train.num_threads, recorder, title)
    except BaseException as error:
        failed = error.key if isinstance(error, PoolFailure) else None
        recorder.close_open(failed)
        for job in jobs:
            _remove_outs(TrainOutputs.of(job.root, job.key))
        raise


def train_seed(job: Job, device: torch.device, emit: Emit) -> FitResult:
    """One training (in a worker process or this one): set up, fit from the resume
    checkpoint when one matches, write the weights, metrics and history; reports `start`,
    each `epoch` record and `done` (a SeedOutcome) through `emit`."""
    params, key = job.params, job.key
    setup = _set_up(params, key, job.root, device)
    emit("start", key, None)
    result = fit(
        setup.model, setup.train_set, setup.val_set, params.train, setup.reg, device, seed=key.seed,
        checkpoint=setup.checkpoint, fingerprint=setup.identity, on_epoch=lambda record: emit("epoch", key, record),
        num_workers=params.data.num_workers,
    )
    emit("done", key, _write_outs(setup, result))
    return result


@dataclass(frozen=True)
class SeedOutcome:
    """What a finished training hands the recording process (plain data: it crosses processes)."""

    history: list[dict]
    resumed_from: int | None
    summary: dict  # metrics/train_<variant>/seed<k>.json
    meta: dict  # meta.json, written once the run is recorded
    record: dict  # this machine's run record (timing, resume)
    confusion: dict  # validation confusion matrix, for the run's artifacts
    data: dict  # image counts {"train": n, "val": n}
    example_image: Path


class _Recorder:
    """The recording side of a stage (this process only: one writer to the MLflow store):
    a run per training from its `start`, its epochs as they arrive, and at `done` the
    artifacts, the registered version, meta.json and the run record."""

    def __init__(self, root: Path, tracker: TrainingTracker) -> None:
        self.root, self.tracker = root, tracker
        self.runs: dict[ModelKey, TrainingRun] = {}
        self.finished: dict[ModelKey, dict] = {}

    def __call__(self, kind: str, key: ModelKey, payload) -> None:
        if kind == "start":
            self.runs[key] = self.tracker.open_training(key, _run_marker(self.root, key))
        elif kind == "epoch":
            self.runs[key].log_epoch(payload)
        elif kind == "done":
            self.finished[key] = self._finish(key, payload)

    def _finish(self, key: ModelKey, outcome: SeedOutcome) -> dict:
        run, outputs = self.runs[key], TrainOutputs.of(self.root, key)
        # the epochs before a crash, so that the run holds every epoch
        run.log_resumed(outcome.history[: outcome.resumed_from] if outcome.resumed_from else [])
        run.log_training(outputs.plot, outcome.history, outcome.confusion)
        record = {**outcome.record, **run.register(outputs, outcome.meta["detector"], outcome.summary, outcome.data,
                                                     outcome.example_image)}
        run.close("FINISHED")
        del self.runs[key]
        write_json(outputs.meta, outcome.meta)
        write_json(run_record_path(self.root, key), record)
        _run_marker(self.root, key).unlink(missing_ok=True)  # the run is closed: nothing to take over
        return {**outcome.meta, "run": record}

    def close_open(self, failed: ModelKey | None) -> None:
        """Close every open run after a failure: the failed training's FAILED, the ones it
        stopped KILLED (their checkpoints resume them next time)."""
        for key, run in list(self.runs.items()):
            with contextlib.suppress(Exception):  # the failure being reported matters more
                run.close("FAILED" if key == failed else "KILLED")
            del self.runs[key]


def _run_marker(root: Path, key: ModelKey) -> Path:
    """Beside the resume checkpoint: the MLflow run of the training in progress."""
    return resume_checkpoint(root, key).parent / RUN_MARKER


def _discard_resume_state(root: Path, key: ModelKey) -> None:
    """Once the stage's every training is done, its resume state has served."""
    for leftover in (resume_checkpoint(root, key), _run_marker(root, key)):
        leftover.unlink(missing_ok=True)


def _remove_outs(outputs: TrainOutputs) -> None:
    """A failed stage leaves no half-written model: its trainings' outs go."""
    shutil.rmtree(outputs.model_dir, ignore_errors=True)
    for path in (outputs.metrics, outputs.plot):
        path.unlink(missing_ok=True)


@dataclass(frozen=True)
class _Setup:
    """One training, set up: its data, the seeded network, where its outs and resume state go."""

    params: Params
    key: ModelKey
    device: torch.device
    train_set: ImageSet
    val_set: ImageSet
    model: Detector
    outputs: TrainOutputs
    checkpoint: Path
    identity: str  # fingerprint(): a checkpoint is only resumed when this matches

    @property
    def reg(self) -> RegConfig | None:
        return training_reg(self.params.reg, self.key.variant)

    @property
    def n_train(self) -> int:
        return min(len(self.train_set), self.params.train.max_train_samples or len(self.train_set))


def _set_up(params: Params, key: ModelKey, root: Path, device: torch.device) -> _Setup:
    """Load the train and val splits, build the network from `key.seed` and say what will run."""
    data = params.data
    train_set = load_split(data.splits_dir, "train", data.image_size, data.cache_max_mb)
    val_set = load_split(data.splits_dir, "val", data.image_size, data.cache_max_mb)
    seed_everything(key.seed)  # same initial weights for every variant of a seed
    model = build_detector(params.model, params.reg.split_at)
    setup = _Setup(params, key, device, train_set, val_set, model, TrainOutputs.of(root, key), resume_checkpoint(root, key),
                   fingerprint(params, key))
    reg = setup.reg
    print(
        f"train {key.name}: {train_images_phrase(len(train_set), params.train.max_train_samples)} / "
        f"{len(val_set)} val images at {data.image_size} px "
        f"on {device}, {params.train.num_threads} thread(s)"
        + (f", placebo alpha={reg.alpha} mode={reg.mode} (no perturbation)" if key.variant == "placebo" else
           f", reg mode={reg.mode} alpha={reg.alpha} epsilon={reg.epsilon} ({reg.epsilon_scale})" if reg else ""),
        flush=True,
    )
    return setup


def _write_outs(setup: _Setup, result: FitResult) -> SeedOutcome:
    """Weights, best-epoch metrics and the per-epoch CSV; returns what the recording side
    needs, meta.json's content included (written once the run is recorded)."""
    save_weights(setup.model, setup.outputs.weights)
    summary = _summary(result)
    # meta.json is a DVC out: only what the params and data determine (same bytes on a rerun)
    meta = {
        "variant": setup.key.variant,
        "seed": setup.key.seed,
        "fingerprint": setup.identity,
        "best_epoch": result.best_epoch + 1,  # 1-based, as in the logs and the report
        "epochs_run": len(result.history),
        "stopped_early": result.stopped_early,
        "class_weights": result.class_weights,
        "num_threads": setup.params.train.num_threads,
        "detector": detector_config(setup.params),
        "reg": setup.reg.model_dump(mode="json") if setup.reg else None,
    }
    write_json(setup.outputs.metrics, summary)
    columns = [c for c in result.history[0] if c not in TIMING]
    # epochs are 1-based for people (logs, CSV, meta.json, MLflow steps); 0-based in FitResult
    write_csv(setup.outputs.plot, columns, ({c: (r[c] + 1 if c == "epoch" else r[c]) for c in columns}
                                            for r in result.history))
    return SeedOutcome(result.history, result.resumed_from, summary, meta,
                       {"timing": _timing(result), "resumed_from_epoch": result.resumed_from},
                       _val_confusion(setup), {"train": setup.n_train, "val": len(setup.val_set)},
                       setup.val_set.samples[0].path)


def _val_confusion(job: _Setup) -> dict:
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
