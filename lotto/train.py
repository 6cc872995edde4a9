"""The one training loop every recipe uses.

A training starts from given weights under a mask, at a given point of the LR schedule,
for a given number of iterations. Batches are index gathers from tensors already on the
device; the batch order depends only on (seed, global step), so a round replayed from
the same start reproduces the same trajectory and a resumed round continues exactly.
Pruned weights are zeroed right after every optimizer step (not by forward hooks), so
they stay exactly zero whatever the optimizer's state. The host is synchronised only at
evaluation points, and on a GPU the whole step is replayed from a CUDA graph (see Stepper).
"""

from __future__ import annotations

import functools
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

from lotto import io
from lotto.data import Splits, augment_batch
from lotto.masks import Mask, prunable_layers
from lotto.spec import TrainingSpec

EVAL_BATCH = 2000


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


def in_training_precision(fn: Callable) -> Callable:
    """Run `fn` (whose `spec` argument is a TrainingSpec) under matmul_precision(spec.precision)."""
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with matmul_precision(signature.bind(*args, **kwargs).arguments["spec"].precision):
            return fn(*args, **kwargs)

    return wrapper


def resolve_device(device: str) -> torch.device:
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("training.device is 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
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
    seeds (lotto.vmap) and mask training (lotto.optimal_masks) all see the batches of train().
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
            shuffle = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            n = len(self.data.train_x)
            self._order = torch.randperm(n, generator=shuffle).to(self.data.train_x.device)
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
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, precision: str = "fp32") -> tuple[float, float]:
    """Mean loss and accuracy over a whole split, in large no-grad batches."""
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
    n = max(1, len(x))
    return float(loss) / n, float(correct) / n  # host sync: evaluation point


class Progress:
    """Logs iterations/s, current accuracy and ETA at most every `every` seconds."""

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
            f"[{self.label}] step {step}/{self.total}  {rate:,.0f} it/s  test acc {test_acc:.4f}  "
            f"ETA {eta:,.0f} s",
            file=self.stream,
            flush=True,
        )


@in_training_precision
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
    """
    device = data.train_x.device
    if device.type == "cuda" and _has_conv(model):
        model.to(memory_format=torch.channels_last)  # what tensor-core convolutions want
    layers = prunable_layers(model)
    # Only layers with pruned weights are re-zeroed after each step: multiplying by ones
    # changes no bit, and skipping them saves a pass over the weights (all of them when dense).
    pruned = [(m.weight, mask[name]) for name, _, m in layers if not bool(mask[name].all())]
    masked = [w for w, _ in pruned]
    mask_f = [keep.to(device=device, dtype=w.dtype) for w, keep in pruned]
    decayed = [m.weight for _, _, m in layers] if spec.l2 else []
    bn_scales = [m.weight for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    optimizer = make_optimizer(model.parameters(), spec)
    batches = BatchSchedule(data, spec.batch_size, seed)
    final_lr = spec.lr_at(spec.duration)
    snapshot_at = set(snapshot_at)

    if masked:
        with torch.no_grad():
            torch._foreach_mul_(masked, mask_f)
    torch.manual_seed(seed * 7919 + start)  # dropout randomness

    rows: list[dict[str, Any]] = []
    snapshots: dict[int, dict[str, torch.Tensor]] = {}
    loss_sum = torch.zeros((), device=device)
    correct_sum = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    step = 0
    last_finite: float | None = None
    good_state = _clone_state(model)
    identity = _identity(spec, mask, seed, start, steps, constant_lr, model)
    saved = _load_resume(resume_path, identity, device, label)
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        torch.set_rng_state(saved["rng_cpu"])
        if device.type == "cuda" and "rng_cuda" in saved:
            torch.cuda.set_rng_state(saved["rng_cuda"].cpu())
        step, seen = int(saved["step"]), int(saved["seen"])
        loss_sum.copy_(saved["loss_sum"])
        correct_sum.copy_(saved["correct_sum"])
        rows = [_row_from_saved(r) for r in saved["rows"]]
        snapshots = saved["snapshots"]
        last_finite = None if saved["last_finite"] < 0 else float(saved["last_finite"])
        good_state = saved["good_state"]
        print(f"[{label}] resumed at step {step}/{steps} from {resume_path}", file=sys.stderr, flush=True)

    progress = Progress(label, steps)
    t0 = time.perf_counter()

    def evaluate_now(at: int) -> bool:
        """Record train/val/test rows at step `at`; False if training diverged."""
        nonlocal seen, last_finite, good_state, stop_requested
        lr = final_lr if constant_lr else spec.lr_at(start + max(at - 1, 0))
        if seen:
            train_loss = float(loss_sum) / seen  # host sync: evaluation point
            if not math.isfinite(train_loss) or train_loss > spec.divergence_loss:
                rows.append(_row(at, "train", train_loss, float(correct_sum) / seen, lr, "diverged"))
                return False
            rows.append(_row(at, "train", train_loss, float(correct_sum) / seen, lr))
            last_finite = train_loss
        val = evaluate(model, data.val_x, data.val_y, spec.precision) if len(data.val_x) else (math.nan, math.nan)
        test = evaluate(model, data.test_x, data.test_y, spec.precision)
        rows.append(_row(at, "val", *val, lr))
        rows.append(_row(at, "test", *test, lr))
        loss_sum.zero_()
        correct_sum.zero_()
        seen = 0
        good_state = _clone_state(model)
        if on_eval is not None and on_eval(at, model):
            stop_requested = True
        progress.update(at, test[1], at - step0, force=at == steps)
        return True

    step0 = step
    stop_requested = False
    status = "ok"
    diverged_step = None
    model.train()
    if step == 0:
        if 0 in snapshot_at:
            snapshots[0] = _clone_state(model)
        evaluate_now(0)
    def train_step(x: torch.Tensor, y: torch.Tensor) -> None:
        """Forward, backward, update, re-zero pruned weights, add to the metric sums."""
        with autocast(spec.precision, device):
            out = model(x)
            loss = F.cross_entropy(out, y)
        loss.backward()
        if decayed:
            torch._foreach_add_([w.grad for w in decayed], decayed, alpha=2.0 * spec.l2)
        if spec.bn_l1:
            for g in bn_scales:
                g.grad.add_(torch.sign(g.detach()), alpha=spec.bn_l1)
        optimizer.step()
        with torch.no_grad():
            if masked:
                torch._foreach_mul_(masked, mask_f)
            loss_sum.add_(loss.detach() * len(y))
            correct_sum.add_((out.argmax(1) == y).sum())

    stepper = Stepper(train_step, optimizer, graph=spec.cuda_graph)
    while step < steps:
        global_step = start + step
        x, y = batches.batch(global_step)
        stepper(x, y, final_lr if constant_lr else spec.lr_at(global_step))
        seen += len(y)
        step += 1
        if step in snapshot_at:
            snapshots[step] = _clone_state(model)
        if step % spec.eval_every == 0 or step == steps:
            if not evaluate_now(step):
                status, diverged_step = "diverged", step
                print(f"[{label}] diverged before step {step}; last finite train loss {last_finite}",
                      file=sys.stderr, flush=True)
                break
            if stop_requested:
                break
        if resume_path is not None and spec.checkpoint_every and step % spec.checkpoint_every == 0 and step < steps:
            _save_resume(resume_path, identity, model, optimizer, step, seen, loss_sum, correct_sum,
                         rows, snapshots, last_finite, good_state, device)

    if status == "diverged":
        model.load_state_dict(good_state)
        for r in rows:
            r.setdefault("status", "ok")
    return TrainResult(
        rows=rows,
        state=_clone_state(model),
        snapshots=snapshots,
        status=status,
        diverged_step=diverged_step,
        last_finite_loss=last_finite,
        seconds=time.perf_counter() - t0,
    )


def _has_conv(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def _row(step: int, split: str, loss: float, accuracy: float, lr: float, status: str = "ok") -> dict[str, Any]:
    return {"step": step, "split": split, "loss": loss, "accuracy": accuracy, "lr": lr, "status": status}


def _row_from_saved(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.item() if isinstance(v, torch.Tensor) else v) for k, v in row.items()}


def _clone_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _identity(spec: TrainingSpec, mask: Mask, seed: int, start: int, steps: int, constant_lr: bool,
              model: nn.Module) -> str:
    """What a resume file must match: the training settings, the mask and the start weights."""
    digest = hashlib.sha256(repr((spec, seed, start, steps, constant_lr)).encode())
    for name in sorted(mask):
        digest.update(name.encode() + mask[name].cpu().numpy().tobytes())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode() + tensor.detach().cpu().numpy().tobytes())
    return digest.hexdigest()


def _load_resume(path: Path | None, identity: str, device: torch.device, label: str) -> dict | None:
    """The saved progress of this very training, or None (a foreign file is set aside, not used)."""
    if path is None or not path.exists():
        return None
    try:
        saved = io.load_torch(path, map_location=device)
    except io.CorruptFileError as err:  # killed while being overwritten: progress is lost, not results
        print(f"[{label}] ignoring unusable progress file: {err}", file=sys.stderr, flush=True)
        path.unlink()
        return None
    if saved.get("identity") != identity:
        stale = path.with_name(path.name + ".stale")
        path.replace(stale)
        print(f"[{label}] {path} belongs to another training (spec, mask or start weights differ); "
              f"moved it to {stale.name} and starting from step 0", file=sys.stderr, flush=True)
        return None
    return saved


def _save_resume(path: Path, identity: str, model, optimizer, step, seen, loss_sum, correct_sum, rows,
                 snapshots, last_finite, good_state, device) -> None:
    state = {
        "identity": identity,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "rng_cpu": torch.get_rng_state(),
        "step": step,
        "seen": seen,
        "loss_sum": loss_sum,
        "correct_sum": correct_sum,
        "rows": rows,
        "snapshots": snapshots,
        "last_finite": -1.0 if last_finite is None else last_finite,
        "good_state": good_state,
    }
    if device.type == "cuda":
        state["rng_cuda"] = torch.cuda.get_rng_state()
    io.save_torch(path, state)
