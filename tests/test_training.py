"""Training: deterministic on CPU, and a run killed mid-training resumes to the same result.

Runs the train stage's body (`train_model`; a NullTracker, so no MLflow) on a tiny 32 px
split in a throw-away root; no dvc. The killed run is a real process killed with SIGKILL."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

from helpers import clean_env
from robust_deepfake.config import RegConfig, TrainConfig, validate
from robust_deepfake.data.dataset import load_split
from robust_deepfake.model.detector import build_detector
from robust_deepfake.model.device import seed_everything
from robust_deepfake.model.training import class_weights, fit, train_subset
from robust_deepfake.paths import CHECKPOINT_DIR, ModelKey, TrainOutputs, read_run_record
from robust_deepfake.pipeline.split import split
from robust_deepfake.pipeline.train import fingerprint, train_model, train_variant
from robust_deepfake.pipeline.train_pool import PoolFailure
from robust_deepfake.tracking.tracker import NullTracker, NullTrainingRun


# train_model pins torch's threads (train.num_threads): give the other tests theirs back.
pytestmark = pytest.mark.usefixtures("restore_threads")


def test_class_weights_balance_the_classes():
    labels = torch.tensor([0] * 10 + [1] * 30)
    weights = class_weights(labels)
    assert weights.tolist() == pytest.approx([2.0, 2 / 3])
    assert float((weights[labels]).sum()) == pytest.approx(40.0)
    with pytest.raises(ValueError, match="lacks a class"):
        class_weights(torch.ones(5, dtype=torch.long))


# --- a tiny training setup ------------------------------------------------------------


def _raw_params(raw: Path, splits: Path, **train) -> dict:
    return {
        "data": {"raw_dir": str(raw), "splits_dir": str(splits), "image_size": 32},
        "model": {"drop_rate": 0.2},
        "reg": {"epsilon": 0.3},
        # one thread: the tiny model is fastest that way on a shared CPU, and results are
        # only reproducible at a pinned thread count anyway
        "train": {"seeds": [0, 1], "epochs": 1, "batch_size": 12, "patience": 3, "device": "cpu",
                  "num_threads": 1, **train},
    }


@pytest.fixture
def make_params(tiny_raw: Path, splits: Path):
    def make(**train):
        return validate(_raw_params(tiny_raw, splits, **train))

    return make


def _outputs(root: Path, key: ModelKey) -> dict:
    outputs = TrainOutputs.of(root, key)
    meta = json.loads(outputs.meta.read_text())
    assert "timing" not in meta and "mlflow_run_id" not in meta  # run facts live outside the DVC outs
    return {
        "weights": outputs.weights.read_bytes(),
        "metrics": json.loads(outputs.metrics.read_text()),
        "plot": outputs.plot.read_text(),
        "meta": meta,
    }


def test_train_model_writes_its_outs_per_variant_and_seed(make_params, tmp_path):
    params = make_params()
    key = ModelKey("baseline", 1)
    result, meta = train_model(params, key, tmp_path, NullTracker())
    assert (tmp_path / "models" / "baseline" / "seed1" / "model.pt").is_file()
    assert (tmp_path / "models" / "baseline" / "seed1" / "meta.json").is_file()
    metrics = json.loads((tmp_path / "metrics" / "train_baseline" / "seed1.json").read_text())
    assert (tmp_path / "plots" / "train_baseline" / "seed1.csv").is_file()
    assert meta["seed"] == 1 and meta["variant"] == "baseline"
    assert meta["best_epoch"] == result.best_epoch + 1 == metrics["best_epoch"] == 1, "best_epoch is 1-based"
    assert "train_loss_gap" not in metrics, "the baseline has no perturbation to report"
    assert not (tmp_path / CHECKPOINT_DIR / "baseline" / "seed1" / "last.pt").exists()


def test_the_tracker_records_the_run_the_tracker_does_not_change_the_outs(make_params, tmp_path):
    """The body hands the tracker's run every epoch, the history and the validation
    confusion matrix, then registers and closes it; what the run returns goes to this
    machine's run record, never into the DVC outs."""
    calls: list[str] = []
    seen: dict = {}

    class Run(NullTrainingRun):
        def log_epoch(self, record):
            calls.append(f"epoch {record['epoch']}")

        def log_training(self, history_csv, history, confusion):
            seen["confusion"] = confusion
            calls.append("artifacts")

        def register(self, outputs, detector_config, summary, data, example_image):
            seen.update(weights=outputs.weights.is_file(), data=data, summary=summary)
            calls.append("register")
            return {"registered_version": "7"}

        def close(self, status):
            calls.append(f"close {status}")

    class Recording(NullTracker):
        def require(self):
            calls.append("require")

        def open_training(self, key, marker):
            calls.append("open")
            return Run()

    params = make_params(epochs=2, patience=5)
    key = ModelKey("baseline", 0)
    result, meta = train_model(params, key, tmp_path / "tracked", Recording())
    assert calls == ["require", "open", "epoch 0", "epoch 1", "artifacts", "register", "close FINISHED"]
    assert seen["weights"] and seen["data"]["val"] > 0 and seen["summary"]["epochs_run"] == 2
    assert sum(map(sum, seen["confusion"]["matrix"])) == seen["data"]["val"]
    assert meta["run"]["registered_version"] == "7"
    assert read_run_record(tmp_path / "tracked", key)["registered_version"] == "7"
    train_model(params, key, tmp_path / "untracked", NullTracker())
    assert _outputs(tmp_path / "tracked", key) == _outputs(tmp_path / "untracked", key)


def test_a_seed_outside_train_seeds_is_refused(make_params, tmp_path):
    with pytest.raises(ValueError, match="train.seeds"):
        train_model(make_params(), ModelKey("reg", 5), tmp_path, NullTracker())


def test_same_params_same_results(make_params, tmp_path):
    """Same params and seed: byte-identical weights, metrics and history; another seed
    gives another model."""
    params = make_params()
    key = ModelKey("reg", 0)
    train_model(params, key, tmp_path / "a", NullTracker())
    train_model(params, key, tmp_path / "b", NullTracker())
    first, second = _outputs(tmp_path / "a", key), _outputs(tmp_path / "b", key)
    for name in ("metrics", "plot", "meta", "weights"):
        assert first[name] == second[name], name
    for name in ("val_accuracy", "val_f1", "val_auc", "val_loss", "train_loss", "train_loss_gap"):
        assert name in first["metrics"], name

    train_model(params, ModelKey("reg", 1), tmp_path / "a", NullTracker())
    assert _outputs(tmp_path / "a", ModelKey("reg", 1))["weights"] != first["weights"]


def test_a_pool_trains_the_bytes_each_seed_trains_alone(make_params, tmp_path):
    """train_variant with 2 worker processes for 3 seeds (one worker trains two, one after
    the other) writes, for every seed, the bytes train_model writes for that seed alone in
    this process at the same thread count: the pool and its schedule change nothing."""
    params = make_params(seeds=[0, 1, 2], workers=2, max_train_samples=24)
    metas = train_variant(params, "placebo", tmp_path / "pool", NullTracker())
    assert [meta["seed"] for meta in metas] == [0, 1, 2]
    for seed in (0, 2):
        key = ModelKey("placebo", seed)
        train_model(params, key, tmp_path / f"alone{seed}", NullTracker())
        assert _outputs(tmp_path / "pool", key) == _outputs(tmp_path / f"alone{seed}", key), seed
        assert not any((tmp_path / "pool" / CHECKPOINT_DIR / "placebo" / f"seed{seed}").iterdir()), \
            "a finished stage leaves no resume state"


def test_the_placebo_is_reg_without_its_perturbation(make_params, tiny_raw, splits, tmp_path):
    """The placebo trains the reg recipe with epsilon 0: its bytes do not move with
    reg.epsilon or reg.epsilon_scale (not among its DVC params), they move with reg.mode
    (mode random draws a zero-length direction from the flips' generator), and they are not
    the baseline's (the second pass updates BatchNorm and draws dropout)."""
    def placebo(tag: str, **reg) -> dict:
        raw = _raw_params(tiny_raw, splits, max_train_samples=36)
        raw["reg"] = reg
        root = tmp_path / tag
        train_model(validate(raw), ModelKey("placebo", 0), root, NullTracker())
        return _outputs(root, ModelKey("placebo", 0))

    small = placebo("small", epsilon=0.3, epsilon_scale="relative")
    assert placebo("large", epsilon=0.9, epsilon_scale="absolute") == small
    assert small["meta"]["reg"]["epsilon"] == 0
    assert placebo("gradient", epsilon=0.3, mode="gradient")["weights"] != small["weights"]
    train_model(make_params(max_train_samples=36), ModelKey("baseline", 0), tmp_path / "base", NullTracker())
    assert _outputs(tmp_path / "base", ModelKey("baseline", 0))["weights"] != small["weights"]


def test_a_failed_training_stops_the_stage_names_the_seed_and_leaves_no_outs(make_params, tmp_path):
    """A training that fails in a worker (here: an unreadable resume checkpoint) stops the
    stage with one line naming the seed; its run is closed FAILED, the one it stopped KILLED
    (or FINISHED, if it got there first), and no seed's outs are left."""
    closed: dict[str, str] = {}

    class Run(NullTrainingRun):
        def __init__(self, key):
            self.key = key

        def close(self, status):
            closed[self.key.name] = status

    class Recording(NullTracker):
        def open_training(self, key, marker):
            return Run(key)

    params = make_params(seeds=[0, 1], workers=2, epochs=2, max_train_samples=24)
    broken = tmp_path / CHECKPOINT_DIR / "reg" / "seed1" / "last.pt"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(PoolFailure) as failure:
        train_variant(params, "reg", tmp_path, Recording())
    message = str(failure.value)
    assert message.startswith("training reg-seed1 failed: ") and "\n" not in message, message
    assert failure.value.key == ModelKey("reg", 1)
    assert closed.get("reg-seed1") == "FAILED" and closed.get("reg-seed0") in (None, "KILLED", "FINISHED")
    for seed in (0, 1):
        outputs = TrainOutputs.of(tmp_path, ModelKey("reg", seed))
        assert not outputs.model_dir.exists() and not outputs.metrics.exists() and not outputs.plot.exists()


_TRAIN_SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    from robust_deepfake.config import load_params
    from robust_deepfake.paths import ModelKey
    from robust_deepfake.pipeline.train import train_model
    from robust_deepfake.tracking.tracker import NullTracker

    root = Path(sys.argv[1])
    train_model(load_params(root / "params.yaml"), ModelKey("baseline", 0), root, NullTracker())
    """
)


@pytest.mark.slow  # trains three times, once in a subprocess that is killed mid-run
def test_killed_run_resumes_to_the_same_metrics(make_params, tiny_raw, splits, tmp_path, capsys):
    key = ModelKey("baseline", 0)
    params = make_params(epochs=3)
    uninterrupted, _ = train_model(params, key, tmp_path / "a", NullTracker())
    capsys.readouterr()

    root = tmp_path / "b"
    (root / "data").mkdir(parents=True)
    # the data folders must lie inside the repository: symlinks there are allowed
    (root / "data" / "raw").symlink_to(tiny_raw, target_is_directory=True)
    (root / "data" / "splits").symlink_to(splits, target_is_directory=True)
    (root / "params.yaml").write_text(yaml.safe_dump(_raw_params(Path("data/raw"), Path("data/splits"), epochs=3)))
    process = subprocess.Popen(
        [sys.executable, "-c", _TRAIN_SCRIPT, str(root)], cwd=root, env=clean_env(root),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    seen = []
    try:
        for line in process.stdout:
            seen.append(line)
            if line.startswith("epoch 2/3:"):  # epoch 2 done: its checkpoint is being or has been written
                break
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    checkpoint = root / CHECKPOINT_DIR / "baseline" / "seed0" / "last.pt"
    assert checkpoint.exists(), "the killed run left no checkpoint:\n" + "".join(seen[-20:])
    assert not TrainOutputs.of(root, key).metrics.exists(), "the run was killed too late"

    resumed, _ = train_model(params, key, root, NullTracker())
    assert "resuming from the checkpoint of epoch" in capsys.readouterr().out
    assert resumed.resumed_from in (1, 2)
    first, second = _outputs(tmp_path / "a", key), _outputs(root, key)
    for name in ("val_accuracy", "val_f1", "val_auc", "val_loss", "train_loss", "best_epoch"):
        assert second["metrics"][name] == first["metrics"][name], name
    assert second["weights"] == first["weights"]
    assert second["plot"] == first["plot"]
    assert [r["train_loss"] for r in resumed.history] == [r["train_loss"] for r in uninterrupted.history]
    assert not checkpoint.exists(), "a finished run removes its crash checkpoint"


def test_checkpoint_of_other_params_is_ignored(make_params, tmp_path, capsys):
    checkpoint = tmp_path / CHECKPOINT_DIR / "baseline" / "seed0" / "last.pt"
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"fingerprint": "something else", "epoch": 0}, checkpoint)
    result, _ = train_model(make_params(), ModelKey("baseline", 0), tmp_path, NullTracker())
    assert "ignoring" in capsys.readouterr().out
    assert result.resumed_from is None


def test_fingerprint_tells_runs_apart(make_params):
    params = make_params()
    keys = [ModelKey("baseline", 0), ModelKey("baseline", 1), ModelKey("reg", 0), ModelKey("reg", 1)]
    assert len({fingerprint(params, key) for key in keys}) == len(keys)
    # adding a seed to the list does not invalidate the checkpoints of the others
    assert fingerprint(make_params(seeds=[0, 1, 2]), keys[0]) == fingerprint(params, keys[0])
    assert fingerprint(make_params(lr=1e-3), keys[0]) != fingerprint(params, keys[0])


# --- what the regularizer records -----------------------------------------------------


def _fit(splits: Path, reg: RegConfig | None, seed: int = 0, **train):
    train_set = load_split(splits, "train", 32, 64)
    val_set = load_split(splits, "val", 32, 64)
    config = TrainConfig(**{"seeds": [seed], "epochs": 1, "batch_size": 16, "max_train_samples": 32,
                            "num_threads": 1, "device": "cpu", **train})
    torch.set_num_threads(1)
    seed_everything(seed)
    model = build_detector(validate({}).model, split_at=2)
    return fit(model, train_set, val_set, config, reg, torch.device("cpu"), seed=seed, show_progress=False)


@pytest.mark.parametrize("mode", ["random", "gradient"])
def test_regularized_fit_records_the_loss_gap_and_the_perturbation_size(splits, mode):
    reg = RegConfig(epsilon=0.2, epsilon_scale="relative", mode=mode)
    record = _fit(splits, reg).history[0]
    assert math.isfinite(record["train_loss_gap"]) and record["train_loss_gap"] > 0
    assert record["train_perturbation_relative"] == pytest.approx(0.2, rel=1e-4)
    assert math.isfinite(record["train_perturbed_loss"])
    alpha = reg.alpha
    expected = (1 - alpha) * record["train_clean_loss"] + alpha * record["train_perturbed_loss"]
    assert record["train_loss"] == pytest.approx(expected, rel=1e-5)


def test_baseline_fit_records_nan_for_the_regularizer(splits):
    record = _fit(splits, None).history[0]
    for name in ("train_loss_gap", "train_perturbation_relative", "train_perturbed_loss"):
        assert math.isnan(record[name]), name
    assert record["train_loss"] == record["train_clean_loss"]


def test_train_subset_is_seeded_and_sorted():
    config = TrainConfig(max_train_samples=5)
    first, again, other = train_subset(20, config, 0), train_subset(20, config, 0), train_subset(20, config, 1)
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert len(first) == 5 and torch.equal(first, first.sort().values) and len(set(first.tolist())) == 5
    assert torch.equal(train_subset(4, config, 0), torch.arange(4))


def test_fit_with_four_optimizer_steps_in_all(splits):
    """e.g. the demo's 4 epochs on a train split no larger than one batch."""
    _fit(splits, None, epochs=2, batch_size=16, max_train_samples=32)


def test_train_images_phrase_names_the_cap():
    from robust_deepfake.pipeline.train import train_images_phrase

    assert train_images_phrase(1367, 256) == "256 of 1367 train images (train.max_train_samples)"
    assert train_images_phrase(1367, None) == "1367 train images"
    assert train_images_phrase(100, 256) == "100 train images", "a cap above the split size changes nothing"


def test_best_epoch_is_one_based_in_every_output(make_params, tmp_path, monkeypatch, capsys):
    """fit() counts epochs from 0; everything a person reads counts from 1: meta.json,
    metrics/train_*/seed*.json and the history CSV agree on which epoch was best."""
    from robust_deepfake.model.training import FitResult
    from robust_deepfake.pipeline import train as train_module

    def record(epoch: int, auc: float) -> dict:
        return {"epoch": epoch, "train_loss": 0.5, "train_clean_loss": 0.5, "train_perturbed_loss": math.nan,
                "train_loss_gap": math.nan, "train_perturbation_relative": math.nan, "train_accuracy": 0.7,
                "val_loss": 0.4, "val_accuracy": 0.8, "val_f1": 0.8, "val_auc": auc, "lr": 1e-3,
                "seconds": 1.0, "images_per_s": 10.0}

    history = [record(0, 0.7), record(1, 0.9), record(2, 0.8)]  # the best is the 2nd epoch: index 1

    def fake_fit(model, train_set, val_set, config, reg, device, **kwargs):
        return FitResult(history, 1, dict(history[1]), model.state_dict(), False, None, [1.0, 1.0])

    monkeypatch.setattr(train_module, "fit", fake_fit)
    params = make_params(epochs=3, max_train_samples=8)
    key = ModelKey("baseline", 0)
    _, meta = train_model(params, key, tmp_path, NullTracker())
    outputs = TrainOutputs.of(tmp_path, key)
    metrics = json.loads(outputs.metrics.read_text())
    assert meta["best_epoch"] == metrics["best_epoch"] == 2
    rows = outputs.plot.read_text().splitlines()
    epochs = [int(line.split(",")[0]) for line in rows[1:]]
    assert epochs == [1, 2, 3]
    best_row = rows[1:][epochs.index(metrics["best_epoch"])]
    assert float(best_row.split(",")[rows[0].split(",").index("val_auc")]) == metrics["val_auc"] == 0.9

    n_train = len(load_split(params.data.splits_dir, "train", params.data.image_size, 64))
    assert f"8 of {n_train} train images (train.max_train_samples)" in capsys.readouterr().out


def test_split_says_when_training_uses_fewer_images(tiny_raw, tmp_path, capsys):
    params = validate(_raw_params(tiny_raw, tmp_path / "splits", max_train_samples=10))
    metrics = split(params, tmp_path)
    assert (f"each training run uses 10 of these {metrics['train']['total']} train images "
            "(train.max_train_samples)") in capsys.readouterr().out
    split(validate(_raw_params(tiny_raw, tmp_path / "splits")), tmp_path)
    assert "train.max_train_samples" not in capsys.readouterr().out


def test_data_num_workers_reaches_the_training_loader(tiny_raw, splits, tmp_path, monkeypatch):
    """`data.num_workers` reaches the training loader (`fit`)."""
    from robust_deepfake.model.training import FitResult
    from robust_deepfake.pipeline import train as train_module

    seen = {}
    record = {"epoch": 0, "train_loss": 0.5, "val_loss": 0.4, "val_accuracy": 0.8, "val_f1": 0.8,
              "val_auc": 0.9, "seconds": 1.0, "images_per_s": 10.0}

    def fake_fit(model, train_set, val_set, config, reg, device, **kwargs):
        seen.update(kwargs)
        return FitResult([record], 0, dict(record), model.state_dict(), False, None, [1.0, 1.0])

    monkeypatch.setattr(train_module, "fit", fake_fit)
    raw = _raw_params(tiny_raw, splits)
    raw["data"]["num_workers"] = 3
    train_model(validate(raw), ModelKey("baseline", 0), tmp_path, NullTracker())
    assert seen["num_workers"] == 3
