"""diffsmooth_fast: fast, faithful certification of image classifiers by randomized smoothing (DiffSmooth)."""

from . import stats
from .certify import SamplePositions, Smooth
from .denoiser import Denoiser
from .models.classifiers import load_classifier
from .ops import gaussian_noise
from .pipeline import MethodConfig, PurifiedClassifier

__version__ = "0.1.0"

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
