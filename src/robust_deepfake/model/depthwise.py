"""Depthwise convolutions with a fast weight gradient where the kernel overhangs the map.

At the demo's 64 px, EfficientNet-B0's last stages run 3x3 and 5x5 depthwise kernels on
2x2 and 4x4 maps. For a kernel larger than its input map oneDNN (3.x, AVX2) computes the
weight gradient with one small GEMM per channel: ~22-29 ms per 32-image batch for a
1152-channel layer on one thread, against ~2 ms for the sum over kernel taps below
(measured; its forward and input gradient stay fast). That weight gradient was about a
third of a baseline training step on the CPU.

`FastDepthwiseConv2d` swaps in only there: a CPU module in training mode whose weight
needs a gradient and whose kernel is larger than the map. The forward and the input
gradient are the native ops (same bytes); the weight gradient is the same sum in
another order (rounding differs, ~2e-7 relative). Everywhere else (eval, CUDA, larger
maps, attacks and CAMs, which need input gradients only) the module is nn.Conv2d.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable


def depthwise_weight_grad(grad_out: torch.Tensor, x: torch.Tensor, kernel: tuple[int, int],
                          stride: tuple[int, int], padding: tuple[int, int]) -> torch.Tensor:
    """dL/dW (C, 1, kh, kw) of a bias-free depthwise convolution (dilation 1): for each
    kernel tap, the product of the output gradient with the input window the tap saw,
    summed over batch and positions. Taps that only ever see padding are zero."""
    n, channels, out_h, out_w = grad_out.shape
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    padded = F.pad(x, (pw, pw, ph, ph))
    grad = grad_out.new_zeros(channels, kh, kw)
    for a in range(kh):
        if not _tap_sees_input(a, out_h, sh, ph, x.shape[2]):
            continue
        for b in range(kw):
            if not _tap_sees_input(b, out_w, sw, pw, x.shape[3]):
                continue
            window = padded[:, :, a : a + sh * (out_h - 1) + 1 : sh, b : b + sw * (out_w - 1) + 1 : sw]
            grad[:, a, b] = (grad_out * window).sum(dim=(0, 2, 3))
    return grad.unsqueeze(1)


def _tap_sees_input(tap: int, out_size: int, stride: int, pad: int, in_size: int) -> bool:
    """Whether kernel offset `tap` meets a real (not padding) input row/column at any output."""
    return any(0 <= i * stride + tap - pad < in_size for i in range(out_size))


class _DepthwiseConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, stride: tuple[int, int],
                padding: tuple[int, int]) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.padding = stride, padding
        return F.conv2d(x, weight, None, stride, padding, 1, weight.shape[0])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        x, weight = ctx.saved_tensors
        grad_x = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(
                grad_out, x, weight, None, list(ctx.stride), list(ctx.padding), [1, 1], False, [0, 0],
                weight.shape[0], [True, False, False])[0]
        if ctx.needs_input_grad[1]:
            grad_weight = depthwise_weight_grad(grad_out, x, tuple(weight.shape[-2:]), ctx.stride, ctx.padding)
        return grad_x, grad_weight, None, None


class FastDepthwiseConv2d(nn.Conv2d):
    """nn.Conv2d (depthwise, no bias, dilation 1, zero padding) that trains its weight
    through `depthwise_weight_grad` on the CPU when the kernel overhangs the input map."""

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if (self.training and input.device.type == "cpu" and torch.is_grad_enabled() and weight.requires_grad
                and (self.kernel_size[0] > input.shape[2] or self.kernel_size[1] > input.shape[3])):
            return _DepthwiseConv.apply(input, weight, self.stride, self.padding)
        return super()._conv_forward(input, weight, bias)


def _is_plain_depthwise(module: nn.Module) -> bool:
    return (type(module) is nn.Conv2d and module.groups > 1
            and module.groups == module.in_channels == module.out_channels
            and module.bias is None and module.dilation == (1, 1) and module.padding_mode == "zeros"
            and isinstance(module.padding, tuple))


def use_fast_depthwise(model: nn.Module) -> int:
    """Turn every plain depthwise nn.Conv2d of `model` into a FastDepthwiseConv2d in place
    (same parameters and state-dict keys, no RNG draws); returns how many."""
    count = 0
    for module in model.modules():
        if _is_plain_depthwise(module):
            module.__class__ = FastDepthwiseConv2d  # a subclass that adds no state
            count += 1
    return count
