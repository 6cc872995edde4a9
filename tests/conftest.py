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
import torch.nn.functional as F

from lotto.core import data
from lotto.core.spec import ExperimentSpec, TrainingSpec, resolve
from lotto.core.train import BatchSchedule

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


def train_by_hand(model: torch.nn.Module, splits: data.Splits, spec: TrainingSpec, *, seed: int,
                  steps: int, start: int = 0) -> dict[str, torch.Tensor]:
    """The weights after `steps` SGD-with-momentum updates written out by hand (torch.optim's
    rule: v = momentum * v + grad, w -= lr * v), from schedule step `start`: at global step s,
    the batch of (seed, s) at the rate spec.lr_at(s). The reference lotto's loops must match
    (no L2, decay or mask)."""
    assert (spec.optimizer, spec.nesterov, spec.weight_decay, spec.l2) == ("sgd", False, 0.0, 0.0)
    params = list(model.parameters())
    velocity = [torch.zeros_like(w) for w in params]
    batches = BatchSchedule(splits, spec.batch_size, seed)
    for step in range(start, start + steps):
        x, y = batches.batch(step)
        grads = torch.autograd.grad(F.cross_entropy(model(x), y), params)
        with torch.no_grad():
            for w, v, g in zip(params, velocity, grads, strict=True):
                v.mul_(spec.momentum).add_(g)
                w.sub_(spec.lr_at(step) * v)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}
