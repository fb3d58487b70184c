"""The fused counting path: from a clean image to class counts on the device, every step a fused kernel.

:class:`~diffsmooth_fast.Smooth` asks a :class:`~diffsmooth_fast.smoothing.certify.CountingClassifier` for the
counts of a range of samples instead of handing it noisy copies. :class:`CountingPath` answers for the methods of
:mod:`~diffsmooth_fast.engine.method`, as the design's data path draws it:

    x [C, H, W] -> noisy_input: B copies sqrt(abar)*(2*(x + sigma*eps) - 1), eps drawn at the samples' positions
                -> UNet -> denoise_replicate: x0, clamp, [0, 1], m local copies, the classifier's normalisation
                -> classifier network -> vote: mean softmax over the m copies, argmax, counts += 1

with no tensor pass of its own between the kernels and no host sync. Where ``denoise_replicate`` does not apply
(cohen and local-only purify nothing; an x0-predicting UNet; a classifier without a known normalisation layer),
``noisy_input`` still draws the noisy copies (in pixels) and the method's own stages make the classifier's
inputs; multistep counts the argmax of its voted scores (its K runs are voted, which ``vote``'s mean softmax is
not).

The smoothing noise is the noise :class:`~diffsmooth_fast.Smooth`'s plain path draws: sample j of the phase at
positions ``[j*numel, (j+1)*numel)`` of ``positions.stream`` (:mod:`~diffsmooth_fast.smoothing.noise_address`),
so in float32 both paths count the same votes; tests/test_counting.py compares them.
"""

from __future__ import annotations

import torch

from ..ops import denoise_replicate, noisy_input, vote
from ..smoothing.certify import LOGITS_NOT_FINITE, check_scores
from ..smoothing.noise_address import SamplePositions
from .method import Networks, PurifiedClassifier, folds_into_denoise_kernel


class CountingPath:
    """A method's base classifier that counts its own votes (``counts_samples``), on the fused kernels.

    Args:
        base: the method's pipeline; its networks (and their speed options), noise and stages are used as they are.
        channels_last: write the networks' inputs in channels_last memory format (as the networks are held).

    Called like ``base`` (scores of a noisy batch) it is ``base``: the checks before a run and ``--batch auto``
    use that.
    """

    counts_samples = True
    accepts_positions = True

    def __init__(self, base: PurifiedClassifier, *, channels_last: bool = False) -> None:
        self.base = base
        self.channels_last = channels_last
        self.folds = folds_into_denoise_kernel(base.config, base.classifier, base.denoiser)
        self.step = base.denoiser.coefficients(base.config.sigma) if self.folds else None
        self._normalization: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def smoothing_sigma(self) -> float:
        return self.base.smoothing_sigma

    @property
    def networks(self) -> Networks:
        return self.base.networks

    def __call__(self, x_noisy: torch.Tensor, positions: SamplePositions | None = None) -> torch.Tensor:
        return self.base(x_noisy, positions)

    def count(self, x: torch.Tensor, positions: SamplePositions, counts: torch.Tensor, status: torch.Tensor) -> None:
        """counts [K] += the votes of the samples at ``positions`` of image x [C, H, W]; non-finite outputs set
        ``LOGITS_NOT_FINITE`` in ``status``. No host sync."""
        base, cfg = self.base, self.base.config
        b, backend = positions.count, base.backend_for(x)
        draw = {"seed": positions.seed, "offset": positions.offset(x.numel()), "stream": positions.stream,
                "backend": backend}
        if cfg.method == "multistep":
            scores = check_scores(base(noisy_input(x, b, cfg.sigma, affine=False, **draw), positions), b,
                                  counts.numel())
            self._flag(scores, status)
            counts.scatter_add_(0, scores.argmax(dim=1), torch.ones(b, dtype=torch.int64, device=x.device))
            return
        if self.folds:
            logits = self._folded_logits(x, positions, draw)
        else:
            x_noisy = noisy_input(x, b, cfg.sigma, affine=False, channels_last=self.channels_last, **draw)
            logits = base.networks.classify(base.classifier_inputs(x_noisy, positions))
        check_scores(logits, b * base.copies, counts.numel())
        self._flag(logits, status)
        vote(logits, base.copies, counts, backend=backend)

    def _folded_logits(self, x: torch.Tensor, positions: SamplePositions, draw: dict) -> torch.Tensor:
        """noisy_input -> UNet -> denoise_replicate -> classifier network: the logits [B*m, K]."""
        base, cfg, c = self.base, self.base.config, self.step
        # The UNet's input stays float32 (the network casts it): denoise_replicate's x0 = x_t/sqrt(abar) - ...
        # amplifies a half-precision rounding of x_t by 1/sqrt(abar).
        x_t = noisy_input(x, positions.count, cfg.sigma, c.sqrt_alpha_bar, channels_last=self.channels_last, **draw)
        eps = base.networks.model_output(x_t)
        m, local_sigma = base.copies, cfg.effective_local_sigma
        local: dict[str, object] = {}
        if local_sigma > 0 and cfg.local_noise == "fresh":  # drawn in the kernel, where local_noise() would
            local = {"seed": positions.seed, "offset": positions.offset(x.numel(), m),
                     "stream": base.local_stream(positions)}
        elif local_sigma > 0:
            local = {"local_noise": base.local_noise(x_t, positions).float()}
        mean, std = self._mean_std(x.device)
        inputs = denoise_replicate(x_t, eps, c.sqrt_recip_alpha_bar, c.sqrt_recipm1_alpha_bar, m, local_sigma,
                                   mean=mean, std=std, dtype=base.networks.classifier_dtype or torch.float32,
                                   channels_last=self.channels_last, backend=draw["backend"], **local)
        return base.networks.classify_normalized(inputs)

    def _mean_std(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The classifier's normalisation as float32 [C] tensors on ``device``, made once: from the layer's Python
        tuples, a copy to the GPU every batch would wait for the device each time."""
        if device not in self._normalization:
            norm = self.base.classifier.normalization
            self._normalization[device] = tuple(torch.tensor(v, dtype=torch.float32, device=device)
                                                for v in (norm.mean, norm.std))
        return self._normalization[device]

    @staticmethod
    def _flag(outputs: torch.Tensor, status: torch.Tensor) -> None:
        status |= (~torch.isfinite(outputs).all()).to(torch.int64) * LOGITS_NOT_FINITE
