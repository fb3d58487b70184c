"""The demo's data: scikit-learn's digits (1,797 real handwritten 8x8 images, 10 classes).

The images are grey levels 0..16; the demo reads them as pixels ``v / 16`` in [0, 1], repeated to 3 channels
(the OpenAI UNet and Cohen's ResNets take RGB), so a demo image is [3, 8, 8] and its certified radius is
measured in that 192-dimensional space. The train/test split is fixed: 36 test images per class drawn with
``numpy.random.default_rng(SPLIT_SEED)``, 360 in all, kept in the dataset's order; the other 1,437 train.
Only the test split ships (``data/files/digits_test.npz``, written by ``python -m diffsmooth_fast.demo.train``);
training needs scikit-learn, certifying does not. The models trained on it are in :mod:`diffsmooth_fast.models.shipped`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .datasets import NpzDataset  # the .npz reader every other dataset uses

SPLIT_SEED = 0
TEST_PER_CLASS = 36
NUM_CLASSES = 10
GREY_LEVELS = 16  # the digits' maximum value: pixel = value / 16

# Per-pixel mean and std of the train split's pixels (all channels alike); ``train.py`` checks them. The
# classifiers' input normalisation uses them, as Cohen's layer uses CIFAR-10's.
DIGITS_MEAN = 0.3054
DIGITS_STD = 0.3761

TEST_SPLIT = Path(__file__).resolve().parent / "files" / "digits_test.npz"


def split_indices(labels: np.ndarray, seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) indices of the digits: ``TEST_PER_CLASS`` random test images per class, each sorted."""
    rng = np.random.default_rng(seed)
    test = np.sort(np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:TEST_PER_CLASS]
                                   for c in range(NUM_CLASSES)]))
    train = np.setdiff1d(np.arange(len(labels)), test)
    return train, test


def load_sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 digits as (images float32 [N, 8, 8] in [0, 1], labels int64 [N]); needs scikit-learn."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ValueError("training the demo models needs scikit-learn (pip install scikit-learn)") from None
    digits = load_digits()
    return (digits.images / GREY_LEVELS).astype(np.float32), digits.target.astype(np.int64)


def to_rgb(images: np.ndarray) -> np.ndarray:
    """Grey images [N, 8, 8] -> [N, 3, 8, 8] (the same grey in every channel)."""
    return np.repeat(images[:, None], 3, axis=1)


def test_set():
    """The shipped test split as a dataset of (x [3, 8, 8] float32 in [0, 1], label)."""

    if not TEST_SPLIT.is_file():
        raise ValueError(f"the demo's test split is missing from the installed package ({TEST_SPLIT.name}); "
                         f"reinstall diffsmooth_fast")
    return NpzDataset(TEST_SPLIT)
