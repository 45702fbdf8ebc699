"""Tiny models for the attack tests, trained in a few seconds on synthetic images.

`toy_images`: 16 px images on the 8-bit grid; a smooth random background plus pixel
noise, and for fakes (label 1) a faint checkerboard of random amplitude (2-15 grey levels),
the kind of trace upsampling leaves. A small CNN learns it to ~85-95% accuracy, and L-inf
budgets of a few grey levels can remove or add it, so attacks have something to do.

`CoarseInput`: a deliberately gradient-masked model. Its forward rounds the input to
coarse grey levels before the wrapped network: the same classifier up to that rounding,
but the input gradient is zero almost everywhere, so gradient attacks stall while
black-box and transfer attacks still work (Athalye et al. 2018, "shattered gradients").
"""

from __future__ import annotations

import torch
from torch import nn

SIZE = 16


def toy_images(n: int, seed: int, size: int = SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (n, 3, size, size) in [0, 1] on the 1/255 grid, labels (n,) alternating 0/1)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 3, size // 4, size // 4, generator=g) * 0.6 + 0.2
    x = nn.functional.interpolate(base, size=size, mode="bilinear", align_corners=False)
    labels = torch.arange(n) % 2
    checker = ((torch.arange(size)[:, None] + torch.arange(size)[None, :]) % 2).float() * 2 - 1
    amplitude = 0.01 + 0.05 * torch.rand(n, 1, 1, 1, generator=g)
    x = x + 0.03 * torch.randn(x.shape, generator=g) + labels.view(-1, 1, 1, 1) * amplitude * checker
    return torch.round(x.clamp(0, 1) * 255) / 255, labels


def toy_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 2),
    )


def train_toy_cnn(seed: int, images: torch.Tensor, labels: torch.Tensor, epochs: int = 30) -> nn.Module:
    """Adam, batch 64, seeded init and order; eval mode on return."""
    torch.manual_seed(seed)
    model = toy_cnn()
    optimizer = torch.optim.Adam(model.parameters(), 5e-3)
    order = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for batch in torch.randperm(len(labels), generator=order).split(64):
            loss = nn.functional.cross_entropy(model(images[batch]), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


class CoarseInput(nn.Module):
    """model(round(x * 255 / step) * step / 255): input gradients vanish (torch.round's is 0)."""

    def __init__(self, model: nn.Module, step: int = 8) -> None:
        super().__init__()
        self.model, self.step = model, step

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(torch.round(x * 255 / self.step) * self.step / 255)


def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.no_grad():
        return float(((model(images).softmax(1)[:, 1] >= 0.5).long() == labels).float().mean())
