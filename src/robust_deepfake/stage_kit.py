"""What every stage script does around its one library call: parse `--params` (and any
stage arguments), validate params.yaml before any work, call the body, print its
summary, and turn an expected failure (errors.StageError) into one line and exit 2."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

from robust_deepfake.config import DEFAULT_PARAMS, Params, load_params_or_exit
from robust_deepfake.errors import StageError


TRACEBACK_ENV = "ROBUST_DEEPFAKE_TRACEBACK"


def _is_tracking_error(error: BaseException) -> bool:
    """Failures of the MLflow store (server errors, a locked or read-only sqlite file) that
    tracking.store.require_store could not foresee: reported in one line, not a traceback."""
    module = type(error).__module__ or ""
    return module.startswith(("mlflow", "sqlalchemy", "sqlite3", "requests", "urllib3"))


def run_stage_script(
    description: str | None,
    body: Callable[..., Any],
    summary: Callable[[Any], str],
    arguments: Callable[[argparse.ArgumentParser], None] | None = None,
    argv: list[str] | None = None,
) -> Any:
    """Run one stage: `body(params)` or, with `arguments`, `body(params, args)`."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", default=str(DEFAULT_PARAMS), help=f"the params file (default: {DEFAULT_PARAMS})")
    if arguments:
        arguments(parser)
    args = parser.parse_args(argv)
    params: Params = load_params_or_exit(args.params)
    try:
        result = body(params, args) if arguments else body(params)
    except StageError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    except Exception as error:
        if not _is_tracking_error(error) or os.environ.get(TRACEBACK_ENV):
            raise
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        print(f"error: MLflow: {first} (set {TRACEBACK_ENV}=1 for the traceback)", file=sys.stderr)
        raise SystemExit(2) from None
    print(summary(result), flush=True)
    return result
