"""`dvc plots show` works offline, with titled axes.

The real `dvc plots show` renders the committed plots/ CSVs with the page template that
.dvc/config names (built by `make install`, tools/plots_template.py);
real headless Chromium opens the page with every host name unresolvable and every
connection sent to a closed proxy, and the test reads back the rendered DOM: each plot's
<div> must hold a chart with its data line and the axis titles that dvc.yaml declares.
The same check on DVC's default page (vega from a CDN) finds no chart at all: that is the
bug, and it shows the check can fail. Needs the `chromium` binary (Debian package
`chromium`; .ci/run installs it): without it the tests fail, they do not skip.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from helpers import REPO, run
from tools.plots_template import LIBRARIES, TEMPLATE, PlotsTemplateError, build

pytestmark = pytest.mark.slow

RENDER_BUDGET_MS = 15000  # Chromium's virtual time for the page's scripts
# dvc-render's plot <div> (dvc_render.vega.VegaRenderer.DIV), in the page DVC writes.
_PLOT_DIV = re.compile(r'<div id = "([^"]+)">\s*<script')
_AXIS_TITLE = re.compile(r"""aria-label="([XY])-axis titled '([^"]*?)' for """)
_CHART = re.compile(r'<svg[^>]*class="marks"|<canvas\b')
_LINE = re.compile(r'class="mark-line role-mark[^"]*"[^>]*>\s*<path[^>]*\bd="M')


def plots_show(out: Path, *extra: str) -> str:
    """Run the real `dvc plots show` on the repository's committed plots; the page's HTML."""
    run([sys.executable, "-m", "dvc", "plots", "show", "-o", str(out), *extra], REPO, timeout=300)
    return (out / "index.html").read_text(encoding="utf-8")


def per_plot(dom: str, ids: list[str]) -> dict[str, str]:
    """Each plot's part of the rendered DOM: from its <div id> to the next plot's."""
    starts = sorted((dom.index(f'id="{plot_id}"'), plot_id) for plot_id in ids)
    ends = [start for start, _ in starts[1:]] + [len(dom)]
    return {plot_id: dom[start:end] for (start, plot_id), end in zip(starts, ends, strict=True)}


def declared_plots() -> list[tuple[str, dict]]:
    return [next(iter(entry.items())) for entry in yaml.safe_load((REPO / "dvc.yaml").read_text())["plots"]]


def expected_plot_count() -> int:
    """A plot definition on a folder gives one plot per file in it; any other, one plot."""
    return sum(len([f for f in (REPO / name).iterdir() if f.is_file()]) if (REPO / name).is_dir() else 1
               for name, _ in declared_plots())


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`dvc plots show` exactly as the README says, with the template .dvc/config names."""
    if not (REPO / TEMPLATE).is_file():
        pytest.fail(f"{TEMPLATE} is missing, so `dvc plots show` fails with \"HTML template has to contain "
                    "'{plot_divs}'\": run `make install` (npm ci, then python -m tools.plots_template)")
    out = tmp_path_factory.mktemp("plots")
    plots_show(out)
    return out / "index.html"


@pytest.fixture(scope="module")
def plots_dom(page: Path, chromium, tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], dict[str, str]]:
    """The plot ids on the page, and each plot's part of the DOM Chromium rendered offline."""
    ids = _PLOT_DIV.findall(page.read_text(encoding="utf-8"))
    dom = chromium(page, tmp_path_factory.mktemp("browser-profile"), RENDER_BUDGET_MS)
    return ids, per_plot(dom, ids)


def test_dvc_config_names_the_built_template() -> None:
    configured = run([sys.executable, "-m", "dvc", "config", "plots.html_template"], REPO).stdout.strip()
    assert (REPO / ".dvc" / configured).resolve() == (REPO / TEMPLATE).resolve()
    template = (REPO / TEMPLATE).read_text(encoding="utf-8") if (REPO / TEMPLATE).is_file() else ""
    lock = json.loads((REPO / "package-lock.json").read_text())["packages"]
    for name, _ in LIBRARIES:
        version = lock[f"node_modules/{name}"]["version"]
        assert f"/* {name} {version} */" in template, f"{TEMPLATE} lacks {name} {version}: run `make install`"


def test_page_loads_nothing_from_the_network(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    assert not re.search(r"<script[^>]*\bsrc=", text), "the page must inline its scripts"
    assert "cdn.jsdelivr.net" not in text


def test_every_plot_renders_offline(plots_dom: tuple[list[str], dict[str, str]]) -> None:
    ids, parts = plots_dom
    assert len(ids) == expected_plot_count() >= 3, ids
    blank = [plot_id for plot_id, part in parts.items() if not _CHART.search(part)]
    assert not blank, f"no chart rendered offline in {blank}"
    no_line = [plot_id for plot_id, part in parts.items() if not _LINE.search(part)]
    assert not no_line, f"chart without a data line in {no_line}"
    failed = [plot_id for plot_id, part in parts.items() if "failed to render" in part]
    assert not failed, failed


def test_axes_carry_the_titles_dvc_yaml_declares(plots_dom: tuple[list[str], dict[str, str]]) -> None:
    definitions = declared_plots()
    for name, props in definitions:
        assert props.get("x_label") and props.get("y_label"), f"plot {name} in dvc.yaml needs x_label and y_label"
    x_labels = {props["x_label"] for _, props in definitions}
    y_labels = {props["y_label"] for _, props in definitions}
    _, parts = plots_dom
    for plot_id, part in parts.items():
        titles = {axis: html.unescape(title) for axis, title in _AXIS_TITLE.findall(part)}
        assert set(titles) == {"X", "Y"}, f"{plot_id}: axis titles {titles}"
        assert titles["Y"] != "y" and titles["Y"] in y_labels, f"{plot_id}: y-axis titled {titles['Y']!r}"
        assert titles["X"] in x_labels, f"{plot_id}: x-axis titled {titles['X']!r}"


def test_dvc_default_page_is_blank_offline(chromium, tmp_path: Path) -> None:
    """Why the template exists, and proof the check above can fail: DVC's own page, same
    plots, renders no chart offline. The same page with its CDN <script src> pointed at
    the local library files renders every chart, so the CDN is the only difference."""
    from dvc_render.html import PAGE_HTML

    default = tmp_path / "default.html"
    default.write_text(PAGE_HTML, encoding="utf-8")
    text = plots_show(tmp_path / "default", "--html-template", str(default))
    ids = _PLOT_DIV.findall(text)
    cdn = re.findall(r'<script src="(https://cdn\.jsdelivr\.net/npm/([\w-]+)@[^"]+)"></script>', text)
    assert len(ids) == expected_plot_count() and {name for _, name in cdn} == {n for n, _ in LIBRARIES}

    offline = per_plot(chromium(tmp_path / "default" / "index.html", tmp_path / "profile1", RENDER_BUDGET_MS), ids)
    assert not [plot_id for plot_id, part in offline.items() if _CHART.search(part)]

    local = text
    builds = dict(LIBRARIES)
    for url, name in cdn:
        local = local.replace(url, (REPO / "node_modules" / name / builds[name]).as_uri())
    (tmp_path / "local.html").write_text(local, encoding="utf-8")
    control = per_plot(chromium(tmp_path / "local.html", tmp_path / "profile2", RENDER_BUDGET_MS), ids)
    assert all(_CHART.search(part) for part in control.values()), "control page did not render"


def test_build_says_to_run_make_install_without_node_modules(tmp_path: Path) -> None:
    shutil.copy(REPO / "package-lock.json", tmp_path)
    with pytest.raises(PlotsTemplateError, match=r"make install"):
        build(tmp_path)
    assert not (tmp_path / TEMPLATE).exists()
