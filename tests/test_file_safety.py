"""Fail loudly and early: --cam never writes into the data or a DVC-tracked
path, temp files never land in an out, a hostile or broken model.pt is an error naming
the file, and a mask of the wrong size is an error naming both files."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from cli_run import predict

DVC_YAML = {
    "stages": {
        "split": {"cmd": "python split.py", "deps": ["data/raw", "split.py"],
                  "outs": ["data/splits", {"metrics/split.json": {"cache": False}}]},
        "train": {"foreach": [0, 1], "do": {"cmd": "python train.py ${item}", "deps": ["data/splits"],
                                             "outs": ["models/seed${item}"]}},
    }
}


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A repository layout: dvc.yaml with a templated out, data.dvc tracking data/raw."""
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(DVC_YAML))
    (tmp_path / "data.dvc").write_text(yaml.safe_dump({"outs": [{"path": "data/raw", "md5": "0" * 32 + ".dir"}]}))
    (tmp_path / "data" / "raw" / "real").mkdir(parents=True)
    (tmp_path / "extra").mkdir()
    (tmp_path / "extra" / "more.dvc").write_text(yaml.safe_dump({"outs": [{"path": "pictures"}]}))
    return tmp_path


# ---------------------------------------------------------------- predict --cam


@pytest.mark.parametrize("folder, named", [
    ("data/raw/real/ffhq_like", "data/raw (tracked by data.dvc)"),
    ("data/raw", "data/raw (tracked by data.dvc)"),
    ("data", "the pipeline's data folder"),
    ("data/splits/cams", "data/splits (an out of stage split"),
    ("models/seed1/cams", "models/seed* (an out of stage train"),
    ("extra/pictures/x", "extra/pictures (tracked by extra/more.dvc)"),
])
def test_cam_dir_inside_data_or_a_tracked_path_is_refused(repo, folder, named):
    from robust_deepfake.inference.command import cam_dir_problem

    problem = cam_dir_problem(Path(folder), repo) if Path(folder).is_absolute() else cam_dir_problem(repo / folder, repo)
    assert problem is not None and named in problem, problem
    assert "--cam /tmp/cams" in problem


@pytest.mark.parametrize("folder", ["cams", "models", "reports/mine", "metrics/other"])
def test_cam_dir_elsewhere_is_fine(repo, folder):
    from robust_deepfake.inference.command import cam_dir_problem

    assert cam_dir_problem(repo / folder, repo) is None


def test_cam_dir_through_a_symlink_into_the_data_is_refused(repo):
    from robust_deepfake.inference.command import cam_dir_problem

    (repo / "shortcut").symlink_to(repo / "data" / "raw" / "real")
    assert "data/raw (tracked by data.dvc)" in cam_dir_problem(repo / "shortcut", repo)


def test_predict_refuses_a_tracked_cam_dir_before_loading_anything(repo, monkeypatch, capsys):
    image = repo / "x.png"
    Image.new("RGB", (8, 8)).save(image)
    monkeypatch.chdir(repo)
    code, out, err = predict([str(image), "-m", "models/nope/model.pt", "--cam", "data/raw/real"], capsys)
    assert code == 2 and out == ""
    assert err.startswith("error: --cam data/raw/real: is inside ") and "training and test images" in err
    assert "Traceback" not in err and not list((repo / "data").rglob("*_cam.png"))


def test_predict_cam_pointing_at_a_file_is_an_error(repo, monkeypatch, capsys):
    image = repo / "x.png"
    Image.new("RGB", (8, 8)).save(image)
    monkeypatch.chdir(repo)
    code, _, err = predict([str(image), "-m", "models/nope/model.pt", "--cam", "x.png"], capsys)
    assert code == 2 and "error: --cam x.png: is a file" in err and "Traceback" not in err
    code, _, err = predict([str(image), "-m", "models/nope/model.pt", "--cam", "x.png/sub"], capsys)
    assert code == 2 and "is a file, so this folder cannot be created" in err


# ---------------------------------------------------------------- temp files of the atomic writers


def test_temp_files_live_in_the_repo_cache_not_in_the_out(repo):
    from robust_deepfake.io import atomic_path, write_json

    target = repo / "metrics" / "split.json"
    with atomic_path(target) as tmp:
        assert tmp.parent == repo / ".cache" / "tmp"
        assert not any(p.name != "split.json" for p in target.parent.iterdir())
        tmp.write_text("{}")
    assert target.read_text() == "{}" and not list((repo / ".cache" / "tmp").iterdir())
    write_json(repo / "models" / "seed0" / "meta.json", {"a": 1})
    assert [p.name for p in (repo / "models" / "seed0").iterdir()] == ["meta.json"]


def test_a_killed_write_leaves_nothing_in_the_out_folder(repo):
    script = (
        "import os, signal, sys\n"
        "from robust_deepfake.io import atomic_path\n"
        "with atomic_path(sys.argv[1]) as tmp:\n"
        "    tmp.write_bytes(b'half')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    target = repo / "models" / "seed0" / "model.pt"
    result = subprocess.run([sys.executable, "-c", script, str(target)], cwd=repo)
    assert result.returncode == -9
    assert list(target.parent.iterdir()) == [], "nothing inside the out folder"
    assert len(list((repo / ".cache" / "tmp").iterdir())) == 1, "the orphan is in .cache/tmp"


def test_outside_a_repository_the_temp_goes_beside_the_target(tmp_path):
    from robust_deepfake.io import temp_dir_for

    assert temp_dir_for(tmp_path / "out" / "x.json") == tmp_path / "out"


def test_a_replace_across_mounts_falls_back_to_a_temp_beside_the_target(repo, monkeypatch):
    """One filesystem, two mounts (bind mounts share st_dev): os.replace says EXDEV."""
    import robust_deepfake.io as io

    real_replace = os.replace

    def replace(src, dst):
        if Path(src).parent == repo / ".cache" / "tmp":
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return real_replace(src, dst)

    monkeypatch.setattr(io.os, "replace", replace)
    io.write_json(repo / "metrics" / "m.json", {"a": 2})
    assert json.loads((repo / "metrics" / "m.json").read_text()) == {"a": 2}
    assert [p.name for p in (repo / "metrics").iterdir()] == ["m.json"]
    assert not list((repo / ".cache" / "tmp").iterdir())


# ---------------------------------------------------------------- hostile or broken model.pt


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > pwned.txt",))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A real detector checkpoint (random weights) with its meta.json."""
    from robust_deepfake.config import ModelConfig
    from robust_deepfake.model.detector import build_detector, save_weights

    folder = tmp_path_factory.mktemp("model")
    config = ModelConfig()
    save_weights(build_detector(config, split_at=2), folder / "model.pt")
    meta = {"detector": {"model": config.model_dump(mode="json"), "split_at": 2, "image_size": 32}}
    (folder / "meta.json").write_text(json.dumps(meta))
    return folder


@pytest.mark.parametrize("kind, expected", [
    ("pickle", "refused: the file holds pickled objects"),
    ("truncated", "not a readable PyTorch checkpoint, truncated or corrupt"),
    ("text", "not a readable PyTorch checkpoint"),
    ("empty", "empty file (0 bytes)"),
    ("list", "holds a list, not a state dict of tensors"),
    ("foreign", "does not fit the detector its meta.json describes"),
])
def test_a_hostile_or_broken_model_file_is_an_error_naming_it(kind, expected, checkpoint, tmp_path, monkeypatch,
                                                               capsys):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "meta.json").write_bytes((checkpoint / "meta.json").read_bytes())
    weights = folder / "model.pt"
    if kind == "pickle":
        torch.save({"x": _Evil()}, weights)
    elif kind == "truncated":
        weights.write_bytes((checkpoint / "model.pt").read_bytes()[:50_000])
    elif kind == "text":
        weights.write_text("hello, I am not a model\n")
    elif kind == "empty":
        weights.write_bytes(b"")
    elif kind == "list":
        torch.save([1, 2, 3], weights)
    else:
        torch.save({"layer.weight": torch.zeros(3)}, weights)
    image = tmp_path / "x.png"
    Image.new("RGB", (8, 8)).save(image)
    monkeypatch.chdir(tmp_path)
    code, out, err = predict([str(image), "-m", str(weights)], capsys)
    assert code == 2 and out == ""
    assert err.startswith(f"error: {weights}: ") and expected in err, err
    assert "Traceback" not in err and not (tmp_path / "pwned.txt").exists()


def test_a_broken_meta_json_is_an_error_naming_it(checkpoint, tmp_path, monkeypatch, capsys):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "model.pt").write_bytes((checkpoint / "model.pt").read_bytes())
    (folder / "meta.json").write_text("{not json")
    image = tmp_path / "x.png"
    Image.new("RGB", (8, 8)).save(image)
    monkeypatch.chdir(tmp_path)
    code, _, err = predict([str(image), "-m", str(folder)], capsys)
    assert code == 2 and f"error: {folder / 'meta.json'}: not a detector meta.json" in err


def test_a_good_checkpoint_still_loads(checkpoint):
    from robust_deepfake.model.detector import load_trained

    model, meta = load_trained(checkpoint)
    assert meta["detector"]["image_size"] == 32 and not model.training


def test_stages_report_a_broken_checkpoint_as_a_stage_error(checkpoint, tmp_path):
    from robust_deepfake.errors import StageError
    from robust_deepfake.model.detector import load_trained

    (tmp_path / "meta.json").write_bytes((checkpoint / "meta.json").read_bytes())
    (tmp_path / "model.pt").write_bytes(b"garbage")
    with pytest.raises(StageError, match="model.pt: not a readable PyTorch checkpoint"):
        load_trained(tmp_path)


# ---------------------------------------------------------------- masks of the wrong size


def _mask_for_first_fake(raw: Path) -> tuple[Path, Path]:
    mask = sorted((raw / "masks").rglob("*.png"))[0]
    image = next((raw / "fake" / mask.parent.name).glob(mask.stem + ".*"))
    return image, mask


def test_a_mask_of_another_size_is_an_error_naming_both_files(raw_copy):
    from robust_deepfake.data.images import MaskSizeError, load_mask_array

    image, mask = _mask_for_first_fake(raw_copy)
    Image.new("L", (20, 16), 255).save(mask)
    with pytest.raises(MaskSizeError) as info:
        load_mask_array(mask, 32, image_path=image)
    message = str(info.value)
    assert f"{mask}: mask is 20x16 px but its image {image} is 32x32 px" in message
    assert load_mask_array(mask, 8).shape == (8, 8)  # without the image: resized, no size check


def test_the_split_refuses_a_mismatched_mask_or_skips_it_when_told(raw_copy):
    from robust_deepfake.config import SplitConfig
    from robust_deepfake.data.images import MaskSizeError
    from robust_deepfake.data.split import build_splits

    image, mask = _mask_for_first_fake(raw_copy)
    Image.new("L", (64, 64), 255).save(mask)
    with pytest.raises(MaskSizeError, match=r"1 mask\(s\) under .* differ in size") as info:
        build_splits(str(raw_copy), SplitConfig(), "error", progress=False)
    assert f"{mask}: mask is 64x64 px but its image {image} is 32x32 px" in str(info.value)
    outcome = build_splits(str(raw_copy), SplitConfig(), "skip", progress=False)
    assert len(outcome.bad_files) == 1 and "64x64" in outcome.bad_files[0]
    assert image.as_posix() not in {r.path for records in outcome.result.assignment.values() for r in records}


def test_the_cam_subset_refuses_a_mismatched_mask(raw_copy):
    from robust_deepfake.data.dataset import ImageSet, SplitRow
    from robust_deepfake.data.images import MaskSizeError

    image, mask = _mask_for_first_fake(raw_copy)
    Image.fromarray(np.full((10, 10), 255, np.uint8)).save(mask)
    images = ImageSet([SplitRow(str(image), 1, "x", "g", str(mask))], image_size=16, cache=False)
    with pytest.raises(MaskSizeError, match="10x10"):
        images.masks(torch.tensor([0]))
