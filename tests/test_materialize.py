"""Bringing data/raw into place offline, checked against the real dvc CLI."""

import shutil

import pytest
import yaml

from robust_deepfake.data.materialize import DataStateError, dvc_tree_md5, ensure_raw_data

from helpers import dvc


def test_tree_hash_equals_dvc(dvc_sample_repo):
    recorded = yaml.safe_load((dvc_sample_repo / "data.dvc").read_text())["outs"][0]["md5"]
    assert dvc_tree_md5(dvc_sample_repo / "data" / "raw") == recorded


def test_fresh_clone_regenerates_and_dvc_status_is_clean(dvc_sample_repo):
    shutil.rmtree(dvc_sample_repo / "data" / "raw")
    shutil.rmtree(dvc_sample_repo / ".dvc" / "cache")
    message = ensure_raw_data(dvc_sample_repo / "data.dvc", log=lambda *_: None)
    assert "generated" in message
    status = dvc("status", "data.dvc", cwd=dvc_sample_repo)
    assert status.returncode == 0 and "up to date" in status.stdout, status.stdout
    again = ensure_raw_data(dvc_sample_repo / "data.dvc", log=lambda *_: None)
    assert "already matches" in again


def test_restores_from_cache_when_possible(dvc_sample_repo):
    shutil.rmtree(dvc_sample_repo / "data" / "raw")
    assert "DVC cache" in ensure_raw_data(dvc_sample_repo / "data.dvc", log=lambda *_: None)


def test_modified_data_is_never_overwritten_silently(dvc_sample_repo):
    victim = next((dvc_sample_repo / "data" / "raw" / "real").rglob("*.png"))
    victim.write_bytes(b"my own data")
    with pytest.raises(DataStateError, match="differs from"):
        ensure_raw_data(dvc_sample_repo / "data.dvc", log=lambda *_: None)
    assert victim.read_bytes() == b"my own data"
    ensure_raw_data(dvc_sample_repo / "data.dvc", force=True, log=lambda *_: None)
    backup = next((dvc_sample_repo / "data").glob("raw.bak-*"))
    assert (backup / victim.relative_to(dvc_sample_repo / "data" / "raw")).read_bytes() == b"my own data"


def test_mismatching_generator_is_reported(dvc_sample_repo):
    content = yaml.safe_load((dvc_sample_repo / "data.dvc").read_text())
    content["outs"][0]["md5"] = "0" * 32 + ".dir"
    (dvc_sample_repo / "data.dvc").write_text(yaml.safe_dump(content))
    shutil.rmtree(dvc_sample_repo / "data" / "raw")
    shutil.rmtree(dvc_sample_repo / ".dvc" / "cache")
    with pytest.raises(DataStateError, match="regenerated sample hashes to"):
        ensure_raw_data(dvc_sample_repo / "data.dvc", log=lambda *_: None)
    assert not (dvc_sample_repo / "data" / "raw").exists()


def test_track_replaces_the_sample_meta(dvc_sample_repo):
    from robust_deepfake.data.materialize import read_dvc_file, track_raw_dir

    (dvc_sample_repo / "data" / "raw" / "real" / "ffhq_like" / "extra.png").write_bytes(
        next((dvc_sample_repo / "data" / "raw" / "real" / "ffhq_like").glob("*.png")).read_bytes()
    )
    track_raw_dir(dvc_sample_repo / "data" / "raw", dvc_sample_repo / "data.dvc", note="DFFD")
    tracked = read_dvc_file(dvc_sample_repo / "data.dvc")
    assert tracked.sample_meta is None
    assert tracked.md5 == dvc_tree_md5(dvc_sample_repo / "data" / "raw")
    assert "up to date" in dvc("status", "data.dvc", cwd=dvc_sample_repo).stdout
