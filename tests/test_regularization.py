"""The shallow-statistics regularizer against its definition (docs/method.md, "The regularizer")."""

import pytest
import torch

from robust_deepfake.config import ModelConfig, RegConfig
from robust_deepfake.model.detector import build_detector
from robust_deepfake.model.regularization import (
    STAT_EPS,
    channel_stats,
    gradient_perturbation,
    perturb_statistics,
    perturbation,
    perturbation_norms,
    random_perturbation,
)
from robust_deepfake.model.training import training_step


pytestmark = pytest.mark.usefixtures("one_thread")


def _stats_norm(f: torch.Tensor) -> torch.Tensor:
    """||(mu, sigma)|| per sample, written out from the definition (not via the library)."""
    mu = f.mean(dim=(2, 3))
    sigma = torch.sqrt(f.var(dim=(2, 3), unbiased=False) + STAT_EPS)
    return torch.sqrt((mu**2).sum(dim=1) + (sigma**2).sum(dim=1))


def test_perturbed_features_have_exactly_the_requested_statistics():
    torch.manual_seed(0)
    f = torch.randn(4, 8, 16, 16, dtype=torch.float64) * 3 + 1
    d_mu, d_sigma = random_perturbation(torch.full((4,), 0.5, dtype=torch.float64), 8, generator=None)
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
    d_mu, d_sigma = gradient_perturbation(f_var.grad, f, torch.full((3,), 0.3, dtype=torch.float64))
    torch.testing.assert_close(torch.cat([d_mu, d_sigma], dim=1), expected.float().double(), rtol=1e-5, atol=1e-6)


# --- the size of the perturbation: epsilon_scale ---------------------------------------


def _features(seed: int = 2) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    # samples on different scales, so a per-batch (instead of per-sample) norm would show
    scale = torch.tensor([0.5, 1.0, 3.0, 10.0]).view(4, 1, 1, 1)
    return (torch.randn(4, 6, 8, 8, generator=generator) * scale + scale).float()


def _grad_like(f: torch.Tensor) -> torch.Tensor:
    return torch.randn(f.shape, generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("mode", ["random", "gradient"])
def test_relative_epsilon_scales_with_each_samples_statistics(mode):
    f = _features()
    reg = RegConfig(epsilon=0.05, epsilon_scale="relative", mode=mode)
    expected = 0.05 * _stats_norm(f.double()).float()
    torch.testing.assert_close(perturbation_norms(f, reg), expected, rtol=1e-5, atol=0)
    d_mu, d_sigma, relative = perturbation(f, reg, _grad_like(f), torch.Generator().manual_seed(0))
    norms = torch.cat([d_mu, d_sigma], dim=1).norm(dim=1)
    torch.testing.assert_close(norms, expected, rtol=1e-5, atol=0)
    torch.testing.assert_close(relative, torch.full((4,), 0.05), rtol=1e-5, atol=1e-5)
    assert norms.max() / norms.min() > 5, "the per-sample norms should follow the per-sample statistics"


@pytest.mark.parametrize("mode", ["random", "gradient"])
def test_absolute_epsilon_is_the_norm_itself(mode):
    f = _features()
    reg = RegConfig(epsilon=0.3, epsilon_scale="absolute", mode=mode)
    torch.testing.assert_close(perturbation_norms(f, reg), torch.full((4,), 0.3))
    d_mu, d_sigma, relative = perturbation(f, reg, _grad_like(f), torch.Generator().manual_seed(0))
    torch.testing.assert_close(torch.cat([d_mu, d_sigma], dim=1).norm(dim=1), torch.full((4,), 0.3))
    # the reported size is relative to each sample's statistics even in absolute mode
    torch.testing.assert_close(relative, 0.3 / _stats_norm(f.double()).float(), rtol=1e-5, atol=0)


@pytest.mark.parametrize("scale", ["relative", "absolute"])
@pytest.mark.parametrize("mode", ["random", "gradient"])
def test_zero_epsilon_gives_a_zero_perturbation(mode, scale):
    f = _features()
    reg = RegConfig(epsilon=0.0, epsilon_scale=scale, mode=mode)
    d_mu, d_sigma, relative = perturbation(f, reg, _grad_like(f), torch.Generator().manual_seed(0))
    assert torch.equal(d_mu, torch.zeros_like(d_mu)) and torch.equal(d_sigma, torch.zeros_like(d_sigma))
    assert torch.equal(relative, torch.zeros(4))
    torch.testing.assert_close(perturb_statistics(f, d_mu, d_sigma), f, rtol=1e-5, atol=1e-5)


def test_random_perturbation_is_seeded_by_its_generator():
    norms = torch.ones(3)
    first = random_perturbation(norms, 4, torch.Generator().manual_seed(5))
    second = random_perturbation(norms, 4, torch.Generator().manual_seed(5))
    other = random_perturbation(norms, 4, torch.Generator().manual_seed(6))
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    assert not torch.equal(first[0], other[0])


# --- the training step -----------------------------------------------------------------


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
def test_alpha_zero_has_the_baseline_gradients_but_not_its_batchnorm(setup, mode):
    """At alpha 0 one step's gradients are the baseline's, but the unweighted second pass
    still runs in train mode and moves BatchNorm's running statistics: alpha 0 trains
    another model, which is why params refuse it (RegConfig)."""
    with pytest.raises(ValueError, match="0 is not the baseline"):
        RegConfig(alpha=0.0)
    model, images, labels, criterion = setup
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    baseline = training_step(model, images, labels, criterion, None)
    baseline_grads, baseline_state = _grads(model), {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(state)
    model.zero_grad(set_to_none=True)
    alpha_zero = RegConfig.model_construct(**{**RegConfig().model_dump(), "alpha": 0.0, "mode": mode})
    reg = training_step(model, images, labels, criterion, alpha_zero)
    assert float(reg.total) == pytest.approx(float(baseline.total), abs=1e-6)
    reg_grads = _grads(model)
    assert reg_grads.keys() == baseline_grads.keys()
    for name, grad in baseline_grads.items():
        torch.testing.assert_close(reg_grads[name], grad, rtol=1e-5, atol=1e-7, msg=name)
    moved = [name for name, value in model.state_dict().items()
             if "running_" in name and not torch.equal(value, baseline_state[name])]
    assert moved, "the second pass moves the late layers' BatchNorm running statistics"


@pytest.mark.parametrize("mode", ["random", "gradient"])
def test_step_losses_are_detached_scalars_and_mix_by_alpha(setup, mode):
    model, images, labels, criterion = setup
    model.train()
    losses = training_step(model, images, labels, criterion, RegConfig(alpha=0.3, epsilon=0.1, mode=mode),
                           generator=torch.Generator().manual_seed(0))
    for value in (losses.total, losses.clean, losses.perturbed, losses.correct, losses.relative_size):
        assert isinstance(value, torch.Tensor) and value.dim() == 0 and not value.requires_grad
    torch.testing.assert_close(losses.total, 0.7 * losses.clean + 0.3 * losses.perturbed)
    assert float(losses.relative_size) == pytest.approx(0.1, rel=1e-5)
    assert 0 <= int(losses.correct) <= len(labels)

    baseline = training_step(model, images, labels, criterion, None)
    assert baseline.perturbed is None and baseline.relative_size is None
    assert baseline.total.dim() == 0 and not baseline.total.requires_grad


@pytest.mark.parametrize("reg", [None, RegConfig(mode="random"), RegConfig(mode="gradient"),
                                 RegConfig(mode="gradient", alpha=1.0)], ids=["baseline", "random", "gradient",
                                                                             "gradient-alpha1"])
def test_training_step_reads_nothing_back_to_the_host(setup, monkeypatch, reg):
    """No .item() / float() / bool() / .tolist() / .numpy() inside the step: each is a
    device->host sync that stalls a GPU pipeline once per batch."""
    model, images, labels, criterion = setup
    model.train()

    def host_read(*args, **kwargs):
        raise AssertionError("training_step read a tensor back to the host")

    for name in ("item", "tolist", "numpy", "__float__", "__int__", "__bool__"):
        monkeypatch.setattr(torch.Tensor, name, host_read)
    losses = training_step(model, images, labels, criterion, reg, generator=torch.Generator().manual_seed(0))
    monkeypatch.undo()
    assert torch.isfinite(losses.total)


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
    norms = torch.full((8,), 2.0)
    with torch.no_grad():
        d_mu, d_sigma = gradient_perturbation(f.grad, f, norms)
        worst = per_sample(model.features_late(perturb_statistics(f, d_mu, d_sigma)), labels)
        generator = torch.Generator().manual_seed(0)
        random_losses = []
        for _ in range(10):
            r_mu, r_sigma = random_perturbation(norms, f.shape[1], generator)
            random_losses.append(per_sample(model.features_late(perturb_statistics(f, r_mu, r_sigma)), labels))
        random_mean = torch.stack(random_losses).mean(0)
    assert worst.mean() > random_mean.mean()
    assert (worst > random_mean).float().mean() >= 0.75
