"""Attack budgets in their three representations, converted in one place.

* value: the float budget on [0, 1] images (what attacks use), e.g. 0.00784;
* label: `2/255` (what people read: tables, figure axes, error messages, the `eps_label`
  field of the JSON outputs);
* step: an integer for MLflow's step axis: the budget in grey levels (2/255 -> 2), so
  curves plot against k of k/255 and read back exactly (params require whole levels).

The clean row of every table is eps = 0, spelled `clean` where an attack name is
expected (CLEAN): one spelling of "no attack" across the pipeline.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction
from typing import Any

CLEAN = "clean"  # the attack name of the unattacked row (eps = 0)
RNG_STEPS_PER_GREY_LEVEL = 100  # rng_offset's unit, fixed: it seeds every attack's random start

_RATIO = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*/\s*(\d+(?:\.\d+)?)\s*$")


def parse_pixel_value(value: Any) -> float:
    """A budget from 0.0157, 4, or the conventional '4/255' (the inverse of `label`).
    ValueError for anything else, a boolean, or a non-finite number."""
    if isinstance(value, bool):
        raise ValueError("expected a number or 'k/255', got a boolean")
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        match = _RATIO.match(value)
        if match:
            denominator = float(match.group(2))
            if denominator == 0:
                raise ValueError(f"division by zero in {value!r}")
            return float(Fraction(match.group(1)) / Fraction(match.group(2)))
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"expected a number or 'k/255', got {value!r}") from None
    else:
        raise ValueError(f"expected a number or 'k/255', got {value!r}")
    if not math.isfinite(number):
        raise ValueError(f"expected a finite number or 'k/255', got {value!r}")
    return number


def label(eps: float) -> str:
    """`4/255` for budgets in [0, 1] on the 1/255 grid (or halves and quarters of it, which
    the MLflow step in hundredths of a grey level represents exactly), `0` for no budget,
    else the float (`0.01`, `1.5`, `-0.1`)."""
    if eps == 0:
        return "0"
    if 0 < eps <= 1:
        k = Fraction(eps * 255).limit_denominator(4)
        if abs(float(k) - eps * 255) < 1e-6:
            return f"{float(k):g}/255"
    return f"{eps:.6g}"


def grey_levels(eps: float) -> float:
    """The budget in grey levels of an 8-bit image (2/255 -> 2.0)."""
    return round(eps * 255, 6)


def is_whole_grey_level(eps: float) -> bool:
    """Budgets that survive saving as 8 bits: a finite multiple of 1/255."""
    return math.isfinite(eps) and abs(eps * 255 - round(eps * 255)) < 1e-6


def require_whole_grey_levels(values: list[float]) -> None:
    """ValueError unless every budget is a whole grey level k/255: the data are 8-bit images
    (with 8-bit rounding 0.5/255 would become 1/255, twice the budget, and anything below
    half a grey level would vanish), and MLflow logs k as the step of every metric-vs-eps curve."""
    for eps in values:
        if not is_whole_grey_level(eps):
            raise ValueError(
                f"{eps * 255:g}/255 is not a whole grey level; every attack budget must be k/255 "
                "(k = 1, 2, ...: the images are 8-bit and MLflow plots curves against k)"
            )


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
