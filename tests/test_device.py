"""Where tensors compute: device resolution, thread pinning, seeding, mixed precision,
and (on a CUDA machine) a training step that never waits for the GPU."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from robust_deepfake.config import ModelConfig, RegConfig
from robust_deepfake.errors import StageError
from robust_deepfake.model.device import NO_AMP, Amp, DeviceError, resolve_device, seed_everything, set_threads

cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
@pytest.mark.parametrize("name", ["cuda", "cuda:0"])
def test_cuda_without_cuda_names_the_setting(name):
    with pytest.raises(DeviceError, match="--device") as caught:
        resolve_device(name, key="--device")
    assert name in str(caught.value)
    assert isinstance(caught.value, StageError), "stages turn it into one line and exit 2"
    with pytest.raises(DeviceError, match="train.device"):
        resolve_device(name)


def test_auto_and_cpu():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_set_threads_pins_the_intra_op_threads(restore_threads):
    set_threads(1)
    assert torch.get_num_threads() == 1
    set_threads(None)  # no setting: left as it is
    assert torch.get_num_threads() == 1


def test_seed_everything_seeds_python_numpy_and_torch():
    def draw():
        return random.random(), np.random.rand(), torch.rand(1).item()

    seed_everything(3)
    first = draw()
    seed_everything(3)
    assert draw() == first
    seed_everything(2**32 + 3)  # numpy takes < 2**32: reduced, not rejected
    seed_everything(4)
    assert draw() != first


def test_amp_is_off_on_the_cpu():
    assert not Amp.for_device(torch.device("cpu"), wanted=True).enabled
    for amp in (NO_AMP, Amp.for_device(torch.device("cpu"), wanted=True)):
        with amp.autocast():
            product = torch.ones(2, 2) @ torch.ones(2, 2)
        assert product.dtype == torch.float32
        loss = torch.tensor(2.0)
        assert amp.scale(loss) is loss
        parameter = torch.nn.Parameter(torch.zeros(1))
        parameter.grad = torch.ones(1)
        amp.step(torch.optim.SGD([parameter], lr=0.5))
        assert parameter.item() == -0.5


# --- CUDA -------------------------------------------------------------------------------


@cuda_only
def test_cuda_resolves():
    assert resolve_device("cuda:0", key="--device") == torch.device("cuda:0")
    assert resolve_device("auto").type == "cuda"
    assert Amp.for_device(torch.device("cuda"), wanted=True).enabled
    assert not Amp.for_device(torch.device("cuda"), wanted=False).enabled


@cuda_only
@pytest.mark.parametrize("reg", [
    None,
    RegConfig(mode="random"),
    RegConfig(mode="gradient"),
], ids=["baseline", "random", "gradient"])
def test_training_step_does_not_wait_for_the_gpu(reg):
    """CUDA's sync debug mode raises on every blocking host<->device operation: the
    step (forward and backward) must queue its work and return. On CUDA the random
    mode draws its directions from a generator on the GPU (the training loop makes one)."""
    from robust_deepfake.model.detector import build_detector
    from robust_deepfake.model.training import training_step

    device = torch.device("cuda")
    torch.manual_seed(0)
    model = build_detector(ModelConfig(drop_rate=0.0), split_at=2).to(device).train()
    images = torch.rand(8, 3, 64, 64, device=device)
    labels = torch.tensor([0, 1] * 4, device=device)
    criterion = torch.nn.CrossEntropyLoss(weight=torch.tensor([0.8, 1.3], device=device))
    amp = Amp.for_device(device, wanted=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    generator = torch.Generator(device=device).manual_seed(0)  # as fit makes it on CUDA
    for step in range(3):  # the first step may sync (lazy init, autotuning)
        optimizer.zero_grad(set_to_none=True)
        if step:
            torch.cuda.set_sync_debug_mode("error")  # (warns that the mode is a prototype)
        try:
            losses = training_step(model, images, labels, criterion, reg, generator=generator, amp=amp)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        amp.step(optimizer)
    assert torch.isfinite(losses.total).item()
