"""A job's training/validation/test splits, cached beside the prepared dataset so that every job
does not re-read, re-hash and re-standardise it.

`lotto.core.data.load` reads the prepared cache, verifies its sha256, draws the validation split and
standardises every image: ~0.3 s of CPU for Fashion-MNIST in every training job, on top of
`import torch` (benchmarks/job.py). What it returns depends only on that file's content and
load's options, so the first job that needs them writes the splits to
`<prepared>.splits-<content>-<key>.pt` and later jobs map that file (torch.load with mmap: no
copy, no hash, no arithmetic) instead. The values are those load computed, so results are
unchanged.

Why a hit is never wrong:
- `key` hashes the prepared file's content hash (its verified .sha256 sidecar; `content` is its
  first 16 hex digits), load's options and FORMAT: other content, other options or another
  layout of this file name another file;
- the splits file records the prepared file's identity when load read and verified it (device,
  inode, size, mtime in ns, sha256); a hit needs the prepared file to have that identity now.
  lotto replaces files by rename (a new inode) and never edits them in place, so a prepared file
  that was rebuilt or replaced misses, and load verifies its content again;
- it is written atomically (lotto.core.io), and only when the prepared file's identity did not change
  while load read it; a splits file that cannot be read, or holds other keys or an identity that
  differs, is a miss and is rewritten.
Not caught: bit rot inside either file after it was verified (a hit hashes neither; hashing the
220 MB of float splits would cost what the cache saves), or an in-place edit of the prepared file
that keeps its size, inode and mtime to the nanosecond.

Stale splits files are removed (`remove_stale`) when a job writes a new one and when the prepare
verb rewrites the prepared file: a splits file's name starts with a prefix of the sha256 of the
content it was made from, so those made from other content, which can never hit again, are
found by name alone (the 220 MB files are not read). Those of other options of the same content
stay: other experiments use them. `python -m lotto cache` lists them all and `--clear` removes
them. A job mapping a file that is removed keeps its mapping (Linux frees the data at the last
unmap). Left behind: one that a job which read the old content was still writing when the
prepared file was replaced; the next splits file written for it, its next prepare or
`lotto cache --clear` removes it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from lotto.core import io
from lotto.core.data import Splits, load

FORMAT = 1  # raise when what a splits file holds or how load computes it changes
CONTENT_DIGITS = 16  # hex digits of the prepared file's sha256 that start a splits file's name
KEY_DIGITS = 16  # hex digits of the key (content, options, FORMAT) that end it
# <prepared>.splits-<content>-<key>.pt; splits files written before the content prefix was in their
# name, <prepared>.splits-<key>.pt, can never hit (no file of that name is read now)
_NAME = re.compile(rf"(?P<prepared>.+\.pt)\.splits-(?:(?P<content>[0-9a-f]{{{CONTENT_DIGITS}}})-)?[0-9a-f]{{{KEY_DIGITS}}}\.pt")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_TENSORS = ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y")


def load_splits(prepared: str | os.PathLike, *, val_size: int, device: str | torch.device = "cpu",
                labels: list[int] | None = None, half: int | None = None) -> Splits:
    """lotto.core.data.load(prepared, ...) on `device`, from the splits file when it holds them."""
    prepared = Path(prepared)
    options = {"val_size": val_size, "labels": labels, "half": half, "split_seed": 0}
    identity = _identity(prepared)
    if identity is None:  # no sidecar, or no file: load says what is wrong
        return load(prepared, device=device, **options)
    cached = splits_file(prepared, identity["sha256"], options)
    splits = _read(cached, identity)
    if splits is None:
        splits = load(prepared, device="cpu", **options)
        if _identity(prepared) == identity:  # what load verified is the file the identity names
            _write(cached, splits, identity)
            remove_stale(prepared)
    return _on(splits, torch.device(device))


def splits_file(prepared: Path, sha256: str, options: dict) -> Path:
    key = hashlib.sha256(json.dumps([sha256, options, FORMAT], sort_keys=True).encode()).hexdigest()[:KEY_DIGITS]
    return prepared.with_name(f"{prepared.name}.splits-{sha256[:CONTENT_DIGITS]}-{key}.pt")


@dataclass(frozen=True)
class SplitsFile:
    """A splits file found by its name: the prepared file it belongs to and the prefix of the
    sha256 of the content it was made from (None for a name written before that was in it)."""

    path: Path
    prepared: Path
    content: str | None

    def stale(self, sha256: str | None) -> bool:
        """Whether it can never hit while the prepared file's content hash is `sha256`."""
        return self.content is None or self.content != (sha256 or "")[:CONTENT_DIGITS]


def splits_files(folder: Path) -> list[SplitsFile]:
    """The splits files in `folder`, recognised by their names alone (nothing else matches)."""
    found = []
    for path in sorted(folder.iterdir()) if folder.is_dir() else ():
        match = _NAME.fullmatch(path.name)
        if match and path.is_file() and not path.is_symlink():
            found.append(SplitsFile(path, folder / match["prepared"], match["content"]))
    return found


def remove_stale(prepared: Path) -> None:
    """Delete the splits files of `prepared` made from other content than it holds now (its
    .sha256 sidecar), and those of older names; keep those of its content, whatever their options.
    Nothing is deleted without a valid sidecar. A file that cannot be deleted is reported and kept:
    it costs disk, not correctness."""
    sha256 = _content_hash(prepared)
    if sha256 is None:
        return
    for found in splits_files(prepared.parent):
        if found.prepared != prepared or not found.stale(sha256):
            continue
        try:
            size = found.path.stat().st_size
            found.path.unlink()
        except FileNotFoundError:  # another job removed it first
            continue
        except OSError as err:
            print(f"could not remove stale splits file {found.path}: {err.strerror}", file=sys.stderr)
            continue
        why = "made from other content" if found.content else "an older name, never read now"
        print(f"removed stale splits file {found.path} ({size / 1e6:.1f} MB): {why}", file=sys.stderr)


def describe(folder: Path) -> str:
    """`lotto cache`: each splits file in `folder` with its size and whether a job can still use
    it, then their total."""
    found = splits_files(folder)
    if not found:
        return f"no splits files in {folder}"
    lines, total = [], 0
    for entry in found:
        size = entry.path.stat().st_size
        total += size
        lines.append(f"{size / 1e6:9.1f} MB  {_state(entry):<9}  {entry.path}")
    lines.append(f"{total / 1e6:9.1f} MB  in {len(found)} splits file(s); `lotto cache --clear` removes them "
                 "(the next job of each prepared dataset writes the one it needs again)")
    return "\n".join(lines)


def clear(folder: Path) -> tuple[int, int]:
    """Delete every splits file in `folder` and nothing else; (files, bytes) removed."""
    files = size = 0
    for entry in splits_files(folder):
        try:
            bytes_ = entry.path.stat().st_size
            entry.path.unlink()
        except FileNotFoundError:  # removed meanwhile (a job removing stale ones)
            continue
        files, size = files + 1, size + bytes_
    return files, size


def _state(entry: SplitsFile) -> str:
    """current: made from what the prepared file holds now; stale: from other content (or named
    before the content was in the name); orphan: its prepared file is gone."""
    if not entry.prepared.is_file():
        return "orphan"
    return "stale" if entry.stale(_content_hash(entry.prepared)) else "current"


def _content_hash(prepared: Path) -> str | None:
    """The sha256 the prepared file's sidecar names, or None when it has none or no valid one."""
    try:
        sha256 = prepared.with_name(prepared.name + ".sha256").read_text().strip()
    except OSError:
        return None
    return sha256 if _SHA256.fullmatch(sha256) else None


def _identity(prepared: Path) -> dict | None:
    """The prepared file as it is now: where it lives, its size and mtime, its content hash."""
    try:
        stat = prepared.stat()
    except OSError:
        return None
    sha256 = _content_hash(prepared)
    if sha256 is None:
        return None
    return {"dev": stat.st_dev, "ino": stat.st_ino, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
            "sha256": sha256}


def _read(cached: Path, identity: dict) -> Splits | None:
    """The splits in `cached` if it was made from the prepared file `identity` names, else None."""
    try:
        saved = torch.load(cached, mmap=True, weights_only=True, map_location="cpu")
    except Exception:  # noqa: BLE001 - absent, truncated or foreign: a miss, rewritten below
        return None
    if not isinstance(saved, dict) or saved.get("format") != FORMAT or saved.get("prepared") != identity \
            or not all(isinstance(saved.get(name), torch.Tensor) for name in _TENSORS):
        return None
    return Splits(**{name: saved[name] for name in _TENSORS}, num_classes=saved["num_classes"],
                  input_shape=tuple(saved["train_x"].shape[1:]), augment=saved["augment"])


def _write(cached: Path, splits: Splits, identity: dict) -> None:
    saved = {name: getattr(splits, name) for name in _TENSORS}
    saved.update(format=FORMAT, prepared=identity, num_classes=splits.num_classes, augment=splits.augment)
    with io.atomic_path(cached) as tmp:
        torch.save(saved, tmp)


def _on(splits: Splits, device: torch.device) -> Splits:
    if device.type == "cpu":
        return splits
    return replace(splits, **{name: getattr(splits, name).to(device) for name in _TENSORS})
