"""Several seeds of one small model trained together, as one vectorised model.

Seeds differ only in initial weights, mask and batch order. Each parameter is stacked
across seeds (a leading seed dimension) and the model runs through
`torch.func.vmap(functional_call)`, so S small matrix products become one batched product
and a launch-bound GPU step costs about the same for 8 seeds as for one. Adam and SGD act
elementwise, so one optimizer over the stacked tensors updates every seed as its own
optimizer would; the per-seed mean losses are summed, so each seed's gradient is its own.

The batch order, augmentation, LR schedule, L2, re-zeroing of pruned weights and the
metric rows are those of `lotto.train.train`, so each seed's result matches a separate run
of it up to float rounding (batched and single matrix products round differently). Only
what a pruned round needs is supported: models without BatchNorm or dropout (their state or
randomness would be shared across seeds), any start point of the schedule and a constant final
LR, but no snapshots, resume or per-seed divergence handling.
"""

from __future__ import annotations

import copy
import math
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from lotto.data import Splits
from lotto.masks import Mask, prunable_layers
from lotto.spec import TrainingSpec
from lotto.train import (
    EVAL_BATCH,
    BatchSchedule,
    Stepper,
    TrainResult,
    _row,
    autocast,
    in_training_precision,
    make_optimizer,
)


class DivergedError(RuntimeError):
    """A seed's training loss blew up; `lotto.train.train` records and handles that per seed."""


def check_vectorisable(model: nn.Module) -> None:
    """Refuse models whose seeds cannot share one vectorised forward pass."""
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            raise ValueError(
                f"layer {name!r} is BatchNorm, whose running statistics cannot be kept per seed "
                "under vmap; train such models one seed at a time with lotto.train.train"
            )
        if isinstance(module, nn.Dropout) and module.p > 0:
            raise ValueError(
                f"layer {name!r} is dropout (p={module.p}), whose randomness would differ from "
                "separate runs; train such models one seed at a time with lotto.train.train"
            )


@in_training_precision
def train_seeds(
    models: list[nn.Module],
    data: Splits,
    spec: TrainingSpec,
    *,
    masks: list[Mask],
    seeds: list[int],
    steps: int,
    start: int = 0,
    constant_lr: bool = False,
) -> list[TrainResult]:
    """Train `models[i]` under `masks[i]` with batch order `seeds[i]`, all in one vectorised loop.

    The models share an architecture and sit on data's device with their start weights; they are
    left unchanged. `start` and `constant_lr` are those of lotto.train.train (where in the schedule
    and the batch order training begins; the LR held at the schedule's final value). Returns
    one TrainResult per seed (rows, final state, seconds of the whole call); raises
    DivergedError if a seed's training loss becomes non-finite or exceeds
    spec.divergence_loss.
    """
    if not len(models) == len(masks) == len(seeds) >= 1:
        raise ValueError(
            f"need one model, mask and seed per seed; got {len(models)} models, "
            f"{len(masks)} masks, {len(seeds)} seeds"
        )
    for model in models:
        check_vectorisable(model)
    t0 = time.perf_counter()
    device = data.train_x.device
    n_seeds, batch = len(models), spec.batch_size
    params, buffers = stack_module_state(models)
    skeleton = copy.deepcopy(models[0]).to("meta")

    def forward(p: dict[str, torch.Tensor], b: dict[str, torch.Tensor], x: torch.Tensor):
        return functional_call(skeleton, (p, b), (x,))

    per_seed = vmap(forward)  # params, buffers, inputs all stacked by seed
    shared_input = vmap(forward, in_dims=(0, 0, None))  # one evaluation batch for all seeds

    names = [name for name, _, _ in prunable_layers(models[0])]
    keep = {f"{n}.weight": torch.stack([m[n] for m in masks]).to(device) for n in names}
    # as in train(): layers with nothing pruned in any seed need no re-zeroing
    keep = {k: v.to(params[k].dtype) for k, v in keep.items() if not bool(v.all())}
    masked, mask_f = [params[k] for k in keep], list(keep.values())
    decayed = [params[f"{n}.weight"] for n in names] if spec.l2 else []
    optimizer = make_optimizer(params.values(), spec)
    if masked:
        with torch.no_grad():
            torch._foreach_mul_(masked, mask_f)

    schedules = [BatchSchedule(data, batch, seed) for seed in seeds]
    rows: list[list[dict[str, Any]]] = [[] for _ in seeds]
    loss_sum = torch.zeros(n_seeds, device=device)
    correct_sum = torch.zeros(n_seeds, device=device, dtype=torch.long)
    seen = 0
    final_lr = spec.lr_at(spec.duration)

    def lr_at(step: int) -> float:
        return final_lr if constant_lr else spec.lr_at(start + step)

    def evaluate(x: torch.Tensor, y: torch.Tensor) -> list[tuple[float, float]]:
        loss = torch.zeros(n_seeds, device=device)
        correct = torch.zeros(n_seeds, device=device, dtype=torch.long)
        with torch.no_grad():
            for i in range(0, len(x), EVAL_BATCH):
                with autocast(spec.precision, device):
                    out = shared_input(params, buffers, x[i : i + EVAL_BATCH])  # (S, n, classes)
                target = y[i : i + EVAL_BATCH].expand(n_seeds, -1)
                loss += F.cross_entropy(out.transpose(1, 2), target, reduction="none").sum(1)
                correct += (out.argmax(2) == target).sum(1)
        n = max(1, len(x))
        return [(lo / n, c / n) for lo, c in zip(loss.tolist(), correct.tolist(), strict=True)]

    def evaluate_now(at: int) -> None:
        nonlocal seen
        lr = lr_at(max(at - 1, 0))
        if seen:
            train_loss = (loss_sum / seen).tolist()  # host sync: evaluation point
            train_acc = (correct_sum.double() / seen).tolist()
            for i, seed in enumerate(seeds):
                if not math.isfinite(train_loss[i]) or train_loss[i] > spec.divergence_loss:
                    raise DivergedError(
                        f"seed {seed} diverged before step {at} (train loss {train_loss[i]}); "
                        "run it alone with lotto.train.train, which records divergence"
                    )
                rows[i].append(_row(at, "train", train_loss[i], train_acc[i], lr))
        nan = [(math.nan, math.nan)] * n_seeds
        val = evaluate(data.val_x, data.val_y) if len(data.val_x) else nan
        test = evaluate(data.test_x, data.test_y)
        for i in range(n_seeds):
            rows[i].append(_row(at, "val", *val[i], lr))
            rows[i].append(_row(at, "test", *test[i], lr))
        loss_sum.zero_()
        correct_sum.zero_()
        seen = 0

    def train_step(x: torch.Tensor, y: torch.Tensor) -> None:
        """train()'s step for every seed at once; x is (S, B, ...), y (S, B)."""
        with autocast(spec.precision, device):
            out = per_seed(params, buffers, x)  # (S, B, classes)
            losses = F.cross_entropy(out.transpose(1, 2), y, reduction="none").mean(1)  # (S,)
        losses.sum().backward()
        if decayed:
            torch._foreach_add_([w.grad for w in decayed], decayed, alpha=2.0 * spec.l2)
        optimizer.step()
        with torch.no_grad():
            if masked:
                torch._foreach_mul_(masked, mask_f)
            loss_sum.add_(losses.detach() * batch)
            correct_sum.add_((out.argmax(2) == y).sum(1))

    stepper = Stepper(train_step, optimizer, graph=spec.cuda_graph)
    evaluate_now(0)
    for step in range(steps):
        global_step = start + step
        idx = torch.stack([s.indices(global_step) for s in schedules])
        x, y = data.train_x[idx], data.train_y[idx]  # (S, B, ...): one gather for all seeds
        if data.augment:
            x = torch.stack([s.augment(x[i], global_step) for i, s in enumerate(schedules)])
        stepper(x, y, lr_at(step))
        seen += batch
        if (step + 1) % spec.eval_every == 0 or step + 1 == steps:
            evaluate_now(step + 1)

    seconds = time.perf_counter() - t0
    stacked = {**params, **buffers}
    states = [
        {k: stacked[k][i].detach().clone() for k in models[0].state_dict()} for i in range(n_seeds)
    ]
    return [
        TrainResult(rows=r, state=s, seconds=seconds) for r, s in zip(rows, states, strict=True)
    ]
