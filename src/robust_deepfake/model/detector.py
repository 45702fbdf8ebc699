"""The detector: timm EfficientNet-B0 with a 2-class head, split into early and late parts.

Inputs are images in [0, 1]; ImageNet normalization is the model's first layer, so
attacks, CAMs and eps budgets all live in pixel space and no caller normalizes by hand.
The timm network stays the single owner of the weights (`self.body`): the split is a
view over its modules, so checkpoints do not depend on `reg.split_at` and grad-cam can
address any layer by its timm path (e.g. `body.blocks.4`).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch
from torch import nn

from robust_deepfake.config import ModelConfig
from robust_deepfake.errors import MissingInputError, StageError
from robust_deepfake.io import atomic_path
from robust_deepfake.model.depthwise import use_fast_depthwise

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NUM_CLASSES = 2
WEIGHTS_HELP = (
    "model.pretrained is true but no ImageNet weights are available offline. Download "
    "timm's efficientnet_b0 weights on a machine with internet (e.g. "
    "`timm.create_model('efficientnet_b0', pretrained=True)` then "
    "`torch.save(model.state_dict(), 'efficientnet_b0.pth')`, or the .safetensors file "
    "from the Hugging Face repo timm/efficientnet_b0.ra_in1k), copy it here and set "
    "model.weights_path to its path (.pth or .safetensors). Or set model.pretrained: false."
)


class WeightsUnavailableError(StageError, RuntimeError):
    """Pretrained weights were requested but cannot be loaded offline."""


class Normalize(nn.Module):
    """(x - mean) / std with ImageNet statistics, as the first layer of the model."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class Detector(nn.Module):
    """EfficientNet-B0 deepfake detector: logits (N, 2) for [0, 1] images, class 1 = fake."""

    def __init__(self, body: nn.Module, split_at: int, channels_last: bool) -> None:
        super().__init__()
        n_stages = len(body.blocks)
        if not 1 <= split_at < n_stages:
            raise ValueError(f"reg.split_at must be in [1, {n_stages - 1}], got {split_at}")
        self.normalize = Normalize()
        self.body = body
        self.split_at = split_at
        self.channels_last = channels_last

    def features_early(self, x: torch.Tensor) -> torch.Tensor:
        """Stem + the first `split_at` stages: the shallow features the regularizer perturbs."""
        x = self.normalize(x)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x = self.body.bn1(self.body.conv_stem(x))
        for stage in self.body.blocks[: self.split_at]:
            x = stage(x)
        return x

    def features_late(self, f: torch.Tensor) -> torch.Tensor:
        """The remaining stages, head conv, pooling and classifier."""
        if self.channels_last:  # perturbed statistics come back in the default layout
            f = f.contiguous(memory_format=torch.channels_last)
        for stage in self.body.blocks[self.split_at :]:
            f = stage(f)
        f = self.body.bn2(self.body.conv_head(f))
        return self.body.forward_head(f)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features_late(self.features_early(x))

    @torch.no_grad()
    def p_fake(self, x: torch.Tensor) -> torch.Tensor:
        return self(x).float().softmax(dim=1)[:, 1]


@contextlib.contextmanager
def _hub_offline():
    """HF_HUB_OFFLINE semantics for one call, unless the user explicitly allowed the hub
    (HF_HUB_OFFLINE=0): local cache only, failing in milliseconds instead of retrying
    the network for ~45 s."""
    if os.environ.get("HF_HUB_OFFLINE") == "0":
        yield
        return
    import huggingface_hub.constants as hub_constants

    previous = hub_constants.HF_HUB_OFFLINE
    hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hub_constants.HF_HUB_OFFLINE = previous


def _init_head(classifier: nn.Linear) -> None:
    # timm's EfficientNet init draws the classifier from U(+-1/sqrt(out_features)): for a
    # 2-class head that is +-0.71, giving initial logits of several units and early
    # training that oscillates for epochs. A small normal init trains smoothly.
    nn.init.normal_(classifier.weight, std=0.01)
    nn.init.zeros_(classifier.bias)


def build_detector(config: ModelConfig, split_at: int, for_inference: bool = False) -> Detector:
    """Create the detector; with `pretrained`, load ImageNet weights offline or fail fast.

    `for_inference` skips pretrained loading (a checkpoint will overwrite the weights).
    Depthwise convolutions train through model/depthwise.py's fast weight gradient on
    the CPU (same parameters, same forward).
    """
    import timm

    kwargs = dict(num_classes=NUM_CLASSES, drop_rate=config.drop_rate)
    if config.pretrained and not for_inference:
        if config.weights_path:
            path = Path(config.weights_path)
            if not path.is_file():
                raise WeightsUnavailableError(f"model.weights_path: {path} does not exist. {WEIGHTS_HELP}")
            body = timm.create_model(
                config.name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **kwargs
            )
        else:
            try:
                with _hub_offline():
                    body = timm.create_model(config.name, pretrained=True, **kwargs)
            except Exception as error:  # hub errors vary by huggingface_hub version
                raise WeightsUnavailableError(f"{WEIGHTS_HELP} ({type(error).__name__})") from None
    else:
        body = timm.create_model(config.name, pretrained=False, **kwargs)
    _init_head(body.classifier)
    use_fast_depthwise(body)
    model = Detector(body, split_at=split_at, channels_last=config.channels_last)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def weights_bytes(model: nn.Module) -> bytes:
    """The state dict serialized in memory: torch.save names its zip records after the
    target file, so saving to a temporary file would give other bytes on every run
    (and make DVC re-run every downstream stage for identical weights)."""
    import io

    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, buffer)
    return buffer.getvalue()


def save_weights(model: nn.Module, path: str | Path) -> None:
    """State dict only (no pickled code), byte-stable, written atomically."""
    data = weights_bytes(model)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


class CheckpointError(StageError, ValueError):
    """A weights file (or its meta.json) that cannot be loaded as a detector; str() names
    the file and why. Raised before any model code runs on it."""


_RESTORE_HINT = "retrain it (`dvc repro`) or restore it (`dvc checkout`)"


def _reason(error: BaseException) -> str:
    """The informative line of a torch error (its messages are paragraphs of advice)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    keys = ("GLOBAL", "Unsupported", "blocked", "zip archive", "Missing key", "Unexpected key", "size mismatch")
    line = next((line for line in lines if any(key in line for key in keys)), lines[0] if lines else "")
    line = line.removeprefix("Please file an issue with the following so that we can make "
                             "`weights_only=True` compatible with your use case: ")
    line = line.split(". This is an internal miniz error")[0].rstrip(".")
    line = line or type(error).__name__
    return line if len(line) <= 240 else line[:240] + " ..."


def read_state_dict(path: str | Path) -> dict:
    """The state dict in `path`, loaded with torch.load(weights_only=True): only tensors
    and plain containers, never pickled code. Anything else (a pickle with objects, a
    truncated or foreign file) is a CheckpointError naming the file, not a traceback."""
    import pickle
    from collections.abc import Mapping

    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise CheckpointError(f"{path}: empty file (0 bytes), not a detector checkpoint; {_RESTORE_HINT}")
        state = torch.load(path, map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
    except FileNotFoundError:
        raise MissingInputError(f"{path}: missing; run `dvc repro` (the train stages) first") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path}: is a directory, not a weights file") from None
    except pickle.UnpicklingError as error:
        reason = _reason(error)
        if "GLOBAL" in reason or "blocked" in reason:
            raise CheckpointError(
                f"{path}: refused: the file holds pickled objects, not just tensors ({reason}); "
                "torch.load(weights_only=True) blocked it, nothing in it was run. A detector checkpoint "
                "(model.pt as the train stage writes it) holds tensors only: do not load this file with "
                f"weights_only=False unless you trust its source; {_RESTORE_HINT}"
            ) from None
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint, truncated or corrupt ({reason}); {_RESTORE_HINT}"
        ) from None
    except Exception as error:  # noqa: BLE001 - torch.load raises KeyError, EOFError, RuntimeError ... on junk
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint, truncated or corrupt ({type(error).__name__}: "
            f"{_reason(error)}); {_RESTORE_HINT}"
        ) from None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(
            f"{path}: holds a {type(state).__name__}, not a state dict of tensors (save_weights writes one); "
            f"{_RESTORE_HINT}"
        )
    return state


def load_detector(path: str | Path, config: ModelConfig, split_at: int, device: str | torch.device = "cpu") -> Detector:
    """Rebuild the detector from a state dict written by save_weights."""
    state = read_state_dict(path)
    model = build_detector(config, split_at, for_inference=True)
    try:
        model.load_state_dict(state)
    except RuntimeError as error:  # missing/unexpected keys, shape mismatches
        raise CheckpointError(
            f"{path}: does not fit the detector its meta.json describes ({_reason(error)}); {_RESTORE_HINT}"
        ) from None
    return model.to(device).eval()


def read_detector_meta(meta_path: str | Path) -> dict:
    """meta.json next to the weights, checked for the `detector` section load_trained needs."""
    import json

    meta_path = Path(meta_path)
    try:
        meta = json.loads(meta_path.read_text())
        detector = meta["detector"]
        ModelConfig(**detector["model"])
        int(detector["split_at"]), int(detector["image_size"])
    except FileNotFoundError:
        raise MissingInputError(f"{meta_path}: missing (written next to the weights by the train stage)") from None
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as error:
        detail = f"no key {error}" if isinstance(error, KeyError) else f"{type(error).__name__}: {_reason(error)}"
        raise CheckpointError(
            f"{meta_path}: not a detector meta.json ({detail}); {_RESTORE_HINT}"
        ) from None
    return meta


def load_trained(model_dir: str | Path, device: str | torch.device = "cpu") -> tuple[Detector, dict]:
    """A trained variant from its DVC outs (model.pt + meta.json written by the train stage)."""
    model_dir = Path(model_dir)
    meta_path, weights = model_dir / "meta.json", model_dir / "model.pt"
    for path in (meta_path, weights):
        if not path.exists():
            raise MissingInputError(f"{path}: missing; run `dvc repro` (the train stages) first")
    meta = read_detector_meta(meta_path)
    detector = meta["detector"]
    model = load_detector(weights, ModelConfig(**detector["model"]), detector["split_at"], device)
    return model, meta
