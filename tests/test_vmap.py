"""lotto.core.vmap: seeds trained together match separate lotto.core.train.train runs, and models whose
seeds cannot share a vectorised pass are refused."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_spec, train_by_hand

from lotto.core import masks, prune
from lotto.core.models import create_model
from lotto.core.spec import PruningSpec
from lotto.core.train import dropout_seed, evaluate, train
from lotto.core.vmap import SeedDropout, check_vectorisable, train_seeds


def lenet(seed: int, dropout: float = 0.0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model("lenet_300_100", input_shape=(1, 8, 8), num_classes=10, dropout=dropout)


def pruned_mask(model: torch.nn.Module, seed: int) -> masks.Mask:
    spec = PruningSpec(rates=(("fc", 0.6), ("output", 0.3)))
    return prune.random_like(
        prune.prune(model, masks.ones(model), spec), torch.Generator().manual_seed(seed)
    )


@pytest.mark.parametrize(
    "training",
    [
        {"optimizer": "adam", "lr": 1.2e-3, "weight_decay": 1e-3},
        {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True, "l2": 1e-3},
    ],
    ids=["adam", "sgd-l2"],
)
def test_each_seed_matches_its_separate_run(splits, training):
    """Same weights (float tolerance), same metric rows, pruned weights exactly zero, for a
    dense seed and a pruned seed trained together over more than one epoch."""
    spec = tiny_spec(training={**training, "duration": 40, "eval_every": 15}).training
    seeds = [3, 8]
    mask_list = [masks.ones(lenet(3)), pruned_mask(lenet(8), 1)]
    separate = [
        train(lenet(s), splits, spec, mask=m, seed=s, steps=40)
        for s, m in zip(seeds, mask_list, strict=True)
    ]
    together = train_seeds(
        [lenet(s) for s in seeds], splits, spec, masks=mask_list, seeds=seeds, steps=40
    )

    for alone, joint, mask in zip(separate, together, mask_list, strict=True):
        assert alone.state.keys() == joint.state.keys()
        for key in alone.state:
            torch.testing.assert_close(joint.state[key], alone.state[key], rtol=0, atol=1e-5)
        for name, keep in mask.items():
            assert torch.all(joint.state[f"{name}.weight"][~keep] == 0)
        assert [(r["step"], r["split"], r["lr"]) for r in joint.rows] == [
            (r["step"], r["split"], r["lr"]) for r in alone.rows
        ]
        for a, b in zip(alone.rows, joint.rows, strict=True):
            assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)
            assert b["accuracy"] == pytest.approx(a["accuracy"], abs=1 / len(splits.test_y))
    # the seeds really trained differently (a vectorisation that mixed them would not)
    assert not torch.allclose(together[0].state["1.weight"], together[1].state["1.weight"])


def test_each_seed_steps_at_the_rate_of_the_schedule_for_its_step(splits):
    """As for lotto.core.train.train: with a warm-up and a decay inside the run, every seed's weights
    are those of SGD written out by hand at lr_at(global step), from schedule step 3."""
    spec = tiny_spec(training={"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "warmup": 6,
                               "milestones": [9], "duration": 20, "eval_every": 5}).training
    seeds = [3, 8]
    together = train_seeds([lenet(s) for s in seeds], splits, spec,
                           masks=[masks.ones(lenet(s)) for s in seeds], seeds=seeds, steps=12,
                           start=3)
    for seed, result in zip(seeds, together, strict=True):
        expected = train_by_hand(lenet(seed), splits, spec, seed=seed, steps=12, start=3)
        for key, value in expected.items():
            torch.testing.assert_close(result.state[key], value, rtol=0, atol=1e-6,
                                       msg=lambda m, key=key: f"{key}: {m}")


def test_a_length_not_a_multiple_of_eval_every_ends_with_an_evaluation_of_the_final_weights(splits):
    """25 steps at eval_every 10: each seed has rows at 0, 10, 20 and 25, the last of its final
    weights."""
    spec = tiny_spec(training={"eval_every": 10}).training
    seeds = [3, 8]
    together = train_seeds([lenet(s) for s in seeds], splits, spec,
                           masks=[masks.ones(lenet(s)) for s in seeds], seeds=seeds, steps=25)
    for result in together:
        assert [(r["step"], r["split"]) for r in result.rows] == [(0, "val"), (0, "test")] + [
            (step, split) for step in (10, 20, 25) for split in ("train", "val", "test")
        ]
        model = lenet(0)
        model.load_state_dict(result.state)
        loss, accuracy = evaluate(model, splits.test_x, splits.test_y)
        final_test = result.rows[-1]
        assert final_test["split"] == "test"
        assert final_test["loss"] == pytest.approx(loss, rel=1e-5)
        assert final_test["accuracy"] == pytest.approx(accuracy, abs=1 / len(splits.test_y))


@pytest.mark.parametrize("start", [0, 3])
def test_each_seed_draws_the_dropout_noise_of_its_separate_run(splits, start):
    """Dropout (two layers) with per-seed streams: each seed's weights and rows are those of its
    run alone (a stream seeded without `start` differs by 0.03); two runs with the same start
    weights and different seeds end apart, as their runs alone do."""
    spec = tiny_spec(training={"duration": 30, "eval_every": 10}).training
    seeds, init = [3, 8, 5], [3, 8, 3]  # runs 0 and 2: same weights, different dropout seeds
    mask_list = [masks.ones(lenet(0, 0.5)), pruned_mask(lenet(8, 0.5), 1), masks.ones(lenet(0, 0.5))]
    separate = [train(lenet(i, 0.5), splits, spec, mask=m, seed=s, steps=20, start=start)
                for s, i, m in zip(seeds, init, mask_list, strict=True)]
    together = train_seeds([lenet(i, 0.5) for i in init], splits, spec, masks=mask_list, seeds=seeds,
                           steps=20, start=start)
    for alone, joint in zip(separate, together, strict=True):
        for key in alone.state:
            torch.testing.assert_close(joint.state[key], alone.state[key], rtol=0, atol=1e-5)
        for a, b in zip(alone.rows, joint.rows, strict=True):
            assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)
    assert not torch.allclose(separate[0].state["1.weight"], separate[2].state["1.weight"], atol=1e-3)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_dropout_noise_is_nn_dropouts_draw_from_the_seeds_stream(precision):
    """Each drawn noise tensor is what nn.Dropout multiplies by in a separate run (torch's global
    generator seeded with dropout_seed), layer after layer, step after step, in the dtype the
    layer sees under the precision's autocast (bf16 activations: bf16 noise)."""
    model, seeds, start, steps = lenet(0, 0.5), [3, 8], 5, 2
    dropout = SeedDropout(model, seeds, start, (16, 1, 8, 8), precision, torch.device("cpu"))
    assert [(name, shape) for name, _, shape, _ in dropout.layers] == [("3", (16, 300)), ("6", (16, 100))]
    drawn = []
    for _ in range(steps):
        dropout.draw()
        drawn.append({k: v.clone() for k, v in dropout.noise.items()})
    for i, seed in enumerate(seeds):
        torch.manual_seed(dropout_seed(seed, start))
        for step in range(steps):
            for name, p, shape, dtype in dropout.layers:
                assert dtype == (torch.bfloat16 if precision == "bf16" else torch.float32)
                expected = torch.nn.functional.dropout(torch.ones(shape, dtype=dtype), p, training=True)
                assert torch.equal(drawn[step][f"{name}.noise"][i], expected)


@pytest.mark.parametrize(
    ("name", "options", "refused"),
    [("resnet20", {}, "BatchNorm")],
)
def test_refuses_models_whose_seeds_cannot_be_vectorised(name, options, refused):
    model = create_model(name, input_shape=(3, 8, 8), num_classes=10, **options)
    with pytest.raises(ValueError, match=refused):
        check_vectorisable(model)


def test_refuses_dropout_layers_whose_noise_it_does_not_draw():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Dropout1d(0.3), torch.nn.Linear(64, 10))
    with pytest.raises(ValueError, match="layer '1' is Dropout1d"):
        check_vectorisable(model)
    check_vectorisable(lenet(0, 0.5))  # nn.Dropout: drawn per seed


def test_needs_one_mask_and_seed_per_model(splits):
    spec = tiny_spec().training
    with pytest.raises(ValueError, match="2 models, 1 masks, 2 seeds"):
        train_seeds(
            [lenet(0), lenet(1)], splits, spec, masks=[masks.ones(lenet(0))], seeds=[0, 1], steps=1
        )
