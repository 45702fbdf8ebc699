"""Is the regularized model more robust? The seed-level interval every verdict row uses.

Training noise dominates test-sampling noise on small data: the same seed on two
machines has flipped the sign of a per-image "significant" difference. So the unit of
evidence is the training seed. For each seed s both variants share initial weights and
data order, and

    d_s = metric(reg_s) - metric(baseline_s)

on the same test images (per attack: averaged over the attacked eps). The verdict is
the mean of d_s with an interval that contains both noises: the union of the Student-t
interval over seeds (n - 1 degrees of freedom: the seed-to-seed spread) and a two-level
bootstrap (resample seeds, then test images within each seed: the test-sampling noise,
which a t-interval misses when every seed happens to give the same d_s, as small test
sets with discrete accuracies do). A side is *favoured* only when that interval excludes
0, and otherwise the report says "no detectable difference at n seeds" together with the
effect size n seeds could detect (80% power at the observed spread). Per-seed intervals
over test images stay available, labelled as test sampling only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from robust_deepfake.bootstrap import percentile_ci
from robust_deepfake.config import EvalConfig

HIGHER_IS_BETTER = {"accuracy": True, "f1": True, "auc": True, "asr": False, "score": True,
                    "iinc_stability": False, "iinc_localization": False}
POWER = 0.8
TWO_LEVEL_SALT = 7919  # the seed-level bootstrap's stream, apart from the image bootstrap's


def t_interval(values: np.ndarray, level: float) -> tuple[float, float, float]:
    """(mean, low, high): Student-t interval of the mean; NaN bounds with fewer than 2 values."""
    from scipy import stats

    values = np.asarray(values, dtype=float)
    mean = float(values.mean()) if values.size else math.nan
    if values.size < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf(0.5 + level / 2, values.size - 1) * values.std(ddof=1) / math.sqrt(values.size))
    return mean, mean - half, mean + half


def detectable_effect(values: np.ndarray, level: float, power: float = POWER) -> float:
    """The smallest mean difference n seeds would detect with `power` at this spread
    (one-sample t, two-sided): (t_{1-a/2} + t_{power}) * sd / sqrt(n)."""
    from scipy import stats

    values = np.asarray(values, dtype=float)
    if values.size < 2 or values.std(ddof=1) == 0:
        return math.nan  # no spread: nothing to scale an effect size by
    df = values.size - 1
    return float((stats.t.ppf(0.5 + level / 2, df) + stats.t.ppf(power, df)) * values.std(ddof=1)
                 / math.sqrt(values.size))


class SeedInterval:
    """What every paired difference over seeds with a t-interval shares: the subclass, a
    frozen dataclass, declares `seeds`, `per_seed`, `mean`, `ci_low`, `ci_high`, `level`
    and `detectable` (left out here so that it keeps its own field order)."""

    seeds: list[int]
    ci_low: float
    ci_high: float
    detectable: float

    @property
    def n_seeds(self) -> int:
        return len(self.seeds)

    @property
    def excludes_zero(self) -> bool:
        return self.ci_low > 0 or self.ci_high < 0

    def no_difference_wording(self) -> str:
        """The reading when the interval contains 0: what these seeds could have detected."""
        if math.isnan(self.detectable):
            return f"no detectable difference at {self.n_seeds} seeds (every seed gave the same difference)"
        return (f"no detectable difference at {self.n_seeds} seeds (could detect about "
                f"{self.detectable:.3f} with {POWER:.0%} power)")


@dataclass(frozen=True)
class SeedDifference(SeedInterval):
    """reg - baseline for one attack and metric, over paired seeds."""

    attack: str  # `clean` for eps = 0
    metric: str
    seeds: list[int]
    per_seed: list[float]  # d_s
    mean: float
    ci_low: float  # t-interval over seeds: includes training variance
    ci_high: float
    level: float
    detectable: float  # effect size these seeds could detect (80% power)
    per_image_ci: list[tuple[float, float]] = field(default_factory=list)  # per seed, test sampling only

    def _better(self, diff: float) -> str:
        return "reg" if (diff > 0) == HIGHER_IS_BETTER[self.metric] else "baseline"

    @property
    def favours(self) -> str:
        """The side the seed-level interval favours, or 'neither'."""
        return self._better(self.mean) if self.excludes_zero else "neither"

    @property
    def seeds_favouring(self) -> dict[str, int]:
        counts = {"reg": 0, "baseline": 0, "tie": 0}
        for d in self.per_seed:
            counts["tie" if d == 0 else self._better(d)] += 1
        return counts

    def wording(self) -> str:
        """The plain-language reading of this row."""
        if math.isnan(self.ci_low):
            return f"not decidable from {self.n_seeds} seed(s): at least 2 are needed for an interval"
        if self.excludes_zero:
            return f"favours {self.favours} ({self.n_seeds} seeds)"
        return self.no_difference_wording()

    def as_dict(self) -> dict:
        return {"attack": self.attack, "metric": self.metric, "mean": self.mean, "ci": [self.ci_low, self.ci_high],
                "level": self.level, "seeds": self.seeds, "per_seed": self.per_seed, "detectable": self.detectable,
                "per_image_ci": [list(ci) for ci in self.per_image_ci], "excludes_zero": self.excludes_zero,
                "favours": self.favours, "seeds_favouring": self.seeds_favouring}


def two_level_interval(replicates: list[np.ndarray], level: float, seed: int) -> tuple[float, float]:
    """Bootstrap seeds, then images: replicate b draws the seeds with replacement and
    takes each drawn seed's b-th image-bootstrap replicate of its d_s."""
    stacked = np.stack(replicates)  # (S, B)
    n_seeds, n_boot = stacked.shape
    rng = np.random.default_rng(seed)
    drawn = rng.integers(0, n_seeds, size=(n_boot, n_seeds))
    values = stacked[drawn, np.arange(n_boot)[:, None]].mean(axis=1)
    return percentile_ci(values[np.isfinite(values)], level) if np.isfinite(values).any() else (math.nan, math.nan)


def paired_difference(seeds: list[int], per_seed: list[float], per_image: list[tuple[float, float]], attack: str, metric: str,
            config: EvalConfig, replicates: list[np.ndarray] | None = None) -> SeedDifference:
    """reg - baseline over paired seeds: the t-interval over `per_seed`, widened to the
    two-level bootstrap interval of `replicates` (one array per seed) when given."""
    values = np.array(per_seed)
    mean, low, high = t_interval(values, config.ci)
    if replicates and len(replicates) >= 2 and config.n_bootstrap and math.isfinite(low):
        boot_low, boot_high = two_level_interval(replicates, config.ci, config.seed + TWO_LEVEL_SALT)
        low, high = min(low, boot_low), max(high, boot_high)
    return SeedDifference(attack, metric, list(seeds), [float(v) for v in per_seed], mean, low, high, config.ci,
                          detectable_effect(values, config.ci), per_image)
