"""Several seeds of one small model trained together, as one vectorised model.

Seeds differ only in initial weights, mask and batch order. Each parameter is stacked
across seeds (a leading seed dimension) and the model runs through
`torch.func.vmap(functional_call)`, so S small matrix products become one batched product
and a launch-bound GPU step costs about the same for 8 seeds as for one. Adam and SGD act
elementwise, so one optimizer over the stacked tensors updates every seed as its own
optimizer would; the per-seed mean losses are summed, so each seed's gradient is its own.

The batch order, augmentation, LR schedule, L2, re-zeroing of pruned weights and the
metric rows are those of `lotto.core.train.train` (the same code: lotto.core.train.TrainingLoop; this
module supplies the vectorised forward pass, evaluation and batch gather), so each seed's
result matches a separate run of it up to float rounding (batched and single matrix products
round differently). Dropout draws each seed's noise from a generator of its own, seeded as
train() seeds torch's global one (lotto.core.train.dropout_seed), with the op and in the order
train()'s dropout layers draw it, so on a CPU each seed's dropout stream is the one it has alone
(SeedDropout). On a GPU, train() draws through CUDA's fused dropout kernel, whose stream no
per-seed generator can reproduce: there the vectorised seeds get their own reproducible streams,
not the separate runs'. Only what a pruned round and its control branches need is supported:
models without BatchNorm (its running statistics would be shared across seeds), any start point
of the schedule and a constant final LR, but no snapshots, resume or per-seed divergence handling.
"""

from __future__ import annotations

import copy
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from lotto.core.data import Splits
from lotto.core.errors import InvalidValue
from lotto.core.masks import Mask, prunable_layers
from lotto.core.spec_types import TrainingSpec
from lotto.core.train import (
    EVAL_BATCH,
    BatchSchedule,
    TrainingLoop,
    TrainResult,
    autocast,
    dropout_seed,
)


class DivergedError(RuntimeError):
    """A seed's training loss blew up; `lotto.core.train.train` records and handles that per seed."""


def check_vectorisable(model: nn.Module) -> None:
    """Refuse models whose seeds cannot share one vectorised forward pass."""
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            raise InvalidValue(
                f"layer {name!r} is BatchNorm, whose running statistics cannot be kept per seed "
                "under vmap; train such models one seed at a time with lotto.core.train.train"
            )
        if isinstance(module, nn.modules.dropout._DropoutNd) and not isinstance(module, nn.Dropout) \
                and module.p > 0:
            raise InvalidValue(
                f"layer {name!r} is {type(module).__name__}, whose noise lotto.core.vmap does not draw "
                "per seed (only nn.Dropout); train such models one seed at a time with lotto.core.train.train"
            )


class _GivenNoise(nn.Module):
    """A dropout layer of the vectorised training forward: multiplies by the noise its seed drew
    for this step (`noise`, set per call through functional_call), as nn.Dropout multiplies."""

    def __init__(self):
        super().__init__()
        self.register_buffer("noise", torch.empty(0, device="meta"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.noise


class SeedDropout:
    """Each seed's dropout noise for the next training step, drawn as train() draws it alone.

    On a CPU, nn.Dropout in training computes `x * empty_like(x).bernoulli_(1 - p).div_(1 - p)`
    with torch's global generator, which train() seeds with dropout_seed(seed, start); here each
    seed has a generator seeded the same way and draws the same op for each dropout layer in the
    order the forward pass calls them, so its noise is bit for bit that of its run alone
    (tests/test_vmap.py checks it). The noise lands in fixed tensors (`noise`, seed dimension
    first) that the vectorised forward reads, so a CUDA graph replays with each step's draw.
    """

    def __init__(self, model: nn.Module, seeds: list[int], start: int, batch_shape: tuple[int, ...],
                 precision: str, device: torch.device):
        self.device = device
        self.layers: list[tuple[str, float, torch.Size, torch.dtype]] = []  # in call order
        self.generators: list[torch.Generator] = []
        self.noise: dict[str, torch.Tensor] = {}
        if not any(isinstance(m, nn.Dropout) and m.p > 0 for m in model.modules()):
            return
        probe = copy.deepcopy(model).eval()  # eval: the probe itself draws nothing
        hooks = [
            module.register_forward_pre_hook(
                lambda m, args, name=name: self.layers.append((name, m.p, args[0].shape, args[0].dtype)))
            for name, module in probe.named_modules() if isinstance(module, nn.Dropout) and module.p > 0
        ]
        with torch.no_grad(), autocast(precision, device):
            probe(torch.zeros(batch_shape, device=device))
        for hook in hooks:
            hook.remove()
        names = [name for name, *_ in self.layers]
        if len(set(names)) != len(names):
            raise InvalidValue(f"a dropout layer is called more than once per forward pass ({names}); "
                               "train such models one seed at a time with lotto.core.train.train")
        self.generators = [torch.Generator(device=device).manual_seed(dropout_seed(s, start)) for s in seeds]
        self.noise = {f"{name}.noise": torch.empty((len(seeds), *shape), dtype=dtype, device=device)
                      for name, _, shape, dtype in self.layers}

    def draw(self) -> None:
        for i, generator in enumerate(self.generators):
            for name, p, shape, dtype in self.layers:
                fresh = torch.empty(shape, dtype=dtype, device=self.device).bernoulli_(1 - p, generator=generator)
                self.noise[f"{name}.noise"][i].copy_(fresh.div_(1 - p))

    def training_skeleton(self, skeleton: nn.Module) -> nn.Module:
        """`skeleton` (a meta copy of the model) with each drawn dropout layer reading the noise."""
        for name, *_ in self.layers:
            skeleton.set_submodule(name, _GivenNoise())
        return skeleton


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
    left unchanged. `start` and `constant_lr` are those of lotto.core.train.train (where in the schedule
    and the batch order training begins; the LR held at the schedule's final value). Returns
    one TrainResult per seed (rows, final state, seconds of the whole call); raises
    DivergedError if a seed's training loss becomes non-finite or exceeds
    spec.divergence_loss. The step, LR, evaluation rows and masks are lotto.core.train.TrainingLoop's;
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
    dropout = SeedDropout(models[0], seeds, start, (spec.batch_size, *data.train_x.shape[1:]),
                          spec.precision, device)
    train_skeleton = dropout.training_skeleton(copy.deepcopy(models[0]).to("meta"))
    eval_skeleton = copy.deepcopy(models[0]).to("meta").eval()  # dropout off, as train() evaluates

    def forward(skeleton: nn.Module):
        return lambda p, b, x: functional_call(skeleton, (p, b), (x,))

    per_seed = vmap(forward(train_skeleton))  # params, buffers, inputs all stacked by seed
    shared_input = vmap(forward(eval_skeleton), in_dims=(0, 0, None))  # one evaluation batch for all

    def seed_losses(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each seed's mean loss on its own batch; x is (S, B, ...), y (S, B)."""
        out = per_seed(params, {**buffers, **dropout.noise}, x)  # (S, B, classes)
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
        dropout.draw()  # this step's noise, outside any CUDA graph (the step reads it)
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
            "run it alone with lotto.core.train.train, which records divergence"
        )

    seconds = time.perf_counter() - t0
    stacked = {**params, **buffers}
    states = [
        {k: stacked[k][i].detach().clone() for k in models[0].state_dict()} for i in range(n_seeds)
    ]
    return [
        TrainResult(rows=r, state=s, seconds=seconds) for r, s in zip(state.rows, states, strict=True)
    ]
