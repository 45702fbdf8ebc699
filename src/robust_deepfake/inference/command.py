"""`robust-deepfake predict`: options in, lines or JSON out, an exit code.

Kept apart from the library (model_ref, inputs, scoring) so that code can score
images without the command's printing, progress bar and exit-code rules.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from robust_deepfake.inference.inputs import FileError, collect_images
from robust_deepfake.inference.model_ref import ModelRefError, default_model_uri, load_model
from robust_deepfake.inference.scoring import CamWriter, predict_files


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
    """Print one line (or JSON record) per scored image on stdout, `error: <path>: <reason>`
    per unreadable file on stderr. Exit code 0 when every file was scored, 1 when some
    were not, 2 when nothing could start (params, model)."""
    from robust_deepfake.config import ConfigError, Params, load_params
    from robust_deepfake.model.device import resolve_device
    from robust_deepfake.paths import find_repo_root

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
        device = resolve_device(options.device, key="--device")
        loaded = load_model(reference, params, root, device)
    except (ModelRefError, RuntimeError) as problem:
        error(str(problem))
        return 2
    cams = None
    if options.cam_dir is not None:
        from robust_deepfake.explain.gradcam import resolve_layer

        layer = options.cam_layer or params.cam.target_layer
        try:
            resolve_layer(loaded.model, layer)
        except ValueError as problem:
            error(f"--cam-layer: {problem}")
            return 2
        cams = CamWriter(Path(options.cam_dir), layer, params.cam.method)

    files, errors, any_folder = collect_images(options.inputs, exclude=cams.directory if cams else None)
    print(f"model: {loaded.description}, {loaded.image_size} px input; {len(files)} image(s)", file=sys.stderr)
    bar = None
    if options.progress and any_folder and files:
        from robust_deepfake.progress import progress

        bar = progress(total=len(files), desc="predict", unit="img")

    live_bar = bar is not None and sys.stderr.isatty()

    def emit(line: str, stream: TextIO) -> None:
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
