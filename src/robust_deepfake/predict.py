"""Score new images with a trained detector: p(fake) per image, optional Grad-CAM overlays.

The library behind `robust-deepfake predict`. A model reference is either

* an MLflow model URI (`models:/<name>@<alias>`, `models:/<name>/<version>`, `runs:/...`),
  loaded through the tracking store that params.yaml's `tracking` section names
  (`MLFLOW_TRACKING_URI` wins), or
* a local training output: `models/<variant>/model.pt` or its directory (with meta.json).

Images are decoded and resized exactly as in training (`data.images`: any mode to RGB,
EXIF rotation, antialiased bilinear resize to the model's input size) and scored in
batches. Unreadable files are reported one by one and do not stop the others.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from robust_deepfake.config import Params
from robust_deepfake.data.images import IMAGE_SUFFIXES, BadImageError, open_rgb

DEFAULT_ALIAS = "champion"
REPORT_ALIASES = ("champion", "challenger")
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:/")
_ALIAS_URI = re.compile(r"^models:/([^/@]+)@([^/@]+)$")


class ModelRefError(Exception):
    """The model reference cannot be resolved or loaded; str() says what to do."""


@dataclass
class LoadedModel:
    model: torch.nn.Module
    image_size: int
    description: str  # e.g. "models:/robust-deepfake-detector@champion (version 3)"


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
class FileError:
    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


def default_model_uri(params: Params) -> str:
    return f"models:/{params.tracking.registered_model}@{DEFAULT_ALIAS}"


def is_model_uri(reference: str) -> bool:
    return bool(_URI.match(reference)) and not Path(reference).exists()


# ---------------------------------------------------------------- model loading


def load_model(reference: str, params: Params, root: Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Resolve `reference` (MLflow URI or local models/<variant>[/model.pt]) to an eval-mode detector."""
    if is_model_uri(reference):
        loaded = _load_from_mlflow(reference, params, root)
    else:
        loaded = _load_local(Path(reference))
    loaded.model = loaded.model.to(device).eval()
    return loaded


def _load_local(path: Path) -> LoadedModel:
    from robust_deepfake.config import ModelConfig
    from robust_deepfake.models import load_detector, load_trained

    if not path.exists():
        raise ModelRefError(
            f"{path}: no such model file or directory (pass models/<variant>/model.pt, its directory, "
            "or a models:/<name>@<alias> URI)"
        )
    weights = path / "model.pt" if path.is_dir() else path
    meta_path = weights.parent / "meta.json"
    try:
        if weights.name == "model.pt":
            model, meta = load_trained(weights.parent)
        else:
            if not meta_path.exists():
                raise FileNotFoundError(f"{meta_path}: missing (written next to the weights by the train stage)")
            meta = json.loads(meta_path.read_text())
            detector = meta["detector"]
            model = load_detector(weights, ModelConfig(**detector["model"]), detector["split_at"])
    except FileNotFoundError as error:
        raise ModelRefError(str(error)) from None
    except (KeyError, ValueError, RuntimeError, OSError) as error:
        raise ModelRefError(f"{weights}: not a detector checkpoint with its meta.json ({error})") from None
    return LoadedModel(model, int(meta["detector"]["image_size"]), str(weights))


def _sqlite_file(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri.removeprefix("sqlite:///"))


def _load_from_mlflow(uri: str, params: Params, root: Path) -> LoadedModel:
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from robust_deepfake.tracking import configure

    store = configure(params.tracking, root)
    database = _sqlite_file(store)
    if database is not None and not database.exists():
        # opening a missing sqlite store would silently create an empty one
        raise ModelRefError(
            f"no MLflow store at {database}: run `make demo` (or `dvc repro`) from the repository root first, "
            "or pass --model models/<variant>/model.pt"
        )
    description = uri
    match = _ALIAS_URI.match(uri)
    if match:
        name, alias = match.groups()
        try:
            registered = MlflowClient().get_registered_model(name)
        except MlflowException:
            raise ModelRefError(
                f"no registered model {name!r} in {store}: run `dvc repro` first (the train stages register it)"
            ) from None
        aliases = dict(registered.aliases or {})
        if alias not in aliases:
            raise ModelRefError(_missing_alias_message(name, alias, aliases))
        description = f"{uri} (version {aliases[alias]})"
    try:
        pyfunc = mlflow.pyfunc.load_model(uri)
    except MlflowException as error:
        raise ModelRefError(f"{uri}: {error.message} (tracking store {store})") from None
    except OSError as error:
        raise ModelRefError(f"{uri}: cannot load the model's files ({error})") from None
    try:
        inner = pyfunc.unwrap_python_model()
        model, image_size = inner.model, int(inner.image_size)
    except (AttributeError, MlflowException):
        raise ModelRefError(f"{uri}: not a robust-deepfake detector (no DetectorPyfunc inside)") from None
    return LoadedModel(model, image_size, description)



def _missing_alias_message(name: str, alias: str, aliases: dict[str, str]) -> str:
    have = ", ".join(f"@{a}" for a in sorted(aliases)) or "none"
    fallback = "baseline" if "baseline" in aliases else (sorted(aliases)[0] if aliases else None)
    if alias in REPORT_ALIASES:
        hint = "run `dvc repro` (the report stage sets it)"
    else:
        hint = "set it with MlflowClient().set_registered_model_alias"
    alternative = (f"pass --model models:/{name}@{fallback}" if fallback
                   else "pass --model models/<variant>/model.pt")
    return f"no version of {name} has alias @{alias} yet (it has: {have}): {hint} or {alternative}"


# ---------------------------------------------------------------- inputs


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


# ---------------------------------------------------------------- scoring


def to_model_input(image, size: int) -> np.ndarray:
    """float32 (size, size, 3) in [0, 1]: the training resize (data.images.load_rgb_array)."""
    from PIL import Image

    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None)
    return np.asarray(image, dtype=np.float32) / 255.0


@dataclass
class CamWriter:
    """Grad-CAM overlays at each image's own size, one file per image, names made unique."""

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

    def write(self, model, batch: torch.Tensor, targets: list[int], originals: list, paths: list[str]) -> list[str]:
        from PIL import Image

        from robust_deepfake.cam_figures import overlay
        from robust_deepfake.explain import compute_cams

        self.directory.mkdir(parents=True, exist_ok=True)
        maps = compute_cams(model, batch, self.layer, targets, method=self.method, batch_size=len(batch))
        written = []
        for cam, original, path in zip(maps, originals, paths, strict=True):
            width, height = original.size
            cam_full = np.asarray(Image.fromarray(np.ascontiguousarray(cam, dtype=np.float32)).resize(
                (width, height), Image.Resampling.BILINEAR), dtype=np.float32)
            picture = overlay(np.asarray(original, dtype=np.float32) / 255.0, np.clip(cam_full, 0.0, 1.0))
            target = self.name_for(path)
            Image.fromarray(picture).save(target, format="PNG")
            written.append(str(target))
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
            cam_paths = cams.write(model, batch, labels, originals, names)
        for name, p, label, cam in zip(names, p_fake, labels, cam_paths, strict=True):
            yield Prediction(name, float(p), "fake" if label else "real", cam)


# ---------------------------------------------------------------- the command


@dataclass
class PredictOptions:
    inputs: list[str]
    model: str | None = None
    params: str | None = None
    threshold: float = 0.5
    json: bool = False
    cam_dir: str | None = None
    cam_layer: str | None = None
    batch_size: int = 64
    device: str = "auto"
    progress: bool = True


def run(options: PredictOptions) -> int:
    """`robust-deepfake predict`: print one line (or JSON record) per scored image on
    stdout, `error: <path>: <reason>` per unreadable file on stderr. Exit code 0 when every
    file was scored, 1 when some were not, 2 when nothing could start (params, model)."""
    from robust_deepfake.config import ConfigError, load_params
    from robust_deepfake.models import resolve_device
    from robust_deepfake.tracking import find_repo_root

    def error(message: str) -> None:
        print(f"error: {message}", file=sys.stderr)

    if not 0.0 <= options.threshold <= 1.0:
        error(f"--threshold must be in [0, 1], got {options.threshold}")
        return 2
    if options.params is not None:
        params_path = Path(options.params)
        root = find_repo_root(params_path.resolve().parent)
    else:
        root = find_repo_root()
        params_path = root / "params.yaml"
    try:
        params = load_params(params_path) if options.params is not None or params_path.exists() else Params()
    except ConfigError as problem:
        error(str(problem).replace("\n", "\nerror: "))
        return 2
    reference = options.model or default_model_uri(params)
    try:
        device = resolve_device(options.device)
        loaded = load_model(reference, params, root, device)
    except (ModelRefError, RuntimeError) as problem:
        error(str(problem))
        return 2
    cams = None
    if options.cam_dir is not None:
        from robust_deepfake.explain import CAM_METHODS, resolve_layer

        layer = options.cam_layer or params.cam.target_layer
        try:
            resolve_layer(loaded.model, layer)
        except ValueError as problem:
            error(f"--cam-layer: {problem}")
            return 2
        method = params.cam.method if params.cam.method in CAM_METHODS else "gradcam"
        cams = CamWriter(Path(options.cam_dir), layer, method)

    files, errors, any_folder = collect_images(options.inputs, exclude=cams.directory if cams else None)
    print(f"model: {loaded.description}, {loaded.image_size} px input; {len(files)} image(s)", file=sys.stderr)
    bar = None
    if options.progress and any_folder and files:
        from robust_deepfake.progress import progress

        bar = progress(total=len(files), desc="predict", unit="img")

    live_bar = bar is not None and sys.stderr.isatty()

    def emit(line: str, stream) -> None:
        if bar is not None and (live_bar or stream is sys.stderr):  # clear the bar, print, redraw
            bar.write(line, file=stream)
        else:
            print(line, file=stream, flush=stream is sys.stderr)

    for problem in errors:
        emit(f"error: {problem}", sys.stderr)
    records: list[dict] = []
    failed = len(errors)
    try:
        for item in predict_files(loaded, files, options.threshold, options.batch_size, cams,
                                  on_file_done=bar.update if bar is not None else None):
            if isinstance(item, FileError):
                failed += 1
                emit(f"error: {item}", sys.stderr)
            elif options.json:
                records.append(item.record())
            else:
                columns = [item.path, f"{item.p_fake:.4f}", item.label] + ([item.cam] if item.cam else [])
                emit("\t".join(columns), sys.stdout)
    finally:
        if bar is not None:
            bar.close()
    if options.json:
        print(json.dumps(records, indent=2))
    sys.stdout.flush()
    if failed:
        scored = len(files) - (failed - len(errors))
        error(f"{failed} input(s) could not be scored ({scored} scored)")
        return 1
    return 0
