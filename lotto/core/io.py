"""Atomic, verifiable file I/O: every result either is complete or does not exist.

Each file is written to a temporary name in the same directory, fsynced, renamed over its
final name, and then the directory is fsynced so that the rename itself is on disk. A
crash of the process leaves the old file or the complete new one under the final name; so
does a power loss, on file systems that honour fsync. Checkpoints and masks get a
`<name>.sha256` sidecar so that a truncated or altered file is detected on load instead of
silently used.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lotto.core.errors import UserError

_UMASK = os.umask(0)
os.umask(_UMASK)


class CorruptFileError(UserError, RuntimeError):
    """A result file is missing its checksum, truncated or altered."""


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it to `path` only if the block succeeds.

    The temporary file's data is fsynced before the rename (else a power loss could leave the
    final name pointing at an empty file) and the directory after it (else the rename could be
    lost).
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; results are for the whole group
        os.replace(tmp, final)
        _fsync_directory(final.parent)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise OSError(err.errno, f"could not write {final}: {err.strerror}") from err
        raise


def _fsync_directory(directory: Path) -> None:
    """Make the entries of `directory` (a rename into it) durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode())


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def save_torch(path: str | os.PathLike, obj: Any) -> None:
    """torch.save `obj` atomically with a checksum sidecar (written first, file renamed last)."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    data = buffer.getvalue()
    final = Path(path)
    write_text(_sidecar(final), sha256_of(data) + "\n")
    write_bytes(final, data)


def load_torch(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """Load a file written by `save_torch`, verifying its checksum; tensors only (weights_only)."""
    import torch

    final = Path(path)
    hint = "delete it (and its .sha256) and rerun the workflow to rebuild it"
    if not final.exists():
        raise CorruptFileError(f"{final}: file not found; rerun the workflow to build it")
    data = final.read_bytes()
    sidecar = _sidecar(final)
    if not sidecar.exists():
        raise CorruptFileError(f"{final}: checksum file {sidecar.name} is missing; {hint}")
    expected = sidecar.read_text().strip()
    if sha256_of(data) != expected:
        raise CorruptFileError(f"{final}: content does not match its checksum (truncated or altered); {hint}")
    try:
        return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises many types for foreign content
        raise CorruptFileError(f"{final}: not a loadable tensor file ({err}); {hint}") from err
