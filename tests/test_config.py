import subprocess
import sys

import pytest
import yaml

from robust_deepfake.config import (
    MAX_SEED,
    ConfigError,
    Params,
    flatten,
    load_params,
    parse_pixel_value,
    validate,
)


def test_shipped_params_are_valid(repo_root):
    params = load_params(repo_root / "params.yaml")
    assert params.attack.eps_grid[0] == 0.0
    assert params.attack.eps_grid == sorted(params.attack.eps_grid)


def test_dffd_overrides_apply_cleanly(repo_root, tmp_path):
    from robust_deepfake.config.merge import merge_params_file

    target = tmp_path / "params.yaml"
    target.write_text((repo_root / "params.yaml").read_text())
    changed = merge_params_file(repo_root / "configs" / "dffd_gpu.yaml", target)
    merged = load_params(target)
    assert merged.data.image_size == 224 and merged.model.pretrained
    assert merged.attack.eps_grid == pytest.approx([0, 1 / 255, 2 / 255, 4 / 255, 8 / 255])
    assert changed["data.image_size"] == (64, 224)
    assert "# Every knob" in target.read_text(), "comments must survive the merge"


@pytest.mark.parametrize(
    ("raw", "key", "problem"),
    [
        ({"reg": {"alpah": 0.3}}, "reg.alpah", "unknown key"),
        ({"bogus": {}}, "bogus", "unknown key"),
        ({"reg": {"alpha": 1.5}}, "reg.alpha", "less than or equal to 1"),
        ({"reg": {"alpha": -0.1}}, "reg.alpha", "greater than or equal to 0"),
        ({"train": {"epochs": "many"}}, "train.epochs", "valid integer"),
        ({"attack": {"eps": [-1 / 255]}}, "attack.eps", "[0, 1]"),
        ({"attack": {"eps": ["4/0"]}}, "attack.eps.0", "division by zero"),
        ({"attack": {"eps": ["1/255", "four"]}}, "attack.eps.1", "k/255"),
        ({"attack": {"attacks": ["pgd", "cw"]}}, "attack.attacks.1", "'fgsm'"),
        ({"split": {"val_fraction": 0.5, "test_fraction": 0.5}}, "split", "must be < 1"),
        ({"data": {"on_bad_file": "ignore"}}, "data.on_bad_file", "'error' or 'skip'"),
        ({"train": {"device": "gpu"}}, "train.device", "cuda:N"),
        ({"reevaluate": {"cron": "daily"}}, "reevaluate.cron", "5-field"),
    ],
)
def test_invalid_values_name_the_key(raw, key, problem):
    with pytest.raises(ConfigError) as info:
        validate(raw)
    message = str(info.value)
    assert f": {key}:" in message
    assert problem in message


def test_pixel_values_accept_fractions():
    assert parse_pixel_value("4/255") == pytest.approx(4 / 255)
    assert parse_pixel_value(" 8 / 255 ") == pytest.approx(8 / 255)
    assert parse_pixel_value(0.5) == 0.5
    with pytest.raises(ValueError):
        parse_pixel_value(True)


def test_eps_are_sorted_and_deduplicated():
    params = validate({"attack": {"eps": ["4/255", "1/255", "4/255"]}})
    assert params.attack.eps == pytest.approx([1 / 255, 4 / 255])


def test_stage_exits_nonzero_with_one_line_naming_the_key(repo_root, tmp_path):
    params = yaml.safe_load((repo_root / "params.yaml").read_text())
    params["reg"]["alpha"] = 2
    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump(params))
    result = subprocess.run(
        [sys.executable, str(repo_root / "stages" / "split.py"), "--params", str(bad)],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "reg.alpha" in lines[0] and "less than or equal to 1" in lines[0]


def test_yaml_syntax_errors_are_reported_with_a_line(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("train:\n  epochs: [1\n")
    with pytest.raises(ConfigError, match=r"params.yaml: line \d+: invalid YAML"):
        load_params(bad)


def test_schema_defaults_equal_params_yaml(repo_root):
    """config.py's defaults are the demo settings: a key missing from params.yaml means
    the same as the value params.yaml ships."""
    defaults, shipped = Params(), load_params(repo_root / "params.yaml")
    flat_defaults, flat_shipped = flatten(defaults), flatten(shipped)
    differing = sorted(key for key in flat_defaults.keys() | flat_shipped.keys()
                       if flat_defaults.get(key) != flat_shipped.get(key))
    assert not differing, "config.py defaults differ from params.yaml:\n" + "\n".join(
        f"  {key}: default {flat_defaults.get(key)!r}, params.yaml {flat_shipped.get(key)!r}"
        for key in differing)
    assert defaults.model_dump() == shipped.model_dump()


def test_params_yaml_spells_out_every_key(repo_root):
    """Every key of the schema is written in params.yaml: none falls back to a default
    unseen, and DVC tracks each one as a param (it only sees the keys in the file)."""

    def keys(mapping: dict, prefix: str = "") -> set[str]:
        found = set()
        for key, value in mapping.items():
            found |= keys(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}"}
        return found

    written = keys(yaml.safe_load((repo_root / "params.yaml").read_text()))
    assert written == set(flatten(Params())), (
        f"missing from params.yaml: {sorted(set(flatten(Params())) - written)}; "
        f"not in the schema: {sorted(written - set(flatten(Params())))}")


@pytest.mark.parametrize(
    ("seeds", "problem"),
    [
        ([], "at least one seed"),
        ([0, 1, 0], "unique"),
        ([-1], f"[0, {MAX_SEED}]"),
        ([1, MAX_SEED + 1], f"[0, {MAX_SEED}]"),
        ([0.5], "valid integer"),
        (0, "valid list"),
    ],
)
def test_train_seeds_are_validated(seeds, problem):
    with pytest.raises(ConfigError) as info:
        validate({"train": {"seeds": seeds}})
    assert ": train.seeds" in str(info.value) and problem in str(info.value)


def test_train_seeds_accept_the_full_range():
    assert validate({"train": {"seeds": [MAX_SEED, 0, 7]}}).train.seeds == [MAX_SEED, 0, 7]


def test_train_seed_singular_is_an_unknown_key():
    with pytest.raises(ConfigError, match=r": train.seed: unknown key"):
        validate({"train": {"seed": 0}})


@pytest.mark.parametrize("scale", ["relative", "absolute"])
def test_epsilon_scale_accepts_relative_and_absolute(scale):
    assert validate({"reg": {"epsilon_scale": scale}}).reg.epsilon_scale == scale


@pytest.mark.parametrize("scale", ["Relative", "percent", "", None, 1])
def test_epsilon_scale_rejects_anything_else(scale):
    with pytest.raises(ConfigError, match=r": reg.epsilon_scale: .*'relative' or 'absolute'"):
        validate({"reg": {"epsilon_scale": scale}})
