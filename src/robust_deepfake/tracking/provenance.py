"""Where a pipeline run comes from, and whether it may speak for production.

Only a run of committed code, params and data may move the registry's production
aliases (@champion, @challenger, @baseline, @reg and the per-seed `<variant>-seed<k>`):
a `dvc exp run` (DVC sets DVC_EXP_NAME in every stage's environment, workspace, --temp
and queued runs alike) or a run with uncommitted changes registers versions tagged with
what it was, and leaves every alias where it is. Files that a run itself rewrites (dvc.lock
and the DVC outs under OUT_ROOTS) do not make a tree dirty, so `dvc repro` of a clean
commit is recorded as that commit, without `-dirty`.
"""

from __future__ import annotations

import os
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path

from robust_deepfake.data.materialize import DVC_FILE, DataStateError, read_dvc_file
from robust_deepfake.paths import OUT_ROOTS

EXPERIMENT_ENV = "DVC_EXP_NAME"  # set by DVC for the stages of `dvc exp run`
EXPERIMENT_TAG = "dvc_experiment"
RUN_OWNED = ("dvc.lock",)  # rewritten by every `dvc repro`


@dataclass(frozen=True)
class RunOrigin:
    """The commit a run starts from, what differs from it, and the DVC experiment (if any)."""

    commit: str  # "unknown" outside git
    changed: tuple[str, ...]  # tracked files with uncommitted changes, excluding run-owned ones
    experiment: str | None

    @property
    def may_move_aliases(self) -> bool:
        return self.commit != "unknown" and not self.changed and self.experiment is None

    @property
    def git_commit(self) -> str:
        """The commit, with `-dirty` when the run's inputs differ from it."""
        return f"{self.commit}-dirty" if self.changed and self.commit != "unknown" else self.commit

    def why_aliases_stay(self) -> str:
        """One line for logs and the report: why this run does not move production aliases."""
        if self.experiment is not None:
            return (f"DVC experiment {self.experiment!r}: versions are tagged {EXPERIMENT_TAG}={self.experiment} "
                    "and no alias moves (commit the params and run `dvc repro` to publish)")
        if self.commit == "unknown":
            return "not a git checkout: no alias moves"
        shown = ", ".join(self.changed[:5]) + (f" and {len(self.changed) - 5} more" if len(self.changed) > 5 else "")
        return f"uncommitted changes ({shown}): no alias moves (commit them and run `dvc repro` to publish)"

    def tags(self) -> dict[str, str]:
        """MLflow tags recording the origin on runs and model versions."""
        tags = {"git_commit": self.git_commit}
        if self.experiment is not None:
            tags[EXPERIMENT_TAG] = self.experiment
        return tags


def run_origin(root: Path) -> RunOrigin:
    return RunOrigin(_head(root), tuple(_changed_inputs(root)), os.environ.get(EXPERIMENT_ENV) or None)


def data_md5(root: Path) -> str:
    """The md5 data.dvc records for the raw data (what `dvc checkout` restores), or `unknown`."""
    try:
        return read_dvc_file(root / DVC_FILE).md5 or "unknown"
    except DataStateError:
        return "unknown"


def _head(root: Path) -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _changed_inputs(root: Path) -> list[str]:
    try:
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "-z"], cwd=root,
                                capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return []
    changed = []
    entries = iter(status.split("\0"))
    for entry in entries:
        if not entry:
            continue
        code, path = entry[:2], entry[3:]
        if "R" in code or "C" in code:  # a rename is followed by its source path
            next(entries, None)
        if path in RUN_OWNED or any(path == out or path.startswith(out + "/") for out in OUT_ROOTS):
            continue
        changed.append(path)
    return changed


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux, else the platform's word for it)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine_facts(threads: int) -> dict[str, str]:
    """Where numbers were produced, since training floats differ by machine: the CPU model,
    the accelerator torch sees (or none), the torch version and the pinned thread count."""
    import torch

    accelerator = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return {"cpu": cpu_model(), "accelerator": accelerator, "torch": torch.__version__, "threads": str(threads)}
