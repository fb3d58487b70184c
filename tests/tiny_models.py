"""Tiny random-weight models and data saved in the real formats, for tests that drive whole runs.

* an OpenAI diffusion checkpoint: ``torch.save`` of a bare UNet state dict (every tensor filled, see
  tests/data/openai/make_reference.py), with the OpenAI flags that describe it;
* a Cohen et al. classifier checkpoint: ``{'epoch', 'arch', 'state_dict', 'optimizer'}`` with arch
  ``cifar_resnet20`` and keys ``1.<net key>`` (``Sequential(NormalizeLayer, net)``), random BatchNorm statistics;
* a TorchScript linear classifier (``torch.jit.save``), whose predictions move with the noise;
* an ``.npz`` of uint8 images [N, 32, 32, 3] and labels.
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import torch
from torch import nn

from diffsmooth_fast.diffusion.openai_flags import openai_flags
from diffsmooth_fast.models.resnet import build_architecture
from diffsmooth_fast.models.unet import UNet

_DATA = os.path.join(os.path.dirname(__file__), "data", "openai")
_spec = importlib.util.spec_from_file_location("openai_make_reference", os.path.join(_DATA, "make_reference.py"))
_reference = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_reference)
fill_state_dict = _reference.fill_state_dict

# A UNet small enough for CPU tests (GroupNorm(32, C) needs C % 32 == 0): 32 channels, one level of attention.
UNET_FLAGS = dict(image_size=32, num_channels=32, num_res_blocks=1, channel_mult="1,2", attention_resolutions="16",
                  num_heads=2, learn_sigma=True, diffusion_steps=1000, noise_schedule="linear")


def unet_cli_flags(flags: dict | None = None) -> list[str]:
    """The OpenAI flags as command-line options, as OpenAI's scripts spell them (``--image_size 32``)."""
    out = []
    for name, value in (flags or UNET_FLAGS).items():
        out += [f"--{name}", str(value)]
    return out


def save_unet(path: str | os.PathLike, seed: int = 0, **overrides) -> str:
    """An OpenAI-format diffusion checkpoint for ``UNET_FLAGS`` (plus ``overrides``)."""
    flags = {**UNET_FLAGS, **overrides}
    with torch.device("meta"):
        unet = UNet(openai_flags(**flags).unet_config())
    state = fill_state_dict({k: tuple(v.shape) for k, v in unet.state_dict().items()}, seed)
    torch.save(state, os.fspath(path))
    return os.fspath(path)


def randomize_batchnorm(net: nn.Module, seed: int = 0) -> nn.Module:
    """Random BatchNorm affine and running statistics (defaults would make BN the identity and hide mistakes)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return net


def save_classifier(path: str | os.PathLike, seed: int = 0, *, nan: bool = False) -> str:
    """A Cohen-format ``cifar_resnet20`` checkpoint with random weights (``nan``: a NaN in the last bias)."""
    torch.manual_seed(seed)
    net = randomize_batchnorm(build_architecture("cifar_resnet20"), seed)
    with torch.no_grad():
        net.fc.bias.zero_()
        if nan:
            net.fc.bias[3] = float("nan")
    state = {f"1.{k}": v for k, v in net.state_dict().items()}
    torch.save({"epoch": 90, "arch": "cifar_resnet20", "state_dict": state, "optimizer": {}}, os.fspath(path))
    return os.fspath(path)


def save_npz(path: str | os.PathLike, n: int = 4, seed: int = 0) -> str:
    """n random uint8 images [n, 32, 32, 3] and labels in 0..9."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    np.savez(os.fspath(path), images=images, labels=rng.integers(0, 10, size=n))
    return os.fspath(path)


class _Halfspace(nn.Module):
    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(w, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        margin = ((x - 0.5) * self.w).flatten(1).sum(1)
        return torch.stack([margin, -margin], dim=1)


def save_halfspace(model_path: str | os.PathLike, npz_path: str | os.PathLike, n: int = 4, seed: int = 0,
                   size: int = 32) -> str:
    """A TorchScript two-class linear classifier on [B, 3, size, size] (class 0 where <w, x - 0.5> > 0, |w| = 1) and
    an .npz of n images at signed distances spread over [-1, 1] from its plane (labels: their side).

    Unlike a random deep net, whose prediction hardly moves, its smoothed prediction has the exact radius |d|
    under Gaussian noise, and any change of the noise (sigma', fresh or fixed, a method) changes the certificates:
    tests can tell methods and noises apart by their output files.
    """
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(3, size, size, generator=g)
    w /= w.norm()
    torch.jit.save(torch.jit.script(_Halfspace(w)), os.fspath(model_path))
    distances = torch.linspace(-1.0, 1.0, n + 1)
    distances = distances[distances != 0][:n]
    images = 0.5 + distances.view(-1, 1, 1, 1) * w  # within [0, 1]: |w_i| is far below 0.5
    labels = (distances < 0).long()
    np.savez(os.fspath(npz_path), images=images.numpy(), labels=labels.numpy())
    return os.fspath(model_path)
