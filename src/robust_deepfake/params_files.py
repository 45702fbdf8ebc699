"""Edit params.yaml programmatically without losing its comments."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from robust_deepfake.config import ConfigError, validate
from robust_deepfake.io import atomic_open


def _yaml() -> YAML:
    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.indent(mapping=2, sequence=4, offset=2)
    return yaml


def _merge(base: Any, overrides: dict, prefix: str, changed: dict) -> None:
    for key, value in overrides.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value, f"{dotted}.", changed)
        elif base.get(key) != value:
            changed[dotted] = (base.get(key), value)
            base[key] = value


def merge_params_file(overrides_path: str | Path, params_path: str | Path = "params.yaml") -> dict:
    """Apply a partial params file onto params.yaml; validate before writing anything.

    Returns {dotted key: (old, new)} for the values that changed.
    """
    yaml = _yaml()
    overrides_path, params_path = Path(overrides_path), Path(params_path)
    try:
        overrides = yaml.load(overrides_path.read_text()) or {}
        document = yaml.load(params_path.read_text()) or {}
    except FileNotFoundError as error:
        raise ConfigError(f"{error.filename}: file not found") from None
    if not isinstance(overrides, dict):
        raise ConfigError(f"{overrides_path}: top level must be a mapping")
    changed: dict = {}
    _merge(document, overrides, "", changed)
    plain = YAML(typ="safe")
    buffer = io.StringIO()
    yaml.dump(document, buffer)
    validate(plain.load(buffer.getvalue()), f"{params_path} merged with {overrides_path}")
    with atomic_open(params_path) as handle:
        handle.write(buffer.getvalue())
    return changed
