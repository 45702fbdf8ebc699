"""Untargeted L-inf attacks in pixel space: FGSM, BIM, PGD and MI-FGSM.

Images are in [0, 1] and the model normalizes internally, so eps is in pixel units
(4/255 means four grey levels) and every result is clamped to [0, 1] and to the
eps-ball around the input. The update rules follow torchattacks 3.5.1, which the tests
use as an oracle (identical outputs for FGSM, BIM, MI-FGSM, and for PGD given the same
random start); the loss is the mean cross-entropy against the true label.

Speed: during an attack the model's parameters are frozen (requires_grad=False), so
autograd computes gradients for the input only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


@contextlib.contextmanager
def attack_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and frozen parameters for the duration of an attack; both restored."""
    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)


def _input_gradient(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    images = images.detach().requires_grad_(True)
    loss = nn.functional.cross_entropy(model(images).float(), labels)
    (grad,) = torch.autograd.grad(loss, images)
    return grad


def _project(adv: torch.Tensor, images: torch.Tensor, eps: float) -> torch.Tensor:
    delta = torch.clamp(adv - images, min=-eps, max=eps)
    return torch.clamp(images + delta, min=0, max=1).detach()


class Attack:
    """Base: `attack(images, labels)` returns adversarial images (model left as it was)."""

    name = "attack"
    iterative = True

    def __init__(self, model: nn.Module, eps: float) -> None:
        if eps < 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        self.model = model
        self.eps = float(eps)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        images = images.detach()
        if self.eps == 0:
            return images.clone()
        with attack_mode(self.model), torch.enable_grad():
            return self.perturb(images, labels)

    def perturb(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v}" for k, v in vars(self).items() if k != "model" and not k.startswith("_"))
        return f"{type(self).__name__}({fields})"


class FGSM(Attack):
    r"""Fast Gradient Sign Method (Goodfellow et al., ICLR 2015).

    x_adv = clip_[0,1](x + eps * sign(grad_x L(f(x), y)))
    """

    name = "fgsm"
    iterative = False

    def perturb(self, images, labels):
        grad = _input_gradient(self.model, images, labels)
        return torch.clamp(images + self.eps * grad.sign(), min=0, max=1).detach()


class BIM(Attack):
    r"""Basic Iterative Method (Kurakin et al., ICLR 2017 workshop), no random start.

    x_0 = x;  x_{t+1} = clip_{[0,1] and [x-eps, x+eps]}(x_t + alpha * sign(grad L(f(x_t), y)))
    """

    name = "bim"

    def __init__(self, model, eps, alpha: float, steps: int) -> None:
        super().__init__(model, eps)
        self.alpha, self.steps = float(alpha), int(steps)

    def perturb(self, images, labels):
        adv = images.clone()
        lower = torch.clamp(images - self.eps, min=0)
        upper = images + self.eps
        for _ in range(self.steps):
            step = adv + self.alpha * _input_gradient(self.model, adv, labels).sign()
            adv = torch.clamp(torch.minimum(torch.maximum(step, lower), upper), max=1).detach()
        return adv


class PGD(Attack):
    r"""Projected Gradient Descent (Madry et al., ICLR 2018).

    x_0 = clip_[0,1](x + U(-eps, eps)) with random_start, else x;
    x_{t+1} = Proj_{B_inf(x, eps) and [0,1]}(x_t + alpha * sign(grad L(f(x_t), y)))
    """

    name = "pgd"

    def __init__(self, model, eps, alpha: float, steps: int, random_start: bool = True,
                 generator: torch.Generator | None = None) -> None:
        super().__init__(model, eps)
        self.alpha, self.steps, self.random_start = float(alpha), int(steps), bool(random_start)
        self._generator = generator

    def start(self, images: torch.Tensor) -> torch.Tensor:
        if not self.random_start:
            return images.clone()
        noise = torch.empty(images.shape, dtype=images.dtype).uniform_(-self.eps, self.eps, generator=self._generator)
        return torch.clamp(images + noise.to(images.device), min=0, max=1).detach()

    def perturb(self, images, labels):
        adv = self.start(images)
        for _ in range(self.steps):
            adv = _project(adv + self.alpha * _input_gradient(self.model, adv, labels).sign(), images, self.eps)
        return adv


class MIFGSM(Attack):
    r"""Momentum Iterative FGSM (Dong et al., CVPR 2018).

    g_{t+1} = mu * g_t + grad / mean(|grad|);
    x_{t+1} = Proj_{B_inf(x, eps) and [0,1]}(x_t + alpha * sign(g_{t+1}))
    """

    name = "mifgsm"

    def __init__(self, model, eps, alpha: float, steps: int, decay: float = 1.0) -> None:
        super().__init__(model, eps)
        self.alpha, self.steps, self.decay = float(alpha), int(steps), float(decay)

    def perturb(self, images, labels):
        adv = images.clone()
        momentum = torch.zeros_like(images)
        for _ in range(self.steps):
            grad = _input_gradient(self.model, adv, labels)
            grad = grad / torch.mean(torch.abs(grad), dim=(1, 2, 3), keepdim=True)
            momentum = grad + momentum * self.decay
            adv = _project(adv + self.alpha * momentum.sign(), images, self.eps)
        return adv


ATTACKS = {cls.name: cls for cls in (FGSM, BIM, PGD, MIFGSM)}


def gradient_passes(name: str, steps: int) -> int:
    """Forward-backward passes one attack of `name` costs per image (progress bars)."""
    return steps if ATTACKS[name].iterative else 1


def quantize_8bit(images: torch.Tensor) -> torch.Tensor:
    """Round [0, 1] images to the 256 grey levels of a saved 8-bit image.

    A published adversarial image is stored with 8 bits per channel: a perturbation
    below half a grey level vanishes. For budgets that are whole grey levels (k/255)
    and inputs on the grid (decoded PNG/JPEG), the rounded image stays inside the eps-ball."""
    return torch.round(images * 255) / 255


def build_attack(name: str, model: nn.Module, eps: float, config, generator: torch.Generator | None = None) -> Attack:
    """An attack configured from params.yaml's `attack` section at budget eps."""
    alpha = config.step_size_for(eps)
    if name == "fgsm":
        return FGSM(model, eps)
    if name == "bim":
        return BIM(model, eps, alpha, config.steps)
    if name == "pgd":
        return PGD(model, eps, alpha, config.steps, config.random_start, generator)
    if name == "mifgsm":
        return MIFGSM(model, eps, alpha, config.steps, config.momentum)
    raise ValueError(f"unknown attack {name!r}; expected one of {sorted(ATTACKS)}")
