"""CPU cost of the attack_sweep stage per part, on a demo run's trained models.

Runs, with the stage's own functions and params (the root's params.yaml or --params), what
the stage runs for every model of paths.model_keys(train.seeds) on the sweep's test
subset, one part at a time: the clean scores, each attack at each eps, the ensemble's
APGD (and FAB) and its Square at each eps (from the sweep's candidates, as in run_sweep),
the probes of each gradient-masking check at attack.masking's eps, and summarize_sweep.
The checks iterative_vs_fgsm and black_box need no probe of their own (the sweep's FGSM,
BIM and PGD; the ensemble's Square), and transfer needs no crafting (the paired baseline's
PGD images of the sweep): their cost is the scoring shown.

Prints one JSON line per model and part (CPU seconds of this process, all threads, from
os.times; wall seconds), then one line per part summed over the models, and the totals
with and without the ensemble and the checks. CPU seconds are the stable measure on a
shared machine; wall seconds on an idle machine with 2 threads are ~0.65x of them.

    PYTHONPATH=src python -m benchmarks.sweep_cost --root /path/to/demo/run [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from benchmarks.ensemble_cost import timed
from robust_deepfake.config import load_params
from robust_deepfake.data.dataset import load_split
from robust_deepfake.data.images import unit_float
from robust_deepfake.data.loader import iterate
from robust_deepfake.model.detector import load_trained
from robust_deepfake.paths import ModelKey, TrainOutputs, model_keys
from robust_deepfake.robustness.attacks import build_attack, quantize_8bit
from robust_deepfake.robustness.ensemble import EnsembleBudget, run_ensemble, score
from robust_deepfake.robustness.masking_probes import ProbeBudget, pgd_images
from robust_deepfake.robustness.sweep import (
    SweepPredictions,
    adversarial,
    attack_generator,
    stratified_subset,
    summarize_sweep,
    sweep_attacks,
)
from robust_deepfake import units

ADDED = ("ensemble_", "check_")  # the parts the ensemble and the masking checks add to the stage


def run(args: argparse.Namespace) -> dict[str, float]:
    torch.set_num_threads(args.threads)
    root = args.root.resolve()
    params = load_params(args.params or root / "params.yaml")
    config = params.attack
    os.chdir(root)  # split CSVs hold paths relative to the checkout
    keys = model_keys(params.train.seeds)
    models = {key: load_trained(TrainOutputs.of(root, key).model_dir)[0].eval() for key in keys}
    test = load_split(params.data.splits_dir, "test", params.data.image_size, params.data.cache_max_mb)
    indices = stratified_subset([s.source for s in test.samples], config.max_samples, config.seed)
    grid = config.eps_grid
    attacked = [(e, eps) for e, eps in enumerate(grid) if eps > 0]
    budget = EnsembleBudget.from_config(config.ensemble)
    probes = ProbeBudget.from_config(config)
    masking_eps = config.masking_eps
    print(json.dumps({"root": str(root), "models": [k.name for k in keys], "images": len(indices),
                      "attacks": sweep_attacks(config), "eps": [units.label(e) for e in config.eps],
                      "ensemble": config.ensemble.model_dump(), "masking": config.masking.model_dump(mode="json"),
                      "threads": torch.get_num_threads(), "loadavg_start": os.getloadavg()}), flush=True)
    totals: dict[str, float] = defaultdict(float)
    scores = np.zeros((len(keys), len(sweep_attacks(config)), len(grid), len(indices)))

    def part(key: ModelKey, name: str, work):
        with timed({"model": key.name, "part": name}) as record:
            out = work()
        totals[name] += record["cpu_s"]
        print(json.dumps(record), flush=True)
        return out

    attacks = {(key, name, eps): build_attack(name, models[key], eps, config, attack_generator(config.seed, name, eps))
               for key in keys for name in config.attacks for _, eps in attacked}
    start = 0
    sources = [k for k in keys if k.variant == "baseline"]
    for batch in iterate(test, config.batch_size, indices=torch.as_tensor(indices), uint8=True):
        images, labels = unit_float(batch.images), batch.labels
        rows = slice(start, start + len(labels))
        start += len(labels)
        transfer: dict[int, torch.Tensor] = {}
        for m, key in sorted(enumerate(keys), key=lambda item: item[1] not in sources):
            model = models[key]
            scores[m, :, 0, rows] = part(key, "clean", lambda: score(model, images, labels)[0].numpy())
            for e, eps in attacked:
                label = units.label(eps)
                adversarials = {}
                for a, name in enumerate(config.attacks):
                    adversarials[name] = part(key, f"{name}_{label}", lambda: adversarial(
                        attacks[key, name, eps], images, labels, config.quantize))
                    scores[m, a, e, rows] = score(model, adversarials[name], labels)[0].numpy()
                if not config.ensemble.enabled:
                    continue
                white = replace(budget, members=tuple(n for n in budget.order if n != "square"))
                result = part(key, f"ensemble_white_box_{label}", lambda: run_ensemble(
                    model, images, labels, eps, white, config.seed, config.quantize, candidates=adversarials))
                scores[m, len(config.attacks), e, rows] = result.p_fake.numpy()  # before Square: for timing only
                robust = result.robust
                if "square" in budget.order and robust.any():
                    square = replace(budget, members=("square",))
                    part(key, f"ensemble_square_{label}", lambda: run_ensemble(
                        model, images[robust], labels[robust], eps, square, config.seed, config.quantize))
                if key in sources and eps == masking_eps:
                    transfer[key.seed] = adversarials["pgd"]
            if not config.masking.enabled:
                continue
            eps, seed = masking_eps, config.seed
            strong = attack_generator(seed, "pgd_strong", eps)
            part(key, "check_steps_and_restarts", lambda: [pgd_images(
                model, images, labels, eps, probes, seed, config.quantize, steps=probes.steps * probes.strong_factor,
                start=strong) for _ in range(probes.strong_runs)])
            part(key, "check_large_eps", lambda: pgd_images(
                model, images, labels, probes.large_eps, probes, seed, config.quantize, probe="pgd_large",
                steps=probes.large_steps))
            part(key, "check_random_noise", lambda: score(model, quantize_8bit(torch.clamp(images + torch.empty(
                images.shape).uniform_(-eps, eps, generator=attack_generator(seed, "noise", eps)), 0, 1)), labels))
            if key not in sources and key.seed in transfer:
                part(key, "check_transfer", lambda: score(model, transfer[key.seed], labels))
    predictions = SweepPredictions(keys, sweep_attacks(config), grid, np.asarray(indices),
                                   test.labels[torch.as_tensor(indices)].numpy(),
                                   np.array([test.samples[i].source for i in indices]), scores, config.quantize)
    part(keys[0], "summarize_sweep", lambda: summarize_sweep(predictions, params.eval, params.split.holdout_methods))
    for name, cpu in totals.items():
        print(json.dumps({"part": name, "all_models": True, "cpu_s": round(cpu, 2)}), flush=True)
    added = sum(cpu for name, cpu in totals.items() if name.startswith(ADDED))
    summary = {"total_cpu_s": round(sum(totals.values()), 1), "added_by_ensemble_and_checks_cpu_s": round(added, 1),
               "ensemble_cpu_s": round(sum(c for n, c in totals.items() if n.startswith("ensemble_")), 1),
               "checks_cpu_s": round(sum(c for n, c in totals.items() if n.startswith("check_")), 1),
               "loadavg_end": os.getloadavg()}
    print(json.dumps(summary), flush=True)
    return totals


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, required=True, help="a checkout after `dvc repro` (trained models)")
    parser.add_argument("--params", type=Path, default=None, help="params file (default: <root>/params.yaml)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the stage uses train.num_threads)")
    run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
