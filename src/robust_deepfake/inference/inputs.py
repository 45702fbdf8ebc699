"""Which files to score, and how one decoded image becomes model input.

Kept apart from scoring so the file walk (folders, symlink loops, the CAM folder to
skip) and the training-identical resize can be tested without a model.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from robust_deepfake.data.images import IMAGE_SUFFIXES


@dataclass
class FileError:
    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


def collect_images(inputs: Iterable[str], exclude: Path | None = None) -> tuple[list[str], list[FileError], bool]:
    """Expand folders (recursively, image suffixes only, sorted) and keep explicitly named
    files whatever their suffix. Returns (files in order, errors, whether a folder was given)."""
    files: list[str] = []
    errors: list[FileError] = []
    seen: set[str] = set()
    any_folder = False
    excluded = exclude.resolve() if exclude is not None else None

    def add(name: str) -> None:
        key = os.path.realpath(name)
        if key not in seen:
            seen.add(key)
            files.append(name)

    for item in inputs:
        path = Path(item)
        if path.is_dir():
            any_folder = True
            found = [f for f in _walk_images(item) if excluded is None or not _is_within(f, excluded)]
            if not found:
                errors.append(FileError(item, f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in this folder"))
            for name in found:
                add(name)
        elif path.exists():
            add(item)
        else:
            errors.append(FileError(item, "no such file or directory"))
    return files, errors, any_folder


def _walk_images(folder: str) -> Iterator[str]:
    visited: set[str] = set()
    for directory, subdirs, names in os.walk(folder, followlinks=True):
        real = os.path.realpath(directory)
        if real in visited:  # a symlink loop
            subdirs[:] = []
            continue
        visited.add(real)
        subdirs.sort()
        for name in sorted(names):
            if Path(name).suffix.lower() in IMAGE_SUFFIXES:
                yield os.path.join(directory, name)


def _is_within(name: str, folder: Path) -> bool:
    return Path(os.path.realpath(name)).is_relative_to(folder)


def to_model_input(image: Image.Image, size: int) -> np.ndarray:
    """float32 (size, size, 3) in [0, 1]: the training resize (data.images.load_rgb_array)."""
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None)
    return np.asarray(image, dtype=np.float32) / 255.0
