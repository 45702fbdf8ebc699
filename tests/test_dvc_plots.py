"""`dvc plots show` tells models and variants apart: one chart per quantity with its own
title (the attack in the robustness ones), one line per model, coloured by variant in the
report's colours through the committed template .dvc/plots/variants.json, which equals
what tools/plots_template.py writes. The real `dvc plots show --json` renders the
committed plots/ CSVs with it."""

from __future__ import annotations

import json
import re
import sys

import yaml

from helpers import REPO, run
from robust_deepfake.report.figures import COLORS
from tools.plots_template import VARIANT_TEMPLATE, variant_template


def _declared() -> dict[str, dict]:
    return {name: spec for entry in yaml.safe_load((REPO / "dvc.yaml").read_text())["plots"]
            for name, spec in entry.items()}


def test_the_committed_template_is_the_built_one_in_the_report_colours():
    committed = (REPO / VARIANT_TEMPLATE).read_text()
    assert committed == json.dumps(variant_template(), indent=2) + "\n"
    scale = json.loads(committed)["encoding"]["color"]["scale"]
    assert dict(zip(scale["domain"], scale["range"], strict=True)) == COLORS


def test_every_plot_has_a_title_of_its_own_axis_labels_and_the_variant_colours():
    declared = _declared()
    titles = [spec["title"] for spec in declared.values()]
    assert len(set(titles)) == len(titles)
    for name, spec in declared.items():
        assert spec["template"] == "variants" and spec["x_label"] and spec["y_label"], name
        for source in spec["y"]:
            attack = re.fullmatch(r"plots/robustness/(\w+)\.csv", source)
            if attack:
                assert attack[1].upper() in spec["title"], name
    gap = declared["training_loss_gap"]
    assert all(columns == "train_loss_gap" for columns in gap["y"].values())  # its own chart and axis


def test_dvc_plots_show_renders_each_model_as_a_line_of_its_variants_colour():
    result = run([sys.executable, "-m", "dvc", "plots", "show", "--json"], REPO, timeout=300)
    rendered = json.loads(result.stdout)["data"]
    declared = _declared()
    assert set(rendered) == set(declared)
    for name, plots in rendered.items():
        (plot,) = plots
        spec = plot["content"]
        assert spec["title"] == declared[name]["title"]
        assert spec["encoding"]["color"]["field"] == "variant"
        sources = {(row.get("filename", ""), row.get("field", "")) for row in spec["data"]["values"]}
        assert len(sources) >= 2, name  # more than one model or variant to tell apart
        for filename, field in sources:
            named = [v for v in COLORS if v in f"{filename} {field}"]
            assert len(named) == 1, (name, filename, field)  # the template's variant test finds exactly one
