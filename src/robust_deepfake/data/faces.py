"""Procedural faces: identity parameters and a renderer at any resolution.

A face is drawn from parameters (geometry, skin, hair, eyes, mouth, background,
lighting), so the same identity can be rendered again at another resolution or with one
attribute changed: that is how the sample's fakes are derived from its reals.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from robust_deepfake.data.raster import (
    Array,
    blend,
    box_blur,
    ellipse,
    ellipse_uv,
    grid,
    rotation,
    smooth_noise,
    triangle,
)

SKIN_TONES = [
    (0.96, 0.80, 0.69),
    (0.92, 0.72, 0.58),
    (0.84, 0.62, 0.48),
    (0.72, 0.50, 0.36),
    (0.55, 0.37, 0.26),
    (0.40, 0.27, 0.19),
]
HAIR_COLORS = [
    (0.08, 0.06, 0.05),
    (0.25, 0.15, 0.08),
    (0.45, 0.30, 0.15),
    (0.80, 0.66, 0.40),
    (0.60, 0.25, 0.10),
    (0.62, 0.62, 0.62),
]
IRIS_COLORS = [(0.30, 0.18, 0.08), (0.20, 0.35, 0.60), (0.25, 0.45, 0.25), (0.40, 0.40, 0.45)]
LIP_COLORS = [(0.70, 0.32, 0.32), (0.60, 0.28, 0.30), (0.78, 0.42, 0.40), (0.50, 0.25, 0.22)]


@dataclass(frozen=True)
class Face:
    """Everything needed to draw one identity under one capture condition."""

    cx: float
    cy: float
    half_width: float
    half_height: float
    tilt: float
    skin: tuple[float, float, float]
    hair: tuple[float, float, float]
    hair_volume: float
    hair_length: float
    hair_frequency: float
    eye_y: float
    eye_dx: float
    eye_w: float
    eye_h: float
    iris: tuple[float, float, float]
    brow_lift: float
    nose_len: float
    mouth_y: float
    mouth_w: float
    mouth_h: float
    smile: float
    lips: tuple[float, float, float]
    glasses: bool
    background: tuple[float, float, float]
    background_cells: int
    background_strength: float
    clothes: tuple[float, float, float]
    light_x: float
    light_y: float
    light_gain: float


def _pick(rng: np.random.Generator, palette: list[tuple[float, float, float]], jitter: float):
    base = palette[int(rng.integers(len(palette)))]
    return tuple(float(np.clip(c + (rng.random() - 0.5) * 2 * jitter, 0.0, 1.0)) for c in base)


def random_face(rng: np.random.Generator, framing: str = "portrait") -> Face:
    """Draw an identity. `framing` mimics a source's capture: FFHQ-like portraits are
    large and centred on soft backgrounds, CelebA-like crops are smaller, off-centre and
    on busier backgrounds."""
    u = rng.random
    if framing == "portrait":
        scale, cx, cy = 0.40 + 0.06 * u(), (u() - 0.5) * 0.08, 0.02 + 0.06 * u()
        cells, strength = 3 + int(rng.integers(3)), 0.10 + 0.10 * u()
    else:
        scale, cx, cy = 0.32 + 0.06 * u(), (u() - 0.5) * 0.24, -0.04 + 0.12 * u()
        cells, strength = 6 + int(rng.integers(6)), 0.20 + 0.15 * u()
    half_width = scale
    half_height = scale * (1.22 + 0.16 * u())
    return Face(
        cx=cx,
        cy=cy,
        half_width=half_width,
        half_height=half_height,
        tilt=(u() - 0.5) * 0.24,
        skin=_pick(rng, SKIN_TONES, 0.05),
        hair=_pick(rng, HAIR_COLORS, 0.05),
        hair_volume=1.06 + 0.22 * u(),
        hair_length=u(),
        hair_frequency=10.0 + 14.0 * u(),
        eye_y=-half_height * (0.06 + 0.14 * u()),
        eye_dx=half_width * (0.36 + 0.10 * u()),
        eye_w=half_width * (0.17 + 0.06 * u()),
        eye_h=0.45 + 0.15 * u(),
        iris=_pick(rng, IRIS_COLORS, 0.05),
        brow_lift=0.8 + 0.5 * u(),
        nose_len=half_height * (0.25 + 0.12 * u()),
        mouth_y=half_height * (0.45 + 0.12 * u()),
        mouth_w=half_width * (0.34 + 0.16 * u()),
        mouth_h=0.035 + 0.03 * u(),
        smile=(u() - 0.3) * 1.2,
        lips=_pick(rng, LIP_COLORS, 0.05),
        glasses=bool(u() < 0.15),
        background=tuple(float(0.15 + 0.75 * u()) for _ in range(3)),
        background_cells=cells,
        background_strength=strength,
        clothes=tuple(float(0.1 + 0.8 * u()) for _ in range(3)),
        light_x=(u() - 0.5) * 0.7,
        light_y=(u() - 0.5) * 0.5,
        light_gain=0.85 + 0.25 * u(),
    )


def with_changes(face: Face, **changes: object) -> Face:
    return replace(face, **changes)


@dataclass
class Rendered:
    image: Array  # (S, S, 3) float64 in roughly [0, 1], before camera noise
    regions: dict[str, Array]  # soft masks of the parts an editor may touch


def render(face: Face, size: int, texture_rng: np.random.Generator) -> Rendered:
    """Draw `face` at size x size. `texture_rng` drives the background texture only, so a
    re-render with the same generator state reproduces the same background."""
    xx, yy = grid(size)
    rot = rotation(face.tilt)
    c, s = rot
    f = face

    # Background: base colour, soft texture, linear light falloff.
    texture = smooth_noise(texture_rng, size, f.background_cells, 3)
    gradient = (xx * f.light_x + yy * f.light_y)[..., None]
    image = np.asarray(f.background) + texture * f.background_strength + 0.15 * gradient
    image = image * np.ones((size, size, 3))

    # Shoulders and neck.
    shoulders = ellipse(xx, yy, f.cx, 1.15, 0.85, 0.45)
    image = blend(image, f.clothes, shoulders)
    neck = ellipse(xx, yy, f.cx, f.cy + f.half_height * 0.95, f.half_width * 0.45, f.half_height * 0.5)
    image = blend(image, tuple(0.85 * v for v in f.skin), neck)

    # Hair behind the head: a larger ellipse, optionally long, with a strand texture.
    hair_mask = ellipse(
        xx, yy, f.cx, f.cy - f.half_height * 0.12, f.half_width * f.hair_volume,
        f.half_height * (0.98 + 0.1 * f.hair_volume), rot,
    )
    if f.hair_length > 0.5:
        long_hair = ellipse(
            xx, yy, f.cx, f.cy + f.half_height * 0.45, f.half_width * (f.hair_volume + 0.08),
            f.half_height * (0.5 + 0.5 * f.hair_length), rot,
        )
        hair_mask = np.maximum(hair_mask, long_hair)
    strands = triangle((xx * c + yy * s) * f.hair_frequency)
    hair_color = np.asarray(f.hair) * (0.80 + 0.35 * strands[..., None])
    image = blend(image, hair_color, hair_mask)

    # Head with ears, shaded by the light direction.
    ears = np.maximum(
        ellipse(xx, yy, f.cx - f.half_width * 0.98, f.cy, f.half_width * 0.16, f.half_height * 0.18, rot),
        ellipse(xx, yy, f.cx + f.half_width * 0.98, f.cy, f.half_width * 0.16, f.half_height * 0.18, rot),
    )
    image = blend(image, tuple(0.92 * v for v in f.skin), ears)
    head = ellipse(xx, yy, f.cx, f.cy, f.half_width, f.half_height, rot)
    du, dv = (xx - f.cx) / f.half_width, (yy - f.cy) / f.half_height
    shade = 1.0 + 0.25 * (du * f.light_x * 2 + dv * f.light_y * 2) - 0.12 * (du * du + dv * dv)
    image = blend(image, np.asarray(f.skin) * shade[..., None], head)

    # Fringe: hair over the top of the forehead.
    fringe = ellipse(
        xx, yy, f.cx, f.cy - f.half_height * 0.92, f.half_width * 0.92, f.half_height * 0.32, rot
    ) * head
    image = blend(image, hair_color, fringe)

    def at(dx: float, dy: float) -> tuple[float, float]:
        return f.cx + dx * c - dy * s, f.cy + dx * s + dy * c

    # Eyes: sclera, iris, pupil, brows.
    for side in (-1.0, 1.0):
        ex, ey = at(side * f.eye_dx, f.eye_y)
        eye_h = f.eye_w * f.eye_h
        sclera = ellipse(xx, yy, ex, ey, f.eye_w, eye_h, rot)
        image = blend(image, (0.93, 0.92, 0.90), sclera)
        iris = ellipse(xx, yy, ex, ey, eye_h * 0.95, eye_h * 0.95) * sclera
        image = blend(image, f.iris, iris)
        pupil = ellipse(xx, yy, ex, ey, eye_h * 0.45, eye_h * 0.45) * sclera
        image = blend(image, (0.03, 0.03, 0.03), pupil)
        bx, by = at(side * f.eye_dx, f.eye_y - eye_h * (1.4 + f.brow_lift))
        brow = ellipse(xx, yy, bx, by, f.eye_w * 1.15, f.eye_w * 0.16, rot)
        image = blend(image, tuple(0.7 * v for v in f.hair), brow)
        if f.glasses:
            ring = np.clip(
                ellipse(xx, yy, ex, ey, f.eye_w * 1.45, f.eye_w * 1.1, rot)
                - ellipse(xx, yy, ex, ey, f.eye_w * 1.3, f.eye_w * 0.95, rot),
                0.0, 1.0,
            )
            image = blend(image, (0.08, 0.08, 0.1), ring)

    # Nose: a shaded ridge and two nostrils.
    nx, ny = at(0.0, f.eye_y + f.nose_len * 0.6)
    ridge = ellipse(xx, yy, nx, ny, f.half_width * 0.09, f.nose_len * 0.7, rot)
    image = blend(image, np.asarray(f.skin) * (0.86 + 0.1 * f.light_x), ridge * 0.6)
    for side in (-1.0, 1.0):
        px, py = at(side * f.half_width * 0.08, f.eye_y + f.nose_len * 1.25)
        nostril = ellipse(xx, yy, px, py, f.half_width * 0.05, f.half_width * 0.03, rot)
        image = blend(image, tuple(0.45 * v for v in f.skin), nostril)

    # Mouth: a curved band (smile bends it), upper and lower lip.
    mx, my = at(0.0, f.mouth_y)
    pixel = 2.0 / size
    u = (xx - mx) * c + (yy - my) * s
    un = u / f.mouth_w
    v = (yy - my) * c - (xx - mx) * s + f.smile * f.mouth_h * (un * un)
    lips = ellipse_uv(u, v, f.mouth_w, f.mouth_h, pixel)
    image = blend(image, f.lips, lips)
    gap = ellipse_uv(u, v, f.mouth_w * 0.92, f.mouth_h * 0.18, pixel) * lips
    image = blend(image, (0.25, 0.08, 0.08), gap)
    mouth_region = ellipse(xx, yy, mx, my, f.mouth_w * 1.5, f.mouth_w * 0.8, rot)
    # The band an eye/brow editor re-synthesises: both eyes and brows.
    eyes = ellipse(
        xx, yy, *at(0.0, f.eye_y - f.eye_w * f.eye_h), f.eye_dx + f.eye_w * 1.8, f.eye_w * 1.5, rot
    )

    # Global illumination gain and a slight warm/cool cast.
    image = image * f.light_gain
    inner_face = ellipse(
        xx, yy, *at(0.0, f.half_height * 0.12), f.half_width * 0.82, f.half_height * 0.78, rot
    )
    return Rendered(
        image=image,
        regions={
            "head": head,
            "inner_face": inner_face,
            "eyes": eyes,
            "mouth": mouth_region,
            "hair": np.clip(hair_mask - head * 0.85, 0.0, 1.0) + fringe,
        },
    )


def soften(image: Array, amount: float) -> Array:
    """Mix in a 3x3 box blur: optics/compression blur of lower-quality captures."""
    return image * (1.0 - amount) + box_blur(image) * amount
