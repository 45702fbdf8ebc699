"""The library's layering: a package imports only from packages below it, and no two
packages or modules import each other round a circle.

Bottom to top (docs/architecture.md): the ground floor (errors, config, io, paths, units,
metrics, bootstrap, progress, dvc_cli) < data < model < robustness < explain < verdict <
report < tracking < pipeline < orchestration / monitoring / study / inference (with
serving.py and pyfunc_model.py, which re-export inference for registered models) < cli /
stage_kit. Packages on one floor may import each other, as long as no cycle forms. The
entry points outside the library (stages/, flows/, benchmarks/, tools/) are above it all,
and the library never imports them.

Every import counts, wherever it stands: at module top, under TYPE_CHECKING, or inside a
function (the walk is test_dvc_deps.py's). Project imports belong at module top, where a
reader sees the graph; at most MAX_FUNCTION_LEVEL stay inside functions.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

from test_dvc_deps import PACKAGE, SRC, imported_modules, module_name

FLOORS: list[set[str]] = [
    {"", "errors", "config", "io", "paths", "units", "metrics", "bootstrap", "progress", "dvc_cli"},
    {"data"},
    {"model"},
    {"robustness"},
    {"explain"},
    {"verdict"},
    {"report"},
    {"tracking"},
    {"pipeline"},
    {"orchestration", "monitoring", "study", "inference", "serving", "pyfunc_model"},
    {"cli", "stage_kit"},
]
OUTSIDE = ("stages", "flows", "benchmarks", "tools")  # entry points: the library never imports them
MAX_FUNCTION_LEVEL = 20


def library_files(src: Path = SRC, package: str = PACKAGE) -> list[Path]:
    return sorted((src / package).rglob("*.py"))


def package_of(module: str) -> str:
    """The unit the layering places: `data` for robust_deepfake.data.loader, `units` for
    robust_deepfake.units, "" for the root package."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def project_imports(path: Path, src: Path = SRC, package: str = PACKAGE) -> Iterator[str]:
    """Every project module `path` imports (test_dvc_deps.imported_modules), itself excluded."""
    own = module_name(path, src)
    for module, _ in imported_modules(path, src):
        if (module == package or module.startswith(package + ".")) and module != own:
            yield module


def floor_of(unit: str, floors: list[set[str]] = FLOORS) -> int | None:
    return next((level for level, units in enumerate(floors) if unit in units), None)


def unplaced_packages(src: Path = SRC, package: str = PACKAGE, floors: list[set[str]] = FLOORS) -> set[str]:
    return {unit for path in library_files(src, package)
            if floor_of(unit := package_of(module_name(path, src)), floors) is None}


def upward_imports(src: Path = SRC, package: str = PACKAGE,
                   floors: list[set[str]] = FLOORS) -> list[tuple[str, str]]:
    """(file, imported module) for every import of a package on a higher floor."""
    found = []
    for path in library_files(src, package):
        here = floor_of(package_of(module_name(path, src)), floors)
        for module in project_imports(path, src, package):
            there = floor_of(package_of(module), floors)
            if here is not None and there is not None and there > here:
                found.append((path.relative_to(src).as_posix(), module))
    return found


def outside_imports(src: Path = SRC, package: str = PACKAGE) -> list[tuple[str, str]]:
    """(file, module) for every library import of an entry-point folder."""
    found = []
    for path in library_files(src, package):
        for module, _ in imported_modules(path, src):
            if module.split(".")[0] in OUTSIDE:
                found.append((path.relative_to(src).as_posix(), module))
    return found


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return sorted(found)


def import_graph(src: Path = SRC, package: str = PACKAGE, by_package: bool = False) -> dict[str, set[str]]:
    """Module (or, with by_package, package) -> the project modules (packages) it imports."""
    edges: dict[str, set[str]] = {}
    for path in library_files(src, package):
        own = module_name(path, src)
        node = package_of(own) if by_package else own
        targets = {package_of(m) if by_package else m for m in project_imports(path, src, package)}
        edges.setdefault(node, set()).update(targets - {node})
    return edges


def function_level_imports(paths: Iterable[Path], package: str = PACKAGE) -> list[str]:
    """`file:line module` for every project import inside a function body."""
    found = []
    for path in paths:
        for function in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(function):
                if isinstance(node, ast.ImportFrom):
                    names = [node.module or ""] if not node.level else [f"(relative) {node.module or ''}"]
                elif isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                else:
                    continue
                project = [n for n in names if n.startswith("(relative)") or n.split(".")[0] == package]
                shown = path.relative_to(SRC.parent) if path.is_relative_to(SRC.parent) else path
                found += [f"{shown}:{node.lineno} {name}" for name in project]
    return sorted(set(found))


def test_every_library_package_has_a_floor():
    assert not unplaced_packages(), f"place these in FLOORS: {sorted(unplaced_packages())}"


def test_no_import_points_up():
    found = upward_imports()
    assert not found, "imports of a higher floor (file -> module):\n" + "\n".join(f"  {f} -> {m}" for f, m in found)


def test_the_library_never_imports_an_entry_point():
    found = outside_imports()
    assert not found, "\n".join(f"  {f} -> {m}" for f, m in found)


def test_no_cycle_between_packages():
    assert cycles(import_graph(by_package=True)) == []


def test_no_cycle_between_modules():
    assert cycles(import_graph()) == []


def test_project_imports_stand_at_module_top():
    found = function_level_imports(library_files())
    assert len(found) <= MAX_FUNCTION_LEVEL, (
        f"{len(found)} project imports inside functions (at most {MAX_FUNCTION_LEVEL}); move them to module top:\n"
        + "\n".join(f"  {line}" for line in found))


@pytest.fixture
def tiny_library(tmp_path: Path) -> Path:
    """A package with a ground module, a data package that imports it, and a model module."""
    package = tmp_path / "src" / PACKAGE
    (package / "data").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "errors.py").write_text("")
    (package / "data" / "__init__.py").write_text("")
    (package / "data" / "a.py").write_text(f"from {PACKAGE}.errors import x\n")
    (package / "model.py").write_text(f"from {PACKAGE}.data import a\n")
    return tmp_path / "src"


def test_the_checks_find_an_upward_import_a_cycle_and_a_deferred_import(tiny_library):
    floors = [{"", "errors"}, {"data"}, {"model"}]
    assert upward_imports(tiny_library, floors=floors) == []
    assert cycles(import_graph(tiny_library, by_package=True)) == []
    leaf = tiny_library / PACKAGE / "data" / "a.py"
    leaf.write_text(f"def f():\n    from {PACKAGE} import model\n")
    assert upward_imports(tiny_library, floors=floors) == [(f"{PACKAGE}/data/a.py", f"{PACKAGE}.model")]
    assert cycles(import_graph(tiny_library, by_package=True)) == [["data", "model"]]
    assert cycles(import_graph(tiny_library)) == [[f"{PACKAGE}.data.a", f"{PACKAGE}.model"]]
    assert function_level_imports([leaf]) == [f"{leaf}:2 {PACKAGE}"]
    (tiny_library / PACKAGE / "new.py").write_text("")
    assert unplaced_packages(tiny_library, floors=floors) == {"new"}
