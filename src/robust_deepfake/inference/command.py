"""`robust-deepfake predict`: options in, lines or JSON out, an exit code.

Kept apart from the library (model_ref, inputs, scoring) so that code can score
images without the command's printing, progress bar and exit-code rules.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from robust_deepfake.config import DEFAULT_PARAMS, ConfigError, Params, load_params, read_yaml
from robust_deepfake.explain.gradcam import resolve_layer
from robust_deepfake.inference.inputs import FileError, collect_images
from robust_deepfake.inference.model_ref import LoadedModel, ModelRefError, default_model_uri, load_model
from robust_deepfake.inference.scoring import CamWriter, predict_files
from robust_deepfake.model.device import resolve_device
from robust_deepfake.paths import find_repo_root
from robust_deepfake.progress import progress


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


class UsageError(Exception):
    """Nothing can be scored with these options (threshold, params, model, --cam folder or
    layer); str() names the option and what is wrong. `run` exits 2."""


@dataclass(frozen=True)
class _Ready:
    """What scoring needs, resolved from the options."""

    params: Params
    loaded: LoadedModel
    cams: CamWriter | None


def run(options: PredictOptions) -> int:
    """Print one line (or JSON record) per scored image on stdout, `error: <path>: <reason>`
    per unreadable file on stderr. Exit code 0 when every file was scored, 1 when some
    were not, 2 when nothing could start (params, model)."""
    try:
        ready = _resolve_options(options)
    except UsageError as problem:
        _error(str(problem))
        return 2
    cams = ready.cams
    files, errors, any_folder = collect_images(options.inputs, exclude=cams.directory if cams else None)
    print(f"model: {ready.loaded.description}, {ready.loaded.image_size} px input; {len(files)} image(s)",
          file=sys.stderr)
    printer = _Printer(total=len(files), bar=options.progress and any_folder and bool(files))
    for problem in errors:
        printer.emit(f"error: {problem}", sys.stderr)
    records: list[dict] = []
    failed = len(errors)
    try:
        for item in predict_files(ready.loaded, files, options.threshold, options.batch_size, cams,
                                  on_file_done=printer.advance):
            if isinstance(item, FileError):
                failed += 1
                printer.emit(f"error: {item}", sys.stderr)
            elif options.json:
                records.append(item.record())
            else:
                columns = [item.path, f"{item.p_fake:.4f}", item.label] + ([item.cam] if item.cam else [])
                printer.emit("\t".join(columns), sys.stdout)
    finally:
        printer.close()
    if options.json:
        print(json.dumps(records, indent=2))
    sys.stdout.flush()
    if failed:
        scored = len(files) - (failed - len(errors))
        _error(f"{failed} input(s) could not be scored ({scored} scored)")
        return 1
    return 0


def _error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)


def _resolve_options(options: PredictOptions) -> _Ready:
    """The params, the loaded model and the CAM writer, or a UsageError."""
    if not 0.0 <= options.threshold <= 1.0:
        raise UsageError(f"--threshold must be in [0, 1], got {options.threshold}")
    params, root = _load_params(options.params)
    if options.cam_dir is not None:
        problem = cam_dir_problem(Path(options.cam_dir), root)
        if problem:
            raise UsageError(f"--cam {options.cam_dir}: {problem}")
    reference = options.model or default_model_uri(params)
    try:
        device = resolve_device(options.device, key="--device")
        loaded = load_model(reference, params, root, device)
    except (ModelRefError, RuntimeError) as problem:
        raise UsageError(str(problem)) from None
    cams = _open_cam_writer(options, params, loaded) if options.cam_dir is not None else None
    return _Ready(params, loaded, cams)


def _load_params(path: str | None) -> tuple[Params, Path]:
    """`--params` (its repository is the root), else the current repository's params file
    when there is one, else the defaults."""
    if path is not None:
        params_path = Path(path)
        root = find_repo_root(params_path.resolve().parent)
    else:
        root = find_repo_root()
        params_path = root / DEFAULT_PARAMS
    try:
        params = load_params(params_path) if path is not None or params_path.exists() else Params()
    except ConfigError as problem:
        raise UsageError(str(problem).replace("\n", "\nerror: ")) from None
    return params, root


def _open_cam_writer(options: PredictOptions, params: Params, loaded: LoadedModel) -> CamWriter:
    """The overlay writer for --cam: the layer exists in this model, the folder is created."""
    layer = options.cam_layer or params.cam.target_layer
    try:
        resolve_layer(loaded.model, layer)
    except ValueError as problem:
        raise UsageError(f"--cam-layer: {problem}") from None
    try:
        Path(options.cam_dir).mkdir(parents=True, exist_ok=True)
    except OSError as problem:
        raise UsageError(f"--cam {options.cam_dir}: cannot create this folder ({problem.strerror or problem})") from None
    return CamWriter(Path(options.cam_dir), layer, params.cam.method)


class _Printer:
    """Result and error lines around an optional progress bar: on a terminal every line
    clears the bar and redraws it; in a log, results go straight to stdout and only
    stderr lines pass through the bar."""

    def __init__(self, total: int, bar: bool) -> None:
        self.bar = progress(total=total, desc="predict", unit="img") if bar else None
        self.live = self.bar is not None and sys.stderr.isatty()

    def emit(self, line: str, stream: TextIO) -> None:
        if self.bar is not None and (self.live or stream is sys.stderr):  # clear the bar, print, redraw
            self.bar.write(line, file=stream)
        else:
            print(line, file=stream, flush=stream is sys.stderr)

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.update()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ---------------------------------------------------------------- where --cam may write

_TEMPLATE = re.compile(r"\$\{[^}]*\}")
DATA_DIR = "data"  # the pipeline's data: data/raw (data.dvc) and data/splits (an out)


def _entries(items) -> list[str]:
    """Paths of a dvc.yaml deps/outs list: plain strings or {path: options}."""
    paths: list[str] = []
    for item in items or []:
        if isinstance(item, str):
            paths.append(item)
        elif isinstance(item, dict):
            paths.extend(str(key) for key in item)
    return paths


def dvc_tracked_paths(root: Path) -> list[tuple[str, str]]:
    """(pattern, what it is) for every path DVC tracks in the repository at `root`: the deps
    and outs of dvc.yaml's stages (a templated part such as `seed${item}` becomes the
    wildcard `seed*`) and the outs of the .dvc files, relative to `root`; a file that
    cannot be read as plain YAML adds nothing."""
    tracked: list[tuple[str, str]] = []
    try:
        stages = (read_yaml(root / "dvc.yaml") or {}).get("stages") or {}
    except (ConfigError, AttributeError):
        stages = {}
    for name, stage in stages.items():
        if not isinstance(stage, dict):
            continue
        body = stage.get("do") if isinstance(stage.get("do"), dict) else stage
        for kind, role in (("outs", "an out"), ("metrics", "an out"), ("plots", "an out"), ("deps", "a dep")):
            for path in _entries(body.get(kind)):
                tracked.append((_TEMPLATE.sub("*", path), f"{role} of stage {name} in dvc.yaml"))
    for dvc_file in _dvc_files(root):
        try:
            outs = (read_yaml(dvc_file) or {}).get("outs") or []
        except (ConfigError, AttributeError):
            continue
        for out in outs:
            if isinstance(out, dict) and out.get("path"):
                path = os.path.normpath(os.path.join(os.path.relpath(dvc_file.parent, root), out["path"]))
                tracked.append((Path(path).as_posix(), f"tracked by {dvc_file.relative_to(root).as_posix()}"))
    return tracked


def _dvc_files(root: Path) -> list[Path]:
    """The .dvc files of the repository: at its top level, and those git lists (tracked or
    not ignored); outside git, those within three folders of the top."""
    found = {path for path in root.glob("*.dvc") if path.is_file()}
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", "*.dvc"],
                                cwd=root, capture_output=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        listed = None
    if listed is not None and listed.returncode == 0:
        found.update(root / name for name in listed.stdout.decode(errors="replace").split("\0") if name)
    else:
        for directory, subdirs, names in os.walk(root):
            depth = len(Path(directory).relative_to(root).parts)
            subdirs[:] = [] if depth >= 3 else [d for d in subdirs if not d.startswith(".") and d != "node_modules"]
            found.update(Path(directory) / name for name in names if name.endswith(".dvc"))
    return sorted(path for path in found if path.is_file())


def _matches(parts: tuple[str, ...], pattern: str) -> bool:
    pattern_parts = Path(pattern).parts
    return len(parts) >= len(pattern_parts) and all(
        fnmatch.fnmatchcase(part, want) for part, want in zip(parts, pattern_parts, strict=False)
    )


def cam_dir_problem(directory: Path, root: Path) -> str | None:
    """Why --cam may not write to `directory`, or None. Overlays written into the data or a
    DVC-tracked path would become part of it: `*_cam.png` files in data/raw are training
    images after the next `dvc repro`. Checked against the repository of the current
    directory (`root`) and the one holding `directory`, symlinks resolved."""
    if directory.exists() and not directory.is_dir():
        return "is a file; --cam takes a folder to write <stem>_cam.png overlays into"
    real = Path(os.path.realpath(directory))
    existing = next((p for p in (real, *real.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        return f"{existing} is a file, so this folder cannot be created"
    roots = {Path(os.path.realpath(root))}
    if existing is not None:
        roots.add(Path(os.path.realpath(find_repo_root(existing))))
    for repo in sorted(roots):
        if not (repo / "dvc.yaml").is_file() or not real.is_relative_to(repo):
            continue
        parts = real.relative_to(repo).parts
        tracked = sorted(dvc_tracked_paths(repo), key=lambda item: item[1].startswith("a dep"))  # outs first
        hit = next(((pattern, what) for pattern, what in tracked if _matches(parts, pattern)), None)
        in_data = _matches(parts, DATA_DIR)
        if hit is None and not in_data:
            continue
        where = f"{repo / hit[0]} ({hit[1]})" if hit else f"{repo / DATA_DIR}, the pipeline's data folder"
        if in_data and hit:
            effect = "*_cam.png files there would become training and test images on the next `dvc repro`"
        elif in_data:
            effect = "overlays are kept out of the pipeline's data"
        else:
            effect = "overlays written there would change what DVC tracks"
        return f"is inside {where}: {effect}. Write them elsewhere, e.g. --cam /tmp/cams"
    return None
