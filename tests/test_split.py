"""Split rules: identity-disjoint, stratified, seeded, held-out methods, official splits,
and what happens to unreadable or unusual image files."""

import csv
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from robust_deepfake.config import SplitConfig
from robust_deepfake.data.images import load_rgb_array
from robust_deepfake.data.layout import SPLITS, scan
from robust_deepfake.data.split import BadDataError, SplitError, build_splits, split_records


def _assignment(raw, **config):
    records, _ = scan(raw)
    return split_records(records, SplitConfig(**config)).assignment


def _groups(records):
    return {r.group for r in records}


def test_groups_never_cross_splits(tiny_raw):
    assignment = _assignment(tiny_raw, seed=3)
    for a in SPLITS:
        for b in SPLITS:
            if a < b:
                assert not _groups(assignment[a]) & _groups(assignment[b])
    assert sum(len(v) for v in assignment.values()) == len(scan(tiny_raw)[0])


def test_every_source_is_stratified(full_sample):
    assignment = _assignment(full_sample, seed=0, val_fraction=0.15, test_fraction=0.25)
    totals = Counter(r.source for records in assignment.values() for r in records)
    for split, fraction in [("train", 0.6), ("val", 0.15), ("test", 0.25)]:
        counts = Counter(r.source for r in assignment[split])
        for source, total in totals.items():
            assert counts[source] / total == pytest.approx(fraction, abs=0.05), (split, source)


def test_same_seed_same_split_other_seed_differs(tiny_raw):
    first = _assignment(tiny_raw, seed=1)
    again = _assignment(tiny_raw, seed=1)
    other = _assignment(tiny_raw, seed=2)
    paths = lambda a: {s: [r.path for r in a[s]] for s in SPLITS}  # noqa: E731
    assert paths(first) == paths(again)
    assert paths(first) != paths(other)


def test_holdout_methods_only_in_test_with_their_identities(tiny_raw):
    assignment = _assignment(tiny_raw, seed=0, holdout_methods=["faceswap_like"])
    for split in ("train", "val"):
        assert not any(r.source == "faceswap_like" for r in assignment[split])
    held = [r for r in assignment["test"] if r.source == "faceswap_like"]
    assert len(held) == 12
    trained_groups = _groups(assignment["train"]) | _groups(assignment["val"])
    assert not {r.group for r in held} & trained_groups
    # the other methods are still in every split
    for split in SPLITS:
        assert {"pggan_like", "faceapp_like"} <= {r.source for r in assignment[split]}


def test_unknown_holdout_method_is_an_error(tiny_raw):
    records, _ = scan(tiny_raw)
    with pytest.raises(SplitError, match="split.holdout_methods"):
        split_records(records, SplitConfig(holdout_methods=["deepfakes"]))


def test_official_split_is_kept(raw_copy):
    records, _ = scan(raw_copy)
    rows = [{"path": Path(r.path).relative_to(raw_copy).as_posix(), "split": "test" if i % 2 else "train"}
            for i, r in enumerate(records) if r.source == "pggan_like"]
    with (raw_copy / "metadata.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, ["path", "split"])
        writer.writeheader()
        writer.writerows(rows)
    assignment = _assignment(raw_copy)
    where = {r.path: split for split, recs in assignment.items() for r in recs}
    for row in rows:
        assert where[(raw_copy / row["path"]).as_posix()] == row["split"]


def _damage(raw: Path) -> dict[str, Path]:
    folder = raw / "real" / "ffhq_like"
    victims = sorted(folder.glob("*.png"))[:3]
    victims[0].write_bytes(b"")  # zero bytes
    data = victims[1].read_bytes()
    victims[1].write_bytes(data[: len(data) // 3])  # truncated
    victims[2].write_bytes(b"this is not an image")  # garbage with an image name
    (folder / "notes.txt").write_text("hello")  # non-image file
    return {"empty": victims[0], "truncated": victims[1], "garbage": victims[2], "text": folder / "notes.txt"}


def test_bad_files_are_listed_in_the_error(raw_copy):
    damaged = _damage(raw_copy)
    with pytest.raises(BadDataError) as info:
        build_splits(str(raw_copy), SplitConfig(), on_bad_file="error", progress=False)
    message = str(info.value)
    assert "4 unreadable file(s)" in message and "on_bad_file: skip" in message
    for path in damaged.values():
        assert path.as_posix() in message
    assert "empty file" in message


def test_bad_files_can_be_skipped_and_counted(raw_copy):
    _damage(raw_copy)
    outcome = build_splits(str(raw_copy), SplitConfig(), on_bad_file="skip", progress=False)
    metrics = outcome.metrics([])
    assert metrics["skipped_bad_files"] == 4
    assert sum(metrics[s]["total"] for s in SPLITS) == 96 - 3


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16", "CMYK"])
def test_unusual_modes_become_rgb(tmp_path, mode):
    rng = np.random.default_rng(0)
    if mode == "I;16":
        image = Image.fromarray((rng.random((20, 20)) * 65535).astype(np.uint16))
        assert image.mode.startswith("I;16")
    else:
        image = Image.fromarray((rng.random((20, 20, 3)) * 255).astype(np.uint8)).convert(mode)
    path = tmp_path / ("x.tif" if mode == "CMYK" else "x.png")
    image.save(path)
    array = load_rgb_array(path, 16)
    assert array.shape == (16, 16, 3) and array.dtype == np.uint8
    if mode == "I;16":
        assert 60 < array.mean() < 200, "16-bit must be rescaled, not clipped to white"


def test_split_stage_writes_csvs_and_metrics(raw_copy, repo_root, tmp_path):
    params = yaml.safe_load((repo_root / "params.yaml").read_text())
    params["data"]["raw_dir"] = str(raw_copy)
    params["data"]["splits_dir"] = str(tmp_path / "splits")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    result = subprocess.run(
        [sys.executable, str(repo_root / "stages" / "split.py"), "--params", "params.yaml"],
        cwd=tmp_path, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    import json

    metrics = json.loads((tmp_path / "metrics" / "split.json").read_text())
    for split in SPLITS:
        with (tmp_path / "splits" / f"{split}.csv").open() as handle:
            rows = list(csv.DictReader(handle))
        assert list(rows[0]) == ["path", "label", "source", "group", "mask_path"]
        assert len(rows) == metrics[split]["total"]
