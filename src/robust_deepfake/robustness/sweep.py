"""The robustness sweep: every trained model x attack x eps on (a seeded subset of) the
test split, and its typed outputs.

* `SweepPredictions` (eval/attack_predictions.npz): p(fake) per model, attack, eps and
  image, so the verdict can pair models on the same images without attacking again.
* `SweepMetrics` (eval/attack_sweep.json): per model, attack and eps every metric of
  metrics.ATTACK_METRICS (accuracy, macro-F1, ROC-AUC, attack success rate, the evasion
  and real->fake rates, AP, EER, TPR at FPR 1% and 5%), with per-image bootstrap intervals
  of accuracy, F1 and AUC (test sampling only: one trained model each).

The attacks are attack.attacks, then (attack.ensemble.enabled) attack `ensemble`: per
image the worst case over those attacks' images at the same eps and the ensemble's
members (robustness/ensemble.py), so per image it is at most as robust as any of them.
Adversarial images are rounded to 8 bits before scoring when `attack.quantize` is on
(the default): the realistic threat is a published image. Point metrics come from
scikit-learn (metrics.py); intervals from a seeded bootstrap over test images (the same
resamples for every model, attack and eps).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn

from robust_deepfake.bootstrap import bootstrap_counts, metric_replicates, percentile_ci, weighted_accuracy
from robust_deepfake.config import AttackConfig, EvalConfig
from robust_deepfake.data.dataset import ImageSet
from robust_deepfake.data.images import unit_float
from robust_deepfake.data.loader import iterate
from robust_deepfake.errors import MissingInputError, StageError
from robust_deepfake.metrics import ATTACK_METRICS, attack_metrics, detection_metrics, evasion_rate
from robust_deepfake.metrics import classification_metrics, real_to_fake_rate
from robust_deepfake.paths import ModelKey
from robust_deepfake.progress import progress
from robust_deepfake import units
from robust_deepfake.robustness.attacks import build_attack, gradient_passes, quantize_8bit
from robust_deepfake.robustness.ensemble import EnsembleBudget, EnsembleResult, run_ensemble
from robust_deepfake.units import CLEAN
from robust_deepfake.io import write_json, write_npz
from robust_deepfake.paths import read_json_file

METRICS = ("accuracy", "f1", "auc")  # the metrics with bootstrap intervals
ADDED_METRICS = tuple(m for m in ATTACK_METRICS if m not in (*METRICS, "asr"))  # SweepEntry's keyword fields
ENSEMBLE = "ensemble"  # the attack name of the worst-case ensemble


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
    # the threat model and the field's metrics (metrics.METRIC_DEFINITIONS); NaN when undefined
    evasion_rate: float = math.nan
    real_to_fake_rate: float = math.nan
    ap: float = math.nan
    eer: float = math.nan
    tpr_at_fpr_1: float = math.nan
    tpr_at_fpr_5: float = math.nan

    def as_dict(self) -> dict:
        return {"variant": self.model.variant, "seed": self.model.seed, "attack": self.attack, "eps": self.eps,
                "eps_label": units.label(self.eps), **{metric: getattr(self, metric) for metric in ATTACK_METRICS},
                "n": self.n, "ci": {k: list(v) for k, v in self.ci.items()}}

    @classmethod
    def from_dict(cls, data: dict) -> SweepEntry:
        return cls(ModelKey(data["variant"], int(data["seed"])), data["attack"], float(data["eps"]),
                   data["accuracy"], data["f1"], data["auc"], data["asr"], int(data["n"]),
                   {k: (v[0], v[1]) for k, v in data.get("ci", {}).items()},
                   **{metric: float(data[metric]) for metric in ADDED_METRICS})


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
        try:
            return cls([SweepEntry.from_dict(e) for e in data["entries"]], data["ci_level"], data["quantized"])
        except KeyError as missing:
            raise StageError(f"{path}: no {missing} (an older format); run `dvc repro attack_sweep`") from None


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


def sweep_attacks(config: AttackConfig) -> list[str]:
    """The attacks of the sweep's outputs: attack.attacks, then `ensemble` when enabled."""
    return [*config.attacks, *([ENSEMBLE] if config.ensemble.enabled else [])]


class BatchProbe(Protocol):
    """What the sweep feeds a model's gradient-masking probes batch by batch, at one eps
    (masking_probes.ProbeRun)."""

    def add(self, images: torch.Tensor, labels: torch.Tensor, known: Mapping[str, np.ndarray],
            ensemble: EnsembleResult | None, transfer_images: torch.Tensor | None) -> None: ...


@dataclass(frozen=True)
class Probe:
    """One model's probes in the sweep: `run` gets, for every batch at `eps`, the sweep's
    p(fake) of that batch (clean and per attack), the ensemble's result and, when
    `transfer_from` names a model, that model's PGD images of the batch (a transfer attack)."""

    run: BatchProbe
    eps: float
    transfer_from: ModelKey | None = None
    gradient_passes: int = 0  # per image, for the progress bar


def run_sweep(
    models: dict[ModelKey, nn.Module],
    dataset: ImageSet,
    indices: np.ndarray,
    config: AttackConfig,
    device: torch.device,
    show_progress: bool = True,
    probes: Mapping[ModelKey, Probe] | None = None,
) -> SweepPredictions:
    """p(fake) of every model under every attack of sweep_attacks and eps (and clean) on
    `indices`; `probes` (optional) are fed along the way.

    Batch by batch: each batch is decoded and moved to `device` once (as uint8, made
    float there with the CPU's bits: data.images.unit_float), then every model,
    attack and eps runs on it there; scores stay on the device until the end. Device
    memory holds one batch, not the subset. Each (model, attack, eps) has one attack
    object for the whole sweep, so its random starts continue from batch to batch exactly
    as when the batches ran one after another for that cell (same bytes on the CPU). The
    ensemble runs per batch, seeded by (attack.seed, member, eps): its numbers depend on
    the batches (attack.batch_size), not on the other models or eps."""
    grid = config.eps_grid
    attacked = [(e, eps) for e, eps in enumerate(grid) if eps > 0]
    names = sweep_attacks(config)
    probes = dict(probes or {})
    sources = {probe.transfer_from for probe in probes.values() if probe.transfer_from is not None}
    if sources and "pgd" not in config.attacks:
        raise ValueError("a transfer probe needs pgd in attack.attacks (the source model's PGD images)")
    off_grid = [key.name for key, probe in probes.items() if not any(abs(probe.eps - eps) < 1e-12 for _, eps in attacked)]
    if off_grid:
        raise ValueError(f"probes of {off_grid} are at an eps the sweep does not run")
    for model in models.values():
        model.to(device).eval()
    attacks = {(m, a, e): build_attack(name, model, eps, config, attack_generator(config.seed, name, eps))
               for m, model in enumerate(models.values()) for a, name in enumerate(config.attacks)
               for e, eps in attacked}
    budget = EnsembleBudget.from_config(config.ensemble) if config.ensemble.enabled else None
    scores = torch.zeros((len(models), len(names), len(grid), len(indices)), dtype=torch.float32, device=device)
    index_tensor = torch.as_tensor(indices)
    per_model = 1 + len(attacked) * (sum(gradient_passes(a, config.steps) for a in config.attacks)
                                     + (budget.gradient_passes() if budget else 0))
    total = len(indices) * (len(models) * per_model + sum(probe.gradient_passes for probe in probes.values()))
    bar = progress(total=total, desc="attack_sweep", unit="grad", disable=not show_progress)
    # transfer sources first: their PGD images of a batch are ready when their targets are probed
    order = sorted(enumerate(models.items()), key=lambda item: item[1][0] not in sources)
    start = 0
    for batch in iterate(dataset, config.batch_size, indices=index_tensor, uint8=True):
        # uint8 over the bus (a quarter of float32's bytes), float [0, 1] on the device
        images = unit_float(batch.images.to(device, non_blocking=True))
        labels = batch.labels.to(device, non_blocking=True)
        rows = slice(start, start + len(labels))
        start += len(labels)
        transfer: dict[ModelKey, torch.Tensor] = {}
        for m, (key, model) in order:
            scores[m, :, 0, rows] = _scores(model, images)  # the clean row, shared by every attack
            bar.update(len(labels))
            probe = probes.get(key)
            for e, eps in attacked:
                adversarials = {}
                for a, name in enumerate(config.attacks):
                    adversarials[name] = adversarial(attacks[m, a, e], images, labels, config.quantize)
                    scores[m, a, e, rows] = _scores(model, adversarials[name])
                    bar.update(len(labels) * gradient_passes(name, config.steps))
                result = None
                if budget is not None:
                    result = run_ensemble(model, images, labels, eps, budget, config.seed, config.quantize,
                                          candidates=adversarials)
                    scores[m, names.index(ENSEMBLE), e, rows] = result.p_fake
                    bar.update(len(labels) * budget.gradient_passes())
                bar.set_postfix(model=key.name, eps=units.label(eps), refresh=False)
                if key in sources and abs(eps - _probe_eps(probes, key)) < 1e-12:
                    transfer[key] = adversarials["pgd"]
                if probe is not None and abs(eps - probe.eps) < 1e-12:
                    known = {name: scores[m, a, e, rows].cpu().numpy() for a, name in enumerate(config.attacks)}
                    known[CLEAN] = scores[m, 0, 0, rows].cpu().numpy()
                    probe.run.add(images, labels, known, result, transfer.get(probe.transfer_from))
                    bar.update(len(labels) * probe.gradient_passes)
    bar.close()
    p_fake = scores.cpu().numpy().astype(np.float64)
    labels = dataset.labels[index_tensor].numpy()
    sources_of = np.array([dataset.samples[i].source for i in indices])
    return SweepPredictions(list(models), names, grid, np.asarray(indices), labels, sources_of, p_fake,
                            config.quantize)


def _probe_eps(probes: Mapping[ModelKey, Probe], source: ModelKey) -> float:
    """The eps at which the probes that transfer from `source` need its PGD images."""
    return next(probe.eps for probe in probes.values() if probe.transfer_from == source)


CSV_COLUMNS = ["variant", "seed", "attack", "eps", "eps_label", "metric", "value", "ci_low", "ci_high", "source",
               "heldout", "n"]


def summarize_sweep(predictions: SweepPredictions, config: EvalConfig, holdout: list[str]) -> tuple[SweepMetrics, list[dict]]:
    """Typed metrics (eval/attack_sweep.json) and long rows, per source too (plots/attack_sweep.csv).

    Per source, where the metric is defined on one source: accuracy; for a real source the
    real->fake rate; for a fake method its evasion rate, and its ROC-AUC, AP, EER and
    TPR@FPR against all reals (the false alarms come from every real image)."""
    labels, sources = predictions.labels, predictions.sources
    weights = bootstrap_counts(len(labels), config.n_bootstrap, config.seed) if config.n_bootstrap else None
    entries: list[SweepEntry] = []
    rows: list[dict] = []
    source_names = sorted(set(sources.tolist()))
    for m, model in enumerate(predictions.models):
        p_clean = predictions.p_fake[m, 0, 0]
        cells = [(CLEAN, 0, 0)] + [(attack, a, e) for a, attack in enumerate(predictions.attacks)
                                   for e, eps in enumerate(predictions.eps) if eps > 0]
        for attack, a, e in cells:
            eps = predictions.eps[e]
            head = _cell_columns(model, attack, eps)
            p = predictions.p_fake[m, a, e]
            point = attack_metrics(labels, p_clean, p)
            predicted = (p >= 0.5).astype(int)
            replicates = metric_replicates(labels, p, weights) if weights is not None else {}
            ci = {metric: percentile_ci(replicates[metric], config.ci) for metric in replicates}
            entries.append(SweepEntry(model, attack, eps, point["accuracy"], point["f1"], point["auc"], point["asr"],
                                      len(labels), ci, **{metric: point[metric] for metric in ADDED_METRICS}))
            for metric in ATTACK_METRICS:
                rows.append(_row(head, metric, point[metric], ci.get(metric, (math.nan, math.nan)), "all", False,
                                 len(labels)))
            for source in source_names:
                mask = sources == source
                held = source in holdout
                accuracy = float((predicted[mask] == labels[mask]).mean())
                interval = (
                    percentile_ci(weighted_accuracy(labels[mask], predicted[mask], weights[:, mask]), config.ci)
                    if weights is not None else (math.nan, math.nan)
                )
                rows.append(_row(head, "accuracy", accuracy, interval, source, held, int(mask.sum())))
                rows += _per_source_rows(head, labels, p_clean, p, mask, source, held)
    return SweepMetrics(entries, config.ci, predictions.quantized), rows


def _per_source_rows(head: dict, labels: np.ndarray, p_clean: np.ndarray, p: np.ndarray, mask: np.ndarray,
                     source: str, held: bool) -> list[dict]:
    """The metrics one source defines beside accuracy (see summarize_sweep), no intervals."""
    none = (math.nan, math.nan)
    if labels[mask].max() == 0:  # a real source: false alarms the attack causes
        return [_row(head, "real_to_fake_rate", real_to_fake_rate(labels[mask], p_clean[mask], p[mask]), none,
                     source, held, int(mask.sum()))]
    if labels[mask].min() == 0:  # a source with both classes: every metric is defined on it alone
        both = mask
    else:  # a fake method: against all reals
        both = mask | (labels == 0)
    out = [_row(head, "evasion_rate", evasion_rate(labels[mask], p_clean[mask], p[mask]), none, source, held,
                int(mask.sum()))]
    detection = {"auc": classification_metrics(labels[both], p[both])["auc"],
                 **detection_metrics(labels[both], p[both])}
    out += [_row(head, metric, value, none, source, held, int(both.sum())) for metric, value in detection.items()]
    return out


def _cell_columns(model: ModelKey, attack: str, eps: float) -> dict:
    """The columns of plots/attack_sweep.csv that name the model and the attack cell."""
    return {"variant": model.variant, "seed": model.seed, "attack": attack, "eps": eps, "eps_label": units.label(eps)}


def _row(head: dict, metric: str, value: float, interval: tuple[float, float], source: str, heldout: bool,
         n: int) -> dict:
    """One row of plots/attack_sweep.csv (CSV_COLUMNS, in order)."""
    low, high = interval
    return {**head, "metric": metric, "value": value, "ci_low": low, "ci_high": high, "source": source,
            "heldout": heldout, "n": n}
