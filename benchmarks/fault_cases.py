"""The fault census (issues #14 and #26): bad params, paths outside the repository, data
content (copies, tiny images), a dead or read-only tracking store, writes into tracked
data, hostile model files, a mis-sized mask, full disks, failing Prefect flows, a
symlink loop, stage scripts run by hand, each run against the real CLIs. Every case
states what it expects: a clear error (non-zero exit, the exit code where the command
documents one, a line naming the file or key) or success (OK). Each outcome is printed
as a JSON line: CLEAR, OK, SKIP (cannot run on this machine, with the reason), or a
failure: silent (exit 0 where an error was due), traceback, hang, unclear (no line naming
the key), exit (another exit code); then the counts. Exit status 1 when any case failed.

    python -m benchmarks.fault_cases                    # on a trained checkout (`make demo`), ~5 min
    python -m benchmarks.fault_cases --repo <trained>   # another trained checkout (the tests' micro repo)

Without models/baseline/seed0 in the checkout, a micro copy is built and trained first
(minutes). Cases that change data or params run on copies; the checkout is not written.
The serving cases run against a real `mlflow models serve` in tests/test_serving.py."""
import argparse
import functools
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1",
       "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "HF_HUB_OFFLINE": "1"}
for _name in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL", STARTUP := "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"):
    ENV.pop(_name, None)
results = []


def run(name, args, cwd=None, env=None, expect_key=None, timeout=300, code=None, ok=False):
    """Run one case. ok: success expected (exit 0, `expect_key` in the output when given);
    else a clear error: non-zero exit (`code` when given, an int or a set) and a line
    holding `expect_key`."""
    started = time.monotonic()
    try:
        r = subprocess.run(args, cwd=cwd or BASE, env=env or ENV, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        results.append((name, "hang", timeout, ""))
        return
    elapsed = time.monotonic() - started
    err = r.stderr + r.stdout
    codes = {code} if isinstance(code, int) else code
    if "Traceback" in err:
        kind = "traceback"
    elif ok:
        kind = "OK" if r.returncode == 0 and (expect_key is None or expect_key in err) else f"unclear(rc={r.returncode})"
    elif r.returncode == 0:
        kind = "silent"
    elif codes and r.returncode not in codes:
        kind = f"exit(rc={r.returncode}, expected {sorted(codes)})"
    elif "error" in err.lower() and (expect_key is None or expect_key in err):
        kind = "CLEAR"
    else:
        kind = f"unclear(rc={r.returncode})"
    lines = err.strip().splitlines()
    line = next((x for x in lines if "error" in x.lower()), lines[-1] if lines else "")
    results.append((name, kind, round(elapsed, 1), f"rc={r.returncode}: {line[:200]}"))


def skip(name, why):
    results.append((name, "SKIP", 0, why))


def copy_of(repo: Path) -> Path:
    """A private copy of a checkout (git, DVC cache, MLflow store and outs included)."""
    return Path(shutil.copytree(repo, Path(tempfile.mkdtemp()) / "repo", symlinks=True,
                                ignore=shutil.ignore_patterns(".venv", ".ruff_cache", ".pytest_cache", "__pycache__")))


def trained_checkout(requested: str | None) -> Path:
    """The checkout the cases read: --repo, this one when trained, else a new micro copy."""
    if requested:
        return Path(requested).resolve()
    if (REPO / "models/baseline/seed0/model.pt").exists():
        return REPO
    import importlib.util

    spec = importlib.util.spec_from_file_location("micro_repo", REPO / "tests" / "micro_repo.py")
    sys.path.insert(0, str(REPO / "tests"))  # micro_repo imports the tests' helpers
    micro_repo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(micro_repo)
    root = micro_repo.make_micro_repo(Path(tempfile.mkdtemp()) / "repo")
    print(f"training a micro copy in {root} ...", file=sys.stderr, flush=True)
    subprocess.run([PY, "-m", "dvc", "repro", "-q"], cwd=root, env=ENV, check=True)
    return root


parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--repo", help="a trained checkout (default: this one, else a new micro copy)")
BASE = trained_checkout(parser.parse_args().repo)


def params_case(name, edit, key):
    tmp = Path(tempfile.mkdtemp())
    data = yaml.safe_load((REPO / "params.yaml").read_text())
    edit(data)
    (tmp / "params.yaml").write_text(yaml.safe_dump(data))
    run(name, [PY, "-m", "robust_deepfake.cli", "params", "check", "--schema-only", str(tmp / "params.yaml")],
        expect_key=key, code=2)


def setter(key, value):
    def edit(data):
        section, field = key.split(".", 1)
        data[section][field] = value
    return edit


for key, value in [("split.seed", -1), ("train.seeds", [2**70]), ("attack.eps", [float("nan")]),
                   ("attack.eps", ["nan"]), ("attack.attacks", []), ("reg.epsilon", float("inf")),
                   ("train.weight_decay", float("inf")), ("cam.target_layer", "blocks.99"),
                   ("train.epochs", True), ("report.reference_eps", float("nan")), ("report.reference_eps", -1),
                   ("reevaluate.cron", "a b c d e")]:
    params_case(f"params {key}={value!r}", setter(key, value), key)

tmp = Path(tempfile.mkdtemp())
text = (REPO / "params.yaml").read_text().replace("  epochs: 4\n", "  epochs: 4\n  epochs: 5\n", 1)
(tmp / "params.yaml").write_text(text)
run("params duplicate key", [PY, "-m", "robust_deepfake.cli", "params", "check", str(tmp / "params.yaml")],
    expect_key="train.epochs")

# params merge
for name, content in [("merge yaml syntax error", "train: {epochs: 3\n"), ("merge duplicate key", "train:\n  epochs: 3\n  epochs: 4\n"),
                      ("merge python tag", "train:\n  epochs: !!python/object/apply:os.system ['true']\n"),
                      ("merge empty override", "")]:
    tmp = Path(tempfile.mkdtemp())
    shutil.copy(REPO / "params.yaml", tmp / "params.yaml")
    before = (tmp / "params.yaml").read_bytes()
    (tmp / "over.yaml").write_text(content)
    run(name, [PY, "-m", "robust_deepfake.cli", "params", "merge", str(tmp / "over.yaml"), "--into", str(tmp / "params.yaml")],
        code=2)
    if (tmp / "params.yaml").read_bytes() != before:
        results[-1] = (name, "silent(file rewritten)", results[-1][2], results[-1][3])

# MLflow
with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
run("unreachable tracking server (train stage)", [PY, "stages/train.py", "--variant", "baseline", "--params", "params.yaml"],
    env={**ENV, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}"}, expect_key="unreachable", code=2)
tmp = Path(tempfile.mkdtemp())
subprocess.run([PY, "-c", f"import mlflow; mlflow.set_tracking_uri('sqlite:///{tmp}/mlflow.db'); mlflow.search_experiments()"], env=ENV,
               capture_output=True)
run("read-only sqlite store", [PY, "-c", "from pathlib import Path\nfrom robust_deepfake.config import Params\n"
                               "from robust_deepfake.tracking import store\nfrom robust_deepfake.stage_kit import run_stage_script\n"
                               "def body(p):\n    store.require_store(p.tracking, Path.cwd()); store.ensure_experiment('x', Path.cwd())\n"
                               "run_stage_script(None, body, str, argv=['--params', 'params.yaml'])"],
    env={**ENV, "MLFLOW_TRACKING_URI": f"sqlite:///file:{tmp}/mlflow.db?mode=ro&uri=true"}, expect_key="readonly", code=2)

# predict
PREDICT = [PY, "-m", "robust_deepfake.cli", "predict", "--no-progress"]
image = str(sorted((BASE / "data/raw/fake/pggan_like").glob("*.png"))[0])
run("predict --cam into data/raw", [*PREDICT, image, "-m", "models/baseline/seed0", "--cam", "data/raw/real/ffhq_like"],
    expect_key="data", code=2)
existing = Path(tempfile.mkdtemp()) / "file.txt"
existing.write_text("x")
run("predict --cam at an existing file", [*PREDICT, image, "-m", "models/baseline/seed0", "--cam", str(existing)],
    expect_key=str(existing), code=2)
hostile = Path(tempfile.mkdtemp())
shutil.copy(BASE / "models/baseline/seed0/meta.json", hostile / "meta.json")
import pickle  # noqa: E402


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


(hostile / "model.pt").write_bytes(pickle.dumps(Evil()))
run("hostile model.pt", [*PREDICT, image, "-m", str(hostile / "model.pt")], expect_key="model.pt", code=2)
(hostile / "model.pt").write_bytes(b"")
run("empty model.pt", [*PREDICT, image, "-m", str(hostile / "model.pt")], expect_key="model.pt", code=2)
run("predict from a training output DVC deleted (a stage rerunning)", [*PREDICT, image, "-m", "models/baseline/seed9"],
    expect_key="models:/", code=2)
run("predict from the registry (@champion)", [*PREDICT, image], ok=True, expect_key="version")

# a full disk: a 200 KiB tmpfs, when this machine lets us mount one
full = Path(tempfile.mkdtemp())
mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(full)], capture_output=True).returncode == 0
if mounted:
    try:
        shutil.copy(BASE / "params.yaml", full / "params.yaml")
        over = Path(tempfile.mkdtemp()) / "over.yaml"
        over.write_text("train:\n  lr: 0.002\n")
        subprocess.run(["dd", "if=/dev/zero", f"of={full / 'fill'}", "bs=4k"], capture_output=True)  # until ENOSPC
        run("predict --cam on a full disk", [*PREDICT, str(BASE / "data/raw/real/ffhq_like"), "-m", "models/baseline/seed0",
                                             "--cam", str(full / "cams")], expect_key="No space left", code=1)
        run("params merge --into on a full disk", [PY, "-m", "robust_deepfake.cli", "params", "merge", str(over), "--into",
                                                   str(full / "params.yaml")], expect_key="params.yaml", code=1)
    finally:
        subprocess.run(["umount", str(full)], capture_output=True)
else:
    for name in ("predict --cam on a full disk", "params merge --into on a full disk"):
        skip(name, "cannot mount a small tmpfs here (needs root); tests/test_no_traceback.py simulates ENOSPC")

# Prefect flows, without a server (each starts a temporary one)
prefect_env = {**ENV, "PREFECT_HOME": tempfile.mkdtemp(), "PYTHONPATH": f"{REPO}:{REPO / 'src'}"}
nothing_registered = Path(tempfile.mkdtemp())
shutil.copy(REPO / "params.yaml", nothing_registered / "params.yaml")
REEVALUATE = ["-c", "from flows.launch import run_flow\nfrom flows.reevaluate import reevaluate\n"
              f"run_flow(reevaluate, repo={str(nothing_registered)!r}, aliases=['champion'])"]
run("python -m flows.reevaluate without a registered model", [PY, *REEVALUATE], cwd=REPO, env=prefect_env,
    expect_key="@champion", code=1)
run("temporary Prefect server too slow to start", [PY, *REEVALUATE], cwd=REPO, env={**prefect_env, STARTUP: "0"},
    expect_key=STARTUP, code=2)

# params checked on every run, paths confined (a trained copy: DVC would skip every stage)
typo = copy_of(BASE)
original = (typo / "params.yaml").read_text()
for name, edit, key, target in [
    ("dvc repro with a misspelled key (train.epoch)", lambda d: d["train"].update(epoch=7), "train.epoch", []),
    ("dvc repro with a misspelled section (reevalute)", lambda d: d.update(reevalute={"cron": "0 3 * * 1"}), "reevalute", []),
    ("dvc repro split with a misspelled key", lambda d: d["train"].update(epoch=7), "train.epoch", ["split"]),
    ("dvc repro with data.splits_dir /etc", lambda d: d["data"].update(splits_dir="/etc"), "data.splits_dir", []),
]:
    data = yaml.safe_load(original)
    edit(data)
    (typo / "params.yaml").write_text(yaml.safe_dump(data))
    run(name, [PY, "-m", "dvc", "repro", *target], cwd=typo, expect_key=key)
(typo / "params.yaml").write_text(original)
run("dvc repro on the trained copy, params restored", [PY, "-m", "dvc", "repro"], cwd=typo, ok=True)
blank = Path(tempfile.mkdtemp()) / "params.yaml"
blank.write_text("  \n\n")
run("params check: a whitespace-only file", [PY, "-m", "robust_deepfake.cli", "params", "check", str(blank)],
    expect_key=str(blank), code=2)
for value in ("/etc", "../../outside"):
    params_case(f"params data.splits_dir={value!r}", setter("data.splits_dir", value), "data.splits_dir")
shutil.rmtree(typo.parent)

# data content, the data guard, a mis-sized mask, a symlink loop: each on its own copy
SPLIT = [PY, "stages/split.py", "--params", "params.yaml"]
TRACK = [PY, "-m", "robust_deepfake.cli", "data", "track", "data/raw"]


data_copy = functools.partial(copy_of, BASE)
copies = data_copy()
reals = sorted((copies / "data/raw/real").rglob("*.png"))[:20]
for n, real in enumerate(reals):
    shutil.copy(real, copies / "data/raw/fake/stylegan_like" / f"copied{n:02d}.png")
subprocess.run(TRACK, cwd=copies, env=ENV, capture_output=True)
run("split: 20 real images copied into a fake class", SPLIT, cwd=copies, expect_key="identical files", code=2)
skip_mode = yaml.safe_load((copies / "params.yaml").read_text())
skip_mode["data"]["on_bad_file"] = "skip"
(copies / "params.yaml").write_text(yaml.safe_dump(skip_mode))
run("split: the same copies with data.on_bad_file: skip (counted, none kept)", SPLIT, cwd=copies, ok=True,
    expect_key="skipped 40 duplicate file(s)")
tiny = data_copy()
from PIL import Image  # noqa: E402

Image.new("RGB", (1, 1), (120, 90, 60)).save(tiny / "data/raw/real/ffhq_like/one_pixel.png")
subprocess.run(TRACK, cwd=tiny, env=ENV, capture_output=True)
run("split: a valid 1x1 PNG", SPLIT, cwd=tiny, expect_key="one_pixel.png", code=2)

guard = data_copy()
png = sorted((guard / "data/raw/real").rglob("*.png"))[0]
shutil.copy(png, png.parent / "stray_cam.png")
run("data/raw changed outside data track (dvc repro split)", [PY, "-m", "dvc", "repro", "split"], cwd=guard,
    expect_key="stray_cam.png")
masked = data_copy()
masks = sorted((masked / "data/raw/masks").rglob("*.png"))
if masks:
    with Image.open(masks[0]) as m:
        m.resize((m.width // 2, m.height // 2)).save(masks[0])
    subprocess.run(TRACK, cwd=masked, env=ENV, capture_output=True)
    run("mask size differs from its image (split)", SPLIT, cwd=masked, expect_key=masks[0].name, code=2)
else:
    skip("mask size differs from its image (split)", "the checkout's data has no masks")
loop = data_copy()
(loop / "data/raw/real/loop1").symlink_to("loop2")
(loop / "data/raw/real/loop2").symlink_to("loop1")
run("data track with a symlink loop", TRACK, cwd=loop, expect_key="loop1", code=2)
for root in (copies, tiny, guard, masked, loop):
    shutil.rmtree(root.parent, ignore_errors=True)
skip("killed training restored from the run cache (run KILLED, checkpoint removed)",
     "needs a kill -9 mid-training; tests/test_killed_leftovers.py checks the bookkeeping")

counts = {}
for name, kind, elapsed, line in results:
    counts[kind.split("(")[0]] = counts.get(kind.split("(")[0], 0) + 1
    print(json.dumps({"case": name, "outcome": kind, "seconds": elapsed, "message": line}))
failed = sum(n for kind, n in counts.items() if kind not in ("CLEAR", "OK", "SKIP"))
print(json.dumps({"cases": len(results), **{k: counts.get(k, 0) for k in ("CLEAR", "OK", "SKIP", "silent", "traceback", "hang")},
                  "other failures": failed - sum(counts.get(k, 0) for k in ("silent", "traceback", "hang"))}))
sys.exit(1 if failed else 0)
