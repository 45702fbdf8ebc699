"""Gradient regularization on shallow feature statistics: the perturbation itself.

For early features f (N, C, H, W), per sample and channel:

    mu    = mean_hw(f)
    sigma = sqrt(var_hw(f) + 1e-6)
    f'    = (f - mu) / sigma * (sigma + d_sigma) + (mu + d_mu)

where d = (d_mu, d_sigma) in R^{2C} has, per sample, the L2 norm

* `reg.epsilon_scale: relative` (default): epsilon * ||(mu, sigma)|| of that sample, so
  epsilon = 0.05 shifts the statistics by 5%; or
* `absolute`: epsilon itself (the paper's convention; on a trained 64 px demo model
  ||(mu, sigma)|| is about 5.9, so an absolute 0.05 is a 0.85% shift: nearly a no-op),

and whose direction is

* `random`: a Gaussian direction (the project brief's description of the method), or
* `gradient`: g / ||g||, g = dL/d(mu, sigma) (Guan et al., "Improving generalization of
  deepfake detectors by imposing gradient regularization", IEEE TIFS 2024, Eq. 9): the
  worst-case first-order shift of the statistics.

g needs no extra pass: writing the clean features as f = f_norm * (sigma + 0) + (mu + 0)
with a zero perturbation leaf, dL/d(d_mu) = sum_hw dL/df and
dL/d(d_sigma) = sum_hw dL/df * f_norm, so the clean backward's dL/df is all it takes.
The training step that mixes the two losses lives in model/training.py.
"""

from __future__ import annotations

import torch

from robust_deepfake.config import RegConfig

STAT_EPS = 1e-6


def channel_stats(f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample, per-channel mean and std over H, W; shapes (N, C, 1, 1)."""
    mu = f.mean(dim=(2, 3), keepdim=True)
    var = f.var(dim=(2, 3), keepdim=True, unbiased=False)
    return mu, torch.sqrt(var + STAT_EPS)


def perturb_statistics(f: torch.Tensor, d_mu: torch.Tensor, d_sigma: torch.Tensor) -> torch.Tensor:
    """Shift f's per-channel mean by d_mu and std by d_sigma (both (N, C))."""
    mu, sigma = channel_stats(f)
    f_norm = (f - mu) / sigma
    return f_norm * (sigma + d_sigma[..., None, None]) + (mu + d_mu[..., None, None])


def statistics_norm(f: torch.Tensor) -> torch.Tensor:
    """||(mu, sigma)|| per sample, (N,): the yardstick of a relative perturbation."""
    mu, sigma = channel_stats(f)
    return torch.cat([mu.flatten(1), sigma.flatten(1)], dim=1).norm(dim=1)


def perturbation_norms(f: torch.Tensor, reg: RegConfig) -> torch.Tensor:
    """The L2 norm each sample's (d_mu, d_sigma) gets, (N,)."""
    if reg.epsilon_scale == "relative":
        return reg.epsilon * statistics_norm(f.float())
    return torch.full((f.shape[0],), float(reg.epsilon), device=f.device)


def _to_norm(direction: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
    length = direction.flatten(1).norm(dim=1).clamp_min(1e-12)
    return direction * (norms / length)[:, None]


def random_perturbation(
    norms: torch.Tensor, channels: int, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """A Gaussian direction in (mu, sigma) space with the given L2 norm per sample.

    Drawn on the generator's device (no host-to-device copy when the generator lives on
    the GPU; the training loop gives it one there), then used on `norms`' device."""
    where = generator.device if generator is not None else norms.device
    direction = torch.randn(norms.shape[0], 2 * channels, generator=generator, device=where)
    direction = direction.to(norms.device, non_blocking=True)
    d = _to_norm(direction, norms)
    return d[:, :channels], d[:, channels:]


def gradient_perturbation(
    grad_f: torch.Tensor, f: torch.Tensor, norms: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """norms * g / ||g|| with g = dL/d(mu, sigma) obtained from dL/df by the chain rule."""
    mu, sigma = channel_stats(f)
    f_norm = (f - mu) / sigma
    g_mu = grad_f.sum(dim=(2, 3))
    g_sigma = (grad_f * f_norm).sum(dim=(2, 3))
    d = _to_norm(torch.nan_to_num(torch.cat([g_mu, g_sigma], dim=1).float()), norms)
    channels = f.shape[1]
    return d[:, :channels].to(f.dtype), d[:, channels:].to(f.dtype)


def perturbation(
    f: torch.Tensor, reg: RegConfig, grad_f: torch.Tensor | None, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(d_mu, d_sigma, relative size ||d|| / ||(mu, sigma)|| per sample) for detached f."""
    norms = perturbation_norms(f, reg)
    if reg.mode == "gradient":
        assert grad_f is not None, "gradient mode needs dL/df from the clean backward"
        d_mu, d_sigma = gradient_perturbation(grad_f, f, norms)
    else:
        d_mu, d_sigma = random_perturbation(norms, f.shape[1], generator)
    size = torch.cat([d_mu, d_sigma], dim=1).float().norm(dim=1)
    return d_mu, d_sigma, size / statistics_norm(f.float()).clamp_min(1e-12)
