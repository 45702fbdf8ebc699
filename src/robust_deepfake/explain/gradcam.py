"""Explanations: Grad-CAM maps (via the grad-cam package) and the IINC distance between maps."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

CAM_METHODS = ("gradcam", "gradcam++")


def iinc(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> np.ndarray:
    r"""Inverse Intersection Non-Containment (Dang et al., "On the Detection of Digital Face
    Manipulation", CVPR 2020), for batches of maps in [0, 1] shaped (N, H, W):

        I = min(Ma, Mb), U = max(Ma, Mb), |M| = mean(M) (area fraction)
        IINC = 1 / (3 - |U|) * { 0                          if mean(Ma) = 0 and mean(Mb) = 0
                               { 1                          if exactly one of them is 0
                               { 2 - |I|/|Ma| - |I|/|Mb|    otherwise

    0 for identical maps; larger means less overlap; always in [0, 1]. Unlike IoU it
    penalises one map containing the other less than disjoint maps.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"maps must have the same shape, got {a.shape} and {b.shape}")
    if a.ndim == 2:
        return iinc(a[None], b[None])
    axes = tuple(range(1, a.ndim))
    area_a, area_b = a.mean(axis=axes), b.mean(axis=axes)
    intersection = np.minimum(a, b).mean(axis=axes)
    union = np.maximum(a, b).mean(axis=axes)
    zero_a, zero_b = area_a == 0, area_b == 0
    with np.errstate(divide="ignore", invalid="ignore"):
        overlap = 2 - intersection / area_a - intersection / area_b
    inner = np.where(zero_a & zero_b, 0.0, np.where(zero_a ^ zero_b, 1.0, overlap))
    return inner / (3 - union)


def resolve_layer(model: nn.Module, path: str) -> nn.Module:
    """A CAM target layer by its timm path (`blocks.4`, `conv_head`) or full path."""
    for candidate in (path, f"body.{path}"):
        try:
            return model.get_submodule(candidate)
        except AttributeError:
            continue
    names = [n.removeprefix("body.") for n, _ in model.named_modules() if n.count(".") <= 2 and n]
    raise ValueError(f"cam.target_layer: no layer {path!r}; e.g. {', '.join(names[:12])} ...")


def compute_cams(
    model: nn.Module,
    images: torch.Tensor,
    target_layer: str,
    targets: list[int],
    method: str = "gradcam",
    batch_size: int = 32,
) -> np.ndarray:
    """(N, H, W) maps in [0, 1] at input resolution for class `targets[i]` of image i."""
    return cams_and_logits(model, images, target_layer, targets, method, batch_size)[0]


def cams_and_logits(
    model: nn.Module,
    images: torch.Tensor,
    target_layer: str,
    targets: list[int] | None,
    method: str = "gradcam",
    batch_size: int = 32,
) -> tuple[np.ndarray, torch.Tensor]:
    """CAM maps (as `compute_cams`) and the logits (N, 2) of the same forward pass.

    `targets=None` explains each image's predicted class, p(fake) >= 0.5 (the class
    `Detector.p_fake` gives). The backward stops at the target layer: the parameters are
    frozen for the call and the layer's output is the leaf that needs a gradient, so no
    weight gradient and nothing below the layer is computed; the maps are the package's
    (tests/test_explain.py checks them against an unfrozen grad-cam call).
    """
    from pytorch_grad_cam import GradCAM, GradCAMPlusPlus
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    if method not in CAM_METHODS:
        raise ValueError(f"cam.method must be one of {CAM_METHODS}, got {method!r}")
    cam_class = GradCAM if method == "gradcam" else GradCAMPlusPlus
    layer = resolve_layer(model, target_layer)
    model.eval()
    maps, logits = [], []
    with _gradient_stops_at(model, layer), cam_class(model=model, target_layers=[layer]) as cam:
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size].detach()
            if targets is None:
                chunk_targets = [_predicted_class] * len(chunk)
            else:
                chunk_targets = [ClassifierOutputTarget(int(t)) for t in targets[start : start + batch_size]]
            maps.append(cam(input_tensor=chunk, targets=chunk_targets))
            logits.append(cam.outputs.detach())
    return np.concatenate(maps).astype(np.float32), torch.cat(logits)


def _predicted_class(logits: torch.Tensor) -> torch.Tensor:
    """One image's logit of its predicted class, p(fake) >= 0.5 as `Detector.p_fake` computes it."""
    return logits[int(logits.float().softmax(dim=-1)[1] >= 0.5)]


@contextlib.contextmanager
def _gradient_stops_at(model: nn.Module, layer: nn.Module) -> Iterator[None]:
    """Parameters frozen (restored on exit) and `layer`'s output made a leaf that needs a
    gradient (a forward hook that runs before grad-cam's own)."""
    frozen = [p for p in model.parameters() if p.requires_grad]

    def needs_gradient(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        if not output.requires_grad:
            output.requires_grad_(True)

    handle = layer.register_forward_hook(needs_gradient, prepend=True)
    for parameter in frozen:
        parameter.requires_grad_(False)
    try:
        yield
    finally:
        handle.remove()
        for parameter in frozen:
            parameter.requires_grad_(True)
