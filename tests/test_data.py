"""lotto.core.data: real file formats read through torchvision, the search order, the splits."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets
from fixtures import (
    random_split,
    trust_cifar_fixture,
    write_cifar10,
    write_cifar100,
    write_mnist_like,
)

from lotto.core import data
from lotto.core.data import DATASETS, DataNotFoundError, augment_batch, load, locate, prepare
from lotto.core.io import CorruptFileError, load_torch, save_torch

REAL_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
ORIGINAL_DATASETS = dict(DATASETS)


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No test sees the user's cache, $LOTTO_DATA or the machine's /usr/share/datasets."""
    torch.set_num_threads(1)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.delenv("LOTTO_DATA", raising=False)
    for name, info in ORIGINAL_DATASETS.items():
        fake = tuple(tmp_path / "system" / d.name for d in info.system_dirs)
        monkeypatch.setitem(DATASETS, name, dataclasses.replace(info, system_dirs=fake))


def assert_cache_matches(cache: dict, arrays: dict[str, np.ndarray], name: str, classes: int):
    assert cache["name"] == name and cache["num_classes"] == classes
    for key, expected in arrays.items():
        assert cache[key].dtype == (torch.uint8 if key.endswith("_x") else torch.int64), key
        assert torch.equal(cache[key], torch.from_numpy(expected)), key


def write_cache(path: Path, n_train=200, n_test=50, shape=(3, 4, 4), classes=10, identify=False):
    """A prepared cache of random (so pairwise distinct) images, as prepare() writes it.

    With `identify`, each training label is the example's index, so a split's labels say
    exactly which raw examples it holds.
    """
    arrays = random_split(n_train, n_test, shape, classes, seed=0)
    if identify:
        arrays["train_y"], classes = np.arange(n_train), n_train
    cache = {k: torch.from_numpy(v) for k, v in arrays.items()}
    save_torch(path, {"name": "cifar10", "num_classes": classes, **cache})
    return cache


def rows(x: torch.Tensor) -> set[tuple[float, ...]]:
    return {tuple(r) for r in x.flatten(1).tolist()}


# ---------------------------------------------------------------------------- registry


def test_registry_names_and_unknown_name():
    assert list(data.DATASETS) == ["mnist", "fashion_mnist", "cifar10", "cifar100", "synthetic"]
    with pytest.raises(ValueError, match="unknown dataset 'mnsit'; choose one of: mnist, fashion"):
        locate("mnsit")


# ---------------------------------------------------------------------------- real formats


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
@pytest.mark.parametrize("layout", ["flat_gz", "flat", "torchvision"])
def test_prepare_reads_idx_files(tmp_path, name, layout):
    """IDX files lying flat (.gz as in Debian, or plain) or in torchvision's layout round-trip."""
    root = tmp_path / "raw"
    folder = root / DATASETS[name].torchvision_subdir if layout == "torchvision" else root
    arrays = write_mnist_like(folder, compress=layout == "flat_gz")
    prepare(name, tmp_path / "cache.pt", root=root)
    assert_cache_matches(load_torch(tmp_path / "cache.pt"), arrays, name, 10)


def test_prepare_reads_cifar10_batches(tmp_path, monkeypatch):
    folder = tmp_path / "raw" / "cifar-10-batches-py"
    arrays = write_cifar10(folder)
    trust_cifar_fixture(monkeypatch, torchvision.datasets.CIFAR10, folder)
    prepare("cifar10", tmp_path / "cache.pt", root=tmp_path / "raw")
    assert_cache_matches(load_torch(tmp_path / "cache.pt"), arrays, "cifar10", 10)


def test_prepare_reads_cifar100_from_flat_files(tmp_path, monkeypatch):
    """CIFAR files lying flat are staged into torchvision's layout by symlinks."""
    arrays = write_cifar100(tmp_path / "raw")
    trust_cifar_fixture(monkeypatch, torchvision.datasets.CIFAR100, tmp_path / "raw")
    base = locate("cifar100", root=tmp_path / "raw")
    staged = base / "cifar-100-python" / "train"
    assert staged.is_symlink() and staged.resolve() == (tmp_path / "raw" / "train").resolve()
    prepare("cifar100", tmp_path / "cache.pt", root=tmp_path / "raw")
    assert_cache_matches(load_torch(tmp_path / "cache.pt"), arrays, "cifar100", 100)


def test_cifar_files_failing_the_checksum_are_refused(tmp_path):
    """torchvision's md5 check stays on: files that are not the official release are refused."""
    write_cifar10(tmp_path / "raw" / "cifar-10-batches-py")
    with pytest.raises(CorruptFileError, match="damaged or not the official release"):
        prepare("cifar10", tmp_path / "cache.pt", root=tmp_path / "raw")
    assert not (tmp_path / "cache.pt").exists()


def test_truncated_idx_file_is_refused(tmp_path):
    write_mnist_like(tmp_path / "raw", compress=False)
    images = tmp_path / "raw" / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-100])
    with pytest.raises(CorruptFileError, match="could not read the mnist files"):
        prepare("mnist", tmp_path / "cache.pt", root=tmp_path / "raw")


def test_synthetic_is_seeded_uint8_and_balanced(tmp_path):
    options = {"n_train": 60, "n_test": 30, "shape": [2, 5, 5], "num_classes": 3, "seed": 7}
    for out in ("a.pt", "b.pt"):
        prepare("synthetic", tmp_path / out, synthetic_options=options)
    prepare("synthetic", tmp_path / "other.pt", synthetic_options={**options, "seed": 8})
    a, b, other = (load_torch(tmp_path / f) for f in ("a.pt", "b.pt", "other.pt"))
    assert a["train_x"].shape == (60, 2, 5, 5) and a["train_x"].dtype == torch.uint8
    assert a["test_x"].shape == (30, 2, 5, 5)
    assert a["train_y"].bincount().tolist() == [20, 20, 20]
    assert all(torch.equal(a[k], b[k]) for k in ("train_x", "train_y", "test_x", "test_y"))
    assert not torch.equal(a["train_x"], other["train_x"])
    splits = load(tmp_path / "a.pt", val_size=10)
    assert splits.num_classes == 3 and splits.input_shape == (2, 5, 5) and not splits.augment


def test_prepare_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown synthetic option.*noise; allowed: n_train"):
        prepare("synthetic", tmp_path / "c.pt", synthetic_options={"noise": 1})
    with pytest.raises(ValueError, match="synthetic shape"):
        prepare("synthetic", tmp_path / "c.pt", synthetic_options={"shape": [8, 8]})
    with pytest.raises(ValueError, match="synthetic n_train=1 must be an integer >= 2"):
        prepare("synthetic", tmp_path / "c.pt", synthetic_options={"n_train": 1})
    with pytest.raises(ValueError, match="only for dataset 'synthetic', not 'mnist'"):
        prepare("mnist", tmp_path / "c.pt", synthetic_options={})
    with pytest.raises(ValueError, match="generated by prepare"):
        locate("synthetic")


# ---------------------------------------------------------------------------- locating


def test_locate_prefers_root_then_lotto_data_then_system(tmp_path, monkeypatch):
    root, env = tmp_path / "root", tmp_path / "env"
    system = DATASETS["fashion_mnist"].system_dirs[0]
    write_mnist_like(root / "FashionMNIST" / "raw", compress=False)
    write_mnist_like(env / "FashionMNIST" / "raw", compress=False)
    system_arrays = write_mnist_like(system, seed=3)  # the Debian layout: .gz files, flat
    monkeypatch.setenv("LOTTO_DATA", str(env))

    assert locate("fashion_mnist", root=root) == root
    assert locate("fashion_mnist") == env
    monkeypatch.delenv("LOTTO_DATA")
    staged = locate("fashion_mnist")
    assert staged.is_relative_to(tmp_path / "xdg-cache" / "lotto" / "staged")
    prepare("fashion_mnist", tmp_path / "cache.pt")
    assert_cache_matches(load_torch(tmp_path / "cache.pt"), system_arrays, "fashion_mnist", 10)


def test_locate_finds_conventional_subfolder_of_lotto_data(tmp_path, monkeypatch):
    """LOTTO_DATA may point at a tree like /usr/share/datasets holding `mnist/`, `cifar-10/`."""
    write_mnist_like(tmp_path / "datasets" / "mnist")
    monkeypatch.setenv("LOTTO_DATA", str(tmp_path / "datasets"))
    base = locate("mnist")
    assert (base / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file()


def test_staging_is_reused_and_redone_when_sources_change(tmp_path):
    write_mnist_like(tmp_path / "raw", seed=0)
    first = locate("mnist", root=tmp_path / "raw")
    assert locate("mnist", root=tmp_path / "raw") == first
    newer = write_mnist_like(tmp_path / "raw", seed=1, n_train=31)
    second = locate("mnist", root=tmp_path / "raw")
    assert second != first
    prepare("mnist", tmp_path / "cache.pt", root=tmp_path / "raw")
    assert_cache_matches(load_torch(tmp_path / "cache.pt"), newer, "mnist", 10)


def test_not_found_lists_every_place_and_the_fixes(tmp_path, monkeypatch):
    monkeypatch.setenv("LOTTO_DATA", str(tmp_path / "env"))
    # three of the four files: an incomplete directory does not count as found
    write_mnist_like(tmp_path / "root")
    os.remove(tmp_path / "root" / "t10k-labels-idx1-ubyte.gz")
    with pytest.raises(DataNotFoundError) as caught:
        locate("fashion_mnist", root=tmp_path / "root")
    message = str(caught.value)
    assert isinstance(caught.value, FileNotFoundError)
    places = [
        tmp_path / "root",
        tmp_path / "root" / "fashion-mnist",
        tmp_path / "env",
        tmp_path / "env" / "fashion-mnist",
        DATASETS["fashion_mnist"].system_dirs[0],
        tmp_path / "xdg-cache" / "lotto" / "data",
    ]
    positions = [message.index(f"  {p}  (") for p in places]
    assert positions == sorted(positions), message
    for fix in ("apt-get install dataset-fashion-mnist", "LOTTO_DATA", "dataset.download: true"):
        assert fix in message


def test_failed_download_is_reported(tmp_path, monkeypatch):
    """With download allowed, torchvision's own download runs; its failure joins the report."""
    monkeypatch.setattr(torchvision.datasets.MNIST, "mirrors", ["http://127.0.0.1:9/"])
    with pytest.raises(DataNotFoundError, match=r"(?s)Looked in.*Downloading into .*root failed"):
        locate("mnist", root=tmp_path / "root", download=True)


# ---------------------------------------------------------------------------- splits


def test_validation_split_is_deterministic_and_disjoint(tmp_path):
    write_cache(tmp_path / "c.pt", n_train=200, identify=True)
    a = load(tmp_path / "c.pt", val_size=50)
    torch.manual_seed(123)  # the experiment's seed must not move the split
    b = load(tmp_path / "c.pt", val_size=50)
    other = load(tmp_path / "c.pt", val_size=50, split_seed=1)

    assert (len(a.train_x), len(a.val_x), len(a.test_x)) == (150, 50, 50)
    assert torch.equal(a.val_x, b.val_x) and torch.equal(a.train_x, b.train_x)
    val, train = set(a.val_y.tolist()), set(a.train_y.tolist())
    assert not val & train and val | train == set(range(200))
    assert val != set(other.val_y.tolist())
    assert not rows(a.val_x) & rows(a.train_x)


def test_standardised_with_training_portion_statistics(tmp_path):
    cache = write_cache(tmp_path / "c.pt", n_train=300, shape=(3, 6, 6), identify=True)
    splits = load(tmp_path / "c.pt", val_size=40)
    assert splits.train_x.dtype == torch.float32 and splits.input_shape == (3, 6, 6)
    zeros, ones = torch.zeros(3), torch.ones(3)
    torch.testing.assert_close(splits.train_x.mean(dim=(0, 2, 3)), zeros, atol=1e-5, rtol=0)
    torch.testing.assert_close(splits.train_x.std(dim=(0, 2, 3), correction=0), ones)
    # validation and test images are scaled with the training portion's statistics
    raw_train = cache["train_x"][splits.train_y].double()
    std, mean = torch.std_mean(raw_train, dim=(0, 2, 3), correction=0, keepdim=True)
    expected_test = ((cache["test_x"].double() - mean) / std).float()
    torch.testing.assert_close(splits.test_x, expected_test)
    expected_val = ((cache["train_x"][splits.val_y].double() - mean) / std).float()
    torch.testing.assert_close(splits.val_x, expected_val)


def test_labels_keep_classes_and_original_ids(tmp_path):
    cache = write_cache(tmp_path / "c.pt", n_train=300)
    full = load(tmp_path / "c.pt", val_size=60)
    low = load(tmp_path / "c.pt", val_size=60, labels=[0, 1, 2, 3, 4])
    for part in ("train", "val", "test"):
        y, y_full = getattr(low, f"{part}_y"), getattr(full, f"{part}_y")
        assert set(y.tolist()) <= {0, 1, 2, 3, 4} and len(y) > 0
        assert len(y) == int((y_full < 5).sum())
        assert rows(getattr(low, f"{part}_x")) == rows(getattr(full, f"{part}_x")[y_full < 5])
    assert low.num_classes == 10 and int(cache["test_y"].max()) >= 5


def test_halves_are_fixed_disjoint_and_cover_the_training_portion(tmp_path):
    write_cache(tmp_path / "c.pt", n_train=201)
    full = load(tmp_path / "c.pt", val_size=50)
    h0 = load(tmp_path / "c.pt", val_size=50, half=0)
    h1 = load(tmp_path / "c.pt", val_size=50, half=1)
    assert (len(h0.train_x), len(h1.train_x)) == (75, 76)
    assert not rows(h0.train_x) & rows(h1.train_x)
    assert rows(h0.train_x) | rows(h1.train_x) == rows(full.train_x)
    assert torch.equal(h0.val_x, full.val_x) and torch.equal(h1.test_x, full.test_x)
    assert torch.equal(load(tmp_path / "c.pt", val_size=50, half=0).train_x, h0.train_x)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"val_size": 100}, r"val_size=100 must be an integer in \[0, 100\)"),
        ({"val_size": -1}, r"val_size=-1"),
        ({"half": 2}, "half=2 must be 0, 1 or None"),
        ({"labels": [3, 10]}, r"labels=\[3, 10\] must be a non-empty list of class ids in 0..9"),
        ({"labels": []}, "non-empty"),
    ],
)
def test_load_argument_errors(tmp_path, kwargs, message):
    write_cache(tmp_path / "c.pt", n_train=100)
    with pytest.raises(ValueError, match=message):
        load(tmp_path / "c.pt", **{"val_size": 10, **kwargs})


def test_load_refuses_a_file_that_is_not_a_prepared_dataset(tmp_path):
    save_torch(tmp_path / "c.pt", {"train_x": torch.zeros(3)})
    with pytest.raises(CorruptFileError, match="not a prepared dataset"):
        load(tmp_path / "c.pt")


# ---------------------------------------------------------------------------- augmentation


def _augmentations(image: torch.Tensor, pad: int = 4) -> dict[tuple[bool, int, int], torch.Tensor]:
    """Every flip/crop of one image, computed the slow obvious way, keyed by (flip, top, left)."""
    h, w = image.shape[1:]
    out = {}
    for flip in (False, True):
        source = image.flip(2) if flip else image
        padded = torch.zeros(image.shape[0], h + 2 * pad, w + 2 * pad)
        padded[:, pad : pad + h, pad : pad + w] = source
        for top in range(2 * pad + 1):
            for left in range(2 * pad + 1):
                out[flip, top, left] = padded[:, top : top + h, left : left + w]
    return out


def test_augment_batch_flips_and_crops_every_image():
    x = torch.rand(64, 3, 8, 8, generator=torch.Generator().manual_seed(0)) + 1  # no zeros
    out = augment_batch(x, torch.Generator().manual_seed(1))
    assert out.shape == x.shape and out.dtype == x.dtype
    used = []
    for image, augmented in zip(x, out, strict=True):
        matches = [k for k, v in _augmentations(image).items() if torch.equal(v, augmented)]
        assert len(matches) == 1
        used.append(matches[0])
    assert {flip for flip, _, _ in used} == {False, True}
    assert len({(top, left) for _, top, left in used}) > 20


def test_augment_batch_is_deterministic_given_the_generator():
    x = torch.rand(16, 3, 8, 8)
    a = augment_batch(x, torch.Generator().manual_seed(5))
    b = augment_batch(x, torch.Generator().manual_seed(5))
    c = augment_batch(x, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_augment_batch_errors():
    with pytest.raises(ValueError, match=r"expects \(N, C, H, W\)"):
        augment_batch(torch.zeros(3, 8, 8), torch.Generator())
    with pytest.raises(ValueError, match="generator is on cpu but x is on meta"):
        augment_batch(torch.zeros(2, 1, 8, 8, device="meta"), torch.Generator())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_augment_batch_on_cuda_matches_itself_and_keeps_the_device():
    x = torch.rand(32, 3, 32, 32, device="cuda")
    a = augment_batch(x, torch.Generator(device="cuda").manual_seed(0))
    b = augment_batch(x, torch.Generator(device="cuda").manual_seed(0))
    assert a.device == x.device and torch.equal(a, b)
    assert any(torch.equal(v.cuda(), a[0]) for v in _augmentations(x[0].cpu()).values())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_load_onto_cuda(tmp_path):
    write_cache(tmp_path / "c.pt", n_train=100)
    cpu = load(tmp_path / "c.pt", val_size=20, half=1, labels=[1, 2])
    gpu = load(tmp_path / "c.pt", val_size=20, half=1, labels=[1, 2], device="cuda")
    assert gpu.train_x.is_cuda and gpu.test_y.is_cuda
    torch.testing.assert_close(gpu.train_x.cpu(), cpu.train_x)
    assert torch.equal(gpu.val_y.cpu(), cpu.val_y)


# ---------------------------------------------------------------------------- the real data


@pytest.mark.skipif(not REAL_FASHION_MNIST.is_dir(), reason="dataset-fashion-mnist not installed")
def test_real_fashion_mnist_from_the_debian_package(tmp_path, monkeypatch):
    monkeypatch.setitem(DATASETS, "fashion_mnist", ORIGINAL_DATASETS["fashion_mnist"])
    prepare("fashion_mnist", tmp_path / "fashion.pt")
    start = time.perf_counter()
    splits = load(tmp_path / "fashion.pt")
    elapsed = time.perf_counter() - start
    print(f"load(fashion_mnist cache) took {elapsed:.3f} s")
    assert (len(splits.train_x), len(splits.val_x), len(splits.test_x)) == (55000, 5000, 10000)
    assert splits.input_shape == (1, 28, 28) and splits.num_classes == 10
    assert torch.bincount(splits.test_y).tolist() == [1000] * 10
