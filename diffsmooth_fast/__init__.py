"""diffsmooth_fast: fast, faithful certification of image classifiers by randomized smoothing (DiffSmooth)."""

from ._version import __version__
from .diffusion.denoiser import Denoiser
from .engine.method import MethodConfig, PurifiedClassifier
from .models.classifiers import load_classifier
from .ops import gaussian_noise
from .smoothing import stats
from .smoothing.certify import Smooth
from .smoothing.noise_address import SamplePositions

__all__ = [
    "Denoiser",
    "MethodConfig",
    "PurifiedClassifier",
    "SamplePositions",
    "Smooth",
    "__version__",
    "gaussian_noise",
    "load_classifier",
    "stats",
]
