"""OpenAI's diffusion flags (named as ``model_and_diffusion_defaults()`` names them), their defaults, presets,
and the diagnosis of a checkpoint that does not fit them.

Defaults policy: guided-diffusion's ``model_and_diffusion_defaults()`` unless ``defaults="improved"``, which
takes improved-diffusion's. The two differ in ``rescale_timesteps`` (False / True), ``rescale_learned_sigmas``
(False / True) and the ``channel_mult`` derived from ``image_size`` when ``channel_mult=""``: guided knows
64, 128, 256, 512; improved knows 32, 64, 256 (32 -> 1,2,2,2). Every flag of either repository is accepted in
both modes; improved-diffusion's missing flags default to the values that reproduce its architecture.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace

from ..checks import check_float, check_int, is_int, is_number
from ..models.unet import UNetConfig
from .layout import read_layout
from .schedule import DiffusionSchedule

NUM_CLASSES = 1000  # OpenAI's class-conditional models are ImageNet models

GUIDED_CHANNEL_MULT = {512: (0.5, 1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4), 128: (1, 1, 2, 3, 4), 64: (1, 2, 3, 4)}
IMPROVED_CHANNEL_MULT = {256: (1, 1, 2, 2, 4, 4), 64: (1, 2, 3, 4), 32: (1, 2, 2, 2)}


@dataclass(frozen=True)
class OpenAIFlags:
    """All flags of OpenAI's ``create_model_and_diffusion`` (both repositories); field defaults are
    guided-diffusion's (build with :func:`openai_flags` to get improved-diffusion's). ``attention_resolutions`` and ``channel_mult`` are OpenAI's comma strings
    (``"16,8"``; ``""`` derives channel_mult from image_size with the ``defaults`` table).

    Only the model flags and ``diffusion_steps``, ``noise_schedule``, ``timestep_respacing``,
    ``rescale_timesteps``, ``predict_xstart`` change a one-shot denoise. ``sigma_small``, ``use_kl``,
    ``rescale_learned_sigmas`` (variance and loss) and ``use_checkpoint`` (training memory) are recorded only;
    so is ``use_fp16``: the checkpoint on disk is float32 either way, and precision is the loader's ``dtype``.
    """

    image_size: int = 64
    num_channels: int = 128
    num_res_blocks: int = 2
    num_heads: int = 4
    num_heads_upsample: int = -1
    num_head_channels: int = -1
    attention_resolutions: str = "16,8"
    channel_mult: str = ""
    dropout: float = 0.0
    class_cond: bool = False
    use_checkpoint: bool = False
    use_scale_shift_norm: bool = True
    resblock_updown: bool = False
    use_fp16: bool = False
    use_new_attention_order: bool = False
    learn_sigma: bool = False
    sigma_small: bool = False
    diffusion_steps: int = 1000
    noise_schedule: str = "linear"
    timestep_respacing: str = ""
    use_kl: bool = False
    predict_xstart: bool = False
    rescale_timesteps: bool = False
    rescale_learned_sigmas: bool = False
    defaults: str = "guided"  # which repository's defaults and channel_mult table; not an OpenAI flag

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("attention_resolutions", "channel_mult") and not isinstance(value, str):
                try:
                    value = ",".join(_num(v) for v in value)  # a sequence is accepted for convenience
                except TypeError:
                    raise ValueError(f"{f.name} must be a comma string like '16,8', got {value!r}") from None
                object.__setattr__(self, f.name, value)
            _check_type(f.name, value, f.type)
        if self.defaults not in ("guided", "improved"):
            raise ValueError(f"defaults must be 'guided' or 'improved', got {self.defaults!r}")
        check_float("dropout", self.dropout, minimum=0.0, below=1.0)
        for name in ("image_size", "num_channels", "num_res_blocks", "diffusion_steps"):
            check_int(name, getattr(self, name), 1)
        self.resolved_channel_mult()
        self.attention_ds()
        self.schedule()  # validates noise_schedule, diffusion_steps, timestep_respacing

    def resolved_channel_mult(self) -> tuple[float, ...]:
        """channel_mult as numbers, derived from image_size when ``""`` as the ``defaults`` repository does."""
        if self.channel_mult:
            try:
                mult = tuple(float(m) for m in self.channel_mult.split(","))
            except ValueError:
                raise ValueError(f"channel_mult must be like '1,2,2,2', got {self.channel_mult!r}") from None
            return tuple(int(m) if m.is_integer() else m for m in mult)
        table, other = (GUIDED_CHANNEL_MULT, IMPROVED_CHANNEL_MULT)
        if self.defaults == "improved":
            table, other = other, table
        if self.image_size in table:
            return table[self.image_size]
        hint = ""
        if self.image_size in other:
            hint = f" ({_other(self.defaults)}-diffusion's is {_fmt(other[self.image_size])}: pass " \
                   f"defaults='{_other(self.defaults)}' for its checkpoints)"
        raise ValueError(f"{self.defaults}-diffusion derives no channel_mult for image_size {self.image_size}: pass "
                         f"channel_mult explicitly{hint}")

    def attention_ds(self) -> tuple[int, ...]:
        """Downsampling rates with attention: ``image_size // res`` for each attention resolution."""
        try:
            res = [int(r) for r in self.attention_resolutions.split(",")] if self.attention_resolutions else []
        except ValueError:
            raise ValueError(f"attention_resolutions must be like '16,8', got {self.attention_resolutions!r}") from None
        if any(r < 1 for r in res):
            raise ValueError(f"attention_resolutions must be positive, got {self.attention_resolutions!r}")
        return tuple(self.image_size // r for r in res)

    def unet_config(self) -> UNetConfig:
        """The UNet these flags build (OpenAI's ``create_model``)."""
        return UNetConfig(
            model_channels=self.num_channels,
            num_res_blocks=self.num_res_blocks,
            channel_mult=self.resolved_channel_mult(),
            attention_ds=self.attention_ds(),
            out_channels=6 if self.learn_sigma else 3,
            dropout=self.dropout,
            num_classes=NUM_CLASSES if self.class_cond else None,
            num_heads=self.num_heads,
            num_head_channels=self.num_head_channels,
            num_heads_upsample=self.num_heads_upsample,
            use_scale_shift_norm=self.use_scale_shift_norm,
            resblock_updown=self.resblock_updown,
            use_new_attention_order=self.use_new_attention_order,
        )

    def schedule(self) -> DiffusionSchedule:
        """The diffusion schedule these flags build (OpenAI's ``create_gaussian_diffusion``)."""
        return DiffusionSchedule(self.noise_schedule, self.diffusion_steps, self.timestep_respacing,
                                 self.rescale_timesteps)

    def to_dict(self) -> dict[str, object]:
        """The OpenAI flags as a dict (without ``defaults``)."""
        d = asdict(self)
        del d["defaults"]
        return d


FLAG_NAMES = tuple(f.name for f in fields(OpenAIFlags) if f.name != "defaults")
_IMPROVED = dict(rescale_timesteps=True, rescale_learned_sigmas=True, defaults="improved")


def openai_flags(defaults: str = "guided", **flags: object) -> OpenAIFlags:
    """Flags named as OpenAI names them, the unnamed ones at the ``defaults`` repository's defaults.

    Raises:
        ValueError: an unknown flag name (with the close matches), a bad value, or an unknown ``defaults``.
    """
    for name in flags:
        if name not in FLAG_NAMES:
            close = difflib.get_close_matches(name, FLAG_NAMES, n=3, cutoff=0.6)
            hint = f"; did you mean {' or '.join(close)}?" if close else f"; known flags: {', '.join(FLAG_NAMES)}"
            raise ValueError(f"unknown OpenAI flag {name!r}{hint}")
    if defaults == "guided":
        return OpenAIFlags(**flags)
    if defaults == "improved":
        return OpenAIFlags(**{**_IMPROVED, **flags})
    raise ValueError(f"defaults must be 'guided' or 'improved', got {defaults!r}")


# --- a checkpoint that does not fit the flags ------------------------------------------------------------------

def infer_flags(shapes: Mapping[str, tuple[int, ...]], image_size: int) -> dict[str, object]:
    """The model flags a state dict's layout reveals, as OpenAI writes them ({} when it is no OpenAI UNet).

    Args:
        shapes: tensor name -> shape of an OpenAI UNet state dict.
        image_size: the training resolution, needed to express attention as resolutions.
    """
    layout = read_layout(shapes)
    if layout is None:
        return {}
    return {"num_channels": layout.num_channels, "learn_sigma": layout.learn_sigma, "class_cond": layout.class_cond,
            "num_res_blocks": layout.num_res_blocks, "resblock_updown": layout.resblock_updown,
            "use_scale_shift_norm": layout.use_scale_shift_norm, "channel_mult": layout.channel_mult_text(),
            "attention_resolutions": layout.attention_resolutions(image_size)}


def layout_mismatch(shapes: Mapping[str, tuple[int, ...]], expected: Mapping[str, tuple[int, ...]],
                    flags: OpenAIFlags) -> str | None:
    """None when ``shapes`` (the checkpoint's) equals ``expected`` (the flags' model); else a one-line account:
    the flags that are probably wrong, then missing / unexpected keys and shape mismatches, with examples."""
    missing = [k for k in expected if k not in shapes]
    unexpected = [k for k in shapes if k not in expected]
    wrong = [k for k in expected if k in shapes and tuple(shapes[k]) != tuple(expected[k])]
    if not (missing or unexpected or wrong):
        return None
    found = infer_flags(shapes, flags.image_size)
    if not found:
        return (f"does not look like an OpenAI UNet state dict ({len(shapes)} tensors, e.g. "
                f"{', '.join(list(shapes)[:3]) or 'none'}; expected keys like time_embed.0.weight)")
    guesses = []
    if not flags.channel_mult and found.get("channel_mult") != _fmt(flags.resolved_channel_mult()):
        # channel_mult derived from the wrong image_size: name image_size, and read attention at the right one
        table = IMPROVED_CHANNEL_MULT if flags.defaults == "improved" else GUIDED_CHANNEL_MULT
        sizes = [size for size, mult in table.items() if _fmt(mult) == found.get("channel_mult")]
        if sizes:
            guesses.append(f"image_size={sizes[0]} (given {flags.image_size})")
            found = infer_flags(shapes, sizes[0])
            del found["channel_mult"]
            flags = replace(flags, image_size=sizes[0])
    given = _comparable(flags)
    guesses += [f"{k}={_show(v)} (given {_show(given[k])})" for k, v in found.items()
                if k in given and _canon(k, v) != _canon(k, given[k])]
    parts = [f"probably {', '.join(guesses)}" if guesses else "no flag explains it (a truncated or edited file?)"]
    if missing:
        parts.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
    if wrong:
        k = wrong[0]
        parts.append(f"{len(wrong)} shape mismatches (e.g. {k}: checkpoint {list(shapes[k])}, "
                     f"flags {list(expected[k])})")
    return "; ".join(parts)


def _comparable(flags: OpenAIFlags) -> dict[str, object]:
    d = flags.to_dict()
    d["channel_mult"] = _fmt(flags.resolved_channel_mult())
    d["attention_resolutions"] = ",".join(str(flags.image_size // ds) for ds in sorted(set(flags.attention_ds())))
    return d


def _canon(name: str, value: object) -> object:
    if name == "attention_resolutions":  # compare as sets of rates: "16,8" == "8,16"
        return frozenset(value.split(",")) - {""}
    return value


def _show(value: object) -> str:
    return f"'{value}'" if isinstance(value, str) else str(value)


def _num(v: object) -> str:
    return str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)


def _fmt(mult: tuple[float, ...]) -> str:
    return ",".join(_num(float(m)) for m in mult)


def _other(defaults: str) -> str:
    return "improved" if defaults == "guided" else "guided"


_IS_TYPE = {"int": is_int, "float": is_number, "bool": lambda v: isinstance(v, bool),
            "str": lambda v: isinstance(v, str)}


def _check_type(name: str, value: object, annotation: str) -> None:
    if not _IS_TYPE[annotation](value):
        raise ValueError(f"flag {name} must be {annotation}, got {value!r}")


PRESETS: dict[str, OpenAIFlags] = {
    # improved-diffusion's cifar10_uncond_50M_500K.pt (its README's flags)
    "cifar10": openai_flags(
        "improved", image_size=32, num_channels=128, num_res_blocks=3, num_heads=4, attention_resolutions="16,8",
        dropout=0.3, learn_sigma=True, diffusion_steps=4000, noise_schedule="cosine", use_scale_shift_norm=True,
        rescale_timesteps=True,
    ),
    # guided-diffusion's 256x256_diffusion_uncond.pt (its README's flags)
    "imagenet": openai_flags(
        "guided", image_size=256, num_channels=256, num_res_blocks=2, num_head_channels=64,
        attention_resolutions="32,16,8", resblock_updown=True, use_scale_shift_norm=True, learn_sigma=True,
        class_cond=False, diffusion_steps=1000, noise_schedule="linear", use_fp16=True,
        use_new_attention_order=False,
    ),
    # the demo's own model for 8x8 digits (diffsmooth_fast/demo/train.py): 1.08 M parameters
    "demo": openai_flags(
        "guided", image_size=8, num_channels=32, num_res_blocks=2, channel_mult="1,2", attention_resolutions="4",
        num_head_channels=32, use_scale_shift_norm=True, dropout=0.0, learn_sigma=False, diffusion_steps=1000,
        noise_schedule="cosine",
    ),
}


def preset(name: str) -> OpenAIFlags:
    """The flags of a named checkpoint: ``"cifar10"``, ``"imagenet"`` or ``"demo"`` (the shipped digits model)."""
    if name not in PRESETS:
        close = difflib.get_close_matches(str(name), PRESETS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}{hint}")
    return PRESETS[name]
