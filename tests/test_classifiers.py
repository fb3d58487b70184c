"""Classifier loading: the reference checkpoint formats, architectures checked against an independent functional
forward and an independently written key layout, normalisation choice, user models, and every refusal."""

from __future__ import annotations

import logging
import os
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from diffsmooth_fast.models import resnet
from diffsmooth_fast.models.classifiers import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    InputNormalization,
    NormalizedClassifier,
    choose_normalization,
    load_classifier,
)

from .tiny_models import randomize_batchnorm

LOGGER = "diffsmooth_fast"


class Hyperparameters:
    """A custom class in a checkpoint: unpickling it needs code, so it is refused unless trusted."""

    def __init__(self, lr: float) -> None:
        self.lr = lr


class CohenNormalizeLayer(nn.Module):
    """Like the reference layer: constants kept as plain tensors, so the state dict holds none of them."""

    def __init__(self, mean, std) -> None:
        super().__init__()
        self.means, self.sds = torch.tensor(mean), torch.tensor(std)

    def forward(self, x):
        return (x - self.means.view(1, -1, 1, 1)) / self.sds.view(1, -1, 1, 1)


def randomize(net: nn.Module, seed: int = 0) -> nn.Module:
    """Random BatchNorm statistics and random classifier biases, in eval mode."""
    randomize_batchnorm(net, seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Linear):
                m.bias.copy_(torch.randn(m.bias.shape, generator=g))
    return net.eval()


def save_reference(path, arch: str, net: nn.Module, *, data_parallel: bool = False, mean=CIFAR10_MEAN,
                   std=CIFAR10_STD, **extra) -> str:
    """Save as Cohen et al.'s train.py does: Sequential(normalize, net) (DataParallel for ImageNet), + SGD state."""
    model = nn.Sequential(CohenNormalizeLayer(mean, std), nn.DataParallel(net) if data_parallel else net)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()  # creates the momentum buffers a real checkpoint carries (zero grads: weights unchanged)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save({"epoch": 90, "arch": arch, "state_dict": model.state_dict(), "optimizer": optimizer.state_dict(),
                **extra}, path)
    return str(path)


# ---------------------------------------------------------------- an independent, functional forward


def _bn(sd, prefix, x):
    return F.batch_norm(x, sd[prefix + ".running_mean"], sd[prefix + ".running_var"], sd[prefix + ".weight"],
                        sd[prefix + ".bias"], training=False, eps=1e-5)


def _shortcut(sd, prefix, x, stride):
    if prefix + ".downsample.0.weight" not in sd:
        return x
    return _bn(sd, prefix + ".downsample.1", F.conv2d(x, sd[prefix + ".downsample.0.weight"], stride=stride))


def cifar_resnet_reference(sd, x, n):
    """locuslab/smoothing archs/cifar_resnet.py, written as plain functional calls on the state dict."""
    x = F.relu(_bn(sd, "bn1", F.conv2d(x, sd["conv1.weight"], padding=1)))
    for stage in (1, 2, 3):
        for b in range(n):
            p, stride = f"layer{stage}.{b}", 2 if stage > 1 and b == 0 else 1
            out = F.relu(_bn(sd, p + ".bn1", F.conv2d(x, sd[p + ".conv1.weight"], stride=stride, padding=1)))
            out = _bn(sd, p + ".bn2", F.conv2d(out, sd[p + ".conv2.weight"], padding=1))
            x = F.relu(out + _shortcut(sd, p, x, stride))
    x = F.avg_pool2d(x, 8).view(x.shape[0], -1)
    return F.linear(x, sd["fc.weight"], sd["fc.bias"])


def resnet50_reference(sd, x):
    """torchvision's resnet50 (Bottleneck, stride on the 3x3 conv), as plain functional calls."""
    x = F.relu(_bn(sd, "bn1", F.conv2d(x, sd["conv1.weight"], stride=2, padding=3)))
    x = F.max_pool2d(x, 3, stride=2, padding=1)
    for stage, blocks in enumerate((3, 4, 6, 3), start=1):
        for b in range(blocks):
            p, stride = f"layer{stage}.{b}", 2 if stage > 1 and b == 0 else 1
            out = F.relu(_bn(sd, p + ".bn1", F.conv2d(x, sd[p + ".conv1.weight"])))
            out = F.relu(_bn(sd, p + ".bn2", F.conv2d(out, sd[p + ".conv2.weight"], stride=stride, padding=1)))
            out = _bn(sd, p + ".bn3", F.conv2d(out, sd[p + ".conv3.weight"]))
            x = F.relu(out + _shortcut(sd, p, x, stride))
    return F.linear(x.mean((2, 3)), sd["fc.weight"], sd["fc.bias"])


def _normalize(x, mean, std):
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


# ---------------------------------------------------------------- reference formats


@pytest.mark.parametrize("arch,n,classes", [("cifar_resnet20", 3, 10), ("cifar_resnet110", 18, 10),
                                            ("imagenet32_resnet110", 18, 1000)])
def test_cifar_checkpoints_load_and_match_the_functional_reference(tmp_path, arch, n, classes):
    net = randomize(resnet.build_architecture(arch))
    sd = {k: v.clone() for k, v in net.state_dict().items()}
    path = save_reference(tmp_path / "models" / "cifar10" / "resnet" / "noise_0.25" / "checkpoint.pth.tar", arch, net)
    model = load_classifier(path)
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = model(x)
        want = cifar_resnet_reference(sd, _normalize(x, CIFAR10_MEAN, CIFAR10_STD), n)
    assert got.shape == (3, classes)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert not model.training and not any(m.training for m in model.modules())
    # SmoothAdv normalises ImageNet-32 with the CIFAR-10 constants.
    assert model.normalization.mean == CIFAR10_MEAN and model.normalization.std == CIFAR10_STD


def test_imagenet_resnet50_with_data_parallel_prefix(tmp_path):
    net = randomize(resnet.resnet50())
    sd = {k: v.clone() for k, v in net.state_dict().items()}
    path = save_reference(tmp_path / "models" / "imagenet" / "resnet50" / "noise_0.50" / "checkpoint.pth.tar",
                          "resnet50", net, data_parallel=True, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    keys = torch.load(path, weights_only=True)["state_dict"].keys()
    assert all(k.startswith("1.module.") for k in keys) and len(keys) == 320
    model = load_classifier(path)
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(model(x), resnet50_reference(sd, _normalize(x, IMAGENET_MEAN, IMAGENET_STD)),
                                   rtol=1e-4, atol=1e-4)
    assert model.normalization.mode == "normalize" and model.normalization.mean == IMAGENET_MEAN


def test_weights_do_not_depend_on_the_file_after_loading(tmp_path):
    # A training run may overwrite checkpoint.pth.tar while we certify: memory-mapped weights would then break.
    net = randomize(resnet.cifar_resnet20())
    path = save_reference(tmp_path / "c.pt", "cifar_resnet20", net)
    model = load_classifier(path, normalization="none")
    with open(path, "wb"):
        pass  # truncated in place, as torch.save(..., same path) does
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), net(x))


def test_loaded_state_dict_round_trips_to_the_reference_keys(tmp_path):
    net = randomize(resnet.cifar_resnet20())
    path = save_reference(tmp_path / "c.pt", "cifar_resnet20", net)
    model = load_classifier(path, normalization="normalize")
    saved = torch.load(path, weights_only=True)["state_dict"]
    mine = model.state_dict()
    assert list(mine) == list(saved)  # Sequential(normalize, net): keys "1.<net key>", normalisation adds none
    assert all(torch.equal(mine[k], saved[k]) for k in saved)


# ---------------------------------------------------------------- layouts, key by key, on the meta device


def _bn_keys(name, c):
    return {f"{name}.weight": (c,), f"{name}.bias": (c,), f"{name}.running_mean": (c,), f"{name}.running_var": (c,),
            f"{name}.num_batches_tracked": ()}


def expected_cifar_layout(n, classes):
    keys = {"conv1.weight": (16, 3, 3, 3), **_bn_keys("bn1", 16)}
    in_c = 16
    for stage, width in enumerate((16, 32, 64), start=1):
        for b in range(n):
            p = f"layer{stage}.{b}"
            keys |= {f"{p}.conv1.weight": (width, in_c, 3, 3), **_bn_keys(f"{p}.bn1", width),
                     f"{p}.conv2.weight": (width, width, 3, 3), **_bn_keys(f"{p}.bn2", width)}
            if in_c != width:
                keys |= {f"{p}.downsample.0.weight": (width, in_c, 1, 1), **_bn_keys(f"{p}.downsample.1", width)}
            in_c = width
    return keys | {"fc.weight": (classes, 64), "fc.bias": (classes,)}


def expected_resnet50_layout():
    keys = {"conv1.weight": (64, 3, 7, 7), **_bn_keys("bn1", 64)}
    in_c = 64
    for stage, (width, blocks) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3)), start=1):
        for b in range(blocks):
            p = f"layer{stage}.{b}"
            keys |= {f"{p}.conv1.weight": (width, in_c, 1, 1), **_bn_keys(f"{p}.bn1", width),
                     f"{p}.conv2.weight": (width, width, 3, 3), **_bn_keys(f"{p}.bn2", width),
                     f"{p}.conv3.weight": (4 * width, width, 1, 1), **_bn_keys(f"{p}.bn3", 4 * width)}
            if b == 0:
                keys |= {f"{p}.downsample.0.weight": (4 * width, in_c, 1, 1), **_bn_keys(f"{p}.downsample.1", 4 * width)}
            in_c = 4 * width
    return keys | {"fc.weight": (1000, 2048), "fc.bias": (1000,)}


@pytest.mark.parametrize("arch,layout,params,entries", [
    ("cifar_resnet110", expected_cifar_layout(18, 10), 1_730_714, 668),
    ("cifar_resnet20", expected_cifar_layout(3, 10), 272_474, 128),
    ("imagenet32_resnet110", expected_cifar_layout(18, 1000), 1_795_064, 668),
    ("resnet50", expected_resnet50_layout(), 25_557_032, 320),  # torchvision: num_params 25557032
])
def test_full_size_layouts_key_by_key(arch, layout, params, entries):
    with torch.device("meta"):
        net = resnet.build_architecture(arch)
    got = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert sorted(got) == sorted(layout)
    assert {k: s for k, s in got.items() if layout[k] != s} == {}
    assert len(got) == entries
    assert sum(p.numel() for p in net.parameters()) == params


def test_strides_sit_where_the_references_put_them():
    with torch.device("meta"):
        cifar, r50 = resnet.cifar_resnet110(), resnet.resnet50()
    assert cifar.layer2[0].conv1.stride == (2, 2) and cifar.layer2[0].conv2.stride == (1, 1)
    assert cifar.layer1[0].downsample is None and cifar.layer3[0].downsample[0].stride == (2, 2)
    assert r50.layer2[0].conv1.stride == (1, 1) and r50.layer2[0].conv2.stride == (2, 2)  # v1.5
    assert r50.layer1[0].downsample[0].stride == (1, 1) and r50.layer4[0].downsample[0].stride == (2, 2)


# ---------------------------------------------------------------- normalisation


@pytest.mark.parametrize("folders,mode,level", [
    ("models/cifar10/resnet110/noise_0.25", "normalize", logging.INFO),
    ("pretrained_models/cifar10/PGD_2steps/eps_64/cifar10/resnet110/noise_0.12", "center", logging.INFO),
    ("pretrained_models/imagenet/PGD_1step/eps_512/resnet50/noise_0.25", "center", logging.INFO),
    ("imagenet/DDN_2steps/eps_255/resnet50/noise_0.50", "center", logging.INFO),
    ("cifar10/finetune_cifar_from_imagenetPGD2steps/PGD_10steps_30epochs_multinoise/2-multitrain/eps_64/cifar10/"
     "resnet110/noise_0.12", "normalize", logging.INFO),
    ("cifar10/self_training/PGD_2steps/weight_1.0/eps_64/cifar10/resnet110/noise_0.12", "normalize", logging.INFO),
    ("pretrained_models/imagenet32/PGD_2steps/eps_64/imagenet32/resnet110/noise_0.12", "normalize", logging.INFO),
    ("downloads/my_models", "normalize", logging.WARNING),
])
def test_auto_normalization_rule(folders, mode, level):
    got_mode, reason, got_level = choose_normalization("cifar_resnet110", os.path.join("/data", folders, "c.pth.tar"))
    assert (got_mode, got_level) == (mode, level), reason
    assert choose_normalization("imagenet32_resnet110", "/tmp/x.pt")[0] == "normalize"
    assert choose_normalization(None, "/pretrained_models/x.pt")[0] == "none"


def test_auto_centering_for_smoothadv_layout_is_applied_and_logged(tmp_path, caplog):
    net = randomize(resnet.cifar_resnet20())
    path = save_reference(tmp_path / "pretrained_models" / "cifar10" / "PGD_2steps" / "eps_64" / "cifar10" /
                          "resnet110" / "noise_0.12" / "checkpoint.pth.tar", "cifar_resnet20", net)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        model = load_classifier(path)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), net(x - torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)), rtol=0, atol=0)
    record = next(r for r in caplog.records if r.name == LOGGER and "normalization" in r.getMessage())
    assert record.levelno == logging.INFO and "'center'" in record.getMessage()
    assert "SmoothAdv" in record.getMessage() and "silently collapses accuracy" in record.getMessage()


def test_unknown_layout_warns_and_explicit_choice_wins(tmp_path, caplog):
    net = randomize(resnet.cifar_resnet20())
    path = save_reference(tmp_path / "c.pt", "cifar_resnet20", net)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        auto = load_classifier(path)
    assert auto.normalization.mode == "normalize"
    assert any(r.levelno == logging.WARNING and "normalization='center'" in r.getMessage() for r in caplog.records)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(load_classifier(path, normalization="none")(x), net(x))
        torch.testing.assert_close(load_classifier(path, "imagenet", "normalize")(x),
                                   net(_normalize(x, IMAGENET_MEAN, IMAGENET_STD)), rtol=0, atol=0)


def test_input_normalization_exposes_constants_for_fusing():
    layer = InputNormalization("center", CIFAR10_MEAN, CIFAR10_STD)
    assert (layer.mode, layer.mean, layer.std) == ("center", CIFAR10_MEAN, (1.0, 1.0, 1.0))
    assert InputNormalization("none").mean == (0.0, 0.0, 0.0) and layer.state_dict() == {}
    with pytest.raises(ValueError, match="normalization must be one of"):
        InputNormalization("standardize")


# ---------------------------------------------------------------- other sources


def test_bare_state_dict_and_old_files_without_bn_counters(tmp_path, caplog):
    net = randomize(resnet.cifar_resnet110())
    state = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "bare.pt")
    with caplog.at_level(logging.INFO, logger=LOGGER):
        model = load_classifier(tmp_path / "bare.pt", normalization="none")
    assert "its keys are those of cifar_resnet110" in caplog.text
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), net(x))


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_torchscript_file(tmp_path):
    net = randomize(resnet.cifar_resnet20())
    torch.jit.script(net).save(str(tmp_path / "net.ts"))
    x = torch.rand(2, 3, 32, 32)
    model = load_classifier(tmp_path / "net.ts")
    assert isinstance(model, NormalizedClassifier) and model.normalization.mode == "none"
    with torch.no_grad():
        torch.testing.assert_close(model(x), net(x), rtol=0, atol=0)
        wrapped = load_classifier(tmp_path / "net.ts", "cifar10", "normalize")
        torch.testing.assert_close(wrapped(x), net(_normalize(x, CIFAR10_MEAN, CIFAR10_STD)), rtol=0, atol=0)


def test_module_function(tmp_path, monkeypatch):
    name = f"user_classifier_{os.getpid()}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent("""
        import torch
        def build():
            torch.manual_seed(0)
            return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 4)).train()
        def not_a_model():
            return 3
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)
    model = load_classifier(f"{name}:build")
    torch.manual_seed(0)
    reference = nn.Sequential(nn.Flatten(), nn.Linear(12, 4))
    x = torch.rand(5, 3, 2, 2)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=0, atol=0)
    assert not model.training and not model.net.training
    with pytest.raises(ValueError, match="has no function 'missing'"):
        load_classifier(f"{name}:missing")
    with pytest.raises(ValueError, match="returned int, not a torch.nn.Module"):
        load_classifier(f"{name}:not_a_model")
    with pytest.raises(ValueError, match="cannot import module 'no_such_module_xyz'"):
        load_classifier("no_such_module_xyz:build")
    with pytest.raises(ValueError, match="needs dataset="):
        load_classifier(f"{name}:build", normalization="center")


# ---------------------------------------------------------------- refusals


def test_code_needing_checkpoint_is_refused_unless_trusted(tmp_path):
    net = randomize(resnet.cifar_resnet20())
    path = save_reference(tmp_path / "c.pt", "cifar_resnet20", net, args=Hyperparameters(0.1))
    with pytest.raises(ValueError, match="trust_checkpoint=True") as error:
        load_classifier(path)
    assert "Hyperparameters" in str(error.value) and "\n" not in str(error.value)
    model = load_classifier(path, normalization="none", trust_checkpoint=True)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), net(x))


def test_pickled_module_needs_trust(tmp_path):
    torch.save(nn.Sequential(nn.Flatten(), nn.Linear(3, 2)), tmp_path / "whole.pt")
    with pytest.raises(ValueError, match="trust_checkpoint"):
        load_classifier(tmp_path / "whole.pt")
    model = load_classifier(tmp_path / "whole.pt", trust_checkpoint=True)
    assert model.normalization.mode == "none" and isinstance(model.net.model[1], nn.Linear)


def test_clear_errors(tmp_path):
    net = resnet.cifar_resnet20()
    with pytest.raises(ValueError, match="no such file"):
        load_classifier(tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="unknown arch 'cifar_resnet56'; known: cifar_resnet20, cifar_resnet110"):
        load_classifier(save_reference(tmp_path / "a.pt", "cifar_resnet56", net))
    with pytest.raises(ValueError, match=r"missing keys layer1\.3\..*it looks like cifar_resnet20"):
        load_classifier(save_reference(tmp_path / "b.pt", "cifar_resnet110", net))
    with pytest.raises(ValueError, match=r"wrong shapes fc\.weight \[10, 64\] \(expected \[1000, 64\]\).*"
                                         r"looks like cifar_resnet110"):
        load_classifier(save_reference(tmp_path / "c.pt", "imagenet32_resnet110", resnet.cifar_resnet110()))
    torch.save(nn.Linear(3, 2).state_dict(), tmp_path / "linear.pt")
    with pytest.raises(ValueError, match="no 'arch' entry and its keys .* match none of"):
        load_classifier(tmp_path / "linear.pt")
    torch.save(torch.optim.SGD(net.parameters(), lr=0.1).state_dict(), tmp_path / "opt.pt")
    with pytest.raises(ValueError, match="is an optimizer state, not a model"):
        load_classifier(tmp_path / "opt.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="junk.pt: not a readable torch file"):
        load_classifier(tmp_path / "junk.pt")
    with pytest.raises(ValueError, match="normalization must be auto"):
        load_classifier(tmp_path / "b.pt", normalization="standardize")
    with pytest.raises(ValueError, match="dataset must be one of cifar10, imagenet, imagenet32"):
        load_classifier(tmp_path / "b.pt", dataset="mnist")
