"""A study's cell records gathered by grid point, and how to read a record's metrics.

The unit of evidence is the training seed (docs/architecture.md, "Comparing the variants"): a
cell is one seed at one grid point, and cells of one seed share initial weights and data
order across settings, so each Point keeps its cell record per seed for the seed-level
numbers of study/report/aggregate.py and study/report/comparisons.py.

Figures put `spec.dose` on x and draw one line per `spec.lines` value; every other grid
key (e.g. split.holdout_methods) splits the cells into *groups*, each its own figure.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from robust_deepfake.study.spec import PLACEBO_KEY, StudySpec

HOLDOUT_KEY = "split.holdout_methods"
TEST = "test"  # the `subset` of the test-set metrics; held-out rows name their method
Getter = Callable[[Mapping[str, Any], str, str], float]  # (record, variant, metric) -> value


def canonical(value: Any) -> Any:
    """A hashable, type-stable setting value: 0 and 0.0 are one grid point, lists become tuples."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, list | tuple):
        return tuple(canonical(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((str(k), canonical(v)) for k, v in value.items()))
    return value


def shown(value: Any) -> str:
    """A setting value as the report writes it: 0.25, random, stylegan_like+pggan_like, none."""
    if isinstance(value, list | tuple):
        return "+".join(shown(v) for v in value) or "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def as_float(value: Any) -> float:
    """A metric value as a float; None, text or anything non-numeric is NaN (undefined)."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.number):
        return math.nan
    return float(value)


def attacks_of(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """Every attack any cell reports, in first-seen order."""
    return list(dict.fromkeys(a for r in records for a in r.get("attacks") or []))


def setting_keys(spec: StudySpec, records: Sequence[Mapping[str, Any]]) -> list[str]:
    """The grid's keys in its order, then any other key a record's setting carries
    (the placebo's reg.epsilon when `with_placebo` added it to the grid)."""
    seen = dict.fromkeys(spec.grid)
    for record in records:
        seen.update(dict.fromkeys(record.get("setting") or {}))
    return list(seen)


def held_out_of(record: Mapping[str, Any]) -> tuple[str, ...]:
    """The methods a cell held out: its `heldout` results, else its split setting."""
    listed = (record.get("setting") or {}).get(HOLDOUT_KEY) or []
    return tuple(dict.fromkeys([*(record.get("heldout") or {}), *listed]))


def test_value(record: Mapping[str, Any], variant: str, metric: str) -> float:
    """A variant's metric on the test set; NaN where the cell does not report it."""
    return as_float(((record.get("variants") or {}).get(variant) or {}).get(metric))


def pair_se(record: Mapping[str, Any], pair: str, metric: str, method: str | None = None) -> float:
    """The cell's test-sampling SE of `pair`'s difference (`reg_placebo`) in `metric`, on
    the test set or on a held-out method's images; NaN where the cell did not record it."""
    table = record.get("test_se") if method is None else (record.get("heldout_test_se") or {}).get(method)
    return as_float(((table or {}).get(pair) or {}).get(metric))


def heldout_getter(method: str) -> Getter:
    """A Getter for one held-out method's metrics."""
    def get(record: Mapping[str, Any], variant: str, metric: str) -> float:
        results = ((record.get("heldout") or {}).get(method) or {}).get(variant) or {}
        return as_float(results.get(metric))
    return get


# --- grid points ----------------------------------------------------------------------


@dataclass(frozen=True)
class Point:
    """One grid point: where it sits in the figures and its cell record per seed."""

    setting: tuple[tuple[str, Any], ...]  # canonical values, in setting_keys order
    group: tuple[tuple[str, Any], ...]  # the setting without the dose and lines keys
    line: Any
    dose: Any
    held_out: tuple[str, ...]  # union over its cells
    cells: dict[int, Mapping[str, Any]]  # seed -> record

    @property
    def group_label(self) -> str:
        return group_label(self.group)

    def replaced(self, key: str, value: Any) -> tuple[tuple[str, Any], ...]:
        """This point's setting with one key changed (a partner point's identity)."""
        return tuple((k, value if k == key else v) for k, v in self.setting)


def group_label(group: Iterable[tuple[str, Any]]) -> str:
    """`split.holdout_methods=stylegan_like`; empty when the grid has no other keys."""
    return " ".join(f"{k}={shown(v)}" for k, v in group)


def _rank(spec: StudySpec, key: str | None, value: Any) -> tuple:
    """Sort order of a grid value: numeric values by size, else the grid's order."""
    if isinstance(value, float):
        return (0, value, "")
    listed = [canonical(v) for v in spec.grid.get(key or "", [])]
    return (1, listed.index(value) if value in listed else len(listed), str(value))


def grid_points(spec: StudySpec, records: Sequence[Mapping[str, Any]]) -> list[Point]:
    """Records gathered by grid point, sorted by group, line, dose. ValueError when two
    records claim the same seed at the same point: averaging them would count a seed twice."""
    keys = setting_keys(spec, records)
    found: dict[tuple, dict[int, Mapping[str, Any]]] = {}
    held: dict[tuple, dict[str, None]] = {}
    for record in records:
        setting = tuple((k, canonical((record.get("setting") or {}).get(k))) for k in keys)
        seed = int(record["seed"])
        cells = found.setdefault(setting, {})
        if seed in cells:
            raise ValueError(f"two cell records for seed {seed} at {group_label(setting)} "
                             f"({cells[seed].get('cell')!r}, {record.get('cell')!r}): pass one record per cell")
        cells[seed] = record
        held.setdefault(setting, {}).update(dict.fromkeys(held_out_of(record)))
    points = []
    for setting, cells in found.items():
        values = dict(setting)
        group = tuple((k, v) for k, v in setting if k not in (spec.dose, spec.lines))
        line = values.get(spec.lines) if spec.lines else None
        points.append(Point(setting, group, line, values.get(spec.dose), tuple(held[setting]),
                            dict(sorted(cells.items()))))
    return sorted(points, key=lambda p: ([_rank(spec, k, v) for k, v in p.group], _rank(spec, spec.lines, p.line),
                                         _rank(spec, spec.dose, p.dose)))


def groups_of(points: Sequence[Point]) -> dict[tuple, list[Point]]:
    """Points by group, in point order."""
    out: dict[tuple, list[Point]] = {}
    for point in points:
        out.setdefault(point.group, []).append(point)
    return out


def primary_groups(points: Sequence[Point]) -> list[tuple]:
    """The groups the headline answers read: those that hold no method out (trained on
    every method). A study of held-out cells only has no such group: then every group."""
    groups = groups_of(points)
    clean = [g for g, members in groups.items() if not any(p.held_out for p in members)]
    return clean or list(groups)


def is_placebo(point: Point) -> bool:
    """epsilon = 0: the perturbation is off, only the loss reweighting remains."""
    return dict(point.setting).get(PLACEBO_KEY) == 0
