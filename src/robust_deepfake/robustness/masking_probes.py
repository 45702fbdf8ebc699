"""The measurements behind the gradient-masking checks, for one model at one eps.

`ProbeRun` runs the probes below batch after batch (the sweep feeds it every batch it
attacks; `measure` is one batch) and `checks` turns its `Measurements` into
masking.CheckRow's. Adversarial images are rounded to 8 bits before scoring when `quantize`:

* clean, fgsm, bim, pgd: as the sweep runs them (pass the sweep's p(fake) in `known` to
  skip; fgsm and pgd are run here when not known);
* pgd_strong: per image the worst of the pgd probe and `strong_runs` further PGD runs with
  `strong_factor` x the steps, each from a new random start (doubled steps + restarts);
* pgd_large: PGD at `large_eps` (step size relative to it);
* white_box, ensemble: an ensemble result's survivors after its white-box part (the
  candidates it was given, e.g. the sweep's FGSM/BIM/PGD, then APGD and FAB) and after
  Square on what that left robust;
* transfer: adversarial images crafted on another model (`pgd_images` on the paired
  baseline, or the sweep's PGD images of it), scored on this one;
* noise: x + U(-eps, eps) per pixel, clamped to [0, 1].

Random starts and noise come from sweep.attack_generator(seed, probe, eps), created once
per ProbeRun and continued from batch to batch: the same seed, images, batches and budget
give the same numbers, and the global RNG is not used.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from robust_deepfake import units
from robust_deepfake.config import AttackConfig
from robust_deepfake.metrics import evasion_rate
from robust_deepfake.robustness import masking
from robust_deepfake.robustness.attacks import FGSM, PGD, quantize_8bit
from robust_deepfake.robustness.ensemble import EnsembleBudget, EnsembleResult, run_ensemble, score
from robust_deepfake.robustness.sweep import attack_generator

KNOWN = ("clean", "fgsm", "bim", "pgd")  # what the sweep has already scored on the same images


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

    @classmethod
    def from_config(cls, config: AttackConfig) -> ProbeBudget:
        """params.yaml's attack section: the sweep's PGD at attack.masking.eps, the masking
        probes' budgets and the ensemble's."""
        m, eps = config.masking, config.masking_eps
        return cls(config.steps, config.step_size_for(eps) / eps, m.strong_factor, m.strong_runs, m.large_eps,
                   m.large_steps, EnsembleBudget.from_config(config.ensemble))


def tolerances(config: AttackConfig) -> masking.MaskingTolerances:
    """The checks' tolerances from attack.masking."""
    m = config.masking
    return masking.MaskingTolerances(m.tolerance, m.tolerance, m.large_eps_accuracy, m.noise_level)


@dataclass(frozen=True)
class Measurements:
    """Accuracy and evasion rate per probe on n images at eps (pgd_large at large_eps)."""

    eps: float
    large_eps: float
    n: int
    accuracy: dict[str, float]
    evasion: dict[str, float]

    def as_dict(self) -> dict:
        return {"eps": self.eps, "eps_label": units.label(self.eps), "large_eps": self.large_eps,
                "large_eps_label": units.label(self.large_eps), "n": self.n, "accuracy": dict(self.accuracy),
                "evasion": dict(self.evasion)}

    @classmethod
    def from_dict(cls, data: dict) -> Measurements:
        return cls(float(data["eps"]), float(data["large_eps"]), int(data["n"]),
                   {k: float(v) for k, v in data["accuracy"].items()},
                   {k: float(v) for k, v in data["evasion"].items()})


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
               seed: int = 0, quantize: bool = True, start: torch.Generator | None = None) -> np.ndarray:
    """p(fake) per image of the worst of `strong_runs` PGD runs with `strong_factor` x the
    steps, their random starts drawn one after another from one seeded generator (`start`,
    else the probe's own)."""
    generator = start or attack_generator(seed, "pgd_strong", eps)
    steps = budget.steps * budget.strong_factor
    return worst_p_fake(labels, *(
        _scored(model, pgd_images(model, images, labels, eps, budget, seed, quantize, steps=steps, start=generator),
                labels, False)
        for _ in range(budget.strong_runs)))


def ensemble_stages(result: EnsembleResult) -> dict[str, np.ndarray]:
    """Per image whether it survived the ensemble's white-box part (everything but Square)
    and the whole ensemble (robust: every attack failed)."""
    return {"white_box": np.array([name in ("", "square") for name in result.fooled_by]),
            "ensemble": np.array([name == "" for name in result.fooled_by])}


class ProbeRun:
    """The probes of one model at one eps over a sweep's batches (`add` per batch, then
    `measurements`); each probe's random stream continues from batch to batch."""

    def __init__(self, model: nn.Module, eps: float, budget: ProbeBudget = ProbeBudget(), seed: int = 0,
                 quantize: bool = True) -> None:
        self.model, self.eps, self.budget, self.seed, self.quantize = model, eps, budget, seed, quantize
        self._generators = {name: attack_generator(seed, name, eps) for name in ("pgd", "pgd_strong", "noise")}
        self._generators["pgd_large"] = attack_generator(seed, "pgd_large", budget.large_eps)
        self._p: dict[str, list[np.ndarray]] = {}
        self._survived: dict[str, list[np.ndarray]] = {}
        self._labels: list[np.ndarray] = []

    def add(self, images: torch.Tensor, labels: torch.Tensor, known: Mapping[str, np.ndarray] | None = None,
            ensemble: EnsembleResult | None = None, transfer_images: torch.Tensor | None = None) -> None:
        """Run the probes on one batch. `known`: p(fake) per KNOWN probe already measured on
        these images with these settings; `ensemble`: run_ensemble's result on them at eps
        (else run here with budget.ensemble); `transfer_images`: another model's
        adversarial images of this batch (rounded to 8 bits when `quantize`)."""
        model, eps, budget, quantize = self.model, self.eps, self.budget, self.quantize
        labels = labels.long()
        p = {name: np.asarray(value, dtype=np.float64) for name, value in (known or {}).items()}
        if "clean" not in p:
            p["clean"] = score(model, images, labels)[0].cpu().numpy().astype(np.float64)
        if "fgsm" not in p:
            p["fgsm"] = _scored(model, FGSM(model, eps)(images, labels), labels, quantize)
        if "pgd" not in p:
            p["pgd"] = _scored(model, pgd_images(model, images, labels, eps, budget, self.seed, quantize,
                                                 start=self._generators["pgd"]), labels, False)
        p["pgd_strong"] = worst_p_fake(labels, p["pgd"], strong_pgd(model, images, labels, eps, budget, self.seed,
                                                                      quantize, self._generators["pgd_strong"]))
        p["pgd_large"] = _scored(model, pgd_images(model, images, labels, budget.large_eps, budget, self.seed,
                                                   quantize, steps=budget.large_steps,
                                                   start=self._generators["pgd_large"]), labels, False)
        if transfer_images is not None:
            p["transfer"] = _scored(model, transfer_images, labels, quantize)
        noise = torch.empty(images.shape, dtype=images.dtype).uniform_(-eps, eps, generator=self._generators["noise"])
        p["noise"] = _scored(model, torch.clamp(images + noise.to(images.device), 0, 1), labels, quantize)
        result = ensemble or run_ensemble(model, images, labels, eps, budget.ensemble, self.seed, quantize)
        survived = ensemble_stages(result)
        if self._labels and (set(p) != set(self._p) or set(survived) != set(self._survived)):
            raise ValueError(f"probes differ between batches: {sorted(p)} vs {sorted(self._p)}")
        self._labels.append(labels.cpu().numpy().astype(int))
        for name, value in p.items():
            self._p.setdefault(name, []).append(value)
        for name, value in survived.items():
            self._survived.setdefault(name, []).append(value)

    def measurements(self) -> Measurements:
        """Accuracy and evasion rate per probe over every batch added."""
        y = np.concatenate(self._labels)
        p = {name: np.concatenate(parts) for name, parts in self._p.items()}
        accuracy = {name: float(((value >= 0.5).astype(int) == y).mean()) for name, value in p.items()}
        evasion = {name: evasion_rate(y, p["clean"], value) for name, value in p.items() if name != "clean"}
        detected_fakes = ((p["clean"] >= 0.5).astype(int) == y) & (y == 1)
        for name, parts in self._survived.items():
            survived = np.concatenate(parts)
            accuracy[name] = float(survived.mean())
            evasion[name] = float((~survived[detected_fakes]).mean()) if detected_fakes.any() else float("nan")
        return Measurements(self.eps, self.budget.large_eps, len(y), accuracy, evasion)


def measure(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, eps: float,
            budget: ProbeBudget = ProbeBudget(), seed: int = 0, quantize: bool = True,
            transfer_images: torch.Tensor | None = None, known: Mapping[str, np.ndarray] | None = None,
            ensemble: EnsembleResult | None = None) -> Measurements:
    """Every probe's accuracy and evasion rate for `model` at `eps` on one batch (ProbeRun.add)."""
    run = ProbeRun(model, eps, budget, seed, quantize)
    run.add(images, labels, known, ensemble, transfer_images)
    return run.measurements()


def checks(m: Measurements,
           tolerances: masking.MaskingTolerances = masking.MaskingTolerances()) -> list[masking.CheckRow]:
    """The masking checks (a)-(f) on one model's measurements; (e) only with a transfer probe."""
    acc, tol = m.accuracy, tolerances
    white = {name: acc[name] for name in ("pgd", "pgd_strong", "white_box")}
    iterative = {name: acc[name] for name in ("bim", "pgd", "mifgsm") if name in acc}
    rows = [
        masking.iterative_vs_fgsm(acc["fgsm"], iterative, tol.stronger_by),
        masking.steps_and_restarts(acc["pgd"], acc["pgd_strong"], tol.convergence),
        masking.large_eps(acc["pgd_large"], m.evasion["pgd_large"], units.label(m.large_eps), tol.large_eps_accuracy),
        masking.black_box(acc["ensemble"], {"white_box": acc["white_box"]}, tol.stronger_by),
    ]
    if "transfer" in acc:
        rows.append(masking.transfer(acc["transfer"], white, tol.stronger_by))
    rows.append(masking.random_noise(acc["noise"], acc["clean"], m.n, tol.noise_level))
    return rows
