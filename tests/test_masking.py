"""Gradient-masking checks: the pure functions on hand-made numbers, and the driver on a
tiny trained CNN (every check passes) and on the same CNN behind an input-rounding layer
that zeroes its gradients (the large-budget, black-box and transfer checks warn)."""

import math

import numpy as np
import pytest
import torch
from toy_models import CoarseInput, toy_images, train_toy_cnn

from robust_deepfake.robustness import masking
from robust_deepfake.robustness.ensemble import EnsembleBudget, run_ensemble
from robust_deepfake.robustness.masking_probes import (
    Measurements,
    ProbeBudget,
    ProbeRun,
    checks,
    measure,
    pgd_images,
)

EPS = 8 / 255
BUDGET = ProbeBudget(steps=10, step_size_relative=0.25, ensemble=EnsembleBudget(apgd_steps=10, square_queries=200))


@pytest.fixture(scope="module")
def toys():
    """Two CNNs (seeds 0 and 1) on the same 192 synthetic images, 64 held-out images, 1 thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    images, labels = toy_images(256, seed=0)
    models = [train_toy_cnn(seed, images[:192], labels[:192]) for seed in (0, 1)]
    yield models, images[192:], labels[192:]
    torch.set_num_threads(threads)


def _table(rows):
    return {row.check: row for row in rows}


def test_a_plain_model_passes_every_check(toys):
    (model, source), images, labels = toys
    transfer = pgd_images(source, images, labels, EPS, BUDGET)
    measured = measure(model, images, labels, EPS, BUDGET, transfer_images=transfer)
    rows = checks(measured)
    for row in rows:
        print(row.status, row.check, row.reason)
    assert [row.check for row in rows] == list(masking.CHECKS)
    assert all(row.status == "PASS" for row in rows), rows
    assert measured.accuracy["clean"] >= 0.8 and measured.accuracy["pgd"] < measured.accuracy["clean"] - 0.3


def test_a_gradient_masked_model_warns(toys):
    (model, source), images, labels = toys
    masked = CoarseInput(model, step=4)
    transfer = pgd_images(source, images, labels, EPS, BUDGET)
    measured = measure(masked, images, labels, EPS, BUDGET, transfer_images=transfer)
    table = _table(checks(measured))
    for row in table.values():
        print(row.status, row.check, row.reason)
    assert measured.accuracy["clean"] >= 0.8  # still a working detector
    for name in ("large_eps", "black_box", "transfer"):
        assert table[name].status == "WARN", table[name]
    assert "masked" in table["transfer"].reason
    assert masking.any_warning(list(table.values()))


def test_known_predictions_and_a_finished_ensemble_are_reused(toys):
    (model, _), images, labels = toys
    budget = ProbeBudget(steps=3, large_steps=2, strong_runs=1, ensemble=EnsembleBudget(apgd_steps=3, square_queries=10))
    full = measure(model, images, labels, 2 / 255, budget, seed=1)
    clean = model(images).softmax(1)[:, 1].detach().numpy()
    fgsm_known = np.where(labels.numpy() == 1, 0.0, 1.0)  # every image misclassified
    ensemble = run_ensemble(model, images, labels, 2 / 255, budget.ensemble, seed=1)
    reused = measure(model, images, labels, 2 / 255, budget, seed=1, known={"clean": clean, "fgsm": fgsm_known},
                     ensemble=ensemble)
    assert reused.accuracy["fgsm"] == 0.0
    for name in ("clean", "pgd", "pgd_strong", "pgd_large", "noise", "white_box", "ensemble"):
        assert reused.accuracy[name] == pytest.approx(full.accuracy[name]), name
    assert "transfer" not in reused.accuracy and "transfer" not in _table(checks(reused))
    again = measure(model, images, labels, 2 / 255, budget, seed=1)
    assert again == full  # deterministic


# --- the pure checks --------------------------------------------------------------------


def test_iterative_vs_fgsm():
    assert masking.iterative_vs_fgsm(0.30, {"bim": 0.20, "pgd": 0.31}).status == "PASS"  # within 1 point
    row = masking.iterative_vs_fgsm(0.30, {"bim": 0.20, "pgd": 0.35})
    assert row.status == "WARN" and "pgd 35.0%" in row.reason and row.numbers["fgsm"] == 0.30


def test_steps_and_restarts():
    assert masking.steps_and_restarts(0.40, 0.395).status == "PASS"
    row = masking.steps_and_restarts(0.40, 0.30)
    assert row.status == "WARN" and "not converged" in row.reason
    assert row.numbers["change"] == pytest.approx(-0.10)
    assert masking.steps_and_restarts(0.40, 0.45).status == "WARN"  # a change either way


def test_large_eps_accepts_accuracy_or_evasion():
    assert masking.large_eps(0.04, 0.50, "16/255").status == "PASS"
    assert masking.large_eps(0.30, 0.96, "16/255").status == "PASS"  # 4% of detected fakes left
    row = masking.large_eps(0.30, 0.50, "16/255")
    assert row.status == "WARN" and "16/255" in row.reason
    row = masking.large_eps(0.30, math.nan, "16/255")  # no fake detected when clean
    assert row.status == "WARN" and "leaves 30.0% accuracy (evasion n/a, want <= 5.0% left)" in row.reason
    assert masking.large_eps(0.02, math.nan, "16/255").status == "PASS"


def test_black_box_and_transfer_against_the_best_white_box():
    white = {"pgd": 0.40, "apgd": 0.30}
    assert masking.black_box(0.295, white).status == "PASS"
    assert masking.black_box(0.25, white).status == "WARN"
    assert masking.transfer(0.60, white).status == "PASS"
    row = masking.transfer(0.20, white)
    assert row.status == "WARN" and row.numbers == {"transfer": 0.20, **white}


def test_wilson_interval_and_random_noise():
    low, high = masking.wilson_interval(0.5, 100)
    assert (low, high) == pytest.approx((0.4038, 0.5962), abs=1e-4)  # the textbook 50/100 interval
    low, high = masking.wilson_interval(1.0, 128)
    assert high == pytest.approx(1.0) and 0.96 < low < 0.98  # defined at 100%, unlike +-z*SE
    assert masking.random_noise(0.84, 0.85, 128).status == "PASS"
    row = masking.random_noise(0.60, 0.85, 128)
    assert row.status == "WARN" and row.numbers["n"] == 128


def test_rows_serialize():
    row = masking.steps_and_restarts(0.4, 0.4)
    assert row.as_dict() == {"check": "steps_and_restarts", "status": "PASS",
                             "numbers": {"accuracy": 0.4, "stronger": 0.4, "change": 0.0}, "reason": row.reason}


def test_probes_over_batches_count_every_image_and_repeat_exactly(toys):
    (model, source), images, labels = toys
    budget = ProbeBudget(steps=3, large_steps=2, ensemble=EnsembleBudget(apgd_steps=3, square_queries=10))
    transfer = pgd_images(source, images, labels, 2 / 255, budget)

    def in_batches() -> Measurements:
        run = ProbeRun(model, 2 / 255, budget, seed=2)
        for rows in torch.arange(len(labels)).split(24):  # 24, 24, 16
            run.add(images[rows], labels[rows], transfer_images=transfer[rows])
        return run.measurements()

    first = in_batches()
    assert first.n == len(labels) and first == in_batches()
    assert {"clean", "fgsm", "pgd", "pgd_strong", "pgd_large", "transfer", "noise", "white_box", "ensemble"} <= set(
        first.accuracy)
    assert first.accuracy["ensemble"] <= first.accuracy["white_box"]
    assert first.accuracy["pgd_strong"] <= first.accuracy["pgd"]  # the worst per image of both runs
    assert Measurements.from_dict(first.as_dict()) == first

def test_checks_round_trip_and_the_verdict_line(tmp_path):
    from robust_deepfake.paths import ModelKey
    from robust_deepfake.robustness.masking_outputs import MaskingChecks

    accuracy = {"clean": 0.85, "fgsm": 0.40, "bim": 0.31, "pgd": 0.30, "pgd_strong": 0.295, "pgd_large": 0.02,
                "transfer": 0.70, "noise": 0.84, "white_box": 0.28, "ensemble": 0.28}
    evasion = {name: 1 - value for name, value in accuracy.items() if name != "clean"}
    good = Measurements(1 / 255, 16 / 255, 128, {k: v for k, v in accuracy.items() if k != "transfer"}, evasion)
    bad = Measurements(1 / 255, 16 / 255, 128, {**accuracy, "pgd_large": 0.4, "ensemble": 0.20},
                       {**evasion, "pgd_large": 0.5})
    baseline, reg = ModelKey("baseline", 0), ModelKey("reg", 0)
    checks_ = MaskingChecks.of({baseline: good, reg: bad}, {reg: baseline}, 1 / 255, ProbeBudget(),
                               masking.MaskingTolerances())
    assert [m.model for m in checks_.models] == [baseline, reg]
    assert [row.check for row in checks_.models[0].rows] == [c for c in masking.CHECKS if c != "transfer"]
    assert [row.check for row in checks_.models[1].rows] == list(masking.CHECKS)
    line = checks_.verdict_line()
    assert line.startswith("robustness under PGD may be gradient masking: large_eps warns for reg-seed0 (PGD at "
                           "16/255 still leaves 40.0% accuracy")
    assert "; black_box warns for reg-seed0 (black-box Square beats" in line and "baseline" not in line
    path = tmp_path / "masking_checks.json"
    checks_.save(path)
    assert MaskingChecks.load(path) == checks_
    passing = MaskingChecks.of({baseline: good}, {}, 1 / 255, ProbeBudget(), masking.MaskingTolerances())
    assert passing.verdict_line() is None and masking.verdict_line({}) is None
