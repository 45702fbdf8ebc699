"""The params contract: params.yaml is checked when it is loaded (what every stage and
`robust-deepfake params check` do), and every value that would crash a later stage, or be
read silently as something else, is refused with one line per problem naming the key:
`params.yaml: <dotted.key>: <what is wrong> (got <value>)`.

One table of bad values, each written into a copy of the demo params.yaml and loaded the
way the stages load it; rows generated from the schema (every float refuses NaN and
infinities, every int refuses `true`, every boolean refuses 1, every seed its range);
values that must still pass; the shipped params; broken YAML. `params merge` is tested in
test_params_files.py."""

from __future__ import annotations

import copy
import re
import subprocess
import sys
import types
import typing
from pathlib import Path

import pytest
import yaml

from helpers import REPO
from robust_deepfake.cli import main
from robust_deepfake.config import (
    MAX_SEED,
    ConfigError,
    Params,
    flatten,
    load_params,
    parse_pixel_value,
    validate,
)
from robust_deepfake.config.merge import merge_params_file

DEMO = yaml.safe_load((REPO / "params.yaml").read_text())
DEMO_TEXT = (REPO / "params.yaml").read_text()
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


# --- bad values ------------------------------------------------------------------------

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
    # values of the wrong kind, or out of range, for their key
    ("reg.alpah", 0.3, "reg.alpah", "unknown key"),
    ("bogus", {}, "bogus", "unknown key"),
    ("reg.alpha", 1.5, "reg.alpha", "less than or equal to 1"),
    ("reg.alpha", -0.1, "reg.alpha", "greater than or equal to 0"),
    ("reg.alpha", 0, "reg.alpha", "0 is not the baseline"),
    ("train.workers", 0, "train.workers", "greater than or equal to 1"),
    ("eval.num_threads", 0, "eval.num_threads", "greater than or equal to 1"),
    ("train.epochs", "many", "train.epochs", "valid integer"),
    ("attack.eps", [-1 / 255], "attack.eps", "[0, 1]"),
    ("attack.eps", ["4/0"], "attack.eps.0", "division by zero"),
    ("attack.eps", ["1/255", "four"], "attack.eps.1", "k/255"),
    ("attack.attacks", ["pgd", "cw"], "attack.attacks.1", "'fgsm'"),
    ("split", {"val_fraction": 0.5, "test_fraction": 0.5}, "split", "must be < 1"),
    ("data.on_bad_file", "ignore", "data.on_bad_file", "'error' or 'skip'"),
    ("train.device", "gpu", "train.device", "cuda:N"),
    ("reevaluate.cron", "daily", "reevaluate.cron", "5-field"),
    ("train.seeds", [], "train.seeds", "at least one seed"),
    ("train.seeds", [0, 1, 0], "train.seeds", "unique"),
    ("train.seeds", [1, MAX_SEED + 1], "train.seeds.1", f"[0, {MAX_SEED}]"),
    ("train.seeds", [0.5], "train.seeds.0", "valid integer"),
    ("train.seeds", 0, "train.seeds", "valid list"),
    *[("reg.epsilon_scale", scale, "reg.epsilon_scale", "'relative' or 'absolute'")
      for scale in ["Relative", "percent", "", None, 1]],
    # paths the stages read or write, confined to the repository (the params file's folder)
    ("data.splits_dir", "/etc", "data.splits_dir", "/etc is outside the repository"),
    ("data.splits_dir", "../../outside", "data.splits_dir", "../../outside is outside the repository"),
    ("data.raw_dir", "data/../../raw", "data.raw_dir", "is outside the repository"),
    ("data.raw_dir", "~/raw", "data.raw_dir", "is outside the repository"),
    ("data.splits_dir", ".", "data.splits_dir", "is the repository itself"),
    ("data.splits_dir", "data/raw/splits", "data.splits_dir", "overlaps data.raw_dir"),
    ("data.raw_dir", "data", "data.splits_dir", "overlaps data.raw_dir"),
    # the worst-case ensemble, the masking checks and the criteria that read them
    ("attack.ensemble.apgd_steps", 0, "attack.ensemble.apgd_steps", "greater than or equal to 1"),
    ("attack.ensemble.apgd_restarts", 0, "attack.ensemble.apgd_restarts", "greater than or equal to 1"),
    ("attack.ensemble.square_queries", -1, "attack.ensemble.square_queries", "greater than or equal to 0"),
    ("attack.ensemble.fab", "no", "attack.ensemble.fab", "valid boolean"),
    ("attack.ensemble.autoattack", True, "attack.ensemble.autoattack", "unknown key"),
    ("attack.masking.eps", "3/255", "attack.masking.eps", "must be one of attack.eps (1/255, 2/255)"),
    ("attack.masking.eps", "0.5/255", "attack.masking.eps", "whole grey level"),
    ("attack.masking.eps", 0, "attack.masking.eps", "(0, 1]"),
    ("attack.masking.large_eps", "1/255", "attack.masking.large_eps", "must be larger than the masking eps (1/255)"),
    ("attack.masking.large_eps", "16.5/255", "attack.masking.large_eps", "whole grey level"),
    ("attack.masking.strong_factor", 1, "attack.masking.strong_factor", "greater than or equal to 2"),
    ("attack.masking.tolerance", 2, "attack.masking.tolerance", "less than or equal to 1"),
    ("attack.masking.noise_level", 1, "attack.masking.noise_level", "less than 1"),
    ("report.select_by", "pgd_f1", "report.select_by", "Input should be"),
    ("attack.attacks", ["fgsm", "bim"], "report.select_by", "needs pgd in attack.attacks"),
]


@pytest.mark.parametrize(("dotted", "value", "key", "says"), BAD, ids=[f"{r[0]}={r[1]!r}"[:60] for r in BAD])
def test_a_bad_value_is_refused_naming_its_key(tmp_path, dotted, value, key, says):
    lines = _refusal(_write(tmp_path, _with({dotted: value})))
    _assert_names(lines, key, says)
    assert len(lines) == 1, lines
    if "unknown key" not in says and not dotted.startswith("data."):
        assert "(got " in lines[0] or "got " in LINE.match(lines[0])["message"], lines[0]


def test_paths_inside_the_repository_and_the_unconfined_keys_pass(tmp_path):
    """An absolute path inside the repository, `..` that stays inside it, and the keys that
    may point anywhere: model.weights_path (read only) and tracking.tracking_uri (a store)."""
    outside = tmp_path.parent / "elsewhere"
    params = load_params(_write(tmp_path, _with({
        "data.raw_dir": str(tmp_path / "data" / "raw"), "data.splits_dir": "data/x/../splits",
        "model.weights_path": str(outside / "weights.safetensors"),
        "tracking.tracking_uri": f"sqlite:///{outside / 'mlflow.db'}"})))
    assert params.data.splits_dir == "data/x/../splits"


def test_the_docs_name_every_confined_and_unconfined_key(repo_root):
    from robust_deepfake.config import CONFINED_KEYS, UNCONFINED_KEYS

    text = (repo_root / "docs" / "params.md").read_text()
    section = text[text.index("## Paths"):]
    for key in [*CONFINED_KEYS, *UNCONFINED_KEYS]:
        assert f"`{key}`" in section, key


def test_reference_eps_must_be_in_cam_eps_where_that_is_set(tmp_path):
    lines = _refusal(_write(tmp_path, _with({"cam.eps": ["1/255"], "report.reference_eps": "2/255"})))
    assert lines == [f"{tmp_path / 'params.yaml'}: report.reference_eps: must also be one of cam.eps (1/255): the CAM "
                     "figures are drawn at it (or set cam.eps to null: all of attack.eps) (got 2/255)"]


def test_an_ensemble_criterion_needs_the_ensemble(tmp_path):
    lines = _refusal(_write(tmp_path, _with({"attack.ensemble.enabled": False, "report.select_by": "ensemble_evasion"})))
    assert lines == [f"{tmp_path / 'params.yaml'}: report.select_by: needs the ensemble: "
                     "attack.ensemble.enabled is false (got ensemble_evasion)"]


def test_every_problem_gets_its_own_line(tmp_path):
    lines = _refusal(_write(tmp_path, _with({"split.seed": -1, "train.epochs": True, "reg.epsilon": float("nan")})))
    assert sorted(LINE.match(line)["key"] for line in lines) == ["reg.epsilon", "split.seed", "train.epochs"]


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


# --- rows generated from the schema --------------------------------------------------


def _scalar(annotation: object) -> object:
    """float for `float`, `float | None` and `Annotated[float, ...] | None`; else the type itself."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        inner = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        annotation = inner[0] if len(inner) == 1 else annotation
    if typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    return annotation


def _leaves(kind: type, model: type = Params, prefix: str = "") -> list[str]:
    """Dotted keys of every field of `kind`, nested sections (attack.ensemble) included."""
    keys = []
    for name, field in model.model_fields.items():
        annotation = _scalar(field.annotation)
        if isinstance(annotation, type) and hasattr(annotation, "model_fields"):
            keys += _leaves(kind, annotation, f"{prefix}{name}.")
        elif annotation is kind:
            keys.append(f"{prefix}{name}")
    return keys


FLOATS = _leaves(float)
INTS = _leaves(int)
BOOLS = _leaves(bool)
SEEDS = [key for key in INTS if key.endswith(".seed")]


def test_the_schema_rows_cover_what_they_should():
    assert {"train.lr", "train.weight_decay", "reg.epsilon", "report.reference_eps", "attack.step_size"} <= set(FLOATS)
    assert {"train.epochs", "data.image_size", "attack.max_samples"} <= set(INTS)
    assert {"model.pretrained", "train.amp", "attack.quantize", "attack.ensemble.fab"} <= set(BOOLS)
    assert {"attack.ensemble.apgd_steps", "attack.masking.strong_runs"} <= set(INTS)
    assert {"attack.masking.eps", "attack.masking.tolerance"} <= set(FLOATS)
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
    ("reg.epsilon_scale", "relative"),
    ("reg.epsilon_scale", "absolute"),
    ("attack.ensemble.square_queries", 0),   # Square left out
    ("attack.masking.eps", "2/255"),
    ("attack.ensemble.enabled", False),      # the checks then run their own ensemble
    ("report.select_by", "pgd_evasion"),
    ("report.select_by", "ensemble_accuracy"),
]


@pytest.mark.parametrize(("dotted", "value"), GOOD, ids=[f"{r[0]}={r[1]!r}"[:60] for r in GOOD])
def test_good_values_still_pass(tmp_path, dotted, value):
    load_params(_write(tmp_path, _with({dotted: value})))


def test_train_seeds_keep_their_order(tmp_path):
    path = _write(tmp_path, _with({"train.seeds": [MAX_SEED, 0, 7]}))
    assert load_params(path).train.seeds == [MAX_SEED, 0, 7]


LAYERS_REFUSED = [("blocks.99", "no such layer"), ("blocks", "never calls this module"),
                  ("classifier", "not a (N, C, H, W) feature map")]


@pytest.mark.parametrize(("layer", "says"), LAYERS_REFUSED)
def test_a_cam_layer_the_model_lacks_is_refused_by_params_check_and_before_training(tmp_path, capsys, layer, says):
    """The layer needs the architecture (explain/layers.py): `params check` and the train
    stage refuse it, long before cam_iinc would have. (The CLI runs in-process here; a
    stage's exit through a real process is test_stage_exits_nonzero_with_one_line_naming_the_key.)"""
    from robust_deepfake.explain.layers import require_target_layer
    from robust_deepfake.errors import StageError

    path = _write(tmp_path, _with({"cam.target_layer": layer}))
    params = load_params(path)  # the schema alone accepts it
    with pytest.raises(StageError, match=f"cam.target_layer: .*{re.escape(says)}.*\\(got {re.escape(repr(layer))}\\)"):
        require_target_layer(params)
    with pytest.raises(SystemExit) as exit_info:
        main(["params", "check", "--schema-only", str(path)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "cam.target_layer: " in err and says in err
    assert "Traceback" not in err


@pytest.mark.parametrize("layer", ["conv_head", "blocks.4.0", "body.blocks.4"])
def test_cam_layers_the_model_has_pass(layer):
    from robust_deepfake.explain.layers import target_layer_problem

    assert target_layer_problem("efficientnet_b0", layer) is None


def test_pixel_values_accept_fractions():
    assert parse_pixel_value("4/255") == pytest.approx(4 / 255)
    assert parse_pixel_value(" 8 / 255 ") == pytest.approx(8 / 255)
    assert parse_pixel_value(0.5) == 0.5
    with pytest.raises(ValueError):
        parse_pixel_value(True)


def test_eps_are_sorted_and_deduplicated():
    params = validate({"attack": {"eps": ["4/255", "1/255", "4/255"]}})
    assert params.attack.eps == pytest.approx([1 / 255, 4 / 255])


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


# --- the shipped params ------------------------------------------------------------------


@pytest.mark.parametrize("overrides", [None, "configs/dffd_gpu.yaml", "tests/micro_params.yaml"])
def test_the_shipped_params_pass(tmp_path, overrides):
    """params.yaml, and params.yaml merged with each shipped overrides file, load and pass
    `params check`; the eps grid starts at the clean point and is sorted."""
    target = tmp_path / "params.yaml"
    target.write_text(DEMO_TEXT)
    if overrides:
        assert merge_params_file(REPO / overrides, target)
    params = load_params(target)
    assert params.attack.eps_grid[0] == 0.0
    assert params.attack.eps_grid == sorted(params.attack.eps_grid)
    main(["params", "check", "--schema-only", str(target)])


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


# --- the YAML itself ---------------------------------------------------------------------

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
