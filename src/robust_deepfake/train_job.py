"""One training job (the body of the train_baseline / train_reg stages)."""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path


from robust_deepfake.config import Params
from robust_deepfake.data.dataset import load_split
from robust_deepfake.io import write_csv, write_json
from robust_deepfake.models import build_detector, resolve_device, save_weights
from robust_deepfake.training import FitResult, fit, seed_everything

VARIANTS = ("baseline", "reg")
CHECKPOINT_DIR = Path(".cache") / "checkpoints"


@dataclass(frozen=True)
class TrainOutputs:
    model_dir: Path
    metrics: Path
    plot: Path

    @classmethod
    def for_variant(cls, root: Path, variant: str) -> TrainOutputs:
        return cls(root / "models" / variant, root / "metrics" / f"train_{variant}.json",
                   root / "plots" / f"train_{variant}.csv")


def detector_config(params: Params) -> dict:
    """What it takes to rebuild the network from its state dict (saved with every model)."""
    return {
        "model": params.model.model_dump(mode="json"),
        "split_at": params.reg.split_at,
        "image_size": params.data.image_size,
    }


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fingerprint(params: Params, variant: str) -> str:
    """Identity of a training run: a resume checkpoint is only reused when this matches."""
    splits = Path(params.data.splits_dir)
    payload = {
        "variant": variant,
        "model": params.model.model_dump(mode="json"),
        "reg": params.reg.model_dump(mode="json") if variant == "reg" else {"split_at": params.reg.split_at},
        "train": params.train.model_dump(mode="json"),
        "image_size": params.data.image_size,
        "splits": {name: _file_digest(splits / f"{name}.csv") for name in ("train", "val")},
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def train_variant(params: Params, variant: str, root: Path, track: bool = True) -> tuple[FitResult, dict]:
    """Train one variant, write its outs, log and register it in MLflow. Returns the fit
    result and the meta.json content."""
    import mlflow

    from robust_deepfake import tracking

    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    device = resolve_device(params.train.device)
    data = params.data
    train_set = load_split(data.splits_dir, "train", data.image_size, data.cache_max_mb)
    val_set = load_split(data.splits_dir, "val", data.image_size, data.cache_max_mb)
    seed_everything(params.train.seed)  # same initial weights for both variants
    model = build_detector(params.model, params.reg.split_at)
    reg = params.reg if variant == "reg" else None
    outputs = TrainOutputs.for_variant(root, variant)
    checkpoint = root / CHECKPOINT_DIR / variant / "last.pt"
    print(
        f"train_{variant}: {len(train_set)} train / {len(val_set)} val images at {data.image_size} px "
        f"on {device}" + (f", reg mode={reg.mode} alpha={reg.alpha} epsilon={reg.epsilon}" if reg else ""),
        flush=True,
    )

    run_context = tracking.training_run(params, variant, root) if track else contextlib.nullcontext()
    with run_context as run:
        def log_epoch(record: dict) -> None:
            if track:
                mlflow.log_metrics(tracking.finite_metrics(record), step=int(record["epoch"]))

        result = fit(
            model, train_set, val_set, params.train, reg, device,
            checkpoint=checkpoint, fingerprint=fingerprint(params, variant), on_epoch=log_epoch,
        )
        weights_path = outputs.model_dir / "model.pt"
        save_weights(model, weights_path)
        summary = _summary(result)
        meta = {
            "variant": variant,
            "fingerprint": fingerprint(params, variant),
            "best_epoch": result.best_epoch,
            "epochs_run": len(result.history),
            "stopped_early": result.stopped_early,
            "resumed_from_epoch": result.resumed_from,
            "class_weights": result.class_weights,
            "timing": _timing(result),
            "detector": detector_config(params),
            "reg": params.reg.model_dump(mode="json") if reg else None,
        }
        if track:
            mlflow.log_metrics({f"best_{k}": v for k, v in tracking.finite_metrics(summary).items()})
            version = tracking.log_and_register_detector(
                weights_path, detector_config(params), params.tracking.registered_model, variant,
                version_tags={"reg_mode": meta["reg"]["mode"] if reg else "none",
                              "mlflow_run_id": run.info.run_id},
            )
            meta.update(
                mlflow_run_id=run.info.run_id,
                tracking_uri=mlflow.get_tracking_uri(),
                registered_model=params.tracking.registered_model,
                registered_version=version,
                git_commit=tracking.git_commit(root),
            )
    write_json(outputs.model_dir / "meta.json", meta)
    write_json(outputs.metrics, summary)
    columns = [c for c in result.history[0] if c not in TIMING]
    write_csv(outputs.plot, columns, ({c: r[c] for c in columns} for r in result.history))
    if checkpoint.exists():
        checkpoint.unlink()  # only needed to survive a crash; the outs now hold the result
    return result, meta


def _summary(result: FitResult) -> dict:
    best = result.best
    return {
        "best_epoch": result.best_epoch,
        "val_accuracy": best["val_accuracy"],
        "val_f1": best["val_f1"],
        "val_auc": best["val_auc"],
        "val_loss": best["val_loss"],
        "train_loss": best["train_loss"],
        "epochs_run": len(result.history),
    }


TIMING = ("seconds", "images_per_s")  # machine-dependent: MLflow and meta.json, not DVC metrics


def _timing(result: FitResult) -> dict:
    seconds = sum(r["seconds"] for r in result.history)
    images = sum(r["images_per_s"] * r["seconds"] for r in result.history)
    return {"seconds": round(seconds, 1), "images_per_s": round(images / max(seconds, 1e-9), 1)}
