"""diffsmooth_fast: fast, faithful certification of image classifiers by randomized smoothing (DiffSmooth)."""

from . import stats
from .certify import Smooth
from .denoiser import Denoiser
from .models.classifiers import load_classifier
from .ops import gaussian_noise

__version__ = "0.1.0"

__all__ = ["Denoiser", "Smooth", "__version__", "gaussian_noise", "load_classifier", "stats"]
