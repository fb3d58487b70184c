"""The UNet against OpenAI's reference code: layouts key by key, and the same function in float32.

The fixtures in tests/data/openai/ were computed by OpenAI's own code (see make_reference.py there) on small
random-weight models covering legacy and new attention order, num_heads vs num_head_channels,
num_heads_upsample, resblock_updown, scale-shift norm on and off, learned sigma, class conditioning, dropout
and channel_mult (derived and given, including 0.5); the weights are recreated from the stored seed.
"""

from __future__ import annotations

import importlib.util
import json
import os

import pytest
import torch

from diffsmooth_fast.diffusion.openai_flags import PRESETS, openai_flags
from diffsmooth_fast.models.unet import GroupNorm32, UNet, UNetConfig

pytestmark = pytest.mark.usefixtures("one_thread")

DATA = os.path.join(os.path.dirname(__file__), "data", "openai")


def _reference_module():
    spec = importlib.util.spec_from_file_location("openai_make_reference", os.path.join(DATA, "make_reference.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


fill_state_dict = _reference_module().fill_state_dict
CASES = torch.load(os.path.join(DATA, "unet_cases.pt"), weights_only=True)["cases"]
with open(os.path.join(DATA, "layouts.json")) as _f:
    LAYOUTS = json.load(_f)


def build(case: dict) -> UNet:
    """Our UNet for a reference case, built from the flags as given (our defaults fill the rest)."""
    unet = UNet(openai_flags(case["repo"], **case["flags"]).unet_config())
    shapes = {k: tuple(v.shape) for k, v in unet.state_dict().items()}
    unet.load_state_dict(fill_state_dict(shapes, case["seed"]), strict=True)
    return unet.eval()


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_matches_reference_fp32(case):
    unet = build(case)
    assert list(unet.state_dict()) == case["keys"]  # same names, same order
    with torch.no_grad():
        out = unet(case["x"], case["t"], case["y"])
    ref = case["out"]
    assert out.shape == ref.shape and out.dtype == torch.float32
    scale = ref.abs().max().item()
    assert (out - ref).abs().max().item() <= 1e-5 * max(1.0, scale)


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_defaults_are_the_repositorys(case):
    ours = openai_flags(case["repo"], **case["flags"]).to_dict()
    reference = case["all_flags"]  # the repository's model_and_diffusion_defaults() updated with the case
    assert {k: ours[k] for k in reference} == reference


def test_fixture_weights_reach_every_tensor():
    # A zero-initialised tensor in the fixture model would hide a branch from the comparison above.
    case = CASES[0]
    unet = build(case)
    for name, p in unet.state_dict().items():
        assert p.abs().max() > 0, name
    changed = {k: v.clone() for k, v in unet.state_dict().items()}
    changed["out.2.bias"] += 1.0
    unet.load_state_dict(changed)
    with torch.no_grad():
        assert not torch.allclose(unet(case["x"], case["t"], case["y"]), case["out"], atol=1e-3)


@pytest.mark.parametrize("name,count,millions", [("cifar10", 446, 52.55), ("imagenet", 566, 552.8)])
def test_full_size_layout_key_by_key(name, count, millions):
    layout = LAYOUTS[name]
    flags = PRESETS[name]
    assert {k: getattr(flags, k) for k in layout["flags"]} == layout["flags"]  # the preset is the README's flags
    with torch.device("meta"):
        unet = UNet(flags.unet_config())
    ours = [[k, list(v.shape)] for k, v in unet.state_dict().items()]
    assert len(ours) == len(layout["tensors"]) == count
    for mine, ref in zip(ours, layout["tensors"]):
        assert mine == ref
    params = sum(p.numel() for p in unet.parameters())
    assert params == layout["parameters"]
    assert round(params / 1e6, 2 if millions < 100 else 1) == millions


def test_group_norm_statistics_in_fp32(monkeypatch):
    seen = []
    group_norm = torch.nn.functional.group_norm

    def spy(x, *args, **kwargs):
        seen.append((x.dtype, args[1].dtype))
        return group_norm(x, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "group_norm", spy)
    torch.manual_seed(0)
    norm = GroupNorm32(32, 64)
    with torch.no_grad():
        norm.weight.normal_(1, 0.2)
        norm.bias.normal_(0, 0.1)
    x = (300 + torch.randn(2, 64, 8, 8)).half()
    expected = group_norm(x.float(), 32, norm.weight, norm.bias)
    half = norm.half()
    out = half(x)
    assert seen == [(torch.float32, torch.float32)]  # statistics and affine in fp32, whatever the model dtype
    assert out.dtype == torch.float16 and half.weight.dtype == torch.float16
    assert (out.float() - expected).abs().max() < 0.05  # bounded by the fp16 rounding of weights and output


def test_bad_configs_are_value_errors():
    with pytest.raises(ValueError, match="divisible by 32"):
        UNet(UNetConfig(model_channels=48, num_res_blocks=1, channel_mult=(1,)))
    with pytest.raises(ValueError, match="num_head_channels"):
        UNet(UNetConfig(model_channels=32, num_res_blocks=1, channel_mult=(1, 2), attention_ds=(2,),
                        num_head_channels=24))
    with pytest.raises(ValueError, match="num_heads"):
        UNet(UNetConfig(model_channels=32, num_res_blocks=1, channel_mult=(1,), attention_ds=(1,), num_heads=3))


def test_class_labels_required_iff_class_conditional():
    case = next(c for c in CASES if c["y"] is not None)
    unet = build(case)
    with pytest.raises(ValueError, match="class"):
        unet(case["x"], case["t"])


# --- the formats a GPU engine runs: channels_last memory, autocast over float32 weights -----------------------

@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_channels_last_is_the_same_function(case):
    """Model and input in channels_last (cuDNN's fast layout): the reference's outputs, in channels_last."""
    unet = build(case).to(memory_format=torch.channels_last)
    x = case["x"].contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        out = unet(x, case["t"], case["y"])
    ref = case["out"]
    assert out.is_contiguous(memory_format=torch.channels_last) and out.dtype == torch.float32
    assert (out - ref).abs().max().item() <= 1e-5 * max(1.0, ref.abs().max().item())


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
@pytest.mark.parametrize("case", CASES[:4], ids=[c["name"] for c in CASES[:4]])
def test_autocast_over_float32_weights(case, dtype, channels_last):
    """float32 weights under torch.autocast: the output comes back in the input's dtype, and its error against
    the float32 reference is at most twice that of the model held in dtype (the project's precision rule)."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    unet = build(case).to(memory_format=fmt)
    x = case["x"].contiguous(memory_format=fmt)
    with torch.no_grad():
        with torch.autocast("cpu", dtype=dtype):
            out = unet(x, case["t"], case["y"])
        held = build(case).to(dtype)(case["x"], case["t"], case["y"])
    ref = case["out"]
    assert out.dtype == torch.float32 and all(p.dtype == torch.float32 for p in unet.parameters())
    err, err_held = (out - ref).abs().max().item(), (held.float() - ref).abs().max().item()
    assert 0 < err <= 2 * err_held, (err, err_held)  # 0 < err: it really ran in the lower precision
