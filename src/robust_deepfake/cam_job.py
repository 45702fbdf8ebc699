"""The body of the cam_iinc stage: how far Grad-CAM moves under attack, and how well it
localizes the manipulation, for both models on a fixed class-balanced test subset."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from robust_deepfake.bootstrap import mean_with_ci
from robust_deepfake.cam_figures import cam_grid
from robust_deepfake.cam_measure import CamSubset, cam_grid_plan, measure
from robust_deepfake.config import Params
from robust_deepfake.data.dataset import load_split
from robust_deepfake.evaluation import eps_label
from robust_deepfake.io import write_csv, write_json, write_npz
from robust_deepfake.models import load_trained, resolve_device
from robust_deepfake.progress import progress
from robust_deepfake.train_job import VARIANTS

CSV_COLUMNS = ["model", "attack", "eps", "eps_label", "measure", "value", "ci_low", "ci_high", "n"]


@dataclass(frozen=True)
class CamOutputs:
    metrics: Path
    plot: Path
    figures: Path
    values: Path  # per-sample IINC, for the report's paired comparisons

    @classmethod
    def at(cls, root: Path) -> CamOutputs:
        return cls(root / "metrics" / "cam_iinc.json", root / "plots" / "iinc.csv", root / "reports" / "cam",
                   root / "eval" / "cam_iinc_values.npz")


def cam_iinc(params: Params, root: Path, track: bool = True) -> dict:
    cfg = params.cam
    device = resolve_device(params.train.device)
    test = load_split(params.data.splits_dir, "test", params.data.image_size, params.data.cache_max_mb)
    subset = CamSubset.from_split(test, params)
    attacks, grid = cam_grid_plan(params)
    figure_eps = _figure_eps(params, grid)
    print(
        f"cam_iinc: {len(subset.indices)} test images ({int((subset.labels == 1).sum())} fake, "
        f"{int(subset.has_mask.sum())} with masks), {cfg.method} at {cfg.target_layer}, attacks {attacks}, "
        f"eps {[eps_label(e) for e in grid]}",
        flush=True,
    )
    outputs = CamOutputs.at(root)
    rows: list[dict] = []
    per_sample: dict[str, np.ndarray] = {"indices": subset.indices, "has_mask": subset.has_mask}
    compact: dict = {}
    bar = progress(total=len(VARIANTS) * (1 + len(attacks) * len(grid)), desc="cam_iinc", unit="set")
    for variant in VARIANTS:
        model, _ = load_trained(root / "models" / variant, device)
        clean, attacked = measure(model, subset, params, device)
        bar.update(1)
        per_sample[f"localization|{variant}|none|0"] = clean.localization
        entry: dict = {"clean": {"localization": _stat(clean.localization, params, 0)}}
        rows.extend(_rows(variant, "none", 0.0, "localization", entry["clean"]["localization"]))
        for result in attacked:
            label = eps_label(result.eps)
            per_sample[f"stability|{variant}|{result.attack}|{label}"] = result.stability
            per_sample[f"localization|{variant}|{result.attack}|{label}"] = result.cams.localization
            stability = _stat(result.stability, params, 1)
            localization = _stat(result.cams.localization, params, 2)
            entry.setdefault(result.attack, {})[label] = {"stability": stability, "localization": localization}
            rows.extend(_rows(variant, result.attack, result.eps, "stability", stability))
            rows.extend(_rows(variant, result.attack, result.eps, "localization", localization))
            if result.eps == figure_eps:
                cam_grid(
                    outputs.figures / f"cam_{variant}_{result.attack}.png",
                    subset.images, result.cams.inputs, clean.maps, result.cams.maps, subset.masks,
                    subset.labels.numpy(), clean.p_fake.numpy(), result.cams.p_fake.numpy(),
                    title=f"{variant}: Grad-CAM under {result.attack.upper()} eps={label} ({cfg.target_layer})",
                    rows=cfg.figure_rows,
                )
            bar.update(1)
        compact[variant] = entry
    bar.close()
    write_json(outputs.metrics, compact)
    write_npz(outputs.values, **per_sample)
    write_csv(outputs.plot, CSV_COLUMNS, rows)
    if track:
        _log(params, root, rows)
    return compact


def _figure_eps(params: Params, grid: list[float]) -> float:
    reference = params.report.reference_eps
    return min(grid, key=lambda eps: abs(eps - reference))


def _stat(values: np.ndarray, params: Params, salt: int) -> dict:
    mean, low, high = mean_with_ci(values, params.eval.n_bootstrap, params.eval.ci, params.eval.seed + salt)
    return {"mean": mean, "ci": [low, high], "n": int(np.isfinite(values).sum())}


def _rows(model: str, attack: str, eps: float, measure: str, stat: dict) -> list[dict]:
    return [{
        "model": model, "attack": attack, "eps": eps, "eps_label": eps_label(eps), "measure": measure,
        "value": stat["mean"], "ci_low": stat["ci"][0], "ci_high": stat["ci"][1], "n": stat["n"],
    }]


def _log(params: Params, root: Path, rows: list[dict]) -> None:
    import json

    from robust_deepfake.tracking import log_eps_curves

    metas = {v: json.loads((root / "models" / v / "meta.json").read_text()) for v in VARIANTS}
    converted = [
        {"model": r["model"], "attack": r["attack"], "metric": f"iinc_{r['measure']}", "value": r["value"],
         "eps": r["eps"], "source": "all"}
        for r in rows
    ]
    log_eps_curves(params, root, metas, converted, prefix="cam")


