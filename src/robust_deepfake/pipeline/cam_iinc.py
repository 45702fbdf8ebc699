"""The body of the cam_iinc stage: how far Grad-CAM moves under attack (stability), and
how well it localizes the manipulation (localization), for every trained model on one
fixed class-balanced test subset."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from robust_deepfake.bootstrap import mean_with_ci
from robust_deepfake.config import Params
from robust_deepfake.data.dataset import load_split
from robust_deepfake.explain.figures import cam_grid
from robust_deepfake.explain.layers import require_target_layer
from robust_deepfake.explain.measure import CamSubset, cam_grid_plan, measure
from robust_deepfake.explain.outputs import CamEntry, CamMetrics, IincValues
from robust_deepfake.io import write_csv
from robust_deepfake.model.detector import load_trained
from robust_deepfake.paths import CamOutputs, ModelKey, TrainOutputs, model_keys
from robust_deepfake.pipeline.preamble import open_stage
from robust_deepfake.pipeline.train_pool import Emit, Job, run_jobs, worker_devices
from robust_deepfake.progress import progress
from robust_deepfake.tracking.runs import CAM_PREFIX
from robust_deepfake.tracking.tracker import Tracker
from robust_deepfake import units
from robust_deepfake.units import CLEAN

CSV_COLUMNS = ["variant", "seed", "attack", "eps", "eps_label", "measure", "value", "ci_low", "ci_high", "n"]
# Bootstrap streams of the per-image intervals: one per measure, so the clean and
# attacked localization intervals do not reuse the stability resamples.
BOOTSTRAP_SALT = {"localization_clean": 0, "stability": 1, "localization": 2}


@dataclass(frozen=True)
class ModelCams:
    """What a worker sends back for one model: its entries (clean localization, then
    stability and localization per attack and eps) and its per-image IINC values."""

    entries: list[CamEntry]
    localization_clean: np.ndarray  # (images with a mask,)
    stability: np.ndarray  # (A, E, n)
    localization: np.ndarray  # (A, E, images with a mask)


def cam_iinc(params: Params, root: Path, tracker: Tracker) -> CamMetrics:
    """Write the CAM outs; `tracker` records the IINC-vs-eps curves on each model's run.

    `eval.workers` models are measured at once, each in its own process at
    `eval.num_threads` threads (pipeline/train_pool.py); a model's numbers and figures do
    not depend on which process measured it, so the outs are the same bytes whatever the
    worker count. The parent merges the models in model_keys order and is the only process
    that writes the metrics and the tracker."""
    device = open_stage(params, tracker, params.eval.num_threads, checks=[require_target_layer])
    cfg = params.cam
    test = load_split(params.data.splits_dir, "test", params.data.image_size, params.data.cache_max_mb)
    subset = CamSubset.from_split(test, params)
    attacks, grid = cam_grid_plan(params)
    keys = model_keys(params.train.seeds)
    devices = worker_devices(device, params.train.device, params.eval.workers, len(keys))
    print(
        f"cam_iinc: {len(keys)} models, {len(devices)} at a time, {len(subset.indices)} test images "
        f"({int((subset.labels == 1).sum())} fake, "
        f"{int(subset.has_mask.sum())} with masks), {cfg.method} at {cfg.target_layer} (target: {cfg.target} class), "
        f"attacks {attacks}, eps {[units.label(e) for e in grid]}",
        flush=True,
    )
    results: dict[ModelKey, ModelCams] = {}

    def collect(kind: str, key: ModelKey, result: ModelCams) -> None:
        if kind == "done":
            results[key] = result

    run_jobs([Job(key, params, root) for key in keys], measure_model, devices, params.eval.num_threads, collect,
             title="cam_iinc", task="CAM measurement of")
    outputs = CamOutputs.at(root)
    n = len(subset.indices)
    shape = (len(keys), len(attacks), len(grid), n)
    values = IincValues(keys, list(attacks), list(grid), subset.indices, subset.has_mask,
                        np.full(shape, np.nan), np.full(shape, np.nan), np.full((len(keys), n), np.nan))
    entries: list[CamEntry] = []
    for m, key in enumerate(keys):
        result = results[key]
        values.localization_clean[m, subset.has_mask] = result.localization_clean
        values.stability[m] = result.stability
        values.localization[m][..., subset.has_mask] = result.localization
        entries += result.entries
    metrics = CamMetrics(entries, cfg.method, cfg.target_layer)
    metrics.save(outputs.metrics)
    values.save(outputs.values)
    write_csv(outputs.plot, CSV_COLUMNS, (_row(entry) for entry in entries))
    rows = [{"model": e.model, "attack": e.attack, "metric": f"iinc_{e.measure}", "value": e.mean, "eps": e.eps}
            for e in entries if e.attack != CLEAN]
    tracker.log_eps_curves(keys, rows, CAM_PREFIX)
    return metrics


def measure_model(job: Job, device: torch.device, emit: Emit) -> None:
    """The CAM measurements of one model (a job of the pool): writes its figures (the first
    seed's models, at the eps nearest report.reference_eps) and emits `done` with its
    ModelCams."""
    params, root, key = job.params, job.root, job.key
    cfg = params.cam
    test = load_split(params.data.splits_dir, "test", params.data.image_size, params.data.cache_max_mb)
    subset = CamSubset.from_split(test, params)
    attacks, grid = cam_grid_plan(params)
    figure_eps = min(grid, key=lambda eps: abs(eps - params.report.reference_eps))
    figures = CamOutputs.at(root).figures
    bar = progress(total=1 + len(attacks) * len(grid), desc="cam_iinc", unit="set")
    bar.set_postfix(model=key.name, refresh=False)
    model, _ = load_trained(TrainOutputs.of(root, key).model_dir, device)
    clean, attacked = measure(model, subset, params, device)
    bar.update(1)
    entries = [_entry(key, CLEAN, 0.0, "localization", clean.localization, params, "localization_clean")]
    stability = np.full((len(attacks), len(grid), len(subset.indices)), np.nan)
    localization = np.full((len(attacks), len(grid), int(subset.has_mask.sum())), np.nan)
    for result in attacked:
        a, e = attacks.index(result.attack), grid.index(result.eps)
        stability[a, e] = result.stability
        localization[a, e] = result.cams.localization
        entries.append(_entry(key, result.attack, result.eps, "stability", result.stability, params, "stability"))
        entries.append(_entry(key, result.attack, result.eps, "localization", result.cams.localization, params,
                              "localization"))
        if result.eps == figure_eps and key.seed == params.train.seeds[0]:
            cam_grid(figures / f"cam_{key.variant}_{result.attack}.png", subset, clean, result,
                     title=f"{key.name}: Grad-CAM under {result.attack.upper()} eps={units.label(result.eps)} "
                           f"({cfg.target_layer})", rows=cfg.figure_rows)
        bar.update(1)
    bar.close()
    emit("done", key, ModelCams(entries, clean.localization, stability, localization))


def _entry(key: ModelKey, attack: str, eps: float, measure: str, per_image: np.ndarray, params: Params,
           stream: str) -> CamEntry:
    mean, low, high = mean_with_ci(per_image, params.eval.n_bootstrap, params.eval.ci,
                                   params.eval.seed + BOOTSTRAP_SALT[stream])
    return CamEntry(key, attack, eps, measure, mean, (low, high), int(np.isfinite(per_image).sum()))


def _row(entry: CamEntry) -> dict:
    return {"variant": entry.model.variant, "seed": entry.model.seed, "attack": entry.attack, "eps": entry.eps,
            "eps_label": units.label(entry.eps), "measure": entry.measure, "value": entry.mean,
            "ci_low": entry.ci[0], "ci_high": entry.ci[1], "n": entry.n}


def format_table(metrics: CamMetrics) -> str:
    """Stability / localization per model, attack and eps, as fixed-width text."""
    lines = []
    for key in metrics.models:
        clean = metrics.get(key, CLEAN, 0.0, "localization")
        lines.append(f"{key.name:14s} clean   localization {clean.mean:.3f}")
        for attack in metrics.attacks:
            cells = "  ".join(
                f"{units.label(eps)}: stab {metrics.get(key, attack, eps, 'stability').mean:.3f} "
                f"loc {metrics.get(key, attack, eps, 'localization').mean:.3f}"
                for eps in metrics.attacked_eps
            )
            lines.append(f"{key.name:14s} {attack:7s} {cells}")
    return "\n".join(lines)
