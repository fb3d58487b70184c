"""End-to-end certification benchmark: this engine against the paper's way of certifying, in the same run.

    diffsmooth-fast bench e2e --preset cifar10 --quick                  # GPU: engine in bf16, fp16, fp32
    diffsmooth-fast bench e2e --preset imagenet --quick --dtype bfloat16
    diffsmooth-fast bench e2e --device cpu --quick --tiny               # seconds on a CPU (the test)

(or ``python -m diffsmooth_fast.bench.end_to_end ...``).

Models are the full-size architectures with random weights (the cost of a forward pass does not depend on the
weights): the OpenAI UNet of the ``cifar10`` / ``imagenet`` preset (ImageNet at 224x224, as DiffSmooth feeds
it) and the ResNet-110 / ResNet-50 classifier, the same weights for every run. ``--tiny`` swaps in a small UNet
and ResNet-20 so that the whole path runs on a CPU in seconds.

Runs, timed one after another on the same random images:

* ``baseline``: the paper's way (:mod:`diffsmooth_fast.bench.paper_baseline`): float32 eager, batch 50, the m classifier
  passes one after another, a host sync per batch, PyTorch's default TF32 settings.
* ``engine`` in each ``--dtype``: :class:`diffsmooth_fast.Smooth` around
  :class:`diffsmooth_fast.PurifiedClassifier` (DiffSmooth, fixed local noise as the paper), ``--batch`` noisy
  samples per call, one host sync per image.
* ``engine+OPTIONS`` in each ``--dtype`` for each ``--variants`` entry: the engine with speed options on, '+'-joined
  from ``amp`` (``--autocast``: float32 weights under autocast; not in float32), ``fused`` (``--fused``),
  ``norms`` (``--fuse-norms``), ``cl`` (``--channels-last``), ``graphs`` (``--cuda-graphs``, CUDA only) and
  ``compile`` (``--compile``); ``fast`` means ``fused+norms+cl+graphs``.
  ``--cuda-graphs`` adds ``graphs``. Runs with graphs or compile warm up with the run's n0 and n, so every batch
  shape is captured / compiled before the clock starts. ``matches_engine`` says whether their predictions and
  radii equal the plain engine's (graphs: they should; fused kernels and norms: up to float rounding, so a
  radius may differ in its last digits), with ``prediction_agreement`` and ``max_radius_diff``.

Each run certifies ``--images`` images with n0 selection and n estimation samples after an untimed warm-up.
``--quick`` samples n = ``quick_n`` instead of N (the paper's N: 100,000 on CIFAR-10, 10,000 on ImageNet) and
extrapolates seconds per image to n0 + N samples at the measured rate; the JSON says so (``extrapolated``).
Reported per run: seconds per image, samples per second, MFU (model FLOPs per sample, from REFERENCE.md's cost
table, times samples per second, over the H100's dense bf16 peak of 989 TFLOP/s, for every precision alike),
peak GPU memory; and the speedup of each engine run over the baseline. One JSON record goes to
``benchmarks/results/`` (or ``--json``) with the device, versions, git commit and every setting.
"""

from __future__ import annotations

import argparse
import copy
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from diffsmooth_fast import Denoiser, MethodConfig, PurifiedClassifier, Smooth
from diffsmooth_fast.bench import record as record_info
from diffsmooth_fast.bench.paper_baseline import PAPER_BATCH, PaperBaseline
from diffsmooth_fast.bench.record import REPO
from diffsmooth_fast.diffusion.openai_flags import OpenAIFlags, openai_flags, preset
from diffsmooth_fast.models.classifiers import InputNormalization, NormalizedClassifier
from diffsmooth_fast.models.resnet import build_architecture
from diffsmooth_fast.models.unet import UNet

# Records go to the checkout's benchmarks/results/ when the package runs from one, else to the current folder.
RESULTS = os.path.join(REPO, "benchmarks", "results") if os.path.isdir(os.path.join(REPO, "benchmarks")) else "."
PEAK_FLOPS = 989e12  # H100 SXM dense bf16 tensor-core peak (REFERENCE.md): the MFU denominator
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
CIFAR_STATS = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# A UNet small enough for a CPU (the tests' tiny model): GroupNorm needs 32-channel multiples.
TINY_UNET = dict(image_size=32, num_channels=32, num_res_blocks=1, channel_mult="1,2", attention_resolutions="16",
                 num_heads=2, learn_sigma=True, diffusion_steps=1000, noise_schedule="linear")


@dataclass(frozen=True)
class Setup:
    """One benchmark configuration. GFLOPs are per forward pass of one image (None: counted with
    FlopCounterMode); ``local_sigma_shift`` is the paper's shift of sigma' at sigma = 0.25."""

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


SETUPS = {
    "cifar10": Setup("cifar10", preset("cifar10"), "cifar_resnet110", 32, 10, CIFAR_STATS, 100, 100_000, 2_000,
                     1000, 0.03, 16.77, 0.506),
    "imagenet": Setup("imagenet", preset("imagenet"), "resnet50", 224, 1000, IMAGENET_STATS, 100, 10_000, 200, 50,
                      0.01, 1712.6, 8.18),
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
    """The float32 denoiser and classifier with PyTorch's default random initialisation (seeded)."""
    torch.manual_seed(seed)
    with torch.device(device):
        unet = UNet(setup.unet_flags.unet_config())
        net = build_architecture(setup.classifier_arch)
    mean, std = setup.stats
    classifier = NormalizedClassifier(InputNormalization("normalize", mean, std), net).to(device)
    for model in (unet, classifier):
        model.eval().requires_grad_(False)
    return Denoiser(unet, setup.unet_flags), classifier


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_certify(certify: Callable[[torch.Tensor, int, int, int], tuple[int, float]], images: torch.Tensor,
                 n0: int, n: int, warm: int | tuple[int, int], device: torch.device) -> dict:
    """Certify every image (after an untimed warm-up certificate of ``warm`` samples per phase, or of
    ``(n0, n)`` samples when ``warm`` is a pair)."""
    certify(images[0], 0, *(warm if isinstance(warm, tuple) else (warm, warm)))
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    results = [certify(x, idx, n0, n) for idx, x in enumerate(images)]
    _sync(device)
    elapsed = time.perf_counter() - start
    return {
        "measured_seconds": elapsed,
        "predictions": [int(p) for p, _ in results],
        "radii": [float(r) for _, r in results],
        "peak_gpu_memory_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
    }


def summarise(run: dict, images: int, n0: int, n: int, N: int, flops_per_sample: float) -> dict:
    """Seconds per image (extrapolated to n0 + N samples when n < N), samples per second and MFU."""
    measured = n0 + n
    rate = images * measured / run["measured_seconds"]
    run.update(
        measured_samples_per_image=measured,
        target_samples_per_image=n0 + N,
        extrapolated=n != N,
        seconds_per_image=(n0 + N) / rate,
        samples_per_second=rate,
        mfu=flops_per_sample * rate / PEAK_FLOPS,
    )
    return run


VARIANT_OPTIONS = ("amp", "fused", "norms", "cl", "graphs", "compile")


def parse_variant(text: str) -> tuple[str, ...]:
    """'fused+graphs' -> ('fused', 'graphs') in VARIANT_OPTIONS order; 'fast' is fused+norms+cl+graphs."""
    parts = set()
    for part in text.split("+"):
        part = part.strip()
        if part == "fast":
            parts.update(("fused", "norms", "cl", "graphs"))
        elif part in VARIANT_OPTIONS:
            parts.add(part)
        else:
            raise ValueError(f"unknown engine option {part!r} in --variants {text!r}; choose from "
                             f"{', '.join(VARIANT_OPTIONS)} or fast")
    return tuple(o for o in VARIANT_OPTIONS if o in parts)


def engine_base(method: MethodConfig, classifier: nn.Module, unet: nn.Module, flags: OpenAIFlags, dtype: torch.dtype,
                options: tuple[str, ...], seed: int) -> PurifiedClassifier:
    """The engine's base classifier with ``options`` on, on copies of the float32 models cast to ``dtype`` (with
    ``amp``: kept in float32 and run under ``torch.autocast`` in ``dtype``)."""
    amp = "amp" in options
    weights = torch.float32 if amp else dtype
    unet = copy.deepcopy(unet).to(weights)
    if "norms" in options:
        unet.fuse_group_norms("auto")
    base = PurifiedClassifier(method, copy.deepcopy(classifier).to(weights), Denoiser(unet, flags), seed=seed,
                              dtype=weights, fused="fused" in options, cuda_graphs="graphs" in options,
                              channels_last="cl" in options, autocast=dtype if amp else None)
    return base.compile_networks() if "compile" in options else base


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="diffsmooth-fast bench e2e", description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cifar10", choices=sorted(SETUPS))
    parser.add_argument("--tiny", action="store_true", help="small models, for a CPU (the test)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", nargs="+", default=["bfloat16", "float16", "float32"], choices=list(DTYPES),
                        help="engine precisions, one run each (the baseline is always float32)")
    parser.add_argument("--batch", type=int, help="engine: noisy samples per call (default: per preset)")
    parser.add_argument("--baseline-batch", type=int, default=PAPER_BATCH)
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="n = a few batches, extrapolated to N")
    parser.add_argument("--n0", type=int, help="selection samples (default 100)")
    parser.add_argument("--N", type=int, help="estimation samples certified for (default: the paper's)")
    parser.add_argument("--n", type=int, help="estimation samples actually drawn with --quick")
    parser.add_argument("--sigma", type=float, default=0.25)
    parser.add_argument("--m", type=int, default=5)
    parser.add_argument("--alpha", type=float, default=0.001)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--cuda-graphs", action="store_true", help="also time the engine with CUDA graphs "
                        "(engine+graphs, in each --dtype; CUDA only)")
    parser.add_argument("--variants", nargs="+", default=[], metavar="OPTIONS", help="more engine runs per dtype, "
                        "each '+'-joined from " + ", ".join(VARIANT_OPTIONS) + " (fast: fused+norms+cl+graphs)")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("--json", help="output file (default: a new file in benchmarks/results/ of a checkout, or .)")
    args = parser.parse_args(argv)
    try:
        args.variants = [parse_variant(v) for v in args.variants]
    except ValueError as exc:
        parser.error(str(exc))
    for name in ("batch", "baseline_batch", "images", "n0", "N", "n", "m", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    return args


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark with command-line arguments ``argv``; returns the record written."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    setup = TINY if args.tiny else SETUPS[args.preset]
    setup = replace(setup, n0=args.n0 or setup.n0, N=args.N or setup.N)
    n = min(args.n or setup.quick_n, setup.N) if args.quick else setup.N
    engine_batch = args.batch or setup.engine_batch
    local_sigma = args.sigma + setup.local_sigma_shift
    counted = counted_gflops(setup)
    unet_gflops = setup.unet_gflops if setup.unet_gflops is not None else counted["unet"]
    classifier_gflops = setup.classifier_gflops if setup.classifier_gflops is not None else counted["classifier"]
    flops_per_sample = (unet_gflops + args.m * classifier_gflops) * 1e9

    gen = torch.Generator().manual_seed(args.seed + 1)
    images = torch.rand((args.images, 3, setup.image_size, setup.image_size), generator=gen).to(device)
    denoiser, classifier = build_models(setup, device, args.seed)
    warm = min(n, engine_batch)
    record: dict = {
        **record_info.header("end_to_end", device),
        "settings": {
            "setup": setup.name, "preset": args.preset, "tiny": args.tiny, "quick": args.quick,
            "images": args.images, "image_size": setup.image_size, "num_classes": setup.num_classes,
            "unet_flags": asdict(setup.unet_flags), "classifier_arch": setup.classifier_arch,
            "sigma": args.sigma, "local_sigma": local_sigma, "m": args.m, "alpha": args.alpha, "n0": setup.n0,
            "N": setup.N, "n": n, "engine_batch": engine_batch, "baseline_batch": args.baseline_batch,
            "dtypes": args.dtype, "seed": args.seed, "local_noise": "fixed", "weights": "random",
            "cuda_graphs": args.cuda_graphs and device.type == "cuda",
            "variants": ["+".join(v) for v in args.variants],
            "warmup_samples_per_phase": warm,
            "tf32": {"cudnn": torch.backends.cudnn.allow_tf32, "matmul": torch.backends.cuda.matmul.allow_tf32},
            "cudnn_benchmark": torch.backends.cudnn.benchmark,
        },
        "flops": {
            "unet_gflops_per_image": unet_gflops, "classifier_gflops_per_image": classifier_gflops,
            "per_sample": flops_per_sample, "source": "REFERENCE.md" if setup.unet_gflops else "FlopCounterMode",
            "counted_gflops_per_image": counted, "peak_flops": PEAK_FLOPS,
        },
        "runs": [],
    }

    def measure(name: str, dtype: str, batch: int, certify: Callable, warm_samples: int | tuple[int, int]) -> None:
        """Time one run and record it; a failure (out of memory, NaN in a low precision) is recorded, not fatal,
        so that one command still reports every other run."""
        run: dict = {"name": name, "dtype": dtype, "batch": batch}
        try:
            run.update(time_certify(certify, images, setup.n0, n, warm_samples, device))
        except Exception as exc:  # noqa: BLE001 - out of memory, NaN, a kernel that fails to compile: record, go on
            run["error"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
            record["runs"].append(run)
            print(f"{name:28s} {dtype:8s} batch {batch:5d}: FAILED: {run['error']}", flush=True)
            return
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
        record["runs"].append(summarise(run, args.images, setup.n0, n, setup.N, flops_per_sample))
        print(f"{name:28s} {dtype:8s} batch {batch:5d}: {run['seconds_per_image']:10.3f} s/image"
              f"{' (extrapolated)' if run['extrapolated'] else ''}, {run['samples_per_second']:10.1f} samples/s, "
              f"MFU {100 * run['mfu']:6.2f}%", flush=True)

    if not args.skip_baseline:
        baseline = PaperBaseline(denoiser, classifier, num_classes=setup.num_classes, sigma=args.sigma,
                                 local_sigma=local_sigma, m=args.m, image_shape=tuple(images.shape[1:]),
                                 batch=args.baseline_batch, seed=args.seed)
        measure("baseline", "float32", args.baseline_batch,
                lambda x, idx, n0_, n_: baseline.certify(x, n0_, n_, args.alpha), min(warm, args.baseline_batch))
        del baseline
    method = MethodConfig("diffsmooth", sigma=args.sigma, local_sigma_shift=setup.local_sigma_shift, m=args.m,
                          local_noise="fixed")
    variants: list[tuple[str, ...]] = [()]
    for options in [*(("graphs",),) * args.cuda_graphs, *args.variants]:
        if "graphs" in options and device.type != "cuda":
            print(f"no engine+{'+'.join(options)} run on {device.type} (CUDA graphs need a CUDA device)", flush=True)
        elif options not in variants:
            variants.append(options)
    for name in args.dtype:
        dtype = DTYPES[name]
        for options in variants:
            if "amp" in options and dtype == torch.float32:
                continue  # autocast to float32 is the plain float32 run
            base_classifier = engine_base(method, classifier, denoiser.unet, setup.unet_flags, dtype, options,
                                          args.seed)
            smooth = Smooth(base_classifier, setup.num_classes, args.sigma, seed=args.seed)
            # graphs and compile: every batch shape captured / compiled before the clock starts
            staged = "graphs" in options or "compile" in options
            measure("+".join(("engine", *options)), name, engine_batch,
                    lambda x, idx, n0_, n_, s=smooth: s.certify(x, n0_, n_, args.alpha, engine_batch, idx=idx),
                    (setup.n0, n) if staged else warm)
            del base_classifier, smooth

    done = [r for r in record["runs"] if "error" not in r]
    for run in done:
        if run["name"].startswith("engine+"):
            plain = next((r for r in done if r["name"] == "engine" and r["dtype"] == run["dtype"]), None)
            if plain is None:
                run["matches_engine"] = None
                continue
            run["matches_engine"] = (run["predictions"], run["radii"]) == (plain["predictions"], plain["radii"])
            pairs = list(zip(run["predictions"], plain["predictions"]))
            run["prediction_agreement"] = sum(a == b for a, b in pairs) / len(pairs) if pairs else None
            run["max_radius_diff"] = max((abs(a - b) for a, b in zip(run["radii"], plain["radii"])), default=None)
    base = next((r for r in done if r["name"] == "baseline"), None)
    record["speedups"] = {}
    for r in done:
        if r["name"] != "baseline" and base:
            ratio = base["seconds_per_image"] / r["seconds_per_image"]
            record["speedups"].setdefault(r["name"], {})[r["dtype"]] = ratio
    record["speedup"] = record["speedups"].get("engine", {})  # the plain engine (and below, with graphs only)
    record["speedup_graphs"] = record["speedups"].get("engine+graphs", {})
    for run_name, ratios in record["speedups"].items():
        for dtype, ratio in ratios.items():
            print(f"speedup of {run_name} in {dtype} over the baseline: {ratio:.2f}x")
    path = args.json or os.path.join(
        RESULTS, f"end_to_end-{setup.name}-{device.type}-{record['created'].replace(':', '')[:17]}.json")
    print(f"wrote {record_info.write_json(record, path)}")
    return record


if __name__ == "__main__":
    main()
