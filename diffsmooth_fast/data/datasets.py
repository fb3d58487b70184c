"""Evaluation datasets: (x [3, H, W] float32 in [0, 1], label int) pairs, map-style, with ``len``.

``CIFAR10`` (the python pickle batches, ToTensor only, as Cohen et al. certify it), ``ImageFolderDataset`` (an
ImageNet-style class tree labelled as torchvision's ImageFolder, Resize(256) + CenterCrop(224) with Pillow),
``ImageFiles`` (a flat folder, label -1), ``NpzDataset`` (an .npz of images and labels); ``load_dataset`` by name.
Every missing or unreadable file raises ValueError naming it (images are decoded lazily, in ``__getitem__``).
"""

from __future__ import annotations

import os
import pickle
import tarfile
import zipfile
import zlib
from collections.abc import Sequence
from typing import IO

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..checks import check_choice, is_int

# torchvision's IMG_EXTENSIONS, compared case-insensitively as ImageFolder does.
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
DATASETS = ("cifar10", "imagenet", "folder", "npz")
CIFAR10_FILES = {"test": ("test_batch",), "train": tuple(f"data_batch_{i}" for i in range(1, 6))}
CIFAR10_DIR = "cifar-10-batches-py"
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"


# The batches are pickles; these are the only globals a numpy array needs, so nothing else can run on load.
_ARRAY_GLOBALS = {(f"numpy.{core}.{module}", name) for core in ("core", "_core") for module, name in
                  (("multiarray", "_reconstruct"), ("multiarray", "scalar"), ("numeric", "_frombuffer"))}
_ARRAY_GLOBALS |= {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}


class _Refused(pickle.UnpicklingError):
    pass


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ARRAY_GLOBALS:
            raise _Refused(f"refusing to load {module}.{name}: a CIFAR batch holds only arrays and lists")
        return super().find_class(module, name)


def _read_batch(stream: IO[bytes], name: str) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 [N, 3, 32, 32] and labels int64 [N] of one pickled batch (``name`` is for messages)."""
    try:
        # latin1, as torchvision: the batches were written by Python 2.
        entry = _ArrayUnpickler(stream, encoding="latin1").load()
    except _Refused as exc:
        raise ValueError(f"CIFAR-10 batch {name}: {exc}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            OSError, zlib.error) as exc:
        raise ValueError(f"CIFAR-10 batch {name}: corrupt or truncated ({type(exc).__name__}: {exc})") from None
    entry = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()} \
        if isinstance(entry, dict) else {}
    if "data" not in entry or "labels" not in entry:
        raise ValueError(f"CIFAR-10 batch {name}: expected a dict with 'data' and 'labels'")
    data, labels = np.asarray(entry["data"]), np.asarray(entry["labels"], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or labels.shape != (len(data),):
        raise ValueError(f"CIFAR-10 batch {name}: expected data uint8 [N, 3072] and N labels, got "
                         f"{data.dtype} {list(data.shape)} and {list(labels.shape)}")
    return data.reshape(-1, 3, 32, 32), labels


class CIFAR10(Dataset):
    """CIFAR-10 from the python batches; ``split`` ``test`` (10,000 images, ``test_batch``) or ``train`` (50,000).

    ``path`` is ``cifar-10-batches-py/``, a folder holding it (or holding ``cifar-10-python.tar.gz``), or the
    archive itself, which is read in place. Items: (x [3, 32, 32] float32 in [0, 1], label in 0..9).
    """

    num_classes = 10

    def __init__(self, path: str | os.PathLike[str], split: str = "test") -> None:
        if split not in CIFAR10_FILES:
            raise ValueError(f"CIFAR-10 split must be test or train, got {split!r}")
        path = os.fspath(path)
        if not os.path.exists(path):
            raise ValueError(f"CIFAR-10 {path}: no such file or directory")
        folder, archive = os.path.join(path, CIFAR10_DIR), os.path.join(path, CIFAR10_ARCHIVE)
        if os.path.isdir(folder) or (os.path.isfile(archive) and not os.path.exists(os.path.join(path, "test_batch"))):
            path = folder if os.path.isdir(folder) else archive  # the parent of the batches, or of the download
        batches = self._from_dir(path, split) if os.path.isdir(path) else self._from_archive(path, split)
        self.images, self.labels = (np.concatenate(arrays) for arrays in zip(*batches))

    @staticmethod
    def _from_dir(folder: str, split: str) -> list[tuple[np.ndarray, np.ndarray]]:
        batches = []
        for file in (os.path.join(folder, name) for name in CIFAR10_FILES[split]):
            if not os.path.isfile(file):
                raise ValueError(f"CIFAR-10 {file}: no such file (expected the {split} split of {CIFAR10_DIR}/)")
            with open(file, "rb") as stream:
                batches.append(_read_batch(stream, file))
        return batches

    @staticmethod
    def _from_archive(archive: str, split: str) -> list[tuple[np.ndarray, np.ndarray]]:
        found = {}
        try:
            with tarfile.open(archive, "r:*") as tar:
                for member in tar:  # one pass: a .gz stream cannot seek back cheaply
                    name = os.path.basename(member.name)
                    if member.isfile() and name in CIFAR10_FILES[split]:
                        found[name] = _read_batch(tar.extractfile(member), f"{archive}:{member.name}")
        except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
            raise ValueError(f"CIFAR-10 {archive}: not a readable tar archive ({type(exc).__name__}: {exc})") from None
        for name in CIFAR10_FILES[split]:
            if name not in found:
                raise ValueError(f"CIFAR-10 archive {archive}: no {CIFAR10_DIR}/{name} inside")
        return [found[name] for name in CIFAR10_FILES[split]]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(self.images[index]).float().div(255), int(self.labels[index])


def resize_shorter(image: Image.Image, size: int) -> Image.Image:
    """torchvision ``Resize(size)`` on a PIL image: shorter side to ``size``, the other ``int(size * long / short)``,
    bilinear (Pillow's, which antialiases when shrinking; torchvision's ``antialias`` flag does not apply to PIL)."""
    width, height = image.size
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    new_size = (new_short, new_long) if width <= height else (new_long, new_short)
    return image if new_size == image.size else image.resize(new_size, Image.BILINEAR)


def center_crop(image: Image.Image, size: int) -> Image.Image:
    """torchvision ``CenterCrop(size)``: offset ``int(round((h - size) / 2.0))``; zero padding if smaller."""
    width, height = image.size
    left = int(round((width - size) / 2.0)) if width >= size else -((size - width) // 2)
    top = int(round((height - size) / 2.0)) if height >= size else -((size - height) // 2)
    return image.crop((left, top, left + size, top + size))  # Pillow fills outside the image with zeros


def load_image(path: str, resize: int | None = None, crop: int | None = None) -> torch.Tensor:
    """The image at ``path`` as RGB float32 [3, H, W] in [0, 1], after the optional resize and center crop.

    Raises:
        ValueError: the file is missing, not an image, or corrupt.
    """
    try:
        with open(path, "rb") as stream:
            image = Image.open(stream).convert("RGB")  # convert() decodes, so corruption surfaces here
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ValueError(f"image {path}: cannot be read ({type(exc).__name__}: {exc})") from None
    if resize is not None:
        image = resize_shorter(image, resize)
    if crop is not None:
        image = center_crop(image, crop)
    # As torchvision's ToTensor: uint8 [H, W, C] -> float32 [C, H, W], divided (not multiplied) by 255.
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float().div(255)


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS)


class _ImageDataset(Dataset):
    """Images decoded on access from ``self.samples``, a list of (path, label)."""

    def __init__(self, root: str | os.PathLike[str], resize: int | None, crop: int | None, *, labelled: bool):
        for name, value in (("resize", resize), ("crop", crop)):
            if value is not None and not (is_int(value) and value >= 1):
                raise ValueError(f"{name} must be a positive integer or None, got {value!r}")
        self.root, self.resize, self.crop = os.fspath(root), resize, crop
        if not os.path.isdir(self.root):
            raise ValueError(f"image folder {self.root}: no such directory")
        if labelled:  # torchvision's ImageFolder order: classes sorted, each walked in sorted order
            self.classes = sorted(entry.name for entry in os.scandir(self.root) if entry.is_dir())
            self.samples = [(os.path.join(folder, f), label) for label, name in enumerate(self.classes)
                            for folder, _, files in sorted(os.walk(os.path.join(self.root, name), followlinks=True))
                            for f in sorted(files) if _is_image(f)]
        else:
            self.samples = [(os.path.join(self.root, f), -1) for f in sorted(os.listdir(self.root))
                            if _is_image(f) and os.path.isfile(os.path.join(self.root, f))]
        if not self.samples:
            where = "in class subfolders " if labelled else ""
            raise ValueError(f"image folder {self.root}: no images {where}(extensions {' '.join(IMG_EXTENSIONS)})")

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def labels(self) -> np.ndarray:
        """The label of every image, int64 [N] (-1 for unlabelled images), without decoding any image."""
        return np.array([label for _, label in self.samples], dtype=np.int64)

    @property
    def num_classes(self) -> int | None:
        """The number of class folders (None for a flat, unlabelled folder)."""
        return len(self.classes) if hasattr(self, "classes") else None

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        return load_image(path, self.resize, self.crop), label


class ImageFolderDataset(_ImageDataset):
    """An ImageFolder tree ``root/<class>/**/<image>``, labelled as torchvision labels it: class folders sorted by
    name give labels 0, 1, ...; files are walked in sorted order; extensions ``IMG_EXTENSIONS`` in any case.

    Items: (x [3, crop, crop] float32 in [0, 1], label). The defaults are the reference ImageNet pre-processing,
    Resize(256) + CenterCrop(224); None skips a step.
    """

    def __init__(self, root: str | os.PathLike[str], resize: int | None = 256, crop: int | None = 224) -> None:
        super().__init__(root, resize, crop, labelled=True)


class ImageFiles(_ImageDataset):
    """The images directly inside ``root``, sorted by name, label -1 (without resize/crop they must share a size)."""

    def __init__(self, root: str | os.PathLike[str], resize: int | None = None, crop: int | None = None) -> None:
        super().__init__(root, resize, crop, labelled=False)
        self.files = [path for path, _ in self.samples]


NPZ_IMAGE_KEYS = ("images", "x", "data")
NPZ_LABEL_KEYS = ("labels", "y", "targets")


class NpzDataset(Dataset):
    """Images (and labels) from an ``.npz``: ``images`` (or ``x``, ``data``) and optionally ``labels`` (or ``y``,
    ``targets``; int [N], else every label is -1). Images are uint8 in [0, 255] or floats in [0, 1], [N, H, W, C]
    or [N, C, H, W] with C = 1 or 3 ([N, H, W] is grayscale; grayscale is repeated to 3 channels), told apart by
    where the channel axis is; when both fit (e.g. [N, 3, 3, 3]) uint8 means [N, H, W, C] (how images are stored)
    and float [N, C, H, W] (how tensors are). Items: (x [3, H, W] float32 in [0, 1], label).
    """

    num_classes = None  # an .npz does not say how many classes its labels come from

    def __init__(self, path: str | os.PathLike[str]) -> None:
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise ValueError(f"npz {path}: no such file")
        with open(path, "rb") as f:
            magic = f.read(6)
        if magic == b"\x93NUMPY":  # np.load would hand back the one array, not an archive
            raise ValueError(f"npz {path}: a .npy file (one array), not an .npz archive: save the images (uint8 "
                             f"[N, H, W, C] or [N, C, H, W], or floats in [0, 1]) and their integer labels [N] "
                             f"together with numpy.savez(path, images=..., labels=...)")
        try:
            with np.load(path, allow_pickle=False) as archive:
                arrays = {key: archive[key] for key in archive.files if key in NPZ_IMAGE_KEYS + NPZ_LABEL_KEYS}
                keys = list(archive.files)
        except (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error) as exc:
            raise ValueError(f"npz {path}: not a readable .npz ({type(exc).__name__}: {exc})") from None
        images = next((arrays[k] for k in NPZ_IMAGE_KEYS if k in arrays), None)
        if images is None:
            raise ValueError(f"npz {path}: no images array (one of {', '.join(NPZ_IMAGE_KEYS)}); it holds "
                             f"{', '.join(keys) or 'nothing'}")
        self.images = self._channels_first(images, path)
        labels = next((arrays[k] for k in NPZ_LABEL_KEYS if k in arrays), np.full(len(images), -1, np.int64))
        if labels.ndim != 1 or len(labels) != len(images) or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"npz {path}: labels must be integers [N={len(images)}], got {labels.dtype} "
                             f"{list(labels.shape)}")
        self.labels = labels.astype(np.int64)

    @staticmethod
    def _channels_first(images: np.ndarray, path: str) -> np.ndarray:
        images = images[:, None] if images.ndim == 3 else images
        last, first = images.ndim == 4 and images.shape[3] in (1, 3), images.ndim == 4 and images.shape[1] in (1, 3)
        if not (last or first) or len(images) == 0:
            raise ValueError(f"npz {path}: images must be [N, H, W, C] or [N, C, H, W] with N > 0 and C 1 or 3, "
                             f"got {list(images.shape)}")
        if last and (not first or images.dtype == np.uint8):
            images = images.transpose(0, 3, 1, 2)
        if images.dtype == np.uint8:
            return images
        if not np.issubdtype(images.dtype, np.floating):
            raise ValueError(f"npz {path}: images must be uint8 or float, got {images.dtype}")
        low, high = float(images.min()), float(images.max())
        if not (0.0 <= low and high <= 1.0):  # also catches NaN
            raise ValueError(f"npz {path}: float images must lie in [0, 1], got values in [{low}, {high}]")
        return images

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = torch.from_numpy(np.ascontiguousarray(self.images[index]))
        image = image.float().div(255) if image.dtype == torch.uint8 else image.float()
        return image.expand(3, -1, -1).clone() if image.shape[0] == 1 else image, int(self.labels[index])


def check_labels(labels: np.ndarray | Sequence[int], num_classes: int, dataset_classes: int | None = None) -> bool:
    """Check a dataset's labels against a classifier with ``num_classes`` outputs, before anything is certified.

    Returns True for labelled images (every label in [0, num_classes)), False for unlabelled ones (every label -1:
    an image folder, an .npz without labels), where accuracy is not defined.

    Raises:
        ValueError: the dataset has another number of classes (``dataset_classes``, where it knows it) than the
            classifier; a label outside [0, num_classes); unlabelled images among labelled ones.
    """
    if dataset_classes is not None and dataset_classes != num_classes:
        raise ValueError(f"the dataset has {dataset_classes} classes but the classifier {num_classes} outputs: they "
                         f"do not go together (another --classifier, or a class folder missing or extra?)")
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    unlabelled = labels == -1
    if labels.size and unlabelled.all():
        return False
    if unlabelled.any():
        raise ValueError(f"image {int(np.flatnonzero(unlabelled)[0])} has no label (-1) while others have one: label "
                         f"every image or none")
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        raise ValueError(f"image {int(bad[0])} has label {int(labels[bad[0]])}, outside the classifier's classes "
                         f"0..{num_classes - 1} ({bad.size} such images): another dataset or another classifier?")
    return True


def load_dataset(name: str, path: str | os.PathLike[str], split: str = "test", *, resize: int | None = None,
                 crop: int | None = None) -> Dataset:
    """A dataset by name: ``cifar10``, ``imagenet``, ``folder`` or ``npz``.

    Args:
        path: see ``CIFAR10``; for ``imagenet`` the root holding ``val/`` (test) or ``train/``, or the class tree
            itself; for ``folder`` a flat folder of images; for ``npz`` the file.
        split: ``test`` or ``train`` (cifar10, imagenet); folder and npz have only ``test``.
        resize, crop: image pre-processing (shorter side, center crop) for ``imagenet`` (default 256 and 224, the
            reference's) and ``folder`` (default none). For other settings build ``ImageFolderDataset`` directly.
    """
    check_choice("dataset", name, DATASETS)
    if name in ("cifar10", "npz") and (resize is not None or crop is not None):
        raise ValueError(f"resize and crop apply to image datasets (imagenet, folder), not {name}")
    if name in ("folder", "npz") and split != "test":
        raise ValueError(f"{name} datasets have a single split, 'test'; got {split!r}")
    if name == "cifar10":
        return CIFAR10(path, split)
    if name in ("npz", "folder"):
        return NpzDataset(path) if name == "npz" else ImageFiles(path, resize, crop)
    if split not in ("test", "train"):
        raise ValueError(f"ImageNet split must be test or train, got {split!r}")
    subfolder = os.path.join(os.fspath(path), "val" if split == "test" else "train")
    return ImageFolderDataset(subfolder if os.path.isdir(subfolder) else path,
                              256 if resize is None else resize, 224 if crop is None else crop)


