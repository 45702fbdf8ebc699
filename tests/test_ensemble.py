"""The worst-case ensemble (APGD-CE, FAB, Square via torchattacks) on a tiny trained CNN:
worst case <= every member, APGD >= our PGD, eps-ball / [0, 1] / 8-bit outputs, fidelity
to torchattacks' own restart loop, determinism and an untouched global RNG."""

import sys
from dataclasses import replace

import pytest
import torch
import torchattacks
from toy_models import accuracy, toy_images, train_toy_cnn

from robust_deepfake.robustness.attacks import PGD, quantize_8bit
from robust_deepfake.robustness.ensemble import (
    EnsembleBudget,
    member_seed,
    require_torchattacks,
    run_ensemble,
    score,
)

BUDGET = EnsembleBudget(members=("apgd", "fab", "square"), apgd_steps=10, square_queries=200, fab_steps=10)


@pytest.fixture(scope="module")
def toy():
    """A CNN trained on 192 synthetic images (~88% on 64 held-out ones), 1 thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    images, labels = toy_images(256, seed=0)
    model = train_toy_cnn(0, images[:192], labels[:192])
    yield model, images[192:], labels[192:]
    torch.set_num_threads(threads)


def _robust_accuracy(result) -> float:
    return float(result.robust.float().mean())


def _check_ball(adv, images, eps, grid: bool):
    assert (adv - images).abs().max() <= eps + 1e-6
    assert adv.min() >= 0 and adv.max() <= 1
    if grid:
        levels = adv * 255
        assert torch.equal(levels, torch.round(levels))


def test_ensemble_is_at_most_every_member_alone(toy):
    model, images, labels = toy
    eps = 4 / 255
    ensemble = run_ensemble(model, images, labels, eps, BUDGET, seed=3)
    alone = {name: run_ensemble(model, images, labels, eps, replace(BUDGET, members=(name,)), seed=3)
             for name in BUDGET.members}
    clean = accuracy(model, images, labels)
    accuracies = {name: _robust_accuracy(result) for name, result in alone.items()}
    print(f"clean {clean:.3f}, alone {accuracies}, ensemble {_robust_accuracy(ensemble):.3f}")
    assert accuracies["apgd"] < clean - 0.1  # the attack bites
    for name, result in alone.items():
        assert _robust_accuracy(ensemble) <= accuracies[name]
    # APGD runs first on the same images with the same seed: its robust set contains the ensemble's
    assert not (ensemble.robust & ~alone["apgd"].robust).any()
    # the worst case is never less adversarial than APGD's point
    assert (ensemble.margin <= alone["apgd"].margin + 1e-6).all()
    assert sum(s.fooled for s in ensemble.stats) == int((~ensemble.robust).sum()) - ensemble.fooled_by.count("clean")
    assert [s.name for s in ensemble.stats] == ["apgd", "fab", "square"]


@pytest.mark.parametrize("steps, relative", [(3, 0.5), (10, 0.25)])
def test_apgd_is_at_least_as_strong_as_our_pgd(toy, steps, relative):
    model, images, labels = toy
    eps = 4 / 255
    pgd = PGD(model, eps, relative * eps, steps, generator=torch.Generator().manual_seed(0))
    pgd_accuracy = accuracy(model, quantize_8bit(pgd(images, labels)), labels)
    apgd = run_ensemble(model, images, labels, eps, EnsembleBudget(members=("apgd",), apgd_steps=steps))
    print(f"steps {steps}: PGD {pgd_accuracy:.3f}, APGD {_robust_accuracy(apgd):.3f}")
    assert _robust_accuracy(apgd) <= pgd_accuracy


@pytest.mark.parametrize("member", ["apgd", "fab", "square"])
@pytest.mark.parametrize("grey", [1, 4])
@pytest.mark.parametrize("quantize", [True, False])
def test_every_member_stays_in_the_ball_the_box_and_on_the_8bit_grid(toy, member, grey, quantize):
    model, images, labels = toy
    eps = grey / 255
    budget = EnsembleBudget(members=(member,), apgd_steps=5, square_queries=50, fab_steps=5)
    result = run_ensemble(model, images, labels, eps, budget, quantize=quantize)
    _check_ball(result.adversarial, images, eps, grid=quantize)
    p_fake, margin = score(model, result.adversarial, labels)
    assert torch.equal(p_fake, result.p_fake) and torch.equal(margin, result.margin)
    assert (result.adversarial != images).any() or member == "fab"  # FAB keeps unfooled images clean


def _clean_correct(model, images, labels):
    keep = (score(model, images, labels)[0] >= 0.5).long() == labels
    return images[keep], labels[keep]


def test_apgd_and_square_match_torchattacks_on_the_same_images(toy):
    """One run without rounding: the same images are fooled as by torchattacks' own
    perturb (seeded the same way), and our worst case is at least as adversarial."""
    model, images, labels = toy
    images, labels = _clean_correct(model, images, labels)
    eps = 4 / 255
    for name, oracle_class, kwargs in [("apgd", torchattacks.APGD, dict(steps=10, loss="ce")),
                                       ("square", torchattacks.Square, dict(n_queries=100, loss="margin"))]:
        seed = member_seed(0, name, eps)
        state = torch.get_rng_state()
        oracle = oracle_class(model, norm="Linf", eps=eps, n_restarts=1, seed=seed, **kwargs)(images, labels)
        torch.set_rng_state(state)  # torchattacks reseeds the global generator; ours does not
        budget = EnsembleBudget(members=(name,), apgd_steps=10, square_queries=100)
        ours = run_ensemble(model, images, labels, eps, budget, seed=0, quantize=False)
        oracle_p, oracle_margin = score(model, oracle, labels)
        oracle_fooled = (oracle_p >= 0.5).long() != labels
        assert oracle_fooled.any(), name
        assert torch.equal(~ours.robust, oracle_fooled), name
        assert (ours.margin <= oracle_margin + 1e-5).all(), name


def test_same_seed_same_bytes_and_the_global_rng_is_left_alone(toy):
    model, images, labels = toy
    torch.manual_seed(123)
    before = torch.get_rng_state()
    budget = EnsembleBudget(members=("apgd", "fab", "square"), apgd_steps=5, square_queries=50, fab_steps=5)
    runs = [run_ensemble(model, images, labels, 2 / 255, budget, seed=5) for _ in range(2)]
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(runs[0].adversarial, runs[1].adversarial)
    assert torch.equal(runs[0].p_fake, runs[1].p_fake)
    assert runs[0].fooled_by == runs[1].fooled_by and runs[0].stats == runs[1].stats
    other = run_ensemble(model, images, labels, 2 / 255, budget, seed=6)
    assert not torch.equal(other.adversarial, runs[0].adversarial)  # the seed matters


def test_model_mode_and_grad_flags_are_restored(toy):
    model, images, labels = toy
    model.train()
    try:
        run_ensemble(model, images[:8], labels[:8], 1 / 255, EnsembleBudget(apgd_steps=2, square_queries=5))
        assert model.training and all(p.requires_grad for p in model.parameters())
    finally:
        model.eval()


def test_eps_zero_is_the_clean_image(toy):
    model, images, labels = toy
    result = run_ensemble(model, images, labels, 0.0, BUDGET)
    assert torch.equal(result.adversarial, images) and result.stats == []
    assert _robust_accuracy(result) == pytest.approx(accuracy(model, images, labels))


def test_budget_rejects_unknown_members_and_empty_budgets():
    with pytest.raises(ValueError, match="members"):
        EnsembleBudget(members=("apgd", "dlr"))
    with pytest.raises(ValueError, match="square_queries"):
        EnsembleBudget(square_queries=0)
    assert EnsembleBudget(members=("square", "apgd")).order == ("apgd", "square")


def test_missing_torchattacks_is_a_one_line_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchattacks", None)  # import fails as if not installed
    with pytest.raises(ImportError) as error:
        require_torchattacks()
    assert "pip install --no-deps torchattacks==3.5.1" in str(error.value)
    assert "\n" not in str(error.value)


def test_an_empty_batch_is_an_empty_result(toy):
    model, images, labels = toy
    result = run_ensemble(model, images[:0], labels[:0], 2 / 255, BUDGET)
    assert result.adversarial.shape == (0, *images.shape[1:]) and result.fooled_by == []
    assert result.robust.dtype == torch.bool and images[:0][result.robust].shape[0] == 0  # usable as a mask
