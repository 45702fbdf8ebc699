"""Can Grad-CAM use `cam.target_layer` on this detector? Answered without weights or
data, so the train stage (the first heavy one) and `robust-deepfake params check` refuse a
bad layer before hours of training, not at cam_iinc after them. Kept out of config.py:
the params layer does not import the model."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from robust_deepfake.config import DEFAULT_PARAMS, ModelConfig, Params
from robust_deepfake.errors import StageError
from robust_deepfake.explain.gradcam import resolve_layer
from robust_deepfake.model.detector import build_detector


@lru_cache(maxsize=2)
def _layer_outputs(model_name: str) -> tuple[Any, dict[Any, tuple[int, ...]]]:
    """The detector for `model_name` and the output shape of every module its forward pass
    calls: one pass of an untrained model on the meta device (no weights, no download, no
    arithmetic; ~0.2 s once per process, on top of importing timm)."""
    import torch

    with torch.device("meta"):
        model = build_detector(ModelConfig(name=model_name, channels_last=False), split_at=1, for_inference=True)
    shapes: dict[Any, tuple[int, ...]] = {}

    def record(module: Any, _inputs: Any, output: Any) -> None:
        shapes[module] = tuple(output.shape) if isinstance(output, torch.Tensor) else ()

    hooks = [module.register_forward_hook(record) for module in model.modules()]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, 64, 64, device="meta"))
    finally:
        for hook in hooks:
            hook.remove()
    return model, shapes


def target_layer_problem(model_name: str, path: str) -> str | None:
    """Why Grad-CAM could not use `path` as the target layer of the `model_name` detector,
    or None. Resolved as explain.gradcam.resolve_layer resolves it (a timm body path such
    as `blocks.4`, or the detector's own path), and the layer must output a feature map
    (N, C, H, W) during the forward pass: `classifier` or `global_pool` do not, and `blocks`
    is never called as a whole (the detector runs its stages one by one)."""
    model, shapes = _layer_outputs(model_name)
    # examples: the body's own layers and, for a container never called whole (blocks),
    # its children (blocks.0 ...)
    called = {name.removeprefix("body."): len(shapes[m]) == 4 for name, m in model.body.named_modules(prefix="body")
              if m in shapes}
    examples = ", ".join(name for name, spatial in called.items() if spatial and (
        "." not in name or (name.count(".") == 1 and name.split(".")[0] not in called)))
    try:
        layer = resolve_layer(model, path)
    except ValueError:
        return f"{model_name} has no such layer; Grad-CAM layers include {examples}"
    if layer not in shapes:
        return (f"{model_name}'s forward pass never calls this module on its own, so Grad-CAM would see "
                f"nothing; use one of {examples}")
    if len(shapes[layer]) != 4:
        return (f"this layer outputs shape {shapes[layer]}, not a (N, C, H, W) feature map Grad-CAM can "
                f"use; use one of {examples}")
    return None


def require_target_layer(params: Params, source: str | Path = DEFAULT_PARAMS) -> None:
    """StageError `params.yaml: cam.target_layer: <why> (got 'blocks.99')` for a layer
    Grad-CAM cannot use on `model.name`."""
    problem = target_layer_problem(params.model.name, params.cam.target_layer)
    if problem:
        raise StageError(f"{source}: cam.target_layer: {problem} (got {params.cam.target_layer!r})")
