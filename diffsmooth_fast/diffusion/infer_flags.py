"""OpenAI flags read from a checkpoint: what its shapes fix, what a known checkpoint's fingerprint adds, what was
given, and what the defaults fill in, each flag with where it came from.

Order, for every flag: given by the user; else fixed by the tensor shapes (``layout``); else the preset of a known
checkpoint whose key/shape list has the same digest (``fingerprint``: improved-diffusion's
``cifar10_uncond_50M_500K.pt``, guided-diffusion's ``256x256_diffusion_uncond.pt``, the demo's model); else the
defaults of the repository named by ``defaults``. ``diffusion_steps`` and ``noise_schedule`` decide t* and the
denoise itself and no default can be trusted for them: without a fingerprint and without an explicitly named
``defaults`` they must be given. A given flag that the shapes contradict is an error naming both values.

The digests are computed from the architecture alone (the presets' models built on the meta device), so nothing
is downloaded; tests/test_infer_flags.py checks them against the reference code's full-size layouts.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from ..models.unet import UNet
from .layout import Layout, read_layout
from .openai_flags import FLAG_NAMES, PRESETS, OpenAIFlags, openai_flags

#: flags the shapes fix (OpenAI's names); attention_resolutions also needs image_size to be written
SHAPE_FLAGS = ("num_channels", "channel_mult", "num_res_blocks", "attention_resolutions", "learn_sigma",
               "resblock_updown", "use_scale_shift_norm", "class_cond")
#: flags that change the denoise and have no trustworthy default: a fingerprint, the user or named defaults
REQUIRED = ("diffusion_steps", "noise_schedule")
#: the attention head split: given in part, the rest is not taken from a preset
HEAD_FLAGS = ("num_heads", "num_head_channels", "num_heads_upsample")
#: flags that change nothing in a denoise (training, loss and storage settings): left out of the summary
RECORDED_ONLY = ("dropout", "use_checkpoint", "use_fp16", "use_kl", "rescale_learned_sigmas")
#: the public checkpoints each preset describes (for the log)
KNOWN_FILES = {"cifar10": "improved-diffusion's cifar10_uncond_50M_500K.pt",
               "imagenet": "guided-diffusion's 256x256_diffusion_uncond.pt",
               "demo": "the demo's digits model"}

GIVEN, SHAPES, DEFAULTS = "given", "shapes", "defaults"


def layout_digest(shapes: Mapping[str, tuple[int, ...]]) -> str:
    """SHA-256 (hex) of the sorted ``name:shape`` list: equal for two state dicts of the same architecture."""
    text = "\n".join(f"{k}:{','.join(str(int(d)) for d in shape)}" for k, shape in sorted(shapes.items()))
    return hashlib.sha256(text.encode()).hexdigest()


@functools.cache
def known_digests() -> dict[str, str]:
    """digest -> preset name, for every preset (its UNet built on the meta device: no memory, no download)."""
    out = {}
    for name, flags in PRESETS.items():
        with torch.device("meta"):
            unet = UNet(flags.unet_config())
        out[layout_digest({k: tuple(v.shape) for k, v in unet.state_dict().items()})] = name
    return out


def fingerprint(shapes: Mapping[str, tuple[int, ...]]) -> str | None:
    """The preset whose architecture ``shapes`` is, or None."""
    return known_digests().get(layout_digest(shapes))


@dataclass(frozen=True)
class ResolvedFlags:
    """Flags for a checkpoint and where each came from: ``sources[name]`` is ``"given"``, ``"shapes"``,
    ``"known checkpoint <preset>"`` or ``"defaults"`` (of ``flags.defaults``'s repository)."""

    flags: OpenAIFlags
    sources: dict[str, str]
    known: str | None = None  # the preset the fingerprint matched

    def summary(self) -> str:
        """One line for the log: the flags grouped by source (those that change no denoise only when given)."""
        groups: dict[str, list[str]] = {}
        values = self.flags.to_dict()
        for name in FLAG_NAMES:
            if name in RECORDED_ONLY and self.sources[name] != GIVEN:
                continue
            groups.setdefault(self.sources[name], []).append(f"{name}={values[name]!r}")
        label = {GIVEN: "given", SHAPES: "read from the tensor shapes",
                 DEFAULTS: f"{self.flags.defaults}-diffusion's defaults"}
        parts = []
        for source in (SHAPES, GIVEN):
            if source in groups:
                parts.append(f"{label[source]}: {', '.join(groups.pop(source))}")
        for source in sorted(groups):
            name = label.get(source) or (f"{source} ({KNOWN_FILES[self.known]})" if self.known else source)
            parts.append(f"{name}: {', '.join(groups[source])}")
        return "denoiser flags " + "; ".join(parts)


def resolve_flags(shapes: Mapping[str, tuple[int, ...]], given: Mapping[str, object], defaults: str | None = None,
                  *, what: str = "diffusion checkpoint") -> ResolvedFlags:
    """The OpenAI flags of a checkpoint with tensor shapes ``shapes``.

    Args:
        shapes: tensor name -> shape of the state dict.
        given: flags the user named (OpenAI's names); ``channel_mult=""`` counts as not given (the file has it).
        defaults: ``"guided"`` or ``"improved"``: that repository's defaults fill what nothing else gives
            (including diffusion_steps and noise_schedule); None: only a fingerprint may fill those two.
        what: how errors name the file.

    Raises:
        ValueError: an unknown flag or bad value, a state dict that is no OpenAI UNet, a given flag the shapes
            contradict (both values named), or required flags that nothing gives.
    """
    # Unknown names (with close matches) and bad values fail here; channel_mult is checked against the file below.
    openai_flags(defaults or "guided", **{**given, "channel_mult": given.get("channel_mult") or "1"})
    layout = read_layout(shapes)
    if layout is None:
        raise ValueError(f"{what} does not look like an OpenAI UNet state dict ({len(shapes)} tensors, e.g. "
                         f"{', '.join(list(shapes)[:3]) or 'none'}; expected keys like time_embed.0.weight)")
    if layout.in_channels != 3 or layout.out_channels not in (3, 6):
        raise ValueError(f"{what} takes {layout.in_channels} and gives {layout.out_channels} channels; OpenAI's "
                         f"models take 3 and give 3 (or 6 with learn_sigma)")
    given = {k: v for k, v in given.items() if not (k == "channel_mult" and v == "")}
    known = fingerprint(shapes)
    base = PRESETS[known] if known else openai_flags(defaults or "guided")
    base_source = f"known checkpoint {known}" if known else DEFAULTS
    values: dict[str, object] = {}
    sources: dict[str, str] = {}
    for name in FLAG_NAMES:
        if name in given:
            values[name], sources[name] = given[name], GIVEN
        elif name not in SHAPE_FLAGS:
            values[name], sources[name] = getattr(base, name), base_source
    if any(name in given for name in HEAD_FLAGS):
        # The head split is one choice: num_heads given means no num_head_channels from a preset (which would win).
        generic = openai_flags(defaults or "guided")
        for name in HEAD_FLAGS:
            if name not in given:
                values[name], sources[name] = getattr(generic, name), DEFAULTS
    missing = [n for n in REQUIRED if sources[n] == DEFAULTS and defaults is None]
    if missing:
        raise ValueError(f"{what} is not a known checkpoint and its tensors cannot tell {', '.join(missing)}: give "
                         f"them (OpenAI's DIFFUSION_FLAGS, e.g. --diffusion_steps 4000 --noise_schedule cosine) or "
                         f"name whose defaults to use (defaults='guided'/'improved', --denoiser-defaults)")
    _check_given(layout, given, values["image_size"], what)
    from_file = _shape_values(layout, values["image_size"], what)
    for name in SHAPE_FLAGS:
        if name not in given:
            # a fingerprinted file at its preset's image_size keeps the preset's spelling (channel_mult "" derived)
            same = known and values["image_size"] == base.image_size
            values[name] = getattr(base, name) if same else from_file[name]
            sources[name] = SHAPES
    # A preset keeps its own repository (its channel_mult may be derived); otherwise every shape flag is explicit.
    flags = OpenAIFlags(**values, defaults=base.defaults if known else defaults or "guided")
    return ResolvedFlags(flags, sources, known)


def _shape_values(layout: Layout, image_size: int, what: str) -> dict[str, object]:
    """The shape flags as OpenAI writes them, at ``image_size``."""
    bad = [ds for ds in layout.attention_ds if image_size % ds]
    if bad:
        raise ValueError(f"{what} has attention at downsampling rate {bad[0]}, which image_size {image_size} does not "
                         f"divide: give the model's image_size")
    return {"num_channels": layout.num_channels, "channel_mult": layout.channel_mult_text(),
            "num_res_blocks": layout.num_res_blocks, "attention_resolutions": layout.attention_resolutions(image_size),
            "learn_sigma": layout.learn_sigma, "resblock_updown": layout.resblock_updown,
            "use_scale_shift_norm": layout.use_scale_shift_norm, "class_cond": layout.class_cond}


def _check_given(layout: Layout, given: Mapping[str, object], image_size: int, what: str) -> None:
    """Refuse a given shape flag that the file contradicts, naming both values."""
    for name in SHAPE_FLAGS:
        if name not in given:
            continue
        value = given[name]
        if name == "channel_mult":
            ok = _as_numbers(str(value)) == tuple(float(m) for m in layout.channel_mult)
            file_value: object = layout.channel_mult_text()
        elif name == "attention_resolutions":
            res = [int(r) for r in str(value).split(",") if r]
            ok = {image_size // r for r in res} == set(layout.attention_ds) and all(image_size % r == 0 for r in res)
            file_value = layout.attention_resolutions(image_size)
            if not ok and res:
                sizes = {r * ds for r, ds in zip(sorted(res), sorted(layout.attention_ds, reverse=True))}
                if len(sizes) == 1 and len(res) == len(layout.attention_ds):
                    raise ValueError(f"{what} does not fit the flags: attention_resolutions {value!r} puts attention "
                                     f"where the file has it only with image_size={sizes.pop()} (not {image_size})")
        else:
            file_value = getattr(layout, name)
            ok = value == file_value
        if not ok:
            raise ValueError(f"{what} does not fit the flags: {name}={_show(file_value)} in the file, "
                             f"given {_show(value)}")


def _as_numbers(text: str) -> tuple[float, ...]:
    return tuple(float(m) for m in text.split(",")) if text else ()


def _show(value: object) -> str:
    return f"'{value}'" if isinstance(value, str) else str(value)
