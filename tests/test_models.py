"""The detector: split equals the unsplit timm forward, normalization inside, weights I/O."""

import pytest
import timm
import torch

from robust_deepfake.config import ModelConfig
from robust_deepfake.models import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    WeightsUnavailableError,
    build_detector,
    load_detector,
    save_weights,
)


@pytest.fixture(scope="module")
def detector():
    torch.manual_seed(0)
    return build_detector(ModelConfig(channels_last=False), split_at=2).eval()


@pytest.mark.parametrize("split_at", [1, 2, 4, 6])
def test_late_of_early_equals_the_timm_forward(split_at):
    torch.manual_seed(0)
    model = build_detector(ModelConfig(channels_last=False, drop_rate=0.0), split_at=split_at).eval()
    x = torch.rand(3, 3, 64, 64)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        reference = model.body((x - mean) / std)  # timm's own unsplit forward
        split = model.features_late(model.features_early(x))
    assert split.shape == (3, 2)
    assert torch.equal(split, reference)


def test_channels_last_gives_the_same_logits():
    torch.manual_seed(0)
    plain = build_detector(ModelConfig(channels_last=False), split_at=2).eval()
    fast = build_detector(ModelConfig(channels_last=True), split_at=2).eval()
    fast.load_state_dict(plain.state_dict())
    x = torch.rand(4, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), plain(x), rtol=1e-4, atol=1e-5)


def test_head_is_two_class_and_small_at_init(detector):
    assert detector.body.classifier.out_features == 2
    assert detector.body.classifier.in_features == 1280
    with torch.no_grad():
        logits = detector(torch.rand(8, 3, 64, 64))
    assert logits.abs().max() < 1.0, "initial logits should be near zero (see _init_head)"


def test_split_at_out_of_range():
    with pytest.raises(ValueError, match="reg.split_at"):
        build_detector(ModelConfig(), split_at=7)


def test_weights_roundtrip(detector, tmp_path):
    path = tmp_path / "model.pt"
    save_weights(detector, path)
    loaded = load_detector(path, ModelConfig(channels_last=False), split_at=4)  # split is not in the keys
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), detector(x))


def test_pretrained_offline_without_weights_fails_fast_with_instructions(monkeypatch):
    """Offline semantics: the hub is never contacted (no retry loop), the error says what to do."""
    import socket

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    attempts = []

    def no_network(*args, **kwargs):
        attempts.append(args)
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    with pytest.raises(WeightsUnavailableError, match="model.weights_path"):
        build_detector(ModelConfig(pretrained=True), split_at=2)
    assert attempts == [], f"tried to reach the network: {attempts}"


def test_missing_weights_file_is_named(tmp_path):
    with pytest.raises(WeightsUnavailableError, match="does not exist"):
        build_detector(ModelConfig(pretrained=True, weights_path=str(tmp_path / "nope.pth")), split_at=2)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_pretrained_from_a_local_file(tmp_path, suffix):
    torch.manual_seed(123)
    imagenet = timm.create_model("efficientnet_b0", pretrained=False)  # stands in for ImageNet weights
    path = tmp_path / f"efficientnet_b0{suffix}"
    if suffix == ".pth":
        torch.save(imagenet.state_dict(), path)
    else:
        from safetensors.torch import save_file

        save_file(imagenet.state_dict(), str(path))
    model = build_detector(ModelConfig(pretrained=True, weights_path=str(path)), split_at=2)
    assert torch.equal(model.body.conv_stem.weight, imagenet.conv_stem.weight)
    assert torch.equal(model.body.blocks[3][0].conv_pw.weight, imagenet.blocks[3][0].conv_pw.weight)
    assert model.body.classifier.out_features == 2
