"""The model card: the markdown description of a registered model version.

Written twice: at training (what the model is, what it was trained on, its validation
numbers, where it comes from) and again by the report stage, which appends the test
numbers under attack, the seed-level verdict with its interval, and the quality floor.
`mlflow ui` shows it on the version's page; `predict` reads the floor from the version's
`quality_floor` tag, which the same report writes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from robust_deepfake.config import Params
from robust_deepfake.paths import ModelKey
from robust_deepfake import units

REGISTERED_MODEL_DESCRIPTION = (
    "EfficientNet-B0 deepfake detector, p(fake) per face image. Each version is one training "
    "(variant x seed) of the robust-deepfake pipeline; its description is its model card. Aliases: "
    "@champion / @challenger (the report's choice among baseline and reg, above the quality floor), "
    "@baseline / @placebo / @reg (each variant's representative seed), `@<variant>-seed<k>` (one per "
    "training). The placebo (tag "
    "role=control) is never @champion or @challenger. Only `dvc repro` of a committed workspace "
    "moves them; `dvc exp run` versions carry the tag dvc_experiment instead."
)

KNOWN_LIMITS = (
    "- Robustness is measured against white-box L-inf attacks (FGSM, BIM, PGD) at the budgets listed, "
    "on this pipeline's test split; other attacks, budgets, compression or re-capture are not covered.\n"
    "- One training seed is one draw: compare variants with the report's seed-level interval, not with "
    "this version alone.\n"
    "- The test split shares sources and generators with training unless `split.holdout_methods` holds "
    "methods out: accuracy on unseen manipulation methods is not measured here otherwise."
)


def training_card(params: Params, key: ModelKey, summary: Mapping[str, Any], data: Mapping[str, Any],
                  origin: Mapping[str, str]) -> str:
    """Markdown for a version just trained: data, params, validation metrics, provenance."""
    reg = params.reg
    train = params.train
    lines = [
        f"# {params.tracking.registered_model}: {key.name}",
        "",
        f"Variant **{key.variant}**, training seed {key.seed}. " + _recipe(reg, key.variant),
        "",
        "## Data",
        f"- data.dvc md5 `{data.get('md5', 'unknown')}`; {data.get('train', '?')} training and "
        f"{data.get('val', '?')} validation images at {params.data.image_size} px",
        "",
        "## Training",
        f"- {params.model.name}, pretrained weights: {'yes' if params.model.pretrained else 'no'}; "
        f"{train.epochs} epochs, batch {train.batch_size}, lr {train.lr:g}, weight decay {train.weight_decay:g}",
        f"- best epoch {summary.get('best_epoch')} of {summary.get('epochs_run')}",
        "",
        "## Validation (best epoch)",
        *(f"- {name}: **{summary[name]:.4f}**" for name in ("val_auc", "val_accuracy", "val_f1", "val_loss")
          if name in summary),
        "",
        "## Provenance",
        *(f"- {name}: `{value}`" for name, value in origin.items()),
        "",
        "## Known limits",
        KNOWN_LIMITS,
        "",
        "_Robustness under attack and the quality floor are added by the report stage._",
    ]
    return "\n".join(lines) + "\n"


def aligned_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A table as a fenced code block with padded columns: MLflow's description view draws
    Markdown tables without cell spacing, monospace columns stay readable there and as text."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(str(cell).ljust(width) for cell, width in zip(cells, widths)).rstrip()

    return ["```text", line(header), line(["-" * width for width in widths]), *map(line, rows), "```"]


def _recipe(reg, variant: str) -> str:
    """What `variant` trains with (model/variants.py), in one sentence."""
    if variant == "baseline":
        return "Plain cross-entropy."
    if variant == "placebo":
        return (f"Placebo, a control that is never @champion: the regularized recipe without its perturbation "
                f"(an alpha {reg.alpha:g} second pass through the late layers, mode {reg.mode}, epsilon 0), split "
                f"after `{reg.split_at}`.")
    return (f"Shallow-statistics regularizer: mode {reg.mode}, alpha {reg.alpha:g}, epsilon {reg.epsilon:g} "
            f"({reg.epsilon_scale}), split after `{reg.split_at}`.")


def report_section(key: ModelKey, rows: Sequence[Mapping[str, Any]], verdict: Sequence[str], floor: str,
                   decision: str) -> str:
    """The report's addition to a version's card: its test numbers (clean and per attack/eps),
    the variant comparison over seeds, and the quality floor."""
    lines = [
        "## Test set, clean and under attack (report stage)",
        *aligned_table(["attack", "eps", "accuracy", "ROC-AUC"],
                       [[r["attack"], units.label(r["eps"]), f"{r['accuracy']:.3f}", f"{r['auc']:.3f}"] for r in rows]),
        "",
        "## Variant comparisons over seeds",
        *(f"- {line}" for line in verdict),
        "",
        f"## Quality floor\n- {floor}" + ("" if floor.startswith("passed") else
                                          "\n- **`robust-deepfake predict` refuses this version.**"),
        "",
        f"## Champion decision\n- {decision}",
    ]
    return "\n".join(lines) + "\n"
