"""lotto.core.spec: errors that name the key, the value and the fix; stable hashes; round trips."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

import pytest
from conftest import tiny_doc, tiny_spec

from lotto.core import models
from lotto.core.masks import prunable_layers
from lotto.core.spec import (
    INPUT_DEFAULTS,
    DatasetSpec,
    EarlyBirdSpec,
    ExperimentSpec,
    MaskTrainingSpec,
    ModelSpec,
    PruningSpec,
    RewindingSpec,
    SpecError,
    TrainingSpec,
    build_model,
    experiment_schema,
    load_experiment,
    resolve,
)
from lotto.core.spec_types import EXECUTION_ONLY


def refusal(doc: dict) -> str:
    """The message of the SpecError `doc` must raise."""
    with pytest.raises(SpecError) as info:
        resolve(doc)
    return str(info.value)


# ---------------------------------------------------------------------------- config errors

# (overrides of the tiny experiment, texts the message must contain: key path, value, allowed)
CONFIG_ERRORS = {
    "unknown key with did-you-mean": (
        {"training": {"lrr": 0.1}},
        ["training.lrr", "unknown key", "did you mean 'lr'", "allowed keys:", "batch_size"],
    ),
    "unknown top-level key": (
        {"pruneing": {"rounds": 1}},
        ["pruneing", "unknown key", "did you mean 'pruning'"],
    ),
    "wrong type": (
        {"training": {"lr": "fast"}},
        ["training.lr", "'fast'", "expected number"],
    ),
    "wrong type of a section": (
        {"model": ["lenet_300_100"]},
        ["model", "['lenet_300_100']", "expected object"],
    ),
    "layer-wise rate of 1": (
        {"pruning": {"rates": {"fc": 1.0}}},
        ["pruning.rates.fc", "1.0", "< 1"],
    ),
    "global rate above 1": (
        {"pruning": {"scope": "global", "rate": 1.5, "rates": None}},
        ["pruning.rate", "1.5", "< 1"],
    ),
    "negative iterations": (
        {"training": {"duration": -5}},
        ["training.duration", "-5", "'<n>it'", "'<n>ep'"],
    ),
    "step with a bad unit": (
        {"training": {"duration": "12epochs"}},
        ["training.duration", "'12epochs'", "'<n>it'", "'<n>ep'"],
    ),
    "zero iterations": (
        {"training": {"duration": "0ep"}},
        ["training.duration", "'0ep'", "at least 1 iteration"],
    ),
    "unknown model": (
        {"model": {"name": "lenet_300"}},
        ["model.name", "'lenet_300'", "did you mean 'lenet_300_100'", "choose one of:", "conv2"],
    ),
    "bad enum": (
        {"training": {"optimizer": "sgdd"}},
        ["training.optimizer", "'sgdd'", "did you mean 'sgd'", "choose one of: adam, sgd"],
    ),
    "rewind step beyond the schedule": (
        {"rewinding": {"weights": "step", "step": 500}},
        ["rewinding.step", "500", "< 60 it"],
    ),
    "rewind step in epochs beyond the schedule": (
        {"rewinding": {"weights": "step", "step": "2ep"}},
        ["rewinding.step", "'2ep'", "60 it"],
    ),
    "val_size too large": (
        {"dataset": {"val_size": 2000}},
        ["dataset.val_size", "2000", "< 2000"],
    ),
    "branches without rounds": (
        {"pruning": {"rounds": 0}, "branches": ["reinit"]},
        ["branches", "reinit", "pruning.rounds >= 1"],
    ),
    "unknown branch": (
        {"branches": ["reinitt"]},
        ["branches[0]", "'reinitt'", "did you mean 'reinit'", "random_mask"],
    ),
    "missing required key": (
        {"training": {"lr": None}},
        ["training", "missing required key 'lr'"],
    ),
    "adam with momentum": (
        {"training": {"momentum": 0.9}},
        ["training.momentum", "optimizer: sgd"],
    ),
    "milestone after the end": (
        {"training": {"milestones": [30, 90]}},
        ["training.milestones", "90", "after the end (60 it)"],
    ),
    "rate given for global scope as rates": (
        {"pruning": {"scope": "global"}},
        ["pruning.rates", "scope: layerwise", "pruning.rate"],
    ),
    "label outside the classes": (
        {"dataset": {"labels": [0, 12]}},
        ["dataset.labels", "12", "0..9"],
    ),
    "option the model lacks": (
        {"model": {"width": 2.0}},
        ["model", "width=2.0", "options of 'lenet_300_100'"],
    ),
    "integral float for an integer key": (
        {"training": {"batch_size": 60.0}},
        ["training.batch_size", "60.0", "integer"],
    ),
    "integral float for a step": (
        {"training": {"duration": 60.0}},
        ["training.duration", "60.0", "'<n>it'"],
    ),
}


@pytest.mark.parametrize("overrides, expected", CONFIG_ERRORS.values(), ids=CONFIG_ERRORS.keys())
def test_config_error_names_key_value_and_allowed_values(overrides, expected):
    """A user fixes a bad file from the message alone: where, what, and what is allowed."""
    message = refusal(tiny_doc(**overrides))
    for text in expected:
        assert text in message, f"{text!r} missing from: {message}"
    assert "Traceback" not in message


def test_layerwise_rates_missing_for_a_conv_model():
    """A conv net pruned layer-wise needs a conv rate; leaving it out is a mistake, not 0%."""
    message = refusal(tiny_doc(model={"name": "conv2"}))
    assert "pruning.rates" in message and "conv" in message and "conv2" in message


def test_exclude_naming_a_non_layer_lists_the_layers():
    spec = tiny_spec()
    layer_names = [n for n, _, _ in prunable_layers(build_model(spec.model, spec.dataset, "meta"))]
    message = refusal(tiny_doc(pruning={"exclude": ["fc9"]}))
    assert "pruning.exclude" in message and "'fc9'" in message
    assert all(name in message for name in layer_names)


def test_every_problem_is_reported_at_once():
    """Two independent mistakes are both listed, so one edit fixes the file."""
    message = refusal(tiny_doc(training={"lrr": 0.1, "batch_size": "big"}))
    assert "training.lrr" in message and "training.batch_size" in message


def test_error_names_the_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("dataset: {name: synthetic, val_size: 200}\nmodel: {name: lenet_300_100}\n"
                    "training: {optimizer: adam, lr: 0.001, batch_size: 60, duratoin: 10}\n")
    with pytest.raises(SpecError) as info:
        load_experiment(path)
    assert str(path) in str(info.value) and "training.duratoin" in str(info.value)


def test_missing_file_and_bad_yaml_are_spec_errors(tmp_path):
    with pytest.raises(SpecError, match="not found"):
        load_experiment(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("training: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_experiment(bad)


def test_conv_model_with_all_rates_resolves():
    spec = tiny_spec(model={"name": "conv2"}, pruning={"rates": {"conv": 0.1, "fc": 0.2}})
    assert dict(spec.pruning.rates) == {"conv": 0.1, "fc": 0.2, "output": 0.1}


# ---------------------------------------------------------------------------- resolution


def test_steps_in_epochs_become_iterations():
    """'2ep' counts the training portion after the validation hold-out."""
    spec = tiny_spec(training={"duration": "2ep", "milestones": ["1ep", "45it"], "warmup": 5})
    per_epoch = (2000 - 200) // 60
    assert spec.training.duration == 2 * per_epoch
    assert spec.training.milestones == (per_epoch, 45)
    assert spec.training.warmup == 5


def test_lr_schedule_warmup_and_decay():
    t = tiny_spec(training={"milestones": [20, 40], "gamma": 0.5, "warmup": 4}).training
    assert t.lr_at(0) == pytest.approx(t.lr / 4)
    assert t.lr_at(3) == pytest.approx(t.lr)
    assert t.lr_at(19) == pytest.approx(t.lr)
    assert t.lr_at(20) == pytest.approx(t.lr / 2)
    assert t.lr_at(59) == pytest.approx(t.lr / 4)


def test_output_rate_defaults_to_half_the_fc_rate():
    assert tiny_spec().pruning.rate_for("output") == pytest.approx(0.1)
    explicit = tiny_spec(pruning={"rates": {"fc": 0.2, "output": 0.3}})
    assert explicit.pruning.rate_for("output") == pytest.approx(0.3)


def test_target_density_splits_into_equal_rounds():
    spec = tiny_spec(pruning={"rates": None, "rounds": 3, "target_density": 0.512})
    for kind in ("fc", "output"):
        assert spec.pruning.rate_for(kind) == pytest.approx(0.2)


def test_tf_batchnorm_momentum_is_converted():
    spec = tiny_spec(model={"name": "resnet20", "bn_momentum": 0.9, "bn_convention": "tf"},
                     pruning={"rates": {"conv": 0.2, "fc": 0.2}})
    assert spec.model.bn_momentum == pytest.approx(0.1)


def test_rewinding_defaults_follow_the_recipe():
    """Stable weight rewinding rewinds the LR with the weights and retrains T - k."""
    spec = tiny_spec(rewinding={"weights": "step", "step": 20})
    r = spec.rewinding
    assert (r.lr, r.retrain, r.schedule_offset) == ("rewind", 40, 20)
    lrr = tiny_spec(rewinding={"weights": "final"})
    r = lrr.rewinding
    assert (r.lr, r.retrain, r.schedule_offset) == ("restart", 60, 0)


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"pruning": {"scope": "global", "rate": 0.2, "rates": None, "exclude": ["5"]}},
        {"rewinding": {"weights": "step", "step": "10it"}, "seeds": [3, 1]},
        {"rewinding": {"weights": "back", "back": 0.25}, "branches": ["reinit", "oneshot"]},
        {"dataset": {"labels": [0, 4], "half": 1,
                     "synthetic": {"n_train": 3000, "shape": [1, 6, 6]}}},
        {"training": {"optimizer": "sgd", "momentum": 0.9, "nesterov": True, "milestones": [30]}},
    ],
)
def test_spec_round_trips_through_json(overrides):
    """The spec written beside the results rebuilds the identical spec."""
    spec = tiny_spec(**overrides)
    assert ExperimentSpec.from_dict(spec.to_dict()) == spec
    assert ExperimentSpec.from_dict(spec.to_dict()).recipe_key == spec.recipe_key


# ---------------------------------------------------------------------------- hashes

SAME_DENSE_ROUND = {
    "pruning rate": {"pruning": {"rates": {"fc": 0.5}}},
    "pruning scope": {"pruning": {"scope": "global", "rate": 0.2, "rates": None}},
    "rewinding": {"rewinding": {"weights": "step", "step": 10}},
    "seeds": {"seeds": [0, 1, 2]},
    "branches": {"branches": ["reinit", "random_mask"]},
    "name": {"name": "other"},
    "checkpoint cadence": {"training": {"checkpoint_every": 10}},
}


@pytest.mark.parametrize("overrides", SAME_DENSE_ROUND.values(), ids=SAME_DENSE_ROUND.keys())
def test_dense_key_ignores_what_round_0_does_not_depend_on(overrides):
    """Experiments that differ only after round 0 share its cached outputs."""
    assert tiny_spec(**overrides).dense_key == tiny_spec().dense_key


@pytest.mark.parametrize(
    "overrides",
    [{"training": {"lr": 0.01}}, {"training": {"batch_size": 30}}, {"model": {"dropout": 0.5}},
     {"dataset": {"val_size": 100}}],
)
def test_dense_key_changes_with_what_round_0_depends_on(overrides):
    changed = tiny_spec(**overrides)
    assert changed.dense_key != tiny_spec().dense_key
    assert changed.recipe_key != tiny_spec().recipe_key


def test_recipe_key_changes_with_the_pruning_and_rewinding_recipe():
    base = tiny_spec().recipe_key
    assert tiny_spec(pruning={"rates": {"fc": 0.3}}).recipe_key != base
    assert tiny_spec(rewinding={"weights": "final"}).recipe_key != base
    assert tiny_spec(seeds=[5]).recipe_key == base


EXPLICIT_DEFAULTS = {
    "training.momentum": {"training": {"momentum": 0.0}},
    "training.weight_decay": {"training": {"weight_decay": 0.0}},
    "training.milestones": {"training": {"milestones": []}},
    "training.gamma": {"training": {"gamma": 0.1}},
    "training.warmup": {"training": {"warmup": 0}},
    "training.divergence_loss": {"training": {"divergence_loss": 1.0e4}},
    "model.dropout": {"model": {"dropout": 0.0}},
    "model.bn_convention": {"model": {"bn_convention": "torch"}},
    "dataset.download": {"dataset": {"download": False}},
    "dataset.synthetic": {"dataset": {"synthetic": {"n_train": 2000, "seed": 0}}},
    "pruning.criterion": {"pruning": {"criterion": "magnitude"}},
    "pruning.scope": {"pruning": {"scope": "layerwise"}},
    "pruning.exclude": {"pruning": {"exclude": []}},
    "pruning.rates.output": {"pruning": {"rates": {"fc": 0.2, "output": 0.1}}},
    "rewinding.weights": {"rewinding": {"weights": "init"}},
    "rewinding.lr": {"rewinding": {"lr": "restart"}},
    "rewinding.retrain": {"rewinding": {"retrain": 60}},
}


@pytest.mark.parametrize("overrides", EXPLICIT_DEFAULTS.values(), ids=EXPLICIT_DEFAULTS.keys())
def test_writing_a_default_explicitly_keeps_both_hashes(overrides):
    """Adding a knob at its default must not invalidate cached results."""
    spec = tiny_spec(**overrides)
    assert (spec.dense_key, spec.recipe_key) == (tiny_spec().dense_key, tiny_spec().recipe_key)


def test_a_new_knob_at_its_default_keeps_both_hashes():
    """The reason hashes skip defaults: a later version adding a field must not orphan results."""
    spec = tiny_spec()
    newer = dataclasses.make_dataclass("TrainingSpec", [("new_knob", float, 0.0)],
                                       bases=(TrainingSpec,), frozen=True)
    same = dataclasses.replace(spec, training=newer(**dataclasses.asdict(spec.training)))
    assert (same.dense_key, same.recipe_key) == (spec.dense_key, spec.recipe_key)
    changed = dataclasses.replace(same, training=dataclasses.replace(same.training, new_knob=1.0))
    assert changed.dense_key != spec.dense_key


# Every field of the spec, walked recursively, either changes the identity that decides whether
# its work re-runs, or is listed in NOT_IN_IDENTITY with the reason. Which identity, by section:
# - dataset, model, training: `dense_key`, the directory of round 0 (results/dense/<key>/), shared
#   by experiments that differ only after it; `recipe_key` includes it, so it changes too.
# - pruning (with mask_training), rewinding, earlybird: `recipe_key`, the experiment's rounds;
#   `dense_key` must stay, or a pruning setting would re-train round 0.
# - the experiment's own fields (name, seeds, ...): in neither; each is listed with its reason.
IDENTITY_OF_SECTION = {"dataset": "dense_key", "model": "dense_key", "training": "dense_key",
                       "pruning": "recipe_key", "rewinding": "recipe_key",
                       "earlybird": "recipe_key"}

# Reviewed: fields outside both hashes, with why. The training ones are execution-only
# (lotto.core.spec_types.EXECUTION_ONLY): spec files hold them at their defaults and jobs get them as
# `--execution`, so changing one re-runs nothing (tests/test_workflow.py checks each).
NOT_IN_IDENTITY = {
    "name": "the results directory itself: another name is another experiment",
    "seeds": "each seed has its own directories; adding one adds jobs, re-runs none",
    "branches": "each branch has its own directory; adding one adds jobs, re-runs none",
    "description": "text for people",
    "transfer_from": "the transfer branch takes the source's files as inputs, which re-run it",
    "dataset.root": "where the raw files are read from, not which data (an image folder's root enters "
                    "its keys through data_key: tests/test_stream.py)",
    "dataset.download": "whether torchvision may fetch missing raw files",
    "training.checkpoint_every": "in-round resume cadence; a resumed round equals an uninterrupted one",
    "training.device": "where the job runs, not what it computes",
    "training.vectorize_seeds": "seeds trained together equal separate runs (lotto.core.vmap)",
    "training.cuda_graph": "how a GPU launches the step, not what it computes",
    "training.loader_workers": "how many processes decode images; each one's crop is drawn from (seed, step, position)",
    "training.devices": "processes of one training; N processes equal one (lotto.core.distributed)",
    "training.nodes": "nodes of one training; N processes equal one (lotto.core.distributed)",
}

# For every field, another value its key allows (the schema's choices and ranges). The values
# are set one at a time with dataclasses.replace, not resolved together: a hash sees values only.
CHANGED_VALUE = {
    "name": "other", "seeds": (0, 1), "branches": ("reinit",), "description": "a note",
    "transfer_from": "source",
    "dataset.name": "fashion_mnist", "dataset.root": "/elsewhere", "dataset.download": True,
    "dataset.val_size": 100, "dataset.labels": (0, 4), "dataset.half": 1, "dataset.augment": True,
    "dataset.synthetic": (("n_test", 500), ("n_train", 3000), ("num_classes", 10), ("seed", 0),
                          ("shape", (1, 8, 8))),
    "model.name": "lenet5", "model.dropout": 0.5, "model.width": 2.0, "model.bn_momentum": 0.01,
    "model.bn_eps": 1e-3,
    "model.options": (("zero_init_residual", True),),
    "training.optimizer": "sgd", "training.lr": 0.01, "training.batch_size": 30,
    "training.duration": 80, "training.momentum": 0.9, "training.nesterov": True,
    "training.weight_decay": 1e-4, "training.l2": 1e-4, "training.bn_l1": 1e-4,
    "training.milestones": (30,), "training.gamma": 0.5, "training.warmup": 10,
    "training.eval_every": 10, "training.divergence_loss": 100.0, "training.precision": "bf16",
    "training.checkpoint_every": 20, "training.device": "auto", "training.vectorize_seeds": True,
    "training.cuda_graph": False, "training.loader_workers": 2,
    "dataset.image_size": 32, "dataset.resize": 40, "dataset.folder_classes": 12,
    "dataset.torchvision": (("num_classes", 10), ("shape", (1, 28, 28)), ("train_size", 100)),
    "training.devices": 8, "training.nodes": 2,
    "training.sync_batchnorm": False,
    "pruning.criterion": "magnitude", "pruning.scope": "global", "pruning.rounds": 3,
    "pruning.rate": 0.2, "pruning.rates": (("fc", 0.5), ("output", 0.25)),
    "pruning.exclude": ("5",),
    "pruning.mask_training.pretrain": 12, "pruning.mask_training.steps": 60,
    "pruning.mask_training.lr": 2.0, "pruning.mask_training.init": 1.0,
    "pruning.mask_training.penalty": "l2", "pruning.mask_training.penalty_coef": 1e-3,
    "pruning.mask_training.grad_clip": 1.0, "pruning.mask_training.logit_clip": 10.0,
    "rewinding.weights": "final", "rewinding.step": 10, "rewinding.back": 0.5,
    "rewinding.lr": "final", "rewinding.retrain": 30,
    "earlybird.ratios": (0.3, 0.7), "earlybird.epsilon": 0.2, "earlybird.window": 4,
    "earlybird.slimming": 1e-3, "earlybird.record_every": 8, "earlybird.stop_at_draw": False,
    "earlybird.draw_epochs": (2,), "earlybird.precision": "int8sim", "earlybird.retrain": ("ff",),
    "earlybird.baselines": ("lt_oneshot",),
}


def spec_fields(cls: type = ExperimentSpec, prefix: str = "") -> list[str]:
    """Dotted paths of every field, descending into nested specs (also optional ones)."""
    hints = typing.get_type_hints(cls)
    paths = []
    for f in dataclasses.fields(cls):
        kinds = typing.get_args(hints[f.name]) or (hints[f.name],)
        nested = [k for k in kinds if dataclasses.is_dataclass(k)]
        paths += spec_fields(nested[0], f"{prefix}{f.name}.") if nested else [prefix + f.name]
    return paths


def field_value(spec: Any, path: str) -> Any:
    for name in path.split("."):
        spec = getattr(spec, name)
    return spec


def with_value(spec: Any, path: str, value: Any) -> Any:
    name, _, rest = path.partition(".")
    inner = with_value(getattr(spec, name), rest, value) if rest else value
    return dataclasses.replace(spec, **{name: inner})


def base_spec_for(path: str) -> ExperimentSpec:
    """The tiny experiment with every optional section its field needs."""
    if path.startswith("earlybird."):
        return tiny_spec(dataset={"synthetic": {"shape": [3, 16, 16]}},
                         model={"name": "vgg11", "width": 0.125}, pruning=None,
                         earlybird={"ratios": [0.3, 0.5], "window": 3, "epsilon": 0.5})
    return tiny_spec(pruning={"criterion": "optimal_mask"})


def test_the_field_tables_name_only_fields_of_the_spec():
    fields = set(spec_fields())
    assert set(CHANGED_VALUE) - fields == set(), "stale entries in CHANGED_VALUE"
    assert set(NOT_IN_IDENTITY) - fields == set(), "stale entries in NOT_IN_IDENTITY"


def test_the_training_fields_outside_the_hashes_are_exactly_the_execution_only_ones():
    """Each is held at its default in spec files and passed to jobs as --execution; a training
    field outside the hashes that jobs did not get that way would silently use its default."""
    unhashed = {path.removeprefix("training.") for path in NOT_IN_IDENTITY if path.startswith("training.")}
    assert unhashed == set(EXECUTION_ONLY)


@pytest.mark.parametrize("path", spec_fields())
def test_every_field_changes_its_identity_or_is_listed_as_not_part_of_it(path):
    """A new field cannot slip out of the hashes unnoticed: it fails here until it has a value
    in CHANGED_VALUE and changes its section's key, or is in NOT_IN_IDENTITY with a reason."""
    assert path in CHANGED_VALUE, (
        f"new spec field {path!r}: add another valid value for it to CHANGED_VALUE; if changing "
        "it must stay out of the hashes, also add it to NOT_IN_IDENTITY with the reason"
    )
    base = base_spec_for(path)
    changed = with_value(base, path, CHANGED_VALUE[path])
    assert field_value(changed, path) != field_value(base, path)
    keys = {key: (getattr(base, key), getattr(changed, key)) for key in ("dense_key", "recipe_key")}
    if path in NOT_IN_IDENTITY:
        assert all(old == new for old, new in keys.values()), f"{path} changed {keys}"
        return
    identity = IDENTITY_OF_SECTION[path.split(".")[0]]
    old, new = keys[identity]
    assert old != new, f"changing {path} leaves {identity} at {old}: its work would not re-run"
    assert keys["recipe_key"][0] != keys["recipe_key"][1]
    if identity == "recipe_key":
        assert keys["dense_key"][0] == keys["dense_key"][1], f"{path} would re-train round 0"


def test_every_registered_model_resolves_or_names_its_problem():
    """resolve builds each model on the meta device; a model that cannot take 8x8 says why."""
    for name in models.model_names():
        try:
            spec = tiny_spec(model={"name": name}, pruning={"rates": {"conv": 0.1, "fc": 0.2}})
        except SpecError as err:
            assert "model" in str(err) and "8x8" in str(err), str(err)
        else:
            assert spec.model.name == name


# ------------------------------------------------------------------------ defaults written once

# The schema section each resolved type comes from ("" = the experiment itself).
SECTION_TYPES = {
    "": ExperimentSpec,
    "dataset": DatasetSpec,
    "model": ModelSpec,
    "training": TrainingSpec,
    "pruning": PruningSpec,
    "pruning.mask_training": MaskTrainingSpec,
    "rewinding": RewindingSpec,
    "earlybird": EarlyBirdSpec,
}


def schema_defaults(node: dict, prefix: str = "") -> dict[str, Any]:
    """Every `default:` the schema documents, by dotted key path."""
    found = {}
    for key, sub in node.get("properties", {}).items():
        path = f"{prefix}{key}"
        if "default" in sub:
            found[path] = sub["default"]
        found.update(schema_defaults(sub, f"{path}."))
    return found


def test_schema_defaults_are_the_dataclass_defaults():
    """Each default is written once: a field's default in lotto.core.spec_types, or (for input keys that
    resolution converts) lotto.core.spec.INPUT_DEFAULTS; the schema documents the same value."""
    documented = schema_defaults(experiment_schema())
    assert len(documented) > 40  # the walk reached every section
    for path, default in documented.items():
        section, _, name = path.rpartition(".")
        if path in INPUT_DEFAULTS:
            assert INPUT_DEFAULTS[path] == default, path
            continue
        field_default = dataclass_default(SECTION_TYPES[section], name)
        expected = tuple(default) if isinstance(default, list) else default
        assert field_default == expected and type(field_default) is type(expected) or (
            isinstance(field_default, float) and field_default == expected), (path, default, field_default)
    assert set(INPUT_DEFAULTS) <= set(documented)


def dataclass_default(cls: type, name: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    assert name in fields, f"the schema documents a default for {cls.__name__}.{name}, which has no field"
    assert fields[name].default is not dataclasses.MISSING, f"{cls.__name__}.{name} has no default"
    return fields[name].default


def test_omitted_keys_resolve_to_the_field_defaults():
    """The resolver fills an omitted key from the field's default (no second copy of the value);
    rewinding.retrain and dataset.augment are derived (from the duration, the dataset's name)."""
    derived = {("rewinding", "retrain"), ("dataset", "augment"), ("dataset", "synthetic")}
    doc = tiny_doc(pruning={"rates": None, "rate": 0.2, "scope": "global"})
    spec = resolve(doc)
    checked = 0
    for section in ("dataset", "model", "training", "pruning", "rewinding"):
        for f in dataclasses.fields(SECTION_TYPES[section]):
            given = doc.get(section, {})
            if f.name in given or f.default is dataclasses.MISSING or (section, f.name) in derived:
                continue
            assert getattr(getattr(spec, section), f.name) == f.default, (section, f.name)
            checked += 1
    assert checked > 25


# ------------------------------------------------------------------ several processes (#16)


def test_several_processes_are_execution_only_and_refuse_what_would_depend_on_them():
    """training.devices/nodes leave both hashes as they are; what N processes cannot compute as
    one process does is refused before any job, naming the key."""
    one, eight = tiny_spec(), tiny_spec(training={"devices": 4, "nodes": 2})
    assert (one.dense_key, one.recipe_key) == (eight.dense_key, eight.recipe_key)
    assert {"devices", "nodes"} <= set(EXECUTION_ONLY)
    assert tiny_spec(training={"sync_batchnorm": False}).dense_key != one.dense_key  # a recipe choice
    assert "training.devices: 2 x 1 processes: with model.dropout" in refusal(
        tiny_doc(training={"devices": 2}, model={"dropout": 0.5}))
    assert "training.devices: 4 x 2 processes for batch_size 4" in refusal(
        tiny_doc(training={"devices": 4, "nodes": 2, "batch_size": 4}))
    assert "training.vectorize_seeds: true trains several seeds in one process" in refusal(
        tiny_doc(training={"devices": 2, "vectorize_seeds": True}))
    assert "training.devices: 2 x 1 processes: optimal_mask's mask training runs in one process" in refusal(
        tiny_doc(training={"devices": 2}, pruning={"criterion": "optimal_mask"}))
