"""The fault census of issue #14: bad params, a dead or read-only tracking store, writes
into tracked data, hostile model files, a mis-sized mask, run against the real CLIs.
Each outcome is classified (clear error naming the file or key / silent / raw traceback
/ hang) and printed as a JSON line, then the counts:

    python -m benchmarks.fault_cases        # after `make demo` (uses models/baseline/seed0); ~2 min

The serving cases run against a real `mlflow models serve` in tests/test_serving.py."""
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}
ENV.pop("MLFLOW_TRACKING_URI", None)
results = []


def run(name, args, cwd=REPO, env=None, expect_key=None, timeout=120):
    started = time.monotonic()
    try:
        r = subprocess.run(args, cwd=cwd, env=env or ENV, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        results.append((name, "hang", timeout, ""))
        return
    elapsed = time.monotonic() - started
    err = r.stderr + r.stdout
    if "Traceback" in err:
        kind = "traceback"
    elif r.returncode == 0:
        kind = "silent"
    elif "error" in err.lower() and (expect_key is None or expect_key in err):
        kind = "clear"
    else:
        kind = f"unclear(rc={r.returncode})"
    line = next((x for x in err.splitlines() if "error" in x.lower()), err.strip().splitlines()[-1] if err.strip() else "")
    results.append((name, kind, round(elapsed, 1), line[:160]))


def params_case(name, edit, key):
    import yaml

    tmp = Path(tempfile.mkdtemp())
    data = yaml.safe_load((REPO / "params.yaml").read_text())
    edit(data)
    (tmp / "params.yaml").write_text(yaml.safe_dump(data))
    run(name, [PY, "-m", "robust_deepfake.cli", "params", "check", "--schema-only", str(tmp / "params.yaml")],
        expect_key=key)


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
    run(name, [PY, "-m", "robust_deepfake.cli", "params", "merge", str(tmp / "over.yaml"), "--into", str(tmp / "params.yaml")])
    if (tmp / "params.yaml").read_bytes() != before:
        results[-1] = (name, "silent(file rewritten)", results[-1][2], results[-1][3])

# MLflow
with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
run("unreachable tracking server (train stage)", [PY, "stages/train.py", "--variant", "baseline", "--params", "params.yaml"],
    env={**ENV, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}"}, expect_key="unreachable")
tmp = Path(tempfile.mkdtemp())
subprocess.run([PY, "-c", f"import mlflow; mlflow.set_tracking_uri('sqlite:///{tmp}/mlflow.db'); mlflow.search_experiments()"], env=ENV,
               capture_output=True)
run("read-only sqlite store", [PY, "-c", "from pathlib import Path\nfrom robust_deepfake.config import Params\n"
                               "from robust_deepfake.tracking import store\nfrom robust_deepfake.stage_kit import run_stage_script\n"
                               "def body(p):\n    store.require_store(p.tracking, Path.cwd()); store.ensure_experiment('x', Path.cwd())\n"
                               "run_stage_script(None, body, str, argv=['--params', 'params.yaml'])"],
    env={**ENV, "MLFLOW_TRACKING_URI": f"sqlite:///file:{tmp}/mlflow.db?mode=ro&uri=true"}, expect_key="readonly")

# predict
image = str(sorted((REPO / "data/raw/fake/pggan_like").glob("*.png"))[0])
run("predict --cam into data/raw", [PY, "-m", "robust_deepfake.cli", "predict", image, "-m", "models/baseline/seed0", "--cam", "data/raw/real/ffhq_like"],
    expect_key="data")
existing = Path(tempfile.mkdtemp()) / "file.txt"
existing.write_text("x")
run("predict --cam at an existing file", [PY, "-m", "robust_deepfake.cli", "predict", image, "-m", "models/baseline/seed0", "--cam", str(existing)],
    expect_key=str(existing))
hostile = Path(tempfile.mkdtemp())
shutil.copy(REPO / "models/baseline/seed0/meta.json", hostile / "meta.json")
import pickle  # noqa: E402


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


(hostile / "model.pt").write_bytes(pickle.dumps(Evil()))
run("hostile model.pt", [PY, "-m", "robust_deepfake.cli", "predict", image, "-m", str(hostile / "model.pt")], expect_key="model.pt")
(hostile / "model.pt").write_bytes(b"")
run("empty model.pt", [PY, "-m", "robust_deepfake.cli", "predict", image, "-m", str(hostile / "model.pt")], expect_key="model.pt")

# data guard and mask size: on a micro copy (the test suite's builder, loaded by file path)
import importlib.util  # noqa: E402

spec = importlib.util.spec_from_file_location("micro_repo", REPO / "tests" / "micro_repo.py")
micro_repo = importlib.util.module_from_spec(spec)
spec.loader.exec_module(micro_repo)
micro = micro_repo.make_micro_repo(Path(tempfile.mkdtemp()) / "repo")
png = sorted((micro / "data/raw/real").rglob("*.png"))[0]
shutil.copy(png, png.parent / "stray_cam.png")
run("data/raw changed outside data track (dvc repro split)", [PY, "-m", "dvc", "repro", "split"], cwd=micro, expect_key="stray_cam.png")
(png.parent / "stray_cam.png").unlink()
subprocess.run(["git", "checkout", "data.dvc"], cwd=micro, capture_output=True)
masks = sorted((micro / "data/raw").rglob("*mask*.png")) or sorted((micro / "data/raw/masks").rglob("*.png"))
if masks:
    from PIL import Image

    with Image.open(masks[0]) as m:
        m.resize((m.width // 2, m.height // 2)).save(masks[0])
    subprocess.run([PY, "-m", "robust_deepfake.cli", "data", "track", "data/raw"], cwd=micro, env=ENV, capture_output=True)
    run("mask size differs from its image (split)", [PY, "stages/split.py", "--params", "params.yaml"], cwd=micro, expect_key=masks[0].name)

counts = {}
for name, kind, elapsed, line in results:
    counts[kind.split("(")[0]] = counts.get(kind.split("(")[0], 0) + 1
    print(json.dumps({"case": name, "outcome": kind, "seconds": elapsed, "message": line}))
print(json.dumps({"cases": len(results), **counts}))
