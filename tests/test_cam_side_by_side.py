"""`predict --cam`'s picture: the input and its Grad-CAM overlay side by side, at least
256 px tall, with p(fake), the label, the layer and a colour bar of the overlay's colours."""

import numpy as np
import pytest
import torch
from PIL import Image

from robust_deepfake.explain.figures import MIN_PANEL, overlay, side_by_side, side_by_side_size
from robust_deepfake.inference.scoring import CamWriter
from toy_models import toy_cnn

TOP = 44 + 20  # header and panel labels
LEFT = 10


def _picture(width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:height, 0:width]
    image = np.stack([yy / height, xx / width, np.full(yy.shape, 0.5)], axis=-1).astype(np.float32)
    cam = np.exp(-((yy - height / 2) ** 2 + (xx - width / 3) ** 2) / (2 * (height / 5) ** 2)).astype(np.float32)
    return image, cam


@pytest.mark.parametrize("size", [(48, 64), (30, 50), (400, 300)])
def test_the_panels_show_the_input_and_its_overlay_at_least_256_px_tall(size):
    width, height = size
    image, cam = _picture(width, height)
    picture = side_by_side(image, cam, ["p(fake) = 0.734: fake (threshold 0.5)", "gradcam at blocks.5"])
    assert picture.shape[1::-1] == side_by_side_size(width, height) and picture.dtype == np.uint8
    scale = max(1.0, MIN_PANEL / height)
    panel_w, panel_h = round(width * scale), round(height * scale)
    assert panel_h >= MIN_PANEL
    expected = np.asarray(Image.fromarray(np.round(image * 255).astype(np.uint8)).resize((panel_w, panel_h),
                                                                                      Image.Resampling.NEAREST))
    np.testing.assert_array_equal(picture[TOP:TOP + panel_h, LEFT:LEFT + panel_w], expected)
    right = picture[TOP:TOP + panel_h, LEFT + panel_w + 10:LEFT + 2 * panel_w + 10]
    heat = np.asarray(Image.fromarray(overlay(image, cam)).resize((panel_w, panel_h), Image.Resampling.NEAREST))
    np.testing.assert_array_equal(right, heat)
    bar = picture[TOP:TOP + panel_h, LEFT + 2 * panel_w + 20:LEFT + 2 * panel_w + 36]
    top_colour, bottom_colour = bar[0, 8].astype(int), bar[-1, 8].astype(int)
    assert top_colour[0] > 100 and top_colour[2] < 50  # jet: 1 is dark red
    assert bottom_colour[2] > 100 and bottom_colour[0] < 50  # 0 is dark blue


def test_the_writer_puts_p_fake_beside_each_cam(tmp_path):
    torch.manual_seed(0)
    model = toy_cnn().eval()
    originals = [Image.fromarray(np.full((20, 30, 3), 90, np.uint8)), Image.fromarray(np.full((40, 16, 3), 200, np.uint8))]
    batch = torch.stack([torch.from_numpy(np.asarray(o.resize((16, 16)), np.float32) / 255).permute(2, 0, 1)
                         for o in originals])
    writer = CamWriter(tmp_path, "2")
    written = writer.write(model, batch, [1, 0], originals, ["a.png", "b.png"], [0.91, 0.12], 0.5)
    assert [p.rsplit("/", 1)[1] for p in written] == ["a_cam.png", "b_cam.png"]
    for path, original in zip(written, originals):
        with Image.open(path) as picture:
            assert picture.size == side_by_side_size(*original.size) and picture.mode == "RGB"
            assert picture.size[1] >= MIN_PANEL


class _Detector(torch.nn.Module):
    """A toy CNN with the detector's p_fake (softmax of the second logit)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = toy_cnn()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    @torch.no_grad()
    def p_fake(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.forward(x), dim=1)[:, 1]


def test_predict_files_writes_one_side_by_side_per_image_with_its_score(tmp_path):
    from robust_deepfake.inference.model_ref import LoadedModel
    from robust_deepfake.inference.scoring import predict_files

    torch.manual_seed(0)
    loaded = LoadedModel(_Detector().eval(), 16, "toy")
    files = []
    for name, size in (("wide.png", (60, 30)), ("big.png", (300, 280))):
        Image.fromarray(np.random.default_rng(1).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(
            tmp_path / name)
        files.append(str(tmp_path / name))
    writer = CamWriter(tmp_path / "cams", "net.2")
    predictions = list(predict_files(loaded, files, 0.5, 8, writer))
    assert [Image.open(p.cam).size for p in predictions] == [side_by_side_size(60, 30), side_by_side_size(300, 280)]
    assert side_by_side_size(300, 280)[1] == 44 + 20 + 280 + 10  # a large image keeps its own size
