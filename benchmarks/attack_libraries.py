"""torchattacks 3.5.1 vs adversarial-robustness-toolbox (ART) for the ensemble's members.

APGD-CE (10 steps, 1 run) and Square (100 queries) from each library on the same model,
images and eps, on the CPU, in alternating rounds: median CPU and wall seconds, robust
accuracy after 8-bit rounding, the eps-ball, whether every seeded round gives the same
bytes, and whether the call changes the caller's global RNG state (torch's for
torchattacks, numpy's for ART). One thread by default: then CPU seconds measure the work
even on a shared machine (with two, a thread spin-waiting for a descheduled partner
burns CPU time too). The project
uses torchattacks (docs/attacks.md says why); ART is not a dependency: install it into a
scratch folder to run this, never into the project's venv:

    pip install --target /tmp/art --no-deps adversarial-robustness-toolbox==1.20.1
    PYTHONPATH=src:/tmp/art python -m benchmarks.attack_libraries [--root /path/to/demo/run] [--images 64]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
from pathlib import Path

import numpy as np
import torch

from benchmarks.ensemble_cost import demo_inputs, timed
from robust_deepfake import units
from robust_deepfake.robustness.attacks import attack_mode, quantize_8bit
from robust_deepfake.robustness.ensemble import misclassified, require_torchattacks, score

ART_HINT = ("adversarial-robustness-toolbox is not importable: `pip install --target /tmp/art --no-deps "
            "adversarial-robustness-toolbox==1.20.1` and run with PYTHONPATH=src:/tmp/art")


def _art():
    try:
        from art.attacks.evasion import AutoProjectedGradientDescent, SquareAttack
        from art.estimators.classification import PyTorchClassifier
    except ImportError:
        raise SystemExit(ART_HINT) from None
    return AutoProjectedGradientDescent, SquareAttack, PyTorchClassifier


def _attacks(model, eps: float, steps: int, queries: int, shape: tuple[int, ...], batch: int):
    """name -> (run(images, labels) -> adversarial images, global RNG state getter)."""
    ta = require_torchattacks()
    apgd_art, square_art, classifier = _art()
    estimator = classifier(model=model, loss=torch.nn.CrossEntropyLoss(), input_shape=shape, nb_classes=2,
                           clip_values=(0.0, 1.0), channels_first=True)
    art_apgd = apgd_art(estimator, norm=np.inf, eps=eps, eps_step=2 * eps, max_iter=steps, nb_random_init=1,
                        batch_size=batch, loss_type="cross_entropy", verbose=False)
    art_square = square_art(estimator, norm=np.inf, eps=eps, max_iter=queries, p_init=0.8, nb_restarts=1,
                            batch_size=batch, verbose=False)

    def art_run(attack):
        def run(images, labels):
            np.random.seed(0)  # ART draws from numpy's global generator (Square also from Python's `random`)
            random.seed(0)
            adv = attack.generate(images.numpy(), y=np.eye(2, dtype=np.float32)[labels.numpy()])
            return torch.from_numpy(adv)
        return run

    torch_state = lambda: torch.get_rng_state().numpy().tobytes()  # noqa: E731
    numpy_state = lambda: np.random.get_state()[1].tobytes()  # noqa: E731
    return {
        "torchattacks_apgd": (ta.APGD(model, norm="Linf", eps=eps, steps=steps, n_restarts=1, seed=0, loss="ce"),
                              torch_state),
        "art_apgd": (art_run(art_apgd), numpy_state),
        "torchattacks_square": (ta.Square(model, norm="Linf", eps=eps, n_queries=queries, n_restarts=1, seed=0),
                                torch_state),
        "art_square": (art_run(art_square), numpy_state),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=None, help="a checkout after `dvc repro` (trained models)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--eps", type=units.parse_pixel_value, default=1 / 255)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1, help="1: CPU seconds count work, not spin-waits")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (medians; >= 2 checks bytes)")
    args = parser.parse_args(argv)
    _art()  # fail before the model is built
    torch.set_num_threads(args.threads)
    model, _, images, labels, origin = demo_inputs(args.root, args.params)
    model = model.eval()
    images, labels = images[: args.images], labels[: args.images]
    print(json.dumps({"setting": origin, "images": len(labels), "eps": units.label(args.eps), "steps": args.steps,
                      "queries": args.queries, "threads": torch.get_num_threads(),
                      "clean_accuracy": round(1 - float(misclassified(score(model, images, labels)[0],
                                                                      labels).float().mean()), 4),
                      "loadavg_start": os.getloadavg()}), flush=True)
    attacks = _attacks(model, args.eps, args.steps, args.queries, tuple(images.shape[1:]), len(labels))
    outputs: dict[str, list[torch.Tensor]] = {name: [] for name in attacks}
    times: dict[str, list[dict]] = {name: [] for name in attacks}
    changed: dict[str, bool] = {}
    for _ in range(args.rounds):  # alternate the libraries so that a shared machine's load hits all alike
        for name, (attack, rng_state) in attacks.items():
            before = rng_state()
            with attack_mode(model), timed({}) as record:
                outputs[name].append(attack(images, labels).detach().float())
            changed.setdefault(name, rng_state() != before)  # the first call; later ones start from its state
            times[name].append(record)
    for name in attacks:
        first = outputs[name][0]
        adv = quantize_8bit(first)
        print(json.dumps({
            "library_member": name,
            "cpu_s": statistics.median(r["cpu_s"] for r in times[name]),
            "wall_s": statistics.median(r["wall_s"] for r in times[name]),
            "robust_accuracy": round(1 - float(misclassified(score(model, adv, labels)[0], labels).float().mean()), 4),
            "max_linf_255": round(float((first - images).abs().max()) * 255, 4),
            "in_box": bool(first.min() >= 0 and first.max() <= 1),
            "same_bytes_every_round": all(torch.equal(first, other) for other in outputs[name][1:]),
            "changes_global_rng": changed[name],
        }), flush=True)
    print(json.dumps({"loadavg_end": os.getloadavg()}), flush=True)


if __name__ == "__main__":
    main()
