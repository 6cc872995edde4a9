"""Pruning: which surviving weights to remove, with exact counts and deterministic ties.

Every pruner works in two steps: decide how many survivors each layer loses
(layer-wise rates, or one global magnitude threshold), then choose which ones
(smallest magnitude, or uniformly at random with the same per-layer counts).
Ties are broken by position (stable sort), so the same weights give the same mask.
"""

from __future__ import annotations

import torch
from torch import nn

from lotto.masks import Mask, prunable_layers
from lotto.spec import PruningSpec

CRITERIA = ("magnitude", "random")


def _scores(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: m.weight.detach().abs().flatten().cpu() for name, _, m in prunable_layers(model)}


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


def removal_counts(model: nn.Module, mask: Mask, spec: PruningSpec) -> dict[str, int]:
    """Survivors each layer loses in one round of `spec` (magnitude decides the global split)."""
    layers = [(n, k) for n, k, _ in prunable_layers(model) if n not in spec.exclude]
    if spec.scope == "global":
        survivors = sum(int(mask[n].sum()) for n, _ in layers)
        scores = _scores(model)
        return _global_counts(scores, mask, [n for n, _ in layers], round(spec.rate * survivors))
    return {n: round(spec.rate_for(k) * int(mask[n].sum())) for n, k in layers}


def prune_counts(model: nn.Module, mask: Mask, counts: dict[str, int], criterion: str,
                 generator: torch.Generator | None = None) -> Mask:
    """Remove exactly counts[layer] survivors per layer, by magnitude or at random."""
    if criterion not in CRITERIA:
        raise ValueError(f"unknown pruning criterion {criterion!r}; choose one of: {', '.join(CRITERIA)}")
    scores = _scores(model)
    new = dict(mask)
    for name, count in counts.items():
        alive = mask[name].flatten()
        if count > int(alive.sum()):
            raise ValueError(f"layer {name}: cannot remove {count} of {int(alive.sum())} survivors")
        score = scores[name] if criterion == "magnitude" else torch.rand(alive.numel(), generator=generator)
        new[name] = _remove(score, alive, count).view_as(mask[name])
    return new


def prune(model: nn.Module, mask: Mask, spec: PruningSpec, generator: torch.Generator | None = None) -> Mask:
    """One round of pruning: the next mask (masks only shrink)."""
    return prune_counts(model, mask, removal_counts(model, mask, spec), spec.criterion, generator)


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
