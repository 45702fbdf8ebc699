"""IINC against hand-computed values; CAMs via the grad-cam package."""

import numpy as np
import pytest
import torch

from robust_deepfake.config import ModelConfig
from robust_deepfake.explain import compute_cams, feature_map_size, iinc, resolve_layer
from robust_deepfake.models import build_detector


def _half(columns: slice, size: int = 8) -> np.ndarray:
    m = np.zeros((size, size))
    m[:, columns] = 1.0
    return m


def test_identical_maps_give_zero():
    m = np.random.default_rng(0).random((3, 8, 8))
    assert np.allclose(iinc(m, m), 0)


def test_both_all_zero_give_zero():
    z = np.zeros((2, 8, 8))
    assert np.array_equal(iinc(z, z), [0, 0])


def test_exactly_one_all_zero():
    m = _half(slice(0, 2))  # area 1/4
    z = np.zeros((8, 8))
    assert iinc(m, z)[0] == pytest.approx(1 / (3 - 0.25))
    assert iinc(z, m)[0] == pytest.approx(1 / (3 - 0.25))


def test_disjoint_binary_maps():
    a, b = _half(slice(0, 2)), _half(slice(4, 8))  # areas 1/4 and 1/2, I = 0, U = 3/4
    assert iinc(a, b)[0] == pytest.approx(2 / (3 - 0.75))
    full_a, full_b = _half(slice(0, 4)), _half(slice(4, 8))
    assert iinc(full_a, full_b)[0] == pytest.approx(1.0)  # the maximum


def test_half_overlap_worked_by_hand():
    # A = columns 0-3 (area 1/2), B = columns 2-5 (area 1/2): I = cols 2-3 (1/4), U = cols 0-5 (3/4)
    # IINC = 1/(3 - 3/4) * (2 - (1/4)/(1/2) - (1/4)/(1/2)) = (4/9) * 1
    a, b = _half(slice(0, 4)), _half(slice(2, 6))
    assert iinc(a, b)[0] == pytest.approx(4 / 9)


def test_containment_costs_less_than_disjointness():
    big, small, elsewhere = _half(slice(0, 4)), _half(slice(0, 2)), _half(slice(6, 8))
    assert iinc(big, small)[0] < iinc(big, elsewhere)[0]


def test_soft_maps_symmetry_and_range():
    rng = np.random.default_rng(1)
    a, b = rng.random((50, 8, 8)) ** 3, rng.random((50, 8, 8))
    a[0] = 0
    values = iinc(a, b)
    assert np.allclose(values, iinc(b, a))
    assert values.min() >= 0 and values.max() <= 1


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="same shape"):
        iinc(np.zeros((1, 4, 4)), np.zeros((1, 5, 5)))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_detector(ModelConfig(channels_last=False), split_at=2).eval()


def test_cams_match_the_grad_cam_package_and_release_hooks(model):
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    images = torch.rand(5, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    targets = [0, 1, 1, 0, 1]
    ours = compute_cams(model, images, "blocks.4", targets, batch_size=2)
    layer = resolve_layer(model, "blocks.4")
    with GradCAM(model=model, target_layers=[layer]) as cam:
        reference = cam(input_tensor=images, targets=[ClassifierOutputTarget(t) for t in targets])
    assert ours.shape == (5, 64, 64)
    assert ours.min() >= 0 and ours.max() <= 1
    np.testing.assert_allclose(ours, reference, atol=1e-5)
    assert not layer._forward_hooks and not layer._backward_hooks and not layer._forward_pre_hooks


def test_gradcam_plus_plus_is_selectable(model):
    images = torch.rand(2, 3, 64, 64)
    maps = compute_cams(model, images, "conv_head", [1, 1], method="gradcam++")
    assert maps.shape == (2, 64, 64)


def test_feature_map_size_explains_the_default_layer(model):
    assert feature_map_size(model, "blocks.4", 64) == (4, 4)
    assert feature_map_size(model, "conv_head", 64) == (2, 2)
    assert feature_map_size(model, "conv_head", 224) == (7, 7)


def test_unknown_layer_names_the_key(model):
    with pytest.raises(ValueError, match="cam.target_layer"):
        resolve_layer(model, "blocks.99")
