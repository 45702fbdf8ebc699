"""One training job: the body of the train_baseline@<seed> / train_reg@<seed> stages."""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path

from robust_deepfake.config import Params
from robust_deepfake.data.dataset import load_split
from robust_deepfake.io import write_csv, write_json
from robust_deepfake.model.detector import build_detector, save_weights
from robust_deepfake.model.device import resolve_device, seed_everything, set_threads
from robust_deepfake.model.training import FitResult, fit
from robust_deepfake.paths import CHECKPOINT_DIR, ModelKey, TrainOutputs, run_record_path

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


def train_model(params: Params, key: ModelKey, root: Path, track: bool = True) -> tuple[FitResult, dict]:
    """Train one variant at one seed, write its outs, log and register it in MLflow.
    Returns the fit result and the meta.json content (plus this machine's run record:
    timing, MLflow run and version, under `run`)."""
    if key.seed not in params.train.seeds:
        raise ValueError(f"seed {key.seed} is not in train.seeds {params.train.seeds}")
    from robust_deepfake.explain.layers import require_target_layer

    require_target_layer(params)  # the CAM stage's layer: refused before hours of training, not after
    if track:  # an unreachable or read-only store fails now, not after the training
        from robust_deepfake.tracking.store import require_store

        require_store(params.tracking, root)
    set_threads(params.train.num_threads)
    device = resolve_device(params.train.device)
    data = params.data
    train_set = load_split(data.splits_dir, "train", data.image_size, data.cache_max_mb)
    val_set = load_split(data.splits_dir, "val", data.image_size, data.cache_max_mb)
    seed_everything(key.seed)  # same initial weights for both variants of a seed
    model = build_detector(params.model, params.reg.split_at)
    reg = params.reg if key.variant == "reg" else None
    outputs = TrainOutputs.of(root, key)
    checkpoint = root / CHECKPOINT_DIR / key.variant / f"seed{key.seed}" / "last.pt"
    n_train = min(len(train_set), params.train.max_train_samples or len(train_set))
    print(
        f"train {key.name}: {train_images_phrase(len(train_set), params.train.max_train_samples)} / "
        f"{len(val_set)} val images at {data.image_size} px "
        f"on {device}, {params.train.num_threads} thread(s)"
        + (f", reg mode={reg.mode} alpha={reg.alpha} epsilon={reg.epsilon} ({reg.epsilon_scale})" if reg else ""),
        flush=True,
    )
    identity = fingerprint(params, key)
    config = detector_config(params)
    run_context = _tracking_run(params, key, root) if track else contextlib.nullcontext()
    run_marker = checkpoint.parent / "mlflow_run.json"
    with run_context as run:
        killed = _start_tracked_run(run, run_marker) if track else None
        result = fit(
            model, train_set, val_set, params.train, reg, device, seed=key.seed,
            checkpoint=checkpoint, fingerprint=identity, on_epoch=_epoch_logger(track),
            num_workers=data.num_workers,
        )
        if track and result.resumed_from:  # the epochs before the crash, so this run holds every epoch
            log_epoch = _epoch_logger(True)
            for record in result.history[: result.resumed_from]:
                log_epoch(record)
            if killed:
                import mlflow

                mlflow.set_tag("resumed_from_run", killed)
        save_weights(model, outputs.weights)
        summary = _summary(result)
        # meta.json is a DVC out: only what the params and data determine (same bytes on a rerun)
        meta = {
            "variant": key.variant,
            "seed": key.seed,
            "fingerprint": identity,
            "best_epoch": result.best_epoch + 1,  # 1-based, as in the logs and the report
            "epochs_run": len(result.history),
            "stopped_early": result.stopped_early,
            "class_weights": result.class_weights,
            "num_threads": params.train.num_threads,
            "detector": config,
            "reg": params.reg.model_dump(mode="json") if reg else None,
        }
        record = {"timing": _timing(result), "resumed_from_epoch": result.resumed_from}
        write_json(outputs.metrics, summary)
        columns = [c for c in result.history[0] if c not in TIMING]
        # epochs are 1-based for people (logs, CSV, meta.json, MLflow steps); 0-based in FitResult
        write_csv(outputs.plot, columns, ({c: (r[c] + 1 if c == "epoch" else r[c]) for c in columns}
                                          for r in result.history))
        if track:
            from robust_deepfake.tracking.runs import log_training_artifacts

            log_training_artifacts(outputs.plot, result.history,
                                   _val_confusion(model, val_set, params.train.batch_size, device,
                                                  data.num_workers))
            data_facts = {"train": n_train, "val": len(val_set)}
            record.update(_register(params, key, root, run, outputs, config, summary, reg is not None,
                                    example_image=val_set.samples[0].path, data=data_facts))
    write_json(outputs.meta, meta)
    write_json(run_record_path(root, key), record)
    for leftover in (checkpoint, run_marker):
        if leftover.exists():
            leftover.unlink()  # only needed to survive a crash; the outs now hold the result
    return result, {**meta, "run": record}


def _tracking_run(params: Params, key: ModelKey, root: Path):
    from robust_deepfake.tracking.runs import training_run

    return training_run(params, key, root)


def _start_tracked_run(run, marker: Path) -> str | None:
    """Close the run a killed training left RUNNING (status KILLED, tagged with the run
    that resumes it) and record this run's id beside the resume checkpoint."""
    from mlflow import MlflowClient

    from robust_deepfake.tracking.runs import close_killed_run

    killed = close_killed_run(marker) if marker.exists() else None
    if killed:
        MlflowClient().set_tag(killed, "resumed_in_run", run.info.run_id)
        print(f"note: MLflow run {killed} of the killed training marked KILLED; continuing in {run.info.run_id}")
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"run_id": run.info.run_id}))
    return killed


def _epoch_logger(track: bool):
    if not track:
        return None

    def log_epoch(record: dict) -> None:
        import mlflow

        from robust_deepfake.tracking.runs import finite_metrics

        mlflow.log_metrics(finite_metrics(record), step=int(record["epoch"]) + 1)

    return log_epoch


def _val_confusion(model, val_set, batch_size: int, device, num_workers: int = 0) -> dict:
    """The validation confusion matrix of the saved weights at p(fake) >= 0.5 (rows: true
    real/fake, columns: predicted), for the training run's artifacts."""
    import numpy as np

    from robust_deepfake.model.training import predict_logits

    logits, labels = predict_logits(model, val_set, batch_size, device, num_workers=num_workers)
    predicted = (logits[:, 1] >= logits[:, 0]).astype(int)  # p(fake) >= 0.5, as metrics.py
    matrix = [[int(np.sum((labels == t) & (predicted == q))) for q in (0, 1)] for t in (0, 1)]
    return {"threshold": 0.5, "labels": ["real", "fake"], "matrix": matrix}


def _register(params: Params, key: ModelKey, root: Path, run, outputs: TrainOutputs, config: dict, summary: dict,
              regularized: bool, example_image: Path, data: dict) -> dict:
    import mlflow

    from robust_deepfake.tracking.model_card import training_card
    from robust_deepfake.tracking.provenance import data_md5, run_origin
    from robust_deepfake.tracking.register import log_and_register_detector
    from robust_deepfake.tracking.runs import finite_metrics

    # the summary holds the best epoch's values: best/val_auc etc., beside the per-epoch val_auc curve
    mlflow.log_metrics({(k if k in ("best_epoch", "epochs_run") else f"best/{k}"): v
                        for k, v in finite_metrics(summary).items()})
    origin = run_origin(root)
    card = training_card(params, key, summary, {"md5": data_md5(root), **data},
                         {**origin.tags(), "mlflow run": run.info.run_id})
    version = log_and_register_detector(
        outputs.weights, config, params.tracking.registered_model, key,
        version_tags={"reg_mode": params.reg.mode if regularized else "none", "mlflow_run_id": run.info.run_id},
        example_image=example_image, card=card, root=root,
    )
    return {
        "mlflow_run_id": run.info.run_id,
        "tracking_uri": mlflow.get_tracking_uri(),
        "registered_model": params.tracking.registered_model,
        "registered_version": version,
        "git_commit": origin.git_commit,
    }


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
