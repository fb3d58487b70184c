"""Agreement of the denoiser (and of denoise-then-classify labels) in float16 / bfloat16 with float32.

Run: python benchmarks/precision_agreement.py [--preset cifar10] [--batch 32] [--sigma 0.25] [--device cpu]

Without checkpoints the UNet gets random weights (every tensor filled, none left at zero) and the labels come
from a random linear readout, so the numbers measure the numerical sensitivity of the full-size architecture,
not the behaviour of trained models; with ``--denoiser`` and ``--classifier`` they measure the real pair.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math

import torch

from diffsmooth_fast import Denoiser, load_classifier
from diffsmooth_fast.diffusion.openai_flags import preset
from diffsmooth_fast.models.unet import UNet


def random_state(shapes: dict[str, torch.Size], seed: int) -> dict[str, torch.Tensor]:
    """Weights ~ N(0, 1/fan_in), norm scales ~ 1 + N(0, 0.04), biases ~ N(0, 0.01), in sorted-name order."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name in sorted(shapes):
        shape = tuple(shapes[name])
        w = torch.randn(shape, generator=g)
        out[name] = w / math.sqrt(math.prod(shape[1:])) if len(shape) >= 2 else (
            1 + 0.2 * w if name.endswith("weight") else 0.1 * w)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cifar10", choices=["cifar10", "imagenet"])
    parser.add_argument("--denoiser", help="OpenAI checkpoint (default: random weights)")
    parser.add_argument("--classifier", help="Cohen-format classifier (default: a random linear readout)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=None, help="image size (default 32 / 224)")
    parser.add_argument("--sigma", type=float, default=0.25)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    flags = preset(args.preset)
    if args.denoiser:
        state = args.denoiser
    else:
        with torch.device("meta"):
            shapes = {k: v.shape for k, v in UNet(flags.unet_config()).state_dict().items()}
        state = random_state(shapes, args.seed)
    if args.classifier:
        clf = load_classifier(args.classifier).to(args.device)
    else:
        # A random-weight ResNet sends almost every input to one class, which would make any agreement trivial;
        # a random linear 10-class readout of the centred image spreads labels over the classes instead.
        size = args.size or (32 if args.preset == "cifar10" else 224)
        readout = torch.randn(10, 3 * size * size, generator=torch.Generator().manual_seed(args.seed + 1))
        readout = readout.to(args.device)

        def clf(images: torch.Tensor) -> torch.Tensor:
            return (images - 0.5).flatten(1) @ readout.T

    size = args.size or (32 if args.preset == "cifar10" else 224)
    g = torch.Generator().manual_seed(args.seed + 2)
    x = torch.rand(args.batch, 3, size, size, generator=g)
    x_noisy = (x + args.sigma * torch.randn(x.shape, generator=g)).to(args.device)

    results: dict[str, object] = {"preset": args.preset, "batch": args.batch, "size": size, "sigma": args.sigma,
                                  "weights": "given" if args.denoiser else "random", "device": args.device}
    outputs = {}
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        den = Denoiser.from_flags(flags, state, dtype=dtype, device=args.device)
        t = den.timestep(args.sigma)
        c = den.coefficients(args.sigma)
        with torch.no_grad():
            x_t = (c.sqrt_alpha_bar * (2 * x_noisy - 1)).to(dtype)
            eps = den.eps(x_t, t).float()
            x_hat = den(x_noisy.to(dtype), args.sigma).float()
            labels = clf(x_hat).argmax(1)
        outputs[dtype] = (eps, x_hat, labels)
        results["t_star"] = t
    eps32, hat32, lab32 = outputs[torch.float32]
    # With random weights the classifier may favour few classes; the agreement means little if it uses one.
    results["distinct_fp32_labels"] = int(lab32.unique().numel())
    for dtype in (torch.float16, torch.bfloat16):
        eps, hat, lab = outputs[dtype]
        results[str(dtype).replace("torch.", "")] = {
            "eps_max_abs_err": float((eps - eps32).abs().max()),
            "eps_rel_l2_err": float((eps - eps32).norm() / eps32.norm()),
            "denoised_max_abs_err": float((hat - hat32).abs().max()),
            "denoised_mean_abs_err": float((hat - hat32).abs().mean()),
            "label_agreement": float((lab == lab32).float().mean()),
        }
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
