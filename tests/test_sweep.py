"""The robustness sweep on a small trained model: monotone in eps, PGD at least as strong as FGSM."""

import numpy as np
import pytest
import torch

from robust_deepfake.config import AttackConfig, EvalConfig
from robust_deepfake.data.dataset import load_split
from robust_deepfake.evaluation import eps_label, run_sweep, stratified_subset, summarize
from robust_deepfake.models import load_trained

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sweep(micro_repo):
    model, _ = load_trained(micro_repo / "models" / "baseline")
    test = load_split(micro_repo / "data" / "splits", "test", 32, 512, root=micro_repo)
    config = AttackConfig(attacks=["fgsm", "pgd"], eps=["1/255", "2/255", "4/255", "8/255"], steps=5,
                          step_size_relative=0.5, batch_size=64)
    indices = stratified_subset([s.source for s in test.samples], None, 0)
    predictions = run_sweep({"baseline": model}, test, indices, config, torch.device("cpu"), show_progress=False)
    compact, rows = summarize(predictions, EvalConfig(n_bootstrap=50), holdout=[])
    return predictions, compact, rows


def test_pgd_accuracy_is_non_increasing_in_eps(sweep):
    _, compact, _ = sweep
    accuracy = [entry["accuracy"] for entry in compact["baseline"]["pgd"].values()]
    assert all(later <= earlier + 0.02 for earlier, later in zip(accuracy, accuracy[1:])), accuracy


def test_pgd_is_no_weaker_than_fgsm_at_the_largest_eps(sweep):
    _, compact, _ = sweep
    largest = eps_label(8 / 255)
    assert compact["baseline"]["pgd"][largest]["accuracy"] <= compact["baseline"]["fgsm"][largest]["accuracy"] + 0.02


def test_clean_row_is_shared_and_asr_is_zero_there(sweep):
    predictions, compact, _ = sweep
    assert np.array_equal(predictions.p_fake[0, 0, 0], predictions.p_fake[0, 1, 0])
    assert compact["baseline"]["fgsm"]["0"]["asr"] == 0.0


def test_rows_have_cis_and_per_source_entries(sweep):
    _, _, rows = sweep
    overall = [r for r in rows if r["source"] == "all" and r["metric"] == "accuracy"]
    assert all(r["ci_low"] <= r["value"] <= r["ci_high"] for r in overall)
    sources = {r["source"] for r in rows} - {"all"}
    assert {"ffhq_like", "pggan_like"} <= sources


def test_stratified_subset_is_seeded_and_proportional():
    sources = ["a"] * 60 + ["b"] * 30 + ["c"] * 10
    first = stratified_subset(sources, 20, seed=3)
    assert np.array_equal(first, stratified_subset(sources, 20, seed=3))
    picked = [sources[i] for i in first]
    assert (picked.count("a"), picked.count("b"), picked.count("c")) == (12, 6, 2)
