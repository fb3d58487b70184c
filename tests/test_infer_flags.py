"""OpenAI flags read from the file: the shapes' flags for improved- and guided-diffusion layouts (against the
reference code's outputs), the known checkpoints' fingerprints (against the reference code's full-size layouts),
improved-diffusion's README call, where each flag came from, given flags checked, safetensors files, the CLI."""

from __future__ import annotations

import importlib.util
import json
import logging
import os

import pytest
import torch

from diffsmooth_fast.diffusion.denoiser import Denoiser
from diffsmooth_fast.diffusion.openai_files import read_openai_flags
from diffsmooth_fast.diffusion.infer_flags import SHAPE_FLAGS, fingerprint, known_digests, layout_digest
from diffsmooth_fast.diffusion.openai_flags import PRESETS, openai_flags
from diffsmooth_fast.models import shipped
from diffsmooth_fast.models.unet import UNet
from diffsmooth_fast.run.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

DATA = os.path.join(os.path.dirname(__file__), "data", "openai")
_spec = importlib.util.spec_from_file_location("openai_make_reference", os.path.join(DATA, "make_reference.py"))
_reference = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_reference)
CASES = {c["name"]: c for c in torch.load(os.path.join(DATA, "unet_cases.pt"), weights_only=True)["cases"]}
with open(os.path.join(DATA, "layouts.json")) as _f:
    LAYOUTS = json.load(_f)

# improved-diffusion's README: MODEL_FLAGS and DIFFUSION_FLAGS of cifar10_uncond_50M_500K.pt
IMPROVED_README = dict(image_size=32, num_channels=128, num_res_blocks=3, learn_sigma=True, dropout=0.3,
                       diffusion_steps=4000, noise_schedule="cosine")


def meta_state(name: str) -> dict[str, torch.Tensor]:
    """A full-size checkpoint's layout as the reference code builds it, on the meta device (no memory)."""
    return {k: torch.empty(s, device="meta") for k, s in LAYOUTS[name]["tensors"]}


def case_state(case: dict) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        unet = UNet(openai_flags(case["repo"], **case["flags"]).unet_config())
    return _reference.fill_state_dict({k: tuple(v.shape) for k, v in unet.state_dict().items()}, case["seed"])


@pytest.mark.parametrize("name", ["cifar10", "imagenet"])
def test_fingerprints_match_the_reference_layouts(name):
    """The digests made from our UNet on meta equal those of the layouts OpenAI's code builds."""
    shapes = {k: tuple(s) for k, s in LAYOUTS[name]["tensors"]}
    assert fingerprint(shapes) == name
    assert known_digests()[layout_digest(shapes)] == name
    shapes.pop("out.2.bias")
    assert fingerprint(shapes) is None


@pytest.mark.parametrize("name", ["cifar10", "imagenet"])
def test_known_checkpoint_loads_with_no_flags(name, caplog):
    with caplog.at_level(logging.INFO, logger="diffsmooth_fast"):
        den = Denoiser.from_openai(meta_state(name), device="meta")
    assert den.flags == PRESETS[name]
    assert den.flag_sources["num_channels"] == "shapes" and den.flag_sources["learn_sigma"] == "shapes"
    assert den.flag_sources["diffusion_steps"] == f"known checkpoint {name}"
    assert den.flag_sources["num_head_channels"] == f"known checkpoint {name}"
    assert "read from the tensor shapes: num_channels=" in caplog.text and f"known checkpoint {name} (" in caplog.text


@pytest.mark.parametrize("defaults", [None, "guided", "improved"])
def test_improved_readme_flags_call_works(defaults):
    """Denoiser.from_openai('cifar10_uncond_50M_500K.pt', image_size=32, ...) with the README's flags: channel_mult
    is read from the file (1,2,2,2), rescale_timesteps and the heads come from the fingerprint."""
    extra = {} if defaults is None else {"defaults": defaults}
    den = Denoiser.from_openai(meta_state("cifar10"), device="meta", **extra, **IMPROVED_README)
    assert den.flags.to_dict() == PRESETS["cifar10"].to_dict()
    assert den.flags.resolved_channel_mult() == (1, 2, 2, 2) and den.flags.rescale_timesteps is True
    assert den.flag_sources["image_size"] == "given" and den.flag_sources["rescale_timesteps"] == "known checkpoint cifar10"
    assert [den.timestep(s) for s in (0.12, 0.25, 0.50, 1.00)] == [573, 1158, 1984, 2809]


@pytest.mark.parametrize("name", ["improved_cifar_like", "improved_64_class_cond", "guided_legacy_heads",
                                  "guided_updown_head_channels_respaced", "guided_new_order_class_cond_xstart"])
def test_layouts_load_without_shape_flags_and_match_the_reference(name):
    """Small improved- and guided-diffusion layouts: every shape flag read from the file; only what shapes cannot
    tell is given; the denoise equals the reference code's."""
    case = CASES[name]
    unseen = {k: v for k, v in case["flags"].items() if k not in SHAPE_FLAGS}
    den = Denoiser.from_openai(case_state(case), defaults=case["repo"], **unseen)
    expected = openai_flags(case["repo"], **case["flags"])
    for flag in SHAPE_FLAGS:
        assert den.flag_sources[flag] == "shapes"
    assert den.flags.unet_config() == expected.unet_config()
    assert den.timestep(case["sigma"]) == case["t_star"]
    with torch.no_grad():
        out = den(case["x_noisy"], case["sigma"], case["y"])
    assert (out - case["denoised"]).abs().max() <= 1e-5


def test_given_head_split_replaces_the_presets():
    den = Denoiser.from_openai(meta_state("imagenet"), device="meta", num_heads=8)
    assert (den.flags.num_heads, den.flags.num_head_channels) == (8, -1)  # not the preset's num_head_channels=64
    assert den.unet.config.heads(256) == 8 and den.flags.diffusion_steps == 1000
    assert den.flag_sources["num_head_channels"] == "defaults"


def test_unknown_file_needs_the_diffusion_flags():
    state = case_state(CASES["guided_legacy_heads"])
    with pytest.raises(ValueError, match="not a known checkpoint and its tensors cannot tell diffusion_steps, "
                                         "noise_schedule: give them"):
        Denoiser.from_openai(state)
    den = Denoiser.from_openai(state, diffusion_steps=1000, noise_schedule="linear")
    assert den.flag_sources["num_heads"] == "defaults" and den.flag_sources["diffusion_steps"] == "given"


def test_wrong_given_flag_names_both_values():
    state = meta_state("imagenet")
    with pytest.raises(ValueError, match=r"does not fit the flags: num_channels=256 in the file, given 128"):
        Denoiser.from_openai(state, device="meta", num_channels=128)
    with pytest.raises(ValueError, match=r"channel_mult='1,1,2,2,4,4' in the file, given '1,2,2,2'"):
        Denoiser.from_openai(state, device="meta", channel_mult="1,2,2,2")
    with pytest.raises(ValueError, match=r"resblock_updown=True in the file, given False"):
        Denoiser.from_openai(state, device="meta", resblock_updown=False)
    with pytest.raises(ValueError, match="unknown OpenAI flag 'num_channel'.*num_channels"):
        Denoiser.from_openai(state, device="meta", num_channel=256)


def test_safetensors_checkpoint(tmp_path):
    safetensors = pytest.importorskip("safetensors.torch")
    case = CASES["improved_cifar_like"]
    state = case_state(case)
    pt, st = tmp_path / "ema.pt", tmp_path / "ema.safetensors"
    torch.save(state, pt)
    safetensors.save_file(state, os.fspath(st))
    a = Denoiser.from_openai(pt, defaults="improved", **case["flags"])
    b = Denoiser.from_openai(st, defaults="improved", **case["flags"])
    assert read_openai_flags(st, case["flags"], "improved").flags == a.flags
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    with torch.no_grad():
        assert (b(case["x_noisy"], case["sigma"]) - case["denoised"]).abs().max() <= 1e-5
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a readable .safetensors file"):
        Denoiser.from_openai(tmp_path / "bad.safetensors")


def _certify(tmp_path, *extra):
    out = tmp_path / "run.tsv"
    return main(["certify", "--dataset", "demo", "--n", "20", "--n0", "10", "--max", "1", "--out", str(out),
                 "--overwrite", *extra]), out


def test_cli_denoiser_file_with_no_flags(tmp_path, capsys):
    path = str(shipped.DIFFUSION_CHECKPOINT)
    capsys.readouterr()
    code, out = _certify(tmp_path, "--denoiser", path, "--image_size", "8")
    assert code == 0 and len(out.read_text().splitlines()) == 2
    err = capsys.readouterr().err  # where each flag came from, on stderr
    assert "denoiser flags read from the tensor shapes: num_channels=32" in err
    assert "given: image_size=8; known checkpoint demo (the demo's digits model): num_heads=4" in err
    flags = json.loads((tmp_path / "run.tsv.json").read_text())
    assert "cosine" in json.dumps(flags)  # the recorded settings hold the flags read from the file
    capsys.readouterr()
    code, _ = _certify(tmp_path, "--denoiser", path, "--num_channels", "64")
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "num_channels=32 in the file, given 64" in err
