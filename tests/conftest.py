"""Shared fixtures, and the rule that sorts the tests into two tiers.

`make test` runs `pytest -m "not slow"` (units, oracles, the toy DVC repo); `make test-all`
runs everything. A test is slow when it carries `@pytest.mark.slow` or when it uses, directly
or through another fixture, one of SLOW_FIXTURES: a micro repo, a Prefect server, the
servers and workers on 127.0.0.1, or headless Chromium. The hook below adds the marker, so
a test cannot land in the fast tier by forgetting it. Test modules reach those tools only
through these fixtures (tests/test_tiers.py checks both)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from helpers import REPO, TINY_SPEC, dvc, run
from robust_deepfake.data.sample import write_sample

# Keep tool chatter and background network attempts out of the tests.
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

SLOW_FIXTURES = frozenset({"micro_repo", "new_micro_repo", "prefect_harness", "localhost", "chromium"})


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark slow every test whose fixture closure holds one of SLOW_FIXTURES."""
    for item in items:
        if SLOW_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


# --- data ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def tiny_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The TINY_SPEC sample (96 images at 32 px), generated once."""
    return write_sample(TINY_SPEC, tmp_path_factory.mktemp("tiny") / "raw", progress=False)


@pytest.fixture
def raw_copy(tiny_raw: Path, tmp_path: Path) -> Path:
    """A private, writable copy of the tiny sample (for tests that damage files)."""
    return Path(shutil.copytree(tiny_raw, tmp_path / "raw"))


@pytest.fixture(scope="session")
def splits(tiny_raw: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train/val/test CSVs of the tiny sample at 32 px (absolute paths, usable from any root)."""
    from robust_deepfake.config import validate
    from robust_deepfake.pipeline.split import split

    root = tmp_path_factory.mktemp("splits")
    split(validate({"data": {"raw_dir": str(tiny_raw), "splits_dir": str(root / "data" / "splits"),
                             "image_size": 32}}), root)
    return root / "data" / "splits"


@pytest.fixture(scope="session")
def _dvc_sample_template(tiny_raw: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from robust_deepfake.data.sample import spec_to_meta

    root = tmp_path_factory.mktemp("dvc-sample")
    run(["git", "init", "-q"], root)
    dvc("init", "-q", cwd=root)
    shutil.copytree(tiny_raw, root / "data" / "raw")
    (root / "data.dvc").write_text(
        yaml.safe_dump({"outs": [{"path": "data/raw"}], "meta": {"sample": spec_to_meta(TINY_SPEC)}}, sort_keys=False))
    dvc("commit", "-f", "-q", "data.dvc", cwd=root)
    return root


@pytest.fixture
def dvc_sample_repo(_dvc_sample_template: Path, tmp_path: Path) -> Path:
    """tmp_path as a git + dvc repo whose data.dvc tracks the tiny sample (in the DVC cache,
    not yet committed to git), as a fresh clone sees it: a copy of one built per session
    (without DVC's per-machine state in .dvc/tmp)."""
    shutil.copytree(_dvc_sample_template, tmp_path, symlinks=True, dirs_exist_ok=True,
                    ignore=lambda folder, names: ["tmp"] if Path(folder).name == ".dvc" else [])
    return tmp_path


@pytest.fixture(scope="session")
def full_sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled sample exactly as data.dvc records it (generated once, ~12 s)."""
    from robust_deepfake.data.materialize import read_dvc_file
    from robust_deepfake.data.sample import spec_from_meta

    meta = read_dvc_file(REPO / "data.dvc").sample_meta
    assert meta is not None, "data.dvc must record the sample generator settings"
    return write_sample(spec_from_meta(meta), tmp_path_factory.mktemp("full") / "raw", progress=False)


# --- torch threads ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One intra-op thread for a module (on a small shared CPU, spinning threads make tiny
    tensors an order of magnitude slower); the previous count restored after it."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def restore_threads() -> Iterator[None]:
    """For a test that pins torch's threads (set_threads, train.num_threads): the count restored after it."""
    import torch

    previous = torch.get_num_threads()
    yield
    torch.set_num_threads(previous)


# --- MLflow ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def _mlflow_db_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mlflow import MlflowClient

    database = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{database}").search_experiments()  # creates the tables
    return database


@pytest.fixture
def empty_mlflow_db(_mlflow_db_template: Path, tmp_path: Path) -> Path:
    """tmp_path/mlflow.db: an MLflow sqlite store with its tables and only the Default
    experiment (a copy of one created per session: creating the tables takes seconds)."""
    return Path(shutil.copy2(_mlflow_db_template, tmp_path / "mlflow.db"))


@pytest.fixture
def own_mlflow_stores(monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs go to each test repo's own MLflow store, whatever the caller's shell exports."""
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(name, raising=False)


# --- the slow fixtures (SLOW_FIXTURES) -------------------------------------------------------------


@pytest.fixture(scope="session")
def new_micro_repo() -> Callable[[Path], Path]:
    """make_micro_repo: builds a private copy of the repo on the micro profile at a path (no repro)."""
    from micro_repo import make_micro_repo

    return make_micro_repo


@pytest.fixture(scope="session")
def micro_repo(new_micro_repo: Callable[[Path], Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the repo on the micro profile after a full `dvc repro` (built once).
    Tests must not modify it; copy it first if they need to."""
    root = new_micro_repo(tmp_path_factory.mktemp("micro") / "repo")
    run([sys.executable, "-m", "dvc", "repro"], root)
    return root


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """One temporary Prefect server and database for the session; PREFECT_HOME in a temp dir."""
    from prefect.settings import PREFECT_HOME, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    home = tmp_path_factory.mktemp("prefect-home")
    with temporary_settings(updates={PREFECT_HOME: home}), prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def localhost() -> ModuleType:
    """tests/localhost_services.py: real servers and workers on 127.0.0.1 (Prefect, MLflow,
    `mlflow models serve`, Prefect workers). Whoever starts a service stops it."""
    import localhost_services

    return localhost_services


CHROMIUM_NAMES = ("chromium", "chromium-browser")
NO_NETWORK = [
    "--host-resolver-rules=MAP * ~NOTFOUND",  # a CDN host name does not resolve...
    "--proxy-server=http://127.0.0.1:9",  # ...and any other connection goes to a closed port
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="session")
def chromium() -> Callable[[Path, Path, int], str]:
    """dump_dom(page, profile, budget_ms): the DOM after headless Chromium ran the page's
    scripts for budget_ms of virtual time with no network. Fails (does not skip) when no
    Chromium is on PATH: .ci/run installs it."""
    binary = next((found for name in CHROMIUM_NAMES if (found := shutil.which(name))), None)
    if binary is None:
        pytest.fail(f"headless Chromium is needed and none of {', '.join(CHROMIUM_NAMES)} is on PATH "
                    "(Debian: `apt-get install -y --no-install-recommends chromium`; .ci/run does this)")

    def dump_dom(page: Path, profile: Path, budget_ms: int) -> str:
        args = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                f"--user-data-dir={profile}", *NO_NETWORK, f"--virtual-time-budget={budget_ms}", "--dump-dom",
                page.resolve().as_uri()]
        result = subprocess.run(args, capture_output=True, text=True, timeout=180)
        assert result.returncode == 0 and "</html>" in result.stdout, \
            f"chromium failed ({result.returncode}):\n{result.stderr[-3000:]}"
        return result.stdout

    return dump_dom
