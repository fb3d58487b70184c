"""The classifiers of Cohen et al. and SmoothAdv, with their exact state-dict layouts.

Two families, both written to load the published checkpoints key for key:

* ``CifarResNet``: the CIFAR ResNet that locuslab/smoothing ships as ``archs/cifar_resnet.py`` (after Wei
  Yang's pytorch-classification): a 3x3 stem conv 3->16, three stages of ``n = (depth - 2) / 6`` BasicBlocks of
  widths 16/32/64 (stride 2 at the first block of stages 2 and 3, where a 1x1 conv + BN shortcut appears),
  ``AvgPool2d(8)`` and ``fc`` 64 -> num_classes. ``cifar_resnet110`` is depth 110 (18 blocks per stage, 1.73 M
  parameters); SmoothAdv's ``imagenet32_resnet110`` is the same network with 1000 classes, run on 32x32
  downsampled ImageNet.
* ``ResNet``: the torchvision layout (``conv1, bn1, layer1..4, fc``; Bottleneck blocks with the stride on the
  3x3 conv, "v1.5"; shortcut ``downsample.0`` conv 1x1 + ``downsample.1`` BN). ``resnet50`` has 25.56 M
  parameters and 320 state-dict entries. No torchvision dependency.

All convolutions are bias-free; BatchNorm carries ``running_mean``, ``running_var`` and ``num_batches_tracked``.
Inputs are already normalised (see ``classifiers.InputNormalization``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)


def _shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Sequential | None:
    """The projection shortcut both families use where shape changes: keys ``downsample.0`` / ``downsample.1``."""
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
        nn.BatchNorm2d(out_channels),
    )


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN pairs and a residual: relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))."""

    expansion = 1

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_channels, channels, stride)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = _conv3x3(channels, channels)
        self.bn2 = nn.BatchNorm2d(channels)
        self.downsample = _shortcut(in_channels, channels * self.expansion, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carrying the stride, torchvision v1.5), 1x1 expand by 4, residual."""

    expansion = 4

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = _conv3x3(channels, channels, stride)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv3 = nn.Conv2d(channels, channels * self.expansion, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(channels * self.expansion)
        self.downsample = _shortcut(in_channels, channels * self.expansion, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


def _stage(block: type[BasicBlock] | type[Bottleneck], in_channels: int, channels: int, blocks: int, stride: int):
    """``blocks`` blocks as an ``nn.Sequential`` (keys ``layerK.0``, ``layerK.1``, ...); the first one strides."""
    layers = [block(in_channels, channels, stride)]
    layers += [block(channels * block.expansion, channels) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


class CifarResNet(nn.Module):
    """Cohen et al.'s CIFAR ResNet of depth ``6n + 2``.

    Args:
        depth: 20, 32, 44, 56, 110, ... (``(depth - 2) % 6 == 0``).
        num_classes: size of the logits.

        global_pool: average over the whole final map instead of Cohen's ``AvgPool2d(8)``, which assumes 32x32
            inputs as the reference does.

    Forward: x [B, 3, H, W] (normalised) -> logits [B, num_classes].
    """

    def __init__(self, depth: int = 110, num_classes: int = 10, *, global_pool: bool = False) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 (20, 56, 110, ...), got {depth}")
        n = (depth - 2) // 6
        self.depth = depth
        self.conv1 = _conv3x3(3, 16)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = _stage(BasicBlock, 16, 16, n, stride=1)
        self.layer2 = _stage(BasicBlock, 16, 32, n, stride=2)
        self.layer3 = _stage(BasicBlock, 32, 64, n, stride=2)
        # Cohen's AvgPool2d(8) fixes the input at 32x32; the global pool (no tensors, same keys) takes any size.
        self.avgpool = nn.AdaptiveAvgPool2d(1) if global_pool else nn.AvgPool2d(8)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = self.avgpool(x)
        return self.fc(x.flatten(1))


class ResNet(nn.Module):
    """The torchvision ResNet layout (Bottleneck blocks), sized for ImageNet.

    Args:
        layers: blocks per stage, ``(3, 4, 6, 3)`` for ResNet-50.
        num_classes: size of the logits.

    Forward: x [B, 3, H, W] (normalised; 224x224 in the reference) -> logits [B, num_classes]. A 7x7 stride-2
    stem, 3x3 stride-2 max pool, four stages (64/128/256/512 channels, x4 expansion), global average pool.
    """

    def __init__(self, layers: tuple[int, int, int, int] = (3, 4, 6, 3), num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        widths = (64, 128, 256, 512)
        in_channels = 64
        for index, (width, blocks) in enumerate(zip(widths, layers)):
            stage = _stage(Bottleneck, in_channels, width, blocks, stride=1 if index == 0 else 2)
            self.add_module(f"layer{index + 1}", stage)
            in_channels = width * Bottleneck.expansion
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * Bottleneck.expansion, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).flatten(1))


def cifar_resnet20(num_classes: int = 10) -> CifarResNet:
    return CifarResNet(20, num_classes)


def cifar_resnet110(num_classes: int = 10) -> CifarResNet:
    return CifarResNet(110, num_classes)


def imagenet32_resnet110(num_classes: int = 1000) -> CifarResNet:
    """SmoothAdv's ImageNet-32 model: ``resnet_cifar(depth=110, num_classes=1000)`` on 32x32 images."""
    return CifarResNet(110, num_classes)


def resnet50(num_classes: int = 1000) -> ResNet:
    return ResNet((3, 4, 6, 3), num_classes)


def digits_resnet14(num_classes: int = 10) -> CifarResNet:
    """The demo's classifier for 8x8 digits (``diffsmooth_fast.demo``): Cohen's CIFAR ResNet of depth 14 (2
    blocks per stage, 8x8 -> 4x4 -> 2x2) with a global average pool; 0.17 M parameters."""
    return CifarResNet(14, num_classes, global_pool=True)


# The ``arch`` strings Cohen et al. and SmoothAdv write into their checkpoints, with the dataset whose
# normalisation constants they were trained with.
ARCHITECTURES: dict[str, Callable[[], nn.Module]] = {
    "cifar_resnet20": cifar_resnet20,
    "cifar_resnet110": cifar_resnet110,
    "imagenet32_resnet110": imagenet32_resnet110,
    "resnet50": resnet50,
    "digits_resnet14": digits_resnet14,
}
ARCH_DATASET: dict[str, str] = {
    "cifar_resnet20": "cifar10",
    "cifar_resnet110": "cifar10",
    "imagenet32_resnet110": "imagenet32",
    "resnet50": "imagenet",
    "digits_resnet14": "digits",
}


def build_architecture(arch: str) -> nn.Module:
    """A fresh network of the named architecture (random weights; build under ``torch.device("meta")`` to
    allocate nothing).

    Raises:
        ValueError: ``arch`` is not one of ``ARCHITECTURES``.
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown classifier arch {arch!r}; known: {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[arch]()
