"""Typed, strict schema of params.yaml.

Every stage validates the whole file before it does any work, so a typo in a section
another stage owns still fails fast and names the key. Unknown keys are errors, not
silently ignored: `dvc exp run -S reg.alpah=0.3` must not run an experiment that
quietly uses the default. The defaults equal params.yaml's demo values (a test compares).

One file on purpose (over 300 lines): the whole schema reads top to bottom in the
order of params.yaml, and splitting it would scatter one contract over several files.
"""

from __future__ import annotations

import re
import sys
from fractions import Fraction
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from robust_deepfake.errors import StageError

DEFAULT_PARAMS = Path("params.yaml")


class ConfigError(StageError, ValueError):
    """params.yaml is unreadable or invalid; str() is one line per problem, each naming the key."""


_RATIO = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*/\s*(\d+(?:\.\d+)?)\s*$")


def parse_pixel_value(value: Any) -> float:
    """Accept 0.0157, 4, or the conventional '4/255' for pixel-space budgets."""
    if isinstance(value, bool):
        raise ValueError("expected a number or 'k/255', got a boolean")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        match = _RATIO.match(value)
        if match:
            denominator = float(match.group(2))
            if denominator == 0:
                raise ValueError(f"division by zero in {value!r}")
            return float(Fraction(match.group(1)) / Fraction(match.group(2)))
        try:
            return float(value)
        except ValueError:
            pass
    raise ValueError(f"expected a number or 'k/255', got {value!r}")


PixelValue = Annotated[float, BeforeValidator(parse_pixel_value)]


def require_whole_grey_levels(values: list[float], key: str) -> None:
    """Attack budgets are whole grey levels k/255: the data are 8-bit images (with 8-bit
    rounding 0.5/255 would become 1/255, twice the budget, and anything below half a grey
    level would vanish), and MLflow logs k as the step of every metric-vs-eps curve."""
    for eps in values:
        if abs(eps * 255 - round(eps * 255)) > 1e-6:
            raise ValueError(
                f"{key}: {eps * 255:g}/255 is not a whole grey level; every attack budget must be k/255 "
                "(k = 1, 2, ...: the images are 8-bit and MLflow plots curves against k)"
            )


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True, frozen=True)


class DataConfig(Strict):
    raw_dir: str = "data/raw"
    splits_dir: str = "data/splits"
    image_size: int = Field(64, ge=16, le=1024)
    on_bad_file: Literal["error", "skip"] = "error"
    # Decoded uint8 images are kept in RAM when they fit this budget (the demo: ~30 MB);
    # larger sets (DFFD at 224 px) stream from disk through DataLoader workers.
    cache_max_mb: int = Field(2048, ge=0)
    num_workers: int = Field(0, ge=0)


class SplitConfig(Strict):
    seed: int = 0
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
    weights_path: str | None = None
    drop_rate: float = Field(0.2, ge=0, lt=1)
    channels_last: bool = True


class RegConfig(Strict):
    split_at: int = Field(2, ge=1, le=6)
    alpha: float = Field(0.5, ge=0, le=1)
    # Norm of the (d_mu, d_sigma) perturbation per sample: a fraction of that sample's
    # ||(mu, sigma)|| (`relative`) or an absolute L2 norm (`absolute`, the paper's convention).
    epsilon: float = Field(0.5, ge=0, allow_inf_nan=False)
    epsilon_scale: Literal["relative", "absolute"] = "relative"
    mode: Literal["random", "gradient"] = "random"


MAX_SEED = 2**31 - 1


class TrainConfig(Strict):
    # One trained model per seed and variant; both variants of a seed share initial
    # weights and data order, so the verdict compares them in pairs.
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2])
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
    # torch intra-op threads: results depend on it (float reduction order), so it is pinned.
    num_threads: int = Field(2, ge=1, le=256)

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, value: list[int]) -> list[int]:
        if not value:
            raise ValueError("at least one seed is required")
        if len(set(value)) != len(value):
            raise ValueError(f"seeds must be unique, got {value}")
        for seed in value:
            if not 0 <= seed <= MAX_SEED:
                raise ValueError(f"each seed must be in [0, {MAX_SEED}], got {seed}")
        return value

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if value in {"auto", "cpu", "cuda", "mps"} or re.fullmatch(r"cuda:\d+", value):
            return value
        raise ValueError(f"expected auto, cpu, cuda, cuda:N or mps, got {value!r}")


AttackName = Literal["fgsm", "bim", "pgd", "mifgsm"]


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
    momentum: float = Field(1.0, ge=0)
    max_samples: int | None = Field(128, ge=2)
    batch_size: int = Field(128, ge=1)
    seed: int = 0

    @field_validator("eps")
    @classmethod
    def _eps(cls, value: list[float]) -> list[float]:
        if not value:
            raise ValueError("at least one eps is required")
        for eps in value:
            if eps < 0 or eps > 1:
                raise ValueError(f"each eps must be in [0, 1] (pixel units), got {eps}")
        return sorted(set(value))

    @field_validator("attacks")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one attack is required")
        if len(set(value)) != len(value):
            raise ValueError(f"attacks must be unique, got {value}")
        return value

    @model_validator(mode="after")
    def _whole_grey_levels(self) -> AttackConfig:
        require_whole_grey_levels(self.eps, "eps")
        return self

    @field_validator("step_size")
    @classmethod
    def _step(cls, value: float | None) -> float | None:
        if value is not None and value <= 0:
            raise ValueError(f"must be > 0, got {value}")
        return value

    def step_size_for(self, eps: float) -> float:
        return self.step_size if self.step_size is not None else self.step_size_relative * eps

    @property
    def eps_grid(self) -> list[float]:
        """The sweep grid with the clean row (eps = 0) first."""
        return sorted({0.0, *self.eps})


class EvalConfig(Strict):
    n_bootstrap: int = Field(1000, ge=0)
    ci: float = Field(0.95, gt=0, lt=1)
    seed: int = 0


class CamConfig(Strict):
    method: Literal["gradcam", "gradcam++"] = "gradcam"
    # Layer of the detector's timm body, by module path. At 64 px the last conv block
    # (conv_head) sees a 2x2 map, too coarse to localize anything: blocks.4 (stride 16)
    # gives 4x4. At 224 px use conv_head (7x7).
    target_layer: str = "blocks.4"
    target: Literal["predicted", "true"] = "true"
    num_samples: int = Field(16, ge=2)
    attacks: list[AttackName] | None = None
    eps: list[PixelValue] | None = None
    batch_size: int = Field(32, ge=1)
    figure_rows: int = Field(6, ge=2)
    seed: int = 0


class ReportConfig(Strict):
    select_by: Literal[
        "pgd_accuracy", "pgd_auc", "mean_attack_accuracy", "clean_accuracy", "clean_auc"
    ] = "pgd_auc"
    reference_eps: PixelValue = 1 / 255
    # The quality floor: a model whose clean test ROC-AUC is below it can never become
    # @champion/@challenger, and `predict` refuses it (a constant classifier scores 0.5).
    # 0 switches it off (the micro test profile, whose 1-epoch models sit near chance).
    min_clean_auc: float = Field(0.75, ge=0, le=1)


class TrackingConfig(Strict):
    experiment: str = Field("robust-deepfake", min_length=1)
    registered_model: str = Field("robust-deepfake-detector", min_length=1)
    # None: sqlite:///<repo>/mlflow.db; the MLFLOW_TRACKING_URI environment variable wins.
    tracking_uri: str | None = None


class ReevaluateConfig(Strict):
    cron: str = "0 3 * * 1"
    max_drop: float = Field(0.05, ge=0, le=1)
    aliases: list[str] = Field(default_factory=lambda: ["champion", "challenger"])

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        if len(value.split()) != 5:
            raise ValueError(f"expected a 5-field cron expression, got {value!r}")
        return value


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
    def _cam_eps(self) -> Params:
        if self.cam.eps:
            require_whole_grey_levels(self.cam.eps, "cam.eps")
        return self


def _format_errors(source: str, error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "<root>"
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        elif message.startswith("Value error, "):
            message = message.removeprefix("Value error, ")
        got = item.get("input")
        suffix = "" if item["type"] in {"extra_forbidden", "missing", "value_error"} else f" (got {got!r})"
        lines.append(f"{source}: {key}: {message}{suffix}")
    return "\n".join(lines)


def validate(raw: Any, source: str = "params.yaml") -> Params:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: top level must be a mapping, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(_format_errors(source, error)) from None


def load_params(path: str | Path = DEFAULT_PARAMS) -> Params:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}:{where}: invalid YAML: {getattr(error, 'problem', error)}") from None
    return validate(raw, str(path))


def load_params_or_exit(path: str | Path = DEFAULT_PARAMS) -> Params:
    """For CLIs: print the problems, one line each, and exit 2 instead of a traceback."""
    try:
        return load_params(path)
    except ConfigError as error:
        print(f"error: {error}".replace("\n", "\nerror: "), file=sys.stderr)
        raise SystemExit(2) from None


def params_hash(params: Params) -> str:
    """sha256 of the resolved params (canonical JSON): provenance in reports and model cards."""
    import hashlib
    import json

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
