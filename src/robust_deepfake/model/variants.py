"""What each variant (paths.VARIANTS) trains with.

`baseline`: plain cross-entropy, one pass. `reg`: the shallow-statistics regularizer
(`reg.*`). `placebo`: the reg recipe with epsilon 0 (RegConfig.as_placebo): the same
alpha-weighted second pass through the late layers, with its fresh dropout masks,
BatchNorm updates and (mode random) direction draws, but no perturbation. So reg and
placebo differ only in the perturbation, and placebo and baseline only in the second pass.
"""

from __future__ import annotations

from robust_deepfake.config import RegConfig


def training_reg(reg: RegConfig, variant: str) -> RegConfig | None:
    """The regularizer config `variant`'s training step gets (None: the baseline's one pass)."""
    if variant == "baseline":
        return None
    if variant == "placebo":
        return reg.as_placebo()
    if variant == "reg":
        return reg
    raise ValueError(f"unknown variant {variant!r}")

