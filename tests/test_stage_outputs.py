"""The typed stage outputs read back equal to what was written: SweepPredictions (.npz),
SweepMetrics (JSON), IincValues (.npz), CamMetrics (JSON); a missing file names the stage."""

import dataclasses
import json
import math

import numpy as np
import pytest

from robust_deepfake.config import EvalConfig
from robust_deepfake.errors import MissingInputError
from robust_deepfake.explain.outputs import CamEntry, CamMetrics, IincValues
from robust_deepfake.paths import ModelKey, model_keys
from robust_deepfake.units import CLEAN
from robust_deepfake.robustness.sweep import SweepEntry, SweepMetrics, SweepPredictions, summarize_sweep

KEYS = model_keys([0, 3])  # baseline-seed0, baseline-seed3, placebo-seed0, placebo-seed3, reg-seed0, reg-seed3
NAN = float("nan")


def assert_same(actual, expected, where="value"):
    """Equal with the same types: dataclasses field by field, arrays by dtype, shape and
    values (NaN equal to NaN), floats exactly (NaN equal to NaN)."""
    if dataclasses.is_dataclass(expected):
        assert type(actual) is type(expected), where
        for f in dataclasses.fields(expected):
            assert_same(getattr(actual, f.name), getattr(expected, f.name), f"{where}.{f.name}")
    elif isinstance(expected, np.ndarray):
        assert isinstance(actual, np.ndarray), where
        assert actual.dtype == expected.dtype and actual.shape == expected.shape, (where, actual.dtype, expected.dtype)
        np.testing.assert_array_equal(actual, expected, err_msg=where)
    elif isinstance(expected, (list, tuple)):
        assert type(actual) is type(expected) and len(actual) == len(expected), where
        for i, (a, e) in enumerate(zip(actual, expected)):
            assert_same(a, e, f"{where}[{i}]")
    elif isinstance(expected, dict):
        assert isinstance(actual, dict) and list(actual) == list(expected), where
        for k in expected:
            assert_same(actual[k], expected[k], f"{where}[{k!r}]")
    elif isinstance(expected, float):
        assert isinstance(actual, float), (where, type(actual))
        assert actual == expected or (math.isnan(actual) and math.isnan(expected)), (where, actual, expected)
    else:
        assert type(actual) is type(expected) and actual == expected, (where, actual, expected)


def _predictions(quantized: bool = True) -> SweepPredictions:
    rng = np.random.default_rng(0)
    n = 7
    return SweepPredictions(
        models=list(KEYS), attacks=["fgsm", "pgd", "mifgsm"], eps=[0.0, 0.5 / 255, 1 / 255, 4 / 255],
        indices=np.array([0, 2, 3, 5, 8, 13, 21]), labels=np.array([0, 0, 0, 1, 1, 1, 1]),
        sources=np.array(["ffhq_like", "celeba_like", "ffhq_like", "pggan_like", "faceswap_like", "pggan_like",
                          "stylegan_like"]),
        p_fake=rng.random((len(KEYS), 3, 4, n)), quantized=quantized,
    )


@pytest.mark.parametrize("quantized", [True, False])
def test_sweep_predictions_round_trip(tmp_path, quantized):
    original = _predictions(quantized)
    path = tmp_path / "eval" / "attack_predictions.npz"
    original.save(path)
    loaded = SweepPredictions.load(path)
    assert_same(loaded, original)
    assert loaded.models == KEYS and loaded.seeds == [0, 3] and loaded.variants == ["baseline", "placebo", "reg"]
    assert loaded.index(ModelKey("reg", 3)) == 5
    assert not list(tmp_path.glob("eval/.*.tmp"))  # atomic write leaves no temp file


def test_sweep_metrics_round_trip_from_summarize(tmp_path):
    predictions = _predictions()
    original, _ = summarize_sweep(predictions, EvalConfig(n_bootstrap=25, ci=0.9), holdout=["faceswap_like"])
    assert len(original.entries) == len(KEYS) * (1 + 3 * 3)
    path = tmp_path / "attack_sweep.json"
    original.save(path)
    loaded = SweepMetrics.load(path)
    assert_same(loaded, original)
    assert loaded.entries == original.entries  # no NaN here: plain equality too
    assert loaded.get(ModelKey("reg", 0), "pgd", 1 / 255) == original.get(ModelKey("reg", 0), "pgd", 1 / 255)
    assert (loaded.models, loaded.attacks, loaded.attacked_eps) == (original.models, original.attacks,
                                                                   original.attacked_eps)


def test_sweep_metrics_round_trip_with_nan_and_labels(tmp_path):
    key = ModelKey("baseline", 1)
    original = SweepMetrics(
        [SweepEntry(key, CLEAN, 0.0, 1.0, 1.0, NAN, 0.0, 3, {"accuracy": (1.0, 1.0), "auc": (NAN, NAN)}),
         SweepEntry(key, "pgd", 0.5 / 255, 0.25, 0.2, NAN, 0.75, 3, {}),
         SweepEntry(key, "pgd", 2 / 255, 0.0, 0.0, NAN, 1.0, 3, {"f1": (0.0, 0.5)})],
        ci_level=0.95, quantized=False,
    )
    path = tmp_path / "attack_sweep.json"
    original.save(path)
    assert_same(SweepMetrics.load(path), original)
    written = json.loads(path.read_text(), parse_constant=lambda c: c)
    assert [e["eps_label"] for e in written["entries"]] == ["0", "0.5/255", "2/255"]
    assert [e["variant"] for e in written["entries"]] == ["baseline"] * 3


def _iinc_values() -> IincValues:
    rng = np.random.default_rng(1)
    n, shape = 6, (len(KEYS), 2, 3, 6)
    has_mask = np.array([False, False, False, True, True, False])
    localization = rng.random(shape)
    localization[..., ~has_mask] = np.nan
    clean = rng.random((len(KEYS), n))
    clean[:, ~has_mask] = np.nan
    return IincValues(list(KEYS), ["fgsm", "pgd"], [1 / 255, 2 / 255, 4 / 255], np.array([1, 4, 6, 7, 9, 12]),
                      has_mask, rng.random(shape), localization, clean)


def test_iinc_values_round_trip(tmp_path):
    original = _iinc_values()
    path = tmp_path / "cam_iinc_values.npz"
    original.save(path)
    loaded = IincValues.load(path)
    assert_same(loaded, original)
    assert loaded.index(ModelKey("reg", 0)) == 4
    assert np.isnan(loaded.localization[..., ~original.has_mask]).all()


def test_cam_metrics_round_trip(tmp_path):
    entries = []
    for key in KEYS:
        entries.append(CamEntry(key, CLEAN, 0.0, "localization", 0.41, (0.3, 0.52), 2))
        for attack in ("fgsm", "pgd"):
            for eps in (1 / 255, 2 / 255):
                entries.append(CamEntry(key, attack, eps, "stability", 0.1 * key.seed + eps, (0.01, 0.2), 6))
                entries.append(CamEntry(key, attack, eps, "localization", 0.5, (NAN, NAN), 1))
    original = CamMetrics(entries, "gradcam++", "blocks.2")
    path = tmp_path / "cam_iinc.json"
    original.save(path)
    loaded = CamMetrics.load(path)
    assert_same(loaded, original)
    assert loaded.get(ModelKey("reg", 3), "pgd", 2 / 255, "stability").mean == pytest.approx(0.3 + 2 / 255)
    assert loaded.get(ModelKey("reg", 3), "pgd", 0.0, "localization") == entries[0 + 9 * KEYS.index(ModelKey("reg", 3))]
    assert (loaded.models, loaded.attacks, loaded.attacked_eps) == (KEYS, ["fgsm", "pgd"], [1 / 255, 2 / 255])
    with pytest.raises(KeyError, match="baseline-seed0"):
        loaded.get(ModelKey("baseline", 0), "bim", 1 / 255, "stability")


@pytest.mark.parametrize("reader, stage", [(SweepPredictions.load, "attack_sweep"), (SweepMetrics.load, "attack_sweep"),
                                           (IincValues.load, "cam_iinc"), (CamMetrics.load, "cam_iinc")])
def test_missing_outputs_name_the_stage_to_run(tmp_path, reader, stage):
    with pytest.raises(MissingInputError, match=f"dvc repro {stage}"):
        reader(tmp_path / "missing")
