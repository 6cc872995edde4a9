"""Datasets: find the raw files, convert them once into a tensor cache, load splits fast.

`prepare` reads a dataset in its real on-disk format through torchvision's dataset class
(IDX files for MNIST/Fashion-MNIST, pickled batches for CIFAR) and writes one cache file of
uint8 images (N, C, H, W) and int64 labels. `load` turns that cache into standardised float32
train/validation/test tensors on a device; training gathers batches from them by index and
augments whole batches with `augment_batch`. torchvision is imported only by `prepare`,
because importing it takes seconds and training jobs only need `load`.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lotto.core.errors import InvalidValue, UserError
from lotto.core.io import CorruptFileError, load_torch, save_torch
from lotto.core.spec_types import DATASET_FACTS, SYNTHETIC_DEFAULTS, TORCHVISION_PREFIX

SYSTEM_DATA_DIR = Path("/usr/share/datasets")
_IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_CACHE_KEYS = ("name", "num_classes", "train_x", "train_y", "test_x", "test_y")
# pixel noise std (pixels in [0, 1]): with the defaults an MLP reaches ~80% test accuracy in
# ~100 steps and then overfits, so early stopping and pruning have something to show
_SYNTHETIC_NOISE = 0.8


class DataNotFoundError(UserError, FileNotFoundError):
    """No raw files for a dataset anywhere we looked; the message lists the places and fixes."""


@dataclass(frozen=True)
class DatasetInfo:
    """What lotto needs to know about one dataset to find, read and train on it."""

    name: str
    torchvision_class: str | None  # None: generated, no raw files
    torchvision_subdir: str = ""  # where torchvision expects the files below its root
    files: tuple[str, ...] = ()
    gz_allowed: bool = False  # files may lie flat as `<file>.gz` (the Debian packages' layout)
    folder: str = ""  # conventional directory name, searched below `root` and $LOTTO_DATA
    system_dirs: tuple[Path, ...] = ()
    install_hint: str = ""

    @property
    def num_classes(self) -> int:
        return DATASET_FACTS[self.name]["num_classes"]

    @property
    def augment(self) -> bool:
        """Random flip + pad-and-crop during training by default (the papers' CIFAR recipe)."""
        return DATASET_FACTS[self.name]["augment"]


DATASETS: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo(
        name="mnist",
        torchvision_class="MNIST",
        torchvision_subdir="MNIST/raw",
        files=_IDX_FILES,
        gz_allowed=True,
        folder="mnist",
        system_dirs=(SYSTEM_DATA_DIR / "mnist",),
    ),
    "fashion_mnist": DatasetInfo(
        name="fashion_mnist",
        torchvision_class="FashionMNIST",
        torchvision_subdir="FashionMNIST/raw",
        files=_IDX_FILES,
        gz_allowed=True,
        folder="fashion-mnist",
        system_dirs=(SYSTEM_DATA_DIR / "fashion-mnist",),
        install_hint="apt-get install dataset-fashion-mnist (puts the files in "
        "/usr/share/datasets/fashion-mnist)",
    ),
    "cifar10": DatasetInfo(
        name="cifar10",
        torchvision_class="CIFAR10",
        torchvision_subdir="cifar-10-batches-py",
        files=(*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta"),
        folder="cifar-10",
        system_dirs=(SYSTEM_DATA_DIR / "cifar-10",),
    ),
    "cifar100": DatasetInfo(
        name="cifar100",
        torchvision_class="CIFAR100",
        torchvision_subdir="cifar-100-python",
        files=("train", "test", "meta"),
        folder="cifar-100",
        system_dirs=(SYSTEM_DATA_DIR / "cifar-100",),
    ),
    "synthetic": DatasetInfo(
        name="synthetic",
        torchvision_class=None,
    ),
}


def dataset_info(name: str) -> DatasetInfo:
    """The registry entry for `name`, or an error listing the registered names."""
    if name not in DATASETS:
        raise InvalidValue(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    return DATASETS[name]


# ---------------------------------------------------------------------------- locating files


def _cache_home() -> Path:
    """lotto's per-user cache directory ($XDG_CACHE_HOME/lotto, else ~/.cache/lotto)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "lotto"


def _has_torchvision_layout(info: DatasetInfo, base: Path) -> bool:
    return all((base / info.torchvision_subdir / f).is_file() for f in info.files)


def _flat_sources(info: DatasetInfo, directory: Path) -> dict[str, Path] | None:
    """Each required file (or its .gz) lying directly in `directory`, or None if one is missing."""
    found = {}
    for f in info.files:
        candidates = [directory / f] + ([directory / f"{f}.gz"] if info.gz_allowed else [])
        present = [c for c in candidates if c.is_file()]
        if not present:
            return None
        found[f] = present[0]
    return found


def _stage(info: DatasetInfo, sources: dict[str, Path]) -> Path:
    """Arrange flat files in torchvision's layout under the cache; return torchvision's root.

    Plain files are symlinked; `.gz` files are decompressed, since torchvision's IDX reader
    opens the uncompressed names. The staging directory is keyed by the sources' paths, sizes
    and modification times, so changed sources are staged afresh, and it appears atomically
    (built under a temporary name, then renamed), so concurrent jobs never see half of it.
    """
    fingerprint = hashlib.sha256()
    for f, src in sorted(sources.items()):
        stat = src.stat()
        fingerprint.update(f"{f}={src.resolve()}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    parent = _cache_home() / "staged"
    final = parent / f"{info.name}-{fingerprint.hexdigest()[:16]}"
    if _has_torchvision_layout(info, final):
        return final
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=parent))
    try:
        target_dir = tmp / info.torchvision_subdir
        target_dir.mkdir(parents=True)
        for f, src in sources.items():
            if src.name.endswith(".gz"):
                with gzip.open(src, "rb") as fin, open(target_dir / f, "wb") as fout:
                    shutil.copyfileobj(fin, fout)
            else:
                (target_dir / f).symlink_to(src.resolve())
        try:
            tmp.rename(final)
        except OSError:  # another job staged the same sources first, or a stale partial dir
            if not _has_torchvision_layout(info, final):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _search_places(info: DatasetInfo, root: str | os.PathLike | None) -> list[tuple[Path, str]]:
    """Directories to search, in order, each with where it came from."""
    places: list[tuple[Path, str]] = []
    if root is not None:
        r = Path(root).expanduser()
        places += [(r, "dataset.root"), (r / info.folder, "dataset.root")]
    env = os.environ.get("LOTTO_DATA")
    if env:
        e = Path(env).expanduser()
        places += [(e, "$LOTTO_DATA"), (e / info.folder, "$LOTTO_DATA")]
    places += [(d, "system location") for d in info.system_dirs]
    places.append((_cache_home() / "data", "lotto's download cache"))
    return places


def locate(name: str, root: str | os.PathLike | None = None, download: bool = False) -> Path:
    """The directory to pass as torchvision's `root` for dataset `name`.

    Searched in order: `root`, $LOTTO_DATA, the system location (e.g. Debian's
    /usr/share/datasets/fashion-mnist), lotto's download cache. A directory matches if it
    holds torchvision's layout (e.g. `FashionMNIST/raw/<files>`, `cifar-10-batches-py/<files>`)
    or the files directly (Debian's layout, `.gz` allowed for IDX), which are then staged into
    torchvision's layout under the cache. A conventional subfolder (`fashion-mnist`, `mnist`,
    `cifar-10`, `cifar-100`) of `root` and $LOTTO_DATA is searched too. If nothing is found and
    `download` is true, torchvision downloads into `root`, else $LOTTO_DATA, else the cache.
    """
    info = dataset_info(name)
    if info.torchvision_class is None:
        raise InvalidValue(f"dataset {name!r} is generated by prepare(); it has no raw files")
    places = _search_places(info, root)
    for directory, _origin in places:
        if _has_torchvision_layout(info, directory):
            return directory
        sources = _flat_sources(info, directory)
        if sources is not None:
            return _stage(info, sources)

    env = os.environ.get("LOTTO_DATA")
    download_root = Path(root or env or _cache_home() / "data").expanduser()
    failure = ""
    if download:
        try:
            _torchvision_class(info)(download_root, train=True, download=True)
            _torchvision_class(info)(download_root, train=False, download=True)
        except Exception as err:  # torchvision raises RuntimeError, URLError, OSError, ...
            failure = f"\nDownloading into {download_root} failed: {err}"
        else:
            return download_root
    raise DataNotFoundError(_not_found_message(info, places, download, download_root) + failure)


def _not_found_message(
    info: DatasetInfo, places: list[tuple[Path, str]], download: bool, download_root: Path
) -> str:
    names = ", ".join(f + ("[.gz]" if info.gz_allowed else "") for f in info.files)
    lines = [
        f"raw files for dataset {info.name!r} not found. Looked in, in order:",
        *(f"  {directory}  ({origin})" for directory, origin in places),
        f"Each directory may hold {info.torchvision_subdir}/<files> (torchvision's layout) "
        f"or the files directly: {names}.",
        "To get the data:",
    ]
    if info.install_hint:
        lines.append(f"  - {info.install_hint}")
    lines.append("  - put the files in a directory and set LOTTO_DATA=<dir> or dataset.root")
    if not download:
        lines.append(
            f"  - or set dataset.download: true to let torchvision download into {download_root}"
        )
    return "\n".join(lines)


def _torchvision_class(info: DatasetInfo) -> Any:
    import torchvision.datasets

    return getattr(torchvision.datasets, info.torchvision_class)


# ---------------------------------------------------------------------------- preparing


def prepare(
    name: str,
    out: str | os.PathLike,
    *,
    root: str | os.PathLike | None = None,
    download: bool = False,
    synthetic_options: dict[str, Any] | None = None,
    torchvision_options: dict[str, Any] | None = None,
) -> None:
    """Read dataset `name` once and write its tensor cache to `out` (atomically, checksummed).
    A name 'torchvision:<Class>' is read through that class with `torchvision_options`."""
    if name.startswith(TORCHVISION_PREFIX):
        save_torch(out, _read_torchvision_class(name, root, torchvision_options or {}))
        return
    info = dataset_info(name)
    if info.torchvision_class is None:
        cache = _make_synthetic(**_synthetic_settings(synthetic_options))
    else:
        if synthetic_options is not None:
            raise InvalidValue(f"synthetic_options are only for dataset 'synthetic', not {name!r}")
        cache = _read_torchvision(info, locate(name, root=root, download=download))
    save_torch(out, cache)


def _read_torchvision(info: DatasetInfo, base: Path) -> dict[str, Any]:
    cls = _torchvision_class(info)
    try:
        train, test = cls(base, train=True), cls(base, train=False)
    # the files exist (locate saw them), so these mean damaged or foreign content; for CIFAR,
    # torchvision's RuntimeError means the files failed its md5 check against the release
    except (
        RuntimeError,
        ValueError,
        TypeError,
        AssertionError,
        EOFError,
        pickle.PickleError,
    ) as err:
        raise CorruptFileError(
            f"{base / info.torchvision_subdir}: torchvision could not read the {info.name} files "
            f"({err}); they are damaged or not the official release. Replace them with the "
            "original files (or delete them and set dataset.download: true)."
        ) from err
    cache: dict[str, Any] = {"name": info.name, "num_classes": info.num_classes}
    for split, ds in (("train", train), ("test", test)):
        images = torch.as_tensor(ds.data)
        # IDX images are (N, H, W); CIFAR's are (N, H, W, C): store both as (N, C, H, W)
        images = images.unsqueeze(1) if images.ndim == 3 else images.permute(0, 3, 1, 2)
        cache[f"{split}_x"] = images.contiguous()
        cache[f"{split}_y"] = torch.as_tensor(ds.targets, dtype=torch.int64)
    return cache


def _read_torchvision_class(name: str, root: str | os.PathLike | None, options: dict[str, Any]) -> dict[str, Any]:
    """Both splits of a torchvision dataset class, each built with its keyword arguments from
    `options` ('train', 'test'), checked against the stated num_classes, shape and train_size."""
    import torchvision.datasets
    from torchvision.transforms.v2.functional import pil_to_tensor

    class_name = name.removeprefix(TORCHVISION_PREFIX)
    cls = getattr(torchvision.datasets, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, torch.utils.data.Dataset)):
        known = sorted(n for n in dir(torchvision.datasets) if n[:1].isupper())
        raise InvalidValue(f"dataset {name!r}: torchvision.datasets has no dataset class {class_name!r}; "
                           f"it has: {', '.join(known)}")
    missing = [k for k in ("num_classes", "shape", "train_size") if k not in options]
    if missing:
        raise InvalidValue(f"dataset {name!r}: torchvision options lack {', '.join(missing)}")
    if root is None or not Path(root).is_dir():
        raise DataNotFoundError(f"dataset {name!r}: dataset.root {root!r} is not a folder; give the folder "
                                f"torchvision.datasets.{class_name} reads its files from")
    shape, num_classes = tuple(options["shape"]), int(options["num_classes"])
    cache: dict[str, Any] = {"name": name, "num_classes": num_classes}
    for split, default in (("train", {"train": True}), ("test", {"train": False})):
        kwargs = dict(options.get(split, default))
        try:
            ds = cls(str(root), **kwargs)
        except (RuntimeError, OSError, ValueError, TypeError) as err:  # torchvision's "not found" is a RuntimeError
            raise DataNotFoundError(f"torchvision.datasets.{class_name}({str(root)!r}, **{kwargs}) failed: {err}. "
                                    "Put the dataset's files where that class looks for them under dataset.root, "
                                    "or fix the split's arguments (dataset.torchvision.train/test)") from err
        images, labels = [], []
        for i in range(len(ds)):
            image, label = ds[i]
            image = pil_to_tensor(image) if not isinstance(image, torch.Tensor) else image
            if tuple(image.shape) != shape or image.dtype != torch.uint8:
                raise InvalidValue(f"{name} {split} example {i}: a {image.dtype} image of shape {tuple(image.shape)}; "
                                   f"dataset.torchvision.shape says uint8 {list(shape)}")
            images.append(image)
            labels.append(int(label))
        y = torch.tensor(labels, dtype=torch.int64)
        if len(y) == 0 or not 0 <= int(y.min()) <= int(y.max()) < num_classes:
            raise InvalidValue(f"{name} {split}: labels {sorted(set(labels))[:5]}... are not classes "
                               f"0..{num_classes - 1} (dataset.torchvision.num_classes)")
        if split == "train" and len(y) != options["train_size"]:
            raise InvalidValue(f"{name}: the training split has {len(y)} examples; set "
                               f"dataset.torchvision.train_size: {len(y)} (it says {options['train_size']})")
        cache[f"{split}_x"], cache[f"{split}_y"] = torch.stack(images), y
    return cache


def _synthetic_settings(options: dict[str, Any] | None) -> dict[str, Any]:
    """SYNTHETIC_DEFAULTS overridden by `options`, checked."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(SYNTHETIC_DEFAULTS))
    if unknown:
        raise InvalidValue(
            f"unknown synthetic option(s) {', '.join(unknown)}; "
            f"allowed: {', '.join(SYNTHETIC_DEFAULTS)}"
        )
    settings = {**SYNTHETIC_DEFAULTS, **options}
    shape = tuple(settings["shape"])
    if len(shape) != 3 or not all(isinstance(s, int) and s >= 1 for s in shape):
        raise InvalidValue(f"synthetic shape {list(shape)} must be 3 positive integers (C, H, W)")
    minimums = {"n_train": 2, "n_test": 1, "num_classes": 2, "seed": 0}
    for key, minimum in minimums.items():
        value = settings[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise InvalidValue(f"synthetic {key}={value!r} must be an integer >= {minimum}")
    return {**settings, "shape": shape}


def _make_synthetic(
    n_train: int, n_test: int, shape: tuple[int, int, int], num_classes: int, seed: int
) -> dict[str, Any]:
    """Class prototypes plus Gaussian pixel noise, quantised to uint8 like a real image set."""
    generator = torch.Generator().manual_seed(seed)
    prototypes = torch.rand(num_classes, *shape, generator=generator)
    cache: dict[str, Any] = {"name": "synthetic", "num_classes": num_classes}
    for split, n in (("train", n_train), ("test", n_test)):
        labels = torch.arange(n) % num_classes  # balanced classes
        labels = labels[torch.randperm(n, generator=generator)]
        noise = torch.randn(n, *shape, generator=generator) * _SYNTHETIC_NOISE
        pixels = (prototypes[labels] + noise).clamp(0, 1)
        cache[f"{split}_x"] = (pixels * 255).round().to(torch.uint8)
        cache[f"{split}_y"] = labels
    return cache


# ---------------------------------------------------------------------------- loading


@dataclass
class Splits:
    """Standardised float32 images and int64 labels of one dataset, on one device."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    input_shape: tuple[int, int, int]
    augment: bool

    @property
    def device(self) -> torch.device:
        return self.train_x.device


def _read_cache(cache: str | os.PathLike) -> dict[str, Any]:
    data = load_torch(cache)
    missing = [k for k in _CACHE_KEYS if not isinstance(data, dict) or k not in data]
    if missing:
        raise CorruptFileError(
            f"{cache}: not a prepared dataset (missing {', '.join(missing)}); "
            "delete it and rerun the workflow to rebuild it"
        )
    return data


def load(
    cache: str | os.PathLike,
    *,
    val_size: int = 5000,
    split_seed: int = 0,
    device: str | torch.device = "cpu",
    labels: list[int] | None = None,
    half: int | None = None,
) -> Splits:
    """Split a prepared cache into train/validation/test and standardise it, on `device`.

    The validation set is `val_size` training examples chosen by a permutation drawn from
    `split_seed` alone, so every experiment seed sees the same split. Pixels are standardised
    with the per-channel mean and std of the whole training portion (after the hold-out, before
    `half`/`labels`), so transfer tasks see identically scaled inputs. `half` (0 or 1) keeps one
    of two fixed random halves of the training portion; `labels` keeps only those classes in
    every split, with their original ids (num_classes is unchanged, so models keep their shape).
    """
    data = _read_cache(cache)
    name = data["name"]
    num_classes = int(data["num_classes"])
    n = len(data["train_y"])
    if not isinstance(val_size, int) or not 0 <= val_size < n:
        raise InvalidValue(
            f"val_size={val_size!r} must be an integer in [0, {n}) for {name} "
            f"({n} training examples)"
        )
    if half not in (None, 0, 1):
        raise InvalidValue(f"half={half!r} must be 0, 1 or None")
    if half is not None and n - val_size < 2:
        raise InvalidValue(
            f"half needs >= 2 training examples; val_size={val_size} leaves {n - val_size}"
        )
    if labels is not None:
        bad = [lab for lab in labels if not isinstance(lab, int) or not 0 <= lab < num_classes]
        if not labels or bad:
            raise InvalidValue(
                f"labels={labels!r} must be a non-empty list of class ids in 0..{num_classes - 1}"
            )

    generator = torch.Generator().manual_seed(split_seed)
    val_idx, train_idx = holdout(n, val_size, generator)
    if half is not None:
        halves = torch.randperm(len(train_idx), generator=generator)
        chosen = halves[: len(halves) // 2] if half == 0 else halves[len(halves) // 2 :]
        train_idx = train_idx[chosen.sort().values]

    images, targets = data["train_x"].to(device), data["train_y"].to(device)
    held_out = _channel_histogram(images[val_idx.to(device)])
    mean, std = _channel_stats(_channel_histogram(images) - held_out)
    wanted = None if labels is None else torch.tensor(labels, device=targets.device)

    def standardised(x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor | None):
        """The examples `idx` (all if None) of the wanted classes, as standardised float32."""
        if idx is not None:
            x, y = x[idx.to(device)], y[idx.to(device)]
        if wanted is not None:
            keep = torch.isin(y, wanted)
            x, y = x[keep], y[keep]
        return x.float().sub_(mean).div_(std), y

    train_x, train_y = standardised(images, targets, train_idx)
    val_x, val_y = standardised(images, targets, val_idx)
    test_x, test_y = standardised(data["test_x"].to(device), data["test_y"].to(device), None)
    return Splits(
        train_x=train_x,
        train_y=train_y,
        val_x=val_x,
        val_y=val_y,
        test_x=test_x,
        test_y=test_y,
        num_classes=num_classes,
        input_shape=tuple(train_x.shape[1:]),
        augment=DATASETS[name].augment if name in DATASETS else False,
    )


def holdout(n: int, val_size: int, seed: int | torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted (validation, training) positions of `n` training examples: `val_size` held out by a
    permutation drawn from `seed` alone (on the CPU), so every experiment seed and every device
    sees the same split. A generator is used as is, and goes on drawing afterwards."""
    generator = seed if isinstance(seed, torch.Generator) else torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=generator)
    return order[:val_size].sort().values, order[val_size:].sort().values


def epoch_permutation(seed: int, epoch: int, n: int) -> torch.Tensor:
    """The order in which `seed` visits `n` training examples in `epoch` (on the CPU): a function
    of (seed, epoch) only, shared by resident (lotto.core.train.BatchSchedule) and streamed data."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


def _channel_histogram(images: torch.Tensor) -> torch.Tensor:
    """(C, 256) counts of each uint8 value per channel of (N, C, H, W) images."""
    channels = images.shape[1]
    return torch.stack(
        [torch.bincount(images[:, c].flatten(), minlength=256) for c in range(channels)]
    )


def _channel_stats(histogram: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std, shaped (1, C, 1, 1), from value counts.

    Exact (float64 sums of integer counts) and several times faster than a float reduction
    over the images, which matters because every training job pays for it.
    """
    counts = histogram.double()
    values = torch.arange(256, dtype=torch.float64, device=counts.device)
    total = counts.sum(dim=1)
    mean = (counts * values).sum(dim=1) / total
    var = ((counts * values**2).sum(dim=1) / total - mean**2).clamp_min(0)
    std = var.sqrt().clamp_min(1e-6)  # a constant channel (possible in synthetic data) stays finite
    shape = (1, -1, 1, 1)
    return mean.float().view(shape), std.float().view(shape)


# ---------------------------------------------------------------------------- augmentation


def augment_batch(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random horizontal flip and `pad`-pixel zero-pad random crop of every image in `x`.

    Vectorised: one flip mask, one padded copy, and one gather of all crops by index
    arithmetic. Deterministic given `generator`, which must live on x's device.
    """
    if x.ndim != 4:
        raise ValueError(f"augment_batch expects (N, C, H, W) images, got shape {tuple(x.shape)}")
    if generator.device.type != x.device.type:  # torch.Generator('cuda') reports no index
        raise ValueError(
            f"generator is on {generator.device} but x is on {x.device}; "
            "create it with torch.Generator(device=x.device)"
        )
    n, c, h, w = x.shape
    flip = torch.rand(n, generator=generator, device=x.device) < 0.5
    x = torch.where(flip.view(n, 1, 1, 1), x.flip(3), x)
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    top = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=x.device)
    left = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=x.device)
    rows = (top.view(n, 1) + torch.arange(h, device=x.device)).view(n, 1, h, 1)
    cols = (left.view(n, 1) + torch.arange(w, device=x.device)).view(n, 1, 1, w)
    batch = torch.arange(n, device=x.device).view(n, 1, 1, 1)
    channel = torch.arange(c, device=x.device).view(1, c, 1, 1)
    return padded[batch, channel, rows, cols]
