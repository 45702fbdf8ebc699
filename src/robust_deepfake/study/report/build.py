"""study.md, a self-contained study.html, study.json and the figures, from a study's cell records.

The entry point: study/report/aggregate.py computes the numbers, study/report/figures.py draws them,
study/report/sections.py says what they mean as document blocks, and report/blocks.py renders
those blocks as Markdown (figures as files in study_figures/) and as HTML (figures
embedded, so the page opens offline).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from robust_deepfake.io import atomic_open, write_json
from robust_deepfake.report.blocks import to_html, to_markdown
from robust_deepfake.study.report.aggregate import aggregate
from robust_deepfake.study.report.comparisons import StudyRules
from robust_deepfake.study.report.figures import draw_figures
from robust_deepfake.study.report.sections import all_sections
from robust_deepfake.study.spec import StudySpec

FIGURES = "study_figures"


def build_study_report(spec: StudySpec, records: Sequence[dict[str, Any]], out_dir: Path,
                       *, rules: StudyRules) -> dict[str, Path]:
    """Write out_dir/study.md, study.html, study.json and study_figures/*.png (each
    atomically); the written paths by name relative to out_dir."""
    out_dir = Path(out_dir)
    agg = aggregate(spec, records, rules)
    dose_figures, heldout_figure = draw_figures(agg, out_dir / FIGURES)
    blocks = all_sections(agg, dose_figures, heldout_figure)
    figures = [*dose_figures.values(), *([heldout_figure] if heldout_figure else [])]
    written = {f.path.relative_to(out_dir).as_posix(): f.path for f in figures}
    with atomic_open(out_dir / "study.md", encoding="utf-8") as handle:
        handle.write(to_markdown(blocks, out_dir))
    with atomic_open(out_dir / "study.html", encoding="utf-8") as handle:
        handle.write(to_html(blocks, f"Study {spec.name}", out_dir))
    summary = agg.as_json()
    summary["figures"] = list(written)
    write_json(out_dir / "study.json", summary)
    return {"study.md": out_dir / "study.md", "study.html": out_dir / "study.html",
            "study.json": out_dir / "study.json", **written}
