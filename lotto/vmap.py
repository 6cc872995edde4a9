"""Several seeds of one small model trained together, as one vectorised model.

Seeds differ only in initial weights, mask and batch order. Each parameter is stacked
across seeds (a leading seed dimension) and the model runs through
`torch.func.vmap(functional_call)`, so S small matrix products become one batched product
and a launch-bound GPU step costs about the same for 8 seeds as for one. Adam and SGD act
elementwise, so one optimizer over the stacked tensors updates every seed as its own
optimizer would; the per-seed mean losses are summed, so each seed's gradient is its own.

The batch order, augmentation, LR schedule, L2, re-zeroing of pruned weights and the
metric rows are those of `lotto.train.train` (the same code: lotto.train.TrainingLoop; this
module supplies the vectorised forward pass, evaluation and batch gather), so each seed's
result matches a separate run of it up to float rounding (batched and single matrix products
round differently). Only what a pruned round needs is supported: models without BatchNorm or
dropout (their state or randomness would be shared across seeds), any start point of the
schedule and a constant final LR, but no snapshots, resume or per-seed divergence handling.
"""

from __future__ import annotations

import copy
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from lotto.data import Splits
from lotto.errors import InvalidValue
from lotto.masks import Mask, prunable_layers
from lotto.spec_types import TrainingSpec
from lotto.train import (
    EVAL_BATCH,
    BatchSchedule,
    TrainingLoop,
    TrainResult,
    autocast,
)


class DivergedError(RuntimeError):
    """A seed's training loss blew up; `lotto.train.train` records and handles that per seed."""


def check_vectorisable(model: nn.Module) -> None:
    """Refuse models whose seeds cannot share one vectorised forward pass."""
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            raise InvalidValue(
                f"layer {name!r} is BatchNorm, whose running statistics cannot be kept per seed "
                "under vmap; train such models one seed at a time with lotto.train.train"
            )
        if isinstance(module, nn.Dropout) and module.p > 0:
            raise InvalidValue(
                f"layer {name!r} is dropout (p={module.p}), whose randomness would differ from "
                "separate runs; train such models one seed at a time with lotto.train.train"
            )


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
    label: str = "seeds",
) -> list[TrainResult]:
    """Train `models[i]` under `masks[i]` with batch order `seeds[i]`, all in one vectorised loop.

    The models share an architecture and sit on data's device with their start weights; they are
    left unchanged. `start` and `constant_lr` are those of lotto.train.train (where in the schedule
    and the batch order training begins; the LR held at the schedule's final value). Returns
    one TrainResult per seed (rows, final state, seconds of the whole call); raises
    DivergedError if a seed's training loss becomes non-finite or exceeds
    spec.divergence_loss. The step, LR, evaluation rows and masks are lotto.train.TrainingLoop's;
    this function supplies only the vectorised forward pass, evaluation and batch gather.
    """
    if not len(models) == len(masks) == len(seeds) >= 1:
        raise InvalidValue(
            f"need one model, mask and seed per seed; got {len(models)} models, "
            f"{len(masks)} masks, {len(seeds)} seeds"
        )
    for model in models:
        check_vectorisable(model)
    t0 = time.perf_counter()
    device = data.train_x.device
    n_seeds = len(models)
    params, buffers = stack_module_state(models)
    skeleton = copy.deepcopy(models[0]).to("meta")

    def forward(p: dict[str, torch.Tensor], b: dict[str, torch.Tensor], x: torch.Tensor):
        return functional_call(skeleton, (p, b), (x,))

    per_seed = vmap(forward)  # params, buffers, inputs all stacked by seed
    shared_input = vmap(forward, in_dims=(0, 0, None))  # one evaluation batch for all seeds

    def seed_losses(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each seed's mean loss on its own batch; x is (S, B, ...), y (S, B)."""
        out = per_seed(params, buffers, x)  # (S, B, classes)
        return F.cross_entropy(out.transpose(1, 2), y, reduction="none").mean(1), out

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

    schedules = [BatchSchedule(data, spec.batch_size, seed) for seed in seeds]

    def batch(global_step: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.stack([s.indices(global_step) for s in schedules])
        x, y = data.train_x[idx], data.train_y[idx]  # (S, B, ...): one gather for all seeds
        if data.augment:
            x = torch.stack([s.augment(x[i], global_step) for i, s in enumerate(schedules)])
        return x, y

    names = [name for name, _, _ in prunable_layers(models[0])]
    loop = TrainingLoop(
        spec, data,
        params=params.values(),
        prunable=[(params[f"{n}.weight"], torch.stack([m[n] for m in masks])) for n in names],
        forward=seed_losses,
        batches=batch,
        evaluate_split=evaluate,
        state_of=lambda: {k: v.detach().clone() for k, v in {**params, **buffers}.items()},
        steps=steps, start=start, constant_lr=constant_lr, label=label,
    )  # fmt: skip
    state = loop.new_state(runs=n_seeds)
    if loop.run(state) == "diverged":
        seed, rows = next((s, r) for s, r in zip(seeds, state.rows, strict=True) if r[-1]["status"] != "ok")
        raise DivergedError(
            f"seed {seed} diverged before step {state.step} (train loss {rows[-1]['loss']}); "
            "run it alone with lotto.train.train, which records divergence"
        )

    seconds = time.perf_counter() - t0
    stacked = {**params, **buffers}
    states = [
        {k: stacked[k][i].detach().clone() for k in models[0].state_dict()} for i in range(n_seeds)
    ]
    return [
        TrainResult(rows=r, state=s, seconds=seconds) for r, s in zip(state.rows, states, strict=True)
    ]
