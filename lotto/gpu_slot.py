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

Special cases
    ``-n 0`` runs the command with ``CUDA_VISIBLE_DEVICES=""`` (a CPU job) and takes no lock.
    Under SLURM (``SLURM_JOB_ID`` and ``CUDA_VISIBLE_DEVICES`` both set) the scheduler has
    already assigned GPUs: the wrapper steps aside and execs the command unchanged.

Signals and exit codes
    SIGTERM and SIGINT are forwarded to the command (which runs in the wrapper's process
    group, so a signal sent to the whole group reaches it twice). The wrapper exits with
    the command's exit code, or 128 + N if the command died from signal N; 2 for bad
    arguments or an impossible request (more GPUs than the pool has), 3 when ``--timeout``
    expires, 127 when the command cannot be started.

Job log
    If ``$LOTTO_GPU_SLOT_LOG`` names a file, the wrapper appends one JSON line per job when
    the command ends, while it still holds the GPUs:
    ``{"job": ..., "gpus": [...], "start": ..., "end": ..., "returncode": ...}``
    (``start``/``end`` are ``time.time()`` seconds; ``job`` is ``--job`` or the command).
    Steps aside under SLURM write nothing.

Library use: ``with acquire(n, pool, lock_dir) as slot: ... slot.ids ...``.
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
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

POLL_INTERVAL_S = 0.05
EXIT_USAGE = 2
EXIT_TIMEOUT = 3
EXIT_NOT_STARTED = 127
FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@dataclass(frozen=True)
class Slot:
    """GPUs held by one acquisition, and the lock descriptors that hold them."""

    ids: tuple[str, ...]
    lock_fds: tuple[int, ...]

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
        raise ValueError(f"{source}={text!r} has an empty entry; expected ids like '0,1,2,3'")
    # CUDA ignores a negative index and every id after it (CUDA_VISIBLE_DEVICES=-1 hides all).
    for position, gpu_id in enumerate(ids):
        if re.fullmatch(r"-\d+", gpu_id):
            ids = ids[:position]
            break
    duplicates = sorted({gpu_id for gpu_id in ids if ids.count(gpu_id) > 1})
    if duplicates:
        raise ValueError(f"{source}={text!r} lists GPU(s) {', '.join(duplicates)} twice")
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


def _lock_path(lock_dir: str, gpu_id: str) -> str:
    # GPU UUIDs and MIG ids may hold '/' or ':'; keep file names flat and portable.
    return os.path.join(lock_dir, "gpu-" + re.sub(r"[^A-Za-z0-9._-]", "_", gpu_id) + ".lock")


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
) -> Iterator[Slot]:
    """Hold ``n`` GPUs of ``pool`` exclusively for the ``with`` block; wait until they are free.

    Each call opens its own lock files, so concurrent calls conflict correctly whether they
    run in different processes or in threads of one process. The descriptors are
    close-on-exec; pass ``slot.lock_fds`` to a child (``pass_fds``) to let it share the hold.
    Raises ValueError for an impossible request and TimeoutError when ``timeout`` seconds
    (None: wait forever; 0: try once) pass without ``n`` free GPUs.
    """
    if n < 0:
        raise ValueError(f"number of GPUs must be >= 0, got {n}")
    if n > len(pool):
        available = ",".join(pool) if pool else "none"
        raise ValueError(f"asked for {n} GPU(s) but the pool has {len(pool)} ({available})")
    if n == 0:
        yield Slot(ids=(), lock_fds=())
        return
    os.makedirs(lock_dir, exist_ok=True)
    fds: dict[str, int] = {}
    held: list[str] = []
    try:
        for gpu_id in pool:
            fds[gpu_id] = os.open(_lock_path(lock_dir, gpu_id), os.O_RDONLY | os.O_CREAT, 0o666)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            for gpu_id in pool:
                if _try_lock(fds[gpu_id]):
                    held.append(gpu_id)
                    if len(held) == n:
                        break
            if len(held) == n:
                break
            for gpu_id in held:
                fcntl.flock(fds[gpu_id], fcntl.LOCK_UN)
            held.clear()
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(
                    f"no {n} free GPU(s) among {','.join(pool)} after {timeout} s "
                    f"(locks in {lock_dir})"
                )
            time.sleep(poll_interval * random.uniform(0.5, 1.5))
        for gpu_id in pool:
            if gpu_id not in held:
                os.close(fds.pop(gpu_id))
        yield Slot(ids=tuple(held), lock_fds=tuple(fds[gpu_id] for gpu_id in held))
    finally:
        for fd in fds.values():
            os.close(fd)


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


def _build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(
        prog="python -m lotto.gpu_slot",
        usage="%(prog)s -n N [--timeout S] [--job NAME] -- COMMAND [ARG ...]",
        description="Run COMMAND on N free GPUs of this box (CUDA_VISIBLE_DEVICES set for it). "
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
        "--timeout", type=_seconds, metavar="S", help="give up (exit 3) after S seconds of waiting"
    )
    parser.add_argument(
        "--job", metavar="NAME", help="name for the job log (default: the command line)"
    )
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
        with acquire(options.gpus, pool, lock_dir, timeout=options.timeout) as slot:
            env = dict(os.environ, CUDA_VISIBLE_DEVICES=slot.cuda_visible_devices)
            start = time.time()
            forwarder.starting = True
            try:
                child = subprocess.Popen(command, env=env, pass_fds=slot.lock_fds)
            except OSError as error:
                return _fail(f"cannot run {command[0]!r}: {error.strerror}", EXIT_NOT_STARTED)
            forwarder.attach(child)
            returncode = child.wait()
            log_path = os.environ.get("LOTTO_GPU_SLOT_LOG")
            if log_path:
                record = {
                    "job": options.job or shlex.join(command),
                    "gpus": list(slot.ids),
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
