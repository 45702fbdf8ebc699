"""model/depthwise.py: the fast depthwise weight gradient against the native convolution."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robust_deepfake.config import ModelConfig
from robust_deepfake.model.depthwise import FastDepthwiseConv2d, _DepthwiseConv, depthwise_weight_grad, use_fast_depthwise
from robust_deepfake.model.detector import build_detector


pytestmark = pytest.mark.usefixtures("one_thread")


def _native(x, weight, stride, padding):
    """Leaf copies of x and weight and the native convolution's output on them."""
    x = x.detach().requires_grad_()
    weight = weight.detach().requires_grad_()
    out = F.conv2d(x, weight, None, stride, padding, 1, weight.shape[0])
    return x, weight, out


# (channels, map size, kernel, stride): kernels larger than the map (where the fast path
# applies) and smaller ones, in both strides B0 uses
SHAPES = [(24, 2, 5, 1), (24, 2, 3, 1), (16, 4, 5, 2), (16, 4, 5, 1), (8, 4, 3, 1), (8, 7, 3, 2), (8, 8, 5, 1)]


@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize(("channels", "size", "kernel", "stride"), SHAPES)
def test_same_forward_and_input_gradient_and_the_weight_gradient_to_rounding(channels, size, kernel, stride,
                                                                             channels_last):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(5, channels, size, size, generator=generator)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    weight = torch.randn(channels, 1, kernel, kernel, generator=generator)
    padding = (kernel // 2, kernel // 2)
    x_ref, w_ref, reference = _native(x, weight, (stride, stride), padding)
    x_new = x.detach().clone().requires_grad_()
    w_new = weight.detach().clone().requires_grad_()
    out = _DepthwiseConv.apply(x_new, w_new, (stride, stride), padding)
    grad_out = torch.randn(reference.shape, generator=generator)
    reference.backward(grad_out)
    out.backward(grad_out)
    assert torch.equal(out, reference)
    assert out.is_contiguous(memory_format=torch.channels_last) == reference.is_contiguous(
        memory_format=torch.channels_last)
    assert torch.equal(x_new.grad, x_ref.grad)
    torch.testing.assert_close(w_new.grad, w_ref.grad, rtol=1e-5, atol=1e-5)


def test_taps_that_only_see_padding_get_a_zero_gradient():
    x = torch.randn(3, 4, 2, 2)
    grad = depthwise_weight_grad(torch.randn(3, 4, 2, 2), x, (5, 5), (1, 1), (2, 2))
    # on a 2x2 map with padding 2, only offsets 1..3 ever meet a pixel
    assert torch.count_nonzero(grad[:, :, 1:4, 1:4]) == 4 * 9
    grad[:, :, 1:4, 1:4] = 0
    assert torch.count_nonzero(grad) == 0


def _b0_step(model, x, labels):
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), labels).backward()
    return {name: p.grad.clone() for name, p in model.named_parameters()}


def test_the_detector_trains_with_the_fast_path_and_keeps_its_state_dict(monkeypatch):
    torch.manual_seed(0)
    fast = build_detector(ModelConfig(drop_rate=0.0), split_at=2)
    depthwise = [m for m in fast.modules() if isinstance(m, FastDepthwiseConv2d)]
    assert len(depthwise) == 16  # every depthwise convolution of EfficientNet-B0
    torch.manual_seed(0)
    native = build_detector(ModelConfig(drop_rate=0.0), split_at=2)
    for module in native.modules():
        if isinstance(module, FastDepthwiseConv2d):
            module.__class__ = nn.Conv2d
    assert list(fast.state_dict()) == list(native.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(fast.state_dict().values(), native.state_dict().values(),
                                                 strict=True))

    x, labels = torch.rand(4, 3, 64, 64), torch.tensor([0, 1, 1, 0])
    fast.train()
    native.train()
    calls = []
    apply = _DepthwiseConv.apply

    def counting(*args):
        calls.append(args[0].shape)
        return apply(*args)

    monkeypatch.setattr(_DepthwiseConv, "apply", counting)
    grads_fast = _b0_step(fast, x, labels)
    monkeypatch.undo()
    grads_native = _b0_step(native, x, labels)
    assert calls and all(max(shape[2:]) < 5 for shape in calls)  # only where a kernel overhangs the map
    for name, grad in grads_native.items():
        torch.testing.assert_close(grads_fast[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_eval_and_no_grad_take_the_native_path(monkeypatch):
    torch.manual_seed(0)
    model = build_detector(ModelConfig(), split_at=2)
    monkeypatch.setattr(_DepthwiseConv, "apply", lambda *args: pytest.fail("fast path in eval"))
    x = torch.rand(2, 3, 64, 64, requires_grad=True)
    model.eval()(x).sum().backward()  # attacks and CAMs: eval mode, input gradients
    with torch.no_grad():
        model.train()(x)


def test_only_plain_depthwise_convolutions_are_converted():
    model = nn.Sequential(nn.Conv2d(4, 4, 3, groups=4, bias=False), nn.Conv2d(4, 8, 1),
                          nn.Conv2d(4, 4, 3, groups=4, bias=True), nn.Conv2d(4, 4, 3, groups=2, bias=False))
    assert use_fast_depthwise(model) == 1
    assert [type(m) for m in model] == [FastDepthwiseConv2d, nn.Conv2d, nn.Conv2d, nn.Conv2d]
