"""eval/masking_checks.json: the gradient-masking checks of every model, with the numbers
behind each, read and written only through `MaskingChecks`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from robust_deepfake import units
from robust_deepfake.errors import StageError
from robust_deepfake.io import write_json
from robust_deepfake.paths import ModelKey, read_json_file
from robust_deepfake.robustness.masking import CheckRow, MaskingTolerances, verdict_line
from robust_deepfake.robustness.masking_probes import Measurements, ProbeBudget, checks


@dataclass(frozen=True)
class ModelChecks:
    """One model's probe measurements and check rows; `transfer_from`: the model whose PGD
    images were the transfer attack (None: no transfer check)."""

    model: ModelKey
    measurements: Measurements
    rows: list[CheckRow]
    transfer_from: ModelKey | None = None

    def as_dict(self) -> dict:
        source = self.transfer_from
        return {"variant": self.model.variant, "seed": self.model.seed,
                "transfer_from": {"variant": source.variant, "seed": source.seed} if source else None,
                "measurements": self.measurements.as_dict(), "checks": [row.as_dict() for row in self.rows]}

    @classmethod
    def from_dict(cls, data: dict) -> ModelChecks:
        source = data["transfer_from"]
        transfer_from = ModelKey(source["variant"], int(source["seed"])) if source else None
        rows = [CheckRow(r["check"], r["status"], {k: float(v) for k, v in r["numbers"].items()}, r["reason"])
                for r in data["checks"]]
        return cls(ModelKey(data["variant"], int(data["seed"])), Measurements.from_dict(data["measurements"]), rows,
                   transfer_from)


@dataclass(frozen=True)
class MaskingChecks:
    """Every model's checks at one eps, with the budgets and tolerances they ran under."""

    eps: float
    budget: dict
    tolerances: dict
    models: list[ModelChecks]

    @classmethod
    def of(cls, measured: Mapping[ModelKey, Measurements], transfer_from: Mapping[ModelKey, ModelKey],
           eps: float, budget: ProbeBudget, tolerances: MaskingTolerances) -> MaskingChecks:
        """Run the checks on each model's measurements (in `measured`'s order)."""
        budget_dict = {"steps": budget.steps, "step_size_relative": budget.step_size_relative,
                       "strong_factor": budget.strong_factor, "strong_runs": budget.strong_runs,
                       "large_eps_label": units.label(budget.large_eps), "large_steps": budget.large_steps,
                       "ensemble": {"members": list(budget.ensemble.order), "apgd_steps": budget.ensemble.apgd_steps,
                                    "apgd_restarts": budget.ensemble.apgd_restarts,
                                    "square_queries": budget.ensemble.square_queries,
                                    "fab_steps": budget.ensemble.fab_steps}}
        tolerance_dict = {"stronger_by": tolerances.stronger_by, "convergence": tolerances.convergence,
                          "large_eps_accuracy": tolerances.large_eps_accuracy, "noise_level": tolerances.noise_level}
        models = [ModelChecks(key, m, checks(m, tolerances), transfer_from.get(key)) for key, m in measured.items()]
        return cls(eps, budget_dict, tolerance_dict, models)

    def rows_by_model(self) -> dict[str, list[CheckRow]]:
        return {entry.model.name: entry.rows for entry in self.models}

    def verdict_line(self) -> str | None:
        """The verdict's line when any check warns (masking.verdict_line), else None."""
        return verdict_line(self.rows_by_model())

    def save(self, path: Path) -> None:
        write_json(path, {"eps": self.eps, "eps_label": units.label(self.eps), "budget": self.budget,
                          "tolerances": self.tolerances, "models": [m.as_dict() for m in self.models]})

    @classmethod
    def load(cls, path: Path) -> MaskingChecks:
        data = read_json_file(Path(path), "run `dvc repro attack_sweep` first")
        try:
            return cls(float(data["eps"]), data["budget"], data["tolerances"],
                       [ModelChecks.from_dict(m) for m in data["models"]])
        except (KeyError, TypeError, ValueError) as error:
            raise StageError(f"{path}: not a masking-checks file ({error!r}); run `dvc repro attack_sweep`") from None
