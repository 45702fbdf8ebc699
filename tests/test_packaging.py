"""pyproject.toml declares every third-party package the code imports directly, each
pinned at the version the environment runs (and constraints.txt records): a fresh
`pip install .` must not depend on what another package happens to pull in.

A package whose own pins conflict with ours (torchattacks: requests~=2.25.1) is declared
in `[tool.robust-deepfake] install-without-deps` instead of `[project].dependencies`: the
Makefile installs exactly that list with `--no-deps`, and the error raised when one is
missing says the same command."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CODE_DIRS = ("src", "stages", "flows", "tools")
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?\s*==\s*([^\s;,]+)$")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def first_party(root: Path = ROOT) -> set[str]:
    """Packages under src/ and the top-level code folders (flows, stages, tools)."""
    return {path.name for path in (root / "src").iterdir() if (path / "__init__.py").is_file()} | set(CODE_DIRS)


def top_level_imports(root: Path = ROOT) -> dict[str, set[str]]:
    """Top-level name -> files importing it, for every absolute import in the code folders."""
    found: dict[str, set[str]] = {}
    for folder in CODE_DIRS:
        for path in sorted((root / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and not node.level:
                    names = [node.module or ""]
                else:
                    continue
                for name in names:
                    found.setdefault(name.split(".")[0], set()).add(path.relative_to(root).as_posix())
    return found


def third_party_imports(root: Path = ROOT) -> dict[str, set[str]]:
    local = first_party(root) | set(sys.stdlib_module_names)
    return {name: files for name, files in top_level_imports(root).items() if name not in local}


def _pins(requirements: list[str], where: str) -> dict[str, str]:
    pins = {}
    for requirement in requirements:
        match = _PIN.match(requirement.strip())
        assert match, f"pyproject.toml {where}: {requirement!r} is not an exact `name==version` pin"
        pins[canonical(match.group(1))] = match.group(3)
    return pins


def _pyproject(root: Path = ROOT) -> dict:
    return tomllib.loads((root / "pyproject.toml").read_text())


def declared_pins(root: Path = ROOT) -> dict[str, str]:
    """Canonical distribution name -> pinned version of [project].dependencies."""
    return _pins(_pyproject(root)["project"]["dependencies"], "[project].dependencies")


def without_deps_pins(root: Path = ROOT) -> dict[str, str]:
    """Canonical name -> pinned version of [tool.robust-deepfake] install-without-deps."""
    table = _pyproject(root)["tool"]["robust-deepfake"]
    return _pins(table["install-without-deps"], "[tool.robust-deepfake] install-without-deps")


def undeclared(imports: dict[str, set[str]], declared: set[str]) -> list[str]:
    """One line per imported top-level name that no declared distribution provides."""
    providers = importlib.metadata.packages_distributions()
    problems = []
    for name, files in sorted(imports.items()):
        distributions = {canonical(dist) for dist in providers.get(name, [])}
        if not distributions:
            problems.append(f"{name}: imported by {sorted(files)} but not installed")
        elif not distributions & declared:
            problems.append(f"{name} (distribution {' or '.join(sorted(distributions))}): "
                            f"imported by {sorted(files)}, not in pyproject dependencies")
    return problems


def test_every_third_party_import_is_declared():
    problems = undeclared(third_party_imports(), set(declared_pins()) | set(without_deps_pins()))
    assert not problems, "undeclared imports:\n  " + "\n  ".join(problems)


def test_the_check_reports_an_undeclared_import():
    imports = third_party_imports()
    assert "scipy" in imports and "ruamel" in imports
    problems = undeclared(imports, (set(declared_pins()) | set(without_deps_pins())) - {"scipy", "ruamel-yaml"})
    assert [line.split(" ")[0] for line in problems] == ["ruamel", "scipy"]


def test_first_party_and_stdlib_are_not_third_party():
    imports = third_party_imports()
    assert not {"robust_deepfake", "flows", "__future__", "json", "pathlib"} & set(imports)


def test_torchattacks_is_a_runtime_import_installed_without_deps():
    assert "torchattacks" in third_party_imports()  # the ensemble imports it at run time
    assert without_deps_pins() == {"torchattacks": "3.5.1"}
    assert not set(without_deps_pins()) & set(declared_pins())  # the resolver never sees it
    problems = undeclared(third_party_imports(), set(declared_pins()))
    assert [line.split(" ")[0] for line in problems] == ["torchattacks"]  # the list is what declares it


def test_the_makefile_installs_the_without_deps_list_from_pyproject():
    makefile = (ROOT / "Makefile").read_text()
    assert "--no-deps" in makefile and '["install-without-deps"]' in makefile
    assert "torchattacks==" not in makefile  # one source of truth: pyproject.toml


def test_the_missing_package_error_names_the_pinned_install_command():
    from robust_deepfake.robustness.ensemble import TORCHATTACKS_HELP

    version = without_deps_pins()["torchattacks"]
    assert f"pip install --no-deps torchattacks=={version}" in TORCHATTACKS_HELP


def test_pins_match_the_installed_versions_and_constraints():
    constraints = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        match = _PIN.match(line.split("#")[0].strip())
        if match:
            constraints[canonical(match.group(1))] = match.group(3)
    for name, version in {**declared_pins(), **without_deps_pins()}.items():
        assert importlib.metadata.version(name) == version, f"{name}: pinned {version}, installed differs"
        assert constraints.get(name, version) == version, (
            f"{name}: pyproject pins {version}, constraints.txt {constraints[name]}")
