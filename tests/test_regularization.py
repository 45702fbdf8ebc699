"""The shallow-statistics regularizer against its definition (ARCHITECTURE.md)."""

import pytest
import torch

from robust_deepfake.config import ModelConfig, RegConfig
from robust_deepfake.models import build_detector
from robust_deepfake.regularization import (
    STAT_EPS,
    channel_stats,
    gradient_perturbation,
    perturb_statistics,
    random_perturbation,
    training_step,
)


def test_perturbed_features_have_exactly_the_requested_statistics():
    torch.manual_seed(0)
    f = torch.randn(4, 8, 16, 16, dtype=torch.float64) * 3 + 1
    d_mu, d_sigma = random_perturbation(4, 8, epsilon=0.5, generator=None, device=f.device)
    d_mu, d_sigma = d_mu.double(), d_sigma.double()
    out = perturb_statistics(f, d_mu, d_sigma)
    mu, sigma = channel_stats(f)
    torch.testing.assert_close(out.mean(dim=(2, 3)), (mu.squeeze() + d_mu), rtol=0, atol=1e-10)
    raw_std = f.std(dim=(2, 3), unbiased=False)
    expected_std = (sigma.squeeze() + d_sigma) * raw_std / torch.sqrt(raw_std**2 + STAT_EPS)
    torch.testing.assert_close(out.std(dim=(2, 3), unbiased=False), expected_std, rtol=1e-10, atol=1e-10)
    norms = torch.cat([d_mu, d_sigma], dim=1).norm(dim=1)
    torch.testing.assert_close(norms, torch.full((4,), 0.5, dtype=torch.float64))


def test_zero_perturbation_is_the_identity_up_to_rounding():
    f = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    zero = torch.zeros(2, 4, dtype=torch.float64)
    torch.testing.assert_close(perturb_statistics(f, zero, zero), f)


def test_gradient_direction_equals_autograd_through_a_zero_leaf():
    """The closed form from dL/df equals the gradient w.r.t. an explicit zero leaf."""
    torch.manual_seed(1)
    f = torch.randn(3, 5, 6, 6, dtype=torch.float64)
    weight = torch.randn(5, 6, 6, dtype=torch.float64)
    loss_of = lambda features: (features * weight).sin().sum()  # noqa: E731
    leaf = torch.zeros(3, 10, dtype=torch.float64, requires_grad=True)
    loss_of(perturb_statistics(f, leaf[:, :5], leaf[:, 5:])).backward()
    expected = leaf.grad / leaf.grad.norm(dim=1, keepdim=True) * 0.3

    f_var = f.clone().requires_grad_(True)
    loss_of(f_var).backward()
    d_mu, d_sigma = gradient_perturbation(f_var.grad, f, epsilon=0.3)
    torch.testing.assert_close(torch.cat([d_mu, d_sigma], dim=1), expected.float().double(), rtol=1e-5, atol=1e-6)


@pytest.fixture
def setup():
    torch.manual_seed(0)
    model = build_detector(ModelConfig(channels_last=False, drop_rate=0.0), split_at=2)
    images = torch.rand(8, 3, 32, 32)
    labels = torch.tensor([0, 1] * 4)
    criterion = torch.nn.CrossEntropyLoss(weight=torch.tensor([0.8, 1.3]))
    return model, images, labels, criterion


def _grads(model):
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("mode", ["random", "gradient"])
def test_alpha_zero_reproduces_the_baseline(setup, mode):
    model, images, labels, criterion = setup
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    baseline = training_step(model, images, labels, criterion, None)
    baseline_grads = _grads(model)
    model.load_state_dict(state)
    model.zero_grad(set_to_none=True)
    reg = training_step(model, images, labels, criterion, RegConfig(alpha=0.0, mode=mode))
    assert reg.total == pytest.approx(baseline.total, abs=1e-6)
    reg_grads = _grads(model)
    assert reg_grads.keys() == baseline_grads.keys()
    for name, grad in baseline_grads.items():
        torch.testing.assert_close(reg_grads[name], grad, rtol=1e-5, atol=1e-7, msg=name)


def test_perturbed_term_trains_only_the_late_part(setup):
    model, images, labels, criterion = setup
    model.train()
    training_step(model, images, labels, criterion, RegConfig(alpha=1.0, mode="random"))
    early = [p.grad for n, p in model.named_parameters() if n.startswith(("body.conv_stem", "body.bn1", "body.blocks.0", "body.blocks.1."))]
    late = [p.grad for n, p in model.named_parameters() if n.startswith(("body.blocks.5", "body.classifier"))]
    assert all(g is None or g.abs().sum() == 0 for g in early)
    assert all(g is not None and g.abs().sum() > 0 for g in late)


def test_gradient_mode_is_worse_case_than_random_at_equal_norm(setup):
    """Eq. 9 picks the loss-ascent direction: on average it raises the loss more than
    random directions of the same norm."""
    model, images, labels, criterion = setup
    model.eval()
    f = model.features_early(images).detach().requires_grad_(True)
    per_sample = torch.nn.CrossEntropyLoss(reduction="none")
    per_sample(model.features_late(f), labels).sum().backward()
    epsilon = 2.0
    with torch.no_grad():
        d_mu, d_sigma = gradient_perturbation(f.grad, f, epsilon)
        worst = per_sample(model.features_late(perturb_statistics(f, d_mu, d_sigma)), labels)
        generator = torch.Generator().manual_seed(0)
        random_losses = []
        for _ in range(10):
            r_mu, r_sigma = random_perturbation(8, f.shape[1], epsilon, generator, f.device)
            random_losses.append(per_sample(model.features_late(perturb_statistics(f, r_mu, r_sigma)), labels))
        random_mean = torch.stack(random_losses).mean(0)
    assert worst.mean() > random_mean.mean()
    assert (worst > random_mean).float().mean() >= 0.75
