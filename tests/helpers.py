"""Small helpers shared by the test modules: the repository root, the tiny sample's spec,
subprocesses in a clean environment (`run`, `dvc`, `git_commit`) and a free local port.

Nothing here starts a server, builds a micro repo or opens a browser: those are fixtures
in conftest.py, which the tier hook sees (a test that uses one is marked slow)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from robust_deepfake.data.sample import SampleSpec

REPO = Path(__file__).resolve().parents[1]
# A 96-image sample at 32 px: enough for layout and split logic, generated in about a second.
TINY_SPEC = SampleSpec(seed=7, image_size=32, real_per_source=24, fakes_per_method=12)


def clean_env(root: Path) -> dict[str, str]:
    """Environment for subprocesses in a test repo: its own MLflow store, no analytics."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PREFECT_API"))}
    env.update(DVC_NO_ANALYTICS="1", PREFECT_SERVER_ANALYTICS_ENABLED="false", HF_HUB_OFFLINE="1",
               PYTHONUNBUFFERED="1")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def run(args: list[str], cwd: Path, check: bool = True, timeout: int = 900) -> subprocess.CompletedProcess:
    """`args` in `cwd` with clean_env; with `check`, a non-zero exit fails the test with the output's tail."""
    result = subprocess.run(args, cwd=cwd, env=clean_env(cwd), capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def dvc(*args: str, cwd: Path, check: bool = True, timeout: int = 900) -> subprocess.CompletedProcess:
    """The real dvc CLI of this environment (`python -m dvc <args>`) in `cwd`."""
    return run([sys.executable, "-m", "dvc", *args], cwd, check=check, timeout=timeout)


def git_commit(root: Path, message: str) -> None:
    """`git add -A` and a commit by a test identity."""
    run(["git", "add", "-A"], root)
    run(["git", "-c", "user.name=test", "-c", "user.email=test@example.com", "commit", "-qm", message], root)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
