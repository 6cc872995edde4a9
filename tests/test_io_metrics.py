"""lotto.core.io and lotto.core.metrics: a result file is complete or absent, damage is detected and
named with the fix, and the metrics table has one schema and summarises as the papers do."""

from __future__ import annotations

import errno
import math
import os
import subprocess
import sys

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torch import nn

from lotto.core import io, masks, metrics


class WriterFailed(Exception):
    """A writer that dies halfway."""


# ---------------------------------------------------------------------------- atomic writes


def test_failed_write_leaves_nothing_under_the_final_name(tmp_path):
    target = tmp_path / "sub" / "result.bin"
    with pytest.raises(WriterFailed):
        with io.atomic_path(target) as tmp:
            tmp.write_bytes(b"half of it")
            raise WriterFailed
    assert not target.exists()
    assert list(target.parent.iterdir()) == []  # no temporary file left behind either


def test_failed_write_keeps_the_previous_complete_file(tmp_path):
    target = tmp_path / "result.bin"
    io.write_bytes(target, b"complete")
    with pytest.raises(WriterFailed):
        with io.atomic_path(target) as tmp:
            tmp.write_bytes(b"partial")
            raise WriterFailed
    assert target.read_bytes() == b"complete"
    assert [p.name for p in tmp_path.iterdir()] == ["result.bin"]


def test_metrics_writer_dying_midway_leaves_no_file(tmp_path, monkeypatch):
    target = tmp_path / "metrics.parquet"

    def dies_halfway(table, where):
        where.write_bytes(b"PAR1 half a parquet file")
        raise WriterFailed

    monkeypatch.setattr(metrics.pq, "write_table", dies_halfway)
    with pytest.raises(WriterFailed):
        metrics.write(target, [ROW], **CONSTANTS)
    assert list(tmp_path.iterdir()) == []


def test_data_is_fsynced_before_the_rename_and_the_directory_after_it(tmp_path, monkeypatch):
    """The order that makes a write survive a power loss: the new file's data on disk before
    its name replaces the old one (else the final name may point at an empty file), then the
    directory, which holds the rename (else the rename itself may be lost)."""
    target = tmp_path / "result.bin"
    io.write_bytes(target, b"old")
    calls = []  # (what, inode, bytes in the file then)
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        info = os.fstat(fd)
        calls.append(("fsync", info.st_ino, info.st_size))
        real_fsync(fd)

    def replace(src, dst):
        calls.append(("replace", os.stat(src).st_ino, os.stat(src).st_size))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    io.write_bytes(target, b"new content")
    names = {target.stat().st_ino: "new file", tmp_path.stat().st_ino: "directory"}
    seen = [f"{what} {names.get(inode, 'other')}" for what, inode, _ in calls]
    assert seen == ["fsync new file", "replace new file", "fsync directory"]
    assert calls[0][2] == len(b"new content")  # fsynced once written, not while still empty


def test_write_json_is_sorted_and_complete(tmp_path):
    io.write_json(tmp_path / "spec.json", {"b": 1, "a": [1, 2]})
    assert (tmp_path / "spec.json").read_text() == '{\n  "a": [\n    1,\n    2\n  ],\n  "b": 1\n}\n'


# ---------------------------------------------------------------------------- checksummed files


@pytest.fixture
def checkpoint(tmp_path):
    path = tmp_path / "checkpoint.pt"
    io.save_torch(path, {"w": torch.arange(1000, dtype=torch.float32)})
    return path


def test_checkpoint_round_trips(checkpoint):
    assert torch.equal(io.load_torch(checkpoint)["w"], torch.arange(1000, dtype=torch.float32))


def test_truncated_checkpoint_is_refused_naming_file_and_fix(checkpoint):
    checkpoint.write_bytes(checkpoint.read_bytes()[:-100])
    with pytest.raises(io.CorruptFileError) as info:
        io.load_torch(checkpoint)
    message = str(info.value)
    assert str(checkpoint) in message and "truncated or altered" in message
    assert "rerun the workflow to rebuild it" in message


def test_altered_checkpoint_is_refused(checkpoint):
    data = bytearray(checkpoint.read_bytes())
    data[len(data) // 2] ^= 0xFF
    checkpoint.write_bytes(bytes(data))
    with pytest.raises(io.CorruptFileError, match="does not match its checksum"):
        io.load_torch(checkpoint)


def test_checkpoint_without_checksum_or_missing_is_refused(checkpoint, tmp_path):
    checkpoint.with_name("checkpoint.pt.sha256").unlink()
    with pytest.raises(io.CorruptFileError, match=r"checksum file checkpoint.pt.sha256 is missing"):
        io.load_torch(checkpoint)
    with pytest.raises(io.CorruptFileError, match="file not found; rerun the workflow"):
        io.load_torch(tmp_path / "absent.pt")


def test_file_with_a_valid_checksum_but_foreign_content_is_refused(tmp_path):
    path = tmp_path / "foreign.pt"
    io.write_bytes(path, b"not a torch file")
    io.write_text(path.with_name("foreign.pt.sha256"), io.sha256_of(b"not a torch file"))
    with pytest.raises(io.CorruptFileError, match="not a loadable tensor file"):
        io.load_torch(path)


def test_pickled_code_is_refused_on_load(tmp_path):
    """Only tensors and plain containers load (weights_only): a module object does not."""
    path = tmp_path / "module.pt"
    io.save_torch(path, nn.Linear(2, 2))
    with pytest.raises(io.CorruptFileError, match=str(path)):
        io.load_torch(path)


# ---------------------------------------------------------------------------- masks on disk


def test_mask_of_the_wrong_shape_is_refused(tmp_path):
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    path = tmp_path / "mask.pt"
    masks.save(path, masks.ones(nn.Sequential(nn.Linear(5, 3), nn.Linear(3, 2))))
    with pytest.raises(ValueError) as info:
        masks.load(path, model)
    message = str(info.value)
    assert str(path) in message and "(3, 5)" in message and "(3, 4)" in message
    masks.save(path, masks.ones(model))
    assert masks.density(masks.load(path, model)) == 1.0


def test_a_non_boolean_mask_is_refused(tmp_path):
    path = tmp_path / "mask.pt"
    io.save_torch(path, {"0": torch.ones(3, 4)})
    with pytest.raises(io.CorruptFileError, match="not a mask"):
        masks.load(path)


# ---------------------------------------------------------------------------- metrics

CONSTANTS = {"experiment": "e", "seed": 0, "round": 1, "branch": "main", "density": 0.8}
ROW = {"step": 0, "split": "test", "loss": 2.3, "accuracy": 0.1, "lr": 0.1, "status": "ok"}


def run_rows(val_losses: dict[int, float], test_accuracy: dict[int, float]) -> list[dict]:
    rows = []
    for step in sorted(val_losses):
        rows.append({**ROW, "step": step, "split": "val", "loss": val_losses[step]})
        rows.append({**ROW, "step": step, "split": "test", "accuracy": test_accuracy[step]})
        if step:
            rows.append({**ROW, "step": step, "split": "train", "loss": 1.0 / step})
    return rows


def test_metrics_round_trip_with_the_schema(tmp_path):
    path = tmp_path / "metrics.parquet"
    rows = run_rows({0: 2.0, 10: 1.0}, {0: 0.1, 10: 0.5})
    metrics.write(path, rows, **CONSTANTS)
    assert pq.read_table(path).schema.equals(metrics.SCHEMA)
    frame = metrics.read([path, path])
    assert len(frame) == 2 * len(rows)
    assert list(frame.columns) == metrics.FULL_SCHEMA.names  # read adds the optional top5 (null)
    assert frame.top5.isna().all()
    assert set(frame.density) == {0.8} and set(frame["round"]) == {1}


def test_corrupt_or_foreign_metrics_files_are_refused(tmp_path):
    good = tmp_path / "good.parquet"
    metrics.write(good, run_rows({0: 2.0}, {0: 0.1}), **CONSTANTS)
    truncated = tmp_path / "truncated.parquet"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    with pytest.raises(io.CorruptFileError) as info:
        metrics.read([good, truncated])
    assert str(truncated) in str(info.value) and "rerun" in str(info.value)
    foreign = tmp_path / "foreign.parquet"
    pq.write_table(pa.table({"step": [1, 2]}), foreign)
    with pytest.raises(io.CorruptFileError, match="columns differ from the metrics schema"):
        metrics.read([foreign])


def test_reading_no_files_gives_an_empty_table_with_the_columns():
    assert list(metrics.read([]).columns) == metrics.FULL_SCHEMA.names


def test_write_frame_keeps_the_schema(tmp_path):
    path = tmp_path / "all.parquet"
    metrics.write(path, run_rows({0: 2.0}, {0: 0.1}), **CONSTANTS)
    frame = metrics.read([path])
    metrics.write_frame(tmp_path / "copy.parquet", frame)
    assert pq.read_table(tmp_path / "copy.parquet").equals(pq.read_table(path))


def test_summary_early_stop_is_the_minimum_validation_loss_earliest_on_ties():
    rows = run_rows({0: 2.0, 10: 0.5, 20: 0.5, 30: 0.9}, {0: 0.1, 10: 0.7, 20: 0.8, 30: 0.6})
    frame = pd.DataFrame([{**CONSTANTS, **row} for row in rows])
    other = frame.assign(seed=1, status=["diverged" if i == 2 else "ok" for i in range(len(frame))])
    summary = metrics.summarize(pd.concat([frame, other])).set_index("seed")
    assert summary.loc[0, "early_stop_step"] == 10
    assert summary.loc[0, "early_stop_accuracy"] == 0.7
    assert (summary.loc[0, "final_step"], summary.loc[0, "final_accuracy"]) == (30, 0.6)
    assert summary.loc[0, "train_loss"] == pytest.approx(1 / 30)
    assert (summary.loc[0, "status"], summary.loc[1, "status"]) == ("ok", "diverged")


def test_summary_without_finite_validation_has_no_early_stop():
    """val_size 0 writes NaN validation rows: there is no early stop, and the summary says so
    (NaN) instead of silently reporting the last step."""
    rows = run_rows({0: math.nan, 10: math.nan}, {0: 0.1, 10: 0.4})
    summary = metrics.summarize(pd.DataFrame([{**CONSTANTS, **row} for row in rows]))
    assert math.isnan(summary.loc[0, "early_stop_step"]) and math.isnan(summary.loc[0, "early_stop_accuracy"])
    assert (summary.loc[0, "final_step"], summary.loc[0, "final_accuracy"]) == (10, 0.4)


def test_disk_full_gives_a_clear_error_and_no_partial_file(tmp_path):
    target = tmp_path / "checkpoint.pt"
    with pytest.raises(OSError, match=r"could not write .*checkpoint\.pt: No space left on device"):
        with io.atomic_path(target) as tmp:
            tmp.write_bytes(b"part of a checkpoint")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert list(tmp_path.iterdir()) == []


def test_unwritable_results_directory_is_a_one_line_cli_error(tmp_path):
    blocker = tmp_path / "results"
    blocker.write_text("a file where the results directory should be")
    process = subprocess.run(
        [sys.executable, "-m", "lotto", "prepare-data", "--dataset", "synthetic",
         "--out", str(blocker / "data" / "synthetic.pt")],
        capture_output=True, text=True, timeout=300,
    )
    assert process.returncode == 2
    assert "Traceback" not in process.stderr
    assert process.stderr.startswith("lotto prepare-data: error:") and "results" in process.stderr
    assert blocker.read_text().startswith("a file where")
