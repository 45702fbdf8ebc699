"""CPU cost of the worst-case ensemble and of each gradient-masking probe, per part.

The demo setting: EfficientNet-B0 built from params.yaml's `model` section, 64 px, 128
images, 2 threads, eps 1/255 and 2/255. With --root (a checkout where `dvc repro` has run)
it attacks the trained baseline (seed 0) on the sweep's 128-image test subset and crafts
the transfer images on it for reg (seed 0); without, an untrained detector on random
images (then Square's cost says little: an untrained model is fooled at once).

Prints one JSON line per part: wall seconds, the process's CPU seconds (os.times, all
threads: on a shared machine wall time stretches, CPU time much less), images attacked,
model calls, the accuracy reached and the cost in gradient passes of the whole batch
(grad_pass_equiv: CPU seconds over those of one input-gradient pass, measured first);
then the load average. Parts: each ensemble member
(Square runs on the images APGD left robust), and each masking probe (fgsm and pgd are the
sweep's, free in the pipeline; transfer is the scoring plus crafting on the source).

    PYTHONPATH=src python -m benchmarks.ensemble_cost [--root /path/to/demo/run] \
        [--apgd-steps 10] [--apgd-restarts 1] [--square-queries 100] [--fab] [--eps 1/255 2/255]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path

import torch

from robust_deepfake import units
from robust_deepfake.config import load_params
from robust_deepfake.data.dataset import load_split
from robust_deepfake.model.detector import build_detector, load_trained
from robust_deepfake.robustness.attacks import FGSM, attack_mode, quantize_8bit
from robust_deepfake.robustness.ensemble import EnsembleBudget, misclassified, run_ensemble, score
from robust_deepfake.robustness.masking_probes import ProbeBudget, pgd_images, strong_pgd
from robust_deepfake.robustness.sweep import attack_generator, stratified_subset

N_IMAGES, IMAGE_SIZE = 128, 64


@contextmanager
def timed(record: dict):
    """Adds wall_s and cpu_s (user + system of this process, all threads) to `record`."""
    before, started = os.times(), time.perf_counter()
    yield record
    after = os.times()
    record["wall_s"] = round(time.perf_counter() - started, 2)
    record["cpu_s"] = round(after.user - before.user + after.system - before.system, 2)


def demo_inputs(root: Path | None, params_path: Path):
    """(target model, transfer source, images, labels, origin)."""
    params = load_params(params_path)
    if root is None:
        torch.manual_seed(0)
        model = build_detector(params.model, params.reg.split_at).eval()
        generator = torch.Generator().manual_seed(0)
        pixels = torch.randint(0, 256, (N_IMAGES, 3, IMAGE_SIZE, IMAGE_SIZE), generator=generator)
        labels = torch.randint(0, 2, (N_IMAGES,), generator=generator)
        return model, model, pixels.float() / 255, labels, "untrained detector, random images"
    cwd = os.getcwd()
    os.chdir(root)  # split CSVs hold paths relative to the checkout
    try:
        source = load_trained(root / "models/baseline/seed0")[0]
        target = load_trained(root / "models/reg/seed0")[0] if (root / "models/reg/seed0/model.pt").exists() else source
        test = load_split(params.data.splits_dir, "test", params.data.image_size, params.data.cache_max_mb)
        indices = torch.as_tensor(stratified_subset([s.source for s in test.samples], N_IMAGES, params.attack.seed))
        images, labels = test.images(indices), test.labels[indices]
    finally:
        os.chdir(cwd)
    return target, source, images, labels, f"trained models under {root} (target reg/seed0, source baseline/seed0)"


def _accuracy(model, adv, labels) -> float:
    return round(1 - float(misclassified(score(model, adv, labels)[0], labels).float().mean()), 4)


def unit_costs(model, images, labels, repeats: int = 3) -> dict:
    """The median CPU (and wall) seconds of one input-gradient pass and one forward pass on
    the whole batch: every part is also given in gradient passes (grad_pass_equiv), a unit
    that a busy machine distorts less than seconds."""
    def gradient():
        with attack_mode(model):
            x = images.clone().requires_grad_(True)
            torch.autograd.grad(torch.nn.functional.cross_entropy(model(x), labels), x)

    out = {"part": "unit"}
    for name, step in (("grad_pass", gradient), ("forward", lambda: score(model, images, labels))):
        samples = []
        for _ in range(repeats):
            with timed({}) as record:
                step()
            samples.append(record)
        out[f"{name}_cpu_s"] = statistics.median(r["cpu_s"] for r in samples)
        out[f"{name}_wall_s"] = statistics.median(r["wall_s"] for r in samples)
    return out


def run(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    target, source, images, labels, origin = demo_inputs(args.root, args.params)
    members = ("apgd", "fab", "square") if args.fab else ("apgd", "square")
    budget = EnsembleBudget(members=members, apgd_steps=args.apgd_steps, apgd_restarts=args.apgd_restarts,
                            square_queries=args.square_queries, fab_steps=args.fab_steps)
    probes = ProbeBudget(steps=args.pgd_steps, step_size_relative=0.5, large_eps=args.large_eps,
                         large_steps=args.large_steps, ensemble=budget)
    print(json.dumps({"setting": origin, "images": len(labels), "image_size": images.shape[-1],
                      "threads": torch.get_num_threads(), "ensemble": asdict(budget),
                      "probes": {k: v for k, v in asdict(probes).items() if k != "ensemble"},
                      "loadavg_start": os.getloadavg()}), flush=True)
    score(target, images[:8], labels[:8])  # warm-up (allocator, oneDNN kernels)
    unit = unit_costs(target, images, labels)
    print(json.dumps(unit), flush=True)

    def emit(record: dict) -> None:
        record["grad_pass_equiv"] = round(record["cpu_s"] / unit["grad_pass_cpu_s"], 1)
        print(json.dumps(record), flush=True)

    for eps in args.eps:
        base = {"eps": units.label(eps)}
        with timed({**base, "part": "clean"}) as record:
            record["accuracy"] = _accuracy(target, images, labels)
        emit(record)
        rows = torch.arange(len(labels))
        for member in members:  # each on what the earlier ones left robust, as inside run_ensemble
            with timed({**base, "part": member}) as record:
                result = run_ensemble(target, images[rows], labels[rows], eps, replace(budget, members=(member,)),
                                      args.seed)
            stats = result.stats[0] if result.stats else None
            record.update(attacked=stats.attacked if stats else 0, queries=stats.queries if stats else 0,
                          fooled=stats.fooled if stats else 0, robust_left=int(result.robust.sum()))
            emit(record)
            rows = rows[result.robust]
        probes_at = {
            "fgsm": lambda: quantize_8bit(FGSM(target, eps)(images, labels)),
            "pgd": lambda: pgd_images(target, images, labels, eps, probes, args.seed),
            "pgd_strong": lambda: strong_pgd(target, images, labels, eps, probes, args.seed, True),
            "pgd_large": lambda: pgd_images(target, images, labels, probes.large_eps, probes, args.seed,
                                            probe="pgd_large", steps=probes.large_steps),
            "transfer_craft": lambda: pgd_images(source, images, labels, eps, probes, args.seed),
            "noise": lambda: quantize_8bit(torch.clamp(images + torch.empty(images.shape).uniform_(
                -eps, eps, generator=attack_generator(args.seed, "noise", eps)), 0, 1)),
        }
        for name, probe in probes_at.items():
            with timed({**base, "part": f"probe_{name}"}) as record:
                out = probe()
                if name == "pgd_strong":  # p(fake): the extra runs alone, without the sweep's PGD run
                    record["accuracy"] = round(float(((out >= 0.5).astype(int) == labels.numpy()).mean()), 4)
                else:
                    record["accuracy"] = _accuracy(target, out, labels)
            emit(record)
    print(json.dumps({"loadavg_end": os.getloadavg()}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=None, help="a checkout after `dvc repro` (trained models)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--eps", type=units.parse_pixel_value, nargs="+", default=[1 / 255, 2 / 255])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--apgd-steps", type=int, default=10)
    parser.add_argument("--apgd-restarts", type=int, default=1)
    parser.add_argument("--square-queries", type=int, default=100)
    parser.add_argument("--fab", action="store_true", help="add FAB to the ensemble")
    parser.add_argument("--fab-steps", type=int, default=10)
    parser.add_argument("--pgd-steps", type=int, default=3, help="the sweep's PGD steps (attack.steps)")
    parser.add_argument("--large-eps", type=units.parse_pixel_value, default=16 / 255)
    parser.add_argument("--large-steps", type=int, default=3)
    run(parser.parse_args())


if __name__ == "__main__":
    main()
