"""Image folders in the ImageNet layout: what they hold, checked, and their one-time index.

    <root>/train/<class>/*.JPEG     the training split (validation is held out of it)
    <root>/val/<class>/*.JPEG       the test split (ImageNet's official validation set)

Classes are the sorted folder names of train/ (for ImageNet, the sorted WordNet ids: the
usual label order). Files ending in .jpg/.jpeg (any case) are images; other files are not
read. Torch-free: spec resolution reads the class count and training-set size from here at
planning time, and the prepare job (`index`) writes the sorted file list with labels once.

Corrupt files: a file with an image name whose first bytes are not a JPEG's (empty,
truncated to nothing, a PNG or HTML saved as .JPEG) is skipped, and the index records each
one with the reason and the count; the prepare log prints them. Files damaged further in
fail when decoded, with the file's name (lotto.core.stream), never silently.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lotto.core.errors import InvalidValue

# the streamed dataset kinds (dataset.name), and the facts of ImageNet-1k (ILSVRC-2012)
STREAMED = ("imagenet", "imagefolder")
IMAGENET_CLASSES = 1000
IMAGENET_TRAIN_SIZE = 1_281_167
IMAGENET_TEST_SIZE = 50_000
INDEX_FORMAT = "lotto-image-index-1"
IMAGE_SUFFIXES = (".jpg", ".jpeg")
JPEG_MAGIC = b"\xff\xd8\xff"
SPLIT_FOLDERS = {"train": "train", "test": "val"}


class FolderError(InvalidValue):
    """An image folder is missing, empty or not in the ImageNet layout; the message says which."""


@dataclass(frozen=True)
class FolderFacts:
    """What planning needs: how many classes and training images (before the hold-out)."""

    num_classes: int
    train_size: int


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES)


def _subfolders(directory: Path) -> list[str]:
    with os.scandir(directory) as entries:
        return sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))


def _images(directory: Path) -> list[str]:
    with os.scandir(directory) as entries:
        return sorted(e.name for e in entries if e.is_file() and _is_image(e.name))


def _split_dir(root: Path, split: str) -> Path:
    directory = root / SPLIT_FOLDERS[split]
    if not directory.is_dir():
        raise FolderError(
            f"{directory}: no such folder. An image folder holds train/<class>/*.JPEG and "
            "val/<class>/*.JPEG (the ImageNet layout; val/ is the test split)"
        )
    return directory


def classes_of(root: str | os.PathLike, kind: str) -> tuple[str, ...]:
    """The sorted class folders of root/train, checked against val/ (and ImageNet's count)."""
    base = Path(root)
    if not base.is_dir():
        raise FolderError(f"dataset.root {str(root)!r}: no such folder")
    classes = _subfolders(_split_dir(base, "train"))
    if not classes:
        raise FolderError(f"{base / 'train'}: no class folders (expected train/<class>/*.JPEG)")
    if kind == "imagenet" and len(classes) != IMAGENET_CLASSES:
        raise FolderError(
            f"{base / 'train'}: {len(classes)} class folders, ImageNet has {IMAGENET_CLASSES}; "
            "for a subset or another dataset use dataset.name: imagefolder"
        )
    foreign = sorted(set(_subfolders(_split_dir(base, "test"))) - set(classes))
    if foreign:
        raise FolderError(f"{base / 'val'}: class folders not in train/: {', '.join(foreign[:5])}")
    return tuple(classes)


def facts(root: str | os.PathLike, kind: str) -> FolderFacts:
    """Classes and training-set size. ImageNet's size is its published one (listing 1.28M
    files at every planning would cost minutes on a network file system); an image folder's
    is counted, and an empty class folder is refused here, before any job starts. ImageNet
    absent from this machine (a dry run of its presets, a cluster's login node) is planned from
    its published facts; its prepare job (`index`) refuses the missing folder before any training."""
    if kind == "imagenet" and not os.path.exists(root):
        return FolderFacts(IMAGENET_CLASSES, IMAGENET_TRAIN_SIZE)
    classes = classes_of(root, kind)
    if kind == "imagenet":
        return FolderFacts(len(classes), IMAGENET_TRAIN_SIZE)
    train = Path(root) / "train"
    sizes = {c: len(_images(train / c)) for c in classes}
    empty = [c for c, n in sizes.items() if n == 0]
    if empty:
        raise FolderError(f"{train / empty[0]}: no .jpg/.jpeg images in this class folder "
                          f"({len(empty)} empty class folder(s): {', '.join(empty[:5])})")
    return FolderFacts(len(classes), sum(sizes.values()))


def _header_problem(path: Path) -> str | None:
    """Why `path` cannot be a JPEG (None if its first bytes are a JPEG's)."""
    with open(path, "rb") as f:
        head = f.read(len(JPEG_MAGIC))
    if not head:
        return "empty file"
    if head != JPEG_MAGIC:
        return f"not a JPEG (starts with {head.hex()})"
    return None


def index(root: str | os.PathLike, kind: str) -> dict[str, Any]:
    """The sorted files and labels of both splits, files whose header is not a JPEG skipped
    (listed under 'skipped' with the reason). Paths are relative to the (absolute) root."""
    base = Path(root).resolve()
    classes = classes_of(base, kind)
    out: dict[str, Any] = {"format": INDEX_FORMAT, "kind": kind, "root": str(base), "classes": list(classes),
                           "skipped": []}
    for split, folder in SPLIT_FOLDERS.items():
        files, labels = [], []
        for label, name in enumerate(classes):
            directory = base / folder / name
            kept = 0
            for image in _images(directory) if directory.is_dir() else []:
                relative = f"{folder}/{name}/{image}"
                problem = _header_problem(base / relative)
                if problem is None:
                    files.append(relative)
                    labels.append(label)
                    kept += 1
                else:
                    out["skipped"].append([relative, problem])
            if split == "train" and kept == 0:
                raise FolderError(f"{directory}: no readable .jpg/.jpeg images in this class folder")
        if not files:
            raise FolderError(f"{base / folder}: no readable .jpg/.jpeg images in any class folder")
        out[f"{split}_files"], out[f"{split}_labels"] = files, labels
    return out
