"""Tiny datasets written in the real on-disk formats, so tests read them the way lotto reads
the real ones (through torchvision).

IDX (MNIST, Fashion-MNIST; http://yann.lecun.com/exdb/mnist/): a big-endian header
`0x00 0x00 <type: 0x08 = ubyte> <ndim>`, then one int32 per dimension, then the data.
CIFAR (https://www.cs.toronto.edu/~kriz/cifar.html): pickled dicts whose `data` rows hold
the red plane, then green, then blue, each 32x32 row-major.
"""

from __future__ import annotations

import gzip
import hashlib
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

IDX_UBYTE = 0x08


def write_idx(path: Path, array: np.ndarray, compress: bool) -> None:
    """Write a uint8 array as an IDX file (gzip-compressed if `compress`)."""
    header = bytes([0, 0, IDX_UBYTE, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
    data = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if compress:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)


def random_split(
    n_train: int, n_test: int, shape: tuple[int, int, int], num_classes: int, seed: int
) -> dict[str, np.ndarray]:
    """Random uint8 images (N, C, H, W) and int64 labels for a train and a test split."""
    rng = np.random.default_rng(seed)
    return {
        "train_x": rng.integers(0, 256, (n_train, *shape), dtype=np.uint8),
        "train_y": rng.integers(0, num_classes, n_train).astype(np.int64),
        "test_x": rng.integers(0, 256, (n_test, *shape), dtype=np.uint8),
        "test_y": rng.integers(0, num_classes, n_test).astype(np.int64),
    }


def write_mnist_like(
    directory: Path, *, n_train: int = 30, n_test: int = 10, seed: int = 0, compress: bool = True
) -> dict[str, np.ndarray]:
    """The four MNIST IDX files directly in `directory`; returns the arrays written."""
    arrays = random_split(n_train, n_test, (1, 28, 28), 10, seed)
    for prefix, split in (("train", "train"), ("t10k", "test")):
        write_idx(directory / f"{prefix}-images-idx3-ubyte", arrays[f"{split}_x"][:, 0], compress)
        write_idx(directory / f"{prefix}-labels-idx1-ubyte", arrays[f"{split}_y"], compress)
    return arrays


def _cifar_rows(images: np.ndarray) -> np.ndarray:
    """(N, 3, 32, 32) images as CIFAR rows: 1024 red values, 1024 green, 1024 blue."""
    return np.concatenate([images[:, c].reshape(len(images), 1024) for c in range(3)], axis=1)


def _pickle(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj, protocol=2))


def write_cifar10(
    directory: Path, *, per_batch: int = 4, n_test: int = 6, seed: int = 0
) -> dict[str, np.ndarray]:
    """`data_batch_1..5`, `test_batch` and `batches.meta` directly in `directory`."""
    arrays = random_split(5 * per_batch, n_test, (3, 32, 32), 10, seed)
    for b in range(5):
        part = slice(b * per_batch, (b + 1) * per_batch)
        _pickle(
            directory / f"data_batch_{b + 1}",
            {
                "batch_label": f"training batch {b + 1} of 5",
                "labels": arrays["train_y"][part].tolist(),
                "data": _cifar_rows(arrays["train_x"][part]),
                "filenames": [f"img_{i}.png" for i in range(per_batch)],
            },
        )
    _pickle(
        directory / "test_batch",
        {
            "batch_label": "testing batch 1 of 1",
            "labels": arrays["test_y"].tolist(),
            "data": _cifar_rows(arrays["test_x"]),
            "filenames": [f"test_{i}.png" for i in range(n_test)],
        },
    )
    _pickle(
        directory / "batches.meta",
        {
            "num_cases_per_batch": per_batch,
            "label_names": [f"class{i}" for i in range(10)],
            "num_vis": 3072,
        },
    )
    return arrays


def write_cifar100(
    directory: Path, *, n_train: int = 20, n_test: int = 6, seed: int = 0
) -> dict[str, np.ndarray]:
    """`train`, `test` and `meta` directly in `directory` (labels are the fine labels)."""
    arrays = random_split(n_train, n_test, (3, 32, 32), 100, seed)
    for split, n in (("train", n_train), ("test", n_test)):
        _pickle(
            directory / split,
            {
                "filenames": [f"{split}_{i}.png" for i in range(n)],
                "batch_label": f"{split}ing batch 1 of 1",
                "fine_labels": arrays[f"{split}_y"].tolist(),
                "coarse_labels": (arrays[f"{split}_y"] // 5).tolist(),
                "data": _cifar_rows(arrays[f"{split}_x"]),
            },
        )
    _pickle(
        directory / "meta",
        {
            "fine_label_names": [f"fine{i}" for i in range(100)],
            "coarse_label_names": [f"coarse{i}" for i in range(20)],
        },
    )
    return arrays


def trust_cifar_fixture(monkeypatch: pytest.MonkeyPatch, cls: type, directory: Path) -> None:
    """Make torchvision's CIFAR class accept the fixture files in `directory`.

    torchvision refuses CIFAR files whose md5 differs from the official release's (the
    `train_list`, `test_list` and `meta` class attributes). A fixture cannot have those md5s,
    so for this test only the expected md5s become the fixture files' own: torchvision still
    runs its full check, lotto's code is unchanged, and a real corrupted file is still refused.
    """

    def md5(name: str) -> str:
        return hashlib.md5((directory / name).read_bytes()).hexdigest()

    monkeypatch.setattr(cls, "train_list", [[f, md5(f)] for f, _ in cls.train_list])
    monkeypatch.setattr(cls, "test_list", [[f, md5(f)] for f, _ in cls.test_list])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": md5(cls.meta["filename"])})


def write_image_folder(
    root: Path, *, classes: int = 12, train_per_class: int = 10, test_per_class: int = 3,
    sizes: tuple[tuple[int, int], ...] = ((36, 48), (40, 32), (33, 33)), seed: int = 0,
) -> list[str]:
    """An image folder in the ImageNet layout, train/<class>/*.JPEG and val/<class>/*.JPEG, of real
    JPEG files (torchvision.io.encode_jpeg) of several (height, width) sizes, each class a tint
    plus noise; returns the class names (WordNet-like ids, sorted)."""
    import warnings

    import torch
    from torchvision.io import encode_jpeg

    warnings.filterwarnings("ignore", "The image decoding", DeprecationWarning)  # torchvision 0.29

    generator = torch.Generator().manual_seed(seed)
    names = [f"n{i:08d}" for i in range(classes)]
    for label, name in enumerate(names):
        tint = torch.rand(3, 1, 1, generator=generator) * 200
        for folder, count in (("train", train_per_class), ("val", test_per_class)):
            directory = root / folder / name
            directory.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                h, w = sizes[(label + i) % len(sizes)]
                noise = torch.rand(3, h, w, generator=generator) * 55
                image = (tint + noise).to(torch.uint8)
                (directory / f"{name}_{i}.JPEG").write_bytes(encode_jpeg(image, quality=90).numpy().tobytes())
    return names


def write_kmnist(root: Path, *, n_train: int = 30, n_test: int = 10, seed: int = 0) -> dict[str, np.ndarray]:
    """KMNIST's four IDX files where torchvision.datasets.KMNIST reads them: root/KMNIST/raw/."""
    arrays = random_split(n_train, n_test, (1, 28, 28), 10, seed)
    raw = root / "KMNIST" / "raw"
    for prefix, split in (("train", "train"), ("t10k", "test")):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", arrays[f"{split}_x"][:, 0], compress=False)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", arrays[f"{split}_y"], compress=False)
    return arrays
