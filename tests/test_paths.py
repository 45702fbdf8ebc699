"""paths.py owns the artifact layout; dvc.yaml declares it. The two must agree both ways:
every path paths.py hands out is an out of the stage that writes it, and every out of
those stages is a path (or a folder of paths) that paths.py hands out."""

from __future__ import annotations

import dataclasses
from pathlib import Path, PurePosixPath

import pytest
import yaml

from robust_deepfake.paths import (
    CANDIDATE_VARIANTS,
    CHECKPOINT_DIR,
    DOSE_RESPONSE,
    VARIANTS,
    CamOutputs,
    ModelKey,
    ParamsCheckOutputs,
    ReportOutputs,
    SplitOutputs,
    SweepOutputs,
    TrainOutputs,
    find_repo_root,
    model_keys,
)

ROOT = Path(__file__).resolve().parents[1]
DOT = Path(".")


def _dvc_yaml() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())


def _params() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def _names(entries: list | None) -> list[str]:
    """outs/deps entries are strings or one-key mappings (`path: {cache: false}`)."""
    names: list[str] = []
    for entry in entries or []:
        names.extend([entry] if isinstance(entry, str) else entry)
    return names


def stage_outs(stage: str, item: object = None) -> set[PurePosixPath]:
    """A stage's outs; a foreach stage's with ${item} replaced."""
    body = _dvc_yaml()["stages"][stage]
    body = body.get("do", body)
    return {PurePosixPath(out.replace("${item}", str(item))) for out in _names(body.get("outs"))}


def produced(outputs: object) -> set[PurePosixPath]:
    """Every Path an *Outputs object hands out: its fields and its Path properties."""
    values = [getattr(outputs, field.name) for field in dataclasses.fields(outputs)]
    values += [getattr(outputs, name) for name, attr in vars(type(outputs)).items()
               if isinstance(attr, property)]
    return {PurePosixPath(value.as_posix()) for value in values if isinstance(value, Path)}


def inside(path: PurePosixPath, folder: PurePosixPath) -> bool:
    return path == folder or folder in path.parents


def _cases() -> list[tuple[str, object, object]]:
    """(stage, item, outputs) for every stage paths.py describes."""
    params = _params()
    cases: list[tuple[str, object, object]] = [
        (f"train_{key.variant}", key.seed, TrainOutputs.of(DOT, key))
        for key in model_keys(params["train"]["seeds"])
    ]
    cases += [
        ("check_params", None, ParamsCheckOutputs.at(DOT)),
        ("split", None, SplitOutputs.at(DOT, params["data"]["splits_dir"])),
        ("attack_sweep", None, SweepOutputs.at(DOT)),
        ("cam_iinc", None, CamOutputs.at(DOT)),
        ("report", None, ReportOutputs.at(DOT)),
    ]
    return cases


@pytest.mark.parametrize(("stage", "item", "outputs"), _cases(),
                         ids=lambda value: value if isinstance(value, str) else None)
def test_paths_and_dvc_outs_agree(stage, item, outputs):
    outs = stage_outs(stage, item)
    paths = produced(outputs)
    assert paths, f"{type(outputs).__name__} hands out no paths"
    undeclared = sorted(str(path) for path in paths if not any(inside(path, out) for out in outs))
    assert not undeclared, f"{stage}: paths.py paths that are not dvc.yaml outs: {undeclared}"
    unowned = sorted(str(out) for out in outs if not any(inside(path, out) for path in paths))
    assert not unowned, f"{stage}: dvc.yaml outs that paths.py does not hand out: {unowned}"


def test_every_stage_with_outs_is_described_by_paths_py():
    described = {stage for stage, _, _ in _cases()}
    assert {f"train_{variant}" for variant in VARIANTS} <= described
    with_outs = {name for name, body in _dvc_yaml()["stages"].items() if _names(body.get("do", body).get("outs"))}
    assert with_outs == described


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_train_stage_outs_are_its_variants_folders(variant):
    """train_<variant> trains every seed: its outs are the folders each seed's paths live in."""
    folders = {PurePosixPath(path.as_posix()) for path in TrainOutputs.stage_outs(DOT, variant)}
    assert folders == stage_outs(f"train_{variant}")


def test_the_placebo_is_a_variant_but_never_a_candidate():
    assert VARIANTS == ("baseline", "placebo", "reg")
    assert CANDIDATE_VARIANTS == ("baseline", "reg")


def test_train_outputs_hold_weights_and_meta():
    outputs = TrainOutputs.of(DOT, ModelKey("reg", 3))
    assert outputs.model_dir == Path("models/reg/seed3")
    assert {outputs.weights, outputs.meta} == {outputs.model_dir / "model.pt", outputs.model_dir / "meta.json"}


def test_checkpoints_live_outside_every_out():
    checkpoints = PurePosixPath(CHECKPOINT_DIR.as_posix())
    for name in _dvc_yaml()["stages"]:
        for out in stage_outs(name, 0):
            assert not inside(checkpoints, out) and not inside(out, checkpoints), (name, str(out))


def test_report_depends_on_the_dose_response():
    deps = _names(_dvc_yaml()["stages"]["report"]["deps"])
    assert DOSE_RESPONSE.as_posix() in deps


@pytest.mark.parametrize("variant", ["", "Reg", "regularized", "baseline "])
def test_model_key_rejects_unknown_variants(variant):
    with pytest.raises(ValueError, match="variant must be one of"):
        ModelKey(variant, 0)


def test_model_keys_are_variant_major():
    assert [key.name for key in model_keys([0, 1])] == [f"{variant}-seed{seed}" for variant in VARIANTS
                                                       for seed in (0, 1)]


def test_find_repo_root_from_a_subdirectory(monkeypatch):
    assert find_repo_root(ROOT / "src" / "robust_deepfake") == ROOT
    assert find_repo_root(ROOT) == ROOT
    monkeypatch.chdir(ROOT / "tests")
    assert find_repo_root() == ROOT


def test_find_repo_root_in_a_fresh_tree(tmp_path):
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    nested = tmp_path / "a" / "b"
    nested.mkdir(parents=True)
    assert find_repo_root(nested) == tmp_path.resolve()


def test_every_out_lives_under_the_out_roots():
    """tracking/provenance.py ignores changes under OUT_ROOTS when it asks whether a run's
    inputs are committed: an out elsewhere would make every `dvc repro` look dirty."""
    from robust_deepfake.paths import OUT_ROOTS

    stages = _dvc_yaml()["stages"]
    outs = {out for name in stages for out in stage_outs(name, 0)}
    assert outs
    stray = sorted(str(o) for o in outs if not any(str(o) == r or str(o).startswith(r + "/") for r in OUT_ROOTS))
    assert not stray, f"outs outside paths.OUT_ROOTS: {stray}"
