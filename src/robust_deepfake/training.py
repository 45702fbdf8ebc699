"""The training loop: class-weighted CE, AdamW + one-cycle LR, early stopping on a
validation metric, best-checkpoint selection and crash-safe resume.

Every epoch reseeds from (train.seed, epoch): shuffling, flips, dropout and random
perturbations of epoch k are the same whether the run started at epoch 0 or resumed at
k from the per-epoch checkpoint, so a killed run that is re-run ends with the same
metrics as an uninterrupted one (tests/test_training.py kills one to check).
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from robust_deepfake.config import RegConfig, TrainConfig
from robust_deepfake.data.dataset import ImageSet, iterate
from robust_deepfake.io import atomic_path
from robust_deepfake.metrics import classification_metrics
from robust_deepfake.progress import progress
from robust_deepfake.regularization import training_step

MAXIMIZE = {"val_auc": True, "val_f1": True, "val_accuracy": True, "val_loss": False}


def class_weights(labels: torch.Tensor, n_classes: int = 2) -> torch.Tensor:
    """N / (K * n_k): each class contributes equally to the loss (DFFD is ~1:5 real:fake)."""
    counts = torch.bincount(labels, minlength=n_classes).double()
    if (counts == 0).any():
        raise ValueError(f"the training split lacks a class (counts {counts.tolist()})")
    return (counts.sum() / (n_classes * counts)).float()


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class Amp:
    """Mixed precision on CUDA: bf16 where supported (no scaler), else fp16 + GradScaler."""

    enabled: bool
    dtype: torch.dtype | None = None
    scaler: torch.amp.GradScaler | None = None

    @classmethod
    def for_device(cls, device: torch.device, wanted: bool) -> Amp:
        if not wanted or device.type != "cuda":
            return cls(False)
        if torch.cuda.is_bf16_supported():
            return cls(True, torch.bfloat16)
        return cls(True, torch.float16, torch.amp.GradScaler("cuda"))

    def autocast(self, device: torch.device):
        if not self.enabled:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.dtype)

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        return self.scaler.scale(loss) if self.scaler else loss

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()


@torch.no_grad()
def predict(
    model: nn.Module,
    dataset: ImageSet,
    batch_size: int,
    device: torch.device,
    amp: Amp | None = None,
    indices: torch.Tensor | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Logits (N, 2) as float64 numpy and labels, in dataset (or `indices`) order."""
    model.eval()
    logits, labels = [], []
    for batch in iterate(dataset, batch_size, indices=indices):
        context = amp.autocast(device) if amp else contextlib.nullcontext()
        with context:
            out = model(batch.images.to(device, non_blocking=True))
        logits.append(out.float().cpu())
        labels.append(batch.labels)
    return torch.cat(logits).double().numpy(), torch.cat(labels).numpy()


def validation_metrics(logits: np.ndarray, labels: np.ndarray, weights: torch.Tensor) -> dict[str, float]:
    tensor = torch.from_numpy(logits)
    loss = nn.functional.cross_entropy(tensor, torch.from_numpy(labels), weight=weights.double()).item()
    p_fake = tensor.softmax(dim=1)[:, 1].numpy()
    metrics = classification_metrics(labels, p_fake)
    return {"val_loss": loss, **{f"val_{k}": v for k, v in metrics.items()}}


@dataclass
class FitResult:
    history: list[dict[str, float]]
    best_epoch: int
    best: dict[str, float]
    best_state: dict[str, torch.Tensor]
    stopped_early: bool
    resumed_from: int | None = None
    class_weights: list[float] = field(default_factory=list)


def fit(
    model: nn.Module,
    train_set: ImageSet,
    val_set: ImageSet,
    config: TrainConfig,
    reg: RegConfig | None,
    device: torch.device,
    checkpoint: Path | None = None,
    fingerprint: str = "",
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    show_progress: bool = True,
) -> FitResult:
    """Train `model` in place and return the history and the best epoch's weights."""
    model.to(device)
    weights = class_weights(train_set.labels)
    criterion = nn.CrossEntropyLoss(weight=weights.to(device))
    amp = Amp.for_device(device, config.amp)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    train_indices = _train_indices(len(train_set), config)
    steps_per_epoch = math.ceil(len(train_indices) / config.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.lr, total_steps=config.epochs * steps_per_epoch, pct_start=0.25
    )
    maximize = MAXIMIZE[config.monitor]
    history: list[dict[str, float]] = []
    best_score, best_epoch, best_state, bad_epochs = -math.inf, -1, None, 0
    start_epoch, resumed_from = 0, None

    if checkpoint is not None and checkpoint.exists():
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        if state.get("fingerprint") == fingerprint:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            if amp.scaler and state.get("scaler"):
                amp.scaler.load_state_dict(state["scaler"])
            history = state["history"]
            best_score, best_epoch, bad_epochs = state["best_score"], state["best_epoch"], state["bad_epochs"]
            best_state = state["best_state"]
            start_epoch = resumed_from = state["epoch"] + 1
            print(f"resuming from the checkpoint of epoch {state['epoch']} ({checkpoint})")
        else:
            print(f"ignoring {checkpoint}: it belongs to other params or data")

    stopped_early = False
    for epoch in range(start_epoch, config.epochs):
        if bad_epochs >= config.patience:
            stopped_early = True
            break
        epoch_seed = config.seed * 10007 + epoch
        seed_everything(epoch_seed)
        generator = torch.Generator().manual_seed(epoch_seed)
        model.train()
        started = time.perf_counter()
        seen, loss_sum, clean_sum, pert_sum, correct = 0, 0.0, 0.0, 0.0, 0
        bar = progress(total=len(train_indices), desc=f"epoch {epoch + 1}/{config.epochs}", unit="img",
                       disable=not show_progress, leave=False)
        for batch in iterate(train_set, config.batch_size, shuffle=True, seed=epoch_seed, indices=train_indices):
            if len(batch.labels) < 2:
                continue  # BatchNorm cannot train on a single image (a split of size k * batch + 1)
            images = batch.images
            if config.augment_hflip:
                flip = torch.rand(len(images), generator=generator) < 0.5
                images = torch.where(flip[:, None, None, None], images.flip(3), images)
            images = images.to(device, non_blocking=True)
            labels = batch.labels.to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            losses = training_step(
                model, images, labels, criterion, reg, generator=generator,
                scale=amp.scale, autocast=lambda: amp.autocast(device),
            )
            amp.step(optimizer)
            scheduler.step()
            n = len(labels)
            seen += n
            loss_sum += losses.total * n
            clean_sum += losses.clean * n
            pert_sum += (losses.perturbed or 0.0) * n
            correct += int((losses.logits.argmax(dim=1) == labels).sum())
            bar.update(n)
            bar.set_postfix(
                loss=f"{loss_sum / seen:.3f}", img_s=f"{seen / (time.perf_counter() - started):.0f}", refresh=False
            )
        bar.close()
        seconds = time.perf_counter() - started
        logits, labels = predict(model, val_set, max(64, config.batch_size * 2), device, amp)
        record = {
            "epoch": epoch,
            "train_loss": loss_sum / seen,
            "train_clean_loss": clean_sum / seen,
            "train_perturbed_loss": pert_sum / seen if reg is not None else math.nan,
            "train_accuracy": correct / seen,
            **validation_metrics(logits, labels, weights),
            "lr": scheduler.get_last_lr()[0],
            "seconds": seconds,
            "images_per_s": seen / seconds,
        }
        history.append(record)
        score = record[config.monitor] if maximize else -record[config.monitor]
        if math.isnan(score):  # e.g. AUC on a validation split with one class
            score = -math.inf
        improved = best_state is None or score > best_score
        if improved:
            best_score, best_epoch, bad_epochs = score, epoch, 0
            best_state = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
        else:
            bad_epochs += 1
        print(
            f"epoch {epoch + 1}/{config.epochs}: loss {record['train_loss']:.4f} "
            f"val_loss {record['val_loss']:.4f} val_acc {record['val_accuracy']:.3f} "
            f"val_f1 {record['val_f1']:.3f} val_auc {record['val_auc']:.3f} "
            f"({record['images_per_s']:.0f} img/s){' *' if improved else ''}",
            flush=True,
        )
        if on_epoch:
            on_epoch(record)
        if checkpoint is not None:
            checkpoint.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(checkpoint) as tmp:
                torch.save(
                    dict(
                        fingerprint=fingerprint, epoch=epoch,
                        model={k: v.detach().cpu() for k, v in model.state_dict().items()},
                        optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                        scaler=amp.scaler.state_dict() if amp.scaler else {},
                        history=history, best_score=best_score, best_epoch=best_epoch,
                        bad_epochs=bad_epochs, best_state=best_state,
                    ),
                    tmp,
                )

    assert best_state is not None, "no epoch completed"
    model.load_state_dict(best_state)
    best = {k: v for k, v in history[best_epoch].items()}
    return FitResult(history, best_epoch, best, best_state, stopped_early, resumed_from, weights.tolist())


def _train_indices(n: int, config: TrainConfig) -> torch.Tensor:
    if config.max_train_samples is None or config.max_train_samples >= n:
        return torch.arange(n)
    generator = torch.Generator().manual_seed(config.seed)
    return torch.randperm(n, generator=generator)[: config.max_train_samples].sort().values
