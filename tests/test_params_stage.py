"""The check_params stage through the real dvc CLI: a toy repository holding the project's
check_params stage exactly as dvc.yaml declares it, and a one-line `split` that depends
on its out and lists `split` params, as the project's split does.

DVC re-runs a stage only when what it lists changes, so a typo in a key that no stage
lists would never be read: these tests prove that any edit of params.yaml is validated,
by `dvc repro` and by `dvc repro split`, and that a valid edit re-runs nothing else."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from helpers import REPO, dvc, git_commit, run
from robust_deepfake.cli import main
from robust_deepfake.config import ConfigError, load_params
from robust_deepfake.pipeline.check_params import check_params

SPLIT = """import pathlib, yaml
pathlib.Path("out").mkdir(exist_ok=True)
with open("log.txt", "a") as log:
    log.write("split\\n")
pathlib.Path("out/split.txt").write_text(str(yaml.safe_load(open("params.yaml"))["split"]))
"""


def _project_stage() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["check_params"]


@pytest.fixture(scope="module")
def _toy_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("params-stage")
    shutil.copy2(REPO / "params.yaml", root / "params.yaml")
    shutil.copytree(REPO / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    (root / "stages").mkdir()
    shutil.copy2(REPO / "stages" / "check_params.py", root / "stages")
    (root / "data" / "raw").mkdir(parents=True)
    (root / "data" / "raw" / "README").write_text("path_problems wants data.raw_dir in place\n")
    (root / "split.py").write_text(SPLIT)
    (root / ".gitignore").write_text("/log.txt\n__pycache__/\n")
    stages = {
        "check_params": _project_stage(),
        "split": {"cmd": "python split.py", "deps": ["metrics/params_check.json", "split.py"],
                  "params": ["split"], "outs": ["out/split.txt"]},
    }
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    run(["git", "init", "-q"], root)
    dvc("init", "-q", cwd=root)
    dvc("repro", cwd=root)
    git_commit(root, "toy")
    return root


@pytest.fixture
def toy_repo(_toy_template: Path, tmp_path: Path) -> Path:
    root = tmp_path / "toy"
    shutil.copytree(_toy_template, root, symlinks=True,  # without DVC's per-machine state in .dvc/tmp
                    ignore=lambda folder, names: ["tmp"] if Path(folder).name == ".dvc" else [])
    (root / "log.txt").unlink(missing_ok=True)
    return root


def _edit(root: Path, old: str, new: str) -> None:
    path = root / "params.yaml"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def _split_runs(root: Path) -> int:
    log = root / "log.txt"
    return log.read_text().count("split") if log.exists() else 0


def test_the_project_stage_depends_on_params_yaml_as_a_file():
    stage = _project_stage()
    assert "params.yaml" in stage["deps"] and "params" not in stage
    split = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["split"]
    assert set(stage["outs"]) <= set(split["deps"])


@pytest.mark.parametrize(("old", "new", "key"), [
    ("  epochs: 4", "  epochs: 4\n  epoch: 7", "train.epoch: unknown key"),
    ("\nreevaluate:", "\nreevalute:", "reevalute: unknown key"),
    ("  splits_dir: data/splits", "  splits_dir: /etc", "data.splits_dir: /etc is outside the repository"),
])
def test_an_invalid_edit_stops_dvc_repro_and_dvc_repro_split(toy_repo: Path, old: str, new: str, key: str):
    _edit(toy_repo, old, new)
    for target in ([], ["split"]):
        result = dvc("repro", *target, cwd=toy_repo, check=False)
        output = result.stdout + result.stderr
        assert result.returncode != 0, output
        assert key in output and "Traceback" not in output, output
    assert _split_runs(toy_repo) == 0


def test_a_valid_edit_reruns_the_check_alone_and_a_reverted_file_comes_from_the_run_cache(toy_repo: Path):
    before = (toy_repo / "metrics" / "params_check.json").read_bytes()
    _edit(toy_repo, "  lr: 0.004", "  lr: 0.003")
    result = dvc("repro", cwd=toy_repo)
    assert "Running stage 'check_params'" in result.stdout and _split_runs(toy_repo) == 0, result.stdout
    assert (toy_repo / "metrics" / "params_check.json").read_bytes() == before
    run(["git", "checkout", "params.yaml"], toy_repo)
    result = dvc("repro", cwd=toy_repo)
    assert "Running stage" not in result.stdout and _split_runs(toy_repo) == 0, result.stdout
    _edit(toy_repo, "  seed: 0\n  val_fraction", "  seed: 1\n  val_fraction")
    dvc("repro", cwd=toy_repo)
    assert _split_runs(toy_repo) == 1


def test_an_unknown_key_set_by_dvc_exp_run_in_a_temp_dir_is_refused(toy_repo: Path):
    result = dvc("exp", "run", "--temp", "-S", "+train.epoch=7", cwd=toy_repo, check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "train.epoch: unknown key" in output, output


def test_the_stage_body_names_paths_that_are_not_in_place(tmp_path: Path):
    shutil.copy2(REPO / "params.yaml", tmp_path / "params.yaml")
    params = load_params(tmp_path / "params.yaml")
    with pytest.raises(ConfigError, match="data.raw_dir: data/raw .*does not exist"):
        check_params(params, tmp_path)
    assert not (tmp_path / "metrics").exists()
    (tmp_path / "data" / "raw").mkdir(parents=True)
    record = check_params(params, tmp_path)
    assert record["valid"] and (tmp_path / "metrics" / "params_check.json").exists()


@pytest.mark.parametrize("text", ["", "   \n  \n", "# only a comment\n"])
def test_params_check_refuses_a_file_without_values(tmp_path: Path, text: str, capsys: pytest.CaptureFixture):
    (tmp_path / "params.yaml").write_text(text)
    with pytest.raises(SystemExit) as exit_:
        main(["params", "check", "--schema-only", str(tmp_path / "params.yaml")])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'params.yaml'}: no values (the file is empty, blank or only " \
        "comments); a params file sets every section, as the repository's params.yaml does\n"
