"""The training loop: class-weighted CE, AdamW + one-cycle LR, early stopping on a
validation metric, best-checkpoint selection and crash-safe resume.

Every epoch reseeds from (seed, epoch): shuffling, flips, dropout and random
perturbations of epoch k are the same whether the run started at epoch 0 or resumed at
k from the per-epoch checkpoint, so a killed run that is re-run ends with the same
metrics as an uninterrupted one (tests/test_training.py kills one to check).

Batches travel as uint8 (pinned for CUDA, copied without blocking) and become float and
flipped on the device; the next batches are made while the current one trains
(data/loader.py). The flip decisions are drawn on the host from the epoch's generator,
one mask per batch before the step's own draws, so on the CPU the results are the same
bytes whatever the loader (cached, streamed, worker processes).
The step keeps its running sums on the device: the host reads them when the progress
bar can redraw (never with the bar off) and once at the end of the epoch; a read per
step (`.item()`, or a copy from pageable memory) stalls a GPU pipeline.
"""

from __future__ import annotations

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
from robust_deepfake.data.dataset import ImageSet
from robust_deepfake.data.images import unit_float
from robust_deepfake.data.loader import Batch, BatchLoader
from robust_deepfake.io import atomic_path
from robust_deepfake.metrics import classification_metrics
from robust_deepfake.model.device import NO_AMP, Amp, seed_everything
from robust_deepfake.model.regularization import perturb_statistics, perturbation
from robust_deepfake.progress import progress

MAXIMIZE = {"val_auc": True, "val_f1": True, "val_accuracy": True, "val_loss": False}
# Epoch seeds are seed * EPOCH_SEED_STRIDE + epoch: a prime stride larger than any epoch
# count keeps the (seed, epoch) -> RNG-seed map one-to-one across seeds.
EPOCH_SEED_STRIDE = 10007
PROGRESS_SECONDS = 0.5  # least time between host reads of the running loss (one sync each)


def class_weights(labels: torch.Tensor, n_classes: int = 2) -> torch.Tensor:
    """N / (K * n_k): each class contributes equally to the loss (DFFD is ~1:5 real:fake)."""
    counts = torch.bincount(labels, minlength=n_classes).double()
    if (counts == 0).any():
        raise ValueError(f"the training split lacks a class (counts {counts.tolist()})")
    return (counts.sum() / (n_classes * counts)).float()


@dataclass
class StepLosses:
    """One step's losses as detached 0-d device tensors (no host sync)."""

    total: torch.Tensor
    clean: torch.Tensor
    perturbed: torch.Tensor | None
    correct: torch.Tensor  # clean predictions that match the label
    relative_size: torch.Tensor | None = None  # mean ||d|| / ||(mu, sigma)|| of the batch


def training_step(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    criterion: nn.Module,
    reg: RegConfig | None,
    generator: torch.Generator | None = None,
    amp: Amp = NO_AMP,
) -> StepLosses:
    """Forward and backward for one batch of either variant (the optimizer step is the caller's).

    reg=None is the baseline: one forward, one backward. With reg: one early forward,
    two late forwards and backwards, L = (1 - alpha) CE(late(f)) + alpha CE(late(f'));
    f' is built from f.detach(), so the perturbed term trains the late part only.
    """
    with amp.autocast():
        f = model.features_early(images)
        logits = model.features_late(f)
        clean = criterion(logits.float(), labels)
    correct = (logits.detach().argmax(dim=1) == labels).sum()
    if reg is None:
        amp.scale(clean).backward()
        clean = clean.detach()
        return StepLosses(clean, clean, None, correct)

    alpha = reg.alpha
    wants_gradient = reg.mode == "gradient"
    grad_f = None
    if wants_gradient and alpha < 1:
        f.retain_grad()
    if wants_gradient and alpha >= 1:
        (grad_f,) = torch.autograd.grad(clean, f, retain_graph=True)
    amp.scale((1.0 - alpha) * clean).backward()
    if wants_gradient and alpha < 1:
        grad_f = f.grad

    base = f.detach()
    d_mu, d_sigma, relative = perturbation(base.float(), reg, grad_f, generator)
    with amp.autocast():
        perturbed_features = perturb_statistics(base.float(), d_mu.float(), d_sigma.float()).to(base.dtype)
        perturbed = criterion(model.features_late(perturbed_features).float(), labels)
    amp.scale(alpha * perturbed).backward()
    clean, perturbed = clean.detach(), perturbed.detach()
    total = (1.0 - alpha) * clean + alpha * perturbed
    return StepLosses(total, clean, perturbed, correct, relative.mean())


def make_optimizer(model: nn.Module, config: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW as `fit` trains with it: on the CPU the fused implementation (one kernel per
    parameter: 21 -> 5 ms per EfficientNet-B0 step on one thread, measured; its rounding
    differs from the per-tensor loop's), on CUDA torch's default."""
    return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay,
                             fused=True if device.type == "cpu" else None)


def to_device(batch: Batch, device: torch.device, flip: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A uint8 host batch as float [0, 1] images and labels on `device`; images where
    `flip` (bool per image) is set are mirrored left-right there. The copies do not block
    from pinned memory; flipping the uint8 pixels before `unit_float` is exact, so the
    images are the bytes the host-side float path made."""
    images = batch.images.to(device, non_blocking=True)
    if flip is not None:
        if device.type == "cuda":
            flip = flip.pin_memory()
        flip = flip.to(device, non_blocking=True)
        images = torch.where(flip[:, None, None, None], images.flip(3), images)
    return unit_float(images), batch.labels.to(device, non_blocking=True)


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    dataset: ImageSet,
    batch_size: int,
    device: torch.device,
    amp: Amp = NO_AMP,
    indices: torch.Tensor | None = None,
    num_workers: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Logits (N, 2) as float64 numpy and labels, in dataset (or `indices`) order."""
    with BatchLoader(dataset, batch_size, num_workers=num_workers, pin_memory=device.type == "cuda",
                     persistent=False) as loader:
        return _predict(model, loader, device, amp, indices)


@torch.no_grad()
def _predict(model: nn.Module, loader: BatchLoader, device: torch.device, amp: Amp = NO_AMP,
             indices: torch.Tensor | None = None) -> tuple[np.ndarray, np.ndarray]:
    model.eval()
    logits, labels = [], []
    for batch in loader.batches(indices=indices):
        images, _ = to_device(batch, device)
        with amp.autocast():
            out = model(images)
        logits.append(out.float())  # kept on the device: one copy to the host at the end
        labels.append(batch.labels)
    return torch.cat(logits).cpu().double().numpy(), torch.cat(labels).numpy()


def validation_metrics(logits: np.ndarray, labels: np.ndarray, weights: torch.Tensor) -> dict[str, float]:
    tensor = torch.from_numpy(logits)
    loss = nn.functional.cross_entropy(tensor, torch.from_numpy(labels), weight=weights.double()).item()
    p_fake = tensor.softmax(dim=1)[:, 1].numpy()
    metrics = classification_metrics(labels, p_fake)
    return {"val_loss": loss, **{f"val_{k}": v for k, v in metrics.items()}}


@dataclass
class FitResult:
    history: list[dict[str, float]]
    best_epoch: int  # 0-based index into history; shown 1-based to people
    best: dict[str, float]
    best_state: dict[str, torch.Tensor]
    stopped_early: bool
    resumed_from: int | None = None
    class_weights: list[float] = field(default_factory=list)


@dataclass
class _Best:
    """Best-epoch and early-stopping bookkeeping on the monitored metric."""

    maximize: bool
    score: float = -math.inf
    epoch: int = -1
    state: dict[str, torch.Tensor] | None = None
    bad_epochs: int = 0

    def update(self, record: dict[str, float], monitor: str, model: nn.Module) -> bool:
        score = record[monitor] if self.maximize else -record[monitor]
        if math.isnan(score):  # e.g. AUC on a validation split with one class
            score = -math.inf
        if self.state is not None and score <= self.score:
            self.bad_epochs += 1
            return False
        self.score, self.epoch, self.bad_epochs = score, int(record["epoch"]), 0
        self.state = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
        return True


@dataclass
class _Checkpoint:
    """Per-epoch resume state; reused only when the run's fingerprint matches."""

    path: Path | None
    fingerprint: str

    def restore(self, model, optimizer, scheduler, amp: Amp, best: _Best) -> tuple[list[dict], int | None]:
        if self.path is None or not self.path.exists():
            return [], None
        state = torch.load(self.path, map_location="cpu", weights_only=True)
        if state.get("fingerprint") != self.fingerprint:
            print(f"ignoring {self.path}: it belongs to other params or data")
            return [], None
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if amp.scaler and state.get("scaler"):
            amp.scaler.load_state_dict(state["scaler"])
        best.score, best.epoch, best.bad_epochs = state["best_score"], state["best_epoch"], state["bad_epochs"]
        best.state = state["best_state"]
        print(f"resuming from the checkpoint of epoch {state['epoch'] + 1} ({self.path})")
        return state["history"], state["epoch"] + 1

    def save(self, epoch: int, model, optimizer, scheduler, amp: Amp, history: list[dict], best: _Best) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.path) as tmp:
            torch.save(
                dict(
                    fingerprint=self.fingerprint, epoch=epoch,
                    model={k: v.detach().cpu() for k, v in model.state_dict().items()},
                    optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                    scaler=amp.scaler.state_dict() if amp.scaler else {},
                    history=history, best_score=best.score, best_epoch=best.epoch,
                    bad_epochs=best.bad_epochs, best_state=best.state,
                ),
                tmp,
            )


class _RunningSums:
    """An epoch's loss sums, kept on the device; read once, by `means`."""

    def __init__(self, device: torch.device) -> None:
        zero = torch.zeros((), device=device)
        self.sums = {name: zero.clone() for name in ("loss", "clean", "perturbed", "gap", "relative", "correct")}
        self.seen = 0

    def add(self, losses: StepLosses, n: int) -> None:
        self.seen += n
        self.sums["loss"] += losses.total * n
        self.sums["clean"] += losses.clean * n
        self.sums["correct"] += losses.correct
        if losses.perturbed is not None:
            self.sums["perturbed"] += losses.perturbed * n
            self.sums["gap"] += (losses.perturbed - losses.clean).abs() * n
            self.sums["relative"] += losses.relative_size * n

    def means(self) -> dict[str, float]:
        """Every sum over the images seen, in one host read (each float32 -> Python float
        exactly as `.item()` gives it)."""
        values = torch.stack(list(self.sums.values())).tolist()
        return dict(zip(self.sums, (v / max(self.seen, 1) for v in values), strict=True))


@dataclass(frozen=True)
class _Epoch:
    """What every training epoch of one `fit` shares (`_train_one_epoch` runs one)."""

    model: nn.Module
    loader: BatchLoader
    indices: torch.Tensor  # the training positions (train_subset)
    config: TrainConfig
    reg: RegConfig | None
    device: torch.device
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    amp: Amp
    seed: int
    show_progress: bool


def _train_one_epoch(run: _Epoch, epoch: int) -> dict[str, float]:
    """One pass over the training positions in the order seeded by (seed, epoch); the
    epoch's record (mean losses, accuracy, speed)."""
    model, config, reg, device, amp = run.model, run.config, run.reg, run.device, run.amp
    epoch_seed = run.seed * EPOCH_SEED_STRIDE + epoch
    seed_everything(epoch_seed)
    generator = torch.Generator().manual_seed(epoch_seed)  # flips (CPU batches)
    # Random perturbations are drawn where the features are: a CPU draw copied to a GPU
    # would block every step. CPU and CUDA draws differ (documented); each is seeded.
    perturb_generator = (torch.Generator(device=device).manual_seed(epoch_seed) if device.type == "cuda"
                         else generator)
    model.train()
    started = time.perf_counter()
    sums = _RunningSums(device)
    bar = progress(total=len(run.indices), desc=f"epoch {epoch + 1}/{config.epochs}", unit="img",
                   disable=not run.show_progress, leave=False)
    # the running loss is read only as often as the bar can redraw it (0.5 s on a
    # terminal, 10 s in a log); never with the bar off
    read_every = max(PROGRESS_SECONDS, bar.mininterval) if run.show_progress else math.inf
    last_read = started
    for batch in run.loader.batches(shuffle=True, seed=epoch_seed, indices=run.indices):
        if len(batch.labels) < 2:
            continue  # BatchNorm cannot train on a single image (a split of size k * batch + 1)
        # drawn on the host from the epoch's generator, before the step's own draws (on
        # the CPU the perturbation draws from it too)
        flip = torch.rand(len(batch.labels), generator=generator) < 0.5 if config.augment_hflip else None
        images, labels = to_device(batch, device, flip)
        run.optimizer.zero_grad(set_to_none=True)
        losses = training_step(model, images, labels, run.criterion, reg, generator=perturb_generator, amp=amp)
        amp.step(run.optimizer)
        run.scheduler.step()
        sums.add(losses, len(labels))
        bar.update(len(labels))
        now = time.perf_counter()
        if now - last_read >= read_every:
            last_read = now
            bar.set_postfix(loss=f"{sums.sums['loss'].item() / sums.seen:.3f}",
                            img_s=f"{sums.seen / (now - started):.0f}", refresh=False)
    bar.close()
    seconds = time.perf_counter() - started
    totals = sums.means()
    regularized = reg is not None
    return {
        "epoch": epoch,
        "train_loss": totals["loss"],
        "train_clean_loss": totals["clean"],
        "train_perturbed_loss": totals["perturbed"] if regularized else math.nan,
        # how much the perturbation does: a no-op regularizer shows up as ~0 here
        "train_loss_gap": totals["gap"] if regularized else math.nan,
        "train_perturbation_relative": totals["relative"] if regularized else math.nan,
        "train_accuracy": totals["correct"],
        "seconds": seconds,
        "images_per_s": sums.seen / seconds,
    }


def fit(
    model: nn.Module,
    train_set: ImageSet,
    val_set: ImageSet,
    config: TrainConfig,
    reg: RegConfig | None,
    device: torch.device,
    seed: int = 0,
    checkpoint: Path | None = None,
    fingerprint: str = "",
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    show_progress: bool = True,
    num_workers: int = 0,
) -> FitResult:
    """Train `model` in place and return the history and the best epoch's weights.
    `num_workers` (data.num_workers) decode streamed splits in worker processes."""
    model.to(device)
    weights = class_weights(train_set.labels)
    criterion = nn.CrossEntropyLoss(weight=weights.to(device))
    amp = Amp.for_device(device, config.amp)
    optimizer = make_optimizer(model, config, device)
    train_indices = train_subset(len(train_set), config, seed)
    steps_per_epoch = math.ceil(len(train_indices) / config.batch_size)
    total_steps = config.epochs * steps_per_epoch
    # OneCycleLR divides by (pct_start * total_steps - 1): exactly 0 for 4 steps at 0.25
    pct_start = 0.25 if total_steps != 4 else 0.3
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.lr, total_steps=total_steps, pct_start=pct_start
    )
    best = _Best(MAXIMIZE[config.monitor])
    saver = _Checkpoint(checkpoint, fingerprint)
    history, resumed_from = saver.restore(model, optimizer, scheduler, amp, best)
    pin = device.type == "cuda"  # batches pinned where they are made: copies that do not block
    with (BatchLoader(train_set, config.batch_size, num_workers=num_workers, pin_memory=pin) as train_loader,
          BatchLoader(val_set, max(64, config.batch_size * 2), num_workers=num_workers,
                      pin_memory=pin) as val_loader):
        run = _Epoch(model, train_loader, train_indices, config, reg, device, criterion, optimizer, scheduler, amp,
                     seed, show_progress)
        stopped_early = False
        for epoch in range(resumed_from or 0, config.epochs):
            if best.bad_epochs >= config.patience:
                stopped_early = True
                break
            record = _train_one_epoch(run, epoch)
            logits, labels = _predict(model, val_loader, device, amp)
            record.update(validation_metrics(logits, labels, weights), lr=scheduler.get_last_lr()[0])
            history.append(record)
            improved = best.update(record, config.monitor, model)
            print(
                f"epoch {epoch + 1}/{config.epochs}: loss {record['train_loss']:.4f} "
                f"val_loss {record['val_loss']:.4f} val_acc {record['val_accuracy']:.3f} "
                f"val_f1 {record['val_f1']:.3f} val_auc {record['val_auc']:.3f}"
                + (f" |L_pert-L_clean| {record['train_loss_gap']:.4f}" if reg is not None else "")
                + f" ({record['images_per_s']:.0f} img/s){' *' if improved else ''}",
                flush=True,
            )
            if on_epoch:
                on_epoch(record)
            saver.save(epoch, model, optimizer, scheduler, amp, history, best)

    assert best.state is not None, "no epoch completed"
    model.load_state_dict(best.state)
    return FitResult(history, best.epoch, dict(history[best.epoch]), best.state, stopped_early, resumed_from,
                     weights.tolist())


def train_subset(n: int, config: TrainConfig, seed: int) -> torch.Tensor:
    """All training positions, or a seeded `max_train_samples` subset of them."""
    if config.max_train_samples is None or config.max_train_samples >= n:
        return torch.arange(n)
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=generator)[: config.max_train_samples].sort().values
