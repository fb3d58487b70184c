"""The noise schedule of an OpenAI diffusion model, computed exactly as OpenAI's code computes it.

Everything is float64 numpy, as in ``gaussian_diffusion.py``: the timestep t* that DiffSmooth picks for a sigma
is a comparison against these values, so computing them in another precision or order could move t* by one.
OpenAI's ``create_model_and_diffusion`` always builds a ``SpacedDiffusion`` (all steps kept when
``timestep_respacing`` is empty); the schedule here follows the same path, so respaced models work too and the
full schedule is bit-identical to ``cumprod(1 - betas)``. A diffusers scheduler's schedule is taken as its
cumulative products are (``TabulatedSchedule``); t* is chosen on either by the same rule (``Schedule.timestep``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..checks import check_choice, check_float, check_int

NOISE_SCHEDULES = ("linear", "cosine")


def named_betas(noise_schedule: str, num_steps: int) -> np.ndarray:
    """OpenAI's ``get_named_beta_schedule``: betas [num_steps], float64, in (0, 0.999].

    ``linear``: Ho et al.'s 1e-4 .. 0.02 scaled by 1000/num_steps. ``cosine``: Nichol & Dhariwal's
    alpha_bar(t) = cos((t + 0.008) / 1.008 * pi/2)**2, betas clipped at 0.999.
    """
    check_int("diffusion_steps", num_steps, 1)
    check_choice("noise_schedule", noise_schedule, NOISE_SCHEDULES)
    if noise_schedule == "linear":
        scale = 1000 / num_steps
        return np.linspace(scale * 0.0001, scale * 0.02, num_steps, dtype=np.float64)

    def alpha_bar(t: float) -> float:  # cosine
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    # A Python loop over Python floats, not vectorised numpy: the same operations in the same order.
    return np.array(
        [min(1 - alpha_bar((i + 1) / num_steps) / alpha_bar(i / num_steps), 0.999) for i in range(num_steps)]
    )


def space_timesteps(num_steps: int, section_counts: str) -> list[int]:
    """OpenAI's ``space_timesteps``: the sorted original steps a respaced diffusion keeps.

    ``section_counts`` is ``""`` (keep all), ``"ddimN"`` (DDIM's fixed stride) or comma-separated step counts
    for equal sections of the original process (``"10,15,20"``).
    """
    if section_counts in ("", None):
        return list(range(num_steps))
    if not isinstance(section_counts, str):
        raise ValueError(f"timestep_respacing must be a string like '250' or 'ddim50', got {section_counts!r}")
    try:
        if section_counts.startswith("ddim"):
            desired = int(section_counts[len("ddim") :])
            for stride in range(1, num_steps):
                if len(range(0, num_steps, stride)) == desired:
                    return list(range(0, num_steps, stride))
            raise ValueError(f"timestep_respacing {section_counts!r}: no integer stride gives {desired} steps")
        counts = [int(c) for c in section_counts.split(",")]
    except ValueError as exc:
        if "stride" in str(exc):
            raise
        raise ValueError(f"timestep_respacing must be like '250', '10,15,20' or 'ddim50', got {section_counts!r}")
    size_per, extra = divmod(num_steps, len(counts))
    start, steps = 0, []
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if count < 1 or size < count:
            raise ValueError(f"timestep_respacing {section_counts!r}: cannot take {count} steps from {size}")
        stride = 1 if count <= 1 else (size - 1) / (count - 1)
        steps += [start + round(j * stride) for j in range(count)]
        start += size
    return sorted(set(steps))


class Schedule:
    """What a one-shot denoise needs of a noise schedule: ``alphas_cumprod`` (float64 [len]) of the kept steps, the
    step the network receives for each (``timestep_map``, ``rescale_timesteps``, ``num_steps``), and t*."""

    alphas_cumprod: np.ndarray
    timestep_map: tuple[int, ...]
    num_steps: int
    rescale_timesteps: bool

    def __len__(self) -> int:
        return len(self.timestep_map)

    @property
    def noise_ratio(self) -> np.ndarray:
        """sqrt(1 - abar) / sqrt(abar) per step, float64 [len], increasing: the noise std relative to the signal."""
        abar = self.alphas_cumprod
        return np.sqrt(1.0 - abar) / np.sqrt(abar)

    def timestep(self, sigma: float) -> int:
        """DiffSmooth's Algorithm 1: the first step i with noise_ratio[i] >= 2 * sigma.

        The factor 2 is because pixels in [0, 1] are mapped to [-1, 1]. A sigma below the first step's noise
        level maps to step 0.

        Args:
            sigma: Gaussian noise std in pixel units ([0, 1] images), > 0.

        Raises:
            ValueError: sigma is not a finite number > 0, or is beyond the schedule's last step.
        """
        check_float("sigma", sigma, above=0.0)
        ratio = self.noise_ratio
        if not ratio[-1] >= 2 * sigma:
            raise ValueError(
                f"sigma {sigma} is beyond this schedule (its largest noise is sigma {ratio[-1] / 2:.6g} "
                f"at step {len(ratio) - 1})"
            )
        return int(np.argmax(ratio >= 2 * sigma))

    def model_timestep(self, t: int) -> float:
        """The value the network receives for step t: the original step, rescaled to [0, 1000) if asked."""
        original = self.timestep_map[t]
        return original * (1000.0 / self.num_steps) if self.rescale_timesteps else float(original)


@dataclass(frozen=True)
class DiffusionSchedule(Schedule):
    """The (possibly respaced) schedule a model was trained and is sampled with.

    Args:
        noise_schedule: ``"linear"`` or ``"cosine"``.
        num_steps: the original number of diffusion steps (OpenAI's ``diffusion_steps``).
        timestep_respacing: OpenAI's flag; ``""`` keeps every step.
        rescale_timesteps: feed the network ``t * 1000 / num_steps`` (float) instead of the integer step.
    """

    noise_schedule: str = "linear"
    num_steps: int = 1000
    timestep_respacing: str = ""
    rescale_timesteps: bool = False
    #: original step of each kept step (``SpacedDiffusion.timestep_map``), [len]
    timestep_map: tuple[int, ...] = field(init=False, repr=False)
    #: float64 [len] cumulative products of (1 - beta) over the kept steps
    alphas_cumprod: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        base = np.cumprod(1.0 - named_betas(self.noise_schedule, self.num_steps))
        kept = space_timesteps(self.num_steps, self.timestep_respacing)
        # SpacedDiffusion recomputes betas between kept steps, then the cumulative product again.
        betas, last = [], 1.0
        for i in kept:
            betas.append(1 - base[i] / last)
            last = base[i]
        abar = np.cumprod(1.0 - np.array(betas, dtype=np.float64))
        abar.setflags(write=False)
        object.__setattr__(self, "timestep_map", tuple(kept))
        object.__setattr__(self, "alphas_cumprod", abar)


@dataclass(frozen=True, eq=False)
class TabulatedSchedule(Schedule):
    """A schedule given by its cumulative products, as a diffusers scheduler holds them (no respacing: step t is
    fed to the network as t).

    Args:
        alphas_cumprod: abar_t for t = 0 .. T-1, decreasing, in (0, 1] (converted to float64).
        name: how logs and errors name it (e.g. ``DDPMScheduler linear``).
    """

    alphas_cumprod: np.ndarray
    name: str = ""
    timestep_map: tuple[int, ...] = field(init=False, repr=False)
    num_steps: int = field(init=False)
    rescale_timesteps: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        abar = np.array(self.alphas_cumprod, dtype=np.float64).reshape(-1)
        if abar.size == 0 or not (np.all(abar > 0) and np.all(abar <= 1) and np.all(np.diff(abar) <= 0)):
            raise ValueError(f"schedule {self.name or ''}: alphas_cumprod must be decreasing values in (0, 1]")
        abar.setflags(write=False)
        object.__setattr__(self, "alphas_cumprod", abar)
        object.__setattr__(self, "timestep_map", tuple(range(abar.size)))
        object.__setattr__(self, "num_steps", int(abar.size))
