"""Which paths params.yaml may name: the folders the stages read and write stay inside
the repository (the folder of the params file), so a typo such as `data.splits_dir: /etc`
or `../../outside` cannot make a stage write outside it.

Confined: `data.raw_dir` and `data.splits_dir` (DVC tracks both, and DVC only tracks
paths inside the repository); neither may be the repository itself, nor one inside the
other (split CSVs in data/raw would become data). Allowed anywhere: `model.weights_path`
(a read-only input, e.g. timm weights copied to the machine) and `tracking.tracking_uri`
(an MLflow store, which several clones may share; a server URI is no path at all).

The check is lexical: `..` segments and absolute paths are resolved against the params
file's folder without following symlinks, so a data folder that is a symlink inside the
repository (e.g. to a larger disk) stays allowed.
"""

from __future__ import annotations

import os
from pathlib import Path

from robust_deepfake.config.schema import Params

# the confined keys and the example each refusal suggests
CONFINED_KEYS = {"data.raw_dir": "data/raw", "data.splits_dir": "data/splits"}
UNCONFINED_KEYS = ("model.weights_path", "tracking.tracking_uri")


def _inside(value: str, base: Path) -> Path | None:
    """`value` relative to `base` (normalised, no `..`), or None when it leaves `base`."""
    path = Path(os.path.expanduser(value))
    if path.is_absolute():
        absolute = Path(os.path.normpath(path))
        for root in {Path(os.path.abspath(base)), Path(os.path.realpath(base))}:
            if absolute.is_relative_to(root):
                return absolute.relative_to(root)
        return None
    relative = Path(os.path.normpath(path))
    return None if relative.parts[:1] == ("..",) else relative


def confinement_problems(params: Params, base_dir: str | Path) -> list[str]:
    """One line per confined key that leaves `base_dir` (the repository: the folder of
    params.yaml), is the repository itself, or overlaps the other confined folder."""
    base = Path(base_dir)
    values = {"data.raw_dir": params.data.raw_dir, "data.splits_dir": params.data.splits_dir}
    problems: list[str] = []
    inside: dict[str, Path] = {}
    for key, value in values.items():
        relative = _inside(value, base)
        if relative is None:
            problems.append(f"{key}: {value} is outside the repository ({os.path.abspath(base)}); the stages only "
                            f"read and write inside it: use a path relative to it, e.g. {CONFINED_KEYS[key]}")
        elif relative == Path("."):
            problems.append(f"{key}: {value} is the repository itself; name a folder inside it, e.g. {CONFINED_KEYS[key]}")
        else:
            inside[key] = relative
    raw, splits = inside.get("data.raw_dir"), inside.get("data.splits_dir")
    if raw is not None and splits is not None and (splits.is_relative_to(raw) or raw.is_relative_to(splits)):
        problems.append(f"data.splits_dir: {values['data.splits_dir']} overlaps data.raw_dir ({values['data.raw_dir']}): "
                        "split CSVs in the raw data would become data; keep them apart, e.g. data/splits")
    return problems

