"""Grad-CAM under attack for one in-memory model: the measurement shared by the cam_iinc
stage and the scheduled re-evaluation (same subset, same attack seeds, same targets)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from robust_deepfake.config import Params
from robust_deepfake.data.dataset import ImageSet
from robust_deepfake.explain.gradcam import cams_and_logits, iinc
from robust_deepfake.robustness.attacks import build_attack
from robust_deepfake.robustness.sweep import adversarial, attack_generator


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


@dataclass
class CamSubset:
    """The fixed, class-balanced test images the CAMs are computed on."""

    indices: np.ndarray
    images: torch.Tensor  # (n, 3, S, S) in [0, 1]
    labels: torch.Tensor
    masks: np.ndarray  # (n, S, S); zeros for reals, NaN where a fake has no mask
    has_mask: np.ndarray  # fakes with a ground-truth mask

    @classmethod
    def from_split(cls, test: ImageSet, params: Params) -> CamSubset:
        cfg = params.cam
        indices = balanced_subset(test.labels.numpy(), [s.source for s in test.samples], cfg.num_samples, cfg.seed)
        index_tensor = torch.as_tensor(indices)
        labels = test.labels[index_tensor]
        masks = test.masks(index_tensor).numpy()
        has_mask = np.isfinite(masks).all(axis=(1, 2)) & (labels.numpy() == 1)
        return cls(indices, test.images(index_tensor), labels, masks, has_mask)


@dataclass
class Cams:
    """CAMs of one set of inputs (clean or adversarial) and what they say."""

    inputs: torch.Tensor
    p_fake: torch.Tensor
    maps: np.ndarray
    localization: np.ndarray  # IINC(CAM, mask) on the fakes with masks


@dataclass
class AttackedCams:
    attack: str
    eps: float
    cams: Cams
    stability: np.ndarray  # IINC(clean CAM, adversarial CAM), per image


def _cams(model: nn.Module, inputs: torch.Tensor, subset: CamSubset, params: Params) -> Cams:
    """The CAMs and p(fake) of `inputs` from one forward pass per batch."""
    cfg = params.cam
    targets = subset.labels.tolist() if cfg.target == "true" else None  # None: the predicted class
    maps, logits = cams_and_logits(model, inputs, cfg.target_layer, targets, cfg.method, cfg.batch_size)
    p_fake = logits.float().softmax(dim=1)[:, 1].cpu()  # as Detector.p_fake
    return Cams(inputs.cpu(), p_fake, maps, iinc(maps[subset.has_mask], subset.masks[subset.has_mask]))


def cam_grid_plan(params: Params) -> tuple[list[str], list[float]]:
    """The attacks and eps the CAM measurements use (cam.* falls back to attack.*)."""
    return params.cam.attacks or params.attack.attacks, sorted(set(params.cam.eps or params.attack.eps))


def measure(model: nn.Module, subset: CamSubset, params: Params, device: torch.device) -> tuple[Cams, Iterator[AttackedCams]]:
    """Clean CAMs now, and a lazy sequence of adversarial CAMs per attack and eps.

    Adversarial examples come from the attack engine with the sweep's seed: the random
    start depends on (attack.seed, attack, eps), and they are rounded to 8 bits when
    attack.quantize is on, exactly as the sweep scores them."""
    x, y = subset.images.to(device), subset.labels.to(device)
    clean = _cams(model, x, subset, params)
    attacks, grid = cam_grid_plan(params)
    batch = params.cam.batch_size

    def attacked() -> Iterator[AttackedCams]:
        for name in attacks:
            for eps in grid:
                attack = build_attack(name, model, eps, params.attack, attack_generator(params.attack.seed, name, eps))
                adv = torch.cat([adversarial(attack, x[s : s + batch], y[s : s + batch], params.attack.quantize)
                                 for s in range(0, len(x), batch)])
                cams = _cams(model, adv, subset, params)
                yield AttackedCams(name, eps, cams, iinc(clean.maps, cams.maps))

    return clean, attacked()
