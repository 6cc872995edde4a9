"""What users write, read with suspicion: safe names and one strict YAML loader.

Every name that becomes a path or a word on a rule's command line (experiments, studies,
transfer sources, file stems used as names) passes `name_problem`; every YAML file lotto reads
(experiments, config and study files) goes through `load_yaml`, which refuses what PyYAML
would silently accept or crash on: duplicate keys (the last one would win), non-UTF-8 text,
nesting deep enough to exhaust the recursion limit and alias bombs (a few lines expanding to
millions of nodes). Each refusal is one `InputError` line naming the file, and where it helps
the line and key path; bad values are shown shortened (`shorten`).
"""

from __future__ import annotations

import os
import re
import reprlib
from pathlib import Path
from typing import Any

import yaml

from lotto.core.errors import InvalidValue

# The one definition of a safe name; the schemas' `pattern`s for names repeat it (tested).
# It starts with a letter, digit or underscore (never '-', which a command would read as an
# option, nor '.', so '.' and '..' are out) and has no path separator, whitespace, quote or
# shell metacharacter. Checked with fullmatch: `$` would also match before a final newline.
SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}$")
SAFE_NAME_RULE = "1-100 characters of A-Z a-z 0-9 _ . -, not starting with '.' or '-'"

MAX_DEPTH = 32  # experiment files nest 4 levels deep; config files 4
MAX_NODES = 100_000  # nodes after expanding aliases; the largest preset has ~200
SHOWN_CHARS = 80


class InputError(InvalidValue):
    """A file or name is refused; the message is one line per problem, naming the file."""


class DuplicateKeyError(InputError):
    """A key written twice: the rest of the file was read (by a lenient reader) and can be
    checked on."""


_SHORT_REPR = reprlib.Repr()
# at most 20^3 leaves of 80 characters are drawn, whatever the value's size
_SHORT_REPR.maxlevel, _SHORT_REPR.maxdict, _SHORT_REPR.maxlist, _SHORT_REPR.maxtuple = 3, 20, 20, 20
_SHORT_REPR.maxstring, _SHORT_REPR.maxother, _SHORT_REPR.maxlong = SHOWN_CHARS, SHOWN_CHARS, 40


def shorten(value: Any, limit: int = SHOWN_CHARS) -> str:
    """repr(value) in about `limit` characters, without building the whole repr (a value of
    YAML aliases can expand to gigabytes): a bad value is shown, never a whole file."""
    text = _SHORT_REPR.repr(value)
    if "..." not in text:
        text = repr(value)  # nothing was left out, so it is as short; and keeps the dict order
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def config_file_problem(path: str | Path) -> str | None:
    """Why an existing config file cannot be read strictly (None when it can, or is absent);
    the Snakefile asks before Snakemake's own reader, which would end in a traceback."""
    try:
        load_yaml(path, "config file")
    except InputError as err:
        return None if not Path(path).exists() else str(err)
    return None


def shown_path(path: str | Path) -> str:
    """A path as messages show it: as is, or quoted when it holds a newline or another
    unprintable character (a message is one line per problem)."""
    text = str(path)
    return text if text.isprintable() else repr(text)


def name_problem(name: Any) -> str | None:
    """Why `name` cannot name an experiment or a study (None when it can)."""
    if not isinstance(name, str) or not SAFE_NAME.fullmatch(name):
        return f"{shorten(name)} is not a safe name; allowed: {SAFE_NAME_RULE}"
    return None


def outside_results(paths: list[str]) -> list[str]:
    """The paths that would not land under results/ once normalised (none while every name is
    safe; checked at parse time all the same, since a rule writes there)."""
    return [p for p in paths if not os.path.normpath(p).startswith(f"results{os.sep}") or ".." in Path(p).parts]


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads 1e4 or 1.2e-3 without a dot as text; here they are numbers. Nesting is
    bounded while composing (PyYAML composes recursively)."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth = getattr(self, "_depth", 0) + 1
        if self._depth > MAX_DEPTH:
            mark = self.peek_event().start_mark
            raise InputError(f"line {mark.line + 1}: nested deeper than {MAX_DEPTH} levels")
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def shown_key(key: Any) -> str:
    """A key as messages show it: as written when it is short printable text, else shortened."""
    text = str(key)
    return text if text.isprintable() and len(text) <= 40 else shorten(key, 40)


def key_path(path: list[Any]) -> str:
    """The dotted path of a key, e.g. training.milestones[0]."""
    parts = [f"[{p}]" if isinstance(p, int) else f".{shown_key(p)}" for p in path]
    return "".join(parts).lstrip(".") or "(top level)"


def _check_tree(loader: _Loader, root: yaml.Node) -> None:
    """Refuse duplicate keys (line and key path) and documents whose aliases expand past
    MAX_NODES; stops at the first problem, so a bomb is refused after MAX_NODES visits."""
    visited = 0
    stack: list[tuple[yaml.Node, list[Any]]] = [(root, [])]
    while stack:
        node, path = stack.pop()
        visited += 1
        if visited > MAX_NODES:
            raise InputError(f"expands to more than {MAX_NODES} values (YAML aliases); write the values out")
        if len(path) > MAX_DEPTH:  # reached through aliases, possibly a cycle
            raise InputError(f"nested deeper than {MAX_DEPTH} levels (through YAML aliases)")
        if isinstance(node, yaml.SequenceNode):
            stack.extend((child, [*path, i]) for i, child in enumerate(node.value))
        elif isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, value_node in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    stack.append((value_node, path))
                    continue
                key = loader.construct_object(key_node) if isinstance(key_node, yaml.ScalarNode) else None
                line = key_node.start_mark.line + 1
                if key is not None and key in seen:
                    raise DuplicateKeyError(f"line {line}: duplicate key {key_path([*path, key])} "
                                     f"(first on line {seen[key]}); keep one")
                if key is not None:
                    seen[key] = line
                stack.append((value_node, [*path, key]))


def parse_yaml(text: str, source: str) -> Any:
    """Parse YAML text strictly (see the module doc); problems raise InputError naming `source`."""
    if "\x00" in text:
        raise InputError(f"{source}: contains NUL characters; save it as UTF-8 (UTF-16/32 are not read)")
    loader = _Loader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return None
        _check_tree(loader, root)
        return loader.construct_document(root)
    except InputError as err:
        raise type(err)(f"{source}: {err}") from None
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = " ".join(filter(None, (err.context, err.problem)))
        raise InputError(f"{source}: not valid YAML: {where}{problem}") from None
    except yaml.YAMLError as err:
        raise InputError(f"{source}: not valid YAML: {' '.join(str(err).split())}") from None
    finally:
        loader.dispose()


def load_yaml(path: str | Path, what: str = "file") -> Any:
    """Read and parse a YAML file strictly; a missing file, a directory, unreadable or non-UTF-8
    bytes are one InputError line naming it (`what` says what the file should be)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{shown_path(path)}: {what} not found") from None
    except IsADirectoryError:
        raise InputError(f"{shown_path(path)}: is a directory; expected a YAML {what}") from None
    except OSError as err:
        raise InputError(f"{shown_path(path)}: cannot read the {what}: {err.strerror or err}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise InputError(f"{shown_path(path)}: not UTF-8 (byte {err.start}: {raw[err.start:err.start + 1]!r}); "
                         "save it as UTF-8") from None
    return parse_yaml(text, shown_path(path))
