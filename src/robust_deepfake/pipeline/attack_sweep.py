"""The body of the attack_sweep stage: attack every trained model (each variant, each
seed) on the same test images and summarize."""

from __future__ import annotations

from pathlib import Path

from robust_deepfake.config import Params
from robust_deepfake.data.dataset import load_split
from robust_deepfake.io import write_csv
from robust_deepfake.model.detector import load_trained
from robust_deepfake.paths import SweepOutputs, TrainOutputs, model_keys
from robust_deepfake.pipeline.preamble import open_stage
from robust_deepfake import units
from robust_deepfake.units import CLEAN
from robust_deepfake.robustness.sweep import CSV_COLUMNS, SweepMetrics, run_sweep, stratified_subset, summarize_sweep
from robust_deepfake.tracking.runs import SWEEP_PREFIX
from robust_deepfake.tracking.tracker import Tracker


def attack_sweep(params: Params, root: Path, tracker: Tracker) -> SweepMetrics:
    """Write the sweep's outs; `tracker` records the metric-vs-eps curves on each model's run."""
    device = open_stage(params, tracker)
    keys = model_keys(params.train.seeds)
    loaded = {key: load_trained(TrainOutputs.of(root, key).model_dir, device) for key in keys}
    test = load_split(params.data.splits_dir, "test", params.data.image_size, params.data.cache_max_mb)
    indices = stratified_subset([s.source for s in test.samples], params.attack.max_samples, params.attack.seed)
    print(
        f"attack_sweep: {len(keys)} models, {len(indices)} of {len(test)} test images, attacks "
        f"{params.attack.attacks}, eps {[units.label(e) for e in params.attack.eps]}, {params.attack.steps} steps, "
        f"{'scored after 8-bit rounding' if params.attack.quantize else 'float adversarial images'}, on {device}",
        flush=True,
    )
    predictions = run_sweep({key: model for key, (model, _) in loaded.items()}, test, indices, params.attack, device)
    metrics, rows = summarize_sweep(predictions, params.eval, params.split.holdout_methods)
    outputs = SweepOutputs.at(root)
    predictions.save(outputs.predictions)
    metrics.save(outputs.metrics)
    write_csv(outputs.plot, CSV_COLUMNS, rows)
    curves = [{"model": e.model, "attack": e.attack, "metric": metric, "value": getattr(e, metric), "eps": e.eps}
              for e in metrics.entries for metric in ("accuracy", "f1", "auc", "asr")]  # clean: step 0
    tracker.log_eps_curves(keys, curves, SWEEP_PREFIX)
    return metrics


def format_table(metrics: SweepMetrics) -> str:
    """Accuracy / AUC per model, attack and eps, as fixed-width text."""
    lines = []
    for key in metrics.models:
        clean = metrics.get(key, CLEAN, 0.0)
        lines.append(f"{key.name:14s} clean  acc {clean.accuracy:.3f} auc {clean.auc:.3f}")
        for attack in metrics.attacks:
            cells = "  ".join(
                f"{units.label(eps)}: acc {metrics.get(key, attack, eps).accuracy:.3f} "
                f"auc {metrics.get(key, attack, eps).auc:.3f}"
                for eps in metrics.attacked_eps
            )
            lines.append(f"{key.name:14s} {attack:6s} {cells}")
    return "\n".join(lines)
