"""Train the demo's models on scikit-learn's digits and write the files that ship in ``demo/files``.

    python -m diffsmooth_fast.demo.train [--out DIR] [--split-out FILE] [--seed 0] [--diffusion-steps 4000]

What it writes (everything the package needs to certify with no download):

- ``--split-out`` (default ``data/files/digits_test.npz``): the fixed test split (360 images, ``images`` float32 [N, 8, 8] in [0, 1], ``labels``,
  ``index`` into scikit-learn's order);
- ``diffusion/model.pt`` and ``diffusion/flags.json``: a DDPM on the train split with the project's
  OpenAI-compatible UNet (preset ``demo``: cosine schedule, 1000 steps, epsilon prediction, fixed sigma), saved
  as OpenAI saves an EMA model (the bare state dict) plus its flags, so ``Denoiser.from_openai(path, **flags)``
  loads it;
- ``classifier/noise_{0.00,0.25,0.50}/checkpoint.pth.tar``: ``digits_resnet14`` classifiers trained with
  Gaussian augmentation (0.00: a standard classifier, for DDS), saved as Cohen et al. save theirs
  (``{'epoch', 'arch', 'state_dict'}`` of ``Sequential(normalize, net)``, keys ``1.<net key>``; the optimizer
  state is left out to keep the package small);
- ``manifest.json``: settings, seconds per stage, test accuracies, and each file's size and SHA-256 (the models'
  by their path under ``--out``, the split under ``test_split``).

Everything is drawn from ``torch.Generator``s seeded from ``--seed``, so a rerun on the same machine, torch and
thread count writes the same weights. On 2 CPU cores the default settings take about 20 minutes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data import digits
from ..diffusion.denoiser import Denoiser
from ..diffusion.openai_flags import preset
from ..models import shipped
from ..models.classifiers import InputNormalization, NormalizedClassifier
from ..models.resnet import digits_resnet14
from ..models.unet import UNet
from ..run.atomic import atomic_write

CLASSIFIER_ARCH = "digits_resnet14"


def _log(message: str) -> None:
    print(f"[train] {message}", file=sys.stderr, flush=True)


def _shift(x: torch.Tensor, gen: torch.Generator, max_shift: int = 1) -> torch.Tensor:
    """Translate each image by up to ``max_shift`` pixels (zero fill: the digits' background is 0), the digits'
    counterpart of CIFAR's RandomCrop(32, padding=4)."""
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen)
    rows = (dy.view(n, 1) + torch.arange(h)).view(n, 1, h, 1).expand(n, x.shape[1], h, w + 2 * max_shift)
    out = padded.gather(2, rows)
    cols = (dx.view(n, 1) + torch.arange(w)).view(n, 1, 1, w).expand(n, x.shape[1], h, w)
    return out.gather(3, cols)


def train_classifier(x: torch.Tensor, y: torch.Tensor, noise: float, *, epochs: int = 60, batch: int = 64,
                     lr: float = 0.1, seed: int = 0) -> NormalizedClassifier:
    """A ``digits_resnet14`` trained with Gaussian augmentation ``noise`` (Cohen et al.'s training: a fresh
    N(0, noise^2) draw per image and step), SGD with momentum, cosine learning rate, random 1-pixel shifts.

    Args:
        x: train images [N, 3, 8, 8] in [0, 1]; y: labels [N].
    """
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # the network's initialisation
    model = NormalizedClassifier(InputNormalization("normalize", (digits.DIGITS_MEAN,) * 3, (digits.DIGITS_STD,) * 3),
                                 digits_resnet14())
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    steps_per_epoch = math.ceil(len(x) / batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=epochs * steps_per_epoch, pct_start=0.15)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for start in range(0, len(x), batch):
            take = order[start:start + batch]
            inputs = _shift(x[take], gen)
            inputs = inputs + noise * torch.randn(inputs.shape, generator=gen)
            loss = F.cross_entropy(model(inputs), y[take])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


def train_diffusion(x: torch.Tensor, *, steps: int = 4000, batch: int = 128, lr: float = 1e-3, ema: float = 0.999,
                    seed: int = 0, report: Callable[[int, float], None] | None = None) -> dict[str, torch.Tensor]:
    """A DDPM (Ho et al.'s simple loss: MSE of the predicted noise, t uniform over the 1000 steps) with the
    ``demo`` preset's UNet; returns the EMA weights' state dict, OpenAI's layout.

    Args:
        x: train images [N, 3, 8, 8] in [0, 1] (the model works in [-1, 1], as OpenAI's).
        report: called every 250 steps with (step, mean loss since the last report).
    """
    flags = preset("demo")
    schedule = flags.schedule()
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # initialisation and dropout
    unet = UNet(flags.unet_config())
    shadow = {k: v.detach().clone() for k, v in unet.state_dict().items()}
    live = unet.state_dict()  # views of the parameters: the EMA reads them in place (the UNet has no buffers)
    ema_tensors, live_tensors = [shadow[k] for k in live], list(live.values())
    sqrt_abar = torch.tensor(np.sqrt(schedule.alphas_cumprod), dtype=torch.float32)
    sqrt_1m_abar = torch.tensor(np.sqrt(1.0 - schedule.alphas_cumprod), dtype=torch.float32)
    # what the network receives for step t: OpenAI's mapped (and, if set, rescaled) timestep
    model_t = torch.tensor([schedule.model_timestep(s) for s in range(len(schedule))], dtype=torch.float32)
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.0)
    warmup = min(200, steps // 10 + 1)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    x0_all = 2 * x - 1
    unet.train()
    running = 0.0
    for step in range(1, steps + 1):
        take = torch.randint(0, len(x), (batch,), generator=gen)
        t = torch.randint(0, len(schedule), (batch,), generator=gen)
        eps = torch.randn((batch, *x.shape[1:]), generator=gen)
        x_t = sqrt_abar[t].view(-1, 1, 1, 1) * x0_all[take] + sqrt_1m_abar[t].view(-1, 1, 1, 1) * eps
        loss = F.mse_loss(unet(x_t, model_t[t]), eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        decay = min(ema, (1 + step) / (10 + step))  # a short EMA early on, as in OpenAI's and most DDPM code
        with torch.no_grad():
            torch._foreach_lerp_(ema_tensors, live_tensors, 1 - decay)
        running += loss.item()
        if report is not None and step % 250 == 0:
            report(step, running / 250)
            running = 0.0
    return shadow


@torch.no_grad()
def evaluate(classifiers: dict[float, nn.Module], denoiser: Denoiser, x: torch.Tensor, y: torch.Tensor, *,
             draws: int = 10, seed: int = 1) -> dict[str, dict[str, float]]:
    """Test accuracies of the trained models (means over ``draws`` noise draws), the figures the tests check.

    - ``clean``: each classifier on the clean test images;
    - ``gaussian``: each classifier under its own training noise (what Cohen's smoothing votes with);
    - ``denoised``: the standard classifier on ``denoiser(x + sigma * eps)`` (DDS's base classifier, one vote);
    - ``denoised_local``: the sigma classifier on the denoised image plus sigma noise (DiffSmooth, m = 1).
    """
    gen = torch.Generator().manual_seed(seed)

    def accuracy(model: nn.Module, inputs: torch.Tensor) -> float:
        return float((model(inputs).argmax(1) == y).float().mean())

    result: dict[str, dict[str, float]] = {"clean": {}, "gaussian": {}, "denoised": {}, "denoised_local": {}}
    for noise, model in classifiers.items():
        result["clean"][f"{noise:.2f}"] = accuracy(model, x)
        result["gaussian"][f"{noise:.2f}"] = float(np.mean(
            [accuracy(model, x + noise * torch.randn(x.shape, generator=gen)) for _ in range(draws)]))
    for sigma in (0.25, 0.5):
        plain, local = [], []
        for _ in range(draws):
            x_hat = denoiser(x + sigma * torch.randn(x.shape, generator=gen), sigma)
            plain.append(accuracy(classifiers[0.0], x_hat))
            local.append(accuracy(classifiers[sigma], x_hat + sigma * torch.randn(x.shape, generator=gen)))
        result["denoised"][f"{sigma:.2f}"] = float(np.mean(plain))
        result["denoised_local"][f"{sigma:.2f}"] = float(np.mean(local))
    return result


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _save(obj: object, path: Path) -> None:
    """torch.save through a temporary file, so an interrupted run never leaves a torn checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # Into the file object, not a path: torch names the archive inside after a path ("model.pt.<pid>.tmp"), so
    # a path would make the bytes (and the manifest's SHA-256) change with the pid.
    with atomic_write(path, "wb") as f:
        torch.save(obj, f)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m diffsmooth_fast.demo.train", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(shipped.FILES), help="output folder (default: the package's demo/files)")
    parser.add_argument("--split-out", default=str(digits.TEST_SPLIT), help="where the test split goes (default: "
                        "the package's data/files/digits_test.npz)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random draw")
    parser.add_argument("--diffusion-steps", type=int, default=4000, help="optimisation steps of the diffusion model")
    parser.add_argument("--classifier-epochs", type=int, default=60, help="epochs of each classifier")
    parser.add_argument("--eval-draws", type=int, default=10, help="noise draws averaged in the test accuracies")
    args = parser.parse_args(argv)
    out = Path(args.out)
    started = time.perf_counter()
    timings: dict[str, float] = {}

    images, labels = digits.load_sklearn_digits()
    train_idx, test_idx = digits.split_indices(labels)
    mean, std = float(images[train_idx].mean()), float(images[train_idx].std())
    if abs(mean - digits.DIGITS_MEAN) > 1e-4 or abs(std - digits.DIGITS_STD) > 1e-4:
        raise SystemExit(f"train split statistics {mean:.4f}/{std:.4f} differ from digits.DIGITS_MEAN/STD "
                         f"{digits.DIGITS_MEAN}/{digits.DIGITS_STD}: the split or scikit-learn's data changed")
    x_train = torch.from_numpy(digits.to_rgb(images[train_idx]))
    y_train = torch.from_numpy(labels[train_idx])
    x_test = torch.from_numpy(digits.to_rgb(images[test_idx]))
    y_test = torch.from_numpy(labels[test_idx])
    out.mkdir(parents=True, exist_ok=True)
    split = Path(args.split_out)
    split.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(split, images=images[test_idx], labels=labels[test_idx], index=test_idx)
    _log(f"digits: {len(train_idx)} train, {len(test_idx)} test images -> {split}")

    classifiers: dict[float, NormalizedClassifier] = {}
    for i, noise in enumerate(shipped.CLASSIFIER_NOISES):
        t0 = time.perf_counter()
        model = train_classifier(x_train, y_train, noise, epochs=args.classifier_epochs, seed=args.seed + 1 + i)
        classifiers[noise] = model
        relative = shipped.classifier_checkpoint(noise).relative_to(shipped.FILES)
        _save({"epoch": args.classifier_epochs, "arch": CLASSIFIER_ARCH, "state_dict": model.state_dict()},
              out / relative)
        timings[f"classifier_{noise:.2f}"] = time.perf_counter() - t0
        with torch.no_grad():
            acc = float((model(x_test).argmax(1) == y_test).float().mean())
        _log(f"classifier noise {noise:.2f}: clean test accuracy {acc:.3f} ({timings[f'classifier_{noise:.2f}']:.0f} s)")

    t0 = time.perf_counter()
    state = train_diffusion(x_train, steps=args.diffusion_steps, seed=args.seed,
                            report=lambda s, loss: _log(f"diffusion step {s}/{args.diffusion_steps}: loss {loss:.4f} "
                                                        f"({time.perf_counter() - t0:.0f} s)"))
    timings["diffusion"] = time.perf_counter() - t0
    flags = preset("demo")
    _save(state, out / shipped.DIFFUSION_CHECKPOINT.relative_to(shipped.FILES))
    (out / shipped.DIFFUSION_FLAGS.relative_to(shipped.FILES)).write_text(json.dumps(flags.to_dict(), indent=2) + "\n")

    t0 = time.perf_counter()
    denoiser = Denoiser.from_flags(flags, out / shipped.DIFFUSION_CHECKPOINT.relative_to(shipped.FILES))
    accuracies = evaluate(classifiers, denoiser, x_test, y_test, draws=args.eval_draws)
    timings["evaluation"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - started
    _log("test accuracies: " + json.dumps(accuracies))

    files = sorted(p for p in out.rglob("*") if p.is_file() and p.name != "manifest.json")
    manifest = {
        "command": "python -m diffsmooth_fast.demo.train " + " ".join(argv if argv is not None else sys.argv[1:]),
        "seed": args.seed,
        "diffusion_steps": args.diffusion_steps,
        "classifier_epochs": args.classifier_epochs,
        "eval_draws": args.eval_draws,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "seconds": {k: round(v, 1) for k, v in timings.items()},
        "test_accuracy": accuracies,
        "files": {str(p.relative_to(out)): {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in files},
        "test_split": {"path": str(split), "bytes": split.stat().st_size, "sha256": _sha256(split)},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    total = sum(f["bytes"] for f in manifest["files"].values()) + manifest["test_split"]["bytes"]
    _log(f"done in {timings['total']:.0f} s; {total / 1e6:.2f} MB in {len(files) + 1} files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
