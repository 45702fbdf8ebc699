"""A worst-case attack ensemble per image: APGD-CE with restarts, optionally FAB, then Square.

An image counts as robust only when every member fails on it (AutoAttack's rule; Croce &
Hein, ICML 2020). The members are torchattacks 3.5.1's implementations (ported from
fra31/auto-attack), called one run at a time so that this module owns the restart loop,
the random state and the 8-bit rounding:

* APGD-CE (Croce & Hein 2020): x_{k+1} = P(x_k + a (z_{k+1} - x_k) + (1 - a)(x_k - x_{k-1})),
  z_{k+1} = P(x_k + eta_k sign(grad CE)), a = 0.75, eta_0 = 2 eps, eta halved at
  checkpoints where the loss stopped rising; P projects on B_inf(x, eps) and [0, 1].
  Each run starts from a uniform point of the ball's surface; a restart is a further run.
* FAB (Croce & Hein, ICML 2020b): minimum-norm steps to the linearized decision boundary;
  its points can lie beyond eps, so they are projected into the ball.
* Square (Andriushchenko et al., ECCV 2020): score-based random search, no gradients:
  x_{k+1} = P(x_k + 2 eps * s * 1_square) kept when the margin z_y - z_other drops; at
  most `square_queries` model calls per image and run.

The DLR member and the targeted members of AutoAttack are left out: with two classes DLR's
denominator z_pi1 - z_pi3 does not exist, the only target is the other class (targeted =
untargeted), and CE = log(1 + exp(-m)) is a decreasing function of the margin
m = z_y - z_other, so CE and the logit margin have the same gradient sign and rank APGD's
iterates identically (for L-inf sign steps APGD-CE is APGD on the margin).

Per member and run, each image's candidates (its best-loss point, and for APGD its last
misclassified one) are rounded to 8 bits when `quantize` is on, scored, and the one with
the lowest margin is kept if lower than the image's current worst case (initially the
clean image). An image is fooled when its worst case is misclassified (p(fake) >= 0.5 is
"fake"); only images not yet fooled go to the next run or member. Alone, the first member
runs on every image, so misclassified images also get a worst-case score (AUC/AP under
attack). Given `candidates` (the adversarial images of attacks already run at this eps,
e.g. the sweep's FGSM, BIM and PGD), those are offered first: every image then has a
worst case over them, the result is at most as robust as each of them per image, and the
members run only on the images none of them fooled.

Random state: each member draws from torch's global CPU generator (torchattacks draws on
the CPU and copies to the device), seeded with `member_seed(seed, member, eps)` inside
torch.random.fork_rng, so the caller's global RNG state is left exactly as it was. Same
model, images (same batch composition), budget and seed give the same bytes on one machine.
Inputs on the 8-bit grid and eps a whole number of grey levels keep rounded points inside
the ball (see attacks.quantize_8bit).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import ModuleType

import torch
from torch import nn

from robust_deepfake.config import EnsembleConfig
from robust_deepfake.robustness.attacks import attack_mode, quantize_8bit
from robust_deepfake.units import rng_offset

MEMBERS = ("apgd", "fab", "square")
TORCHATTACKS_HELP = ("torchattacks is not installed: `pip install --no-deps torchattacks==3.5.1` "
                     "(--no-deps: its requests~=2.25.1 pin conflicts with ours; `make install` does this from "
                     "pyproject.toml's [tool.robust-deepfake] install-without-deps)")


def require_torchattacks() -> ModuleType:
    """The torchattacks module, or a one-line ImportError saying how to install it."""
    try:
        import torchattacks
    except ImportError:
        raise ImportError(TORCHATTACKS_HELP) from None
    return torchattacks


@dataclass(frozen=True)
class EnsembleBudget:
    """Members (run in MEMBERS order) and their budgets. Restarts count runs, as in
    torchattacks/AutoAttack (1 = a single run from one random start)."""

    members: tuple[str, ...] = ("apgd", "square")
    apgd_steps: int = 100
    apgd_restarts: int = 1
    square_queries: int = 5000
    square_restarts: int = 1
    square_p_init: float = 0.8
    fab_steps: int = 100
    fab_restarts: int = 1

    def __post_init__(self) -> None:
        unknown = sorted(set(self.members) - set(MEMBERS))
        if unknown or not self.members:
            raise ValueError(f"ensemble members must be a non-empty subset of {MEMBERS}, got {self.members}")
        for name in ("apgd_steps", "apgd_restarts", "square_queries", "square_restarts", "fab_steps",
                     "fab_restarts"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.square_p_init <= 1:
            raise ValueError(f"square_p_init must be in (0, 1], got {self.square_p_init}")

    @property
    def order(self) -> tuple[str, ...]:
        return tuple(name for name in MEMBERS if name in self.members)

    @classmethod
    def from_config(cls, config: EnsembleConfig) -> EnsembleBudget:
        """params.yaml's attack.ensemble: APGD always, FAB when `fab`, Square unless 0 queries."""
        members = ("apgd",) + (("fab",) if config.fab else ()) + (("square",) if config.square_queries else ())
        return cls(members, config.apgd_steps, config.apgd_restarts, max(config.square_queries, 1),
                   config.square_restarts, fab_steps=config.fab_steps, fab_restarts=config.fab_restarts)

    def gradient_passes(self) -> int:
        """Forward-backward passes per image of the gradient members at most (progress bars)."""
        return (self.apgd_steps + 1) * self.apgd_restarts + (
            self.fab_steps * self.fab_restarts if "fab" in self.members else 0)


@dataclass(frozen=True)
class MemberStats:
    """One member's share of the work, summed over its runs: images it ran on, model
    calls (gradient calls per image for APGD and FAB, forward queries for Square) and
    images it turned from robust to fooled."""

    name: str
    attacked: int
    queries: int
    fooled: int


@dataclass
class EnsembleResult:
    """Per image: the worst-case adversarial image (8-bit when quantized), its p(fake) and
    true-class margin, and which member fooled it first ('' = robust, 'clean' = already
    misclassified without attack and not flipped back by the first member's point)."""

    adversarial: torch.Tensor
    p_fake: torch.Tensor
    margin: torch.Tensor
    fooled_by: list[str]
    stats: list[MemberStats] = field(default_factory=list)

    @property
    def robust(self) -> torch.Tensor:
        return torch.tensor([name == "" for name in self.fooled_by], dtype=torch.bool)


def member_seed(seed: int, member: str, eps: float) -> int:
    """The member's seed: depends on (seed, member, eps) only, like sweep.attack_generator."""
    key = sum(ord(c) * 31**i for i, c in enumerate(member)) % 100_003
    return (seed * 1_000_003 + key * 101 + rng_offset(eps)) % (2**63 - 1)


@torch.no_grad()
def score(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """p(fake) and the true-class margin z_y - z_other (float32), as the sweep scores."""
    logits = model(images).float()
    p_fake = logits.softmax(dim=1)[:, 1]
    true = logits.gather(1, labels[:, None])[:, 0]
    return p_fake, true - logits.gather(1, (1 - labels)[:, None])[:, 0]


def misclassified(p_fake: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return (p_fake >= 0.5).long() != labels


def project(adv: torch.Tensor, images: torch.Tensor, eps: float) -> torch.Tensor:
    """Into B_inf(images, eps) and [0, 1]."""
    return torch.clamp(torch.minimum(torch.maximum(adv, images - eps), images + eps), 0, 1).detach()


class WorstCase:
    """The running worst case per image over every candidate offered so far: the lowest
    true-class margin after projection (and 8-bit rounding when `quantize`)."""

    def __init__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, quantize: bool,
                 start: torch.Tensor | None = None, start_name: str = "clean") -> None:
        """`start`: the first candidate per image (already rounded), by default the clean image."""
        self.model, self.images, self.labels, self.quantize = model, images, labels, quantize
        self.adversarial = (images if start is None else start).clone()
        self.p_fake, self.margin = score(model, self.adversarial, labels)
        self.fooled_by = [start_name if bad else "" for bad in misclassified(self.p_fake, labels).tolist()]

    def todo(self) -> torch.Tensor:
        return torch.tensor([name == "" for name in self.fooled_by], dtype=torch.bool,
                            device=self.images.device).nonzero()[:, 0]

    def offer(self, rows: torch.Tensor, candidate: torch.Tensor, eps: float) -> None:
        candidate = project(candidate, self.images[rows], eps)
        if self.quantize:
            candidate = quantize_8bit(candidate)
        p_fake, margin = score(self.model, candidate, self.labels[rows])
        better = margin < self.margin[rows]
        keep = rows[better]
        self.adversarial[keep] = candidate[better]
        self.p_fake[keep], self.margin[keep] = p_fake[better], margin[better]

    def settle(self, member: str) -> int:
        """Credit `member` with the images it fooled first; their count. (A kept point has
        a lower margin than the one it replaces, so a fooled image never turns robust.)"""
        newly = 0
        for i, bad in enumerate(misclassified(self.p_fake, self.labels).tolist()):
            if bad and self.fooled_by[i] == "":
                self.fooled_by[i] = member
                newly += 1
        return newly


def _runs(ta: ModuleType, model: nn.Module, member: str, eps: float, budget: EnsembleBudget, seed: int):
    """(restarts, run): run(x, y, restart) -> (candidate images, model calls) for one run."""
    if member == "apgd":
        apgd = ta.APGD(model, norm="Linf", eps=eps, steps=budget.apgd_steps, n_restarts=1, seed=seed,
                       loss="ce", rho=0.75)

        def run_apgd(x, y, restart):
            x_best, _, _, x_best_adv = apgd.attack_single_run(x, y)  # max-CE point, last misclassified one
            return [x_best, x_best_adv], len(y) * (budget.apgd_steps + 1)
        return budget.apgd_restarts, run_apgd
    if member == "square":
        square = ta.Square(model, norm="Linf", eps=eps, n_queries=budget.square_queries, n_restarts=1,
                           p_init=budget.square_p_init, loss="margin", resc_schedule=True, seed=seed)

        def run_square(x, y, restart):
            square.init_hyperparam(x)
            queries, x_best = square.attack_single_run(x, y)  # the lowest-margin point found
            return [x_best], int(queries.sum().item())
        return budget.square_restarts, run_square
    fab = ta.FAB(model, norm="Linf", eps=eps, steps=budget.fab_steps, n_restarts=1, seed=seed, n_classes=2)

    def run_fab(x, y, restart):
        return [fab.attack_single_run(x, y, use_rand_start=restart > 0)], len(y) * budget.fab_steps
    return budget.fab_restarts, run_fab


def run_ensemble(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, eps: float,
                 budget: EnsembleBudget = EnsembleBudget(), seed: int = 0, quantize: bool = True,
                 candidates: Mapping[str, torch.Tensor] | None = None) -> EnsembleResult:
    """The per-image worst case over `candidates` (attack name -> adversarial images of
    these images at `eps`, offered in order) and the budget's members at L-inf budget `eps`.

    `images` (N, C, H, W) in [0, 1] on the model's device, `labels` (N,) with 1 = fake.
    The model is attacked in eval mode with frozen parameters (both restored)."""
    ta = require_torchattacks()
    images, labels = images.detach(), labels.detach().long()
    with attack_mode(model):
        worst = WorstCase(model, images, labels, quantize)
        stats = []
        if eps == 0:
            return EnsembleResult(worst.adversarial, worst.p_fake, worst.margin, worst.fooled_by)
        every = torch.arange(len(labels), device=images.device)
        for name, candidate in (candidates or {}).items():
            worst.offer(every, candidate.detach(), eps)
            worst.settle(name)
        attack_all = not candidates
        for index, member in enumerate(budget.order):
            attacked = queries = fooled = 0
            member_rng = member_seed(seed, member, eps)
            with torch.random.fork_rng(devices=[]):  # torchattacks draws from the global CPU generator
                torch.random.default_generator.manual_seed(member_rng)
                restarts, run = _runs(ta, model, member, eps, budget, member_rng)
                for restart in range(restarts):
                    rows = every if attack_all and index == restart == 0 else worst.todo()
                    if len(rows) == 0:
                        break
                    candidates, calls = run(images[rows], labels[rows], restart)
                    for candidate in candidates:
                        worst.offer(rows, candidate.detach(), eps)
                    attacked, queries = attacked + len(rows), queries + calls
                    fooled += worst.settle(member)
            stats.append(MemberStats(member, attacked, queries, fooled))
    return EnsembleResult(worst.adversarial, worst.p_fake, worst.margin, worst.fooled_by, stats)
