"""Generate the OpenAI reference fixtures used by tests/test_unet.py and tests/test_denoiser.py.

Runs OpenAI's own code (not part of this repository) on small random-weight models and stores what it
computes, so the tests can check diffsmooth_fast against the reference without the reference installed:

    git clone https://github.com/openai/guided-diffusion /tmp/gd
    git clone https://github.com/openai/improved-diffusion /tmp/id
    python tests/data/openai/make_reference.py --guided /tmp/gd --improved /tmp/id

Writes, next to this script:
    unet_cases.pt   per case: the OpenAI flags, the reference's state-dict key order, an input batch, timesteps,
                    labels, the UNet output, and a one-shot denoise (x_noisy, sigma, t*, denoised) computed with
                    the reference diffusion's p_mean_variance. Weights are not stored: every tensor is filled by
                    fill_state_dict(shapes, seed), which the tests import from this file.
    layouts.json    the full-size layouts (name, shape) of cifar10_uncond_50M_500K.pt and
                    256x256_diffusion_uncond.pt as the reference code builds them.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))

# (name, repository, flags given to create_model_and_diffusion on top of that repository's defaults,
#  input side, sigma for the denoise fixture). Small widths: GroupNorm(32, C) needs C % 32 == 0.
CASES = [
    ("guided_legacy_heads", "guided", dict(image_size=32, num_channels=32, num_res_blocks=1, channel_mult="1,2",
     attention_resolutions="16", num_heads=2, learn_sigma=True, dropout=0.1), 16, 0.25),
    ("guided_updown_head_channels_respaced", "guided", dict(image_size=32, num_channels=32, num_res_blocks=1,
     channel_mult="1,2,2", attention_resolutions="16,8", num_head_channels=16, resblock_updown=True,
     learn_sigma=True, diffusion_steps=2000, timestep_respacing="500", rescale_timesteps=True), 16, 0.5),
    ("guided_new_order_class_cond_xstart", "guided", dict(image_size=32, num_channels=64, num_res_blocks=1,
     channel_mult="1,2", attention_resolutions="32,16", num_heads=4, use_new_attention_order=True,
     use_scale_shift_norm=False, class_cond=True, predict_xstart=True, noise_schedule="cosine"), 16, 0.12),
    ("guided_64_heads_upsample", "guided", dict(image_size=64, num_channels=32, num_res_blocks=1,
     attention_resolutions="16", num_heads=2, num_heads_upsample=1, learn_sigma=True), 16, 1.0),
    ("guided_512_half_mult", "guided", dict(image_size=512, num_channels=64, num_res_blocks=1,
     attention_resolutions="64", num_head_channels=32, resblock_updown=True, learn_sigma=True), 64, 0.25),
    ("improved_cifar_like", "improved", dict(image_size=32, num_channels=32, num_res_blocks=1, num_heads=2,
     attention_resolutions="16,8", dropout=0.3, learn_sigma=True, diffusion_steps=4000,
     noise_schedule="cosine"), 16, 0.5),
    ("improved_64_class_cond", "improved", dict(image_size=64, num_channels=32, num_res_blocks=2, num_heads=1,
     num_heads_upsample=2, attention_resolutions="16", use_scale_shift_norm=False, class_cond=True), 16, 0.25),
]

FULL_SIZE = {
    "cifar10": ("improved", dict(image_size=32, num_channels=128, num_res_blocks=3, num_heads=4,
                attention_resolutions="16,8", dropout=0.3, learn_sigma=True, diffusion_steps=4000,
                noise_schedule="cosine", use_scale_shift_norm=True, rescale_timesteps=True)),
    "imagenet": ("guided", dict(image_size=256, num_channels=256, num_res_blocks=2, num_head_channels=64,
                 attention_resolutions="32,16,8", resblock_updown=True, use_scale_shift_norm=True,
                 learn_sigma=True, class_cond=False, diffusion_steps=1000, noise_schedule="linear",
                 use_fp16=True, use_new_attention_order=False)),
}


def fill_state_dict(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, torch.Tensor]:
    """Every tensor filled deterministically, in sorted-name order from one generator: weights ~ N(0, 1/fan_in),
    1-D weights (norm scales) ~ 1 + N(0, 0.2^2), biases ~ N(0, 0.1^2). No tensor is left at zero (the reference
    zero-initialises its output convolutions, which would hide whole branches from a comparison)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name in sorted(shapes):
        shape = tuple(shapes[name])
        w = torch.randn(shape, generator=g, dtype=torch.float32)
        if len(shape) >= 2:
            w = w / math.sqrt(math.prod(shape[1:]))
        elif name.endswith("weight"):
            w = 1 + 0.2 * w
        else:
            w = 0.1 * w
        out[name] = w
    return out


def _script_util(root: str, repo: str):
    sys.path.insert(0, root)
    try:
        return importlib.import_module(f"{repo}_diffusion.script_util")
    finally:
        sys.path.remove(root)


def _build(script_util, given: dict, meta: bool = False):
    args = script_util.model_and_diffusion_defaults()
    unknown = set(given) - set(args)
    if unknown:
        raise SystemExit(f"flags {sorted(unknown)} are not flags of {script_util.__name__}")
    args.update(given)
    if meta:
        with torch.device("meta"):
            model, diffusion = script_util.create_model_and_diffusion(**args)
    else:
        model, diffusion = script_util.create_model_and_diffusion(**args)
    return model.eval(), diffusion, args


def make_case(script_util, name: str, repo: str, given: dict, side: int, sigma: float, seed: int) -> dict:
    model, diffusion, all_flags = _build(script_util, given)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    model.load_state_dict(fill_state_dict(shapes, seed))
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(2, 3, side, side, generator=g)
    # What the network itself receives: integers for guided-style models, rescaled floats when rescaling.
    t = torch.tensor([4.25, 702.75]) if all_flags["rescale_timesteps"] else torch.tensor([17, 803])
    y = torch.tensor([5, 917]) if all_flags["class_cond"] else None
    kwargs = {} if y is None else {"y": y}
    clean = torch.rand(2, 3, side, side, generator=g)
    x_noisy = clean + sigma * torch.randn(2, 3, side, side, generator=g)
    # Algorithm 1 on the reference diffusion's own arrays, then Algorithm 2 through its p_mean_variance.
    ratio = diffusion.sqrt_one_minus_alphas_cumprod / diffusion.sqrt_alphas_cumprod
    t_star = int((ratio >= 2 * sigma).argmax())
    x_t = float(diffusion.sqrt_alphas_cumprod[t_star]) * (2 * x_noisy - 1)
    with torch.no_grad():
        out = model(x, t, **kwargs)
        pred = diffusion.p_mean_variance(model, x_t, torch.tensor([t_star] * 2), clip_denoised=True,
                                         model_kwargs=kwargs)["pred_xstart"]
    return dict(name=name, repo=repo, flags=given, all_flags=all_flags, seed=seed, keys=list(shapes), x=x, t=t,
                y=y, out=out, sigma=sigma, t_star=t_star, x_noisy=x_noisy, denoised=(pred + 1) / 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--guided", required=True, help="checkout of openai/guided-diffusion")
    parser.add_argument("--improved", required=True, help="checkout of openai/improved-diffusion")
    parser.add_argument("--out", default=HERE)
    opts = parser.parse_args()
    utils = {"guided": _script_util(opts.guided, "guided"), "improved": _script_util(opts.improved, "improved")}
    torch.set_num_threads(1)  # deterministic reductions
    cases = [make_case(utils[repo], name, repo, given, side, sigma, seed=1000 + i)
             for i, (name, repo, given, side, sigma) in enumerate(CASES)]
    torch.save({"cases": cases}, os.path.join(opts.out, "unet_cases.pt"))
    layouts = {}
    for name, (repo, given) in FULL_SIZE.items():
        model, _, all_flags = _build(utils[repo], given, meta=True)
        tensors = [[k, list(v.shape)] for k, v in model.state_dict().items()]
        layouts[name] = dict(repo=repo, flags=given, tensors=tensors,
                             parameters=sum(p.numel() for p in model.parameters()))
    with open(os.path.join(opts.out, "layouts.json"), "w") as f:
        json.dump(layouts, f, indent=0)
        f.write("\n")
    for case in cases:
        peak = case["out"].abs().max().item()
        print(f"{case['name']}: {len(case['keys'])} tensors, t*={case['t_star']}, |out| max {peak:.3g}")
    for name, layout in layouts.items():
        print(f"{name}: {len(layout['tensors'])} tensors, {layout['parameters']} parameters")


if __name__ == "__main__":
    main()
