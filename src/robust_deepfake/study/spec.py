"""The study spec (configs/study_*.yaml): which grid of DVC experiments to run, validated
like params.yaml before anything runs.

A *cell* is one training seed at one grid point: the whole DAG (`dvc exp run`) with
`train.seeds=[seed]` and the point's overrides. The seed is the unit the verdict averages
over, so cells of the same seed share initial weights and data order across settings (the
comparisons are paired by seed). The epsilon = 0 placebo is always in the grid: with
alpha > 0 the loss reweighting alone (the second, unperturbed pass through the late
layers) changes the model, so "reg helps" must beat the placebo, not only the baseline.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator, model_validator

from robust_deepfake.config import (
    DEFAULT_PARAMS,
    ConfigError,
    Params,
    Seed,
    Strict,
    format_errors,
    read_yaml,
    validate,
)

PLACEBO_KEY = "reg.epsilon"
SEED_KEY = "train.seeds"
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")
_NOT_IN_REF = re.compile(r"[^A-Za-z0-9._-]+")
# Per-variant numbers every cell reports (study/cell.py); `acc_<attack>` / `auc_<attack>`
# exist for each attack in attack.attacks, all at report.reference_eps.
FIXED_METRICS = ("acc_clean", "auc_clean", "f1_clean", "iinc_stab")


class StudySpec(Strict):
    """configs/study_*.yaml. Keys of `grid` and `fixed` are params.yaml keys (`reg.epsilon`)."""

    name: str
    seeds: list[Seed] = Field(min_length=1)
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    fixed: dict[str, Any] = Field(default_factory=dict)
    dose: str = PLACEBO_KEY  # x axis of the dose-response figures
    lines: str | None = None  # one line per value of this grid key (None: one line)
    metric: str = "acc_pgd"  # the headline metric of the figures' first panel and of the verdicts
    parallelism: int = Field(1, ge=1, le=1024)  # cells in flight at once (= GPUs across the pool)
    retries: int = Field(1, ge=0, le=10)  # resubmissions of a failed or crashed cell
    git_remote: str | None = Field(None, min_length=1)  # where `dvc exp push` sends each cell
    dvc_remote: str | None = Field(None, min_length=1)  # DVC remote for its outputs (None: the default)
    heartbeat_timeout_s: int = Field(600, ge=60)  # a running cell silent this long is marked crashed
    # The dvc.yaml stages a cell runs, with what they depend on (None: the whole DAG). The
    # study reads only the attack_sweep and cam_iinc outputs; a cell's own report stage (its
    # one-seed verdict is undefined) is skipped with `targets: [attack_sweep, cam_iinc]`.
    targets: list[str] | None = Field(None, min_length=1)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError("lowercase letters, digits and '-', at most 40 characters (it prefixes DVC "
                             f"experiment names), got {value!r}")
        return value

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, value: list[int]) -> list[int]:
        if len(set(value)) != len(value):
            raise ValueError(f"seeds must be unique, got {value}")
        return value

    @field_validator("grid")
    @classmethod
    def _grid(cls, value: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in value.items():
            if not values:
                raise ValueError(f"{key}: at least one value is required")
            if len({json.dumps(v, sort_keys=True) for v in values}) != len(values):
                raise ValueError(f"{key}: values must be unique, got {values}")
            if key == SEED_KEY:
                raise ValueError(f"{SEED_KEY} is set per cell from `seeds`; list the seeds there")
        return value

    @model_validator(mode="after")
    def _keys(self) -> StudySpec:
        overlap = sorted(set(self.grid) & set(self.fixed))
        if overlap:
            raise ValueError(f"{overlap} set in both grid and fixed; keep each key in one")
        if SEED_KEY in self.fixed:
            raise ValueError(f"fixed: {SEED_KEY} is set per cell from `seeds`")
        return self


@dataclass(frozen=True)
class Cell:
    """One DVC experiment of the study: a seed at a grid point."""

    study: str
    seed: int
    setting: tuple[tuple[str, Any], ...]  # the grid point, in the grid's key order
    fixed: tuple[tuple[str, Any], ...]

    @property
    def assignments(self) -> dict[str, Any]:
        """Every params.yaml key this cell sets, with its value."""
        return {**dict(self.fixed), **dict(self.setting), SEED_KEY: [self.seed]}

    @property
    def overrides(self) -> list[str]:
        """The `dvc exp run -S` arguments (hydra grammar: lists in brackets, strings quoted)."""
        return [f"{key}={hydra_value(value)}" for key, value in self.assignments.items()]

    @property
    def label(self) -> str:
        """What the Prefect UI names the cell's flow run: `reg.epsilon=0.25 reg.mode=random seed=0`."""
        return " ".join([*(f"{k}={_shown(v)}" for k, v in self.setting), f"seed={self.seed}"])

    def experiment_name(self, cell_hash: str) -> str:
        """The DVC experiment name: readable, a valid git ref, unique per cell identity."""
        parts = [f"{key.rsplit('.', 1)[-1]}{_shown(value)}" for key, value in self.setting]
        slug = _NOT_IN_REF.sub("_", "-".join([self.study, *parts, f"s{self.seed}"])).strip("._-")
        return f"{slug[:80]}-{cell_hash[:8]}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-able (a Prefect flow run parameter)."""
        return {"study": self.study, "seed": self.seed, "setting": [list(p) for p in self.setting],
                "fixed": [list(p) for p in self.fixed]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Cell:
        return cls(data["study"], int(data["seed"]), tuple((k, v) for k, v in data["setting"]),
                   tuple((k, v) for k, v in data["fixed"]))

    def params(self, base: dict[str, Any], source: str = str(DEFAULT_PARAMS)) -> Params:
        """params.yaml with this cell's assignments, validated strictly."""
        return validate(apply_assignments(base, self.assignments, source), f"{source} + study cell {self.label!r}")


def _shown(value: Any) -> str:
    if isinstance(value, list):
        return "+".join(_shown(v) for v in value) or "none"
    return str(value).lower() if isinstance(value, bool) else str(value)


def hydra_value(value: Any) -> str:
    """A value in DVC's `-S` (hydra) grammar: `0.5`, `true`, `null`, `'random'`, `['a','b']`."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(value, list):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    raise ConfigError(f"study: cannot pass {value!r} to `dvc exp run -S` (plain values and lists only)")


def apply_assignments(base: dict[str, Any], assignments: dict[str, Any], source: str) -> dict[str, Any]:
    """A copy of `base` with dotted keys set; every key must already exist (as `-S` without `+`)."""
    raw = copy.deepcopy(base)
    for key, value in assignments.items():
        node = raw
        *parents, leaf = key.split(".")
        for part in parents:
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"{source}: study key {key!r}: no section {part!r} in params.yaml")
            node = node[part]
        if leaf not in node:
            raise ConfigError(f"{source}: study key {key!r} is not a params.yaml key")
        node[leaf] = copy.deepcopy(value)
    return raw


def load_spec(path: str | Path) -> StudySpec:
    """The spec file, strictly validated; ConfigError naming the file and key."""
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    try:
        return StudySpec.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(format_errors(str(path), error)) from None


def with_placebo(spec: StudySpec, base: dict[str, Any]) -> StudySpec:
    """The spec with epsilon = 0 in its grid: added to a `reg.epsilon` grid that lacks it,
    or, when epsilon is not varied, a `reg.epsilon: [<fixed or params value>, 0.0]` grid key."""
    grid = dict(spec.grid)
    if PLACEBO_KEY in grid:
        if not any(v == 0 for v in grid[PLACEBO_KEY]):
            grid[PLACEBO_KEY] = [0.0, *grid[PLACEBO_KEY]]
    else:
        value = spec.fixed.get(PLACEBO_KEY, base.get("reg", {}).get("epsilon"))
        fixed = {k: v for k, v in spec.fixed.items() if k != PLACEBO_KEY}
        grid = {PLACEBO_KEY: [0.0] if value == 0 else [0.0, value], **grid}
        return spec.model_copy(update={"grid": grid, "fixed": fixed})
    return spec.model_copy(update={"grid": grid})


def expand(spec: StudySpec, base: dict[str, Any], source: str = str(DEFAULT_PARAMS)) -> list[Cell]:
    """Every cell of the grid (seeds innermost, so the first cells cover every setting once),
    each validated against params.yaml's schema, plus the checks on the spec's own keys."""
    spec = with_placebo(spec, base)
    for key in (spec.dose, *([spec.lines] if spec.lines else [])):
        if key not in spec.grid:
            raise ConfigError(f"{source}: study {spec.name!r}: {key!r} (dose/lines) is not a grid key; "
                              f"grid keys: {', '.join(spec.grid)}")
    keys = list(spec.grid)
    cells = []
    for point in itertools.product(*(spec.grid[k] for k in keys)):
        for seed in spec.seeds:
            cell = Cell(spec.name, seed, tuple(zip(keys, point, strict=True)), tuple(spec.fixed.items()))
            params = cell.params(base, source)
            check_metric(spec.metric, params.attack.attacks, source)
            cells.append(cell)
    return cells


def check_metric(metric: str, attacks: list[str], source: str = "study") -> None:
    known = [*FIXED_METRICS, *(f"{kind}_{attack}" for attack in attacks for kind in ("acc", "auc"))]
    if metric not in known:
        raise ConfigError(f"{source}: metric: {metric!r} is not reported by every cell; one of {', '.join(known)}")


def cell_hash(params: Params, code_version: str) -> str:
    """A cell's identity: the resolved params and the code. Two cells with the same hash
    compute the same thing, so the second reuses the first's result (on any host)."""
    payload = json.dumps({"params": params.model_dump(mode="json"), "code": code_version}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]
