"""The cam_iinc stage's typed outputs: per-image IINC (`IincValues`, an .npz) and its
summary (`CamMetrics`, JSON). Each is written and read only here, so the report and
re-evaluation never parse string keys."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from robust_deepfake.errors import MissingInputError
from robust_deepfake.paths import ModelKey, read_json_file
from robust_deepfake import units
from robust_deepfake.units import CLEAN
from robust_deepfake.io import write_json, write_npz

MEASURES = ("stability", "localization")


@dataclass
class IincValues:
    """Per-image IINC on the CAM subset, indexed [model, attack, eps, image].

    stability: IINC(clean CAM, adversarial CAM); localization: IINC(CAM, ground-truth
    mask), NaN on images without a mask; localization_clean: the clean CAM vs the mask."""

    models: list[ModelKey]
    attacks: list[str]
    eps: list[float]  # attacked budgets only (> 0)
    indices: np.ndarray  # positions in the test split
    has_mask: np.ndarray
    stability: np.ndarray  # (M, A, E, n)
    localization: np.ndarray  # (M, A, E, n)
    localization_clean: np.ndarray  # (M, n)

    def index(self, key: ModelKey) -> int:
        return self.models.index(key)

    def save(self, path: Path) -> None:
        write_npz(
            path, variants=np.array([k.variant for k in self.models]), seeds=np.array([k.seed for k in self.models]),
            attacks=np.array(self.attacks), eps=np.array(self.eps), indices=self.indices, has_mask=self.has_mask,
            stability=self.stability, localization=self.localization, localization_clean=self.localization_clean,
        )

    @classmethod
    def load(cls, path: Path) -> IincValues:
        if not Path(path).exists():
            raise MissingInputError(f"{path}: missing; run `dvc repro cam_iinc` first")
        with np.load(path, allow_pickle=False) as data:
            models = [ModelKey(str(v), int(s)) for v, s in zip(data["variants"], data["seeds"], strict=True)]
            return cls(models, data["attacks"].tolist(), data["eps"].tolist(), data["indices"], data["has_mask"],
                       data["stability"], data["localization"], data["localization_clean"])


@dataclass(frozen=True)
class CamEntry:
    """Mean IINC of one model, attack, eps and measure over the CAM subset."""

    model: ModelKey
    attack: str  # `clean` with eps 0 for the unattacked localization
    eps: float
    measure: str
    mean: float
    ci: tuple[float, float]  # per-image bootstrap (test sampling only)
    n: int

    def as_dict(self) -> dict:
        return {"variant": self.model.variant, "seed": self.model.seed, "attack": self.attack, "eps": self.eps,
                "eps_label": units.label(self.eps), "measure": self.measure, "mean": self.mean,
                "ci": list(self.ci), "n": self.n}

    @classmethod
    def from_dict(cls, data: dict) -> CamEntry:
        return cls(ModelKey(data["variant"], int(data["seed"])), data["attack"], float(data["eps"]),
                   data["measure"], data["mean"], (data["ci"][0], data["ci"][1]), int(data["n"]))


@dataclass
class CamMetrics:
    entries: list[CamEntry]
    method: str
    target_layer: str

    def get(self, model: ModelKey, attack: str, eps: float, measure: str) -> CamEntry:
        attack = CLEAN if eps == 0 else attack
        for entry in self.entries:
            if (entry.model, entry.attack, entry.measure) == (model, attack, measure) and abs(entry.eps - eps) < 1e-12:
                return entry
        raise KeyError(f"no CAM entry for {model.name} {attack} eps={units.label(eps)} {measure}")

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
        write_json(path, {"method": self.method, "target_layer": self.target_layer,
                          "entries": [e.as_dict() for e in self.entries]})

    @classmethod
    def load(cls, path: Path) -> CamMetrics:
        data = read_json_file(Path(path), "run `dvc repro cam_iinc` first")
        return cls([CamEntry.from_dict(e) for e in data["entries"]], data["method"], data["target_layer"])
