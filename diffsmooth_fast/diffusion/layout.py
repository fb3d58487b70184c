"""What an OpenAI UNet state dict's tensor names and shapes say about the flags that built it.

The convolutions fix the widths, the block counts, where attention sits (as a downsampling rate), the output
channels (learned sigma or not), the resampling kind and the conditioning; they cannot tell the training
resolution (a convolution runs at any size), the attention head split, dropout, or anything about the diffusion.
This module reads only shapes: no flag objects, no defaults (see :mod:`~diffsmooth_fast.diffusion.infer_flags`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

_OUTPUT_LAYER = re.compile(r"^output_blocks\.(\d+)\.(\d+)\.(.+)$")


@dataclass(frozen=True)
class Layout:
    """The architecture a state dict's shapes fix.

    ``attention_ds`` are downsampling rates (1 = full resolution, 2, 4, ...) of the levels with attention; with
    an image size they become OpenAI's ``attention_resolutions`` (``image_size // rate``).
    """

    num_channels: int
    channel_mult: tuple[float, ...]
    num_res_blocks: int
    attention_ds: tuple[int, ...]
    learn_sigma: bool
    resblock_updown: bool
    use_scale_shift_norm: bool
    class_cond: bool
    in_channels: int
    out_channels: int
    num_classes: int | None

    def channel_mult_text(self) -> str:
        """channel_mult as OpenAI's comma string (``"1,2,2,2"``; 0.5 kept as ``0.5``)."""
        return ",".join(str(int(m)) if float(m).is_integer() else str(m) for m in self.channel_mult)

    def attention_resolutions(self, image_size: int) -> str:
        """OpenAI's ``attention_resolutions`` for ``image_size`` (largest resolution first, as OpenAI writes it)."""
        return ",".join(str(image_size // ds) for ds in sorted(self.attention_ds))


def read_layout(shapes: Mapping[str, tuple[int, ...]]) -> Layout | None:
    """The layout of an OpenAI UNet state dict (tensor name -> shape), or None when it is not one.

    Levels and blocks are read from the output blocks: level L's group holds num_res_blocks + 1 blocks, and every
    group but the last ends with an upsampling layer (an ``Upsample`` conv, or a ResBlock with resblock_updown)
    after the ResBlock and the optional attention.
    """
    emb = shapes.get("time_embed.0.weight", ())
    first, last = shapes.get("input_blocks.0.0.weight", ()), shapes.get("out.2.weight", ())
    if len(emb) != 2 or len(first) != 4 or len(last) != 4:
        return None
    mc = emb[1]
    layers: dict[int, dict[int, set[str]]] = {}
    for key in shapes:
        m = _OUTPUT_LAYER.match(key)
        if m:
            layers.setdefault(int(m[1]), {}).setdefault(int(m[2]), set()).add(m[3])
    if not layers or sorted(layers) != list(range(len(layers))):
        return None
    ups = [i for i, block in sorted(layers.items())
           if any(j > 0 and ("conv.weight" in names or "in_layers.0.weight" in names) for j, names in block.items())]
    nrb = ups[0] if ups else len(layers) - 1
    groups = len(layers) // (nrb + 1)
    expected_ups = [g * (nrb + 1) + nrb for g in range(groups - 1)]
    if nrb < 1 or groups * (nrb + 1) != len(layers) or ups != expected_ups:
        return None
    widths = []
    for i in range(0, len(layers), nrb + 1):
        conv = shapes.get(f"output_blocks.{i}.0.in_layers.2.weight", ())
        if len(conv) != 4:
            return None
        widths.append(conv[0])
    mult = tuple(w / mc for w in reversed(widths))
    mult = tuple(int(m) if m.is_integer() else m for m in mult)
    updown = any("in_layers.0.weight" in layers[i][max(layers[i])] for i in ups)
    res_out = shapes.get("output_blocks.0.0.in_layers.2.weight", (0,))[0]
    scale_shift = shapes.get("output_blocks.0.0.emb_layers.1.weight", (0,))[0] == 2 * res_out
    attention = {2 ** (groups - 1 - i // (nrb + 1)) for i, block in layers.items()
                 if any("qkv.weight" in names for names in block.values())}
    label = shapes.get("label_emb.weight")
    return Layout(
        num_channels=mc, channel_mult=mult, num_res_blocks=nrb, attention_ds=tuple(sorted(attention)),
        learn_sigma=last[0] == 2 * first[1], resblock_updown=updown, use_scale_shift_norm=scale_shift,
        class_cond=label is not None, in_channels=first[1], out_channels=last[0],
        num_classes=label[0] if label is not None else None,
    )
