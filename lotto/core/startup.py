"""A training job's start-up, written once: its device, its data splits (checked against the
spec), its model built and seeded, and the seeds of its named random choices. Every job that
trains (lotto.rounds' rounds, replays, branches and mask learning; lotto.methods.earlybird's search and
retrainings) starts here, so a new data source or device rule changes one function."""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from lotto.core import data as datasets
from lotto.core import data_cache, stream
from lotto.core.distributed import World
from lotto.core.errors import InvalidValue
from lotto.core.spec import ExperimentSpec, build_model
from lotto.core.stream import StreamedData
from lotto.core.train import resolve_device


def derived_seed(*parts: object) -> int:
    """A stable 31-bit seed for a named random choice (re-init weights, random masks)."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:4], "little") >> 1


def load_splits(spec: ExperimentSpec, data_path: str | Path, device: torch.device) -> datasets.Splits | StreamedData:
    """The prepared data file's splits on `device`, as the spec's dataset section asks (for an
    image folder, its index read as streamed splits, lotto.core.stream); resident images of another
    shape than the spec's are refused."""
    d = spec.dataset
    if d.streamed:
        return stream.load(data_path, val_size=d.val_size, image_size=d.image_size, resize=d.resize,
                           augment=d.augment, device=device, workers=spec.training.loader_workers)
    splits = data_cache.load_splits(  # datasets.load's splits, kept for the next job
        data_path, val_size=d.val_size, device=device, labels=list(d.labels) if d.labels else None, half=d.half
    )
    if tuple(splits.input_shape) != tuple(d.input_shape):
        raise InvalidValue(f"{data_path}: images are {splits.input_shape}, the spec expects {d.input_shape}")
    return replace(splits, augment=d.augment)


def new_model(spec: ExperimentSpec, init_seed: int, device: torch.device) -> torch.nn.Module:
    """The spec's model with the initialisation torch draws from `init_seed`, on `device`."""
    torch.manual_seed(init_seed)
    return build_model(spec.model, spec.dataset).to(device)


@dataclass(frozen=True)
class Job:
    """What a training job works with: its spec, the device it trains on and its data there."""

    spec: ExperimentSpec
    device: torch.device
    splits: datasets.Splits | StreamedData

    def new_model(self, init_seed: int) -> torch.nn.Module:
        return new_model(self.spec, init_seed, self.device)


def start_job(spec: ExperimentSpec, data_path: str | Path) -> Job:
    """The device training.device names (refused when absent) and the data loaded onto it."""
    device = resolve_device(spec.training.device)
    note = precision_note(spec.training.precision, device)
    if note and World.current().writer:  # once per job, however many trainings or processes
        print(note, file=sys.stderr, flush=True)
    return Job(spec, device, load_splits(spec, data_path, device))


def precision_note(precision: str, device: torch.device) -> str | None:
    """What the job's log says when training.precision asks for what `device` lacks: tf32 sets
    CUDA's TF32 flags (lotto.core.train.matmul_precision), which change nothing on a CPU or a GPU
    before Ampere; the precision stays part of the results' identity, so a researcher comparing
    precisions there learns that the numbers are fp32's."""
    if precision != "tf32":
        return None
    if device.type != "cuda":
        return f"precision tf32: no effect on {device.type}, trains as fp32"
    major, minor = torch.cuda.get_device_capability(device)
    if major < 8:
        return (f"precision tf32: no effect on {torch.cuda.get_device_name(device)} (compute capability "
                f"{major}.{minor}; TF32 needs 8.0, Ampere, or later), trains as fp32")
    return None
