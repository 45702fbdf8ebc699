"""CAM grid figures: rows of examples, columns image / adversarial / CAMs / GT mask."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from robust_deepfake.io import atomic_path

if TYPE_CHECKING:
    from robust_deepfake.explain.measure import AttackedCams, Cams, CamSubset


def overlay(image: np.ndarray, cam: np.ndarray) -> np.ndarray:
    """Heat-map overlay (grad-cam's show_cam_on_image) of a [0, 1] HWC image."""
    from pytorch_grad_cam.utils.image import show_cam_on_image

    return show_cam_on_image(image.astype(np.float32), cam, use_rgb=True, image_weight=0.55)


MIN_PANEL = 256  # the side-by-side's panels are at least this tall (small inputs upscaled, nearest)
_MARGIN, _GAP, _HEADER, _LABELS, _BAR, _BAR_TEXT = 10, 10, 44, 20, 16, 30


def side_by_side_size(width: int, height: int) -> tuple[int, int]:
    """The side-by-side's size in pixels for an input of `width` x `height`."""
    panel_w, panel_h = _panel_size(width, height)
    return (2 * _MARGIN + 2 * panel_w + _GAP + _GAP + _BAR + _BAR_TEXT,
            _HEADER + _LABELS + panel_h + _MARGIN)


def _panel_size(width: int, height: int) -> tuple[int, int]:
    scale = max(1.0, MIN_PANEL / height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def side_by_side(image: np.ndarray, cam: np.ndarray, caption: list[str]) -> np.ndarray:
    """One picture of an input and its CAM: the image (left), its heat-map overlay (right),
    both at least MIN_PANEL px tall, a colour bar of the map's 0..1 scale (the overlay's jet
    colours) and `caption` (e.g. p(fake), the layer) on top. `image` is HWC in [0, 1], `cam`
    HW in [0, 1] at the image's size; returns HWC uint8."""
    import cv2
    from PIL import Image, ImageDraw, ImageFont

    height, width = cam.shape
    panel = _panel_size(width, height)
    left = Image.fromarray(np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)).resize(panel, Image.Resampling.NEAREST)
    right = Image.fromarray(overlay(image, cam)).resize(panel, Image.Resampling.NEAREST)
    canvas = Image.new("RGB", side_by_side_size(width, height), "white")
    top = _HEADER + _LABELS
    canvas.paste(left, (_MARGIN, top))
    canvas.paste(right, (_MARGIN + panel[0] + _GAP, top))
    scale = np.linspace(255, 0, panel[1]).astype(np.uint8)[:, None].repeat(_BAR, axis=1)  # 1 at the top
    bar = cv2.applyColorMap(scale, cv2.COLORMAP_JET)[..., ::-1]  # the colours show_cam_on_image uses (BGR -> RGB)
    bar_x = _MARGIN + 2 * panel[0] + 2 * _GAP
    canvas.paste(Image.fromarray(np.ascontiguousarray(bar)), (bar_x, top))
    draw, font, small = ImageDraw.Draw(canvas), ImageFont.load_default(size=14), ImageFont.load_default(size=12)
    for row, line in enumerate(caption[:2]):
        draw.text((_MARGIN, 6 + 18 * row), line, fill="black", font=font)
    draw.text((_MARGIN, _HEADER + 2), "input", fill="black", font=small)
    draw.text((_MARGIN + panel[0] + _GAP, _HEADER + 2), "Grad-CAM overlay", fill="black", font=small)
    draw.text((bar_x, _HEADER + 2), "CAM", fill="black", font=small)
    draw.text((bar_x + _BAR + 3, top - 2), "1", fill="black", font=small)
    draw.text((bar_x + _BAR + 3, top + panel[1] - 13), "0", fill="black", font=small)
    return np.asarray(canvas)


def pick_rows(labels: np.ndarray, rows: int) -> list[int]:
    """Half reals, half fakes (as available), first ones in subset order."""
    reals = np.flatnonzero(labels == 0).tolist()
    fakes = np.flatnonzero(labels == 1).tolist()
    n_fake = min(len(fakes), rows - min(len(reals), rows // 2))
    return reals[: rows - n_fake] + fakes[:n_fake]


def cam_grid(path: Path, subset: CamSubset, clean: Cams, attacked: AttackedCams, title: str, rows: int = 6) -> Path:
    """Rows of examples (half real, half fake): image, adversarial image, both CAMs, mask."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = subset.labels.numpy()
    images, adversarial, masks = subset.images, attacked.cams.inputs, subset.masks
    clean_cams, adv_cams = clean.maps, attacked.cams.maps
    p_clean, p_adv = clean.p_fake.numpy(), attacked.cams.p_fake.numpy()
    chosen = pick_rows(labels, rows)
    columns = ["image", "adversarial", "CAM (clean)", "CAM (adversarial)", "GT mask"]
    figure, axes = plt.subplots(len(chosen), len(columns), figsize=(2.1 * len(columns), 2.2 * len(chosen)), squeeze=False)
    for r, i in enumerate(chosen):
        clean = images[i].permute(1, 2, 0).numpy()
        adv = adversarial[i].permute(1, 2, 0).numpy()
        mask = masks[i]
        panels = [clean, adv, overlay(clean, clean_cams[i]), overlay(adv, adv_cams[i]),
                  np.zeros_like(clean[..., 0]) if not np.isfinite(mask).all() else mask]
        for c, panel in enumerate(panels):
            axis = axes[r, c]
            axis.imshow(panel, cmap="gray" if panel.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
            axis.set_xticks([])
            axis.set_yticks([])
            if r == 0:
                axis.set_title(columns[c], fontsize=9)
        kind = "fake" if labels[i] == 1 else "real"
        axes[r, 0].set_ylabel(f"{kind}\np(fake) {p_clean[i]:.2f}", fontsize=8)
        axes[r, 1].set_ylabel(f"p(fake) {p_adv[i]:.2f}", fontsize=8)
        if not np.isfinite(mask).all():
            axes[r, 4].text(0.5, 0.5, "no mask", ha="center", va="center", color="white", fontsize=8,
                            transform=axes[r, 4].transAxes)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=110, format="png")
    plt.close(figure)
    return path
