"""A diffusion UNet that loads OpenAI's improved-diffusion and guided-diffusion checkpoints as they are.

Written from the published architecture, not copied: its state dict has exactly the reference layout (key
names, shapes and order) for every configuration OpenAI's code builds, and in float32 it computes the same
function. Differences that do not change the function: attention runs through
``F.scaled_dot_product_attention`` (one fused kernel instead of two einsums); the whole model may be held in
float16/bfloat16 (OpenAI's ``use_fp16`` halves only the convolutions), with GroupNorm statistics, the
timestep frequencies and the softmax kept in float32 as in the reference. ``UNet.fuse_group_norms`` (opt-in)
runs each GroupNorm with the scale-shift and SiLU after it as one op, computed in float32 and rounded once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..ops.groupnorm import group_norm_silu

GROUPS = 32  # OpenAI's normalization(): GroupNorm(32, C), so every channel count must be a multiple of 32


@dataclass(frozen=True)
class UNetConfig:
    """The constructor arguments of OpenAI's ``UNetModel`` (2-D, learned resampling convolutions).

    ``attention_ds`` are downsampling rates (1, 2, 4, ...), not resolutions: OpenAI's ``create_model`` turns
    ``attention_resolutions`` into ``image_size // res``. ``channel_mult`` may hold 0.5 (512x512 models);
    level widths are ``int(mult * model_channels)``.
    """

    model_channels: int
    num_res_blocks: int
    channel_mult: tuple[float, ...]
    attention_ds: tuple[int, ...] = ()
    in_channels: int = 3
    out_channels: int = 3
    dropout: float = 0.0
    num_classes: int | None = None
    num_heads: int = 1
    num_head_channels: int = -1
    num_heads_upsample: int = -1
    use_scale_shift_norm: bool = False
    resblock_updown: bool = False
    use_new_attention_order: bool = False

    def heads(self, channels: int, upsample: bool = False) -> int:
        """Attention heads of a block of ``channels`` channels (OpenAI's AttentionBlock rule)."""
        if self.num_head_channels != -1:
            if channels % self.num_head_channels:
                raise ValueError(f"attention width {channels} is not divisible by num_head_channels "
                                 f"{self.num_head_channels}")
            return channels // self.num_head_channels
        heads = self.num_heads_upsample if upsample and self.num_heads_upsample != -1 else self.num_heads
        if heads < 1 or channels % heads:
            raise ValueError(f"attention width {channels} is not divisible by num_heads {heads}")
        return heads


class GroupNorm32(nn.GroupNorm):
    """GroupNorm whose statistics and affine transform run in float32 whatever the input dtype.

    ``fused_backend`` (None: off; set by ``UNet.fuse_group_norms``) makes :meth:`norm_act` run the norm and what
    follows it as one op instead of the modules one after the other. It is a plain attribute: the state dict is
    unchanged.
    """

    fused_backend: str | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = None if self.weight is None else self.weight.float()
        b = None if self.bias is None else self.bias.float()
        return F.group_norm(x.float(), self.num_groups, w, b, self.eps).to(x.dtype)

    def norm_act(self, x: torch.Tensor, act: nn.Module | None, scale: torch.Tensor | None = None,
                 shift: torch.Tensor | None = None) -> torch.Tensor:
        """act(norm(x) * (1 + scale) + shift), each part optional (act is the UNet's SiLU): one pass of
        ops.group_norm_silu, rounded once, when ``fused_backend`` is set; else the modules one after the other."""
        if self.fused_backend is not None:
            return group_norm_silu(x, self.num_groups, self.weight, self.bias, self.eps, scale=scale, shift=shift,
                                   silu=act is not None, backend=self.fused_backend)
        h = self(x)
        if scale is not None:
            h = h * (1 + scale)
        if shift is not None:
            h = h + shift
        return h if act is None else act(h)


def norm(channels: int) -> GroupNorm32:
    if channels % GROUPS:
        raise ValueError(f"GroupNorm needs channels divisible by {GROUPS}, got {channels} (check num_channels "
                         f"and channel_mult)")
    return GroupNorm32(GROUPS, channels)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding [B, dim] (float32) of timesteps t [B] (may be fractional): cat([cos, sin])."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, dim % 2))


class Downsample(nn.Module):
    """Stride-2 3x3 convolution (key ``op``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Nearest 2x upsampling then a 3x3 convolution (key ``conv``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class ResBlock(nn.Module):
    """Residual block conditioned on the embedding; ``updown`` = "down"/"up" resamples inside (resblock_updown).

    Sequential containers keep OpenAI's key indices: ``in_layers.{0 norm, 2 conv}``, ``emb_layers.1``,
    ``out_layers.{0 norm, 3 conv}``; ``skip_connection`` (1x1) only when the width changes.
    """

    def __init__(self, cfg: UNetConfig, channels: int, out_channels: int, updown: str | None = None) -> None:
        super().__init__()
        emb_channels = 4 * cfg.model_channels
        self.updown = updown
        self.scale_shift = cfg.use_scale_shift_norm
        self.in_layers = nn.Sequential(norm(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels if self.scale_shift else out_channels)
        )
        self.out_layers = nn.Sequential(
            norm(out_channels), nn.SiLU(), nn.Dropout(cfg.dropout), nn.Conv2d(out_channels, out_channels, 3, padding=1)
        )
        self.skip_connection = nn.Identity() if channels == out_channels else nn.Conv2d(channels, out_channels, 1)

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        if self.updown == "down":
            return F.avg_pool2d(x, 2)
        if self.updown == "up":
            return F.interpolate(x, scale_factor=2, mode="nearest")
        return x

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        norm_in, act_in, conv_in = self.in_layers
        # Resampling sits between the activation and the conv, on both branches (guided-diffusion's order).
        h = conv_in(self._resample(norm_in.norm_act(x, act_in)))
        x = self._resample(x)
        emb_out = self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        norm_out, act_out, rest = self.out_layers[0], self.out_layers[1], self.out_layers[2:]  # rest: dropout, conv
        if self.scale_shift:
            scale, shift = emb_out.chunk(2, dim=1)
            h = rest(norm_out.norm_act(h, act_out, scale, shift))
        else:
            h = rest(norm_out.norm_act(h + emb_out, act_out))
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Self-attention over positions: ``norm``, ``qkv`` (Conv1d C -> 3C), ``proj_out`` (Conv1d C -> C).

    Legacy order (improved-diffusion, guided-diffusion's default) splits heads first: the 3C qkv channels are
    [head0: q k v, head1: q k v, ...]; the new order splits q, k, v first: [q: heads, k: heads, v: heads].
    """

    def __init__(self, channels: int, heads: int, new_order: bool) -> None:
        super().__init__()
        self.heads, self.new_order = heads, new_order
        self.norm = norm(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        # The statistics do not depend on the spatial shape: normalise the 4-D input (as the fused op needs it).
        normed = self.norm.norm_act(x, None).reshape(b, c, -1)
        x = x.reshape(b, c, -1)
        qkv = self.qkv(normed)
        ch = c // self.heads
        split = (b, 3, self.heads, ch, -1) if self.new_order else (b, self.heads, 3, ch, -1)
        qkv = qkv.reshape(split).transpose(-1, -2)  # [..., T, ch]
        q, k, v = qkv.unbind(1) if self.new_order else qkv.unbind(2)  # each [B, heads, T, ch]
        # SDPA's default scale 1/sqrt(ch) equals OpenAI's ch**-0.25 applied to q and to k.
        a = F.scaled_dot_product_attention(q, k, v)
        h = self.proj_out(a.transpose(-1, -2).reshape(b, c, -1))
        return (x + h).reshape(b, c, *spatial)


class Block(nn.ModuleList):
    """OpenAI's TimestepEmbedSequential: layers applied in turn, each given the embedding."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = layer(x, emb)
        return x


class Conv(nn.Conv2d):
    """A convolution that ignores the embedding (the first input block)."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        return super().forward(x)


class UNet(nn.Module):
    """OpenAI's diffusion UNet.

    ``forward(x, timesteps, y=None)``: x [B, in_channels, H, W] (H, W divisible by 2**(levels-1)), timesteps
    [B] (integer or float values, exactly what the network was trained to receive), y [B] int64 labels
    iff class-conditional. Returns [B, out_channels, H, W] in x's dtype.
    """

    def __init__(self, cfg: UNetConfig) -> None:
        super().__init__()
        self.config = cfg
        mc = cfg.model_channels
        emb_dim = 4 * mc
        self.time_embed = nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        if cfg.num_classes is not None:
            self.label_emb = nn.Embedding(cfg.num_classes, emb_dim)

        widths = [int(m * mc) for m in cfg.channel_mult]
        ch = widths[0]
        self.input_blocks = nn.ModuleList([Block([Conv(cfg.in_channels, ch, 3, padding=1)])])
        skip_widths, ds = [ch], 1
        for level, width in enumerate(widths):
            for _ in range(cfg.num_res_blocks):
                layers = [ResBlock(cfg, ch, width)]
                ch = width
                if ds in cfg.attention_ds:
                    layers.append(AttentionBlock(ch, cfg.heads(ch), cfg.use_new_attention_order))
                self.input_blocks.append(Block(layers))
                skip_widths.append(ch)
            if level != len(widths) - 1:
                down = ResBlock(cfg, ch, ch, "down") if cfg.resblock_updown else Downsample(ch)
                self.input_blocks.append(Block([down]))
                skip_widths.append(ch)
                ds *= 2

        self.middle_block = Block([
            ResBlock(cfg, ch, ch),
            AttentionBlock(ch, cfg.heads(ch), cfg.use_new_attention_order),
            ResBlock(cfg, ch, ch),
        ])

        self.output_blocks = nn.ModuleList()
        for level in reversed(range(len(widths))):
            for i in range(cfg.num_res_blocks + 1):
                layers = [ResBlock(cfg, ch + skip_widths.pop(), widths[level])]
                ch = widths[level]
                if ds in cfg.attention_ds:
                    layers.append(AttentionBlock(ch, cfg.heads(ch, upsample=True), cfg.use_new_attention_order))
                if level and i == cfg.num_res_blocks:
                    layers.append(ResBlock(cfg, ch, ch, "up") if cfg.resblock_updown else Upsample(ch))
                    ds //= 2
                self.output_blocks.append(Block(layers))

        self.out = nn.Sequential(norm(ch), nn.SiLU(), nn.Conv2d(widths[0], cfg.out_channels, 3, padding=1))

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if (y is None) != (self.config.num_classes is None):
            raise ValueError("class labels y are required iff the model is class-conditional (class_cond)")
        dtype = self.time_embed[0].weight.dtype
        emb = self.time_embed(timestep_embedding(timesteps, self.config.model_channels).to(dtype))
        if y is not None:
            emb = emb + self.label_emb(y)
        h, skips = x.to(dtype), []
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        norm, act, conv = self.out
        return conv(norm.norm_act(h, act)).to(x.dtype)

    def fuse_group_norms(self, backend: str | None = "auto") -> UNet:
        """Run every GroupNorm with what follows it (scale-shift, SiLU) as one op (ops.group_norm_silu) on
        ``backend`` (``auto``, ``triton``, ...; None: back to the unfused modules). Returns self.

        Only plain attributes change: the state dict keys and tensors stay the same, so checkpoints load either
        way. Where autograd needs a gradient the op runs its plain-PyTorch reference, so training still works.
        """
        for module in self.modules():
            if isinstance(module, GroupNorm32):
                module.fused_backend = backend
        return self
