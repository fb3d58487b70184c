"""The demo that ships with the package: its files, its models' accuracy, its default run, and its trainer."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from diffsmooth_fast import Denoiser, load_classifier
from diffsmooth_fast.data import NpzDataset, digits
from diffsmooth_fast.diffusion.openai_flags import openai_flags, preset
from diffsmooth_fast.engine.method import MethodConfig
from diffsmooth_fast.models import shipped
from diffsmooth_fast.run import tsv as io
from diffsmooth_fast.run.cli import main
from diffsmooth_fast.run.configs import default_skip

pytestmark = pytest.mark.usefixtures("one_thread")

# How far below the accuracies recorded at training time (manifest.json) a re-measurement may fall: the
# recorded figures average 10 noise draws, the tests use 2 other draws, so the margin covers draw-to-draw spread
# on 360 images (a binomial std of about 1.5 points at 90%), not a change of the models.
CLEAN_MARGIN = 0.005  # clean accuracy is deterministic up to float rounding
DENOISED_MARGIN = 0.04


@pytest.fixture(scope="module")
def manifest() -> dict:
    return json.loads(shipped.MANIFEST.read_text())


@pytest.fixture(scope="module")
def test_split():
    data = digits.test_set()
    x = torch.stack([data[i][0] for i in range(len(data))])
    y = torch.tensor([data[i][1] for i in range(len(data))])
    return x, y


def test_shipped_files_are_complete_small_and_unchanged(manifest):
    files = manifest["files"]
    expected = {"diffusion/model.pt", "diffusion/flags.json",
                *(str(shipped.classifier_checkpoint(n).relative_to(shipped.FILES)) for n in shipped.CLASSIFIER_NOISES)}
    assert set(files) == expected
    total = 0
    for name, entry in files.items():
        data = (shipped.FILES / name).read_bytes()
        assert len(data) == entry["bytes"] and hashlib.sha256(data).hexdigest() == entry["sha256"], name
        total += len(data)
    split = digits.TEST_SPLIT.read_bytes()
    entry = manifest["test_split"]
    assert len(split) == entry["bytes"] and hashlib.sha256(split).hexdigest() == entry["sha256"]
    total += len(split) + shipped.MANIFEST.stat().st_size
    assert total <= 10 * 1024 * 1024  # the budget for everything shipped


def test_test_split_is_360_images_36_per_class(test_split):
    x, y = test_split
    assert x.shape == (360, 3, 8, 8) and x.dtype == torch.float32
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])  # grey in all three channels
    assert torch.bincount(y).tolist() == [36] * 10
    levels = x * digits.GREY_LEVELS
    assert torch.equal(levels, levels.round())  # exactly the digits' 17 grey levels


def test_split_is_fixed_and_disjoint():
    labels = np.repeat(np.arange(10), 50)
    train, test = digits.split_indices(labels)
    again_train, again_test = digits.split_indices(labels)
    assert np.array_equal(test, again_test) and np.array_equal(train, again_train)
    assert len(np.intersect1d(train, test)) == 0 and len(train) + len(test) == len(labels)
    assert np.bincount(labels[test]).tolist() == [digits.TEST_PER_CLASS] * 10
    assert not np.array_equal(test, digits.split_indices(labels, seed=1)[1])


def test_shipped_test_split_is_scikit_learns():
    pytest.importorskip("sklearn")
    images, labels = digits.load_sklearn_digits()
    _, test = digits.split_indices(labels)
    with np.load(digits.TEST_SPLIT) as shipped:
        assert np.array_equal(shipped["index"], test)
        assert np.array_equal(shipped["images"], images[test]) and np.array_equal(shipped["labels"], labels[test])


def test_denoiser_loads_through_from_openai_with_its_flags():
    flags = json.loads(shipped.DIFFUSION_FLAGS.read_text())
    den = Denoiser.from_openai(str(shipped.DIFFUSION_CHECKPOINT), **flags)
    assert den.flags == preset("demo") == openai_flags("guided", **flags)
    state = torch.load(shipped.DIFFUSION_CHECKPOINT, weights_only=True)
    assert set(state) == set(den.unet.state_dict())  # a bare OpenAI state dict, nothing else
    assert "input_blocks.0.0.weight" in state and "out.2.weight" in state and state["out.2.weight"].shape[0] == 3


@pytest.mark.parametrize("noise", shipped.CLASSIFIER_NOISES)
def test_classifiers_are_cohen_checkpoints_and_reach_their_accuracy(manifest, test_split, noise):
    path = shipped.classifier_checkpoint(noise)
    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint["arch"] == "digits_resnet14" and all(k.startswith("1.") for k in checkpoint["state_dict"])
    model = load_classifier(path)
    assert model.normalization.mode == "normalize" and model.normalization.mean == (digits.DIGITS_MEAN,) * 3
    x, y = test_split
    with torch.no_grad():
        accuracy = float((model(x).argmax(1) == y).float().mean())
    recorded = manifest["test_accuracy"]["clean"][f"{noise:.2f}"]
    assert accuracy >= recorded - CLEAN_MARGIN
    assert accuracy >= 0.95  # what the README reports as the classifiers' clean accuracy


def test_denoised_accuracy_at_sigma_025(manifest, test_split):
    x, y = test_split
    den = Denoiser.from_preset("demo", str(shipped.DIFFUSION_CHECKPOINT))
    standard = load_classifier(shipped.classifier_checkpoint(0.0))
    gen = torch.Generator().manual_seed(123)
    hits, noisy_hits = [], []
    with torch.no_grad():
        for _ in range(2):
            x_noisy = x + 0.25 * torch.randn(x.shape, generator=gen)
            x_hat = den(x_noisy, 0.25)
            hits.append((standard(x_hat).argmax(1) == y).float().mean())
            noisy_hits.append((standard(x_noisy).argmax(1) == y).float().mean())
            # one step removes most of the noise (measured: 10x lower mean squared error at sigma 0.25)
            assert (x_hat - x).pow(2).mean() < (x_noisy - x).pow(2).mean() / 5
    accuracy = float(torch.stack(hits).mean())
    assert accuracy >= manifest["test_accuracy"]["denoised"]["0.25"] - DENOISED_MARGIN
    assert accuracy >= 0.95  # what the README reports (0.98 at training time)
    assert accuracy > float(torch.stack(noisy_hits).mean())  # and better than the noisy images themselves


@pytest.mark.parametrize("method,sigma,local,expected", [
    ("cohen", 0.25, None, 0.25), ("cohen", 0.5, None, 0.5), ("cohen", 0.3, None, 0.25), ("dds", 0.5, None, 0.0),
    ("multistep", 0.25, None, 0.0), ("diffsmooth", 0.5, 0.25, 0.25), ("diffsmooth", 0.25, None, 0.25),
    ("local-only", 0.5, None, 0.5), ("cohen", 1.0, None, 0.5),
])
def test_each_method_gets_the_classifier_trained_for_its_noise(method, sigma, local, expected):
    assert shipped.classifier_noise_for(MethodConfig(method, sigma, local)) == expected


def test_default_certify_runs_the_demo(tmp_path, capsys):
    out = tmp_path / "demo.tsv"
    assert main(["certify", "--max", "3", "--n0", "20", "--n", "100", "--batch", "50", "--out", str(out)]) == 0
    rows = io.read_certify(out)
    skip = default_skip("demo")
    labels = [digits.test_set()[i][1] for i in (0, skip, 2 * skip)]
    assert skip > 1 and [r.idx for r in rows] == [0, skip, 2 * skip] and [r.label for r in rows] == labels
    assert sum(r.correct for r in rows) >= 2
    settings = json.loads((tmp_path / "demo.tsv.json").read_text())["settings"]
    assert settings["dataset"] == "demo" and settings["method"] == "diffsmooth" and settings["n"] == 100
    assert settings["classifier"]["path"] == str(shipped.classifier_checkpoint(0.25))
    assert settings["denoiser"]["path"] == str(shipped.DIFFUSION_CHECKPOINT)
    assert "certified accuracy" in capsys.readouterr().err
    assert main(["analyze", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["files"][0]["n"] == 3


def test_demo_classifier_option_picks_a_shipped_classifier(tmp_path):
    out = tmp_path / "dds.tsv"
    args = ["certify", "--dataset", "demo", "--method", "dds", "--demo-classifier", "0.5", "--max", "1", "--n0", "10",
            "--n", "20", "--quiet", "--out", str(out)]
    assert main(args) == 0
    settings = json.loads((tmp_path / "dds.tsv.json").read_text())["settings"]
    assert settings["classifier"]["path"] == str(shipped.classifier_checkpoint(0.5))


def test_trainer_runs_and_writes_loadable_files(tmp_path):
    pytest.importorskip("sklearn")
    from diffsmooth_fast.demo import train

    split = tmp_path / "split" / "digits_test.npz"
    assert train.main(["--out", str(tmp_path), "--split-out", str(split), "--diffusion-steps", "2",
                       "--classifier-epochs", "1", "--eval-draws", "1"]) == 0
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["test_split"]["path"] == str(split) and len(NpzDataset(split)) == 360
    assert manifest["diffusion_steps"] == 2 and set(manifest["test_accuracy"]) == {
        "clean", "gaussian", "denoised", "denoised_local"}
    Denoiser.from_openai(str(tmp_path / "diffusion" / "model.pt"),
                         **json.loads((tmp_path / "diffusion" / "flags.json").read_text()))
    load_classifier(tmp_path / "classifier" / "noise_0.50" / "checkpoint.pth.tar")
