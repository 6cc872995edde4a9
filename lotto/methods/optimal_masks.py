"""Training Optimal Masks (Mikler's thesis, 3.3.1): learn which weights to keep, then prune.

The dense network is trained for a short time (10% of its schedule by default: the replay of
round 0 to `mask_training.pretrain`), and its weights are frozen. Every prunable weight w_i
gets a logit b_i; each step draws a mask c_i ~ Bernoulli(sigmoid(b_i)), runs the network with
weights w * c, and moves b by the straight-through gradient dL/dc, clipped:

    b <- clip(b - lr * (clip(dL/dc, -g, g) + dP/dc), -L, L)

with an L1 or L2 penalty P on the mask (coef * sum c, or coef * sum c^2), whose gradient
reaches b straight through like the loss's: the thesis needs a penalty "to see p decaying"
(p = sigmoid(b), the keep probability). PAPERS.md words it as a penalty "on b"; a penalty on
b itself pulls b toward 0 and p toward 1/2, so it cannot make p decay below 1/2, and we read
it as a penalty on the mask b parametrises. The learned logits
are the pruning scores of criterion `optimal_mask`: each round keeps the highest logits at
the round's density (lotto.core.prune does the selection, so counts per layer or one global
threshold follow the experiment exactly as for IMP), and the weights are then retrained for
the full schedule from the recipe's start point. The logits do not depend on the density, so
round r is one-shot Training Optimal Masks at round r's density.
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from lotto.core.data import Splits
from lotto.core.errors import InvalidValue
from lotto.core.masks import prunable_layers
from lotto.core.spec_types import MaskTrainingSpec
from lotto.core.train import BatchSchedule

LOG_EVERY = 500  # iterations between progress lines


def learn_logits(
    model: nn.Module,
    data: Splits,
    settings: MaskTrainingSpec,
    *,
    batch_size: int,
    seed: int,
    exclude: tuple[str, ...] = (),
    label: str = "mask training",
) -> dict[str, torch.Tensor]:
    """Mask logits of every prunable layer not in `exclude`, learned with `model`'s weights frozen.

    `model` holds the pretrained weights and is left unchanged (its batch-norm statistics
    included: the network runs on a copy of its buffers). The batches follow the training
    loop's order for `seed`, and the mask samples a generator seeded from it, so the logits
    are a function of (weights, data, settings, seed).
    """
    device = data.train_x.device
    frozen = {name: p.detach() for name, p in model.named_parameters()}
    frozen.update({name: b.detach().clone() for name, b in model.named_buffers()})
    layers = [name for name, _, _ in prunable_layers(model) if name not in exclude]
    weights = {name: frozen[f"{name}.weight"] for name in layers}
    logits = {name: torch.full_like(w, settings.init) for name, w in weights.items()}
    sampler = torch.Generator(device=device).manual_seed(seed * 7919 + 104729)
    batches = BatchSchedule(data, batch_size, seed)
    loss_sum, losses = torch.zeros((), device=device), 0
    was_training = model.training
    model.train()  # as in training: batch statistics, dropout
    for step in range(settings.steps):
        x, y = batches.batch(step)
        samples = {n: torch.bernoulli(torch.sigmoid(b), generator=sampler).requires_grad_() for n, b in logits.items()}
        masked = {f"{n}.weight": weights[n] * samples[n] for n in layers}
        loss = F.cross_entropy(functional_call(model, {**frozen, **masked}, (x,)), y)
        grads = torch.autograd.grad(loss, [samples[n] for n in layers])
        with torch.no_grad():
            for name, grad in zip(layers, grads, strict=True):
                b = logits[name]
                update = grad.clamp_(-settings.grad_clip, settings.grad_clip)
                update += penalty_gradient(samples[name].detach(), settings)
                b.sub_(update, alpha=settings.lr).clamp_(-settings.logit_clip, settings.logit_clip)
            loss_sum += loss.detach()
        losses += 1
        if (step + 1) % LOG_EVERY == 0 or step + 1 == settings.steps:  # host sync: log point
            print(f"[{label}] step {step + 1}/{settings.steps}  mean loss {float(loss_sum) / losses:.4f}  "
                  f"expected density {expected_density(logits):.4f}", file=sys.stderr, flush=True)
            loss_sum.zero_()
            losses = 0
    model.train(was_training)
    return logits


def penalty_gradient(mask: torch.Tensor, settings: MaskTrainingSpec) -> torch.Tensor:
    """Gradient of the penalty with respect to the sampled mask c in {0, 1}: coef (l1: coef * c,
    as c >= 0) or 2 * coef * c (l2: only kept weights are pushed down)."""
    if settings.penalty == "l1":
        return torch.full_like(mask, settings.penalty_coef)
    if settings.penalty == "l2":
        return 2.0 * settings.penalty_coef * mask
    raise InvalidValue(f"unknown mask_training.penalty {settings.penalty!r}; choose one of: l1, l2")


def expected_density(logits: dict[str, torch.Tensor]) -> float:
    """Mean keep probability sigmoid(b) over all learned logits."""
    total = sum(int(b.numel()) for b in logits.values())
    return float(sum(torch.sigmoid(b).sum() for b in logits.values())) / max(1, total)


def as_scores(logits: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The logits as lotto.core.prune scores (flat, on the CPU): the lowest are pruned first."""
    return {name: b.detach().flatten().cpu() for name, b in logits.items()}
