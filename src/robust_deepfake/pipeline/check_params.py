"""The body of the `check_params` stage, the first of the DAG: the whole params file is
valid (stage_kit has validated it: the schema and the paths confined to the repository)
and the files and folders it names are in place (config.merge.path_problems).

The stage depends on params.yaml as a file, so any edit of it re-runs this check, even an
unknown key that no stage lists under `params:` (DVC re-runs a stage only when the keys
it lists change). Its one out, metrics/params_check.json, is the same bytes for every
valid file, so a valid edit re-runs this stage alone and the split, which depends on the
out, only when its own params changed; an invalid file stops `dvc repro` (and `dvc repro
split`, whose run-cache restore comes after its upstream) before anything else.
`cam.target_layer` and the Prefect cron parser cost seconds of imports: the train stage
and `robust-deepfake params check` run those."""

from __future__ import annotations

from pathlib import Path

from robust_deepfake.config import DEFAULT_PARAMS, ConfigError, Params
from robust_deepfake.config.merge import path_problems
from robust_deepfake.io import write_json
from robust_deepfake.paths import ParamsCheckOutputs

CHECKS = ("schema", "paths inside the repository", "paths in place")


def check_params(params: Params, root: Path, source: str | Path = DEFAULT_PARAMS) -> dict:
    """ConfigError (one line per problem, naming the key) unless the paths `params`
    (loaded from `source`) names are in place; else writes and returns the check record."""
    problems = path_problems(params, root)
    if problems:
        raise ConfigError("\n".join(f"{source}: {problem}" for problem in problems))
    record = {"params_file": Path(source).as_posix(), "valid": True, "checks": list(CHECKS)}
    write_json(ParamsCheckOutputs.at(root).record, record)
    return record


def format_summary(record: dict) -> str:
    return f"check_params: {record['params_file']} is valid ({', '.join(record['checks'])})"
