"""Build a throw-away copy of this repository on the micro profile (tiny sample, one
epoch, two eps) so end-to-end tests can run the real dvc / mlflow / prefect CLIs."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from helpers import REPO, git_commit, run

MICRO_SAMPLE = ["--seed", "1", "--image-size", "32", "--real-per-source", "30", "--fakes-per-method", "15"]


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
    git_commit(dest, "micro")
    return dest
