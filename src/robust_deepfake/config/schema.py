"""The sections of params.yaml and `Params`, the whole file: every key, its type, its
range and the checks between keys, in the order of params.yaml.

Unknown keys are errors; floats are finite, ints and booleans are strict (`true` is not 1
epoch), seeds fit numpy and torch, attack budgets are whole grey levels and
`report.reference_eps` is one of them. `validate` turns every problem into one line naming
its dotted key: `<source>: <dotted.key>: <what is wrong> (got <value>)`.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from robust_deepfake.config.problems import ConfigError, format_errors, raise_problems
from robust_deepfake.units import label, parse_pixel_value, require_whole_grey_levels

DEFAULT_PARAMS = Path("params.yaml")


PixelValue = Annotated[float, BeforeValidator(parse_pixel_value)]


def _budgets(value: list[float]) -> list[float]:
    """attack.eps and cam.eps: pixel-space budgets in [0, 1], whole grey levels, sorted, unique."""
    for eps in value:
        if eps < 0 or eps > 1:
            raise ValueError(f"each eps must be in [0, 1] (pixel units), got {label(eps)}")
    require_whole_grey_levels(value)
    return sorted(set(value))


def _unique(value: list[str], what: str) -> list[str]:
    if len(set(value)) != len(value):
        raise ValueError(f"{what} must be unique, got {value}")
    return value


# Seeds feed np.random.default_rng, np.random.seed (< 2**32), torch.manual_seed (< 2**64)
# and derived seeds (train: seed * 10007 + epoch; attacks: seed * 1_000_003 + ...): int32
# keeps every one of them in range, on every platform.
MAX_SEED = 2**31 - 1


def _seed(value: int) -> int:
    if not 0 <= value <= MAX_SEED:
        raise ValueError(f"a seed must be in [0, {MAX_SEED}] (numpy and torch are seeded from it)")
    return value


Seed = Annotated[int, AfterValidator(_seed)]


class Strict(BaseModel):
    """Every section: unknown keys refused; strict types (`true` is not an int, 1 is not a
    boolean, "4" is not a number; an int is still a float); every float finite (no .nan
    or .inf anywhere: they pass range checks and crash a later stage)."""

    model_config = ConfigDict(extra="forbid", validate_default=True, frozen=True, strict=True,
                              allow_inf_nan=False)


class DataConfig(Strict):
    raw_dir: str = Field("data/raw", min_length=1)
    splits_dir: str = Field("data/splits", min_length=1)
    image_size: int = Field(64, ge=16, le=1024)
    on_bad_file: Literal["error", "skip"] = "error"
    # Images smaller than this on a side are refused (or skipped and counted): upscaled to
    # image_size they hold no detail to learn from.
    min_image_size: int = Field(16, ge=1)
    # Decoded uint8 images are kept in RAM when they fit this budget (the demo: ~30 MB);
    # larger sets (DFFD at 224 px) stream from disk through DataLoader workers.
    cache_max_mb: int = Field(2048, ge=0)
    num_workers: int = Field(0, ge=0)


class SplitConfig(Strict):
    seed: Seed = 0
    val_fraction: float = Field(0.15, gt=0, lt=1)
    test_fraction: float = Field(0.25, gt=0, lt=1)
    holdout_methods: list[str] = Field(default_factory=list)
    # `auto`: keep an official split shipped with the data (data/raw/metadata.csv, written
    # by the DFFD ingest) where present; `group`: always re-split by identity.
    strategy: Literal["auto", "group"] = "auto"

    @model_validator(mode="after")
    def _fractions(self) -> SplitConfig:
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError(
                "val_fraction + test_fraction must be < 1 "
                f"(got {self.val_fraction} + {self.test_fraction})"
            )
        return self


class ModelConfig(Strict):
    name: Literal["efficientnet_b0"] = "efficientnet_b0"
    pretrained: bool = False
    weights_path: str | None = Field(None, min_length=1)
    drop_rate: float = Field(0.2, ge=0, lt=1)
    channels_last: bool = True


class RegConfig(Strict):
    split_at: int = Field(2, ge=1, le=6)
    # The weight of the perturbed term. 0 is refused: it is not the baseline (_alpha says why).
    alpha: float = Field(0.5, ge=0, le=1)
    # Norm of the (d_mu, d_sigma) perturbation per sample: a fraction of that sample's
    # ||(mu, sigma)|| (`relative`) or an absolute L2 norm (`absolute`, the paper's convention).
    epsilon: float = Field(0.5, ge=0)
    epsilon_scale: Literal["relative", "absolute"] = "relative"
    mode: Literal["random", "gradient"] = "random"

    @field_validator("alpha")
    @classmethod
    def _alpha(cls, value: float) -> float:
        if value == 0:
            raise ValueError("0 is not the baseline: the second, unweighted pass through the late layers still "
                             "runs in train mode (BatchNorm running statistics, dropout draws), so it trains "
                             "another model; the baseline variant is the model without it; use alpha > 0")
        return value

    def as_placebo(self) -> RegConfig:
        """The placebo's recipe: this one with no perturbation (epsilon 0; its scale then
        changes nothing and is fixed, so the placebo does not depend on epsilon or its scale)."""
        return self.model_copy(update={"epsilon": 0.0, "epsilon_scale": "absolute"})


class TrainConfig(Strict):
    # One trained model per seed and variant; the variants of a seed share initial
    # weights and data order, so the verdict compares them in pairs.
    seeds: list[Seed] = Field(default_factory=lambda: [0, 1, 2])
    epochs: int = Field(4, ge=1)
    batch_size: int = Field(32, ge=2)
    lr: float = Field(4e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    monitor: Literal["val_auc", "val_f1", "val_accuracy", "val_loss"] = "val_auc"
    patience: int = Field(3, ge=1)
    device: str = "auto"
    amp: bool = True
    max_train_samples: int | None = Field(None, ge=2)
    augment_hflip: bool = True
    # torch intra-op threads of each training: results depend on it (float reduction
    # order), so it is pinned.
    num_threads: int = Field(1, ge=1, le=256)
    # Trainings of one variant's seeds run at once, each in its own process at num_threads
    # threads (on CUDA: one per visible GPU, at most this many). Results do not depend on it.
    workers: int = Field(3, ge=1, le=256)

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, value: list[int]) -> list[int]:
        if not value:
            raise ValueError("at least one seed is required")
        if len(set(value)) != len(value):
            raise ValueError(f"seeds must be unique, got {value}")
        return value

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if value in {"auto", "cpu", "cuda", "mps"} or re.fullmatch(r"cuda:\d+", value):
            return value
        raise ValueError(f"expected auto, cpu, cuda, cuda:N or mps, got {value!r}")

    @model_validator(mode="after")
    def _decay(self) -> TrainConfig:
        # AdamW multiplies every weight by 1 - lr * weight_decay each step: at >= 1 the
        # weights flip sign and grow until the loss is NaN (the stage dies epochs later)
        if self.lr * self.weight_decay >= 1:
            raise_problems([("weight_decay", f"lr x weight_decay must be < 1 (AdamW scales every weight by "
                              f"1 - lr x weight_decay each step; lr is {self.lr:g})", f"{self.weight_decay:g}")])
        return self


AttackName = Literal["fgsm", "bim", "pgd", "mifgsm"]


class EnsembleConfig(Strict):
    """The worst-case ensemble (robustness/ensemble.py), attack `ensemble` of the sweep at
    every eps of attack.eps: per image the worst of the sweep's attacks, APGD-CE, FAB (when
    on) and Square; robust only when every one fails."""

    enabled: bool = True
    apgd_steps: int = Field(5, ge=1)
    apgd_restarts: int = Field(1, ge=1)  # runs, each from a new random start (1 = a single run)
    square_queries: int = Field(25, ge=0)  # per image and run; 0 leaves Square out
    square_restarts: int = Field(1, ge=1)
    fab: bool = False
    fab_steps: int = Field(10, ge=1)
    fab_restarts: int = Field(1, ge=1)


class MaskingConfig(Strict):
    """The gradient-masking checks (robustness/masking.py) the sweep runs on every model at
    one eps (eval/masking_checks.json)."""

    enabled: bool = True
    eps: PixelValue | None = None  # one of attack.eps; None: the smallest (AttackConfig.masking_eps)
    # doubled steps + restarts: strong_runs more PGD runs with strong_factor x attack.steps
    strong_factor: int = Field(2, ge=2)
    strong_runs: int = Field(1, ge=1)
    large_eps: PixelValue = 16 / 255  # PGD there must leave <= large_eps_accuracy
    large_steps: int = Field(3, ge=1)
    large_eps_accuracy: float = Field(0.05, ge=0, le=1)
    tolerance: float = Field(0.01, ge=0, le=1)  # accuracy gap that counts as "stronger" / "not converged"
    noise_level: float = Field(0.95, gt=0, lt=1)  # Wilson interval of the clean accuracy noise must stay in

    @field_validator("eps", "large_eps")
    @classmethod
    def _budget(cls, value: float | None) -> float | None:
        if value is None:
            return value
        if not 0 < value <= 1:
            raise ValueError(f"must be in (0, 1] (pixel units), got {label(value)}")
        require_whole_grey_levels([value])
        return value


class AttackConfig(Strict):
    attacks: list[AttackName] = Field(default_factory=lambda: ["fgsm", "bim", "pgd"])
    # Pixel-space L-inf budgets for images in [0, 1]; 0 (the clean row) is always added.
    eps: list[PixelValue] = Field(default_factory=lambda: [1 / 255, 2 / 255])
    steps: int = Field(3, ge=1)
    # Step size of the iterative attacks: absolute when set, else step_size_relative * eps.
    step_size: PixelValue | None = None
    step_size_relative: float = Field(0.5, gt=0)
    random_start: bool = True
    # Score adversarial images after rounding to 8 bits (what survives saving the image).
    quantize: bool = True
    # bf16 autocast for the attacks' forward and backward passes on CUDA (ignored on CPU);
    # off until benchmarks.gpu_check has measured its speed on a GPU.
    amp: bool = False
    momentum: float = Field(1.0, ge=0)
    max_samples: int | None = Field(128, ge=2)
    batch_size: int = Field(128, ge=1)
    seed: Seed = 0
    ensemble: EnsembleConfig = Field(default_factory=EnsembleConfig)
    masking: MaskingConfig = Field(default_factory=MaskingConfig)

    @field_validator("eps")
    @classmethod
    def _eps(cls, value: list[float]) -> list[float]:
        if not value:
            raise ValueError("at least one eps is required")
        value = _budgets(value)
        if not any(eps > 0 for eps in value):
            raise ValueError("at least one eps > 0 is required (eps = 0, the clean row, is always added)")
        return value

    @field_validator("attacks")
    @classmethod
    def _attacks(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one attack is required")
        return _unique(value, "attacks")

    @field_validator("step_size")
    @classmethod
    def _step(cls, value: float | None) -> float | None:
        if value is not None and not 0 < value <= 1:
            raise ValueError(f"must be in (0, 1] (pixel units), got {label(value)}")
        return value

    @model_validator(mode="after")
    def _masking(self) -> AttackConfig:
        """The checks reuse the sweep's scores at one of its budgets, below the large one."""
        swept = [eps for eps in self.eps if eps > 0]
        problems: list[tuple[str, str, str | None]] = []
        eps = self.masking.eps
        if eps is not None and round(eps * 255, 6) not in {round(e * 255, 6) for e in swept}:
            problems.append(("masking.eps", f"must be one of attack.eps ({', '.join(label(e) for e in swept)})",
                             label(eps)))
        elif self.masking.large_eps <= self.masking_eps:
            problems.append(("masking.large_eps", f"must be larger than the masking eps ({label(self.masking_eps)})",
                             label(self.masking.large_eps)))
        raise_problems(problems)
        return self

    @property
    def masking_eps(self) -> float:
        """The eps of the gradient-masking checks: attack.masking.eps, else the smallest swept one."""
        return self.masking.eps if self.masking.eps is not None else min(e for e in self.eps if e > 0)

    def step_size_for(self, eps: float) -> float:
        return self.step_size if self.step_size is not None else self.step_size_relative * eps

    @property
    def eps_grid(self) -> list[float]:
        """The sweep grid with the clean row (eps = 0) first."""
        return sorted({0.0, *self.eps})


class EvalConfig(Strict):
    n_bootstrap: int = Field(1000, ge=0)
    ci: float = Field(0.95, gt=0, lt=1)
    seed: Seed = 0
    # torch intra-op threads of each worker of the evaluation stages (attack_sweep, cam_iinc):
    # their numbers depend on it (float reduction order), so it is pinned.
    num_threads: int = Field(1, ge=1, le=256)
    # Units evaluated at once, each in its own process at num_threads threads (attack_sweep:
    # one seed's models; cam_iinc: one model); on CUDA one per visible GPU, at most this
    # many. 1: in the stage's own process. Results do not depend on it.
    workers: int = Field(3, ge=1, le=256)


class CamConfig(Strict):
    method: Literal["gradcam", "gradcam++"] = "gradcam"
    # Layer of the detector's timm body, by module path. At 64 px the last conv block
    # (conv_head) sees a 2x2 map, too coarse to localize anything: blocks.4 (stride 16)
    # gives 4x4. At 224 px use conv_head (7x7).
    # Resolved against the detector at load time (Params._cross_checks).
    target_layer: str = Field("blocks.4", min_length=1)
    target: Literal["predicted", "true"] = "true"
    num_samples: int = Field(16, ge=2)
    attacks: list[AttackName] | None = None
    eps: list[PixelValue] | None = None
    batch_size: int = Field(32, ge=1)
    figure_rows: int = Field(6, ge=2)
    seed: Seed = 0

    @field_validator("attacks")
    @classmethod
    def _attacks(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and not value:
            raise ValueError("empty: list at least one attack, or null for all of attack.attacks")
        return value if value is None else _unique(value, "attacks")

    @field_validator("eps")
    @classmethod
    def _eps(cls, value: list[float] | None) -> list[float] | None:
        if value is not None and not value:
            raise ValueError("empty: list at least one eps, or null for all of attack.eps")
        return value if value is None else _budgets(value)


class ReportConfig(Strict):
    # The champion criterion (verdict/champion.py criterion_plan): <attack>_<metric> over
    # the attacked eps (evasion: lower is better, scored as 1 - evasion rate), every
    # attack's accuracy, or the clean row.
    select_by: Literal[
        "pgd_accuracy", "pgd_auc", "pgd_evasion", "ensemble_accuracy", "ensemble_auc", "ensemble_evasion",
        "mean_attack_accuracy", "clean_accuracy", "clean_auc"
    ] = "pgd_auc"
    # One of attack.eps (and of cam.eps where set): checked in Params._cross_checks.
    reference_eps: PixelValue = 1 / 255
    # The quality floor: a model whose clean test ROC-AUC is below it can never become
    # @champion/@challenger, and `predict` refuses it (a constant classifier scores 0.5).
    # 0 switches it off (the micro test profile, whose 1-epoch models sit near chance).
    min_clean_auc: float = Field(0.75, ge=0, le=1)
    # The smallest difference between variants worth detecting (accuracy, AUC: on the
    # metric's own scale): the report states how many seeds would detect it with 80% power.
    min_effect: float = Field(0.02, gt=0, lt=1)


class TrackingConfig(Strict):
    experiment: str = Field("robust-deepfake", min_length=1)
    registered_model: str = Field("robust-deepfake-detector", min_length=1)
    # None: sqlite:///<repo>/mlflow.db; the MLFLOW_TRACKING_URI environment variable wins.
    tracking_uri: str | None = Field(None, min_length=1)

    @field_validator("registered_model")
    @classmethod
    def _model_name(cls, value: str) -> str:
        # MLflow refuses these when the train stage registers its model, after training
        if "/" in value or ":" in value or not value.strip():
            raise ValueError(f"MLflow model names cannot be blank or contain '/' or ':', got {value!r}")
        return value


CRON_FIELDS = "minute hour day-of-month month day-of-week"


def cron_shape_problem(value: str) -> str | None:
    """Why `value` is not a 5-field cron expression Prefect accepts the fields of, or None."""
    fields = value.split()
    if len(fields) != 5:
        return f"expected a 5-field cron expression: {CRON_FIELDS}"
    if any(field.casefold() in {"r", "h"} for field in fields):
        return "random (R) and hashed (H) fields are not supported by Prefect"
    return None


_ALIAS = re.compile(r"^[\w\-]+$")


class ReevaluateConfig(Strict):
    cron: str = "0 3 * * 1"
    max_drop: float = Field(0.05, ge=0, le=1)
    aliases: list[str] = Field(default_factory=lambda: ["champion", "challenger"])

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        problem = cron_shape_problem(value)
        if problem:
            raise ValueError(f"{problem} (got {value!r})")
        return value

    @field_validator("aliases")
    @classmethod
    def _aliases(cls, value: list[str]) -> list[str]:
        # MLflow's rules for alias names; an empty list would re-evaluate nothing
        if not value:
            raise ValueError("at least one alias is required")
        for alias in value:
            if not _ALIAS.match(alias) or alias.lower() == "latest" or re.fullmatch(r"[vV]\d+", alias):
                raise ValueError(f"{alias!r} is not an MLflow alias: letters, digits, _ and -, "
                                 "and not 'latest' or v<N> (reserved)")
        return _unique(value, "aliases")




class Params(Strict):
    data: DataConfig = Field(default_factory=DataConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    reg: RegConfig = Field(default_factory=RegConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    attack: AttackConfig = Field(default_factory=AttackConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    cam: CamConfig = Field(default_factory=CamConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    reevaluate: ReevaluateConfig = Field(default_factory=ReevaluateConfig)

    @model_validator(mode="after")
    def _cross_checks(self) -> Params:
        """Keys that are valid alone and wrong together: each problem names its key."""
        problems: list[tuple[str, str, str | None]] = []
        reference = round(self.report.reference_eps * 255, 6)
        swept = [eps for eps in self.attack.eps if eps > 0]
        if reference not in {round(eps * 255, 6) for eps in swept}:
            problems.append((
                "report.reference_eps",
                f"must be one of attack.eps ({', '.join(label(e) for e in swept)}): the headline, per-source, "
                "ROC and CAM figures are drawn at it, and another value would silently become the nearest one",
                label(self.report.reference_eps),
            ))
        elif self.cam.eps is not None and reference not in {round(eps * 255, 6) for eps in self.cam.eps}:
            problems.append((
                "report.reference_eps",
                f"must also be one of cam.eps ({', '.join(label(e) for e in self.cam.eps)}): the CAM figures "
                "are drawn at it (or set cam.eps to null: all of attack.eps)",
                label(self.report.reference_eps),
            ))
        select_by = self.report.select_by
        if select_by.startswith("pgd_") and "pgd" not in self.attack.attacks:
            problems.append(("report.select_by", "needs pgd in attack.attacks", select_by))
        if select_by.startswith("ensemble_") and not self.attack.ensemble.enabled:
            problems.append(("report.select_by", "needs the ensemble: attack.ensemble.enabled is false", select_by))
        raise_problems(problems)
        return self


def validate(raw: Any, source: str = str(DEFAULT_PARAMS)) -> Params:
    """The Params of parsed YAML; ConfigError naming `source` and each bad key."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: top level must be a mapping, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(format_errors(source, error)) from None


def params_hash(params: Params) -> str:
    """sha256 of the resolved params (canonical JSON): provenance in reports and model cards."""
    return hashlib.sha256(json.dumps(params.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:16]


def flatten(params: Params) -> dict[str, Any]:
    """Dotted keys (train.lr) for MLflow params and resolved-config files."""
    out: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix}.{key}" if prefix else key, inner)
        else:
            out[prefix] = value

    walk("", params.model_dump(mode="json"))
    return out
