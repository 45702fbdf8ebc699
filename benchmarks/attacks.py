"""Attack speed: our PGD-10 vs torchattacks' PGD-10 on the same model and batch, and the
attack sweep's throughput, on the device the stages would use.

Ours is `robustness.attacks.PGD` as the sweep builds it (seeded random start, drawn on
the images' device); torchattacks 3.5.1 is the oracle the tests compare outputs with.
The sweep figure runs `robustness.sweep.run_sweep` (FGSM + PGD-5 at 2 eps, clean row
included) after one untimed warm-up run; its grad-images/s count one forward-backward
per image and attack step (scoring forwards are not counted), so it is comparable with
PGD alone. With --amp, both are measured again under `attack.amp` (bf16 on CUDA).

    python -m benchmarks.attacks [--device cuda] [--batch-size 64] [--image-size 224] [--amp]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import add_device_argument, describe, resolve_device, synchronize, time_it

EPS, ALPHA = 4 / 255, 1 / 255
TORCHATTACKS_HINT = ("torchattacks is missing: `pip install --no-deps torchattacks==3.5.1` (the Makefile does), "
                     "or carry its wheel to a GPU machine (docs/benchmarks.md, \"The GPU check\")")


def load_model(path: Path | None, device: torch.device):
    """The trained baseline when `path`/model.pt exists, else an untrained detector."""
    from robust_deepfake.config import ModelConfig
    from robust_deepfake.model.detector import build_detector, load_trained

    if path is not None and (path / "model.pt").exists():
        return load_trained(path, device)[0].eval(), f"trained {path}"
    torch.manual_seed(0)
    return build_detector(ModelConfig(), split_at=2).to(device).eval(), "untrained detector"


def batch(batch_size: int, image_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(batch_size, 3, image_size, image_size, generator=generator)
    labels = torch.randint(0, 2, (batch_size,), generator=generator)
    return images.to(device), labels.to(device)


def _ours(model, steps: int, amp: bool = False):
    """Our PGD as the sweep builds it (seeded random start on the images' device)."""
    from robust_deepfake.robustness.attacks import PGD

    return PGD(model, EPS, ALPHA, steps, random_start=True, generator=torch.Generator().manual_seed(0), amp=amp)


def _torchattacks(model, steps: int):
    try:
        import torchattacks
    except ImportError:
        raise SystemExit(TORCHATTACKS_HINT) from None
    return torchattacks.PGD(model, eps=EPS, alpha=ALPHA, steps=steps, random_start=True)


def pgd_seconds(model, images, labels, steps: int, repeats: int, amp: bool = False,
                budget_s: float | None = None) -> float:
    """Median seconds of our PGD-`steps` on the batch."""
    attack = _ours(model, steps, amp)
    return time_it(lambda: attack(images, labels), warmup=1, repeats=repeats, device=images.device,
                   budget_s=budget_s)


def paired_seconds(model, images, labels, steps: int, repeats: int, budget_s: float | None = None,
                   amp: bool = False) -> dict[str, float]:
    """Ours and torchattacks' PGD-`steps`, timed in alternation (ours, theirs, ours, ...) so
    that a busy machine slows both alike: median seconds of each and the median of the
    per-round time ratios (ours / theirs)."""
    ours, theirs = _ours(model, steps, amp), _torchattacks(model, steps)
    device = images.device
    rounds = []
    for attack in (ours, theirs):  # warm-up
        attack(images, labels)
    started = time.perf_counter()
    for _ in range(repeats):
        pair = []
        for attack in (ours, theirs):
            synchronize(device)
            began = time.perf_counter()
            attack(images, labels)
            synchronize(device)
            pair.append(time.perf_counter() - began)
        rounds.append(pair)
        if budget_s is not None and time.perf_counter() - started >= budget_s:
            break
    return {"ours": statistics.median(r[0] for r in rounds), "torchattacks": statistics.median(r[1] for r in rounds),
            "ratio": statistics.median(r[0] / r[1] for r in rounds), "rounds": len(rounds)}


def sweep_throughput(model, images, labels, amp: bool = False, steps: int = 5) -> float:
    """Forward-backward images/s of run_sweep (FGSM + PGD-`steps` at 1/255 and 2/255)."""
    from robust_deepfake.config import AttackConfig
    from robust_deepfake.data.dataset import ImageSet, SplitRow
    from robust_deepfake.paths import ModelKey
    from robust_deepfake.robustness.sweep import run_sweep

    device = images.device
    config = AttackConfig(attacks=["fgsm", "pgd"], eps=["1/255", "2/255"], steps=steps, batch_size=len(labels),
                          amp=amp)
    samples = [SplitRow("", int(label), "synthetic", "", "") for label in labels.tolist()]
    dataset = ImageSet(samples, images.shape[-1], cache=False)
    dataset.pixels = (images.cpu() * 255).round().to(torch.uint8)
    indices = np.arange(len(labels))

    def sweep() -> None:
        run_sweep({ModelKey("baseline", 0): model}, dataset, indices, config, device, show_progress=False)

    sweep()  # warm-up: cuDNN autotuning and allocator growth are not the sweep's cost
    synchronize(device)
    started = time.perf_counter()
    sweep()
    seconds = time.perf_counter() - started
    grad_passes = len(labels) * 2 * (1 + steps)  # per eps: FGSM 1 + PGD `steps`
    return grad_passes / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_device_argument(parser)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10, help="PGD steps for the ours-vs-torchattacks figure")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (ours and torchattacks alternate)")
    parser.add_argument("--amp", action="store_true", help="also measure attack.amp (bf16 autocast; CUDA only)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--model", default="models/baseline/seed0", help="trained model dir (missing: untrained)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    model, origin = load_model(Path(args.model), device)
    images, labels = batch(args.batch_size, args.image_size, device)
    print(f"{describe(device)}, {origin}, batch {args.batch_size}, {args.image_size} px, "
          f"eps 4/255, alpha 1/255, {args.steps} steps")

    timed = paired_seconds(model, images, labels, args.steps, args.repeats)
    ours_s, oracle_s, ratio = timed["ours"], timed["torchattacks"], timed["ratio"]
    work = args.batch_size * args.steps
    print(f"ours PGD-{args.steps}         {ours_s:7.3f} s  ({work / ours_s:7.0f} grad-images/s)")
    print(f"torchattacks PGD-{args.steps} {oracle_s:7.3f} s  ({work / oracle_s:7.0f} grad-images/s)")
    print(f"ours / torchattacks time (median of {timed['rounds']} alternating rounds): {ratio:.2f} "
          f"(target <= 1.00: {'ok' if ratio <= 1.0 else 'MISSED'})")

    rate = sweep_throughput(model, images, labels)
    sweep_ratio = rate / (work / ours_s)
    print(f"sweep (fgsm + pgd-5 at 2 eps + clean): {rate:.0f} grad-images/s = {sweep_ratio:.2f} x PGD alone "
          f"(target >= 0.90: {'ok' if sweep_ratio >= 0.9 else 'MISSED'})")
    if args.amp:
        if device.type != "cuda":
            print("--amp: attack.amp applies on CUDA only; nothing to compare on the CPU")
            return
        amp_s = pgd_seconds(model, images, labels, args.steps, args.repeats, amp=True)
        amp_rate = sweep_throughput(model, images, labels, amp=True)
        print(f"ours PGD-{args.steps} with attack.amp {amp_s:7.3f} s = {amp_s / ours_s:.2f} x float32; "
              f"sweep {amp_rate:.0f} grad-images/s = {amp_rate / rate:.2f} x float32")


if __name__ == "__main__":
    main()


def tiny_trained_detector(device: torch.device, epochs: int = 12, image_size: int = 32, n_per_source: int = 48):
    """A detector trained by `fit` on the generated sample (in memory, no files): 192
    images at 32 px by default, 12 epochs (clean accuracy ~0.7). Returns the model and
    the training images plus their mirror images (384), with labels, on `device`."""
    import contextlib
    import sys

    from robust_deepfake.config import ModelConfig, TrainConfig
    from robust_deepfake.data.dataset import ImageSet, SplitRow
    from robust_deepfake.data.sample import SampleSpec, iter_sample
    from robust_deepfake.model.detector import build_detector
    from robust_deepfake.model.training import fit

    spec = SampleSpec(seed=7, image_size=image_size, real_per_source=n_per_source,
                      fakes_per_method=max(1, n_per_source // 2))
    items = list(iter_sample(spec))
    samples = [SplitRow("", int(item.relpath.startswith("fake/")), item.relpath.split("/")[1], f"g{i}", "")
               for i, item in enumerate(items)]
    dataset = ImageSet(samples, image_size, cache=False)
    dataset.pixels = torch.from_numpy(np.stack([item.pixels for item in items])).permute(0, 3, 1, 2).contiguous()
    torch.manual_seed(0)
    model = build_detector(ModelConfig(), split_at=2)
    config = TrainConfig(epochs=epochs, batch_size=32, lr=0.002, patience=epochs, monitor="val_accuracy", amp=False)
    with contextlib.redirect_stdout(sys.stderr):
        fit(model, dataset, dataset, config, None, device, show_progress=False)
    images = dataset.images(torch.arange(len(dataset)))
    images, labels = torch.cat([images, images.flip(3)]), torch.cat([dataset.labels, dataset.labels])
    return model.eval(), images.to(device), labels.to(device)


@torch.no_grad()
def _accuracy(model, images, labels) -> float:
    return (model(images).argmax(dim=1) == labels).float().mean().item()


def accuracy_under_attack(model, images, labels, amp: bool, amp_device_types=None, eps: tuple = (1 / 255,),
                          attacks: tuple = ("fgsm", "pgd"), steps: int = 2) -> dict[str, float]:
    """Accuracy under each attack at each eps, adversarial images rounded to 8 bits as the
    sweep scores them; the attack's passes under bf16 autocast when `amp` (on the device
    types in `amp_device_types`, default CUDA only). Scoring stays float32."""
    from robust_deepfake.config import AttackConfig
    from robust_deepfake import units
    from robust_deepfake.robustness.attacks import AMP_DEVICE_TYPES, build_attack
    from robust_deepfake.robustness.sweep import adversarial, attack_generator

    config = AttackConfig(attacks=list(attacks), eps=list(eps), steps=steps, amp=amp)
    out = {"clean": _accuracy(model, images, labels)}
    for name in attacks:
        for value in eps:
            attack = build_attack(name, model, value, config, attack_generator(0, name, value),
                                  amp_device_types=amp_device_types or AMP_DEVICE_TYPES)
            adv = adversarial(attack, images, labels, quantize=True)
            out[f"{name}@{units.label(value)}"] = _accuracy(model, adv, labels)
    return out


def amp_accuracy_change(device: torch.device, epochs: int = 12, n_per_source: int = 48,
                        amp_device_types=None) -> dict:
    """Largest |accuracy under attack with attack.amp - without| over FGSM and PGD-2 at
    1/255 on a freshly trained tiny detector (target <= 0.01), with both accuracies."""
    model, images, labels = tiny_trained_detector(device, epochs, n_per_source=n_per_source)
    fp32 = accuracy_under_attack(model, images, labels, amp=False)
    bf16 = accuracy_under_attack(model, images, labels, amp=True, amp_device_types=amp_device_types)
    change = max(abs(bf16[k] - fp32[k]) for k in fp32)
    return {"max_change": change, "fp32": fp32, "amp": bf16, "n": len(labels)}
