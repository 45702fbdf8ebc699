"""The report renders from small synthetic stage outputs (no training) with every section,
figure and verdict row, and the champion choice follows report.select_by."""

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from robust_deepfake.config import validate
from robust_deepfake.evaluation import CSV_COLUMNS, SweepPredictions, eps_label, summarize
from robust_deepfake.io import write_csv, write_json
from robust_deepfake.report_job import build_report
from robust_deepfake.verdict import choose_champion

EPS = [0.0, 1 / 255, 2 / 255]
ATTACKS = ["fgsm", "pgd"]
SOURCES = ["real_a", "fake_x", "fake_y"]


def _synthetic_outputs(root, params):
    rng = np.random.default_rng(0)
    n = 60
    labels = np.array([0] * 20 + [1] * 40)
    sources = np.array(["real_a"] * 20 + ["fake_x"] * 20 + ["fake_y"] * 20)
    p = np.zeros((2, len(ATTACKS), len(EPS), n))
    for m in range(2):
        for e, eps in enumerate(EPS):
            strength = 0.35 - eps * 255 * (0.12 - 0.04 * m)  # reg (m=1) degrades more slowly
            p[m, :, e] = np.clip(0.5 + (labels - 0.5) * 2 * strength + rng.normal(0, 0.2, n), 0, 1)
    predictions = SweepPredictions(["baseline", "reg"], ATTACKS, EPS, np.arange(n), labels, sources, p)
    (root / "eval").mkdir(parents=True)
    predictions.save(root / "eval" / "attack_predictions.npz")
    compact, rows = summarize(predictions, params.eval, holdout=["fake_y"])
    write_json(root / "metrics" / "attack_sweep.json", compact)
    write_csv(root / "plots" / "attack_sweep.csv", CSV_COLUMNS, rows)

    split = {name: {"total": t, "real": t // 2, "fake": t - t // 2, "groups": t, "by_source": {s: t // 3 for s in SOURCES}}
             for name, t in (("train", 90), ("val", 30), ("test", 60))}
    write_json(root / "metrics" / "split.json", {**split, "holdout_methods": ["fake_y"], "skipped_bad_files": 0})
    for variant in ("baseline", "reg"):
        write_json(root / "metrics" / f"train_{variant}.json", {
            "best_epoch": 1, "val_accuracy": 0.8, "val_f1": 0.79, "val_auc": 0.9, "val_loss": 0.4,
            "train_loss": 0.3, "epochs_run": 2})
        history = [{"epoch": e, "train_loss": 0.6 - 0.2 * e, "val_loss": 0.7 - 0.2 * e, "val_auc": 0.7 + 0.1 * e,
                    "val_accuracy": 0.6 + 0.1 * e} for e in range(2)]
        write_csv(root / "plots" / f"train_{variant}.csv", list(history[0]), history)

    cam, iinc_rows, values = {}, [], {"indices": np.arange(8), "has_mask": np.ones(8, bool)}
    for m, variant in enumerate(("baseline", "reg")):
        stat = lambda v: {"mean": v, "ci": [v - 0.05, v + 0.05], "n": 8}  # noqa: E731
        cam[variant] = {"clean": {"localization": stat(0.4)}}
        values[f"localization|{variant}|none|0"] = np.full(8, 0.4)
        iinc_rows.append({"model": variant, "attack": "none", "eps": 0.0, "eps_label": "0", "measure": "localization",
                          "value": 0.4, "ci_low": 0.35, "ci_high": 0.45, "n": 8})
        for attack in ATTACKS:
            cam[variant][attack] = {}
            for eps in EPS[1:]:
                stability = 0.2 + eps * 255 * 0.05 - 0.03 * m
                cam[variant][attack][eps_label(eps)] = {"stability": stat(stability), "localization": stat(0.42)}
                values[f"stability|{variant}|{attack}|{eps_label(eps)}"] = np.full(8, stability) + rng.normal(0, 0.01, 8)
                values[f"localization|{variant}|{attack}|{eps_label(eps)}"] = np.full(8, 0.42)
                for measure, v in (("stability", stability), ("localization", 0.42)):
                    iinc_rows.append({"model": variant, "attack": attack, "eps": eps, "eps_label": eps_label(eps),
                                      "measure": measure, "value": v, "ci_low": v - 0.05, "ci_high": v + 0.05, "n": 8})
    write_json(root / "metrics" / "cam_iinc.json", cam)
    write_csv(root / "plots" / "iinc.csv", list(iinc_rows[0]), iinc_rows)
    np.savez(root / "eval" / "cam_iinc_values.npz", **values)
    (root / "reports" / "cam").mkdir(parents=True)
    for variant in ("baseline", "reg"):
        for attack in ATTACKS:
            Image.new("RGB", (20, 20), (200, 0, 0)).save(root / "reports" / "cam" / f"cam_{variant}_{attack}.png")
    return compact


@pytest.fixture
def rendered(tmp_path):
    params = validate({"eval": {"n_bootstrap": 50}, "attack": {"attacks": ATTACKS, "eps": ["1/255", "2/255"]},
                       "report": {"reference_eps": "1/255"}})
    compact = _synthetic_outputs(tmp_path, params)
    summary = build_report(params, tmp_path, track=False)
    return tmp_path, summary, compact


def test_every_section_and_figure_exists(rendered):
    root, summary, _ = rendered
    markdown = (root / "reports" / "report.md").read_text()
    for section in ["## Verdict", "## Data", "## Training", "## Robustness", "### FGSM", "### PGD",
                    "## Explanations: Grad-CAM and IINC", "## Per-source generalization",
                    "## ROC curves and confusion matrices", "## How to read this report"]:
        assert section in markdown, section
    figures = ["robustness_accuracy.png", "robustness_f1.png", "robustness_auc.png", "iinc.png",
               "training_curves.png", "per_source.png", "roc.png", "confusion.png"]
    for name in figures:
        path = root / "reports" / "figures" / name
        assert path.exists() and Image.open(path).size[0] > 300, name
        assert f"(figures/{name})" in markdown
    for variant in ("baseline", "reg"):
        for attack in ATTACKS:
            assert f"(cam/cam_{variant}_{attack}.png)" in markdown
    assert "fake_y*" not in markdown  # held-out marking lives in the table column and figure
    assert "| fake_y | yes |" in markdown


def test_html_is_self_contained(rendered):
    root, _, _ = rendered
    html = (root / "reports" / "report.html").read_text()
    assert "<table>" in html
    sources = [part.split('"')[0] for part in html.split('<img alt="')[1:]]
    assert len(sources) == 8 + 4
    assert html.count('src="data:image/png;base64,') == 12
    assert 'src="figures/' not in html and 'src="cam/' not in html


def test_verdict_rows_and_numbers_come_from_the_predictions(rendered):
    root, summary, compact = rendered
    verdict = summary["verdict"]
    for attack in ["clean", *ATTACKS]:
        for metric in ("accuracy", "f1", "auc"):
            assert f"{attack}_{metric}" in verdict
    pgd = verdict["pgd_accuracy"]
    expected = np.mean([compact["reg"]["pgd"][e]["accuracy"] - compact["baseline"]["pgd"][e]["accuracy"]
                        for e in ("1/255", "2/255")])
    assert pgd["diff"] == pytest.approx(expected)
    assert pgd["ci"][0] <= pgd["diff"] <= pgd["ci"][1]
    assert verdict["pgd_iinc_stability"]["diff"] == pytest.approx(-0.03, abs=0.01)
    assert verdict["pgd_iinc_stability"]["favours"] == "reg"  # lower IINC is better
    report = json.loads((root / "metrics" / "report.json").read_text())
    assert report["champion"] == summary["champion"]
    robustness = pd.read_csv(root / "plots" / "robustness" / "pgd.csv")
    assert list(robustness.columns[:1]) == ["eps_255"] and "reg_accuracy" in robustness.columns


def test_champion_follows_the_criterion():
    sweep = {
        "baseline": {"pgd": {"0": {"accuracy": 0.95, "auc": 0.99}, "1/255": {"accuracy": 0.2, "auc": 0.3}}},
        "reg": {"pgd": {"0": {"accuracy": 0.90, "auc": 0.97}, "1/255": {"accuracy": 0.4, "auc": 0.5}}},
    }
    assert choose_champion(sweep, "pgd_accuracy")[:2] == ("reg", "baseline")
    assert choose_champion(sweep, "clean_accuracy")[:2] == ("baseline", "reg")
    tied = {m: {"pgd": {"0": {"accuracy": a, "auc": 0.9}, "1/255": {"accuracy": 0.3, "auc": 0.4}}}
            for m, a in (("baseline", 0.8), ("reg", 0.85))}
    assert choose_champion(tied, "pgd_accuracy")[0] == "reg"  # clean accuracy breaks the tie
    with pytest.raises(ValueError, match="report.select_by"):
        choose_champion({m: {"fgsm": v["pgd"]} for m, v in sweep.items()}, "pgd_accuracy")
