"""lotto.core.data_cache: the splits a job maps from the splits file are lotto.core.data.load's, bit for
bit, and a splits file made from other content, options or another prepared file is never used."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from lotto.core import data, data_cache, io

TENSORS = ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y")


@pytest.fixture
def prepared(synthetic_data, tmp_path) -> Path:
    """A private copy of the synthetic prepared dataset (tests here replace and corrupt it)."""
    path = tmp_path / "data.pt"
    shutil.copy(synthetic_data, path)
    shutil.copy(f"{synthetic_data}.sha256", f"{path}.sha256")
    return path


def assert_same_splits(got: data.Splits, expected: data.Splits) -> None:
    for name in TENSORS:
        a, b = getattr(got, name), getattr(expected, name)
        assert a.dtype == b.dtype and torch.equal(a, b), name
    assert (got.num_classes, got.input_shape, got.augment) == (
        expected.num_classes, expected.input_shape, expected.augment)


def no_load(*args, **kwargs):
    raise AssertionError("lotto.core.data.load ran: the splits file was not used")


OPTIONS = {"plain": {"val_size": 200}, "labels, half": {"val_size": 100, "labels": [1, 3, 5], "half": 1}}


@pytest.mark.parametrize("options", OPTIONS.values(), ids=OPTIONS.keys())
def test_a_hit_maps_exactly_what_load_computes_without_loading(prepared, monkeypatch, options):
    first = data_cache.load_splits(prepared, **options)
    assert_same_splits(first, data.load(prepared, **options))
    assert len(list(prepared.parent.glob("data.pt.splits-*.pt"))) == 1
    monkeypatch.setattr(data_cache, "load", no_load)
    assert_same_splits(data_cache.load_splits(prepared, **options), data.load(prepared, **options))


def test_other_options_use_another_file(prepared):
    data_cache.load_splits(prepared, val_size=200)
    data_cache.load_splits(prepared, val_size=100)
    data_cache.load_splits(prepared, val_size=100, labels=[0, 1])
    assert len(list(prepared.parent.glob("data.pt.splits-*.pt"))) == 3


def test_a_rebuilt_prepared_file_with_other_content_misses(prepared, tmp_path):
    data_cache.load_splits(prepared, val_size=200)
    other = tmp_path / "other.pt"
    data.prepare("synthetic", other, synthetic_options={"seed": 7})
    os.replace(other, prepared)  # as the workflow replaces it: a new file, then its sidecar
    os.replace(f"{other}.sha256", f"{prepared}.sha256")
    assert_same_splits(data_cache.load_splits(prepared, val_size=200), data.load(prepared, val_size=200))


def test_the_same_content_in_a_new_file_misses_and_is_rewritten(prepared, tmp_path, monkeypatch):
    """Identity is the file, not only its hash: a copy (new inode) is verified by load again."""
    data_cache.load_splits(prepared, val_size=200)
    copy = tmp_path / "copy.pt"
    shutil.copy(prepared, copy)
    os.replace(copy, prepared)
    calls = []
    monkeypatch.setattr(data_cache, "load", lambda *a, **k: calls.append(1) or data.load(*a, **k))
    data_cache.load_splits(prepared, val_size=200)
    data_cache.load_splits(prepared, val_size=200)
    assert calls == [1]  # missed once, then the rewritten file is used


def test_an_altered_prepared_file_is_refused_not_served_from_the_cache(prepared):
    data_cache.load_splits(prepared, val_size=200)
    raw = bytearray(prepared.read_bytes())
    raw[-100] ^= 0xFF
    with open(prepared, "r+b") as fh:  # in place: same inode, new mtime
        fh.write(raw)
    stat = prepared.stat()
    os.utime(prepared, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1000))
    with pytest.raises(io.CorruptFileError, match="does not match its checksum"):
        data_cache.load_splits(prepared, val_size=200)


@pytest.mark.parametrize("damage", ["truncate", "foreign"])
def test_an_unreadable_or_foreign_splits_file_is_a_miss_and_is_rewritten(prepared, damage):
    data_cache.load_splits(prepared, val_size=200)
    (cached,) = prepared.parent.glob("data.pt.splits-*.pt")
    if damage == "truncate":
        cached.write_bytes(cached.read_bytes()[:1000])
    else:
        torch.save({"format": data_cache.FORMAT, "train_x": torch.zeros(1)}, cached)
    assert_same_splits(data_cache.load_splits(prepared, val_size=200), data.load(prepared, val_size=200))
    assert data_cache._read(cached, data_cache._identity(prepared)) is not None  # rewritten whole


def test_nothing_is_written_when_the_prepared_file_changes_while_it_is_read(prepared, tmp_path,
                                                                             monkeypatch):
    other = tmp_path / "other.pt"
    data.prepare("synthetic", other, synthetic_options={"seed": 7})

    def load_then_replace(*args, **kwargs):
        splits = data.load(*args, **kwargs)
        os.replace(other, prepared)
        os.replace(f"{other}.sha256", f"{prepared}.sha256")
        return splits

    monkeypatch.setattr(data_cache, "load", load_then_replace)
    data_cache.load_splits(prepared, val_size=200)
    assert not list(prepared.parent.glob("data.pt.splits-*.pt"))
