"""Build a throw-away copy of this repository on the micro profile (tiny sample, one
epoch, two eps) so end-to-end tests can run the real dvc / mlflow / prefect CLIs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MICRO_SAMPLE = ["--seed", "1", "--image-size", "32", "--real-per-source", "30", "--fakes-per-method", "15"]


def clean_env(root: Path) -> dict[str, str]:
    """Environment for subprocesses in the copy: its own MLflow store, no analytics."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PREFECT_API"))}
    env.update(DVC_NO_ANALYTICS="1", PREFECT_SERVER_ANALYTICS_ENABLED="false", HF_HUB_OFFLINE="1",
               PYTHONUNBUFFERED="1")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def run(args: list[str], cwd: Path, check: bool = True, timeout: int = 900) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=cwd, env=clean_env(cwd), capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def make_micro_repo(dest: Path) -> Path:
    """Copy the tracked files (not outputs, caches or mlflow.db), apply the micro params,
    generate the micro sample into data/raw and commit everything to a fresh git repo."""
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    for name in tracked.decode().split("\0"):
        if not name or not (REPO / name).exists():
            continue
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, target)
    for generated in ("dvc.lock", "metrics", "plots"):
        path = dest / generated
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    python = sys.executable
    run([python, "-m", "robust_deepfake.cli", "params", "merge", str(REPO / "tests" / "micro_params.yaml")], dest)
    (dest / "data.dvc").unlink()
    run(["git", "init", "-q"], dest)
    run([python, "-m", "robust_deepfake.cli", "data", "generate", *MICRO_SAMPLE], dest)
    run(["git", "add", "-A"], dest)
    run(["git", "-c", "user.name=test", "-c", "user.email=test@example.com", "commit", "-qm", "micro"], dest)
    return dest
