"""IINC against hand-computed values; CAMs via the grad-cam package; CAMs under attack
(the sweep's adversarial images, 8-bit rounded when attack.quantize) and their figure."""

import numpy as np
import pytest
import torch
from PIL import Image

from robust_deepfake.config import AttackConfig, CamConfig, ModelConfig, Params
from robust_deepfake.data.dataset import ImageSet, SplitRow
from robust_deepfake.explain.figures import cam_grid, pick_rows
from robust_deepfake.explain.gradcam import cams_and_logits, compute_cams, iinc, resolve_layer
from robust_deepfake.explain.measure import CamSubset, cam_grid_plan, measure
from robust_deepfake.model.detector import build_detector
from robust_deepfake.robustness.attacks import build_attack, quantize_8bit
from robust_deepfake.robustness.sweep import attack_generator

# One intra-op thread: these small tensors run fastest that way on a shared CPU.
pytestmark = pytest.mark.usefixtures("one_thread")


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
def cam_model():
    torch.manual_seed(0)
    return build_detector(ModelConfig(channels_last=False), split_at=2).eval()


def test_cams_match_the_grad_cam_package_and_release_hooks(cam_model):
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    images = torch.rand(5, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    targets = [0, 1, 1, 0, 1]
    ours = compute_cams(cam_model, images, "blocks.4", targets, batch_size=2)
    layer = resolve_layer(cam_model, "blocks.4")
    with GradCAM(model=cam_model, target_layers=[layer]) as cam:
        reference = cam(input_tensor=images, targets=[ClassifierOutputTarget(t) for t in targets])
    assert ours.shape == (5, 64, 64)
    assert ours.min() >= 0 and ours.max() <= 1
    np.testing.assert_allclose(ours, reference, atol=1e-5)
    assert not layer._forward_hooks and not layer._backward_hooks and not layer._forward_pre_hooks


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
def test_one_forward_gives_the_packages_maps_and_the_models_logits_exactly(channels_last, method):
    """The backward stops at the target layer (frozen parameters): the same bytes as the
    package's call on the unfrozen model, and the logits of the plain forward."""
    from pytorch_grad_cam import GradCAM, GradCAMPlusPlus
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    torch.manual_seed(0)
    net = build_detector(ModelConfig(channels_last=channels_last), split_at=2).eval()
    images = torch.rand(5, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    targets = [0, 1, 1, 0, 1]
    maps, logits = cams_and_logits(net, images, "blocks.4", targets, method, batch_size=3)
    assert all(p.requires_grad and p.grad is None for p in net.parameters())  # restored, nothing accumulated
    cam_class = GradCAM if method == "gradcam" else GradCAMPlusPlus
    layer = resolve_layer(net, "blocks.4")
    with cam_class(model=net, target_layers=[layer]) as cam:
        reference = np.concatenate([cam(input_tensor=images[s : s + 3], targets=[ClassifierOutputTarget(t) for t in
                                                                               targets[s : s + 3]])
                                    for s in range(0, 5, 3)])
    assert np.array_equal(maps, reference)
    with torch.no_grad():
        assert torch.equal(logits, net(images))
    assert not layer._forward_hooks


def test_no_targets_explain_the_predicted_class(cam_model):
    images = torch.rand(6, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    predicted = (cam_model.p_fake(images) >= 0.5).long().tolist()
    assert len(set(predicted)) == 2  # both classes occur, so a wrong rule would show
    maps, _ = cams_and_logits(cam_model, images, "blocks.4", None, batch_size=4)
    assert np.array_equal(maps, compute_cams(cam_model, images, "blocks.4", predicted, batch_size=4))


def test_gradcam_plus_plus_is_selectable(cam_model):
    images = torch.rand(2, 3, 64, 64)
    maps = compute_cams(cam_model, images, "conv_head", [1, 1], method="gradcam++")
    assert maps.shape == (2, 64, 64)


def test_unknown_layer_names_the_key(cam_model):
    with pytest.raises(ValueError, match="cam.target_layer"):
        resolve_layer(cam_model, "blocks.99")


# --- Grad-CAM under attack (explain.measure) and the CAM grid figure -------------------


@pytest.fixture(scope="module")
def cam_split(tmp_path_factory) -> ImageSet:
    """Three reals and three fakes as 32 px PNGs: the face edits have mask files, the
    whole-image fake has none (unknown)."""
    folder = tmp_path_factory.mktemp("cam_images")
    rng = np.random.default_rng(3)
    samples = []
    for i, (label, source) in enumerate([(0, "ffhq_like")] * 3 + [(1, "faceapp_like")] * 2 + [(1, "pggan_like")]):
        path = folder / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path)
        mask_path = ""
        if source == "faceapp_like":
            mask = np.zeros((32, 32), np.uint8)
            mask[8:20, 10:24] = 255
            mask_path = str(folder / f"{i}_mask.png")
            Image.fromarray(mask).save(mask_path)
        samples.append(SplitRow(str(path), label, source, f"id{i}", mask_path))
    return ImageSet(samples, 32, cache=True)


def _cam_params(quantize: bool) -> Params:
    return Params(
        attack=AttackConfig(attacks=["fgsm", "pgd"], eps=["1/255"], steps=2, quantize=quantize, seed=4),
        cam=CamConfig(target_layer="blocks.2", num_samples=4, batch_size=3, attacks=["pgd"], eps=["2/255", "1/255"],
                      figure_rows=2, seed=0),
    )


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    net = build_detector(ModelConfig(channels_last=False, drop_rate=0.0), split_at=2)
    net.train()
    with torch.no_grad():
        for _ in range(2):
            net(torch.rand(8, 3, 32, 32))
    return net.eval()


def test_cam_subset_is_balanced_with_masks_where_known(cam_split):
    subset = CamSubset.from_split(cam_split, _cam_params(True))
    labels = subset.labels.numpy()
    assert len(subset.indices) == 4 and (labels == 0).sum() == 2 and (labels == 1).sum() == 2
    assert np.array_equal(subset.indices, np.sort(subset.indices))
    assert torch.equal(subset.images, cam_split.images(torch.as_tensor(subset.indices)))
    assert subset.masks.shape == (4, 32, 32)
    assert (subset.masks[labels == 0] == 0).all()  # reals: nothing manipulated
    for row, index in enumerate(subset.indices):
        sample = cam_split.samples[index]
        if sample.label == 1 and not sample.mask_path:
            assert np.isnan(subset.masks[row]).all()  # unknown, skipped by localization
        assert subset.has_mask[row] == (sample.label == 1 and bool(sample.mask_path))
    assert np.array_equal(subset.indices, CamSubset.from_split(cam_split, _cam_params(True)).indices)


@pytest.mark.parametrize("quantize", [True, False])
def test_measure_attacks_like_the_sweep_and_compares_cams(small_model, cam_split, quantize):
    params = _cam_params(quantize)
    subset = CamSubset.from_split(cam_split, params)
    assert subset.has_mask.sum() == 1  # one face edit (masked) and the whole-image fake (no mask)
    clean, attacked = measure(small_model, subset, params, torch.device("cpu"))
    results = list(attacked)
    assert cam_grid_plan(params) == (["pgd"], [1 / 255, 2 / 255])
    assert [(r.attack, r.eps) for r in results] == [("pgd", 1 / 255), ("pgd", 2 / 255)]
    x, y = subset.images, subset.labels
    np.testing.assert_allclose(clean.maps, compute_cams(small_model, x, "blocks.2", y.tolist(), batch_size=3),
                               atol=1e-6)
    assert clean.localization.shape == (int(subset.has_mask.sum()),)
    for result in results:
        # independently: the sweep's attack, generator and rounding, in the CAM batches
        attack = build_attack("pgd", small_model, result.eps, params.attack,
                              attack_generator(params.attack.seed, "pgd", result.eps))
        adv = torch.cat([attack(x[s : s + 3], y[s : s + 3]) for s in range(0, len(x), 3)])
        expected = quantize_8bit(adv) if quantize else adv
        assert torch.equal(result.cams.inputs, expected)
        assert (result.cams.inputs - x).abs().max() <= result.eps + 1e-6
        on_grid = torch.equal(quantize_8bit(result.cams.inputs), result.cams.inputs)
        assert on_grid == quantize  # PGD's random start is off the grid unless rounded
        np.testing.assert_allclose(result.cams.p_fake, small_model.p_fake(expected), atol=1e-6)
        maps = compute_cams(small_model, expected, "blocks.2", y.tolist(), batch_size=3)
        np.testing.assert_allclose(result.cams.maps, maps, atol=1e-6)
        np.testing.assert_allclose(result.stability, iinc(clean.maps, maps), atol=1e-6)
        assert result.cams.localization.shape == (int(subset.has_mask.sum()),)


def test_cam_grid_writes_a_figure(small_model, cam_split, tmp_path):
    params = _cam_params(True)
    subset = CamSubset.from_split(cam_split, params)
    clean, attacked = measure(small_model, subset, params, torch.device("cpu"))
    result = next(iter(attacked))
    path = cam_grid(tmp_path / "cam" / "cam_baseline_pgd.png", subset, clean, result, "title", rows=2)
    assert path.exists()
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 100
    chosen = pick_rows(subset.labels.numpy(), 2)
    assert subset.labels[chosen].tolist() == [0, 1]  # one real, one fake
