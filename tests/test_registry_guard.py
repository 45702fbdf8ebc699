"""Only `dvc repro` of committed inputs speaks for production: experiments and dirty
trees register versions but never move an alias (tracking/provenance.py)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from robust_deepfake.tracking.provenance import EXPERIMENT_ENV, run_origin
from robust_deepfake.tracking.store import store_root

MODEL = "robust-deepfake-detector"


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout


@pytest.fixture
def committed(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    for name in ("params.yaml", "dvc.lock", "metrics/report.json", "src/code.py"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("a: 1\n")
    _git(root, "init", "-q")
    _git(root, "add", "-A")
    _git(root, "-c", "user.name=t", "-c", "user.email=t@e", "commit", "-qm", "init")
    return root


def test_a_committed_tree_may_move_aliases_even_after_the_run_rewrote_its_outs(committed, monkeypatch):
    monkeypatch.delenv(EXPERIMENT_ENV, raising=False)
    (committed / "dvc.lock").write_text("changed by dvc repro\n")
    (committed / "metrics" / "report.json").write_text("{}\n")
    origin = run_origin(committed)
    assert origin.may_move_aliases and origin.changed == ()
    assert origin.git_commit == _git(committed, "rev-parse", "HEAD").strip()  # no "-dirty"


def test_uncommitted_params_or_code_keep_the_aliases(committed, monkeypatch):
    monkeypatch.delenv(EXPERIMENT_ENV, raising=False)
    (committed / "params.yaml").write_text("a: 2\n")
    (committed / "src" / "code.py").write_text("changed\n")
    origin = run_origin(committed)
    assert not origin.may_move_aliases and origin.changed == ("params.yaml", "src/code.py")
    assert origin.git_commit.endswith("-dirty")
    assert "uncommitted changes (params.yaml, src/code.py)" in origin.why_aliases_stay()


def test_a_dvc_experiment_keeps_the_aliases_and_is_named(committed, monkeypatch):
    monkeypatch.setenv(EXPERIMENT_ENV, "bushy-lamb")
    origin = run_origin(committed)
    assert not origin.may_move_aliases
    assert origin.tags() == {"git_commit": _git(committed, "rev-parse", "HEAD").strip(),
                             "dvc_experiment": "bushy-lamb"}
    assert "DVC experiment 'bushy-lamb'" in origin.why_aliases_stay()


def test_outside_git_nothing_moves(tmp_path, monkeypatch):
    monkeypatch.delenv(EXPERIMENT_ENV, raising=False)
    origin = run_origin(tmp_path)
    assert origin.commit == "unknown" and not origin.may_move_aliases


def test_temp_experiments_log_to_the_repository_store(tmp_path):
    assert store_root(tmp_path / "repo" / ".dvc" / "tmp" / "exps" / "standalone" / "tmpab12") == tmp_path / "repo"
    assert store_root(tmp_path / "repo") == tmp_path / "repo"


@pytest.mark.slow
def test_dvc_exp_run_leaves_every_alias_where_it_was(micro_repo, tmp_path):
    """A real `dvc exp run` (in a copy of the micro repo, so other tests keep theirs):
    new versions are registered with the experiment's name and model cards, and not one
    alias moves."""
    from helpers import clean_env, run
    from mlflow import MlflowClient

    root = Path(shutil.copytree(micro_repo, tmp_path / "repo", symlinks=True))
    run(["git", "add", "-A"], root)  # as a user does after `dvc repro`: dvc.lock and metrics committed
    run(["git", "-c", "user.name=t", "-c", "user.email=t@e", "commit", "-qm", "repro"], root)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    before = dict(client.get_registered_model(MODEL).aliases)
    versions_before = {v.version for v in client.search_model_versions(f"name='{MODEL}'")}
    assert {"champion", "challenger", "baseline", "reg", "reg-seed0"} <= set(before)

    result = run([sys.executable, "-m", "dvc", "exp", "run", "--temp", "-n", "alpha-03", "-S", "reg.alpha=0.3"],
                 root)
    assert "no alias moved: DVC experiment 'alpha-03'" in result.stdout + result.stderr

    assert dict(client.get_registered_model(MODEL).aliases) == before
    new = [v for v in client.search_model_versions(f"name='{MODEL}'") if v.version not in versions_before]
    # reg.alpha weights the second pass of reg and of the placebo: both retrain, the baseline does not
    assert sorted((v.tags["variant"], v.tags["seed"]) for v in new) == [
        ("placebo", "0"), ("placebo", "1"), ("reg", "0"), ("reg", "1")]
    assert all(v.tags["dvc_experiment"] == "alpha-03" and v.description for v in new)
    assert all("quality_floor" in v.tags for v in new)  # the experiment's report still judged them
    shown = subprocess.run([sys.executable, "-m", "dvc", "exp", "show", "--csv"], cwd=root, env=clean_env(root),
                           capture_output=True, text=True, check=True).stdout
    assert "alpha-03" in shown
