"""Training: deterministic on CPU, and a run killed mid-training resumes to the same result."""

import json
import os
import shutil
import signal
import subprocess
import sys

import pytest
import torch
import yaml

from micro_repo import clean_env, run
from robust_deepfake.config import TrainConfig
from robust_deepfake.training import class_weights

pytestmark = pytest.mark.slow


def test_class_weights_balance_the_classes():
    labels = torch.tensor([0] * 10 + [1] * 30)
    weights = class_weights(labels)
    assert weights.tolist() == pytest.approx([2.0, 2 / 3])
    assert float((weights[labels]).sum()) == pytest.approx(40.0)
    with pytest.raises(ValueError, match="lacks a class"):
        class_weights(torch.ones(5, dtype=torch.long))


def _copy_with_epochs(micro_repo, tmp_path, epochs: int):
    copy = tmp_path / "repo"
    shutil.copytree(micro_repo, copy, symlinks=True)
    params = yaml.safe_load((copy / "params.yaml").read_text())
    params["train"]["epochs"] = epochs
    params["train"]["patience"] = epochs
    (copy / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return copy


def _train(copy, variant="baseline"):
    run([sys.executable, "stages/train.py", "--variant", variant], copy)
    return json.loads((copy / "metrics" / f"train_{variant}.json").read_text())


def test_same_params_same_metrics(micro_repo, tmp_path):
    copy = _copy_with_epochs(micro_repo, tmp_path, 1)
    first = _train(copy, "reg")
    second = _train(copy, "reg")
    for key in ("val_accuracy", "val_f1", "val_auc", "val_loss", "train_loss"):
        assert first[key] == second[key], key


def test_killed_run_resumes_to_the_same_metrics(micro_repo, tmp_path):
    uninterrupted = _train(_copy_with_epochs(micro_repo, tmp_path / "a", 3))

    copy = _copy_with_epochs(micro_repo, tmp_path / "b", 3)
    process = subprocess.Popen(
        [sys.executable, "stages/train.py", "--variant", "baseline"], cwd=copy, env=clean_env(copy),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    try:
        for line in process.stdout:
            if line.startswith("epoch 2/3:"):  # epoch 2 done: its checkpoint is being or has been written
                break
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    checkpoint = copy / ".cache" / "checkpoints" / "baseline" / "last.pt"
    assert checkpoint.exists(), "the killed run left no checkpoint"

    result = run([sys.executable, "stages/train.py", "--variant", "baseline"], copy)
    assert "resuming from the checkpoint of epoch" in result.stdout
    resumed = json.loads((copy / "metrics" / "train_baseline.json").read_text())
    for key in ("val_accuracy", "val_f1", "val_auc", "val_loss", "train_loss", "best_epoch"):
        assert resumed[key] == uninterrupted[key], key
    assert not checkpoint.exists(), "a finished run removes its crash checkpoint"


def test_checkpoint_of_other_params_is_ignored(micro_repo, tmp_path):
    copy = _copy_with_epochs(micro_repo, tmp_path, 1)
    checkpoint = copy / ".cache" / "checkpoints" / "baseline" / "last.pt"
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"fingerprint": "something else", "epoch": 0}, checkpoint)
    result = run([sys.executable, "stages/train.py", "--variant", "baseline"], copy)
    assert "ignoring" in result.stdout


def test_train_config_defaults_are_valid():
    assert TrainConfig().monitor == "val_auc"
