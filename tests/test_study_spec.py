"""The study spec (study/spec.py): validated like params.yaml, the placebo always in the
grid, and each cell's `-S` overrides meaning to DVC what the spec means (DVC's own
override code is the oracle)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from robust_deepfake.config import ConfigError, load_params, read_yaml
from robust_deepfake.study.spec import Cell, cell_hash, expand, hydra_value, load_spec, with_placebo

REPO = Path(__file__).resolve().parents[1]


def _spec(tmp_path: Path, **fields) -> Path:
    data = {"name": "t", "seeds": [0, 1], "grid": {"reg.epsilon": [0.25, 0.5], "reg.mode": ["random", "gradient"]},
            "lines": "reg.mode"}
    data.update(fields)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def base() -> dict:
    return read_yaml(REPO / "params.yaml")


def test_the_shipped_specs_are_valid(base):
    for name in ("study_demo.yaml", "study_dffd.yaml"):
        spec = load_spec(REPO / "configs" / name)
        cells = expand(spec, base)
        assert {dict(c.setting)["reg.epsilon"] for c in cells} >= {0.0}
    demo = expand(load_spec(REPO / "configs/study_demo.yaml"), base)
    assert len(demo) == 4  # 2 seeds x 2 epsilons (configs/study_demo.yaml: the CPU demo grid)
    # sized so that its models can pass the quality floor: the whole training split
    assert all(c.params(base).train.max_train_samples is None and c.params(base).train.epochs >= 3 for c in demo)


def test_grid_expands_seeds_innermost_with_the_placebo_added(tmp_path, base):
    cells = expand(load_spec(_spec(tmp_path)), base)
    # 0.0 added to reg.epsilon: 3 epsilons x 2 modes x 2 seeds
    assert len(cells) == 12
    assert [c.seed for c in cells[:4]] == [0, 1, 0, 1]
    assert cells[0].label == "reg.epsilon=0.0 reg.mode=random seed=0"
    assert cells[0].assignments["train.seeds"] == [0]
    names = {c.experiment_name("0123456789abcdef") for c in cells}
    assert len(names) == len(cells)
    assert all(n.isascii() and " " not in n and ".." not in n for n in names)


def test_a_grid_without_epsilon_gets_the_placebo_beside_the_params_value(tmp_path, base):
    spec = load_spec(_spec(tmp_path, grid={"split.holdout_methods": [[], ["stylegan_like"]]}, lines=None))
    placebo = with_placebo(spec, base)
    assert placebo.grid["reg.epsilon"] == [0.0, base["reg"]["epsilon"]]
    assert len(expand(spec, base)) == 2 * 2 * 2


@pytest.mark.parametrize(("fields", "message"), [
    ({"name": "Bad Name"}, "name: lowercase letters"),
    ({"seeds": []}, "seeds: List should have at least 1 item"),
    ({"seeds": [0, 0]}, "seeds must be unique"),
    ({"seeds": [-1]}, "a seed must be in"),
    ({"grid": {"reg.epsilon": []}}, "at least one value"),
    ({"grid": {"reg.epsilon": [0.5, 0.5]}}, "values must be unique"),
    ({"grid": {"train.seeds": [[0]]}}, "set per cell from `seeds`"),
    ({"fixed": {"reg.mode": "random"}}, "set in both grid and fixed"),
    ({"parallelism": 0}, "parallelism: Input should be greater than or equal to 1"),
    ({"heartbeat_timeout_s": 10}, "heartbeat_timeout_s"),
    ({"retries": True}, "retries: Input should be a valid integer"),
    ({"colour": "red"}, "colour: unknown key"),
])
def test_bad_specs_name_the_file_and_key(tmp_path, fields, message):
    path = _spec(tmp_path, **fields)
    with pytest.raises(ConfigError) as error:
        load_spec(path)
    assert str(path) in str(error.value) and message in str(error.value)


@pytest.mark.parametrize(("fields", "message"), [
    ({"grid": {"reg.epsilonn": [0.5]}, "lines": None}, "'reg.epsilonn' is not a params.yaml key"),
    ({"grid": {"regg.epsilon": [0.5]}, "lines": None}, "no section 'regg'"),
    ({"grid": {"reg.epsilon": [-0.5]}, "lines": None}, "reg.epsilon: Input should be greater than or equal to 0"),
    ({"grid": {"reg.epsilon": [0.5], "reg.mode": ["sideways"]}}, "reg.mode: Input should be 'random' or 'gradient'"),
    ({"fixed": {"attack.eps": ["1/300"]}}, "not a whole grey level"),
    ({"dose": "reg.alpha"}, "'reg.alpha' (dose/lines) is not a grid key"),
    ({"metric": "acc_cw"}, "metric: 'acc_cw' is not reported by every cell"),
])
def test_cells_are_validated_against_the_params_schema(tmp_path, base, fields, message):
    with pytest.raises(ConfigError) as error:
        expand(load_spec(_spec(tmp_path, **fields)), base)
    assert message in str(error.value)


def test_overrides_mean_the_same_to_dvc(tmp_path, base):
    """Each cell's `-S` strings, applied by DVC's own hydra override code to params.yaml,
    give the params the study validated (lists, quoted strings, k/255 budgets, null)."""
    from dvc.utils.hydra import apply_overrides

    spec = load_spec(_spec(tmp_path, grid={"reg.epsilon": [0.25], "reg.mode": ["gradient"],
                                           "split.holdout_methods": [["stylegan_like", "faceapp_like"]]},
                           fixed={"attack.eps": ["1/255", "3/255"], "train.max_train_samples": None,
                                  "train.augment_hflip": False, "tracking.experiment": "it's a test"}))
    for cell in expand(spec, base)[:2]:
        params = tmp_path / "params.yaml"
        shutil.copy(REPO / "params.yaml", params)
        apply_overrides(str(params), cell.overrides)
        assert load_params(params) == cell.params(base)


def test_hydra_values_and_the_cell_hash(base):
    assert hydra_value([]) == "[]" and hydra_value(None) == "null" and hydra_value("a'b") == "'a\\'b'"
    cell = Cell("t", 0, (("reg.epsilon", 0.5),), ())
    assert Cell.from_dict(cell.to_dict()) == cell
    params = cell.params(base)
    assert cell_hash(params, "abc") == cell_hash(cell.params(base), "abc")
    assert cell_hash(params, "abc") != cell_hash(params, "abd")
    other = Cell("t", 1, (("reg.epsilon", 0.5),), ()).params(base)
    assert cell_hash(params, "abc") != cell_hash(other, "abc")
