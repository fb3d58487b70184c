"""How often the base classifier's label in float16 / bfloat16 agrees with float32, on the shipped demo models.

``diffsmooth-fast bench agreement`` runs DiffSmooth's base classifier (one-shot denoise, m local copies, mean
softmax, argmax) on the digits test images under smoothing noise, once with the models held in float32 and once
per low precision, on the *same* noisy inputs (the noise is drawn by position, as a certificate draws it), and
counts matching labels. It also compares the smoothed prediction per image (the most frequent label over its
samples). These are trained models on real images, so the figure is what a user of the demo gets; for the
numerical sensitivity of the full-size CIFAR-10/ImageNet UNet see ``benchmarks/precision_agreement.py``.
"""

from __future__ import annotations

import argparse

import torch

from ..data import digits
from ..diffusion.denoiser import Denoiser
from ..engine.method import MethodConfig, PurifiedClassifier
from ..models import shipped
from ..models.classifiers import load_classifier
from ..ops import gaussian_noise
from ..smoothing.noise_address import PHASE_ESTIMATION, SamplePositions, noise_stream
from . import record

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def base_labels(dtype: torch.dtype, images: torch.Tensor, method: MethodConfig, samples: int, seed: int,
                device: torch.device, batch: int = 500) -> torch.Tensor:
    """Labels [images, samples] of the demo's DiffSmooth base classifier with its models held in ``dtype``."""
    den = Denoiser.from_preset("demo", str(shipped.DIFFUSION_CHECKPOINT), dtype=dtype, device=device)
    clf = load_classifier(shipped.classifier_checkpoint(shipped.classifier_noise_for(method)))
    base = PurifiedClassifier(method, clf.to(device=device, dtype=dtype).eval(), den, seed=seed)  # inputs cast to dtype
    out = torch.empty(len(images), samples, dtype=torch.int64, device=device)  # copied to the host once, at the end
    with torch.no_grad():
        for i, x in enumerate(images):
            x = x.to(device)
            for first in range(0, samples, batch):
                count = min(batch, samples - first)
                stream = noise_stream(i, PHASE_ESTIMATION)  # image i's estimation noise, as certify draws it
                eps = gaussian_noise((count, *x.shape), seed, first * x.numel(), stream=stream, device=device)
                x_noisy = (x + method.sigma * eps).to(dtype)
                scores = base(x_noisy, positions=SamplePositions(seed, i, PHASE_ESTIMATION, first, count))
                out[i, first:first + count] = scores.argmax(1)
    return out.cpu()


def measure(dtypes: list[str], sigmas: list[float], samples: int, max_images: int, seed: int, device: str,
            local_noise: str = "fixed") -> dict:
    """Agreement of each low precision with float32 at each sigma: per sample and per image (smoothed label)."""
    dev = torch.device(device)
    data = digits.test_set()
    count = len(data) if max_images < 0 else min(max_images, len(data))
    images = torch.stack([data[i][0] for i in range(count)])
    rows = []
    for sigma in sigmas:
        method = MethodConfig("diffsmooth", sigma=sigma, m=5, local_noise=local_noise)
        ref = base_labels(torch.float32, images, method, samples, seed, dev)
        ref_mode = ref.mode(dim=1).values
        for name in dtypes:
            low = base_labels(DTYPES[name], images, method, samples, seed, dev)
            rows.append({"sigma": sigma, "dtype": name, "images": count, "samples_per_image": samples,
                         "sample_agreement": float((low == ref).float().mean()),
                         "disagreeing_samples": int((low != ref).sum()),
                         "image_agreement": float((low.mode(dim=1).values == ref_mode).float().mean())})
    return {**record.header("agreement", dev),
            "settings": {"models": "demo (digits)", "method": "diffsmooth", "m": 5, "local_noise": local_noise,
                         "seed": seed, "reference": "float32"},
            "rows": rows}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", nargs="+", choices=list(DTYPES), default=list(DTYPES), help="compared with float32")
    p.add_argument("--sigma", type=float, nargs="+", default=[0.25, 0.5])
    p.add_argument("--samples", type=int, default=100, help="noisy samples per image")
    p.add_argument("--max", type=int, default=-1, help="at most this many test images (-1: all 360)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the record to this JSON file")


def run(args: argparse.Namespace) -> int:
    if args.samples < 1:
        raise ValueError(f"--samples must be >= 1, got {args.samples}")
    if any(s <= 0 for s in args.sigma):
        raise ValueError(f"--sigma must be > 0, got {args.sigma}")
    result = measure(args.dtype, args.sigma, args.samples, args.max, args.seed, args.device)
    for row in result["rows"]:
        print(f"sigma {row['sigma']:.2f} {row['dtype']:8s}: labels agree with float32 on "
              f"{100 * row['sample_agreement']:.3f}% of {row['images'] * row['samples_per_image']} samples "
              f"({row['disagreeing_samples']} differ); smoothed label on {100 * row['image_agreement']:.2f}% of "
              f"{row['images']} images", flush=True)
    if args.json:
        print(f"wrote {record.write_json(result, args.json)}")
    return 0
