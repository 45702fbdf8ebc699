"""The one family of expected failures: bad input, a missing upstream output, an
unavailable device or weights. A stage script maps any StageError to `error: <message>`
and exit 2 (stage_kit.run_stage_script); anything else is a bug and keeps its traceback.
Bottom layer: imports nothing of the project."""

from __future__ import annotations

import errno


class StageError(Exception):
    """An expected failure whose message names the file, key or command that fixes it."""


class MissingInputError(StageError, FileNotFoundError):
    """An upstream output (split CSV, model, metrics file) is not there yet."""


def os_error_line(error: OSError) -> str:
    """`<file>: <reason>` for an OSError, with what to do about a full disk or quota."""
    where = f"{error.filename}: " if error.filename else ""
    text = f"{where}{error.strerror or error}"
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        text += " (free some space there, or write elsewhere, and run the command again)"
    return text
