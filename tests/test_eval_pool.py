"""attack_sweep and cam_iinc in a pool of worker processes write the same bytes as in the
stage's own process (eval.workers 1): the groups and models are merged in model_keys
order, and every random start, ensemble member and probe is seeded by (attack, eps), not
by the order a process happened to run its models in.

The models are untrained detectors with distinct seeded weights on the tiny sample at 32
px (what the stages compute does not need a trained model; distinct weights make a merge
in the wrong order visible)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from robust_deepfake.config import Params, validate
from robust_deepfake.model.detector import build_detector, save_weights
from robust_deepfake.paths import SweepOutputs, TrainOutputs, model_keys
from robust_deepfake.pipeline.attack_sweep import attack_sweep
from robust_deepfake.pipeline.cam_iinc import cam_iinc
from robust_deepfake.robustness.sweep import SweepPredictions
from robust_deepfake.tracking.tracker import NullTracker

SEEDS = [0, 1]


def _params(splits: Path, workers: int) -> Params:
    return validate({
        "data": {"splits_dir": str(splits), "image_size": 32},
        "train": {"seeds": SEEDS, "device": "cpu"},
        "attack": {"attacks": ["pgd"], "eps": [1 / 255], "steps": 2, "max_samples": 6, "batch_size": 4,
                   "ensemble": {"apgd_steps": 2, "square_queries": 2}, "masking": {"large_steps": 2}},
        "eval": {"n_bootstrap": 20, "num_threads": 1, "workers": workers},
        "report": {"reference_eps": 1 / 255},
        "cam": {"num_samples": 4, "batch_size": 4, "figure_rows": 2},
    })


def _write_models(root: Path, params: Params) -> None:
    """An untrained detector per model, each with its own seeded weights, as the train
    stage lays it out (model.pt + meta.json)."""
    for index, key in enumerate(model_keys(params.train.seeds)):
        torch.manual_seed(100 + index)
        model = build_detector(params.model, params.reg.split_at)
        outputs = TrainOutputs.of(root, key)
        outputs.model_dir.mkdir(parents=True)
        save_weights(model, outputs.weights)
        outputs.meta.write_text(json.dumps({"detector": {
            "model": params.model.model_dump(mode="json"), "split_at": params.reg.split_at,
            "image_size": params.data.image_size}}))


def _outs(root: Path) -> dict[str, bytes]:
    """Every file the two stages wrote, by path relative to the repository."""
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*"))
            if path.is_file() and "models" not in path.relative_to(root).parts}


def test_workers_write_the_same_bytes_as_one_process(splits, tmp_path, restore_threads):
    outs = {}
    for workers in (1, 2):
        root = tmp_path / f"workers{workers}"
        params = _params(splits, workers)
        _write_models(root, params)
        attack_sweep(params, root, NullTracker())
        cam_iinc(params, root, NullTracker())
        outs[workers] = _outs(root)
    assert outs[1].keys() == outs[2].keys()
    for name in ("eval/attack_predictions.npz", "eval/attack_sweep.json", "eval/masking_checks.json",
                 "plots/attack_sweep.csv", "eval/cam_iinc_values.npz", "eval/cam_iinc.json", "plots/iinc.csv"):
        assert name in outs[1], name
    assert any(name.startswith("reports/cam/") and name.endswith(".png") for name in outs[1])
    different = [name for name in outs[1] if outs[1][name] != outs[2][name]]
    assert not different, f"workers 1 and 2 wrote different bytes: {different}"

    predictions = SweepPredictions.load(SweepOutputs.at(tmp_path / "workers2").predictions)
    assert predictions.models == model_keys(SEEDS)
    # the models differ (their rows are not copies of one another), so a merge in the wrong order shows
    clean = predictions.p_fake[:, 0, 0]
    assert len({row.tobytes() for row in clean}) == len(clean)
    masking = json.loads((tmp_path / "workers2" / "eval" / "masking_checks.json").read_text())
    assert masking  # the probes ran (their transfer attacks come from each seed's baseline)
