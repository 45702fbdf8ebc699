"""The report renders from small synthetic stage outputs (no training, three seeds per
variant) with every section, figure and verdict row, and the champion choice follows
report.select_by."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from markdown_check import markdown_problems
from robust_deepfake.config import EvalConfig, validate
from robust_deepfake.explain.outputs import CamEntry, CamMetrics, IincValues
from robust_deepfake.io import write_csv, write_json
from robust_deepfake.paths import (
    CamOutputs,
    ModelKey,
    ReportOutputs,
    SplitOutputs,
    SweepOutputs,
    TrainOutputs,
    model_keys,
    run_record_path,
)
from robust_deepfake.pipeline.report import build_report
from robust_deepfake.robustness.masking import MaskingTolerances
from robust_deepfake.robustness.masking_outputs import MaskingChecks
from robust_deepfake.robustness.masking_probes import Measurements, ProbeBudget
from robust_deepfake import units
from robust_deepfake.robustness.sweep import CSV_COLUMNS, SweepEntry, SweepMetrics, SweepPredictions, summarize_sweep
from robust_deepfake.tracking.tracker import NullTracker
from robust_deepfake.verdict.champion import EVIDENCE, choose_champion
from robust_deepfake.verdict.claims import assess, seeds_needed
from robust_deepfake.verdict.seeds import present_pairs, seed_difference

EPS = [0.0, 1 / 255, 2 / 255]
ATTACKS = ["fgsm", "pgd"]
SOURCES = ["real_a", "fake_x", "fake_y"]
SEEDS = [0, 1, 2]
CAM_COLUMNS = ["variant", "seed", "attack", "eps", "eps_label", "measure", "value", "ci_low", "ci_high", "n"]


def _synthetic_outputs(root, params) -> SweepMetrics:
    rng = np.random.default_rng(0)
    keys = model_keys(SEEDS)
    n = 60
    labels = np.array([0] * 20 + [1] * 40)
    sources = np.array(["real_a"] * 20 + ["fake_x"] * 20 + ["fake_y"] * 20)
    p = np.zeros((len(keys), len(ATTACKS), len(EPS), n))
    for m, key in enumerate(keys):
        slope = 0.12 if key.variant == "baseline" else 0.08  # reg degrades more slowly
        for e, eps in enumerate(EPS):
            strength = 0.35 - eps * 255 * slope
            p[m, :, e] = np.clip(0.5 + (labels - 0.5) * 2 * strength + rng.normal(0, 0.2, n), 0, 1)
    predictions = SweepPredictions(keys, ATTACKS, EPS, np.arange(n), labels, sources, p)
    sweep = SweepOutputs.at(root)
    sweep.predictions.parent.mkdir(parents=True)
    predictions.save(sweep.predictions)
    metrics, rows = summarize_sweep(predictions, params.eval, holdout=["fake_y"])
    metrics.save(sweep.metrics)
    write_csv(sweep.plot, CSV_COLUMNS, rows)
    _masking_checks(keys).save(sweep.masking)

    split = {name: {"total": t, "real": t // 2, "fake": t - t // 2, "groups": t, "by_source": {s: t // 3 for s in SOURCES}}
             for name, t in (("train", 90), ("val", 30), ("test", 60))}
    write_json(SplitOutputs.at(root).metrics, {**split, "holdout_methods": ["fake_y"], "skipped_bad_files": 0})
    for key in keys:
        outputs = TrainOutputs.of(root, key)
        write_json(outputs.metrics, {"best_epoch": 1, "val_accuracy": 0.8, "val_f1": 0.79, "val_auc": 0.9 + 0.01 * key.seed,
                                     "val_loss": 0.4, "train_loss": 0.3, "epochs_run": 2})
        history = [{"epoch": e, "train_loss": 0.6 - 0.2 * e, "val_loss": 0.7 - 0.2 * e, "val_auc": 0.7 + 0.1 * e,
                    "val_accuracy": 0.6 + 0.1 * e} for e in range(2)]
        write_csv(outputs.plot, list(history[0]), history)
        write_json(outputs.meta, {"variant": key.variant, "seed": key.seed})
        write_json(run_record_path(root, key), {"timing": {"seconds": 10.0, "images_per_s": 120.0}})

    cam = CamOutputs.at(root)
    attacked = EPS[1:]
    n_cam = 8
    shape = (len(keys), len(ATTACKS), len(attacked), n_cam)
    values = IincValues(keys, ATTACKS, attacked, np.arange(n_cam), np.ones(n_cam, bool), np.full(shape, np.nan),
                        np.full(shape, 0.42), np.full((len(keys), n_cam), 0.4))
    entries = []

    def entry(key, attack, eps, measure, per_image):
        mean = float(np.mean(per_image))
        return CamEntry(key, attack, eps, measure, mean, (mean - 0.05, mean + 0.05), n_cam)

    for m, key in enumerate(keys):
        entries.append(entry(key, "clean", 0.0, "localization", values.localization_clean[m]))
        for a, attack in enumerate(ATTACKS):
            for e, eps in enumerate(attacked):
                stability = 0.2 + eps * 255 * 0.05 - (0.03 if key.variant == "reg" else 0.0)
                values.stability[m, a, e] = stability + rng.normal(0, 0.01, n_cam)
                entries.append(entry(key, attack, eps, "stability", values.stability[m, a, e]))
                entries.append(entry(key, attack, eps, "localization", values.localization[m, a, e]))
    CamMetrics(entries, "gradcam", "blocks.2").save(cam.metrics)
    values.save(cam.values)
    write_csv(cam.plot, CAM_COLUMNS, [
        {"variant": x.model.variant, "seed": x.model.seed, "attack": x.attack, "eps": x.eps,
         "eps_label": units.label(x.eps), "measure": x.measure, "value": x.mean, "ci_low": x.ci[0],
         "ci_high": x.ci[1], "n": x.n} for x in entries])
    cam.figures.mkdir(parents=True)
    for variant in ("baseline", "reg"):
        for attack in ATTACKS:
            Image.new("RGB", (20, 20), (200, 0, 0)).save(cam.figures / f"cam_{variant}_{attack}.png")
    return metrics


MASKED = ModelKey("reg", 1)  # the one model whose synthetic PGD had not converged


def _masking_checks(keys) -> MaskingChecks:
    """Every check passes except steps_and_restarts for MASKED (PGD 30% -> 20% with 2x steps)."""
    measured = {}
    for key in keys:
        accuracy = {"clean": 0.85, "fgsm": 0.40, "bim": 0.31, "pgd": 0.30, "pgd_strong": 0.20 if key == MASKED else 0.295,
                    "pgd_large": 0.02, "transfer": 0.70, "noise": 0.84, "white_box": 0.28, "ensemble": 0.28}
        evasion = {name: 1 - value for name, value in accuracy.items() if name != "clean"}
        measured[key] = Measurements(1 / 255, 16 / 255, 60, accuracy, evasion)
    transfer = {key: ModelKey("baseline", key.seed) for key in keys if key.variant != "baseline"}
    for key in keys:
        if key not in transfer:
            del measured[key].accuracy["transfer"]
    return MaskingChecks.of(measured, transfer, 1 / 255, ProbeBudget(), MaskingTolerances())


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    params = validate({"train": {"seeds": SEEDS}, "eval": {"n_bootstrap": 50},
                       "attack": {"attacks": ATTACKS, "eps": ["1/255", "2/255"]},
                       "report": {"reference_eps": "1/255"}})
    metrics = _synthetic_outputs(root, params)
    summary = build_report(params, root, NullTracker())
    return root, summary, metrics


def test_every_section_and_figure_exists(rendered):
    root, summary, _ = rendered
    markdown = (root / "reports" / "report.md").read_text()
    for section in ["**Answers**", "## Verdict", "### How many seeds a claim would take", "### Every comparison",
                    "### Per seed (test sampling only)", "## Data", "## Training",
                    "## Robustness", "### FGSM", "### PGD", "## Explanations: Grad-CAM and IINC",
                    "## Per-source generalization", "## ROC curves and confusion matrices", "## Provenance",
                    "## How to read this report", "## Threat model and detection metrics at 1/255",
                    "## Gradient-masking checks"]:
        assert section in markdown, section
    figures = ["forest.png", "robustness_accuracy.png", "robustness_auc.png", "robustness_evasion_rate.png",
               "robustness_asr.png", "iinc.png", "training_curves.png", "per_source.png", "roc.png", "confusion.png"]
    for name in figures:
        path = root / "reports" / "figures" / name
        assert path.exists() and Image.open(path).size[0] > 300, name
        assert f"(figures/{name})" in markdown
    for variant in ("baseline", "reg"):
        for attack in ATTACKS:
            assert f"(cam/cam_{variant}_{attack}.png)" in markdown
    assert "fake_y*" not in markdown  # held-out marking lives in the table column and figure
    assert "| fake_y | yes |" in markdown
    for key in model_keys(SEEDS):  # one training row per trained model, and the seed means
        assert f"| {key.variant} | {key.seed} |" in markdown
    assert "| **baseline mean** | 3 seeds |" in markdown and "| **reg mean** | 3 seeds |" in markdown


def test_html_is_self_contained(rendered):
    root, _, _ = rendered
    html = (root / "reports" / "report.html").read_text()
    assert "<table>" in html
    sources = [part.split('"')[0] for part in html.split('<img alt="')[1:]]
    assert len(sources) == 10 + 4
    assert html.count('src="data:image/png;base64,') == 14
    assert 'src="figures/' not in html and 'src="cam/' not in html


def _pgd_accuracy_diffs(metrics: SweepMetrics) -> list[float]:
    return [np.mean([metrics.get(ModelKey("reg", s), "pgd", eps).accuracy
                     - metrics.get(ModelKey("baseline", s), "pgd", eps).accuracy for eps in EPS[1:]])
            for s in SEEDS]


def test_verdict_rows_and_numbers_come_from_the_predictions(rendered):
    root, summary, metrics = rendered
    verdict = json.loads((ReportOutputs.at(root).verdict).read_text())
    rows = {(d["comparison"], d["attack"], d["metric"]): d for d in verdict["differences"]}
    pairs = [p.key for p in present_pairs(k.variant for k in metrics.models)]
    assert list(dict.fromkeys(d["comparison"] for d in verdict["differences"])) == pairs
    for pair in pairs:
        for attack in ["clean", *ATTACKS]:
            for metric in ("accuracy", "f1", "auc"):
                assert (pair, attack, metric) in rows
        for attack in ATTACKS:
            assert (pair, attack, "asr") in rows
            assert (pair, attack, "iinc_stability") in rows and (pair, attack, "iinc_localization") in rows

    pgd = rows[("reg_baseline", "pgd", "accuracy")]
    expected = _pgd_accuracy_diffs(metrics)
    assert pgd["seeds"] == SEEDS
    assert pgd["diffs"] == pytest.approx(expected)
    assert pgd["mean"] == pytest.approx(np.mean(expected))
    same = assess(expected, pgd["ses"], 0.95)  # every interval and claim goes through claims.assess
    assert [pgd["low"], pgd["high"], pgd["claim"]] == pytest.approx([same.low, same.high, same.claim])
    assert all(se > 0 for se in pgd["ses"]) and len(pgd["per_image_ci"]) == len(SEEDS)

    stability = rows[("reg_baseline", "pgd", "iinc_stability")]
    assert stability["mean"] == pytest.approx(-0.03, abs=0.01)
    assert stability["favours"] == "reg" and stability["claim"] == -1  # lower IINC is better
    localization = rows[("reg_baseline", "pgd", "iinc_localization")]
    assert localization["mean"] == pytest.approx(0.0) and localization["favours"] == "neither"

    decision = verdict["decision"]
    assert decision["champion"] == summary["decision"].champion.name
    assert decision["move_champion"] is True  # no current champion when untracked
    assert set(decision["representatives"]) == {"baseline", "placebo", "reg"}  # @placebo too
    assert {decision["champion"].split("-")[0], decision["challenger"].split("-")[0]} == {"baseline", "reg"}
    robustness = pd.read_csv(root / "plots" / "robustness" / "pgd.csv")
    assert list(robustness.columns[:1]) == ["eps_255"] and "reg_accuracy" in robustness.columns
    assert robustness.eps_255.tolist() == [0.0, 1.0, 2.0]
    pgd_2 = np.mean([metrics.get(ModelKey("reg", s), "pgd", EPS[2]).accuracy for s in SEEDS])
    assert robustness.reg_accuracy.iloc[2] == pytest.approx(pgd_2)  # seed mean


def _numeric_leaves(node) -> list[float]:
    if isinstance(node, dict):
        return [v for child in node.values() for v in _numeric_leaves(child)]
    if isinstance(node, list):
        return [v for child in node for v in _numeric_leaves(child)]
    return [node] if isinstance(node, int | float) and not isinstance(node, bool) else []


def test_masking_checks_are_one_table_and_a_warning_reaches_the_verdict(rendered):
    root, _, _ = rendered
    markdown = (root / "reports" / "report.md").read_text()
    section = markdown.split("## Gradient-masking checks")[1].split("\n## ")[0]
    table = [line for line in section.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| model | iterative_vs_fgsm | steps_and_restarts | large_eps | black_box | transfer |")
    rows = {line.split(" | ")[0].removeprefix("| "): line for line in table[1:]}
    assert set(rows) == {key.name for key in model_keys(SEEDS)}
    assert "**WARN** (30.0 → 20.0)" in rows[MASKED.name] and "PASS (30.0 → 29.5)" in rows["reg-seed0"]
    assert "PASS (transfer 70.0 vs white-box 28.0)" in rows["reg-seed0"]
    assert rows["baseline-seed0"].count("—") == 1  # no transfer check on the source itself
    verdict = markdown.split("## Verdict")[1].split("\n## ")[0]
    assert ("**Caution:** Robustness under PGD may be gradient masking: steps_and_restarts warns for reg-seed1 "
            "(attack had not converged") in verdict
    saved = json.loads(ReportOutputs.at(root).verdict.read_text())["masking"]
    assert saved.startswith("robustness under PGD may be gradient masking: steps_and_restarts warns for reg-seed1")


def test_the_threat_table_and_iinc_definition(rendered):
    root, _, metrics = rendered
    markdown = (root / "reports" / "report.md").read_text()
    section = markdown.split("## Threat model and detection metrics at 1/255")[1].split("\n## ")[0]
    assert "| variant | attack | accuracy | ROC-AUC | evasion rate | real→fake rate | AP | EER | TPR@FPR 1% |" in section
    row = next(line for line in section.splitlines() if line.startswith("| reg | PGD |"))
    expected = np.mean([metrics.get(ModelKey("reg", s), "pgd", EPS[1]).evasion_rate for s in SEEDS])
    assert row.split(" | ")[4] == f"{expected:.3f}"
    assert "*evasion rate* (lower is better)" in section
    iinc = markdown.split("## Explanations: Grad-CAM and IINC")[1]
    assert "as DFFD defines it (Dang et al., CVPR 2020)" in iinc and "our extension" in iinc
    assert "**lower is better**" in iinc


def test_headline_metrics_are_few_and_answer_the_questions(rendered):
    root, summary, metrics = rendered
    report = json.loads(ReportOutputs.at(root).metrics.read_text())
    assert report == json.loads(json.dumps(summary["metrics"]))
    assert len(_numeric_leaves(report)) <= 24
    assert report["seeds"] == len(SEEDS)
    variants = list(dict.fromkeys(k.variant for k in metrics.models))
    pairs = [p.key for p in present_pairs(variants)]
    assert list(report["pgd_acc_diff"]) == pairs  # in question order
    rows = {(d.pair.key, d.attack, d.metric): d for d in summary["differences"]}
    for pair in pairs:
        row = rows[(pair, "pgd", "accuracy")]
        assert report["pgd_acc_diff"][pair] == pytest.approx(
            {"mean": row.mean, "lo": row.ci_low, "hi": row.ci_high, "claim": row.claim.claim})
    assert report["pgd_acc_diff"]["reg_baseline"]["mean"] == pytest.approx(np.mean(_pgd_accuracy_diffs(metrics)))
    # the seeds at which every PGD accuracy comparison detects report.min_effect with 80% power
    plans = [rows[(pair, "pgd", "accuracy")].claim for pair in pairs]
    needed = [seeds_needed(c.min_effect, c.spread, c.level, c.power, c.max_seeds, c.min_seeds) for c in plans]
    assert None not in needed and report["seeds_needed"] == max(needed) >= 2
    for variant in variants:
        pgd_1 = np.mean([metrics.get(ModelKey(variant, s), "pgd", EPS[1]).accuracy for s in SEEDS])
        assert report["acc_pgd"][variant] == pytest.approx(pgd_1)  # reference eps 1/255
        clean = np.mean([metrics.get(ModelKey(variant, s), "clean", 0.0).accuracy for s in SEEDS])
        assert report["acc_clean"][variant] == pytest.approx(clean)
        evasion = np.mean([metrics.get(ModelKey(variant, s), "pgd", EPS[1]).evasion_rate for s in SEEDS])
        assert report["evasion_pgd"][variant] == pytest.approx(evasion)
    checks = MaskingChecks.load(SweepOutputs.at(root).masking)
    warnings = [(m.model, r.check) for m in checks.models for r in m.rows if r.status == "WARN"]
    assert warnings and report["masking_warn"] == len(warnings)
    # no strings or booleans (DVC would show them as metrics), no `reg.` prefix clashing with params
    assert all(isinstance(v, int | float) and not isinstance(v, bool) for v in _leaves(report))
    assert not any(name.startswith("reg") for name in report)


def _leaves(node):
    return [v for child in node.values() for v in _leaves(child)] if isinstance(node, dict) else [node]


def _sweep(scores: dict[str, tuple[float, float]], seeds=SEEDS, spread: float = 0.01) -> SweepMetrics:
    """PGD accuracy/AUC per variant as (clean, attacked), plus a small per-seed spread."""
    entries = []
    for variant, (clean, attacked) in scores.items():
        for s in seeds:
            key, jitter = ModelKey(variant, s), spread * (s - np.mean(seeds))
            entries.append(SweepEntry(key, "clean", 0.0, clean + jitter, clean, clean + jitter, 0.0, 60))
            entries.append(SweepEntry(key, "pgd", 1 / 255, attacked + jitter, attacked, attacked + 0.1 + jitter,
                                      0.5, 60))
    return SweepMetrics(entries, 0.95, True)


def _rows_of(sweep: SweepMetrics, se: float = 0.01) -> list:
    """The verdict's reg - baseline rows of `sweep` for every criterion, each seed with test SE `se`."""
    rows = []
    for attack, metric in (("pgd", "accuracy"), ("pgd", "auc"), ("clean", "accuracy"), ("clean", "auc")):
        at = 0.0 if attack == "clean" else 1 / 255
        d = [getattr(sweep.get(ModelKey("reg", s), attack, at), metric)
             - getattr(sweep.get(ModelKey("baseline", s), attack, at), metric) for s in SEEDS]
        rows.append(seed_difference(EVIDENCE, attack, metric, SEEDS, d, [se] * len(SEEDS), 0.95))
    return rows


def test_champion_follows_the_criterion():
    config = EvalConfig()
    sweep = _sweep({"baseline": (0.95, 0.2), "reg": (0.90, 0.4)})
    rows = _rows_of(sweep)
    by_pgd = choose_champion(sweep, "pgd_accuracy", config, None, rows)
    assert (by_pgd.champion.variant, by_pgd.challenger.variant) == ("reg", "baseline")
    assert by_pgd.champion == ModelKey("reg", 1)  # the seed at its variant's mean
    by_clean = choose_champion(sweep, "clean_accuracy", config, "reg", rows)
    assert (by_clean.champion.variant, by_clean.challenger.variant) == ("baseline", "reg")
    assert by_clean.move_champion
    assert choose_champion(sweep, "pgd_auc", config, None, rows).champion.variant == "reg"
    # equal attacked accuracy: no claim, so the alias stays (the baseline when none yet)
    tied = _sweep({"baseline": (0.8, 0.3), "reg": (0.85, 0.3)})
    assert choose_champion(tied, "pgd_accuracy", config, None, _rows_of(tied)).champion.variant == "baseline"
    kept = choose_champion(tied, "pgd_accuracy", config, "reg", _rows_of(tied))
    assert kept.champion.variant == "reg" and not kept.move_champion
    fgsm_only = SweepMetrics([SweepEntry(e.model, "fgsm" if e.attack == "pgd" else e.attack, e.eps, e.accuracy,
                                         e.f1, e.auc, e.asr, e.n) for e in sweep.entries], 0.95, True)
    with pytest.raises(ValueError, match="report.select_by"):
        choose_champion(fgsm_only, "pgd_accuracy", config)


def test_the_report_holds_no_machine_facts(tmp_path):
    """Speeds and the `-dirty` flag vary between reruns of the same commit; the report is a
    DVC out and must be the same bytes on a rerun (dvc.lock unchanged)."""
    import inspect

    from robust_deepfake.pipeline import report

    source = inspect.getsource(report)
    assert "read_run_record" not in source  # run facts (timing) stay out of the document
    assert 'removesuffix("-dirty")' in source


def test_the_verdict_states_the_quality_floor_and_each_model_is_judged(rendered):
    root, summary, metrics = rendered
    markdown = (root / "reports" / "report.md").read_text()
    decision = summary["decision"]
    assert "**Quality floor**: clean test ROC-AUC ≥ 0.75 (`report.min_clean_auc`)" in markdown
    assert set(decision.floor.clean_auc) == set(metrics.models)
    for key in metrics.models:
        assert decision.floor.clean_auc[key] == pytest.approx(metrics.get(key, "clean", 0.0).auc)
    verdict = json.loads((root / "eval" / "verdict.json").read_text())["decision"]
    assert verdict["floor"]["min_clean_auc"] == 0.75 and len(verdict["floor"]["models"]) == len(metrics.models)
    assert "BIM and PGD gave identical numbers" not in markdown  # the synthetic sweep has no BIM


def test_identical_bim_and_pgd_rows_are_pointed_out():
    from robust_deepfake.report.blocks import to_markdown
    from robust_deepfake.report.document import robustness_section

    def text(metrics: SweepMetrics) -> str:
        return to_markdown(robustness_section(metrics, []), Path("."))

    entries = []
    for key in model_keys(SEEDS):
        entries.append(SweepEntry(key, "clean", 0.0, 0.9, 0.9, 0.95, 0.0, 10))
        for attack in ("bim", "pgd"):
            entries.append(SweepEntry(key, attack, 1 / 255, 0.3, 0.3, 0.2, 0.6, 10))
    same = SweepMetrics(entries, 0.95, True)
    assert "BIM and PGD gave identical numbers" in text(same)
    entries[-1] = SweepEntry(entries[-1].model, "pgd", 1 / 255, 0.25, 0.25, 0.2, 0.6, 10)
    assert "BIM and PGD gave identical numbers" not in text(SweepMetrics(entries, 0.95, True))


def test_aliases_move_only_after_every_out_is_written(tmp_path):
    """A report stage killed before its end must not have moved @champion: the tracker's
    publish_report (the alias moves) is the last thing build_report does, and it sees
    every out in place."""
    params = validate({"train": {"seeds": SEEDS}, "eval": {"n_bootstrap": 20},
                       "attack": {"attacks": ATTACKS, "eps": ["1/255", "2/255"]}})
    _synthetic_outputs(tmp_path, params)
    seen = {}

    class Recording(NullTracker):
        def publish_report(self, decision, outputs, cards):
            seen["outs"] = {name: getattr(outputs, name).exists() for name in
                            ("markdown", "html", "figures", "plots", "training", "metrics", "verdict")}
            seen["cards"] = sorted(k.name for k in cards)
            return {}

    build_report(params, tmp_path, Recording())
    assert seen["outs"] and all(seen["outs"].values()), seen
    assert seen["cards"] == sorted(k.name for k in model_keys(SEEDS))


def test_report_markdown_renders_every_table_and_image(rendered):
    root, _, _ = rendered
    markdown = (root / "reports" / "report.md").read_text()
    assert markdown.count("\n|") > 40  # the check below has tables to look at
    assert markdown_problems(markdown, root / "reports") == []
    html = (root / "reports" / "report.html").read_text()
    assert html.count("<table>") == html.count("</table>") == markdown.count("\n|---")


def test_the_markdown_check_catches_broken_tables(tmp_path):
    """A header with a raw pipe, a row with one cell too many, a missing image."""
    (tmp_path / "there.png").write_bytes(b"png")
    good = "| a | b |\n|---|---|\n| 1 | x \\| y |\n\n![ok](there.png)\n"
    assert markdown_problems(good, tmp_path) == []
    assert markdown_problems("| a |L| b |\n|---|---|\n| 1 | 2 |\n", tmp_path)
    assert markdown_problems("| a | b |\n|---|---|\n| 1 | 2 | 3 |\n", tmp_path)
    assert markdown_problems("text\n| a | b |\nmore\n", tmp_path)
    assert markdown_problems("![gone](missing.png)\n", tmp_path) == ["missing image: missing.png"]


def test_the_report_run_logs_the_headline_answers(rendered):
    """MLflow's report run carries report.json's numbers and each comparison's reading."""
    from robust_deepfake.tracking.registry import answer_tags, headline_metrics

    root, summary, _ = rendered
    logged = headline_metrics(ReportOutputs.at(root).metrics)
    row = next(d for d in summary["differences"] if (d.pair.key, d.attack, d.metric) == ("reg_baseline", "pgd", "accuracy"))
    assert logged["pgd_acc_diff/reg_baseline/mean"] == pytest.approx(row.mean)
    assert logged["pgd_acc_diff/reg_baseline/lo"] == pytest.approx(row.ci_low)
    assert logged["pgd_acc_diff/reg_baseline/claim"] == row.claim.claim
    assert len(logged) == len(_numeric_leaves(json.loads(ReportOutputs.at(root).metrics.read_text())))
    tags = answer_tags(ReportOutputs.at(root).metrics, ReportOutputs.at(root).verdict)
    assert set(tags) == {f"answer.{d.pair.key}" for d in summary["differences"]}
    assert tags["answer.reg_baseline"] == f"pgd accuracy: {row.reading()}"


def test_the_headline_names_the_machine_it_was_produced_on(rendered):
    """metrics/machine.json, committed beside metrics/report.json: the CPU, accelerator,
    torch version and thread count, as the report's provenance states them."""
    import torch

    from robust_deepfake.tracking.provenance import cpu_model

    root, _, _ = rendered
    machine = json.loads(ReportOutputs.at(root).machine.read_text())
    assert machine["cpu"] == cpu_model() and machine["torch"] == torch.__version__
    assert isinstance(machine["torch_threads"], int) and machine["torch_threads"] >= 1
    assert machine["accelerator"] == (torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")
    assert "reading" in machine["note"]
    markdown = (root / "reports" / "report.md").read_text()
    assert f"| CPU | `{machine['cpu']}` |" in markdown and f"| `{machine['torch_threads']}` |" in markdown


def test_contents_first_then_the_verdict_and_the_cam_grids_in_the_appendix(rendered):
    """The contents link every section; the verdict and its forest plot come before the
    data, the CAM grids after the provenance, under their appendix heading."""
    import re

    root, _, _ = rendered
    markdown = (root / "reports" / "report.md").read_text()
    links = re.findall(r"^- \[[^\]]+\]\(#([^)]+)\)$", markdown, flags=re.M)
    assert links[:2] == ["verdict", "data"] and "appendix-grad-cam-grids" in links
    headings = re.findall(r"^## (.+)$", markdown, flags=re.M)
    assert len(links) == len(headings)
    position = markdown.index
    assert position("**Contents**") < position("## Verdict") < position("(figures/forest.png)") < position("## Data")
    grids = [position(f"(cam/cam_{v}_{a}.png)") for v in ("baseline", "reg") for a in ATTACKS]
    assert min(grids) > position("## Appendix: Grad-CAM grids") > position("## Provenance")
    html = (root / "reports" / "report.html").read_text()
    assert all(f'id="{anchor}"' in html for anchor in links)


# Runs after load in a real browser: what a reader would see broken, written into the DOM
# that --dump-dom prints.
REPORT_PROBE = """<script>window.addEventListener('load', () => {
  const out = document.createElement('pre'); out.id = 'probe';
  out.textContent = JSON.stringify({
    images: [...document.images].map(i => i.complete ? i.naturalWidth : -1),
    tables: document.querySelectorAll('table').length,
    rawPipes: [...document.querySelectorAll('p')].filter(p => p.textContent.trim().startsWith('|')).length,
    deadLinks: [...document.querySelectorAll('nav.contents a')].filter(
      a => !document.getElementById(decodeURIComponent(a.hash.slice(1)))).length,
    links: document.querySelectorAll('nav.contents a').length});
  document.body.appendChild(out);
});</script>"""


def test_report_html_in_a_browser_shows_every_table_image_and_contents_link(rendered, chromium, tmp_path):
    """Headless Chromium, the page moved away from its figures: every image loads, every
    Markdown table is an HTML table, no paragraph is a raw `| … |` row, every contents link
    lands on a heading."""
    import re

    root, _, _ = rendered
    page = tmp_path / "moved.html"
    page.write_text((root / "reports" / "report.html").read_text().replace("</body>", REPORT_PROBE + "</body>"))
    dom = chromium(page, tmp_path / "profile", 10000)
    probe = re.search(r'<pre id="probe">([^<]*)</pre>', dom)
    assert probe, "the probe script did not run"
    seen = json.loads(probe.group(1))
    markdown = (root / "reports" / "report.md").read_text()
    assert seen["images"] and all(width > 0 for width in seen["images"]), seen["images"]
    assert seen["tables"] == markdown.count("\n|---") and seen["rawPipes"] == 0
    assert seen["links"] >= 8 and seen["deadLinks"] == 0
