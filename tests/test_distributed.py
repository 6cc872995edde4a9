"""One training in 1, 2 and 3 processes (lotto.core.distributed, gloo on the CPU), launched as users
launch it: `python -m torch.distributed.run --standalone --nproc-per-node N -m lotto round ...`.

Tolerance: N processes add the same per-example terms in another order (each rank's shard, then
the all-reduce; evaluation in slices), so float32 results differ in the last bits and Adam
carries the differences on. After 200 Adam steps of LeNet-300-100 the weights differ by
< 2e-6 (measured 2e-7 to 1.3e-6; the weights are ~0.1, float32's spacing there is ~7e-9, so a few
hundred ulps of drift), losses by < 1e-5 and accuracies not at all on 200-500 examples; the
bounds below are 10x those. Masks are computed on rank 0 and broadcast, and pruned weights are
re-zeroed after every step: both are checked exactly. Batch size 32 splits unevenly over 3.

Cost: ~30 s on 2 busy cores (eight launches of 1-3 processes, 3-200 steps each), mostly the
processes' start (importing torch).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from lotto.core import data, masks
from lotto.core.spec import build_model, load_experiment

WEIGHT_TOL, LOSS_TOL = 1e-5, 1e-4
EXPERIMENT = {
    "name": "dist",
    "dataset": {"name": "synthetic", "val_size": 200},
    "model": {"name": "lenet_300_100"},
    "training": {"optimizer": "adam", "lr": 0.002, "batch_size": 32, "duration": 200, "eval_every": 100},
    "pruning": {"rounds": 1, "rates": {"fc": 0.5}},
    "seeds": [0],
}
# Batch norm over the global batch (training.sync_batchnorm, lotto.core.distributed.GlobalBatchNorm):
# a ResNet-20 on 31 examples per batch (16 + 15 in 2 processes). Few steps: a BN net this
# untrained amplifies float differences ~10x per step (20 steps: 5e-5); with BN per shard
# instead the weights differ by ~1e-1 after one step, far beyond the tolerance.
BN_EXPERIMENT = {
    **EXPERIMENT,
    "model": {"name": "resnet20", "width": 0.25},
    "training": {"optimizer": "sgd", "lr": 0.01, "momentum": 0.9, "batch_size": 31, "duration": 3, "eval_every": 3},
    "pruning": {},
}
LAUNCH_TIMEOUT_S = 120


def launch(processes: int, *args: str, cwd: Path, background: bool = False):
    """`python -m lotto ARGS` in `processes` processes: alone, or through torchrun."""
    prefix = [sys.executable] if processes == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes)]
    command = [*prefix, "-m", "lotto", *args]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).parents[1]))
    if background:
        return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def round_args(round_: int, out: str, dense: str | None = None, execution: dict | None = None,
               spec: str = "exp.yaml") -> list[str]:
    args = ["round", "--spec", spec, "--data", "data.pt", "--seed", "0", "--round", str(round_), "--out", out]
    if dense:
        args += ["--dense", dense, "--prev", dense]
    if execution:
        args += ["--execution", json.dumps(execution)]
    return args


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("distributed")
    (path / "exp.yaml").write_text(yaml.safe_dump(EXPERIMENT))
    (path / "bn.yaml").write_text(yaml.safe_dump(BN_EXPERIMENT))
    data.prepare("synthetic", path / "data.pt")
    return path


@pytest.fixture(scope="module")
def runs(work) -> Path:
    """Round 0 in 1 and 2 processes; round 1 (pruned, from the 1-process round 0) in 1 and 3
    (3 processes on round 0: the kill test's rerun); the batch-norm net in 1 and 2. All but the
    first side by side."""
    launch(1, *round_args(0, "r0_n1"), cwd=work)
    jobs = [launch(n, *round_args(0, f"bn_n{n}", spec="bn.yaml"), cwd=work, background=True) for n in (1, 2)]
    jobs += [launch(2, *round_args(0, "r0_n2"), cwd=work, background=True)]
    jobs += [launch(n, *round_args(1, f"r1_n{n}", dense="r0_n1"), cwd=work, background=True) for n in (1, 3)]
    for job in jobs:
        output, _ = job.communicate(timeout=LAUNCH_TIMEOUT_S)
        assert job.returncode == 0, output
    return work


def compare(a: Path, b: Path) -> dict[str, float | bool]:
    """max |dweight|, mask equality, max |dloss| and |daccuracy| over all metric rows."""
    wa, wb = torch.load(a / "checkpoint.pt"), torch.load(b / "checkpoint.pt")
    ma, mb = torch.load(a / "mask.pt"), torch.load(b / "mask.pt")
    fa, fb = pd.read_parquet(a / "metrics.parquet"), pd.read_parquet(b / "metrics.parquet")
    assert list(fa[["step", "split"]].itertuples(index=False)) == list(fb[["step", "split"]].itertuples(index=False))
    return {
        "weight": max(float((wa[k].double() - wb[k].double()).abs().max()) for k in wa),
        "masks_equal": ma.keys() == mb.keys() and all(torch.equal(ma[k], mb[k]) for k in ma),
        "loss": float((fa["loss"] - fb["loss"]).abs().max()),
        "accuracy": float((fa["accuracy"] - fb["accuracy"]).abs().max()),
    }


@pytest.mark.parametrize(("run", "n"), [("r0", 2), ("r1", 3), ("bn", 2)])
def test_n_processes_train_what_one_does(runs, run, n):
    diff = compare(runs / f"{run}_n1", runs / f"{run}_n{n}")
    print(f"\n{run}, 1 vs {n} processes: {diff}")
    assert diff["masks_equal"]
    assert diff["weight"] < WEIGHT_TOL
    assert diff["loss"] < LOSS_TOL and diff["accuracy"] <= 1 / 200  # one example of the val split at most
    assert diff["weight"] > 0 or n == 1  # really another computation (not a copy of the 1-process files)


def test_pruned_weights_stay_exactly_zero_in_every_process_count(runs):
    spec = load_experiment(runs / "exp.yaml")
    for n in (1, 3):
        model = build_model(spec.model, spec.dataset)
        model.load_state_dict(torch.load(runs / f"r1_n{n}" / "checkpoint.pt"))
        mask = masks.load(runs / f"r1_n{n}" / "mask.pt", model)
        pruned = 0
        for name, _, module in masks.prunable_layers(model):
            pruned += int((~mask[name].bool()).sum())
            assert torch.count_nonzero(module.weight[~mask[name].bool()]) == 0, (n, name)
        assert pruned > 0


def _rank_pid(launcher: int, rank: int) -> int | None:
    """The pid of the worker of `rank` among the torchrun process's children (from /proc)."""
    for child in Path(f"/proc/{launcher}/task/{launcher}/children").read_text().split():
        try:
            environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in environ:
            return int(child)
    return None


def test_killed_rank_fails_the_job_cleanly_and_a_rerun_in_other_processes_resumes(runs):
    """SIGKILL of rank 1 of 2 once the first in-round checkpoint exists: the job exits non-zero
    within seconds, rank 0 is gone, no output was written, the checkpoint stays. The rerun in
    3 processes resumes from it and ends where the uninterrupted 1-process round ends."""
    execution = {"checkpoint_every": 20}
    job = launch(2, *round_args(0, "killed", execution=execution), cwd=runs, background=True)
    out = runs / "killed"
    deadline = time.monotonic() + LAUNCH_TIMEOUT_S
    while not (out / "resume.pt").exists():
        assert job.poll() is None, job.stdout.read()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.01)
    victim, survivor = _rank_pid(job.pid, 1), _rank_pid(job.pid, 0)
    assert victim and survivor
    os.kill(victim, signal.SIGKILL)
    try:
        code = job.wait(timeout=60)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    log = job.stdout.read()
    assert code != 0, log
    assert not Path(f"/proc/{survivor}").exists() or "zombie" in Path(f"/proc/{survivor}/status").read_text()
    assert not any((out / name).exists() for name in ("checkpoint.pt", "mask.pt", "metrics.parquet")), log
    assert (out / "resume.pt").exists()

    rerun = launch(3, *round_args(0, "killed", execution=execution), cwd=runs)
    assert "resumed at step" in rerun.stderr and "resumed at step 0/" not in rerun.stderr, rerun.stderr
    assert not (out / "resume.pt").exists()
    diff = compare(runs / "r0_n1", out)
    print(f"\nkilled in 2 processes, resumed in 3, vs 1 process uninterrupted: {diff}")
    assert diff["masks_equal"] and diff["weight"] < WEIGHT_TOL and diff["loss"] < LOSS_TOL
