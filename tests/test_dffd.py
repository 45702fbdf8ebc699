"""DFFD ingest on a tiny tree shaped like the real download (see ../shared/DFFD.md)."""

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import dvc
from robust_deepfake.config import SplitConfig
from robust_deepfake.data.dffd import IngestError, ingest_dffd
from robust_deepfake.data.layout import scan
from robust_deepfake.data.split import split_records


def _image(path: Path, size=(30, 30), seed=0, fmt="PNG"):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = (np.random.default_rng(seed).random((size[1], size[0], 3)) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(path, format=fmt)


@pytest.fixture
def dffd_tree(tmp_path) -> Path:
    root = tmp_path / "DFFD"
    seed = 0
    for split, n in [("train", 4), ("validation", 1), ("test", 3)]:
        for i in range(n):
            seed += 1
            _image(root / "ffhq" / split / f"R_FFHQ_{split[:2]}{i:03d}.png", seed=seed)
            _image(root / "stylegan_ffhq" / split / f"F_SyFQ_{split[:2]}{i:03d}.png", seed=seed + 100)
            for k in (1, 2):  # two edits of one source face: one identity
                _image(root / "faceapp" / split / f"F_FAP0_{split[:2]}{i:03d}-{k}.png", seed=seed + 200 + k)
    for i in range(5):
        _image(root / "CelebA" / "img_align_celeba" / f"R_celeba_{i:06d}.jpg", size=(178, 218), seed=500 + i, fmt="JPEG")
    (root / "faceapp" / "train" / "Thumbs.db").write_bytes(b"junk")  # not an image suffix: ignored
    return root


def test_ingest_builds_the_raw_layout_and_keeps_the_official_split(dffd_tree, tmp_path):
    out = tmp_path / "raw"
    report = ingest_dffd(dffd_tree, out, mode="symlink")
    assert (out / "real" / "ffhq" / "R_FFHQ_tr000.png").is_symlink()
    assert (out / "real" / "celeba" / "R_celeba_000000.jpg").exists()
    assert (out / "fake" / "faceapp" / "F_FAP0_te002-2.png").exists()
    # whole-image synthesis gets all-ones masks, partial edits none
    mask = np.asarray(Image.open(out / "masks" / "stylegan_ffhq" / "F_SyFQ_tr000.png"))
    assert mask.shape == (30, 30) and mask.min() == 255
    assert not (out / "masks" / "faceapp").exists()
    assert report.masks_written == 8

    records, _ = scan(out)
    assert len(records) == 8 * 4 + 5
    by_path = {Path(r.path).name: r for r in records}
    assert by_path["F_FAP0_tr000-1.png"].group == by_path["F_FAP0_tr000-2.png"].group
    assert by_path["R_FFHQ_va000.png"].official_split == "val"
    assert by_path["R_celeba_000000.jpg"].official_split == ""

    assignment = split_records(records, SplitConfig(seed=0, val_fraction=0.2, test_fraction=0.3)).assignment
    where = {Path(r.path).name: split for split, rs in assignment.items() for r in rs}
    for name, record in by_path.items():
        if record.official_split:
            assert where[name] == record.official_split, name
    celeba = {where[n] for n in by_path if n.startswith("R_celeba")}
    assert celeba <= {"train", "val", "test"}


def test_ingest_copy_with_resize(dffd_tree, tmp_path):
    out = tmp_path / "raw"
    ingest_dffd(dffd_tree, out, mode="copy", resize=24)
    image = Image.open(out / "real" / "celeba" / "R_celeba_000003.png")
    assert image.size == (24, 24) and not (out / "real" / "celeba" / "R_celeba_000003.png").is_symlink()
    with (out / "metadata.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert {row["split"] for row in rows} == {"train", "val", "test", ""}


def test_ingest_refuses_to_overwrite(dffd_tree, tmp_path):
    out = tmp_path / "raw"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(IngestError, match="exists"):
        ingest_dffd(dffd_tree, out)
    ingest_dffd(dffd_tree, out, force=True)
    backups = list(tmp_path.glob("raw.bak-*"))
    assert len(backups) == 1 and (backups[0] / "precious.txt").read_text() == "keep me"


def test_ingest_needs_both_classes(tmp_path):
    _image(tmp_path / "only" / "ffhq" / "train" / "R_FFHQ_0.png")
    with pytest.raises(IngestError, match="need both real and fake"):
        ingest_dffd(tmp_path / "only", tmp_path / "raw")
    assert not (tmp_path / "raw").exists(), "a failed ingest leaves nothing behind"


def test_cli_prints_the_next_steps(dffd_tree, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "robust_deepfake.cli", "data", "ingest-dffd", str(dffd_tree), "--out", str(tmp_path / "raw")],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "robust-deepfake data track" in result.stdout
    assert "configs/dffd_gpu.yaml" in result.stdout


def test_ingest_outputs_follow_the_umask(dffd_tree, tmp_path):
    import os
    import stat

    previous = os.umask(0o022)
    try:
        ingest_dffd(dffd_tree, tmp_path / "raw", mode="copy")
    finally:
        os.umask(previous)
    out = tmp_path / "raw"
    assert stat.S_IMODE((out / "metadata.csv").stat().st_mode) == 0o644
    assert stat.S_IMODE((out / "masks" / "stylegan_ffhq" / "F_SyFQ_tr000.png").stat().st_mode) == 0o644


def _bytes_on_disk(*roots: Path) -> int:
    """Bytes of the distinct files (inodes) under `roots`: a hard link counts once, a
    symlink not at all (its target is counted where it lives)."""
    import os

    sizes: dict[tuple[int, int], int] = {}
    for root in roots:
        for path in root.rglob("*"):
            info = os.lstat(path)
            if path.is_file() and not path.is_symlink():
                sizes[(info.st_dev, info.st_ino)] = info.st_size
    return sum(sizes.values())


@pytest.fixture
def dffd_repo(tmp_path, dffd_tree) -> Path:
    """A git+dvc repo with a DFFD download beside it, as a user would set it up."""
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    assert dvc("init", "-q", cwd=repo).returncode == 0
    return repo


def test_ingest_and_track_keep_one_copy_on_disk(dffd_tree, dffd_repo):
    from robust_deepfake.data.materialize import LINK_CACHE_TYPES, dvc_tree_md5, read_dvc_file, track_raw_dir

    dataset = _bytes_on_disk(dffd_tree)
    raw, cache = dffd_repo / "data" / "raw", dffd_repo / ".dvc" / "cache"
    ingest_dffd(dffd_tree, raw)  # symlinks
    message = track_raw_dir(raw, dffd_repo / "data.dvc", note="DFFD")
    assert LINK_CACHE_TYPES in message
    assert dvc("config", "--local", "cache.type", cwd=dffd_repo, check=False).stdout.strip() == LINK_CACHE_TYPES

    # The download, data/raw and the cache share one copy (+ masks, metadata.csv and the
    # cache's directory listing, a few % here); DVC's default would be 2x in the repo.
    assert _bytes_on_disk(raw, cache) <= 1.1 * dataset
    assert _bytes_on_disk(dffd_tree, raw, cache) <= 1.1 * dataset
    image = raw / "real" / "ffhq" / "R_FFHQ_tr000.png"
    assert image.stat().st_nlink >= 2 and not (image.stat().st_mode & 0o222), "a read-only link into the cache"
    assert read_dvc_file(dffd_repo / "data.dvc").md5 == dvc_tree_md5(raw)
    assert "up to date" in dvc("status", "data.dvc", cwd=dffd_repo).stdout

    # the data survives without the download: `dvc checkout` restores it from the cache
    import shutil

    shutil.rmtree(dffd_tree)
    shutil.rmtree(raw)
    assert dvc("checkout", "-q", "data.dvc", cwd=dffd_repo).returncode == 0
    assert read_dvc_file(dffd_repo / "data.dvc").md5 == dvc_tree_md5(raw)
    assert _bytes_on_disk(raw, cache) <= 1.1 * dataset


def test_track_leaves_a_configured_cache_type_alone(dffd_tree, dffd_repo):
    from robust_deepfake.data.materialize import track_raw_dir

    assert dvc("config", "cache.type", "copy", cwd=dffd_repo).returncode == 0
    dataset = _bytes_on_disk(dffd_tree)
    raw, cache = dffd_repo / "data" / "raw", dffd_repo / ".dvc" / "cache"
    ingest_dffd(dffd_tree, raw)
    assert "configured; left as it is" in track_raw_dir(raw, dffd_repo / "data.dvc")
    assert dvc("config", "--local", "cache.type", cwd=dffd_repo, check=False).stdout.strip() == ""
    assert _bytes_on_disk(raw, cache) >= 1.9 * dataset, "with copies, data/raw and the cache each hold the data"
