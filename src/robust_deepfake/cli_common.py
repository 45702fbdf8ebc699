"""Small helpers shared by the stage scripts and the console CLI."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:
    from robust_deepfake.config import Params


def fail(message: str, code: int = 1) -> NoReturn:
    """Print `error: <message>` and exit without a traceback (the message names the file
    or key; a traceback would only bury it)."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)


def stage_params(description: str | None, argv: list[str] | None = None) -> Params:
    """The `--params params.yaml` argument every stage script takes, validated (exit 2 on
    a bad file, before any work)."""
    from robust_deepfake.config import load_params_or_exit

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", default="params.yaml", help="the params file (default: params.yaml)")
    return load_params_or_exit(parser.parse_args(argv).params)
