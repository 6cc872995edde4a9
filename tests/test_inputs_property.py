"""Property: hostile and odd input files are refused before any job, with one clean message.

The categories of issue 13, each a hypothesis strategy writing real files into a temp folder
and reading them through the library's one loader (lotto.core.spec.load_experiment, or for config
options the config schema): shell metacharacters, path components and newlines in names and
file stems; duplicate keys at every depth; integers at and past int64; Latin-1, UTF-16/32 and
invalid bytes; deep nesting and alias bombs; directories and missing files; NaN in plot options.
Every case must raise SpecError whose lines each name the file, with no traceback, each line
short (bad values are shortened), quickly, and nothing may be written next to the file.
A handful of the same files then go through `python -m lotto validate` and a Snakemake dry run
(tests/test_workflow_inputs.py).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from test_spec_property import BASE

from lotto.core.inputs import MAX_DEPTH, MAX_NODES, SAFE_NAME, name_problem, shown_path
from lotto.core.spec import SpecError, load_experiment, validate_document

REPO = Path(__file__).resolve().parents[1]
CONFIG_SCHEMA = yaml.safe_load((REPO / "config/schema/config.schema.yaml").read_text())
SETTINGS = settings(max_examples=45, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])
LONGEST_LINE = 400  # a refusal line: file, key path, shortened value, what is allowed


def emit(node: Any, indent: int = 0, duplicate: tuple = (), path: tuple = (), again: Any = 1) -> str:
    """Block-style YAML of a JSON-like document (leaves as JSON, which YAML reads); the key at
    `duplicate` is written twice, the second time with the value `again`."""
    pad = "  " * indent
    if not isinstance(node, dict):
        return json.dumps(node)
    lines = []
    for key, value in node.items():
        if isinstance(value, dict) and value:
            lines.append(f"{pad}{key}:\n{emit(value, indent + 1, duplicate, (*path, key), again)}")
        else:
            lines.append(f"{pad}{key}: {json.dumps(value)}")
        if (*path, key) == duplicate:
            lines.append(f"{pad}{key}: {json.dumps(again)}")
    return "\n".join(lines)


BASE_TEXT = emit(BASE) + "\n"


def write(folder: Path, stem: str, data: str | bytes) -> Path:
    path = folder / f"{stem}.yaml"
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def assert_refused(path: Path, *expected: str, reader=load_experiment, seconds: float = 2.0) -> str:
    """`reader(path)` raises SpecError: every line names the file, is short and has no traceback;
    the folder holds nothing new; it took under `seconds`."""
    before = sorted(p.name for p in path.parent.iterdir())
    start = time.perf_counter()
    with pytest.raises(SpecError) as info:
        reader(path)
    took = time.perf_counter() - start
    message = str(info.value)
    assert took < seconds, f"{took:.2f} s to refuse {path.name}"
    for line in message.splitlines():
        assert line.startswith(f"{shown_path(path)}: "), f"line does not name the file: {line!r}"
        assert len(line) <= LONGEST_LINE, f"{len(line)} chars: {line[:200]!r}..."
    assert "Traceback" not in message and 'File "' not in message
    for text in expected:
        assert text in message, f"{text!r} not in {message!r}"
    assert sorted(p.name for p in path.parent.iterdir()) == before, "something was written"
    return message


@pytest.fixture
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("inputs")


# ------------------------------------------------------------------ names and file stems

SHELL = "$`;|&<>()[]{}*?!~#'\"\\ \t\n\r"
UNSAFE_NAMES = st.one_of(
    st.sampled_from([".", "..", "../x", "a/b", "/etc", "-rf", ".hidden", "x$(echo pwned)",
                     "a;rm -rf b", "foo\n", "a b", "`id`", "x" * 101, "é", "a\x00b"]),
    st.builds("{}{}{}".format, st.text("ab1_", max_size=4), st.text(SHELL + "/", min_size=1,
                                                                    max_size=3),
              st.text("ab1_.-", max_size=4)),
)


@SETTINGS
@given(name=UNSAFE_NAMES, where=st.sampled_from(["name", "stem", "transfer.from", "study"]))
def test_unsafe_names_are_refused(folder, name, where):
    event(where)
    assert name_problem(name) is not None
    if where == "study":  # config studies: the schema's pattern or lotto's full match
        config = {"experiments": ["a"], "studies": [{"name": name, "kind": "accuracy",
                                                     "experiments": ["a"]}]}
        try:
            validate_document(config, "config.yaml", CONFIG_SCHEMA)
        except SpecError as err:
            assert "config.yaml: studies[0].name: " in str(err)
        else:  # only the newline `$` lets through; lotto's full match (above) refuses it
            assert name.endswith("\n")
        return
    if where == "stem":
        if "/" in name or "\x00" in name or name in (".", ".."):
            return  # no file can have this stem; the config entry is then a path elsewhere
        path = write(folder, name, emit({k: v for k, v in BASE.items() if k != "name"}) + "\n")
        assert_refused(path, "name: missing, and the file stem", "is not a safe name")
        return
    doc = dict(BASE, name=name) if where == "name" else dict(
        BASE, transfer={"from": name}, branches=["transfer"])
    path = write(folder, "exp", emit(doc) + "\n")
    assert_refused(path, f"{where}: ", "safe name")


def test_the_schemas_name_patterns_are_the_safe_name_rule():
    experiment = yaml.safe_load((REPO / "lotto/schema/experiment.schema.yaml").read_text())
    patterns = {experiment["properties"]["name"]["pattern"],
                experiment["properties"]["transfer"]["properties"]["from"]["pattern"],
                CONFIG_SCHEMA["properties"]["studies"]["items"]["properties"]["name"]["pattern"]}
    assert patterns == {SAFE_NAME.pattern}


# ------------------------------------------------------------------ duplicate keys


def mapping_paths(node: dict, path: tuple = ()) -> list[tuple]:
    out = []
    for key, value in node.items():
        out.append((*path, key))
        if isinstance(value, dict):
            out += mapping_paths(value, (*path, key))
    return out


@SETTINGS
@given(duplicate=st.sampled_from(mapping_paths(BASE)),
       again=st.one_of(st.integers(), st.text("abc", max_size=3), st.just({"lr": 0.8})))
def test_duplicate_keys_are_refused_at_every_depth(folder, duplicate, again):
    event(f"depth {len(duplicate)}")
    path = write(folder, "dup", emit(BASE, duplicate=duplicate, again=again) + "\n")
    assert_refused(path, f"duplicate key {'.'.join(duplicate)} ", "line ")


# ------------------------------------------------------------------ integers past int64

BIG_INTEGERS = st.one_of(st.sampled_from([2**31, 2**63 - 1, 2**63, 2**64, 10**30, 10**400]),
                         st.integers(2**31, 2**80))
INTEGER_KEYS = [("seeds", 0), ("dataset", "val_size"), ("dataset", "labels", 0),
                ("dataset", "synthetic", "n_train"), ("dataset", "synthetic", "n_test"),
                ("dataset", "synthetic", "num_classes"), ("dataset", "synthetic", "seed"),
                ("dataset", "synthetic", "shape", 1), ("training", "batch_size"),
                ("training", "duration"), ("training", "eval_every"), ("training", "warmup"),
                ("training", "checkpoint_every"), ("pruning", "rounds"), ("model", "width")]


def set_path(doc: Any, path: tuple, value: Any) -> Any:
    doc = json.loads(json.dumps(doc))
    node = doc
    for key in path[:-1]:
        node = node.setdefault(key, {}) if isinstance(node, dict) else node[key]
    if isinstance(node, list) and path[-1] >= len(node):
        node.append(value)
    else:
        node[path[-1]] = value
    return doc


@SETTINGS
@given(key=st.sampled_from(INTEGER_KEYS), value=BIG_INTEGERS,
       form=st.sampled_from(["int", "it", "ep", "float"]))
def test_integers_at_and_past_int64_are_refused(folder, key, value, form):
    event(form)
    if key[0] == "dataset" and key[1] == "labels":
        base = set_path(BASE, ("dataset", "labels"), [0])
    else:
        base = BASE
    step = key in [("training", k) for k in ("duration", "eval_every", "warmup", "checkpoint_every")]
    shown: Any = value
    if form in ("it", "ep") and step:
        shown = f"{value}{form}"
    elif form == "float" and value < 10**300:
        shown = float(value)
    path = write(folder, "big", emit(set_path(base, key, shown)) + "\n")
    where = "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in key).lstrip(".")
    assert_refused(path, where)


# ------------------------------------------------------------------ encodings

def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


ACCENTED = st.text(st.sampled_from("éüßçñøÅæ€中"), min_size=1, max_size=6)


@SETTINGS
@given(text=ACCENTED, encoding=st.sampled_from(["latin-1", "cp1252", "utf-16", "utf-16-le",
                                                "utf-16-be", "utf-32", "invalid bytes"]),
       at=st.integers(0, len(BASE_TEXT)))
@example(text="Å€", encoding="cp1252", at=0)  # cp1252 bytes C5 80: valid UTF-8 on their own
def test_files_that_are_not_utf8_are_refused(folder, text, encoding, at):
    event(encoding)
    doc = BASE_TEXT + f"description: {json.dumps(text, ensure_ascii=False)}\n"
    if encoding == "invalid bytes":
        data = doc[:at].encode() + b"\xff\xc3\x28\x80" + doc[at:].encode()
    else:
        data = doc.encode(encoding, errors="replace")
        if encoding in ("latin-1", "cp1252") and _is_utf8(data):
            data += b"# \xe9\n"  # the bytes were valid UTF-8 too (ASCII, or e.g. 'Å€' in cp1252)
    path = write(folder, "enc", data)
    message = assert_refused(path)
    assert "UTF-8" in message


# ------------------------------------------------------------------ nesting and aliases


@st.composite
def deep_documents(draw) -> str:
    style = draw(st.sampled_from(["flow list", "flow map", "block map"]))
    depth = draw(st.integers(MAX_DEPTH + 1, 200 if style == "block map" else 3000))
    if style == "flow list":
        value = "[" * depth + "]" * depth
    elif style == "flow map":
        value = "{a: " * depth + "1" + "}" * depth
    else:
        return BASE_TEXT + "extra:\n" + "".join(f"{'  ' * (i + 1)}k{i}:\n" for i in range(depth)) \
            + "  " * (depth + 1) + "1\n"
    return BASE_TEXT + f"{draw(st.sampled_from(['extra', 'more']))}: {value}\n"


@st.composite
def alias_bombs(draw) -> str:
    fanout = draw(st.integers(4, 12))
    fewest = math.ceil(math.log(MAX_NODES + 1) / math.log(fanout))
    levels = draw(st.integers(fewest, fewest + 3))
    lines = ['a0: &a0 ["lol"]']
    for level in range(1, levels + 1):
        refs = ", ".join([f"*a{level - 1}"] * fanout)
        lines.append(f"a{level}: &a{level} [{refs}]")
    key = draw(st.sampled_from(["extra", "bomb"]))
    return BASE_TEXT + "x_anchors:\n" + "".join(f"  {line}\n" for line in lines) + f"{key}: *a{levels}\n"


@SETTINGS
@given(text=st.one_of(deep_documents(), alias_bombs()))
def test_deep_nesting_and_alias_bombs_are_refused_quickly(folder, text):
    path = write(folder, "deep", text)
    message = assert_refused(path, seconds=1.0)
    assert "nested deeper" in message or "expands to more than" in message


def test_recursive_alias_is_refused(folder):
    path = write(folder, "loop", BASE_TEXT + "extra: &a [*a]\n")
    assert_refused(path, "nested deeper")


# ------------------------------------------------------------------ directories, missing files


@SETTINGS
@given(kind=st.sampled_from(["directory", "missing", "dangling link", "directory link"]),
       stem=st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True))
def test_directories_and_missing_files_are_refused(folder, kind, stem):
    event(kind)
    path = folder / f"{stem}.yaml"
    if path.exists() or path.is_symlink():
        return
    if kind == "directory":
        path.mkdir()
    elif kind == "dangling link":
        path.symlink_to(folder / "nowhere.yaml")
    elif kind == "directory link":
        (folder / f"{stem}_dir").mkdir()
        path.symlink_to(folder / f"{stem}_dir")
    expected = "not found" if kind in ("missing", "dangling link") else "is a directory"
    assert_refused(path, expected)


# ------------------------------------------------------------------ NaN in plot options

NON_FINITE = st.sampled_from([".nan", ".NaN", ".inf", "-.inf", ".Inf"])


@SETTINGS
@given(values=st.lists(st.one_of(NON_FINITE, st.sampled_from(["1.0", "0.5", "0.1"])), min_size=1,
                       max_size=5).filter(lambda v: any(x.startswith(("-.", ".")) for x in v)))
def test_non_finite_plot_densities_are_refused(folder, values):
    text = f"experiments: [a]\nplots:\n  curve_densities: [{', '.join(values)}]\n"
    path = write(folder, "config", text)

    def read_config(p: Path) -> None:
        from lotto.core.inputs import load_yaml

        validate_document(load_yaml(p), str(p), CONFIG_SCHEMA)

    message = assert_refused(path, "plots.curve_densities[", reader=read_config)
    bad = [i for i, v in enumerate(values) if v.startswith(("-.", "."))]
    assert all(f"curve_densities[{i}]" in message for i in bad)
    assert "finite" in message
