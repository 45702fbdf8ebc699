"""The robustness sweep.

On a small trained model (slow: the micro repo): monotone in eps, PGD at least as strong
as FGSM. On tiny untrained stand-ins (fast): what is scored (8-bit rounded adversarial
images), the random starts (keyed by the eps value, not its place in the grid), and the
metrics against scikit-learn and hand-worked ASR.
"""

import math

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.optimize import brentq
from sklearn.metrics import accuracy_score, average_precision_score, f1_score, roc_auc_score, roc_curve
from torch import nn

from robust_deepfake.config import AttackConfig, EvalConfig
from robust_deepfake.data.dataset import ImageSet, SplitRow, load_split
from robust_deepfake.model.detector import load_trained
from robust_deepfake.paths import ModelKey, TrainOutputs
from robust_deepfake import units
from robust_deepfake.robustness.attacks import build_attack, quantize_8bit
from robust_deepfake.units import CLEAN
from robust_deepfake.robustness.sweep import (
    CSV_COLUMNS,
    ENSEMBLE,
    SweepMetrics,
    SweepPredictions,
    adversarial,
    attack_generator,
    run_sweep,
    stratified_subset,
    summarize_sweep,
)

# One intra-op thread: these small tensors run fastest that way on a shared CPU.
pytestmark = pytest.mark.usefixtures("one_thread")

BASELINE = ModelKey("baseline", 0)
REG = ModelKey("reg", 0)
CPU = torch.device("cpu")


# --- on the trained micro model -------------------------------------------------------


@pytest.fixture(scope="module")
def sweep(micro_repo):
    model, _ = load_trained(TrainOutputs.of(micro_repo, BASELINE).model_dir)
    test = load_split(micro_repo / "data" / "splits", "test", 32, 512, root=micro_repo)
    config = AttackConfig(attacks=["fgsm", "pgd"], eps=["1/255", "2/255", "4/255", "8/255"], steps=5,
                          step_size_relative=0.5, batch_size=64)
    indices = stratified_subset([s.source for s in test.samples], None, 0)
    predictions = run_sweep({BASELINE: model}, test, indices, config, CPU, show_progress=False)
    metrics, rows = summarize_sweep(predictions, EvalConfig(n_bootstrap=50), holdout=[])
    return predictions, metrics, rows


@pytest.mark.slow
def test_pgd_accuracy_is_non_increasing_in_eps(sweep):
    predictions, metrics, _ = sweep
    assert predictions.eps[0] == 0  # the clean row first
    accuracy = [metrics.get(BASELINE, "pgd", eps).accuracy for eps in predictions.eps]
    assert all(later <= earlier + 0.02 for earlier, later in zip(accuracy, accuracy[1:])), accuracy


@pytest.mark.slow
def test_pgd_is_no_weaker_than_fgsm_at_the_largest_eps(sweep):
    _, metrics, _ = sweep
    largest = units.parse_pixel_value("8/255")
    assert metrics.get(BASELINE, "pgd", largest).accuracy <= metrics.get(BASELINE, "fgsm", largest).accuracy + 0.02


@pytest.mark.slow
def test_clean_row_is_shared_and_asr_is_zero_there(sweep):
    predictions, metrics, _ = sweep
    assert np.array_equal(predictions.p_fake[0, 0, 0], predictions.p_fake[0, 1, 0])
    clean = metrics.get(BASELINE, CLEAN, 0.0)
    assert clean.attack == CLEAN and clean.eps == 0
    assert metrics.get(BASELINE, "fgsm", 0.0) == clean  # eps 0 of any attack is the clean row
    assert clean.asr == 0.0


@pytest.mark.slow
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


def test_stratified_subset_takes_everything_without_a_limit():
    sources = ["a", "b", "a"]
    assert np.array_equal(stratified_subset(sources, None, 0), [0, 1, 2])
    assert np.array_equal(stratified_subset(sources, 5, 0), [0, 1, 2])


# --- on tiny untrained stand-ins ------------------------------------------------------

SOURCES = ["ffhq_like"] * 4 + ["pggan_like"] * 2 + ["faceswap_like"] * 2


class PixelDetector(nn.Module):
    """A seeded linear detector on the pixels: every pixel counts, so rounding an
    adversarial image to 8 bits moves p(fake) by ~1e-3 (an untrained EfficientNet at
    32 px moves by ~1e-7: float noise), and a 2/255 attack flips predictions."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.linear = nn.Linear(3 * 32 * 32, 2)
        with torch.no_grad():
            self.linear.weight.copy_(torch.randn(2, 3 * 32 * 32, generator=generator) * 0.05)
            self.linear.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear((x - 0.5).flatten(1))


@pytest.fixture(scope="module")
def images_on_disk(tmp_path_factory) -> ImageSet:
    """Eight 32 px PNGs (4 real, 4 fake from two methods): decoded, they lie on the 8-bit grid."""
    folder = tmp_path_factory.mktemp("sweep_images")
    rng = np.random.default_rng(0)
    samples = []
    for i, source in enumerate(SOURCES):
        path = folder / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path)
        samples.append(SplitRow(str(path), int(source != "ffhq_like"), source, f"g{i}", ""))
    return ImageSet(samples, 32, cache=True)


@pytest.fixture(scope="module")
def models() -> dict[ModelKey, nn.Module]:
    return {BASELINE: PixelDetector(0).eval(), REG: PixelDetector(1).eval()}


def _config(**overrides) -> AttackConfig:
    """The gradient attacks alone unless `ensemble` is given (the ensemble's own tests below)."""
    settings = dict(attacks=["fgsm", "pgd"], eps=["1/255", "2/255"], steps=2, batch_size=16, seed=5,
                    ensemble={"enabled": False})
    return AttackConfig(**{**settings, **overrides})


def _sweep(models, dataset, config):
    return run_sweep(models, dataset, np.arange(len(dataset)), config, CPU, show_progress=False)


@torch.no_grad()
def _p_fake(model: nn.Module, images: torch.Tensor) -> np.ndarray:
    return model(images).softmax(dim=1)[:, 1].numpy().astype(np.float64)


def test_sweep_shapes_and_clean_row(models, images_on_disk):
    config = _config()
    predictions = _sweep(models, images_on_disk, config)
    assert predictions.models == [BASELINE, REG]
    assert predictions.attacks == ["fgsm", "pgd"]
    assert predictions.eps == [0.0, 1 / 255, 2 / 255]
    assert predictions.p_fake.shape == (2, 2, 3, 8)
    assert predictions.quantized is True
    assert predictions.labels.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert predictions.sources.tolist() == SOURCES
    images = images_on_disk.images(torch.arange(8))
    for m, model in enumerate(models.values()):
        clean = _p_fake(model, images)
        for a in range(2):  # the clean row is the model on the unattacked images, for every attack
            np.testing.assert_allclose(predictions.p_fake[m, a, 0], clean, rtol=0, atol=1e-7)
        assert (np.abs(predictions.p_fake[m, :, 1:] - clean).max()) > 1e-3  # the attacks do something


@pytest.mark.parametrize("quantize", [True, False])
def test_sweep_scores_what_the_attack_engine_gives_rounded_when_quantizing(models, images_on_disk, quantize):
    config = _config(quantize=quantize)
    predictions = _sweep(models, images_on_disk, config)
    assert predictions.quantized is quantize
    images, labels = images_on_disk.images(torch.arange(8)), images_on_disk.labels
    assert torch.equal(quantize_8bit(images), images)  # PNG inputs: on the grid
    for m, model in enumerate(models.values()):
        for a, name in enumerate(config.attacks):
            for e, eps in enumerate(predictions.eps[1:], start=1):
                # independently of run_sweep: a fresh attack with the generator for (seed, attack, eps)
                attack = build_attack(name, model, eps, config, attack_generator(config.seed, name, eps))
                adv = attack(images, labels)
                rounded, raw = _p_fake(model, quantize_8bit(adv)), _p_fake(model, adv)
                expected, other = (rounded, raw) if quantize else (raw, rounded)
                np.testing.assert_allclose(predictions.p_fake[m, a, e], expected, rtol=0, atol=1e-7)
                if name == "pgd":  # the random start leaves PGD off the grid: rounding matters
                    assert np.abs(predictions.p_fake[m, a, e] - other).max() > 1e-5


def test_adversarial_rounds_only_when_asked(models, images_on_disk):
    model = models[BASELINE]
    images, labels = images_on_disk.images(torch.arange(8)), images_on_disk.labels
    eps = 2 / 255
    attack = build_attack("pgd", model, eps, _config(), attack_generator(0, "pgd", eps))
    raw = adversarial(attack, images, labels, quantize=False)
    attack = build_attack("pgd", model, eps, _config(), attack_generator(0, "pgd", eps))
    rounded = adversarial(attack, images, labels, quantize=True)
    assert torch.equal(rounded, quantize_8bit(raw))
    assert not torch.equal(rounded, raw)
    assert (rounded - images).abs().max() <= eps + 1e-6  # whole grey level on grid inputs: in the ball
    assert rounded.min() >= 0 and rounded.max() <= 1


def _draws(generator: torch.Generator) -> torch.Tensor:
    return torch.rand(64, generator=generator)


def test_attack_generator_is_keyed_by_seed_attack_and_eps_value():
    reference = _draws(attack_generator(3, "pgd", 2 / 255))
    assert torch.equal(_draws(attack_generator(3, "pgd", 2 / 255)), reference)
    assert torch.equal(_draws(attack_generator(3, "pgd", units.parse_pixel_value("2/255"))), reference)
    assert torch.equal(_draws(attack_generator(3, "pgd", units.from_step(2))), reference)
    others = [attack_generator(4, "pgd", 2 / 255), attack_generator(3, "bim", 2 / 255),
              attack_generator(3, "pgd", 1 / 255), attack_generator(3, "pgd", 4 / 255),
              attack_generator(3, "pgd", 2.5 / 255)]
    for other in others:
        assert not torch.equal(_draws(other), reference)


def test_random_starts_do_not_depend_on_the_rest_of_the_grid(models, images_on_disk):
    shared = 2 / 255
    small = _sweep(models, images_on_disk, _config(attacks=["pgd"], eps=["1/255", "2/255"]))
    large = _sweep(models, images_on_disk, _config(attacks=["pgd"], eps=["2/255", "4/255", "8/255"]))
    first, second = small.eps.index(shared), large.eps.index(shared)
    assert first != second  # a different place in the grid ...
    np.testing.assert_array_equal(small.p_fake[:, 0, first], large.p_fake[:, 0, second])  # ... the same scores
    reseeded = _sweep(models, images_on_disk, _config(attacks=["pgd"], eps=["2/255"], seed=6))
    assert not np.array_equal(reseeded.p_fake[:, 0, 1], small.p_fake[:, 0, first])


def _cell_by_cell(models, dataset, config) -> np.ndarray:
    """run_sweep's loop before batches moved outermost (kept as the oracle): per model,
    attack and eps, one fresh attack over every batch; scores copied to the host per batch."""
    grid = config.eps_grid
    n = len(dataset)
    p_fake = np.zeros((len(models), len(config.attacks), len(grid), n))
    batches = [(dataset.images(chunk), dataset.labels[chunk]) for chunk in torch.arange(n).split(config.batch_size)]
    for m, model in enumerate(models.values()):
        with torch.no_grad():
            p_fake[m, :, 0] = torch.cat([model(images).float().softmax(dim=1)[:, 1] for images, _ in batches]).numpy()
        for a, name in enumerate(config.attacks):
            for e, eps in enumerate(grid):
                if eps == 0:
                    continue
                attack = build_attack(name, model, eps, config, attack_generator(config.seed, name, eps))
                scores = []
                for images, labels in batches:
                    adv = adversarial(attack, images, labels, config.quantize)
                    with torch.no_grad():
                        scores.append(model(adv).float().softmax(dim=1)[:, 1])
                p_fake[m, a, e] = torch.cat(scores).numpy()
    return p_fake


def test_sweep_on_the_cpu_gives_the_bytes_of_the_cell_by_cell_loop(models, images_on_disk):
    """Batches outermost, scores kept on the device, attack objects reused across batches:
    on the CPU the same bytes as the loop over cells, random starts included (3 batches of <= 3)."""
    config = _config(attacks=["fgsm", "bim", "pgd", "mifgsm"], batch_size=3)
    predictions = _sweep(models, images_on_disk, config)
    expected = _cell_by_cell(models, images_on_disk, config)
    assert predictions.p_fake.dtype == np.float64
    assert predictions.p_fake.tobytes() == expected.tobytes()


def test_sweep_moves_each_batch_once_and_runs_every_attack_on_it(models, images_on_disk, monkeypatch):
    from robust_deepfake.robustness import sweep as sweep_module

    seen: list[torch.Tensor] = []

    def recording_build_attack(*args, **kwargs):
        attack = build_attack(*args, **kwargs)

        def run(images, labels):
            seen.append(images)
            return attack(images, labels)
        return run

    monkeypatch.setattr(sweep_module, "build_attack", recording_build_attack)
    config = _config(batch_size=3)
    _sweep(models, images_on_disk, config)
    cells = len(models) * len(config.attacks) * len(config.eps)
    assert len(seen) == 3 * cells  # 8 images in batches of 3, 2, ...: 3 batches
    per_batch = [seen[i:i + cells] for i in range(0, len(seen), cells)]
    for calls in per_batch:
        assert all(images is calls[0] for images in calls)  # one tensor per batch, every attack on it
    assert len({id(calls[0]) for calls in per_batch}) == 3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_sweep_on_cuda_is_reproducible_and_keeps_its_clean_row(models, images_on_disk):
    cuda = {key: PixelDetector(seed).cuda().eval() for key, seed in ((BASELINE, 0), (REG, 1))}
    config = _config(batch_size=3)
    first = run_sweep(cuda, images_on_disk, np.arange(8), config, torch.device("cuda"), show_progress=False)
    again = run_sweep(cuda, images_on_disk, np.arange(8), config, torch.device("cuda"), show_progress=False)
    assert np.array_equal(first.p_fake, again.p_fake)  # device random starts: seeded
    cpu = _sweep(models, images_on_disk, config)
    np.testing.assert_allclose(first.p_fake[:, :, 0], cpu.p_fake[:, :, 0], atol=1e-5)  # clean: no randomness


# --- summarize: scikit-learn and hand-worked oracles ----------------------------------


def _predictions(p_fake: np.ndarray, labels, sources, models=(BASELINE,), attacks=("fgsm", "pgd"),
                 eps=(0.0, 1 / 255, 2 / 255)) -> SweepPredictions:
    n = len(labels)
    return SweepPredictions(list(models), list(attacks), list(eps), np.arange(n), np.asarray(labels),
                            np.asarray(sources), np.asarray(p_fake, dtype=np.float64))


LABELS = [0, 0, 0, 1, 1, 1]
ROW_SOURCES = ["ffhq_like"] * 3 + ["pggan_like", "pggan_like", "faceswap_like"]


@pytest.mark.parametrize("score", [0.8, 0.2, 0.5])
def test_asr_of_a_constant_classifier_is_zero(score):
    predictions = _predictions(np.full((1, 2, 3, 6), score), LABELS, ROW_SOURCES)
    metrics, rows = summarize_sweep(predictions, EvalConfig(n_bootstrap=20), holdout=[])
    assert len(metrics.entries) == 1 + 2 * 2
    assert all(entry.asr == 0.0 for entry in metrics.entries)
    assert all(row["value"] == 0.0 for row in rows if row["metric"] == "asr")
    predicted = np.full(6, int(score >= 0.5))
    for entry in metrics.entries:
        assert entry.accuracy == pytest.approx(accuracy_score(LABELS, predicted))
        assert entry.f1 == pytest.approx(f1_score(LABELS, predicted, average="macro", zero_division=0))
        assert entry.auc == pytest.approx(0.5)


def test_asr_counts_flips_of_correctly_classified_clean_images_only():
    labels = [0, 0, 1, 1]
    clean = [0.1, 0.9, 0.8, 0.7]  # correct, wrong, correct, correct
    attacked = [0.6, 0.2, 0.3, 0.9]  # image 0 and 2 flip; image 1 becomes right (not a success)
    p_fake = np.array([[[clean, attacked]]])  # [model, attack, eps, image]
    predictions = _predictions(p_fake, labels, ["ffhq_like"] * 2 + ["pggan_like"] * 2, attacks=["pgd"],
                               eps=[0.0, 2 / 255])
    metrics, _ = summarize_sweep(predictions, EvalConfig(n_bootstrap=0), holdout=[])
    assert metrics.get(BASELINE, "pgd", 2 / 255).asr == pytest.approx(2 / 3)
    assert metrics.get(BASELINE, CLEAN, 0.0).asr == 0.0


def _oracles(labels: np.ndarray, p_clean: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """The field's metrics straight from scikit-learn's ROC curve and AP, and the flip rates
    by counting (what summarize_sweep must write)."""
    fpr, tpr, _ = roc_curve(labels, p, drop_intermediate=False)
    clean_right, now_right = (p_clean >= 0.5) == labels, (p >= 0.5) == labels
    detected, real_right = clean_right & (labels == 1), clean_right & (labels == 0)
    return {"ap": average_precision_score(labels, p),
            "eer": brentq(lambda x: 1 - x - np.interp(x, fpr, tpr), 0, 1),
            "tpr_at_fpr_1": tpr[fpr <= 0.01].max(), "tpr_at_fpr_5": tpr[fpr <= 0.05].max(),
            "evasion_rate": (~now_right[detected]).mean() if detected.any() else math.nan,
            "real_to_fake_rate": (~now_right[real_right]).mean() if real_right.any() else math.nan}


def test_metrics_match_scikit_learn_overall_and_per_source():
    rng = np.random.default_rng(4)
    labels = np.array([0] * 6 + [1] * 6)
    sources = np.array(["ffhq_like"] * 6 + ["pggan_like"] * 3 + ["faceswap_like"] * 3)
    p_fake = rng.random((2, 2, 3, 12))
    p_fake[:, :, 0] = p_fake[:, :1, 0]  # one clean row per model, as run_sweep writes it
    predictions = _predictions(p_fake, labels, sources, models=(BASELINE, REG))
    metrics, rows = summarize_sweep(predictions, EvalConfig(n_bootstrap=30, seed=1), holdout=["faceswap_like"])
    assert metrics.models == [BASELINE, REG]
    assert metrics.attacks == ["fgsm", "pgd"]
    assert metrics.attacked_eps == [1 / 255, 2 / 255]
    assert metrics.ci_level == 0.95 and metrics.quantized is True
    for m, key in enumerate(predictions.models):
        clean_correct = (p_fake[m, 0, 0] >= 0.5).astype(int) == labels
        for a, attack in enumerate(predictions.attacks):
            for e, eps in enumerate(predictions.eps):
                entry = metrics.get(key, attack, eps)
                p = p_fake[m, a, e]
                predicted = (p >= 0.5).astype(int)
                assert entry.n == 12
                assert entry.accuracy == pytest.approx(accuracy_score(labels, predicted))
                assert entry.f1 == pytest.approx(f1_score(labels, predicted, average="macro"))
                assert entry.auc == pytest.approx(roc_auc_score(labels, p))
                flips = (clean_correct & (predicted != labels)).sum()
                assert entry.asr == pytest.approx(flips / clean_correct.sum())
                for metric, expected in _oracles(labels, p_fake[m, 0, 0], p).items():
                    assert getattr(entry, metric) == pytest.approx(expected, nan_ok=True), (metric, attack, eps)
                assert set(entry.ci) == {"accuracy", "f1", "auc"}
                assert all(low <= high for low, high in entry.ci.values())
                mine = [r for r in rows if (r["variant"], r["seed"], r["attack"], r["eps"]) ==
                        (key.variant, key.seed, CLEAN if eps == 0 else attack, eps)]
                by_source = {(r["source"], r["metric"]): r for r in mine}
                for source in ("ffhq_like", "pggan_like", "faceswap_like"):
                    mask = sources == source
                    row = by_source[(source, "accuracy")]
                    assert row["value"] == pytest.approx(accuracy_score(labels[mask], predicted[mask]))
                    assert row["heldout"] == (source == "faceswap_like") and row["n"] == mask.sum()
                for source in ("pggan_like", "faceswap_like"):  # a fake method against all reals
                    both = (sources == source) | (labels == 0)
                    assert by_source[(source, "auc")]["value"] == pytest.approx(roc_auc_score(labels[both], p[both]))
                    expected = _oracles(labels[both], p_fake[m, 0, 0][both], p[both])
                    for metric in ("ap", "eer", "tpr_at_fpr_1", "tpr_at_fpr_5", "evasion_rate"):
                        assert by_source[(source, metric)]["value"] == pytest.approx(expected[metric], nan_ok=True)
                    assert by_source[(source, "ap")]["n"] == both.sum()
                    assert by_source[(source, "evasion_rate")]["n"] == (sources == source).sum()
                reals = sources == "ffhq_like"
                assert by_source[("ffhq_like", "real_to_fake_rate")]["value"] == pytest.approx(
                    _oracles(labels, p_fake[m, 0, 0], p)["real_to_fake_rate"], nan_ok=True)  # every real is ffhq
                assert by_source[("ffhq_like", "real_to_fake_rate")]["n"] == reals.sum()
                assert ("ffhq_like", "auc") not in by_source and ("ffhq_like", "evasion_rate") not in by_source
                assert by_source[("all", "asr")]["value"] == entry.asr
    assert all(list(row) == CSV_COLUMNS for row in rows)
    assert {row["eps_label"] for row in rows} == {"0", "1/255", "2/255"}
    assert {row["attack"] for row in rows if row["eps"] == 0} == {CLEAN}


def test_get_of_a_missing_cell_names_the_model():
    predictions = _predictions(np.full((1, 2, 3, 6), 0.7), LABELS, ROW_SOURCES)
    metrics, _ = summarize_sweep(predictions, EvalConfig(n_bootstrap=0), holdout=[])
    with pytest.raises(KeyError, match="reg-seed0"):
        metrics.get(REG, "pgd", 1 / 255)
    with pytest.raises(KeyError, match="baseline-seed0.*4/255"):
        metrics.get(BASELINE, "pgd", 4 / 255)
    with pytest.raises(KeyError, match="baseline-seed0.*bim"):
        metrics.get(BASELINE, "bim", 1 / 255)
    assert metrics.get(BASELINE, "pgd", 0.0) is metrics.get(BASELINE, CLEAN, 0.0)


def test_summarize_keeps_the_quantized_flag_and_nan_auc_for_one_class():
    predictions = _predictions(np.full((1, 1, 2, 3), 0.7), [1, 1, 1], ["pggan_like"] * 3, attacks=["fgsm"],
                               eps=[0.0, 1 / 255])
    predictions.quantized = False
    metrics, _ = summarize_sweep(predictions, EvalConfig(n_bootstrap=5), holdout=[])
    assert isinstance(metrics, SweepMetrics) and metrics.quantized is False
    assert math.isnan(metrics.get(BASELINE, "fgsm", 1 / 255).auc)


# --- the worst-case ensemble as an attack of the sweep ----------------------------------

ENSEMBLE_ON = {"enabled": True, "apgd_steps": 2, "square_queries": 5}


@pytest.fixture(scope="module")
def with_ensemble(models, images_on_disk):
    config = _config(attacks=["fgsm", "bim", "pgd"], ensemble=ENSEMBLE_ON, batch_size=5)
    return config, _sweep(models, images_on_disk, config)


def test_the_ensemble_is_an_attack_of_the_sweep_and_the_per_image_worst_case(with_ensemble):
    config, predictions = with_ensemble
    assert predictions.attacks == ["fgsm", "bim", "pgd", ENSEMBLE]
    labels = predictions.labels
    fake = labels == 1
    ensemble = predictions.attacks.index(ENSEMBLE)
    for m in range(len(predictions.models)):
        np.testing.assert_array_equal(predictions.p_fake[m, ensemble, 0], predictions.p_fake[m, 0, 0])  # clean row
        for e in range(1, len(predictions.eps)):
            worst = predictions.p_fake[m, ensemble, e]
            right = (worst >= 0.5) == labels
            for a, name in enumerate(config.attacks):
                other = predictions.p_fake[m, a, e]
                assert np.all(right <= ((other >= 0.5) == labels)), name  # robust only where every attack fails
                # and at least as far toward the wrong class (float32 scores of the same images)
                assert np.all(np.where(fake, worst <= other + 1e-6, worst >= other - 1e-6)), name
    metrics, _ = summarize_sweep(predictions, EvalConfig(n_bootstrap=0), holdout=[])
    for key in predictions.models:
        for eps in predictions.eps[1:]:
            assert metrics.get(key, ENSEMBLE, eps).accuracy <= min(
                metrics.get(key, name, eps).accuracy for name in config.attacks)
            assert metrics.get(key, ENSEMBLE, eps).evasion_rate >= metrics.get(key, "pgd", eps).evasion_rate


def test_the_ensemble_row_is_deterministic_and_leaves_the_other_rows_alone(models, images_on_disk, with_ensemble):
    config, predictions = with_ensemble
    again = _sweep(models, images_on_disk, config)
    assert again.p_fake.tobytes() == predictions.p_fake.tobytes()
    without = _sweep(models, images_on_disk, config.model_copy(update={"ensemble": config.ensemble.model_copy(
        update={"enabled": False})}))
    assert without.attacks == config.attacks
    np.testing.assert_array_equal(without.p_fake, predictions.p_fake[:, :3])  # the attacks do not see it

class _Recorder:
    """A BatchProbe that keeps what the sweep hands it."""

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def add(self, images, labels, known, ensemble, transfer_images) -> None:
        self.calls.append({"images": images, "known": known, "ensemble": ensemble, "transfer": transfer_images})


def test_probes_get_the_sweep_scores_its_ensemble_and_the_paired_baselines_pgd_images(models, images_on_disk):
    from robust_deepfake.robustness.sweep import Probe

    config = _config(attacks=["fgsm", "pgd"], ensemble=ENSEMBLE_ON, batch_size=5)
    probes = {REG: Probe(_Recorder(), 1 / 255, transfer_from=BASELINE), BASELINE: Probe(_Recorder(), 1 / 255)}
    predictions = run_sweep(models, images_on_disk, np.arange(8), config, CPU, show_progress=False, probes=probes)
    reg, baseline = probes[REG].run.calls, probes[BASELINE].run.calls
    assert len(reg) == len(baseline) == 2  # one call per batch (5 + 3 images), at 1/255 only
    e, m = predictions.eps.index(1 / 255), predictions.index(REG)
    known = np.concatenate([call["known"]["pgd"] for call in reg])
    np.testing.assert_array_equal(known, predictions.p_fake[m, 1, e].astype(np.float32))
    np.testing.assert_array_equal(np.concatenate([c["known"]["clean"] for c in reg]), predictions.p_fake[m, 0, 0])
    ensemble = np.concatenate([call["ensemble"].p_fake.numpy() for call in reg])
    np.testing.assert_array_equal(ensemble, predictions.p_fake[m, 2, e].astype(np.float32))
    assert all(call["transfer"] is None for call in baseline)
    # the transfer images are the baseline's PGD images of the batch: scored on the baseline, its PGD row
    transferred = np.concatenate([_p_fake(models[BASELINE], call["transfer"]) for call in reg])
    np.testing.assert_allclose(transferred, predictions.p_fake[0, 1, e], atol=1e-6)
    with pytest.raises(ValueError, match="do not run|does not run"):
        run_sweep(models, images_on_disk, np.arange(8), config, CPU, show_progress=False,
                  probes={REG: Probe(_Recorder(), 4 / 255)})


def test_the_pipeline_pairs_every_variant_with_the_baseline_of_its_seed():
    from robust_deepfake.pipeline.attack_sweep import masking_probes

    keys = [ModelKey("baseline", 0), ModelKey("baseline", 1), ModelKey("reg", 0), ModelKey("reg", 1)]
    probes = masking_probes({key: PixelDetector(0) for key in keys}, _config(attacks=["fgsm", "bim", "pgd"]))
    assert list(probes) == keys  # a probe for every model
    assert {key: probe.transfer_from for key, probe in probes.items()} == {
        keys[0]: None, keys[1]: None, keys[2]: keys[0], keys[3]: keys[1]}
    assert {probe.eps for probe in probes.values()} == {1 / 255}  # attack.masking.eps null: the smallest
    without_pgd = masking_probes({key: PixelDetector(0) for key in keys}, _config(attacks=["fgsm", "bim"]))
    assert all(probe.transfer_from is None for probe in without_pgd.values())
