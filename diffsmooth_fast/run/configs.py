"""The settings of a certify or predict run, as frozen dataclasses the command line maps onto.

``MethodConfig`` (what the base classifier does) lives in :mod:`diffsmooth_fast.engine.method` and
``EngineOptions`` (how fast it runs) in :mod:`diffsmooth_fast.engine.options`; here are the data, the models,
the sampling, the output and the torchrun settings, and :func:`resolve`, which turns them into one checked
:class:`RunSettings` (the demo's models filled in, combinations checked) exactly once per run.
:meth:`RunSettings.result_settings` is the subset that decides the numbers in the output file: a resumed run
must match it exactly (see :mod:`diffsmooth_fast.run.resume`).
"""

from __future__ import annotations

import math
import os
import stat
from dataclasses import dataclass, replace

from ..checks import check_float, check_int, is_number
from ..data import DATASETS
from ..diffusion.openai_files import read_openai_flags
from ..diffusion.from_diffusers import diffusers_folder, find_configs
from ..diffusion.infer_flags import ResolvedFlags
from ..diffusion.openai_flags import FLAG_NAMES, OpenAIFlags, openai_flags, preset
from ..engine.method import MethodConfig
from ..engine.options import EngineOptions
from ..models import shipped
from ..models.classifiers import NORMALIZATIONS
from .fingerprint import sha256_of, sha256_of_files

ALL_DATASETS = ("demo", "toy", *DATASETS)
BUILT_IN = ("demo", "toy")  # datasets that ship with the package (no --data)


@dataclass(frozen=True)
class DataConfig:
    """Which images: ``dataset`` (demo, toy, cifar10, imagenet, folder, npz) at ``path``; every ``skip``-th image
    of ``split`` from index 0, at most ``max`` of them (-1: all). ``demo`` is the digits test split and ``toy``
    the linear toy problem, both built in."""

    dataset: str = "demo"
    path: str | None = None
    split: str = "test"
    skip: int = 1
    max: int = -1

    def __post_init__(self) -> None:
        if self.dataset not in ALL_DATASETS:
            raise ValueError(f"unknown dataset {self.dataset!r}; choose one of {', '.join(ALL_DATASETS)}")
        if self.dataset in BUILT_IN and self.path is not None:
            raise ValueError(f"the {self.dataset} images are built in and take no --data; name the dataset with "
                             f"--dataset")
        if self.dataset not in BUILT_IN and self.path is None:
            raise ValueError(f"--dataset {self.dataset} needs --data PATH")
        if self.dataset == "demo" and self.split != "test":
            raise ValueError("the demo ships only its test split (--split test)")
        check_int("--skip", self.skip, 1)
        check_int("--max", self.max, -1)


@dataclass(frozen=True)
class ModelConfig:
    """The checkpoints: a diffusion model (``denoiser``: an OpenAI file, or ``diffusers:FOLDER``) and a classifier.

    An OpenAI file's flags are read from it (:func:`~diffsmooth_fast.diffusion.openai_files.read_openai_flags`:
    the shapes, a known checkpoint's fingerprint, ``denoiser_defaults`` if named); ``denoiser_flags`` are (OpenAI
    name, value) pairs given on top, checked against the file. ``denoiser_preset`` takes a preset's flags instead,
    the given ones overriding it. (Their precision is an engine option: ``EngineOptions.dtype``.)
    """

    denoiser: str | None = None
    denoiser_preset: str | None = None
    denoiser_defaults: str | None = None
    denoiser_flags: tuple[tuple[str, object], ...] = ()
    classifier: str | None = None
    normalization: str = "auto"
    trust_checkpoint: bool = False

    def __post_init__(self) -> None:
        if self.normalization != "auto" and self.normalization not in NORMALIZATIONS:
            raise ValueError(f"--normalization must be auto or one of {', '.join(NORMALIZATIONS)}")
        if self.denoiser is None and (self.denoiser_preset or self.denoiser_flags or self.denoiser_defaults):
            raise ValueError("--denoiser-preset and OpenAI flags describe a --denoiser checkpoint; give --denoiser")
        folder = diffusers_folder(self.denoiser)
        if folder is not None:
            if self.denoiser_preset or self.denoiser_flags or self.denoiser_defaults:
                raise ValueError("--denoiser diffusers:FOLDER brings its own model and scheduler configs: drop "
                                 "--denoiser-preset, --denoiser-defaults and the OpenAI flags")
            find_configs(folder)  # a missing folder or config fails here, before anything is written
        for path, what in ((self.denoiser, "--denoiser"), (self.classifier, "--classifier")):
            if path is None or os.path.exists(path):
                continue
            if not (folder is not None if what == "--denoiser" else ":" in path):  # diffusers:, module:function
                raise ValueError(f"{what} {path}: no such file")

    def resolved_flags(self) -> ResolvedFlags | None:
        """The OpenAI denoiser's flags and where each came from (None for a diffusers denoiser)."""
        if self.denoiser is None or diffusers_folder(self.denoiser) is not None:
            return None
        given = dict(self.denoiser_flags)
        if self.denoiser_preset is not None:
            unknown = [name for name in given if name not in FLAG_NAMES]
            if unknown:
                openai_flags(**{unknown[0]: given[unknown[0]]})  # raises with the close matches
            flags = replace(preset(self.denoiser_preset), **given) if given else preset(self.denoiser_preset)
            return ResolvedFlags(flags, {n: "given" if n in given else f"preset {self.denoiser_preset}"
                                         for n in FLAG_NAMES})
        return read_openai_flags(self.denoiser, given, self.denoiser_defaults, trust_checkpoint=self.trust_checkpoint)

    def flags(self) -> OpenAIFlags | None:
        """The OpenAI denoiser's flags (None for a diffusers denoiser)."""
        resolved = self.resolved_flags()
        return resolved.flags if resolved is not None else None


@dataclass(frozen=True)
class SamplingConfig:
    """Cohen's sampling: n0 selection and n estimation samples (predict uses n), failure probability alpha and
    the noise ``seed`` (with an image's index it fixes all of the image's noise). With ``sequential``, certify
    stops each image's estimation once its radius on the grid ``radii`` is decided, n being the budget
    (:meth:`~diffsmooth_fast.Smooth.certify_sequential`)."""

    n0: int = 100
    n: int = 100_000
    alpha: float = 0.001
    seed: int = 0
    sequential: bool = False
    radii: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        check_int("--n0", self.n0, 1)
        check_int("--n", self.n, 1)
        check_float("--alpha", self.alpha, above=0.0, below=1.0)
        check_int("--seed", self.seed, 0, below=2**64)
        if self.sequential and not self.radii:
            raise ValueError("--sequential decides each image's radius on a grid: give --radii (cifar10, imagenet "
                             "or 0,0.25,...)")
        if self.radii and not self.sequential:
            raise ValueError("--radii is the grid of --sequential; add --sequential (analyze takes its own --radii)")


@dataclass(frozen=True)
class OutputConfig:
    """``out`` (a TSV path, or - for stdout), --resume, --overwrite, and --quiet (no progress on stderr).

    ``out`` must be a regular file (or not exist yet): a run replaces its output atomically and appends to it
    with fsync, so a device (``/dev/null``, ``/dev/full``), a fifo or a socket would be replaced by a regular file
    (or never hold a resumable run); stdout is ``-``.
    """

    out: str = "-"
    resume: bool = False
    overwrite: bool = False
    quiet: bool = False

    def __post_init__(self) -> None:
        if not self.out or not self.out.strip():
            raise ValueError("--out is empty: give a file path, or - for stdout")
        if self.out != "-":
            check_regular_file(self.out)


_FILE_KINDS = ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a fifo"),
               (stat.S_ISSOCK, "a socket"))


def check_regular_file(path: str) -> None:
    """Refuse an output path that exists and is not a regular file (a directory is refused later, with its own
    message; a link is judged by what it points to).

    Raises:
        ValueError: ``path`` is a device, a fifo or a socket.
    """
    try:
        mode = os.stat(path).st_mode
    except OSError:  # does not exist yet (or cannot be read: the writability checks say why)
        return
    kind = next((what for test, what in _FILE_KINDS if test(mode)), None)
    if kind is not None:
        raise ValueError(f"--out {path} is {kind}, not a regular file: give a file path (rows are replaced "
                         f"atomically and resumed from it), or - for stdout")


# Sampling defaults per dataset: the paper's (CIFAR-10 N=100,000 and ImageNet N=10,000 are chosen with --n) and
# the demo's, sized so that its default run finishes in about a minute on 2 idle CPU cores: every 12th of the 360
# test images (30, every digit among them) at n = 1000 (radii up to 0.616 at sigma 0.25): 24 s idle; every 5th
# (72 images) took 58 s idle and over 3 minutes on busy cores.
DEFAULT_N = {"demo": 1000}
DEFAULT_SKIP = {"demo": 12}


def default_n(dataset: str) -> int:
    return DEFAULT_N.get(dataset, 10_000)


def default_skip(dataset: str) -> int:
    return DEFAULT_SKIP.get(dataset, 1)


def resolve_models(data: DataConfig, models: ModelConfig, method: MethodConfig,
                   classifier_noise: float | None = None) -> ModelConfig:
    """On the demo, the shipped checkpoints in place of those not given (``classifier_noise`` picks the
    classifier; default :func:`~diffsmooth_fast.models.shipped.classifier_noise_for`); other datasets' models are returned as they are.

    Raises:
        ValueError: ``classifier_noise`` off the demo or not shipped, or the package's demo files are missing.
    """
    if data.dataset != "demo":
        if classifier_noise is not None:
            raise ValueError("--demo-classifier picks one of the demo's classifiers: use it with --dataset demo")
        return models
    if classifier_noise is not None and models.classifier is not None:
        raise ValueError("give --classifier or --demo-classifier, not both")
    denoiser, classifier = models.denoiser, models.classifier
    if denoiser is None and method.uses_denoiser:
        denoiser = str(shipped.DIFFUSION_CHECKPOINT)
    if classifier is None:
        noise = shipped.classifier_noise_for(method) if classifier_noise is None else classifier_noise
        classifier = str(shipped.classifier_checkpoint(noise))
    for path in (denoiser, classifier):
        if path is not None and path.startswith(str(shipped.FILES)) and not os.path.isfile(path):
            raise ValueError(f"the demo's model {os.path.relpath(path, shipped.FILES)} is missing from the installed "
                             f"package; reinstall diffsmooth_fast (or rerun python -m diffsmooth_fast.demo.train)")
    return replace(models, denoiser=denoiser, classifier=classifier)


@dataclass(frozen=True)
class DistConfig:
    """How processes started by torchrun share the work (ignored in a single process).

    By default each process certifies its share of the images and writes a part file, merged at the end;
    ``split_samples`` makes every process draw its part of each image's samples instead (for models so slow that
    one image takes long), with rank 0 alone writing. ``timeout_minutes`` bounds how long a process waits for the
    others to start and at each collective operation of split-samples mode.
    """

    split_samples: bool = False
    timeout_minutes: float = 30.0

    def __post_init__(self) -> None:
        minutes = self.timeout_minutes
        if not (is_number(minutes) and 0 < minutes < math.inf):  # the message says the unit, as --help does
            raise ValueError(f"--dist-timeout must be a number of minutes > 0, got {minutes!r}")


def check_combination(data: DataConfig, models: ModelConfig, method: MethodConfig) -> None:
    """Refuse settings that do not go together (before anything is loaded).

    Raises:
        ValueError: models given to the toy problem, a method without the models it needs, or with one it ignores.
    """
    if data.dataset == "toy":
        if models.classifier is not None or models.denoiser is not None:
            raise ValueError("the toy problem has its own built-in classifier; pass --dataset and --data to certify "
                             "with --classifier or --denoiser")
        if method.uses_denoiser:
            raise ValueError(f"the toy problem has no diffusion model: use --method cohen or local-only, not "
                             f"{method.method}")
        return
    if models.classifier is None:
        raise ValueError("--classifier is required (a Cohen/SmoothAdv checkpoint, TorchScript file or module:function)")
    if method.uses_denoiser and models.denoiser is None:
        raise ValueError(f"--method {method.method} needs --denoiser (an OpenAI diffusion checkpoint); --method cohen "
                         f"certifies the classifier alone")
    if not method.uses_denoiser and models.denoiser is not None:
        raise ValueError(f"--method {method.method} uses no diffusion model: drop --denoiser")


@dataclass(frozen=True)
class RunSettings:
    """Everything one certify or predict run was asked to do, resolved and checked (make it with :func:`resolve`)."""

    command: str
    data: DataConfig
    models: ModelConfig
    method: MethodConfig
    sampling: SamplingConfig
    engine: EngineOptions
    output: OutputConfig = OutputConfig()
    distribution: DistConfig = DistConfig()

    def result_settings(self) -> dict[str, object]:
        """What decides the rows of the output: a resumed run must match every entry.

        Left out on purpose, because results do not depend on them: --batch (noise is drawn by position), --max (a
        resume may extend or shorten the run), --device and --backend (the noise is the same integers
        everywhere), the speed options but precision, --out, --quiet, --resume, --overwrite. Checkpoints are
        compared by absolute path and size.
        """
        data, models, method, sampling = self.data, self.models, self.method, self.sampling
        settings: dict[str, object] = {"command": self.command, "dataset": data.dataset, "data": _abs(data.path),
                                       "split": data.split, "skip": data.skip, **method.settings()}
        if self.command == "certify":
            settings["n0"] = sampling.n0
        settings.update(n=sampling.n, alpha=sampling.alpha, seed=sampling.seed, **self.engine.result_settings())
        if sampling.sequential:  # only when set, so that fixed-n files written before the option still resume
            settings.update(sequential=True, radii=list(sampling.radii))
        folder = diffusers_folder(models.denoiser)
        if method.uses_denoiser and folder is not None:
            unet_dir, scheduler = find_configs(folder)
            files = [e.path for e in os.scandir(unet_dir) if e.is_file()] + [str(scheduler)]
            settings["denoiser"] = {"path": f"diffusers:{os.path.abspath(unet_dir)}", "sha256": sha256_of_files(files),
                                    "bytes": sum(os.path.getsize(f) for f in files)}
        elif method.uses_denoiser:
            flags = models.flags()
            settings["denoiser"] = {**_checkpoint(models.denoiser),
                                    "flags": {**flags.to_dict(), "defaults": flags.defaults}}
        if data.dataset != "toy":
            settings["classifier"] = {**_checkpoint(models.classifier), "normalization": models.normalization}
        return settings


def resolve(command: str, data: DataConfig, models: ModelConfig, method: MethodConfig, sampling: SamplingConfig,
            engine: EngineOptions, output: OutputConfig | None = None, distribution: DistConfig | None = None, *,
            classifier_noise: float | None = None) -> RunSettings:
    """The run's settings, checked once: the demo's shipped checkpoints where none is given (``classifier_noise``
    picks the demo's classifier), and every combination that cannot work refused.

    Raises:
        ValueError: one line naming the setting to change.
    """
    if command not in ("certify", "predict"):
        raise ValueError(f"unknown command {command!r}")
    if command == "predict" and sampling.sequential:
        raise ValueError("--sequential applies to certify (predict has no radius to decide)")
    if command == "certify" and sampling.n < sampling.n0:
        raise ValueError(f"--n {sampling.n} is below --n0 {sampling.n0}: n estimation samples bound the "
                         f"probability, n0 only select the class (swapped?)")
    models = resolve_models(data, models, method, classifier_noise)
    check_combination(data, models, method)
    return RunSettings(command, data, models, method, sampling, engine, output or OutputConfig(),
                       distribution or DistConfig())


def _abs(path: str | None) -> str | None:
    if path is None or (not os.path.exists(path) and ":" in path):  # a module:function classifier
        return path
    return os.path.abspath(path)


def _size(path: str | os.PathLike[str] | None) -> int | None:
    return os.path.getsize(path) if path is not None and os.path.isfile(path) else None


def _checkpoint(path: str | None) -> dict[str, object]:
    """A checkpoint as a resume compares it: its content (``sha256``, ``bytes``); ``path`` only says where it was."""
    return {"path": _abs(path), "sha256": sha256_of(path), "bytes": _size(path)}
