"""The top of the report: the answers in question order, the short verdict table, the power
plan, the forest plot, on synthetic verdict rows of the three comparisons (no training)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from PIL import Image

from robust_deepfake.config import EvalConfig
from robust_deepfake.paths import ModelKey
from robust_deepfake.report import document
from robust_deepfake.report.blocks import to_markdown
from robust_deepfake.report.figures import forest_plot
from robust_deepfake.robustness.sweep import SweepEntry, SweepMetrics
from robust_deepfake.verdict.champion import choose_champion
from robust_deepfake.verdict.claims import MIN_SEEDS
from robust_deepfake.verdict.seeds import COMPARISONS, seed_difference

SEEDS = [0, 1, 2, 3]
PAIR = {p.key: p for p in COMPARISONS}
# per pair and attack: accuracy d_s per seed (test SE 0.02 each)
DIFFS = {
    "reg_placebo": {"pgd": [0.01, -0.02, 0.03, 0.0], "clean": [0.0, 0.01, -0.01, 0.0]},
    "placebo_baseline": {"pgd": [0.06, 0.08, 0.07, 0.09], "clean": [0.02, -0.01, 0.0, 0.01]},
    "reg_baseline": {"pgd": [0.07, 0.06, 0.10, 0.09], "clean": [0.02, 0.0, -0.01, 0.01]},
}


def _rows(pairs=("reg_placebo", "placebo_baseline", "reg_baseline"), seeds=SEEDS) -> list:
    rows = []
    for key in pairs:
        for attack in ("clean", "pgd"):
            d = DIFFS[key][attack][:len(seeds)]
            rows.append(seed_difference(PAIR[key], attack, "accuracy", seeds, d, [0.02] * len(d), 0.95))
        d = [-x for x in DIFFS[key]["pgd"][:len(seeds)]]
        rows.append(seed_difference(PAIR[key], "pgd", "asr", seeds, d, [0.03] * len(d), 0.95))
    return rows


def _decision(rows):
    entries = []
    for variant, attacked in (("baseline", 0.2), ("reg", 0.28)):
        for s in SEEDS:
            key = ModelKey(variant, s)
            entries.append(SweepEntry(key, "clean", 0.0, 0.9, 0.9, 0.95, 0.0, 60))
            entries.append(SweepEntry(key, "pgd", 1 / 255, attacked, attacked, attacked, 0.5, 60))
    return choose_champion(SweepMetrics(entries, 0.95, True), "pgd_accuracy", EvalConfig(), None, rows)


def _top(rows, tmp_path: Path) -> str:
    forest_plot(rows, tmp_path / "figures" / "forest.png")
    blocks = [*document.headline(rows, "pgd"),
              *document.verdict_section(rows, _decision(rows), "pgd_accuracy", 0.95, "pgd", "forest.png")]
    return to_markdown(blocks, tmp_path)


def _table_after(markdown: str, header_start: str) -> list[list[str]]:
    lines = markdown[markdown.index(header_start):].splitlines()
    body = []
    for line in lines[2:]:
        if not line.startswith("|"):
            break
        body.append([c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]])
    return body


def test_the_answers_come_in_question_order(tmp_path):
    markdown = _top(_rows(), tmp_path)
    answers = markdown[markdown.index("**Answers**"):].split("\n")[0]
    positions = [answers.index(p.question) for p in COMPARISONS]
    assert positions == sorted(positions)
    table = _table_after(markdown, "| question |")
    assert [r[1] for r in table] == [p.label for p in COMPARISONS for _ in range(2)]
    # the question once per comparison, not on every row
    assert [r[0] for r in table] == [x for p in COMPARISONS for x in (p.question, "")]
    # placebo - baseline under PGD: four seeds all near +0.075, SE 0.02: claimed for the placebo
    second = table[2]
    assert second[2] == "accuracy, under PGD" and second[6] == "favours placebo"
    assert table[0][6] == "no detectable difference"


def test_readings_are_short_and_the_plan_is_per_row(tmp_path):
    markdown = _top(_rows(), tmp_path)
    verdict = _table_after(markdown, "| question |")
    assert all(len(r[6]) <= 30 for r in verdict)
    plan = _table_after(markdown, "| comparison | metric | seeds |")
    assert len(plan) == 6 and all(len(r[-1]) <= 32 for r in plan)
    assert f"**No claim below {MIN_SEEDS} seeds.**" in markdown
    assert "`report.min_effect` = 0.02" in markdown
    # no sentence of the document is repeated
    sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", markdown) if len(s.strip()) > 40]
    assert len(sentences) == len(set(sentences))


def test_without_the_placebo_one_question_is_answered(tmp_path):
    markdown = _top(_rows(pairs=("reg_baseline",)), tmp_path)
    table = _table_after(markdown, "| question |")
    assert [r[1] for r in table] == ["reg − baseline"] * 2
    assert "placebo −" not in markdown and "reg − placebo" not in markdown


def test_one_seed_makes_no_claim(tmp_path):
    markdown = _top(_rows(seeds=[0]), tmp_path)
    table = _table_after(markdown, "| question |")
    assert {r[6] for r in table} == {f"no claim below {MIN_SEEDS} seeds"}
    assert {r[4] for r in table} == {"n/a"}


def test_the_forest_plot_has_a_column_per_comparison(tmp_path):
    one = forest_plot(_rows(pairs=("reg_baseline",)), tmp_path / "one.png")
    three = forest_plot(_rows(), tmp_path / "three.png")
    assert Image.open(three).size[0] > 2 * Image.open(one).size[0] * 0.9
    assert Image.open(three).size[1] == pytest.approx(Image.open(one).size[1], rel=0.1)
