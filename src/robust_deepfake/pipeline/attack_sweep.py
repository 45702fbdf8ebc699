"""The body of the attack_sweep stage: attack every trained model (each variant, each
seed) on the same test images, run the gradient-masking checks on each, and summarize.

The unit of work is a seed group (every variant of one seed: the transfer probe feeds the
baseline's PGD images to the other variants of its seed); `eval.workers` groups run at
once, each in its own process at `eval.num_threads` threads (pipeline/train_pool.py).
A model's numbers depend only on its own attacks, whose random starts are seeded by
(attack.seed, attack, eps), so the outs are the same bytes whatever the worker count. The
parent merges the groups in model_keys order and is the only process that writes the outs
and the tracker."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from robust_deepfake import units
from robust_deepfake.config import AttackConfig, Params
from robust_deepfake.data.dataset import load_split
from robust_deepfake.io import write_csv
from robust_deepfake.metrics import ATTACK_METRICS
from robust_deepfake.model.detector import load_trained
from robust_deepfake.paths import VARIANTS, ModelKey, SweepOutputs, TrainOutputs, model_keys
from robust_deepfake.pipeline.preamble import open_stage
from robust_deepfake.pipeline.train_pool import Emit, Job, run_jobs, worker_devices
from robust_deepfake.robustness.masking_outputs import MaskingChecks
from robust_deepfake.robustness.masking_probes import Measurements, ProbeBudget, ProbeRun, tolerances
from robust_deepfake.robustness.sweep import (
    CSV_COLUMNS,
    Probe,
    SweepMetrics,
    SweepPredictions,
    run_sweep,
    stratified_subset,
    summarize_sweep,
)
from robust_deepfake.tracking.runs import MASKING_PREFIX, SWEEP_PREFIX
from robust_deepfake.tracking.tracker import Tracker
from robust_deepfake.units import CLEAN

TRANSFER_SOURCE = "baseline"  # the transfer attack is PGD crafted on this variant of the same seed


@dataclass(frozen=True)
class SweepOutcome:
    metrics: SweepMetrics
    checks: MaskingChecks  # no models when attack.masking.enabled is false


@dataclass(frozen=True)
class SeedGroup:
    """The sweep's unit of work: every variant of one seed."""

    seed: int

    @property
    def name(self) -> str:
        return f"seed{self.seed}"

    @property
    def keys(self) -> list[ModelKey]:
        return [ModelKey(variant, self.seed) for variant in VARIANTS]


@dataclass(frozen=True)
class GroupResult:
    """What a worker sends back for one seed group: its predictions and, per probed model,
    the probes' measurements and the model its transfer attack came from."""

    predictions: SweepPredictions
    measurements: dict[ModelKey, Measurements]
    transfer_from: dict[ModelKey, ModelKey]


def masking_probes(models: dict[ModelKey, nn.Module], config: AttackConfig) -> dict[ModelKey, Probe]:
    """One ProbeRun per model at attack.masking's eps; every model but the transfer source
    gets the source variant's PGD images of the same seed as its transfer attack."""
    budget = ProbeBudget.from_config(config)
    eps = config.masking_eps
    passes = budget.strong_runs * budget.steps * budget.strong_factor + budget.large_steps + 1
    probes = {}
    for key, model in models.items():
        source = ModelKey(TRANSFER_SOURCE, key.seed)
        transfer_from = source if key != source and source in models and "pgd" in config.attacks else None
        probes[key] = Probe(ProbeRun(model, eps, budget, config.seed, config.quantize), eps, transfer_from, passes)
    return probes


def attack_sweep(params: Params, root: Path, tracker: Tracker) -> SweepOutcome:
    """Write the sweep's outs; `tracker` records the metric-vs-eps curves and the masking
    checks on each model's run."""
    device = open_stage(params, tracker, params.eval.num_threads)
    config = params.attack
    keys = model_keys(params.train.seeds)
    test = load_split(params.data.splits_dir, "test", params.data.image_size, params.data.cache_max_mb)
    indices = stratified_subset([s.source for s in test.samples], config.max_samples, config.seed)
    groups = [SeedGroup(seed) for seed in params.train.seeds]
    devices = worker_devices(device, params.train.device, params.eval.workers, len(groups))
    ensemble = config.ensemble
    print(
        f"attack_sweep: {len(keys)} models in {len(groups)} seed groups, {len(devices)} at a time, "
        f"{len(indices)} of {len(test)} test images, attacks "
        f"{config.attacks}, eps {[units.label(e) for e in config.eps]}, {config.steps} steps"
        + (f"; ensemble APGD-CE {ensemble.apgd_steps} steps x {ensemble.apgd_restarts} run(s)"
           + (f", FAB {ensemble.fab_steps} steps" if ensemble.fab else "")
           + (f", Square {ensemble.square_queries} queries" if ensemble.square_queries else "")
           if ensemble.enabled else "")
        + (f"; masking checks at {units.label(config.masking_eps)}" if config.masking.enabled else "")
        + f", {'scored after 8-bit rounding' if config.quantize else 'float adversarial images'}, on {device}",
        flush=True,
    )
    results: dict[SeedGroup, GroupResult] = {}

    def collect(kind: str, group: SeedGroup, result: GroupResult) -> None:
        if kind == "done":
            results[group] = result

    run_jobs([Job(group, params, root) for group in groups], sweep_seed_group, devices, params.eval.num_threads,
             collect, title="attack_sweep", task="attack sweep of", unit="seed group")
    predictions = merge_predictions([results[group].predictions for group in groups], keys)
    measurements = {key: result.measurements[key] for key in keys for result in results.values()
                    if key in result.measurements}
    transfer_from = {key: result.transfer_from[key] for key in keys for result in results.values()
                     if key in result.transfer_from}
    metrics, rows = summarize_sweep(predictions, params.eval, params.split.holdout_methods)
    outputs = SweepOutputs.at(root)
    predictions.save(outputs.predictions)
    metrics.save(outputs.metrics)
    write_csv(outputs.plot, CSV_COLUMNS, rows)
    curves = [{"model": e.model, "attack": e.attack, "metric": metric, "value": getattr(e, metric), "eps": e.eps}
              for e in metrics.entries for metric in ATTACK_METRICS]  # clean: step 0
    tracker.log_eps_curves(keys, curves, SWEEP_PREFIX)
    # written with no models when attack.masking.enabled is false (a DVC out always exists)
    checks = MaskingChecks.of(measurements, transfer_from, config.masking_eps, ProbeBudget.from_config(config),
                              tolerances(config))
    checks.save(outputs.masking)
    tracker.log_eps_curves(keys, masking_curves(checks), MASKING_PREFIX)
    return SweepOutcome(metrics, checks)


def sweep_seed_group(job: Job, device: torch.device, emit: Emit) -> None:
    """The sweep of one seed group's models (a job of the pool): emits `done` with its
    GroupResult."""
    params, root, group = job.params, job.root, job.key
    config = params.attack
    models = {key: load_trained(TrainOutputs.of(root, key).model_dir, device)[0] for key in group.keys}
    test = load_split(params.data.splits_dir, "test", params.data.image_size, params.data.cache_max_mb)
    indices = stratified_subset([s.source for s in test.samples], config.max_samples, config.seed)
    probes = masking_probes(models, config) if config.masking.enabled else {}
    predictions = run_sweep(models, test, indices, config, device, probes=probes)
    emit("done", group, GroupResult(predictions, {key: probe.run.measurements() for key, probe in probes.items()},
                                    {key: probe.transfer_from for key, probe in probes.items() if probe.transfer_from}))


def merge_predictions(parts: list[SweepPredictions], keys: list[ModelKey]) -> SweepPredictions:
    """The groups' predictions as one, models in the order of `keys` (every part attacked
    the same images with the same attacks and eps)."""
    first = parts[0]
    rows = {key: part.p_fake[part.index(key)] for part in parts for key in part.models}
    return SweepPredictions(list(keys), first.attacks, first.eps, first.indices, first.labels, first.sources,
                            np.stack([rows[key] for key in keys]), first.quantized)


def masking_curves(checks: MaskingChecks) -> list[dict]:
    """The checks as MLflow metrics on each model's run: `<check>/warn` (1 = WARN) and
    every number behind it, at step = the checks' eps in grey levels."""
    out = []
    for entry in checks.models:
        for row in entry.rows:
            values = {"warn": float(row.status == "WARN"), **row.numbers}
            out += [{"model": entry.model, "attack": row.check, "metric": name, "value": value, "eps": checks.eps}
                    for name, value in values.items() if math.isfinite(value)]
    return out


def format_table(outcome: SweepOutcome) -> str:
    """Accuracy / AUC / evasion rate per model, attack and eps, then the masking checks, as
    fixed-width text."""
    metrics = outcome.metrics
    lines = []
    for key in metrics.models:
        clean = metrics.get(key, CLEAN, 0.0)
        lines.append(f"{key.name:14s} clean    acc {clean.accuracy:.3f} auc {clean.auc:.3f}")
        for attack in metrics.attacks:
            cells = "  ".join(
                f"{units.label(eps)}: acc {metrics.get(key, attack, eps).accuracy:.3f} "
                f"auc {metrics.get(key, attack, eps).auc:.3f} evasion {metrics.get(key, attack, eps).evasion_rate:.3f}"
                for eps in metrics.attacked_eps
            )
            lines.append(f"{key.name:14s} {attack:8s} {cells}")
    if outcome.checks.models:
        lines.append(f"gradient-masking checks at {units.label(outcome.checks.eps)}:")
        for entry in outcome.checks.models:
            lines.append(f"{entry.model.name:14s} " + "  ".join(f"{row.check} {row.status}" for row in entry.rows))
        line = outcome.checks.verdict_line()
        if line:
            lines.append(line)
    return "\n".join(lines)
