"""Attack speed: our PGD-10 vs torchattacks' PGD-10 on the same model and batch, and the
sweep's throughput.

    python -m benchmarks.attacks [--batch-size 64] [--image-size 64]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import time_it
from robust_deepfake.robustness.attacks import PGD
from robust_deepfake.config import AttackConfig, ModelConfig
from robust_deepfake.model.detector import build_detector, load_trained


def _model(path: Path):
    if (path / "model.pt").exists():
        return load_trained(path)[0], f"trained {path}"
    torch.manual_seed(0)
    return build_detector(ModelConfig(), split_at=2).eval(), "untrained (no models/baseline yet)"


def main() -> None:
    import torchattacks

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--model", default="models/baseline")
    args = parser.parse_args()
    model, origin = _model(Path(args.model))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {origin}, batch {args.batch_size}, "
          f"{args.image_size} px, eps 4/255, alpha 1/255, 10 steps")
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(args.batch_size, 3, args.image_size, args.image_size, generator=generator)
    labels = torch.randint(0, 2, (args.batch_size,), generator=generator)

    ours = PGD(model, 4 / 255, 1 / 255, 10, random_start=True, generator=torch.Generator().manual_seed(0))
    oracle = torchattacks.PGD(model, eps=4 / 255, alpha=1 / 255, steps=10, random_start=True)
    ours_s = time_it(lambda: ours(images, labels), warmup=1, repeats=args.repeats)
    oracle_s = time_it(lambda: oracle(images, labels), warmup=1, repeats=args.repeats)
    print(f"ours PGD-10        {ours_s:6.2f} s  ({args.batch_size * 10 / ours_s:6.0f} grad-images/s)")
    print(f"torchattacks PGD-10 {oracle_s:6.2f} s  ({args.batch_size * 10 / oracle_s:6.0f} grad-images/s)")
    ratio = ours_s / oracle_s
    print(f"ours / torchattacks time: {ratio:.2f} (target <= 1.0: {'ok' if ratio <= 1.0 else 'MISSED'})")

    from robust_deepfake.data.dataset import ImageSet, Sample
    from robust_deepfake.robustness.sweep import run_sweep

    config = AttackConfig(attacks=["fgsm", "pgd"], eps=["1/255", "2/255"], steps=5, batch_size=args.batch_size)
    dataset = ImageSet([Sample("", int(label), "synthetic", "", "") for label in labels], args.image_size, cache=False)
    dataset.pixels = (images * 255).round().to(torch.uint8)
    started = time.perf_counter()
    run_sweep({"model": model}, dataset, np.arange(len(labels)), config, torch.device("cpu"), show_progress=False)
    seconds = time.perf_counter() - started
    work = len(labels) * (1 + 2 * (1 + config.steps))
    print(f"sweep (fgsm + pgd-5 at 2 eps + clean): {len(labels)} images in {seconds:.1f} s = "
          f"{work / seconds:.0f} forward-backward images/s")


if __name__ == "__main__":
    main()
