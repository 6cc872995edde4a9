"""lotto.core.train: pruned weights stay exactly zero, the LR schedule and batch order are
reproducible, an interrupted run resumes exactly, and divergence is recorded, not raised."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import tiny_spec, train_by_hand
from torch import nn

from lotto.core import masks, prune
from lotto.core.masks import prunable_layers
from lotto.core.models import create_model
from lotto.core.spec import PruningSpec
from lotto.core.train import evaluate, resolve_device, train


class Interrupted(Exception):
    """Stands in for the job being killed."""


def lenet(seed: int = 0, dropout: float = 0.0) -> nn.Module:
    torch.manual_seed(seed)
    return create_model("lenet_300_100", input_shape=(1, 8, 8), num_classes=10, dropout=dropout)


def half_mask(model: nn.Module) -> masks.Mask:
    """A random mask keeping half of every layer."""
    spec = PruningSpec(rates=(("fc", 0.5), ("output", 0.5)))
    return prune.random_like(prune.prune(model, masks.ones(model), spec),
                             torch.Generator().manual_seed(0))


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: module.weight.detach().clone() for name, _, module in prunable_layers(model)}


def assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize(
    "optimizer",
    [
        {"optimizer": "adam", "lr": 1e-2, "weight_decay": 1e-3, "l2": 1e-3},
        {"optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-3,
         "l2": 1e-3},
    ],
    ids=["adam", "sgd-nesterov"],
)
def test_pruned_weights_stay_exactly_zero(splits, optimizer):
    """Decay, L2 and optimizer momentum all push pruned weights; they must stay exactly 0."""
    spec = tiny_spec(training={**optimizer, "duration": 120, "eval_every": 60}).training
    model = lenet()
    mask = half_mask(model)
    start = weights(model)
    assert all(bool((start[n][~mask[n]] != 0).any()) for n in mask)  # train must zero them
    result = train(model, splits, spec, mask=mask, seed=0, steps=120, snapshot_at={1, 77})
    for state in (weights(model), *({n: s[f"{n}.weight"] for n in mask}
                                    for s in result.snapshots.values())):
        for name in mask:
            assert bool((state[name][~mask[name]] == 0).all()), name
    end = weights(model)
    assert all(not torch.equal(end[n][mask[n]], start[n][mask[n]]) for n in mask)  # it trained
    assert result.status == "ok"


def test_step_zero_snapshot_is_the_masked_start(splits):
    model = lenet()
    mask = half_mask(model)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    result = train(model, splits, tiny_spec().training, mask=mask, seed=0, steps=5,
                   snapshot_at={0})
    for key, value in result.snapshots[0].items():
        layer = key.removesuffix(".weight")
        expected = start[key] * mask[layer] if key.endswith(".weight") else start[key]
        assert torch.equal(value, expected), key


def test_lr_column_follows_the_schedule_offset_and_constant_mode(splits):
    spec = tiny_spec(training={"milestones": [5, 8], "gamma": 0.5, "eval_every": 2}).training
    model = lenet()
    shifted = train(model, splits, spec, mask=masks.ones(model), seed=0, steps=10, start=3)
    for row in shifted.rows:
        assert row["lr"] == spec.lr_at(3 + max(row["step"] - 1, 0)), row
    assert {row["lr"] for row in shifted.rows} == {spec.lr, spec.lr / 2, spec.lr / 4}
    constant = train(lenet(), splits, spec, mask=masks.ones(model), seed=0, steps=10,
                     constant_lr=True)
    assert {row["lr"] for row in constant.rows} == {spec.lr_at(spec.duration)}
    assert max(row["step"] for row in constant.rows) == 10


# a warm-up over global steps 0-5 and a decay at step 9, both inside the 12-step runs below
SCHEDULE = {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "warmup": 6, "milestones": [9],
            "gamma": 0.1, "duration": 20, "eval_every": 5}


@pytest.mark.parametrize("start", [0, 3])
def test_optimizer_steps_at_the_rate_of_the_schedule_for_its_step(splits, start):
    """Each step uses lr_at(its global step), as the update written out by hand does; the
    `lr` column is computed apart, so only this comparison sees a rate one step off."""
    spec = tiny_spec(training=SCHEDULE).training
    assert len({spec.lr_at(s) for s in range(start, start + 12)}) >= 4  # the schedule moves
    model = lenet()
    train(model, splits, spec, mask=masks.ones(model), seed=2, steps=12, start=start)
    expected = train_by_hand(lenet(), splits, spec, seed=2, steps=12, start=start)
    for key, value in expected.items():
        torch.testing.assert_close(model.state_dict()[key], value, rtol=0, atol=1e-6,
                                   msg=lambda m, key=key: f"{key}: {m}")


def test_a_length_not_a_multiple_of_eval_every_ends_with_an_evaluation_of_the_final_weights(splits):
    """25 steps at eval_every 10: rows at 0, 10, 20 and 25, the last of the weights returned."""
    spec = tiny_spec(training={"eval_every": 10}).training
    model = lenet()
    result = train(model, splits, spec, mask=masks.ones(model), seed=0, steps=25)
    assert [(r["step"], r["split"]) for r in result.rows] == [(0, "val"), (0, "test")] + [
        (step, split) for step in (10, 20, 25) for split in ("train", "val", "test")
    ]
    final = {r["split"]: r for r in result.rows if r["step"] == 25}
    loss, accuracy = evaluate(model, splits.test_x, splits.test_y)
    assert (final["test"]["loss"], final["test"]["accuracy"]) == (loss, accuracy)


def test_batch_order_depends_only_on_seed_and_global_step(splits):
    """20 steps, then 20 more from schedule step 20, equals 40 steps in one go (stateless SGD):
    what lets a replay or a rewound round continue round 0's exact trajectory."""
    spec = tiny_spec(training={"optimizer": "sgd", "lr": 0.05, "eval_every": 20}).training
    whole = lenet()
    train(whole, splits, spec, mask=masks.ones(whole), seed=3, steps=40)
    split = lenet()
    train(split, splits, spec, mask=masks.ones(split), seed=3, steps=20)
    train(split, splits, spec, mask=masks.ones(split), seed=3, steps=20, start=20)
    assert_same_state(whole.state_dict(), split.state_dict())
    other_seed = lenet()
    train(other_seed, splits, spec, mask=masks.ones(other_seed), seed=4, steps=40)
    assert not torch.equal(other_seed.state_dict()["1.weight"], whole.state_dict()["1.weight"])


def test_interrupted_training_resumes_to_identical_metrics_and_weights(splits, tmp_path):
    """Killed after a checkpoint, the rerun continues from it and ends where an uninterrupted
    run ends: same rows, same weights, same snapshots (dropout makes the RNG state matter)."""
    spec = tiny_spec(model={"dropout": 0.3},
                     training={"checkpoint_every": 20, "eval_every": 10}).training
    mask = half_mask(lenet(dropout=0.3))

    def run(resume_path=None, on_eval=None):
        model = lenet(dropout=0.3)
        return model, train(model, splits, spec, mask=mask, seed=0, steps=60,
                            snapshot_at={10, 50}, resume_path=resume_path, on_eval=on_eval)

    _, reference = run()

    def kill_at_30(step, _model):
        if step == 30:
            raise Interrupted

    resume = tmp_path / "resume.pt"
    with pytest.raises(Interrupted):
        run(resume, kill_at_30)
    assert resume.exists()

    evaluated = []
    model, resumed = run(resume, lambda step, _model: evaluated.append(step))
    assert evaluated[0] == 30  # continued from the step-20 checkpoint, not from scratch
    assert resumed.rows == reference.rows
    assert_same_state(resumed.state, reference.state)
    assert resumed.snapshots.keys() == reference.snapshots.keys() == {10, 50}
    for step in reference.snapshots:
        assert_same_state(resumed.snapshots[step], reference.snapshots[step])


def test_divergence_is_recorded_and_the_last_good_state_kept(splits):
    spec = tiny_spec(training={"optimizer": "sgd", "lr": 1e6, "eval_every": 10}).training
    model = lenet()
    good_states = {}

    def remember(step, m):
        good_states[step] = {k: v.clone() for k, v in m.state_dict().items()}

    result = train(model, splits, spec, mask=masks.ones(model), seed=0, steps=60,
                   on_eval=remember)
    assert result.status == "diverged"
    assert result.diverged_step is not None and result.diverged_step % 10 == 0
    diverged = [r for r in result.rows if r["status"] == "diverged"]
    assert diverged == [r for r in result.rows if r["step"] == result.diverged_step]
    assert len(diverged) == 1 and diverged[0]["split"] == "train"
    assert not math.isfinite(diverged[0]["loss"]) or diverged[0]["loss"] > spec.divergence_loss
    assert max(r["step"] for r in result.rows) == result.diverged_step  # training stopped
    assert all(torch.isfinite(v).all() for v in result.state.values())
    assert_same_state(result.state, good_states[max(good_states)])


def test_evaluate_matches_a_direct_computation(splits):
    model = lenet()
    loss, accuracy = evaluate(model, splits.test_x, splits.test_y)
    with torch.no_grad():
        out = model(splits.test_x)
    assert loss == pytest.approx(float(nn.functional.cross_entropy(out, splits.test_y)), rel=1e-5)
    assert accuracy == int((out.argmax(1) == splits.test_y).sum()) / len(splits.test_y)


def test_cuda_device_without_cuda_is_refused_with_the_fix():
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(RuntimeError, match="no CUDA device is available; use 'auto' or 'cpu'"):
        resolve_device("cuda")
