"""A two-class linear toy problem whose smoothed classifier has a known exact certified radius.

For f(x) = [<w, x> + b > 0 ? 0 : 1] with |w| = 1, Gaussian smoothing gives p_0(x) = Phi((<w,x>+b)/sigma), so
the exact L2 radius of the smoothed classifier at x is the distance |<w,x>+b| to the hyperplane, for every
sigma. Certifying these images shows how close the certificates come to the truth and that they stay
below it (up to the alpha failure rate).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ToyProblem:
    """Images [N, C, H, W] in [0, 1], labels [N] (the side of the plane), and the exact radii [N]."""

    model: nn.Module
    images: torch.Tensor
    labels: torch.Tensor
    exact_radius: torch.Tensor
    num_classes: int = 2


class Halfspace(nn.Module):
    """f(x) = 0 if <w, x> + b > 0 else 1: logits [B, 2] = (margin, -margin); with |w| = 1 the smoothed classifier's
    exact radius at x is the distance |<w, x> + b| to the plane."""

    def __init__(self, w: torch.Tensor, b: float) -> None:
        super().__init__()
        self.register_buffer("w", w)
        self.b = b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        margin = (x * self.w).flatten(1).sum(1) + self.b
        return torch.stack([margin, -margin], dim=1)


def make_toy(num_images: int = 20, shape: tuple[int, int, int] = (3, 8, 8), seed: int = 0) -> ToyProblem:
    """Images spread over signed distances in [-1, 1] from a plane through the mid-gray image."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=gen, dtype=torch.float64)
    w /= w.norm()
    gray = torch.full(shape, 0.5, dtype=torch.float64)
    b = -float((w * gray).sum())
    distances = torch.linspace(-1.0, 1.0, num_images, dtype=torch.float64)
    jitter = 0.15 * torch.randn((num_images, *shape), generator=gen, dtype=torch.float64)
    jitter -= (jitter * w).flatten(1).sum(1).view(-1, 1, 1, 1) * w  # keep the distance to the plane
    images = (gray + distances.view(-1, 1, 1, 1) * w + jitter).clamp(0.0, 1.0)
    signed = (images * w).flatten(1).sum(1) + b  # exact, after clamping
    model = Halfspace(w.float(), b).eval()
    return ToyProblem(
        model=model,
        images=images.float(),
        labels=(signed <= 0).long(),
        exact_radius=signed.abs(),
    )
