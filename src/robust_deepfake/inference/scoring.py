"""Score image files with a loaded detector: p(fake) per image, optional Grad-CAM overlays.

The library core of `robust-deepfake predict` (model_ref loads the model, inputs lists
the files). Images are decoded and resized exactly as in training (`data.images`: any
mode to RGB, EXIF rotation, antialiased bilinear resize to the model's input size) and
scored in batches. Unreadable files are reported one by one and do not stop the others.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from robust_deepfake.data.images import BadImageError, open_rgb
from robust_deepfake.explain.figures import side_by_side
from robust_deepfake.explain.gradcam import compute_cams
from robust_deepfake.inference.inputs import FileError, to_model_input
from robust_deepfake.inference.model_ref import LoadedModel
from robust_deepfake.io import atomic_path


@dataclass
class Prediction:
    path: str
    p_fake: float
    label: str
    cam: str | None = None

    def record(self) -> dict:
        out = {"path": self.path, "p_fake": self.p_fake, "label": self.label}
        if self.cam is not None:
            out["cam"] = self.cam
        return out


@dataclass
class CamWriter:
    """One picture per image, names made unique: the image and its Grad-CAM overlay side by
    side (explain.figures.side_by_side), with p(fake), the label and the layer above."""

    directory: Path
    layer: str
    method: str = "gradcam"
    used: set[str] = field(default_factory=set)

    def name_for(self, path: str) -> Path:
        stem = Path(path).stem or "image"
        candidate, n = f"{stem}_cam.png", 1
        while candidate.lower() in self.used:
            n += 1
            candidate = f"{stem}_{n}_cam.png"
        self.used.add(candidate.lower())
        return self.directory / candidate

    def write(
        self, model: torch.nn.Module, batch: torch.Tensor, targets: list[int], originals: list[Image.Image],
        paths: list[str], p_fake: Sequence[float], threshold: float,
    ) -> list[str]:
        """The CAM of each image's predicted class (`targets`), over the image as displayed."""
        self.directory.mkdir(parents=True, exist_ok=True)
        maps = compute_cams(model, batch, self.layer, targets, method=self.method, batch_size=len(batch))
        written = []
        for cam, original, path, p, target in zip(maps, originals, paths, p_fake, targets, strict=True):
            width, height = original.size
            cam_full = np.asarray(Image.fromarray(np.ascontiguousarray(cam, dtype=np.float32)).resize(
                (width, height), Image.Resampling.BILINEAR), dtype=np.float32)
            label = "fake" if target else "real"
            caption = [f"p(fake) = {p:.3f}: {label} (threshold {threshold:g})",
                       f"{self.method} at {self.layer}, for the class '{label}'"]
            picture = side_by_side(np.asarray(original, dtype=np.float32) / 255.0, np.clip(cam_full, 0.0, 1.0),
                                   caption)
            target_path = self.name_for(path)
            with atomic_path(target_path) as tmp:  # umask permissions, never a half-written PNG
                Image.fromarray(picture).save(tmp, format="PNG")
            written.append(str(target_path))
        return written


def predict_files(
    loaded: LoadedModel,
    files: list[str],
    threshold: float = 0.5,
    batch_size: int = 64,
    cams: CamWriter | None = None,
    on_file_done: Callable[[], None] | None = None,
) -> Iterator[Prediction | FileError]:
    """Decode, resize and score `files` in batches, in order; yields one Prediction per
    readable file and one FileError per unreadable one (scoring goes on)."""
    model = loaded.model
    device = next(model.parameters()).device
    for start in range(0, len(files), batch_size):
        arrays, originals, names = [], [], []
        for name in files[start : start + batch_size]:
            try:
                image = open_rgb(name)
            except BadImageError as error:
                yield FileError(name, str(error).removeprefix(f"{name}: "))
            except OSError as error:  # e.g. permission denied
                yield FileError(name, error.strerror or str(error))
            else:
                arrays.append(to_model_input(image, loaded.image_size))
                names.append(name)
                if cams is not None:
                    originals.append(image)
            if on_file_done is not None:
                on_file_done()
        if not names:
            continue
        batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous().to(device)
        p_fake = model.p_fake(batch).cpu().double().numpy()
        labels = [int(p >= threshold) for p in p_fake]
        cam_paths: list[str | None] = [None] * len(names)
        if cams is not None:
            cam_paths = cams.write(model, batch, labels, originals, names, p_fake.tolist(), threshold)
        for name, p, label, cam in zip(names, p_fake, labels, cam_paths, strict=True):
            yield Prediction(name, float(p), "fake" if label else "real", cam)
