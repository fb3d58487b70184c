"""Datasets: fake CIFAR-10 batches (folder and .tar.gz), an ImageFolder tree checked against direct Pillow
computations, image folders, .npz layouts, and the errors for missing or corrupt files."""

from __future__ import annotations

import os
import pickle
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from diffsmooth_fast.data import CIFAR10, ImageFiles, ImageFolderDataset, NpzDataset, load_dataset

RNG = np.random.default_rng(0)


# ---------------------------------------------------------------- CIFAR-10


def cifar_batch(n: int, first_label: int = 0, bytes_keys: bool = True) -> dict:
    data = RNG.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    entry = {"batch_label": "fake", "labels": [(first_label + i) % 10 for i in range(n)], "data": data,
             "filenames": [f"img_{i}.png" for i in range(n)]}
    return {k.encode(): v for k, v in entry.items()} if bytes_keys else entry


def write_cifar(folder, test_n=5, train_n=3, bytes_keys=True) -> dict:
    """A cifar-10-batches-py folder; returns the batches by file name."""
    batches = {"test_batch": cifar_batch(test_n, 3, bytes_keys)}
    batches |= {f"data_batch_{i}": cifar_batch(train_n, i, bytes_keys) for i in range(1, 6)}
    os.makedirs(folder, exist_ok=True)
    for name, batch in batches.items():
        # The real files are protocol-2 pickles from numpy 1.x, whose arrays name numpy.core.multiarray.
        data = pickle.dumps(batch, protocol=2).replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
        with open(os.path.join(folder, name), "wb") as f:
            f.write(data)
    return batches


def expected_cifar_image(row: np.ndarray) -> torch.Tensor:
    """Channel-major rows: the first 1024 bytes are the red plane, row by row."""
    planes = [row[c * 1024:(c + 1) * 1024].reshape(32, 32) for c in range(3)]
    return torch.tensor(np.stack(planes), dtype=torch.float32) / 255


@pytest.mark.parametrize("bytes_keys", [True, False])
def test_cifar_directory_and_parent(tmp_path, bytes_keys):
    batches = write_cifar(tmp_path / "cifar-10-batches-py", bytes_keys=bytes_keys)
    key = b"data" if bytes_keys else "data"
    labels = b"labels" if bytes_keys else "labels"
    for path in (tmp_path, tmp_path / "cifar-10-batches-py"):
        test = CIFAR10(path)
        assert len(test) == 5
        for i in range(5):
            x, y = test[i]
            assert x.dtype == torch.float32 and x.shape == (3, 32, 32)
            assert torch.equal(x, expected_cifar_image(batches["test_batch"][key][i]))
            assert y == batches["test_batch"][labels][i] and isinstance(y, int)
    train = load_dataset("cifar10", tmp_path, split="train")
    assert len(train) == 15
    x, y = train[3]  # the first image of data_batch_2
    assert torch.equal(x, expected_cifar_image(batches["data_batch_2"][key][0])) and y == 2


def test_cifar_archive_read_in_place(tmp_path):
    batches = write_cifar(tmp_path / "src" / "cifar-10-batches-py")
    archive = tmp_path / "dl" / "cifar-10-python.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "src" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    for path in (archive, archive.parent):
        test = CIFAR10(path)
        assert len(test) == 5 and torch.equal(test[4][0], expected_cifar_image(batches["test_batch"][b"data"][4]))
    assert not (archive.parent / "cifar-10-batches-py").exists()  # nothing extracted
    assert len(CIFAR10(archive, "train")) == 15


def test_cifar_errors_name_the_file(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar(folder)
    os.remove(folder / "test_batch")
    with pytest.raises(ValueError, match=r"cifar-10-batches-py/test_batch: no such file"):
        CIFAR10(tmp_path)
    data = pickle.dumps(cifar_batch(4), protocol=2)
    (folder / "test_batch").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"batch .*test_batch: corrupt or truncated"):
        CIFAR10(folder)
    with pytest.raises(ValueError, match="no such file or directory"):
        CIFAR10(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="split must be test or train"):
        CIFAR10(folder, "validation")
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder / "data_batch_1", arcname="cifar-10-batches-py/data_batch_1")
    with pytest.raises(ValueError, match=r"cifar-10-python.tar.gz: no cifar-10-batches-py/test_batch inside"):
        CIFAR10(archive)
    archive.write_bytes(archive.read_bytes()[:100])
    with pytest.raises(ValueError, match=r"cifar-10-python.tar.gz: not a readable tar archive"):
        CIFAR10(archive)


class _Exploit:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_cifar_pickle_cannot_run_code(tmp_path):
    marker = tmp_path / "pwned"
    batch = cifar_batch(2)
    batch[b"batch_label"] = _Exploit(str(marker))
    (tmp_path / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(ValueError, match=r"test_batch: refusing to load io\.open"):
        CIFAR10(tmp_path)
    assert not marker.exists()


# ---------------------------------------------------------------- ImageFolder


def random_image(width: int, height: int, mode: str = "RGB") -> Image.Image:
    channels = {"RGB": 3, "L": 1}[mode]
    array = RNG.integers(0, 256, size=(height, width, channels), dtype=np.uint8)
    return Image.fromarray(array.squeeze(-1) if channels == 1 else array, mode)


def pillow_reference(path: str) -> torch.Tensor:
    """Resize(256) + CenterCrop(224) + ToTensor, computed directly with Pillow as torchvision does."""
    image = Image.open(path).convert("RGB")
    w, h = image.size
    if w <= h:
        size = (256, int(256 * h / w))
    else:
        size = (int(256 * w / h), 256)
    image = image.resize(size, Image.BILINEAR)
    left, top = int(round((size[0] - 224) / 2.0)), int(round((size[1] - 224) / 2.0))
    array = np.asarray(image.crop((left, top, left + 224, top + 224)), dtype=np.float32)
    return torch.from_numpy(array).permute(2, 0, 1) / 255


@pytest.fixture
def imagefolder(tmp_path):
    """root/val/<class>/...: sizes portrait, landscape, square-256 (no resize), grayscale, nested, odd extensions."""
    root = tmp_path / "imagenet" / "val"
    files = {
        "n02/b.JPEG": (300, 400, "RGB"), "n02/a.png": (500, 260, "RGB"), "n02/notes.txt": None,
        "n01/z.jpg": (256, 256, "RGB"), "n01/sub/c.PNG": (260, 700, "L"), "N00/q.bmp": (257, 300, "RGB"),
        "empty_class/readme.md": None,
    }
    for name, spec in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if spec is None:
            path.write_text("not an image")
        else:
            random_image(*spec).save(path, quality=95) if name.lower().endswith((".jpg", ".jpeg")) else \
                random_image(*spec).save(path)
    return root


def test_imagefolder_labels_order_and_preprocessing(imagefolder):
    dataset = load_dataset("imagenet", imagefolder.parent)  # finds val/
    # torchvision: classes sorted by name (uppercase first), files walked and sorted, non-images skipped.
    assert dataset.classes == ["N00", "empty_class", "n01", "n02"]
    relative = [(os.path.relpath(p, imagefolder), y) for p, y in dataset.samples]
    assert relative == [("N00/q.bmp", 0), ("n01/z.jpg", 2), ("n01/sub/c.PNG", 2), ("n02/a.png", 3),
                        ("n02/b.JPEG", 3)]
    assert len(dataset) == 5
    for i, (path, label) in enumerate(dataset.samples):
        x, y = dataset[i]
        assert x.shape == (3, 224, 224) and x.dtype == torch.float32 and y == label
        torch.testing.assert_close(x, pillow_reference(path), rtol=0, atol=0)
    gray, _ = dataset[2]
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])


def test_resize_sizes_and_crop_rounding(tmp_path):
    # 500x260 -> 256 * 500 / 260 = 492.3 -> 492 wide; 256xH is not resized, and the crop top is
    # int(round((H - 224) / 2)) with Python's round-half-to-even, as torchvision: 16.5 -> 16 but 17.5 -> 18.
    from diffsmooth_fast.data import center_crop, resize_shorter

    assert resize_shorter(random_image(500, 260), 256).size == (492, 256)
    assert resize_shorter(random_image(300, 400), 256).size == (256, 341)
    image = random_image(256, 257)
    assert resize_shorter(image, 256) is image
    array = np.asarray(image)
    assert np.array_equal(np.asarray(center_crop(image, 224)), array[16:240, 16:240])
    for (width, height), (top, left) in (((259, 257), (16, 18)), ((257, 259), (18, 16))):
        image = random_image(width, height)
        assert np.array_equal(np.asarray(center_crop(image, 224)), np.asarray(image)[top:top + 224, left:left + 224])
    small = center_crop(random_image(40, 50), 64)  # padded with zeros, (64 - 40) // 2 = 12 left, 7 on top
    padded = np.asarray(small)
    assert small.size == (64, 64) and padded[:7].max() == 0 and padded[:, :12].max() == 0
    assert padded[7:57, 12:52].min() >= 0 and padded[57:].max() == 0


def test_corrupt_images_name_the_file(imagefolder):
    good = imagefolder / "n02" / "b.JPEG"
    data = good.read_bytes()
    good.write_bytes(data[: len(data) // 3])  # truncated JPEG
    (imagefolder / "n02" / "x.jpg").write_bytes(b"\xff\xd8\xffgarbage")
    dataset = ImageFolderDataset(imagefolder)
    index = {os.path.basename(p): i for i, (p, _) in enumerate(dataset.samples)}
    with pytest.raises(ValueError, match=r"image .*b\.JPEG: cannot be read"):
        dataset[index["b.JPEG"]]
    with pytest.raises(ValueError, match=r"image .*x\.jpg: cannot be read"):
        dataset[index["x.jpg"]]


def test_empty_or_missing_folders(tmp_path):
    (tmp_path / "empty" / "class_a").mkdir(parents=True)
    with pytest.raises(ValueError, match="no images in class subfolders"):
        ImageFolderDataset(tmp_path / "empty")
    with pytest.raises(ValueError, match="no such directory"):
        ImageFolderDataset(tmp_path / "missing")
    with pytest.raises(ValueError, match="no images"):
        ImageFiles(tmp_path / "empty")


def test_unlabelled_folder(tmp_path):
    for name, size in (("b.png", (40, 30)), ("a.jpg", (40, 30)), ("c.txt", None)):
        (tmp_path / name).write_text("x") if size is None else random_image(*size).save(tmp_path / name)
    dataset = load_dataset("folder", tmp_path)
    assert [os.path.basename(f) for f in dataset.files] == ["a.jpg", "b.png"]
    x, y = dataset[1]
    assert y == -1 and x.shape == (3, 30, 40)
    assert torch.equal(x, torch.from_numpy(np.asarray(Image.open(tmp_path / "b.png"), dtype=np.float32)).permute(
        2, 0, 1) / 255)
    assert load_dataset("folder", tmp_path, resize=20, crop=16)[0][0].shape == (3, 16, 16)


# ---------------------------------------------------------------- npz


def test_npz_layouts(tmp_path):
    nhwc = RNG.integers(0, 256, size=(4, 8, 6, 3), dtype=np.uint8)
    labels = np.array([3, 1, 4, 1])
    np.savez(tmp_path / "nhwc.npz", images=nhwc, labels=labels)
    dataset = load_dataset("npz", tmp_path / "nhwc.npz")
    x, y = dataset[2]
    assert len(dataset) == 4 and y == 4 and x.shape == (3, 8, 6)
    assert torch.equal(x, torch.from_numpy(nhwc[2]).permute(2, 0, 1).float() / 255)

    nchw = RNG.random((3, 3, 5, 7), dtype=np.float32)
    np.savez(tmp_path / "nchw.npz", x=nchw)
    dataset = NpzDataset(tmp_path / "nchw.npz")
    assert dataset[1][1] == -1 and torch.equal(dataset[1][0], torch.from_numpy(nchw[1]))

    gray = RNG.integers(0, 256, size=(2, 5, 5), dtype=np.uint8)
    np.savez(tmp_path / "gray.npz", images=gray, labels=np.array([0, 1]))
    x, _ = NpzDataset(tmp_path / "gray.npz")[0]
    assert x.shape == (3, 5, 5) and torch.equal(x[2], torch.from_numpy(gray[0]).float() / 255)

    ambiguous = RNG.integers(0, 256, size=(2, 3, 3, 3), dtype=np.uint8)  # uint8: read as [N, H, W, C]
    np.savez(tmp_path / "amb.npz", images=ambiguous)
    assert torch.equal(NpzDataset(tmp_path / "amb.npz")[0][0], torch.from_numpy(ambiguous[0]).permute(2, 0, 1) / 255)


def test_npz_errors(tmp_path):
    def npz(name, **arrays):
        np.savez(tmp_path / name, **arrays)
        return tmp_path / name

    with pytest.raises(ValueError, match=r"no images array .*it holds pics"):
        NpzDataset(npz("a.npz", pics=np.zeros((2, 4, 4, 3), np.uint8)))
    with pytest.raises(ValueError, match=r"float images must lie in \[0, 1\]"):
        NpzDataset(npz("b.npz", images=np.full((2, 3, 4, 4), 255.0)))
    with pytest.raises(ValueError, match=r"with N > 0 and C 1 or 3, got \[2, 4, 4, 4\]"):
        NpzDataset(npz("c.npz", images=np.zeros((2, 4, 4, 4), np.uint8)))
    with pytest.raises(ValueError, match="labels must be integers"):
        NpzDataset(npz("d.npz", images=np.zeros((2, 4, 4, 3), np.uint8), labels=np.array([1, 2, 3])))
    (tmp_path / "e.npz").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ValueError, match=r"e\.npz: not a readable \.npz"):
        NpzDataset(tmp_path / "e.npz")
    with pytest.raises(ValueError, match=r"f\.npz: no such file"):
        NpzDataset(tmp_path / "f.npz")


def test_load_dataset_arguments(tmp_path):
    with pytest.raises(ValueError, match="dataset must be one of cifar10, imagenet, folder, npz"):
        load_dataset("mnist", tmp_path)
    with pytest.raises(ValueError, match="resize and crop apply to image datasets"):
        load_dataset("cifar10", tmp_path, resize=32)
    with pytest.raises(ValueError, match="single split"):
        load_dataset("npz", tmp_path / "x.npz", split="train")
    with pytest.raises(ValueError, match="crop must be a positive integer"):
        ImageFiles(tmp_path, crop=0)


def test_dataset_works_with_a_dataloader(tmp_path):
    write_cifar(tmp_path / "cifar-10-batches-py", test_n=6)
    x, y = next(iter(torch.utils.data.DataLoader(CIFAR10(tmp_path), batch_size=4)))
    assert x.shape == (4, 3, 32, 32) and y.tolist() == [3, 4, 5, 6]
