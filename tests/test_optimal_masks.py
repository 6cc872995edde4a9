"""Training Optimal Masks (criterion optimal_mask): the logit update is the thesis's rule, the
weights stay frozen, the rounds keep the highest logits with IMP's counts, bad settings are
refused, and the workflow runs replay -> learn_mask -> rounds."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from conftest import VAL_SIZE, tiny_spec
from workflow_util import Workdir, job_stats

from lotto import rounds
from lotto.core import layout, masks, prune
from lotto.core.spec import MaskTrainingSpec, PruningSpec, SpecError, build_model
from lotto.methods import optimal_masks

OPTIMAL = {"criterion": "optimal_mask", "mask_training": {"steps": 30, "lr": 5.0}}


def tiny_model(seed: int = 0) -> torch.nn.Module:
    spec = tiny_spec()
    torch.manual_seed(seed)
    return build_model(spec.model, spec.dataset)


def test_spec_resolves_defaults_and_pretrain_from_the_duration():
    spec = tiny_spec(pruning={"criterion": "optimal_mask"})
    settings = spec.pruning.mask_training
    per_epoch = (2000 - VAL_SIZE) // 60
    assert settings.pretrain == round(0.1 * spec.training.duration)
    assert settings.steps == per_epoch  # default 1ep
    assert (settings.penalty, settings.grad_clip, settings.logit_clip) == ("l1", 0.1, 15.0)
    assert tiny_spec().pruning.mask_training is None
    assert "mask_training" not in tiny_spec().to_dict()["pruning"]  # older specs unchanged
    assert type(spec).from_dict(spec.to_dict()) == spec
    assert spec.recipe_key != tiny_spec(pruning={**OPTIMAL, "mask_training": {"lr": 2.0}}).recipe_key


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"pruning": {"mask_training": {"steps": 5}}}, "only used with criterion: optimal_mask"),
        (
            {"pruning": {"criterion": "optimal_mask"}, "rewinding": {"weights": "final"}},
            "optimal_mask learns its mask once",
        ),
        ({"pruning": {**OPTIMAL, "mask_training": {"pretrain": 1.0}}}, "pretrain"),
        ({"pruning": {**OPTIMAL, "mask_training": {"penalty": "l3"}}}, "penalty"),
        ({"pruning": {**OPTIMAL, "mask_training": {"steps": 0}}}, "at least 1 iteration"),
    ],
)
def test_bad_mask_training_settings_are_refused(overrides, message):
    with pytest.raises(SpecError, match=message):
        tiny_spec(**overrides)


def test_logits_follow_the_straight_through_rule_with_clipping(splits):
    """Weights fed by an always-zero input pixel get dL/dc = 0, so their logits move by the
    penalty alone (exactly init - steps * lr * coef for l1); the others move by clipped
    gradients, at most lr * (clip + coef) per step; every logit stays inside the clip range."""
    dead = torch.zeros(64, dtype=torch.bool)
    dead[:8] = True  # the first row of the 8x8 images
    train_x = splits.train_x.clone()
    train_x.view(len(train_x), -1)[:, dead] = 0.0
    data = replace(splits, train_x=train_x)
    model = tiny_model()
    settings = MaskTrainingSpec(steps=12, lr=0.5, init=2.0, penalty="l1", penalty_coef=0.01)
    logits = optimal_masks.learn_logits(model, data, settings, batch_size=60, seed=3)
    first = logits["1"]
    expected = torch.tensor(2.0 - 12 * 0.5 * 0.01)
    assert torch.allclose(first[:, dead], expected.expand_as(first[:, dead]))
    live_moves = (first[:, ~dead] - expected).abs()
    assert live_moves.max() > 1e-3  # the loss moved them
    assert (first - 2.0).abs().max() <= 12 * 0.5 * (0.1 + 0.01) + 1e-6
    # this net's dL/dc are ~1e-4, below the default clip: a clip of 1e-5 must bound every move
    clipped = optimal_masks.learn_logits(
        model, data, replace(settings, lr=10.0, penalty_coef=0.0, grad_clip=1e-5),
        batch_size=60, seed=3,
    )
    moves = torch.cat([(b - 2.0).abs().flatten() for b in clipped.values()])
    assert 0 < moves.max() <= 12 * 10.0 * 1e-5 + 1e-6
    tight = optimal_masks.learn_logits(
        model, data, replace(settings, lr=100.0, logit_clip=1.5), batch_size=60, seed=3
    )
    assert max(float(b.abs().max()) for b in tight.values()) <= 1.5


def test_l2_penalty_pushes_only_sampled_weights():
    mask = torch.tensor([0.0, 1.0, 1.0])
    settings = MaskTrainingSpec(penalty="l2", penalty_coef=0.5)
    assert torch.equal(optimal_masks.penalty_gradient(mask, settings), torch.tensor([0.0, 1.0, 1.0]))
    l1 = replace(settings, penalty="l1")
    assert torch.equal(optimal_masks.penalty_gradient(mask, l1), torch.full((3,), 0.5))


def test_weights_stay_frozen_and_logits_are_deterministic(splits):
    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    settings = MaskTrainingSpec(steps=10, lr=5.0)
    first = optimal_masks.learn_logits(model, splits, settings, batch_size=60, seed=1)
    again = optimal_masks.learn_logits(model, splits, settings, batch_size=60, seed=1)
    other = optimal_masks.learn_logits(model, splits, settings, batch_size=60, seed=2)
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name
    assert all(torch.equal(first[n], again[n]) for n in first)
    assert any(not torch.equal(first[n], other[n]) for n in first)
    excluded = optimal_masks.learn_logits(
        model, splits, settings, batch_size=60, seed=1, exclude=("5",)
    )
    assert set(excluded) == set(first) - {"5"}


def test_rounds_keep_the_highest_logits_with_imps_counts(synthetic_data, tmp_path):
    """Round r's mask = one-shot selection of the top logits at round r's density, layer by
    layer with the same counts as magnitude IMP; a round without the logits is refused."""
    spec = tiny_spec(pruning={**OPTIMAL, "rates": {"fc": 0.3}})
    dense = tmp_path / "dense"
    rounds.run_round(spec, synthetic_data, 0, 0, dense)
    pretrained = tmp_path / "pretrained.pt"
    rounds.run_replay(spec, synthetic_data, 0, spec.pruning.mask_training.pretrain, dense, pretrained)
    logits_file = tmp_path / layout.LOGITS_FILE
    rounds.run_learn_mask(spec, synthetic_data, 0, pretrained, logits_file)
    prev = dense
    for r in (1, 2):
        out = tmp_path / f"round{r}"
        rounds.run_round(spec, synthetic_data, 0, r, out, dense_dir=dense, prev_dir=prev,
                         scores_file=logits_file)
        prev = out
    mask = masks.load(tmp_path / "round2" / "mask.pt")
    logits = rounds.io.load_torch(logits_file)
    model = build_model(spec.model, spec.dataset, "meta")
    imp = masks.ones(model)
    for _ in range(2):
        imp = prune.prune_counts(model, imp, prune.removal_counts(model, imp, spec.pruning),
                                 "magnitude", scores=optimal_masks.as_scores(logits))
    assert masks.hamming(mask, imp) == 0
    for name, keep in mask.items():
        kept = 0.85 if name == "5" else 0.7  # the output layer at half the fc rate
        assert int(keep.sum()) == round(kept * round(kept * keep.numel())), name
        assert logits[name][~keep].max() <= logits[name][keep].min(), name
    with pytest.raises(ValueError, match="pass --scores"):
        rounds.run_round(spec, synthetic_data, 0, 1, tmp_path / "x", dense_dir=dense, prev_dir=dense)
    with pytest.raises(ValueError, match="learned logits"):
        prune.prune(model, masks.ones(model), PruningSpec(criterion="optimal_mask", rates=(("fc", 0.3),)))


def test_learn_mask_refuses_other_criteria(synthetic_data, tmp_path):
    with pytest.raises(ValueError, match="learn-mask is for criterion optimal_mask"):
        rounds.run_learn_mask(tiny_spec(), synthetic_data, 0, tmp_path / "w.pt", tmp_path / "o.pt")


@pytest.mark.workflow
def test_workflow_plans_replay_then_learn_mask_then_rounds(tmp_path):
    work = Workdir(tmp_path)
    doc = {
        "dataset": {"name": "synthetic", "val_size": VAL_SIZE},
        "model": {"name": "lenet_300_100"},
        "training": {"optimizer": "adam", "lr": 1e-3, "batch_size": 60, "duration": 40},
        "pruning": {**OPTIMAL, "rounds": 2, "rates": {"fc": 0.5}},
        "seeds": [0, 1],
    }
    work.write_config([work.write_experiment("tom", doc)])
    planned = work.snakemake("-n", "-p").check().output
    counts = job_stats(planned)
    assert counts["learn_mask"] == 2 and counts["replay"] == 2 and counts["prune_round"] == 4, counts
    assert "--scores results/tom/seed1/mask_logits.pt" in planned
    assert "--weights results/dense/" in planned and "/replay/step4.pt" in planned


def test_expected_density_is_the_mean_keep_probability():
    logits = {"a": torch.zeros(3), "b": torch.full((1,), 100.0)}
    assert optimal_masks.expected_density(logits) == pytest.approx((0.5 * 3 + 1.0) / 4)

