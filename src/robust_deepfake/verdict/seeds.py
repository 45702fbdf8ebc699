"""A difference between two variants over paired training seeds: every verdict row.

Training noise dominates test-sampling noise on small data: the same seed on two machines
has flipped the sign of a per-image "significant" difference. So the unit of evidence is
the training seed. The variants of a seed share initial weights and data order, and for a
pair (A, B)

    d_s = metric(A_s) - metric(B_s)

on the same test images (per attack: averaged over the attacked eps), with se_s, the
test-sampling SE of d_s (the SD of its image-bootstrap replicates). The interval, the
claim and the power plan come from verdict/claims.assess: the interval is never narrower
than the seeds' own test noise allows, and no sign is claimed below its minimum number of
seeds. The pairs are asked in the order of COMPARISONS; a pair whose variants are not both
present (no placebo in older outputs) has no rows.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from robust_deepfake.verdict.claims import MIN_EFFECT, ClaimFigures, SeedClaim, assess

HIGHER_IS_BETTER = {"accuracy": True, "f1": True, "auc": True, "asr": False, "evasion_rate": False, "score": True,
                    "iinc_stability": False, "iinc_localization": False}


@dataclass(frozen=True)
class Pair:
    """first - second, and the question that difference answers."""

    first: str
    second: str
    question: str

    @property
    def key(self) -> str:
        """`reg_placebo`: the name of this pair in report.json and MLflow."""
        return f"{self.first}_{self.second}"

    @property
    def label(self) -> str:
        return f"{self.first} − {self.second}"


COMPARISONS = (
    Pair("reg", "placebo", "Does the perturbation matter?"),
    Pair("placebo", "baseline", "Does the second pass matter?"),
    Pair("reg", "baseline", "Do both together matter?"),
)


def present_pairs(variants: Iterable[str]) -> list[Pair]:
    """The COMPARISONS whose two variants are both among `variants`, in question order."""
    have = set(variants)
    return [p for p in COMPARISONS if p.first in have and p.second in have]


def paired_seeds(models: Iterable, pair: Pair) -> list[int]:
    """The seeds with both variants of `pair` among `models` (objects with .variant, .seed)."""
    found: dict[str, set[int]] = {}
    for key in models:
        found.setdefault(key.variant, set()).add(key.seed)
    return sorted(found.get(pair.first, set()) & found.get(pair.second, set()))


def t_interval(values: np.ndarray, level: float) -> tuple[float, float, float]:
    """(mean, low, high): Student-t interval of a mean over seeds; NaN bounds with fewer
    than 2 values. Descriptive only (a variant's level in the figures and the study's
    curves); a difference between variants is read through `seed_difference`."""
    from scipy import stats

    values = np.asarray(values, dtype=float)
    mean = float(values.mean()) if values.size else math.nan
    if values.size < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf(0.5 + level / 2, values.size - 1) * values.std(ddof=1) / math.sqrt(values.size))
    return mean, mean - half, mean + half


@dataclass(frozen=True)
class SeedDifference(ClaimFigures):
    """pair.first - pair.second for one attack and metric, over the seeds with both."""

    pair: Pair
    attack: str  # `clean` for eps = 0; `select_by` for the champion score
    metric: str
    seeds: list[int]
    claim: SeedClaim  # d_s, se_s, the interval, the claim and the power plan
    per_image_ci: list[tuple[float, float]]  # per seed: test sampling only

    @property
    def per_seed_se(self) -> list[float]:
        return list(self.claim.ses)

    @property
    def claimed(self) -> bool:
        return self.claim.claim != 0

    def better(self, diff: float) -> str:
        """The side a difference of this sign is better for."""
        return self.pair.first if (diff > 0) == HIGHER_IS_BETTER[self.metric] else self.pair.second

    @property
    def favours(self) -> str:
        """The side the claim favours, or 'neither'."""
        return self.better(self.claim.claim) if self.claimed else "neither"

    @property
    def seeds_favouring(self) -> dict[str, int]:
        counts = {self.pair.first: 0, self.pair.second: 0, "tie": 0}
        for d in self.per_seed:
            if math.isfinite(d):
                counts["tie" if d == 0 else self.better(d)] += 1
        return counts

    def reading(self) -> str:
        """A few words: `favours reg`, `no detectable difference`, `no claim below 2 seeds`."""
        claim = self.claim
        if self.claimed:
            return f"favours {self.favours}"
        if claim.reason in ("below_min_seeds", "below_plain_min_seeds"):
            return f"no claim below {claim.min_seeds} seeds" + ("" if claim.has_test_se else " (no test SE)")
        if claim.reason == "no_noise_estimate":
            return "no claim: no noise estimate"
        return "no detectable difference"

    def as_dict(self) -> dict:
        """JSON-ready: the comparison, its claim (claims.SeedClaim.as_dict, whose `reading`
        adds the power plan) and the short `verdict`."""
        return {"comparison": self.pair.key, "attack": self.attack, "metric": self.metric, "seeds": self.seeds,
                **self.claim.as_dict(), "per_image_ci": [list(ci) for ci in self.per_image_ci],
                "favours": self.favours, "seeds_favouring": self.seeds_favouring, "verdict": self.reading()}


def seed_difference(pair: Pair, attack: str, metric: str, seeds: Sequence[int], per_seed: Sequence[float],
                    ses: Sequence[float], level: float, min_effect: float = MIN_EFFECT,
                    per_image_ci: Sequence[tuple[float, float]] = ()) -> SeedDifference:
    """The verdict row of one pair, attack and metric: claims.assess over the seeds' d_s and se_s."""
    return SeedDifference(pair, attack, metric, list(seeds), assess(per_seed, ses, level, min_effect),
                          [tuple(ci) for ci in per_image_ci])
