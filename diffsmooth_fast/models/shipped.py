"""The models that ship in the package: the demo's diffusion model and classifiers, trained on the digits.

``python -m diffsmooth_fast.demo.train`` wrote them to ``demo/files/``; this module says where they are, so that
the command line and the benchmarks can use them without importing the demo's scripts. The classifiers are
Cohen-format checkpoints (``classifier/noise_<sd>/checkpoint.pth.tar``), the diffusion model an OpenAI state dict
with its flags (``diffusion/model.pt``, ``flags.json``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

FILES = Path(__file__).resolve().parents[1] / "demo" / "files"
DIFFUSION_CHECKPOINT = FILES / "diffusion" / "model.pt"
DIFFUSION_FLAGS = FILES / "diffusion" / "flags.json"
CLASSIFIER_NOISES = (0.0, 0.25, 0.5)  # Gaussian augmentation of the shipped classifiers (0: a standard one)
MANIFEST = FILES / "manifest.json"


def classifier_checkpoint(noise: float) -> Path:
    """The shipped classifier trained with Gaussian augmentation ``noise`` (Cohen's ``noise_<sd>`` folders)."""
    if not any(abs(noise - n) < 1e-9 for n in CLASSIFIER_NOISES):
        raise ValueError(f"the demo ships classifiers for noise {', '.join(f'{n:.2f}' for n in CLASSIFIER_NOISES)}, "
                         f"not {noise}")
    return FILES / "classifier" / f"noise_{noise:.2f}" / "checkpoint.pth.tar"


class _Method(Protocol):
    """What the rule reads of a method (:class:`~diffsmooth_fast.engine.method.MethodConfig` has it)."""

    method: str
    sigma: float

    @property
    def effective_local_sigma(self) -> float: ...


def classifier_noise_for(method: _Method) -> float:
    """The shipped classifier a method gets on the demo: the one trained at the noise it sees most like.

    ``cohen`` sees sigma; ``diffsmooth`` and ``local-only`` (the ablation keeps DiffSmooth's classifier) see
    sigma' = local sigma + shift; ``dds`` and ``multistep`` see purified images and get the standard classifier
    (DDS(Standard), as Carlini et al.). The nearest of ``CLASSIFIER_NOISES`` is taken.
    """
    if method.method == "cohen":
        target = method.sigma
    elif method.method in ("diffsmooth", "local-only"):
        target = method.effective_local_sigma
    else:
        target = 0.0
    return min(CLASSIFIER_NOISES, key=lambda noise: (abs(noise - target), noise))
