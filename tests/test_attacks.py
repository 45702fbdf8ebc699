"""Our attacks against the torchattacks 3.5.1 oracle, the eps-ball/[0,1] guarantees, and
8-bit rounding of adversarial images."""

import contextlib

import pytest
import torch
import torchattacks

from robust_deepfake.robustness.attacks import (
    ATTACKS,
    BIM,
    FGSM,
    MIFGSM,
    PGD,
    attack_mode,
    build_attack,
    gradient_passes,
    quantize_8bit,
)
from robust_deepfake.config import AttackConfig, ModelConfig
from robust_deepfake.model.detector import build_detector

# One intra-op thread: these small tensors run fastest that way on a shared CPU.
pytestmark = pytest.mark.usefixtures("one_thread")

EPS = 4 / 255


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    net = build_detector(ModelConfig(channels_last=False, drop_rate=0.0), split_at=2)
    # a few BN updates so running stats differ from the init: eval vs train mode matters
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.rand(16, 3, 32, 32))
    return net.eval()


@pytest.fixture(scope="module")
def batch():
    generator = torch.Generator().manual_seed(1)
    images = torch.rand(6, 3, 32, 32, generator=generator)
    images[0, :, :4, :4] = 0.0  # pixels at the box edges exercise the clamps
    images[1, :, :4, :4] = 1.0
    return images, torch.tensor([0, 1, 0, 1, 1, 0])


def _check_ball(adv, images, eps):
    assert (adv - images).abs().max() <= eps + 1e-6
    assert adv.min() >= 0 and adv.max() <= 1


def test_fgsm_matches_torchattacks(model, batch):
    images, labels = batch
    ours = FGSM(model, EPS)(images, labels)
    oracle = torchattacks.FGSM(model, eps=EPS)(images, labels)
    assert (ours - oracle).abs().max() <= 1e-6
    _check_ball(ours, images, EPS)
    assert (ours != images).any()


@pytest.mark.parametrize("steps", [1, 5])
def test_bim_matches_torchattacks(model, batch, steps):
    images, labels = batch
    ours = BIM(model, EPS, alpha=1 / 255, steps=steps)(images, labels)
    oracle = torchattacks.BIM(model, eps=EPS, alpha=1 / 255, steps=steps)(images, labels)
    assert (ours - oracle).abs().max() <= 1e-6
    _check_ball(ours, images, EPS)


def test_pgd_matches_torchattacks_given_the_same_random_start(model, batch):
    images, labels = batch
    torch.manual_seed(1234)  # torchattacks draws its start from the global generator
    oracle = torchattacks.PGD(model, eps=EPS, alpha=1 / 255, steps=5, random_start=True)(images, labels)
    ours = PGD(model, EPS, alpha=1 / 255, steps=5, generator=torch.Generator().manual_seed(1234))(images, labels)
    assert (ours - oracle).abs().max() <= 1e-6
    _check_ball(ours, images, EPS)


def test_pgd_without_random_start_matches(model, batch):
    images, labels = batch
    oracle = torchattacks.PGD(model, eps=EPS, alpha=1 / 255, steps=3, random_start=False)(images, labels)
    ours = PGD(model, EPS, alpha=1 / 255, steps=3, random_start=False)(images, labels)
    assert (ours - oracle).abs().max() <= 1e-6


def test_mifgsm_matches_torchattacks(model, batch):
    images, labels = batch
    oracle = torchattacks.MIFGSM(model, eps=EPS, alpha=1 / 255, steps=4, decay=1.0)(images, labels)
    ours = MIFGSM(model, EPS, alpha=1 / 255, steps=4, decay=1.0)(images, labels)
    assert (ours - oracle).abs().max() <= 1e-6
    _check_ball(ours, images, EPS)


@pytest.mark.parametrize("name", ["fgsm", "bim", "pgd", "mifgsm"])
@pytest.mark.parametrize("eps", [0.0, 1 / 255, 8 / 255])
def test_every_attack_stays_in_the_ball_and_the_box(model, batch, name, eps):
    images, labels = batch
    attack = build_attack(name, model, eps, AttackConfig(steps=3), torch.Generator().manual_seed(0))
    adv = attack(images, labels)
    _check_ball(adv, images, eps)
    if eps == 0:
        assert torch.equal(adv, images)


def test_attacks_raise_the_loss(model, batch):
    images, labels = batch
    clean = torch.nn.functional.cross_entropy(model(images), labels)
    for attack in (FGSM(model, EPS), PGD(model, EPS, 1 / 255, 5, generator=torch.Generator().manual_seed(0))):
        with torch.no_grad():
            assert torch.nn.functional.cross_entropy(model(attack(images, labels)), labels) > clean


def test_attack_mode_restores_training_state_and_grad_flags(model):
    model.train()
    frozen = next(model.parameters())
    frozen.requires_grad_(False)
    with attack_mode(model):
        assert not model.training
        assert not any(p.requires_grad for p in model.parameters())
    assert model.training and not frozen.requires_grad
    assert all(p.requires_grad for p in list(model.parameters())[1:])
    frozen.requires_grad_(True)
    model.eval()


def test_relative_and_absolute_step_sizes():
    assert AttackConfig(step_size_relative=0.25).step_size_for(8 / 255) == pytest.approx(2 / 255)
    assert AttackConfig(step_size="1/255").step_size_for(8 / 255) == pytest.approx(1 / 255)


def test_gradient_passes_per_image():
    assert gradient_passes("fgsm", 10) == 1
    assert gradient_passes("bim", 10) == 10
    assert gradient_passes("pgd", 3) == 3
    assert gradient_passes("mifgsm", 7) == 7
    assert set(ATTACKS) == {"fgsm", "bim", "pgd", "mifgsm"}
    with pytest.raises(KeyError):
        gradient_passes("cw", 3)


def test_unknown_attack_name_is_an_error(model):
    with pytest.raises(ValueError, match="unknown attack"):
        build_attack("cw", model, EPS, AttackConfig())


def test_quantize_8bit_maps_onto_the_256_grey_levels():
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    x[0, 0, 0, :4] = torch.tensor([0.0, 1.0, 0.5 / 255 - 1e-4, 254.5 / 255 + 1e-4])
    q = quantize_8bit(x)
    levels = q * 255
    assert torch.equal(levels, torch.round(levels))  # whole grey levels
    assert q.min() >= 0 and q.max() <= 1
    assert (q - x).abs().max() <= 0.5 / 255 + 1e-7  # nearest level
    assert q[0, 0, 0, :4].tolist() == [0.0, 1.0, 0.0, 1.0]
    # idempotent, and what an 8-bit image decodes to
    assert torch.equal(quantize_8bit(q), q)
    as_uint8 = torch.round(x * 255).to(torch.uint8)
    assert torch.equal(q, as_uint8.float() / 255)
    assert torch.equal(quantize_8bit(as_uint8.float() / 255), as_uint8.float() / 255)


@pytest.fixture(scope="module")
def grid_batch(batch):
    """The batch on the 8-bit grid, as decoded PNG/JPEG inputs are (0 and 255 corners kept)."""
    images, labels = batch
    return quantize_8bit(images), labels


@pytest.mark.parametrize("name", ["fgsm", "bim", "pgd", "mifgsm"])
@pytest.mark.parametrize("grey", [1, 2, 4, 8])
def test_quantized_attack_stays_in_the_ball_and_the_box(model, grid_batch, name, grey):
    images, labels = grid_batch
    eps = grey / 255
    attack = build_attack(name, model, eps, AttackConfig(steps=3, step_size_relative=0.3),
                          torch.Generator().manual_seed(grey))
    adv = attack(images, labels)
    q = quantize_8bit(adv)
    _check_ball(q, images, eps)
    levels = (q - images) * 255
    assert torch.allclose(levels, torch.round(levels), atol=1e-4)  # moved by whole grey levels
    assert torch.round(levels).abs().max() <= grey
    assert (q != images).any()  # the perturbation survives rounding


def test_quantization_removes_sub_grey_level_perturbations(model, grid_batch):
    images, labels = grid_batch
    adv = FGSM(model, 0.4 / 255)(images, labels)
    assert (adv != images).any()
    assert torch.equal(quantize_8bit(adv), images)


# --- random starts on the images' device ----------------------------------------------

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

# sha256 of PGD.start's bytes for the images and generator below, recorded before random
# starts moved to the device: on the CPU the start must stay the CPU generator's draw.
CPU_START_SHA256 = "074d3e4e90465d2cf2ca5b76ac72dc34d1c2caad56a3de5361ca8f6462b5a5d2"


def _start_inputs():
    from robust_deepfake.robustness.sweep import attack_generator

    pixels = torch.randint(0, 256, (10, 3, 32, 32), generator=torch.Generator().manual_seed(11), dtype=torch.uint8)
    return pixels.float() / 255, attack_generator(5, "pgd", 2 / 255)


def test_pgd_cpu_random_start_is_the_cpu_generators_draw():
    import hashlib

    images, generator = _start_inputs()
    start = PGD(None, 2 / 255, 1 / 255, 1, generator=generator).start(images)
    assert hashlib.sha256(start.numpy().tobytes()).hexdigest() == CPU_START_SHA256
    # the same as drawing from the CPU generator by hand
    _, again = _start_inputs()
    noise = torch.empty(images.shape).uniform_(-2 / 255, 2 / 255, generator=again)
    assert torch.equal(start, torch.clamp(images + noise, 0, 1))
    _check_ball(start, images, 2 / 255)


def test_pgd_device_generator_is_the_given_one_on_its_own_device():
    generator = torch.Generator().manual_seed(0)
    attack = PGD(None, EPS, 1 / 255, 1, generator=generator)
    assert attack.device_generator(torch.device("cpu")) is generator
    assert PGD(None, EPS, 1 / 255, 1).device_generator(torch.device("cpu")) is None


@needs_cuda
def test_pgd_cuda_random_start_is_drawn_on_the_gpu_and_seeded():
    images, _ = _start_inputs()
    images = images.cuda()
    starts = []
    for _ in range(2):
        _, generator = _start_inputs()
        attack = PGD(None, 2 / 255, 1 / 255, 1, generator=generator)
        starts.append(torch.cat([attack.start(images), attack.start(images)]))  # two batches
        assert attack.device_generator(images.device).device == images.device
    assert torch.equal(starts[0], starts[1])  # reproducible per seed
    first, second = starts[0].chunk(2)
    assert not torch.equal(first, second)  # the stream continues from batch to batch
    _check_ball(first, images, 2 / 255)
    cpu_start = PGD(None, 2 / 255, 1 / 255, 1, generator=_start_inputs()[1]).start(images.cpu())
    assert not torch.equal(first.cpu(), cpu_start)  # documented: GPU and CPU draws differ


# --- attack.amp: bf16 autocast of the attack passes -----------------------------------


def test_amp_is_ignored_on_the_cpu_by_default(model, batch):
    images, labels = batch
    for name in ("fgsm", "pgd", "mifgsm"):
        plain = build_attack(name, model, EPS, AttackConfig(steps=2), torch.Generator().manual_seed(0))
        amp = build_attack(name, model, EPS, AttackConfig(steps=2, amp=True), torch.Generator().manual_seed(0))
        assert amp.amp and isinstance(amp.autocast(images.device), contextlib.nullcontext)
        assert torch.equal(amp(images, labels), plain(images, labels))


def test_amp_runs_the_forward_in_bf16_and_returns_a_float32_gradient(model, batch):
    images, labels = batch
    seen = []
    handle = model.body.conv_stem.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    try:
        attack = FGSM(model, EPS, amp=True, amp_device_types=frozenset({"cpu"}))
        grad = attack.gradient(images, labels)
        adv = attack(images, labels)
    finally:
        handle.remove()
    assert seen and set(seen) == {torch.bfloat16}
    assert grad.dtype == torch.float32 and adv.dtype == torch.float32
    _check_ball(adv, images, EPS)


def _trained_tiny_detector(device):
    """The detector trained by `fit` on 192 generated 32 px images (in memory), 12 epochs:
    clean accuracy well above chance, so accuracy under attack at 1/255 is in between.
    Returns the training images and their mirror images (384: one image is 0.26 points)."""
    import numpy as np

    from robust_deepfake.config import TrainConfig
    from robust_deepfake.data.dataset import ImageSet, SplitRow
    from robust_deepfake.data.sample import SampleSpec, iter_sample
    from robust_deepfake.model.training import fit

    items = list(iter_sample(SampleSpec(seed=7, image_size=32, real_per_source=48, fakes_per_method=24)))
    samples = [SplitRow("", int(item.relpath.startswith("fake/")), item.relpath.split("/")[1], f"g{i}", "")
               for i, item in enumerate(items)]
    dataset = ImageSet(samples, 32, cache=False)
    dataset.pixels = torch.from_numpy(np.stack([item.pixels for item in items])).permute(0, 3, 1, 2).contiguous()
    torch.manual_seed(0)
    net = build_detector(ModelConfig(), split_at=2)
    config = TrainConfig(epochs=12, batch_size=32, lr=0.002, patience=12, monitor="val_accuracy", amp=False)
    fit(net, dataset, dataset, config, None, device, show_progress=False)
    images = dataset.images(torch.arange(len(dataset)))
    images, labels = torch.cat([images, images.flip(3)]), torch.cat([dataset.labels, dataset.labels])
    return net.eval(), images.to(device), labels.to(device)


def _accuracy_under_attack(net, images, labels, amp: bool, types: frozenset[str]) -> dict[str, float]:
    from robust_deepfake.robustness.sweep import adversarial, attack_generator

    config = AttackConfig(attacks=["fgsm", "pgd"], eps=["1/255"], steps=2, amp=amp)
    out = {}
    with torch.no_grad():
        out["clean"] = (net(images).argmax(1) == labels).float().mean().item()
    for name in config.attacks:
        attack = build_attack(name, net, 1 / 255, config, attack_generator(0, name, 1 / 255), amp_device_types=types)
        adv = adversarial(attack, images, labels, quantize=True)
        with torch.no_grad():
            out[name] = (net(adv).argmax(1) == labels).float().mean().item()
    return out


def _check_amp_accuracy(device: torch.device) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # float reductions depend on the thread count: pinned, as train.num_threads
    try:
        net, images, labels = _trained_tiny_detector(device)
        types = frozenset({device.type})
        fp32 = _accuracy_under_attack(net, images, labels, amp=False, types=types)
        bf16 = _accuracy_under_attack(net, images, labels, amp=True, types=types)
    finally:
        torch.set_num_threads(threads)
    print(f"accuracy under attack, float32 {fp32}, bf16 autocast {bf16}")
    assert fp32["clean"] >= 0.65, fp32  # a model that learned something
    assert max(fp32["fgsm"], fp32["pgd"]) < fp32["clean"] - 0.1, fp32  # and attacks that bite
    for key in fp32:
        assert abs(bf16[key] - fp32[key]) <= 0.01, (key, fp32, bf16)


@pytest.mark.slow  # trains a detector for 12 epochs, then attacks it in bf16 on the CPU
def test_amp_moves_accuracy_under_attack_by_at_most_one_point_cpu_bf16():
    """attack.amp applies on CUDA; here the same bf16 autocast runs on the CPU (opted in)."""
    _check_amp_accuracy(torch.device("cpu"))


@needs_cuda
def test_amp_moves_accuracy_under_attack_by_at_most_one_point_cuda():
    _check_amp_accuracy(torch.device("cuda"))
