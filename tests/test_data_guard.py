"""The data guard: data/raw that differs from what data.dvc records at git
HEAD is split only when `robust-deepfake data track` accepted it. `dvc repro` re-records
data.dvc by itself when data/raw changes, so without the guard a stray file (e.g. a
`predict --cam` overlay) silently became a training image."""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import pytest
import yaml

from robust_deepfake.data.materialize import (
    ACCEPTED_FILE,
    UnacceptedDataError,
    check_data_accepted,
    committed_md5,
    ensure_raw_data,
    read_dvc_file,
    track_raw_dir,
)

from helpers import dvc, git_commit, run


@pytest.fixture
def data_repo(dvc_sample_repo) -> Path:
    """A git + dvc repo whose committed data.dvc tracks the tiny sample (a fresh clone)."""
    (dvc_sample_repo / ".gitignore").write_text("/.cache/\n")
    git_commit(dvc_sample_repo, "data")
    return dvc_sample_repo


def _png(root: Path, relative: str) -> Path:
    """A new image under data/raw: a real sample image with one pixel changed (an exact
    copy would be refused by the split's duplicate check)."""
    from PIL import Image

    source = next((root / "data" / "raw" / "real").rglob("*.png"))
    target = root / "data" / "raw" / relative
    image = Image.open(source).convert("RGB")
    red, green, blue = image.getpixel((0, 0))
    image.putpixel((0, 0), ((red + 1) % 256, green, blue))
    image.save(target)
    return target


def _check(root: Path) -> str | None:
    return check_data_accepted(root / "data" / "raw", root / "data.dvc")


def test_committed_data_passes_without_any_record(data_repo):
    assert committed_md5(data_repo / "data.dvc") == read_dvc_file(data_repo / "data.dvc").md5
    assert _check(data_repo) is None
    assert not (data_repo / ACCEPTED_FILE).exists()


def test_a_new_png_is_refused_with_its_name_and_the_two_ways_out(data_repo):
    _png(data_repo, "real/ffhq_like/id00001_cam.png")
    with pytest.raises(UnacceptedDataError) as info:
        _check(data_repo)
    message = str(info.value)
    assert "new (1):" in message and "real/ffhq_like/id00001_cam.png" in message
    assert "robust-deepfake data track" in message and "git checkout data.dvc" in message
    assert "changed" not in message.split("To use")[0]


def test_changed_and_removed_files_are_named(data_repo):
    raw = data_repo / "data" / "raw"
    changed = sorted((raw / "fake").rglob("*.png"))[0]
    changed.chmod(0o644)
    changed.write_bytes(b"not the committed bytes")
    removed = sorted((raw / "real").rglob("*.png"))[-1]
    removed.unlink()
    with pytest.raises(UnacceptedDataError) as info:
        _check(data_repo)
    message = str(info.value)
    assert "changed (1):" in message and changed.relative_to(raw).as_posix() in message
    assert "removed (1):" in message and removed.relative_to(raw).as_posix() in message


def test_track_accepts_exactly_the_data_it_recorded(data_repo):
    _png(data_repo, "real/ffhq_like/extra.png")
    track_raw_dir(data_repo / "data" / "raw", data_repo / "data.dvc", note="more data", link_cache=False)
    assert "not yet committed" in _check(data_repo)  # accepted: the split goes on, and says so
    _png(data_repo, "real/ffhq_like/extra2.png")  # a later change is a new decision
    with pytest.raises(UnacceptedDataError, match="extra2.png"):
        _check(data_repo)
    (data_repo / "data" / "raw" / "real" / "ffhq_like" / "extra2.png").unlink()
    git_commit(data_repo, "more data")
    (data_repo / ACCEPTED_FILE).unlink()
    assert _check(data_repo) is None  # committed: no record needed any more


def test_ensure_does_not_call_data_that_dvc_rerecorded_a_match(data_repo):
    """`dvc commit` (what `dvc repro` does to data.dvc) records the new file; `data ensure`
    then refuses instead of reporting 'already matches'. The undo it names works."""
    new = _png(data_repo, "real/ffhq_like/id00002_cam.png")
    dvc("commit", "-f", "-q", "data.dvc", cwd=data_repo)
    assert committed_md5(data_repo / "data.dvc") != read_dvc_file(data_repo / "data.dvc").md5
    with pytest.raises(UnacceptedDataError) as info:
        ensure_raw_data(data_repo / "data.dvc", log=lambda *_: None)
    assert "git HEAD records" in str(info.value) and "id00002_cam.png" in str(info.value)
    run(["git", "checkout", "data.dvc"], data_repo)
    dvc("checkout", "data.dvc", cwd=data_repo)
    assert not new.exists()
    assert "already matches" in ensure_raw_data(data_repo / "data.dvc", log=lambda *_: None)
    assert _check(data_repo) is None


def test_ensure_names_files_that_differ_from_data_dvc(data_repo):
    _png(data_repo, "real/ffhq_like/stray.png")
    with pytest.raises(Exception, match=r"(?s)differs from .*new \(1\):.*stray.png.*robust-deepfake data track"):
        ensure_raw_data(data_repo / "data.dvc", log=lambda *_: None)


def test_without_the_manifest_in_the_cache_it_says_so_and_names_recent_files(data_repo):
    shutil.rmtree(data_repo / ".dvc" / "cache")
    new = _png(data_repo, "real/ffhq_like/late.png")
    later = time.time() + 10
    os.utime(new, (later, later))
    with pytest.raises(UnacceptedDataError) as info:
        _check(data_repo)
    message = str(info.value)
    assert "is not in the DVC cache" in message and "late.png" in message


def test_outside_git_and_before_the_first_commit_everything_is_accepted(tmp_path, tiny_raw):
    shutil.copytree(tiny_raw, tmp_path / "data" / "raw")
    (tmp_path / "data.dvc").write_text(yaml.safe_dump({"outs": [{"path": "data/raw", "md5": "0" * 32 + ".dir"}]}))
    assert _check(tmp_path) is None  # not a git repository
    run(["git", "init", "-q"], tmp_path)
    assert _check(tmp_path) is None  # no commit yet


def test_split_stage_refuses_before_reading_the_data(data_repo, monkeypatch):
    from robust_deepfake.config import validate
    from robust_deepfake.pipeline.split import split

    _png(data_repo, "real/ffhq_like/x_cam.png")
    monkeypatch.chdir(data_repo)
    params = validate({"data": {"raw_dir": "data/raw"}})
    with pytest.raises(UnacceptedDataError, match="x_cam.png"):
        split(params, data_repo)
    assert not (data_repo / "data" / "splits").exists()


def test_dvc_repro_refuses_an_added_png_until_it_is_tracked(new_micro_repo, tmp_path):
    """An added PNG is refused until `data track` accepts it, through the real CLIs on a
    micro copy of the repo."""
    root = new_micro_repo(tmp_path / "repo")
    stray = _png(root, "real/ffhq_like/id00000_cam.png")
    result = dvc("repro", "split", cwd=root, check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "error: data/raw hashes to" in output and stray.relative_to(root).as_posix() in output
    assert "robust-deepfake data track data/raw" in output
    assert not (root / "data" / "splits").exists()
    ensure = run([sys.executable, "-m", "robust_deepfake.cli", "data", "ensure"], root, check=False)
    assert ensure.returncode != 0 and "already matches" not in ensure.stdout, ensure.stdout
    run([sys.executable, "-m", "robust_deepfake.cli", "data", "track", "data/raw"], root)
    result = dvc("repro", "split", cwd=root)
    assert "not yet committed" in result.stdout
    assert (root / "data" / "splits" / "train.csv").exists()
