"""The bundled sample: a small, synthetic, DFFD-shaped deepfake dataset.

DFFD cannot be downloaded here, so the pipeline ships a generator instead of data. It
writes procedural faces from two "real" capture styles and four fake methods, each a
distinct artifact family modelled on DFFD's:

| method          | DFFD analogue     | artifact                                              | mask         |
|-----------------|-------------------|-------------------------------------------------------|--------------|
| pggan_like      | PGGAN             | whole image synthesised at half resolution, upsampled  | all ones     |
|                 |                   | with a transposed-conv style 2x2 checkerboard          |              |
| stylegan_like   | StyleGAN          | whole image synthesised, smooth, plus a periodic       | all ones     |
|                 |                   | generator fingerprint (peaks in the spectrum)          |              |
| faceapp_like    | FaceApp / StarGAN | one attribute (smile, eyes, hair, brows) re-synthesised | edited region|
|                 |                   | at low resolution and pasted into the real photo       |              |
| faceswap_like   | FaceSwap          | inner face of another identity, imperfectly colour-    | blended face |
|                 |                   | matched and resampled, blended into the real photo     |              |

Fakes derived from a real photo share its identity (file stem `id00042` -> fakes
`id00042-1`), so the split can keep identities on one side. The artifacts are local
textures, not global colour shifts: a logistic regression on per-channel mean/std stays
near chance (tests/test_sample.py) while a CNN learns them.

Generation is bit-reproducible across machines (see render.py), and PNGs are written
uncompressed so that zlib versions cannot change the bytes either.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from robust_deepfake.data.faces import Face, random_face, render, soften, with_changes
from robust_deepfake.data.raster import (
    Array,
    feather,
    gaussianish,
    grid,
    ordered_mean,
    resize_bilinear,
    to_uint8,
)
from robust_deepfake.progress import progress as bar

REAL_SOURCES = {"ffhq_like": "portrait", "celeba_like": "crop"}
FAKE_METHODS = {
    "pggan_like": "whole-image synthesis, half-resolution render upsampled with a 2x2 checkerboard",
    "stylegan_like": "whole-image synthesis with a periodic spectral fingerprint",
    "faceapp_like": "attribute edit: one region re-synthesised at low resolution and pasted",
    "faceswap_like": "face swap: another identity's inner face blended in",
}
WHOLE_IMAGE_METHODS = {"pggan_like", "stylegan_like"}

# Stream ids for np.random.default_rng([seed, STREAM, index]): every image has its own
# independent generator, so any image can be re-rendered alone and in any order.
_REAL, _TEXTURE, _EDIT, _SWAP, _PGGAN, _STYLEGAN, _FINGERPRINT, _PICK = range(1, 9)


@dataclass(frozen=True)
class SampleSpec:
    seed: int = 0
    image_size: int = 64
    real_per_source: int = 500
    fakes_per_method: int = 320

    def __post_init__(self) -> None:
        if self.image_size < 16 or self.image_size % 2:
            raise ValueError(f"image_size must be an even number >= 16, got {self.image_size}")
        if self.real_per_source < 1 or self.fakes_per_method < 1:
            raise ValueError("real_per_source and fakes_per_method must be >= 1")
        if self.fakes_per_method > self.real_per_source * len(REAL_SOURCES):
            raise ValueError("fakes_per_method cannot exceed the number of real identities")

    @property
    def n_real(self) -> int:
        return self.real_per_source * len(REAL_SOURCES)

    @property
    def n_images(self) -> int:
        return self.n_real + self.fakes_per_method * len(FAKE_METHODS)


@dataclass(frozen=True)
class SampleImage:
    relpath: str  # relative to the raw dir, e.g. fake/faceapp_like/id00042-1.png
    pixels: Array  # uint8 (S, S, 3)
    mask: Array | None  # uint8 (S, S), 0/255, for fakes


def _rng(spec: SampleSpec, stream: int, index: int) -> np.random.Generator:
    return np.random.default_rng([spec.seed, stream, index])


def _capture(image: Array, rng: np.random.Generator, framing: str) -> Array:
    """Camera pipeline of a real photo: optics blur plus sensor noise of random strength."""
    if framing == "portrait":
        blurred, sigma = soften(image, 0.25 * rng.random()), (0.5 + 3.0 * rng.random()) / 255
    else:
        blurred, sigma = soften(image, 0.1 + 0.3 * rng.random()), (1.0 + 4.0 * rng.random()) / 255
    return blurred + gaussianish(rng, image.shape) * sigma


def _post_noise(image: Array, rng: np.random.Generator) -> Array:
    """Mild noise on synthetic images, so noise level alone does not separate the classes."""
    return image + gaussianish(rng, image.shape) * ((0.3 + 2.5 * rng.random()) / 255)


def _identity_source(spec: SampleSpec, identity: int) -> str:
    return list(REAL_SOURCES)[identity // spec.real_per_source]


def real_face(spec: SampleSpec, identity: int) -> tuple[Face, Array]:
    """Identity parameters and the (float) real photo of `identity`."""
    framing = REAL_SOURCES[_identity_source(spec, identity)]
    rng = _rng(spec, _REAL, identity)
    face = random_face(rng, framing)
    drawn = render(face, spec.image_size, _rng(spec, _TEXTURE, identity))
    return face, _capture(drawn.image, rng, framing)


def _picked_identities(spec: SampleSpec, method_index: int) -> Array:
    """Which real identities a derived method edits (distinct within the method)."""
    return _rng(spec, _PICK, method_index).permutation(spec.n_real)[: spec.fakes_per_method]


def _edit(spec: SampleSpec, identity: int, index: int) -> tuple[Array, Array]:
    face, photo = real_face(spec, identity)
    rng = _rng(spec, _EDIT, index)
    attribute = ["smile", "eyes", "hair", "brows"][int(rng.integers(4))]
    if attribute == "smile":
        edited, region = with_changes(face, smile=face.smile + (0.8 + 0.6 * rng.random()) * (1 if face.smile < 0.4 else -1)), "mouth"
    elif attribute == "eyes":
        iris = tuple(float(v) for v in 0.15 + 0.6 * rng.random(3))
        edited, region = with_changes(face, iris=iris, glasses=not face.glasses), "eyes"
    elif attribute == "hair":
        hair = tuple(float(v) for v in 0.05 + 0.8 * rng.random(3))
        edited, region = with_changes(face, hair=hair), "hair"
    else:
        edited, region = with_changes(face, brow_lift=face.brow_lift + 0.6 + 0.4 * rng.random()), "eyes"
    low = spec.image_size // 4
    synthesised = resize_bilinear(render(edited, low, _rng(spec, _TEXTURE, identity)).image, spec.image_size)
    synthesised = synthesised * (1.0 + (rng.random(3) - 0.5) * 0.24)  # the editor's colour cast
    # the editor's own decoder upsamples too: a (weaker) checkerboard inside the edit only
    synthesised = synthesised * (1.0 + (0.06 + 0.04 * rng.random()) * _checkerboard(rng, spec.image_size))
    full = render(edited, spec.image_size, _rng(spec, _TEXTURE, identity)).regions[region]
    before = render(face, spec.image_size, _rng(spec, _TEXTURE, identity)).regions[region]
    mask = feather(np.maximum(full, before), 1)
    return photo * (1 - mask[..., None]) + synthesised * mask[..., None], mask


def _swap(spec: SampleSpec, identity: int, index: int) -> tuple[Array, Array]:
    target, photo = real_face(spec, identity)
    rng = _rng(spec, _SWAP, index)
    donor = random_face(rng, REAL_SOURCES[_identity_source(spec, identity)])
    mix = 0.5 * rng.random()  # how well the colour transfer matched the skin
    donor = with_changes(
        donor,
        cx=target.cx, cy=target.cy, half_width=target.half_width,
        half_height=target.half_height, tilt=target.tilt,
        skin=tuple(mix * t + (1 - mix) * d for t, d in zip(target.skin, donor.skin)),
        light_x=target.light_x, light_y=target.light_y, light_gain=target.light_gain,
    )
    low = int(round(spec.image_size * (0.3 + 0.2 * rng.random()) / 2)) * 2
    drawn = render(donor, low, _rng(spec, _TEXTURE, identity))
    face = resize_bilinear(drawn.image, spec.image_size)
    region = render(target, spec.image_size, _rng(spec, _TEXTURE, identity)).regions["inner_face"]
    mask = feather(region, 2)
    return photo * (1 - mask[..., None]) + face * mask[..., None], mask


def _framing(rng: np.random.Generator) -> str:
    return list(REAL_SOURCES.values())[int(rng.integers(len(REAL_SOURCES)))]


def _pggan(spec: SampleSpec, index: int) -> Array:
    rng = _rng(spec, _PGGAN, index)
    face = random_face(rng, _framing(rng))
    low = render(face, spec.image_size // 2, _rng(spec, _PGGAN + 100, index)).image
    image = resize_bilinear(low, spec.image_size)
    image = image * (1.0 + (0.06 + 0.04 * rng.random()) * _checkerboard(rng, spec.image_size))
    return _post_noise(image, rng)


def _checkerboard(rng: np.random.Generator, size: int) -> Array:
    """A transposed-convolution artifact: a random zero-mean 2x2 kernel tiled over the
    image, peak magnitude 1, shape (size, size, 1)."""
    kernel = rng.random((2, 2)) - 0.5
    kernel = kernel - ordered_mean(ordered_mean(kernel, 0), 0)
    kernel = kernel / (np.abs(kernel).max() + 1e-9)
    return np.tile(kernel, (size // 2, size // 2))[..., None]


def _fingerprint(spec: SampleSpec) -> Array:
    """The stylegan_like generator's fixed 8x8 periodic pattern (one per dataset seed)."""
    coarse = gaussianish(_rng(spec, _FINGERPRINT, 0), (4, 4, 3))
    tile = resize_bilinear(coarse, 8)
    return tile - ordered_mean(ordered_mean(tile, 0), 0)


def _stylegan(spec: SampleSpec, index: int, fingerprint: Array) -> Array:
    rng = _rng(spec, _STYLEGAN, index)
    face = random_face(rng, _framing(rng))
    image = soften(render(face, spec.image_size, _rng(spec, _STYLEGAN + 100, index)).image, 0.5)
    shift = rng.integers(8, size=2)
    reps = spec.image_size // 8 + 1
    pattern = np.roll(np.tile(fingerprint, (reps, reps, 1)), tuple(shift), axis=(0, 1))
    image = image + pattern[: spec.image_size, : spec.image_size] * ((6.0 + 4.0 * rng.random()) / 255)
    return _post_noise(_droplet(image, rng), rng)


def _droplet(image: Array, rng: np.random.Generator) -> Array:
    """StyleGAN's tell-tale 'water droplet': a bright blob ringed by a dark halo (the
    generator's normalization artifact), somewhere in the frame."""
    size = image.shape[0]
    xx, yy = grid(size)
    cx, cy = (rng.random() - 0.5) * 1.6, (rng.random() - 0.5) * 1.6
    radius = (4.0 + 3.0 * rng.random()) * 2.0 / size
    r2 = ((xx - cx) * (xx - cx) + (yy - cy) * (yy - cy)) / (radius * radius)
    bump = np.clip(1.0 - r2, 0.0, 1.0)
    halo = np.clip(1.0 - r2 / 2.25, 0.0, 1.0) - bump  # the ring between r and 1.5 r
    strength = 0.15 + 0.1 * rng.random()
    return image + (bump * bump * strength - halo * halo * strength * 1.5)[..., None]


def _binary_mask(mask: Array) -> Array:
    return np.where(mask > 0.5, 255, 0).astype(np.uint8)


def iter_sample(spec: SampleSpec):
    """Yield every SampleImage of the dataset in a fixed order."""
    full = np.full((spec.image_size, spec.image_size), 255, dtype=np.uint8)
    for identity in range(spec.n_real):
        _, photo = real_face(spec, identity)
        source = _identity_source(spec, identity)
        yield SampleImage(f"real/{source}/id{identity:05d}.png", to_uint8(photo), None)
    for index in range(spec.fakes_per_method):
        yield SampleImage(f"fake/pggan_like/syn_pg{index:05d}.png", to_uint8(_pggan(spec, index)), full)
    fingerprint = _fingerprint(spec)
    for index in range(spec.fakes_per_method):
        image = _stylegan(spec, index, fingerprint)
        yield SampleImage(f"fake/stylegan_like/syn_sg{index:05d}.png", to_uint8(image), full)
    for method_index, (method, derive) in enumerate([("faceapp_like", _edit), ("faceswap_like", _swap)]):
        for index, identity in enumerate(_picked_identities(spec, method_index)):
            image, mask = derive(spec, int(identity), index)
            yield SampleImage(
                f"fake/{method}/id{int(identity):05d}-{method_index + 1}.png",
                to_uint8(image),
                _binary_mask(mask),
            )


def _save_png(array: Array, path: Path) -> None:
    # compress_level=0: stored deflate blocks, identical bytes whatever zlib build runs.
    Image.fromarray(array).save(path, format="PNG", compress_level=0)


def write_sample(spec: SampleSpec, out_dir: str | Path, progress: bool = True) -> Path:
    """Write the sample tree to out_dir atomically (a temp dir renamed into place).

    Refuses to overwrite an existing out_dir: the caller decides what to do with it.
    """
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} already exists; move it away first")
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        for item in bar(iter_sample(spec), total=spec.n_images, desc="sample", disable=not progress, unit="img"):
            path = tmp / item.relpath
            path.parent.mkdir(parents=True, exist_ok=True)
            _save_png(item.pixels, path)
            if item.mask is not None:
                method = item.relpath.split("/")[1]
                mask_path = tmp / "masks" / method / Path(item.relpath).name
                mask_path.parent.mkdir(parents=True, exist_ok=True)
                _save_png(item.mask, mask_path)
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def spec_to_meta(spec: SampleSpec) -> dict:
    return {"generator": "robust_deepfake.data.sample", **asdict(spec)}


def spec_from_meta(meta: dict) -> SampleSpec:
    fields = {k: v for k, v in meta.items() if k != "generator"}
    return SampleSpec(**fields)
