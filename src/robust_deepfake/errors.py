"""The one family of expected failures: bad input, a missing upstream output, an
unavailable device or weights. A stage script maps any StageError to `error: <message>`
and exit 2 (stage_kit.run_stage_script); anything else is a bug and keeps its traceback.
Bottom layer: imports nothing of the project."""

from __future__ import annotations


class StageError(Exception):
    """An expected failure whose message names the file, key or command that fixes it."""


class MissingInputError(StageError, FileNotFoundError):
    """An upstream output (split CSV, model, metrics file) is not there yet."""
