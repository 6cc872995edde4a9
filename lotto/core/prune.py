"""Pruning: which surviving weights to remove, with exact counts and deterministic ties.

Every pruner works in two steps: decide how many survivors each layer loses
(layer-wise rates, or one global threshold), then choose which ones: the lowest scores of
the criterion, or uniformly at random with the same per-layer counts. Ties are broken by
position (stable sort), so the same weights give the same mask.

Criteria: magnitude |w|; random; snip |w * dL/dw| on one batch (Lee et al. 2019; the caller
computes the scores with `snip_scores`, since they need data); optimal_mask: the mask logits
learned by lotto.methods.optimal_masks (Mikler's Training Optimal Masks; the caller loads them);
l1_filter, structured: whole output units (conv filters, linear neurons) with the smallest
L1 norm of their surviving weights (Li et al. 2017), expressed as a mask with whole units
zeroed. A pruned unit's bias and batch-norm shift stay, so the channel emits a constant
rather than nothing: the mask version of removing the filter.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lotto.core.criteria import CRITERION_FACTS, DRAWS, CriterionFacts
from lotto.core.errors import InvalidValue
from lotto.core.masks import Mask, prunable_layers
from lotto.core.spec_types import PruningSpec


def _scores(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: m.weight.detach().abs().flatten().cpu() for name, _, m in prunable_layers(model)}


def _unit_norms(weight: torch.Tensor, alive: torch.Tensor) -> torch.Tensor:
    """L1 norm of the surviving weights of each output unit (dim 0: conv filter, linear neuron)."""
    return (weight.detach().abs().cpu() * alive.cpu()).flatten(1).sum(1)


def _l1_filter_scores(model: nn.Module, mask: Mask) -> dict[str, torch.Tensor]:
    """Every weight scored by its unit's L1 norm, so the lowest-scoring weights are whole units."""
    out = {}
    for name, _, m in prunable_layers(model):
        norms = _unit_norms(m.weight, mask[name])
        out[name] = norms.repeat_interleave(m.weight[0].numel())
    return out


def snip_scores(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """SNIP's connection sensitivity |w * dL/dw| of every prunable weight on one batch.

    Computed on a copy in training mode (as SNIP does), so the model's batch-norm statistics
    are left as they were.
    """
    scorer = copy.deepcopy(model).train()
    layers = prunable_layers(scorer)
    weights = [m.weight for _, _, m in layers]
    grads = torch.autograd.grad(F.cross_entropy(scorer(x), y), weights)
    return {name: (w.detach() * g).abs().flatten().cpu() for (name, _, _), w, g in zip(layers, weights, grads, strict=True)}


@dataclass(frozen=True)
class Criterion:
    """A pruning criterion: what it needs (lotto.core.criteria, torch-free) and, for one scored from the
    weights, the per-weight scores it ranks by (lowest pruned first); for the others the caller
    supplies the scores (rounds computes snip's batch scores and loads learned logits) or they
    are drawn while pruning."""

    facts: CriterionFacts
    scores: Callable[[nn.Module, Mask], dict[str, torch.Tensor]] | None = None

    @property
    def drawn(self) -> bool:
        return self.facts.scored_from == DRAWS


# The pruning criteria by name, in lotto.core.criteria.CRITERION_FACTS's order (the schema's
# pruning.criterion enum; tests/test_masks_prune.py checks the three agree).
_SCORES_FROM_WEIGHTS = {
    "magnitude": lambda model, mask: _scores(model),
    "l1_filter": _l1_filter_scores,
}
CRITERIA: dict[str, Criterion] = {
    name: Criterion(facts, _SCORES_FROM_WEIGHTS.get(name)) for name, facts in CRITERION_FACTS.items()
}


def get_criterion(name: str) -> Criterion:
    """The registered criterion `name`; an unknown name is refused with every choice."""
    if name not in CRITERIA:
        raise InvalidValue(f"unknown pruning criterion {name!r}; choose one of: {', '.join(CRITERIA)}")
    return CRITERIA[name]


def criterion_scores(model: nn.Module, mask: Mask, name: str) -> dict[str, torch.Tensor]:
    """Flat per-weight scores of a criterion that reads only the weights (lowest are pruned first)."""
    entry = get_criterion(name)
    if entry.scores is None:
        made_by = "prune_counts' generator" if entry.drawn else "the caller: pass them as `scores`"
        raise ValueError(f"{name} scores need {entry.facts.scored_from}, made by {made_by}")
    return entry.scores(model, mask)


def _unit_removal(weight: torch.Tensor, alive: torch.Tensor, rate: float) -> int:
    """Weights removed when round(rate x surviving units) units of smallest L1 norm go."""
    units = torch.nonzero(alive.cpu().flatten(1).any(1), as_tuple=True)[0]
    norms = _unit_norms(weight, alive)[units]
    chosen = units[torch.sort(norms, stable=True).indices[: round(rate * len(units))]]
    return int(alive.cpu().flatten(1)[chosen].sum())


def _global_counts(scores: dict[str, torch.Tensor], mask: Mask, names: list[str], remove: int) -> dict[str, int]:
    """How many survivors each layer loses under one magnitude threshold over `names`."""
    alive = [scores[n][mask[n].flatten()] for n in names]
    owner = torch.cat([torch.full((len(a),), i) for i, a in enumerate(alive)])
    order = torch.sort(torch.cat(alive), stable=True).indices[:remove]
    counts = torch.bincount(owner[order], minlength=len(names))
    return {n: int(c) for n, c in zip(names, counts, strict=True)}


def _remove(score: torch.Tensor, alive: torch.Tensor, count: int) -> torch.Tensor:
    """A new flat alive-mask with the `count` lowest-scoring survivors removed."""
    idx = torch.nonzero(alive, as_tuple=True)[0]
    drop = idx[torch.sort(score[idx], stable=True).indices[:count]]
    out = alive.clone()
    out[drop] = False
    return out


def removal_counts(model: nn.Module, mask: Mask, spec: PruningSpec,
                   scores: dict[str, torch.Tensor] | None = None) -> dict[str, int]:
    """Survivors each layer loses in one round of `spec`. The global split follows `scores`
    (magnitude when not given); l1_filter counts whole units: the weights of
    round(rate x surviving units) units per layer."""
    layers = [(n, k, m) for n, k, m in prunable_layers(model) if n not in spec.exclude]
    if spec.scope == "global":
        survivors = sum(int(mask[n].sum()) for n, _, _ in layers)
        ranking = scores if scores is not None else _scores(model)
        return _global_counts(ranking, mask, [n for n, _, _ in layers], round(spec.rate * survivors))
    if get_criterion(spec.criterion).facts.whole_units:
        return {n: _unit_removal(m.weight, mask[n], spec.rate_for(k)) for n, k, m in layers}
    return {n: round(spec.rate_for(k) * int(mask[n].sum())) for n, k, _ in layers}


def prune_counts(model: nn.Module, mask: Mask, counts: dict[str, int], criterion: str,
                 generator: torch.Generator | None = None,
                 scores: dict[str, torch.Tensor] | None = None) -> Mask:
    """Remove exactly counts[layer] survivors per layer: the lowest `scores` (the criterion's,
    computed from the weights when not given), or at random."""
    drawn = get_criterion(criterion).drawn
    if scores is None and not drawn:
        scores = criterion_scores(model, mask, criterion)
    new = dict(mask)
    for name, count in counts.items():
        alive = mask[name].flatten()
        if count > int(alive.sum()):
            raise InvalidValue(f"layer {name}: cannot remove {count} of {int(alive.sum())} survivors")
        score = torch.rand(alive.numel(), generator=generator) if drawn else scores[name]
        new[name] = _remove(score, alive, count).view_as(mask[name])
    return new


def prune(model: nn.Module, mask: Mask, spec: PruningSpec, generator: torch.Generator | None = None,
          scores: dict[str, torch.Tensor] | None = None) -> Mask:
    """One round of pruning: the next mask (masks only shrink). `scores` is required for snip
    (see `snip_scores`); random pruning splits a global round by magnitude."""
    if scores is None and not get_criterion(spec.criterion).drawn:
        scores = criterion_scores(model, mask, spec.criterion)
    counts = removal_counts(model, mask, spec, scores)
    return prune_counts(model, mask, counts, spec.criterion, generator, scores)


def prune_to_match(model: nn.Module, target: Mask, scope: str, exclude: tuple[str, ...] = ()) -> Mask:
    """One-shot magnitude pruning of a dense model to the density of `target`.

    Layer-wise: the same count per layer as `target`; global: the same total, split by
    one magnitude threshold.
    """
    dense = {n: torch.ones_like(t) for n, t in target.items()}
    removed = {n: int(t.numel() - t.sum()) for n, t in target.items()}
    if scope == "global":
        names = [n for n in target if n not in exclude]
        removed = _global_counts(_scores(model), dense, names, sum(removed[n] for n in names))
    return prune_counts(model, dense, removed, "magnitude")


def random_like(mask: Mask, generator: torch.Generator) -> Mask:
    """A random mask with exactly the same number of survivors in every layer."""
    out = {}
    for name, m in mask.items():
        keep = int(m.sum())
        flat = torch.zeros(m.numel(), dtype=torch.bool)
        flat[torch.randperm(m.numel(), generator=generator)[:keep]] = True
        out[name] = flat.view_as(m)
    return out


def shuffle_survivors(weight: torch.Tensor, alive: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """`weight` with its surviving values permuted among the surviving positions (Mikler's
    Table 3.1 A): the mask is kept; which value sits where is not."""
    out = weight.detach().clone().flatten()
    idx = torch.nonzero(alive.cpu().flatten(), as_tuple=True)[0]
    perm = torch.randperm(len(idx), generator=generator)
    idx, perm = idx.to(out.device), perm.to(out.device)
    out[idx] = out[idx[perm]]
    return out.view_as(weight)


def shuffle_positions(weight: torch.Tensor, alive: torch.Tensor,
                      generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights and mask moved together by one random permutation of the layer's positions
    (Mikler's Table 3.1 B): the same surviving values at new positions, the same count."""
    perm = torch.randperm(alive.numel(), generator=generator)
    new_alive = alive.cpu().flatten()[perm].view_as(alive)
    new_weight = weight.detach().flatten()[perm.to(weight.device)].view_as(weight)
    return new_weight, new_alive
