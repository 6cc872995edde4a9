"""Shared fixtures: one prepared synthetic dataset per session and a tiny experiment.

The synthetic dataset (10 classes of 1x8x8 images, 2,000 train / 500 test) and
LeNet-300-100 on it train in milliseconds per step on one CPU thread, so whole rounds
run in the unit tests.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch

from lotto import data
from lotto.spec import ExperimentSpec, resolve

torch.set_num_threads(1)  # small models are fastest, and bit-for-bit repeatable, on one thread

VAL_SIZE = 200

TINY_EXPERIMENT: dict[str, Any] = {
    "name": "tiny",
    "dataset": {"name": "synthetic", "val_size": VAL_SIZE},
    "model": {"name": "lenet_300_100"},
    "training": {
        "optimizer": "adam",
        "lr": 1.2e-3,
        "batch_size": 60,
        "duration": 60,
        "eval_every": 20,
        "device": "cpu",
    },
    "pruning": {"rounds": 2, "rates": {"fc": 0.2}},
    "seeds": [0],
}


def deep_merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`base` with `overrides` merged in, section by section; a value of None deletes the key."""
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def tiny_doc(**overrides: Any) -> dict[str, Any]:
    """A fresh copy of the tiny experiment document, with sections overridden."""
    return deep_merge(TINY_EXPERIMENT, overrides)


def tiny_spec(**overrides: Any) -> ExperimentSpec:
    """The tiny experiment, resolved."""
    return resolve(tiny_doc(**overrides))


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default synthetic dataset, prepared once for the whole session."""
    path = tmp_path_factory.mktemp("data") / "synthetic.pt"
    data.prepare("synthetic", path)
    return path


@pytest.fixture(scope="session")
def splits(synthetic_data: Path) -> data.Splits:
    """The synthetic dataset loaded on the CPU with the tiny experiment's validation split."""
    return data.load(synthetic_data, val_size=VAL_SIZE)
