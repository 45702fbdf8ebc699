"""Run one study cell as a DVC experiment, read what it measured, share it.

`dvc exp run --temp -n <name> -S ...` runs the whole DAG in a private copy of the
checkout (so several cells of one host run at once, one per GPU), with DVC's run cache:
a stage whose params and deps an earlier cell already ran (the baseline of the same seed
under another regularizer setting) is restored, not retrained; with a DVC remote, `--pull`
brings the run cache other hosts pushed first. `dvc exp push` then sends
the experiment's git ref to the git remote and its outputs (and the run cache) to the DVC
remote, so any host can `dvc exp pull` or `dvc exp apply` it.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from robust_deepfake.config import DEFAULT_PARAMS, Params, parse_yaml, validate
from robust_deepfake.config.yaml import load_yaml
from robust_deepfake.dvc_cli import dvc_command, error_line, is_transient
from robust_deepfake.study import outcome
from robust_deepfake.study.spec import Cell
from robust_deepfake.explain.outputs import CamMetrics
from robust_deepfake.robustness.sweep import SweepMetrics, SweepPredictions

OUTPUTS = ("eval/attack_sweep.json", "eval/attack_predictions.npz", "eval/cam_iinc.json")


class CellFailed(RuntimeError):
    """`dvc exp run` (or the push) failed; the message quotes the most useful line."""

    def __init__(self, what: str, lines: list[str]) -> None:
        self.transient = is_transient(lines)
        super().__init__(f"{what} failed{' (transient)' if self.transient else ''}: {error_line(lines)}")


def code_version(root: Path) -> str:
    """What the cells' results depend on besides params, as DVC sees it: dvc.yaml, data.dvc
    and every git-tracked file under a stage dependency (stage scripts and library code),
    hashed from the working tree. A commit that touches only docs, tests or flows keeps
    every cell's hash, so a finished study is not recomputed; an edit to a dependency,
    committed or not, changes it (as it would make `dvc repro` rerun the stage)."""
    stages = load_yaml((root / "dvc.yaml").read_text()).get("stages", {})
    deps = sorted({next(iter(d)) if isinstance(d, dict) else d
                   for stage in stages.values() for d in stage.get("do", stage).get("deps", [])})
    tracked = subprocess.run(["git", "ls-files", "-z", "--", "dvc.yaml", "data.dvc", *deps], cwd=root,
                             capture_output=True, text=True, check=True).stdout.split("\0")
    digest = hashlib.sha256()
    for name in sorted(filter(None, tracked)):
        path = root / name
        digest.update(name.encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest() if path.is_file() else b"missing")
    return digest.hexdigest()[:16]


def _stream(command: list[str], root: Path, env: Mapping[str, str], on_line: Callable[[str], Any],
            what: str) -> None:
    """Run `command`, every output line to on_line; CellFailed on a non-zero exit."""
    tail: deque[str] = deque(maxlen=60)
    # its own session: `dvc exp run --temp` signals its process group when it finishes,
    # which would also stop this flow process and the temporary Prefect server it talks to
    process = subprocess.Popen(command, cwd=root, env=dict(env), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, errors="replace", bufsize=1,
                               start_new_session=True)
    try:
        assert process.stdout is not None
        for raw in process.stdout:
            line = raw.rstrip()
            if line.strip():
                tail.append(line)
                on_line(line)
        returncode = process.wait()
    finally:
        if process.poll() is None:  # the flow run was cancelled: stop the experiment's whole group
            _signal_group(process, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                _signal_group(process, signal.SIGKILL)
    if returncode != 0:
        raise CellFailed(what, list(tail))


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass


def local_experiment(root: Path, name: str) -> str | None:
    """The git ref of the DVC experiment `name` in this checkout, if there is one."""
    refs = subprocess.run(["git", "for-each-ref", "--format=%(refname)", "refs/exps/"], cwd=root,
                          capture_output=True, text=True, check=True).stdout.split()
    return next((ref for ref in refs if ref.rsplit("/", 1)[-1] == name), None)


def run_experiment(root: Path, cell: Cell, name: str, env: Mapping[str, str],
                   on_line: Callable[[str], Any] = print, pull: bool = False,
                   targets: list[str] | None = None) -> float:
    """`dvc exp run --temp -n <name> -S ...`; the wall seconds it took. With `pull`, DVC
    first pulls the run cache from the DVC remote (`--pull`): a stage another host already
    ran with the same params and deps (the baseline of this seed) is restored, not rerun."""
    overrides = [arg for override in cell.overrides for arg in ("-S", override)]
    flags = ["--temp", *(["--pull"] if pull else []), "-n", name]
    on_line(f"$ dvc exp run {' '.join(flags)} " + " ".join(f"-S {o!r}" for o in cell.overrides))
    start = time.monotonic()
    _stream(dvc_command("exp", "run", *flags, *overrides, *(targets or [])), root, env, on_line, f"dvc exp run {name}")
    return time.monotonic() - start


def push_experiment(root: Path, name: str, git_remote: str, dvc_remote: str | None, env: Mapping[str, str],
                    on_line: Callable[[str], Any] = print) -> None:
    """`dvc exp push --run-cache <git_remote> <name>`: the ref, its outputs and the run cache."""
    remote = ["-r", dvc_remote] if dvc_remote else []
    _stream(dvc_command("exp", "push", "--run-cache", *remote, git_remote, name), root, env, on_line,
            f"dvc exp push {git_remote} {name}")


def read_outputs(root: Path, ref: str) -> tuple[Params, Any, Any, Any]:
    """params.yaml and the eval outputs of the experiment at `ref`, through DVC (its cache,
    or the DVC remote when the outputs were computed on another host)."""
    import dvc.api

    params_text = dvc.api.read(str(DEFAULT_PARAMS), repo=str(root), rev=ref)
    source = f"{DEFAULT_PARAMS}@{ref}"
    params = validate(parse_yaml(params_text, source), source)
    with tempfile.TemporaryDirectory(prefix="study-cell-") as folder:
        local = {}
        for path in OUTPUTS:
            target = Path(folder) / Path(path).name
            target.write_bytes(dvc.api.read(path, repo=str(root), rev=ref, mode="rb"))
            local[path] = target
        return (params, SweepMetrics.load(local[OUTPUTS[0]]), SweepPredictions.load(local[OUTPUTS[1]]),
                CamMetrics.load(local[OUTPUTS[2]]))


def torch_device(env: Mapping[str, str]) -> str:
    """What the cell's stages ran on: torch asked under the cell's own CUDA_VISIBLE_DEVICES."""
    probe = "import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')"
    result = subprocess.run([sys.executable, "-c", probe], env=dict(env), capture_output=True, text=True)
    return result.stdout.strip() or "unknown"


def execute(root: Path, cell: Cell, cell_hash: str, git_remote: str | None, dvc_remote: str | None,
            env: Mapping[str, str], on_line: Callable[[str], Any] = print,
            targets: list[str] | None = None) -> dict[str, Any]:
    """Run (or find in this checkout) the cell's experiment, summarize it, push it; the record."""
    name = cell.experiment_name(cell_hash)
    ref = local_experiment(root, name)
    seconds = 0.0
    if ref is None:
        seconds = run_experiment(root, cell, name, env, on_line, pull=git_remote is not None, targets=targets)
        ref = local_experiment(root, name)
        if ref is None:
            raise CellFailed(f"dvc exp run {name}", [f"error: no experiment named {name!r} after the run"])
    else:
        on_line(f"{name}: experiment already in this checkout ({ref}); not run again")
    params, sweep, predictions, cam = read_outputs(root, ref)
    if git_remote:
        push_experiment(root, name, git_remote, dvc_remote, env, on_line)
    return {
        "study": cell.study, "cell": name, "label": cell.label, "seed": cell.seed,
        "setting": dict(cell.setting), "cell_hash": cell_hash, "reused": seconds == 0.0,
        "worker": os.environ.get("PREFECT__WORKER_NAME") or socket.gethostname(), "host": socket.gethostname(),
        "checkout": str(root), "cuda_visible_devices": env.get("CUDA_VISIBLE_DEVICES"),
        "device": torch_device(env) if seconds else None, "device_seconds": round(seconds, 1),
        "git_remote": git_remote, "dvc_experiment": name, "experiment_ref": ref,
        **outcome.cell_measurements(params, sweep, predictions, cam),
    }


