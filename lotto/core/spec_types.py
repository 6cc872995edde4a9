"""The experiment spec's frozen types, its identity and its (de)serialisation.

An ExperimentSpec is what lotto.core.spec resolves an experiment YAML into; everything downstream
(training, pruning, the workflow) reads only these types, so importing them needs neither YAML
nor torch. Each default is written once, here, as the field's default (the schema's `default:`
documents the same values; tests/test_spec.py checks they agree).

Two stable hashes identify cached work: `dense_key` (what determines the dense
round 0 and its rewind points: data, model, training) and `recipe_key` (that plus
pruning and rewinding, or the Early-Bird search). Only values that differ from a
field's default enter a hash, so adding a knob with a default keeps old results valid.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

# The generated dataset's options (lotto.core.data makes it; a spec's dataset.synthetic overrides them).
SYNTHETIC_DEFAULTS: dict[str, Any] = {"n_train": 2000, "n_test": 500, "shape": (1, 8, 8), "num_classes": 10, "seed": 0}
# Facts needed to resolve epochs and check labels before any data is read; lotto.core.data reads
# them too. augment: whether training augments by default (random flip + pad-and-crop, the
# papers' CIFAR recipe; dataset.augment overrides it).
DATASET_FACTS: dict[str, dict[str, Any]] = {
    "mnist": {"train_size": 60000, "test_size": 10000, "num_classes": 10, "shape": (1, 28, 28), "augment": False},
    "fashion_mnist": {"train_size": 60000, "test_size": 10000, "num_classes": 10, "shape": (1, 28, 28), "augment": False},
    "cifar10": {"train_size": 50000, "test_size": 10000, "num_classes": 10, "shape": (3, 32, 32), "augment": True},
    "cifar100": {"train_size": 50000, "test_size": 10000, "num_classes": 100, "shape": (3, 32, 32), "augment": True},
    "synthetic": {"train_size": SYNTHETIC_DEFAULTS["n_train"], "test_size": SYNTHETIC_DEFAULTS["n_test"],
                  "num_classes": SYNTHETIC_DEFAULTS["num_classes"],
                  "shape": SYNTHETIC_DEFAULTS["shape"], "augment": False},
}

# Datasets read from image folders batch by batch (lotto.core.stream), not held in memory.
STREAMED_DATASETS = ("imagenet", "imagefolder")
# dataset.name 'torchvision:<Class>': any classification dataset class of torchvision.datasets,
# read through it from its files and held in memory like MNIST (lotto.core.data.prepare)
TORCHVISION_PREFIX = "torchvision:"


def _no_hash() -> dict[str, Any]:
    return {"hash": False}


def _execution_only() -> dict[str, Any]:
    """A training field that says how a job runs, not what it computes: outside the hashes, and
    at its default in the spec files jobs read (see EXECUTION_ONLY)."""
    return {"hash": False, "execution_only": True}


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    root: str | None = field(default=None, metadata=_no_hash())
    download: bool = field(default=False, metadata=_no_hash())
    val_size: int = 5000
    labels: tuple[int, ...] | None = None
    half: int | None = None
    augment: bool = False
    synthetic: tuple[tuple[str, Any], ...] | None = None
    # streamed image folders (lotto.core.stream; names in STREAMED_DATASETS): input side in pixels, the
    # evaluation resize before the centre crop, and the class count found in the folder at planning
    image_size: int = 224
    resize: int = 256
    folder_classes: int = 0
    # a torchvision dataset class (name 'torchvision:<Class>'): its facts and the keyword arguments
    # of each split, as sorted (key, value) pairs (lotto.core.spec._resolve_torchvision)
    torchvision: tuple[tuple[str, Any], ...] | None = None

    def torchvision_options(self) -> dict[str, Any]:
        """`torchvision` as plain JSON-ready values (the splits' arguments as dicts)."""
        return {k: dict(v) if k in ("train", "test") else v for k, v in (self.torchvision or ())}

    @property
    def streamed(self) -> bool:
        return self.name in STREAMED_DATASETS

    @property
    def num_classes(self) -> int:
        if self.streamed:
            return self.folder_classes
        if self.torchvision:
            return int(dict(self.torchvision)["num_classes"])
        if self.synthetic:
            return int(dict(self.synthetic)["num_classes"])
        return DATASET_FACTS[self.name]["num_classes"]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        if self.streamed:
            return (3, self.image_size, self.image_size)
        if self.torchvision:
            return tuple(dict(self.torchvision)["shape"])  # type: ignore[return-value]
        if self.synthetic:
            return tuple(dict(self.synthetic)["shape"])  # type: ignore[return-value]
        return DATASET_FACTS[self.name]["shape"]


@dataclass(frozen=True)
class ModelSpec:
    name: str
    dropout: float = 0.0
    width: float = 1.0
    bn_momentum: float = 0.1  # PyTorch convention after resolution
    bn_eps: float = 1e-5
    # a torchvision or import-path model's keyword arguments (lotto.core.external_models), sorted
    # (key, value) pairs with lists as tuples; None for registry models, so their hashes stay
    options: tuple[tuple[str, Any], ...] | None = None


@dataclass(frozen=True)
class TrainingSpec:
    optimizer: str
    lr: float
    batch_size: int
    duration: int  # iterations
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    l2: float = 0.0
    bn_l1: float = 0.0
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    warmup: int = 0
    eval_every: int = 100
    divergence_loss: float = 1e4
    precision: str = "fp32"  # "bf16": autocast forward passes (lotto.core.train.autocast); "tf32": TF32 matmuls (matmul_precision)
    checkpoint_every: int = field(default=0, metadata=_execution_only())
    device: str = field(default="auto", metadata=_execution_only())
    # how the workflow runs a pruned round's seeds (together, lotto.core.vmap), not what they compute
    vectorize_seeds: bool = field(default=False, metadata=_execution_only())
    # how a GPU runs the step (replayed from a CUDA graph, lotto.core.train.Stepper), not what it computes
    cuda_graph: bool = field(default=True, metadata=_execution_only())
    # DataLoader processes reading a streamed dataset (-1: lotto.core.stream.auto_workers); every image's
    # augmentation is a function of (seed, step, position), so the count changes no result
    loader_workers: int = field(default=-1, metadata=_execution_only())
    # how many processes train one job (lotto.core.distributed): per node (GPUs, or CPU processes), and
    # nodes; the global batch and the results are the same whatever they are
    devices: int = field(default=1, metadata=_execution_only())
    nodes: int = field(default=1, metadata=_execution_only())
    # with several processes, batch norm over the global batch (false: over each process's shard,
    # the common multi-GPU recipe, whose results depend on the number of processes)
    sync_batchnorm: bool = True

    def lr_at(self, step: int) -> float:
        """The learning rate at iteration `step`: linear warm-up, then multi-step decay."""
        scale = self.gamma ** sum(step >= m for m in self.milestones)
        if self.warmup and step < self.warmup:
            scale *= (step + 1) / self.warmup
        return self.lr * scale


# Training fields marked _execution_only. The workflow writes them at their defaults into the spec
# files jobs read (a spec file is a Snakemake params value, so changing one would re-run every
# job) and hands each job the experiment's values as `--execution` (lotto.cli), which overrides
# them. Marking a field _execution_only is all a new one needs.
EXECUTION_ONLY: tuple[str, ...] = tuple(
    f.name for f in dataclasses.fields(TrainingSpec) if f.metadata.get("execution_only")
)


def execution_settings(spec: ExperimentSpec) -> dict[str, Any]:
    """The spec's execution-only training fields (name -> value), e.g. for `--execution`."""
    return {name: getattr(spec.training, name) for name in EXECUTION_ONLY}


def with_execution_settings(spec: ExperimentSpec, settings: dict[str, Any]) -> ExperimentSpec:
    """The spec with its execution-only fields at their defaults, except those in `settings`."""
    values = {name: _default(TrainingSpec, name) for name in EXECUTION_ONLY}
    for name, value in settings.items():
        if name not in values:
            raise ValueError(f"{name!r} is not an execution setting; allowed: {list(values)}")
        if type(value) is not type(values[name]):
            raise ValueError(f"{name}: {value!r} is not a {type(values[name]).__name__}")
        values[name] = value
    return dataclasses.replace(spec, training=dataclasses.replace(spec.training, **values))


@dataclass(frozen=True)
class MaskTrainingSpec:
    """Mikler's Training Optimal Masks (thesis 3.3.1); see lotto.methods.optimal_masks.

    The dense weights after `pretrain` iterations of round 0 are frozen; one logit per prunable
    weight is trained for `steps` iterations by straight-through gradients of Bernoulli-sampled
    masks, with an L1/L2 `penalty` on the sampled masks (lotto.methods.optimal_masks says why).
    """

    pretrain: int = 0  # iterations of round 0 (resolved from the fraction of training.duration)
    steps: int = 0
    lr: float = 1.0
    init: float = 3.0
    penalty: str = "l1"
    penalty_coef: float = 1.0e-4
    grad_clip: float = 0.1
    logit_clip: float = 15.0


@dataclass(frozen=True)
class PruningSpec:
    criterion: str = "magnitude"
    scope: str = "layerwise"
    rounds: int = 0
    rate: float | None = None  # global scope
    rates: tuple[tuple[str, float], ...] = ()  # layerwise scope: (kind, rate)
    exclude: tuple[str, ...] = ()
    mask_training: MaskTrainingSpec | None = None  # criterion optimal_mask only

    def rate_for(self, kind: str) -> float:
        return dict(self.rates).get(kind, 0.0)


@dataclass(frozen=True)
class RewindingSpec:
    weights: str = "init"  # init | step | final | back
    step: int = 0  # weights=step: k
    back: float = 0.0  # weights=back: fraction of the previous round rewound
    lr: str = "restart"  # restart | rewind | final
    retrain: int = 0  # iterations per pruned round (resolved)

    @property
    def schedule_offset(self) -> int:
        """The schedule step a pruned round starts at."""
        return self.step if self.lr == "rewind" else 0


@dataclass(frozen=True)
class EarlyBirdSpec:
    """Early-Bird ticket search and retraining (You et al. 2020); see lotto.methods.earlybird.

    `record_every` (iterations; one epoch unless set) is the "epoch" of the search: a channel
    mask per ratio is recorded after each, and `draw_epochs` count these units.
    """

    ratios: tuple[float, ...] = (0.3, 0.5, 0.7)
    epsilon: float = 0.1
    window: int = 5
    slimming: float = 1e-4
    record_every: int = 0
    stop_at_draw: bool = True
    draw_epochs: tuple[int, ...] = ()
    precision: str = "fp32"
    retrain: tuple[str, ...] = ("ff", "reinit")
    baselines: tuple[str, ...] = ()


@dataclass(frozen=True)
class ExperimentSpec:
    name: str
    dataset: DatasetSpec
    model: ModelSpec
    training: TrainingSpec
    pruning: PruningSpec = PruningSpec()
    rewinding: RewindingSpec = RewindingSpec()
    seeds: tuple[int, ...] = (0,)
    branches: tuple[str, ...] = ()
    description: str = ""
    earlybird: EarlyBirdSpec | None = None
    transfer_from: str | None = None  # the experiment whose tickets the 'transfer' branch trains

    @cached_property
    def data_key(self) -> str:
        """Name of the prepared data file: the dataset, synthetic-<hash of its options>, or for an
        image folder <name>-<hash of its absolute root> (its index, lotto.core.image_folder)."""
        if self.dataset.streamed:
            return f"{self.dataset.name}-{hashlib.sha256(str(self.dataset.root).encode()).hexdigest()[:8]}"
        if self.dataset.torchvision is not None:
            text = json.dumps(self.dataset.torchvision, sort_keys=True)
            cls = self.dataset.name.removeprefix(TORCHVISION_PREFIX)
            return f"torchvision-{cls}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"
        if self.dataset.synthetic is None:
            return self.dataset.name
        text = json.dumps(self.dataset.synthetic, sort_keys=True)
        return f"synthetic-{hashlib.sha256(text.encode()).hexdigest()[:8]}"

    @cached_property
    def dense_key(self) -> str:
        return _hash(self._data_parts({"dataset": self.dataset, "model": self.model, "training": self.training}))

    def _data_parts(self, parts: dict[str, Any]) -> dict[str, Any]:
        """`parts`, plus for an image folder its data_key: its root is which data, not only where
        the files lie, so two folders never share round 0. (Other datasets' keys stay as they were.)"""
        return {**parts, "data": self.data_key} if self.dataset.streamed else parts

    @cached_property
    def recipe_key(self) -> str:
        parts = {
            "dataset": self.dataset,
            "model": self.model,
            "training": self.training,
            "pruning": self.pruning,
            "rewinding": self.rewinding,
        }
        if self.earlybird is not None:  # only then: the keys of IMP experiments stay as they were
            parts["earlybird"] = self.earlybird
        return _hash(self._data_parts(parts))

    def to_dict(self) -> dict[str, Any]:
        plain = json.loads(json.dumps(dataclasses.asdict(self)))
        for section, names in _ADDED_LATER.items():
            owner = self if section is None else getattr(self, section)
            written = plain if section is None else plain[section]
            for name in names:
                if getattr(owner, name) == _default(type(owner), name):
                    del written[name]
        return plain

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExperimentSpec:
        """Rebuild a spec written by `to_dict` (JSON turns tuples into lists)."""
        return _from_plain(cls, data)


# Fields added after results were first written, by section (None: the experiment itself). At
# their default they are left out of spec files, so the files of older results stay
# byte-identical; _from_plain reads a missing field as its default.
_ADDED_LATER: dict[str | None, tuple[str, ...]] = {
    None: ("earlybird", "transfer_from"),
    "pruning": ("mask_training",),
    "model": ("options",),
    "training": ("vectorize_seeds", "cuda_graph", "precision", "loader_workers", "devices", "nodes",
                 "sync_batchnorm"),
    "dataset": ("image_size", "resize", "folder_classes", "torchvision"),
}


def _default(cls: type, name: str) -> Any:
    return next(f.default for f in dataclasses.fields(cls) if f.name == name)


def _from_plain(cls: type, data: dict[str, Any]) -> Any:
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data and f.default is not dataclasses.MISSING:
            continue  # a field added later (_ADDED_LATER), left out at its default
        value = data[f.name]
        if dataclasses.is_dataclass(f.default):
            value = _from_plain(type(f.default), value)
        elif isinstance(value, list):
            value = _tuplify(value)
        kwargs[f.name] = value
    for name, sub in (("dataset", DatasetSpec), ("model", ModelSpec), ("training", TrainingSpec),
                      ("earlybird", EarlyBirdSpec), ("mask_training", MaskTrainingSpec)):
        if name in kwargs and isinstance(kwargs[name], dict):
            kwargs[name] = _from_plain(sub, kwargs[name])
    return cls(**kwargs)


def _tuplify(value: Any) -> Any:
    return tuple(_tuplify(v) for v in value) if isinstance(value, list) else value


def _hash(parts: dict[str, Any]) -> str:
    def non_default(obj: Any) -> dict[str, Any]:
        out = {}
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if not f.metadata.get("hash", True):
                continue
            default = f.default if f.default is not dataclasses.MISSING else dataclasses.MISSING
            if value != default:
                out[f.name] = value
        return out

    plain = {k: non_default(v) if dataclasses.is_dataclass(v) else v for k, v in parts.items()}
    text = json.dumps(plain, sort_keys=True, default=_plain_value)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _plain_value(value: Any) -> Any:
    """JSON form of what json.dumps cannot write itself: nested sections and tuples."""
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else list(value)
