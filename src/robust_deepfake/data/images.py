"""Decoding images the same way everywhere (split check, training, attacks, predict)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from robust_deepfake.errors import StageError

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


def load_mask_array(path: str | Path | None, size: int, whole_image: bool = False) -> np.ndarray:
    """float32 (size, size) in [0, 1]; no mask file -> all ones if whole_image else zeros."""
    if not path:
        return np.full((size, size), 1.0 if whole_image else 0.0, dtype=np.float32)
    with Image.open(path) as image:
        grey = to_rgb(image).convert("L")
    if grey.size != (size, size):
        grey = grey.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(grey, dtype=np.float32) / 255.0
