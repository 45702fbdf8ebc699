"""`robust-deepfake params merge` (comments, nulls, broken overrides or params left
alone), `params check` (the paths params name, the cron Prefect would serve) and the CLI's
--help texts."""

from __future__ import annotations

import argparse
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO
from robust_deepfake.cli import build_parser, main
from robust_deepfake.config import ConfigError, load_params, validate
from robust_deepfake.config.merge import merge_params_file, path_problems

BASE = """\
data:
  raw_dir: data/raw             # the layout data.dvc tracks
  image_size: 64                # the sample is 64 px; DFFD runs use 224
  num_workers: 0                # DataLoader workers when streaming

reg:
  epsilon: 0.5                  # size of the perturbation;
                                # chosen from the measured dose-response
  mode: random                  # random | gradient

cam:
  method: gradcam               # gradcam | gradcam++
  # At 64 px the last conv layer sees a 2x2 map.
  target_layer: blocks.4
  attacks: null                 # null: all of attack.attacks

model:
  weights_path: null
  pretrained: false             # true needs weights_path offline

attack:
  max_samples: 128              # seeded, stratified subset of the test split
"""

OVERRIDES = """\
data:
  image_size: 224               # DFFD images are 299x299
  num_workers: 8
reg:
  epsilon: 0.3
cam:
  method: gradcam++
  target_layer: conv_head
attack:
  max_samples: null             # the full test split
"""


@pytest.fixture
def merged(tmp_path) -> str:
    (tmp_path / "params.yaml").write_text(BASE)
    (tmp_path / "dffd.yaml").write_text(OVERRIDES)
    changed = merge_params_file(tmp_path / "dffd.yaml", tmp_path / "params.yaml")
    assert changed["data.image_size"] == (64, 224) and changed["attack.max_samples"] == (128, None)
    assert "data.raw_dir" not in changed
    return (tmp_path / "params.yaml").read_text()


def _line(text: str, start: str) -> str:
    return next(line.strip() for line in text.splitlines() if line.strip().startswith(start))


def test_merge_replaces_the_comments_of_changed_values(merged):
    assert _line(merged, "image_size:") == "image_size: 224               # merged from dffd.yaml: DFFD images are 299x299"
    assert _line(merged, "num_workers:") == "num_workers: 8                # merged from dffd.yaml"
    assert "DataLoader workers" not in merged and "the sample is 64 px" not in merged
    # a stale comment's continuation lines go with it
    assert _line(merged, "epsilon:").endswith("# merged from dffd.yaml") and "dose-response" not in merged
    assert _line(merged, "method:").endswith("# merged from dffd.yaml") and "gradcam | gradcam++" not in merged


def test_merge_keeps_what_still_applies(merged):
    assert _line(merged, "raw_dir:").endswith("# the layout data.dvc tracks")
    assert _line(merged, "mode:").endswith("# random | gradient")
    assert "  # At 64 px the last conv layer sees a 2x2 map.\n  target_layer: conv_head" in merged, \
        "a comment line about the next key stays with it"
    assert "num_workers: 8                # merged from dffd.yaml\n\nreg:" in merged, "blank lines between sections stay"


def test_merge_writes_null_explicitly(merged):
    assert _line(merged, "weights_path:") == "weights_path: null"
    assert _line(merged, "attacks:") == "attacks: null                 # null: all of attack.attacks"
    assert _line(merged, "max_samples:") == "max_samples: null             # merged from dffd.yaml: the full test split"
    assert not [line for line in merged.splitlines() if line.startswith("  ") and line.rstrip().endswith(":")]


def test_merging_the_shipped_dffd_overrides(repo_root, tmp_path):
    target = tmp_path / "params.yaml"
    original = (repo_root / "params.yaml").read_text()
    target.write_text(original)
    changed = merge_params_file(repo_root / "configs" / "dffd_gpu.yaml", target)
    assert changed["data.image_size"] == (64, 224)
    text = target.read_text()
    merged = load_params(target)
    assert merged.data.image_size == 224 and merged.model.pretrained
    assert merged.model.weights_path == "weights/efficientnet_b0_ra-3dd342df.pth"
    assert merged.attack.eps_grid == pytest.approx([0, 1 / 255, 2 / 255, 4 / 255, 8 / 255, 16 / 255])
    ensemble = merged.attack.ensemble  # full strength: APGD 100 steps with a restart, Square 5000 queries, FAB
    assert (ensemble.apgd_steps, ensemble.apgd_restarts, ensemble.square_queries, ensemble.fab) == (100, 2, 5000, True)
    assert merged.attack.masking_eps == merged.report.reference_eps
    assert "# Every knob" in text, "comments must survive the merge"
    assert "also available: mifgsm" not in text, "attack.attacks now lists mifgsm: the replaced comment must go"
    assert _line(text, "tracking_uri:").startswith("tracking_uri: null"), "unchanged nulls stay `null`"
    # weights_path and attack.masking.eps (value and comment) stop being null; max_samples' "(null = all)" comment goes
    assert text.count("null") == original.count("null") - 4
    merge_params_file(repo_root / "configs" / "dffd_gpu.yaml", target)
    assert target.read_text() == text, "merging twice changes nothing"


# --- params check: the paths ------------------------------------------------------


def _params(**sections) -> object:
    return validate(sections)


def test_check_passes_when_every_named_path_is_there(tmp_path):
    (tmp_path / "data" / "raw" / "masks").mkdir(parents=True)
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "b0.pth").write_bytes(b"x")
    params = _params(model={"pretrained": True, "weights_path": "weights/b0.pth"},
                     tracking={"tracking_uri": "sqlite:///mlflow.db"})
    assert path_problems(params, tmp_path) == []


@pytest.mark.parametrize(
    ("sections", "key", "says"),
    [
        ({"model": {"pretrained": True, "weights_path": "weights/missing.pth"}}, "model.weights_path",
         "weights/missing.pth (relative to {root}) does not exist"),
        ({"model": {"weights_path": "weights/missing.pth"}}, "model.weights_path", "unused while model.pretrained"),
        ({"model": {"weights_path": "weights"}}, "model.weights_path", "is not a file"),
        ({"data": {"raw_dir": "elsewhere/raw"}}, "data.raw_dir", "elsewhere/raw (relative to {root}) does not exist"),
        ({"data": {"raw_dir": "weights"}}, "data.raw_dir", "masks dir"),
        ({"data": {"splits_dir": "data/raw/metadata.csv"}}, "data.splits_dir", "is not a directory"),
        ({"tracking": {"tracking_uri": "sqlite:///no/such/dir/mlflow.db"}}, "tracking.tracking_uri",
         "the folder of no/such/dir/mlflow.db"),
    ],
)
def test_check_names_the_key_and_the_path(tmp_path, sections, key, says):
    (tmp_path / "data" / "raw").mkdir(parents=True)
    (tmp_path / "data" / "raw" / "metadata.csv").write_text("path\n")
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "masks").write_text("not a folder")
    problems = path_problems(_params(**sections), tmp_path)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{key}: ") and says.format(root=tmp_path.resolve()) in problems[0]


def test_check_cli_fails_on_a_missing_weights_file(tmp_path, capsys):
    (tmp_path / "data" / "raw").mkdir(parents=True)
    params = tmp_path / "params.yaml"
    params.write_text("model:\n  pretrained: true\n  weights_path: /nonexistent/b0.pth\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["params", "check", str(params)])
    assert exit_info.value.code == 2
    assert f"error: {params}: model.weights_path: /nonexistent/b0.pth does not exist" in capsys.readouterr().err
    main(["params", "check", "--schema-only", str(params)])
    assert "ok (schema only" in capsys.readouterr().out


def test_check_cli_passes_on_the_shipped_params(repo_root):
    result = subprocess.run([sys.executable, "-m", "robust_deepfake.cli", "params", "check", "--schema-only"],
                            cwd=repo_root, capture_output=True, text=True)
    assert result.returncode == 0 and "params.yaml: ok" in result.stdout, result.stderr


# --- --help ----------------------------------------------------------------------------


def _parsers(parser: argparse.ArgumentParser, name: str = "robust-deepfake"):
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from _parsers(sub, f"{name} {sub_name}")


def test_every_argument_has_help_text():
    missing = []
    parsers = list(_parsers(build_parser()))
    assert len(parsers) >= 10
    for name, parser in parsers:
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            if not (action.help or "").strip():
                missing.append(f"{name}: {action.option_strings or action.dest}")
    assert not missing, missing


def test_help_shows_the_defaults():
    parsers = dict(_parsers(build_parser()))
    for name, parser in parsers.items():
        text = parser.format_help()
        for action in parser._actions:
            if action.default not in (None, False, argparse.SUPPRESS) and action.default != "":
                assert f"default: {action.default}" in " ".join(text.split()), f"{name}: {action.dest}"
    assert "(default: data/raw)" in parsers["robust-deepfake data ingest-dffd"].format_help()
    assert "(default: 0.5)" in parsers["robust-deepfake predict"].format_help()


def test_help_runs_for_every_command(capsys):
    for name in ("data ensure", "data generate", "data ingest-dffd", "data track", "params check", "params merge",
                 "predict"):
        with pytest.raises(SystemExit) as exit_info:
            main([*name.split(), "--help"])
        assert exit_info.value.code == 0
        assert "usage: robust-deepfake " + name in " ".join(capsys.readouterr().out.split())


def test_shown_paths_are_relative_to_the_params_file(tmp_path):
    assert Path(tmp_path).is_dir()
    problems = path_problems(_params(data={"raw_dir": "raw"}), tmp_path)
    assert str(tmp_path.resolve()) in problems[0]


CRONS_PREFECT_REFUSES = [("a b c d e", "not a valid cron expression"), ("61 3 * * 1", "not a valid cron expression"),
                         ("0 3 30 2 *", "never fires: no date matches it")]


@pytest.mark.parametrize(("cron", "says"), CRONS_PREFECT_REFUSES)
def test_params_check_and_merge_refuse_a_cron_prefect_would_not_run(repo_root, tmp_path, capsys, cron, says):
    """Five plain fields pass every stage's params load (no Prefect import there); `params
    check` and `params merge` ask Prefect's own parser, and refuse naming the key."""
    target = tmp_path / "params.yaml"
    original = (repo_root / "params.yaml").read_text()
    target.write_text(original.replace('cron: "0 3 * * 1"', f'cron: "{cron}"', 1))
    assert load_params(target).reevaluate.cron == cron
    with pytest.raises(SystemExit) as info:
        main(["params", "check", "--schema-only", str(target)])
    assert info.value.code == 2
    assert capsys.readouterr().err.strip() == f"error: {target}: reevaluate.cron: {says}" + (
        "" if says.startswith("never") else ": minute hour day-of-month month day-of-week") + f" (got {cron!r})"
    overrides = tmp_path / "overrides.yaml"
    overrides.write_text(f'reevaluate:\n  cron: "{cron}"\n')
    (tmp_path / "base.yaml").write_text(original)
    with pytest.raises(ConfigError, match=rf"reevaluate\.cron: {re.escape(says)}"):
        merge_params_file(overrides, tmp_path / "base.yaml")
    assert (tmp_path / "base.yaml").read_text() == original


def test_the_sample_gpu_overrides_are_sized_for_power(repo_root, tmp_path):
    """configs/sample_gpu.yaml: enough seeds to detect report.min_effect with 80% power at
    the spread measured on the sample (SD 0.048, docs/statistics.md), the whole test split."""
    from robust_deepfake.verdict.claims import seeds_needed

    target = tmp_path / "params.yaml"
    target.write_text((repo_root / "params.yaml").read_text())
    merge_params_file(repo_root / "configs" / "sample_gpu.yaml", target)
    params = load_params(target)
    assert len(params.train.seeds) >= seeds_needed(params.report.min_effect, 0.048) == 48
    assert params.attack.max_samples is None and params.eval.n_bootstrap >= 200


# --- params merge: what it refuses ------------------------------------------------------

DEMO_TEXT = (REPO / "params.yaml").read_text()
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
    ("a path outside the repository", "data:\n  splits_dir: ../../outside\n",
     r"^{params} merged with {overrides}: data\.splits_dir: \.\./\.\./outside is outside the repository"),
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


# --- params check on an overrides file, --version ---------------------------------------


def _repo_with_params(tmp_path: Path) -> Path:
    """A repository (dvc.yaml) with the shipped params.yaml, its data folder and configs/."""
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    (tmp_path / "data" / "raw").mkdir(parents=True)
    (tmp_path / "configs").mkdir()
    return tmp_path


def test_check_validates_an_overrides_file_merged_onto_params_yaml(tmp_path, capsys):
    """configs/*.yaml set a few sections: checked as `params merge` would write them, paths
    from the repository root, not from configs/; params.yaml is not touched."""
    repo = _repo_with_params(tmp_path)
    before = (repo / "params.yaml").read_text()
    overrides = repo / "configs" / "gpu.yaml"
    overrides.write_text("train:\n  epochs: 20\n  seeds: [0, 1, 2, 3, 4]\n")
    main(["params", "check", str(overrides)])
    out = capsys.readouterr().out
    assert f"{overrides} merged onto {repo / 'params.yaml'}: ok" in out
    assert f"`robust-deepfake params merge {overrides}`" in out
    assert (repo / "params.yaml").read_text() == before


def test_check_of_an_overrides_file_names_the_merged_problem(tmp_path, capsys):
    repo = _repo_with_params(tmp_path)
    overrides = repo / "configs" / "gpu.yaml"
    overrides.write_text("train:\n  epochs: -3\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["params", "check", str(overrides)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "train.epochs" in err and str(overrides) in err
    assert "data.raw_dir" not in err  # the repository's data folder is found from the root
    overrides.write_text("model:\n  pretrained: true\n  weights_path: weights/b0.pth\n")
    with pytest.raises(SystemExit):
        main(["params", "check", str(overrides)])
    err = capsys.readouterr().err
    assert err.count("error: ") == 1 and f"weights/b0.pth (relative to {repo.resolve()}) does not exist" in err


def test_check_onto_and_whole_choose_how_a_file_is_read(tmp_path, capsys):
    repo = _repo_with_params(tmp_path)
    overrides = repo / "configs" / "short.yaml"
    overrides.write_text("train:\n  epochs: 2\n")
    other = repo / "other.yaml"
    other.write_text((repo / "params.yaml").read_text().replace("epochs:", "epochs: 7 #", 1))
    main(["params", "check", "--schema-only", "--onto", str(other), str(overrides)])
    assert f"merged onto {other}: ok" in capsys.readouterr().out
    main(["params", "check", "--schema-only", "--whole", str(overrides)])
    out = capsys.readouterr().out
    assert out.startswith(f"{overrides}: ok") and "merged" not in out


def test_version_is_the_package_version(capsys):
    import tomllib

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == f"robust-deepfake {version}"
