"""The multi-host study topology on 127.0.0.1, with the real servers and CLIs:

a Prefect server, an MLflow tracking server (SQL backend + artifact store), a bare git
remote and a DVC remote in temp folders, and two Prefect process workers in two separate
clones ("hosts" with different CUDA_VISIBLE_DEVICES). A third clone (the user's laptop)
runs `python -m flows.study <spec> --pool ...`. The study is 2 micro cells (placebo and
0.5; one seed), one on each worker. When the 0.5 cell starts training, its worker is
killed with SIGKILL, process tree and all (a host losing power): its heartbeats stop,
the automation marks the run Crashed, the study resubmits it and the other worker runs
it after its own cell. Then: every cell has one MLflow record, the git and DVC remotes
hold every experiment (a clone that computed nothing pulls one), the report is built
from both, and running the study again computes nothing.
Every process is stopped by its process group, whatever happens.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import yaml

from helpers import dvc, git_commit, run

pytestmark = pytest.mark.slow

POOL = "study-pool"
SPEC = """\
name: topo
seeds: [0]
grid:
  reg.epsilon: [0.5]            # the placebo 0.0 is added: 2 cells
fixed:                          # the micro cell made lighter still: two cells share 2 cores
  train.num_threads: 1
  attack.attacks: [pgd]
  attack.eps: [1/255]
  cam.num_samples: 4
metric: acc_pgd
parallelism: 2
retries: 1
git_remote: origin
heartbeat_timeout_s: 60
targets: [attack_sweep, cam_iinc]   # what the study reads: skip each cell's one-seed report
"""
HEARTBEAT_S = "30"  # Prefect's minimum; the automation waits heartbeat_timeout_s for the next one


@pytest.fixture
def topology(tmp_path, new_micro_repo, localhost):
    """Remotes, three clones, the servers and two workers; yields a namespace; stops all."""
    source = new_micro_repo(tmp_path / "source")
    (source / "configs" / "study_topo.yaml").write_text(SPEC)
    git_commit(source, "study")
    dvc_remote = tmp_path / "dvc-remote"
    dvc("remote", "add", "--local", "-d", "shared", str(dvc_remote), cwd=source)
    dvc("push", "-q", cwd=source)
    run(["git", "clone", "-q", "--bare", str(source), str(tmp_path / "origin.git")], tmp_path)
    clones = {}
    for name in ("host-a", "host-b", "laptop"):
        clone = tmp_path / name
        run(["git", "clone", "-q", str(tmp_path / "origin.git"), str(clone)], tmp_path)
        dvc("remote", "add", "--local", "-d", "shared", str(dvc_remote), cwd=clone)
        if name != "laptop":  # the laptop only submits and aggregates: it never needs the data
            dvc("pull", "-q", "data.dvc", cwd=clone)
        clones[name] = clone
    logs = tmp_path / "logs"
    logs.mkdir()
    services = []
    try:
        prefect, api = localhost.start_prefect_server(tmp_path / "prefect-home", logs)
        services.append(prefect)
        mlflow_server, tracking = localhost.start_mlflow_server(tmp_path / "mlflow", logs)
        services.append(mlflow_server)
        shared = {"PREFECT_API_URL": api, "MLFLOW_TRACKING_URI": tracking,
                  "PREFECT_HOME": str(tmp_path / "prefect-client")}
        subprocess.run([str(localhost.BIN / "prefect"), "work-pool", "create", POOL, "--type", "process"],
                       env=localhost.service_env(tmp_path, **shared), cwd=tmp_path, check=True, capture_output=True)
        workers = {}
        for gpu, name in enumerate(("host-a", "host-b")):
            clone = clones[name]
            env = localhost.service_env(clone, **shared, PYTHONPATH=str(clone), ROBUST_DEEPFAKE_CHECKOUT=str(clone),
                                        CUDA_VISIBLE_DEVICES=str(gpu), PREFECT_FLOWS_HEARTBEAT_FREQUENCY=HEARTBEAT_S,
                                        PREFECT_WORKER_QUERY_SECONDS="2",
                                        ROBUST_DEEPFAKE_GPU_LOCKS=str(tmp_path / f"gpu-locks-{name}"))
            worker = [str(localhost.BIN / "prefect"), "worker", "start", "--pool", POOL, "--name", name, "--limit", "1"]
            workers[name] = localhost.Service(name, worker, clone, env, logs)
            services.append(workers[name])

        yield SimpleNamespace(clones=clones, workers=workers, shared=shared, logs=logs, tracking=tracking, api=api,
                              origin=tmp_path / "origin.git", services=services, localhost=localhost)
    finally:
        for service in reversed(services):
            service.stop()


def _study(topo, name: str):
    """`python -m flows.study` on the laptop clone, as a service (stopped with the others)."""
    laptop = topo.clones["laptop"]
    env = topo.localhost.service_env(laptop, **topo.shared, PYTHONPATH=str(laptop))
    service = topo.localhost.Service(
        name, [sys.executable, "-m", "flows.study", "configs/study_topo.yaml", "--pool", POOL], laptop, env, topo.logs)
    topo.services.append(service)
    return service


def _worker_running_on(topo, name: str, needle: str) -> bool:
    """Whether worker `name`'s process tree runs a command line containing `needle`."""
    import psutil

    for pid in topo.workers[name].descendants():
        try:
            if needle in " ".join(psutil.Process(pid).cmdline()):
                return True
        except psutil.NoSuchProcess:
            continue
    return False


def _worker_running(topo, needle: str) -> str | None:
    """The worker whose process tree runs a command line containing `needle`."""
    return next((name for name in topo.workers if _worker_running_on(topo, name, needle)), None)


def _cell_runs(tracking: str) -> list:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking)
    experiment = client.get_experiment_by_name("robust-deepfake")
    return client.search_runs([experiment.experiment_id], filter_string="tags.`study.kind` = 'cell'")


def _flow_runs(api: str, name: str) -> list[tuple[str, str]]:
    import urllib.request

    request = urllib.request.Request(f"{api}/flow_runs/filter", method="POST",
                                     data=json.dumps({"flow_runs": {"name": {"any_": [name]}}}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return [(run["state_type"], run["state"]["message"] or "") for run in json.load(response)]


def test_two_hosts_share_a_study_survive_a_dead_worker_and_reuse_every_cell(topology):
    topo = topology
    study = _study(topo, "study-1")
    killed = None
    deadline = time.monotonic() + 1200
    while study.process.poll() is None and time.monotonic() < deadline:
        if killed is None:  # the 0.5 cell starts training: kill its host
            host = _worker_running(topo, "epsilon0.5")
            if host is not None and _worker_running_on(topo, host, "stages/train.py"):
                topo.workers[host].kill()
                killed = host
        time.sleep(1)
    assert study.process.poll() == 0, f"study failed:\n{study.tail(60)}"
    assert killed is not None, "the 0.5 cell never started training on a worker"
    survivor = ({"host-a", "host-b"} - {killed}).pop()
    output = study.log.read_text()
    assert "2 cells, 0 already done (reused), 2 to run on pool study-pool" in output
    assert "reg.epsilon=0.5 seed=0: CRASHED" in output and "resubmitting" in output

    # Prefect: the killed cell's first run was marked Crashed by the heartbeat automation
    states = _flow_runs(topo.api, "reg.epsilon=0.5 seed=0")
    assert sorted(state for state, _ in states) == ["COMPLETED", "CRASHED"], states
    assert any("no heartbeat" in message for state, message in states if state == "CRASHED")

    # MLflow server: one finished record per cell, the retried one from the survivor
    runs = _cell_runs(topo.tracking)
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    by_label = {r.data.tags["mlflow.runName"]: r for r in runs}
    assert set(by_label) == {"reg.epsilon=0.0 seed=0", "reg.epsilon=0.5 seed=0"}
    assert {r.data.tags["worker"] for r in runs} == {survivor}
    # the retried cell restored the seed's baseline from DVC's run cache instead of retraining it
    log = (topo.logs / f"{survivor}.log").read_text()
    assert "Stage 'train_baseline' is cached - skipping run" in log
    assert "Stage 'train_placebo' is cached - skipping run" in log  # the placebo reads no reg.epsilon
    assert {r.data.tags["cuda_visible_devices"] for r in runs} <= {"0", "1"}
    parents = {r.data.tags["mlflow.parentRunId"] for r in runs}
    assert len(parents) == 1  # grouped under the study's parent run

    # git + DVC remotes: every cell's experiment; the laptop (which computed nothing) pulls one
    refs = run(["git", "ls-remote", str(topo.origin), "refs/exps/*"], topo.origin).stdout
    laptop = topo.clones["laptop"]
    for r in runs:
        name = r.data.tags["dvc_experiment"]
        assert f"/{name}\n" in refs + "\n"
    retried = by_label["reg.epsilon=0.5 seed=0"]
    name = retried.data.tags["dvc_experiment"]
    dvc("exp", "pull", "origin", name, cwd=laptop)
    ref = run(["git", "for-each-ref", "--format=%(refname)", "refs/exps/"], laptop).stdout.split()
    lock = yaml.safe_load(run(["git", "show", f"{next(r for r in ref if r.endswith('/' + name))}:dvc.lock"],
                              laptop).stdout)
    md5 = next(o["md5"] for o in lock["stages"]["attack_sweep"]["outs"] if o["path"] == "eval/attack_sweep.json")
    cached = laptop / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]
    assert cached.is_file()  # pulled from the DVC remote: the laptop never computed it
    sweep = json.loads(cached.read_text())
    clean = next(e for e in sweep["entries"] if e["variant"] == "reg" and e["attack"] == "clean")
    assert retried.data.metrics["reg/acc_clean"] == pytest.approx(clean["accuracy"])

    # the report: all three cells, from the shared store
    report = json.loads((laptop / "reports" / "study.json").read_text())
    assert report["cells"] == 2 and {c["worker"] for c in report["cost"]["cells"]} == {survivor}
    html = (laptop / "reports" / "study.html").read_text()
    for label in by_label:
        assert label in html

    # again: nothing recomputed, nothing new in MLflow
    again = _study(topo, "study-2")
    assert again.process.wait(timeout=600) == 0, again.tail(40)
    assert "2 cells, 2 already done (reused), 0 to run" in again.log.read_text()
    assert len(_cell_runs(topo.tracking)) == 2
