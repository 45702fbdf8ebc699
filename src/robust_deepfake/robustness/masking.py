"""Gradient-masking checks (Carlini et al., "On Evaluating Adversarial Robustness", 2019;
Athalye et al., "Obfuscated Gradients Give a False Sense of Security", ICML 2018).

A model whose input gradients are flat, noisy or saturated looks robust to gradient
attacks without being robust. Each check compares numbers measured on the same images at
the same eps (accuracies in [0, 1]; `masking_probes.measure` computes them for one model)
and returns a `CheckRow`: PASS, or WARN with the reason. The checks are pure functions of
those numbers, so the pipeline can feed them from the sweep's outputs as well.

(a) iterative_vs_fgsm: every iterative attack at least as strong as FGSM;
(b) steps_and_restarts: 2x the steps plus random restarts move accuracy by <= 1 point
    (else the attack had not converged and its number is an upper bound);
(c) large_eps: PGD at a large budget (e.g. 16/255) leaves <= 5% accuracy, or <= 5% of the
    clean-detected fakes still detected (evasion >= 95%);
(d) black_box: Square (no gradients) not stronger than the white-box attacks; fed with
    the ensemble's numbers it reads as AutoAttack does: Square, run on the images APGD
    left robust, fools at most a tolerance of them;
(e) transfer: PGD crafted on another model (the paired baseline) not stronger here than
    white-box PGD on this model;
(f) random_noise: uniform noise in the eps-ball leaves accuracy inside the Wilson
    interval (default 95%) of the clean accuracy on these n images (binomial sampling noise).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Literal

Status = Literal["PASS", "WARN"]
CHECKS = ("iterative_vs_fgsm", "steps_and_restarts", "large_eps", "black_box", "transfer", "random_noise")


@dataclass(frozen=True)
class CheckRow:
    """One check's outcome: the numbers behind it and a one-line reason."""

    check: str
    status: Status
    numbers: dict[str, float] = field(default_factory=dict)
    reason: str = ""

    def as_dict(self) -> dict:
        return {"check": self.check, "status": self.status, "numbers": dict(self.numbers), "reason": self.reason}


@dataclass(frozen=True)
class MaskingTolerances:
    """stronger_by: an attack counts as stronger than another only when it lowers accuracy
    by more than this (about one image in 128); convergence: the largest accuracy change
    allowed when steps double and restarts are added; large_eps_accuracy: the accuracy
    (or remaining detection rate of fakes) PGD must reach at the large budget; noise_level:
    the confidence of the clean accuracy's Wilson interval that noise must stay inside."""

    stronger_by: float = 0.01
    convergence: float = 0.01
    large_eps_accuracy: float = 0.05
    noise_level: float = 0.95


def _points(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{100 * x:.1f}"


def _percent(x: float) -> str:
    """`12.3%`, or `n/a` for an undefined rate (no fake detected when clean)."""
    return "n/a" if math.isnan(x) else f"{100 * x:.1f}%"


def iterative_vs_fgsm(fgsm: float, iterative: Mapping[str, float], tol: float = 0.01) -> CheckRow:
    """(a) WARN when an iterative attack leaves more than `tol` more accuracy than FGSM."""
    weaker = {name: acc for name, acc in iterative.items() if acc > fgsm + tol}
    numbers = {"fgsm": fgsm, **iterative}
    if weaker:
        names = ", ".join(f"{name} {_percent(acc)}" for name, acc in weaker.items())
        return CheckRow("iterative_vs_fgsm", "WARN", numbers,
                        f"iterative attack weaker than single-step FGSM ({names} vs {_percent(fgsm)}): "
                        "gradients may be masked or the step size is off")
    return CheckRow("iterative_vs_fgsm", "PASS", numbers, "every iterative attack is at least as strong as FGSM")


def steps_and_restarts(accuracy: float, stronger: float, tol: float = 0.01) -> CheckRow:
    """(b) WARN when 2x steps plus restarts move accuracy by more than `tol`."""
    change = stronger - accuracy
    numbers = {"accuracy": accuracy, "stronger": stronger, "change": change}
    if abs(change) > tol:
        return CheckRow("steps_and_restarts", "WARN", numbers,
                        f"attack had not converged: 2x steps and restarts change accuracy by "
                        f"{_points(change)} points (> {_points(tol)}); its accuracy is an upper bound")
    return CheckRow("steps_and_restarts", "PASS", numbers,
                    f"2x steps and restarts change accuracy by {_points(change)} points (<= {_points(tol)})")


def large_eps(accuracy: float, evasion: float, eps_label: str, max_accuracy: float = 0.05) -> CheckRow:
    """(c) WARN unless accuracy <= max_accuracy or 1 - evasion <= max_accuracy at the large budget."""
    detected = 1 - evasion if not math.isnan(evasion) else math.nan
    numbers = {"accuracy": accuracy, "evasion_rate": evasion}
    if accuracy <= max_accuracy or detected <= max_accuracy:
        return CheckRow("large_eps", "PASS", numbers,
                        f"PGD at {eps_label} leaves {_percent(accuracy)} accuracy, evasion {_percent(evasion)}")
    return CheckRow("large_eps", "WARN", numbers,
                    f"PGD at {eps_label} still leaves {_percent(accuracy)} accuracy (evasion {_percent(evasion)}, "
                    f"want <= {_percent(max_accuracy)} left): gradients may be masked or the attack too weak")


def black_box(black: float, white: Mapping[str, float], tol: float = 0.01) -> CheckRow:
    """(d) WARN when the black-box accuracy is more than `tol` below the best white-box one."""
    best = min(white.values())
    numbers = {"square": black, **white}
    if black < best - tol:
        return CheckRow("black_box", "WARN", numbers,
                        f"black-box Square beats the white-box attacks ({_percent(black)} vs {_percent(best)}): "
                        "gradients may be masked")
    return CheckRow("black_box", "PASS", numbers,
                    f"Square ({_percent(black)}) is not stronger than white-box ({_percent(best)})")


def transfer(transferred: float, white: Mapping[str, float], tol: float = 0.01) -> CheckRow:
    """(e) WARN when the transfer attack is more than `tol` stronger than white-box here."""
    best = min(white.values())
    numbers = {"transfer": transferred, **white}
    if transferred < best - tol:
        return CheckRow("transfer", "WARN", numbers,
                        f"PGD crafted on another model beats white-box PGD on this one ({_percent(transferred)} vs "
                        f"{_percent(best)}): gradients may be masked")
    return CheckRow("transfer", "PASS", numbers,
                    f"transfer ({_percent(transferred)}) is weaker than white-box ({_percent(best)})")


def wilson_interval(accuracy: float, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (defined at 0 and 1, unlike +-z*SE)."""
    z = NormalDist().inv_cdf(0.5 + level / 2)
    centre = (accuracy + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(accuracy * (1 - accuracy) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def random_noise(noisy: float, clean: float, n: int, level: float = 0.95) -> CheckRow:
    """(f) WARN when noise moves accuracy outside the clean accuracy's Wilson interval."""
    low, high = wilson_interval(clean, n, level)
    numbers = {"noise": noisy, "clean": clean, "low": low, "high": high, "n": float(n)}
    if low <= noisy <= high:
        return CheckRow("random_noise", "PASS", numbers,
                        f"uniform noise leaves accuracy at {_percent(noisy)}, inside the clean "
                        f"{level:.0%} interval [{_points(low)}, {_points(high)}]")
    return CheckRow("random_noise", "WARN", numbers,
                    f"uniform noise moves accuracy to {_percent(noisy)}, outside the clean {level:.0%} interval "
                    f"[{_points(low)}, {_points(high)}]: compare attacks with noise, not with clean")


def any_warning(rows: list[CheckRow]) -> bool:
    return any(row.status == "WARN" for row in rows)


def verdict_line(rows_by_model: Mapping[str, Sequence[CheckRow]]) -> str | None:
    """The verdict's one line when any model's check warns, else None:
    `robustness under PGD may be gradient masking: <check> warns for <models> (<the first
    one's reason>); ...`, checks in CHECKS order."""
    warned: dict[str, list[tuple[str, CheckRow]]] = {}
    for model, rows in rows_by_model.items():
        for row in rows:
            if row.status == "WARN":
                warned.setdefault(row.check, []).append((model, row))
    if not warned:
        return None
    parts = [f"{check} warns for {', '.join(model for model, _ in warned[check])} ({warned[check][0][1].reason})"
             for check in sorted(warned, key=lambda c: CHECKS.index(c) if c in CHECKS else len(CHECKS))]
    return "robustness under PGD may be gradient masking: " + "; ".join(parts)
