"""GroupNorm + scale-shift + SiLU (ops.group_norm_silu) against its reference, and the UNet with fused norms
against the unfused one.

The Triton kernel runs under the CPU interpreter here: shapes are small, and the multi-block path (groups larger
than one block, as in the ImageNet UNet) is reached with a small block override.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from diffsmooth_fast.diffusion.openai_flags import openai_flags
from diffsmooth_fast.models.unet import GroupNorm32, UNet
from diffsmooth_fast.ops import group_norm_silu
from diffsmooth_fast.ops.reference import group_norm_silu_ref

from .test_ops_common import DT_IDS, FP32_ATOL, check_output, needs_triton_interpreter
from .tiny_models import UNET_FLAGS, fill_state_dict

pytestmark = pytest.mark.usefixtures("one_thread")

GROUPS = 32
EPS = 1e-5
# What each norm of the UNet computes: ResBlock.out_layers with scale-shift (then SiLU), ResBlock.in_layers and
# UNet.out (norm, SiLU), AttentionBlock.norm (no SiLU).
MODES = {"scale-shift": (True, True), "silu": (False, True), "norm-only": (False, False)}


def _inputs(batch, channels, h, w, dtype=torch.float32, channels_last=False, seed=0):
    """x, weight, bias and scale, shift as the UNet hands them: [B, C, 1, 1] halves of one projection (strided)."""
    gen = torch.Generator().manual_seed(seed)
    x = (0.5 + 2 * torch.randn((batch, channels, h, w), generator=gen)).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    weight = (1 + 0.2 * torch.randn(channels, generator=gen)).to(dtype)
    bias = (0.1 * torch.randn(channels, generator=gen)).to(dtype)
    scale, shift = (0.3 * torch.randn((batch, 2 * channels, 1, 1), generator=gen)).to(dtype).chunk(2, dim=1)
    return x, weight, bias, scale, shift


def _ref32(x, weight, bias, scale, shift, silu):
    """The reference on the same values held in float32: the exact function, rounded once to float32."""
    xf, wf, bf, sf, hf = (None if t is None else t.float() for t in (x, weight, bias, scale, shift))
    return group_norm_silu_ref(xf, GROUPS, wf, bf, EPS, sf, hf, silu)


def naive(x, weight, bias, scale, shift, silu, dtype):
    """The unfused UNet held in dtype: GroupNorm32 (float32 inside, rounded to dtype), then the scale-shift and
    SiLU in dtype. The float16/bfloat16 yardstick of the precision rule."""
    y = F.group_norm(x.float(), GROUPS, weight.float(), bias.float(), EPS).to(dtype)
    if scale is not None:
        y = y * (1 + scale) + shift
    return F.silu(y) if silu else y


@needs_triton_interpreter
@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("shape", [(64, 1, 1), (64, 3, 3), (96, 7, 7), (64, 8, 8)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("batch", [1, 3])
def test_fp32_matches_reference(mode, channels_last, shape, batch):
    x, weight, bias, scale, shift = _inputs(batch, *shape, channels_last=channels_last)
    use_scale, silu = MODES[mode]
    scale, shift = (scale, shift) if use_scale else (None, None)
    got = group_norm_silu(x, GROUPS, weight, bias, EPS, scale=scale, shift=shift, silu=silu, backend="triton")
    want = group_norm_silu_ref(x, GROUPS, weight, bias, EPS, scale, shift, silu)
    check_output(got, want, None, torch.float32, channels_last)


@needs_triton_interpreter
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("shape,block", [((96, 7, 7), 64), ((64, 8, 8), 32)], ids=["partial-last-block", "whole"])
def test_multi_block_path(channels_last, shape, block):
    """Groups larger than a block: statistics merged block by block, then a second read to normalise."""
    from diffsmooth_fast.ops.triton.groupnorm import group_norm_silu_triton

    x, weight, bias, scale, shift = _inputs(2, *shape, channels_last=channels_last, seed=1)
    assert shape[0] // GROUPS * shape[1] * shape[2] > block
    got = torch.empty_like(x)
    group_norm_silu_triton(got, x, GROUPS, weight, bias, EPS, scale.reshape(2, -1), shift.reshape(2, -1), True,
                           block=block)
    check_output(got, group_norm_silu_ref(x, GROUPS, weight, bias, EPS, scale, shift), None, torch.float32,
                 channels_last)


@needs_triton_interpreter
@pytest.mark.parametrize("block", [None, 512], ids=["one-block", "eight-blocks"])
def test_large_offset_does_not_cancel(block):
    """Values 1000 +- 1: E[x^2] - E[x]^2 in float32 would lose the variance (~8% here); centred sums keep it.
    The kernel's error against float64 is at most twice PyTorch's own float32 GroupNorm's."""
    from diffsmooth_fast.ops.triton.groupnorm import group_norm_silu_triton

    x = 1000 + torch.randn((1, 32, 16, 16), generator=torch.Generator().manual_seed(2))
    exact = F.group_norm(x.double(), 2, None, None, EPS)
    got = torch.empty_like(x)
    group_norm_silu_triton(got, x, 2, torch.ones(32), torch.zeros(32), EPS, None, None, False, block=block)
    err = (got.double() - exact).abs().max().item()
    err_torch = (F.group_norm(x, 2, None, None, EPS).double() - exact).abs().max().item()
    assert err <= 2 * err_torch, (err, err_torch)


@needs_triton_interpreter
@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=DT_IDS[1:])
def test_low_precision(mode, channels_last, dtype):
    """Inputs, parameters and output in dtype: the kernel (float32 inside, one rounding) is within twice the error
    of the unfused UNet in dtype, and within one unit in the last place of the float32 reference."""
    x, weight, bias, scale, shift = _inputs(3, 64, 8, 8, dtype, channels_last, seed=3)
    use_scale, silu = MODES[mode]
    scale, shift = (scale, shift) if use_scale else (None, None)
    got = group_norm_silu(x, GROUPS, weight, bias, EPS, scale=scale, shift=shift, silu=silu, backend="triton")
    ref32 = _ref32(x, weight, bias, scale, shift, silu)
    check_output(got, ref32, naive(x, weight, bias, scale, shift, silu, dtype), dtype, channels_last, "triton")


@pytest.mark.parametrize("backend", ["torch", "cpp", "auto"])
def test_cpu_backends_run_the_reference(backend):
    """No C++ kernel: cpp (auto's choice on CPU) and torch give the reference exactly, in x's memory format."""
    x, weight, bias, scale, shift = _inputs(2, 64, 3, 5, channels_last=True)
    got = group_norm_silu(x, GROUPS, weight, bias, EPS, scale=scale, shift=shift, backend=backend)
    assert torch.equal(got, group_norm_silu_ref(x, GROUPS, weight, bias, EPS, scale, shift))
    assert got.is_contiguous(memory_format=torch.channels_last)


@needs_triton_interpreter
def test_other_forms():
    """[B, C] scale/shift, no affine, odd strides (copied), float64 and autograd (both run the reference)."""
    x, weight, bias, scale, shift = _inputs(2, 64, 3, 3, seed=4)
    sc, sh = scale.reshape(2, 64).contiguous(), shift.reshape(2, 64).contiguous()
    got = group_norm_silu(x, GROUPS, weight, bias, EPS, scale=sc, shift=sh, backend="triton")
    torch.testing.assert_close(got, group_norm_silu_ref(x, GROUPS, weight, bias, EPS, scale, shift),
                               atol=FP32_ATOL, rtol=0)
    got = group_norm_silu(x, GROUPS, None, None, EPS, backend="triton")
    torch.testing.assert_close(got, F.silu(F.group_norm(x, GROUPS, eps=EPS)), atol=FP32_ATOL, rtol=0)
    strided = x.transpose(2, 3)
    got = group_norm_silu(strided, GROUPS, weight, bias, EPS, backend="triton")
    assert got.is_contiguous()
    torch.testing.assert_close(got, group_norm_silu_ref(strided, GROUPS, weight, bias, EPS), atol=FP32_ATOL, rtol=0)
    wide = group_norm_silu(x.double(), GROUPS, weight, bias, EPS, backend="triton")
    assert wide.dtype == torch.float64
    xg = x.clone().requires_grad_()
    y = group_norm_silu(xg, GROUPS, weight, bias, EPS, scale=scale, shift=shift, backend="triton")
    y.sum().backward()
    assert xg.grad is not None and xg.grad.abs().sum() > 0
    empty = group_norm_silu(x[:0], GROUPS, weight, bias, EPS, backend="triton")
    assert empty.shape == (0, 64, 3, 3)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(x=torch.rand(2, 64, 9)), "\\[B, C, H, W\\]"),
        (dict(x=torch.ones(2, 64, 3, 3, dtype=torch.int64)), "floating-point"),
        (dict(num_groups=5), "divisible by num_groups"),
        (dict(num_groups=0), "num_groups must"),
        (dict(weight=torch.ones(32)), "weight must"),
        (dict(bias=torch.ones(64, 1)), "bias must"),
        (dict(scale=torch.ones(2, 64, 3, 3)), "scale must"),
        (dict(shift=torch.ones(3, 64)), "shift must"),
        (dict(eps=-1.0), "eps must"),
        (dict(backend="nonsense"), "unknown backend"),
    ],
)
def test_bad_arguments(kwargs, match):
    args = dict(x=torch.rand(2, 64, 3, 3), num_groups=GROUPS, weight=torch.ones(64), bias=torch.zeros(64), eps=EPS)
    args.update(kwargs)
    backend = args.pop("backend", "torch")
    with pytest.raises(ValueError, match=match):
        group_norm_silu(args.pop("x"), args.pop("num_groups"), args.pop("weight"), args.pop("bias"), args.pop("eps"),
                        backend=backend, **args)


# --- the UNet with fused norms -------------------------------------------------------------------------------

def _tiny_unet(scale_shift: bool) -> UNet:
    """tests/tiny_models.py's UNet (32 and 64 channels, attention at the second level), random weights."""
    unet = UNet(openai_flags(**UNET_FLAGS, use_scale_shift_norm=scale_shift).unet_config())
    unet.load_state_dict(fill_state_dict({k: tuple(v.shape) for k, v in unet.state_dict().items()}, 0))
    return unet.eval()


@needs_triton_interpreter
@pytest.mark.parametrize("scale_shift", [True, False], ids=["scale-shift", "add-emb"])
def test_unet_fused_equals_unfused(scale_shift):
    unet = _tiny_unet(scale_shift)
    keys = {k: v.clone() for k, v in unet.state_dict().items()}
    gen = torch.Generator().manual_seed(5)
    # Batch 1: the interpreter's cost is per (sample, group) program; the op tests cover larger batches.
    x, t = torch.randn((1, 3, 8, 8), generator=gen), torch.tensor([500])
    with torch.no_grad():
        want = unet(x, t)
        assert unet.fuse_group_norms("triton") is unet
        norms = [m for m in unet.modules() if isinstance(m, GroupNorm32)]
        assert norms and all(m.fused_backend == "triton" for m in norms)
        calls = []
        unet.out[0].register_forward_hook(lambda *a: calls.append(1))  # the module is bypassed when fused
        got = unet(x, t)
    assert not calls
    assert list(unet.state_dict()) == list(keys) and all(torch.equal(v, keys[k]) for k, v in unet.state_dict().items())
    assert {"input_blocks.1.0.in_layers.0.weight", "input_blocks.1.0.out_layers.0.weight", "out.0.weight"} <= set(keys)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    unet.load_state_dict(keys)  # a checkpoint still loads into the fused model
    with torch.no_grad():
        assert torch.equal(unet.fuse_group_norms(None)(x, t), want)  # None: back to the modules


def test_unet_fused_trains():
    """Train mode (dropout active) with gradients: the op runs its reference, and gradients reach the norms."""
    unet = UNet(openai_flags(**{**UNET_FLAGS, "dropout": 0.3}).unet_config()).train().fuse_group_norms("torch")
    out = unet(torch.randn(2, 3, 8, 8), torch.tensor([1, 2]))
    out.square().mean().backward()
    assert unet.out[0].weight.grad is not None and unet.input_blocks[1][0].out_layers[0].weight.grad is not None


# The compile for a GPU target (sm_90, no GPU needed) is in test_triton_compile.py, with the other kernels'.


# --- on a GPU: the compiled kernel at CIFAR-10 UNet sizes ------------------------------------------------------

# Each (dtype, layout) compiles 15 kernel variants: the short GPU profile runs bf16/nhwc only, what its
# end-to-end 'fast' runs use (gpu_full: benchmarks/gpu_run.sh).
@pytest.mark.gpu
@pytest.mark.parametrize("dtype,channels_last", [
    pytest.param(dtype, cl, id=f"{dt_id}-{'nhwc' if cl else 'nchw'}",
                 marks=() if (dtype, cl) == (torch.bfloat16, True) else pytest.mark.gpu_full)
    for dtype, dt_id in zip([torch.float32, torch.float16, torch.bfloat16], DT_IDS) for cl in (False, True)
])
def test_gpu_cifar_sizes(dtype, channels_last):
    """CIFAR-10 UNet activations: 128..512 channels at 32x32 down to 4x4 (one- and multi-block groups)."""
    for channels, size in [(128, 32), (384, 32), (512, 16), (256, 8), (512, 4)]:
        for use_scale, silu in MODES.values():
            x, weight, bias, scale, shift = _inputs(16, channels, size, size, dtype, channels_last, seed=channels)
            scale, shift = (scale, shift) if use_scale else (None, None)
            got = group_norm_silu(x.cuda(), GROUPS, weight.cuda(), bias.cuda(), EPS,
                                  scale=None if scale is None else scale.cuda(),
                                  shift=None if shift is None else shift.cuda(), silu=silu, backend="triton")
            ref32 = _ref32(x, weight, bias, scale, shift, silu)
            lowp = naive(x, weight, bias, scale, shift, silu, dtype) if dtype != torch.float32 else None
            check_output(got, ref32, lowp, dtype, channels_last, "triton")
