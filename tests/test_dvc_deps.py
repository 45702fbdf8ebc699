"""dvc.yaml's code deps stay honest: every stage lists its script and every project module
the script imports, transitively, and no code it does not import, so `dvc repro` re-runs
a stage whenever code it runs changes, and only then.

The closure is computed statically (ast, nothing is imported): every `import` and
`from ... import` anywhere in a file counts, inside functions and under TYPE_CHECKING
too. `from robust_deepfake.x import y` counts x/y.py when y is a submodule, else
x/__init__.py. A package that is only executed as the parent of an imported submodule
counts too, unless its __init__.py is inert (a docstring and literal constants only):
editing such a file cannot change a stage's result, and the day it gains code this
test demands it.
"""

from __future__ import annotations

import ast
import copy
import re
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from robust_deepfake.paths import VARIANTS

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PACKAGE = "robust_deepfake"
CODE_DIRS = ("src/", "stages/")
_SCRIPT = re.compile(r"\bpython[\d.]*\s+(?:-\S+\s+)*(\S+\.py)\b")


def load_dvc_yaml(root: Path = ROOT) -> dict[str, Any]:
    return yaml.safe_load((root / "dvc.yaml").read_text())


def stage_bodies(dvc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each stage's definition; a foreach stage's `do` template (with ${item} left in)."""
    return {name: stage.get("do", stage) for name, stage in dvc["stages"].items()}


def entry_names(entries: list[Any] | None) -> list[str]:
    """deps/outs/params entries are strings or one-key mappings (`path: {cache: false}`)."""
    names: list[str] = []
    for entry in entries or []:
        names.extend([entry] if isinstance(entry, str) else entry)
    return names


def stage_script(body: dict[str, Any]) -> str:
    match = _SCRIPT.search(body["cmd"])
    assert match, f"no `python <script>.py` in cmd {body['cmd']!r}"
    return match.group(1)


def module_file(module: str, src: Path = SRC) -> Path | None:
    """src/a/b/__init__.py or src/a/b.py for module a.b; None if it is not a project file."""
    base = src.joinpath(*module.split("."))
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def module_name(path: Path, src: Path = SRC) -> str | None:
    """The dotted name of a file under src/ (a package's name for its __init__.py)."""
    try:
        parts = list(path.relative_to(src).with_suffix("").parts)
    except ValueError:
        return None
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, src: Path = SRC) -> Iterator[tuple[str, bool]]:
    """(module, direct) for every import in the file. direct=False: only the package
    of `from package import submodule` (executed as the parent of the submodule)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    own = module_name(path, src)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, True
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this file's package
                assert own, f"{path}: relative import outside {src}"
                package = own.split(".")
                if path.name != "__init__.py":
                    package = package[:-1]
                package = package[: len(package) - node.level + 1]
                base = ".".join([*package, base] if base else package)
            submodules = [f"{base}.{alias.name}" for alias in node.names
                          if module_file(f"{base}.{alias.name}", src)]
            yield from ((name, True) for name in submodules)
            yield base, len(submodules) < len(node.names)


def is_inert(path: Path) -> bool:
    """Only a docstring, `from __future__` imports and literal constants."""
    for statement in ast.parse(path.read_text()).body:
        if isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant):
            continue
        if isinstance(statement, ast.ImportFrom) and statement.module == "__future__":
            continue
        if isinstance(statement, ast.Assign | ast.AnnAssign) and isinstance(statement.value, ast.Constant):
            continue
        return False
    return True


def code_closure(script: Path, src: Path = SRC, package: str = PACKAGE) -> dict[Path, Path | None]:
    """The script and every project file it executes on import, transitively, each
    mapped to the file that first imports it (the script to None)."""
    seen: dict[Path, Path | None] = {script: None}
    todo = [script]
    while todo:
        importer = todo.pop()
        for module, direct in imported_modules(importer, src):
            if module != package and not module.startswith(package + "."):
                continue
            parts = module.split(".")
            # Importing a.b.c runs a/__init__.py and a/b/__init__.py first.
            chain = [(".".join(parts[:i]), False) for i in range(1, len(parts))] + [(module, direct)]
            for name, explicit in chain:
                path = module_file(name, src)
                assert path is not None, f"{module} (imported by {importer}) has no file under {src}"
                if path in seen or (not explicit and path.name == "__init__.py" and is_inert(path)):
                    continue
                seen[path] = importer
                todo.append(path)
    return seen


def covered(path: PurePosixPath, declared: list[str]) -> bool:
    return any(path == PurePosixPath(dep) or PurePosixPath(dep) in path.parents for dep in declared)


def missing_code_deps(dvc: dict[str, Any], root: Path = ROOT) -> list[tuple[str, str, str]]:
    """(stage, file, the file importing it) for every file a stage runs but does not list."""
    gaps = []
    for name, body in stage_bodies(dvc).items():
        deps = entry_names(body.get("deps"))
        closure = code_closure(root / stage_script(body), root / "src")
        for path, importer in sorted(closure.items()):
            relative = PurePosixPath(path.relative_to(root).as_posix())
            if not covered(relative, deps):
                gaps.append((name, str(relative), importer.relative_to(root).as_posix()))
    return gaps


def unused_code_deps(dvc: dict[str, Any], root: Path = ROOT) -> list[tuple[str, str]]:
    """(stage, dep) for every code dep (a file or folder under src/ or stages/) that holds
    no file of the stage's import closure: editing it would re-run the stage for nothing."""
    unused = []
    for name, body in stage_bodies(dvc).items():
        closure = [PurePosixPath(path.relative_to(root).as_posix())
                   for path in code_closure(root / stage_script(body), root / "src")]
        for dep in entry_names(body.get("deps")):
            if dep.startswith(CODE_DIRS) and not any(covered(path, [dep]) for path in closure):
                unused.append((name, dep))
    return unused


def missing_files(dvc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(stage, path) for stage, path, _ in missing_code_deps(dvc)}


def nonexistent_code_deps(dvc: dict[str, Any], root: Path = ROOT) -> list[tuple[str, str]]:
    return [(name, dep) for name, body in stage_bodies(dvc).items()
            for dep in entry_names(body.get("deps"))
            if dep.startswith(CODE_DIRS) and not (root / dep).exists()]


def lookup(tree: Any, dotted: str) -> bool:
    for key in dotted.split("."):
        if not isinstance(tree, dict) or key not in tree:
            return False
        tree = tree[key]
    return True


def _report(gaps: list[tuple[str, ...]]) -> str:
    return "\n".join(f"  {gap[0]}: {gap[1]}" + (f" (imported by {gap[2]})" if gap[2:] else "") for gap in gaps)


def test_every_stage_runs_a_script_that_exists():
    for name, body in stage_bodies(load_dvc_yaml()).items():
        script = stage_script(body)
        assert (ROOT / script).is_file(), f"{name}: cmd runs {script}, which does not exist"
        assert script in entry_names(body.get("deps")), f"{name}: its script {script} is not a dep"


def test_code_deps_cover_every_imported_project_module():
    gaps = missing_code_deps(load_dvc_yaml())
    assert not gaps, "dvc.yaml deps miss code the stage runs (stage: file):\n" + _report(gaps)


def test_code_deps_hold_only_code_the_stage_imports():
    unused = unused_code_deps(load_dvc_yaml())
    assert not unused, "dvc.yaml lists code deps the stage never imports (stage: dep):\n" + _report(unused)


def test_checker_reports_an_unused_code_dep():
    dvc = copy.deepcopy(load_dvc_yaml())
    dvc["stages"]["attack_sweep"]["deps"].append("src/robust_deepfake/serving.py")
    assert unused_code_deps(dvc) == [("attack_sweep", "src/robust_deepfake/serving.py")]


@pytest.mark.parametrize("stage", ["split", "attack_sweep", "cam_iinc", "report"])
def test_only_the_train_stages_reach_the_serving_code(stage):
    """The tracker seam: the pyfunc model and the predict command belong to those who load
    a registered version, so editing them re-runs no stage (training registers the
    models-from-code file by path, it does not import it)."""
    closure = {path.relative_to(ROOT).as_posix()
               for path in code_closure(ROOT / stage_script(stage_bodies(load_dvc_yaml())[stage]))}
    serving = {"src/robust_deepfake/serving.py", "src/robust_deepfake/pyfunc_model.py"}
    assert not closure & serving and not any(path.startswith("src/robust_deepfake/inference/") for path in closure)


def test_listed_code_deps_exist():
    stale = nonexistent_code_deps(load_dvc_yaml())
    assert not stale, "dvc.yaml lists code deps that do not exist (stage: dep):\n" + _report(stale)


def test_checker_reports_a_removed_dep():
    dvc = copy.deepcopy(load_dvc_yaml())
    deps = dvc["stages"]["cam_iinc"]["deps"]
    deps.remove("src/robust_deepfake/explain")
    # Only what the removal adds: the test proves the checker whatever dvc.yaml's state.
    new = missing_files(dvc) - missing_files(load_dvc_yaml())
    assert ("cam_iinc", "src/robust_deepfake/explain/gradcam.py") in new
    assert ("cam_iinc", "src/robust_deepfake/explain/measure.py") in new
    assert {stage for stage, _ in new} == {"cam_iinc"}


def test_checker_reports_a_removed_dep_of_a_train_stage():
    dvc = copy.deepcopy(load_dvc_yaml())
    body = dvc["stages"]["train_reg"]  # its deps are a YAML alias of train_baseline's: a new list here
    body["deps"] = [dep for dep in body["deps"] if dep != "src/robust_deepfake/model"]
    new = missing_files(dvc) - missing_files(load_dvc_yaml())
    assert ("train_reg", "src/robust_deepfake/model/training.py") in new
    assert {stage for stage, _ in new} == {"train_reg"}


def test_checker_follows_relative_type_checking_and_function_imports(tmp_path):
    package = tmp_path / "src" / PACKAGE
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text('"""Inert."""\n__version__ = "1"\n')
    (package / "sub" / "__init__.py").write_text("import os\n")  # not inert: a dep
    (package / "sub" / "leaf.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import typed\n"
        "def f():\n    from ..lazy import g\n")
    (package / "sub" / "typed.py").write_text("")
    (package / "lazy.py").write_text("")
    (package / "unused.py").write_text("")
    script = tmp_path / "stages" / "run.py"
    script.parent.mkdir()
    script.write_text(f"from {PACKAGE}.sub import leaf\n")
    closure = {path.relative_to(tmp_path).as_posix() for path in code_closure(script, tmp_path / "src")}
    assert closure == {"stages/run.py", f"src/{PACKAGE}/sub/__init__.py", f"src/{PACKAGE}/sub/leaf.py",
                       f"src/{PACKAGE}/sub/typed.py", f"src/{PACKAGE}/lazy.py"}


def test_checker_reports_a_nonexistent_code_dep():
    dvc = copy.deepcopy(load_dvc_yaml())
    dvc["stages"]["report"]["deps"].append("src/robust_deepfake/report_doc.py")
    assert nonexistent_code_deps(dvc) == [("report", "src/robust_deepfake/report_doc.py")]


def test_stage_params_exist_in_params_yaml():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    missing = []
    for name, body in stage_bodies(load_dvc_yaml()).items():
        for entry in body.get("params") or []:
            # `key` reads params.yaml; `{file: [keys]}` another params file (not used here).
            files = {"params.yaml": [entry]} if isinstance(entry, str) else entry
            for file, keys in files.items():
                tree = params if file == "params.yaml" else yaml.safe_load((ROOT / file).read_text())
                missing += [(name, f"{file}:{key}") for key in keys if not lookup(tree, key)]
    assert not missing, "dvc.yaml params not in the params file (stage: key):\n" + _report(missing)


def test_foreach_expressions_name_params():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for name, stage in load_dvc_yaml()["stages"].items():
        foreach = stage.get("foreach")
        if isinstance(foreach, str):
            match = re.fullmatch(r"\$\{\s*([\w.]+)\s*\}", foreach)
            assert match and lookup(params, match.group(1)), f"{name}: foreach {foreach!r} is not a params key"


@pytest.mark.parametrize("dotted", ["train.seeds", "model", "reg.split_at"])
def test_lookup_finds_keys(dotted):
    assert lookup(yaml.safe_load((ROOT / "params.yaml").read_text()), dotted)


def test_lookup_rejects_unknown_keys():
    tree = {"train": {"seeds": [0]}, "model": {"name": "x"}}
    assert not lookup(tree, "train.seed")
    assert not lookup(tree, "train.seeds.0")
    assert not lookup(tree, "modle")


def _reg_keys(body: dict[str, Any]) -> set[str]:
    return {key for key in body["params"] if key == "reg" or key.startswith("reg.")}


def test_each_train_stage_reads_the_reg_keys_of_its_recipe_only():
    """The placebo is the reg recipe with epsilon 0: changing reg.epsilon (or its scale)
    retrains reg, not the placebo (tests/test_training.py shows its bytes do not move);
    reg.mode stays, since in mode random it draws from the flips' generator."""
    stages = load_dvc_yaml()["stages"]
    assert _reg_keys(stages["train_baseline"]) == {"reg.split_at"}
    assert _reg_keys(stages["train_placebo"]) == {"reg.split_at", "reg.alpha", "reg.mode"}
    assert _reg_keys(stages["train_reg"]) == {"reg"}
    shared = [key for key in stages["train_baseline"]["params"] if key not in _reg_keys(stages["train_baseline"])]
    for variant in VARIANTS:
        body = stages[f"train_{variant}"]
        assert [key for key in body["params"] if key not in _reg_keys(body)] == shared, variant
        assert "train.workers" not in body["params"], "the bytes do not depend on the pool size"


def test_no_stage_reads_a_pool_size():
    """The bytes of the train and evaluation stages do not depend on how many processes
    compute them (train.workers, eval.workers), so no stage lists those keys, or their
    whole section; the evaluation stages list eval.num_threads, on which they depend."""
    stages = load_dvc_yaml()["stages"]
    for name, body in stages.items():
        keys = [key for key in body.get("params") or [] if isinstance(key, str)]
        assert not {"train", "eval", "train.workers", "eval.workers"} & set(keys), name
    for name in ("attack_sweep", "cam_iinc"):
        assert "eval.num_threads" in stages[name]["params"], name


def test_every_stage_after_training_reads_every_variant():
    stages = load_dvc_yaml()["stages"]
    for stage in ("attack_sweep", "cam_iinc", "report"):
        deps = entry_names(stages[stage]["deps"])
        assert {f"models/{variant}" for variant in VARIANTS} <= set(deps), stage
    deps = entry_names(stages["report"]["deps"])
    assert {f"{kind}/train_{variant}" for kind in ("metrics", "plots") for variant in VARIANTS} <= set(deps)
