"""The body of the cam_iinc stage: how far Grad-CAM moves under attack, and how well it
localizes the manipulation, for both models on a fixed class-balanced test subset."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from robust_deepfake.attacks import build_attack
from robust_deepfake.bootstrap import percentile_ci
from robust_deepfake.config import Params
from robust_deepfake.data.dataset import load_split
from robust_deepfake.evaluation import attack_generator, eps_label
from robust_deepfake.explain import compute_cams, iinc
from robust_deepfake.io import write_csv, write_json
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


def balanced_subset(labels: np.ndarray, sources: list[str], n: int, seed: int) -> np.ndarray:
    """n/2 reals and n/2 fakes (fakes spread over methods round-robin), seeded, sorted."""
    rng = np.random.default_rng(seed)
    chosen = []
    for label, share in ((0, n // 2), (1, n - n // 2)):
        pool = np.flatnonzero(labels == label)
        by_source: dict[str, list[int]] = {}
        for index in rng.permutation(pool):
            by_source.setdefault(sources[index], []).append(int(index))
        queues = [by_source[s] for s in sorted(by_source)]
        picked: list[int] = []
        while len(picked) < min(share, len(pool)):
            for queue in queues:
                if queue and len(picked) < share:
                    picked.append(queue.pop())
        chosen.extend(picked)
    return np.sort(np.array(chosen, dtype=np.int64))


def _bootstrap_mean(values: np.ndarray, n_boot: int, level: float, seed: int) -> tuple[float, float, float]:
    values = values[np.isfinite(values)]
    if values.size == 0:
        return math.nan, math.nan, math.nan
    mean = float(values.mean())
    if n_boot == 0 or values.size < 2:
        return mean, math.nan, math.nan
    rng = np.random.default_rng(seed)
    samples = values[rng.integers(0, values.size, size=(n_boot, values.size))].mean(axis=1)
    low, high = percentile_ci(samples, level)
    return mean, low, high


def cam_iinc(params: Params, root: Path, track: bool = True) -> dict:
    cfg = params.cam
    device = resolve_device(params.train.device)
    test = load_split(params.data.splits_dir, "test", params.data.image_size, params.data.cache_max_mb)
    labels = test.labels.numpy()
    indices = balanced_subset(labels, [s.source for s in test.samples], cfg.num_samples, cfg.seed)
    index_tensor = torch.as_tensor(indices)
    images = test.images(index_tensor)
    y = test.labels[index_tensor]
    masks = test.masks(index_tensor, whole_image_sources=set()).numpy()
    has_mask = np.isfinite(masks).all(axis=(1, 2)) & (y.numpy() == 1)
    attacks = cfg.attacks or params.attack.attacks
    grid = sorted(set(cfg.eps or params.attack.eps))
    figure_eps = _figure_eps(params, grid)
    sweep_grid = params.attack.eps_grid
    print(
        f"cam_iinc: {len(indices)} test images ({int((y == 1).sum())} fake, {int(has_mask.sum())} with masks), "
        f"{cfg.method} at {cfg.target_layer}, attacks {attacks}, eps {[eps_label(e) for e in grid]}",
        flush=True,
    )
    outputs = CamOutputs.at(root)
    rows: list[dict] = []
    per_sample: dict[str, np.ndarray] = {"indices": indices, "has_mask": has_mask}
    compact: dict = {}
    bar = progress(total=len(VARIANTS) * (1 + len(attacks) * len(grid)), desc="cam_iinc", unit="set")
    for variant in VARIANTS:
        model, _ = load_trained(root / "models" / variant, device)
        x = images.to(device)
        clean_p = model.p_fake(x).cpu()
        clean_targets = _targets(cfg.target, clean_p, y)
        clean_cams = compute_cams(model, x, cfg.target_layer, clean_targets, cfg.method, cfg.batch_size)
        bar.update(1)
        clean_loc = iinc(clean_cams[has_mask], masks[has_mask])
        per_sample[f"localization|{variant}|none|0"] = clean_loc
        entry: dict = {"clean": {"localization": _stat(clean_loc, params, 0)}}
        rows.extend(_rows(variant, "none", 0.0, "localization", entry["clean"]["localization"]))
        for attack_name in attacks:
            per_eps = {}
            for eps in grid:
                # same seed as the sweep: the generator depends on (seed, attack, eps index)
                eps_index = sweep_grid.index(eps) if eps in sweep_grid else len(sweep_grid)
                attack = build_attack(attack_name, model, eps, params.attack,
                                      attack_generator(params.attack.seed, attack_name, eps_index))
                adv = torch.cat([attack(x[s : s + cfg.batch_size], y[s : s + cfg.batch_size].to(device))
                                 for s in range(0, len(x), cfg.batch_size)])
                adv_p = model.p_fake(adv).cpu()
                adv_cams = compute_cams(model, adv, cfg.target_layer, _targets(cfg.target, adv_p, y), cfg.method, cfg.batch_size)
                stability_values = iinc(clean_cams, adv_cams)
                localization_values = iinc(adv_cams[has_mask], masks[has_mask])
                per_sample[f"stability|{variant}|{attack_name}|{eps_label(eps)}"] = stability_values
                per_sample[f"localization|{variant}|{attack_name}|{eps_label(eps)}"] = localization_values
                stability = _stat(stability_values, params, 1)
                localization = _stat(localization_values, params, 2)
                per_eps[eps_label(eps)] = {"stability": stability, "localization": localization}
                rows.extend(_rows(variant, attack_name, eps, "stability", stability))
                rows.extend(_rows(variant, attack_name, eps, "localization", localization))
                if eps == figure_eps:
                    from robust_deepfake.cam_figures import cam_grid

                    cam_grid(
                        outputs.figures / f"cam_{variant}_{attack_name}.png",
                        images, adv.cpu(), clean_cams, adv_cams, masks, y.numpy(), clean_p.numpy(), adv_p.numpy(),
                        title=f"{variant}: Grad-CAM under {attack_name.upper()} eps={eps_label(eps)} ({cfg.target_layer})",
                        rows=cfg.figure_rows,
                    )
                bar.update(1)
            entry[attack_name] = per_eps
        compact[variant] = entry
    bar.close()
    write_json(outputs.metrics, compact)
    _save_npz(outputs.values, per_sample)
    write_csv(outputs.plot, CSV_COLUMNS, rows)
    if track:
        _log(params, root, rows)
    return compact


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    from robust_deepfake.io import atomic_path

    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez_compressed(handle, **arrays)


def _figure_eps(params: Params, grid: list[float]) -> float:
    reference = params.report.reference_eps
    return min(grid, key=lambda eps: abs(eps - reference))


def _targets(mode: str, p_fake: torch.Tensor, labels: torch.Tensor) -> list[int]:
    if mode == "true":
        return labels.tolist()
    return (p_fake >= 0.5).long().tolist()


def _stat(values: np.ndarray, params: Params, salt: int) -> dict:
    mean, low, high = _bootstrap_mean(values, params.eval.n_bootstrap, params.eval.ci, params.eval.seed + salt)
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


