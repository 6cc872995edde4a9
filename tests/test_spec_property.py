"""Property: every malformed experiment is refused by `resolve` with a SpecError naming the key.

Each example mutates one key of a valid base document: an unknown key, a value of the wrong
JSON type, a number out of range, a bad enum choice, a malformed step ('12epochs', -5), or a
value the semantic checks refuse (a val_size leaving no training data, an unknown model).
In-range mutations of the same keys must be accepted and show up in the resolved spec.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from conftest import deep_merge, tiny_doc
from hypothesis import event, given, settings
from hypothesis import strategies as st

from lotto.core import models
from lotto.core.spec import ExperimentSpec, SpecError, experiment_schema, resolve

TRAIN_SIZE, VAL_SIZE, BATCH, DURATION = 2000, 200, 60, 60
PER_EPOCH = (TRAIN_SIZE - VAL_SIZE) // BATCH

BASE = tiny_doc(
    description="the valid document every example mutates",
    dataset={"synthetic": {"n_train": TRAIN_SIZE, "n_test": 500, "shape": [1, 8, 8],
                           "num_classes": 10, "seed": 0}},
    training={"optimizer": "sgd", "lr": 0.1, "batch_size": BATCH, "duration": DURATION},
    rewinding={"weights": "init"},
    branches=["reinit"],
)


def iterations(step: int | str) -> int:
    """What a valid step of the base document resolves to (written independently of lotto)."""
    if isinstance(step, int):
        return step
    count, unit = int(step[:-2]), step[-2:]
    return count * PER_EPOCH if unit == "ep" else count


def key_path(path: tuple) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")


def set_in(doc: dict, path: tuple, value: Any) -> dict:
    """A copy of `doc` with the key at `path` set to `value`, creating sections as needed."""
    out = copy.deepcopy(doc)
    node: Any = out
    for here, below in zip(path[:-1], path[1:], strict=True):
        if isinstance(node, dict) and here not in node:
            node[here] = [] if isinstance(below, int) else {}
        node = node[here]
    last = path[-1]
    if isinstance(node, list) and last == len(node):
        node.append(value)
    else:
        node[last] = value
    return out


# ---------------------------------------------------------------------------- values


def valid_steps(low: int, high: int) -> st.SearchStrategy:
    """Steps between `low` and `high` iterations, as integers, '<n>it' and '<n>ep'."""
    epochs = st.integers(math.ceil(low / PER_EPOCH), high // PER_EPOCH).map(lambda n: f"{n}ep")
    return st.one_of(st.integers(low, high), st.integers(low, high).map(lambda n: f"{n}it"), epochs)


BAD_STEPS = st.one_of(
    st.sampled_from(["12epochs", "ep", "it", "5 it", " 5it", "1.5ep", "-3it", "", "5IT", "0x10",
                     "ten", "5e3", "3ep2", "+4it", "4 ep"]),
    st.builds("{}{}".format, st.integers(0, 10**6),
              st.sampled_from(["epochs", "iters", "e", "i", "s", "steps", " it", "ep ", "k"])),
    st.integers(max_value=-1),
)
NON_INTEGRAL_FLOATS = st.builds(float.__add__, st.integers(-1000, 1000).map(float),
                                st.floats(0.001, 0.999))
JSON_TYPES: dict[str, st.SearchStrategy] = {
    "string": st.text(max_size=8),
    "integer": st.integers(-(10**6), 10**6),
    "number": NON_INTEGRAL_FLOATS,  # integral floats are tested on their own below
    "boolean": st.booleans(),
    "null": st.none(),
    "array": st.lists(st.integers(0, 9), max_size=3),
    "object": st.dictionaries(st.sampled_from("abc"), st.integers(), max_size=2),
}
ACCEPTS = {  # the JSON types a leaf's schema type accepts
    "number": {"number", "integer"},
    "integer": {"integer"},
    "step": {"integer", "string"},  # strings must match the step pattern: see BAD_STEPS
    "string": {"string"},
    "boolean": {"boolean"},
    "array": {"array"},
}
ENUM_WRONG_TYPES = {"array", "object", "number"}  # enums have no type: never a choice here


def below(limit: float, inclusive: bool) -> st.SearchStrategy:
    return st.floats(max_value=limit, exclude_max=not inclusive, allow_nan=False,
                     allow_infinity=False)


def above(limit: float, inclusive: bool) -> st.SearchStrategy:
    return st.floats(min_value=limit, exclude_min=not inclusive, allow_nan=False,
                     allow_infinity=False)


def not_in(choices: list) -> st.SearchStrategy:
    near = [str(c).upper() for c in choices if c is not None] + [f"{c}s" for c in choices if c]
    return st.one_of(st.sampled_from(near), st.text(max_size=10)).filter(lambda v: v not in choices)


@dataclass(frozen=True)
class Leaf:
    """One key of the base document: its schema type, values the spec must refuse (right type,
    wrong value) and accept, and how to read an accepted value back from the resolved spec."""

    path: tuple
    kind: str
    invalid: st.SearchStrategy | None = None
    valid: st.SearchStrategy | None = None
    resolved: Callable[[ExperimentSpec], Any] | None = None
    expected: Callable[[Any], Any] = lambda v: v
    context: dict = field(default_factory=dict)  # overrides applied before the mutation
    reported_at: str | None = None  # key path the error names, if not exactly `path`
    nullable: bool = False
    shows_value: bool = True  # the refusal quotes the value itself

    @property
    def where(self) -> str:
        return self.reported_at or key_path(self.path)


def rate_leaf(kind: str) -> Leaf:
    return Leaf(("pruning", "rates", kind), "number",
                invalid=st.one_of(below(0, inclusive=False), above(1, inclusive=True)),
                valid=st.floats(0, 0.99), resolved=lambda s: s.pruning.rate_for(kind))


def step_leaf(name: str, invalid: st.SearchStrategy | None, valid: st.SearchStrategy) -> Leaf:
    return Leaf(("training", name), "step", invalid=invalid, valid=valid,
                resolved=lambda s: getattr(s.training, name), expected=iterations)


MODEL_NAMES = models.model_names()
LEAVES = [
    Leaf(("name",), "string", invalid=st.sampled_from(["a b", "x/y", "", "é", "n:1", ".", "..", "-x"]),
         valid=st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,11}", fullmatch=True), resolved=lambda s: s.name),
    Leaf(("description",), "string", valid=st.text(max_size=20), resolved=lambda s: s.description),
    Leaf(("seeds",), "array", valid=st.lists(st.integers(0, 1000), min_size=1, max_size=4,
                                             unique=True),
         invalid=st.one_of(st.just([]), st.lists(st.integers(0, 3), min_size=2).filter(
             lambda s: len(set(s)) < len(s))),
         resolved=lambda s: list(s.seeds)),
    Leaf(("seeds", 0), "integer", invalid=st.integers(max_value=-1)),
    Leaf(("branches", 0), "enum", invalid=not_in(["reinit", "random_mask", "oneshot"]),
         valid=st.sampled_from(["reinit", "random_mask", "oneshot"]),
         resolved=lambda s: s.branches[0]),
    # dataset
    Leaf(("dataset", "name"), "string", invalid=not_in(["mnist", "fashion_mnist", "cifar10",
                                                         "cifar100", "synthetic"])),
    Leaf(("dataset", "val_size"), "integer",
         invalid=st.one_of(st.integers(max_value=-1), st.integers(TRAIN_SIZE, 10**9)),
         valid=st.integers(0, TRAIN_SIZE - 1), resolved=lambda s: s.dataset.val_size),
    Leaf(("dataset", "root"), "string", nullable=True, valid=st.one_of(st.none(), st.text()),
         resolved=lambda s: s.dataset.root),
    Leaf(("dataset", "download"), "boolean", valid=st.booleans(),
         resolved=lambda s: s.dataset.download),
    Leaf(("dataset", "augment"), "boolean", nullable=True, valid=st.booleans(),
         resolved=lambda s: s.dataset.augment),
    Leaf(("dataset", "half"), "enum", invalid=st.one_of(st.integers(2, 99), st.integers(-99, -1),
                                                         st.booleans(), st.text(max_size=4)),
         valid=st.sampled_from([0, 1, None]), resolved=lambda s: s.dataset.half),
    Leaf(("dataset", "labels"), "array", nullable=True,
         invalid=st.lists(st.integers(10, 99), min_size=1, max_size=3, unique=True),
         valid=st.lists(st.integers(0, 9), min_size=1, max_size=5, unique=True),
         resolved=lambda s: list(s.dataset.labels), shows_value=False),
    Leaf(("dataset", "synthetic", "n_train"), "integer", invalid=st.integers(max_value=1),
         valid=st.integers(VAL_SIZE + 1, 10**5),
         resolved=lambda s: dict(s.dataset.synthetic)["n_train"]),
    Leaf(("dataset", "synthetic", "n_test"), "integer", invalid=st.integers(max_value=0),
         valid=st.integers(1, 10**5), resolved=lambda s: dict(s.dataset.synthetic)["n_test"]),
    Leaf(("dataset", "synthetic", "num_classes"), "integer", invalid=st.integers(max_value=1),
         valid=st.integers(2, 100), resolved=lambda s: s.dataset.num_classes),
    Leaf(("dataset", "synthetic", "seed"), "integer", invalid=st.integers(max_value=-1),
         valid=st.integers(0, 10**6), resolved=lambda s: dict(s.dataset.synthetic)["seed"]),
    Leaf(("dataset", "synthetic", "shape"), "array",
         invalid=st.lists(st.integers(1, 9), max_size=5).filter(lambda s: len(s) != 3),
         valid=st.lists(st.integers(1, 16), min_size=3, max_size=3),
         resolved=lambda s: list(s.dataset.input_shape)),
    Leaf(("dataset", "synthetic", "shape", 1), "integer", invalid=st.integers(max_value=0)),
    # model
    Leaf(("model", "name"), "string",
         invalid=st.text(min_size=1, max_size=12).filter(lambda n: n not in MODEL_NAMES),
         valid=st.sampled_from(["lenet_300_100", "mlp_400x3"]), resolved=lambda s: s.model.name),
    Leaf(("model", "dropout"), "number",
         invalid=st.one_of(below(0, inclusive=False), above(1, inclusive=True)),
         valid=st.floats(0, 0.9), resolved=lambda s: s.model.dropout),
    Leaf(("model", "width"), "number", invalid=below(0, inclusive=True)),
    Leaf(("model", "bn_eps"), "number", invalid=below(0, inclusive=True)),
    Leaf(("model", "bn_momentum"), "number",
         invalid=st.one_of(below(0, inclusive=True), above(1, inclusive=True))),
    Leaf(("model", "bn_convention"), "enum", invalid=not_in(["torch", "tf"]),
         valid=st.sampled_from(["torch", "tf"]), resolved=lambda s: s.model.bn_momentum,
         expected=lambda v: 0.1),
    # training
    Leaf(("training", "optimizer"), "enum", invalid=not_in(["adam", "sgd"]),
         valid=st.sampled_from(["adam", "sgd"]), resolved=lambda s: s.training.optimizer),
    Leaf(("training", "lr"), "number", invalid=below(0, inclusive=True),
         valid=st.floats(1e-6, 10), resolved=lambda s: s.training.lr),
    Leaf(("training", "momentum"), "number",
         invalid=st.one_of(below(0, inclusive=False), above(1, inclusive=True)),
         valid=st.floats(0, 0.99), resolved=lambda s: s.training.momentum),
    Leaf(("training", "nesterov"), "boolean", valid=st.booleans(),
         resolved=lambda s: s.training.nesterov, context={"training": {"momentum": 0.9}}),
    *(Leaf(("training", name), "number", invalid=below(0, inclusive=False),
           valid=st.floats(0, 1), resolved=lambda s, n=name: getattr(s.training, n))
      for name in ("weight_decay", "l2", "bn_l1")),
    Leaf(("training", "gamma"), "number", invalid=below(0, inclusive=True),
         valid=st.floats(1e-3, 1), resolved=lambda s: s.training.gamma),
    Leaf(("training", "divergence_loss"), "number", invalid=below(0, inclusive=True),
         valid=st.floats(1, 1e9), resolved=lambda s: s.training.divergence_loss),
    Leaf(("training", "batch_size"), "integer", invalid=st.integers(max_value=0),
         valid=st.integers(1, 5000), resolved=lambda s: s.training.batch_size),
    Leaf(("training", "device"), "enum", invalid=not_in(["auto", "cpu", "cuda"]),
         valid=st.sampled_from(["auto", "cpu", "cuda"]), resolved=lambda s: s.training.device),
    step_leaf("duration", st.sampled_from([0, "0it", "0ep"]), valid_steps(1, 10**5)),
    step_leaf("eval_every", st.sampled_from([0, "0it", "0ep"]), valid_steps(1, 10**4)),
    step_leaf("warmup", valid_steps(DURATION + 1, 10**5), valid_steps(0, DURATION)),
    step_leaf("checkpoint_every", None, valid_steps(0, 10**4)),
    Leaf(("training", "milestones", 0), "step", invalid=valid_steps(DURATION + 1, 10**5),
         valid=valid_steps(0, DURATION), resolved=lambda s: s.training.milestones[0],
         expected=iterations, reported_at="training.milestones"),
    # pruning
    Leaf(("pruning", "criterion"), "enum", invalid=not_in(["magnitude", "random"]),
         valid=st.sampled_from(["magnitude", "random"]), resolved=lambda s: s.pruning.criterion),
    Leaf(("pruning", "scope"), "enum", invalid=not_in(["layerwise", "global"])),
    Leaf(("pruning", "rounds"), "integer", invalid=st.integers(max_value=-1),
         valid=st.integers(1, 30), resolved=lambda s: s.pruning.rounds),
    rate_leaf("fc"),
    rate_leaf("output"),
    rate_leaf("conv"),
    Leaf(("pruning", "rate"), "number",
         invalid=st.one_of(below(0, inclusive=False), above(1, inclusive=True)),
         valid=st.floats(0, 0.99), resolved=lambda s: s.pruning.rate,
         context={"pruning": {"scope": "global", "rates": None}}),
    Leaf(("pruning", "target_density"), "number",
         invalid=st.one_of(below(0, inclusive=True), above(1, inclusive=True)),
         valid=st.floats(0.01, 0.99), resolved=lambda s: (1 - s.pruning.rate_for("fc")) ** 2,
         expected=pytest.approx, context={"pruning": {"rates": None}}),
    Leaf(("pruning", "exclude"), "array",
         invalid=st.lists(st.text(max_size=6).filter(lambda n: n not in ("1", "3", "5")),
                          min_size=1, max_size=3),
         valid=st.lists(st.sampled_from(["1", "3", "5"]), max_size=3, unique=True),
         resolved=lambda s: list(s.pruning.exclude), shows_value=False),
    Leaf(("pruning", "exclude", 0), "string"),
    # rewinding
    Leaf(("rewinding", "weights"), "enum", invalid=not_in(["init", "step", "final", "back"]),
         valid=st.sampled_from(["init", "final"]), resolved=lambda s: s.rewinding.weights),
    Leaf(("rewinding", "lr"), "enum", invalid=not_in(["restart", "rewind", "final"]),
         valid=st.sampled_from(["restart", "final"]), resolved=lambda s: s.rewinding.lr),
    Leaf(("rewinding", "step"), "step", invalid=valid_steps(DURATION, 10**5),
         valid=valid_steps(0, DURATION - 1), resolved=lambda s: s.rewinding.step,
         expected=iterations, context={"rewinding": {"weights": "step"}}),
    Leaf(("rewinding", "back"), "number",
         invalid=st.one_of(below(0, inclusive=False), above(1, inclusive=False)),
         valid=st.floats(0, 1), resolved=lambda s: s.rewinding.back,
         context={"rewinding": {"weights": "back"}}),
    Leaf(("rewinding", "retrain"), "step", invalid=st.sampled_from([0, "0it", "0ep"]),
         valid=valid_steps(1, 10**5), resolved=lambda s: s.rewinding.retrain, expected=iterations),
]


def with_context(leaf: Leaf) -> dict:
    return deep_merge(BASE, leaf.context)


# ---------------------------------------------------------------------------- mutations


@dataclass(frozen=True)
class Mutation:
    doc: dict
    where: str  # the key path the refusal must name
    must_contain: tuple[str, ...]  # further texts the refusal must contain
    label: str


def _section_keys(section: tuple) -> list[str]:
    node = experiment_schema()
    for key in section:
        node = node["properties"][key]
    return list(node["properties"])


SECTIONS = [(), ("dataset",), ("dataset", "synthetic"), ("model",), ("training",), ("pruning",),
            ("pruning", "rates"), ("rewinding",)]


@st.composite
def unknown_keys(draw) -> Mutation:
    section = draw(st.sampled_from(SECTIONS))
    key = draw(st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=14).filter(
        lambda k: k not in _section_keys(section)))
    path = (*section, key)
    return Mutation(set_in(BASE, path, 1), key_path(path), ("unknown key", "allowed keys:"),
                    "unknown key")


@st.composite
def wrong_types(draw) -> Mutation:
    leaf = draw(st.sampled_from(LEAVES))
    if leaf.kind == "enum":
        wrong = ENUM_WRONG_TYPES
    else:
        wrong = set(JSON_TYPES) - ACCEPTS[leaf.kind] - ({"null"} if leaf.nullable else set())
    value = draw(st.one_of(*(JSON_TYPES[t] for t in sorted(wrong))))
    doc = set_in(with_context(leaf), leaf.path, value)
    return Mutation(doc, leaf.where, (repr(value),), "wrong type")


@st.composite
def invalid_values(draw) -> Mutation:
    """Right type, wrong value: out of range, bad choice, unknown name, semantic refusals."""
    leaf = draw(st.sampled_from([leaf for leaf in LEAVES if leaf.invalid is not None]))
    value = draw(leaf.invalid)
    doc = set_in(with_context(leaf), leaf.path, value)
    shown = (repr(value),) if leaf.shows_value else ()
    return Mutation(doc, leaf.where, shown, "invalid value")


@st.composite
def bad_steps(draw) -> Mutation:
    leaf = draw(st.sampled_from([leaf for leaf in LEAVES if leaf.kind == "step"]))
    value = draw(BAD_STEPS)
    doc = set_in(with_context(leaf), leaf.path, value)
    return Mutation(doc, leaf.where, (repr(value), "'<n>it'", "'<n>ep'"), "bad step")


MALFORMED = st.one_of(unknown_keys(), wrong_types(), invalid_values(), bad_steps())


@settings(max_examples=300, deadline=None, database=None)
@given(MALFORMED)
def test_malformed_documents_are_refused_naming_the_key(mutation):
    """Each of 300 one-key mutations is refused with a message that names the key path."""
    event(mutation.label)
    with pytest.raises(SpecError) as info:
        resolve(mutation.doc)
    message = str(info.value)
    assert mutation.where in message, f"{mutation.label}: {mutation.where!r} not in {message!r}"
    for text in mutation.must_contain:
        assert text in message, f"{mutation.label}: {text!r} not in {message!r}"
    assert "Traceback" not in message and 'File "' not in message


@st.composite
def valid_mutations(draw) -> tuple[Leaf, Any, dict]:
    leaf = draw(st.sampled_from([leaf for leaf in LEAVES if leaf.valid is not None]))
    value = draw(leaf.valid)
    return leaf, value, set_in(with_context(leaf), leaf.path, value)


@settings(max_examples=150, deadline=None, database=None)
@given(valid_mutations())
def test_in_range_mutations_are_accepted_and_resolved(mutation):
    """The refusals above are not blanket: the same keys with allowed values resolve."""
    leaf, value, doc = mutation
    spec = resolve(doc)
    assert leaf.resolved is not None
    assert leaf.resolved(spec) == leaf.expected(value), key_path(leaf.path)
    assert ExperimentSpec.from_dict(spec.to_dict()) == spec


INTEGER_LEAVES = [leaf for leaf in LEAVES if leaf.kind in ("integer", "step")]


@settings(max_examples=40, deadline=None, database=None)
@given(st.sampled_from(INTEGER_LEAVES), st.integers(1, 50).map(float))
def test_integral_floats_for_integer_keys_are_refused(leaf, value):
    """JSON Schema's 'integer' admits 60.0, but lotto needs ints (slices, counts, randperm):
    a float must be refused up front, naming the key, not crash a job later."""
    with pytest.raises(SpecError) as info:
        resolve(set_in(with_context(leaf), leaf.path, value))
    assert leaf.where in str(info.value)


def test_non_finite_numbers_are_refused():
    """YAML's .nan/.inf pass JSON Schema's bounds (nan compares false); an lr or weight decay
    of nan would silently ruin every job, so each must be refused naming its key."""
    not_refused = []
    for leaf in (leaf for leaf in LEAVES if leaf.kind == "number"):
        for value in (math.nan, math.inf, -math.inf):
            try:
                resolve(set_in(with_context(leaf), leaf.path, value))
            except SpecError as err:
                if leaf.where not in str(err):
                    not_refused.append(f"{leaf.where}={value} (refused without naming the key)")
            except Exception as err:  # noqa: BLE001 - any other exception is the finding
                not_refused.append(f"{leaf.where}={value} (crashed: {type(err).__name__}: {err})")
            else:
                not_refused.append(f"{leaf.where}={value}")
    assert not not_refused, "accepted: " + ", ".join(not_refused)
