"""lotto.core.data_cache: the splits a job maps from the splits file are lotto.core.data.load's, bit for
bit, and a splits file made from other content, options or another prepared file is never used.
Splits files of other content go when a job writes a new one or the prepare verb rewrites the
prepared file (in-process and through Snakemake); those of other options stay, and no other file
goes; `lotto cache` lists and clears only splits files. About 15 s in all (the Snakemake test ~13 s)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from workflow_util import TINY_EXPERIMENT, Workdir

from lotto import cli
from lotto.core import data, data_cache, io, layout

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


def replace_content(prepared: Path, tmp_path: Path, seed: int = 7) -> None:
    """Rebuild `prepared` with other content, as the workflow replaces it: a new file, then its sidecar."""
    other = tmp_path / "other.pt"
    data.prepare("synthetic", other, synthetic_options={"seed": seed})
    os.replace(other, prepared)
    os.replace(f"{other}.sha256", f"{prepared}.sha256")


def test_a_rebuilt_prepared_file_with_other_content_misses(prepared, tmp_path):
    data_cache.load_splits(prepared, val_size=200)
    replace_content(prepared, tmp_path)
    assert_same_splits(data_cache.load_splits(prepared, val_size=200), data.load(prepared, val_size=200))


def splits_names(folder: Path) -> set[str]:
    return {p.name for p in folder.glob("*.splits-*.pt")}


def not_splits_files(prepared: Path, *, of_other_prepared_files: bool = True) -> list[Path]:
    """Files beside `prepared` that are not its splits files, though some look alike: each must survive."""
    names = ["notes.txt", "data.pt.splits-mine.pt", "data.pt.splits-0123456789abcdef-0123456789abcdef.pt.bak",
             "data.pt.splits-0123456789ABCDEF-0123456789abcdef.pt", "data.pt.splits-0123456789abcdef-01.pt"]
    if of_other_prepared_files:  # stale ones too, but not for `prepared` to remove
        names += ["xdata.pt.splits-0123456789abcdef-0123456789abcdef.pt", "other.pt.splits-0123456789abcdef.pt"]
    for name in names:
        (prepared.parent / name).write_text("a user's file")
    return [prepared.parent / name for name in names]


def test_a_new_content_removes_the_old_contents_splits_files_and_nothing_else(prepared, tmp_path):
    data_cache.load_splits(prepared, val_size=200)
    data_cache.load_splits(prepared, val_size=100)
    old = splits_names(prepared.parent)
    legacy = prepared.with_name("data.pt.splits-0123456789abcdef.pt")  # named before the content prefix
    legacy.write_bytes(b"an old splits file")
    others = not_splits_files(prepared)
    replace_content(prepared, tmp_path)
    data_cache.load_splits(prepared, val_size=100)  # writes one, removes the old content's
    first = splits_names(prepared.parent) - {p.name for p in others}
    assert len(first) == 1 and not first & old and not legacy.exists()
    data_cache.load_splits(prepared, val_size=200)  # another option of the new content: both stay
    assert len(splits_names(prepared.parent) - {p.name for p in others} - first) == 1
    assert first <= splits_names(prepared.parent)
    assert all(p.read_text() == "a user's file" for p in others)


def test_a_hit_removes_nothing(prepared, tmp_path, monkeypatch):
    data_cache.load_splits(prepared, val_size=200)
    calls = []
    monkeypatch.setattr(data_cache, "remove_stale", lambda *a: calls.append(a))
    data_cache.load_splits(prepared, val_size=200)
    assert calls == []  # job start-up stays one map: no directory scan on a hit


def prepare_verb(out: Path, seed: int) -> None:
    assert cli.main(["prepare-data", "--dataset", "synthetic", "--synthetic", json.dumps({"seed": seed}),
                     "--out", str(out)]) == 0


def test_the_prepare_verb_removes_the_splits_of_content_it_replaced(tmp_path):
    prepared = tmp_path / "data.pt"
    prepare_verb(prepared, seed=0)
    data_cache.load_splits(prepared, val_size=200)
    data_cache.load_splits(prepared, val_size=100)
    kept = splits_names(tmp_path)
    others = not_splits_files(prepared)
    prepare_verb(prepared, seed=0)  # the same content again: its splits files can still hit
    assert splits_names(tmp_path) >= kept
    prepare_verb(prepared, seed=1)
    assert not splits_names(tmp_path) & kept
    assert all(p.read_text() == "a user's file" for p in others)


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


def test_the_cache_verb_lists_and_clears_only_splits_files(tmp_path, capsys):
    folder = Path(layout.data_dir(str(tmp_path)))
    folder.mkdir()
    prepared = folder / "data.pt"
    prepare_verb(prepared, seed=0)
    data_cache.load_splits(prepared, val_size=200)
    (current,) = folder.glob("data.pt.splits-*.pt")
    stale = prepared.with_name(f"data.pt.splits-{'0' * 16}-{'1' * 16}.pt")
    orphan = prepared.with_name(f"gone.pt.splits-{'0' * 16}-{'1' * 16}.pt")
    for path in (stale, orphan):
        path.write_bytes(b"x" * 1000)
    others = not_splits_files(prepared, of_other_prepared_files=False) + [prepared, prepared.with_name("data.pt.sha256")]
    capsys.readouterr()

    assert cli.main(["cache", "--results", str(tmp_path)]) == 0
    listed = capsys.readouterr().out.splitlines()
    states = {line.split()[-1]: line.split()[2] for line in listed[:-1]}
    assert states == {str(current): "current", str(stale): "stale", str(orphan): "orphan"}
    total = current.stat().st_size + 2000
    assert listed[-1].split()[:2] == [f"{total / 1e6:.1f}", "MB"] and "3 splits file(s)" in listed[-1]

    before = {p: p.read_bytes() for p in others}
    assert cli.main(["cache", "--results", str(tmp_path), "--clear"]) == 0
    assert capsys.readouterr().out.startswith(f"removed 3 splits file(s), {total / 1e6:.1f} MB")
    assert sorted(folder.iterdir()) == sorted(others)
    assert {p: p.read_bytes() for p in others} == before
    assert cli.main(["cache", "--results", str(tmp_path)]) == 0
    assert capsys.readouterr().out.startswith("no splits files in")


@pytest.mark.workflow
def test_the_prepare_data_job_removes_stale_splits_files_through_snakemake(tmp_path):
    """The prepare_data rule of the workflow rewrites the prepared file; splits files of other content
    go, those of its content and a user's files stay."""
    work = Workdir(tmp_path)
    work.write_config([work.write_experiment("tiny", TINY_EXPERIMENT)])
    work.snakemake("--until", "prepare_data").check()
    (prepared,) = (work.results / "data").glob("*.pt")
    data_cache.load_splits(prepared, val_size=TINY_EXPERIMENT["dataset"]["val_size"])
    (current,) = prepared.parent.glob("*.splits-*.pt")
    stale = prepared.with_name(f"{prepared.name}.splits-{'0' * 16}-{'1' * 16}.pt")
    stale.write_bytes(b"made from other content")
    user = prepared.with_name("notes.splits-of-mine.pt")
    user.write_text("a user's file")
    work.snakemake("--until", "prepare_data", "--forcerun", "prepare_data").check()
    assert current.exists() and user.read_text() == "a user's file" and not stale.exists()
    log = (work.results / "logs" / "data" / f"{prepared.stem}.log").read_text()
    assert f"removed stale splits file results/data/{stale.name}" in log
