"""What a comparison over training seeds may claim, and how many seeds a claim would take.

For each training seed s: d_s = metric(A_s) - metric(B_s) on the same test images, and
se_s, the standard error of d_s from test sampling alone (the image bootstrap). The seed
is the unit of evidence:

- interval: the unweighted mean of d_s +- t_{n-1} * s / sqrt(n), where the per-seed spread
  s^2 = max(sample variance of d_s, mean of se_s^2). The floor keeps the interval from
  being narrower than the seeds' own test noise allows (small test sets give discrete
  accuracies, so a few seeds can agree exactly by chance).
- claim: a sign only with n >= MIN_SEEDS usable seeds, a noise estimate (s > 0) and an
  interval that excludes 0; otherwise "no claim below MIN_SEEDS seeds" or "no detectable
  difference at n seeds". A usable seed without a test SE leaves the interval without its
  floor: then the plain Student-t interval's own minimum, PLAIN_MIN_SEEDS, applies.
- power: the seeds a two-sided one-sample t-test at this spread needs to detect an effect
  with POWER (noncentral t), and the effect the current n detects.

MIN_SEEDS and the floor were chosen by simulation (benchmarks/claim_calibration.py;
docs/statistics.md). Every array function is vectorised over leading axes (studies).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

MIN_SEEDS = 2  # smallest n at which the floored interval is calibrated in every simulated scenario
PLAIN_MIN_SEEDS = 5  # the same for the plain t interval (no test SE, so no floor)
POWER = 0.8
MIN_EFFECT = 0.02  # default minimum effect of interest (accuracy)
MAX_SEEDS = 200  # seed counts above this are reported as "more than MAX_SEEDS"


def _t_quantile(level: float, df: np.ndarray) -> np.ndarray:
    from scipy import stats

    df = np.asarray(df, dtype=float)
    distinct, where = np.unique(np.maximum(df, 1), return_inverse=True)  # one ppf per df
    quantile = stats.t.ppf(0.5 + level / 2, distinct)[where].reshape(df.shape)
    return np.where(df >= 1, quantile, np.nan)


def seed_interval(diffs: np.ndarray, ses: np.ndarray, level: float = 0.95,
                  floor: bool = True) -> dict[str, np.ndarray]:
    """Interval of the mean paired difference over seeds (last axis), NaN d_s left out.

    Returns arrays `n` (usable seeds), `mean`, `low`, `high`, `spread` (the per-seed SD
    used), `test_se` (sqrt of the mean se_s^2: the floor) and `floored` (the floor set the
    spread). A seed's NaN se_s only leaves it out of the floor. With n < 2 the bounds,
    the spread and test_se are NaN. floor=False gives the plain Student-t interval (kept
    for the calibration comparison)."""
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level!r}")
    d = np.asarray(diffs, dtype=float)
    se = np.asarray(ses, dtype=float)
    if se.shape != d.shape:
        raise ValueError(f"diffs and ses differ in shape: {d.shape} vs {se.shape}")
    used = np.isfinite(d)
    n = used.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        highest = np.where(used, d, -np.inf).max(axis=-1, initial=-np.inf)
        lowest = np.where(used, d, np.inf).min(axis=-1, initial=np.inf)
        equal = highest == lowest  # exactly zero spread, not a rounding residue
        mean = np.where(equal, highest, np.where(used, d, 0.0).sum(axis=-1) / n)
        centred = np.where(used, d - mean[..., None], 0.0)
        variance = np.where(equal, 0.0, (centred**2).sum(axis=-1) / (n - 1))
        with_se = used & np.isfinite(se)
        noise = np.where(with_se, se**2, 0.0).sum(axis=-1) / with_se.sum(axis=-1)
        if not floor:
            noise = np.full_like(variance, np.nan)
        variance, noise = (np.where(n >= 2, v, np.nan) for v in (variance, noise))
        spread2 = np.fmax(variance, noise)  # a NaN floor (no se_s given): the variance alone
        half = _t_quantile(level, n - 1) * np.sqrt(spread2 / n)
    floored = noise > variance
    return {"n": n, "mean": mean, "low": mean - half, "high": mean + half,
            "spread": np.sqrt(spread2), "test_se": np.sqrt(noise), "floored": floored}


def claim_sign(low: np.ndarray, high: np.ndarray, n: np.ndarray, spread: np.ndarray,
               min_seeds: int = MIN_SEEDS) -> np.ndarray:
    """+1 / -1 where the interval excludes 0 on that side, n >= min_seeds and the spread
    is positive (a noise estimate exists); 0 otherwise."""
    allowed = (np.asarray(n) >= min_seeds) & (np.asarray(spread) > 0)
    positive, negative = allowed & (np.asarray(low) > 0), allowed & (np.asarray(high) < 0)
    return np.where(positive, 1, np.where(negative, -1, 0))


def power(effect: float, spread: float, n: np.ndarray | int, level: float = 0.95) -> np.ndarray:
    """Power of the two-sided one-sample t-test at `level` to detect a true mean `effect`
    when seeds spread with SD `spread` (noncentral t, n - 1 df); NaN for n < 2."""
    from scipy import stats

    n = np.asarray(n, dtype=float)
    df = np.maximum(n - 1, 1)
    critical = _t_quantile(level, n - 1)
    noncentrality = abs(effect) / spread * np.sqrt(n)
    # the wrong-sign tail as sf at -noncentrality: nct.cdf(-critical) returns NaN for large ones
    result = stats.nct.sf(critical, df, noncentrality) + stats.nct.sf(critical, df, -noncentrality)
    return np.where(n >= 2, result, np.nan)


def seeds_needed(effect: float, spread: float, level: float = 0.95, target: float = POWER,
                 max_seeds: int = MAX_SEEDS, min_seeds: int = MIN_SEEDS) -> int | None:
    """The fewest seeds (at least min_seeds, at least 2) with `target` power for `effect`
    at this spread; None when more than max_seeds would be needed or effect/spread give
    nothing to plan with (not finite, effect 0, spread <= 0)."""
    if not (math.isfinite(effect) and math.isfinite(spread)) or effect == 0 or spread <= 0:
        return None
    counts = np.arange(max(min_seeds, 2), max_seeds + 1)
    if counts.size == 0:
        return None
    reached = np.flatnonzero(power(effect, spread, counts, level) >= target)
    return int(counts[reached[0]]) if reached.size else None


def seeds_for_every(claims: Sequence[SeedClaim]) -> int | None:
    """The seeds at which every one of `claims` detects its min_effect with its power at its
    observed spread (the largest of their seeds_for_min_effect); None when there are none,
    or one has no spread to plan with or needs more than its max_seeds."""
    counts = [c.seeds_for_min_effect for c in claims]
    return max(counts) if counts and None not in counts else None


def detectable_effect(spread: float, n: int, level: float = 0.95, target: float = POWER) -> float:
    """The true mean difference that n seeds detect with `target` power at this spread;
    NaN for n < 2 or a spread that is not positive and finite."""
    from scipy import optimize

    if n < 2 or not math.isfinite(spread) or spread <= 0:
        return math.nan
    shortfall = lambda effect: float(power(effect, spread, n, level)) - target  # noqa: E731
    upper = spread
    while shortfall(upper) < 0:
        upper *= 2
    return float(optimize.brentq(shortfall, 0.0, upper, xtol=1e-10 * spread))


def seeds_wording(effect: float, seeds: int | None, max_seeds: int = MAX_SEEDS) -> str:
    """'0.02 would need ~48 seeds at this spread' (or 'more than 200 seeds')."""
    count = f"~{seeds}" if seeds is not None else f"more than {max_seeds}"
    return f"{abs(effect):.3g} would need {count} seeds at this spread"


REASONS = {
    "claimed": "the interval excludes 0",
    "below_min_seeds": "fewer usable seeds than the minimum for a claim",
    "no_noise_estimate": "every seed gave the same difference and no test SE was given",
    "below_plain_min_seeds": "a seed has no test SE, so the unfloored interval needs more seeds",
    "includes_zero": "the interval contains 0",
}


@dataclass(frozen=True)
class SeedClaim:
    """The seed-level reading of one comparison A - B."""

    n: int  # seeds with a finite d_s
    diffs: tuple[float, ...]  # d_s per seed, as given (NaN kept)
    ses: tuple[float, ...]  # se_s per seed: test sampling only
    mean: float
    low: float
    high: float
    level: float
    spread: float  # per-seed SD behind the interval and the power figures
    test_se: float  # sqrt(mean se_s^2), the floor of `spread`; NaN without se_s or with n < 2
    floored: bool  # the floor set the spread
    claim: int  # +1: A > B, -1: A < B, 0: no claim
    reason: str  # a key of REASONS
    min_seeds: int  # the minimum that applied: MIN_SEEDS, or PLAIN_MIN_SEEDS without test SEs
    has_test_se: bool  # every usable seed has a finite se_s (the floor applies)
    min_effect: float
    power: float
    detectable: float  # the effect n seeds detect with `power` at this spread
    seeds_for_observed: int | None  # None: more than max_seeds, or nothing to plan with
    seeds_for_min_effect: int | None
    max_seeds: int

    def reading(self) -> str:
        """One short line: the claim, or why none, plus the seeds min_effect would need."""
        if self.claim:
            return f"{'positive' if self.claim > 0 else 'negative'} difference at {self.n} seeds"
        if self.reason == "below_min_seeds":
            head = f"no claim below {self.min_seeds} seeds ({self.n} usable)"
        elif self.reason == "below_plain_min_seeds":
            head = f"no claim below {self.min_seeds} seeds without test SEs ({self.n} usable)"
        elif self.reason == "no_noise_estimate":
            head = f"no claim: {REASONS[self.reason]}"
        else:
            head = f"no detectable difference at {self.n} seeds"
        if not self.spread > 0:  # NaN with n < 2: no spread to plan with
            return head
        return f"{head}; {seeds_wording(self.min_effect, self.seeds_for_min_effect, self.max_seeds)}"

    def as_dict(self) -> dict:
        """JSON-ready: non-finite numbers become None."""

        def clean(value):
            if isinstance(value, float) and not math.isfinite(value):
                return None
            return list(map(clean, value)) if isinstance(value, tuple) else value

        fields = {name: clean(getattr(self, name)) for name in self.__dataclass_fields__}
        return fields | {"why": REASONS[self.reason], "reading": self.reading()}


def assess(diffs: Sequence[float], ses: Sequence[float], level: float = 0.95,
           min_effect: float = MIN_EFFECT, min_seeds: int = MIN_SEEDS, target: float = POWER,
           max_seeds: int = MAX_SEEDS) -> SeedClaim:
    """The interval, the claim and the power plan for one comparison (d_s, se_s per seed).
    A usable seed (finite d_s) without a finite se_s raises the minimum to PLAIN_MIN_SEEDS."""
    d = np.asarray(diffs, dtype=float).reshape(-1)
    se = np.asarray(ses, dtype=float).reshape(-1)
    found = {k: v.item() for k, v in seed_interval(d, se, level).items()}
    n, mean, spread = int(found["n"]), float(found["mean"]), float(found["spread"])
    has_test_se = bool(n) and bool(np.isfinite(se[np.isfinite(d)]).all())
    needed = min_seeds if has_test_se else max(min_seeds, PLAIN_MIN_SEEDS)
    sign = int(claim_sign(found["low"], found["high"], n, spread, needed))
    if sign:
        reason = "claimed"
    elif n < max(min_seeds, 2):
        reason = "below_min_seeds"
    elif not spread > 0:
        reason = "no_noise_estimate"
    elif n < needed:
        reason = "below_plain_min_seeds"
    else:
        reason = "includes_zero"

    def plan(effect: float) -> int | None:
        return seeds_needed(effect, spread, level, target, max_seeds, needed)

    return SeedClaim(
        n=n, diffs=tuple(map(float, d)), ses=tuple(map(float, se)), mean=mean,
        low=float(found["low"]), high=float(found["high"]), level=level, spread=spread,
        test_se=float(found["test_se"]), floored=bool(found["floored"]), claim=sign,
        reason=reason, min_seeds=needed, has_test_se=has_test_se, min_effect=min_effect, power=target,
        detectable=detectable_effect(spread, n, level, target),
        seeds_for_observed=plan(mean) if math.isfinite(mean) else None,
        seeds_for_min_effect=plan(min_effect), max_seeds=max_seeds)


class ClaimFigures:
    """The seed-level figures of a comparison read from its `claim` (a SeedClaim): one
    set of names for the pipeline's verdict rows and the study's comparisons."""

    claim: SeedClaim

    @property
    def per_seed(self) -> list[float]:
        return list(self.claim.diffs)

    @property
    def mean(self) -> float:
        return self.claim.mean

    @property
    def ci_low(self) -> float:
        return self.claim.low

    @property
    def ci_high(self) -> float:
        return self.claim.high

    @property
    def level(self) -> float:
        return self.claim.level

    @property
    def n_seeds(self) -> int:
        return self.claim.n
