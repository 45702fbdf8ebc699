"""The measurements behind the gradient-masking checks, for one model on one image batch.

`measure` runs the probes below at one eps on the same images (rounded to 8 bits before
scoring when `quantize`) and `checks` turns them into masking.CheckRow's:

* clean, fgsm, pgd: as the sweep runs them (pass the sweep's p(fake) in `known` to skip);
* pgd_strong: per image the worst of the pgd probe and `strong_runs` further PGD runs with
  `strong_factor` x the steps, each from a new random start (doubled steps + restarts);
* pgd_large: PGD at `large_eps` (step size relative to it);
* apgd, square: the ensemble's accuracy after its white-box members (APGD, FAB) and after
  Square on their survivors (pass a finished `ensemble` result to skip);
* transfer: adversarial images crafted on another model (`pgd_images` on the paired
  baseline), scored on this one;
* noise: x + U(-eps, eps) per pixel, clamped to [0, 1].

Random starts and noise come from sweep.attack_generator(seed, probe, eps): the same
seed, images and budget give the same numbers, and the global RNG is not used.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from robust_deepfake import units
from robust_deepfake.metrics import evasion_rate
from robust_deepfake.robustness import masking
from robust_deepfake.robustness.attacks import FGSM, PGD, quantize_8bit
from robust_deepfake.robustness.ensemble import EnsembleBudget, EnsembleResult, run_ensemble, score
from robust_deepfake.robustness.sweep import attack_generator

WHITE_BOX_MEMBERS = ("clean", "apgd", "fab")  # fooled_by values of images a white-box member fooled


@dataclass(frozen=True)
class ProbeBudget:
    """The probes' budgets: `steps` and `step_size_relative` are the sweep's PGD's."""

    steps: int = 3
    step_size_relative: float = 0.5
    strong_factor: int = 2
    strong_runs: int = 1
    large_eps: float = 16 / 255
    large_steps: int = 5
    ensemble: EnsembleBudget = field(default_factory=lambda: EnsembleBudget(apgd_steps=10, square_queries=100))


@dataclass(frozen=True)
class Measurements:
    """Accuracy and evasion rate per probe on n images at eps (pgd_large at large_eps)."""

    eps: float
    large_eps: float
    n: int
    accuracy: dict[str, float]
    evasion: dict[str, float]


def _scored(model: nn.Module, adv: torch.Tensor, labels: torch.Tensor, quantize: bool) -> np.ndarray:
    return score(model, quantize_8bit(adv) if quantize else adv, labels)[0].cpu().numpy().astype(np.float64)


def pgd_images(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, eps: float, budget: ProbeBudget,
               seed: int = 0, quantize: bool = True, probe: str = "pgd", steps: int | None = None,
               start: torch.Generator | None = None) -> torch.Tensor:
    """PGD as the sweep runs it (uniform random start, step size relative to eps), rounded
    to 8 bits when `quantize`; also the transfer images when `model` is the source model."""
    generator = start or attack_generator(seed, probe, eps)
    attack = PGD(model, eps, budget.step_size_relative * eps, steps or budget.steps, generator=generator)
    adv = attack(images, labels)
    return quantize_8bit(adv) if quantize else adv


def worst_p_fake(labels: torch.Tensor, *p_fake: np.ndarray) -> np.ndarray:
    """Per image the score farthest toward the wrong class: min p(fake) for fakes, max for reals."""
    fake = labels.cpu().numpy() == 1
    stacked = np.stack(p_fake)
    return np.where(fake, stacked.min(axis=0), stacked.max(axis=0))


def strong_pgd(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, eps: float, budget: ProbeBudget,
               seed: int = 0, quantize: bool = True) -> np.ndarray:
    """p(fake) per image of the worst of `strong_runs` PGD runs with `strong_factor` x the
    steps, their random starts drawn one after another from one seeded generator."""
    generator = attack_generator(seed, "pgd_strong", eps)
    steps = budget.steps * budget.strong_factor
    return worst_p_fake(labels, *(
        _scored(model, pgd_images(model, images, labels, eps, budget, seed, quantize, steps=steps, start=generator),
                labels, False)
        for _ in range(budget.strong_runs)))


def measure(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, eps: float,
            budget: ProbeBudget = ProbeBudget(), seed: int = 0, quantize: bool = True,
            transfer_images: torch.Tensor | None = None, known: Mapping[str, np.ndarray] | None = None,
            ensemble: EnsembleResult | None = None) -> Measurements:
    """Every probe's accuracy and evasion rate for `model` at `eps` (see the module doc).

    `known`: p(fake) per probe already measured on these images with these settings
    ('clean', 'fgsm', 'bim', 'pgd'); 'bim' only enters check (a). `ensemble`: run_ensemble's
    result on these images at eps (else run here with budget.ensemble)."""
    labels = labels.long()
    p = {name: np.asarray(value, dtype=np.float64) for name, value in (known or {}).items()}
    if "clean" not in p:
        p["clean"] = score(model, images, labels)[0].cpu().numpy().astype(np.float64)
    if "fgsm" not in p:
        p["fgsm"] = _scored(model, FGSM(model, eps)(images, labels), labels, quantize)
    if "pgd" not in p:
        p["pgd"] = _scored(model, pgd_images(model, images, labels, eps, budget, seed, quantize), labels, False)
    p["pgd_strong"] = worst_p_fake(labels, p["pgd"], strong_pgd(model, images, labels, eps, budget, seed, quantize))
    p["pgd_large"] = _scored(model, pgd_images(model, images, labels, budget.large_eps, budget, seed, quantize,
                                               probe="pgd_large", steps=budget.large_steps), labels, False)
    if transfer_images is not None:
        p["transfer"] = _scored(model, transfer_images, labels, quantize)
    noise = torch.empty(images.shape, dtype=images.dtype).uniform_(
        -eps, eps, generator=attack_generator(seed, "noise", eps)).to(images.device)
    p["noise"] = _scored(model, torch.clamp(images + noise, 0, 1), labels, quantize)

    y = labels.cpu().numpy().astype(int)
    accuracy = {name: float(((value >= 0.5).astype(int) == y).mean()) for name, value in p.items()}
    evasion = {name: evasion_rate(y, p["clean"], value) for name, value in p.items() if name != "clean"}
    result = ensemble or run_ensemble(model, images, labels, eps, budget.ensemble, seed, quantize)
    clean_correct = (p["clean"] >= 0.5).astype(int) == y
    detected_fakes = clean_correct & (y == 1)
    stages = {"apgd": [name not in WHITE_BOX_MEMBERS for name in result.fooled_by],
              "square": [name == "" for name in result.fooled_by]}
    for name, survived in stages.items():
        survived = np.array(survived)
        accuracy[name] = float(survived.mean())
        evasion[name] = float((~survived[detected_fakes]).mean()) if detected_fakes.any() else float("nan")
    return Measurements(eps, budget.large_eps, len(y), accuracy, evasion)


def checks(m: Measurements,
           tolerances: masking.MaskingTolerances = masking.MaskingTolerances()) -> list[masking.CheckRow]:
    """The masking checks (a)-(f) on one model's measurements; (e) only with a transfer probe."""
    acc, tol = m.accuracy, tolerances
    white = {name: acc[name] for name in ("pgd", "pgd_strong", "apgd")}
    iterative = {name: acc[name] for name in ("bim", "pgd", "apgd") if name in acc}
    rows = [
        masking.iterative_vs_fgsm(acc["fgsm"], iterative, tol.stronger_by),
        masking.steps_and_restarts(acc["pgd"], acc["pgd_strong"], tol.convergence),
        masking.large_eps(acc["pgd_large"], m.evasion["pgd_large"], units.label(m.large_eps), tol.large_eps_accuracy),
        masking.black_box(acc["square"], {"apgd": acc["apgd"]}, tol.stronger_by),
    ]
    if "transfer" in acc:
        rows.append(masking.transfer(acc["transfer"], white, tol.stronger_by))
    rows.append(masking.random_noise(acc["noise"], acc["clean"], m.n, tol.noise_level))
    return rows
