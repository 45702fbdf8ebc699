"""Our attacks against the torchattacks 3.5.1 oracle, the eps-ball/[0,1] guarantees, and
8-bit rounding of adversarial images."""

import pytest
import torch
import torchattacks

from robust_deepfake.robustness.attacks import (
    ATTACKS,
    BIM,
    FGSM,
    MIFGSM,
    PGD,
    attack_mode,
    build_attack,
    gradient_passes,
    quantize_8bit,
)
from robust_deepfake.config import AttackConfig, ModelConfig
from robust_deepfake.model.detector import build_detector

EPS = 4 / 255


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    net = build_detector(ModelConfig(channels_last=False, drop_rate=0.0), split_at=2)
    # a few BN updates so running stats differ from the init: eval vs train mode matters
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.rand(16, 3, 32, 32))
    return net.eval()


@pytest.fixture(scope="module")
def batch():
    generator = torch.Generator().manual_seed(1)
    images = torch.rand(6, 3, 32, 32, generator=generator)
    images[0, :, :4, :4] = 0.0  # pixels at the box edges exercise the clamps
    images[1, :, :4, :4] = 1.0
    return images, torch.tensor([0, 1, 0, 1, 1, 0])


def _check_ball(adv, images, eps):
    assert (adv - images).abs().max() <= eps + 1e-6
    assert adv.min() >= 0 and adv.max() <= 1


def test_fgsm_matches_torchattacks(model, batch):
    images, labels = batch
    ours = FGSM(model, EPS)(images, labels)
    oracle = torchattacks.FGSM(model, eps=EPS)(images, labels)
    assert (ours - oracle).abs().max() <= 1e-6
    _check_ball(ours, images, EPS)
    assert (ours != images).any()


@pytest.mark.parametrize("steps", [1, 5])
def test_bim_matches_torchattacks(model, batch, steps):
    images, labels = batch
    ours = BIM(model, EPS, alpha=1 / 255, steps=steps)(images, labels)
    oracle = torchattacks.BIM(model, eps=EPS, alpha=1 / 255, steps=steps)(images, labels)
    assert (ours - oracle).abs().max() <= 1e-6
    _check_ball(ours, images, EPS)


def test_pgd_matches_torchattacks_given_the_same_random_start(model, batch):
    images, labels = batch
    torch.manual_seed(1234)  # torchattacks draws its start from the global generator
    oracle = torchattacks.PGD(model, eps=EPS, alpha=1 / 255, steps=5, random_start=True)(images, labels)
    ours = PGD(model, EPS, alpha=1 / 255, steps=5, generator=torch.Generator().manual_seed(1234))(images, labels)
    assert (ours - oracle).abs().max() <= 1e-6
    _check_ball(ours, images, EPS)


def test_pgd_without_random_start_matches(model, batch):
    images, labels = batch
    oracle = torchattacks.PGD(model, eps=EPS, alpha=1 / 255, steps=3, random_start=False)(images, labels)
    ours = PGD(model, EPS, alpha=1 / 255, steps=3, random_start=False)(images, labels)
    assert (ours - oracle).abs().max() <= 1e-6


def test_mifgsm_matches_torchattacks(model, batch):
    images, labels = batch
    oracle = torchattacks.MIFGSM(model, eps=EPS, alpha=1 / 255, steps=4, decay=1.0)(images, labels)
    ours = MIFGSM(model, EPS, alpha=1 / 255, steps=4, decay=1.0)(images, labels)
    assert (ours - oracle).abs().max() <= 1e-6
    _check_ball(ours, images, EPS)


@pytest.mark.parametrize("name", ["fgsm", "bim", "pgd", "mifgsm"])
@pytest.mark.parametrize("eps", [0.0, 1 / 255, 8 / 255])
def test_every_attack_stays_in_the_ball_and_the_box(model, batch, name, eps):
    images, labels = batch
    attack = build_attack(name, model, eps, AttackConfig(steps=3), torch.Generator().manual_seed(0))
    adv = attack(images, labels)
    _check_ball(adv, images, eps)
    if eps == 0:
        assert torch.equal(adv, images)


def test_attacks_raise_the_loss(model, batch):
    images, labels = batch
    clean = torch.nn.functional.cross_entropy(model(images), labels)
    for attack in (FGSM(model, EPS), PGD(model, EPS, 1 / 255, 5, generator=torch.Generator().manual_seed(0))):
        with torch.no_grad():
            assert torch.nn.functional.cross_entropy(model(attack(images, labels)), labels) > clean


def test_attack_mode_restores_training_state_and_grad_flags(model):
    model.train()
    frozen = next(model.parameters())
    frozen.requires_grad_(False)
    with attack_mode(model):
        assert not model.training
        assert not any(p.requires_grad for p in model.parameters())
    assert model.training and not frozen.requires_grad
    assert all(p.requires_grad for p in list(model.parameters())[1:])
    frozen.requires_grad_(True)
    model.eval()


def test_relative_and_absolute_step_sizes():
    assert AttackConfig(step_size_relative=0.25).step_size_for(8 / 255) == pytest.approx(2 / 255)
    assert AttackConfig(step_size="1/255").step_size_for(8 / 255) == pytest.approx(1 / 255)


def test_gradient_passes_per_image():
    assert gradient_passes("fgsm", 10) == 1
    assert gradient_passes("bim", 10) == 10
    assert gradient_passes("pgd", 3) == 3
    assert gradient_passes("mifgsm", 7) == 7
    assert set(ATTACKS) == {"fgsm", "bim", "pgd", "mifgsm"}
    with pytest.raises(KeyError):
        gradient_passes("cw", 3)


def test_unknown_attack_name_is_an_error(model):
    with pytest.raises(ValueError, match="unknown attack"):
        build_attack("cw", model, EPS, AttackConfig())


def test_quantize_8bit_maps_onto_the_256_grey_levels():
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    x[0, 0, 0, :4] = torch.tensor([0.0, 1.0, 0.5 / 255 - 1e-4, 254.5 / 255 + 1e-4])
    q = quantize_8bit(x)
    levels = q * 255
    assert torch.equal(levels, torch.round(levels))  # whole grey levels
    assert q.min() >= 0 and q.max() <= 1
    assert (q - x).abs().max() <= 0.5 / 255 + 1e-7  # nearest level
    assert q[0, 0, 0, :4].tolist() == [0.0, 1.0, 0.0, 1.0]
    # idempotent, and what an 8-bit image decodes to
    assert torch.equal(quantize_8bit(q), q)
    as_uint8 = torch.round(x * 255).to(torch.uint8)
    assert torch.equal(q, as_uint8.float() / 255)
    assert torch.equal(quantize_8bit(as_uint8.float() / 255), as_uint8.float() / 255)


@pytest.fixture(scope="module")
def grid_batch(batch):
    """The batch on the 8-bit grid, as decoded PNG/JPEG inputs are (0 and 255 corners kept)."""
    images, labels = batch
    return quantize_8bit(images), labels


@pytest.mark.parametrize("name", ["fgsm", "bim", "pgd", "mifgsm"])
@pytest.mark.parametrize("grey", [1, 2, 4, 8])
def test_quantized_attack_stays_in_the_ball_and_the_box(model, grid_batch, name, grey):
    images, labels = grid_batch
    eps = grey / 255
    attack = build_attack(name, model, eps, AttackConfig(steps=3, step_size_relative=0.3),
                          torch.Generator().manual_seed(grey))
    adv = attack(images, labels)
    q = quantize_8bit(adv)
    _check_ball(q, images, eps)
    levels = (q - images) * 255
    assert torch.allclose(levels, torch.round(levels), atol=1e-4)  # moved by whole grey levels
    assert torch.round(levels).abs().max() <= grey
    assert (q != images).any()  # the perturbation survives rounding


def test_quantization_removes_sub_grey_level_perturbations(model, grid_batch):
    images, labels = grid_batch
    adv = FGSM(model, 0.4 / 255)(images, labels)
    assert (adv != images).any()
    assert torch.equal(quantize_8bit(adv), images)
