"""Run the DVC pipeline stage by stage for an orchestrator (the Prefect flow in flows/pipeline.py).

DVC stays the owner of the DAG and the cache:

* the stage order is DVC's own graph of dvc.yaml (`read_stage_graph`), never a list
  kept here, so a stage added to dvc.yaml is picked up as it is;
* each stage runs as `dvc --wait-for-lock repro --single-item <stage>` (`repro_stage`), so
  an up-to-date stage is skipped and dvc.lock is written exactly as `dvc repro` writes it.
  DVC releases its repo lock while a stage command runs, so independent stages (the
  train_<variant> stages) can run at the same time, each on its own GPU;
* param overrides go through DVC's own `-S` implementation (hydra override grammar) and
  the finished run is recorded with `dvc exp save`: the same experiment `dvc exp run -S`
  would make, listed by `dvc exp show`. As with `dvc exp run`, the workspace keeps the
  overridden params file afterwards.

No Prefect import here: the flow adds retries, logging and concurrency around these
functions, and the library stays quick to import. What a run is judged by lives in
pipeline/key_metrics.py.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import warnings
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robust_deepfake.config import DEFAULT_PARAMS, ConfigError, Params, load_params
from robust_deepfake.dvc_cli import dvc_command, error_line, is_transient, run_dvc
from robust_deepfake.paths import relative_to_root

_DEVICE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")


class OrchestrationError(RuntimeError):
    """The pipeline cannot start: a bad override, target or device. str() names the key."""


class StageFailed(RuntimeError):
    """A stage's command failed; the message names the stage and quotes its error line."""

    def __init__(self, stage: str, returncode: int, tail: Sequence[str]) -> None:
        self.stage = stage
        self.returncode = returncode
        self.tail = list(tail)
        self.transient = is_transient(self.tail)
        kind = " (transient)" if self.transient else ""
        # no exit code in the message: dvc exits 255 whatever the stage's command returned
        super().__init__(f"stage '{stage}' failed{kind}: {error_line(self.tail)}")


@dataclass(frozen=True)
class StageGraph:
    """dvc.yaml's stages in a topological order (ties keep dvc.yaml's order), for each
    the stages whose outputs it reads and its own outs (POSIX paths relative to the
    repository root). A foreach stage would appear once per item (`name@item`)."""

    stages: tuple[str, ...]
    upstream: Mapping[str, frozenset[str]]
    outs: Mapping[str, frozenset[str]] = field(default_factory=dict)

    def writes(self, path: str) -> bool:
        """Whether one of these stages produces `path` (an out, or a file inside an out directory)."""
        return any(path == out or path.startswith(f"{out}/") for outs in self.outs.values() for out in outs)

    def levels(self) -> list[list[str]]:
        """Groups that may run at the same time: every stage's upstream lies in earlier groups."""
        depth: dict[str, int] = {}
        for stage in self.stages:
            depth[stage] = 1 + max((depth[u] for u in self.upstream[stage]), default=-1)
        return [[s for s in self.stages if depth[s] == level] for level in range(max(depth.values(), default=-1) + 1)]

    def up_to(self, target: str) -> StageGraph:
        """`target` and everything it depends on (what `dvc repro <target>` would check)."""
        if target not in self.upstream:
            raise OrchestrationError(f"dvc.yaml: no stage {target!r}; stages: {', '.join(self.stages)}")
        keep, todo = set(), [target]
        while todo:
            stage = todo.pop()
            if stage not in keep:
                keep.add(stage)
                todo.extend(self.upstream[stage])
        return StageGraph(tuple(s for s in self.stages if s in keep), {s: self.upstream[s] for s in keep},
                          {s: outs for s, outs in self.outs.items() if s in keep})


def read_stage_graph(root: Path) -> StageGraph:
    """The pipeline's DAG as DVC itself builds it from dvc.yaml (deps matched to outs),
    foreach stages (none today) expanded as DVC names them (`name@item`).

    `.dvc` files (data.dvc) are inputs, not stages to run; `dvc repro --single-item`
    still notices when the data they track changed."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo
    from dvc.stage import PipelineStage

    def address(stage: PipelineStage) -> str:
        """What `dvc repro` accepts from root: `name`, or `sub/dvc.yaml:name` for nested files."""
        dvcfile = Path(stage.path).resolve().parent / "dvc.yaml"
        return stage.name if dvcfile.parent == root.resolve() else f"{dvcfile.relative_to(root.resolve())}:{stage.name}"

    try:
        with Repo(str(root)) as repo, warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # dvc's trie internals, not ours
            graph = repo.index.graph  # edges point from a stage to the stages it depends on
            nodes = [node for node in repo.index.stages if isinstance(node, PipelineStage)]
            upstream = {
                address(node): frozenset(
                    address(dep) for dep in graph.successors(node) if isinstance(dep, PipelineStage)
                )
                for node in nodes
            }
            outs = {address(node): frozenset(filter(None, (relative_to_root(out.fs_path, root) for out in node.outs)))
                    for node in nodes}
    except DvcException as error:
        raise OrchestrationError(f"{root / 'dvc.yaml'}: {error}") from None
    order: list[str] = []
    pending = [address(node) for node in nodes]
    while pending:  # Kahn's algorithm, always taking the first ready stage in dvc.yaml order
        ready = next((s for s in pending if upstream[s] <= set(order)), None)
        if ready is None:
            raise OrchestrationError(f"{root / 'dvc.yaml'}: the stages {pending} form a cycle")
        order.append(ready)
        pending.remove(ready)
    return StageGraph(tuple(order), upstream, outs)


def parse_devices(device: str) -> list[str]:
    """`auto`, `cpu`, `cuda`, `cuda:N`, or several separated by commas ("cuda:0,cuda:1"):
    stages that may run at the same time are spread over them, one stage per device."""
    devices = [part.strip() for part in str(device).split(",") if part.strip()]
    bad = [d for d in devices if not _DEVICE.match(d)]
    if not devices or bad:
        raise OrchestrationError(
            f"device: expected auto, cpu, cuda, cuda:N or a comma-separated list, got {device!r}"
        )
    return devices


def device_env(device: str) -> dict[str, str]:
    """Pin a stage to one device through CUDA_VISIBLE_DEVICES, not params.yaml.

    Changing train.device would change the params DVC hashes and re-run training; the
    device is where a stage runs, not what it computes. With `cuda:N` the stage sees one
    GPU, which `train.device: auto` (or `cuda`) then picks."""
    if device.startswith("cuda:"):
        return {"CUDA_VISIBLE_DEVICES": device.split(":", 1)[1]}
    if device == "cpu":
        return {"CUDA_VISIBLE_DEVICES": ""}
    return {}


def check_devices(params: Params, devices: Sequence[str]) -> None:
    """A flow device `cuda:N` hides every other GPU, so params must not name one."""
    pinned = any(d.startswith("cuda:") or d == "cpu" for d in devices)
    if pinned and params.train.device not in {"auto", "cuda", "cuda:0"}:
        raise OrchestrationError(
            f"{DEFAULT_PARAMS}: train.device is {params.train.device!r}, but the flow's device "
            f"{','.join(devices)!r} selects the device through CUDA_VISIBLE_DEVICES; set "
            "train.device to auto (or cuda), or run the flow with device=auto"
        )


def stage_env(device: str = "auto", base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment of a stage process: this interpreter's bin first on PATH (the stage
    commands call `python`), unbuffered output (streamed line by line), no analytics."""
    env = dict(os.environ if base is None else base)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("DVC_NO_ANALYTICS", "1")
    env.update(device_env(device))
    return env


@dataclass(frozen=True)
class StageResult:
    stage: str
    ran: bool  # False: DVC found it up to date and skipped it


def repro_stage(
    root: Path,
    stage: str,
    env: Mapping[str, str] | None = None,
    on_line: Callable[[str], Any] = print,
    tail_lines: int = 60,
) -> StageResult:
    """`dvc repro --single-item <stage>` in `root`, each output line passed to `on_line`
    as it comes (progress-bar redraws arrive as lines too). Raises StageFailed."""
    command = dvc_command("--wait-for-lock", "repro", "--single-item", stage)
    on_line(f"$ dvc repro --single-item {stage}")
    tail: deque[str] = deque(maxlen=tail_lines)
    ran = False
    process = subprocess.Popen(
        command, cwd=root, env=dict(env) if env is not None else stage_env(),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace", bufsize=1,
    )
    try:
        assert process.stdout is not None
        for raw in process.stdout:  # text mode: "\r" (tqdm redraws) also ends a line
            line = raw.rstrip()
            if not line.strip():
                continue
            ran = ran or line.startswith(f"Running stage '{stage}'")
            tail.append(line)
            on_line(line)
        returncode = process.wait()
    finally:
        if process.poll() is None:  # the flow was cancelled or crashed: do not orphan the stage
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
    if returncode != 0:
        raise StageFailed(stage, returncode, tail)
    return StageResult(stage, ran)


def apply_overrides(root: Path, overrides: Sequence[str]) -> Params:
    """Apply `key=value` overrides to params.yaml the way `dvc exp run -S` does (DVC's own
    hydra-based code: `+key=value` adds, `~key` deletes), then validate strictly. On any
    error params.yaml is left as it was and the error names the override or key."""
    from dvc.exceptions import InvalidArgumentError
    from dvc.utils.cli_parse import to_path_overrides
    from dvc.utils.hydra import apply_overrides as dvc_apply_overrides

    path = root / DEFAULT_PARAMS
    by_file = to_path_overrides(list(overrides))
    others = sorted(set(by_file) - {str(DEFAULT_PARAMS)})
    if others:
        raise OrchestrationError(f"overrides: only {DEFAULT_PARAMS} keys can be set, got file(s) {others}")
    original = path.read_bytes()
    try:
        dvc_apply_overrides(str(path), by_file.get(str(DEFAULT_PARAMS), []))
        return load_params(path)
    except InvalidArgumentError as error:
        path.write_bytes(original)
        cause = str(error.__cause__ or error).strip().splitlines()
        raise OrchestrationError(f"{DEFAULT_PARAMS}: override {list(overrides)} rejected: {' '.join(cause)}") from None
    except ConfigError as error:
        path.write_bytes(original)
        raise OrchestrationError(f"override {list(overrides)} gives an invalid {error}") from None
    except BaseException:
        path.write_bytes(original)
        raise


def save_experiment(root: Path, name: str | None = None, env: Mapping[str, str] | None = None) -> str:
    """`dvc exp save`: record the workspace (params, dvc.lock, metrics) as a DVC experiment
    and return its name."""
    result = run_dvc("--wait-for-lock", "exp", "save", *(["--name", name] if name else []), cwd=root,
                     env=env if env is not None else stage_env())
    output = result.stdout + result.stderr
    match = re.search(r"saved as: (\S+)", output)
    if result.returncode != 0 or not match:
        raise OrchestrationError(f"dvc exp save failed (exit {result.returncode}): {error_line(output.splitlines())}")
    return match.group(1)
