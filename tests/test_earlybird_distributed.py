"""The Early-Bird search and its retraining in 1 and 2 processes (lotto.core.distributed, gloo on
the CPU, launched with torchrun as users launch it), and no file written by any rank but 0.

Tolerance: test_distributed's. A VGG-11 (width 1/16, batch norm over the global batch) on batches
of 50 (25 + 25): 2 processes add the same terms in another order, and an untrained, narrow BN net
amplifies those last-bit differences at every step (measured here ~4x per SGD step: 3.6e-7 after
4 retraining steps, 2.6e-3 after 12), so the search and the retraining are kept short (6 and 8
steps; measured 9e-7 and 3.6e-7 in the weights, 3e-7 in the losses). The channel masks, the draw
and the file lists must be identical.

Cost: ~20 s on 2 busy cores (launches of 1 and 2 processes, two of them side by side, and one
in-process search and retraining as rank 1).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from test_distributed import LOSS_TOL, WEIGHT_TOL, launch

from lotto.core import data, io
from lotto.core.distributed import World
from lotto.core.spec import resolve
from lotto.methods import earlybird

DOC = {
    "name": "eb_dist",
    "dataset": {"name": "synthetic", "val_size": 50, "synthetic": {"shape": [3, 16, 16], "n_train": 250, "n_test": 60}},
    "model": {"name": "vgg11", "width": 0.0625},
    "training": {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "batch_size": 50, "duration": 8,
                 "eval_every": 4, "device": "cpu"},
    "earlybird": {"ratios": [0.5], "record_every": 2, "slimming": 0.01, "window": 3, "epsilon": 0.5, "retrain": ["ff"]},
}
SEARCH_FILES = {"eb.json", "metrics.parquet", "tickets"} | {
    f"{name}{suffix}" for name in ("init.pt", "last.pt", "masks.pt", "tickets/p50_eb.pt") for suffix in ("", ".sha256")}
RETRAIN_FILES = {"metrics.parquet", "summary.json"} | {
    f"{name}{suffix}" for name in ("checkpoint.pt", "channels.pt") for suffix in ("", ".sha256")}


def files(directory: Path) -> set[str]:
    return {str(p.relative_to(directory)) for p in directory.rglob("*")}


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("eb_distributed")
    io.write_json(path / "spec.json", resolve(DOC).to_dict())
    data.prepare("synthetic", path / "data.pt", synthetic_options=DOC["dataset"]["synthetic"])
    return path


def search_args(n: int) -> list[str]:
    return ["eb-search", "--spec", "spec.json", "--data", "data.pt", "--seed", "0", "--out", f"search_n{n}"]


def retrain_args(n: int) -> list[str]:
    """FF retraining of the one-process search's ticket, so that only the retraining differs."""
    return ["eb-train", "--spec", "spec.json", "--data", "data.pt", "--seed", "0", "--search", "search_n1",
            "--ratio", "0.5", "--ticket", "eb", "--mode", "ff", "--out", f"ff_n{n}"]


@pytest.fixture(scope="module")
def runs(work) -> Path:
    """The search in 1 process, then its retraining in 1 process beside the search in 2; then the
    retraining in 2."""
    launch(1, *search_args(1), cwd=work)
    jobs = [launch(2, *search_args(2), cwd=work, background=True),
            launch(1, *retrain_args(1), cwd=work, background=True)]
    for job in jobs:
        output, _ = job.communicate(timeout=120)
        assert job.returncode == 0, output
    launch(2, *retrain_args(2), cwd=work)
    return work


def weight_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def metric_difference(a: Path, b: Path) -> dict[str, float]:
    fa, fb = pd.read_parquet(a), pd.read_parquet(b)
    assert list(fa[["step", "split"]].itertuples(index=False)) == list(fb[["step", "split"]].itertuples(index=False))
    return {"loss": float((fa["loss"] - fb["loss"]).abs().max()),
            "accuracy": float((fa["accuracy"] - fb["accuracy"]).abs().max())}


def test_two_processes_draw_the_same_ticket_as_one(runs):
    one, two = runs / "search_n1", runs / "search_n2"
    assert files(one) == files(two) == SEARCH_FILES
    e1, e2 = (json.loads((d / "eb.json").read_text()) for d in (one, two))
    assert e1["draw_epoch"] == e2["draw_epoch"] and e1["draw_epoch"]["p50"] is not None
    assert e1["epochs_trained"] == e2["epochs_trained"] and e1["distances"] == e2["distances"]
    m1, m2 = io.load_torch(one / "masks.pt"), io.load_torch(two / "masks.pt")
    assert torch.equal(m1["p50"], m2["p50"])
    t1, t2 = (io.load_torch(d / "tickets" / "p50_eb.pt") for d in (one, two))
    assert t1["epoch"] == t2["epoch"] and t1["drawn"] == t2["drawn"]
    assert all(torch.equal(t1["channel_mask"][k], t2["channel_mask"][k]) for k in t1["channel_mask"])
    ticket = weight_difference(t1["state"], t2["state"])
    last = weight_difference(io.load_torch(one / "last.pt"), io.load_torch(two / "last.pt"))
    diff = metric_difference(one / "metrics.parquet", two / "metrics.parquet")
    print(f"\nsearch, 1 vs 2 processes: draw {e1['draw_epoch']}, ticket weights {ticket:.3g}, "
          f"last weights {last:.3g}, {diff}")
    assert 0 < last < WEIGHT_TOL and ticket < WEIGHT_TOL  # > 0: really another computation
    assert diff["loss"] < LOSS_TOL and diff["accuracy"] <= 1 / 50


def test_two_processes_retrain_the_ticket_as_one(runs):
    one, two = runs / "ff_n1", runs / "ff_n2"
    assert files(one) == files(two) == RETRAIN_FILES
    c1, c2 = io.load_torch(one / "channels.pt"), io.load_torch(two / "channels.pt")
    assert all(torch.equal(c1[k], c2[k]) for k in c1)
    weights = weight_difference(io.load_torch(one / "checkpoint.pt"), io.load_torch(two / "checkpoint.pt"))
    diff = metric_difference(one / "metrics.parquet", two / "metrics.parquet")
    s1, s2 = (json.loads((d / "summary.json").read_text()) for d in (one, two))
    print(f"\nff retraining, 1 vs 2 processes: weights {weights:.3g}, {diff}, test accuracy "
          f"{s1['test_accuracy']} / {s2['test_accuracy']}")
    assert 0 < weights < WEIGHT_TOL
    assert diff["loss"] < LOSS_TOL and diff["accuracy"] <= 1 / 50
    assert {k: v for k, v in s1.items() if k != "test_accuracy"} == {k: v for k, v in s2.items() if k != "test_accuracy"}


def test_a_process_other_than_rank_0_writes_nothing(work, tmp_path, monkeypatch):
    """The search and a retraining run as rank 1 of 2 (its training alone, as a world of one)
    leave no file or folder behind; rank 0 writes them all."""
    spec = resolve(DOC)
    earlybird.search(spec, work / "data.pt", 0, work / "search_rank0")
    monkeypatch.setattr(World, "current", classmethod(lambda cls: World(rank=1, size=2)))
    earlybird.search(spec, work / "data.pt", 0, tmp_path / "search")
    earlybird.retrain(spec, work / "data.pt", 0, work / "search_rank0", 0.5, "eb", "ff", tmp_path / "ff")
    assert files(tmp_path) == set()


def test_an_earlybird_experiment_may_train_in_several_processes():
    doc = {**DOC, "training": {**DOC["training"], "devices": 2}}
    assert resolve(doc).training.devices == 2
    assert resolve(doc).dense_key == resolve(DOC).dense_key  # execution only
