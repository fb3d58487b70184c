"""How a diffusion network's input step and output relate to x0: the training schedule, what the network
predicts, how x0 is clipped, and the reverse-process variance, for OpenAI's flags and diffusers' schedulers alike."""

from __future__ import annotations

from dataclasses import dataclass

from .openai_flags import OpenAIFlags
from .schedule import Schedule

#: what the network predicts (diffusers' names): the noise, x0 itself, or v = sqrt(abar) eps - sqrt(1-abar) x0
PREDICTIONS = ("epsilon", "sample", "v_prediction")
#: the reverse process's variance (diffusers' names; OpenAI: learn_sigma, sigma_small, else fixed_large)
VARIANCES = ("fixed_small", "fixed_large", "learned_range", "learned")


@dataclass(frozen=True)
class Parametrization:
    """How a network's input step and output relate to x0.

    Args:
        schedule: the training schedule (its alphas_cumprod and the step the network receives).
        prediction: one of ``PREDICTIONS``.
        clip: x0 is clamped to [-clip, clip] (in [-1, 1] image units) before mapping to pixels; None: not clamped.
        class_cond: the network takes class labels.
        variance: the reverse process's variance, one of ``VARIANCES`` (only multi-step sampling uses it).
    """

    schedule: Schedule
    prediction: str = "epsilon"
    clip: float | None = 1.0
    class_cond: bool = False
    variance: str = "fixed_large"

    def __post_init__(self) -> None:
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {', '.join(PREDICTIONS)}, got {self.prediction!r}")
        if self.variance not in VARIANCES:
            raise ValueError(f"variance must be one of {', '.join(VARIANCES)}, got {self.variance!r}")
        if self.clip is not None and not (isinstance(self.clip, (int, float)) and self.clip > 0):
            raise ValueError(f"clip must be a number > 0 or None, got {self.clip!r}")

    @classmethod
    def from_flags(cls, flags: OpenAIFlags) -> Parametrization:
        """OpenAI's: eps (or x0 with predict_xstart), x0 always clipped to [-1, 1] (``clip_denoised=True``)."""
        variance = "learned_range" if flags.learn_sigma else "fixed_small" if flags.sigma_small else "fixed_large"
        return cls(flags.schedule(), "sample" if flags.predict_xstart else "epsilon", 1.0, flags.class_cond, variance)

    def describe(self) -> str:
        """One line for logs: the schedule, what is predicted, how x0 is clamped."""
        name = getattr(self.schedule, "name", "") or type(self.schedule).__name__
        clamp = "not clamped" if self.clip is None else f"clamped to [-{self.clip:g}, {self.clip:g}]"
        return f"{name} schedule of {len(self.schedule)} steps, prediction {self.prediction}, x0 {clamp}"
