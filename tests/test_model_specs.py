"""Classifiers from model libraries (``timm:``, ``torchvision:``, ``hf:``), offline, with the normalisation and input
size the library records; the trap of a library factory through ``module:function``; the user-model faults of
issue 16 (tuple outputs, ``.logits`` objects, code in checkpoints, a module in the current folder, a raising
factory); ``.safetensors`` classifier checkpoints.

Each library test builds a tiny random-weight model with the real library, saves it as that library saves it,
loads it back through the spec and compares the logits with the library's own model on the same input, with the
normalisation and the resize applied as the library's record says. A test whose library is not installed (or not
importable beside this torch) is skipped with the reason.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from diffsmooth_fast.models import resnet
from diffsmooth_fast.models.classifiers import CIFAR10_CLASSES, load_classifier
from diffsmooth_fast.models.sources.common import Resize
from diffsmooth_fast.run import tsv
from diffsmooth_fast.run.cli import main
from diffsmooth_fast.run.configs import default_skip

from .tiny_models import randomize_batchnorm

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.filterwarnings("ignore::FutureWarning")]


def library(name: str):
    """The library module, or a skip saying why it cannot be used here."""
    try:
        return __import__(name)
    except ImportError as exc:  # not installed, or a dependency missing (timm without torchvision)
        pytest.skip(f"{name} cannot be imported: {exc}")
    except Exception as exc:  # noqa: BLE001 - e.g. a torchvision wheel built for another torch
        pytest.skip(f"{name} cannot be imported beside torch {torch.__version__}: {str(exc).splitlines()[0]}")


def reference_input(x: torch.Tensor, size, mean, std) -> torch.Tensor:
    """What the library's model sees for dataset images x in [0, 1]: resized (bicubic, antialias) and normalised."""
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=tuple(size), mode="bicubic", antialias=True, align_corners=False)
    return (x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)


def demo_certify(tmp_path, name: str, classifier: str, *extra: str) -> list[str]:
    """certify on the demo's digits (8x8) with ``classifier``: a few images, few samples; rows without time."""
    out = tmp_path / f"{name}.tsv"
    rc = main(["certify", "--dataset", "demo", "--classifier", classifier, "--n0", "10", "--n", "20", "--max", "2",
               "--batch", "20", "--quiet", "--out", str(out), *extra])
    assert rc == 0
    rows = tsv.read_certify(out)
    assert [r.idx for r in rows] == [0, default_skip("demo")]
    return [line.rsplit("\t", 1)[0] for line in out.read_text().splitlines()]


# ---------------------------------------------------------------- Hugging Face transformers

def save_tiny_vit(folder, labels=CIFAR10_CLASSES, mean=(0.3, 0.4, 0.5), std=(0.2, 0.25, 0.3), size=16, seed=0):
    """A 1-layer ViT image classifier and its image processor, saved with save_pretrained (safetensors)."""
    transformers = library("transformers")
    config = transformers.ViTConfig(image_size=size, patch_size=8, hidden_size=32, num_hidden_layers=1,
                                    num_attention_heads=2, intermediate_size=64, initializer_range=0.5,
                                    num_labels=len(labels), id2label=dict(enumerate(labels)),
                                    label2id={n: i for i, n in enumerate(labels)})
    torch.manual_seed(seed)
    model = transformers.ViTForImageClassification(config).eval()
    model.save_pretrained(folder)
    transformers.ViTImageProcessor(size={"height": size, "width": size}, image_mean=list(mean),
                                   image_std=list(std)).save_pretrained(folder)
    return model


def test_hf_folder_matches_the_library_with_normalisation_and_resize(tmp_path):
    model = save_tiny_vit(tmp_path / "vit")
    assert (tmp_path / "vit" / "model.safetensors").exists()
    clf = load_classifier(f"hf:{tmp_path / 'vit'}", image_size=(8, 8), num_classes=10, class_names=CIFAR10_CLASSES)
    assert clf.normalization.mean == pytest.approx((0.3, 0.4, 0.5)) and isinstance(clf.net[0], Resize)
    x = torch.rand(3, 3, 8, 8)
    with torch.no_grad():
        expected = model(pixel_values=reference_input(x, (16, 16), (0.3, 0.4, 0.5), (0.2, 0.25, 0.3))).logits
        torch.testing.assert_close(clf(x), expected, rtol=0, atol=1e-5)
        assert expected.abs().max() > 0.1  # the comparison is not between near-zero outputs
        # at the model's own size: no resize layer, and the library's own processor gives the same input
        same = load_classifier(f"hf:{tmp_path / 'vit'}", image_size=(16, 16))
        assert not isinstance(same.net, nn.Sequential)
        images = (torch.rand(2, 16, 16, 3) * 255).round().to(torch.uint8)
        transformers = library("transformers")
        processor = transformers.ViTImageProcessor.from_pretrained(tmp_path / "vit")
        pixels = processor(images=list(images.numpy()), return_tensors="pt")["pixel_values"]
        torch.testing.assert_close(same(images.permute(0, 3, 1, 2).float() / 255), model(pixel_values=pixels).logits,
                                   rtol=0, atol=1e-5)


def test_hf_cached_model_id_offline_and_uncached_id(tmp_path, monkeypatch):
    constants = library("huggingface_hub").constants
    model = save_tiny_vit(tmp_path / "src", mean=(0.5,) * 3, std=(0.5,) * 3)
    snapshot = tmp_path / "cache" / "models--someone--tiny-vit" / "snapshots" / ("a" * 40)
    snapshot.parent.mkdir(parents=True)
    (tmp_path / "src").rename(snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("a" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    clf = load_classifier("hf:someone/tiny-vit", image_size=(16, 16))
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(clf(x), model(pixel_values=(x - 0.5) / 0.5).logits, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match=r"someone/other is no folder and is not in the Hugging Face cache .*looked "
                                         r"in .*models--someone--other.*snapshot_download\('someone/other'\)") as e:
        load_classifier("hf:someone/other")
    assert "\n" not in str(e.value)


def test_hf_labels_checked_against_the_dataset(tmp_path):
    save_tiny_vit(tmp_path / "vit")
    with pytest.raises(ValueError, match="has 10 classes but the dataset has 100"):
        load_classifier(f"hf:{tmp_path / 'vit'}", num_classes=100)
    save_tiny_vit(tmp_path / "swapped", labels=("automobile", "airplane", *CIFAR10_CLASSES[2:]))
    with pytest.raises(ValueError, match="its class 0 is 'automobile', the dataset's label 0 is 'airplane'"):
        load_classifier(f"hf:{tmp_path / 'swapped'}", num_classes=10, class_names=CIFAR10_CLASSES)
    save_tiny_vit(tmp_path / "generic", labels=tuple(f"LABEL_{i}" for i in range(10)))
    load_classifier(f"hf:{tmp_path / 'generic'}", num_classes=10, class_names=CIFAR10_CLASSES)  # names unknown: ok


def test_hf_processor_scale_and_size_records(tmp_path):
    model = save_tiny_vit(tmp_path / "vit")
    path = tmp_path / "vit" / "preprocessor_config.json"
    record = json.loads(path.read_text())
    # A model fed raw 0..255 pixels, normalised: the same layer for pixels in [0, 1] with mean and std / 255.
    record.update(do_rescale=False, do_center_crop=True, crop_size={"height": 16, "width": 16},
                  size={"shortest_edge": 20})
    path.write_text(json.dumps(record))
    clf = load_classifier(f"hf:{tmp_path / 'vit'}", image_size=(16, 16))
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        expected = model(pixel_values=reference_input(x * 255, (16, 16), (0.3, 0.4, 0.5), (0.2, 0.25, 0.3))).logits
        torch.testing.assert_close(clf(x), expected, rtol=1e-5, atol=1e-4)
    os.remove(path)
    with pytest.raises(ValueError, match="has no preprocessor_config.json"):
        load_classifier(f"hf:{tmp_path / 'vit'}")


def test_hf_classifier_certifies_the_demo(tmp_path):
    save_tiny_vit(tmp_path / "vit", labels=tuple(str(i) for i in range(10)))
    plain = demo_certify(tmp_path, "hf", f"hf:{tmp_path / 'vit'}", "--method", "dds")
    fused = demo_certify(tmp_path, "hf_fused", f"hf:{tmp_path / 'vit'}", "--method", "dds", "--fused")
    assert plain == fused  # the normalisation folded into the fused kernel, the resize after it: same votes


# ---------------------------------------------------------------- timm

def test_timm_weights_file_and_cache_match_the_library(tmp_path, monkeypatch):
    timm = library("timm")
    constants = library("huggingface_hub").constants
    from safetensors.torch import save_file
    torch.manual_seed(0)
    model = timm.create_model("test_vit", pretrained=False, num_classes=10).eval()  # 160x160 input, mean=std=0.5
    cfg = model.pretrained_cfg
    torch.save(model.state_dict(), tmp_path / "vit.pth")
    save_file(model.state_dict(), tmp_path / "vit.safetensors")
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(reference_input(x, cfg["input_size"][1:], cfg["mean"], cfg["std"]))
        # a training script's checkpoint: under 'model', with DataParallel's 'module.' prefix
        torch.save({"epoch": 3, "model": {f"module.{k}": v for k, v in model.state_dict().items()}},
                   tmp_path / "wrapped.pth")
        for file in ("vit.pth", "vit.safetensors", "wrapped.pth"):
            clf = load_classifier(f"timm:test_vit@{tmp_path / file}", image_size=(32, 32), num_classes=10)
            torch.testing.assert_close(clf(x), expected, rtol=0, atol=1e-5)
    # timm's cache: the hub file of the model's pretrained tag
    full = timm.create_model("test_vit", pretrained=False).eval()
    repo = full.pretrained_cfg["hf_hub_id"]
    snapshot = tmp_path / "cache" / ("models--" + repo.replace("/", "--")) / "snapshots" / ("b" * 40)
    snapshot.mkdir(parents=True)
    save_file(full.state_dict(), snapshot / "model.safetensors")
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("b" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    clf = load_classifier("timm:test_vit", image_size=(160, 160), num_classes=1000)
    with torch.no_grad():
        y = torch.rand(2, 3, 160, 160)
        torch.testing.assert_close(clf(y), full(reference_input(y, (160, 160), cfg["mean"], cfg["std"])),
                                   rtol=0, atol=1e-5)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(ValueError, match=r"no weights on this machine \(looked in .*empty.*timm\.create_model"
                                         r"\('test_vit', pretrained=True\)"):
        load_classifier("timm:test_vit")
    with pytest.raises(ValueError, match="timm has no model 'test_vitt'"):
        load_classifier("timm:test_vitt")
    with pytest.raises(ValueError, match="do not fit the model"):
        load_classifier(f"timm:test_resnet@{tmp_path / 'vit.pth'}")


def test_timm_classifier_certifies_the_demo(tmp_path):
    timm = library("timm")
    torch.manual_seed(0)
    torch.save(timm.create_model("test_vit", pretrained=False, num_classes=10).state_dict(), tmp_path / "vit.pth")
    demo_certify(tmp_path, "timm", f"timm:test_vit@{tmp_path / 'vit.pth'}", "--method", "cohen")


# ---------------------------------------------------------------- torchvision

def test_torchvision_cache_and_file_match_the_library(tmp_path):
    library("torchvision")
    from torchvision.models import MobileNet_V3_Small_Weights, get_model
    weights = MobileNet_V3_Small_Weights.IMAGENET1K_V1
    transforms = weights.transforms()
    torch.manual_seed(0)
    model = randomize_batchnorm(get_model("mobilenet_v3_small", weights=None), 0).eval()
    hub = torch.hub.get_dir()
    try:
        torch.hub.set_dir(str(tmp_path / "hub"))
        with pytest.raises(ValueError, match=r"looked for .*mobilenet_v3_small-047dcff4\.pth.*get_model\("
                                             r"'mobilenet_v3_small', weights='IMAGENET1K_V1'\)"):
            load_classifier("torchvision:mobilenet_v3_small")
        (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
        cached = tmp_path / "hub" / "checkpoints" / os.path.basename(weights.url)
        torch.save({"hook": RunsCode(), **model.state_dict()}, cached)  # refused before torchvision reads it
        with pytest.raises(ValueError, match="would run code when unpickled"):
            load_classifier("torchvision:mobilenet_v3_small")
        torch.save(model.state_dict(), cached)
        clf = load_classifier("torchvision:mobilenet_v3_small:IMAGENET1K_V1", image_size=(32, 32), num_classes=1000)
    finally:
        torch.hub.set_dir(hub)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(reference_input(x, (224, 224), transforms.mean, transforms.std))
        torch.testing.assert_close(clf(x), expected, rtol=0, atol=1e-5)
        # a CIFAR-10 fine-tune in a file: 10 classes read from its head, the enum's normalisation
        tuned = randomize_batchnorm(get_model("mobilenet_v3_small", weights=None, num_classes=10), 1).eval()
        torch.save(tuned.state_dict(), tmp_path / "tuned.pth")
        clf = load_classifier(f"torchvision:mobilenet_v3_small@{tmp_path / 'tuned.pth'}", image_size=(32, 32),
                              num_classes=10)
        torch.testing.assert_close(clf(x), tuned(reference_input(x, (224, 224), transforms.mean, transforms.std)),
                                   rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="has no member 'IMAGENET1K_V9'"):
        load_classifier("torchvision:mobilenet_v3_small:IMAGENET1K_V9")
    demo_certify(tmp_path, "torchvision", f"torchvision:mobilenet_v3_small@{tmp_path / 'tuned.pth'}",
                 "--method", "cohen")


# ---------------------------------------------------------------- the trap: library factories

@pytest.mark.parametrize("spec,use", [
    ("timm.models.beit:beit_large_patch16_224", "timm:MODEL_NAME"),
    ("torchvision.models:resnet50", "torchvision:MODEL_NAME[:WEIGHTS_ENUM]"),
    ("transformers:AutoModelForImageClassification", "hf:MODEL_ID_OR_FOLDER"),
])
def test_a_library_factory_is_refused_with_the_spec_to_use(spec, use):
    with pytest.raises(ValueError, match=r"would build an untrained .* network .*use --classifier " + use.replace(
            "[", r"\[").replace("]", r"\]")):
        load_classifier(spec)


def test_a_reexported_library_factory_is_refused(tmp_path, monkeypatch):
    library("transformers")
    name = f"user_reexport_{os.getpid()}"
    (tmp_path / f"{name}.py").write_text("from transformers import ViTForImageClassification as build\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ValueError, match="untrained transformers network.*hf:MODEL_ID_OR_FOLDER"):
        load_classifier(f"{name}:build")


# ---------------------------------------------------------------- user models (issue 16)

USER_MODULE = """
import types
import torch

class Features(torch.nn.Module):
    def __init__(self, wrap):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 1)  # any image size
        self.wrap = wrap
    def forward(self, x):
        logits = self.conv(x).mean((2, 3))
        return self.wrap(logits)

def as_tuple():
    torch.manual_seed(0)
    return Features(lambda logits: (logits, logits[:, :2]))

def as_object():
    torch.manual_seed(0)
    return Features(lambda logits: types.SimpleNamespace(logits=logits))

def as_tensor():
    torch.manual_seed(0)
    return Features(lambda logits: logits)

def raises():
    return 1 / 0
"""


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    name = f"user_models_{os.getpid()}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)
    return name


def test_outputs_tuple_refused_and_logits_object_accepted(user_module):
    x = torch.rand(2, 3, 2, 2)
    with torch.no_grad():
        expected = load_classifier(f"{user_module}:as_tensor")(x)
        torch.testing.assert_close(load_classifier(f"{user_module}:as_object")(x), expected, rtol=0, atol=0)
        with pytest.raises(ValueError, match=r"returned a tuple of 2 \(tensor \[2, 4\], tensor \[2, 2\]\); expected "
                                             r"logits \[batch, classes\]"):
            load_classifier(f"{user_module}:as_tuple")(x)


def test_a_tuple_output_is_one_line_on_the_command_line(user_module, tmp_path, capsys):
    assert main(["certify", "--dataset", "demo", "--classifier", f"{user_module}:as_tuple", "--method", "cohen",
                 "--n0", "10", "--n", "20", "--max", "1", "--quiet", "--out", str(tmp_path / "a.tsv")]) == 2
    err = capsys.readouterr().err.strip()
    assert "returned a tuple of 2" in err and len(err.splitlines()) == 1 and not (tmp_path / "a.tsv").exists()


def test_a_raising_factory_is_one_line(user_module):
    with pytest.raises(ValueError, match=rf"classifier {user_module}:raises: raises\(\) raised ZeroDivisionError: "
                                         r"division by zero"):
        load_classifier(f"{user_module}:raises")


def test_a_module_in_the_current_folder_off_the_import_path(tmp_path, monkeypatch):
    name = f"here_{os.getpid()}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.chdir(tmp_path)
    here = os.path.realpath(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p and os.path.realpath(p) != here])
    with pytest.raises(ValueError, match=rf"{name} is in the current folder, which is not on the import path: run "
                                         r"with PYTHONPATH=\."):
        load_classifier(f"{name}:as_tensor")
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])
    load_classifier(f"{name}:as_tensor")


class RunsCode:
    def __reduce__(self):
        return (os.system, ("true",))  # never run: weights_only unpickling refuses it


def test_a_checkpoint_that_would_run_code_says_so(tmp_path):
    torch.save({"state_dict": {}, "hook": RunsCode()}, tmp_path / "code.pt")
    torch.save({"state_dict": {}, "hook": RunsCode()}, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    for name in ("code.pt", "legacy.pt"):
        with pytest.raises(ValueError, match=r"would run code when unpickled \(it refers to (posix|nt)\.system\).*"
                                             r"--trust-checkpoint") as error:
            load_classifier(tmp_path / name)
        assert "corrupt" not in str(error.value)


def test_safetensors_classifier_checkpoint(tmp_path):
    safetensors = library("safetensors.torch")
    net = randomize_batchnorm(resnet.cifar_resnet20(), 0).eval()
    state = {f"1.{k}": v.contiguous() for k, v in net.state_dict().items()}
    safetensors.torch.save_file(state, tmp_path / "checkpoint.safetensors")
    torch.save({"arch": "cifar_resnet20", "state_dict": state}, tmp_path / "checkpoint.pth.tar")
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        a = load_classifier(tmp_path / "checkpoint.safetensors", "cifar10")(x)
        torch.testing.assert_close(a, load_classifier(tmp_path / "checkpoint.pth.tar", "cifar10")(x), rtol=0, atol=0)
    (tmp_path / "bad.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    with pytest.raises(ValueError, match="bad.safetensors: not a readable .safetensors file"):
        load_classifier(tmp_path / "bad.safetensors")
