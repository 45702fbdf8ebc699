"""A toy DVC repository for the pipeline flow's tests: a real git + dvc repo whose stages
are a tiny script, so DAG order, retries, failures and concurrency are tested through the
real dvc CLI in a second instead of minutes of training.

The stages are declared out of order in dvc.yaml on purpose (the flow must follow DVC's
graph, not the file). Every call of a stage appends `<stage> <CUDA_VISIBLE_DEVICES>` to
log/calls.txt (git-ignored, not a DVC output).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from helpers import REPO, dvc, git_commit, run

STEP = r'''
"""One toy stage: python step.py NAME [--fail] [--transient-once] [--rendezvous OTHER]."""
import argparse, os, sys, time
from pathlib import Path

parser = argparse.ArgumentParser()
parser.add_argument("name")
parser.add_argument("--fail", action="store_true")
parser.add_argument("--transient-once", action="store_true")
parser.add_argument("--rendezvous")
parser.add_argument("--inputs", nargs="*", default=[])
args = parser.parse_args()
log = Path("log"); log.mkdir(exist_ok=True)
with open(log / "calls.txt", "a") as handle:
    handle.write(f"{args.name} {os.environ.get('CUDA_VISIBLE_DEVICES', '-')}\n")
print(f"step {args.name}: hello from the stage", flush=True)
if args.transient_once and not (log / f"{args.name}.failed-once").exists():
    (log / f"{args.name}.failed-once").touch()
    print("sqlite3.OperationalError: database is locked", file=sys.stderr)
    sys.exit(1)
if args.fail:
    print(f"error: params.yaml: train.lr: stage {args.name} refuses this value", file=sys.stderr)
    sys.exit(1)
if args.rendezvous:  # proves concurrency without timing: both must be running at once
    (log / f"{args.name}.started").touch()
    for _ in range(1200):
        if (log / f"{args.rendezvous}.started").exists():
            break
        time.sleep(0.1)
    else:
        print(f"error: {args.rendezvous} never started while {args.name} ran", file=sys.stderr)
        sys.exit(1)
content = args.name + "".join(Path(p).read_text() for p in args.inputs)
Path("out").mkdir(exist_ok=True)
Path(f"out/{args.name}.txt").write_text(content + "\n")
'''


def stage(name: str, deps: list[str], flags: str = "", params: list[str] | None = None) -> dict:
    inputs = f" --inputs {' '.join(f'out/{d}.txt' for d in deps)}" if deps else ""
    spec: dict = {"cmd": f"python step.py {name}{inputs} {flags}".rstrip(),
                  "deps": ["step.py", *(f"out/{d}.txt" for d in deps)], "outs": [f"out/{name}.txt"]}
    if params:
        spec["params"] = params
    return spec


def make_toy_repo(dest: Path, flags: dict[str, str] | None = None) -> Path:
    """prepare -> left, right -> report, declared in the order report, right, left, prepare.
    `flags` adds step.py options per stage (e.g. {"left": "--transient-once"})."""
    flags = flags or {}
    dest.mkdir(parents=True)
    shutil.copy2(REPO / "params.yaml", dest / "params.yaml")  # a valid project params file
    (dest / "step.py").write_text(STEP)
    (dest / ".gitignore").write_text("/log/\n")
    stages = {
        "report": stage("report", ["left", "right"], flags.get("report", "")),
        "right": stage("right", ["prepare"], flags.get("right", "")),
        "left": stage("left", ["prepare"], flags.get("left", "")),
        "prepare": stage("prepare", [], flags.get("prepare", ""), params=["train.lr"]),
    }
    (dest / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    run(["git", "init", "-q"], dest)
    dvc("init", "-q", cwd=dest)
    git_commit(dest, "toy")
    return dest


def calls(root: Path) -> list[tuple[str, str]]:
    """(stage, CUDA_VISIBLE_DEVICES) for every stage call so far, in call order."""
    path = root / "log" / "calls.txt"
    return [tuple(line.split(" ", 1)) for line in path.read_text().splitlines()] if path.exists() else []
