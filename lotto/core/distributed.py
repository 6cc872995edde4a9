"""One training in several processes (torch.distributed: NCCL on GPUs, gloo on CPUs).

Launched the standard way, one process per GPU (or per CPU process): torchrun on one machine
(`python -m torch.distributed.run --standalone --nproc-per-node N -m lotto round ...`), or
srun on SLURM, whose task variables give the rendezvous (`environ_from_slurm`). A process
started alone is a world of one and touches no torch.distributed at all, so every existing
result stays bit-identical.

What makes N processes compute what one does (lotto.core.train.TrainingLoop calls these):
- every rank takes the same global batch of (seed, step) and keeps its contiguous shard
  (`World.shard`; shards differ by at most one example when N does not divide the batch);
- each rank's loss is weighted by its shard's share of the global batch and the gradients
  are summed (one flat all-reduce after backward), so the update is that of the mean loss
  over the global batch, not a mean of per-rank means;
- the weights and the mask are broadcast from rank 0 before training (`broadcast_`), and
  every rank then applies the same update and the same mask, so pruned weights stay zero;
- batch norm with training.sync_batchnorm normalises over the global batch (GlobalBatchNorm);
- evaluation is sharded: each rank evaluates its slice of a split and the sums are added;
- rank 0 alone writes (`World.writer`); all ranks read the resume file.
Results equal one process's up to the order of float sums (tests/test_distributed.py).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from lotto.core.errors import CannotRun

# How long a collective waits for a rank that is gone before the job fails (a dead peer usually
# fails it at once: torchrun or srun --kill-on-bad-exit end the others, gloo sees the socket close).
TIMEOUT_S = float(os.environ.get("LOTTO_DIST_TIMEOUT_S", "300"))


@dataclass(frozen=True)
class World:
    """This process's place among the processes of one training (rank 0 of 1 when alone).
    `joined`: a process group exists, so training takes the collective path (launched() joins
    one only for 2 or more processes; benchmarks/distributed.py joins one of 1 to time it)."""

    rank: int = 0
    size: int = 1
    joined: bool = False

    @classmethod
    def current(cls) -> World:
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size(), joined=True)
        return cls()

    @property
    def writer(self) -> bool:
        """Whether this process writes the training's files (rank 0)."""
        return self.rank == 0

    def shard(self, n: int) -> slice:
        """This rank's contiguous part of n items (torch.tensor_split's sizes: the first n % size
        ranks take one more)."""
        base, extra = divmod(n, self.size)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (self.rank < extra))

    def sum_(self, tensors: Sequence[torch.Tensor]) -> None:
        """Sum each tensor over the ranks, in place, in one all-reduce of a flat buffer."""
        if not tensors:
            return
        # one dtype: gradients as they are; mixed (metric sums): float64, exact for counts < 2^53
        dtype = tensors[0].dtype if len({t.dtype for t in tensors}) == 1 else torch.float64
        flat = torch.cat([t.reshape(-1).to(dtype) for t in tensors])
        dist.all_reduce(flat)
        offset = 0
        for t in tensors:
            t.copy_(flat[offset : offset + t.numel()].view_as(t))
            offset += t.numel()

    def broadcast_(self, tensors: Sequence[torch.Tensor]) -> None:
        """Rank 0's values of `tensors`, in place, on every rank."""
        for t in tensors:
            dist.broadcast(t, src=0)



def environ_from_slurm(environ: Mapping[str, str]) -> dict[str, str]:
    """torch's env:// rendezvous variables of an srun task with several tasks, from SLURM's own
    (none for a single task, or when a launcher such as torchrun already set them). Rank 0 runs
    on the node srun was launched from (block distribution, SLURM's default), which hosts the
    rendezvous; the port is derived from the job id, so jobs sharing a node do not collide."""
    if "RANK" in environ or int(environ.get("SLURM_STEP_NUM_TASKS", "1")) < 2 or "SLURM_PROCID" not in environ:
        return {}
    return {
        "RANK": environ["SLURM_PROCID"],
        "WORLD_SIZE": environ["SLURM_STEP_NUM_TASKS"],
        "LOCAL_RANK": environ.get("SLURM_LOCALID", "0"),
        "MASTER_ADDR": environ.get("SLURM_LAUNCH_NODE_IPADDR") or first_host(environ["SLURM_STEP_NODELIST"]),
        "MASTER_PORT": str(20000 + int(environ.get("SLURM_JOB_ID", "0")) % 20000),
    }


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list ('gpu[03-05,07],cpu1' -> 'gpu03')."""
    match = re.match(r"([^,\[]+)(?:\[([^\],-]+))?", nodelist)
    if not match:
        raise CannotRun(f"SLURM node list {nodelist!r}: cannot read its first host")
    return match[1] + (match[2] or "")


@contextmanager
def launched(device: torch.device, environ: Mapping[str, str] = os.environ) -> Iterator[World]:
    """The world this process was launched into: a process group joined for the duration when
    torchrun or srun started several processes; a world of one (no process group) otherwise."""
    settings = environ_from_slurm(environ)
    os.environ.update(settings)
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size < 2:
        yield World()
        return
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        # torchrun: every rank sees the job's GPUs; srun may bind one GPU to each task
        visible = torch.cuda.device_count()
        index = 0 if visible == 1 else local_rank
        if index >= visible:
            raise CannotRun(f"local rank {local_rank} but only {visible} visible GPU(s) "
                            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}): launch one "
                            "process per GPU")
        torch.cuda.set_device(index)  # 'cuda' then means this rank's GPU
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=timedelta(seconds=TIMEOUT_S))
    try:
        yield World.current()
    finally:
        dist.destroy_process_group()


class _SumOverRanks(torch.autograd.Function):
    """x summed over the ranks; its gradient is the sum of the ranks' gradients (each rank's
    loss depends on every rank's x through the sum)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        total = x.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        total = grad.clone()
        dist.all_reduce(total)
        return total


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm whose training statistics are those of the global batch, whatever the number
    of processes: the per-rank sums are added by a differentiable all-reduce, so the backward
    pass is that of one process too. (torch's SyncBatchNorm does the same with fused kernels,
    but only on GPUs; this one runs wherever torch.distributed does.) Evaluation uses the
    running statistics, as plain batch norm does."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        count = torch.tensor(float(x.numel() // x.shape[1]), device=x.device)
        dist.all_reduce(count)
        mean = _SumOverRanks.apply(x.sum(dims)) / count
        centred = x - mean.view(shape)
        var = _SumOverRanks.apply((centred * centred).sum(dims)) / count
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
            self.running_mean.lerp_(mean.detach(), momentum)
            self.running_var.lerp_(var.detach() * count / (count - 1).clamp(min=1), momentum)
        out = centred * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out


def global_batchnorm_(model: nn.Module) -> int:
    """Turn every batch-norm layer of `model` into a GlobalBatchNorm in place (same parameters,
    buffers and names, so state dicts are unchanged); the number of layers turned."""
    turned = 0
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, GlobalBatchNorm):
            module.__class__ = GlobalBatchNorm
            turned += 1
    return turned
