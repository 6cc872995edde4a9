"""One experiment, validated and resolved once into a frozen spec.

A YAML experiment is checked against `schema/experiment.schema.yaml` (types, ranges,
unknown keys), then semantically (models that exist, rewind points inside the
schedule, rates that fit the model), then resolved: defaults filled in, every step
turned into iterations, BN momentum converted to PyTorch's convention. Every error
names the file, the key path, the bad value and what is allowed.

Two stable hashes identify cached work: `dense_key` (what determines the dense
round 0 and its rewind points: data, model, training) and `recipe_key` (that plus
pruning and rewinding, or the Early-Bird search). Only values that differ from a
field's default enter a hash, so adding a knob with a default keeps old results valid.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from functools import cache, cached_property
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from lotto.inputs import (
    SAFE_NAME,
    SAFE_NAME_RULE,
    InputError,
    key_path,
    load_yaml,
    name_problem,
    shorten,
    shown_key,
    shown_path,
)

# Facts needed to resolve epochs and check labels before any data is read.
DATASET_FACTS: dict[str, dict[str, Any]] = {
    "mnist": {"train_size": 60000, "num_classes": 10, "shape": (1, 28, 28)},
    "fashion_mnist": {"train_size": 60000, "num_classes": 10, "shape": (1, 28, 28)},
    "cifar10": {"train_size": 50000, "num_classes": 10, "shape": (3, 32, 32)},
    "cifar100": {"train_size": 50000, "num_classes": 100, "shape": (3, 32, 32)},
    "synthetic": {"train_size": 2000, "num_classes": 10, "shape": (1, 8, 8)},
}
SYNTHETIC_DEFAULTS = {"n_train": 2000, "n_test": 500, "shape": [1, 8, 8], "num_classes": 10, "seed": 0}


class SpecError(ValueError):
    """An experiment file is invalid; the message says where and what is allowed."""


def _no_hash() -> dict[str, Any]:
    return {"hash": False}


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

    @property
    def num_classes(self) -> int:
        if self.synthetic:
            return int(dict(self.synthetic)["num_classes"])
        return DATASET_FACTS[self.name]["num_classes"]

    @property
    def input_shape(self) -> tuple[int, int, int]:
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
    precision: str = "fp32"  # "bf16": autocast forward passes (lotto.train.autocast); "tf32": TF32 matmuls (matmul_precision)
    checkpoint_every: int = field(default=0, metadata=_no_hash())
    device: str = field(default="auto", metadata=_no_hash())
    # how the workflow runs a pruned round's seeds (together, lotto.vmap), not what they compute
    vectorize_seeds: bool = field(default=False, metadata=_no_hash())
    # how a GPU runs the step (replayed from a CUDA graph, lotto.train.Stepper), not what it computes
    cuda_graph: bool = field(default=True, metadata=_no_hash())

    def lr_at(self, step: int) -> float:
        """The learning rate at iteration `step`: linear warm-up, then multi-step decay."""
        scale = self.gamma ** sum(step >= m for m in self.milestones)
        if self.warmup and step < self.warmup:
            scale *= (step + 1) / self.warmup
        return self.lr * scale


@dataclass(frozen=True)
class MaskTrainingSpec:
    """Mikler's Training Optimal Masks (thesis 3.3.1); see lotto.optimal_masks.

    The dense weights after `pretrain` iterations of round 0 are frozen; one logit per prunable
    weight is trained for `steps` iterations by straight-through gradients of Bernoulli-sampled
    masks, with an L1/L2 `penalty` on the sampled masks (lotto.optimal_masks says why).
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
    """Early-Bird ticket search and retraining (You et al. 2020); see lotto.earlybird.

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
        """Name of the prepared data file: the dataset, or synthetic-<hash of its options>."""
        if self.dataset.synthetic is None:
            return self.dataset.name
        text = json.dumps(self.dataset.synthetic, sort_keys=True)
        return f"synthetic-{hashlib.sha256(text.encode()).hexdigest()[:8]}"

    @cached_property
    def dense_key(self) -> str:
        return _hash({"dataset": self.dataset, "model": self.model, "training": self.training})

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
        return _hash(parts)

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
    "training": ("vectorize_seeds", "cuda_graph", "precision"),
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

    plain = {k: non_default(v) for k, v in parts.items()}
    text = json.dumps(plain, sort_keys=True, default=_plain_value)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _plain_value(value: Any) -> Any:
    """JSON form of what json.dumps cannot write itself: nested sections and tuples."""
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else list(value)


# --- validation -------------------------------------------------------------------------


@cache
def experiment_schema() -> dict[str, Any]:
    text = resources.files("lotto").joinpath("schema/experiment.schema.yaml").read_text()
    return yaml.safe_load(text)


def _describe(error: Any) -> str:
    """One readable line for a jsonschema error: which key, the bad value, what is allowed."""
    where = key_path(list(error.absolute_path))
    value = error.instance
    kind = error.validator
    if kind == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        lines = []
        for key in sorted(set(value) - set(allowed)):
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            prefix = f"{where}." if error.absolute_path else ""
            lines.append(f"{prefix}{shown_key(key)}: unknown key{hint}; allowed keys: {', '.join(allowed)}")
        return "\n".join(lines)
    if kind == "required":
        missing = [k for k in error.validator_value if k not in value]
        return f"{where}: missing required key '{missing[0]}'"
    if kind == "enum":
        choices = ", ".join("null" if c is None else str(c) for c in error.validator_value)
        close = difflib.get_close_matches(str(value), [str(c) for c in error.validator_value], n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        return f"{where}: {shorten(value)} is not allowed{hint}; choose one of: {choices}"
    if kind == "type" and isinstance(value, float) and not math.isfinite(value):
        return f"{where}: {value} is not allowed; allowed: a finite number"
    if kind == "pattern" and error.validator_value == SAFE_NAME.pattern:
        return f"{where}: {shorten(value)} is not a safe name; allowed: {SAFE_NAME_RULE}"
    if kind == "type":
        expected = error.validator_value
        expected = " or ".join(expected) if isinstance(expected, list) else expected
        return f"{where}: {shorten(value)} has the wrong type; expected {expected}"
    bounds = {
        "minimum": ">=",
        "maximum": "<=",
        "exclusiveMinimum": ">",
        "exclusiveMaximum": "<",
    }
    if kind in bounds:
        return f"{where}: {shorten(value)} is out of range; allowed: {bounds[kind]} {error.validator_value}"
    if kind == "oneOf" and error.schema == experiment_schema()["$defs"]["step"]:
        return (
            f"{where}: {shorten(value)} is not a valid step; allowed: a non-negative integer "
            f"(iterations, at most {MAX_ITERATIONS}), '<n>it' or '<n>ep'"
        )
    if kind == "pattern":
        return f"{where}: {shorten(value)} does not match the allowed pattern {error.validator_value}"
    if kind in ("minItems", "maxItems", "uniqueItems"):
        rule = {"minItems": "at least", "maxItems": "at most"}.get(kind)
        allowed = f"{rule} {error.validator_value} items" if rule else "no repeated items"
        return f"{where}: {shorten(value)} is not allowed; must have {allowed}"
    return f"{where}: {shorten(value)}: {error.message[:200]}"


def _strict_validator() -> Any:
    """Draft 2020-12, but 60.0 is not an integer and NaN/inf are not numbers."""
    import jsonschema

    base = jsonschema.Draft202012Validator
    checker = base.TYPE_CHECKER.redefine(
        "integer", lambda _, v: isinstance(v, int) and not isinstance(v, bool)
    ).redefine(
        "number",
        lambda _, v: isinstance(v, int | float) and not isinstance(v, bool)
        and (isinstance(v, int) or math.isfinite(v)),  # a huge int is finite (and isfinite overflows)
    )
    return jsonschema.validators.extend(base, type_checker=checker)


def validate_document(doc: Any, source: str = "<experiment>", schema: dict[str, Any] | None = None) -> None:
    """Schema-check a parsed experiment (or, given its `schema`, a config); raise SpecError
    listing every problem."""
    if not isinstance(doc, dict):
        what = "an experiment" if schema is None else "a config"
        raise SpecError(f"{source}: {what} must be a mapping of keys, got {type(doc).__name__}")
    validator = _strict_validator()(experiment_schema() if schema is None else schema)
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        lines = [line for e in errors for line in _describe(e).splitlines()]
        raise SpecError("\n".join(f"{source}: {line}" for line in dict.fromkeys(lines)))


_STEP = re.compile(r"^(\d+)(it|ep)$")


def parse_step(value: int | str, iterations_per_epoch: int) -> int:
    """'4ep' / '2000it' / 2000 -> iterations. One parser for every duration and rewind point."""
    if isinstance(value, bool):
        raise SpecError(f"{value!r} is not a step")
    if isinstance(value, int):
        return value
    match = _STEP.fullmatch(str(value))
    if not match:
        raise SpecError(f"{value!r} is not a step; use an integer, '<n>it' or '<n>ep'")
    count, unit = int(match.group(1)), match.group(2)
    return count * iterations_per_epoch if unit == "ep" else count


def load_experiment(path: str | Path) -> ExperimentSpec:
    """Read (lotto.inputs.load_yaml), validate and resolve one experiment YAML file."""
    path = Path(path)
    try:
        doc = load_yaml(path, "experiment file")
    except InputError as err:
        raise SpecError(str(err)) from None
    return resolve(doc, source=shown_path(path), default_name=path.stem)


MAX_ITERATIONS = 10**9  # any step, resolved: 100x the longest schedule of any preset, in int64
MAX_SYNTHETIC_VALUES = 2**28
MAX_TRAININGS = 100_000  # jobs of one experiment; the largest preset has a few hundred


def _check_names(doc: dict[str, Any], default_name: str, bad: Any) -> None:
    """Names that become paths and command-line words are safe names (lotto.inputs)."""
    if "name" in doc:
        problem = name_problem(doc["name"])
        if problem:
            bad("name", problem)
    elif name_problem(default_name):
        bad("name", f"missing, and the file stem {name_problem(default_name)}; add name: <a safe name>")
    transfer_from = (doc.get("transfer") or {}).get("from")
    if transfer_from is not None and name_problem(transfer_from):
        bad("transfer.from", name_problem(transfer_from))


def resolve(doc: Any, source: str = "<experiment>", default_name: str = "experiment") -> ExperimentSpec:
    """Validate a parsed experiment document and resolve it into an ExperimentSpec."""
    validate_document(doc, source)
    problems: list[str] = []

    def bad(key: str, message: str) -> None:
        problems.append(f"{source}: {key}: {message}")

    _check_names(doc, default_name, bad)

    d = doc["dataset"]
    synthetic = None
    if d["name"] == "synthetic":
        merged = {**SYNTHETIC_DEFAULTS, **d.get("synthetic", {})}
        synthetic = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in merged.items()))
        train_size = merged["n_train"]
        values = (merged["n_train"] + merged["n_test"]) * math.prod(merged["shape"])
        if values > MAX_SYNTHETIC_VALUES:
            bad("dataset.synthetic", f"(n_train + n_test) x shape is {values} pixel values, more than "
                f"{MAX_SYNTHETIC_VALUES} (1 GiB of float32, held in memory); make it smaller")
    else:
        if "synthetic" in d:
            bad("dataset.synthetic", f"only allowed with dataset.name: synthetic, not {d['name']!r}")
        train_size = DATASET_FACTS[d["name"]]["train_size"]
    val_size = d.get("val_size", 5000)
    if val_size >= train_size:
        bad("dataset.val_size", f"{val_size} leaves no training data; allowed: < {train_size}")
    dataset = DatasetSpec(
        name=d["name"],
        root=d.get("root"),
        download=d.get("download", False),
        val_size=val_size,
        labels=tuple(d["labels"]) if d.get("labels") else None,
        half=d.get("half"),
        augment=d.get("augment") if d.get("augment") is not None else d["name"].startswith("cifar"),
        synthetic=synthetic,
    )
    for label in dataset.labels or ():
        if label >= dataset.num_classes:
            bad("dataset.labels", f"{label} is not a class; allowed: 0..{dataset.num_classes - 1}")

    t = doc["training"]
    per_epoch = max(1, (train_size - val_size) // t["batch_size"]) if val_size < train_size else 1

    def step(key: str, value: Any) -> int:
        iterations = parse_step(value, per_epoch)
        if iterations > MAX_ITERATIONS:
            bad(key, f"{shorten(value)} ({iterations} it) is longer than any study; allowed: at most "
                f"{MAX_ITERATIONS} iterations")
        return iterations

    duration = step("training.duration", t["duration"])
    if duration <= 0:
        bad("training.duration", f"{t['duration']!r} is empty; allowed: at least 1 iteration")
    milestones = tuple(step("training.milestones", m) for m in t.get("milestones", []))
    for raw, m in zip(t.get("milestones", []), milestones, strict=True):
        if m > duration:
            bad("training.milestones", f"{raw!r} ({m} it) is after the end ({duration} it)")
    if list(milestones) != sorted(milestones):
        bad("training.milestones", f"{list(t['milestones'])!r} must be increasing")
    warmup = step("training.warmup", t.get("warmup", 0))
    if warmup > duration:
        bad("training.warmup", f"{t['warmup']!r} ({warmup} it) is longer than the run ({duration} it)")
    eval_every = step("training.eval_every", t.get("eval_every", 100))
    if eval_every <= 0:
        bad("training.eval_every", f"{t.get('eval_every')!r}; allowed: at least 1 iteration")
    if t.get("nesterov") and not t.get("momentum"):
        bad("training.nesterov", "true needs training.momentum > 0")
    if t["optimizer"] == "adam" and (t.get("momentum") or t.get("nesterov")):
        bad("training.momentum", "momentum/nesterov apply to optimizer: sgd only")
    training = TrainingSpec(
        optimizer=t["optimizer"],
        lr=float(t["lr"]),
        batch_size=t["batch_size"],
        duration=duration,
        momentum=float(t.get("momentum", 0.0)),
        nesterov=t.get("nesterov", False),
        weight_decay=float(t.get("weight_decay", 0.0)),
        l2=float(t.get("l2", 0.0)),
        bn_l1=float(t.get("bn_l1", 0.0)),
        milestones=milestones,
        gamma=float(t.get("gamma", 0.1)),
        warmup=warmup,
        eval_every=eval_every,
        divergence_loss=float(t.get("divergence_loss", 1e4)),
        precision=t.get("precision", "fp32"),
        checkpoint_every=step("training.checkpoint_every", t.get("checkpoint_every", 0)),
        device=t.get("device", "auto"),
        vectorize_seeds=t.get("vectorize_seeds", False),
        cuda_graph=t.get("cuda_graph", True),
    )

    model = _resolve_model(doc["model"], dataset, bad)
    pruning = _resolve_pruning(doc.get("pruning", {}), model, dataset, bad, training, step)
    rewinding = _resolve_rewinding(doc.get("rewinding", {}), training, step, bad)
    branches = tuple(doc.get("branches", []))
    earlybird = None
    if "earlybird" in doc:
        earlybird = _resolve_earlybird(doc["earlybird"] or {}, training, step, bad)
        if pruning.rounds:
            bad("earlybird", "runs instead of IMP rounds; remove pruning.rounds (or the earlybird section)")
        if model.name:
            _check_channel_prunable(model, dataset, bad)
    trainings = len(doc.get("seeds", [0])) * (1 + pruning.rounds * (1 + len(branches)))
    if trainings > MAX_TRAININGS:
        bad("pruning.rounds", f"{pruning.rounds} rounds x {len(doc.get('seeds', [0]))} seeds x "
            f"{1 + len(branches)} trainings per round are {trainings} jobs; allowed: at most {MAX_TRAININGS} "
            "(Snakemake holds every job in memory)")
    if branches and pruning.rounds == 0:
        bad("branches", f"{list(branches)} need pruned rounds; set pruning.rounds >= 1")
    if pruning.criterion == "snip" and rewinding.weights != "init":
        bad("rewinding.weights", f"{rewinding.weights!r}: snip scores theta_0 once (one-shot at init), so every "
            "round must train from theta_0; use weights: init")
    if pruning.criterion == "optimal_mask" and rewinding.weights not in ("init", "step"):
        bad("rewinding.weights", f"{rewinding.weights!r}: optimal_mask learns its mask once (one-shot), so every "
            "round retrains from a fixed point; use weights: init or step")
    if training.vectorize_seeds:
        for key, message in seed_vectorisation_problems(model, dataset, training, rewinding):
            bad(key, message)
    transfer_from = (doc.get("transfer") or {}).get("from")
    if "transfer" in branches and transfer_from is None:
        bad("branches", "'transfer' needs transfer.from: the experiment whose tickets it trains")
    if transfer_from is not None and "transfer" not in branches:
        bad("transfer.from", f"{transfer_from!r} is only used by the 'transfer' branch; add it to branches")
    if problems:
        raise SpecError("\n".join(problems))
    return ExperimentSpec(
        name=doc.get("name", default_name),
        description=doc.get("description", ""),
        dataset=dataset,
        model=model,
        training=training,
        pruning=pruning,
        rewinding=rewinding,
        seeds=tuple(doc.get("seeds", [0])),
        branches=branches,
        earlybird=earlybird,
        transfer_from=transfer_from,
    )


def seed_vectorisation_problems(model: ModelSpec, dataset: DatasetSpec, training: TrainingSpec,
                                rewinding: RewindingSpec) -> list[tuple[str, str]]:
    """Why the seeds of a pruned round cannot train together (lotto.vmap.train_seeds), as
    (key, message) pairs; empty when they can. Checked for training.vectorize_seeds: true and
    by lotto.rounds.run_round_seeds."""
    from lotto.vmap import check_vectorisable

    off = "or set training.vectorize_seeds: false"
    problems = []
    try:
        net = build_model(model, dataset, "meta")
    except ValueError:
        net = None  # a model that cannot be built is reported on its own
    if net is not None:
        try:
            check_vectorisable(net)
        except ValueError as err:
            problems.append(("model", f"{model.name!r} cannot train its seeds together ({err}); "
                             f"allowed: a model without BatchNorm or dropout, {off}"))
    if training.checkpoint_every:
        problems.append(("training.checkpoint_every", f"{training.checkpoint_every} it: in-round resume "
                         f"is per seed, not for seeds trained together; allowed: 0, {off}"))
    if rewinding.weights == "back":
        problems.append(("rewinding.weights", "'back' rewinds to each seed's weights part-way through the "
                         f"round, a snapshot seeds trained together do not take; allowed: init, step, final, {off}"))
    return problems


def transfer_problems(target: ExperimentSpec, experiments: dict[str, ExperimentSpec]) -> list[str]:
    """Why `target`'s transfer.from cannot supply its tickets (empty if it can): the source must be
    another experiment of the same config with the same model and pruning (so round r has the same
    density in both) and a chain for every seed of the target."""
    name = target.transfer_from
    if name is None:
        return []
    where = f"{target.name}: transfer.from"
    source = experiments.get(name)
    if source is None:
        known = ", ".join(sorted(experiments))
        return [f"{where}: {name!r} is not an experiment of this config; add it to experiments (now: {known})"]
    problems = []
    if source.name == target.name:
        problems.append(f"{where}: {name!r} is the experiment itself; name the experiment the tickets come from")
    if source.model != target.model:
        problems.append(f"{where}: {name!r} has model {source.model}, this experiment {target.model}; "
                        "a ticket only fits the model it was found in")
    if source.pruning != target.pruning:
        problems.append(f"{where}: {name!r} prunes with {source.pruning}, this experiment with "
                        f"{target.pruning}; use the same pruning section so round r has one density")
    missing = sorted(set(target.seeds) - set(source.seeds))
    if missing:
        problems.append(f"{where}: {name!r} has no chain for seeds {missing}; add them to its seeds")
    return problems


def _resolve_earlybird(e: dict[str, Any], training: TrainingSpec, step: Any, bad: Any) -> EarlyBirdSpec:
    record_every = step("earlybird.record_every", e.get("record_every", "1ep"))
    if not 1 <= record_every <= training.duration:
        bad("earlybird.record_every", f"{e.get('record_every')!r} ({record_every} it); allowed: "
            f"1..{training.duration} it (the training duration)")
    epochs = training.duration // max(record_every, 1)
    draw_epochs = sorted({epochs if d == "final" else d for d in e.get("draw_epochs", [])})
    for d in draw_epochs:
        if d > epochs:
            bad("earlybird.draw_epochs", f"{d} is after the last epoch ({epochs}); use 'final' for it")
    return EarlyBirdSpec(
        ratios=tuple(float(r) for r in e.get("ratios", (0.3, 0.5, 0.7))),
        epsilon=float(e.get("epsilon", 0.1)),
        window=int(e.get("window", 5)),
        slimming=float(e.get("slimming", 1e-4)),
        record_every=record_every,
        stop_at_draw=bool(e.get("stop_at_draw", True)),
        draw_epochs=tuple(draw_epochs),
        precision=e.get("precision", "fp32"),
        retrain=tuple(e.get("retrain", ("ff", "reinit"))),
        baselines=tuple(e.get("baselines", ())),
    )


def _check_channel_prunable(model: ModelSpec, dataset: DatasetSpec, bad: Any) -> None:
    from lotto.structured import channel_groups

    try:
        channel_groups(build_model(model, dataset, "meta"))
    except ValueError as err:
        bad("model.name", f"{model.name!r} cannot run earlybird: {err}")


def _resolve_model(m: dict[str, Any], dataset: DatasetSpec, bad: Any) -> ModelSpec:
    from lotto import models

    if m["name"] not in models.model_names():
        close = difflib.get_close_matches(m["name"], models.model_names(), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        bad("model.name", f"unknown model {m['name']!r}{hint}; choose one of: {', '.join(models.model_names())}")
        return ModelSpec(name=m["name"])
    momentum = m.get("bn_momentum", 0.1 if m.get("bn_convention", "torch") == "torch" else 0.9)
    if m.get("bn_convention") == "tf":
        momentum = 1.0 - momentum
    spec = ModelSpec(
        name=m["name"],
        dropout=float(m.get("dropout", 0.0)),
        width=float(m.get("width", 1.0)),
        bn_momentum=round(float(momentum), 12),
        bn_eps=float(m.get("bn_eps", 1e-5)),
    )
    try:
        build_model(spec, dataset, device="meta")
    except ValueError as err:
        bad("model", str(err))
    return spec


def build_model(model: ModelSpec, dataset: DatasetSpec, device: Any = "cpu") -> Any:
    """The one place a spec becomes a torch module."""
    import torch

    from lotto import models

    with torch.device(device):
        return models.create_model(
            model.name,
            input_shape=dataset.input_shape,
            num_classes=dataset.num_classes,
            dropout=model.dropout,
            bn_momentum=model.bn_momentum,
            bn_eps=model.bn_eps,
            width=model.width,
        )


def _resolve_pruning(p: dict[str, Any], model: ModelSpec, dataset: DatasetSpec, bad: Any,
                     training: TrainingSpec, step: Any) -> PruningSpec:
    scope = p.get("scope", "layerwise")
    rounds = p.get("rounds", 0)
    target = p.get("target_density")
    rate, rates = p.get("rate"), dict(p.get("rates", {}))
    if scope == "global" and "rates" in p:
        bad("pruning.rates", "per-kind rates are for scope: layerwise; use pruning.rate with scope: global")
    if scope == "layerwise" and "rate" in p:
        bad("pruning.rate", "a single rate is for scope: global; use pruning.rates {conv, fc, output}")
    if target is not None:
        if rate is not None or rates:
            bad("pruning.target_density", "give either target_density or rate(s), not both")
        if rounds < 1:
            bad("pruning.target_density", "needs pruning.rounds >= 1 to reach it")
        else:
            per_round = 1.0 - target ** (1.0 / rounds)
            rate = per_round if scope == "global" else None
            rates = {"conv": per_round, "fc": per_round, "output": per_round} if scope == "layerwise" else {}
    elif rounds > 0 and scope == "global" and rate is None:
        bad("pruning.rate", "missing: global pruning with rounds >= 1 needs a rate in [0, 1)")
    elif rounds > 0 and scope == "layerwise" and not rates:
        bad("pruning.rates", "missing: layer-wise pruning with rounds >= 1 needs rates {conv, fc, output}")
    if scope == "layerwise" and rates and "output" not in rates:
        rates["output"] = rates.get("fc", 0.0) / 2
    if p.get("criterion") == "l1_filter":
        if scope != "layerwise":
            bad("pruning.scope", f"{scope!r}: l1_filter ranks a layer's filters by L1 norm, which differs "
                "in scale between layers; use scope: layerwise")
        elif rates.get("output", 0.0):
            bad("pruning.rates.output", f"{rates['output']} would remove classes (l1_filter removes whole "
                "output units); set output: 0")
    exclude = _resolve_exclude(p.get("exclude", []), model, dataset, bad)
    if scope == "layerwise" and rounds > 0 and rates and model.name:
        try:
            _check_kinds_have_rates(model, dataset, rates, exclude)
        except ValueError as err:
            bad("pruning.rates", str(err))
    return PruningSpec(
        criterion=p.get("criterion", "magnitude"),
        scope=scope,
        rounds=rounds,
        rate=None if rate is None else float(rate),
        rates=tuple(sorted((k, float(v)) for k, v in rates.items())),
        exclude=exclude,
        mask_training=_resolve_mask_training(p, training, step, bad),
    )


def _resolve_exclude(names: list[str], model: ModelSpec, dataset: DatasetSpec, bad: Any) -> tuple[str, ...]:
    """pruning.exclude as module paths (what masks are keyed by): a readable name (fc1, output;
    lotto.masks.readable_names) becomes its module path, so either spelling gives one spec."""
    if not names:
        return ()
    from lotto.masks import prunable_layers, readable_names

    try:
        net = build_model(model, dataset, "meta")
    except ValueError:
        return tuple(names)  # an unknown model is reported on its own
    readable = readable_names(net)
    paths = [path for path, _, _ in prunable_layers(net)]
    resolved = []
    for name in names:
        if name not in paths and name not in readable:
            choices = ", ".join(f"{r} ({path})" for r, path in readable.items())
            bad("pruning.exclude", f"{shorten(name)} is not a prunable layer; choose a name or module path: "
                f"{choices} (`python -m lotto layers {model.name}` lists them)")
        resolved.append(name if name in paths else readable.get(name, name))
    return tuple(dict.fromkeys(resolved))


def _resolve_mask_training(p: dict[str, Any], training: TrainingSpec, step: Any,
                           bad: Any) -> MaskTrainingSpec | None:
    """The mask-training settings of criterion optimal_mask (defaults filled in), else None."""
    m = p.get("mask_training")
    if p.get("criterion") != "optimal_mask":
        if m is not None:
            bad("pruning.mask_training", f"only used with criterion: optimal_mask (criterion is "
                f"{p.get('criterion', 'magnitude')!r})")
        return None
    m = m or {}
    steps = step("pruning.mask_training.steps", m.get("steps", "1ep"))
    if steps <= 0:
        bad("pruning.mask_training.steps", f"{m.get('steps')!r} is empty; allowed: at least 1 iteration")
    defaults = MaskTrainingSpec()
    return MaskTrainingSpec(
        pretrain=round(float(m.get("pretrain", 0.1)) * training.duration),
        steps=steps,
        lr=float(m.get("lr", defaults.lr)),
        init=float(m.get("init", defaults.init)),
        penalty=m.get("penalty", defaults.penalty),
        penalty_coef=float(m.get("penalty_coef", defaults.penalty_coef)),
        grad_clip=float(m.get("grad_clip", defaults.grad_clip)),
        logit_clip=float(m.get("logit_clip", defaults.logit_clip)),
    )


def _check_kinds_have_rates(model: ModelSpec, dataset: DatasetSpec, rates: dict, exclude: list) -> None:
    from lotto.masks import prunable_layers

    kinds = {kind for name, kind, _ in prunable_layers(build_model(model, dataset, "meta")) if name not in exclude}
    missing = sorted(kinds - set(rates))
    if missing:
        raise ValueError(
            f"{model.name} has {'/'.join(missing)} layers but no rate for them; "
            f"add {', '.join(missing)} to pruning.rates (0 keeps them dense)"
        )


def _resolve_rewinding(r: dict[str, Any], training: TrainingSpec, step: Any, bad: Any) -> RewindingSpec:
    weights = r.get("weights", "init")
    k = step("rewinding.step", r["step"]) if "step" in r else 0
    if weights == "step" and "step" not in r:
        bad("rewinding.step", "missing: weights: step needs the iteration k to rewind to")
    if weights != "step" and "step" in r:
        bad("rewinding.step", f"only used with weights: step (weights is {weights!r})")
    if k >= training.duration and weights == "step":
        bad("rewinding.step", f"{r['step']!r} ({k} it) is not inside the schedule (< {training.duration} it)")
    back = float(r.get("back", 0.0))
    if weights == "back" and "back" not in r:
        bad("rewinding.back", "missing: weights: back needs the fraction X in [0, 1] to rewind")
    if weights != "back" and "back" in r:
        bad("rewinding.back", f"only used with weights: back (weights is {weights!r})")
    lr = r.get("lr", "rewind" if weights == "step" else "restart")
    if lr == "rewind" and weights != "step":
        bad("rewinding.lr", f"'rewind' follows the weights' step, so needs weights: step (weights is {weights!r})")
    offset = k if lr == "rewind" else 0
    retrain = step("rewinding.retrain", r["retrain"]) if "retrain" in r else training.duration - offset
    if retrain <= 0 and "retrain" in r:  # else rewinding.step is reported
        bad("rewinding.retrain", f"{r.get('retrain')!r}; allowed: at least 1 iteration")
    return RewindingSpec(weights=weights, step=k, back=back, lr=lr, retrain=retrain)
