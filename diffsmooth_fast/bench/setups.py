"""The end-to-end benchmark's setups: the presets' models (full-size architectures with random weights, the shipped
demo models, a tiny model for a CPU), their images and their FLOPs per forward pass."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from diffsmooth_fast.diffusion.denoiser import Denoiser
from diffsmooth_fast.diffusion.openai_flags import OpenAIFlags, openai_flags, preset
from diffsmooth_fast.models.classifiers import InputNormalization, NormalizedClassifier
from diffsmooth_fast.models.resnet import build_architecture
from diffsmooth_fast.models.unet import UNet

CIFAR_STATS = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# A UNet small enough for a CPU (the tests' tiny model): GroupNorm needs 32-channel multiples.
TINY_UNET = {"image_size": 32, "num_channels": 32, "num_res_blocks": 1, "channel_mult": "1,2",
             "attention_resolutions": "16", "num_heads": 2, "learn_sigma": True, "diffusion_steps": 1000,
             "noise_schedule": "linear"}
DEMO_CLASSIFIER_NOISE = 0.25  # the shipped classifier for DiffSmooth at sigma = 0.25 (shipped.classifier_noise_for)


@dataclass(frozen=True)
class Setup:
    """One benchmark configuration. GFLOPs are per forward pass of one image (None: counted with
    FlopCounterMode); ``local_sigma_shift`` is the paper's shift of sigma' at sigma = 0.25; ``trained``: the
    shipped demo models on the digits instead of random weights on random images."""

    name: str
    unet_flags: OpenAIFlags
    classifier_arch: str
    image_size: int
    num_classes: int
    stats: tuple[tuple[float, ...], tuple[float, ...]]
    n0: int
    N: int
    quick_n: int
    engine_batch: int
    local_sigma_shift: float
    unet_gflops: float | None
    classifier_gflops: float | None
    trained: bool = False


SETUPS = {
    "cifar10": Setup("cifar10", preset("cifar10"), "cifar_resnet110", 32, 10, CIFAR_STATS, 100, 100_000, 2_000,
                     1000, 0.03, 16.77, 0.506),
    "imagenet": Setup("imagenet", preset("imagenet"), "resnet50", 224, 1000, IMAGENET_STATS, 100, 10_000, 200, 50,
                      0.01, 1712.6, 8.18),
    # N: the demo command's default (run.configs.DEFAULT_N); the normalisation comes with the checkpoint.
    "demo": Setup("demo", preset("demo"), "digits_resnet14", 8, 10, ((), ()), 100, 1_000, 200, 100, 0.0, None,
                  None, trained=True),
}
TINY = Setup("tiny", openai_flags("improved", **TINY_UNET), "cifar_resnet20", 32, 10, CIFAR_STATS, 10, 1_000, 20,
             16, 0.03, None, None)


def count_gflops(model: nn.Module, *inputs: torch.Tensor) -> float:
    """FLOPs (2 per multiply-add, as REFERENCE.md counts) of one forward pass, in GFLOPs."""
    with FlopCounterMode(display=False) as counter:
        model(*inputs)
    return counter.get_total_flops() / 1e9


def counted_gflops(setup: Setup) -> dict[str, float]:
    """Both models' GFLOPs per image counted on the meta device (no memory, no compute)."""
    size = setup.image_size
    with torch.device("meta"):
        unet = UNet(setup.unet_flags.unet_config())
        net = build_architecture(setup.classifier_arch)
        x, t = torch.empty(1, 3, size, size), torch.zeros(1)
    return {"unet": count_gflops(unet, x, t), "classifier": count_gflops(net, x)}


def build_models(setup: Setup, device: torch.device, seed: int) -> tuple[Denoiser, nn.Module]:
    """The float32 denoiser and classifier: the shipped demo models, or PyTorch's default random initialisation
    (seeded)."""
    if setup.trained:
        from diffsmooth_fast.models import shipped
        from diffsmooth_fast.models.classifiers import load_classifier

        denoiser = Denoiser.from_preset("demo", str(shipped.DIFFUSION_CHECKPOINT), device=device)
        classifier = load_classifier(shipped.classifier_checkpoint(DEMO_CLASSIFIER_NOISE)).to(device)
    else:
        torch.manual_seed(seed)
        with torch.device(device):
            unet = UNet(setup.unet_flags.unet_config())
            net = build_architecture(setup.classifier_arch)
        mean, std = setup.stats
        classifier = NormalizedClassifier(InputNormalization("normalize", mean, std), net).to(device)
        denoiser = Denoiser(unet, setup.unet_flags)
    for model in (denoiser.unet, classifier):
        model.eval().requires_grad_(False)
    return denoiser, classifier


def load_images(setup: Setup, count: int, seed: int, device: torch.device) -> tuple[torch.Tensor, list[int] | None]:
    """Images [count, 3, H, W] in [0, 1] and their labels: the first digits test images for the demo, uniform
    random pixels (no labels) otherwise."""
    if setup.trained:
        from diffsmooth_fast.data import digits

        data = digits.test_set()
        if count > len(data):
            raise ValueError(f"--images {count}: the digits test split has {len(data)} images")
        items = [data[i] for i in range(count)]
        return torch.stack([torch.as_tensor(x) for x, _ in items]).to(device), [int(y) for _, y in items]
    gen = torch.Generator().manual_seed(seed + 1)
    return torch.rand((count, 3, setup.image_size, setup.image_size), generator=gen).to(device), None
