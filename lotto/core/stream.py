"""The streamed data source: image folders read from disk batch by batch (beside lotto.core.data's
resident tensors, for datasets that do not fit in memory, such as ImageNet).

The prepare job writes an index once (lotto.core.image_folder.index: sorted files and labels,
never a copy of an image). A training job then reads, decodes and augments each batch:

- which examples: the permutation of epoch e is drawn from (seed, e) exactly as for resident
  data (lotto.core.data.epoch_permutation), and step s takes its slice. No iterator state: any step
  can be asked for first, so a replay to theta_k, a resume in the middle of an epoch and a
  re-run see the same examples;
- how augmented: each image's random-resized crop and flip come from a generator seeded by
  (seed, step, position in the batch), so they repeat too, whichever process decodes it;
- in several processes (lotto.core.distributed): each rank reads and decodes only its contiguous
  shard of the global batch (World.shard), its images keeping their positions in the global
  batch, so the ranks' shards together are the one-process batch, crops included; evaluation
  reads each rank's slice of a split;
- where decoded: in DataLoader worker processes (torchvision.io.decode_jpeg on the CPU,
  the augmented uint8 batch pinned and copied asynchronously), or, on a CUDA device, batched
  with nvjpeg on the device (workers then only read the files' bytes). Workers prefetch
  batches ahead of the step. Neither the worker count nor the decoder changes which
  examples or which crops a step sees.

Evaluation reads the split in order with the evaluation transform (resize the shorter side,
centre crop). Pixels are normalised with ImageNet's per-channel mean and std on the device.
"""

from __future__ import annotations

import math
import os
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from lotto.core import image_folder
from lotto.core.data import epoch_permutation, holdout
from lotto.core.errors import InvalidValue
from lotto.core.io import CorruptFileError, load_torch, save_torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CROP_SCALE = (0.08, 1.0)  # random-resized crop: fraction of the image's area
CROP_RATIO = (3 / 4, 4 / 3)  # and aspect ratio (the standard ImageNet recipe)
EVAL_IMAGES = 250  # images per evaluation batch
MAX_AUTO_WORKERS = 8


# ---------------------------------------------------------------------------- the index


def prepare(kind: str, root: str | os.PathLike, out: str | os.PathLike) -> dict[str, Any]:
    """Index the image folder `root` once into `out` (atomically, checksummed); report skips."""
    if kind not in image_folder.STREAMED:
        raise InvalidValue(f"unknown streamed dataset {kind!r}; choose one of: {', '.join(image_folder.STREAMED)}")
    index = image_folder.index(root, kind)
    save_torch(out, index)
    skipped = index["skipped"]
    print(f"indexed {root}: {len(index['classes'])} classes, {len(index['train_files'])} train and "
          f"{len(index['test_files'])} test images; {len(skipped)} file(s) skipped", file=sys.stderr)
    for path, reason in skipped:
        print(f"  skipped {path}: {reason}", file=sys.stderr)
    return index


def read_index(path: str | os.PathLike) -> dict[str, Any]:
    index = load_torch(path)
    if not isinstance(index, dict) or index.get("format") != image_folder.INDEX_FORMAT:
        raise CorruptFileError(f"{path}: not an image-folder index; delete it and rerun the workflow")
    return index


# ---------------------------------------------------------------------------- transforms


def item_generator(seed: int, step: int, position: int) -> torch.Generator:
    """The generator of one training image's augmentation: a function of (seed, step, position)."""
    return torch.Generator().manual_seed(((seed * 1_000_003 + step) * 65_537 + position) % 2**63)


def crop_box(height: int, width: int, generator: torch.Generator) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a random-resized crop: an area fraction in CROP_SCALE and an
    aspect ratio log-uniform in CROP_RATIO, ten tries, else the centre crop of the nearest ratio."""
    area = height * width
    log_lo, log_hi = math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])
    for _ in range(10):
        u = torch.rand(2, generator=generator, dtype=torch.float64).tolist()
        target = area * (CROP_SCALE[0] + u[0] * (CROP_SCALE[1] - CROP_SCALE[0]))
        ratio = math.exp(log_lo + u[1] * (log_hi - log_lo))
        w, h = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
            left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
            return top, left, h, w
    ratio = width / height
    if ratio < CROP_RATIO[0]:
        w, h = width, round(width / CROP_RATIO[0])
    elif ratio > CROP_RATIO[1]:
        h, w = height, round(height * CROP_RATIO[1])
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def train_view(image: torch.Tensor, generator: torch.Generator, size: int) -> torch.Tensor:
    """A random-resized crop of `image` (C, H, W) to size x size, flipped with probability 1/2."""
    from torchvision.transforms.v2 import functional as tvf

    top, left, h, w = crop_box(image.shape[-2], image.shape[-1], generator)
    flip = bool(torch.rand(1, generator=generator) < 0.5)
    view = tvf.resized_crop(image, top, left, h, w, [size, size], antialias=True)
    return view.flip(-1) if flip else view


def eval_view(image: torch.Tensor, size: int, resize: int) -> torch.Tensor:
    """The shorter side resized to `resize`, then the centre size x size crop."""
    from torchvision.transforms.v2 import functional as tvf

    return tvf.center_crop(tvf.resize(image, [resize], antialias=True), [size, size])


def decode(data: list[torch.Tensor], paths: list[Path], device: torch.device) -> list[torch.Tensor]:
    """RGB uint8 images (C, H, W) from JPEG bytes, on `device` (nvjpeg on a CUDA device)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    with warnings.catch_warnings():  # torchvision 0.29 announces TorchCodec on every call
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
        except RuntimeError:
            pass
        images = []  # find the culprit, one by one
        for one, path in zip(data, paths, strict=True):
            try:
                images.append(decode_jpeg(one, mode=ImageReadMode.RGB, device=device))
            except RuntimeError as err:
                raise CorruptFileError(f"{path}: not a decodable JPEG ({err}); delete or replace it "
                                       "and re-run the dataset's prepare job") from err
        return images


# ---------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class View:
    """How images become a split's inputs."""

    size: int
    resize: int
    augment: bool  # random-resized crop + flip (training); else the evaluation transform
    seed: int = 0


class _Files(torch.utils.data.Dataset):
    """Map-style reader run by DataLoader workers: key (step, position, index) -> one image.

    `step` is None for evaluation. With `decode_here` False it returns the file's bytes
    (decoded later, batched on the device)."""

    def __init__(self, root: Path, files: list[str], labels: torch.Tensor, view: View, decode_here: bool):
        self.root, self.files, self.labels, self.view, self.decode_here = root, files, labels, view, decode_here

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, key: tuple[int | None, int, int]) -> tuple[torch.Tensor, int, tuple]:
        from torchvision.io import read_file

        step, position, index = key
        path = self.root / self.files[index]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # as in decode()
            data = read_file(str(path))
        if not self.decode_here:
            return data, int(self.labels[index]), key
        return transform([decode([data], [path], torch.device("cpu"))[0]], [key], self.view)[0], \
            int(self.labels[index]), key


def transform(images: list[torch.Tensor], keys: list[tuple], view: View) -> list[torch.Tensor]:
    """Each decoded image turned into an input: augmented by its key, or the evaluation view."""
    if view.augment:
        return [train_view(img, item_generator(view.seed, step, pos), view.size)
                for img, (step, pos, _) in zip(images, keys, strict=True)]
    return [eval_view(img, view.size, view.resize) for img in images]


def _collate(items: list[tuple[torch.Tensor, int, tuple]]) -> tuple[Any, torch.Tensor, list[tuple]]:
    images, labels, keys = zip(*items, strict=True)
    same = all(img.shape == images[0].shape for img in images)
    return (torch.stack(images) if same else list(images)), torch.tensor(labels), list(keys)


class _Steps:
    """The training batch sampler: the keys of step first_step, first_step + 1, ... (endless),
    each step's restricted to `part` of the global batch (a rank's shard; all of it alone).
    It lives in the training process, so moving `first_step` re-aims persistent workers."""

    def __init__(self, n: int, batch_size: int, seed: int, part: slice = slice(None)):
        self.n, self.batch_size, self.seed, self.part = n, batch_size, seed, part
        self.per_epoch = max(1, n // batch_size)
        self.first_step = 0

    def keys(self, step: int, order: torch.Tensor) -> list[tuple[int, int, int]]:
        """(step, position in the global batch, index) of the examples of `part` of the batch."""
        pos = step % self.per_epoch
        chosen = order[pos * self.batch_size : (pos + 1) * self.batch_size].tolist()
        return [(step, j, chosen[j]) for j in range(self.batch_size)[self.part]]

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        step, epoch, order = self.first_step, -1, None
        while True:
            if step // self.per_epoch != epoch:
                epoch = step // self.per_epoch
                order = epoch_permutation(self.seed, epoch, self.n)
            yield self.keys(step, order)
            step += 1


class _InOrder:
    """The evaluation batch sampler: the split's examples `part` (all of them, or a rank's
    contiguous slice) in order."""

    def __init__(self, n: int, part: slice = slice(None)):
        self.indices = range(n)[part]

    def __len__(self) -> int:
        return math.ceil(len(self.indices) / EVAL_IMAGES)

    def __iter__(self) -> Iterator[list[tuple[None, int, int]]]:
        for start in range(0, len(self.indices), EVAL_IMAGES):
            chunk = self.indices[start : start + EVAL_IMAGES]
            yield [(None, j, i) for j, i in enumerate(chunk)]


@dataclass
class Reader:
    """Turns keys into normalised float32 batches on the device, through a DataLoader."""

    root: Path
    files: list[str]
    labels: torch.Tensor
    view: View
    device: torch.device
    workers: int
    decode_on_device: bool

    def loader(self, batch_sampler: Any) -> torch.utils.data.DataLoader:
        files = _Files(self.root, self.files, self.labels, self.view, decode_here=not self.decode_on_device)
        return torch.utils.data.DataLoader(
            files, batch_sampler=batch_sampler, num_workers=self.workers, collate_fn=_collate,
            # pinned: the uint8 batches cross to the device asynchronously (file bytes decoded there need not)
            pin_memory=self.device.type == "cuda" and not self.decode_on_device, persistent_workers=self.workers > 0,
            prefetch_factor=4 if self.workers > 0 else None,
        )

    def finish(self, batch: tuple[Any, torch.Tensor, list[tuple]]) -> tuple[torch.Tensor, torch.Tensor]:
        """A loader's batch as (normalised inputs, labels) on the device."""
        images, labels, keys = batch
        if self.decode_on_device:  # bytes: decode them all at once (nvjpeg), then transform each
            paths = [self.root / self.files[i] for _, _, i in keys]
            images = torch.stack(transform(decode(images, paths, self.device), keys, self.view))
        x = images.to(self.device, non_blocking=True).float()
        mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1) * 255
        std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1) * 255
        x = (x - mean) / std
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        return x, labels.to(self.device, non_blocking=True)


class StreamedBatches:
    """`batches(global_step)` for TrainingLoop: the batch of each step, the next ones prefetched
    by the workers. Asking for another step than the next restarts the sampler there."""

    def __init__(self, reader: Reader, batch_size: int, seed: int, part: slice = slice(None)):
        self.reader = reader
        self.steps = _Steps(len(reader.files), batch_size, seed, part)
        self._loader = reader.loader(self.steps)
        self._iterator: Iterator | None = None
        self._next = -1

    def __call__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._iterator is None or step != self._next:
            self.steps.first_step = step
            self._iterator = iter(self._loader)
        self._next = step + 1
        return self.reader.finish(next(self._iterator))


@dataclass
class StreamedSplit:
    """An evaluation split read from disk in order; len() is its size."""

    reader: Reader
    _loaders: dict = field(default_factory=dict, repr=False)  # one per part read (persistent workers)

    def __len__(self) -> int:
        return len(self.reader.files)

    def __getitem__(self, items: slice) -> torch.Tensor:
        """The inputs of the split's first images, `split[:n]`, as a resident split's test_x[:n]
        (a sample for checks such as lotto.methods.earlybird's channel-pruning equivalence)."""
        if not isinstance(items, slice) or items.start not in (None, 0) or items.step not in (None, 1):
            raise TypeError(f"a streamed split gives its first images only (split[:n]), not {items!r}")
        n = len(self) if items.stop is None else min(items.stop, len(self))
        here = replace(self.reader, decode_on_device=False)  # decoded by _Files, in this process
        files = _Files(here.root, here.files, here.labels, here.view, decode_here=True)
        return here.finish(_collate([files[(None, j, j)] for j in range(n)]))[0]

    def batches(self, part: slice = slice(None)) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The split's examples `part` (all; or a rank's slice, lotto.core.distributed.World.shard) in
        order, as (inputs, labels) batches on the device."""
        key = (part.start, part.stop, part.step)
        if key not in self._loaders:
            self._loaders[key] = self.reader.loader(_InOrder(len(self), part))
        for batch in self._loaders[key]:
            yield self.reader.finish(batch)


@dataclass
class StreamedData:
    """A streamed dataset, in the shape TrainingLoop reads (lotto.core.data.Splits for resident data):
    `val_x`/`test_x` are the streamed splits and `val_y`/`test_y` their labels."""

    train: Reader
    val_x: StreamedSplit
    val_y: torch.Tensor
    test_x: StreamedSplit
    test_y: torch.Tensor
    num_classes: int
    input_shape: tuple[int, int, int]
    augment: bool
    device: torch.device
    skipped: int  # files the index skipped (lotto.core.image_folder)

    def batches(self, batch_size: int, seed: int, part: slice = slice(None)) -> StreamedBatches:
        """The training batches of (seed, step), or `part` of each (a rank's shard: World.shard)."""
        reader = replace(self.train, view=replace(self.train.view, seed=seed))
        return StreamedBatches(reader, batch_size, seed, part)


def auto_workers() -> int:
    """One loader process per CPU this process may use, but one, at most MAX_AUTO_WORKERS. The
    ranks torchrun starts on one machine share its CPUs (LOCAL_WORLD_SIZE of them each take their
    part; srun binds each task to its own CPUs already)."""
    ranks_here = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(0, min(MAX_AUTO_WORKERS, len(os.sched_getaffinity(0)) // ranks_here - 1))


def load(
    index_path: str | os.PathLike,
    *,
    val_size: int,
    image_size: int,
    resize: int,
    augment: bool,
    device: torch.device,
    workers: int = -1,
    decode_on_device: bool | None = None,
    split_seed: int = 0,
) -> StreamedData:
    """The streamed splits of an indexed folder: `val_size` training images held out by
    `split_seed` alone (lotto.core.data.holdout, as for resident data), the folder's val/ as test.
    `workers` -1 picks auto_workers(); `decode_on_device` None decodes on a CUDA device."""
    index = read_index(index_path)
    root = Path(index["root"])
    if not root.is_dir():
        raise image_folder.FolderError(f"{index_path}: indexes {root}, which no longer exists; "
                                       "restore the folder or delete the index to re-index")
    n = len(index["train_files"])
    if not isinstance(val_size, int) or not 0 <= val_size < n:
        raise InvalidValue(f"val_size={val_size!r} must be an integer in [0, {n}) ({n} training images)")
    workers = auto_workers() if workers < 0 else workers
    on_device = device.type == "cuda" if decode_on_device is None else decode_on_device
    labels = torch.tensor(index["train_labels"], dtype=torch.int64)
    val_idx, train_idx = holdout(n, val_size, split_seed)

    def reader(files: list[str], labels: torch.Tensor, augment: bool) -> Reader:
        return Reader(root, files, labels, View(image_size, resize, augment), device, workers, on_device)

    def pick(idx: torch.Tensor) -> tuple[list[str], torch.Tensor]:
        return [index["train_files"][i] for i in idx.tolist()], labels[idx]

    val = reader(*pick(val_idx), augment=False)
    test = reader(index["test_files"], torch.tensor(index["test_labels"], dtype=torch.int64), augment=False)
    return StreamedData(
        train=reader(*pick(train_idx), augment=augment),
        val_x=StreamedSplit(val), val_y=val.labels.to(device),
        test_x=StreamedSplit(test), test_y=test.labels.to(device),
        num_classes=len(index["classes"]), input_shape=(3, image_size, image_size), augment=augment,
        device=device, skipped=len(index["skipped"]),
    )
