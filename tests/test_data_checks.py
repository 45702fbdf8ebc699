"""The split's content checks: exact copies (by bytes) within and across classes, images
under data.min_image_size, near-duplicate pictures across splits (a 256-bit dHash, checked
against a brute-force search), their counts in metrics/split.json and the report, and
the bundled sample, which passes them."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from robust_deepfake.config import SplitConfig, validate
from robust_deepfake.data.duplicates import Fingerprint, near_duplicates_across_splits
from robust_deepfake.data.fingerprint import NEAR_DUPLICATE_MAX_BITS, dhash, hamming, near_duplicate_pairs
from robust_deepfake.data.layout import SPLITS, Record, scan
from robust_deepfake.data.split import DuplicateImageError, SmallImageError, build_splits
from robust_deepfake.pipeline.split import format_summary, split
from robust_deepfake.report.document import data_checks


def _records(outcome) -> list[Record]:
    return [r for split_name in SPLITS for r in outcome.result.assignment[split_name]]


def _first(raw: Path, folder: str) -> Path:
    return sorted((raw / folder).glob("*.png"))[0]


def test_a_copy_in_the_other_class_is_refused_and_skipped_whole(raw_copy):
    real = _first(raw_copy, "real/ffhq_like")
    copy = raw_copy / "fake" / "stylegan_like" / "copied.png"
    shutil.copy(real, copy)
    with pytest.raises(DuplicateImageError) as info:
        build_splits(str(raw_copy), SplitConfig(), "error", progress=False)
    message = str(info.value)
    assert "1 group(s) of identical files" in message and "on_bad_file: skip" in message
    assert f"{copy.as_posix()} (fake) = {real.as_posix()} (real)" in message
    outcome = build_splits(str(raw_copy), SplitConfig(), "skip", progress=False)
    kept = {r.path for r in _records(outcome)}
    assert real.as_posix() not in kept and copy.as_posix() not in kept  # neither label can be trusted
    metrics = outcome.metrics([])
    assert metrics["exact_duplicates"]["groups"] == 1 and metrics["exact_duplicates"]["label_conflicts"] == 1
    assert metrics["exact_duplicates"]["dropped"] == 2


def test_copies_in_one_class_keep_one_copy_in_one_split(raw_copy):
    fakes = sorted((raw_copy / "fake" / "pggan_like").glob("*.png"))
    copies = [fakes[0].with_name(f"zz_copy{k}.png") for k in range(3)]
    for copy in copies:
        shutil.copy(fakes[0], copy)
    with pytest.raises(DuplicateImageError, match=r"1 group\(s\) of identical files"):
        build_splits(str(raw_copy), SplitConfig(), "error", progress=False)
    outcome = build_splits(str(raw_copy), SplitConfig(), "skip", progress=False)
    where = [name for name in SPLITS for r in outcome.result.assignment[name]
             if r.path in {fakes[0].as_posix(), *(c.as_posix() for c in copies)}]
    assert where and len(where) == 1, where
    assert outcome.metrics([])["exact_duplicates"] | {"files": None} == {
        "groups": 1, "dropped": 3, "label_conflicts": 0, "files": None}
    assert "skipped 3 duplicate file(s)" in format_summary(outcome.metrics([]))


def test_an_image_under_the_minimum_size_is_refused_or_skipped(raw_copy):
    tiny = raw_copy / "real" / "ffhq_like" / "one_pixel.png"
    Image.new("RGB", (1, 1), (128, 64, 32)).save(tiny)
    with pytest.raises(SmallImageError) as info:
        build_splits(str(raw_copy), SplitConfig(), "error", progress=False)
    assert f"{tiny.as_posix()}: 1x1 px, under data.min_image_size (16 px on a side)" in str(info.value)
    outcome = build_splits(str(raw_copy), SplitConfig(), "skip", progress=False)
    metrics = outcome.metrics([])
    assert metrics["skipped_small_images"] == 1 and metrics["min_image_size"] == 16
    assert tiny.as_posix() not in {r.path for r in _records(outcome)}
    # the threshold is a param: the tiny sample's 32 px images are refused at 33
    with pytest.raises(SmallImageError, match="under data.min_image_size \\(33 px"):
        build_splits(str(raw_copy), SplitConfig(), "error", progress=False, min_image_size=33)


def test_the_split_stage_reads_min_image_size_from_params(raw_copy, tmp_path, monkeypatch):
    raw = tmp_path / "data" / "raw"
    raw.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(raw_copy, raw)
    monkeypatch.chdir(tmp_path)
    params = validate({"data": {"raw_dir": "data/raw", "min_image_size": 40, "on_bad_file": "error"}})
    with pytest.raises(SmallImageError, match="data.min_image_size \\(40 px"):
        split(params, tmp_path)


def _copy_of(image: Image.Image, how: str) -> Image.Image:
    if how == "jpeg":
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=90)
        return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    if how == "brighter":
        return ImageEnhance.Brightness(image).enhance(1.05)
    return image.resize((image.width * 3, image.height * 3), Image.Resampling.BICUBIC)


@pytest.mark.parametrize("how", ["jpeg", "brighter", "upscaled"])
def test_a_re_encoded_copy_is_a_near_duplicate_and_another_face_is_not(tiny_raw, how):
    records, _ = scan(tiny_raw)
    reals = [r for r in records if r.label == 0]
    original = Image.open(reals[0].path).convert("RGB")
    distance = int(hamming(dhash(original), dhash(_copy_of(original, how))))
    assert distance <= NEAR_DUPLICATE_MAX_BITS, distance
    others = [int(hamming(dhash(original), dhash(Image.open(r.path)))) for r in reals[1:]]
    assert min(others) > NEAR_DUPLICATE_MAX_BITS, min(others)


@pytest.mark.parametrize("max_bits", [0, 3, 20])
def test_the_banded_search_finds_what_brute_force_finds(max_bits):
    rng = np.random.default_rng(max_bits)
    left = rng.integers(0, 256, (300, 32), dtype=np.uint8)
    right = rng.integers(0, 256, (200, 32), dtype=np.uint8)
    for k in range(40):  # planted pairs at 0 .. max_bits + 3 bits
        flipped = np.unpackbits(left[k]).copy()
        flipped[rng.choice(256, size=k % (max_bits + 4), replace=False)] ^= 1
        right[k] = np.packbits(flipped)
    right[50] = right[51] = left[60]  # one picture twice on one side
    distances = hamming(left[:, None, :], right[None, :, :])
    brute = sorted((int(i), int(j), int(distances[i, j])) for i, j in zip(*np.nonzero(distances <= max_bits),
                                                                          strict=True))
    assert near_duplicate_pairs(left, right, max_bits) == brute
    assert len(brute) >= 12


def test_near_duplicates_are_counted_per_pair_of_splits():
    def record(name: str) -> Record:
        return Record(path=name, label=0, source="s", group=name, mask_path="")

    base = np.zeros(32, np.uint8)
    near = base.copy()
    near[0] = 0b111  # 3 bits away
    far = np.full(32, 0xFF, np.uint8)
    prints = {name: Fingerprint(name, value) for name, value in
              [("a", base), ("b", near), ("c", far), ("d", base)]}
    assignment = {"train": [record("a"), record("c")], "val": [record("b")], "test": [record("d")]}
    found = near_duplicates_across_splits(assignment, prints)
    assert found.across == {"train/val": 1, "train/test": 1, "val/test": 1}
    assert found.examples[0] == "a ~ d (0 bits)" and len(found.examples) == 3


def test_the_report_line_shows_the_counts(raw_copy):
    fakes = sorted((raw_copy / "fake" / "pggan_like").glob("*.png"))
    shutil.copy(fakes[0], fakes[0].with_name("zz_copy.png"))
    outcome = build_splits(str(raw_copy), SplitConfig(), "skip", progress=False)
    (paragraph,) = data_checks(outcome.metrics([]))
    assert "0 image(s) under 16 px left out; 1 exact duplicate file(s) left out (1 group(s) of identical files, " \
           "0 with both labels); near-duplicates across splits (dHash, 256 bits, within 20 bits): train/val " in \
           paragraph.text
    assert data_checks({"train": {}}) == []  # a split.json from before the checks


def test_the_bundled_sample_passes_the_checks(full_sample):
    outcome = build_splits(str(full_sample), SplitConfig(), "error", progress=False)
    metrics = outcome.metrics([])
    assert metrics["exact_duplicates"]["groups"] == 0 and metrics["skipped_small_images"] == 0
    # measured: the generator's distinct faces are at least 22 bits apart, so none is reported
    assert metrics["near_duplicates"]["across_splits"] == {"train/val": 0, "train/test": 0, "val/test": 0}
