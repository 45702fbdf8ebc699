"""params.yaml: a typed, strict schema (schema), its YAML reader (yaml) and the Prefect
rules for the cron key (cron); `params merge` lives in config.merge.

Every stage validates the whole file before it does any work, so a typo in a section
another stage owns still fails fast and names the key: `dvc exp run -S reg.alpah=0.3` must
not run an experiment that quietly uses the default (and the first stage, check_params,
depends on the file itself, so `dvc repro` reads every edit). Every value a later stage
would crash on, or quietly read another way, is refused when params.yaml is loaded (by
every stage and `robust-deepfake params check`), not hours later, and so are paths that
leave the repository (config.confinement). The defaults equal
params.yaml's demo values (a test compares). `cam.target_layer` needs the model's
architecture, which this ground floor does not import: explain/layers.py checks it in
`params check` and before the first training.
"""

from __future__ import annotations

import sys
from pathlib import Path

from robust_deepfake.config.confinement import CONFINED_KEYS, UNCONFINED_KEYS, confinement_problems
from robust_deepfake.config.problems import ConfigError, format_errors
from robust_deepfake.config.schema import (
    DEFAULT_PARAMS,
    MAX_SEED,
    AttackConfig,
    CamConfig,
    DataConfig,
    EnsembleConfig,
    EvalConfig,
    MaskingConfig,
    ModelConfig,
    Params,
    PixelValue,
    ReevaluateConfig,
    RegConfig,
    ReportConfig,
    Seed,
    SplitConfig,
    Strict,
    TrackingConfig,
    TrainConfig,
    flatten,
    params_hash,
    validate,
)
from robust_deepfake.config.yaml import parse_yaml, read_yaml
from robust_deepfake.units import parse_pixel_value

__all__ = [
    "CONFINED_KEYS", "DEFAULT_PARAMS", "MAX_SEED", "UNCONFINED_KEYS", "AttackConfig", "CamConfig", "ConfigError",
    "DataConfig", "EnsembleConfig", "EvalConfig", "MaskingConfig",
    "ModelConfig", "Params", "PixelValue", "ReevaluateConfig", "RegConfig", "ReportConfig", "Seed", "SplitConfig",
    "Strict", "TrackingConfig", "TrainConfig", "confinement_problems", "flatten", "format_errors", "load_params",
    "load_params_or_exit",
    "params_hash", "parse_pixel_value", "parse_yaml", "read_yaml", "validate",
]


def load_params(path: str | Path = DEFAULT_PARAMS) -> Params:
    """The validated params of a file: the schema, and the paths it names confined to the
    file's folder (config.confinement). ConfigError, one line per problem naming the key,
    also for a file without any value (empty, blank or only comments): that is a wrong or
    truncated file, not a request for the defaults."""
    path = Path(path)
    raw = read_yaml(path)
    if raw is None:
        raise ConfigError(f"{path}: no values (the file is empty, blank or only comments); "
                          "a params file sets every section, as the repository's params.yaml does")
    params = validate(raw, str(path))
    problems = confinement_problems(params, path.parent)
    if problems:
        raise ConfigError("\n".join(f"{path}: {problem}" for problem in problems))
    return params


def load_params_or_exit(path: str | Path = DEFAULT_PARAMS) -> Params:
    """For CLIs: print the problems, one line each, and exit 2 instead of a traceback."""
    try:
        return load_params(path)
    except ConfigError as error:
        print(f"error: {error}".replace("\n", "\nerror: "), file=sys.stderr)
        raise SystemExit(2) from None
