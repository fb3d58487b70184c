"""Where every noise sample of a run comes from: the noise-address scheme, in one place.

All noise is the project's Philox generator (:func:`diffsmooth_fast.ops.gaussian_noise`), addressed by a key
(the run's seed), a 64-bit stream and a position within the stream. The stream of a sample says whose noise it
is, the position which sample and element:

* The smoothing noise of sample ``j`` of phase ``phase`` of image ``idx`` is stream ``noise_stream(idx, phase)``
  (idx in counter word c2, phase in c3), positions ``[j*numel, (j+1)*numel)`` for an image of ``numel`` elements.
  The phases (selection, estimation, prediction, probe) use disjoint streams, so the n0 selection samples and the
  n estimation samples never share noise, as Cohen's certificate requires; and because the position depends only
  on ``j``, the noise of a sample never depends on the batch size or on which process draws it.
* A base classifier's own noise (DiffSmooth's fresh local noise, the multi-step reverse process, the fixed local
  noise) is ``classifier_stream(idx, phase, kind, step)``: the kind sits in bits 8..15 and the step in bits
  16..31 of word c3, where the smoothing phases use only 0..3, so these streams can never meet the smoothing
  noise. Fresh local copy ``c`` of sample ``j`` (m copies per sample) is at positions
  ``[(j*m + c)*numel, (j*m + c + 1)*numel)`` of its stream.
"""

from __future__ import annotations

from dataclasses import dataclass

PHASE_SELECTION = 0
PHASE_ESTIMATION = 1
PHASE_PREDICTION = 2
PHASE_PROBE = 3  # the checks made before a run (build's probe, --batch auto): never a certificate's noise

KIND_LOCAL = 1  # fresh local noise, one per sample and copy
KIND_REVERSE = 2  # the reverse process's sampling noise, one stream per kept step
KIND_FIXED = 3  # the m fixed local noises shared by every sample of a run
FIXED_NOISE_IMAGE = 2**32 - 1  # the "image" of the fixed local noise: no dataset index reaches it


def noise_stream(idx: int, phase: int) -> int:
    """Stream id of one sampling phase of image ``idx``: idx in Philox counter word c2, phase in c3."""
    return (phase << 32) | idx


def classifier_stream(idx: int, phase: int, kind: int, step: int = 0) -> int:
    """Philox stream of a base classifier's own noise of ``kind`` for sampling phase ``phase`` of image ``idx``."""
    if not 0 <= step < 2**16:
        raise ValueError(f"step must be in [0, 65536), got {step}")
    return noise_stream(idx, phase | (kind << 8) | (step << 16))


@dataclass(frozen=True)
class SamplePositions:
    """Where a batch of noisy copies sits, for base classifiers that draw noise of their own by position.

    Row i of the batch is sample ``first + i`` of phase ``phase`` of image ``idx``, drawn under Philox key
    ``seed``. A base classifier whose class sets ``accepts_positions = True`` is called as
    ``base_classifier(batch, positions=SamplePositions(...))``, so its own noise (DiffSmooth's fresh local
    noise, a multi-step reverse process) can be indexed by sample, not by batch, and stays independent of the
    batch size. Plain Python ints: building one costs no device work and no host sync.
    """

    seed: int
    idx: int
    phase: int
    first: int
    count: int

    @property
    def stream(self) -> int:
        """The stream of these samples' smoothing noise."""
        return noise_stream(self.idx, self.phase)

    def offset(self, numel: int, copies: int = 1) -> int:
        """Position of the first element of sample ``first`` (with ``copies`` draws of ``numel`` per sample)."""
        return self.first * copies * numel
