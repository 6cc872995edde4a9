"""Masks: one boolean tensor per prunable weight (conv and linear weights only).

A mask is a plain `dict[layer name, bool tensor]` so that it saves as a state dict
and loads with `weights_only=True`. Biases and batch-norm parameters are never masked.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from lotto.core import io
from lotto.core.errors import InvalidValue

Mask = dict[str, torch.Tensor]


def prunable_layers(model: nn.Module) -> list[tuple[str, str, nn.Module]]:
    """(name, kind, module) for every conv/linear layer; kind is conv, fc or output (the last linear)."""
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    last_linear = max((i for i, (_, m) in enumerate(layers) if isinstance(m, nn.Linear)), default=-1)
    out = []
    for i, (name, module) in enumerate(layers):
        kind = "conv" if isinstance(module, nn.Conv2d) else ("output" if i == last_linear else "fc")
        out.append((name, kind, module))
    return out


def readable_names(model: nn.Module) -> dict[str, str]:
    """Readable name -> module path of each prunable layer: conv1, conv2, ..., fc1, ..., output,
    numbered by kind in forward order. Masks and checkpoints keep the module paths ('1', '3',
    '5' in an MLP); pruning.exclude accepts either."""
    counts = {"conv": 0, "fc": 0}
    names = {}
    for path, kind, _ in prunable_layers(model):
        if kind == "output":
            names["output"] = path
        else:
            counts[kind] += 1
            names[f"{kind}{counts[kind]}"] = path
    return names


def layer_table(model: nn.Module) -> list[dict[str, object]]:
    """One row per prunable layer: readable name, module path, kind, weight shape and count."""
    readable = {path: name for name, path in readable_names(model).items()}
    return [{"name": readable[path], "module": path, "kind": kind, "shape": tuple(m.weight.shape),
             "weights": m.weight.numel()} for path, kind, m in prunable_layers(model)]


def ones(model: nn.Module) -> Mask:
    return {name: torch.ones_like(m.weight, dtype=torch.bool, device="cpu") for name, _, m in prunable_layers(model)}


def density(mask: Mask) -> float:
    kept = sum(int(m.sum()) for m in mask.values())
    total = sum(m.numel() for m in mask.values())
    return kept / total


def hamming(a: Mask, b: Mask) -> float:
    """Normalised Hamming distance: the fraction of positions where two masks differ."""
    if a.keys() != b.keys():
        raise ValueError(f"masks cover different layers: {sorted(a)} vs {sorted(b)}")
    differ = sum(int((a[k] != b[k]).sum()) for k in a)
    return differ / sum(m.numel() for m in a.values())


def check(mask: Mask, model: nn.Module, source: str = "mask") -> None:
    """Refuse a mask whose layers or shapes do not match the model."""
    expected = {name: tuple(m.weight.shape) for name, _, m in prunable_layers(model)}
    got = {name: tuple(t.shape) for name, t in mask.items()}
    if expected != got:
        wrong = sorted(k for k in expected.keys() | got.keys() if expected.get(k) != got.get(k))
        details = ", ".join(f"{k}: mask {got.get(k)} vs model {expected.get(k)}" for k in wrong[:4])
        raise InvalidValue(f"{source} does not fit the model ({details})")


def apply_(model: nn.Module, mask: Mask) -> None:
    """Zero the pruned weights in place."""
    with torch.no_grad():
        for name, _, module in prunable_layers(model):
            module.weight.mul_(mask[name].to(module.weight.device, module.weight.dtype))


def save(path: str | Path, mask: Mask) -> None:
    io.save_torch(path, {k: v.cpu() for k, v in mask.items()})


def load(path: str | Path, model: nn.Module | None = None) -> Mask:
    mask = io.load_torch(path)
    if not isinstance(mask, dict) or not all(t.dtype == torch.bool for t in mask.values()):
        raise io.CorruptFileError(f"{path}: not a mask (expected a dict of bool tensors)")
    if model is not None:
        check(mask, model, source=str(path))
    return mask
