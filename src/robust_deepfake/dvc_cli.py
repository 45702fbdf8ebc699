"""The `dvc` command line as this interpreter runs it (`python -m dvc`: the DVC installed
beside the project, whatever is first on PATH), and how to read a failed command's output."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

# Failures worth retrying: another writer holds the SQLite MLflow store or DVC's repo
# lock, or a network hiccup reaching a remote tracking server / DVC remote. Anything
# else (a bad param, a missing file, a bug) fails the same way on every attempt.
TRANSIENT_PATTERNS = (
    "database is locked",
    "unable to acquire lock",
    "connection refused",
    "connection reset by peer",
    "temporary failure in name resolution",
    "remote end closed connection",
)


def dvc_command(*args: str) -> list[str]:
    """The argv of `dvc <args>` (for subprocess)."""
    return [sys.executable, "-m", "dvc", *args]


def run_dvc(*args: str, cwd: Path, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess:
    """`dvc <args>` in `cwd`, its output captured as text, usage analytics off; `env`
    replaces the process environment when given. Never raises on a non-zero exit."""
    environment = {**(os.environ if env is None else env), "DVC_NO_ANALYTICS": "1"}
    return subprocess.run(dvc_command(*args), cwd=cwd, env=environment, capture_output=True, text=True)


def is_transient(lines: Sequence[str]) -> bool:
    """Whether a failed command's output shows a failure worth retrying (TRANSIENT_PATTERNS)."""
    text = "\n".join(lines).lower()
    return any(pattern in text for pattern in TRANSIENT_PATTERNS)


def error_line(lines: Sequence[str]) -> str:
    """The most useful line of a failed stage's output: the stage's own `error: ...`
    (stages/*.py print one naming the file or key), else an exception line of a
    traceback, else DVC's `ERROR: ...`, else the last line."""
    stripped = [line.strip() for line in lines if line.strip()]
    for pattern in (r"^error: ", r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt)\b.*", r"^ERROR: "):
        matches = [line for line in stripped if re.match(pattern, line)]
        if matches:
            return matches[-1]
    return stripped[-1] if stripped else "no output"


SUPPORT_BANNER = "Having any troubles?"


def failure(result: subprocess.CompletedProcess) -> str:
    """Why a `dvc` command failed, in one line: its `ERROR: ...` line (DVC names the file
    there, e.g. `[Errno 40] Too many levels of symbolic links: '<path>'`), never only DVC's
    support banner. Commands whose failure should be explained run without -q: with -q DVC
    prints the banner alone."""
    lines = [line for line in f"{result.stderr}\n{result.stdout}".splitlines() if SUPPORT_BANNER not in line]
    line = error_line(lines)
    if line == "no output":
        return f"exit status {result.returncode}, no message"
    return line.replace("ERROR: unexpected error - ", "ERROR: ", 1)
