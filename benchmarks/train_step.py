"""Training-step throughput: baseline vs regularized steps, and the real loop vs the model.

Prints, on the same batch: images/s of a baseline step, a reg step (random and gradient
mode) and their time ratios (target <= 1.5), then the real loader-fed training loop
(cached split, flips, optimizer, scheduler) against the model-bound limit (target >= 0.9).

    python -m benchmarks.train_step [--batch-size 32] [--image-size 64] [--steps 15]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from benchmarks.common import time_it
from robust_deepfake.config import ModelConfig, RegConfig, TrainConfig
from robust_deepfake.data.dataset import ImageSet, load_split, read_split
from robust_deepfake.model.detector import build_detector
from robust_deepfake.model.training import fit, training_step


def step_throughput(batch_size: int, image_size: int, repeats: int) -> dict[str, float]:
    torch.manual_seed(0)
    model = build_detector(ModelConfig(), split_at=2).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    criterion = torch.nn.CrossEntropyLoss(weight=torch.tensor([1.2, 0.8]))
    images = torch.rand(batch_size, 3, image_size, image_size)
    labels = torch.randint(0, 2, (batch_size,))
    generator = torch.Generator().manual_seed(0)
    seconds = {}
    for name, reg in [("baseline", None), ("reg random", RegConfig(mode="random")), ("reg gradient", RegConfig(mode="gradient"))]:
        def step(reg=reg):
            optimizer.zero_grad(set_to_none=True)
            training_step(model, images, labels, criterion, reg, generator=generator)
            optimizer.step()
        seconds[name] = time_it(step, warmup=3, repeats=repeats)
    return seconds


def loop_throughput(splits_dir: Path, image_size: int, batch_size: int, max_images: int) -> float:
    """Images/s of the real training loop (one epoch over max_images of the train split)."""
    torch.manual_seed(0)
    train = load_split(splits_dir, "train", image_size, 2048)
    samples = read_split(splits_dir / "val.csv")
    few = [s for s in samples if s.label == 0][:8] + [s for s in samples if s.label == 1][:8]
    val = ImageSet(few, image_size, cache=True)  # validation is not part of the timed loop
    model = build_detector(ModelConfig(), split_at=2)
    config = TrainConfig(epochs=1, batch_size=batch_size, max_train_samples=max_images, amp=False)
    result = fit(model, train, val, config, None, torch.device("cpu"), show_progress=False)
    return result.history[0]["images_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=15, help="timed steps per variant")
    parser.add_argument("--splits", default="data/splits", help="split CSVs for the real-loop figure")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size}, {args.image_size} px")

    seconds = step_throughput(args.batch_size, args.image_size, args.steps)
    for name, value in seconds.items():
        print(f"{name:14s} {args.batch_size / value:7.1f} img/s   {value * 1000:6.1f} ms/step")
    for name in ("reg random", "reg gradient"):
        ratio = seconds[name] / seconds["baseline"]
        print(f"{name} / baseline step time: {ratio:.2f} (target <= 1.5: {'ok' if ratio <= 1.5 else 'MISSED'})")

    splits = Path(args.splits)
    if (splits / "train.csv").exists():
        model_bound = args.batch_size / seconds["baseline"]
        real = loop_throughput(splits, args.image_size, args.batch_size, max_images=args.batch_size * args.steps * 2)
        ratio = real / model_bound
        print(f"real training loop {real:7.1f} img/s vs model-bound {model_bound:.1f} img/s: "
              f"{ratio:.2f} (target >= 0.9: {'ok' if ratio >= 0.9 else 'MISSED'})")
    else:
        print(f"{splits}/train.csv not found: run `dvc repro split` for the real-loop figure")


if __name__ == "__main__":
    main()
