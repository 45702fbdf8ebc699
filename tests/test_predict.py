"""`robust-deepfake predict`: model references, odd and broken images, folders, --json, --cam.

Most tests call the CLI in-process (cli.main) inside the micro repo; one runs the real
console script. None of them writes into the micro repo: images, CAM folders and the
MLflow database copy live in tmp_path.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import run
from robust_deepfake.data.images import open_rgb
from robust_deepfake.inference.inputs import collect_images
from robust_deepfake.inference.model_ref import default_model_uri
from robust_deepfake.explain.figures import side_by_side_size
from robust_deepfake.inference.scoring import CamWriter
from robust_deepfake.paths import ModelKey, TrainOutputs
from cli_run import predict

MODEL = "robust-deepfake-detector"
BASELINE = f"models:/{MODEL}@baseline"
MODEL_URI = f"models:/{MODEL}@champion"
SEED = 0  # the first of train.seeds (the micro profile keeps the default seeds)


@pytest.fixture
def isolated_mlflow(monkeypatch: pytest.MonkeyPatch):
    """mlflow.set_tracking_uri also exports MLFLOW_TRACKING_URI: restore the globals and the
    environment after the test so no later test talks to this test's store."""
    import mlflow.tracking._model_registry.utils as registry_utils
    import mlflow.tracking._tracking_service.utils as tracking_utils

    monkeypatch.setattr(tracking_utils, "_tracking_uri", tracking_utils._tracking_uri)
    monkeypatch.setattr(registry_utils, "_registry_uri", registry_utils._registry_uri)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    return monkeypatch


@pytest.fixture
def in_micro(micro_repo: Path, isolated_mlflow: pytest.MonkeyPatch) -> Path:
    isolated_mlflow.chdir(micro_repo)
    isolated_mlflow.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{micro_repo / 'mlflow.db'}")
    return micro_repo


@pytest.fixture
def registry_copy(micro_repo: Path, tmp_path: Path, isolated_mlflow: pytest.MonkeyPatch):
    """A client of a copy of the micro registry (tests may move its aliases and tags), with
    the micro repo as the working directory and the copy as the tracking store."""
    from mlflow import MlflowClient

    database = tmp_path / "mlflow.db"
    shutil.copy2(micro_repo / "mlflow.db", database)
    uri = f"sqlite:///{database}"
    isolated_mlflow.chdir(micro_repo)
    isolated_mlflow.setenv("MLFLOW_TRACKING_URI", uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def first_png(root: Path, folder: str) -> str:
    return str(sorted((root / folder).glob("*.png"))[0].relative_to(root))


def reference_p_fake(root: Path, variant: str, paths: list[str | Path]) -> np.ndarray:
    """Independent of inference/: the training decode (load_rgb_array) and the checkpoint."""
    from robust_deepfake.data.images import load_rgb_array
    from robust_deepfake.model.detector import load_trained

    model, meta = load_trained(TrainOutputs.of(root, ModelKey(variant, SEED)).model_dir)
    size = meta["detector"]["image_size"]
    batch = torch.from_numpy(np.stack([load_rgb_array(p, size) for p in paths])).permute(0, 3, 1, 2)
    return model.p_fake(batch.float() / 255).double().numpy()


def write_odd_images(folder: Path) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "grey": folder / "grey.png",
        "rgba": folder / "rgba.png",
        "odd_size": folder / "tall.jpg",
        "grey16": folder / "grey16.tif",
        "palette": folder / "palette.gif.bmp",
        "no_suffix": folder / "picture.data",  # only scored when named explicitly
        "rotated": folder / "rotated.jpeg",  # 50 x 30 stored, EXIF: display as 30 x 50
    }
    Image.fromarray(rng.integers(0, 256, (50, 70), dtype=np.uint8)).save(files["grey"])
    Image.fromarray(rng.integers(0, 256, (33, 97, 4), dtype=np.uint8), "RGBA").save(files["rgba"])
    Image.fromarray(rng.integers(0, 256, (301, 17, 3), dtype=np.uint8)).save(files["odd_size"], quality=90)
    Image.fromarray(rng.integers(0, 65536, (40, 40), dtype=np.uint16)).save(files["grey16"])
    Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).quantize(16).save(files["palette"])
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(files["no_suffix"], format="PNG")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    Image.fromarray(rng.integers(0, 256, (30, 50, 3), dtype=np.uint8)).save(files["rotated"], exif=exif.tobytes())
    (folder / "notes.txt").write_text("not an image, not an image suffix: ignored in folders")
    return files


# ---------------------------------------------------------------- no model needed


def test_default_model_is_the_champion_alias():
    from robust_deepfake.config import Params

    assert default_model_uri(Params()) == f"models:/{MODEL}@champion"


def test_collect_images_recurses_filters_suffixes_and_keeps_named_files(tmp_path):
    (tmp_path / "a" / "deep").mkdir(parents=True)
    for name in ["a/2.png", "a/1.JPG", "a/deep/3.webp", "a/readme.md", "b.bin"]:
        (tmp_path / name).write_bytes(b"x")
    cams = tmp_path / "a" / "cams"
    cams.mkdir()
    (cams / "old_cam.png").write_bytes(b"x")
    inputs = [str(tmp_path / "a"), str(tmp_path / "b.bin"), str(tmp_path / "a" / "2.png"), str(tmp_path / "nope.png"),
              str(cams)]
    files, errors, any_folder = collect_images(inputs, exclude=cams)
    assert [Path(f).relative_to(tmp_path).as_posix() for f in files] == ["a/1.JPG", "a/2.png", "a/deep/3.webp", "b.bin"]
    assert any_folder
    assert [(Path(e.path).name, e.reason.split(" (")[0]) for e in errors] == [
        ("nope.png", "no such file or directory"), ("cams", "no image files")]


def test_cam_names_are_unique_for_equal_stems(tmp_path):
    writer = CamWriter(tmp_path, "blocks.2")
    names = [writer.name_for(p).name for p in ["x/id1.png", "y/id1.png", "z/id1.jpg", "id1_2.png", "y/ID1.png"]]
    assert names == ["id1_cam.png", "id1_2_cam.png", "id1_3_cam.png", "id1_2_2_cam.png", "ID1_4_cam.png"]
    assert len({n.lower() for n in names}) == len(names)


def test_bad_threshold_and_missing_model_path_exit_2(tmp_path, isolated_mlflow, capsys):
    isolated_mlflow.chdir(tmp_path)
    image = tmp_path / "x.png"
    Image.new("RGB", (8, 8)).save(image)
    code, _, err = predict([str(image), "--threshold", "1.5", "-m", f"models/baseline/seed{SEED}/model.pt"], capsys)
    assert code == 2 and "--threshold" in err
    code, out, err = predict([str(image), "-m", "models/nope/model.pt"], capsys)
    assert code == 2 and out == ""
    assert "models/nope/model.pt: no such model file or directory" in err
    # a training output vanishes while DVC reruns its stage: the line says what to read instead
    assert f"a registered version is a copy in the MLflow store that DVC never deletes: --model {MODEL_URI}" in err


def test_variant_folder_asks_for_a_seed_folder(tmp_path, isolated_mlflow, capsys):
    isolated_mlflow.chdir(tmp_path)
    for seed in [10, 2, 0]:
        (tmp_path / "models" / "baseline" / f"seed{seed}").mkdir(parents=True)
    image = tmp_path / "x.png"
    Image.new("RGB", (8, 8)).save(image)
    code, out, err = predict([str(image), "-m", "models/baseline"], capsys)
    assert code == 2 and out == ""
    assert "models/baseline: holds one model per training seed" in err
    assert "models/baseline/seed0, models/baseline/seed2, models/baseline/seed10" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_unavailable_device_names_the_option(tmp_path, isolated_mlflow, capsys):
    isolated_mlflow.chdir(tmp_path)
    code, _, err = predict([str(tmp_path), "--device", "cuda", "-m", "models/nope/model.pt"], capsys)
    assert code == 2 and "--device is 'cuda' but CUDA is not available" in err


def test_registry_reference_without_a_store_does_not_create_one(tmp_path, isolated_mlflow, capsys):
    isolated_mlflow.chdir(tmp_path)  # no dvc.yaml above: the store would be tmp_path/mlflow.db
    image = tmp_path / "x.png"
    Image.new("RGB", (8, 8)).save(image)
    code, _, err = predict([str(image)], capsys)
    assert code == 2
    assert "no MLflow store at" in err and "--model models/<variant>/seed<k>/model.pt" in err
    assert not (tmp_path / "mlflow.db").exists()


# ---------------------------------------------------------------- on the micro repo


@pytest.mark.slow
def test_console_script_scores_files_and_folder_reports_corrupt_and_writes_cams(micro_repo, tmp_path):
    fake, real = first_png(micro_repo, "data/raw/fake/pggan_like"), first_png(micro_repo, "data/raw/real/ffhq_like")
    folder = tmp_path / "folder"
    shutil.copytree(micro_repo / "data/raw/fake/faceswap_like", folder)
    n_folder = len(list(folder.glob("*.png")))
    (folder / "corrupt.png").write_bytes((folder / sorted(p.name for p in folder.glob("*.png"))[0]).read_bytes()[:60])
    cams = tmp_path / "cams"
    script = Path(sys.executable).parent / "robust-deepfake"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "robust_deepfake.cli"]
    result = run([*command, "predict", fake, real, str(folder), "--model", BASELINE, "--cam", str(cams)],
                 micro_repo, check=False)
    assert result.returncode == 1, result.stderr
    lines = [line.split("\t") for line in result.stdout.splitlines()]
    assert len(lines) == 2 + n_folder, result.stdout
    assert [line[0] for line in lines[:2]] == [fake, real]
    for path, p_fake, label, cam in lines:
        assert 0.0 <= float(p_fake) <= 1.0
        assert label == ("fake" if float(p_fake) >= 0.5 else "real")
        with Image.open(cam) as overlay, Image.open(micro_repo / path) as src:
            assert overlay.size == side_by_side_size(*src.size) and overlay.mode == "RGB"
    assert f"error: {folder / 'corrupt.png'}: cannot decode" in result.stderr
    assert "predict: 100%" in result.stderr  # the progress bar (folders only)
    assert len(list(cams.glob("*_cam.png"))) == 2 + n_folder


@pytest.mark.slow
def test_local_path_folder_and_registry_alias_give_the_same_probabilities(in_micro, capsys):
    files = [first_png(in_micro, "data/raw/fake/stylegan_like"), first_png(in_micro, "data/raw/real/celeba_like"),
             first_png(in_micro, "data/raw/fake/faceapp_like")]
    results = {}
    for reference in [f"models/baseline/seed{SEED}/model.pt", f"models/baseline/seed{SEED}", BASELINE]:
        code, out, err = predict([*files, "--model", reference, "--json"], capsys)
        assert code == 0, err
        records = json.loads(out)
        assert [r["path"] for r in records] == files
        results[reference] = np.array([r["p_fake"] for r in records])
    expected = reference_p_fake(in_micro, "baseline", files)
    for reference, p_fake in results.items():
        np.testing.assert_allclose(p_fake, expected, rtol=0, atol=1e-6, err_msg=reference)
    assert f"{BASELINE} (version" in err  # says which version the alias resolved to


@pytest.mark.slow
def test_any_mode_and_size_is_scored_like_training_and_broken_files_are_named(in_micro, tmp_path, capsys):
    odd = write_odd_images(tmp_path / "odd")
    broken = tmp_path / "odd" / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    empty = tmp_path / "odd" / "empty.jpg"
    empty.write_bytes(b"")
    missing = tmp_path / "missing.png"
    code, out, err = predict([str(tmp_path / "odd"), str(odd["no_suffix"]), str(missing),
                              "-m", f"models/reg/seed{SEED}", "--json", "--batch-size", "3"], capsys)
    assert code == 1
    records = {Path(r["path"]).name: r for r in json.loads(out)}
    assert set(records) == {p.name for p in odd.values()}  # notes.txt ignored, picture.data named
    expected = reference_p_fake(in_micro, "reg", list(odd.values()))
    got = [records[p.name]["p_fake"] for p in odd.values()]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    for line in [f"error: {broken}: ", f"error: {empty}: empty file", f"error: {missing}: no such file or directory"]:
        assert line in err, err
    assert "3 input(s) could not be scored (7 scored)" in err


@pytest.mark.slow
def test_cam_overlays_at_display_size_for_equal_stems_and_threshold(in_micro, tmp_path, capsys):
    odd = write_odd_images(tmp_path / "odd")
    same_stem = [str(in_micro / "data/raw/real/ffhq_like/id00000.png"), str(tmp_path / "other" / "id00000.png")]
    (tmp_path / "other").mkdir()
    Image.new("L", (45, 23), 128).save(same_stem[1])
    inputs = [*same_stem, str(odd["grey"]), str(odd["odd_size"]), str(odd["rotated"])]
    cams = tmp_path / "cams"
    code, out, err = predict([*inputs, "-m", f"models/baseline/seed{SEED}", "--cam", str(cams), "--threshold", "0",
                              "--cam-layer", "blocks.1", "--json"], capsys)
    assert code == 0, err
    records = json.loads(out)
    assert [Path(r["cam"]).name for r in records] == ["id00000_cam.png", "id00000_2_cam.png", "grey_cam.png",
                                                      "tall_cam.png", "rotated_cam.png"]
    for record in records:
        assert record["label"] == "fake"  # threshold 0: everything is fake
        with Image.open(record["cam"]) as overlay:
            assert overlay.size == side_by_side_size(*open_rgb(record["path"]).size)  # display size, side by side
            assert overlay.mode == "RGB"
    with Image.open(records[-1]["cam"]) as overlay:
        assert overlay.size == side_by_side_size(30, 50)  # the EXIF-rotated image, upright
    code, _, err = predict([inputs[0], "-m", f"models/baseline/seed{SEED}", "--cam", str(cams),
                            "--cam-layer", "no.such"], capsys)
    assert code == 2 and "--cam-layer" in err and "no.such" in err


@pytest.mark.slow
def test_default_champion_alias_missing_then_set(micro_repo, registry_copy, capsys):
    """On a copy of the micro registry: the default reference explains a missing @champion,
    then resolves once the alias exists."""
    client = registry_copy
    aliases = client.get_registered_model(MODEL).aliases
    if "champion" in aliases:
        client.delete_registered_model_alias(MODEL, "champion")
    image = first_png(micro_repo, "data/raw/fake/pggan_like")
    code, out, err = predict([image], capsys)
    assert code == 2 and out == ""
    assert f"no version of {MODEL} has alias @champion yet" in err
    assert "run `dvc repro` (the report stage sets it)" in err and f"--model models:/{MODEL}@baseline" in err
    code, _, err = predict([image, "-m", f"models:/{MODEL}@no_such_alias"], capsys)
    assert code == 2 and "alias @no_such_alias" in err

    client.set_registered_model_alias(MODEL, "champion", aliases["baseline"])
    code, out, err = predict([image, "--json"], capsys)
    assert code == 0, err
    assert f"models:/{MODEL}@champion (version {aliases['baseline']})" in err
    np.testing.assert_allclose(json.loads(out)[0]["p_fake"], reference_p_fake(micro_repo, "baseline", [image])[0],
                               atol=1e-6)


@pytest.mark.slow
def test_predict_refuses_a_version_under_the_quality_floor(micro_repo, registry_copy, capsys):
    """The report tags each version `quality_floor: passed|failed: …`; a failed one (by alias
    or by number) is refused with the reason, a passed one is used."""
    client = registry_copy
    version = client.get_registered_model(MODEL).aliases["baseline"]
    image = first_png(micro_repo, "data/raw/fake/pggan_like")
    failed = "failed: clean AUC 0.500 < report.min_clean_auc 0.75"
    client.set_model_version_tag(MODEL, version, "quality_floor", failed)
    for reference in (f"models:/{MODEL}@baseline", f"models:/{MODEL}/{version}"):
        code, out, err = predict([image, "-m", reference], capsys)
        assert code == 2 and out == ""
        assert f"(version {version}) is under the quality floor ({failed}" in err
    client.set_model_version_tag(MODEL, version, "quality_floor", "passed: clean AUC 0.900 >= report.min_clean_auc 0.75")
    code, _, err = predict([image, "-m", f"models:/{MODEL}/{version}"], capsys)
    assert code == 0, err
