"""Attack budgets in their three representations, converted in one place.

* value: the float budget on [0, 1] images (what attacks use), e.g. 0.00784;
* label: `2/255` (what people read: tables, figure axes, JSON keys of older outputs);
* step: an integer for MLflow's step axis: the budget in grey levels (2/255 -> 2), so
  curves plot against k of k/255 and read back exactly (config requires whole levels).

The clean row of every table is eps = 0, spelled `clean` where an attack name is
expected (CLEAN): one spelling of "no attack" across the pipeline.
"""

from __future__ import annotations

from fractions import Fraction

from robust_deepfake.config import parse_pixel_value

CLEAN = "clean"  # the attack name of the unattacked row (eps = 0)
RNG_STEPS_PER_GREY_LEVEL = 100  # rng_offset's unit, fixed: it seeds every attack's random start


def label(eps: float) -> str:
    """`4/255` for budgets on the 1/255 grid (or halves and quarters of it, which the
    MLflow step in hundredths of a grey level represents exactly), else the float."""
    if eps == 0:
        return "0"
    k = Fraction(eps * 255).limit_denominator(4)
    if abs(float(k) - eps * 255) < 1e-6:
        return f"{float(k):g}/255"
    return f"{eps:.6g}"


def from_label(text: str) -> float:
    """Inverse of `label` (also accepts plain floats)."""
    return parse_pixel_value(text)


def grey_levels(eps: float) -> float:
    """The budget in grey levels of an 8-bit image (2/255 -> 2.0)."""
    return round(eps * 255, 6)


def to_step(eps: float) -> int:
    """MLflow step: eps in whole grey levels (4/255 -> 4). ValueError for a budget off the
    k/255 grid (params reject those at load time)."""
    if not is_whole_grey_level(eps):
        raise ValueError(f"eps {eps:.6g} ({eps * 255:g}/255) is not a whole grey level: no MLflow step for it")
    return int(round(eps * 255))


def from_step(step: int) -> float:
    """Inverse of `to_step`."""
    return step / 255


def rng_offset(eps: float) -> int:
    """A fixed integer per budget (hundredths of a grey level) for seeding the attack's
    random start: it must not change when the MLflow step's unit does."""
    return int(round(eps * 255 * RNG_STEPS_PER_GREY_LEVEL))


def is_whole_grey_level(eps: float) -> bool:
    """Budgets that survive saving as 8 bits: a multiple of 1/255."""
    return abs(eps * 255 - round(eps * 255)) < 1e-6
