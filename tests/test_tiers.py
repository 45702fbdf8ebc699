"""The two test tiers and the shared fixtures stay what conftest.py says they are:

* the hook marks slow every test that reaches a slow fixture, directly or through another
  fixture (a synthetic test module collected with pytester and the real conftest);
* test modules reach the slow tools (micro repos, servers, Chromium) only through those
  fixtures, so the hook sees every use;
* no fixture name is defined in two test files."""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

TESTS = Path(__file__).resolve().parent
SYNTHETIC = """
import pytest


@pytest.fixture
def trained(micro_repo):
    return micro_repo


def test_plain(tmp_path): pass
def test_micro(micro_repo): pass
def test_through_another_fixture(trained): pass
def test_own_micro_repo(new_micro_repo): pass
def test_prefect(prefect_harness): pass
def test_servers(localhost): pass
def test_browser(chromium): pass
@pytest.mark.usefixtures("chromium")
def test_browser_by_mark(): pass
@pytest.mark.slow
def test_marked_by_hand(): pass
"""


def _collected(pytester: pytest.Pytester, plugin: object, expression: str) -> set[str]:
    result = pytester.runpytest("--collect-only", "-q", "-p", "no:cacheprovider", "-m", expression,
                                plugins=[plugin])
    return {line.split("::")[1] for line in result.outlines if "::" in line}


def test_the_hook_marks_every_test_that_reaches_a_slow_fixture(pytester: pytest.Pytester,
                                                               request: pytest.FixtureRequest) -> None:
    conftest = next(plugin for plugin in request.config.pluginmanager.get_plugins()
                    if getattr(plugin, "__file__", None) == str(TESTS / "conftest.py"))
    pytester.makeini("[pytest]\nmarkers =\n    slow: the full tier\n")
    pytester.makepyfile(test_synthetic=SYNTHETIC)
    assert _collected(pytester, conftest, "not slow") == {"test_plain"}
    assert _collected(pytester, conftest, "slow") == {
        "test_micro", "test_through_another_fixture", "test_own_micro_repo", "test_prefect", "test_servers",
        "test_browser", "test_browser_by_mark", "test_marked_by_hand"}


def _trees() -> dict[str, ast.Module]:
    return {path.name: ast.parse(path.read_text(encoding="utf-8")) for path in sorted(TESTS.glob("*.py"))}


def _fixtures(tree: ast.Module) -> list[str]:
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef):
            for decorator in node.decorator_list:
                target = decorator.func if isinstance(decorator, ast.Call) else decorator
                if ast.unparse(target) in ("pytest.fixture", "fixture"):
                    names.append(node.name)
    return names


def test_no_fixture_name_is_defined_in_two_files() -> None:
    where = defaultdict(list)
    for name, tree in _trees().items():
        for fixture in _fixtures(tree):
            where[fixture].append(name)
    assert "micro_repo" in where and "prefect_harness" in where  # the scan finds fixtures
    twice = {fixture: files for fixture, files in where.items() if len(files) > 1}
    assert not twice, f"define each fixture once (tests/conftest.py, or one test file): {twice}"


# What a test module must not touch directly: the builders behind the slow fixtures.
SLOW_MODULES = {"micro_repo", "localhost_services", "prefect.testing", "prefect.testing.utilities"}
SLOW_WORDS = [("models", "serve"), ("server", "start")]  # `mlflow models serve`, `prefect server start`
BROWSERS = {"chromium", "chromium-browser"}


def _slow_uses(tree: ast.Module) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [f"import {alias.name}" for alias in node.names if alias.name in SLOW_MODULES]
        elif isinstance(node, ast.ImportFrom) and node.module in SLOW_MODULES:
            found.append(f"from {node.module} import ...")
        elif isinstance(node, ast.Constant) and node.value in BROWSERS:
            found.append(repr(node.value))
        elif isinstance(node, (ast.List, ast.Tuple)):
            words = [e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)]
            found += [" ".join(pair) for pair in SLOW_WORDS if " ".join(pair) in " ".join(words)]
    return found


def test_test_modules_reach_the_slow_tools_only_through_fixtures() -> None:
    trees = _trees()
    assert _slow_uses(ast.parse("from micro_repo import make_micro_repo\nx = ['mlflow', 'models', 'serve']")) == [
        "from micro_repo import ...", "models serve"]
    offenders = {name: uses for name, tree in trees.items()
                 if re.fullmatch(r"test_.*\.py", name) and name != Path(__file__).name and (uses := _slow_uses(tree))}
    assert not offenders, ("use the conftest fixtures (micro_repo, new_micro_repo, prefect_harness, localhost, "
                           f"chromium) so that the tier hook marks the test slow: {offenders}")
