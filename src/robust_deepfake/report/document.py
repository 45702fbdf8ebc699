"""The sections of report.md / report.html, in reading order, as document blocks
(report/blocks.py renders them). Every number is read from the stage outputs: nothing is
hand-written."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from robust_deepfake import units
from robust_deepfake.config import EnsembleConfig
from robust_deepfake.explain.outputs import CamMetrics
from robust_deepfake.metrics import METRIC_DEFINITIONS
from robust_deepfake.paths import VARIANTS, ModelKey
from robust_deepfake.report.blocks import Block, Bullets, Figure, Heading, Para, Table
from robust_deepfake.report.names import METRIC_NAMES
from robust_deepfake.robustness.masking import CHECKS, CheckRow
from robust_deepfake.robustness.masking_outputs import MaskingChecks
from robust_deepfake.robustness.sweep import ENSEMBLE, SweepMetrics
from robust_deepfake.units import CLEAN
from robust_deepfake.verdict.champion import ChampionDecision
from robust_deepfake.verdict.claims import seeds_for_every
from robust_deepfake.verdict.seeds import SeedDifference

TITLE = "Robust deepfake detection report"
PLACEBO_NOTE = (" The placebo is the regularized recipe with epsilon 0 (the alpha-weighted second pass, no "
                "perturbation), so reg − placebo isolates the perturbation.")
CAM_APPENDIX = "Appendix: Grad-CAM grids"
TRAINING_CURVES_CAPTION = ("A loss panel in which one epoch lies far above the rest (above Q3 + 3 IQR of the panel) "
                           "cuts its y-axis there and marks that epoch with ▲ on the top edge; its title gives the "
                           "cut and the largest value. Epochs count from 1.")
NO_PLACEBO_NOTE = (" These outputs have no placebo (the recipe with epsilon 0), so the perturbation cannot be told "
                   "apart from the second pass.")


def _f(value: float, digits: int = 3) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _signed(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:+.3f}"


def _signed_ci(low: float, high: float) -> str:
    """A difference's interval: `[-0.012, +0.034]`; `n/a` below 2 seeds."""
    return "n/a" if math.isnan(low) else f"[{_signed(low)}, {_signed(high)}]"


def _figure(folder: str, name: str, alt: str | None = None) -> Figure:
    """A figure of the report by its path relative to reports/."""
    return Figure(Path(folder) / name, alt if alt is not None else name)


def _pct(level: float) -> str:
    return f"{level:.0%}"


def headline_rows(differences: list[SeedDifference], attack: str) -> list[SeedDifference]:
    """The rows the top of the report answers with: per comparison, accuracy under `attack`
    and on clean images (a gain under attack equal to the clean gain is accuracy, not
    robustness)."""
    wanted = [(attack, "accuracy"), (CLEAN, "accuracy")]
    pairs = list(dict.fromkeys(d.pair for d in differences))
    found = {(d.pair, d.attack, d.metric): d for d in differences}
    return [found[(p, a, m)] for p in pairs for a, m in wanted if (p, a, m) in found]


def headline(differences: list[SeedDifference], attack: str) -> list[Block]:
    """The answers, in question order, by accuracy under `attack`."""
    rows = [d for d in headline_rows(differences, attack) if d.attack == attack]
    if not rows:
        return [Para("No attack rows: nothing to conclude.")]
    answers = [f"{d.pair.question} {d.pair.label} {_signed(d.mean)} {_signed_ci(d.ci_low, d.ci_high)} "
               f"({d.n_seeds} seeds): {d.reading()}." for d in rows]
    return [Para(f"(accuracy under {attack.upper()}, seed mean and {_pct(rows[0].level)} interval over seeds): "
                 + " ".join(answers), lead="Answers")]


def verdict_section(differences: list[SeedDifference], decision: ChampionDecision, criterion: str,
                    level: float, attack: str, forest: str) -> list[Block]:
    """The short verdict table, the forest plot of every seed-level difference, the power
    plan, the champion and the quality floor."""
    shown = headline_rows(differences, attack)
    rows = [[d.pair.question if i == 0 or shown[i - 1].pair != d.pair else "", d.pair.label,
             f"{METRIC_NAMES[d.metric]}, {_where(d.attack)}", _signed(d.mean), _signed_ci(d.ci_low, d.ci_high),
             str(d.n_seeds), d.reading()] for i, d in enumerate(shown)]
    champion = decision.champion
    return [
        Heading("Verdict"),
        Table(["question", "comparison", "metric", "seed mean", f"{_pct(level)} CI over seeds", "seeds",
               "reading"], rows),
        _figure("figures", forest, "forest plot of every seed-level difference"),
        Para(f"Per training seed s, d_s is the difference between two variants of seed s (same initial weights and "
             "data order) on the same test images; per attack it is averaged over the attacked eps. The interval is "
             f"a {_pct(level)} Student-t interval over seeds whose spread is never below the seeds' own test-sampling "
             "SE (the SD of each d_s over image-bootstrap resamples): the floor keeps a few seeds that happen to "
             "agree from reading as certain. A sign is claimed only when the interval excludes 0 at enough seeds "
             "(docs/statistics.md)." + (PLACEBO_NOTE if any("placebo" in (d.pair.first, d.pair.second) for d in shown)
                                        else NO_PLACEBO_NOTE), lead="How these are computed."),
        *power_section(differences, attack),
        Para(f"by `report.select_by: {criterion}` (seed-mean score: baseline "
             f"{_f(decision.variant_scores['baseline'])}, regularized {_f(decision.variant_scores['reg'])}): "
             f"{decision.reason}. Registered as `@champion`: **{champion.name}**, the {champion.variant} seed whose "
             f"score is closest to its variant's mean; `@challenger`: {decision.challenger.name}."
             + (" The placebo is a control and never either." if any(k.variant == "placebo" for k in decision.floor.clean_auc)
                else "")
             + ("" if decision.move_champion else " The aliases were not moved by this run."),
             lead="Champion"),
        floor_paragraph(decision),
    ]


def _where(attack: str) -> str:
    return "clean" if attack == CLEAN else f"under {attack.upper()}"


def _seeds(count: int | None, max_seeds: int) -> str:
    return f"{count}" if count is not None else f"> {max_seeds}"


def _plan_reading(d: SeedDifference) -> str:
    """What the seeds would have to become for min_effect, in a few words."""
    claim = d.claim
    if not claim.spread > 0:
        return "no spread to plan with"
    needed = claim.seeds_for_min_effect
    if needed is None:
        return f"{claim.min_effect:g} is out of reach"
    if needed <= d.n_seeds:
        return f"enough seeds for {claim.min_effect:g}"
    return f"{needed - d.n_seeds} more seeds for {claim.min_effect:g}"


def power_section(differences: list[SeedDifference], attack: str) -> list[Block]:
    """For each headline comparison: the spread, the seeds the observed effect and
    report.min_effect would need (80% power), and the effect these seeds detect."""
    rows = headline_rows(differences, attack)
    if not rows:
        return []
    first = rows[0].claim
    table = [[d.pair.label, f"{METRIC_NAMES[d.metric]}, {_where(d.attack)}", str(d.n_seeds), _f(d.claim.spread),
              _signed(d.mean), _seeds(d.claim.seeds_for_observed, d.claim.max_seeds),
              _seeds(d.claim.seeds_for_min_effect, d.claim.max_seeds), _f(d.claim.detectable), _plan_reading(d)]
             for d in rows]
    needed = seeds_for_every([d.claim for d in rows if d.attack == attack])
    every = (f" A run of **{needed} seeds** gives every comparison under {attack.upper()} that power for "
             f"{first.min_effect:g} (`seeds_needed` in metrics/report.json)." if needed is not None else "")
    return [
        Heading("How many seeds a claim would take", 3),
        Table(["comparison", "metric", "seeds", "spread (SD of d_s)", "observed effect", "seeds for it",
               f"seeds for {first.min_effect:g}", "detectable now", "plan"], table),
        Para(f"{first.power:.0%} power, two-sided t-test at the spread shown (floored at the test SE); "
             f"`report.min_effect` = {first.min_effect:g}. **No claim below {first.min_seeds} seeds.** A spread "
             "estimated from few seeds is itself uncertain: read these counts as orders of magnitude. The numbers "
             "differ from machine to machine (another CPU is another draw of training noise); the reading must not."
             + every),
    ]


def all_comparisons_section(differences: list[SeedDifference], level: float) -> list[Block]:
    """Every seed-level difference, pair by pair in question order."""
    rows = []
    for d in differences:
        counts = d.seeds_favouring
        rows.append([d.pair.label, _where(d.attack), METRIC_NAMES[d.metric], _signed(d.mean),
                     _signed_ci(d.ci_low, d.ci_high), f"{counts[d.pair.first]} / {counts[d.pair.second]}",
                     d.favours if d.claimed else "—"])
    return [
        Heading("Every comparison", 3),
        Para("Attack success rate compares attack success on the images both models of a seed classify correctly "
             "when clean; the evasion rate, each model's share of the fakes it detects when clean that the attack "
             "turns real; for both and for IINC lower is better. *favours*: the side a claimed sign favours (— where "
             "no sign is claimed)."),
        Table(["comparison", "where", "metric", "seed mean", f"{_pct(level)} CI over seeds",
               "seeds favouring first / second", "favours"], rows),
    ]


def floor_paragraph(decision: ChampionDecision) -> Para:
    """Which models pass the quality floor (clean ROC-AUC >= report.min_clean_auc)."""
    floor = decision.floor
    failing = [k for k in sorted(floor.clean_auc) if not floor.passes(k)]
    text = (f"**Quality floor**: clean test ROC-AUC ≥ {floor.min_clean_auc:g} (`report.min_clean_auc`); a model "
            "under it is never `@champion`/`@challenger` and `robust-deepfake predict` refuses it. ")
    if not failing:
        return Para(text + f"All {len(floor.clean_auc)} models pass.")
    return Para(text + "Under the floor: " + ", ".join(f"{k.name} ({_f(floor.clean_auc[k])})" for k in failing) + ".")


def per_seed_section(differences: list[SeedDifference], level: float, attack: str) -> list[Block]:
    """Per-seed accuracy differences under `attack` with their test-sampling SE and
    per-image intervals (test sampling only)."""
    rows = []
    for d in differences:
        if not d.per_image_ci or d.metric != "accuracy" or d.attack != attack:
            continue
        for seed, value, se, ci in zip(d.seeds, d.per_seed, d.per_seed_se, d.per_image_ci):
            rows.append([d.pair.label, str(seed), _signed(value), _f(se), _signed_ci(*ci)])
    if not rows:
        return []
    return [
        Heading("Per seed (test sampling only)", 3),
        Para(f"Accuracy difference under {attack.upper()} of each seed, its test-sampling SE (the floor of the "
             f"seed-level interval) and a paired bootstrap {_pct(level)} interval over test images. These intervals "
             "ignore training variance: two seeds of the *same* variant often differ by more than they suggest. "
             "Read the seed-level verdict above."),
        Table(["comparison", "seed", "d_s", "test SE", f"{_pct(level)} CI (images)"], rows),
    ]


def setup_section(params, n_images: int, eps: list[float], attacks: list[str], quantized: bool) -> list[Block]:
    reg = params.reg
    scale = ("of each sample's ||(μ, σ)|| (relative)" if reg.epsilon_scale == "relative" else "(absolute L2 norm)")
    return [Para(
        f"Seeds {params.train.seeds} per variant. Attacks {', '.join(a.upper() for a in attacks)} at eps "
        f"{', '.join(units.label(e) for e in eps if e > 0)} on {n_images} test images, "
        + ("adversarial images **rounded to 8 bits** before scoring (`attack.quantize: true`, what survives saving "
           "the image)" if quantized else "float adversarial images (`attack.quantize: false`)")
        + f". Regularization `{reg.mode}` with alpha={reg.alpha}, epsilon={reg.epsilon} {scale}, split after "
        f"block {reg.split_at}; {params.train.epochs} epochs, {params.train.num_threads} torch thread(s)."
    )]


def dose_response_section(dose: dict | None) -> list[Block]:
    """The measured dose-response behind the demo's reg.epsilon (benchmarks/dose_response.py):
    a fixed benchmark, not this run, so an appendix."""
    if not dose:
        return []
    rows = [[str(r["epsilon"]), _f(r["loss_gap"], 4), _f(r["relative"], 3), _f(r["clean_accuracy"]),
             _f(r["attacked_accuracy"]), str(r["seeds"])] for r in dose["rows"]]
    return [
        Heading("Appendix: why this reg.epsilon (a fixed benchmark, not this run)"),
        Para("Measured once, on the machine named below, with its own seeds and settings "
             "(benchmarks/results/dose_response.json): it does not change when this pipeline reruns."),
        *([Para(dose["description"])] if dose.get("description") else []),
        Table(["reg.epsilon (relative)", "mean |L_pert − L_clean|", "measured relative size", "clean accuracy",
               f"accuracy under {dose.get('attack', 'attack')}", "seeds"], rows),
        Para(f"Measured with `{dose.get('command', 'python -m benchmarks.dose_response')}` on {dose.get('device', 'n/a')} "
             f"(torch {dose.get('torch', 'n/a')}). The demo uses the smallest epsilon whose loss gap is at least twice the "
             "placebo's (epsilon 0), a rule that looks at the loss only, never at the attacked accuracy."),
    ]


def data_section(split: dict) -> list[Block]:
    rows = []
    for name in ("train", "val", "test"):
        entry = split[name]
        rows.append([name, str(entry["real"]), str(entry["fake"]), str(entry["total"]), str(entry["groups"])])
    sources = sorted({s for name in ("train", "val", "test") for s in split[name]["by_source"]})
    per_source = [[s] + [str(split[name]["by_source"].get(s, 0)) for name in ("train", "val", "test")] for s in sources]
    holdout = ", ".join(split.get("holdout_methods") or []) or "none"
    notes = f"Held-out methods (test only): {holdout}. Skipped unreadable files: {split.get('skipped_bad_files', 0)}."
    return [
        Heading("Data"),
        Table(["split", "real", "fake", "total", "identities"], rows),
        Table(["source", "train", "val", "test"], per_source),
        Para(notes),
        *data_checks(split),
    ]


def data_checks(split: dict) -> list[Block]:
    """The split's content checks in one paragraph: images under data.min_image_size and
    exact copies left out (a run with on_bad_file: error would have stopped instead), and
    the near-duplicate pairs across splits. Nothing for a split.json written before these
    checks existed."""
    if "exact_duplicates" not in split:
        return []
    copies = split["exact_duplicates"]
    near = split.get("near_duplicates") or {}
    across = near.get("across_splits") or {}
    text = (f"Content checks: {split.get('skipped_small_images', 0)} image(s) under {split.get('min_image_size')} px "
            f"left out; {copies.get('dropped', 0)} exact duplicate file(s) left out "
            f"({copies.get('groups', 0)} group(s) of identical files, {copies.get('label_conflicts', 0)} with both "
            "labels); near-duplicates across splits")
    if across:
        text += (f" ({near.get('hash', 'dHash')}, within {near.get('max_bits')} bits): "
                 + ", ".join(f"{pair} {count}" for pair, count in across.items())
                 + (" pair(s), examples in metrics/split.json." if sum(across.values()) else " pairs."))
    else:
        text += ": not measured."
    return [Para(text)]


def training_section(train: dict[ModelKey, dict], sweep: SweepMetrics) -> list[Block]:
    rows = []
    for key, m in train.items():
        test = sweep.get(key, CLEAN, 0.0)
        rows.append([key.variant, str(key.seed), str(m["best_epoch"]), str(m["epochs_run"]), _f(m["val_accuracy"]),
                     _f(m["val_auc"]), _f(test.accuracy), _f(test.auc), _f(m.get("train_loss_gap", math.nan), 4),
                     _f(m.get("train_perturbation_relative", math.nan))])
    for variant in VARIANTS:
        members = [k for k in train if k.variant == variant]
        if not members:
            continue
        def mean(values: list[float]) -> str:
            return _f(float(np.mean(values)))
        rows.append([f"**{variant} mean**", f"{len(members)} seeds", "", "",
                     mean([train[k]["val_accuracy"] for k in members]), mean([train[k]["val_auc"] for k in members]),
                     mean([sweep.get(k, CLEAN, 0.0).accuracy for k in members]),
                     mean([sweep.get(k, CLEAN, 0.0).auc for k in members]), "", ""])
    return [
        Heading("Training"),
        Para("Validation metrics are those of the best epoch (the epoch was chosen on them, so they are optimistic); "
             "the test columns are the clean row of the attacked test subset. *|L_pert − L_clean|* and *relative size* "
             "show how much the regularizer's perturbation does at the best epoch (≈ 0 means a no-op). Speeds are "
             "machine facts: they are in each training's MLflow run, not in this (reproducible) report."),
        Table(["variant", "seed", "best epoch", "epochs run", "val accuracy", "val ROC-AUC", "test accuracy",
               "test ROC-AUC", "|L_pert − L_clean|", "relative size"], rows),
        Figure(Path("figures") / "training_curves.png", "training curves", caption=TRAINING_CURVES_CAPTION),
    ]


def _mean_sd(values: list[float]) -> str:
    if len(values) < 2:
        return _f(values[0]) if values else "n/a"
    return f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}"


def robustness_section(sweep: SweepMetrics, figures: list[str]) -> list[Block]:
    parts: list[Block] = [
        Heading("Robustness"),
        Para("Seed mean ± sd over seeds per variant (every model attacked on the same test images); evasion = share "
             "of the fakes detected when clean that the attack turns into 'real' (the attack success rate over both "
             "classes is in eval/attack_sweep.json and its figure).")]
    seeds = sorted({k.seed for k in sweep.models})
    for attack in sweep.attacks:
        rows = []
        for eps in [0.0, *sweep.attacked_eps]:
            row = [units.label(eps) if eps > 0 else "0 (clean)"]
            for metric in ("accuracy", "auc", "evasion_rate"):
                for variant in VARIANTS:
                    values = [getattr(sweep.get(ModelKey(variant, s), attack, eps), metric) for s in seeds]
                    row.append(_mean_sd(values))
            rows.append(row)
        header = ["eps"] + [f"{v} {name}" for name in ("acc", "AUC", "evasion") for v in VARIANTS]
        parts += [Heading(attack.upper(), 3), Table(header, rows)]
    if _same_rows(sweep, "bim", "pgd"):
        parts.append(Para("for every model and eps at these settings (PGD's random start did not change any "
                          "prediction): read them as one attack, or raise `attack.steps` / "
                          "`attack.step_size_relative` to separate them.", lead="BIM and PGD gave identical numbers"))
    parts += [_figure("figures", name) for name in figures]
    return parts


def _same_rows(sweep: SweepMetrics, a: str, b: str) -> bool:
    if a not in sweep.attacks or b not in sweep.attacks:
        return False
    return all((sweep.get(k, a, e).accuracy, sweep.get(k, a, e).auc) == (sweep.get(k, b, e).accuracy, sweep.get(k, b, e).auc)
               for k in sweep.models for e in sweep.attacked_eps)


THREAT_COLUMNS = ("accuracy", "auc", "evasion_rate", "real_to_fake_rate", "ap", "eer", "tpr_at_fpr_1", "tpr_at_fpr_5")


def threat_section(sweep: SweepMetrics, eps: float) -> list[Block]:
    """The evasion threat model and the deepfake benchmarks' metrics, clean and under each
    attack at `eps`, seed means per variant; each metric defined in one sentence."""
    seeds = sorted({k.seed for k in sweep.models})
    variants = [v for v in VARIANTS if any(k.variant == v for k in sweep.models)]
    rows = []
    for variant in variants:
        for attack, at in [(CLEAN, 0.0)] + [(a, eps) for a in sweep.attacks]:
            values = [[getattr(sweep.get(ModelKey(variant, s), attack, at), metric) for s in seeds]
                      for metric in THREAT_COLUMNS]
            cells = ["—" if attack == CLEAN and metric in ("evasion_rate", "real_to_fake_rate")
                     else _f(float(np.nanmean(v)) if np.isfinite(v).any() else math.nan)
                     for metric, v in zip(THREAT_COLUMNS, values)]
            rows.append([variant, "clean" if attack == CLEAN else attack.upper(), *cells])
    return [
        Heading(f"Threat model and detection metrics at {units.label(eps)}"),
        Para("For a deepfake detector the attacker's goal is **evasion**: a fake perturbed so that it is scored real "
             "(Carlini & Farid, CVPR-W 2020; Hussain et al., WACV 2021). The evasion rate is the headline under attack; "
             "attacking real images into 'fake' (a false alarm) is reported separately. AP, EER and the true-detection "
             "rate at a low false-alarm rate are what deepfake benchmarks report (DFFD; DeepfakeBench). Fake is the "
             "positive class; seed means."),
        Table(["variant", "attack", *(METRIC_NAMES[m] for m in THREAT_COLUMNS)], rows),
        Bullets([f"*{METRIC_NAMES[m]}* ({'higher' if METRIC_DEFINITIONS[m].higher_is_better else 'lower'} is "
                 f"better): {METRIC_DEFINITIONS[m].definition}." for m in THREAT_COLUMNS]),
    ]


def ensemble_note(config: EnsembleConfig, attacks: list[str]) -> list[Block]:
    """What the ENSEMBLE rows are (nothing when the sweep has no ensemble)."""
    if ENSEMBLE not in attacks:
        return []
    members = [f"APGD-CE ({config.apgd_steps} steps x {config.apgd_restarts} run(s))"]
    if config.fab:
        members.append(f"FAB ({config.fab_steps} steps)")
    if config.square_queries:
        members.append(f"Square ({config.square_queries} queries, black-box)")
    others = ", ".join(a.upper() for a in attacks if a != ENSEMBLE)
    return [Para(f"per image the worst case over {others} and {', '.join(members)} at the same eps (Croce & Hein, "
                 "ICML 2020; Andriushchenko et al., ECCV 2020): an image counts as robust only when every attack "
                 "fails, as in RobustBench's AutoAttack. Its DLR and targeted members are left out: with two classes "
                 "DLR has no third logit, the only target is the other class, and cross-entropy and the logit margin "
                 "give the same gradient sign. Its accuracy is the robust accuracy to quote; PGD's is an upper bound.",
                 lead="ENSEMBLE:")]


def _pct_of(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{100 * value:.1f}"


def _check_cell(row: CheckRow) -> str:
    """PASS/WARN with the numbers the check compared, as accuracies in %."""
    n = row.numbers
    if row.check == "iterative_vs_fgsm":
        numbers = " / ".join(f"{name.upper()} {_pct_of(value)}" for name, value in n.items())
    elif row.check == "steps_and_restarts":
        numbers = f"{_pct_of(n['accuracy'])} → {_pct_of(n['stronger'])}"
    elif row.check == "large_eps":
        numbers = f"acc {_pct_of(n['accuracy'])}, evasion {_pct_of(n['evasion_rate'])}"
    elif row.check == "black_box":
        numbers = f"white-box {_pct_of(n['white_box'])} → +Square {_pct_of(n['square'])}"
    elif row.check == "transfer":
        numbers = f"transfer {_pct_of(n['transfer'])} vs white-box {_pct_of(min(v for k, v in n.items() if k != 'transfer'))}"
    elif row.check == "random_noise":
        numbers = f"noise {_pct_of(n['noise'])} in [{_pct_of(n['low'])}, {_pct_of(n['high'])}]"
    else:
        numbers = ", ".join(f"{k} {v:.3g}" for k, v in n.items())
    return f"{'**WARN**' if row.status == 'WARN' else 'PASS'} ({numbers})"


MASKING_CHECK_TEXT = {
    "iterative_vs_fgsm": "iterative attacks (BIM, PGD) at least as strong as single-step FGSM",
    "steps_and_restarts": "PGD with twice the steps and a random restart changes accuracy by at most the tolerance "
                          "(else the attack had not converged and its accuracy is an upper bound)",
    "large_eps": "PGD at a large budget leaves (almost) no accuracy, or (almost) no detected fake",
    "black_box": "Square (black-box, reads only the scores) fools no more images than the white-box attacks left",
    "transfer": "PGD crafted on the baseline of the same seed is not stronger here than white-box attacks on this model",
    "random_noise": "uniform noise in the eps-ball leaves accuracy inside the clean accuracy's Wilson interval",
}


def masking_section(checks: MaskingChecks) -> list[Block]:
    """One PASS/WARN table of the gradient-masking checks, every model, with the numbers."""
    heading = Heading("Gradient-masking checks")
    if not checks.models:
        return [heading, Para("Not run (`attack.masking.enabled: false`).")]
    present = [c for c in CHECKS if any(row.check == c for entry in checks.models for row in entry.rows)]
    rows = []
    for entry in checks.models:
        by_check = {row.check: row for row in entry.rows}
        rows.append([entry.model.name] + [_check_cell(by_check[c]) if c in by_check else "—" for c in present])
    tol = checks.tolerances
    warnings = [f"{entry.model.name} {row.check}: {row.reason}" for entry in checks.models for row in entry.rows
                if row.status == "WARN"]
    return [
        heading,
        Para(f"A model whose input gradients are flat, noisy or saturated looks robust to gradient attacks without "
             f"being robust (Athalye et al., ICML 2018; Carlini et al., 2019). At {units.label(checks.eps)}, on the "
             f"sweep's images (accuracy in %, tolerance {_pct_of(tol['stronger_by'])} points, large budget "
             f"{checks.budget['large_eps_label']}):"),
        Bullets([f"`{c}`: {MASKING_CHECK_TEXT[c]}." for c in present]),
        Table(["model", *present], rows),
        *([Para("; ".join(warnings) + ".", lead="Warnings:")] if warnings else
          [Para("every check passes for every model.", lead="No warning:")]),
    ]


def masking_verdict(checks: MaskingChecks) -> list[Block]:
    """The verdict's line when any masking check warns (masking.verdict_line), else nothing."""
    line = checks.verdict_line()
    return [Para(line[0].upper() + line[1:] + ".", lead="Caution:")] if line else []


def iinc_section(cam: CamMetrics, cam_figures: list[str]) -> list[Block]:
    seeds = sorted({k.seed for k in cam.models})

    def cell(variant: str, attack: str, eps: float, measure: str) -> str:
        return _mean_sd([cam.get(ModelKey(variant, s), attack, eps, measure).mean for s in seeds])

    variants = [v for v in VARIANTS if any(k.variant == v for k in cam.models)]
    rows = [["clean", "0"] + ["—"] * len(variants) + [cell(v, CLEAN, 0.0, "localization") for v in variants]]
    for attack in cam.attacks:
        for eps in cam.attacked_eps:
            rows.append([attack.upper(), units.label(eps)]
                        + [cell(v, attack, eps, "stability") for v in variants]
                        + [cell(v, attack, eps, "localization") for v in variants])
    header = ["attack", "eps"] + [f"{v} stability" for v in variants] + [f"{v} localization" for v in variants]
    n = cam.get(cam.models[0], CLEAN, 0.0, "localization").n
    return [
        Heading("Explanations: Grad-CAM and IINC"),
        Para(f"IINC (Inverse Intersection Non-Containment) between two maps: 0 = identical, 1 = disjoint; seed mean "
             f"± sd; **lower is better** for both uses. *Localization* is IINC as DFFD defines it (Dang et al., CVPR "
             f"2020): CAM vs the ground-truth manipulation mask, on the {n} fakes with masks. *Stability* is our "
             f"extension of it: clean CAM vs adversarial CAM of the same image ({cam.method} at `{cam.target_layer}`), "
             "how far the explanation moves under attack. An empty (all-zero) CAM against a non-empty map scores "
             "1/(3 − |U|) ≤ 0.5, so a model that stops explaining anything can look 'stable': read stability with the "
             "accuracy under attack."),
        Table(header, rows),
        _figure("figures", "iinc.png", "IINC vs eps"),
        *([Para(f"The {len(cam_figures)} Grad-CAM grids (clean and attacked images with each model's map) are in "
                f"the appendix *{CAM_APPENDIX}*.")] if cam_figures else []),
    ]


def cam_appendix(cam_figures: list[str]) -> list[Block]:
    """The Grad-CAM grids, after everything a reader decides on."""
    if not cam_figures:
        return []
    return [Heading(CAM_APPENDIX),
            Para("One grid per variant and attack: test images clean and attacked, each with the model's Grad-CAM "
                 "(what the IINC table above measures)."),
            *[_figure("cam", name) for name in cam_figures]]


def per_source_section(sweep_rows: pd.DataFrame, attack: str, eps: float) -> list[Block]:
    frame = sweep_rows[(sweep_rows.metric == "accuracy") & (sweep_rows.source != "all")]
    rows = []
    for source in sorted(set(frame.source)):
        mine = frame[frame.source == source]
        held = mine.heldout.astype(str).str.lower().eq("true").any()
        row = [source, "yes" if held else "no", str(int(mine.n.iloc[0]))]
        for name, at in ((CLEAN, 0.0), (attack, eps)):
            for variant in VARIANTS:
                values = mine[(mine.variant == variant) & (mine.attack == name) & ((mine.eps - at).abs() < 1e-9)].value
                row.append(_mean_sd(values.tolist()) if len(values) else "n/a")
        rows.append(row)
    label = f"{attack.upper()} {units.label(eps)}"
    return [
        Heading("Per-source generalization"),
        Para("Accuracy per source (seed mean ± sd); *n* = test images of that source."),
        Table(["source", "held out", "n", *(f"{v} {where}" for where in ("clean", label) for v in VARIANTS)], rows),
        _figure("figures", "per_source.png", "per-source accuracy"),
        Heading("ROC curves and confusion matrices"),
        _figure("figures", "roc.png", "ROC"),
        _figure("figures", "confusion.png", "confusion matrices"),
    ]


def provenance_section(provenance: dict[str, str]) -> list[Block]:
    return [Heading("Provenance"), Table(["what", "value"], [[k, f"`{v}`"] for k, v in provenance.items()])]


def how_to_read() -> list[Block]:
    return [
        Heading("How to read this report"),
        Bullets([
            "The verdict's unit is the training seed: an interval over seeds contains the seed-to-seed spread that "
            "per-image intervals leave out. More seeds narrow it (`train.seeds` in params.yaml).",
            "Read the comparisons in order: reg − placebo says whether the perturbation itself matters; placebo − "
            "baseline whether the extra, alpha-weighted pass does; reg − baseline is the two together.",
            "Compare each attack row with the *clean* row: if a variant is better under attack by about as much as "
            "it is better on clean images, the gain is accuracy, not robustness.",
            "\"No detectable difference\" is a statement about these seeds and this data, not proof of equality: "
            "the seeds table says how large a difference they could have shown and how many seeds "
            "`report.min_effect` would take.",
            "Another CPU changes the training floats from the first epoch: a fresh clone's numbers differ from the "
            "committed ones (the provenance names the machine), while the reading must not flip a claimed sign.",
            "The sample data are synthetic and small: the figures show the pipeline works, not how DFFD behaves. "
            "Run on DFFD (README: *Using DFFD instead*) for real conclusions.",
            "Regenerate with `dvc repro`; compare parameter variants with `dvc exp run -S ...` and `dvc exp show`.",
        ]),
    ]
