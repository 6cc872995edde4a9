"""One experiment, validated and resolved once into a frozen spec.

A YAML experiment is checked against `schema/experiment.schema.yaml` (types, ranges,
unknown keys), then semantically (models that exist, rewind points inside the
schedule, rates that fit the model), then resolved: defaults filled in, every step
turned into iterations, BN momentum converted to PyTorch's convention. Every error
names the file, the key path, the bad value and what is allowed.

The resolved types, their defaults and hashes live in lotto.core.spec_types (importable without
YAML or torch, so the training core needs no loader); they are re-exported here, so
`from lotto.core.spec import ExperimentSpec, load_experiment` keeps working everywhere.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from lotto.core import image_folder
from lotto.core.criteria import CRITERION_FACTS, learns_mask
from lotto.core.errors import InvalidValue
from lotto.core.external_models import is_external
from lotto.core.external_models import name_problem as external_name_problem
from lotto.core.inputs import (
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
from lotto.core.model_facts import ModelFacts, facts, model_options, tabulated_model_names
from lotto.core.spec_types import (  # noqa: F401 - re-exported: lotto.core.spec is the public entry
    DATASET_FACTS,
    STREAMED_DATASETS,
    SYNTHETIC_DEFAULTS,
    TORCHVISION_PREFIX,
    DatasetSpec,
    EarlyBirdSpec,
    ExperimentSpec,
    MaskTrainingSpec,
    ModelSpec,
    PruningSpec,
    RewindingSpec,
    TrainingSpec,
)


class SpecError(InvalidValue):
    """An experiment file is invalid; the message says where and what is allowed."""


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
    """Read (lotto.core.inputs.load_yaml), validate and resolve one experiment YAML file."""
    path = Path(path)
    try:
        doc = load_yaml(path, "experiment file")
    except InputError as err:
        raise SpecError(str(err)) from None
    return resolve(doc, source=shown_path(path), default_name=path.stem)


MAX_ITERATIONS = 10**9  # any step, resolved: 100x the longest schedule of any preset, in int64
MAX_SYNTHETIC_VALUES = 2**28
MAX_TRAININGS = 100_000  # jobs of one experiment; the largest preset has a few hundred

# Defaults of input keys that resolution turns into something else (a step or a fraction into
# iterations, a convention into PyTorch's), so that no field of lotto.core.spec_types holds them; every
# other default is its field's. The schema documents the same values (tests/test_spec.py checks).
INPUT_DEFAULTS: dict[str, Any] = {
    "model.bn_convention": "torch",
    "pruning.mask_training.pretrain": 0.1,
    "pruning.mask_training.steps": "1ep",
    "earlybird.record_every": "1ep",
}


def _check_names(doc: dict[str, Any], default_name: str, bad: Any) -> None:
    """Names that become paths and command-line words are safe names (lotto.core.inputs)."""
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
    """Validate a parsed experiment document and resolve it into an ExperimentSpec: each section
    in turn, then the rules across sections; every problem is collected before one SpecError."""
    validate_document(doc, source)
    problems: list[str] = []

    def bad(key: str, message: str) -> None:
        problems.append(f"{source}: {key}: {message}")

    _check_names(doc, default_name, bad)
    dataset, train_size = _resolve_dataset(doc["dataset"], bad)
    step = _step_parser(_iterations_per_epoch(train_size, dataset.val_size, doc["training"]["batch_size"]), bad)
    training = _resolve_training(doc["training"], step, bad)
    model = _resolve_model(doc["model"], dataset, bad)
    pruning = _resolve_pruning(doc.get("pruning", {}), model, dataset, bad, training, step)
    rewinding = _resolve_rewinding(doc.get("rewinding", {}), training, step, bad)
    earlybird = None
    if "earlybird" in doc:
        earlybird = _resolve_earlybird(doc["earlybird"] or {}, training, step, bad)
        _check_earlybird_fits(pruning, model, dataset, bad)
    seeds = tuple(doc.get("seeds", ExperimentSpec.seeds))
    branches = tuple(doc.get("branches", ExperimentSpec.branches))
    transfer_from = (doc.get("transfer") or {}).get("from")
    _check_job_count(seeds, pruning, branches, bad)
    _check_rounds_rules(pruning, rewinding, branches, bad)
    if training.vectorize_seeds:
        for key, message in seed_vectorisation_problems(model, dataset, training, rewinding):
            bad(key, message)
    _check_transfer_branch(branches, transfer_from, bad)
    if dataset.streamed:
        _check_streamed_features(dataset, training, pruning, branches, bad)
    _check_processes(training, model, pruning, bad)
    if problems:
        raise SpecError("\n".join(problems))
    return ExperimentSpec(
        name=doc.get("name", default_name),
        description=doc.get("description", ExperimentSpec.description),
        dataset=dataset,
        model=model,
        training=training,
        pruning=pruning,
        rewinding=rewinding,
        seeds=seeds,
        branches=branches,
        earlybird=earlybird,
        transfer_from=transfer_from,
    )


def _resolve_dataset(d: dict[str, Any], bad: Any) -> tuple[DatasetSpec, int]:
    """The dataset section, and the size of its training split (validation included)."""
    if "torchvision" in d and not d["name"].startswith(TORCHVISION_PREFIX):
        bad("dataset.torchvision", f"only with dataset.name: {TORCHVISION_PREFIX}<Class>, not {d['name']!r}")
    synthetic = None
    if d["name"] == "synthetic":
        merged = {**SYNTHETIC_DEFAULTS, **d.get("synthetic", {})}
        synthetic = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in merged.items()))
        train_size = merged["n_train"]
        values = (merged["n_train"] + merged["n_test"]) * math.prod(merged["shape"])
        if values > MAX_SYNTHETIC_VALUES:
            bad("dataset.synthetic", f"(n_train + n_test) x shape is {values} pixel values, more than "
                f"{MAX_SYNTHETIC_VALUES} (1 GiB of float32, held in memory); make it smaller")
    elif d["name"] in STREAMED_DATASETS:
        return _resolve_streamed(d, bad)
    elif d["name"].startswith(TORCHVISION_PREFIX):
        return _resolve_torchvision(d, bad)
    else:
        if "synthetic" in d:
            bad("dataset.synthetic", f"only allowed with dataset.name: synthetic, not {d['name']!r}")
        for key in ("image_size", "resize"):
            if key in d:
                bad(f"dataset.{key}", f"only for image folders (dataset.name: {' or '.join(STREAMED_DATASETS)})")
        train_size = DATASET_FACTS[d["name"]]["train_size"]
    val_size = d.get("val_size", DatasetSpec.val_size)
    if val_size >= train_size:
        bad("dataset.val_size", f"{val_size} leaves no training data; allowed: < {train_size}")
    dataset = DatasetSpec(
        name=d["name"],
        root=d.get("root", DatasetSpec.root),
        download=d.get("download", DatasetSpec.download),
        val_size=val_size,
        labels=tuple(d["labels"]) if d.get("labels") else None,
        half=d.get("half", DatasetSpec.half),
        augment=d.get("augment") if d.get("augment") is not None else DATASET_FACTS[d["name"]]["augment"],
        synthetic=synthetic,
    )
    for label in dataset.labels or ():
        if label >= dataset.num_classes:
            bad("dataset.labels", f"{label} is not a class; allowed: 0..{dataset.num_classes - 1}")
    return dataset, train_size


def _resolve_torchvision(d: dict[str, Any], bad: Any) -> tuple[DatasetSpec, int]:
    """A torchvision dataset class: planning cannot import torchvision, so the section states the
    facts (checked against the files by the prepare job) and each split's keyword arguments."""
    name, options = d["name"], d["torchvision"]  # required by the schema
    for key in ("synthetic", "image_size", "resize"):
        if key in d:
            bad(f"dataset.{key}", f"not available for {name!r}")
    if d.get("download"):
        bad("dataset.download", f"lotto reads {name!r} from its files in dataset.root; allowed: false")
    if not d.get("root"):
        bad("dataset.root", f"required for {name!r}: the folder torchvision's class reads")
    val_size = d.get("val_size", DatasetSpec.val_size)
    merged = {"train": {"train": True}, "test": {"train": False}, **options}
    if val_size >= merged["train_size"]:
        bad("dataset.val_size", f"{val_size} leaves no training data; allowed: < {merged['train_size']}")
    facts = tuple(sorted((k, tuple(sorted(v.items())) if isinstance(v, dict) else tuple(v) if isinstance(v, list)
                          else v) for k, v in merged.items()))
    dataset = DatasetSpec(name=name, root=d.get("root"), val_size=val_size, augment=bool(d.get("augment")),
                          labels=tuple(d["labels"]) if d.get("labels") else None,
                          half=d.get("half", DatasetSpec.half), torchvision=facts)
    for label in dataset.labels or ():
        if label >= dataset.num_classes:
            bad("dataset.labels", f"{label} is not a class; allowed: 0..{dataset.num_classes - 1}")
    return dataset, merged["train_size"]


def _resolve_streamed(d: dict[str, Any], bad: Any) -> tuple[DatasetSpec, int]:
    """An image folder (lotto.core.image_folder): its root made absolute (the key of its index) and read
    for the class count and training-set size; the resident-only options refused."""
    name = d["name"]
    for key in ("synthetic", "labels", "half", "download"):
        if d.get(key) not in (None, False):
            bad(f"dataset.{key}", f"not available for the streamed dataset {name!r}; allowed with "
                "mnist, fashion_mnist, cifar10, cifar100, synthetic")
    image_size = d.get("image_size", DatasetSpec.image_size)
    resize = d.get("resize", DatasetSpec.resize)
    if resize < image_size:
        bad("dataset.resize", f"{resize} is smaller than image_size {image_size}; the centre crop needs resize >= image_size")
    val_size = d.get("val_size", DatasetSpec.val_size)
    # until the folder is read: stand-ins that let the other sections be checked without follow-on
    # errors (a spec with a folder problem is refused anyway)
    root, classes, train_size = d.get("root"), 2, val_size + 1
    if not root:
        bad("dataset.root", f"required for {name!r}: the folder holding train/<class>/*.JPEG and val/<class>/*.JPEG")
    else:
        root = os.path.abspath(os.path.expanduser(root))
        try:
            found = image_folder.facts(root, name)
        except (image_folder.FolderError, OSError) as err:
            bad("dataset.root", str(err))
        else:
            classes, train_size = found.num_classes, found.train_size
            if val_size >= train_size:
                bad("dataset.val_size", f"{val_size} leaves no training data; allowed: < {train_size} "
                    f"(the images in {root}/train)")
    augment = d.get("augment")
    dataset = DatasetSpec(name=name, root=root, val_size=val_size, augment=True if augment is None else augment,
                          image_size=image_size, resize=resize, folder_classes=classes)
    return dataset, train_size


# What needs the whole dataset as tensors in memory, so not (yet) a streamed one.
_RESIDENT_CRITERIA = ("snip", "optimal_mask")
_RESIDENT_BRANCHES = ("supermask", "supermask_random")


def _check_streamed_features(dataset: DatasetSpec, training: TrainingSpec, pruning: PruningSpec,
                             branches: tuple[str, ...], bad: Any) -> None:
    """Refuse what lotto runs only on resident data (lotto.core.data.Splits) for a streamed dataset."""
    why = f"needs the dataset in memory; not available with the streamed dataset {dataset.name!r}"
    if training.vectorize_seeds:
        bad("training.vectorize_seeds", f"true {why}; allowed: false")
    if pruning.criterion in _RESIDENT_CRITERIA:
        bad("pruning.criterion", f"{pruning.criterion!r} {why}")
    for branch in sorted(set(branches) & set(_RESIDENT_BRANCHES)):
        bad("branches", f"{branch!r} {why}")


def _iterations_per_epoch(train_size: int, val_size: int, batch_size: int) -> int:
    """What '1ep' means: full batches of the training split left after validation (at least 1)."""
    return max(1, (train_size - val_size) // batch_size) if val_size < train_size else 1


def _step_parser(per_epoch: int, bad: Any) -> Any:
    """parse_step for this experiment's epoch length, reporting a step longer than any study."""

    def step(key: str, value: Any) -> int:
        iterations = parse_step(value, per_epoch)
        if iterations > MAX_ITERATIONS:
            bad(key, f"{shorten(value)} ({iterations} it) is longer than any study; allowed: at most "
                f"{MAX_ITERATIONS} iterations")
        return iterations

    return step


def _resolve_training(t: dict[str, Any], step: Any, bad: Any) -> TrainingSpec:
    defaults = TrainingSpec
    duration = step("training.duration", t["duration"])
    if duration <= 0:
        bad("training.duration", f"{t['duration']!r} is empty; allowed: at least 1 iteration")
    milestones = tuple(step("training.milestones", m) for m in t.get("milestones", defaults.milestones))
    for raw, m in zip(t.get("milestones", defaults.milestones), milestones, strict=True):
        if m > duration:
            bad("training.milestones", f"{raw!r} ({m} it) is after the end ({duration} it)")
    if list(milestones) != sorted(milestones):
        bad("training.milestones", f"{list(t['milestones'])!r} must be increasing")
    warmup = step("training.warmup", t.get("warmup", defaults.warmup))
    if warmup > duration:
        bad("training.warmup", f"{t['warmup']!r} ({warmup} it) is longer than the run ({duration} it)")
    eval_every = step("training.eval_every", t.get("eval_every", defaults.eval_every))
    if eval_every <= 0:
        bad("training.eval_every", f"{t.get('eval_every')!r}; allowed: at least 1 iteration")
    if t.get("nesterov") and not t.get("momentum"):
        bad("training.nesterov", "true needs training.momentum > 0")
    if t["optimizer"] == "adam" and (t.get("momentum") or t.get("nesterov")):
        bad("training.momentum", "momentum/nesterov apply to optimizer: sgd only")
    return TrainingSpec(
        optimizer=t["optimizer"],
        lr=float(t["lr"]),
        batch_size=t["batch_size"],
        duration=duration,
        momentum=float(t.get("momentum", defaults.momentum)),
        nesterov=t.get("nesterov", defaults.nesterov),
        weight_decay=float(t.get("weight_decay", defaults.weight_decay)),
        l2=float(t.get("l2", defaults.l2)),
        bn_l1=float(t.get("bn_l1", defaults.bn_l1)),
        milestones=milestones,
        gamma=float(t.get("gamma", defaults.gamma)),
        warmup=warmup,
        eval_every=eval_every,
        divergence_loss=float(t.get("divergence_loss", defaults.divergence_loss)),
        precision=t.get("precision", defaults.precision),
        checkpoint_every=step("training.checkpoint_every", t.get("checkpoint_every", defaults.checkpoint_every)),
        device=t.get("device", defaults.device),
        vectorize_seeds=t.get("vectorize_seeds", defaults.vectorize_seeds),
        cuda_graph=t.get("cuda_graph", defaults.cuda_graph),
        devices=t.get("devices", defaults.devices),
        nodes=t.get("nodes", defaults.nodes),
        sync_batchnorm=t.get("sync_batchnorm", defaults.sync_batchnorm),
    )


def _check_earlybird_fits(pruning: PruningSpec, model: ModelSpec, dataset: DatasetSpec, bad: Any) -> None:
    if pruning.rounds:
        bad("earlybird", "runs instead of IMP rounds; remove pruning.rounds (or the earlybird section)")
    if model.name:
        _check_channel_prunable(model, dataset, bad)


def _check_job_count(seeds: tuple[int, ...], pruning: PruningSpec, branches: tuple[str, ...], bad: Any) -> None:
    trainings = len(seeds) * (1 + pruning.rounds * (1 + len(branches)))
    if trainings > MAX_TRAININGS:
        bad("pruning.rounds", f"{pruning.rounds} rounds x {len(seeds)} seeds x "
            f"{1 + len(branches)} trainings per round are {trainings} jobs; allowed: at most {MAX_TRAININGS} "
            "(Snakemake holds every job in memory)")


def _check_rounds_rules(pruning: PruningSpec, rewinding: RewindingSpec, branches: tuple[str, ...],
                        bad: Any) -> None:
    """Branches need pruned rounds; one-shot criteria need every round to start from one point."""
    if branches and pruning.rounds == 0:
        bad("branches", f"{list(branches)} need pruned rounds; set pruning.rounds >= 1")
    criterion = CRITERION_FACTS[pruning.criterion]
    if criterion.one_shot_starts and rewinding.weights not in criterion.one_shot_starts:
        bad("rewinding.weights", f"{rewinding.weights!r}: {criterion.one_shot_reason}; "
            f"use weights: {' or '.join(criterion.one_shot_starts)}")


def _check_processes(training: TrainingSpec, model: ModelSpec, pruning: PruningSpec, bad: Any) -> None:
    """What one training in several processes (training.devices x nodes, lotto.core.distributed) cannot
    do with the results of one process."""
    processes = training.devices * training.nodes
    if processes == 1:
        return
    why = f"{training.devices} x {training.nodes} processes"
    if training.batch_size < processes:
        bad("training.devices", f"{why} for batch_size {training.batch_size}: each needs at least one example")
    if model.dropout:
        bad("training.devices", f"{why}: with model.dropout each process would draw its own dropout masks, "
            "so the results would depend on the number of processes; use devices: 1 and nodes: 1")
    if training.vectorize_seeds:
        bad("training.vectorize_seeds", f"true trains several seeds in one process; not with {why}")
    if pruning.criterion == "optimal_mask":
        bad("training.devices", f"{why}: optimal_mask's mask training runs in one process; "
            "use devices: 1 and nodes: 1")


def _check_transfer_branch(branches: tuple[str, ...], transfer_from: str | None, bad: Any) -> None:
    if "transfer" in branches and transfer_from is None:
        bad("branches", "'transfer' needs transfer.from: the experiment whose tickets it trains")
    if transfer_from is not None and "transfer" not in branches:
        bad("transfer.from", f"{transfer_from!r} is only used by the 'transfer' branch; add it to branches")


def seed_vectorisation_problems(model: ModelSpec, dataset: DatasetSpec, training: TrainingSpec,
                                rewinding: RewindingSpec) -> list[tuple[str, str]]:
    """Why the seeds of a pruned round cannot train together (lotto.core.vmap.train_seeds), as
    (key, message) pairs; empty when they can. Checked for training.vectorize_seeds: true and
    by lotto.rounds.run_round_seeds."""
    off = "or set training.vectorize_seeds: false"
    problems = []
    known = _model_facts(model, dataset)  # a model that cannot be built is reported on its own
    if known.build_error is None and (err := known.not_vectorisable):
        problems.append(("model", f"{model.name!r} cannot train its seeds together ({err}); "
                         f"allowed: a model without BatchNorm, {off}"))
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
    record_every = step("earlybird.record_every", e.get("record_every", INPUT_DEFAULTS["earlybird.record_every"]))
    if not 1 <= record_every <= training.duration:
        bad("earlybird.record_every", f"{e.get('record_every')!r} ({record_every} it); allowed: "
            f"1..{training.duration} it (the training duration)")
    epochs = training.duration // max(record_every, 1)
    draw_epochs = sorted({epochs if d == "final" else d for d in e.get("draw_epochs", [])})
    for d in draw_epochs:
        if d > epochs:
            bad("earlybird.draw_epochs", f"{d} is after the last epoch ({epochs}); use 'final' for it")
    defaults = EarlyBirdSpec
    return EarlyBirdSpec(
        ratios=tuple(float(r) for r in e.get("ratios", defaults.ratios)),
        epsilon=float(e.get("epsilon", defaults.epsilon)),
        window=int(e.get("window", defaults.window)),
        slimming=float(e.get("slimming", defaults.slimming)),
        record_every=record_every,
        stop_at_draw=bool(e.get("stop_at_draw", defaults.stop_at_draw)),
        draw_epochs=tuple(draw_epochs),
        precision=e.get("precision", defaults.precision),
        retrain=tuple(e.get("retrain", defaults.retrain)),
        baselines=tuple(e.get("baselines", defaults.baselines)),
    )


def _check_channel_prunable(model: ModelSpec, dataset: DatasetSpec, bad: Any) -> None:
    known = _model_facts(model, dataset)
    if err := known.build_error or known.not_channel_prunable:
        bad("model.name", f"{model.name!r} cannot run earlybird: {err}")


def _resolve_model(m: dict[str, Any], dataset: DatasetSpec, bad: Any) -> ModelSpec:
    if is_external(m["name"]):
        if problem := external_name_problem(m["name"]):
            bad("model.name", problem)
            return ModelSpec(name=m["name"])
    elif "options" in m:
        bad("model.options", f"only for 'torchvision:<name>' and '<module>:<callable>' models, not the "
            f"registry model {m['name']!r} (its options: dropout, width, bn_momentum, bn_eps)")
        return ModelSpec(name=m["name"])
    elif m["name"] not in (names := _model_names(m["name"])):
        close = difflib.get_close_matches(m["name"], names, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        bad("model.name", f"unknown model {m['name']!r}{hint}; choose one of: {', '.join(names)}")
        return ModelSpec(name=m["name"])
    tf_convention = m.get("bn_convention", INPUT_DEFAULTS["model.bn_convention"]) == "tf"
    momentum = m.get("bn_momentum", 1.0 - ModelSpec.bn_momentum if tf_convention else ModelSpec.bn_momentum)
    if tf_convention:
        momentum = 1.0 - momentum
    spec = ModelSpec(
        name=m["name"],
        dropout=float(m.get("dropout", ModelSpec.dropout)),
        width=float(m.get("width", ModelSpec.width)),
        bn_momentum=round(float(momentum), 12),
        bn_eps=float(m.get("bn_eps", ModelSpec.bn_eps)),
        options=None if "options" not in m else tuple(sorted((k, _frozen(v)) for k, v in m["options"].items())),
    )
    if (err := _model_facts(spec, dataset).build_error) is not None:
        bad("model", err)
    return spec


def _frozen(value: Any) -> Any:
    """A model option as the spec holds it (lists as tuples, as lotto.core.spec_types reads them back)."""
    return tuple(_frozen(v) for v in value) if isinstance(value, list) else value


def _model_names(name: str) -> list[str]:
    """The registry's model names; the table's (no torch) when they include `name`, else the
    registry itself (a model registered at run time, or an unknown name to refuse)."""
    names = tabulated_model_names()
    if name in names:
        return names
    from lotto.core import models

    return models.model_names()


def _model_facts(model: ModelSpec, dataset: DatasetSpec) -> ModelFacts:
    """What validation reads about the model, without torch where lotto/model_facts.json knows it."""
    return facts(model_options(model, dataset))


def build_model(model: ModelSpec, dataset: DatasetSpec, device: Any = "cpu") -> Any:
    """The one place a spec becomes a torch module."""
    import torch

    from lotto.core import models

    with torch.device(device):
        return models.create_model(**model_options(model, dataset))


def _resolve_pruning(p: dict[str, Any], model: ModelSpec, dataset: DatasetSpec, bad: Any,
                     training: TrainingSpec, step: Any) -> PruningSpec:
    scope = p.get("scope", PruningSpec.scope)
    rounds = p.get("rounds", PruningSpec.rounds)
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
    criterion = p.get("criterion", PruningSpec.criterion)
    if CRITERION_FACTS[criterion].whole_units:
        if scope != "layerwise":
            bad("pruning.scope", f"{scope!r}: {criterion} ranks a layer's filters by L1 norm, which differs "
                "in scale between layers; use scope: layerwise")
        elif rates.get("output", 0.0):
            bad("pruning.rates.output", f"{rates['output']} would remove classes ({criterion} removes whole "
                "output units); set output: 0")
    exclude = _resolve_exclude(p.get("exclude", list(PruningSpec.exclude)), model, dataset, bad)
    if scope == "layerwise" and rounds > 0 and rates and model.name:
        try:
            _check_kinds_have_rates(model, dataset, rates, exclude)
        except ValueError as err:
            bad("pruning.rates", str(err))
    return PruningSpec(
        criterion=criterion,
        scope=scope,
        rounds=rounds,
        rate=None if rate is None else float(rate),
        rates=tuple(sorted((k, float(v)) for k, v in rates.items())),
        exclude=exclude,
        mask_training=_resolve_mask_training(p, training, step, bad),
    )


def _resolve_exclude(names: list[str], model: ModelSpec, dataset: DatasetSpec, bad: Any) -> tuple[str, ...]:
    """pruning.exclude as module paths (what masks are keyed by): a readable name (fc1, output;
    lotto.core.masks.readable_names) becomes its module path, so either spelling gives one spec."""
    if not names:
        return ()
    known = _model_facts(model, dataset)
    if known.build_error is not None:
        return tuple(names)  # an unknown model is reported on its own
    readable = {name: path for name, path, _ in known.layers}
    paths = [path for _, path, _ in known.layers]
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
    m, criterion = p.get("mask_training"), p.get("criterion", PruningSpec.criterion)
    if not learns_mask(criterion):
        if m is not None:
            learners = [name for name in CRITERION_FACTS if learns_mask(name)]
            bad("pruning.mask_training", f"only used with criterion: {' or '.join(learners)} (criterion is "
                f"{criterion!r})")
        return None
    m = m or {}
    steps = step("pruning.mask_training.steps", m.get("steps", INPUT_DEFAULTS["pruning.mask_training.steps"]))
    if steps <= 0:
        bad("pruning.mask_training.steps", f"{m.get('steps')!r} is empty; allowed: at least 1 iteration")
    defaults = MaskTrainingSpec()
    return MaskTrainingSpec(
        pretrain=round(float(m.get("pretrain", INPUT_DEFAULTS["pruning.mask_training.pretrain"])) * training.duration),
        steps=steps,
        lr=float(m.get("lr", defaults.lr)),
        init=float(m.get("init", defaults.init)),
        penalty=m.get("penalty", defaults.penalty),
        penalty_coef=float(m.get("penalty_coef", defaults.penalty_coef)),
        grad_clip=float(m.get("grad_clip", defaults.grad_clip)),
        logit_clip=float(m.get("logit_clip", defaults.logit_clip)),
    )


def _check_kinds_have_rates(model: ModelSpec, dataset: DatasetSpec, rates: dict, exclude: list) -> None:
    known = _model_facts(model, dataset)
    if known.build_error is not None:
        return  # reported on its own (model)
    kinds = {kind for _, path, kind in known.layers if path not in exclude}
    missing = sorted(kinds - set(rates))
    if missing:
        raise ValueError(
            f"{model.name} has {'/'.join(missing)} layers but no rate for them; "
            f"add {', '.join(missing)} to pruning.rates (0 keeps them dense)"
        )


def _resolve_rewinding(r: dict[str, Any], training: TrainingSpec, step: Any, bad: Any) -> RewindingSpec:
    weights = r.get("weights", RewindingSpec.weights)
    k = step("rewinding.step", r["step"]) if "step" in r else 0
    if weights == "step" and "step" not in r:
        bad("rewinding.step", "missing: weights: step needs the iteration k to rewind to")
    if weights != "step" and "step" in r:
        bad("rewinding.step", f"only used with weights: step (weights is {weights!r})")
    if k >= training.duration and weights == "step":
        bad("rewinding.step", f"{r['step']!r} ({k} it) is not inside the schedule (< {training.duration} it)")
    back = float(r.get("back", RewindingSpec.back))
    if weights == "back" and "back" not in r:
        bad("rewinding.back", "missing: weights: back needs the fraction X in [0, 1] to rewind")
    if weights != "back" and "back" in r:
        bad("rewinding.back", f"only used with weights: back (weights is {weights!r})")
    lr = r.get("lr", "rewind" if weights == "step" else RewindingSpec.lr)
    if lr == "rewind" and weights != "step":
        bad("rewinding.lr", f"'rewind' follows the weights' step, so needs weights: step (weights is {weights!r})")
    offset = k if lr == "rewind" else 0
    retrain = step("rewinding.retrain", r["retrain"]) if "retrain" in r else training.duration - offset
    if retrain <= 0 and "retrain" in r:  # else rewinding.step is reported
        bad("rewinding.retrain", f"{r.get('retrain')!r}; allowed: at least 1 iteration")
    return RewindingSpec(weights=weights, step=k, back=back, lr=lr, retrain=retrain)
