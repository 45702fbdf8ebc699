"""Shared fixtures. Expensive artefacts (the full sample, a trained micro model) are
session-scoped and built once."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from robust_deepfake.data.sample import SampleSpec, write_sample

REPO = Path(__file__).resolve().parents[1]

# Keep tool chatter and background network attempts out of the tests.
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

TINY_SPEC = SampleSpec(seed=7, image_size=32, real_per_source=24, fakes_per_method=12)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def tiny_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 96-image sample at 32 px: enough for layout/split logic, generated in ~1 s."""
    return write_sample(TINY_SPEC, tmp_path_factory.mktemp("tiny") / "raw", progress=False)


@pytest.fixture(scope="session")
def full_sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled sample exactly as data.dvc records it (generated once, ~12 s)."""
    from robust_deepfake.data.materialize import read_dvc_file
    from robust_deepfake.data.sample import spec_from_meta

    meta = read_dvc_file(REPO / "data.dvc").sample_meta
    assert meta is not None, "data.dvc must record the sample generator settings"
    return write_sample(spec_from_meta(meta), tmp_path_factory.mktemp("full") / "raw", progress=False)


@pytest.fixture(scope="session")
def micro_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the repo on the micro profile after a full `dvc repro` (built once).
    Tests must not modify it; copy it first (see micro_repo.py) if they need to."""
    from micro_repo import make_micro_repo, run

    root = make_micro_repo(tmp_path_factory.mktemp("micro") / "repo")
    run([sys.executable, "-m", "dvc", "repro"], root)
    return root


@pytest.fixture
def raw_copy(tiny_raw: Path, tmp_path: Path) -> Path:
    """A private, writable copy of the tiny sample (for tests that damage files)."""
    return Path(shutil.copytree(tiny_raw, tmp_path / "raw"))
