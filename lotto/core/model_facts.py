"""The facts about a model that spec validation reads, known without importing torch.

Validating an experiment asks of its model: can it be built with these options (and if not,
why), which layers are prunable (readable name, module path, kind), can its seeds train
together (lotto.core.vmap.check_vectorisable) and can Early-Bird prune its channels
(lotto.core.channels.channel_groups). Building the model to answer imports torch (~2.7 s), which
every `snakemake` start and every cluster job's inner snakemake would pay. So the answers for
the model options the presets use are measured once, from the real models on the meta device,
and shipped as model_facts.json; a combination the table lacks (another width, a model
registered at run time) is measured the same way when asked. tests/test_model_facts.py
regenerates the table and requires it to equal the committed file, so it cannot drift.
Regenerate with `python -m lotto model-facts config/experiments/*.yaml`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import Any

import lotto

# Package data at the package root (pyproject.toml ships it), wherever this module lives.
TABLE = Path(lotto.__file__).with_name("model_facts.json")


@dataclass(frozen=True)
class ModelFacts:
    build_error: str | None = None  # why create_model refuses the options; then nothing else is known
    layers: tuple[tuple[str, str, str], ...] = ()  # (readable name, module path, kind), forward order
    not_vectorisable: str | None = None  # why its seeds cannot train together; None if they can
    not_channel_prunable: str | None = None  # why Early-Bird cannot prune its channels; None if it can


def model_options(model: Any, dataset: Any) -> dict[str, Any]:
    """lotto.core.models.create_model's arguments for a ModelSpec on a DatasetSpec (`options` only
    where set, so the table's keys of registry models stay as they were)."""
    extra = {} if model.options is None else {"options": dict(model.options)}
    return extra | {
        "name": model.name,
        "input_shape": dataset.input_shape,
        "num_classes": dataset.num_classes,
        "dropout": model.dropout,
        "width": model.width,
        "bn_momentum": model.bn_momentum,
        "bn_eps": model.bn_eps,
    }


def tabulated_model_names() -> list[str]:
    """The registry's model names when the table was made (lotto.core.models.model_names())."""
    return _table()["models"]


def facts(options: dict[str, Any]) -> ModelFacts:
    """The facts of the model `options` builds: from the table, else measured: here when this
    process has imported torch already, else in a child process, so a Snakefile parse never
    imports torch (nor a user's model module) whatever the model."""
    key = _key(options)
    if key not in _measured:
        row = _table()["facts"].get(key)
        if row is not None:
            _measured[key] = _from_row(row)
        else:
            _measured[key] = measure(options) if "torch" in sys.modules else _measure_in_child(options)
    return _measured[key]


def shapes_only_model(options: dict[str, Any]) -> Any:
    """The model `options` builds, on the meta device (no memory, no arithmetic). A torchvision
    or user model that cannot be built there (its init computes on the weights) is built on the
    CPU instead, so only a real refusal raises."""
    import torch

    from lotto.core.external_models import is_external
    from lotto.core.models import create_model

    try:
        with torch.device("meta"):
            return create_model(**options)
    except ValueError:
        if not is_external(options["name"]):
            raise
        return create_model(**options)


def measure(options: dict[str, Any]) -> ModelFacts:
    """Build the model (`shapes_only_model`) and ask the modules that use each fact."""
    from lotto.core.channels import channel_groups
    from lotto.core.masks import prunable_layers, readable_names
    from lotto.core.vmap import check_vectorisable

    try:
        net = shapes_only_model(options)
    except ValueError as err:
        return ModelFacts(build_error=str(err))
    readable = {path: name for name, path in readable_names(net).items()}
    layers = tuple((readable[path], path, kind) for path, kind, _ in prunable_layers(net))
    return ModelFacts(layers=layers, not_vectorisable=_refusal(check_vectorisable, net),
                      not_channel_prunable=_refusal(channel_groups, net))


def table_text(options: Iterable[dict[str, Any]]) -> str:
    """model_facts.json for these model options (measured, not looked up), as written."""
    from lotto.core.models import model_names

    rows = {_key(o): json.dumps(asdict(measure(o))) for o in options}
    facts_lines = ",\n".join(f"  {json.dumps(key)}: {row}" for key, row in sorted(rows.items()))
    return f'{{\n "models": {json.dumps(model_names())},\n "facts": {{\n{facts_lines}\n }}\n}}\n'


def _measure_in_child(options: dict[str, Any]) -> ModelFacts:
    """`measure` in a fresh interpreter that imports what this one would: this process's
    sys.path (so the same lotto, and a user's module wherever it is found here) and working
    directory. The options travel as an argument, never through a shell."""
    code = ("import json, sys, dataclasses\nfrom lotto.core.model_facts import measure\n"
            "print(json.dumps(dataclasses.asdict(measure(json.loads(sys.argv[1])))))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path for path in sys.path if path)}
    child = subprocess.run([sys.executable, "-c", code, json.dumps(options)], capture_output=True, text=True,
                           env=env)
    if child.returncode != 0:
        last = (child.stderr.strip().splitlines() or ["no output"])[-1]
        return ModelFacts(build_error=f"model {options['name']}: building it to read its layers failed: {last}")
    return _from_row(json.loads(child.stdout.strip().splitlines()[-1]))


def _refusal(check: Any, net: Any) -> str | None:
    try:
        check(net)
    except ValueError as err:
        return str(err)
    return None


def _key(options: dict[str, Any]) -> str:
    return json.dumps({**options, "input_shape": list(options["input_shape"])}, sort_keys=True)


def _from_row(row: dict[str, Any]) -> ModelFacts:
    return ModelFacts(**{**row, "layers": tuple(tuple(layer) for layer in row["layers"])})


_measured: dict[str, ModelFacts] = {}


@cache
def _table() -> dict[str, Any]:
    return json.loads(TABLE.read_text(encoding="utf-8"))
