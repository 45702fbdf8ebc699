"""Gradient regularization on shallow feature statistics.

For early features f (N, C, H, W), per sample and channel:

    mu    = mean_hw(f)
    sigma = sqrt(var_hw(f) + 1e-6)
    f'    = (f - mu) / sigma * (sigma + d_sigma) + (mu + d_mu)

where d = (d_mu, d_sigma) in R^{2C} has L2 norm `epsilon` per sample and is

* `random`: a Gaussian direction rescaled to that norm (the seed's description), or
* `gradient`: d = epsilon * g / ||g||, g = dL/d(mu, sigma) (Guan et al., "Improving
  generalization of deepfake detectors by imposing gradient regularization", IEEE TIFS
  2024, Eq. 9): the worst-case first-order shift of the statistics.

Loss: L = (1 - alpha) * CE(late(f)) + alpha * CE(late(f')), both class-weighted. f is
computed once; f' is built from f.detach(), so the perturbed term trains the late part
only. g needs no extra pass: writing the clean features as f = f_norm * (sigma + 0) +
(mu + 0) with a zero perturbation leaf, dL/d(d_mu) = sum_hw dL/df and
dL/d(d_sigma) = sum_hw dL/df * f_norm, so the clean backward's dL/df is all it takes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from robust_deepfake.config import RegConfig

STAT_EPS = 1e-6


def channel_stats(f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample, per-channel mean and std over H, W; shapes (N, C, 1, 1)."""
    mu = f.mean(dim=(2, 3), keepdim=True)
    var = f.var(dim=(2, 3), keepdim=True, unbiased=False)
    return mu, torch.sqrt(var + STAT_EPS)


def perturb_statistics(
    f: torch.Tensor, d_mu: torch.Tensor, d_sigma: torch.Tensor
) -> torch.Tensor:
    """Shift f's per-channel mean by d_mu and std by d_sigma (both (N, C))."""
    mu, sigma = channel_stats(f)
    f_norm = (f - mu) / sigma
    return f_norm * (sigma + d_sigma[..., None, None]) + (mu + d_mu[..., None, None])


def _to_norm(direction: torch.Tensor, epsilon: float) -> torch.Tensor:
    norm = direction.flatten(1).norm(dim=1).clamp_min(1e-12)
    return direction * (epsilon / norm)[:, None]


def random_perturbation(
    n: int, channels: int, epsilon: float, generator: torch.Generator | None, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """A Gaussian direction in (mu, sigma) space with L2 norm epsilon per sample."""
    direction = torch.randn(n, 2 * channels, generator=generator).to(device)
    d = _to_norm(direction, epsilon)
    return d[:, :channels], d[:, channels:]


def gradient_perturbation(
    grad_f: torch.Tensor, f: torch.Tensor, epsilon: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """eps * g / ||g|| with g = dL/d(mu, sigma) obtained from dL/df by the chain rule."""
    mu, sigma = channel_stats(f)
    f_norm = (f - mu) / sigma
    g_mu = grad_f.sum(dim=(2, 3))
    g_sigma = (grad_f * f_norm).sum(dim=(2, 3))
    d = _to_norm(torch.nan_to_num(torch.cat([g_mu, g_sigma], dim=1).float()), epsilon)
    channels = f.shape[1]
    return d[:, :channels].to(f.dtype), d[:, channels:].to(f.dtype)


@dataclass
class StepLosses:
    total: float
    clean: float
    perturbed: float | None
    logits: torch.Tensor  # clean logits, detached (for running accuracy)


def training_step(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    criterion: nn.Module,
    reg: RegConfig | None,
    generator: torch.Generator | None = None,
    scale=lambda loss: loss,
    autocast=None,
) -> StepLosses:
    """Forward and backward for one batch (the optimizer step is the caller's).

    reg=None is the baseline: one forward, one backward. With reg: one early forward,
    two late forwards and backwards. `scale` is GradScaler.scale under fp16 AMP.
    """
    import contextlib

    autocast = autocast or contextlib.nullcontext
    with autocast():
        f = model.features_early(images)
        logits = model.features_late(f)
        clean = criterion(logits.float(), labels)
    if reg is None:
        scale(clean).backward()
        return StepLosses(clean.item(), clean.item(), None, logits.detach())

    alpha = reg.alpha
    wants_gradient = reg.mode == "gradient"
    if wants_gradient and alpha < 1:
        f.retain_grad()
    if wants_gradient and alpha >= 1:
        (grad_f,) = torch.autograd.grad(clean, f, retain_graph=True)
    scale((1.0 - alpha) * clean).backward()
    if wants_gradient and alpha < 1:
        grad_f = f.grad

    base = f.detach()
    if wants_gradient:
        d_mu, d_sigma = gradient_perturbation(grad_f, base.float(), reg.epsilon)
    else:
        d_mu, d_sigma = random_perturbation(base.shape[0], base.shape[1], reg.epsilon, generator, base.device)
    with autocast():
        perturbed_features = perturb_statistics(base.float(), d_mu.float(), d_sigma.float()).to(base.dtype)
        if getattr(model, "channels_last", False):
            perturbed_features = perturbed_features.contiguous(memory_format=torch.channels_last)
        perturbed = criterion(model.features_late(perturbed_features).float(), labels)
    scale(alpha * perturbed).backward()
    total = (1.0 - alpha) * clean.item() + alpha * perturbed.item()
    return StepLosses(total, clean.item(), perturbed.item(), logits.detach())
