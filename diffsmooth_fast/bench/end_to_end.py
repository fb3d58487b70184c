"""End-to-end certification benchmark: this engine against the paper's way of certifying, in the same run.

    diffsmooth-fast bench e2e --preset cifar10 --quick                  # GPU: engine in bf16, fp16, fp32
    diffsmooth-fast bench e2e --preset imagenet --quick --dtype bfloat16 --controls
    diffsmooth-fast bench e2e --device cpu --quick --tiny               # seconds on a CPU (the test)
    diffsmooth-fast bench e2e --device cpu --preset demo                # the shipped trained models, real digits

(or ``python -m diffsmooth_fast.bench.end_to_end ...``).

Models. ``cifar10`` / ``imagenet``: the full-size architectures with random weights (the cost of a forward pass
does not depend on the weights), the OpenAI UNet of the preset (ImageNet at 224x224, as DiffSmooth feeds it) and
the ResNet-110 / ResNet-50 classifier, on random images. ``demo``: the package's shipped trained models (the
digits UNet and the classifier trained at noise 0.25) on the digits test images. ``--tiny``: a small UNet and
ResNet-20, random weights, so that the whole path runs on a CPU in seconds. Every run uses the same weights and
the same images.

Runs, one after another:

* ``baseline``: the paper's way (:mod:`diffsmooth_fast.bench.paper_baseline`): float32 eager, ``--baseline-batch``
  samples per batch (default 50, the paper's), the m classifier passes one after another, a host sync per
  batch, PyTorch's default TF32 settings.
* ``engine`` in each ``--dtype``: :class:`diffsmooth_fast.Smooth` around the engine's DiffSmooth base classifier
  (fixed local noise, as the paper), ``--batch`` noisy samples per call, counts kept on the device.
* ``engine+OPTIONS`` in each ``--dtype`` for each ``--variants`` entry: the engine with speed options on,
  '+'-joined from ``amp`` (float32 weights under autocast; not in float32), ``fused``, ``norms`` (fused GroupNorm),
  ``cl`` (channels_last), ``graphs`` (CUDA graphs, CUDA only) and ``compile``; ``fast`` is
  ``fused+norms+cl+graphs``. ``matches_engine`` says whether their predictions and radii equal the plain
  engine's in the same dtype (graphs: they should; fused kernels and norms: up to float rounding), with
  ``prediction_agreement`` and ``max_radius_diff``.
* ``--controls`` (default: on for CUDA), what the speedup is made of: ``engine@baseline-batch``, the engine in
  float32 at the baseline's batch with no speed options (what remains is the engine's loop: device-side counts,
  one classifier call on B*m inputs, Philox noise), checked against the float32 engine's certificates; and
  ``baseline+autocast``, the paper's loop with both networks under ``torch.autocast`` in bfloat16 (what reduced
  precision alone buys the paper's loop; on a CPU it runs PyTorch's CPU bf16 kernels and is labelled so),
  checked against the baseline's certificates (same noise: the same global-RNG draws).

What is timed. Before its clock starts, every run (baseline, engine, variants, controls alike) is warmed up on
every batch shape it will draw: with batch B, the n0 selection samples come in batches of min(B, n0) and
n0 mod B, the n estimation samples in batches of min(B, n) and n mod B; the warm-up draws ``WARMUP_ROUNDS``
rounds of one batch of each of those sizes, selection then estimation, on the first image under an index no timed
image uses, and makes one certification decision. So CUDA graphs are captured, torch.compile has compiled, cuDNN
and the caching allocator have settled on every shape, the n0 batch included, before any timing. Then each
image is certified in three parts, each timed with ``time.perf_counter`` between device synchronisations
(``torch.cuda.synchronize``; nothing to wait for on a CPU):

1. selection: n0 samples of the selection phase (engine: ``Smooth.sample_counts(..., phase=PHASE_SELECTION)``),
2. estimation: n samples of the estimation phase (``phase=PHASE_ESTIMATION``),
3. decision: the top class and its count read to the host (the engine's one host read per image, as in
   ``Smooth.certify``) and the Clopper-Pearson bound and radius.

The engine's counts stay on the device through both phases; the synchronisation between the phases is the
clock's own, one drain of the device queue per image more than ``Smooth.certify`` makes, so it can only slow the
engine. The baseline synchronises after every batch anyway. Seconds per image = selection + estimation x N / n +
decision: ``--quick`` draws n = ``quick_n`` estimation samples instead of N (the paper's N: 100,000 on CIFAR-10,
10,000 on ImageNet) and extrapolates the estimation time at its measured rate (``extrapolated``); selection is
n0 samples, measured as such, never scaled. Without ``--quick`` nothing is extrapolated.

Reported per run: the three parts per image, seconds per image, samples per second at n0 + N samples, the
measured selection and estimation rates, MFU (model FLOPs per sample, from REFERENCE.md's cost table or counted,
times samples per second, over the H100's dense bf16 peak of 989 TFLOP/s, for every precision alike), peak GPU
memory, the certificates (prediction, radius per image); and each run's speedup over the baseline, overall and
per phase. One JSON record goes to ``benchmarks/results/`` (or ``--json``) with the device, versions, git commit,
the kernel backend actually used and every setting; it is rewritten after every run, so a run stopped at a time
limit keeps the runs it finished (``complete`` says whether all ran).
"""

from __future__ import annotations

import argparse
import copy
import os
from dataclasses import asdict, replace

import torch
from torch import nn

from diffsmooth_fast.bench import record as record_info
from diffsmooth_fast.bench.paper_baseline import PAPER_BATCH, PaperBaseline
from diffsmooth_fast.bench.record import REPO
from diffsmooth_fast.bench.setups import SETUPS, TINY, build_models, counted_gflops, load_images
from diffsmooth_fast.bench.timing import (
    PEAK_FLOPS,
    WARMUP_ROUNDS,
    BaselineCertifier,
    EngineCertifier,
    summarise,
    time_run,
)
from diffsmooth_fast.diffusion.denoiser import Denoiser
from diffsmooth_fast.engine.counting import CountingPath
from diffsmooth_fast.engine.method import MethodConfig, PurifiedClassifier
from diffsmooth_fast.engine.options import EngineOptions, assemble
from diffsmooth_fast.ops import BACKENDS, resolve_backend
from diffsmooth_fast.smoothing.certify import Smooth

# Records go to the checkout's benchmarks/results/ when the package runs from one, else to the current folder.
RESULTS = os.path.join(REPO, "benchmarks", "results") if os.path.isdir(os.path.join(REPO, "benchmarks")) else "."
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}
# CPU float16 convolutions are a slow fallback path in PyTorch: timing them says nothing about the engine.
DEFAULT_DTYPES = {"cuda": ["bfloat16", "float16", "float32"], "cpu": ["float32", "bfloat16"]}
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


def _engine_base(method: MethodConfig, classifier: nn.Module, denoiser: Denoiser, options: tuple[str, ...],
                 dtype: torch.dtype, *, seed: int, backend: str = "auto") -> PurifiedClassifier | CountingPath:
    """The engine's base classifier for :class:`Smooth` with speed ``options`` (VARIANT_OPTIONS) on, on copies of
    the float32 models held in ``dtype`` (with ``amp``: kept in float32 and run under ``torch.autocast`` in
    ``dtype``). Every engine option of the benchmark is applied here and nowhere else: through
    :class:`EngineOptions`, as a certify run applies them."""
    engine = EngineOptions(dtype=DTYPE_NAMES[dtype], autocast="amp" in options, fused="fused" in options,
                           fuse_norms="norms" in options, channels_last="cl" in options,
                           cuda_graphs="graphs" in options, compile="compile" in options, backend=backend)
    weights = engine.weights_dtype
    # copies: assemble converts memory format and norms in place, and every run starts from the float32 models
    den = Denoiser(copy.deepcopy(denoiser.unet).to(weights), denoiser.flags)
    base = assemble(method, copy.deepcopy(classifier).to(weights), den, engine, seed=seed)
    base.networks.start()  # compile and graphs on now: the warm-up, not the clock, then meets each batch shape
    return base


def format_table(record: dict) -> list[str]:
    """The runs of a record as a table: the three timed parts per image, the total, rate, MFU, speedup."""
    s = record["settings"]
    title = (f"{s['setup']} on {record['device']['name']} ({record['device']['type']}, backend "
             f"{s.get('backend', '?')}): n0={s['n0']}, N={s['N']} (measured n={s['n']}), m={s['m']}, "
             f"{s['images']} images")
    header = (f"  {'run':26s} {'dtype':8s} {'batch':>5s} {'select s':>9s} {'estim. s':>10s} {'total s':>10s} "
              f"{'samples/s':>10s} {'MFU%':>6s} {'speedup':>8s}  {'right  ' if s.get('labels') else ''}"
              f"same certificates")
    lines = [title, header]
    for run in record["runs"]:
        head = f"  {run['name']:26s} {run['dtype']:8s} {run['batch']:5d}"
        if "error" in run:
            lines.append(f"{head} FAILED: {run['error']}")
            continue
        speedup = record.get("speedups", {}).get(run["name"], {}).get(run["dtype"])
        key = next((k for k in ("matches_engine", "matches_baseline") if k in run), None)
        same = "" if key is None else f"{'n/a' if run[key] is None else run[key]} (as {key.split('_')[1]})"
        if "correct" in run:
            same = f"{run['correct']}/{len(run['predictions'])} right  {same}"
        lines.append(f"{head} {run['selection_seconds_per_image']:9.3f} {run['estimation_seconds_per_image']:10.3f}"
                     f"{'*' if run['extrapolated'] else ' '}{run['seconds_per_image']:9.3f} "
                     f"{run['samples_per_second']:10.1f} {100 * run['mfu']:6.2f} "
                     f"{f'{speedup:.2f}x' if speedup else '-':>8s}  {same}")
    if any(r.get("extrapolated") for r in record["runs"]):
        lines.append(f"  * estimation extrapolated from n={s['n']} to N={s['N']} at the measured rate; selection "
                     f"(n0={s['n0']}) measured as such")
    return lines


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="diffsmooth-fast bench e2e", description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cifar10", choices=sorted(SETUPS),
                        help="cifar10, imagenet: full-size random-weight models; demo: the shipped trained models")
    parser.add_argument("--tiny", action="store_true", help="small random-weight models, for a CPU (the test)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", nargs="+", choices=list(DTYPES), help="engine precisions, one run each "
                        "(default: bfloat16 float16 float32 on CUDA, float32 bfloat16 on a CPU)")
    parser.add_argument("--batch", type=int, help="engine: noisy samples per call (default: per preset)")
    parser.add_argument("--baseline-batch", type=int, default=PAPER_BATCH,
                        help=f"the paper-style baseline's samples per batch (default: the paper's {PAPER_BATCH})")
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="n = a few batches, estimation extrapolated to N")
    parser.add_argument("--n0", type=int, help="selection samples (default 100)")
    parser.add_argument("--N", type=int, help="estimation samples certified for (default: the paper's)")
    parser.add_argument("--n", type=int, help="estimation samples actually drawn with --quick")
    parser.add_argument("--sigma", type=float, default=0.25)
    parser.add_argument("--m", type=int, default=5)
    parser.add_argument("--alpha", type=float, default=0.001)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backend", default="auto", choices=["auto", *BACKENDS],
                        help="kernel backend of the engine (auto: DIFFSMOOTH_BACKEND, else the best available)")
    parser.add_argument("--skip-baseline", action="store_true", help="no baseline runs (nor the autocast control)")
    parser.add_argument("--controls", action=argparse.BooleanOptionalAction, default=None,
                        help="also time engine@baseline-batch (float32, the baseline's batch, no options) and "
                        "baseline+autocast (bfloat16) (default: on for CUDA)")
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
    if args.tiny and args.preset == "demo":
        parser.error("--tiny replaces the preset's models with random small ones; the demo preset has its own")
    try:
        device = torch.device(args.device)
    except RuntimeError:
        parser.error(f"--device must be cpu or cuda, got {args.device!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible to torch")
    try:
        args.backend_used = resolve_backend(args.backend, device.type)
    except ValueError as exc:
        parser.error(f"--backend {args.backend}: {exc}")
    if args.dtype is None:
        args.dtype = DEFAULT_DTYPES.get(device.type, DEFAULT_DTYPES["cpu"])
    if args.controls is None:
        args.controls = device.type == "cuda"
    return args


def _compare(run: dict, reference: dict | None, key: str) -> None:
    """Whether ``run``'s certificates are ``reference``'s (None: no reference run), and how far apart."""
    if reference is None:
        run[key] = None
        return
    run[key] = (run["predictions"], run["radii"]) == (reference["predictions"], reference["radii"])
    pairs = list(zip(run["predictions"], reference["predictions"]))
    run["prediction_agreement"] = sum(a == b for a, b in pairs) / len(pairs) if pairs else None
    run["max_radius_diff"] = max((abs(a - b) for a, b in zip(run["radii"], reference["radii"])), default=None)


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

    images, labels = load_images(setup, args.images, args.seed, device)
    denoiser, classifier = build_models(setup, device, args.seed)
    record: dict = {
        **record_info.header("end_to_end", device),
        "complete": False,
        "settings": {
            "setup": setup.name, "preset": args.preset, "tiny": args.tiny, "quick": args.quick,
            "images": args.images, "image_size": setup.image_size, "num_classes": setup.num_classes,
            "unet_flags": asdict(setup.unet_flags), "classifier_arch": setup.classifier_arch,
            "sigma": args.sigma, "local_sigma": local_sigma, "m": args.m, "alpha": args.alpha, "n0": setup.n0,
            "N": setup.N, "n": n, "engine_batch": engine_batch, "baseline_batch": args.baseline_batch,
            "dtypes": args.dtype, "seed": args.seed, "local_noise": "fixed",
            "weights": "trained (shipped demo models)" if setup.trained else "random",
            "inputs": "digits test images" if setup.trained else "uniform random images", "labels": labels,
            "backend": args.backend_used, "backend_requested": args.backend,
            "backend_env": os.environ.get("DIFFSMOOTH_BACKEND"),
            "controls": args.controls,
            "cuda_graphs": args.cuda_graphs and device.type == "cuda",
            "variants": ["+".join(v) for v in args.variants],
            "warmup_rounds": WARMUP_ROUNDS,
            "timing": "selection, estimation and decision timed separately between device syncs after a warm-up "
                      "on every batch shape; seconds_per_image = selection + estimation * N / n + decision",
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
    path = args.json or os.path.join(
        RESULTS, f"end_to_end-{setup.name}-{device.type}-{record['created'].replace(':', '')[:17]}.json")

    def measure(name: str, dtype: str, certifier, **notes: object) -> None:
        """Time one run and record it; a failure (out of memory, NaN in a low precision) is recorded, not fatal,
        so that one command still reports every other run. The record is rewritten after each run."""
        run: dict = {"name": name, "dtype": dtype, "batch": certifier.batch, **notes}
        try:
            run.update(time_run(certifier, images, setup.n0, n, device))
        except Exception as exc:  # noqa: BLE001 - out of memory, NaN, a kernel that fails to compile: record, go on
            run["error"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
            record["runs"].append(run)
            print(f"{name:26s} {dtype:8s} batch {run['batch']:5d}: FAILED: {run['error']}", flush=True)
            return
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
        if labels is not None:  # trained models: how many certificates are right (abstentions count as wrong)
            run["correct"] = sum(p == y for p, y in zip(run["predictions"], labels))
        record["runs"].append(summarise(run, args.images, setup.n0, n, setup.N, flops_per_sample))
        record_info.write_json(record, path)
        print(f"{name:26s} {dtype:8s} batch {run['batch']:5d}: selection {run['selection_seconds_per_image']:.3f} s "
              f"+ estimation {run['estimation_seconds_per_image']:.3f} s"
              f"{' (extrapolated)' if run['extrapolated'] else ''} = {run['seconds_per_image']:.3f} s/image, "
              f"{run['samples_per_second']:.1f} samples/s, MFU {100 * run['mfu']:.2f}%", flush=True)

    def baseline_run(autocast: torch.dtype | None) -> BaselineCertifier:
        baseline = PaperBaseline(denoiser, classifier, num_classes=setup.num_classes, sigma=args.sigma,
                                 local_sigma=local_sigma, m=args.m, image_shape=tuple(images.shape[1:]),
                                 batch=args.baseline_batch, seed=args.seed, autocast=autocast)
        return BaselineCertifier(baseline, args.alpha)

    method = MethodConfig("diffsmooth", sigma=args.sigma, local_sigma_shift=setup.local_sigma_shift, m=args.m,
                          local_noise="fixed")

    def engine_run(options: tuple[str, ...], dtype: torch.dtype, batch: int) -> EngineCertifier:
        base = _engine_base(method, classifier, denoiser, options, dtype, seed=args.seed, backend=args.backend)
        return EngineCertifier(Smooth(base, setup.num_classes, args.sigma, seed=args.seed, backend=args.backend),
                               batch, args.alpha)

    if not args.skip_baseline:
        measure("baseline", "float32", baseline_run(None))
        if args.controls:
            notes = {"control": "the paper's loop under bfloat16 autocast: what reduced precision alone buys it"}
            if device.type != "cuda":
                notes["note"] = f"bfloat16 autocast on {device.type}: PyTorch's CPU bf16 kernels, no tensor cores"
            measure("baseline+autocast", "bfloat16", baseline_run(torch.bfloat16), **notes)
    variants: list[tuple[str, ...]] = [()]
    for options in [*(("graphs",),) * args.cuda_graphs, *args.variants]:
        if "graphs" in options and device.type != "cuda":
            print(f"no engine+{'+'.join(options)} run on {device.type} (CUDA graphs need a CUDA device)", flush=True)
        elif options not in variants:
            variants.append(options)
    for name in args.dtype:
        for options in variants:
            if "amp" in options and DTYPES[name] == torch.float32:
                continue  # autocast to float32 is the plain float32 run
            measure("+".join(("engine", *options)), name, engine_run(options, DTYPES[name], engine_batch))
    if args.controls:
        measure("engine@baseline-batch", "float32", engine_run((), torch.float32, args.baseline_batch),
                control="the engine in float32 at the baseline's batch, no speed options: its loop alone")

    done = [r for r in record["runs"] if "error" not in r]

    def find(name: str, dtype: str) -> dict | None:
        return next((r for r in done if r["name"] == name and r["dtype"] == dtype), None)

    for run in done:
        if run["name"].startswith("engine+"):
            _compare(run, find("engine", run["dtype"]), "matches_engine")
        elif run["name"] == "engine@baseline-batch":
            _compare(run, find("engine", "float32"), "matches_engine")
        elif run["name"] == "baseline+autocast":
            _compare(run, find("baseline", "float32"), "matches_baseline")
    base = find("baseline", "float32")
    record["speedups"], record["phase_speedups"] = {}, {}
    for r in done:
        if r["name"] != "baseline" and base:
            ratio = base["seconds_per_image"] / r["seconds_per_image"]
            record["speedups"].setdefault(r["name"], {})[r["dtype"]] = ratio
            record["phase_speedups"].setdefault(r["name"], {})[r["dtype"]] = {
                part: base[f"{part}_seconds_per_image"] / r[f"{part}_seconds_per_image"]
                for part in ("selection", "estimation")}
    record["speedup"] = record["speedups"].get("engine", {})  # the plain engine (and below, with graphs only)
    record["speedup_graphs"] = record["speedups"].get("engine+graphs", {})
    record["complete"] = True
    print()
    for line in format_table(record):
        print(line)
    for run_name, ratios in record["speedups"].items():
        for dtype, ratio in ratios.items():
            print(f"speedup of {run_name} in {dtype} over the baseline: {ratio:.2f}x")
    print(f"wrote {record_info.write_json(record, path)}")
    return record


if __name__ == "__main__":
    main()
