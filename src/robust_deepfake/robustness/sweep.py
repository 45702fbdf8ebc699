"""The robustness sweep: every trained model x attack x eps on (a seeded subset of) the
test split, and its typed outputs.

* `SweepPredictions` (eval/attack_predictions.npz): p(fake) per model, attack, eps and
  image, so the verdict can pair models on the same images without attacking again.
* `SweepMetrics` (eval/attack_sweep.json): accuracy, macro-F1, ROC-AUC and attack
  success rate per model, attack and eps, with per-image bootstrap intervals (test
  sampling only: one trained model each).

Adversarial images are rounded to 8 bits before scoring when `attack.quantize` is on
(the default): the realistic threat is a published image. Point metrics come from
scikit-learn; intervals from a seeded bootstrap over test images (the same resamples for
every model, attack and eps).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from robust_deepfake.bootstrap import bootstrap_counts, metric_replicates, percentile_ci, weighted_accuracy
from robust_deepfake.config import AttackConfig, EvalConfig
from robust_deepfake.data.dataset import ImageSet
from robust_deepfake.data.images import unit_float
from robust_deepfake.data.loader import iterate
from robust_deepfake.errors import MissingInputError
from robust_deepfake.metrics import classification_metrics
from robust_deepfake.paths import ModelKey
from robust_deepfake.progress import progress
from robust_deepfake import units
from robust_deepfake.robustness.attacks import build_attack, gradient_passes, quantize_8bit
from robust_deepfake.units import CLEAN
from robust_deepfake.io import write_json, write_npz
from robust_deepfake.paths import read_json_file

METRICS = ("accuracy", "f1", "auc")


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
    """p_fake[model, attack, eps, sample] for the attacked subset; eps[0] = 0 is clean."""

    models: list[ModelKey]
    attacks: list[str]
    eps: list[float]
    indices: np.ndarray  # positions in the test split
    labels: np.ndarray
    sources: np.ndarray
    p_fake: np.ndarray
    quantized: bool = True

    def index(self, key: ModelKey) -> int:
        return self.models.index(key)

    @property
    def seeds(self) -> list[int]:
        return sorted({key.seed for key in self.models})

    @property
    def variants(self) -> list[str]:
        return list(dict.fromkeys(key.variant for key in self.models))

    def save(self, path: Path) -> None:
        write_npz(
            path, variants=np.array([k.variant for k in self.models]), seeds=np.array([k.seed for k in self.models]),
            attacks=np.array(self.attacks), eps=np.array(self.eps), indices=self.indices, labels=self.labels,
            sources=self.sources, p_fake=self.p_fake, quantized=np.array(self.quantized),
        )

    @classmethod
    def load(cls, path: Path) -> SweepPredictions:
        if not Path(path).exists():
            raise MissingInputError(f"{path}: missing; run `dvc repro attack_sweep` first")
        with np.load(path, allow_pickle=False) as data:
            models = [ModelKey(str(v), int(s)) for v, s in zip(data["variants"], data["seeds"], strict=True)]
            return cls(
                models=models, attacks=data["attacks"].tolist(), eps=data["eps"].tolist(),
                indices=data["indices"], labels=data["labels"], sources=data["sources"], p_fake=data["p_fake"],
                quantized=bool(data["quantized"]),
            )


@dataclass(frozen=True)
class SweepEntry:
    """One model's metrics under one attack at one eps (attack `clean`, eps 0: no attack)."""

    model: ModelKey
    attack: str
    eps: float
    accuracy: float
    f1: float
    auc: float
    asr: float  # share of the model's correctly classified clean images the attack flips
    n: int
    ci: dict[str, tuple[float, float]] = field(default_factory=dict)  # per-image bootstrap

    def as_dict(self) -> dict:
        return {"variant": self.model.variant, "seed": self.model.seed, "attack": self.attack, "eps": self.eps,
                "eps_label": units.label(self.eps), "accuracy": self.accuracy, "f1": self.f1, "auc": self.auc,
                "asr": self.asr, "n": self.n, "ci": {k: list(v) for k, v in self.ci.items()}}

    @classmethod
    def from_dict(cls, data: dict) -> SweepEntry:
        return cls(ModelKey(data["variant"], int(data["seed"])), data["attack"], float(data["eps"]),
                   data["accuracy"], data["f1"], data["auc"], data["asr"], int(data["n"]),
                   {k: (v[0], v[1]) for k, v in data.get("ci", {}).items()})


@dataclass
class SweepMetrics:
    """Every model's metrics per attack and eps; read and written only through this class."""

    entries: list[SweepEntry]
    ci_level: float
    quantized: bool

    def get(self, model: ModelKey, attack: str, eps: float) -> SweepEntry:
        attack = CLEAN if eps == 0 else attack
        for entry in self.entries:
            if entry.model == model and entry.attack == attack and abs(entry.eps - eps) < 1e-12:
                return entry
        raise KeyError(f"no sweep entry for {model.name} {attack} eps={units.label(eps)}")

    @property
    def models(self) -> list[ModelKey]:
        return list(dict.fromkeys(e.model for e in self.entries))

    @property
    def attacks(self) -> list[str]:
        return list(dict.fromkeys(e.attack for e in self.entries if e.attack != CLEAN))

    @property
    def attacked_eps(self) -> list[float]:
        return sorted({e.eps for e in self.entries if e.eps > 0})

    def save(self, path: Path) -> None:
        write_json(path, {"ci_level": self.ci_level, "quantized": self.quantized,
                          "entries": [e.as_dict() for e in self.entries]})

    @classmethod
    def load(cls, path: Path) -> SweepMetrics:
        data = read_json_file(Path(path), "run `dvc repro attack_sweep` first")
        return cls([SweepEntry.from_dict(e) for e in data["entries"]], data["ci_level"], data["quantized"])


def attack_generator(seed: int, attack: str, eps: float) -> torch.Generator:
    """Random starts depend on (attack.seed, attack, eps) only: every model sees the same
    ones, and adding an eps to the grid does not change the others'.

    A CPU generator: on the CPU it draws the starts itself; on a GPU, PGD seeds a device
    generator from it (attacks.PGD.start), so GPU starts differ from CPU starts but are
    just as reproducible."""
    key = sum(ord(c) * 31**i for i, c in enumerate(attack)) % 100_003
    return torch.Generator().manual_seed(seed * 1_000_003 + key * 101 + units.rng_offset(eps))


@torch.no_grad()
def _scores(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """p(fake) in float32, left on the images' device (no host sync per batch)."""
    return model(images).float().softmax(dim=1)[:, 1]


def adversarial(attack, images: torch.Tensor, labels: torch.Tensor, quantize: bool) -> torch.Tensor:
    """The attack's output as it would be scored: rounded to 8 bits when `quantize`."""
    adv = attack(images, labels)
    return quantize_8bit(adv) if quantize else adv


def run_sweep(
    models: dict[ModelKey, nn.Module],
    dataset: ImageSet,
    indices: np.ndarray,
    config: AttackConfig,
    device: torch.device,
    show_progress: bool = True,
) -> SweepPredictions:
    """p(fake) of every model under every attack and eps (and clean) on `indices`.

    Batch by batch: each batch is decoded and moved to `device` once (as uint8, made
    float there with the CPU's bits: data.images.unit_float), then every model,
    attack and eps runs on it there; scores stay on the device until the end. Device
    memory holds one batch, not the subset. Each (model, attack, eps) has one attack
    object for the whole sweep, so its random starts continue from batch to batch exactly
    as when the batches ran one after another for that cell (same bytes on the CPU)."""
    grid = config.eps_grid
    n = len(indices)
    cells = [(a, name, e, eps) for a, name in enumerate(config.attacks) for e, eps in enumerate(grid) if eps > 0]
    for model in models.values():
        model.to(device).eval()
    attacks = {(m, a, e): build_attack(name, model, eps, config, attack_generator(config.seed, name, eps))
               for m, model in enumerate(models.values()) for a, name, e, eps in cells}
    scores = torch.zeros((len(models), len(config.attacks), len(grid), n), dtype=torch.float32, device=device)
    index_tensor = torch.as_tensor(indices)
    per_model = n * (1 + sum(gradient_passes(a, config.steps) * (len(grid) - 1) for a in config.attacks))
    bar = progress(total=len(models) * per_model, desc="attack_sweep", unit="grad", disable=not show_progress)
    start = 0
    for batch in iterate(dataset, config.batch_size, indices=index_tensor, uint8=True):
        # uint8 over the bus (a quarter of float32's bytes), float [0, 1] on the device
        images = unit_float(batch.images.to(device, non_blocking=True))
        labels = batch.labels.to(device, non_blocking=True)
        rows = slice(start, start + len(labels))
        start += len(labels)
        for m, (key, model) in enumerate(models.items()):
            scores[m, :, 0, rows] = _scores(model, images)  # the clean row, shared by every attack
            bar.update(len(labels))
            for a, name, e, eps in cells:
                adv = adversarial(attacks[m, a, e], images, labels, config.quantize)
                scores[m, a, e, rows] = _scores(model, adv)
                bar.update(len(labels) * gradient_passes(name, config.steps))
                bar.set_postfix(model=key.name, attack=name, eps=units.label(eps), refresh=False)
    bar.close()
    p_fake = scores.cpu().numpy().astype(np.float64)
    labels = dataset.labels[index_tensor].numpy()
    sources = np.array([dataset.samples[i].source for i in indices])
    return SweepPredictions(list(models), list(config.attacks), grid, np.asarray(indices), labels, sources, p_fake,
                            config.quantize)


CSV_COLUMNS = ["variant", "seed", "attack", "eps", "eps_label", "metric", "value", "ci_low", "ci_high", "source",
               "heldout", "n"]


def summarize_sweep(predictions: SweepPredictions, config: EvalConfig, holdout: list[str]) -> tuple[SweepMetrics, list[dict]]:
    """Typed metrics (eval/attack_sweep.json) and long rows, per source too (plots/attack_sweep.csv)."""
    labels, sources = predictions.labels, predictions.sources
    weights = bootstrap_counts(len(labels), config.n_bootstrap, config.seed) if config.n_bootstrap else None
    entries: list[SweepEntry] = []
    rows: list[dict] = []
    source_names = sorted(set(sources.tolist()))
    for m, model in enumerate(predictions.models):
        clean_correct = (predictions.p_fake[m, 0, 0] >= 0.5).astype(int) == labels
        cells = [(CLEAN, 0, 0)] + [(attack, a, e) for a, attack in enumerate(predictions.attacks)
                                   for e, eps in enumerate(predictions.eps) if eps > 0]
        for attack, a, e in cells:
            eps = predictions.eps[e]
            head = _cell_columns(model, attack, eps)
            p = predictions.p_fake[m, a, e]
            point = classification_metrics(labels, p)
            predicted = (p >= 0.5).astype(int)
            flipped = clean_correct & (predicted != labels)
            asr = float(flipped.sum() / max(clean_correct.sum(), 1))
            replicates = metric_replicates(labels, p, weights) if weights is not None else {}
            ci = {metric: percentile_ci(replicates[metric], config.ci) for metric in replicates}
            entries.append(SweepEntry(model, attack, eps, point["accuracy"], point["f1"], point["auc"], asr,
                                      len(labels), ci))
            for metric in (*METRICS, "asr"):
                value = asr if metric == "asr" else point[metric]
                rows.append(_row(head, metric, value, ci.get(metric, (math.nan, math.nan)), "all", False, len(labels)))
            for source in source_names:
                mask = sources == source
                accuracy = float((predicted[mask] == labels[mask]).mean())
                interval = (
                    percentile_ci(weighted_accuracy(labels[mask], predicted[mask], weights[:, mask]), config.ci)
                    if weights is not None else (math.nan, math.nan)
                )
                rows.append(_row(head, "accuracy", accuracy, interval, source, source in holdout, int(mask.sum())))
                if labels[mask].min() == 1:  # a fake method: its AUC against all reals
                    both = mask | (labels == 0)
                    auc = classification_metrics(labels[both], p[both])["auc"]
                    rows.append(_row(head, "auc", auc, (math.nan, math.nan), source, source in holdout,
                                     int(both.sum())))
    return SweepMetrics(entries, config.ci, predictions.quantized), rows


def _cell_columns(model: ModelKey, attack: str, eps: float) -> dict:
    """The columns of plots/attack_sweep.csv that name the model and the attack cell."""
    return {"variant": model.variant, "seed": model.seed, "attack": attack, "eps": eps, "eps_label": units.label(eps)}


def _row(head: dict, metric: str, value: float, interval: tuple[float, float], source: str, heldout: bool,
         n: int) -> dict:
    """One row of plots/attack_sweep.csv (CSV_COLUMNS, in order)."""
    low, high = interval
    return {**head, "metric": metric, "value": value, "ci_low": low, "ci_high": high, "source": source,
            "heldout": heldout, "n": n}
