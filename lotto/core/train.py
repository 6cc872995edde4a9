"""The one training loop every recipe uses (TrainingLoop; train() for one model,
lotto.core.vmap.train_seeds for several seeds at once).

A training starts from given weights under a mask, at a given point of the LR schedule,
for a given number of iterations. Batches are index gathers from tensors already on the
device, or read from image files (lotto.core.stream); the batch order depends only on (seed, global step), so a round replayed from
the same start reproduces the same trajectory and a resumed round continues exactly.
Pruned weights are zeroed right after every optimizer step (not by forward hooks), so
they stay exactly zero whatever the optimizer's state. The host is synchronised only at
evaluation points, and on a GPU the whole step is replayed from a CUDA graph (see Stepper).
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import math
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lotto.core import io
from lotto.core.data import Splits, augment_batch, epoch_permutation
from lotto.core.distributed import World, global_batchnorm_
from lotto.core.errors import CannotRun
from lotto.core.masks import Mask, prunable_layers
from lotto.core.spec_types import TrainingSpec
from lotto.core.stream import StreamedData, StreamedSplit

EVAL_BATCH = 2000
TOP5_MIN_CLASSES = 10  # metrics gain top-5 accuracy for datasets with more classes (streamed ones)


@dataclass
class TrainResult:
    rows: list[dict[str, Any]]
    state: dict[str, torch.Tensor]
    snapshots: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)
    status: str = "ok"
    diverged_step: int | None = None
    last_finite_loss: float | None = None
    seconds: float = 0.0


def autocast(precision: str, device: torch.device) -> AbstractContextManager:
    """The context a forward pass runs in: bf16 autocast, or nothing for fp32.

    Entered per step and per evaluation, without autocast's cache of cast weights: with it,
    the first step's casts would serve the whole training, and a CUDA graph cannot hold it.
    """
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=False)
    return nullcontext()


@contextmanager
def matmul_precision(precision: str) -> Iterator[None]:
    """training.precision tf32: float32 matrix products and convolutions on TF32 tensor cores
    (Ampere and later; 10-bit mantissa inputs, fp32 sums) for the whole training, backward
    passes included; torch's flags are restored afterwards. fp32 and bf16 leave torch's
    defaults: fp32 matmuls, and cuDNN free to use TF32 for convolutions. On a CPU the flags
    change nothing."""
    if precision != "tf32":
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def resolve_device(device: str) -> torch.device:
    if device == "cuda" and not torch.cuda.is_available():
        raise CannotRun("training.device is 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _eager(base: type[torch.optim.Optimizer]) -> type[torch.optim.Optimizer]:
    """`base` without the wrappers torch.optim puts on its methods for torch.compile.

    Outside torch.compile those wrappers do nothing but import torch._dynamo on first use,
    which costs every job 2-3 s before it trains; lotto never compiles. They are
    functools wrappers, so `inspect.unwrap` reaches the plain methods (private torch detail:
    should a future torch wrap differently, unwrap returns the method as is and only the
    speed-up is lost). tests/test_job_cost.py proves the results stay bit-identical to `base`.
    """
    plain_step = inspect.unwrap(base.step)

    class Eager(base):
        add_param_group = inspect.unwrap(torch.optim.Optimizer.add_param_group)
        zero_grad = inspect.unwrap(torch.optim.Optimizer.zero_grad)
        state_dict = inspect.unwrap(torch.optim.Optimizer.state_dict)
        load_state_dict = inspect.unwrap(torch.optim.Optimizer.load_state_dict)

        def step(self, closure=None):
            # all the unwrapped step decorator does outside torch.compile
            with torch.set_grad_enabled(self.defaults["differentiable"]):
                return plain_step(self, closure)

    Eager.__name__ = Eager.__qualname__ = f"Eager{base.__name__}"
    return Eager


_Adam, _SGD = _eager(torch.optim.Adam), _eager(torch.optim.SGD)


def make_optimizer(params: Iterable[torch.Tensor], spec: TrainingSpec) -> torch.optim.Optimizer:
    """Adam or SGD with fused kernels (3x faster than the per-tensor loop on CPU for LeNet)."""
    params = list(params)
    if spec.optimizer == "adam":
        return _Adam(params, lr=spec.lr, weight_decay=spec.weight_decay, fused=True)
    return _SGD(
        params, lr=spec.lr, momentum=spec.momentum, nesterov=spec.nesterov,
        weight_decay=spec.weight_decay, fused=True,
    )


class BatchSchedule:
    """Which training examples, and which augmentation, `seed` sees at each global step.

    A function of (seed, step) only, so a replay, a resumed round, a vectorised run of several
    seeds (lotto.core.vmap) and mask training (lotto.methods.optimal_masks) all see the batches of train().
    """

    def __init__(self, data: Splits, batch_size: int, seed: int):
        self.data, self.batch_size, self.seed = data, batch_size, seed
        self.per_epoch = max(1, len(data.train_x) // batch_size)
        self._order: torch.Tensor | None = None
        self._order_epoch = -1
        self._augment_gen = torch.Generator(device=data.train_x.device)

    def indices(self, step: int) -> torch.Tensor:
        """Positions in the training set of the batch at global step `step`."""
        epoch, pos = divmod(step, self.per_epoch)
        if epoch != self._order_epoch:
            self._order = epoch_permutation(self.seed, epoch, len(self.data.train_x)).to(self.data.train_x.device)
            self._order_epoch = epoch
        return self._order[pos * self.batch_size : (pos + 1) * self.batch_size]

    def augment(self, x: torch.Tensor, step: int) -> torch.Tensor:
        """`x` (the batch at `step`) augmented as the dataset says (unchanged when it says not)."""
        if not self.data.augment:
            return x
        self._augment_gen.manual_seed(self.seed * 1_000_003 + step)
        return augment_batch(x, self._augment_gen)

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs (augmented) and labels of the batch at global step `step`."""
        idx = self.indices(step)
        return self.augment(self.data.train_x[idx], step), self.data.train_y[idx]


class Stepper:
    """Runs the training step `step_fn(x, y)`: eagerly, or replayed from a CUDA graph.

    On a GPU a small model's step is bound by the host (~30 us of Python and launch per op,
    ~45 ops for LeNet), not by the GPU. With `graph` (training.cuda_graph) and the optimizer's
    parameters on a CUDA device, the first WARMUP steps run eagerly on a side stream (as
    capture requires), then one step is captured whole (forward, backward, optimizer,
    re-zeroing of pruned weights, metric sums) and every later step only copies its batch
    into static buffers, sets the LR tensor and replays the graph. Batch order,
    augmentation and LR schedule stay on the host, unchanged. `step_fn` must not rebind
    the tensors it writes, and must not read the host or synchronise.
    """

    WARMUP = 3

    def __init__(self, step_fn: Callable[[torch.Tensor, torch.Tensor], None],
                 optimizer: torch.optim.Optimizer, graph: bool):
        device = optimizer.param_groups[0]["params"][0].device
        self.step_fn, self.optimizer = step_fn, optimizer
        self.use_graph = graph and device.type == "cuda"
        self.graph: torch.cuda.CUDAGraph | None = None
        self.eager_steps = 0
        self.lr_value = math.nan
        if self.use_graph:
            self.lr = torch.zeros((), device=device)  # the graph reads the LR from here
            for group in optimizer.param_groups:
                group["lr"] = self.lr
                if "capturable" in group:  # Adam: its step may then run inside a graph
                    group["capturable"] = True

    def __call__(self, x: torch.Tensor, y: torch.Tensor, lr: float) -> None:
        if not self.use_graph:
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            self.optimizer.zero_grad(set_to_none=True)
            self.step_fn(x, y)
            return
        if lr != self.lr_value:
            self.lr.fill_(lr)
            self.lr_value = lr
        if self.graph is not None:
            self.static_x.copy_(x)
            self.static_y.copy_(y)
        elif self.eager_steps < self.WARMUP:
            self._warm_up(x, y)
            return
        else:
            self._capture(x, y)
        self.graph.replay()

    def _warm_up(self, x: torch.Tensor, y: torch.Tensor) -> None:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), warnings.catch_warnings():
            # capturable Adam warns when it runs outside a graph, which these steps must
            warnings.filterwarnings("ignore", message=".*capturable=True.*")
            self.optimizer.zero_grad(set_to_none=True)
            self.step_fn(x, y)
        torch.cuda.current_stream().wait_stream(side)
        self.eager_steps += 1

    def _capture(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Record one step on (copies of) this batch; replaying the graph then runs it."""
        self.static_x, self.static_y = x.clone(), y.clone()
        self.optimizer.zero_grad(set_to_none=True)  # backward then writes fresh, static grads
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.step_fn(self.static_x, self.static_y)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, precision: str = "fp32",
             world: World | None = None) -> tuple[float, float]:
    """Mean loss and accuracy over a whole split, in large no-grad batches. With a joined
    `world`, each process takes its slice of the split and the sums are added up: the same
    numbers up to the order of the float sums, in 1/size of the time."""
    part = slice(None) if world is None else world.shard(len(x))
    loss, correct = evaluate_sums(model, x[part], y[part], precision)
    if world is not None:
        world.sum_([loss, correct])
    n = max(1, len(x))
    return float(loss) / n, float(correct) / n  # host sync: evaluation point


@torch.no_grad()
def evaluate_sums(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                  precision: str = "fp32") -> tuple[torch.Tensor, torch.Tensor]:
    """Summed loss and number correct over `x`, on the device."""
    was_training = model.training
    model.eval()
    loss = torch.zeros((), device=x.device)
    correct = torch.zeros((), device=x.device, dtype=torch.long)
    for i in range(0, len(x), EVAL_BATCH):
        with autocast(precision, x.device):
            out = model(x[i : i + EVAL_BATCH])
        loss += F.cross_entropy(out, y[i : i + EVAL_BATCH], reduction="sum")
        correct += (out.argmax(1) == y[i : i + EVAL_BATCH]).sum()
    model.train(was_training)
    return loss, correct


@torch.no_grad()
def evaluate_streamed(model: nn.Module, split: StreamedSplit, precision: str = "fp32",
                      world: World | None = None) -> tuple[float, ...]:
    """Mean loss and accuracy over a split read from disk, plus top-5 accuracy when the
    dataset has more than TOP5_MIN_CLASSES classes (else the pair, as `evaluate` returns).
    With a joined `world`, each process reads and evaluates its slice of the split and the sums
    are added (as `evaluate` does for resident data)."""
    was_training = model.training
    model.eval()
    device = split.reader.device
    loss = torch.zeros((), device=device)
    correct = torch.zeros(2, device=device, dtype=torch.long)  # top-1, top-5
    classes = torch.zeros((), device=device, dtype=torch.long)
    for x, y in split.batches(slice(None) if world is None else world.shard(len(split))):
        with autocast(precision, device):
            out = model(x)
        classes.fill_(out.shape[-1])
        loss += F.cross_entropy(out.float(), y, reduction="sum")
        top = out.topk(min(5, out.shape[-1]), dim=-1).indices == y[:, None]
        correct += torch.stack([top[:, 0].sum(), top.any(-1).sum()])
    model.train(was_training)
    if world is not None:
        world.sum_([loss, correct])
        torch.distributed.all_reduce(classes, op=torch.distributed.ReduceOp.MAX)  # a rank may have read none
    n = max(1, len(split))
    loss_mean, (top1, top5) = float(loss) / n, (correct.double() / n).tolist()  # host sync: evaluation point
    return (loss_mean, top1, top5) if classes > TOP5_MIN_CLASSES else (loss_mean, top1)


class Progress:
    """Logs iterations/s, current accuracy and ETA at most every `every` seconds. The rate is
    wall-clock over the whole loop, so it includes evaluation time (the line says so)."""

    def __init__(self, label: str, total: int, every: float = 10.0, stream: Any = sys.stderr):
        self.label, self.total, self.every, self.stream = label, total, every, stream
        self.start = time.perf_counter()
        self.last = -math.inf

    def update(self, step: int, test_acc: float, done: int, force: bool = False) -> None:
        now = time.perf_counter()
        if not force and now - self.last < self.every:
            return
        self.last = now
        elapsed = now - self.start
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - step) / rate if rate > 0 else float("nan")
        print(
            f"[{self.label}] step {step}/{self.total}  {rate:,.0f} it/s incl. eval  test acc {test_acc:.4f}  "
            f"ETA {eta:,.0f} s",
            file=self.stream,
            flush=True,
        )


def lr_schedule(spec: TrainingSpec, start: int, constant_lr: bool) -> Callable[[int], float]:
    """The LR of each round-local step: the schedule from `start`, or with `constant_lr` its final
    value held throughout (fine-tuning). The one place the LR rule of a training is written."""
    final_lr = spec.lr_at(spec.duration)
    return lambda step: final_lr if constant_lr else spec.lr_at(start + step)


@dataclass
class TrainState:
    """Where a training stands: all that a resumed call needs to continue bit for bit.

    One entry per run in `rows` and `last_finite` (one run for train(), one per seed for
    lotto.core.vmap); `loss_sum` and `correct_sum` stay on the device between evaluations and have the
    runs' shape (a scalar for one run), and the captured CUDA graph writes into them in place.
    """

    loss_sum: torch.Tensor
    correct_sum: torch.Tensor
    rows: list[list[dict[str, Any]]]
    last_finite: list[float | None]
    good_state: dict[str, torch.Tensor]  # the weights of the last evaluation that did not diverge
    snapshots: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)
    step: int = 0  # round-local steps done
    seen: int = 0  # training examples since the last evaluation


class TrainingLoop:
    """The training core shared by train() and lotto.core.vmap.train_seeds: the step, the LR rule,
    the metric sums, the evaluation rows and divergence, snapshots and resume points.

    What is trained is given by a few callables, so the core never sees a model:
    - `forward(x, y)` -> (mean loss per run: a scalar or one per seed, logits with the classes last);
    - `batches(global_step)` -> (inputs, labels) on the device: an index gather from resident
      tensors (BatchSchedule), or files read, decoded and augmented by DataLoader workers that
      prefetch the next steps' batches (lotto.core.stream.StreamedBatches);
    - `evaluate_split(x, y)` -> (loss, accuracy) per run over a whole split;
    - `state_of()` -> a copy of the weights (snapshots and the last good state).
    Training in several processes (`world`, lotto.core.distributed): each process's `batches` yields
    its shard of the step's global batch, `step` weights its loss by the shard's share of the
    global batch and sums the gradients across processes between backward and the optimizer
    step, the metric sums are summed across processes before they are read (`summed`), and
    `evaluate_split` is expected to do the same for its split results.
    """

    def __init__(
        self,
        spec: TrainingSpec,
        data: Splits,
        *,
        params: Iterable[torch.Tensor],
        prunable: list[tuple[torch.Tensor, torch.Tensor]],
        forward: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
        batches: Callable[[int], tuple[torch.Tensor, torch.Tensor]],
        evaluate_split: Callable[[torch.Tensor, torch.Tensor], list[tuple[float, float]]],
        state_of: Callable[[], dict[str, torch.Tensor]],
        steps: int,
        start: int = 0,
        constant_lr: bool = False,
        bn_scales: Iterable[torch.Tensor] = (),
        label: str = "train",
        world: World | None = None,
    ):
        """`prunable` pairs each prunable weight with its keep mask (same shape, any dtype)."""
        params = list(params)
        self.world = world if world is not None and world.joined else None
        if self.world is not None:
            self.params = params
            shard = self.world.shard(spec.batch_size)
            self.shard_weight = (shard.stop - shard.start) / spec.batch_size
        self.spec, self.data, self.device = spec, data, data.device
        self.forward, self.batches, self.evaluate_split, self.state_of = forward, batches, evaluate_split, state_of
        self.steps, self.start, self.label = steps, start, label
        self.lr = lr_schedule(spec, start, constant_lr)
        # Only weights with pruned entries are re-zeroed after each step: multiplying by ones
        # changes no bit, and skipping them saves a pass over the weights (all of them when dense).
        pruned = [(w, keep) for w, keep in prunable if not bool(keep.all())]
        self.masked = [w for w, _ in pruned]
        self.mask_f = [keep.to(device=self.device, dtype=w.dtype) for w, keep in pruned]
        self.decayed = [w for w, _ in prunable] if spec.l2 else []
        self.bn_scales = list(bn_scales)
        self.optimizer = make_optimizer(params, spec)
        if self.masked:
            with torch.no_grad():
                torch._foreach_mul_(self.masked, self.mask_f)
        self.sums: tuple[torch.Tensor, torch.Tensor] | None = None  # those of the running state

    def new_state(self, runs: int) -> TrainState:
        """The state before step 0 of `runs` runs (1: scalar sums, as train() has always kept)."""
        shape = () if runs == 1 else (runs,)
        return TrainState(
            loss_sum=torch.zeros(shape, device=self.device),
            correct_sum=torch.zeros(shape, device=self.device, dtype=torch.long),
            rows=[[] for _ in range(runs)],
            last_finite=[None] * runs,
            good_state=self.state_of(),
        )

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Forward, backward, update, re-zero pruned weights, add to the metric sums.

        Run by the Stepper (possibly captured in a CUDA graph): no host reads, no rebinding."""
        loss_sum, correct_sum = self.sums
        with autocast(self.spec.precision, self.device):
            losses, out = self.forward(x, y)
        loss = losses.sum()  # runs are independent: each one's gradient is its own
        if self.world is not None:  # the mean over the global batch, whatever the shard sizes
            loss = loss * self.shard_weight
        loss.backward()
        if self.world is not None:
            self.world.sum_([p.grad for p in self.params if p.grad is not None])
        if self.decayed:
            torch._foreach_add_([w.grad for w in self.decayed], self.decayed, alpha=2.0 * self.spec.l2)
        if self.spec.bn_l1:
            for g in self.bn_scales:
                g.grad.add_(torch.sign(g.detach()), alpha=self.spec.bn_l1)
        self.optimizer.step()
        with torch.no_grad():
            if self.masked:
                torch._foreach_mul_(self.masked, self.mask_f)
            loss_sum.add_(losses.detach() * y.shape[-1])
            correct_sum.add_((out.argmax(-1) == y).sum(-1))

    def summed(self, state: TrainState) -> TrainState:
        """`state` with its metric sums and example count summed over the processes (a copy;
        `state` itself when training alone)."""
        if self.world is None:
            return state
        totals = [state.loss_sum.clone(), state.correct_sum.clone(), torch.tensor(state.seen, device=self.device)]
        self.world.sum_(totals)
        return dataclasses.replace(state, loss_sum=totals[0], correct_sum=totals[1], seen=int(totals[2]))

    def train_means(self, state: TrainState) -> list[tuple[float, float]]:
        """Mean training loss and accuracy per run since the last evaluation (host sync).

        One run divides on the host in float64; several divide the loss on the device (one
        transfer for all seeds), as each path always has: unifying them would change the
        vectorised seeds' train rows in the last bits."""
        if state.loss_sum.dim() == 0:
            return [(float(state.loss_sum) / state.seen, float(state.correct_sum) / state.seen)]
        losses = (state.loss_sum / state.seen).tolist()
        accuracies = (state.correct_sum.double() / state.seen).tolist()
        return list(zip(losses, accuracies, strict=True))

    def evaluate(self, state: TrainState, at: int, on_eval: Callable[[int], bool | None] | None) -> str:
        """Record train/val/test rows at step `at`: 'diverged', 'stop' (on_eval asked) or 'ok'."""
        lr = self.lr(max(at - 1, 0))  # that of the last step taken
        totals = self.summed(state)
        if totals.seen:
            means = self.train_means(totals)
            diverged = [not math.isfinite(loss) or loss > self.spec.divergence_loss for loss, _ in means]
            for run, ((loss, accuracy), bad) in enumerate(zip(means, diverged, strict=True)):
                state.rows[run].append(_row(at, "train", loss, accuracy, lr, "diverged" if bad else "ok"))
                if not bad:
                    state.last_finite[run] = loss
            if any(diverged):
                return "diverged"
        runs = len(state.rows)
        data = self.data
        val = self.evaluate_split(data.val_x, data.val_y) if len(data.val_x) else [(math.nan, math.nan)] * runs
        test = self.evaluate_split(data.test_x, data.test_y)
        for run in range(runs):
            state.rows[run].append(_eval_row(at, "val", val[run], lr))
            state.rows[run].append(_eval_row(at, "test", test[run], lr))
        state.loss_sum.zero_()
        state.correct_sum.zero_()
        state.seen = 0
        state.good_state = self.state_of()
        stop = on_eval is not None and on_eval(at)
        if self.world is None or self.world.writer:  # one progress line per training
            self.progress.update(at, test[0][1], at - self.first_step, force=at == self.steps)
        return "stop" if stop else "ok"

    def run(
        self,
        state: TrainState,
        *,
        snapshot_at: Iterable[int] = (),
        on_eval: Callable[[int], bool | None] | None = None,
        checkpoint: Callable[[TrainState], None] | None = None,
    ) -> str:
        """Train from `state` to `steps` (or an on_eval stop); 'diverged' or 'ok'.

        Evaluates at step 0, every spec.eval_every steps and at the end; `checkpoint(state)` runs
        every spec.checkpoint_every steps (not at the end), when given. The whole run (graph
        capture, backward passes and evaluations included) is under training.precision's
        matmul flags."""
        with matmul_precision(self.spec.precision):
            return self._run(state, set(snapshot_at), on_eval, checkpoint)

    def _run(self, state: TrainState, snapshot_at: set[int], on_eval: Callable[[int], bool | None] | None,
             checkpoint: Callable[[TrainState], None] | None) -> str:
        spec = self.spec
        self.sums = state.loss_sum, state.correct_sum
        self.progress, self.first_step = Progress(self.label, self.steps), state.step
        stop_requested = False
        if state.step == 0:
            if 0 in snapshot_at:
                state.snapshots[0] = self.state_of()
            stop_requested = self.evaluate(state, 0, on_eval) == "stop"
        # Several processes: eager steps (the all-reduce is not captured; see docs/cluster.md)
        stepper = Stepper(self.step, self.optimizer, graph=spec.cuda_graph and self.world is None)
        while state.step < self.steps:
            x, y = self.batches(self.start + state.step)
            stepper(x, y, self.lr(state.step))
            state.seen += y.shape[-1]
            state.step += 1
            if state.step in snapshot_at:
                state.snapshots[state.step] = self.state_of()
            if state.step % spec.eval_every == 0 or state.step == self.steps:
                outcome = self.evaluate(state, state.step, on_eval)
                if outcome == "diverged":
                    last = state.last_finite[0] if len(state.last_finite) == 1 else state.last_finite
                    print(f"[{self.label}] diverged before step {state.step}; last finite train loss {last}",
                          file=sys.stderr, flush=True)
                    return "diverged"
                if outcome == "stop" or stop_requested:
                    break
            if checkpoint is not None and spec.checkpoint_every and state.step % spec.checkpoint_every == 0 \
                    and state.step < self.steps:
                checkpoint(state)
        return "ok"


def dropout_seed(seed: int, start: int) -> int:
    """The seed of a training's dropout stream (torch's global generator in train(), a generator
    of its own per seed in lotto.core.vmap): a function of the batch seed and the schedule's start."""
    return seed * 7919 + start


def train(
    model: nn.Module,
    data: Splits,
    spec: TrainingSpec,
    *,
    mask: Mask,
    seed: int,
    steps: int,
    start: int = 0,
    constant_lr: bool = False,
    snapshot_at: Iterable[int] = (),
    resume_path: Path | None = None,
    label: str = "train",
    on_eval: Callable[[int, nn.Module], bool | None] | None = None,
) -> TrainResult:
    """Train `model` (already on data's device, weights set) for `steps` iterations.

    `start` is where in the schedule (and the batch order) training begins; with
    `constant_lr` the LR stays at the schedule's final value (fine-tuning).
    `snapshot_at` are round-local steps whose weights are returned (rewind points).
    With `resume_path` and spec.checkpoint_every > 0, progress is saved there and a
    restarted call continues from it with identical results on CPU.
    `on_eval(step, model)` runs after each evaluation; returning True ends training there.
    Launched in several processes (lotto.core.distributed), each trains its shard of every batch and
    rank 0's weights and mask are everyone's start; only rank 0 writes the progress file.
    """
    device = data.device
    world = World.current()
    if world.joined:
        _join_world(model, mask, spec, world)
        if world.writer:
            print(f"[{label}] {world.size} processes ({torch.distributed.get_backend()}), "
                  f"{spec.batch_size // world.size}-{-(-spec.batch_size // world.size)} examples of each batch each",
                  file=sys.stderr, flush=True)
    if device.type == "cuda" and _has_conv(model):
        model.to(memory_format=torch.channels_last)  # what tensor-core convolutions want
    joined = world if world.joined else None  # the world the evaluations are shared with
    streamed = isinstance(data, StreamedData)
    schedule = None if streamed else BatchSchedule(data, spec.batch_size, seed)
    loop = TrainingLoop(
        spec, data,
        params=model.parameters(),
        prunable=[(m.weight, mask[name]) for name, _, m in prunable_layers(model)],
        bn_scales=[m.weight for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)],
        forward=lambda x, y: _mean_loss(model(x), y),
        batches=data.batches(spec.batch_size, seed, world.shard(spec.batch_size)) if streamed
        else lambda step: _shard(schedule.batch(step), world) if world.joined else schedule.batch(step),
        evaluate_split=(lambda split, _labels: [evaluate_streamed(model, split, spec.precision, joined)]) if streamed
        else lambda x, y: [evaluate(model, x, y, spec.precision, joined)],
        state_of=lambda: _clone_state(model),
        steps=steps, start=start, constant_lr=constant_lr, label=label, world=world,
    )  # fmt: skip
    torch.manual_seed(dropout_seed(seed, start))  # dropout randomness
    state = loop.new_state(runs=1)
    identity = _identity(spec, mask, seed, start, steps, constant_lr, model)
    saved = _load_resume(resume_path, identity, device, label, tidy=world.writer)
    if world.joined:
        _agree_on_resume(saved, world, resume_path)
    if saved is not None:
        _restore(saved, state, model, loop.optimizer, device)
        if not world.writer:  # the saved sums are the global ones: counted once, on rank 0
            state.loss_sum.zero_()
            state.correct_sum.zero_()
            state.seen = 0
        print(f"[{label}] resumed at step {state.step}/{steps} from {resume_path}", file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    model.train()
    status = loop.run(
        state,
        snapshot_at=snapshot_at,
        on_eval=None if on_eval is None else lambda at: on_eval(at, model),
        checkpoint=None if resume_path is None else
        lambda s: _save_resume(resume_path, identity, model, loop.optimizer, loop.summed(s), device, world),
    )  # fmt: skip
    if status == "diverged":
        model.load_state_dict(state.good_state)
    return TrainResult(
        rows=state.rows[0],
        state=_clone_state(model),
        snapshots=state.snapshots,
        status=status,
        diverged_step=state.step if status == "diverged" else None,
        last_finite_loss=state.last_finite[0],
        seconds=time.perf_counter() - t0,
    )


def _join_world(model: nn.Module, mask: Mask, spec: TrainingSpec, world: World) -> None:
    """Make this process one of `world`'s: refuse what would not be one training's numbers,
    batch norm over the global batch (training.sync_batchnorm), rank 0's weights and mask."""
    if spec.batch_size < world.size:
        raise CannotRun(f"training.batch_size {spec.batch_size} is smaller than the {world.size} processes; "
                        "every process needs at least one example of each batch: launch fewer")
    dropout = [name for name, m in model.named_modules() if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0]
    if dropout:
        raise CannotRun(f"model dropout ({', '.join(dropout)}): in {world.size} processes each would draw its "
                        "own dropout masks, so the results would depend on the number of processes; "
                        "train this experiment in one process (training.devices: 1)")
    if spec.sync_batchnorm:
        global_batchnorm_(model)
    with torch.no_grad():
        world.broadcast_(list(model.state_dict().values()))
        flags = {name: keep.to(torch.uint8) for name, keep in mask.items()}
        world.broadcast_(list(flags.values()))
        for name, keep in flags.items():
            mask[name].copy_(keep.to(mask[name].dtype))


def _shard(batch: tuple[torch.Tensor, torch.Tensor], world: World) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = batch
    part = world.shard(len(y))
    return x[part], y[part]


def _agree_on_resume(saved: dict | None, world: World, path: Path | None) -> None:
    """All processes resume from the same step, or the job stops (e.g. a resume file on a disk
    that not every node sees)."""
    step = -1 if saved is None else int(saved["step"])
    extremes = torch.tensor([step, -step], dtype=torch.float64)
    torch.distributed.all_reduce(extremes, op=torch.distributed.ReduceOp.MAX)
    if extremes[0] != -extremes[1]:
        raise CannotRun(f"{path}: the processes would resume from different steps (-1: none); "
                        "every node must see the same results folder")


def _mean_loss(out: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return F.cross_entropy(out, y), out


def _has_conv(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def _row(step: int, split: str, loss: float, accuracy: float, lr: float, status: str = "ok") -> dict[str, Any]:
    return {"step": step, "split": split, "loss": loss, "accuracy": accuracy, "lr": lr, "status": status}


def _eval_row(step: int, split: str, result: tuple[float, ...], lr: float) -> dict[str, Any]:
    """A val/test row from (loss, accuracy) or, for streamed data of many classes, (loss, accuracy, top5)."""
    row = _row(step, split, result[0], result[1], lr)
    return row if len(result) == 2 else {**row, "top5": result[2]}


def _row_from_saved(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.item() if isinstance(v, torch.Tensor) else v) for k, v in row.items()}


def _clone_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _identity(spec: TrainingSpec, mask: Mask, seed: int, start: int, steps: int, constant_lr: bool,
              model: nn.Module) -> str:
    """What a resume file must match: the training settings, the mask and the start weights."""
    # the same training whatever the number of processes, so a round resumes with any
    spec = dataclasses.replace(spec, devices=1, nodes=1)
    digest = hashlib.sha256(repr((spec, seed, start, steps, constant_lr)).encode())
    for name in sorted(mask):
        digest.update(name.encode() + mask[name].cpu().numpy().tobytes())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode() + tensor.detach().cpu().numpy().tobytes())
    return digest.hexdigest()


def _load_resume(path: Path | None, identity: str, device: torch.device, label: str,
                 tidy: bool = True) -> dict | None:
    """The saved progress of this very training, or None (a foreign file is set aside, not used,
    by the process that `tidy`s: rank 0)."""
    if path is None or not path.exists():
        return None
    try:
        saved = io.load_torch(path, map_location=device)
    except io.CorruptFileError as err:  # killed while being overwritten: progress is lost, not results
        print(f"[{label}] ignoring unusable progress file: {err}", file=sys.stderr, flush=True)
        if tidy:
            path.unlink(missing_ok=True)
        return None
    if saved.get("identity") != identity and not tidy:
        return None
    if saved.get("identity") != identity:
        stale = path.with_name(path.name + ".stale")
        path.replace(stale)
        print(f"[{label}] {path} belongs to another training (spec, mask or start weights differ); "
              f"moved it to {stale.name} and starting from step 0", file=sys.stderr, flush=True)
        return None
    return saved


def _restore(saved: dict, state: TrainState, model: nn.Module, optimizer: torch.optim.Optimizer,
             device: torch.device) -> None:
    """Put a single run's saved progress back: weights, optimizer, RNG and `state` (in place)."""
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    torch.set_rng_state(saved["rng_cpu"])
    if device.type == "cuda" and "rng_cuda" in saved:
        torch.cuda.set_rng_state(saved["rng_cuda"].cpu())
    state.step, state.seen = int(saved["step"]), int(saved["seen"])
    state.loss_sum.copy_(saved["loss_sum"])
    state.correct_sum.copy_(saved["correct_sum"])
    state.rows = [[_row_from_saved(r) for r in saved["rows"]]]
    state.snapshots = saved["snapshots"]
    state.last_finite = [None if saved["last_finite"] < 0 else float(saved["last_finite"])]
    state.good_state = saved["good_state"]


def _save_resume(path: Path, identity: str, model: nn.Module, optimizer: torch.optim.Optimizer,
                 state: TrainState, device: torch.device, world: World) -> None:
    """`state` holds the sums of all processes (TrainingLoop.summed); rank 0 writes them."""
    if not world.writer:
        return
    saved = {
        "identity": identity,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "rng_cpu": torch.get_rng_state(),
        "step": state.step,
        "seen": state.seen,
        "loss_sum": state.loss_sum,
        "correct_sum": state.correct_sum,
        "rows": state.rows[0],
        "snapshots": state.snapshots,
        "last_finite": -1.0 if state.last_finite[0] is None else state.last_finite[0],
        "good_state": state.good_state,
    }
    if device.type == "cuda":
        saved["rng_cuda"] = torch.cuda.get_rng_state()
    io.save_torch(path, saved)
