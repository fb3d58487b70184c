"""Labels: an image without a label (-1) is never correct, abstentions included, and an unlabelled run says that
accuracy is not defined; labels the classifier cannot give and a class count other than the dataset's are
errors before the first image."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from diffsmooth_fast.data import check_labels
from diffsmooth_fast.run import tsv as io
from diffsmooth_fast.run.cli import main

from .tiny_models import save_halfspace

pytestmark = [pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning"), pytest.mark.usefixtures("one_thread")]


@pytest.fixture(scope="module")
def halfspace(tmp_path_factory):
    """A two-class linear classifier on [3, 16, 16] and its labelled images: one on each side of its plane at
    distance 1, 0.5, and a mid-grey image on the plane (the smoothed classifier abstains there)."""
    root = tmp_path_factory.mktemp("labels")
    model = save_halfspace(root / "half.pt", root / "half.npz", n=4, size=16)
    data = np.load(root / "half.npz")
    images = np.concatenate([data["images"], np.full((1, 3, 16, 16), 0.5, np.float32)])
    return {"model": model, "root": root, "images": images, "labels": np.append(data["labels"], 0)}


def run(halfspace, npz, command="certify", extra=()) -> list[str]:
    sampling = ["--n0", "20", "--n", "200"] if command == "certify" else ["--n", "200"]
    return [command, "--dataset", "npz", "--data", str(npz), "--classifier", halfspace["model"], "--method", "cohen",
            "--sigma", "0.25", *sampling, "--batch", "200", "--alpha", "0.01", "--quiet", *extra]


@pytest.mark.parametrize("command", ["certify", "predict"])
def test_unlabelled_images_are_never_correct(halfspace, tmp_path, capsys, command):
    npz = tmp_path / "unlabelled.npz"
    np.savez(npz, images=halfspace["images"])  # no labels: every label is -1
    out = tmp_path / "out.tsv"
    assert main([*run(halfspace, npz, command), "--out", str(out)]) == 0
    rows = (io.read_certify if command == "certify" else io.read_predict)(out)
    assert [r.label for r in rows] == [-1] * 5
    assert any(r.predict == -1 for r in rows) and any(r.predict != -1 for r in rows)  # abstained and predicted
    assert all(r.correct == 0 for r in rows)  # an abstention (-1) used to equal the missing label (-1)
    err = capsys.readouterr().err
    assert "no labels: " in err and "accuracy is not defined" in err and "accuracy 1.000" not in err


def test_labelled_abstentions_are_not_correct(halfspace, tmp_path):
    npz = tmp_path / "labelled.npz"
    np.savez(npz, images=halfspace["images"], labels=halfspace["labels"])
    out = tmp_path / "out.tsv"
    assert main([*run(halfspace, npz), "--out", str(out)]) == 0
    rows = io.read_certify(out)
    assert rows[4].predict == -1 and rows[4].correct == 0
    assert [r.correct for r in rows[:4]] == [int(r.predict == r.label) for r in rows[:4]] == [1, 1, 1, 1]


@pytest.mark.parametrize("labels,match", [
    ([0, 1, 2, 0, 1], "image 2 has label 2, outside the classifier's classes 0..1"),
    ([0, -3, 1, 0, 1], "image 1 has label -3, outside the classifier's classes 0..1"),
    ([0, 1, -1, 0, 1], "image 2 has no label (-1) while others have one"),
])
def test_impossible_labels_stop_the_run_before_the_first_image(halfspace, tmp_path, capsys, labels, match):
    npz = tmp_path / "bad.npz"
    np.savez(npz, images=halfspace["images"], labels=np.array(labels))
    out = tmp_path / "out.tsv"
    capsys.readouterr()
    assert main([*run(halfspace, npz), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert match in err and err.count("\n") == 1
    assert not out.exists()


def test_a_classifier_with_another_class_count_than_the_dataset_is_refused(tmp_path, capsys):
    """An ImageNet-style tree of 3 class folders, a two-class classifier: the labels 0..2 mean nothing to it."""
    model = save_halfspace(tmp_path / "half224.pt", tmp_path / "unused.npz", n=2, size=224)
    for name in ("a", "b", "c"):
        (tmp_path / "val" / name).mkdir(parents=True)
        Image.new("RGB", (224, 224), (120, 130, 140)).save(tmp_path / "val" / name / "x.png")
    out = tmp_path / "out.tsv"
    args = ["certify", "--dataset", "imagenet", "--data", str(tmp_path), "--classifier", model, "--method", "cohen",
            "--n0", "10", "--n", "20", "--batch", "20", "--quiet", "--out", str(out)]
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "the dataset has 3 classes but the classifier 2 outputs" in err and err.count("\n") == 1
    assert not out.exists()


def test_check_labels():
    assert check_labels(np.array([0, 1, 1]), 2) is True
    assert check_labels(np.array([-1, -1]), 10) is False  # unlabelled
    assert check_labels(np.array([3, 9]), 10, dataset_classes=10) is True
    with pytest.raises(ValueError, match="10 classes but the classifier 1000 outputs"):
        check_labels(np.array([0]), 1000, dataset_classes=10)
    with pytest.raises(ValueError, match="label 10, outside"):
        check_labels(np.array([0, 10]), 10)
