"""Split CSVs -> batches of [0, 1] image tensors.

No normalization here: the model normalizes as its first layer, so attacks and CAMs
work in pixel space. Small sets (the bundled sample: ~30 MB at 64 px) are decoded once
into one uint8 tensor and batched by indexing, which keeps a 2-core CPU busy with the
model instead of PNG decoding; sets over `data.cache_max_mb` stream from disk, decoded
in `data.num_workers` DataLoader worker processes (or one background thread with 0).
Batches are made by data/loader.py.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from robust_deepfake.data.images import load_mask_array, load_rgb_array, unit_float
from robust_deepfake.errors import MissingInputError

SPLIT_COLUMNS = ["path", "label", "source", "group", "mask_path"]


@dataclass(frozen=True)
class SplitRow:
    """One row of a split CSV: an image, its label (1 = fake), its source (generator or
    real set), its identity group and its mask file ('' when there is none)."""

    path: str
    label: int
    source: str
    group: str
    mask_path: str


def read_split(csv_path: str | Path, root: str | Path | None = None) -> list[SplitRow]:
    """Rows of a split CSV. Paths in it are relative to the repository root (where DVC
    runs the stages); pass `root` to read them from elsewhere."""
    csv_path = Path(csv_path)
    if not csv_path.exists():
        raise MissingInputError(f"{csv_path}: split file not found; run `dvc repro split` first")
    with csv_path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing = set(SPLIT_COLUMNS) - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{csv_path}: missing columns {sorted(missing)}")
        def resolve(path: str) -> str:
            return path if not path or root is None or Path(path).is_absolute() else str(Path(root) / path)

        return [
            SplitRow(resolve(row["path"]), int(row["label"]), row["source"], row["group"], resolve(row["mask_path"]))
            for row in reader
        ]


class ImageSet(Dataset):
    """One split at one image size; decoded lazily, or all at once when `cache`."""

    def __init__(self, samples: list[SplitRow], image_size: int, cache: bool) -> None:
        self.samples = samples
        self.image_size = image_size
        self.labels = torch.tensor([s.label for s in samples], dtype=torch.int64)
        self.pixels: torch.Tensor | None = None
        if cache:
            array = np.stack([load_rgb_array(s.path, image_size) for s in samples])
            self.pixels = torch.from_numpy(array).permute(0, 3, 1, 2).contiguous()

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        array = load_rgb_array(self.samples[index].path, self.image_size)
        return torch.from_numpy(array).permute(2, 0, 1), self.samples[index].label, index

    def pixels_at(self, indices: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, S, S) images at the given positions (decoding them if not cached)."""
        if self.pixels is not None:
            return self.pixels[indices]
        return torch.stack([self[int(i)][0] for i in indices])

    def images(self, indices: torch.Tensor) -> torch.Tensor:
        """float [0, 1] images at the given positions (decoding them if not cached)."""
        return unit_float(self.pixels_at(indices))

    def masks(self, indices: torch.Tensor) -> torch.Tensor:
        """float (N, S, S) ground-truth masks; fakes without a mask file are unknown (NaN)
        so callers can skip them (the DFFD ingest writes all-ones masks for whole-image
        synthesis, so those have files)."""
        out = []
        for i in indices.tolist():
            sample = self.samples[i]
            if sample.label == 0:
                out.append(np.zeros((self.image_size, self.image_size), np.float32))
            elif sample.mask_path:
                out.append(load_mask_array(sample.mask_path, self.image_size, image_path=sample.path))
            else:
                out.append(np.full((self.image_size, self.image_size), np.nan, np.float32))
        return torch.from_numpy(np.stack(out))


def cache_fits(n_images: int, image_size: int, cache_max_mb: int) -> bool:
    return n_images * 3 * image_size * image_size <= cache_max_mb * 1024 * 1024


def load_split(
    splits_dir: str | Path, split: str, image_size: int, cache_max_mb: int, root: str | Path | None = None
) -> ImageSet:
    samples = read_split(Path(splits_dir) / f"{split}.csv", root)
    return ImageSet(samples, image_size, cache=cache_fits(len(samples), image_size, cache_max_mb))
