"""Small helpers shared by the stage scripts and the console CLI."""

from __future__ import annotations

import sys
from typing import NoReturn


def fail(message: str, code: int = 1) -> NoReturn:
    """Print `error: <message>` and exit without a traceback (the message names the file
    or key; a traceback would only bury it)."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)
