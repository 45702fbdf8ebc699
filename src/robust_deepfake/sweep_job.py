"""The body of the attack_sweep stage: attack both trained models and summarize."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from robust_deepfake.config import Params
from robust_deepfake.data.dataset import load_split
from robust_deepfake.evaluation import CSV_COLUMNS, SweepPredictions, eps_label, run_sweep, stratified_subset, summarize
from robust_deepfake.io import write_csv, write_json
from robust_deepfake.models import load_trained, resolve_device
from robust_deepfake.train_job import VARIANTS


@dataclass(frozen=True)
class SweepOutputs:
    predictions: Path
    metrics: Path
    plot: Path

    @classmethod
    def at(cls, root: Path) -> SweepOutputs:
        return cls(root / "eval" / "attack_predictions.npz", root / "metrics" / "attack_sweep.json",
                   root / "plots" / "attack_sweep.csv")


def attack_sweep(params: Params, root: Path, track: bool = True) -> tuple[dict, SweepPredictions]:
    device = resolve_device(params.train.device)
    loaded = {variant: load_trained(root / "models" / variant, device) for variant in VARIANTS}
    test = load_split(params.data.splits_dir, "test", params.data.image_size, params.data.cache_max_mb)
    indices = stratified_subset([s.source for s in test.samples], params.attack.max_samples, params.attack.seed)
    print(
        f"attack_sweep: {len(indices)} of {len(test)} test images, attacks {params.attack.attacks}, "
        f"eps {[eps_label(e) for e in params.attack.eps_grid]}, {params.attack.steps} steps, on {device}",
        flush=True,
    )
    predictions = run_sweep({v: m for v, (m, _) in loaded.items()}, test, indices, params.attack, device)
    compact, rows = summarize(predictions, params.eval, params.split.holdout_methods)
    outputs = SweepOutputs.at(root)
    predictions.save(outputs.predictions)
    write_json(outputs.metrics, compact)
    write_csv(outputs.plot, CSV_COLUMNS, rows)
    if track:
        from robust_deepfake.tracking import log_eps_curves

        log_eps_curves(params, root, {v: meta for v, (_, meta) in loaded.items()}, rows, prefix="attack")
    return compact, predictions


def format_table(compact: dict) -> str:
    """Accuracy / AUC per model, attack and eps, as a fixed-width text table."""
    lines = []
    for model, attacks in compact.items():
        for attack, per_eps in attacks.items():
            cells = "  ".join(
                f"{label}: acc {m['accuracy']:.3f} auc {m['auc']:.3f}" for label, m in per_eps.items()
            )
            lines.append(f"{model:8s} {attack:6s} {cells}")
    return "\n".join(lines)
