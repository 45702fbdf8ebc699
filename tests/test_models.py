"""The detector: split equals the unsplit timm forward, normalization inside, weights I/O."""

import pytest
import timm
import torch

from robust_deepfake.config import ModelConfig
from robust_deepfake.model.detector import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    WeightsUnavailableError,
    build_detector,
    load_detector,
    save_weights,
    weights_bytes,
)


pytestmark = pytest.mark.usefixtures("one_thread")


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


@pytest.mark.parametrize("split_at", [2, 4])
def test_late_of_early_equals_the_timm_forward_in_channels_last(split_at):
    """With channels_last the split forward still equals timm's own forward on a
    channels_last input, and features_late gives the same logits whichever layout its
    input comes in (perturbed statistics come back contiguous)."""
    torch.manual_seed(0)
    model = build_detector(ModelConfig(channels_last=True, drop_rate=0.0), split_at=split_at).eval()
    x = torch.rand(3, 3, 64, 64)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        reference = model.body(((x - mean) / std).contiguous(memory_format=torch.channels_last))
        f = model.features_early(x)
        assert f.is_contiguous(memory_format=torch.channels_last)
        split = model.features_late(f)
        from_contiguous = model.features_late(f.contiguous())
    assert torch.equal(split, reference)
    assert torch.equal(from_contiguous, split)


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


def test_saved_weights_are_byte_identical(detector, tmp_path):
    """Two saves of the same weights give the same bytes whatever the file name (DVC
    must not see new outs for identical weights), and they are weights_bytes'."""
    first, second = tmp_path / "a" / "model.pt", tmp_path / "other_name.pt"
    first.parent.mkdir()
    save_weights(detector, first)
    save_weights(detector, second)
    assert first.read_bytes() == second.read_bytes()
    assert weights_bytes(detector) == first.read_bytes()
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["model.pt", "other_name.pt"], "temp files left"


def test_saved_weights_follow_the_weights(detector, tmp_path):
    """Byte-stable is not constant: other weights give other bytes, the same weights
    in a fresh model object the same bytes."""
    twin = build_detector(ModelConfig(channels_last=False), split_at=3).eval()
    twin.load_state_dict(detector.state_dict())
    assert weights_bytes(twin) == weights_bytes(detector)
    with torch.no_grad():
        twin.body.classifier.bias.add_(1e-3)
    assert weights_bytes(twin) != weights_bytes(detector)


def test_saved_weights_do_not_depend_on_the_memory_format(tmp_path):
    torch.manual_seed(0)
    plain = build_detector(ModelConfig(channels_last=False), split_at=2)
    fast = build_detector(ModelConfig(channels_last=True), split_at=2)
    fast.load_state_dict(plain.state_dict())
    save_weights(fast, tmp_path / "model.pt")
    loaded = load_detector(tmp_path / "model.pt", ModelConfig(channels_last=False), split_at=2)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), plain.state_dict().values(), strict=True))


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
