"""What the study report says, section by section in reading order, as document blocks.

Every number comes from study/report/aggregate.py and study/report/comparisons.py; the top of the
document answers the pipeline's questions in its order (reg − placebo, placebo − baseline,
reg − baseline), then the held-out methods, each claim by the pipeline's rules, and names
the cells under the quality floor. One function per section, in reading order.
"""

from __future__ import annotations

from collections.abc import Sequence

from robust_deepfake.study.report.aggregate import StudyAggregate
from robust_deepfake.study.report.comparisons import PairedDifference, lower_is_better
from robust_deepfake.report.blocks import Block, Bullets, Figure, Heading, Para, Table
from robust_deepfake.study.report.points import group_label, groups_of, shown
from robust_deepfake.study.spec import PLACEBO_KEY, StudySpec
from robust_deepfake.study.report.wording import (
    CLIP_NOTE,
    answer,
    beside_holdout,
    claim,
    estimate,
    fmt,
    interval,
    metric_title,
    ref_eps,
    seconds,
    seeds_for,
)
from robust_deepfake.verdict.claims import MIN_SEEDS, PLAIN_MIN_SEEDS
from robust_deepfake.verdict.seeds import COMPARISONS


def overview(agg: StudyAggregate) -> list[Block]:
    spec = agg.spec
    grid = "; ".join(f"{k} ∈ {{{', '.join(shown(v) for v in vs)}}}" for k, vs in spec.grid.items()) or "none"
    fixed = "; ".join(f"{k}={shown(v)}" for k, v in spec.fixed.items()) or "none"
    return [Heading(f"Study {spec.name}", 1), Para(
        f"{agg.totals['cells']} cells ({len(agg.seeds)} seed(s) {agg.seeds} × {len(agg.points)} grid point(s)). "
        f"Grid: {grid}. Fixed: {fixed}. Headline metric: {spec.metric}; attacks {', '.join(agg.attacks) or 'none'} "
        f"at {ref_eps(agg)}. Every comparison is paired by seed and read by the pipeline's rules "
        f"(docs/statistics.md): a {agg.level:.0%} Student-t interval over training seeds whose spread is never "
        "below the seeds' own test-sampling SE; a sign only with an interval that excludes 0, at least "
        f"{MIN_SEEDS} seeds ({PLAIN_MIN_SEEDS} where a cell recorded no test SE), and every compared model at or "
        f"above the quality floor (clean test ROC-AUC ≥ {agg.rules.min_clean_auc:g}, `report.min_clean_auc`).")]


def floor_table(comparisons: Sequence[PairedDifference]) -> Table | None:
    """One row per cell with a compared model under the quality floor: which, and its clean AUC."""
    cells: dict[str, dict[str, float]] = {}
    for model in (m for c in comparisons for m in c.under_floor):
        cells.setdefault(model.cell, {})[model.variant] = model.clean_auc
    if not cells:
        return None
    return Table(["cell", "models under the floor (clean test ROC-AUC)"],
                 [[cell, ", ".join(f"{v} {fmt(auc)}" for v, auc in sorted(found.items()))]
                  for cell, found in cells.items()])


def answers(agg: StudyAggregate) -> list[Block]:
    spec = agg.spec
    primary = {group_label(g) for g in agg.primary}
    with_group = len(primary) > 1
    attack = spec.metric.partition("_")[2]
    held_metrics = list(dict.fromkeys(["auc_clean", *([f"auc_{attack}"] if attack in agg.attacks else [])]))
    held = [c for c in agg.heldout if c.metric in held_metrics and not c.placebo]
    held_groups = len({beside_holdout(c.group) for c in held}) > 1
    ref = ref_eps(agg)
    direction = " (lower is better)" if lower_is_better(spec.metric) else ""
    floor = agg.rules.min_clean_auc
    blocks: list[Block] = [Heading("Answers")]
    if agg.points and all(p.held_out for p in agg.points):
        blocks.append(Para("Every cell holds a method out: the answers read those cells' test sets."))
    weak = floor_table([c for found in agg.comparisons.values() for c in found] + held)
    if weak:
        blocks += [Para(f"clean test ROC-AUC < {floor:g} (`report.min_clean_auc`) in {len(weak.rows)} cell(s), "
                        "so no comparison that involves their models claims anything:", lead="Under the quality floor:"),
                   weak]
    for pair in COMPARISONS:
        found = [c for c in agg.comparisons.get(pair.key, []) if c.group in primary
                 and not (c.placebo and pair.key == "reg_baseline")]
        if pair.key not in agg.comparisons:
            blocks.append(Para(f"no cell has both a {pair.first} and a {pair.second} model.", lead=pair.question))
            continue
        how = ("across cells: reg at each strength − reg at epsilon = 0, same seed and setting (no test SE)"
               if any(c.across_cells for c in found) else "inside the same cells (same seed, same data)")
        blocks += [Para(answer(found, floor), lead=f"{pair.question} ({pair.label})"),
                   Para(f"{pair.label} in {spec.metric}{direction}, {how}:"),
                   Bullets([claim(c, spec, with_group) for c in found] or ["no finished cell to compare"])]
    if held:
        blocks.append(Para("reg − baseline on each held-out method (test reals + that method's fakes), per "
                           "metric:", lead="Does it help on held-out methods?"))
        for metric in held_metrics:
            mine = [c for c in held if c.metric == metric]
            blocks += [Para(f"{metric_title(metric, ref)}: {answer(mine, floor)}"),
                       Bullets([claim(c, spec, held_groups) for c in mine])]
    else:
        blocks.append(Para("No cell held a method out, so this study cannot say.",
                           lead="Does it help on held-out methods?"))
    return blocks


def dose_section(agg: StudyAggregate, figures: dict[tuple, Figure]) -> list[Block]:
    spec = agg.spec
    metrics = list(dict.fromkeys(r["metric"] for r in agg.dose))
    blocks: list[Block] = [Heading("Dose-response"), Para(
        f"Test-set metrics against {spec.dose}, one line per {spec.lines or 'setting'} value; points are seed "
        "means, bars and bands a descriptive t-interval over seeds (none with one seed), drawn and written within "
        "[0, 1]. The baseline (dashed) and the placebo (dotted, where the cells train one) do not depend on reg "
        "parameters, so per seed each is the mean of its cells at that x. "
        + ("Groups that hold methods out are in study.json." if len(agg.primary) < len(groups_of(agg.points))
           else ""))]
    for group in agg.primary:
        label = group_label(group)
        rows = [r for r in agg.dose if r["group"] == label]
        if label:
            blocks.append(Heading(label, 3))
        if group in figures:
            blocks.append(figures[group])
        blocks.append(_curve_table(rows, metrics, spec))
    return blocks + _clip_note(blocks)


def _clip_note(blocks: Sequence[Block]) -> list[Block]:
    """CLIP_NOTE, when a table among `blocks` shows a clipped interval."""
    clipped = any(cell.endswith("]*") for b in blocks if isinstance(b, Table) for row in b.rows for cell in row)
    return [Para(CLIP_NOTE)] if clipped else []


def _curve_table(rows: list[dict], metrics: list[str], spec: StudySpec, subset: bool = False) -> Table:
    """One table row per (subset, dose, line/baseline), one column per metric."""
    keyed = {(r["subset"], r["group"], r["dose"], r["variant"], r["line"], r["metric"]): r for r in rows}
    heads = list(dict.fromkeys((r["subset"], r["group"], r["dose"], r["variant"], r["line"]) for r in rows))
    first: dict[tuple, int] = {}
    for head in heads:
        first.setdefault(head[:3], len(first))
    order = {"baseline": 0, "placebo": 1, "reg": 2}
    heads.sort(key=lambda h: (first[h[:3]], order.get(h[3], 3)))  # per dose: baseline, placebo, each line
    body = []
    for head in heads:
        found = [keyed.get((*head, m)) for m in metrics]
        seeds = max((r["n"] for r in found if r), default=0)
        which = head[3] if head[3] != "reg" else (f"reg {shown(head[4])}" if spec.lines else "reg")
        other = beside_holdout(head[1])
        lead = [head[0] + (f" ({other})" if other else "")] if subset else []
        dose = shown(head[2]) + (" (placebo)" if spec.dose == PLACEBO_KEY and head[2] == 0 else "")
        body.append([*lead, dose, which, str(seeds), *(estimate(r, seeds) for r in found)])
    header = [*(["held-out method"] if subset else []), spec.dose, "variant", "seeds", *metrics]
    return Table(header, body)


def _comparison_table(comparisons: Sequence[PairedDifference], spec: StudySpec, min_effect: float) -> Table:
    groups = any(c.group for c in comparisons)
    held = any(c.subset != "test" for c in comparisons)
    header = [*(["group"] if groups else []), *(["held-out method", "metric"] if held else []),
              *([spec.lines] if spec.lines else []), spec.dose, "seeds", "difference",
              f"{comparisons[0].level:.0%} CI" if comparisons else "CI", "spread (SD of d_s)",
              f"seeds for {min_effect:g}", "reading"]
    rows = []
    for c in comparisons:
        dose = shown(c.dose) + (" (placebo)" if c.placebo else "")
        rows.append([*([c.group] if groups else []), *([c.subset, c.metric] if held else []),
                     *([shown(c.line)] if spec.lines else []), dose, str(c.n_seeds),
                     f"{c.sides[0]} − {c.sides[1]}: {fmt(c.mean, True)}", interval(c), fmt(c.claim.spread),
                     seeds_for(c), c.reading()])
    return Table(header, rows)


def comparisons_section(agg: StudyAggregate) -> list[Block]:
    spec = agg.spec
    blocks: list[Block] = [Heading("Paired comparisons"), Para(
        f"Per seed s, d_s is a difference in {spec.metric} between two models of seed s; the table gives the mean "
        f"of d_s, its {agg.level:.0%} interval over seeds (spread floored at the test SE), the spread behind it "
        f"and the seeds `report.min_effect` ({agg.rules.min_effect:g}) would need with 80% power at that spread. "
        f"No claim below {MIN_SEEDS} seeds"
        + ("; lower is better for IINC." if lower_is_better(spec.metric) else "."))]
    for pair in COMPARISONS:
        if pair.key in agg.comparisons:
            blocks += [Heading(f"{pair.label}: {pair.question}", 3),
                       _comparison_table(agg.comparisons[pair.key], spec, agg.rules.min_effect)]
    return blocks + _clip_note(blocks)


def heldout_section(agg: StudyAggregate, figure: Figure | None) -> list[Block]:
    if not agg.generalization:
        return []
    metrics = list(dict.fromkeys(r["metric"] for r in agg.generalization))
    blocks: list[Block] = [Heading("Held-out methods"), Para(
        "Each held-out method is never seen in training; its metrics are on the test reals plus that method's "
        f"fakes, clean and under each attack at {ref_eps(agg)}. Seed mean [t-interval over seeds]."),
        *([figure] if figure else []), _curve_table(agg.generalization, metrics, agg.spec, subset=True),
        Heading("reg − baseline on held-out methods", 3),
        _comparison_table(agg.heldout, agg.spec, agg.rules.min_effect)]
    return blocks + _clip_note(blocks)


def cost_section(agg: StudyAggregate) -> list[Block]:
    t = agg.totals
    rows = [[str(c["label"]), str(c["worker"]), str(c["host"]), str(c["device"]), str(c["cuda_visible_devices"]),
             seconds(c["device_seconds"]), "yes" if c["reused"] else "no"] for c in agg.cost]
    workers = [[str(w["worker"]), str(w["host"]), str(w["device"]), str(w["cuda_visible_devices"]), str(w["cells"]),
                str(w["computed_cells"]), str(w["reused_cells"]), seconds(w["computed_device_seconds"])]
               for w in agg.workers]
    return [
        Heading("Cost"),
        Para(f"{t['cells']} cells: {t['computed_cells']} computed by this study "
             f"({seconds(t['computed_device_seconds'])} device-seconds), {t['reused_cells']} reused from cells "
             f"finished before ({seconds(t['reused_device_seconds'])} device-seconds not spent again)."),
        Table(["cell", "worker", "host", "device", "CUDA_VISIBLE_DEVICES", "device-seconds", "reused"], rows),
        Heading("How the cells were run"),
        Para("One row per worker, host and device the cells ran on (a reused cell counts where its record says)."),
        Table(["worker", "host", "device", "CUDA_VISIBLE_DEVICES", "cells", "computed", "reused",
               "computed device-seconds"], workers),
    ]


def reading_guide() -> list[Block]:
    return [Heading("How to read this report"), Bullets([
        "The unit of evidence is the training seed: a cell is one seed at one grid point, and the cells of a seed "
        "share initial weights and data order, so comparisons are paired by seed.",
        "Beating the baseline is not enough: with epsilon = 0 the alpha-weighted second pass alone changes the "
        "model, so the perturbation helps only where reg also beats the placebo.",
        "\"No detectable difference\" describes these seeds, not equality: the tables say how many seeds "
        "`report.min_effect` would need at the observed spread. More seeds narrow the interval.",
        "A comparison of models under the quality floor claims nothing: a model that cannot tell real from fake "
        "when clean has no robustness worth comparing.",
        "Compare attacked metrics with the clean ones: a gain under attack that equals the clean gain is accuracy, "
        "not robustness.",
        "Every number is in study.json (null where undefined).",
    ])]


def all_sections(agg: StudyAggregate, dose_figures: dict[tuple, Figure], heldout_figure: Figure | None) -> list[Block]:
    """The whole document in reading order: overview, answers, evidence, cost, how to read it."""
    return [*overview(agg), *answers(agg), *dose_section(agg, dose_figures), *comparisons_section(agg),
            *heldout_section(agg, heldout_figure), *cost_section(agg), *reading_guide()]
