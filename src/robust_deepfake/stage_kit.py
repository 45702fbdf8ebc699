"""What every stage script does around its one library call: parse `--params` (and any
stage arguments), validate params.yaml before any work, call the body, print its
summary, and turn an expected failure (errors.StageError) into one line and exit 2."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from robust_deepfake.config import Params, load_params_or_exit
from robust_deepfake.errors import StageError


def run_stage(
    description: str | None,
    body: Callable[..., Any],
    summary: Callable[[Any], str],
    arguments: Callable[[argparse.ArgumentParser], None] | None = None,
    argv: list[str] | None = None,
) -> Any:
    """Run one stage: `body(params)` or, with `arguments`, `body(params, args)`."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", default="params.yaml", help="the params file (default: params.yaml)")
    if arguments:
        arguments(parser)
    args = parser.parse_args(argv)
    params: Params = load_params_or_exit(args.params)
    try:
        result = body(params, args) if arguments else body(params)
    except StageError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    print(summary(result), flush=True)
    return result
