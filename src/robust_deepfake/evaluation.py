"""The robustness sweep: every model x attack x eps on (a seeded subset of) the test split.

Predictions are kept per sample (`SweepPredictions`, saved as an .npz out) so that the
report can compute paired bootstrap differences between models without attacking again.
Point metrics come from scikit-learn; 95% intervals from a seeded bootstrap over test
images (the same resamples for every model, attack and eps).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from torch import nn

from robust_deepfake.attacks import build_attack
from robust_deepfake.bootstrap import bootstrap_counts, metric_replicates, percentile_ci, weighted_accuracy
from robust_deepfake.config import AttackConfig, EvalConfig
from robust_deepfake.data.dataset import ImageSet, iterate
from robust_deepfake.metrics import classification_metrics
from robust_deepfake.progress import progress

METRICS = ("accuracy", "f1", "auc")


def eps_label(eps: float) -> str:
    """4/255 for budgets on the 1/255 grid, else the float."""
    if eps == 0:
        return "0"
    k = Fraction(eps * 255).limit_denominator(8)
    if abs(float(k) - eps * 255) < 1e-6:
        return f"{float(k):g}/255"
    return f"{eps:.6g}"


def eps_step(eps: float) -> int:
    """MLflow steps are integers: eps in hundredths of a grey level (4/255 -> 400)."""
    return int(round(eps * 255 * 100))


def stratified_subset(sources: list[str], max_samples: int | None, seed: int) -> np.ndarray:
    """Sorted indices of a seeded subset with each source in proportion (all if None)."""
    n = len(sources)
    if max_samples is None or max_samples >= n:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    names = sorted(set(sources))
    groups = {name: np.flatnonzero(np.array(sources) == name) for name in names}
    quotas = {name: max_samples * len(groups[name]) / n for name in names}
    take = {name: int(math.floor(quotas[name])) for name in names}
    for name in sorted(names, key=lambda s: quotas[s] - take[s], reverse=True)[: max_samples - sum(take.values())]:
        take[name] += 1
    chosen = [rng.permutation(groups[name])[: take[name]] for name in names]
    return np.sort(np.concatenate(chosen))


@dataclass
class SweepPredictions:
    """p_fake[model, attack, eps, sample] for the attacked subset."""

    models: list[str]
    attacks: list[str]
    eps: list[float]
    indices: np.ndarray  # positions in the test split
    labels: np.ndarray
    sources: np.ndarray
    p_fake: np.ndarray

    def save(self, path: Path) -> None:
        from robust_deepfake.io import write_npz

        write_npz(
            path, models=np.array(self.models), attacks=np.array(self.attacks), eps=np.array(self.eps),
            indices=self.indices, labels=self.labels, sources=self.sources, p_fake=self.p_fake,
        )

    @classmethod
    def load(cls, path: Path) -> SweepPredictions:
        with np.load(path, allow_pickle=False) as data:
            return cls(
                models=data["models"].tolist(), attacks=data["attacks"].tolist(), eps=data["eps"].tolist(),
                indices=data["indices"], labels=data["labels"], sources=data["sources"], p_fake=data["p_fake"],
            )


def attack_generator(seed: int, attack: str, eps_index: int) -> torch.Generator:
    """Random starts depend on (seed, attack, eps) only, so both models see the same ones."""
    key = sum(ord(c) * 31**i for i, c in enumerate(attack)) % 100_003
    return torch.Generator().manual_seed(seed * 1_000_003 + key * 101 + eps_index)


@torch.no_grad()
def _scores(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    return model(images).float().softmax(dim=1)[:, 1].cpu()


def run_sweep(
    models: dict[str, nn.Module],
    dataset: ImageSet,
    indices: np.ndarray,
    config: AttackConfig,
    device: torch.device,
    show_progress: bool = True,
) -> SweepPredictions:
    grid = config.eps_grid
    n = len(indices)
    p_fake = np.zeros((len(models), len(config.attacks), len(grid), n), dtype=np.float64)
    index_tensor = torch.as_tensor(indices)
    work = len(models) * n * (1 + sum((1 if a == "fgsm" else config.steps) * (len(grid) - 1) for a in config.attacks))
    bar = progress(total=work, desc="attack_sweep", unit="grad", disable=not show_progress)
    for m, (name, model) in enumerate(models.items()):
        model.to(device).eval()
        clean = torch.cat([_scores(model, b.images.to(device)) for b in iterate(dataset, config.batch_size, indices=index_tensor)])
        p_fake[m, :, 0] = clean.numpy()
        bar.update(n)
        for a, attack_name in enumerate(config.attacks):
            for e, eps in enumerate(grid):
                if eps == 0:
                    continue
                generator = attack_generator(config.seed, attack_name, e)
                attack = build_attack(attack_name, model, eps, config, generator)
                scores = []
                for batch in iterate(dataset, config.batch_size, indices=index_tensor):
                    images, labels = batch.images.to(device), batch.labels.to(device)
                    scores.append(_scores(model, attack(images, labels)))
                    bar.update(len(labels) * (1 if attack_name == "fgsm" else config.steps))
                    bar.set_postfix(model=name, attack=attack_name, eps=eps_label(eps), refresh=False)
                p_fake[m, a, e] = torch.cat(scores).numpy()
    bar.close()
    labels = dataset.labels[index_tensor].numpy()
    sources = np.array([dataset.samples[i].source for i in indices])
    return SweepPredictions(list(models), list(config.attacks), grid, np.asarray(indices), labels, sources, p_fake)


def summarize(predictions: SweepPredictions, config: EvalConfig, holdout: list[str]) -> tuple[dict, list[dict]]:
    """Compact metrics (for metrics/attack_sweep.json) and long rows (plots/attack_sweep.csv)."""
    labels, sources = predictions.labels, predictions.sources
    weights = bootstrap_counts(len(labels), config.n_bootstrap, config.seed) if config.n_bootstrap else None
    compact: dict = {}
    rows: list[dict] = []
    source_names = sorted(set(sources.tolist()))
    for m, model in enumerate(predictions.models):
        compact[model] = {}
        clean_correct = (predictions.p_fake[m, 0, 0] >= 0.5).astype(int) == labels
        for a, attack in enumerate(predictions.attacks):
            per_eps: dict = {}
            for e, eps in enumerate(predictions.eps):
                p = predictions.p_fake[m, a, e]
                point = classification_metrics(labels, p)
                predicted = (p >= 0.5).astype(int)
                flipped = clean_correct & (predicted != labels)
                point["asr"] = float(flipped.sum() / max(clean_correct.sum(), 1))
                replicates = metric_replicates(labels, p, weights) if weights is not None else {}
                entry = {}
                for metric, value in point.items():
                    low, high = percentile_ci(replicates[metric], config.ci) if metric in replicates else (math.nan, math.nan)
                    entry[metric] = value
                    if metric in replicates:
                        entry[f"{metric}_ci"] = [low, high]
                    rows.append(_row(model, attack, eps, metric, value, low, high, "all", False, len(labels)))
                for source in source_names:
                    mask = sources == source
                    accuracy = float((predicted[mask] == labels[mask]).mean())
                    low, high = (
                        percentile_ci(weighted_accuracy(labels[mask], predicted[mask], weights[:, mask]), config.ci)
                        if weights is not None else (math.nan, math.nan)
                    )
                    rows.append(_row(model, attack, eps, "accuracy", accuracy, low, high, source,
                                     source in holdout, int(mask.sum())))
                    if labels[mask].min() == 1:  # a fake method: its AUC against all reals
                        both = mask | (labels == 0)
                        auc = classification_metrics(labels[both], p[both])["auc"]
                        rows.append(_row(model, attack, eps, "auc", auc, math.nan, math.nan, source,
                                         source in holdout, int(both.sum())))
                per_eps[eps_label(eps)] = entry
            compact[model][attack] = per_eps
    return compact, rows


def _row(model, attack, eps, metric, value, low, high, source, heldout, n) -> dict:
    return {
        "model": model, "attack": attack, "eps": eps, "eps_label": eps_label(eps), "metric": metric,
        "value": value, "ci_low": low, "ci_high": high, "source": source, "heldout": heldout, "n": n,
    }


CSV_COLUMNS = ["model", "attack", "eps", "eps_label", "metric", "value", "ci_low", "ci_high", "source", "heldout", "n"]
