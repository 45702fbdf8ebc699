"""Decoding images the same way everywhere (split check, training, attacks, predict)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from robust_deepfake.errors import StageError

if TYPE_CHECKING:
    import torch

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}


class BadImageError(StageError, ValueError):
    """A file that cannot be decoded into an RGB image; str() names the file and why."""


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB: 16-bit and 32-bit grey are rescaled (a plain
    convert would clip them to white), palettes and alpha are flattened."""
    if image.mode in {"I;16", "I;16B", "I;16L", "I;16N", "I"}:
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        image = Image.fromarray(np.rint(np.clip(array / top, 0, 1) * 255).astype(np.uint8))
    elif image.mode == "F":
        array = np.asarray(image, dtype=np.float64)
        top = 1.0 if array.max() <= 1.0 else 255.0
        image = Image.fromarray(np.rint(np.clip(array / top, 0, 1) * 255).astype(np.uint8))
    elif image.mode == "P":
        image = image.convert("RGBA")
    return image if image.mode == "RGB" else image.convert("RGB")


def open_rgb(path: str | Path) -> Image.Image:
    """Fully decode `path` as RGB (EXIF rotation applied), or raise BadImageError."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise BadImageError(f"{path}: empty file (0 bytes)")
        with Image.open(path) as image:
            image.load()  # forces a full decode: truncated files fail here, not later
            image = ImageOps.exif_transpose(image)
            return to_rgb(image)
    except BadImageError:
        raise
    except UnidentifiedImageError:
        raise BadImageError(f"{path}: not an image file") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise BadImageError(f"{path}: cannot decode ({error})") from None


def load_rgb_array(path: str | Path, size: int) -> np.ndarray:
    """uint8 (size, size, 3); resized with antialiased bilinear like torchvision's Resize."""
    image = open_rgb(path)
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None)
    return np.asarray(image, dtype=np.uint8)


class MaskSizeError(StageError, ValueError):
    """A ground-truth mask whose size differs from its image's; str() names both files and sizes."""


def mask_size_problem(mask_path: str | Path, mask_size: tuple[int, int], image_path: str | Path,
                      image_size: tuple[int, int]) -> str | None:
    """A mask must have its image's size (as displayed, after EXIF rotation): the bundled
    sample and the DFFD ingest both write masks at their image's size, so a mismatch is
    a mask that belongs to another image or another resolution, not one to stretch."""
    if tuple(mask_size) == tuple(image_size):
        return None
    return (f"{mask_path}: mask is {mask_size[0]}x{mask_size[1]} px but its image {image_path} is "
            f"{image_size[0]}x{image_size[1]} px")


MASK_SIZE_HINT = ("a mask must have its image's size (stretching it would misplace the manipulated region): "
                  "re-create the mask at the image's size, or re-run the ingest (`robust-deepfake data ingest-dffd`, "
                  "whose --resize resizes images and masks together)")


def display_size(path: str | Path) -> tuple[int, int]:
    """(width, height) as open_rgb returns it (EXIF rotation applied), from the header only."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            if image.getexif().get(0x0112) in (5, 6, 7, 8):  # rotated by 90 or 270 degrees
                width, height = height, width
    except (OSError, ValueError, SyntaxError) as error:
        raise BadImageError(f"{path}: cannot read the image size ({error})") from None
    return width, height


def load_mask_array(path: str | Path | None, size: int, whole_image: bool = False,
                    image_path: str | Path | None = None) -> np.ndarray:
    """float32 (size, size) in [0, 1]; no mask file -> all ones if whole_image else zeros.

    With `image_path`, the mask must have that image's size (else MaskSizeError naming
    both); it is then resized to `size` exactly as the image is."""
    if not path:
        return np.full((size, size), 1.0 if whole_image else 0.0, dtype=np.float32)
    grey = open_rgb(path).convert("L")
    if image_path:
        problem = mask_size_problem(path, grey.size, image_path, display_size(image_path))
        if problem:
            raise MaskSizeError(f"{problem}; {MASK_SIZE_HINT}")
    if grey.size != (size, size):
        grey = grey.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(grey, dtype=np.float32) / 255.0


def unit_float(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [0, 1], bit-identical on every device.

    On the CPU this is `x.float() / 255`. Elsewhere a 256-entry table with the CPU's bits
    is looked up: CUDA divides by a scalar as a multiplication by its reciprocal, which
    differs from `/ 255` in the last bit for 126 of the 256 values."""
    if pixels.device.type == "cpu":
        return pixels.float().div_(255)
    return by_table(pixels)


def by_table(pixels: torch.Tensor) -> torch.Tensor:
    """`unit_float` by table lookup (what every device but the CPU uses)."""
    return _unit_table(pixels.device)[pixels.int()]


@lru_cache(maxsize=None)
def _unit_table(device: torch.device) -> torch.Tensor:
    import torch  # deferred: image decoding (the split check, the DFFD ingest) needs no torch

    return torch.arange(256, dtype=torch.float32).div_(255).to(device)
