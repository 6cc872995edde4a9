"""envs/lotto.yaml stays consistent with the package and the rules.

conda cannot be reached from the development machine, so the environment is never built
here; these checks catch the drift that would break `--software-deployment-method conda`
on a machine where it can: pins that differ from pyproject.toml, a rule without an env,
an env path that does not resolve.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
ENV_FILE = REPO / "envs" / "lotto.yaml"
WORKFLOW_FILES = [REPO / "Snakefile", *sorted((REPO / "rules").glob("*.smk"))]
# Rules that run something; input-only target rules (all, figures, ...) run nothing.
ACTIONS = ("shell", "script", "notebook", "wrapper")

_RULE = re.compile(r"^(?:rule|checkpoint) (\w+):", re.M)
_DIRECTIVE = re.compile(r"^    (\w+):(.*)$")


def _project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def _env() -> dict:
    return yaml.safe_load(ENV_FILE.read_text())


def _conda_and_pip(env: dict) -> tuple[dict[str, str], list[str]]:
    """The env's conda packages (name -> version spec) and its pip requirement lines."""
    conda, pip = {}, []
    for entry in env["dependencies"]:
        if isinstance(entry, dict):
            pip += entry["pip"]
        else:
            name, _, version = entry.partition("=")
            conda[name] = version
    return conda, pip


def _pins(requirements: list[str]) -> dict[str, SpecifierSet]:
    pins = {}
    for line in requirements:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        assert name not in pins, f"{name} is listed twice: {requirements}"
        pins[name] = requirement.specifier
    return pins


def test_env_pins_equal_pyproject_dependencies():
    _, pip = _conda_and_pip(_env())
    packages = [line for line in pip if not line.startswith("-e ")]
    assert _pins(packages) == _pins(_project()["dependencies"])


def test_env_installs_this_package_from_the_repository_root():
    """Rules run `python -m lotto`, so the env must contain lotto itself (editable)."""
    _, pip = _conda_and_pip(_env())
    editable = [line.removeprefix("-e ").strip() for line in pip if line.startswith("-e ")]
    assert len(editable) == 1, pip
    assert (ENV_FILE.parent / editable[0]).resolve() == REPO


def test_env_python_satisfies_requires_python():
    conda, _ = _conda_and_pip(_env())
    assert "python" in conda, f"{ENV_FILE} pins no python"
    assert SpecifierSet(_project()["requires-python"]).contains(conda["python"] + ".0")


def _rules(path: Path) -> dict[str, dict[str, str]]:
    """Each rule of a snakefmt-formatted file: directive -> its text (same line and the lines
    indented below it)."""
    text = path.read_text()
    heads = list(_RULE.finditer(text))
    rules = {}
    for index, head in enumerate(heads):
        body = text[head.end() : heads[index + 1].start() if index + 1 < len(heads) else None]
        directives, current = {}, None
        for line in body.splitlines():
            if line and not line.startswith(" ") and not line.startswith("#"):
                break  # back at top level: the rule ended
            match = _DIRECTIVE.match(line)
            if match:
                current = match.group(1)
                directives[current] = match.group(2).strip()
            elif current and line.startswith("        "):
                directives[current] += " " + line.strip()
        rules[head.group(1)] = directives
    return rules


WORKFLOW_RULES = [
    (path, name, directives) for path in WORKFLOW_FILES for name, directives in _rules(path).items()
]


def test_rules_were_found():
    """The parser sees the training rules, so the checks below do check something."""
    names = {name for _, name, _ in WORKFLOW_RULES}
    assert {"dense_round", "prune_round", "control_branch", "collect"} <= names, names


@pytest.mark.parametrize(
    "path, rule, directives",
    [entry for entry in WORKFLOW_RULES if any(action in entry[2] for action in ACTIONS)],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_every_rule_that_runs_something_names_the_conda_env(path, rule, directives):
    assert "conda" in directives, f"{path.name}: rule {rule} has no conda: directive"
    env_path = (path.parent / directives["conda"].strip().strip(",").strip("\"'")).resolve()
    assert env_path == ENV_FILE, f"{path.name}: rule {rule} uses {env_path}, not {ENV_FILE}"
