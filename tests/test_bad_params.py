"""Issue #14, "fail loudly and early": every params value that would crash a later stage,
or be read silently as something else, is refused when params.yaml is loaded (what every
stage and `robust-deepfake params check` do), one line per problem naming the key:
`params.yaml: <dotted.key>: <what is wrong> (got <value>)`.

One row per bad value, written into a copy of the demo params.yaml and loaded the way
the stages load it; rows generated from the schema (every float refuses NaN and
infinities, every int refuses `true`, every boolean refuses 1, every seed its range);
rows that must still pass; and `params merge` / `params check` on broken YAML."""

from __future__ import annotations

import copy
import math
import os
import re
import types
import typing
from pathlib import Path

import pytest
import yaml

from robust_deepfake.cli import main
from robust_deepfake.config import MAX_SEED, ConfigError, Params, load_params
from robust_deepfake.config.merge import merge_params_file

REPO = Path(__file__).resolve().parents[1]
DEMO = yaml.safe_load((REPO / "params.yaml").read_text())
LINE = re.compile(r"^(?P<source>[^:]+): (?P<key>[\w.<>]+): (?P<message>.+)$")


def _with(changes: dict[str, object]) -> dict:
    """The demo params with dotted keys set."""
    raw = copy.deepcopy(DEMO)
    for dotted, value in changes.items():
        *sections, leaf = dotted.split(".")
        target = raw
        for section in sections:
            target = target.setdefault(section, {})
        target[leaf] = value
    return raw


def _write(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _refusal(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_params(path)
    lines = str(info.value).splitlines()
    for line in lines:
        assert LINE.match(line), f"not `<file>: <key>: <problem>`: {line!r}"
        assert line.startswith(f"{path}: "), line
    return lines


def _assert_names(lines: list[str], key: str, says: str) -> None:
    hits = [line for line in lines if LINE.match(line)["key"] == key]
    assert hits, f"no line names {key}: {lines}"
    assert any(says in line for line in hits), f"{says!r} not in {hits}"


# --- the bad values of issue #14, and more -----------------------------------------

BAD = [
    # values that crashed a later stage with a raw traceback
    ("split.seed", -1, "split.seed", "[0, 2147483647]"),
    ("train.seeds", [2**70], "train.seeds.0", "[0, 2147483647]"),
    ("train.seeds", [0, -1], "train.seeds.1", "[0, 2147483647]"),
    ("train.seed", 2**70, "train.seed", "unknown key"),
    ("attack.seed", 2**70, "attack.seed", "[0, 2147483647]"),
    ("eval.seed", -1, "eval.seed", "[0, 2147483647]"),
    ("cam.seed", 2**32, "cam.seed", "[0, 2147483647]"),
    ("attack.eps", [float("nan")], "attack.eps.0", "finite"),
    ("attack.eps", ["nan"], "attack.eps.0", "finite"),
    ("attack.eps", [float("inf")], "attack.eps.0", "finite"),
    ("attack.eps", ["1/255", "-inf"], "attack.eps.1", "finite"),
    ("attack.eps", [0], "attack.eps", "at least one eps > 0"),
    ("attack.eps", [], "attack.eps", "at least one eps"),
    ("attack.eps", ["0.5/255"], "attack.eps", "whole grey level"),
    ("attack.attacks", [], "attack.attacks", "at least one attack"),
    ("attack.attacks", ["pgd", "pgd"], "attack.attacks", "unique"),
    ("attack.step_size", float("nan"), "attack.step_size", "finite"),
    ("attack.step_size", 2, "attack.step_size", "(0, 1]"),
    ("attack.momentum", float("inf"), "attack.momentum", "finite number"),
    ("reg.epsilon", float("inf"), "reg.epsilon", "finite number"),
    ("train.weight_decay", float("inf"), "train.weight_decay", "finite number"),
    ("train.weight_decay", 1000.0, "train.weight_decay", "lr x weight_decay must be < 1"),
    ("train.lr", float("nan"), "train.lr", "finite number"),
    ("cam.target_layer", "", "cam.target_layer", "at least 1 character"),
    ("cam.eps", [], "cam.eps", "or null for all of attack.eps"),
    ("cam.eps", [-1], "cam.eps", "[0, 1]"),
    ("cam.eps", ["0.5/255"], "cam.eps", "whole grey level"),
    ("cam.attacks", [], "cam.attacks", "or null for all of attack.attacks"),
    ("cam.attacks", ["pgd", "pgd"], "cam.attacks", "unique"),
    ("tracking.registered_model", "team/detector", "tracking.registered_model", "'/' or ':'"),
    # values accepted silently and read as something else
    ("train.epochs", True, "train.epochs", "valid integer"),
    ("train.epochs", 4.0, "train.epochs", "valid integer"),
    ("data.image_size", "64", "data.image_size", "valid integer"),
    ("model.pretrained", 1, "model.pretrained", "valid boolean"),
    ("attack.quantize", "yes", "attack.quantize", "valid boolean"),
    ("report.reference_eps", float("nan"), "report.reference_eps", "finite"),
    ("report.reference_eps", -1, "report.reference_eps", "must be one of attack.eps (1/255, 2/255)"),
    ("report.reference_eps", "3/255", "report.reference_eps", "must be one of attack.eps (1/255, 2/255)"),
    ("report.reference_eps", 0, "report.reference_eps", "must be one of attack.eps"),
    ("report.min_effect", 0, "report.min_effect", "greater than 0"),
    ("report.min_effect", 1.5, "report.min_effect", "less than 1"),
    ("report.min_effect", float("nan"), "report.min_effect", "finite number"),
    ("reevaluate.cron", "H 3 * * *", "reevaluate.cron", "hashed (H)"),
    ("reevaluate.cron", "@daily", "reevaluate.cron", "5-field"),
    ("reevaluate.cron", "0 3 * * 1 0", "reevaluate.cron", "5-field"),
    ("reevaluate.aliases", [], "reevaluate.aliases", "at least one alias"),
    ("reevaluate.aliases", ["latest"], "reevaluate.aliases", "not an MLflow alias"),
    ("reevaluate.aliases", ["champion", "v2"], "reevaluate.aliases", "not an MLflow alias"),
]


@pytest.mark.parametrize(("dotted", "value", "key", "says"), BAD, ids=[f"{r[0]}={r[1]!r}"[:60] for r in BAD])
def test_a_bad_value_is_refused_naming_its_key(tmp_path, dotted, value, key, says):
    lines = _refusal(_write(tmp_path, _with({dotted: value})))
    _assert_names(lines, key, says)
    assert len(lines) == 1, lines
    if "unknown key" not in says:
        assert "(got " in lines[0] or "got " in LINE.match(lines[0])["message"], lines[0]


def test_reference_eps_must_be_in_cam_eps_where_that_is_set(tmp_path):
    lines = _refusal(_write(tmp_path, _with({"cam.eps": ["1/255"], "report.reference_eps": "2/255"})))
    assert lines == [f"{tmp_path / 'params.yaml'}: report.reference_eps: must also be one of cam.eps (1/255): the CAM "
                     "figures are drawn at it (or set cam.eps to null: all of attack.eps) (got 2/255)"]


def test_every_problem_gets_its_own_line(tmp_path):
    lines = _refusal(_write(tmp_path, _with({"split.seed": -1, "train.epochs": True, "reg.epsilon": float("nan")})))
    assert sorted(LINE.match(line)["key"] for line in lines) == ["reg.epsilon", "split.seed", "train.epochs"]


# --- rows generated from the schema --------------------------------------------------


def _scalar(annotation: object) -> object:
    """float for `float`, `float | None` and `Annotated[float, ...] | None`; else the type itself."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        inner = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        annotation = inner[0] if len(inner) == 1 else annotation
    if typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    return annotation


def _leaves(kind: type) -> list[str]:
    keys = []
    for section, section_field in Params.model_fields.items():
        for name, field in section_field.annotation.model_fields.items():
            if _scalar(field.annotation) is kind:
                keys.append(f"{section}.{name}")
    return keys


FLOATS = _leaves(float)
INTS = _leaves(int)
BOOLS = _leaves(bool)
SEEDS = [key for key in INTS if key.endswith(".seed")]


def test_the_schema_rows_cover_what_they_should():
    assert {"train.lr", "train.weight_decay", "reg.epsilon", "report.reference_eps", "attack.step_size"} <= set(FLOATS)
    assert {"train.epochs", "data.image_size", "attack.max_samples"} <= set(INTS)
    assert {"model.pretrained", "train.amp", "attack.quantize"} <= set(BOOLS)
    assert set(SEEDS) == {"split.seed", "attack.seed", "eval.seed", "cam.seed"}


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("key", FLOATS)
def test_every_float_is_finite(tmp_path, key, value):
    lines = _refusal(_write(tmp_path, _with({key: value})))
    assert len(lines) == 1 and LINE.match(lines[0])["key"] == key, lines
    assert "finite" in lines[0], lines


@pytest.mark.parametrize("key", INTS)
def test_no_int_takes_a_boolean(tmp_path, key):
    lines = _refusal(_write(tmp_path, _with({key: True})))
    assert lines == [f"{tmp_path / 'params.yaml'}: {key}: Input should be a valid integer (got True)"]


@pytest.mark.parametrize("key", BOOLS)
def test_no_boolean_takes_a_number_or_a_string(tmp_path, key):
    for value in (1, "true"):
        lines = _refusal(_write(tmp_path, _with({key: value})))
        assert lines == [f"{tmp_path / 'params.yaml'}: {key}: Input should be a valid boolean (got {value!r})"]


@pytest.mark.parametrize("key", SEEDS)
def test_every_seed_fits_numpy_and_torch(tmp_path, key):
    for value in (-1, MAX_SEED + 1, 2**70):
        lines = _refusal(_write(tmp_path, _with({key: value})))
        assert lines == [f"{tmp_path / 'params.yaml'}: {key}: a seed must be in [0, {MAX_SEED}] (numpy and torch "
                         f"are seeded from it) (got {value})"]
    assert getattr(load_params(_write(tmp_path, _with({key: MAX_SEED}))), key.split(".")[0]).seed == MAX_SEED


# --- what must still pass --------------------------------------------------------------

GOOD = [
    ("train.weight_decay", 5e-05),           # yaml.safe_dump writes 5.0e-05
    ("reg.alpha", 1),                        # an int is a float
    ("attack.eps", ["1/255", 0.00784313725490196, 0]),
    ("report.reference_eps", 0.00392156862745098),
    ("report.reference_eps", "2/255"),
    ("cam.target_layer", "conv_head"),
    ("cam.target_layer", "blocks.4.0"),
    ("cam.target_layer", "body.blocks.4"),
    ("cam.eps", ["1/255"]),
    ("cam.attacks", ["pgd"]),
    ("reevaluate.cron", "17 5 * * 2"),
    ("reevaluate.cron", "*/15 0-6 1,15 jan-jun mon-fri"),
    ("reevaluate.cron", "0 3 29 2 *"),       # leap days only, but it does fire
    ("reevaluate.aliases", ["champion", "reg-seed1"]),
    ("train.seeds", [0, MAX_SEED]),
]


LAYERS_REFUSED = [("blocks.99", "no such layer"), ("blocks", "never calls this module"),
                  ("classifier", "not a (N, C, H, W) feature map")]


@pytest.mark.parametrize(("layer", "says"), LAYERS_REFUSED)
def test_a_cam_layer_the_model_lacks_is_refused_by_params_check_and_before_training(tmp_path, layer, says):
    """The layer needs the architecture (explain/layers.py): `params check` and the train
    stage refuse it, long before cam_iinc would have."""
    import subprocess
    import sys

    from robust_deepfake.explain.layers import require_target_layer
    from robust_deepfake.errors import StageError

    path = _write(tmp_path, _with({"cam.target_layer": layer}))
    params = load_params(path)  # the schema alone accepts it
    with pytest.raises(StageError, match=f"cam.target_layer: .*{re.escape(says)}.*\\(got {re.escape(repr(layer))}\\)"):
        require_target_layer(params)
    result = subprocess.run([sys.executable, "-m", "robust_deepfake.cli", "params", "check", "--schema-only", str(path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "cam.target_layer: " in result.stderr and says in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("layer", ["conv_head", "blocks.4.0", "body.blocks.4"])
def test_cam_layers_the_model_has_pass(layer):
    from robust_deepfake.explain.layers import target_layer_problem

    assert target_layer_problem("efficientnet_b0", layer) is None


@pytest.mark.parametrize(("dotted", "value"), GOOD, ids=[f"{r[0]}={r[1]!r}"[:60] for r in GOOD])
def test_good_values_still_pass(tmp_path, dotted, value):
    load_params(_write(tmp_path, _with({dotted: value})))


@pytest.mark.parametrize("overrides", [None, "configs/dffd_gpu.yaml", "tests/micro_params.yaml"])
def test_the_shipped_params_pass(tmp_path, overrides):
    target = tmp_path / "params.yaml"
    target.write_text((REPO / "params.yaml").read_text())
    if overrides:
        assert merge_params_file(REPO / overrides, target)
    load_params(target)
    main(["params", "check", "--schema-only", str(target)])


def test_dvc_style_exponents_are_floats(tmp_path):
    """`dvc exp run -S train.weight_decay=5e-5` writes `5e-05`: YAML 1.2 reads a float,
    PyYAML's YAML 1.1 a string (which strict floats would refuse)."""
    text = (REPO / "params.yaml").read_text()
    text = text.replace("weight_decay: 0.0001", "weight_decay: 5e-05").replace("lr: 0.004 ", "lr: 4E-3  ")
    path = tmp_path / "params.yaml"
    path.write_text(text)
    params = load_params(path)
    assert params.train.weight_decay == 5e-05 and params.train.lr == 4e-3


def test_yaml_merge_keys_still_work(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("eval: &shared\n  seed: 3\ncam:\n  <<: *shared\n  seed: 4\n")
    params = load_params(path)
    assert (params.eval.seed, params.cam.seed) == (3, 4)


# --- the YAML itself ---------------------------------------------------------------------

DEMO_TEXT = (REPO / "params.yaml").read_text()
BROKEN_YAML = [
    ("duplicate key", DEMO_TEXT.replace("  epochs: 4\n", "  epochs: 4\n  epochs: 1\n"),
     r"^{path}: train\.epochs: duplicate key on lines (\d+) and (\d+) \(DVC refuses the file; keep one\)$"),
    ("duplicate section", DEMO_TEXT + "\ntrain:\n  epochs: 1\n", r"^{path}: train: duplicate key on lines \d+ and \d+"),
    ("python tag", DEMO_TEXT.replace("  epochs: 4\n", "  epochs: !!python/object/apply:os.system ['true']\n"),
     r"^{path}: train\.epochs: YAML tag '!!python/object/apply:os\.system' on line \d+ is not allowed"),
    ("custom tag", DEMO_TEXT.replace("steps: 3", "steps: !steps 3"), r"^{path}: attack\.steps: YAML tag '!steps'"),
    ("syntax error", DEMO_TEXT.replace("seeds: [0, 1, 2]", "seeds: [0, 1, 2"), r"^{path}: line \d+: invalid YAML: "),
]


@pytest.mark.parametrize(("text", "pattern"), [row[1:] for row in BROKEN_YAML], ids=[row[0] for row in BROKEN_YAML])
def test_broken_yaml_is_refused_with_the_line(tmp_path, capsys, text, pattern):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=pattern.format(path=re.escape(str(path)))):
        load_params(path)
    with pytest.raises(SystemExit) as exit_info:
        main(["params", "check", "--schema-only", str(path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}: ") and "Traceback" not in err


def test_duplicate_key_lines_are_the_real_lines(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(DEMO_TEXT.replace("  epochs: 4\n", "  epochs: 4\n  epochs: 1\n"))
    with pytest.raises(ConfigError) as info:
        load_params(path)
    first, second = map(int, re.search(r"lines (\d+) and (\d+)", str(info.value)).groups())
    lines = path.read_text().splitlines()
    assert lines[first - 1] == "  epochs: 4" and lines[second - 1] == "  epochs: 1"


# --- params merge ------------------------------------------------------------------------------

BROKEN_OVERRIDES = [
    ("syntax error", "train:\n  epochs: [1\n", r"^{overrides}: line \d+: invalid YAML"),
    ("duplicate key", "train:\n  epochs: 1\n  epochs: 2\n", r"^{overrides}: train\.epochs: duplicate key on lines 2 and 3"),
    ("python tag", "train:\n  epochs: !!python/object/apply:os.system ['true']\n",
     r"^{overrides}: train\.epochs: YAML tag '!!python/object/apply:os\.system' on line 2 is not allowed"),
    ("empty", "", r"^{overrides}: no values to merge \(empty, or only comments\); {params} left unchanged$"),
    ("only comments", "# nothing yet\n", r"^{overrides}: no values to merge"),
    ("empty mapping", "{}\n", r"^{overrides}: no values to merge"),
    ("a list", "- train\n", r"^{overrides}: top level must be a mapping"),
    ("a bad value", "reevaluate:\n  cron: a b c d e\n",
     r"^{params} merged with {overrides}: reevaluate\.cron: not a valid cron expression"),
]


@pytest.mark.parametrize(("text", "pattern"), [row[1:] for row in BROKEN_OVERRIDES],
                         ids=[row[0] for row in BROKEN_OVERRIDES])
def test_merge_refuses_broken_overrides_and_leaves_params_alone(tmp_path, capsys, text, pattern):
    params, overrides = tmp_path / "params.yaml", tmp_path / "overrides.yaml"
    params.write_text(DEMO_TEXT)
    overrides.write_text(text)
    before = params.stat().st_mtime_ns
    expected = pattern.format(overrides=re.escape(str(overrides)), params=re.escape(str(params)))
    with pytest.raises(ConfigError, match=expected):
        merge_params_file(overrides, params)
    with pytest.raises(SystemExit) as exit_info:
        main(["params", "merge", str(overrides), "--into", str(params)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert params.read_text() == DEMO_TEXT and params.stat().st_mtime_ns == before


def test_merge_refuses_a_broken_params_file(tmp_path):
    params, overrides = tmp_path / "params.yaml", tmp_path / "overrides.yaml"
    broken = DEMO_TEXT.replace("  epochs: 4\n", "  epochs: 4\n  epochs: 1\n")
    params.write_text(broken)
    overrides.write_text("train:\n  patience: 2\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(params))}: train\.epochs: duplicate key"):
        merge_params_file(overrides, params)
    assert params.read_text() == broken


def test_merge_that_changes_nothing_does_not_rewrite(tmp_path, capsys):
    params, overrides = tmp_path / "params.yaml", tmp_path / "overrides.yaml"
    params.write_text(DEMO_TEXT)
    overrides.write_text("train:\n  epochs: 4\n")
    os.utime(params, ns=(1, 1))
    assert merge_params_file(overrides, params) == {}
    main(["params", "merge", str(overrides), "--into", str(params)])
    assert "unchanged, not rewritten" in capsys.readouterr().out
    assert params.stat().st_mtime_ns == 1 and params.read_text() == DEMO_TEXT


def test_no_nan_survives_a_merge(tmp_path):
    params, overrides = tmp_path / "params.yaml", tmp_path / "overrides.yaml"
    params.write_text(DEMO_TEXT)
    overrides.write_text("attack:\n  eps: [.nan]\n")
    with pytest.raises(ConfigError, match=r": attack\.eps\.0: expected a finite number"):
        merge_params_file(overrides, params)
    assert params.read_text() == DEMO_TEXT
    assert not math.isnan(load_params(params).attack.eps[0])
