"""Training-step throughput: baseline vs regularized steps, and the real loop vs its bound.

Prints, on the same device and batch: images/s of a baseline step, a reg step (random and
gradient mode) and their time ratios (target <= 1.5); then the real training loop
(`model.training.fit`: batches from the split, flips, host-to-device copies, optimizer,
scheduler, running sums) against its model-bound limit (target >= 0.9).

The bound runs the loop's own step, `training_step` with the same criterion, AdamW,
one-cycle scheduler and mixed precision as `fit`, over batches already on the device: it
is what the loop would reach if feeding it cost nothing. The loop's figure is its second
epoch (the first pays one-off warm-up: cuDNN autotuning, allocator growth).

    python -m benchmarks.train_step [--device cuda] [--image-size 224] [--batch-size 128] [--steps 15]

Without --splits (or when its train.csv is missing) both run on random in-memory images.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

import torch

from benchmarks.common import add_device_argument, describe, in_memory_set, resolve_device, synchronize, time_it

STEP_VARIANTS = ("baseline", "reg random", "reg gradient")


def _model(device: torch.device):
    from robust_deepfake.config import ModelConfig
    from robust_deepfake.model.detector import build_detector

    torch.manual_seed(0)
    return build_detector(ModelConfig(), split_at=2).to(device).train()


def step_throughput(device: torch.device, batch_size: int, image_size: int, repeats: int, amp: bool = True,
                    budget_s: float | None = None) -> dict[str, float]:
    """Median seconds per optimizer step of each variant (training_step + AdamW step)."""
    from robust_deepfake.config import RegConfig
    from robust_deepfake.model.device import Amp
    from robust_deepfake.model.training import training_step

    model = _model(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    criterion = torch.nn.CrossEntropyLoss(weight=torch.tensor([1.2, 0.8], device=device))
    scaler = Amp.for_device(device, amp)
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(batch_size, 3, image_size, image_size, generator=generator).to(device)
    labels = torch.randint(0, 2, (batch_size,), generator=generator).to(device)
    perturb = torch.Generator(device=device).manual_seed(0) if device.type == "cuda" else generator
    seconds = {}
    for name, reg in [("baseline", None), ("reg random", RegConfig(mode="random")),
                      ("reg gradient", RegConfig(mode="gradient"))]:
        def step(reg=reg):
            optimizer.zero_grad(set_to_none=True)
            training_step(model, images, labels, criterion, reg, generator=perturb, amp=scaler)
            scaler.step(optimizer)
        share = None if budget_s is None else budget_s / len(STEP_VARIANTS)
        seconds[name] = time_it(step, warmup=3, repeats=repeats, device=device, budget_s=share)
    return seconds


def loop_throughput(train, device: torch.device, batch_size: int, steps: int, amp: bool = True) -> float:
    """Images/s of `fit`'s training loop in its second epoch over steps * batch_size images."""
    from robust_deepfake.config import TrainConfig
    from robust_deepfake.model.training import fit

    val = in_memory_set(8, train.image_size, seed=1)  # validation is not part of the timed loop
    config = TrainConfig(epochs=2, batch_size=batch_size, max_train_samples=steps * batch_size, amp=amp,
                         patience=2)
    with contextlib.redirect_stdout(sys.stderr):  # fit's epoch lines: keep stdout for results
        result = fit(_model(device), train, val, config, None, device, show_progress=False)
    return result.history[-1]["images_per_s"]


def bound_throughput(train, device: torch.device, batch_size: int, steps: int, amp: bool = True) -> float:
    """Images/s of the loop's step alone: `training_step`, optimizer and scheduler as `fit`
    sets them up, on batches already on the device (the loop's upper bound)."""
    from robust_deepfake.config import TrainConfig
    from robust_deepfake.data.loader import iterate
    from robust_deepfake.model.device import Amp
    from robust_deepfake.model.training import class_weights, train_subset, training_step

    config = TrainConfig(epochs=2, batch_size=batch_size, max_train_samples=steps * batch_size, amp=amp)
    model = _model(device)
    criterion = torch.nn.CrossEntropyLoss(weight=class_weights(train.labels).to(device))
    scaler = Amp.for_device(device, config.amp)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    indices = train_subset(len(train), config, 0)
    batches = [(b.images.to(device), b.labels.to(device))
               for b in iterate(train, batch_size, shuffle=True, seed=0, indices=indices) if len(b.labels) >= 2]
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=2 * len(batches),
                                                    pct_start=0.25 if 2 * len(batches) != 4 else 0.3)

    def epoch() -> None:
        for images, labels in batches:
            optimizer.zero_grad(set_to_none=True)
            training_step(model, images, labels, criterion, None, amp=scaler)
            scaler.step(optimizer)
            scheduler.step()

    epoch()  # warm-up, like the loop's first epoch
    synchronize(device)
    started = time.perf_counter()
    epoch()
    synchronize(device)
    return sum(len(labels) for _, labels in batches) / (time.perf_counter() - started)


def training_set(splits: Path | None, image_size: int, n: int):
    """The cached train split when `splits`/train.csv exists, else random in-memory images."""
    if splits is not None and (splits / "train.csv").exists():
        from robust_deepfake.data.dataset import load_split

        return load_split(splits, "train", image_size, 2048), f"{splits}/train.csv"
    return in_memory_set(n, image_size), "random in-memory images"


def loop_vs_bound(device: torch.device, image_size: int, batch_size: int, steps: int, amp: bool = True,
                  splits: Path | None = None) -> dict[str, float]:
    train, origin = training_set(splits, image_size, steps * batch_size)
    steps = min(steps, len(train) // batch_size)
    if steps < 1:
        raise SystemExit(f"{origin}: fewer than --batch-size ({batch_size}) images")
    loop = loop_throughput(train, device, batch_size, steps, amp)
    bound = bound_throughput(train, device, batch_size, steps, amp)
    return {"loop": loop, "bound": bound, "ratio": loop / bound, "steps": steps, "origin": origin}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_device_argument(parser)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=15, help="timed steps per variant; loop steps per epoch")
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True,
                        help="mixed precision as train.amp (CUDA only; default: on, like params.yaml)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--splits", default="data/splits",
                        help="split CSVs for the loop figure (missing: random in-memory images)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    amp_on = args.amp and device.type == "cuda"
    print(f"{describe(device)}, batch {args.batch_size}, {args.image_size} px, amp {'on' if amp_on else 'off'}")

    seconds = step_throughput(device, args.batch_size, args.image_size, args.steps, args.amp)
    for name, value in seconds.items():
        print(f"{name:14s} {args.batch_size / value:8.1f} img/s   {value * 1000:7.1f} ms/step")
    for name in ("reg random", "reg gradient"):
        ratio = seconds[name] / seconds["baseline"]
        print(f"{name} / baseline step time: {ratio:.2f} (target <= 1.5: {'ok' if ratio <= 1.5 else 'MISSED'})")

    result = loop_vs_bound(device, args.image_size, args.batch_size, args.steps, args.amp, Path(args.splits))
    ratio = result["ratio"]
    print(f"real training loop {result['loop']:8.1f} img/s vs model-bound {result['bound']:.1f} img/s "
          f"({result['steps']} steps of {args.batch_size}, {result['origin']}): {ratio:.2f} "
          f"(target >= 0.9: {'ok' if ratio >= 0.9 else 'MISSED'})")


if __name__ == "__main__":
    main()
