"""The study report (the study/ aggregation and report modules) on synthetic cell records.

Records are built with planted effects so every number can be checked against numpy and
scipy: a clear gain of the gradient mode at every strength, a null effect with noise that
crosses 0 for the random mode, a placebo variant in every cell, a held-out group, and the
edge cases a real study meets (one seed, NaN IINC, no or only held-out cells, one line, no
lines key, models under the quality floor, cells from before the placebo variant).
"""

from __future__ import annotations

import base64
import io
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import stats

from markdown_check import markdown_problems
from robust_deepfake.study.report import aggregate as agg
from robust_deepfake.study.report import comparisons as cmp
from robust_deepfake.study.report import points as pts
from robust_deepfake.study.report.comparisons import StudyRules
from robust_deepfake.study.report import build_study_report
from robust_deepfake.study.spec import StudySpec
from robust_deepfake.verdict.claims import MIN_SEEDS, PLAIN_MIN_SEEDS, assess

SEEDS = [0, 1, 2]
EPS = [0.0, 0.25, 0.5]
MODES = ["random", "gradient"]
HELD = "stylegan_like"
CI = 0.9  # eval.ci of the base params: the level of every interval over seeds
# Per-seed noise of reg's acc_pgd around its planted effect; the random mode's crosses 0.
NOISE = {"gradient": [0.01, -0.01, 0.005], "random": [0.02, -0.03, 0.01]}
PLACEBO_NOISE = [0.004, -0.002, 0.001]
GAIN = 0.10  # gradient mode, eps > 0: reg - baseline in acc_pgd
TEST_SE = 0.005  # every cell's test-sampling SE of every within-cell difference
RULES = StudyRules(CI, 0.02, 0.75)
PAIRS = ("reg_placebo", "placebo_baseline", "reg_baseline")


def baseline_metrics(seed: int) -> dict[str, float]:
    return {"acc_clean": 0.80 + 0.01 * seed, "auc_clean": 0.90, "f1_clean": 0.79, "acc_fgsm": 0.30 + 0.02 * seed,
            "auc_fgsm": 0.20, "acc_pgd": 0.10 + 0.01 * seed, "auc_pgd": 0.05 + 0.01 * seed,
            "iinc_stab": 0.38 + 0.01 * seed}


def placebo_metrics(seed: int) -> dict[str, float]:
    base = baseline_metrics(seed)
    return {**base, "acc_pgd": base["acc_pgd"] + PLACEBO_NOISE[seed], "auc_pgd": base["auc_pgd"] + PLACEBO_NOISE[seed] / 2}


def reg_metrics(seed: int, eps: float, mode: str) -> dict[str, float]:
    base = baseline_metrics(seed)
    if eps == 0:
        return placebo_metrics(seed)  # reg with epsilon 0 is the placebo
    if mode == "gradient":
        shift, iinc = GAIN + NOISE[mode][seed], -0.08 + 0.005 * seed
    else:
        shift, iinc = NOISE[mode][seed], 0.0
    return {**base, "acc_pgd": base["acc_pgd"] + shift, "auc_pgd": base["auc_pgd"] + shift / 2,
            "iinc_stab": base["iinc_stab"] + iinc}


def heldout_metrics(seed: int, variant: str, eps: float, mode: str) -> dict[str, float]:
    gain = 0.05 + 0.01 * seed if variant == "reg" and eps > 0 and mode == "gradient" else 0.0
    return {"auc_clean": 0.70 + 0.02 * seed + gain, "acc_clean": 0.6, "auc_pgd": 0.1, "acc_pgd": 0.1,
            "auc_fgsm": 0.2, "acc_fgsm": 0.2}


def record(seed: int, eps: float, mode: str | None, holdout: list[str], study: str = "demo-dose",
           **extra: object) -> dict:
    setting = {"reg.epsilon": eps, **({"reg.mode": mode} if mode else {}), "split.holdout_methods": holdout}
    label = " ".join(f"{k}={v}" for k, v in setting.items()) + f" seed={seed}"
    mode = mode or "gradient"
    return {
        "study": study, "cell": f"{study}-eps{eps}-{mode}-{'+'.join(holdout) or 'none'}-s{seed}", "label": label,
        "seed": seed, "setting": setting, "cell_hash": f"{seed:016d}", "reused": seed == 2 and eps == 0.5,
        "worker": f"worker-{seed % 2}", "host": f"host-{seed % 2}", "cuda_visible_devices": str(seed % 2),
        "device": "cpu", "device_seconds": 10.0 + seed, "ref_eps_255": 1, "attacks": ["fgsm", "pgd"],
        "variants": {"baseline": baseline_metrics(seed), "placebo": placebo_metrics(seed),
                     "reg": reg_metrics(seed, eps, mode)},
        "heldout": {h: {v: heldout_metrics(seed, v, eps, mode) for v in ("baseline", "reg")} for h in holdout},
        "test_se": {pair: dict.fromkeys(baseline_metrics(seed), TEST_SE) for pair in PAIRS},
        "heldout_test_se": {h: {"reg_baseline": dict.fromkeys(heldout_metrics(seed, "reg", eps, mode), TEST_SE)}
                            for h in holdout},
        **extra,
    }


def make_records(seeds=SEEDS, eps=EPS, modes=MODES, holdouts=([], [HELD])) -> list[dict]:
    return [record(s, e, m, list(h)) for h in holdouts for m in modes for e in eps for s in seeds]


def without_placebo(records: list[dict]) -> list[dict]:
    """Cells from before the placebo variant: baseline and reg only, no test SEs."""
    return [{**r, "variants": {v: m for v, m in r["variants"].items() if v != "placebo"}, "test_se": {},
             "heldout_test_se": {}} for r in records]


def compared(spec, records, pair: str = "reg_baseline", metric: str | None = None):
    return cmp.comparisons(spec, records, RULES, metric).get(pair, [])


def make_spec(**update: object) -> StudySpec:
    raw = {"name": "demo-dose", "seeds": SEEDS,
           "grid": {"reg.epsilon": EPS, "reg.mode": MODES, "split.holdout_methods": [[], [HELD]]},
           "lines": "reg.mode", "metric": "acc_pgd"}
    return StudySpec.model_validate({**raw, **update})


def scipy_interval(values: list[float], level: float = CI) -> tuple[float, float]:
    values = np.asarray(values)
    return stats.t.interval(level, len(values) - 1, loc=values.mean(), scale=stats.sem(values))


def find(comparisons, **where):
    found = [c for c in comparisons if all(getattr(c, k) == v for k, v in where.items())]
    assert len(found) == 1, (where, found)
    return found[0]


NO_HOLDOUT = "split.holdout_methods=none"
WITH_HOLDOUT = f"split.holdout_methods={HELD}"


# --- aggregate ----------------------------------------------------------------------------


def test_grid_points_group_by_other_keys_and_primary_is_no_holdout() -> None:
    points = pts.grid_points(make_spec(), make_records())
    assert len(points) == 12 and all(sorted(p.cells) == SEEDS for p in points)
    assert [g for g in pts.groups_of(points)] == [(("split.holdout_methods", ()),),
                                                  (("split.holdout_methods", (HELD,)),)]
    assert pts.primary_groups(points) == [(("split.holdout_methods", ()),)]
    assert [p.dose for p in points[:3]] == EPS and points[0].line == "random"


def test_duplicate_seed_at_one_point_is_refused() -> None:
    records = make_records(holdouts=([],))
    with pytest.raises(ValueError, match="two cell records for seed 0"):
        pts.grid_points(make_spec(), [*records, records[0]])


def test_int_and_float_settings_are_one_point() -> None:
    records = make_records(holdouts=([],))
    records[0]["setting"]["reg.epsilon"] = 0  # the JSON of another writer
    assert len(pts.grid_points(make_spec(), records)) == 6


def test_the_three_questions_come_in_order_inside_the_cells() -> None:
    found = cmp.comparisons(make_spec(), make_records(), RULES)
    assert list(found) == list(PAIRS)
    assert len(found["reg_placebo"]) == 8  # 2 groups x 2 modes x 2 strengths (not at epsilon 0)
    assert len(found["placebo_baseline"]) == 4  # once per group and mode: it does not depend on epsilon
    assert len(found["reg_baseline"]) == 12
    assert not any(c.across_cells for c in found["reg_placebo"])


def test_reg_vs_baseline_interval_is_assess_over_the_seeds() -> None:
    c = find(compared(make_spec(), make_records()), group=NO_HOLDOUT, line="gradient", dose=0.5)
    diffs = [reg_metrics(s, 0.5, "gradient")["acc_pgd"] - baseline_metrics(s)["acc_pgd"] for s in SEEDS]
    low, high = scipy_interval(diffs)  # the spread is above the test SE: the floor does not bind
    assert c.seeds == SEEDS and c.per_seed == pytest.approx(diffs)
    assert (c.mean, c.ci_low, c.ci_high) == pytest.approx((np.mean(diffs), low, high))
    same = assess(diffs, [TEST_SE] * 3, CI, 0.02)
    assert c.claim.seeds_for_min_effect == same.seeds_for_min_effect and c.claim.has_test_se
    assert c.favours == "reg" and c.reading() == "favours reg"


def test_the_floor_widens_seeds_that_agree() -> None:
    records = make_records(holdouts=([],))
    for r in records:
        r["test_se"]["reg_baseline"]["acc_pgd"] = 0.08  # few test images: each d_s is noisy
    c = find(compared(make_spec(), records), line="gradient", dose=0.5)
    assert c.claim.floored and c.ci_low < 0 < c.ci_high and not c.claimed


def test_null_effect_crossing_zero_is_no_detectable_difference() -> None:
    found = compared(make_spec(), make_records())
    c = find(found, group=NO_HOLDOUT, line="random", dose=0.25)
    assert c.ci_low < 0 < c.ci_high and c.favours == "neither"
    assert c.reading() == "no detectable difference"
    assert find(found, group=NO_HOLDOUT, line="random", dose=0.0).placebo


def test_reg_vs_placebo_pairs_same_seed_and_setting() -> None:
    comparisons = compared(make_spec(), make_records(), "reg_placebo")
    c = find(comparisons, group=NO_HOLDOUT, line="gradient", dose=0.25)
    diffs = [reg_metrics(s, 0.25, "gradient")["acc_pgd"] - placebo_metrics(s)["acc_pgd"] for s in SEEDS]
    assert c.per_seed == pytest.approx(diffs) and c.sides == ("reg", "placebo")
    assert (c.ci_low, c.ci_high) == pytest.approx(scipy_interval(diffs))
    assert c.favours == "reg"
    null = find(comparisons, group=NO_HOLDOUT, line="random", dose=0.5)
    assert null.favours == "neither" and null.reading() == "no detectable difference"
    second = find(compared(make_spec(), make_records(), "placebo_baseline"), group=NO_HOLDOUT, line="gradient")
    assert second.per_seed == pytest.approx(PLACEBO_NOISE) and not second.claimed


def test_cells_without_a_placebo_compare_across_cells_without_a_floor() -> None:
    found = cmp.comparisons(make_spec(), without_placebo(make_records()), RULES)
    assert list(found) == ["reg_placebo", "reg_baseline"]
    c = find(found["reg_placebo"], group=NO_HOLDOUT, line="gradient", dose=0.25)
    assert c.across_cells and c.per_seed == pytest.approx(
        [reg_metrics(s, 0.25, "gradient")["acc_pgd"] - reg_metrics(s, 0.0, "gradient")["acc_pgd"] for s in SEEDS])
    # no test SE: the plain interval's minimum applies, and 3 seeds are below it
    assert c.ci_low > 0 and not c.claimed and c.reading() == f"no claim below {PLAIN_MIN_SEEDS} seeds (no test SE)"


def test_no_claim_on_models_under_the_quality_floor() -> None:
    records = make_records(holdouts=([],))
    weak = next(r for r in records if r["seed"] == 1 and r["setting"]["reg.epsilon"] == 0.5
                and r["setting"]["reg.mode"] == "gradient")
    weak["variants"]["reg"]["auc_clean"] = 0.612
    found = compared(make_spec(), records)
    c = find(found, line="gradient", dose=0.5)
    assert c.claim.claim == 1 and not c.claimed and c.favours == "neither"  # the interval alone would claim
    assert [str(m) for m in c.under_floor] == [f"{weak['label']}: reg clean AUC 0.612"]
    assert c.reading() == "no claim: under the quality floor"
    assert find(found, line="gradient", dose=0.25).claimed  # the other points keep their claims
    assert not cmp.comparisons(make_spec(), records, StudyRules(CI, 0.02, 0.0))["reg_baseline"][0].under_floor


def test_iinc_lower_is_better() -> None:
    spec = make_spec(metric="iinc_stab")
    c = find(compared(spec, make_records(), metric="iinc_stab"), group=NO_HOLDOUT, line="gradient", dose=0.5)
    assert c.mean < 0 and c.ci_high < 0
    assert c.favours == "reg" and c.reading() == "favours reg" and c.as_dict()["lower_is_better"]


def test_dose_response_means_and_pooled_baseline() -> None:
    rows = agg.dose_response(make_spec(), make_records(), level=CI)
    reg = [r for r in rows if r["group"] == NO_HOLDOUT and r["variant"] == "reg" and r["metric"] == "acc_pgd"
           and r["line"] == "gradient" and r["dose"] == 0.25]
    values = [reg_metrics(s, 0.25, "gradient")["acc_pgd"] for s in SEEDS]
    assert len(reg) == 1 and reg[0]["n"] == 3 and reg[0]["mean"] == pytest.approx(np.mean(values))
    assert (reg[0]["ci_low"], reg[0]["ci_high"]) == pytest.approx(scipy_interval(values))
    base = [r for r in rows if r["group"] == NO_HOLDOUT and r["variant"] == "baseline" and r["metric"] == "acc_pgd"
            and r["dose"] == 0.25]
    assert len(base) == 1 and base[0]["line"] is None
    assert base[0]["mean"] == pytest.approx(np.mean([baseline_metrics(s)["acc_pgd"] for s in SEEDS]))
    metrics = {r["metric"] for r in rows}
    assert metrics == {"acc_clean", "auc_clean", "acc_fgsm", "auc_fgsm", "acc_pgd", "auc_pgd", "iinc_stab"}


def test_generalization_and_heldout_difference() -> None:
    spec, records = make_spec(), make_records()
    rows = agg.generalization(spec, records, level=CI)
    assert {r["subset"] for r in rows} == {HELD} and {r["group"] for r in rows} == {WITH_HOLDOUT}
    reg = [r for r in rows if r["variant"] == "reg" and r["metric"] == "auc_clean" and r["line"] == "gradient"
           and r["dose"] == 0.5]
    values = [heldout_metrics(s, "reg", 0.5, "gradient")["auc_clean"] for s in SEEDS]
    assert reg[0]["mean"] == pytest.approx(np.mean(values))
    diffs = cmp.heldout_differences(spec, records, RULES)
    c = find(diffs, metric="auc_clean", line="gradient", dose=0.5)
    assert c.subset == HELD and c.per_seed == pytest.approx([0.05, 0.06, 0.07]) and c.favours == "reg"
    assert {d.metric for d in diffs} == {"auc_clean", "auc_fgsm", "auc_pgd"}


def test_cost_totals_split_computed_and_reused() -> None:
    records = make_records()
    totals = agg.cost_totals(records)
    reused = [r for r in records if r["reused"]]
    assert totals["cells"] == 36 and totals["reused_cells"] == len(reused) == 4
    assert totals["reused_device_seconds"] == pytest.approx(sum(r["device_seconds"] for r in reused))
    assert totals["computed_device_seconds"] == pytest.approx(
        sum(r["device_seconds"] for r in records if not r["reused"]))
    workers = agg.workers_table(records)
    assert sum(w["cells"] for w in workers) == 36 and {w["host"] for w in workers} == {"host-0", "host-1"}


# --- the report ---------------------------------------------------------------------------


def md_figures(out: Path) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", (out / "study.md").read_text(encoding="utf-8"))


def html_images(out: Path) -> list[bytes]:
    page = (out / "study.html").read_text(encoding="utf-8")
    assert len(re.findall(r"<img\b", page)) == len(re.findall(r'<img [^>]*src="data:image/png;base64,', page))
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]


def check_report(out: Path, written: dict[str, Path]) -> dict:
    """Every figure the md links exists, every table renders, the html embeds exactly those
    figures as valid PNGs, and study.json is strict JSON (no NaN)."""
    figures = md_figures(out)
    assert figures and all((out / f).is_file() for f in figures)
    assert markdown_problems((out / "study.md").read_text(encoding="utf-8"), out) == []
    assert sorted(k for k in written if k.startswith("study_figures/")) == sorted(figures)
    images = html_images(out)
    assert len(images) == len(figures)
    for data, name in zip(images, figures, strict=True):
        assert data == (out / name).read_bytes()
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
            assert image.format == "PNG"
    return json.loads((out / "study.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))


@pytest.fixture(scope="module")
def full_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path]]:
    out = tmp_path_factory.mktemp("study")
    records = make_records()
    records[0]["worker"] = "<script>alert('x')</script>"
    return out, build_study_report(make_spec(), records, out, rules=RULES)


def test_report_files_figures_and_json(full_report: tuple[Path, dict[str, Path]]) -> None:
    out, written = full_report
    assert {"study.md", "study.html", "study.json"} <= set(written)
    summary = check_report(out, written)
    assert sorted(summary["figures"]) == ["study_figures/dose_response.png", "study_figures/generalization.png"]
    assert summary["study"] == "demo-dose" and summary["seeds"] == SEEDS and summary["cells"] == 36
    verdicts = summary["verdicts"]
    assert list(verdicts) == [*PAIRS, "heldout_reg_baseline"]
    assert len(verdicts["reg_baseline"]) == 12 and len(verdicts["reg_placebo"]) == 8
    assert summary["cost"]["totals"]["reused_cells"] == 4


def test_report_text_answers_the_questions(full_report: tuple[Path, dict[str, Path]]) -> None:
    out, _ = full_report
    md = (out / "study.md").read_text(encoding="utf-8")
    assert md.startswith("# Study demo-dose")
    questions = ["Does the perturbation matter? (reg − placebo)", "Does the second pass matter? (placebo − baseline)",
                 "Do both together matter? (reg − baseline)", "Does it help on held-out methods?"]
    positions = [md.index(q) for q in questions]
    assert positions == sorted(positions)
    assert ("Favours reg at 2 of 4 point(s), favours baseline at 0, no detectable difference at 2." in md)
    assert "reg.mode=gradient, reg.epsilon=0.5: reg − baseline in acc_pgd = +0.102" in md
    assert f"at least {MIN_SEEDS} seeds" in md and "host-1" in md
    assert "Under the quality floor" not in md  # every synthetic model passes


def test_html_escapes_interpolated_strings(full_report: tuple[Path, dict[str, Path]]) -> None:
    out, _ = full_report
    page = (out / "study.html").read_text(encoding="utf-8")
    assert "<script>" not in page and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "<script>" not in (out / "study.md").read_text(encoding="utf-8")


def test_single_seed_makes_no_claim(tmp_path: Path) -> None:
    spec = make_spec(seeds=[0])
    records = make_records(seeds=[0])
    c = find(compared(spec, records), group=NO_HOLDOUT, line="gradient", dose=0.5)
    assert math.isnan(c.ci_low) and c.favours == "neither"
    assert c.reading() == f"no claim below {MIN_SEEDS} seeds"
    summary = check_report(tmp_path, build_study_report(spec, records, tmp_path, rules=RULES))
    md = (tmp_path / "study.md").read_text(encoding="utf-8")
    assert f"no claim below {MIN_SEEDS} seeds at 4" in md
    assert summary["verdicts"]["reg_baseline"][0]["low"] is None


def test_a_study_of_weak_models_says_it_cannot_answer(tmp_path: Path) -> None:
    """Clean AUC 0.62 everywhere (as the 3-epoch demo cells measured): no answer, and the cells named."""
    records = make_records(holdouts=([],))
    for r in records:
        for values in r["variants"].values():
            values["auc_clean"] = 0.62
    spec = make_spec(grid={"reg.epsilon": EPS, "reg.mode": MODES})
    check_report(tmp_path, build_study_report(spec, records, tmp_path, rules=RULES))
    md = (tmp_path / "study.md").read_text(encoding="utf-8")
    assert md.count("Cannot answer: at every point a compared model is under the quality floor") == 3
    assert "**Under the quality floor:** clean test ROC-AUC &lt; 0.75 (`report.min_clean_auc`) in 18 cell(s)" in md
    assert f"| {records[0]['label']} | baseline 0.620, placebo 0.620, reg 0.620 |" in md
    assert "favours reg" not in md


def test_intervals_are_shown_within_the_metric_range(tmp_path: Path) -> None:
    """Two seeds far apart: the raw t-interval of a level reaches past [0, 1]; the tables
    clip it and mark it, study.json keeps it."""
    records = make_records(seeds=[0, 1], holdouts=([],))
    for r in records:
        r["variants"]["reg"]["acc_pgd"] = 0.05 if r["seed"] == 0 else 0.95
    spec = make_spec(seeds=[0, 1], grid={"reg.epsilon": EPS, "reg.mode": MODES})
    summary = check_report(tmp_path, build_study_report(spec, records, tmp_path, rules=RULES))
    md = (tmp_path / "study.md").read_text(encoding="utf-8")
    assert "0.500 [0.000, 1.000]*" in md and "clipped to the metric's range" in md
    raw = [r for r in summary["dose_response"] if r["variant"] == "reg" and r["metric"] == "acc_pgd"]
    assert raw[0]["ci_low"] < -1 and raw[0]["ci_high"] > 2
    assert "[-1.000, +1.000]*" in md  # a difference is shown within [-1, 1]


def test_nan_iinc_is_left_out_not_propagated(tmp_path: Path) -> None:
    records = make_records(holdouts=([],))
    for r in records:
        r["variants"]["reg"]["iinc_stab"] = math.nan if r["seed"] == 0 else r["variants"]["reg"]["iinc_stab"]
        r["variants"]["baseline"]["iinc_stab"] = None if r["seed"] == 1 else r["variants"]["baseline"]["iinc_stab"]
    spec = make_spec(grid={"reg.epsilon": EPS, "reg.mode": MODES}, metric="iinc_stab")
    c = find(compared(spec, records, metric="iinc_stab"), line="gradient", dose=0.5)
    assert c.seeds == [2] and c.reading() == f"no claim below {MIN_SEEDS} seeds"
    rows = [r for r in agg.dose_response(spec, records, level=CI) if r["metric"] == "iinc_stab"]
    assert {r["n"] for r in rows if r["variant"] == "reg"} == {2}
    check_report(tmp_path, build_study_report(spec, records, tmp_path, rules=RULES))


def test_all_nan_metric_still_reports(tmp_path: Path) -> None:
    records = make_records(seeds=[0, 1], holdouts=([],))
    for r in records:
        for values in r["variants"].values():
            values["iinc_stab"] = math.nan
    spec = make_spec(seeds=[0, 1], grid={"reg.epsilon": EPS, "reg.mode": MODES}, metric="iinc_stab")
    c = find(compared(spec, records, metric="iinc_stab"), line="random", dose=0.25)
    assert c.reading() == "no seed has both values: no claim"
    check_report(tmp_path, build_study_report(spec, records, tmp_path, rules=RULES))


def test_no_heldout_cells(tmp_path: Path) -> None:
    spec = make_spec(grid={"reg.epsilon": EPS, "reg.mode": MODES})
    written = build_study_report(spec, make_records(holdouts=([],)), tmp_path, rules=RULES)
    summary = check_report(tmp_path, written)
    assert summary["figures"] == ["study_figures/dose_response.png"] and summary["generalization"] == []
    assert "No cell held a method out" in (tmp_path / "study.md").read_text(encoding="utf-8")


def test_only_heldout_cells(tmp_path: Path) -> None:
    spec = make_spec(grid={"reg.epsilon": EPS, "reg.mode": MODES, "split.holdout_methods": [[HELD]]})
    summary = check_report(tmp_path, build_study_report(spec, make_records(holdouts=([HELD],)), tmp_path, rules=RULES))
    assert summary["primary_groups"] == [WITH_HOLDOUT] and len(summary["figures"]) == 2
    md = (tmp_path / "study.md").read_text(encoding="utf-8")
    assert "Every cell holds a method out" in md


def test_one_line_value_and_no_lines_key(tmp_path: Path) -> None:
    one = make_spec(grid={"reg.epsilon": EPS, "reg.mode": ["gradient"]})
    check_report(tmp_path / "one", build_study_report(one, make_records(modes=["gradient"], holdouts=([],)),
                                                      tmp_path / "one", rules=RULES))
    none = make_spec(grid={"reg.epsilon": EPS}, lines=None)
    records = make_records(modes=[None], holdouts=([],))
    for r in records:
        del r["setting"]["split.holdout_methods"]
    c = find(compared(none, records), dose=0.25)
    assert c.line is None and c.favours == "reg"
    summary = check_report(tmp_path / "none", build_study_report(none, records, tmp_path / "none", rules=RULES))
    assert len(summary["verdicts"]["reg_placebo"]) == 2


def test_grid_key_that_is_not_a_line_splits_the_figures(tmp_path: Path) -> None:
    """lines unset: reg.mode is one more group key, so each mode gets its own dose-response."""
    spec = make_spec(grid={"reg.epsilon": EPS, "reg.mode": MODES}, lines=None)
    records = make_records(holdouts=([],))
    for r in records:
        del r["setting"]["split.holdout_methods"]
    c = find(compared(spec, records), group="reg.mode=gradient", dose=0.5)
    assert c.line is None and c.favours == "reg"
    summary = check_report(tmp_path, build_study_report(spec, records, tmp_path, rules=RULES))
    assert summary["figures"] == ["study_figures/dose_response_1.png", "study_figures/dose_response_2.png"]
    assert summary["primary_groups"] == ["reg.mode=random", "reg.mode=gradient"]
    assert "reg.mode=gradient, reg.epsilon=0.5: reg − baseline in acc_pgd = +0.102" in \
        (tmp_path / "study.md").read_text(encoding="utf-8")


# --- rendering in a real browser ----------------------------------------------------------


# Runs after load: writes each image's naturalWidth into the DOM that --dump-dom prints.
PROBE = """<script>window.addEventListener('load', () => {
  const out = document.createElement('pre'); out.id = 'probe';
  out.textContent = JSON.stringify([...document.images].map(i => i.complete ? i.naturalWidth : -1));
  document.body.appendChild(out);
});</script>"""


def test_study_html_renders_every_image_offline(full_report: tuple[Path, dict[str, Path]], chromium,
                                                tmp_path: Path) -> None:
    """The page, moved away from its figures folder, shows every figure with no network."""
    out, _ = full_report
    page = tmp_path / "moved.html"
    page.write_text((out / "study.html").read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"),
                    encoding="utf-8")
    dom = chromium(page, tmp_path / "profile", 10000)
    probe = re.search(r'<pre id="probe">([^<]*)</pre>', dom)
    assert probe, "the probe script did not run"
    widths = json.loads(probe.group(1))
    assert len(widths) == len(md_figures(out)) == 2 and all(w > 0 for w in widths), widths


def test_identical_nonzero_differences_are_floored_not_certain():
    """Two seeds that both gain exactly one image (+1/128) give a zero-width t-interval:
    that is the discreteness of accuracy, not evidence; the test-SE floor keeps it wide."""
    from robust_deepfake.study.report.comparisons import compare
    from robust_deepfake.study.report.points import Point

    point = Point(setting=(("reg.epsilon", 0.25),), group=(), line=None, dose=0.25, held_out=(), cells={})
    cell = lambda seed, reg: {"label": f"s{seed}", "variants": {"reg": {"acc_pgd": reg, "auc_clean": 0.9},  # noqa: E731
                                                                "baseline": {"acc_pgd": 0.5, "auc_clean": 0.9}},
                              "test_se": {"reg_baseline": {"acc_pgd": 0.04}}}
    cells = {0: cell(0, 0.5 + 1 / 128), 1: cell(1, 0.5 + 1 / 128)}
    same = compare(cmp.REG_BASELINE, "acc_pgd", point, "test", {s: (r, "reg") for s, r in cells.items()},
                   {s: (r, "baseline") for s, r in cells.items()}, RULES,
                   se=lambda record: pts.pair_se(record, "reg_baseline", "acc_pgd"))
    assert same.claim.floored and same.ci_low < 0 < same.ci_high and same.favours == "neither"
