"""Denoiser: schedules and t*, loading real-format files, one-shot denoise against OpenAI's p_mean_variance,
reduced precision, presets, and the errors a user meets with a wrong file or wrong flags."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re

import numpy as np
import pytest
import torch

from diffsmooth_fast.diffusion.denoiser import Denoiser, eps_to_denoised, noisy_to_model_input, step_coefficients
from diffsmooth_fast.diffusion.openai_flags import PRESETS, openai_flags, preset
from diffsmooth_fast.diffusion.schedule import DiffusionSchedule, named_betas, space_timesteps
from diffsmooth_fast.models.unet import UNet

pytestmark = pytest.mark.usefixtures("one_thread")

DATA = os.path.join(os.path.dirname(__file__), "data", "openai")
_spec = importlib.util.spec_from_file_location("openai_make_reference", os.path.join(DATA, "make_reference.py"))
_reference = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_reference)
fill_state_dict = _reference.fill_state_dict
CASES = {c["name"]: c for c in torch.load(os.path.join(DATA, "unet_cases.pt"), weights_only=True)["cases"]}
with open(os.path.join(DATA, "layouts.json")) as _f:
    LAYOUTS = json.load(_f)

SMALL = dict(image_size=32, num_channels=32, num_res_blocks=1, channel_mult="1,2", attention_resolutions="16",
             num_heads=2, learn_sigma=True, diffusion_steps=1000, noise_schedule="linear")


def state_for(defaults: str = "guided", seed: int = 0, **flags) -> dict[str, torch.Tensor]:
    """Random weights in every tensor, in the layout that ``flags`` give."""
    with torch.device("meta"):
        unet = UNet(openai_flags(defaults, **flags).unet_config())
    return fill_state_dict({k: tuple(v.shape) for k, v in unet.state_dict().items()}, seed)


def save(tmp_path, state, name="ema_0.9999_500000.pt") -> str:
    path = os.fspath(tmp_path / name)
    torch.save(state, path)  # OpenAI's format: torch.save of the bare state dict
    return path


# --- schedules and t* -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,expected", [("cifar10", [573, 1158, 1984, 2809]), ("imagenet", [70, 145, 259, 396])])
def test_known_timesteps(name, expected):
    assert [preset(name).schedule().timestep(s) for s in (0.12, 0.25, 0.50, 1.00)] == expected


def test_denoiser_timestep_uses_its_own_schedule(tmp_path):
    flags = dict(SMALL, diffusion_steps=4000, noise_schedule="cosine")
    den = Denoiser.from_openai(save(tmp_path, state_for(**flags)), defaults="improved", **flags)
    assert [den.timestep(s) for s in (0.12, 0.25, 0.50, 1.00)] == [573, 1158, 1984, 2809]
    assert den.coefficients(0.5).model_t == 1984 * 0.25  # improved-diffusion rescales timesteps


def test_schedules_as_openai_computes_them():
    linear = named_betas("linear", 4000)
    assert linear[0] == 0.25 * 1e-4 and linear[-1] == 0.25 * 0.02 and linear.dtype == np.float64
    cosine = named_betas("cosine", 1000)
    f = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    assert cosine[10] == 1 - f(11 / 1000) / f(10 / 1000)
    assert cosine[-1] == 0.999  # clipped
    s = DiffusionSchedule("cosine", 1000)
    assert np.array_equal(s.alphas_cumprod, np.cumprod(1 - cosine))
    assert np.all(np.diff(s.noise_ratio) > 0)


@pytest.mark.parametrize("sigma", [0.0, -0.25, float("nan"), float("inf"), "0.25", True, 80.0])
def test_bad_sigma(sigma):
    with pytest.raises(ValueError, match="sigma"):
        preset("imagenet").schedule().timestep(sigma)  # largest sigma of linear-1000 is ~78.7


def test_tiny_sigma_is_step_zero_and_respacing():
    assert DiffusionSchedule("linear", 1000).timestep(1e-4) == 0
    assert space_timesteps(1000, "ddim50") == list(range(0, 1000, 20))
    assert space_timesteps(100, "10,15")[:2] == [0, 5] and len(space_timesteps(100, "10,15")) == 25
    spaced = DiffusionSchedule("linear", 1000, "250", rescale_timesteps=True)
    assert len(spaced) == 250 and spaced.model_timestep(1) == spaced.timestep_map[1] * 1.0
    with pytest.raises(ValueError, match="timestep_respacing"):
        DiffusionSchedule("linear", 100, "ddim60")


# --- loading real-format files, against the reference -----------------------------------------------------------

@pytest.mark.parametrize("name", list(CASES))
def test_file_round_trip_matches_reference_denoise(tmp_path, name):
    case = CASES[name]
    state = state_for(case["repo"], case["seed"], **case["flags"])
    # Through a real file, except the 23 M-parameter 512 case (92 MB to disk is slow): its state dict directly.
    big = sum(v.numel() for v in state.values()) > 10_000_000
    den = Denoiser.from_openai(state if big else save(tmp_path, state), defaults=case["repo"], **case["flags"])
    assert den.timestep(case["sigma"]) == case["t_star"]
    with torch.no_grad():
        out = den(case["x_noisy"], case["sigma"], case["y"])
    assert out.dtype == torch.float32 and 0 <= out.min() and out.max() <= 1
    # OpenAI's diffusion.p_mean_variance(..., clip_denoised=True)["pred_xstart"], mapped to [0, 1]
    assert (out - case["denoised"]).abs().max() <= 1e-5


@pytest.mark.parametrize("name", ["guided_legacy_heads", "improved_cifar_like", "guided_new_order_class_cond_xstart"])
def test_eps_at_integer_steps(name):
    case = CASES[name]
    den = Denoiser.from_openai(state_for(case["repo"], case["seed"], **case["flags"]), defaults=case["repo"],
                               **case["flags"])
    # The fixture fed the network t directly; find the steps that give those network timesteps.
    steps = case["t"] / (1000.0 / den.schedule.num_steps) if den.schedule.rescale_timesteps else case["t"]
    steps = steps.round().long()
    with torch.no_grad():
        got = den.model_output(case["x"], steps, case["y"])
        assert (got - case["out"][:, :3]).abs().max() <= 1e-5 * max(1, case["out"].abs().max().item())
        eps = den.eps(case["x"], int(steps[0]), case["y"])
    if den.flags.predict_xstart:  # eps derived from the predicted x0 reproduces it through Algorithm 2
        c = step_coefficients(den.schedule, int(steps[0]))
        x0 = c.sqrt_recip_alpha_bar * case["x"] - c.sqrt_recipm1_alpha_bar * eps
        assert torch.allclose(x0[0], case["out"][0, :3], atol=1e-4)
    else:
        assert torch.allclose(eps[0], case["out"][0, :3], atol=1e-5)


def test_function_form_matches_module():
    case = CASES["improved_cifar_like"]
    den = Denoiser.from_openai(state_for("improved", case["seed"], **case["flags"]), defaults="improved",
                               **case["flags"])
    c = den.coefficients(case["sigma"])
    with torch.no_grad():
        x_t = noisy_to_model_input(case["x_noisy"], c.sqrt_alpha_bar)
        out = eps_to_denoised(x_t, den.eps(x_t, c.t), c)
    assert torch.equal(out, den(case["x_noisy"], case["sigma"]))
    assert c.sqrt_alpha_bar == math.sqrt(den.schedule.alphas_cumprod[c.t])


@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 0.05), (torch.float16, 0.01)])
def test_reduced_precision(tmp_path, dtype, tol):
    path = save(tmp_path, state_for(**SMALL))
    ref = Denoiser.from_openai(path, **SMALL)
    low = Denoiser.from_openai(path, dtype=dtype, **SMALL)
    assert all(p.dtype == dtype for p in low.parameters()) and low.dtype == dtype
    torch.manual_seed(0)
    x = torch.rand(2, 3, 16, 16) + 0.25 * torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        x_t = noisy_to_model_input(x, ref.coefficients(0.25).sqrt_alpha_bar)
        e_ref, e_low = ref.eps(x_t, 145), low.eps(x_t, 145)
        d_ref, d_low = ref(x, 0.25), low(x, 0.25)
    assert e_low.dtype == torch.float32 and d_low.dtype == torch.float32
    assert (e_low - e_ref).abs().max() / e_ref.abs().max() < tol
    assert (d_low - d_ref).abs().max() < tol
    assert not torch.equal(d_low, d_ref)  # it really ran in the lower precision


def test_channels_last_and_autocast(tmp_path):
    """The engine's GPU settings on the denoiser: channels_last model and input, float32 weights under autocast.
    channels_last alone is the same function; with autocast the error is that of a bfloat16 model."""
    path = save(tmp_path, state_for(**SMALL))
    ref, fast = Denoiser.from_openai(path, **SMALL), Denoiser.from_openai(path, **SMALL)
    fast.to(memory_format=torch.channels_last)
    torch.manual_seed(0)
    x = torch.rand(2, 3, 32, 32) + 0.25 * torch.randn(2, 3, 32, 32)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        d_ref, d_cl = ref(x, 0.25), fast(x_cl, 0.25)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            d_auto = fast(x_cl, 0.25)
    assert d_cl.is_contiguous(memory_format=torch.channels_last)
    assert (d_cl - d_ref).abs().max() < 1e-5
    assert d_auto.dtype == torch.float32 and 0 < (d_auto - d_ref).abs().max() < 0.05


# --- presets and flags ----------------------------------------------------------------------------------------

def test_presets():
    c, i = preset("cifar10"), preset("imagenet")
    assert (c.image_size, c.num_channels, c.num_res_blocks, c.num_heads, c.attention_resolutions, c.dropout) == \
        (32, 128, 3, 4, "16,8", 0.3)
    assert (c.learn_sigma, c.diffusion_steps, c.noise_schedule, c.use_scale_shift_norm, c.rescale_timesteps) == \
        (True, 4000, "cosine", True, True)
    assert c.resolved_channel_mult() == (1, 2, 2, 2) and c.defaults == "improved"
    assert (i.image_size, i.num_channels, i.num_res_blocks, i.num_head_channels, i.attention_resolutions) == \
        (256, 256, 2, 64, "32,16,8")
    assert (i.resblock_updown, i.use_scale_shift_norm, i.learn_sigma, i.class_cond, i.diffusion_steps) == \
        (True, True, True, False, 1000)
    assert (i.noise_schedule, i.use_fp16, i.use_new_attention_order, i.rescale_timesteps) == \
        ("linear", True, False, False)
    assert i.resolved_channel_mult() == (1, 1, 2, 2, 4, 4)


@pytest.mark.parametrize("name", ["cifar10", "imagenet"])
def test_from_preset_full_size_on_meta(name):
    # Full-size layouts without memory: a meta state dict in the reference layout, loaded onto meta.
    state = {k: torch.empty(s, device="meta") for k, s in LAYOUTS[name]["tensors"]}
    den = Denoiser.from_preset(name, state, device="meta")
    assert den.flags == PRESETS[name]
    other = "imagenet" if name == "cifar10" else "cifar10"
    with pytest.raises(ValueError, match="num_channels=(128|256) \\(given (256|128)\\)"):
        Denoiser.from_preset(other, state, device="meta")
    wrong_size = {k: v for k, v in PRESETS[name].to_dict().items() if k != "image_size"}
    wrong_size["image_size"] = 64
    with pytest.raises(ValueError, match=r"probably image_size=(32|256) \(given 64\);"):
        Denoiser.from_flags(openai_flags(PRESETS[name].defaults, **wrong_size), state, device="meta")
    with pytest.raises(ValueError, match=r"only with image_size=(32|256) \(not 64\)"):  # flags read from the file
        Denoiser.from_openai(state, defaults=PRESETS[name].defaults, device="meta", **wrong_size)
    with pytest.raises(ValueError, match="unknown preset 'cifar': .*did you mean 'cifar10'"):
        Denoiser.from_preset("cifar", state)


def test_defaults_policy():
    assert openai_flags().rescale_timesteps is False and openai_flags("improved").rescale_timesteps is True
    assert openai_flags("improved", image_size=32).resolved_channel_mult() == (1, 2, 2, 2)
    with pytest.raises(ValueError, match="defaults='improved'"):
        openai_flags(image_size=32)  # guided-diffusion has no channel_mult for 32
    assert openai_flags(image_size=32, channel_mult=(1, 2, 2, 2)).channel_mult == "1,2,2,2"


def test_unknown_flag_names_close_matches():
    with pytest.raises(ValueError, match="unknown OpenAI flag 'num_channel'.*num_channels"):
        Denoiser.from_openai({}, num_channel=128)
    with pytest.raises(ValueError, match="'attention_resolution'.*attention_resolutions"):
        openai_flags(attention_resolution="16")
    with pytest.raises(ValueError, match="learn_sigma must be bool"):
        openai_flags(learn_sigma="True")
    with pytest.raises(ValueError, match="dtype"):
        Denoiser.from_openai(state_for(**SMALL), dtype=torch.float64, **SMALL)


# --- wrong files, wrong flags ---------------------------------------------------------------------------------

def test_optimizer_file_is_refused(tmp_path):
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(3))]).state_dict()
    path = save(tmp_path, opt, "opt000100.pt")
    with pytest.raises(ValueError, match=r"optimizer state \(OpenAI's opt\*\.pt\).*ema_\*\.pt"):
        Denoiser.from_openai(path, **SMALL)


def test_not_a_unet(tmp_path):
    with pytest.raises(ValueError, match="does not look like an OpenAI UNet"):
        Denoiser.from_openai(save(tmp_path, {"fc.weight": torch.zeros(2, 2)}), **SMALL)
    with pytest.raises(ValueError, match="not a state dict"):
        Denoiser.from_openai(save(tmp_path, [torch.zeros(2)]), **SMALL)
    with pytest.raises(ValueError, match="no such file"):
        Denoiser.from_openai(tmp_path / "missing.pt", **SMALL)


WRONG = [
    # (flags of the file, flags given, expected phrase)
    (dict(), dict(learn_sigma=False), r"learn_sigma=True \(given False\).*out\.2\.weight: checkpoint \[6, 32, 3, 3\], "
                                      r"flags \[3, 32, 3, 3\]"),
    (dict(), dict(num_channels=64), r"num_channels=32 \(given 64\)"),
    (dict(), dict(num_res_blocks=2), r"num_res_blocks=1 \(given 2\).*missing keys"),
    (dict(), dict(channel_mult="1,2,2"), r"channel_mult='1,2' \(given '1,2,2'\)"),
    (dict(class_cond=True), dict(), r"class_cond=True \(given False\).*unexpected keys \(e\.g\. label_emb\.weight\)"),
    (dict(), dict(attention_resolutions="8"), r"attention_resolutions='16' \(given '8'\)"),
    (dict(resblock_updown=True), dict(), r"resblock_updown=True \(given False\)"),
    (dict(use_scale_shift_norm=False), dict(), r"use_scale_shift_norm=False \(given True\)"),
]


@pytest.mark.parametrize("file_flags,given,phrase", WRONG)
def test_wrong_flag_is_named(tmp_path, file_flags, given, phrase):
    """All flags as given (from_flags): the diagnosis names the flag that is probably wrong."""
    path = save(tmp_path, state_for(**{**SMALL, **file_flags}))
    with pytest.raises(ValueError, match="does not fit the flags: probably " + phrase):
        Denoiser.from_flags(openai_flags(**{**SMALL, **given}), path)


GIVEN_WRONG = [  # (flags of the file, a flag given, the file's value)
    (dict(), dict(learn_sigma=False), "learn_sigma=True"),
    (dict(), dict(num_channels=64), "num_channels=32"),
    (dict(), dict(num_res_blocks=2), "num_res_blocks=1"),
    (dict(), dict(channel_mult="1,2,2"), "channel_mult='1,2'"),
    (dict(class_cond=True), dict(class_cond=False), "class_cond=True"),
    (dict(resblock_updown=True), dict(resblock_updown=False), "resblock_updown=True"),
    (dict(use_scale_shift_norm=False), dict(use_scale_shift_norm=True), "use_scale_shift_norm=False"),
]


@pytest.mark.parametrize("file_flags,given,found", GIVEN_WRONG)
def test_given_flag_contradicting_the_file_names_both_values(tmp_path, file_flags, given, found):
    """Flags read from the file (from_openai): a given flag the shapes contradict is refused with both values."""
    path = save(tmp_path, state_for(**{**SMALL, **file_flags}))
    (name, value), = given.items()
    shown = f"'{value}'" if isinstance(value, str) else str(value)
    with pytest.raises(ValueError, match=re.escape(f"does not fit the flags: {found} in the file, given {shown}")):
        Denoiser.from_openai(path, **{**SMALL, **file_flags, **given})
    with pytest.raises(ValueError, match=re.escape("attention_resolutions '8' puts attention where the file has it "
                                                   "only with image_size=16 (not 32)")):
        Denoiser.from_openai(path, **{**SMALL, **file_flags, "attention_resolutions": "8"})
    # and with those flags left out, they are read from the file
    den = Denoiser.from_openai(path, **{k: v for k, v in SMALL.items() if k in ("diffusion_steps", "noise_schedule",
                                                                                 "num_heads", "image_size")})
    assert den.flags.to_dict() == openai_flags(**{**SMALL, **file_flags}).to_dict()
    assert den.flag_sources["num_channels"] == "shapes" and den.flag_sources["diffusion_steps"] == "given"


def test_call_errors():
    den = Denoiser.from_openai(state_for(**SMALL), **SMALL)
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        den(torch.rand(3, 16, 16), 0.25)
    with pytest.raises(ValueError, match="timestep"):
        den.eps(torch.rand(1, 3, 16, 16), 1000)
    with pytest.raises(ValueError, match="class-conditional"):
        den(torch.rand(1, 3, 16, 16), 0.25, torch.tensor([1]))
