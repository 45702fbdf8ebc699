"""Resolve a model reference to an eval-mode detector, or explain why it cannot be.

Kept apart from scoring because it is the only part that knows about MLflow and the
models/ layout. A reference is either

* an MLflow model URI (`models:/<name>@<alias>`, `models:/<name>/<version>`, `runs:/...`),
  loaded through the tracking store that params.yaml's `tracking` section names
  (`MLFLOW_TRACKING_URI` wins), or
* a local training output: `models/<variant>/seed<k>/model.pt` or its directory (with meta.json).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from robust_deepfake.config import ModelConfig, Params
from robust_deepfake.errors import StageError
from robust_deepfake.model.detector import CheckpointError, load_detector, load_trained, read_detector_meta
from robust_deepfake.tracking.registry import FLOOR_TAG
from robust_deepfake.tracking.store import require_store

DEFAULT_ALIAS = "champion"
REPORT_ALIASES = ("champion", "challenger")
LOCAL_HINT = "models/<variant>/seed<k>/model.pt"
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:/")
_ALIAS_URI = re.compile(r"^models:/([^/@]+)@([^/@]+)$")
_VERSION_URI = re.compile(r"^models:/([^/@]+)/(\d+)$")
_SEED_DIR = re.compile(r"^seed(\d+)$")


class ModelRefError(Exception):
    """The model reference cannot be resolved or loaded; str() says what to do."""


@dataclass
class LoadedModel:
    model: torch.nn.Module
    image_size: int
    description: str  # e.g. "models:/robust-deepfake-detector@champion (version 3)"


def default_model_uri(params: Params) -> str:
    return f"models:/{params.tracking.registered_model}@{DEFAULT_ALIAS}"


def is_model_uri(reference: str) -> bool:
    return bool(_URI.match(reference)) and not Path(reference).exists()


def load_model(reference: str, params: Params, root: Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Resolve `reference` (MLflow URI or local models/<variant>/seed<k>[/model.pt]) to an eval-mode detector."""
    if is_model_uri(reference):
        loaded = _load_from_mlflow(reference, params, root)
    else:
        loaded = _load_local(Path(reference), params.tracking.registered_model)
    loaded.model = loaded.model.to(device).eval()
    return loaded


# ---------------------------------------------------------------- local training outputs


def _seed_dirs(folder: Path) -> list[Path]:
    """The seed<k> subfolders of a models/<variant> folder, by seed."""
    found = [(int(m.group(1)), p) for p in folder.iterdir() if p.is_dir() and (m := _SEED_DIR.match(p.name))]
    return [p for _, p in sorted(found)]


def _retraining_hint(registered_model: str) -> str:
    """Why a training output can vanish, and what to read instead."""
    return (f"while `dvc repro` reruns a training stage, DVC deletes that stage's outs under models/; a registered "
            f"version is a copy in the MLflow store that DVC never deletes: --model models:/{registered_model}@"
            f"{DEFAULT_ALIAS} or models:/{registered_model}/<version>")


def _load_local(path: Path, registered_model: str) -> LoadedModel:
    """The detector in a training output folder (model.pt + meta.json), read whole into
    memory: deleting the files afterwards does not disturb the loaded model."""
    if not path.exists():
        raise ModelRefError(
            f"{path}: no such model file or directory (pass {LOCAL_HINT}, its directory, "
            f"or a models:/<name>@<alias> URI; {_retraining_hint(registered_model)})"
        )
    if path.is_dir() and not (path / "model.pt").exists():
        seeds = _seed_dirs(path)
        if seeds:
            raise ModelRefError(
                f"{path}: holds one model per training seed; pass one of them: {', '.join(map(str, seeds))}"
            )
    weights = path / "model.pt" if path.is_dir() else path
    try:
        if weights.name == "model.pt":
            model, meta = load_trained(weights.parent)
        else:  # renamed weights: meta.json must still sit next to them
            meta = read_detector_meta(weights.parent / "meta.json")
            detector = meta["detector"]
            model = load_detector(weights, ModelConfig(**detector["model"]), detector["split_at"])
    except CheckpointError as error:  # names the file and why (a blocked pickle, a truncated file ...)
        raise ModelRefError(str(error)) from None
    except FileNotFoundError as error:
        raise ModelRefError(f"{error} ({_retraining_hint(registered_model)})") from None
    except (KeyError, ValueError, TypeError, RuntimeError, OSError) as error:
        raise ModelRefError(f"{weights}: not a detector checkpoint with its meta.json ({error})") from None
    return LoadedModel(model, int(meta["detector"]["image_size"]), str(weights))


# ---------------------------------------------------------------- the MLflow registry


def _sqlite_file(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri.removeprefix("sqlite:///"))


def _load_from_mlflow(uri: str, params: Params, root: Path) -> LoadedModel:
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        store = require_store(params.tracking, root, write=False)
    except StageError as error:
        raise ModelRefError(str(error)) from None
    database = _sqlite_file(store)
    if database is not None and not database.exists():
        # opening a missing sqlite store would silently create an empty one
        raise ModelRefError(
            f"no MLflow store at {database}: run `make demo` (or `dvc repro`) from the repository root first, "
            f"or pass --model {LOCAL_HINT}"
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
        _refuse_below_floor(MlflowClient(), name, aliases[alias], uri)
    elif match := _VERSION_URI.match(uri):
        _refuse_below_floor(MlflowClient(), *match.groups(), uri)
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


def _refuse_below_floor(client, name: str, version: str, uri: str) -> None:
    """A version the report found under the quality floor (its `quality_floor` tag says
    `failed: …`, e.g. a constant classifier from a 1-epoch experiment) is not used to
    label images."""
    from mlflow.exceptions import MlflowException

    try:
        floor = client.get_model_version(name, version).tags.get(FLOOR_TAG, "")
    except MlflowException:
        return  # a missing version: mlflow.pyfunc.load_model says so
    if floor.startswith("failed"):
        raise ModelRefError(
            f"{uri} (version {version}) is under the quality floor ({floor}; see its model card in `mlflow ui`): "
            "it does not separate real from fake on the test set. Use a version that passed, e.g. "
            f"models:/{name}@champion"
        )


def _missing_alias_message(name: str, alias: str, aliases: dict[str, str]) -> str:
    have = ", ".join(f"@{a}" for a in sorted(aliases)) or "none"
    fallback = "baseline" if "baseline" in aliases else (sorted(aliases)[0] if aliases else None)
    if alias in REPORT_ALIASES:
        hint = "run `dvc repro` (the report stage sets it)"
    else:
        hint = "set it with MlflowClient().set_registered_model_alias"
    alternative = (f"pass --model models:/{name}@{fallback}" if fallback
                   else f"pass --model {LOCAL_HINT}")
    return f"no version of {name} has alias @{alias} yet (it has: {have}): {hint} or {alternative}"
