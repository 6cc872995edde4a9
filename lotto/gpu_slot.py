"""Give a job its own GPU(s) on a shared box: ``python -m lotto.gpu_slot -n N -- CMD ...``.

Snakemake's ``--resources gpu=4`` only counts GPUs; it does not say *which* GPU a job may
use. This wrapper picks free GPUs, sets ``CUDA_VISIBLE_DEVICES`` for the command, runs it
and exits with its exit code::

    python -m lotto.gpu_slot -n {resources.gpu} -- python -m lotto round ...

How a GPU is claimed
    One lock file per GPU, ``<lock dir>/gpu-<id>.lock``, taken with an exclusive,
    non-blocking ``fcntl.flock``. The lock dir is ``$LOTTO_GPU_LOCK_DIR``, else
    ``/tmp/lotto-gpu-locks-<uid>`` (set the variable to a shared directory if several
    users must share GPUs). Free GPUs are tried in pool order; a request for N GPUs is
    all-or-nothing: if fewer than N are free, every lock taken is released and the wrapper
    sleeps briefly (with jitter) and tries again. Never holding some GPUs while waiting for
    others rules out deadlock between multi-GPU jobs; the price is that a multi-GPU job can
    wait long behind a stream of one-GPU jobs.

Who holds the slot: the wrapper *and* the command
    A flock belongs to an open file description and is released only when the last file
    descriptor referring to it is closed. The command inherits the lock descriptors, so the
    GPU stays claimed while either the wrapper or the command (or any process the command
    started that kept them) is alive. A GPU is busy as long as the process using it lives:
    if the wrapper is SIGKILLed but its command keeps running, the GPU is still in use and
    must not be handed out; once every holder is gone the kernel drops the lock, so a
    crashed or killed job never leaves a stale slot behind. (Lock files are never deleted;
    an empty file with no lock on it is a free GPU.)

Which GPUs exist (the pool)
    ``$LOTTO_GPUS`` (comma-separated ids, e.g. ``0,1,2,3``), else the caller's
    ``$CUDA_VISIBLE_DEVICES``, else the devices ``torch.cuda.device_count()`` reports
    (torch is imported only in that case), else none. A variable that is set but empty
    means "no GPUs".

Several jobs per GPU (``-k K``, config ``gpu_slots``)
    Each GPU offers K slots: slot 0 is the lock file above, slot j > 0 is
    ``gpu-<id>.slot<j>.lock``. A job takes one slot on each of its N GPUs (never two slots of
    one GPU), all-or-nothing as above, so a GPU runs at most K jobs that ask with that K (a job
    asking with K=1 uses slot 0 only). Slots are tried slot-major (slot 0 of every GPU first),
    which spreads jobs over the GPUs before stacking them. With ``--mem-mb M`` (the job's
    estimated GPU memory, lotto.gpu_memory) the wrapper writes M into its slot file and takes a
    slot only if M plus the estimates written by the GPU's other slot holders fits in the GPU's
    memory and M fits in its free memory (nvidia-smi; ``$LOTTO_GPU_MEM_MB`` overrides both, e.g.
    for fake ids); a job alone on a GPU is never held back. When neither source answers, no
    memory check is made. Each job writes its estimate before it checks, so of two jobs
    checking at once at least one sees the other.

Energy (``--energy FILE``)
    On NVIDIA GPUs, the wrapper reads NVML's total-energy counter of each of its GPUs (the
    optional package nvidia-ml-py, module ``pynvml``) at the start, every ENERGY_SAMPLE_S
    seconds and at the end of the command. The energy of each interval is divided by the
    number of jobs holding a slot of that GPU at the end of the interval (this job included;
    counted by probing the slot locks), so k jobs sharing a GPU each get the board energy of
    the time they ran together divided by k: a share by time, not by each job's own use of
    the GPU. FILE gets ``{"joules", "board_joules", "seconds", "samples", "mean_jobs",
    "gpus"}`` (lotto.outputs.energy reads it). Without NVML, without GPUs or when a counter is not
    supported, no FILE is written (a stale one is removed). GPU ids are taken as NVML
    indices (or UUIDs): set ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` on boxes whose GPUs differ.

One training in several processes (``--processes P [--nodes M]``, training.devices and nodes)
    The command (``python ...``) is launched as P processes per node, one per GPU
    (lotto.core.distributed): on a workstation through torchrun (``python -m torch.distributed.run
    --standalone --nproc-per-node P --max-restarts 0 ...``: a free rendezvous port per job,
    and a failed rank ends the others), all of them seeing the job's N = P GPUs; in a SLURM job
    through ``srun --ntasks P*M --ntasks-per-node P --kill-on-bad-exit=1``, whose task variables
    give the rendezvous. Several nodes only under SLURM.

Special cases
    ``-n 0`` runs the command with ``CUDA_VISIBLE_DEVICES=""`` (a CPU job) and takes no lock.
    Under SLURM (``SLURM_JOB_ID`` and ``CUDA_VISIBLE_DEVICES`` both set) the scheduler has
    already assigned GPUs: the wrapper steps aside and execs the command (under srun when
    it has several processes).

Signals and exit codes
    SIGTERM and SIGINT are forwarded to the command (which runs in the wrapper's process
    group, so a signal sent to the whole group reaches it twice). The wrapper exits with
    the command's exit code, or 128 + N if the command died from signal N; 2 for bad
    arguments or an impossible request (more GPUs than the pool has), 3 when ``--timeout``
    expires, 127 when the command cannot be started.

Job log
    If ``$LOTTO_GPU_SLOT_LOG`` names a file, the wrapper appends one JSON line per job when
    the command ends, while it still holds the GPUs:
    ``{"job": ..., "gpus": [...], "slots": [...], "start": ..., "end": ..., "returncode": ...}``
    (``start``/``end`` are ``time.time()`` seconds; ``job`` is ``--job`` or the command).
    Steps aside under SLURM write nothing.

Library use: ``with acquire(n, pool, lock_dir, per_gpu=k) as slot: ... slot.ids ...``.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import random
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from lotto.core import io
from lotto.core.errors import InvalidValue

POLL_INTERVAL_S = 0.05
EXIT_USAGE = 2
EXIT_TIMEOUT = 3
EXIT_NOT_STARTED = 127
FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT)
ENERGY_SAMPLE_S = float(os.environ.get("LOTTO_ENERGY_SAMPLE_S", "1.0"))  # the env: for tests
MEMORY_HEADROOM = 0.95  # of a GPU's memory, left for the estimates' error


@dataclass(frozen=True)
class Slot:
    """GPUs held by one acquisition, and the lock descriptors that hold them."""

    ids: tuple[str, ...]
    lock_fds: tuple[int, ...]
    slots: tuple[int, ...] = ()  # the slot index held on each GPU of `ids`

    @property
    def cuda_visible_devices(self) -> str:
        return ",".join(self.ids)


def default_lock_dir(environ: Mapping[str, str] = os.environ) -> str:
    """``$LOTTO_GPU_LOCK_DIR``, else a per-user directory under /tmp (not $TMPDIR, which
    may differ between jobs that must see the same locks)."""
    return environ.get("LOTTO_GPU_LOCK_DIR") or f"/tmp/lotto-gpu-locks-{os.getuid()}"


def parse_gpu_list(text: str, source: str) -> tuple[str, ...]:
    """Split a comma list of GPU ids; ``source`` names the variable in error messages."""
    if not text.strip():
        return ()
    ids = tuple(part.strip() for part in text.split(","))
    if "" in ids:
        raise InvalidValue(f"{source}={text!r} has an empty entry; expected ids like '0,1,2,3'")
    # CUDA ignores a negative index and every id after it (CUDA_VISIBLE_DEVICES=-1 hides all).
    for position, gpu_id in enumerate(ids):
        if re.fullmatch(r"-\d+", gpu_id):
            ids = ids[:position]
            break
    duplicates = sorted({gpu_id for gpu_id in ids if ids.count(gpu_id) > 1})
    if duplicates:
        raise InvalidValue(f"{source}={text!r} lists GPU(s) {', '.join(duplicates)} twice")
    return ids


def resolve_pool(environ: Mapping[str, str] = os.environ) -> tuple[str, ...]:
    """The GPUs this box offers: $LOTTO_GPUS, else $CUDA_VISIBLE_DEVICES, else torch's count."""
    for variable in ("LOTTO_GPUS", "CUDA_VISIBLE_DEVICES"):
        if variable in environ:
            return parse_gpu_list(environ[variable], variable)
    try:
        import torch  # only here: importing torch costs seconds
    except ImportError:
        return ()
    return tuple(str(index) for index in range(torch.cuda.device_count()))


def sees_cuda_device(environ: Mapping[str, str] = os.environ, dev: str = "/dev") -> bool:
    """Whether this machine shows a CUDA device, without importing torch (seconds at every
    workflow parse; config use_gpu: auto): an NVIDIA device file (/dev/nvidia0, ...), unless
    $CUDA_VISIBLE_DEVICES is set and hides every device (empty, or starting with -1)."""
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and (not visible.strip() or visible.strip().startswith("-")):
        return False
    try:
        return any(re.fullmatch(r"nvidia\d+", name) for name in os.listdir(dev))
    except OSError:
        return False


def _lock_path(lock_dir: str, gpu_id: str, slot: int = 0) -> str:
    # GPU UUIDs and MIG ids may hold '/' or ':'; keep file names flat and portable.
    flat = "gpu-" + re.sub(r"[^A-Za-z0-9._-]", "_", gpu_id)
    return os.path.join(lock_dir, flat + (f".slot{slot}" if slot else "") + ".lock")


def _open_lock(path: str) -> int:
    """Read-write, to record the holder's memory estimate; read-only where another user's
    file allows no more (the estimate is then not recorded)."""
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except PermissionError:
        return os.open(path, os.O_RDONLY)


def _is_held(path: str) -> bool:
    """Whether some process holds the lock file at `path` (probed with a shared lock that is
    dropped at once; an acquirer probing at that instant sees the slot busy and moves on)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def jobs_on_gpu(lock_dir: str, gpu_id: str, per_gpu: int) -> int:
    """Slots of `gpu_id` held now (by any process, the caller's own included)."""
    return sum(_is_held(_lock_path(lock_dir, gpu_id, j)) for j in range(per_gpu))


def gpu_memory_mb(gpu_id: str, environ: Mapping[str, str] = os.environ) -> tuple[int, int] | None:
    """(total, free) memory of a GPU in MB: ``$LOTTO_GPU_MEM_MB`` (both), else nvidia-smi,
    else None (no memory check)."""
    if environ.get("LOTTO_GPU_MEM_MB"):
        total = int(environ["LOTTO_GPU_MEM_MB"])
        return total, total
    try:
        answer = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.total,memory.free", "--format=csv,noheader,nounits",
             "-i", gpu_id],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout
        total, free = (int(float(v)) for v in answer.split(","))
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    return total, free


def _estimate_of(fd: int) -> int:
    """The memory estimate a slot's holder wrote into its lock file (0 if none)."""
    text = os.pread(fd, 16, 0).decode(errors="replace").strip()
    return int(text) if text.isdigit() else 0


def _record_estimate(fd: int, need_mb: int) -> None:
    try:  # one fixed-width write, no truncation: a reader sees the old or the new number
        os.pwrite(fd, f"{need_mb:>15}\n".encode(), 0)
    except OSError:
        pass  # a read-only lock file (another user's): the estimate is not shared


def _fits(gpu_id: str, slot: int, fds: dict[tuple[str, int], int], per_gpu: int, need_mb: int,
          lock_dir: str) -> bool:
    """Whether a job of `need_mb` MB may join the holders of `gpu_id`'s other slots."""
    others = [j for j in range(per_gpu) if j != slot and _is_held(_lock_path(lock_dir, gpu_id, j))]
    if not others:
        return True  # alone on the GPU: never held back by the estimate
    memory = gpu_memory_mb(gpu_id)
    if memory is None:
        return True
    total, free = memory
    booked = sum(_estimate_of(fds[gpu_id, j]) for j in others)
    return need_mb + booked <= total * MEMORY_HEADROOM and need_mb <= free


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


@contextlib.contextmanager
def acquire(
    n: int,
    pool: Sequence[str],
    lock_dir: str,
    timeout: float | None = None,
    poll_interval: float = POLL_INTERVAL_S,
    per_gpu: int = 1,
    need_mb: int = 0,
) -> Iterator[Slot]:
    """Hold one of the ``per_gpu`` slots of each of ``n`` GPUs of ``pool`` for the ``with``
    block; wait until they are free (and, with ``need_mb``, until the job fits beside the
    GPU's other jobs; see the module docstring).

    Each call opens its own lock files, so concurrent calls conflict correctly whether they
    run in different processes or in threads of one process. The descriptors are
    close-on-exec; pass ``slot.lock_fds`` to a child (``pass_fds``) to let it share the hold.
    Raises ValueError for an impossible request and TimeoutError when ``timeout`` seconds
    (None: wait forever; 0: try once) pass without ``n`` free GPU slots.
    """
    if n < 0:
        raise InvalidValue(f"number of GPUs must be >= 0, got {n}")
    if per_gpu < 1:
        raise InvalidValue(f"slots per GPU must be >= 1, got {per_gpu}")
    if n > len(pool):
        available = ",".join(pool) if pool else "none"
        raise InvalidValue(f"asked for {n} GPU(s) but the pool has {len(pool)} ({available})")
    if n == 0:
        yield Slot(ids=(), lock_fds=())
        return
    os.makedirs(lock_dir, exist_ok=True)
    check_memory = need_mb > 0 and per_gpu > 1
    fds: dict[tuple[str, int], int] = {}
    held: list[tuple[str, int]] = []
    try:
        for slot in range(per_gpu):
            for gpu_id in pool:
                fds[gpu_id, slot] = _open_lock(_lock_path(lock_dir, gpu_id, slot))
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            for slot in range(per_gpu):  # slot-major: spread over the GPUs before stacking
                for gpu_id in pool:
                    if any(gpu_id == g for g, _ in held) or not _try_lock(fds[gpu_id, slot]):
                        continue
                    if need_mb > 0:  # before the check: two jobs checking at once see each other
                        _record_estimate(fds[gpu_id, slot], need_mb)
                    if check_memory and not _fits(gpu_id, slot, fds, per_gpu, need_mb, lock_dir):
                        fcntl.flock(fds[gpu_id, slot], fcntl.LOCK_UN)
                        continue
                    held.append((gpu_id, slot))
                    if len(held) == n:
                        break
                if len(held) == n:
                    break
            if len(held) == n:
                break
            for key in held:
                fcntl.flock(fds[key], fcntl.LOCK_UN)
            held.clear()
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(
                    f"no {n} free GPU(s) among {','.join(pool)} after {timeout} s "
                    f"(locks in {lock_dir})"
                )
            time.sleep(poll_interval * random.uniform(0.5, 1.5))
        for key in list(fds):
            if key not in held:
                os.close(fds.pop(key))
        yield Slot(
            ids=tuple(g for g, _ in held),
            lock_fds=tuple(fds[key] for key in held),
            slots=tuple(j for _, j in held),
        )
    finally:
        for fd in fds.values():
            os.close(fd)


class EnergyMeter:
    """Energy of one job on its GPUs, shared by time with the jobs running beside it.

    ``read_mj(gpu_id)`` returns a GPU's total-energy counter in millijoules (NVML) and
    ``count_jobs(gpu_id)`` how many jobs hold a slot of that GPU now. Every `interval`
    seconds (and at ``stop``) the counter's increase since the last reading is divided by the
    number of jobs counted and added to this job's share.
    """

    def __init__(self, gpus: Sequence[str], read_mj: Callable[[str], int],
                 count_jobs: Callable[[str], int], interval: float = ENERGY_SAMPLE_S):
        self.gpus, self.read_mj, self.count_jobs, self.interval = tuple(gpus), read_mj, count_jobs, interval
        self.last = {gpu: read_mj(gpu) for gpu in self.gpus}
        self.share_mj = 0.0
        self.board_mj = 0.0
        self.jobs_seen: list[int] = []
        self.started = time.monotonic()
        self.seconds = 0.0
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        """Book the energy since the last reading, shared among the jobs there now."""
        with self._lock:
            for gpu in self.gpus:
                now = self.read_mj(gpu)
                jobs = max(1, self.count_jobs(gpu))
                delta = max(0, now - self.last[gpu])  # a counter reset (driver reload) books 0
                self.last[gpu] = now
                self.board_mj += delta
                self.share_mj += delta / jobs
                self.jobs_seen.append(jobs)

    def _run(self) -> None:
        while not self._done.wait(self.interval):
            self.sample()

    def start(self) -> EnergyMeter:
        self._thread.start()
        return self

    def stop(self) -> dict:
        """End the measurement; the record written to ``--energy FILE``."""
        self._done.set()
        if self._thread.ident is not None:  # started
            self._thread.join()
        self.sample()
        self.seconds = time.monotonic() - self.started
        return {
            "joules": self.share_mj / 1000.0,
            "board_joules": self.board_mj / 1000.0,
            "seconds": self.seconds,
            "samples": len(self.jobs_seen) // max(1, len(self.gpus)),
            "mean_jobs": sum(self.jobs_seen) / len(self.jobs_seen),
            "gpus": list(self.gpus),
        }


def nvml_energy_reader() -> Callable[[str], int] | None:
    """``gpu_id -> millijoules`` from NVML's total-energy counter, or None when NVML (the
    optional package nvidia-ml-py) or the counter is not available here."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:  # pynvml.NVMLError and its many subclasses: no driver, no GPU
        return None
    handles: dict[str, object] = {}

    def read_mj(gpu_id: str) -> int:
        if gpu_id not in handles:
            handles[gpu_id] = (
                pynvml.nvmlDeviceGetHandleByIndex(int(gpu_id)) if gpu_id.isdigit()
                else pynvml.nvmlDeviceGetHandleByUUID(gpu_id)
            )
        return int(pynvml.nvmlDeviceGetTotalEnergyConsumption(handles[gpu_id]))

    return read_mj


def _start_energy(path: str | None, slot: Slot, lock_dir: str, per_gpu: int) -> EnergyMeter | None:
    """A running meter for `--energy`, or None (no file asked for, no GPU, no NVML)."""
    if not path:
        return None
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # a record of an earlier run must not pass for this one
    read_mj = nvml_energy_reader() if slot.ids else None
    if read_mj is None:
        return None
    try:
        return EnergyMeter(slot.ids, read_mj, lambda gpu: jobs_on_gpu(lock_dir, gpu, per_gpu)).start()
    except Exception as error:  # e.g. a GPU without an energy counter (NVML: not supported)
        print(f"gpu_slot: warning: no energy measurement: {error}", file=sys.stderr)
        return None


class _Interrupted(Exception):
    """A forwarded signal arrived before the command was started."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class _SignalForwarder:
    """Signal handler: abort while waiting for GPUs, forward once the command runs.

    Between "starting" and the Popen object being known, signals are queued and delivered
    right after, so no signal is lost and none kills the wrapper behind a running command.
    """

    def __init__(self) -> None:
        self.starting = False
        self.child: subprocess.Popen | None = None
        self.pending: list[int] = []

    def __call__(self, signum: int, frame: object) -> None:
        if self.child is not None:
            self.child.send_signal(signum)
        elif self.starting:
            self.pending.append(signum)
        else:
            raise _Interrupted(signum)

    def attach(self, child: subprocess.Popen) -> None:
        self.child = child
        for signum in self.pending:
            child.send_signal(signum)


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _gpu_count(text: str) -> int:
    if not re.fullmatch(r"\d+", text.strip()):
        raise argparse.ArgumentTypeError(f"must be a whole number >= 0, got {text!r}")
    return int(text)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds >= 0, got {text!r}")
    return value


def launch_command(command: list[str], processes: int, nodes: int,
                   environ: Mapping[str, str] = os.environ) -> list[str]:
    """`command` as `processes` processes on each of `nodes` nodes (see the module docstring):
    unchanged for one, else under srun inside a SLURM job, else under torchrun."""
    if processes * nodes == 1:
        return command
    if "SLURM_JOB_ID" in environ:
        cpus = [f"--cpus-per-task={environ['SLURM_CPUS_PER_TASK']}"] if "SLURM_CPUS_PER_TASK" in environ else []
        return ["srun", f"--ntasks={processes * nodes}", f"--ntasks-per-node={processes}", f"--nodes={nodes}",
                *cpus, "--kill-on-bad-exit=1", *command]
    if nodes > 1:
        raise InvalidValue(f"--nodes {nodes}: a training on several nodes runs in a SLURM job only "
                           "(profiles/slurm); on one machine use training.nodes: 1")
    if not os.path.basename(command[0]).startswith("python"):
        raise InvalidValue(f"--processes {processes}: the command must start with python (torchrun runs "
                           f"it once per process), not {command[0]!r}")
    return [command[0], "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
            "--max-restarts=0", *command[1:]]


def _build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(
        prog="python -m lotto.gpu_slot",
        usage="%(prog)s -n N [-k K] [--mem-mb M] [--energy FILE] [--timeout S] [--job NAME] "
        "[--processes P] [--nodes M] "
        "-- COMMAND [ARG ...]",
        description="Run COMMAND on a free slot of each of N GPUs of this box, K slots per GPU "
        "(CUDA_VISIBLE_DEVICES set for it). "
        "Pool: $LOTTO_GPUS, else $CUDA_VISIBLE_DEVICES, else what torch sees. "
        "Locks: $LOTTO_GPU_LOCK_DIR. Job log (JSON lines): $LOTTO_GPU_SLOT_LOG.",
        epilog="Exit code: the command's (128+N if it died from signal N); 2 bad request, "
        "3 timeout, 127 command not startable.",
    )
    parser.add_argument(
        "-n",
        "--gpus",
        type=_gpu_count,
        required=True,
        metavar="N",
        help="GPUs to hold (0: CPU job)",
    )
    parser.add_argument(
        "-k",
        "--per-gpu",
        type=_gpu_count,
        default=1,
        metavar="K",
        help="jobs a GPU runs at once (default 1)",
    )
    parser.add_argument(
        "--mem-mb",
        type=_gpu_count,
        default=0,
        metavar="M",
        help="the job's estimated GPU memory: with K > 1, join a GPU's other jobs only if it fits",
    )
    parser.add_argument(
        "--energy",
        metavar="FILE",
        help="write the job's share of the GPUs' energy (NVML) to FILE as JSON",
    )
    parser.add_argument(
        "--timeout", type=_seconds, metavar="S", help="give up (exit 3) after S seconds of waiting"
    )
    parser.add_argument(
        "--job", metavar="NAME", help="name for the job log (default: the command line)"
    )
    parser.add_argument(
        "--processes", type=_gpu_count, default=1, metavar="P",
        help="processes per node of one training (torchrun, or srun under SLURM; default 1)",
    )
    parser.add_argument("--nodes", type=_gpu_count, default=1, metavar="M", help="nodes (SLURM only; default 1)")
    return parser


def _append_log(path: str, record: dict) -> None:
    line = (json.dumps(record) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        os.write(fd, line)  # one write of one line: concurrent appenders do not interleave
    finally:
        os.close(fd)


def _fail(message: str, code: int) -> int:
    print(f"gpu_slot: error: {message}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``-n N [options] -- COMMAND``, run COMMAND on N GPUs, return its exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _build_parser()
    if "--" not in argv:
        parser.parse_args(argv)  # handles --help and bad options before the missing '--'
        parser.error("missing '--' before the command, e.g. -n 1 -- python -m lotto round ...")
    split = argv.index("--")
    options, command = parser.parse_args(argv[:split]), argv[split + 1 :]
    if not command:
        parser.error("no command after '--'")
    if options.per_gpu < 1:
        parser.error("argument -k/--per-gpu: must be >= 1, got 0")
    if options.processes < 1 or options.nodes < 1:
        parser.error("arguments --processes and --nodes: must be >= 1")
    try:
        command = launch_command(command, options.processes, options.nodes)
    except ValueError as error:
        return _fail(str(error), EXIT_USAGE)

    if "SLURM_JOB_ID" in os.environ and "CUDA_VISIBLE_DEVICES" in os.environ:
        try:
            os.execvp(command[0], command)
        except OSError as error:
            return _fail(f"cannot run {command[0]!r}: {error.strerror}", EXIT_NOT_STARTED)

    try:
        pool = resolve_pool() if options.gpus else ()
    except ValueError as error:
        return _fail(str(error), EXIT_USAGE)
    if options.gpus and not pool:
        return _fail(
            f"asked for {options.gpus} GPU(s) but none are available; "
            "set LOTTO_GPUS (e.g. LOTTO_GPUS=0,1) or CUDA_VISIBLE_DEVICES",
            EXIT_USAGE,
        )

    forwarder = _SignalForwarder()
    for signum in FORWARDED_SIGNALS:
        signal.signal(signum, forwarder)
    lock_dir = default_lock_dir()
    try:
        with acquire(options.gpus, pool, lock_dir, timeout=options.timeout,
                     per_gpu=options.per_gpu, need_mb=options.mem_mb) as slot:
            env = dict(os.environ, CUDA_VISIBLE_DEVICES=slot.cuda_visible_devices)
            meter = _start_energy(options.energy, slot, lock_dir, options.per_gpu)
            start = time.time()
            forwarder.starting = True
            try:
                child = subprocess.Popen(command, env=env, pass_fds=slot.lock_fds)
            except OSError as error:
                return _fail(f"cannot run {command[0]!r}: {error.strerror}", EXIT_NOT_STARTED)
            forwarder.attach(child)
            returncode = child.wait()
            if meter is not None:
                try:
                    io.write_json(options.energy, meter.stop())
                except Exception as error:  # a lost counter must not fail a finished job
                    print(f"gpu_slot: warning: energy not written: {error}", file=sys.stderr)
            log_path = os.environ.get("LOTTO_GPU_SLOT_LOG")
            if log_path:
                record = {
                    "job": options.job or shlex.join(command),
                    "gpus": list(slot.ids),
                    "slots": list(slot.slots),
                    "start": start,
                    "end": time.time(),
                    "returncode": returncode,
                }
                try:
                    _append_log(log_path, record)
                except OSError as error:
                    print(f"gpu_slot: warning: job log not written: {error}", file=sys.stderr)
    except ValueError as error:
        return _fail(str(error), EXIT_USAGE)
    except TimeoutError as error:
        return _fail(str(error), EXIT_TIMEOUT)
    except OSError as error:
        return _fail(f"cannot use lock dir {lock_dir!r}: {error}", EXIT_USAGE)
    except _Interrupted as interrupted:
        return 128 + interrupted.signum
    return 128 - returncode if returncode < 0 else returncode


if __name__ == "__main__":
    sys.exit(main())
