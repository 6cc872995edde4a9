"""lotto.core.masks and lotto.core.prune: exact counts, smallest magnitudes, deterministic ties,
masks that only shrink, and the one-shot / random controls' counts."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_spec
from torch import nn

from lotto import round_plan, rounds
from lotto.core import criteria, masks, prune
from lotto.core.errors import InvalidValue
from lotto.core.masks import prunable_layers
from lotto.core.models import create_model
from lotto.core.spec import PruningSpec, experiment_schema

LTH_RATES = {"fc": 0.2, "output": 0.1}  # the tiny experiment's rates after resolution


def lenet(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return create_model("lenet_300_100", input_shape=(1, 8, 8), num_classes=10)


def two_layer_net(seed: int = 0) -> nn.Module:
    """fc layer '0' with exactly 1,000 weights, output layer '1' with 200."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(50, 20), nn.Linear(20, 10))


def kinds(model: nn.Module) -> dict[str, str]:
    return {name: kind for name, kind, _ in prunable_layers(model)}


def kept(mask: masks.Mask) -> dict[str, int]:
    return {name: int(m.sum()) for name, m in mask.items()}


def removed(before: masks.Mask, after: masks.Mask) -> dict[str, int]:
    return {name: int(before[name].sum() - after[name].sum()) for name in before}


def magnitudes(model: nn.Module, names) -> dict[str, torch.Tensor]:
    layers = {name: m for name, _, m in prunable_layers(model)}
    return {name: layers[name].weight.detach().abs() for name in names}


def assert_smallest_removed(model: nn.Module, before: masks.Mask, after: masks.Mask, names) -> None:
    """Every weight removed is no larger than every survivor among the layers `names`."""
    mags = magnitudes(model, names)
    dropped = torch.cat([mags[n][before[n] & ~after[n]] for n in names])
    survivors = torch.cat([mags[n][after[n]] for n in names])
    assert len(dropped) > 0
    assert dropped.max() <= survivors.min()


def randomize_(model: nn.Module, seed: int) -> None:
    """New random weights everywhere, pruned positions included (as a worst case for pruning)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, _, module in prunable_layers(model):
            module.weight.copy_(torch.randn(module.weight.shape, generator=generator))


# ---------------------------------------------------------------------------- layer-wise


def test_layer_told_to_lose_20_percent_of_1000_loses_exactly_200():
    model = two_layer_net()
    spec = PruningSpec(rates=(("fc", 0.2), ("output", 0.1)), rounds=2)
    mask = masks.ones(model)
    first = prune.prune(model, mask, spec)
    assert removed(mask, first) == {"0": 200, "1": 20}
    second = prune.prune(model, first, spec)
    assert removed(first, second) == {"0": 160, "1": 18}  # 20% of 800, 10% of 180


def test_layerwise_counts_follow_each_layers_kind_and_output_is_at_half_rate():
    """The resolved LTH recipe on LeNet-300-100: fc layers lose 20%, the output layer 10%."""
    model = lenet()
    spec = tiny_spec().pruning
    mask = masks.ones(model)
    new = prune.prune(model, mask, spec)
    sizes = {name: m.numel() for name, m in mask.items()}
    expected = {name: round(LTH_RATES[kind] * sizes[name]) for name, kind in kinds(model).items()}
    assert removed(mask, new) == expected
    assert removed(mask, new)["5"] == 100  # the output layer: 10 x 100 weights, 10% of them
    for name in new:
        assert_smallest_removed(model, mask, new, [name])


def test_layerwise_exclude_keeps_the_layer_dense():
    model = lenet()
    spec = PruningSpec(rates=(("fc", 0.5), ("output", 0.5)), exclude=("3",))
    new = prune.prune(model, masks.ones(model), spec)
    assert bool(new["3"].all())
    assert kept(new)["1"] == 19200 // 2


# ---------------------------------------------------------------------------- global


@pytest.mark.parametrize("exclude", [(), ("5",)], ids=["all layers", "output excluded"])
def test_global_removes_exact_total_of_smallest_magnitudes(exclude):
    model = lenet()
    spec = PruningSpec(scope="global", rate=0.2, exclude=exclude)
    mask = masks.ones(model)
    included = [name for name in mask if name not in exclude]
    for round_ in range(2):
        survivors = sum(kept(mask)[n] for n in included)
        new = prune.prune(model, mask, spec)
        assert sum(removed(mask, new).values()) == round(0.2 * survivors)
        assert all(removed(mask, new)[n] == 0 for n in exclude)
        assert_smallest_removed(model, mask, new, included)
        if round_ == 0:  # one threshold, different layers lose different fractions
            fractions = {n: removed(mask, new)[n] / mask[n].numel() for n in included}
            assert len(set(fractions.values())) == len(included)
        mask = new


@pytest.mark.parametrize(
    "spec",
    [PruningSpec(rates=(("fc", 0.2), ("output", 0.1))),
     PruningSpec(scope="global", rate=0.3, exclude=("5",))],
    ids=["layerwise", "global"],
)
def test_random_pruning_has_the_same_per_layer_counts(spec):
    model = lenet()
    mask = masks.ones(model)
    by_magnitude = prune.prune(model, mask, spec)
    random_spec = PruningSpec(criterion="random", scope=spec.scope, rate=spec.rate,
                              rates=spec.rates, exclude=spec.exclude)
    at_random = prune.prune(model, mask, random_spec, torch.Generator().manual_seed(1))
    assert removed(mask, at_random) == removed(mask, by_magnitude)
    assert masks.hamming(at_random, by_magnitude) > 0
    again = prune.prune(model, mask, random_spec, torch.Generator().manual_seed(1))
    assert masks.hamming(at_random, again) == 0
    other = prune.prune(model, mask, random_spec, torch.Generator().manual_seed(2))
    assert masks.hamming(at_random, other) > 0


# ---------------------------------------------------------------------------- ties, shrinking


@pytest.mark.parametrize(
    "spec",
    [PruningSpec(rates=(("fc", 0.2), ("output", 0.1))), PruningSpec(scope="global", rate=0.2)],
    ids=["layerwise", "global"],
)
def test_ties_are_broken_deterministically_by_position(spec):
    """All-equal weights give the same mask every time: the lowest positions go first."""
    results = []
    for seed in (0, 1):
        model = lenet(seed)
        with torch.no_grad():
            for _, _, module in prunable_layers(model):
                module.weight.fill_(0.5)
        results.append(prune.prune(model, masks.ones(model), spec))
    assert masks.hamming(results[0], results[1]) == 0
    for name, m in results[0].items():
        flat = m.flatten()
        lost = int((~flat).sum())
        assert not flat[:lost].any() and flat[lost:].all(), name


@pytest.mark.parametrize(
    "spec",
    [PruningSpec(rates=(("fc", 0.2), ("output", 0.1))),
     PruningSpec(scope="global", rate=0.2, exclude=("5",))],
    ids=["layerwise", "global"],
)
def test_masks_only_shrink_across_rounds(spec):
    """Even if pruned positions hold large weights, a pruned weight never comes back."""
    model = lenet()
    mask = masks.ones(model)
    for round_ in range(5):
        randomize_(model, seed=round_)
        new = prune.prune(model, mask, spec)
        assert all(bool((new[n] <= mask[n]).all()) for n in mask)  # new is a subset of old
        counts = prune.removal_counts(model, mask, spec)
        assert removed(mask, new) == {n: counts.get(n, 0) for n in mask}
        mask = new
    assert masks.density(mask) < 0.5


# ---------------------------------------------------------------------------- controls


def test_prune_to_match_layerwise_keeps_each_layers_count_and_largest_weights():
    target_source = lenet(seed=7)  # another network's mask fixes the per-layer counts
    spec = PruningSpec(rates=(("fc", 0.5), ("output", 0.25)))
    target = prune.prune(target_source, masks.ones(target_source), spec)
    dense = lenet(seed=0)
    matched = prune.prune_to_match(dense, target, "layerwise")
    assert kept(matched) == kept(target)
    assert masks.hamming(matched, target) > 0  # chosen by the dense weights, not copied
    ones = masks.ones(dense)
    for name in matched:
        assert_smallest_removed(dense, ones, matched, [name])


def test_prune_to_match_global_keeps_the_total_and_excluded_layers():
    target_source = lenet(seed=7)
    spec = PruningSpec(scope="global", rate=0.6, exclude=("5",))
    target = prune.prune(target_source, masks.ones(target_source), spec)
    dense = lenet(seed=0)
    matched = prune.prune_to_match(dense, target, "global", exclude=("5",))
    assert kept(matched)["1"] + kept(matched)["3"] == kept(target)["1"] + kept(target)["3"]
    assert bool(matched["5"].all())
    assert_smallest_removed(dense, masks.ones(dense), matched, ["1", "3"])


def test_random_like_keeps_every_layers_count():
    model = lenet()
    mask = prune.prune(model, masks.ones(model), PruningSpec(rates=(("fc", 0.7), ("output", 0.3))))
    shuffled = prune.random_like(mask, torch.Generator().manual_seed(0))
    assert kept(shuffled) == kept(mask)
    assert {n: m.shape for n, m in shuffled.items()} == {n: m.shape for n, m in mask.items()}
    assert masks.hamming(shuffled, mask) > 0.1
    again = prune.random_like(mask, torch.Generator().manual_seed(0))
    assert masks.hamming(shuffled, again) == 0


def test_prune_counts_refuses_impossible_requests():
    model = two_layer_net()
    mask = masks.ones(model)
    with pytest.raises(ValueError, match="layer 0: cannot remove 1001 of 1000 survivors"):
        prune.prune_counts(model, mask, {"0": 1001}, "magnitude")
    with pytest.raises(ValueError, match="'magnitud'; choose one of: magnitude, random"):
        prune.prune_counts(model, mask, {"0": 1}, "magnitud")


# ---------------------------------------------------------------------------- masks


def test_prunable_layers_kinds_and_mask_covers_weights_only():
    """conv layers are 'conv', the last linear is 'output'; biases and BN are never masked."""
    model = create_model("conv2", input_shape=(1, 8, 8), num_classes=10)
    layer_kinds = [kind for _, kind, _ in prunable_layers(model)]
    assert layer_kinds == ["conv", "conv", "fc", "fc", "output"]
    mask = masks.ones(model)
    weights = {n: m.weight.shape for n, _, m in prunable_layers(model)}
    assert {n: m.shape for n, m in mask.items()} == weights
    assert all(m.dtype == torch.bool for m in mask.values())


def test_apply_zeroes_exactly_the_pruned_weights():
    model = lenet()
    mask = prune.random_like(prune.prune(model, masks.ones(model), PruningSpec(
        rates=(("fc", 0.5), ("output", 0.5)))), torch.Generator().manual_seed(3))
    before = {n: m.weight.detach().clone() for n, _, m in prunable_layers(model)}
    masks.apply_(model, mask)
    for name, _, module in prunable_layers(model):
        assert bool((module.weight[~mask[name]] == 0).all())
        assert torch.equal(module.weight[mask[name]], before[name][mask[name]])


def test_density_and_hamming():
    model = two_layer_net()
    mask = masks.ones(model)
    half = dict(mask)
    half["0"] = torch.arange(1000).view(20, 50) % 2 == 0
    assert masks.density(half) == pytest.approx((500 + 200) / 1200)
    assert masks.hamming(mask, half) == pytest.approx(500 / 1200)
    with pytest.raises(ValueError, match="different layers"):
        masks.hamming(mask, {"0": mask["0"]})


def test_check_refuses_a_mask_for_another_model():
    mask = masks.ones(two_layer_net())
    with pytest.raises(ValueError, match=r"does not fit the model \(0: mask \(20, 50\) vs model"):
        masks.check(mask, lenet(), source="m.pt")


# ---------------------------------------------------------------------------- registries


def test_the_schema_offers_exactly_the_registered_criteria_and_branches():
    properties = experiment_schema()["properties"]
    assert properties["pruning"]["properties"]["criterion"]["enum"] == list(prune.CRITERIA)
    assert list(prune.CRITERIA) == list(criteria.CRITERION_FACTS)  # the torch-free facts too
    assert properties["branches"]["items"]["enum"] == list(rounds.BRANCHES)


def test_each_criterion_is_its_facts_and_a_scoring_function_exactly_when_scored_from_weights():
    """prune.CRITERIA pairs the torch-free facts with the scores: a criterion scored from the
    weights has a function, every other one gets its scores from the job or the draws; the
    one-shot start points are values of the schema's rewinding.weights."""
    weights_enum = experiment_schema()["properties"]["rewinding"]["properties"]["weights"]["enum"]
    sources = {criteria.WEIGHTS, criteria.DRAWS, criteria.BATCH, criteria.LEARNED_LOGITS}
    for name, criterion in prune.CRITERIA.items():
        assert criterion.facts is criteria.CRITERION_FACTS[name]
        assert criterion.facts.scored_from in sources, name
        assert (criterion.scores is not None) == (criterion.facts.scored_from == criteria.WEIGHTS), name
        assert set(criterion.facts.one_shot_starts) <= set(weights_enum), name
        assert bool(criterion.facts.one_shot_starts) == bool(criterion.facts.one_shot_reason), name


def test_the_workflow_plans_the_registered_branches():
    """The workflow reads the branch names from the torch-free round_plan, the jobs from the
    registry: both must say the same, in the same order."""
    assert tuple(rounds.BRANCH_REGISTRY) == round_plan.BRANCHES


@pytest.mark.parametrize("call", [
    lambda model, mask: prune.criterion_scores(model, mask, "magnitud"),
    lambda model, mask: prune.prune_counts(model, mask, {}, "magnitud"),
])
def test_an_unknown_criterion_is_refused_with_every_choice(call):
    model = two_layer_net()
    with pytest.raises(InvalidValue) as info:
        call(model, masks.ones(model))
    assert str(info.value) == ("unknown pruning criterion 'magnitud'; choose one of: "
                               "magnitude, random, snip, l1_filter, optimal_mask")


@pytest.mark.parametrize("name", ["random", "snip", "optimal_mask"])
def test_criteria_that_need_more_than_the_weights_say_what(name):
    model = two_layer_net()
    with pytest.raises(ValueError, match=f"{name} scores need "):
        prune.criterion_scores(model, masks.ones(model), name)
