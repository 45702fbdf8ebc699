"""Deterministic drawing primitives for the procedural face sample.

Everything here uses only +, -, *, /, sqrt, floor and comparisons on float64 arrays:
IEEE-754 makes those bit-exact on every x86-64/ARM CPU and SIMD width, whereas numpy's
vectorised exp/sin/log (and BLAS) may differ in the last bit between machines. That is
what lets a fresh clone regenerate the bundled sample byte for byte and verify it
against data.dvc instead of shipping 30 MB of PNGs in git.
"""

from __future__ import annotations

import numpy as np

Array = np.ndarray


def grid(size: int) -> tuple[Array, Array]:
    """Pixel-centre coordinates in [-1, 1] (x to the right, y downwards)."""
    axis = (np.arange(size, dtype=np.float64) + 0.5) * (2.0 / size) - 1.0
    return axis[None, :].repeat(size, 0), axis[:, None].repeat(size, 1)


def rotation(t: float) -> tuple[float, float]:
    """cos/sin of a small angle from the rational parametrisation (no trig functions)."""
    return (1.0 - t * t) / (1.0 + t * t), 2.0 * t / (1.0 + t * t)


def ellipse(
    xx: Array, yy: Array, cx: float, cy: float, a: float, b: float, rot: tuple[float, float] = (1.0, 0.0)
) -> Array:
    """Anti-aliased coverage in [0, 1] of a rotated ellipse with half-axes a, b."""
    c, s = rot
    dx, dy = xx - cx, yy - cy
    return ellipse_uv(dx * c + dy * s, dy * c - dx * s, a, b, 2.0 / xx.shape[1])


def ellipse_uv(u: Array, v: Array, a: float, b: float, pixel: float) -> Array:
    """Coverage of the axis-aligned ellipse (u/a)^2 + (v/b)^2 <= 1 in local coordinates."""
    r = np.sqrt((u / a) * (u / a) + (v / b) * (v / b))
    return np.clip(0.5 - (r - 1.0) * min(a, b) / pixel, 0.0, 1.0)


def feather(mask: Array, width_px: int) -> Array:
    """Soften a mask with repeated 3x3 box blurs (a cheap Gaussian without exp)."""
    out = mask
    for _ in range(width_px):
        out = box_blur(out)
    return out


def box_blur(image: Array) -> Array:
    """3x3 mean filter with edge padding, summed in a fixed order."""
    padded = np.pad(image, [(1, 1), (1, 1)] + [(0, 0)] * (image.ndim - 2), mode="edge")
    h, w = image.shape[:2]
    total = np.zeros_like(image)
    for dy in range(3):
        for dx in range(3):
            total = total + padded[dy : dy + h, dx : dx + w]
    return total / 9.0


def resize_bilinear(image: Array, size: int) -> Array:
    """Bilinear resize (align_corners=False) of an (H, W[, C]) array to size x size."""
    h, w = image.shape[:2]

    def coords(n_in: int) -> tuple[Array, Array, Array]:
        pos = (np.arange(size, dtype=np.float64) + 0.5) * (n_in / size) - 0.5
        pos = np.clip(pos, 0.0, n_in - 1.0)
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, pos - lo

    y0, y1, fy = coords(h)
    x0, x1, fx = coords(w)
    if image.ndim == 3:
        fy, fx = fy[:, None, None], fx[None, :, None]
    else:
        fy, fx = fy[:, None], fx[None, :]
    top = image[y0][:, x0] * (1.0 - fx) + image[y0][:, x1] * fx
    bottom = image[y1][:, x0] * (1.0 - fx) + image[y1][:, x1] * fx
    return top * (1.0 - fy) + bottom * fy


def smooth_noise(rng: np.random.Generator, size: int, cells: int, channels: int = 1) -> Array:
    """Low-frequency texture: uniform noise on a cells x cells lattice, bilinearly upsampled."""
    lattice = rng.random((cells, cells, channels))
    return resize_bilinear(lattice, size) - 0.5


def gaussianish(rng: np.random.Generator, shape: tuple[int, ...]) -> Array:
    """Zero-mean, unit-variance noise: Irwin-Hall sum of four uniforms (no log/exp needed)."""
    total = rng.random(shape) + rng.random(shape) + rng.random(shape) + rng.random(shape)
    return (total - 2.0) * np.sqrt(3.0)


def triangle(x: Array) -> Array:
    """Periodic triangle wave in [0, 1] with period 1 (a trig-free stand-in for cos)."""
    return np.abs(2.0 * (x - np.floor(x + 0.5)))


def ordered_mean(array: Array, axis: int) -> Array:
    """Mean along one axis by sequential elementwise adds: numpy's reductions may change
    their summation order with the CPU's SIMD width, elementwise adds cannot."""
    moved = np.moveaxis(array, axis, 0)
    total = np.zeros_like(moved[0])
    for item in moved:
        total = total + item
    return total / moved.shape[0]


def blend(base: Array, color: Array | tuple[float, float, float], mask: Array) -> Array:
    m = mask[..., None] if mask.ndim == 2 else mask
    return base * (1.0 - m) + np.asarray(color, dtype=np.float64) * m


def to_uint8(image: Array) -> Array:
    return np.rint(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
