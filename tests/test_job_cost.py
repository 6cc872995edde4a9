"""The fixed cost of a training job: a round does not load the compiler, plotting or dataframe
stacks (seconds of imports on every job), and the optimizer that avoids torch._dynamo trains,
saves and resumes bit for bit like the plain torch.optim one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import tiny_spec
from torch import nn
from torch.overrides import TorchFunctionMode

from lotto.core import io, metrics
from lotto.core.train import make_optimizer

REPO = Path(__file__).resolve().parents[1]

# Modules a training job has no use for, each costing 0.4-3 s of import on a small CPU.
NOT_IN_A_JOB = ("torch._dynamo", "torchvision", "matplotlib", "pandas", "jsonschema", "jinja2")

# Runs a round through the CLI, then every optimizer method a training or its resume calls,
# and prints which of the modules named in argv[1] (JSON) the process has loaded.
_JOB = """
import dataclasses, json, pathlib, sys
import torch
from lotto import cli
from lotto.core.spec import ExperimentSpec
from lotto.core.train import make_optimizer

watched, spec_path, args = json.loads(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3:]
assert cli.main(args) == 0
training = ExperimentSpec.from_dict(json.loads(spec_path.read_text())).training
for optimizer in ("adam", "sgd"):
    layer = torch.nn.Linear(3, 2)
    opt = make_optimizer(layer.parameters(), dataclasses.replace(training, optimizer=optimizer))
    layer(torch.ones(1, 3)).sum().backward()
    opt.step()
    opt.zero_grad()
    opt.load_state_dict(opt.state_dict())
print(json.dumps(sorted(m for m in watched if m in sys.modules)))
"""


def test_validating_every_preset_does_not_load_the_compiler():
    """Snakemake resolves every experiment at each start, building models on the meta device;
    initialising meta weights would import torch._dynamo (~3 s per parse) for nothing."""
    code = (
        "import sys; from pathlib import Path; from lotto.core.spec import load_experiment\n"
        "for path in sorted(Path('config/experiments').glob('*.yaml')): load_experiment(path)\n"
        "print('torch._dynamo' in sys.modules)"
    )
    process = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=300, cwd=REPO)
    assert process.returncode == 0, process.stderr
    assert process.stdout.split() == ["False"]


def test_a_round_loads_no_compiler_plotting_or_dataframe_stack(synthetic_data, tmp_path):
    spec = tmp_path / "spec.json"  # saving progress every 20 steps calls optimizer.state_dict
    io.write_json(spec, tiny_spec(training={"checkpoint_every": 20}).to_dict())
    round_args = ["round", "--spec", str(spec), "--data", str(synthetic_data), "--seed", "0",
                  "--round", "0", "--threads", "1", "--out", str(tmp_path / "round0")]
    process = subprocess.run(
        [sys.executable, "-c", _JOB, json.dumps(NOT_IN_A_JOB), str(spec), *round_args],
        capture_output=True, text=True, timeout=300,
    )
    assert process.returncode == 0, process.stderr
    assert json.loads(process.stdout.splitlines()[-1]) == []
    assert (tmp_path / "round0" / "metrics.parquet").is_file()


def _model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


class _TorchCalls(TorchFunctionMode):
    """Records each torch function called and whether autograd was on when it ran."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, bool]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", repr(func))
        if name != "_set_grad_enabled":  # how grad mode is switched differs, not where it is
            self.calls.append((name, torch.is_grad_enabled()))
        return func(*args, **(kwargs or {}))


def _train(model: nn.Module, optimizer: torch.optim.Optimizer, steps: range) -> list:
    """Trains for `steps`; returns the torch calls of the last optimizer step."""
    for step in steps:
        g = torch.Generator().manual_seed(step)
        x, y = torch.randn(32, 8, generator=g), torch.randint(0, 4, (32,), generator=g)
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        with _TorchCalls() as record:
            optimizer.step()
    return record.calls


def _assert_identical(a: dict, b: dict) -> None:
    """Nested state (tensors, numbers, lists, dicts) equal bit for bit."""
    assert type(a) is type(b) and a.keys() == b.keys()
    for key in a:
        x, y = a[key], b[key]
        if isinstance(x, dict):
            _assert_identical(x, y)
        elif isinstance(x, torch.Tensor):
            assert x.dtype == y.dtype and torch.equal(x, y), key
        else:
            assert x == y, key


@pytest.mark.parametrize("training", [
    {"optimizer": "adam", "lr": 1e-2, "weight_decay": 1e-3},
    {"optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4},
    {"optimizer": "sgd", "lr": 0.1},
])
def test_optimizer_trains_saves_and_resumes_like_torch_optim(training):
    spec = tiny_spec(training=training).training
    plain_class = torch.optim.Adam if spec.optimizer == "adam" else torch.optim.SGD
    ours, plain = _model(0), _model(0)
    opt = make_optimizer(ours.parameters(), spec)
    reference = plain_class(plain.parameters(), **opt.defaults)
    assert isinstance(opt, plain_class) and opt.defaults["fused"]

    calls = _train(ours, opt, range(5))
    assert calls == _train(plain, reference, range(5))  # same kernels, autograd off as in torch
    assert ("_fused_adam_" if spec.optimizer == "adam" else "_fused_sgd_", False) in calls
    _assert_identical(ours.state_dict(), plain.state_dict())
    _assert_identical(opt.state_dict(), reference.state_dict())

    resumed = make_optimizer(ours.parameters(), spec)  # a restarted job loads the saved state
    resumed.load_state_dict(opt.state_dict())
    _train(ours, resumed, range(5, 10))
    _train(plain, reference, range(5, 10))
    _assert_identical(ours.state_dict(), plain.state_dict())
    _assert_identical(resumed.state_dict(), reference.state_dict())


ROWS = [
    {"step": s, "split": split, "loss": float("nan") if split == "val" else 1.0 / (s + 1),
     "accuracy": 0.25 + s / 997, "lr": 1.2e-3 * 0.1 ** (s // 40), "status": "ok"}
    for s in range(0, 100, 20) for split in ("train", "val", "test")
]


@pytest.mark.parametrize("rows, constants", [
    (ROWS, {"experiment": "tiny", "seed": 3, "round": 2, "branch": "main", "density": 0.512}),
    (ROWS, {"experiment": "crème brûlée ✓", "seed": 2**31 - 1, "round": 0, "branch": "",
            "density": 1}),
    ([], {"experiment": "tiny", "seed": 0, "round": 0, "branch": "main", "density": 1.0}),
    (ROWS[:2], {"experiment": None, "seed": 0, "round": 0, "branch": "main"}),  # nulls
])
def test_metrics_file_is_byte_identical_to_pyarrow_from_pylist(tmp_path, rows, constants):
    """The writer that avoids pa.array (which imports pandas) writes the very same bytes."""
    metrics.write(tmp_path / "ours.parquet", rows, **constants)
    records = [{**constants, **row} for row in rows]
    pq.write_table(pa.Table.from_pylist(records, schema=metrics.SCHEMA), tmp_path / "ref.parquet")
    assert (tmp_path / "ours.parquet").read_bytes() == (tmp_path / "ref.parquet").read_bytes()
