"""The `diffsmooth-fast` command line: certify, predict, analyze and bench.

``certify`` and ``predict`` map their options onto the run's settings (``configs``, ``pipeline.MethodConfig``)
and hand them to ``runner.run``; ``analyze`` summarises TSV files. With no model options, ``certify`` runs the
demo: DiffSmooth with the package's own diffusion model and classifiers on the digits test split. Output is
Cohen et al.'s TSV on stdout or --out; progress and a summary go to stderr. User errors print one line and
exit with status 2; Ctrl-C, SIGTERM and SIGHUP stop a run after its last finished row, say how to resume it and
exit with 128 + the signal's number. Cohen et al.'s spellings ``--N`` and ``--N0`` are accepted. Started by
torchrun with several processes, certify and predict share the work (by image, or by sample with
--split-samples; see :mod:`diffsmooth_fast.run.distributed`).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import fields

from ..bench import command as bench
from ..diffusion.openai_flags import PRESETS, OpenAIFlags
from ..engine.method import LOCAL_NOISE, METHODS, MethodConfig
from ..engine.options import DTYPES, EngineOptions, parse_batch
from . import analyze, errors, runner, signals
from .configs import (
    ALL_DATASETS,
    DataConfig,
    DistConfig,
    ModelConfig,
    OutputConfig,
    RunSettings,
    SamplingConfig,
    default_n,
    default_skip,
    resolve,
)
from .distributed import RankFailure


def _default(cls: type, name: str) -> object:
    """A settings dataclass's default for one field: the command line's defaults are the library's."""
    return next(f.default for f in fields(cls) if f.name == name)


class _UsageError(ValueError):
    pass


class _Help(argparse.HelpFormatter):
    """--help with every option's default: ``(default: X)`` after the help of each option that has one (flags
    are off by default; an option whose default depends on others says so in its own words)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default  # by identity: 0 and 0.0 are defaults to show, False (a flag's) is not
        if (not action.option_strings or any(default is v for v in (None, False, argparse.SUPPRESS))
                or "%(default)" in text):
            return text
        return f"{text} (default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    """argparse whose errors become one-line user errors (exit 2) instead of a usage dump; no abbreviations, so a
    misspelt OpenAI flag (``--num_channel``) is refused rather than taken for another."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", _Help)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        raise _UsageError(f"{message} (see {self.prog} --help)")


def _bool(text: str) -> bool:
    """OpenAI's str2bool: yes/true/t/y/1 and no/false/f/n/0, any case."""
    value = text.strip().lower()
    if value in ("yes", "true", "t", "y", "1"):
        return True
    if value in ("no", "false", "f", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (True/False), got {text!r}")


def _batch(text: str) -> int | str:
    try:
        return parse_batch(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--batch ")) from None


def _add_run_options(p: argparse.ArgumentParser, command: str) -> None:
    data = p.add_argument_group("data")
    data.add_argument("--dataset", choices=ALL_DATASETS, help="images to use (default: demo, the built-in digits "
                      "and their trained models, when no model or data is given); toy: a linear problem with exact "
                      "radii")
    data.add_argument("--data", help="dataset path: CIFAR-10 folder or .tar.gz, ImageNet root, image folder, .npz")
    data.add_argument("--split", choices=["test", "train"], default=_default(DataConfig, "split"), help="dataset split")
    data.add_argument("--skip", type=int, help=f"use every skip-th image (default 1; {default_skip('demo')} on the "
                      "demo; the paper: 20 CIFAR, 100 ImageNet)")
    data.add_argument("--max", type=int, default=_default(DataConfig, "max"), help="stop after this many images (-1: all)")
    model = p.add_argument_group("models")
    model.add_argument("--method", choices=METHODS, help="diffsmooth (default with --denoiser and on the demo), "
                       "dds, cohen (default otherwise), local-only, multistep")
    model.add_argument("--denoiser", help="OpenAI diffusion checkpoint (model or EMA .pt or .safetensors file; its "
                       "flags are read from it) or diffusers:FOLDER (a UNet2DModel and its scheduler config)")
    model.add_argument("--denoiser-preset", choices=sorted(PRESETS), help="take a known checkpoint's flags instead of "
                       "reading them from the file (default: none: read from the file, or recognised)")
    model.add_argument("--denoiser-defaults", choices=["guided", "improved"], default=_default(ModelConfig, "denoiser_defaults"),
                       help="whose defaults fill the OpenAI flags that neither the file nor the options give (default: "
                       "none; an unknown file then needs --diffusion_steps and --noise_schedule)")
    model.add_argument("--classifier", help="Cohen/SmoothAdv checkpoint (.pth.tar or .safetensors), TorchScript "
                       "file, module:function, or a library model loaded offline with its own normalisation and "
                       "input size: timm:MODEL_NAME[@WEIGHTS_FILE], torchvision:MODEL_NAME[:WEIGHTS_ENUM][@FILE], "
                       "hf:MODEL_ID_OR_FOLDER")
    model.add_argument("--demo-classifier", type=float, choices=[0.0, 0.25, 0.5], metavar="NOISE",
                       help="demo: the shipped classifier trained with this Gaussian noise (0, 0.25, 0.5; default: "
                       "the one matching the noise the method's classifier sees)")
    model.add_argument("--normalization", choices=["auto", "normalize", "center", "none"],
                       default=_default(ModelConfig, "normalization"),
                       help="the classifier's input normalisation (auto: by the checkpoint's folder layout, or the "
                       "library's own record for timm:, torchvision:, hf:; logged)")
    model.add_argument("--dtype", choices=list(DTYPES), default=_default(EngineOptions, "dtype"), help="models' precision (weights held "
                       "in it; see --autocast)")
    model.add_argument("--autocast", action="store_true", help="keep the weights in float32 and run the models "
                       "under torch.autocast in --dtype (float16 or bfloat16)")
    model.add_argument("--trust-checkpoint", action="store_true", help="allow checkpoints that run code to load")
    smooth = p.add_argument_group("smoothing")
    smooth.add_argument("--sigma", type=float, default=_default(MethodConfig, "sigma"), help="smoothing noise std (pixels in [0, 1])")
    smooth.add_argument("--local-sigma", type=float, help="local smoothing noise std sigma' (default: sigma)")
    smooth.add_argument("--local-sigma-shift", type=float, default=_default(MethodConfig, "local_sigma_shift"), help="added to --local-sigma (the paper: "
                        "+0.03 CIFAR-10, +0.01 ImageNet at sigma 0.25, else +0.02)")
    smooth.add_argument("--m", type=int, default=_default(MethodConfig, "m"), help="local noise copies per sample")
    smooth.add_argument("--local-noise", choices=LOCAL_NOISE, default=_default(MethodConfig, "local_noise"), help="fixed: m noises drawn once "
                        "(Philox, --seed); fresh: new per sample; reference: the reference's "
                        "torch.manual_seed(42) draw")
    smooth.add_argument("--reverse-steps", type=int, default=_default(MethodConfig, "reverse_steps"), help="multistep: reverse steps from t* to 0")
    smooth.add_argument("--reverse-runs", type=int, default=_default(MethodConfig, "reverse_runs"), help="multistep: reverse runs voted per sample")
    if command == "certify":
        smooth.add_argument("--n0", "--N0", type=int, default=_default(SamplingConfig, "n0"),
                            help="selection samples per image")
    smooth.add_argument("--n", "--N", type=int, help=("estimation samples per image" if command == "certify" else
                        "samples per image") + " (default 10000; 1000 on the demo)")
    if command == "certify":
        smooth.add_argument("--sequential", action="store_true", help="stop each image's estimation once its radius "
                            "on the --radii grid is decided (--n is the budget; a 'samples' column records the "
                            "samples used)")
        smooth.add_argument("--radii", help="--sequential's grid: cifar10 or imagenet (the paper's tables) or "
                            "0,0.25,... (default: imagenet's on imagenet, else cifar10's)")
    smooth.add_argument("--alpha", type=float, default=_default(SamplingConfig, "alpha"), help="failure probability per image")
    smooth.add_argument("--batch", type=_batch, default=_default(EngineOptions, "batch"), help="noisy samples per base-classifier call (the "
                        "classifier sees batch*m images), or auto: the largest that fits the GPU's free memory "
                        "(1000 on a CPU)")
    smooth.add_argument("--seed", type=int, default=_default(SamplingConfig, "seed"), help="noise seed; with the image index it fixes all noise")
    run = p.add_argument_group("run")
    run.add_argument("--backend", default=_default(EngineOptions, "backend"), help="noise backend: auto, cuda, triton, cpp, torch")
    run.add_argument("--fused", action="store_true", help="count on the fused kernels: noisy inputs drawn "
                     "straight into the UNet's input, denoise + local noise + the classifier's normalisation in one "
                     "kernel, votes counted on the device (same results as the plain path in float32)")
    run.add_argument("--cuda-graphs", action="store_true", help="replay the UNet and the classifier from CUDA "
                     "graphs captured per batch shape (same results; ignored on a CPU)")
    run.add_argument("--channels-last", action="store_true", help="run both networks in channels_last memory "
                     "format (faster half-precision convolutions on NVIDIA GPUs; same function)")
    run.add_argument("--fuse-norms", action="store_true", help="the UNet's GroupNorm + scale-shift + SiLU as one "
                     "Triton kernel (GPU; on a CPU it runs the plain-PyTorch reference)")
    run.add_argument("--compile", action="store_true", help="torch.compile the UNet and the classifier (each batch "
                     "shape compiles on first use: minutes for a full-size UNet)")
    run.add_argument("--device", default=_default(EngineOptions, "device"), help="torch device: auto (cuda if available), cpu, cuda, ...")
    run.add_argument("--out", default=_default(OutputConfig, "out"), help="output TSV path (sidecar: OUT.json), or - for stdout")
    run.add_argument("--resume", action="store_true", help="continue an interrupted run of the same command")
    run.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    run.add_argument("--quiet", action="store_true", help="no progress on stderr")
    multi = p.add_argument_group("several processes (started by torchrun; see the README)")
    multi.add_argument("--split-samples", action="store_true", help="every process draws its part of each image's "
                       "samples, rank 0 writes --out (for slow models); default: each process certifies its share "
                       "of the images into a part file, merged at the end")
    multi.add_argument("--dist-timeout", type=float, default=_default(DistConfig, "timeout_minutes"), metavar="MINUTES", help="how long a process "
                       "waits for the others to start, and at each exchange of counts with --split-samples")
    names = [f.name for f in fields(OpenAIFlags) if f.name != "defaults"]
    openai = p.add_argument_group("OpenAI diffusion flags", "As OpenAI's scripts spell them (paste MODEL_FLAGS as they "
                                  "are; - or _), checked against the file or overriding --denoiser-preset: " + ", ".join(f"--{n}" for n in names))
    for f in fields(OpenAIFlags):
        if f.name != "defaults":
            kind = {"int": int, "float": float, "str": str, "bool": _bool}[f.type]
            openai.add_argument(f"--{f.name}", f"--{f.name.replace('_', '-')}", dest=f"flag_{f.name}", type=kind,
                                metavar=f.type.upper(), help=argparse.SUPPRESS)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="diffsmooth-fast", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _add_run_options(sub.add_parser("certify", help="certify images (Cohen's certify TSV)"), "certify")
    _add_run_options(sub.add_parser("predict", help="predict with abstention (Cohen's predict TSV)"), "predict")
    a = sub.add_parser("analyze", help="certified accuracy, ACR and more from certify/predict TSV files")
    a.add_argument("files", nargs="+", help="certify or predict TSV files")
    a.add_argument("--radii", default="cifar10", help="cifar10 or imagenet (the paper's tables) or 0,0.25,...")
    form = a.add_mutually_exclusive_group()
    form.add_argument("--markdown", action="store_true", help="a Markdown table (best values in bold)")
    form.add_argument("--latex", action="store_true", help="a LaTeX table like the paper's Table 1")
    form.add_argument("--json", action="store_true", help='{"files": [{"path", "n", "acr", ...}]}')
    a.add_argument("--plot", metavar="OUT.png", help="plot certified accuracy against radius (needs matplotlib)")
    bench.add_parser(sub)
    return parser


def _radii(args: argparse.Namespace, dataset: str) -> tuple[float, ...]:
    """--sequential's grid: the one given, or the paper's table for the dataset."""
    text = getattr(args, "radii", None)
    if text is None:
        sequential = getattr(args, "sequential", False)  # predict has neither option
        return analyze.PAPER_RADII["imagenet" if dataset == "imagenet" else "cifar10"] if sequential else ()
    return analyze.parse_radii(text)


def _settings(args: argparse.Namespace) -> RunSettings:
    """The run's settings from the parsed options: the dataset's and method's defaults, then :func:`resolve`."""
    has_models = args.classifier is not None or args.denoiser is not None or args.data is not None
    dataset = args.dataset or ("demo" if not has_models else None)
    if dataset is None:
        raise ValueError("--dataset is required with --data, --classifier or --denoiser (cifar10, imagenet, "
                         "folder, npz; demo)")
    flags = tuple((f.name, getattr(args, f"flag_{f.name}")) for f in fields(OpenAIFlags)
                  if f.name != "defaults" and getattr(args, f"flag_{f.name}") is not None)
    method = args.method or ("diffsmooth" if args.denoiser is not None or dataset == "demo" else "cohen")
    skip = default_skip(dataset) if args.skip is None else args.skip
    n = default_n(dataset) if args.n is None else args.n
    return resolve(
        args.command,
        DataConfig(dataset, args.data, args.split, skip, args.max),
        ModelConfig(args.denoiser, args.denoiser_preset, args.denoiser_defaults, flags, args.classifier,
                    args.normalization, args.trust_checkpoint),
        MethodConfig(method, args.sigma, args.local_sigma, args.local_sigma_shift, args.m, args.local_noise,
                     args.reverse_steps, args.reverse_runs),
        SamplingConfig(getattr(args, "n0", _default(SamplingConfig, "n0")), n, args.alpha, args.seed,
                       getattr(args, "sequential", False), _radii(args, dataset)),
        EngineOptions(args.dtype, args.autocast, args.fused, args.fuse_norms, args.channels_last, args.cuda_graphs,
                      args.compile, args.backend, args.batch, args.device),
        OutputConfig(args.out, args.resume, args.overwrite, args.quiet),
        DistConfig(args.split_samples, args.dist_timeout),
        classifier_noise=args.demo_classifier,
    )


def _analyze(args: argparse.Namespace) -> int:
    radii = analyze.parse_radii(args.radii)
    summaries = [analyze.summarize(path, radii) for path in args.files]
    if args.json:
        print(analyze.to_json(summaries))
    elif args.latex:
        print(analyze.to_latex(summaries, radii))
    else:
        print(analyze.to_text(summaries, radii, markdown=args.markdown))
    if args.plot:
        curves = analyze.plot(summaries, args.files, args.plot)
        errors.say(f"plot: {curves} curve{'s' * (curves != 1)} of certified accuracy written to "
                   f"{os.path.abspath(args.plot)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (0, or 2 for a user error, printed as one line on stderr)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--"]:  # torchrun ... -m diffsmooth_fast -- certify --n ...: the -- hides --n/--m/--max from
        argv = argv[1:]     # torchrun's own parser (pytorch#120601); some Python versions pass it on to us
    args = None
    try:
        with signals.stop_on_signals():
            args, rest = build_parser().parse_known_args(argv)
            if args.command == "bench":  # bench e2e hands the rest to the benchmark's own parser
                return bench.run(args, rest)
            if rest:
                raise _UsageError(_unrecognized(args.command, rest))
            if args.command == "analyze":
                return _analyze(args)
            options = {k: v for k, v in vars(args).items() if not (k.startswith("flag_") and v is None)}
            return runner.run(_settings(args), argv=argv, options=options)
    except errors.Reported as exc:  # printed already (by every process of a torchrun run, see errors.py)
        return exc.status
    except (ValueError, OSError) as exc:
        return errors.report(exc)
    except RankFailure as exc:
        errors.say(f"error: {exc}")
        return 1
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM/SIGHUP (signals.Stopped)
        signum = exc.signum if isinstance(exc, signals.Stopped) else int(signal.SIGINT)
        with contextlib.suppress(OSError):  # after SIGHUP the terminal may be gone
            errors.say(_stopped(signum, args))
        return 128 + signum
    except Exception as exc:  # out of memory outside an image (loading, probing): one line; anything else: a bug
        if not errors.is_out_of_memory(exc):
            raise
        batch = getattr(args, "batch", None)
        return errors.report(errors.out_of_memory(None, batch if isinstance(batch, int) else None))


def _stopped(signum: int, args: argparse.Namespace | None) -> str:
    """The line after a run was stopped by ``signum``: where its rows are and how to continue it."""
    what = "interrupted" if signum == signal.SIGINT else f"stopped by {signal.Signals(signum).name}"
    out = getattr(args, "out", None)
    if getattr(args, "command", None) not in ("certify", "predict") or out is None:
        return what
    if out == "-":
        return f"{what}; the finished rows are on stdout (a run on stdout cannot be resumed: use --out FILE)"
    again = "--resume instead of --overwrite" if args.overwrite else "--resume"
    return f"{what}; every finished row is in {out}: rerun the same command with {again} to continue"


def _unrecognized(command: str, rest: Sequence[str]) -> str:
    """The error for arguments no option took; Cohen et al.'s positional arguments get their options' names."""
    text = f"unrecognized arguments: {' '.join(rest)}"
    if command in ("certify", "predict") and not rest[0].startswith("-"):
        return (f"{text} ({command} takes options only: Cohen's {command}.py DATASET BASE_CLASSIFIER SIGMA OUTFILE "
                f"is {command} --dataset DATASET --data PATH --classifier BASE_CLASSIFIER --sigma SIGMA --out OUTFILE)")
    return f"{text} (see diffsmooth-fast --help)"


if __name__ == "__main__":
    sys.exit(main())
