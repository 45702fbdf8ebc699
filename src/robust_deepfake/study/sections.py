"""What the study report says, section by section in reading order, as document blocks.

Every number comes from study/aggregate.py and study/comparisons.py; the top of the
document answers the study's three questions with those numbers, saying "no detectable
difference" whenever the seed-level interval includes 0. One function per section, in
reading order.
"""

from __future__ import annotations

from collections.abc import Sequence

from robust_deepfake.study.aggregate import StudyAggregate
from robust_deepfake.study.comparisons import PairedDifference, lower_is_better
from robust_deepfake.report.blocks import Block, Bullets, Figure, Heading, Para, Table
from robust_deepfake.study.points import group_label, groups_of, shown
from robust_deepfake.study.spec import PLACEBO_KEY, StudySpec
from robust_deepfake.study.wording import (
    answer,
    beside_holdout,
    claim,
    estimate,
    fmt,
    interval,
    metric_title,
    ref_eps,
    seconds,
)


def overview(agg: StudyAggregate) -> list[Block]:
    spec = agg.spec
    grid = "; ".join(f"{k} ∈ {{{', '.join(shown(v) for v in vs)}}}" for k, vs in spec.grid.items()) or "none"
    fixed = "; ".join(f"{k}={shown(v)}" for k, v in spec.fixed.items()) or "none"
    return [Heading(f"Study {spec.name}", 1), Para(
        f"{agg.totals['cells']} cells ({len(agg.seeds)} seed(s) {agg.seeds} × {len(agg.points)} grid point(s)). "
        f"Grid: {grid}. Fixed: {fixed}. Headline metric: {spec.metric}; attacks {', '.join(agg.attacks) or 'none'} "
        f"at {ref_eps(agg)}. Every interval is a {agg.level:.0%} Student-t interval over training seeds (each "
        "seed a separate training, so training variance is inside it); every comparison is paired by seed.")]


def answers(agg: StudyAggregate) -> list[Block]:
    spec = agg.spec
    primary = {group_label(g) for g in agg.primary}
    with_group = len(primary) > 1
    vs_base = [c for c in agg.vs_baseline if c.group in primary and not c.placebo]
    vs_placebo = [c for c in agg.vs_placebo if c.group in primary]
    attack = spec.metric.partition("_")[2]
    held_metrics = list(dict.fromkeys(["auc_clean", *([f"auc_{attack}"] if attack in agg.attacks else [])]))
    held = [c for c in agg.heldout if c.metric in held_metrics and not c.placebo]
    held_groups = len({beside_holdout(c.group) for c in held}) > 1
    ref = ref_eps(agg)
    direction = " (lower is better)" if lower_is_better(spec.metric) else ""
    blocks: list[Block] = [Heading("Answers")]
    if agg.points and all(p.held_out for p in agg.points):
        blocks.append(Para("Every cell holds a method out: the first two answers read those cells' test sets."))
    blocks += [
        Para(answer(vs_base, "reg", "baseline"), lead="Does the regularizer beat the baseline at each strength?"),
        Para(f"reg − baseline in {spec.metric}{direction}, inside the same cells (same seed, same data):"),
        Bullets([claim(c, spec, with_group) for c in vs_base] or ["no finished cell at a strength above the placebo"]),
        Para(answer(vs_placebo, "reg", "placebo"),
             lead="Does it beat the placebo (epsilon = 0, loss reweighting alone)?"),
        Para(f"reg at each strength − reg at epsilon = 0 in {spec.metric}{direction}, same seed and setting:"),
        Bullets([claim(c, spec, with_group) for c in vs_placebo] or ["no placebo cells to pair with"]),
    ]
    if held:
        blocks.append(Para("reg − baseline on each held-out method (test reals + that method's fakes), per "
                           "metric:", lead="Does it help on held-out methods?"))
        for metric in held_metrics:
            mine = [c for c in held if c.metric == metric]
            blocks += [Para(f"{metric_title(metric, ref)}: {answer(mine, 'reg', 'baseline')}"),
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
        "means, bars and bands the t-interval over seeds (none with one seed). The baseline is drawn dashed: reg "
        "parameters do not change it, so per seed it is the mean of its cells at that x. "
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
    return blocks


def _curve_table(rows: list[dict], metrics: list[str], spec: StudySpec, subset: bool = False) -> Table:
    """One table row per (subset, dose, line/baseline), one column per metric."""
    keyed = {(r["subset"], r["group"], r["dose"], r["variant"], r["line"], r["metric"]): r for r in rows}
    heads = list(dict.fromkeys((r["subset"], r["group"], r["dose"], r["variant"], r["line"]) for r in rows))
    first: dict[tuple, int] = {}
    for head in heads:
        first.setdefault(head[:3], len(first))
    heads.sort(key=lambda h: (first[h[:3]], h[3] != "baseline"))  # per dose: baseline, then each line
    body = []
    for head in heads:
        found = [keyed.get((*head, m)) for m in metrics]
        seeds = max((r["n"] for r in found if r), default=0)
        which = "baseline" if head[3] == "baseline" else (f"reg {shown(head[4])}" if spec.lines else "reg")
        other = beside_holdout(head[1])
        lead = [head[0] + (f" ({other})" if other else "")] if subset else []
        dose = shown(head[2]) + (" (placebo)" if spec.dose == PLACEBO_KEY and head[2] == 0 else "")
        body.append([*lead, dose, which, str(seeds), *(estimate(r, seeds) for r in found)])
    header = [*(["held-out method"] if subset else []), spec.dose, "variant", "seeds", *metrics]
    return Table(header, body)


def _comparison_table(comparisons: Sequence[PairedDifference], spec: StudySpec) -> Table:
    groups = any(c.group for c in comparisons)
    held = any(c.subset != "test" for c in comparisons)
    header = [*(["group"] if groups else []), *(["held-out method", "metric"] if held else []),
              *([spec.lines] if spec.lines else []), spec.dose, "seeds", "difference",
              f"{comparisons[0].level:.0%} CI" if comparisons else "CI",
              "detectable effect", "reading"]
    rows = []
    for c in comparisons:
        dose = shown(c.dose) + (" (placebo)" if c.placebo else "")
        rows.append([*([c.group] if groups else []), *([c.subset, c.metric] if held else []),
                     *([shown(c.line)] if spec.lines else []), dose, str(c.n_seeds),
                     f"{c.sides[0]} − {c.sides[1]}: {fmt(c.mean, True)}", interval(c), fmt(c.detectable), c.wording()])
    return Table(header, rows)


def comparisons_section(agg: StudyAggregate) -> list[Block]:
    spec = agg.spec
    blocks: list[Block] = [Heading("Paired comparisons"), Para(
        f"Per seed s, d_s is a difference in {spec.metric} between two models of seed s; the table gives the mean "
        f"of d_s, its {agg.level:.0%} t-interval over seeds and the effect these seeds could detect (80% power at "
        "their spread). A side is favoured only when the interval excludes 0"
        + ("; lower is better for IINC." if lower_is_better(spec.metric) else "."))]
    blocks += [Heading("reg − baseline (same cells)", 3), _comparison_table(agg.vs_baseline, spec)]
    if agg.vs_placebo:
        blocks += [Heading("reg − placebo (epsilon = 0, same seed and setting)", 3),
                   _comparison_table(agg.vs_placebo, spec)]
    return blocks


def heldout_section(agg: StudyAggregate, figure: Figure | None) -> list[Block]:
    if not agg.generalization:
        return []
    metrics = list(dict.fromkeys(r["metric"] for r in agg.generalization))
    return [Heading("Held-out methods"), Para(
        "Each held-out method is never seen in training; its metrics are on the test reals plus that method's "
        f"fakes, clean and under each attack at {ref_eps(agg)}. Seed mean [t-interval over seeds]."),
        *([figure] if figure else []), _curve_table(agg.generalization, metrics, agg.spec, subset=True),
        Heading("reg − baseline on held-out methods", 3), _comparison_table(agg.heldout, agg.spec)]


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
        "Beating the baseline is not enough: with epsilon = 0 the loss reweighting alone changes the model, so the "
        "regularizer helps only where it also beats the placebo.",
        "\"No detectable difference\" describes these seeds, not equality: the detectable effect says how large a "
        "difference they could have shown. More seeds narrow the interval.",
        "Compare attacked metrics with the clean ones: a gain under attack that equals the clean gain is accuracy, "
        "not robustness.",
        "Every number is in study.json (null where undefined).",
    ])]


def all_sections(agg: StudyAggregate, dose_figures: dict[tuple, Figure], heldout_figure: Figure | None) -> list[Block]:
    """The whole document in reading order: overview, answers, evidence, cost, how to read it."""
    return [*overview(agg), *answers(agg), *dose_section(agg, dose_figures), *comparisons_section(agg),
            *heldout_section(agg, heldout_figure), *cost_section(agg), *reading_guide()]
