"""Untargeted L-inf attacks in pixel space: FGSM, BIM, PGD and MI-FGSM.

Images are in [0, 1] and the model normalizes internally, so eps is in pixel units
(4/255 means four grey levels) and every result is clamped to [0, 1] and to the
eps-ball around the input. The update rules follow torchattacks 3.5.1, which the tests
use as an oracle (identical outputs for FGSM, BIM, MI-FGSM, and for PGD given the same
random start); the loss is the mean cross-entropy against the true label.

Speed: during an attack the model's parameters are frozen (requires_grad=False), so
autograd computes gradients for the input only. PGD's random start is drawn where the
images are: on a GPU from a device generator seeded by one draw from the (CPU) generator
it was given, so no CPU tensor is copied per batch. CPU and GPU draws therefore differ;
each is reproducible per seed, and on the CPU the draw is the plain CPU generator's. With `amp` (params.yaml `attack.amp`), the forward and backward passes of
the attacks run under bf16 autocast on CUDA (ignored elsewhere); the loss, the gradient
sign and the projections stay in float32.
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


# Device types on which `amp` turns on bf16 autocast. CPU bf16 autocast is correct but
# slower than float32 on most CPUs; tests opt in to it to check the accuracy change.
AMP_DEVICE_TYPES = frozenset({"cuda"})


def _input_gradient(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                    autocast: contextlib.AbstractContextManager | None = None) -> torch.Tensor:
    images = images.detach().requires_grad_(True)
    with autocast or contextlib.nullcontext():  # the backward runs in the forward's dtypes
        logits = model(images)
    loss = nn.functional.cross_entropy(logits.float(), labels)
    (grad,) = torch.autograd.grad(loss, images)
    return grad


def _project(adv: torch.Tensor, images: torch.Tensor, eps: float) -> torch.Tensor:
    delta = torch.clamp(adv - images, min=-eps, max=eps)
    return torch.clamp(images + delta, min=0, max=1).detach()


class Attack:
    """Base: `attack(images, labels)` returns adversarial images (model left as it was)."""

    name = "attack"
    iterative = True

    def __init__(self, model: nn.Module, eps: float, amp: bool = False,
                 amp_device_types: frozenset[str] = AMP_DEVICE_TYPES) -> None:
        if eps < 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        self.model = model
        self.eps = float(eps)
        self.amp = bool(amp)
        self._amp_device_types = frozenset(amp_device_types)

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        """bf16 autocast when `amp` is on and the images are on an AMP device, else nothing."""
        if not self.amp or device.type not in self._amp_device_types:
            return contextlib.nullcontext()
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            return contextlib.nullcontext()  # fp16 would need loss scaling: stay in float32
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)

    def gradient(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """d loss / d images (float32), the forward under `autocast`."""
        return _input_gradient(self.model, images, labels, self.autocast(images.device))

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        images = images.detach()
        if self.eps == 0:
            return images.clone()
        with attack_mode(self.model), torch.enable_grad():
            return self.perturb(images, labels)

    def perturb(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @classmethod
    def from_config(cls, model: nn.Module, eps: float, config, generator: torch.Generator | None,
                    **amp) -> Attack:
        """This attack at budget eps from params.yaml's `attack` section (`amp`: Attack's)."""
        return cls(model, eps, **amp)

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
        grad = self.gradient(images, labels)
        return torch.clamp(images + self.eps * grad.sign(), min=0, max=1).detach()


class BIM(Attack):
    r"""Basic Iterative Method (Kurakin et al., ICLR 2017 workshop), no random start.

    x_0 = x;  x_{t+1} = clip_{[0,1] and [x-eps, x+eps]}(x_t + alpha * sign(grad L(f(x_t), y)))
    """

    name = "bim"

    def __init__(self, model, eps, alpha: float, steps: int, **amp) -> None:
        super().__init__(model, eps, **amp)
        self.alpha, self.steps = float(alpha), int(steps)

    @classmethod
    def from_config(cls, model, eps, config, generator, **amp) -> BIM:
        return cls(model, eps, config.step_size_for(eps), config.steps, **amp)

    def perturb(self, images, labels):
        adv = images.clone()
        lower = torch.clamp(images - self.eps, min=0)
        upper = images + self.eps
        for _ in range(self.steps):
            step = adv + self.alpha * self.gradient(adv, labels).sign()
            adv = torch.clamp(torch.minimum(torch.maximum(step, lower), upper), max=1).detach()
        return adv


class PGD(Attack):
    r"""Projected Gradient Descent (Madry et al., ICLR 2018).

    x_0 = clip_[0,1](x + U(-eps, eps)) with random_start, else x;
    x_{t+1} = Proj_{B_inf(x, eps) and [0,1]}(x_t + alpha * sign(grad L(f(x_t), y)))
    """

    name = "pgd"

    def __init__(self, model, eps, alpha: float, steps: int, random_start: bool = True,
                 generator: torch.Generator | None = None, **amp) -> None:
        super().__init__(model, eps, **amp)
        self.alpha, self.steps, self.random_start = float(alpha), int(steps), bool(random_start)
        self._generator = generator
        self._device_generators: dict[torch.device, torch.Generator] = {}

    @classmethod
    def from_config(cls, model, eps, config, generator, **amp) -> PGD:
        return cls(model, eps, config.step_size_for(eps), config.steps, config.random_start, generator, **amp)

    def start(self, images: torch.Tensor) -> torch.Tensor:
        """The random start, drawn on the images' device.

        CPU images: from the given generator (or torch's global one). Other
        devices: from a generator on that device, seeded once by one draw from the given
        generator and then continued batch after batch (None: the device's global
        generator, which torch.manual_seed seeds). So a GPU start is reproducible per
        seed but differs from the CPU start for the same seed."""
        if not self.random_start:
            return images.clone()
        if images.device.type == "cpu":
            noise = torch.empty(images.shape, dtype=images.dtype).uniform_(
                -self.eps, self.eps, generator=self._generator)
        else:
            noise = torch.empty(images.shape, dtype=images.dtype, device=images.device).uniform_(
                -self.eps, self.eps, generator=self.device_generator(images.device))
        return torch.clamp(images + noise, min=0, max=1).detach()

    def device_generator(self, device: torch.device) -> torch.Generator | None:
        """The generator random starts on `device` come from (see `start`)."""
        source = self._generator
        if source is None or source.device == device:
            return source
        if device not in self._device_generators:
            seed = int(torch.randint(0, 2**63 - 1, (1,), generator=source, device=source.device))
            self._device_generators[device] = torch.Generator(device=device).manual_seed(seed)
        return self._device_generators[device]

    def perturb(self, images, labels):
        adv = self.start(images)
        for _ in range(self.steps):
            adv = _project(adv + self.alpha * self.gradient(adv, labels).sign(), images, self.eps)
        return adv


class MIFGSM(Attack):
    r"""Momentum Iterative FGSM (Dong et al., CVPR 2018).

    g_{t+1} = mu * g_t + grad / mean(|grad|);
    x_{t+1} = Proj_{B_inf(x, eps) and [0,1]}(x_t + alpha * sign(g_{t+1}))
    """

    name = "mifgsm"

    def __init__(self, model, eps, alpha: float, steps: int, decay: float = 1.0, **amp) -> None:
        super().__init__(model, eps, **amp)
        self.alpha, self.steps, self.decay = float(alpha), int(steps), float(decay)

    @classmethod
    def from_config(cls, model, eps, config, generator, **amp) -> MIFGSM:
        return cls(model, eps, config.step_size_for(eps), config.steps, config.momentum, **amp)

    def perturb(self, images, labels):
        adv = images.clone()
        momentum = torch.zeros_like(images)
        for _ in range(self.steps):
            grad = self.gradient(adv, labels)
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


def build_attack(name: str, model: nn.Module, eps: float, config, generator: torch.Generator | None = None,
                 amp_device_types: frozenset[str] = AMP_DEVICE_TYPES) -> Attack:
    """An attack configured from params.yaml's `attack` section at budget eps.

    `amp_device_types`: where `config.amp` applies (CUDA; tests add "cpu")."""
    if name not in ATTACKS:
        raise ValueError(f"unknown attack {name!r}; expected one of {sorted(ATTACKS)}")
    return ATTACKS[name].from_config(model, eps, config, generator, amp=config.amp,
                                     amp_device_types=amp_device_types)
