"""Datasets as certification reads them: (x [C, H, W] float32 in [0, 1], label) pairs. CIFAR-10, ImageNet
folders, image folders and ``.npz`` files (``datasets``); the demo's digits (``digits``) and the linear toy
problem with exact radii (``toy``) are built in."""

from .datasets import (
                       CIFAR10,
                       DATASETS,
                       IMG_EXTENSIONS,
                       ImageFiles,
                       ImageFolderDataset,
                       NpzDataset,
                       center_crop,
                       check_labels,
                       load_dataset,
                       load_image,
                       resize_shorter,
)

__all__ = ["CIFAR10", "DATASETS", "IMG_EXTENSIONS", "ImageFiles", "ImageFolderDataset", "NpzDataset", "center_crop",
           "check_labels", "load_dataset", "load_image", "resize_shorter"]
