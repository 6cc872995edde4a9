"""Helpers for the workflow tests: real Snakemake runs of tiny synthetic experiments in temp dirs.

Snakemake runs the repository's Snakefile with the temp dir as working directory
(`-s Snakefile --directory DIR --configfile DIR/config.yaml`), so `results/`, `.snakemake/`
and experiment files given as paths all live in DIR and the checkout is never touched.
Jobs call `python` from PATH: the interpreter running the tests (the project's venv) comes
first there.

What ran is read from Snakemake's own output: each started job is announced as a block
`rule NAME:` (or `localrule NAME:`) with its `output:`, `jobid:` and `wildcards:` lines, and
each finished one as `Finished jobid: N (Rule: NAME)`.
"""

from __future__ import annotations

import copy
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO / "Snakefile"
VENV_BIN = Path(sys.executable).parent
ARTIFACTS = REPO / "tests" / "artifacts"
CORES = 2

# The tiny experiment of the workflow issue: 2 seeds x 3 rounds x 2 branches.
TINY_EXPERIMENT: dict[str, Any] = {
    "dataset": {"name": "synthetic", "val_size": 200},
    "model": {"name": "lenet_300_100"},
    "training": {
        "optimizer": "adam",
        "lr": 0.002,
        "batch_size": 32,
        "duration": 120,
        "eval_every": 40,
    },
    "pruning": {"rounds": 3, "rates": {"fc": 0.5}},
    "seeds": [0, 1],
    "branches": ["reinit", "random_mask"],
}


def experiment(base: dict[str, Any], **sections: dict[str, Any] | list | None) -> dict[str, Any]:
    """A copy of `base` with whole top-level keys replaced or (value None) removed,
    and dict sections merged key by key."""
    out = copy.deepcopy(base)
    for key, value in sections.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **copy.deepcopy(value)}
        else:
            out[key] = copy.deepcopy(value)
    return out


# The smallest chain that still has every kind of job: one seed, round 0, two pruned rounds
# and a control branch of each, in-round resume checkpoints every 10 of 60 iterations, on the
# CPU (bit-for-bit repeatable).
KILL_EXPERIMENT: dict[str, Any] = experiment(
    TINY_EXPERIMENT,
    training={"duration": 60, "eval_every": 20, "checkpoint_every": 10, "device": "cpu"},
    pruning={"rounds": 2},
    seeds=[0],
    branches=["random_mask"],
)
KILL_NAME = "kr"


@dataclass(frozen=True)
class Job:
    """One job Snakemake announced: its rule, id within that invocation, outputs, wildcards."""

    rule: str
    jobid: int
    outputs: tuple[str, ...]
    wildcards: dict[str, str] = field(default_factory=dict)


_JOB_HEADER = re.compile(r"^(?:local)?rule (\w+):$")
_FINISHED = re.compile(r"^Finished jobid: (\d+) \(Rule: (\w+)\)")


def parse_jobs(text: str) -> list[Job]:
    """Every job block in Snakemake's (dry-)run output, in order."""
    jobs, current = [], None
    for line in text.splitlines() + [""]:
        header = _JOB_HEADER.match(line)
        if header:
            current = {"rule": header.group(1), "jobid": None, "outputs": (), "wildcards": {}}
            continue
        if current is None:
            continue
        stripped = line.strip()
        if line.startswith("    ") and ":" in stripped:
            key, _, value = stripped.partition(": ")
            if key == "output":
                current["outputs"] = tuple(v.strip() for v in value.split(","))
            elif key == "jobid":
                current["jobid"] = int(value)
            elif key == "wildcards":
                current["wildcards"] = dict(item.split("=", 1) for item in value.split(", "))
            continue
        if current["jobid"] is not None:
            jobs.append(Job(**current))
        current = None
    return jobs


def finished_jobids(text: str) -> set[int]:
    return {int(m.group(1)) for m in map(_FINISHED.match, text.splitlines()) if m}


def job_stats(text: str) -> dict[str, int]:
    """Snakemake's `Job stats:` table (rule -> count, and 'total')."""
    lines = text.splitlines()
    try:
        start = lines.index("Job stats:")
    except ValueError:
        raise AssertionError(
            f"no 'Job stats:' table in Snakemake's output:\n{text[-3000:]}"
        ) from None
    counts = {}
    for line in lines[start + 3 :]:
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            break
        counts[parts[0]] = int(parts[1])
    return counts


def rule_counts(text: str) -> Counter:
    return Counter(job.rule for job in parse_jobs(text))


@dataclass
class Result:
    returncode: int
    output: str

    @property
    def jobs(self) -> list[Job]:
        return parse_jobs(self.output)

    def check(self) -> Result:
        assert self.returncode == 0, f"snakemake exited {self.returncode}:\n{self.output[-6000:]}"
        return self


def job_env() -> dict[str, str]:
    """The environment of a Snakemake run: the venv first on PATH, one thread per job."""
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["OMP_NUM_THREADS"] = "1"
    return env


class Workdir:
    """A temp working directory with experiment files and a config.yaml, run by Snakemake."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)

    @property
    def results(self) -> Path:
        return self.path / "results"

    def write_experiment(self, name: str, doc: dict[str, Any]) -> str:
        """Write experiments/<name>.yaml; returns the path the config names it by."""
        rel = f"experiments/{name}.yaml"
        (self.path / "experiments").mkdir(exist_ok=True)
        (self.path / rel).write_text(yaml.safe_dump(doc, sort_keys=False))
        return rel

    def write_config(self, experiments: list[str], **options: Any) -> None:
        doc = {"experiments": experiments, "use_gpu": False, **options}
        (self.path / "config.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))

    def command(self, *args: str) -> list[str]:
        return [
            sys.executable, "-m", "snakemake",
            "-s", str(SNAKEFILE),
            "--directory", str(self.path),
            "--configfile", str(self.path / "config.yaml"),
            "--cores", str(CORES),
            *args,
        ]  # fmt: skip

    def snakemake(self, *args: str, timeout: float = 900) -> Result:
        """Run snakemake to the end; stdout and stderr together."""
        proc = subprocess.run(
            self.command(*args),
            cwd=self.path,
            env=job_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
        )
        return Result(proc.returncode, proc.stdout)

    def start(self, log: Path, *args: str) -> subprocess.Popen:
        """Start snakemake in its own process group (so one killpg ends it and its jobs)."""
        with open(log, "w") as out:
            return subprocess.Popen(
                self.command(*args),
                cwd=self.path,
                env=job_env(),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def remove_stale_locks(self) -> None:
        """What `snakemake --unlock` does: a SIGKILLed run leaves its lock files behind."""
        for lock in (self.path / ".snakemake" / "locks").glob("*.lock"):
            lock.unlink()


def group_processes(pgid: int) -> list[tuple[int, list[str]]]:
    """Live (not zombie) processes of a process group: (pid, argv)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        state, group = fields[0], int(fields[2])
        if group == pgid and state != "Z":
            found.append((int(entry.name), [a.decode(errors="replace") for a in argv if a]))
    return found


def lotto_jobs_running(pgid: int) -> list[str]:
    """The `python -m lotto VERB` jobs of a process group, as 'VERB --round R' / '--kind K'."""
    jobs = []
    for _, argv in group_processes(pgid):
        if "-m" not in argv or argv[argv.index("-m") + 1 : argv.index("-m") + 2] != ["lotto"]:
            continue
        verb = argv[argv.index("-m") + 2] if len(argv) > argv.index("-m") + 2 else "?"
        detail = [
            f"{flag} {argv[argv.index(flag) + 1]}" for flag in ("--round", "--kind") if flag in argv
        ]
        jobs.append(" ".join([verb, *detail]))
    return sorted(jobs)


def kill_group(proc: subprocess.Popen, timeout: float = 30) -> None:
    """SIGKILL snakemake's whole process group and wait until none of it is alive."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=timeout)
    deadline = time.monotonic() + timeout
    while group_processes(proc.pid):
        assert time.monotonic() < deadline, f"processes of group {proc.pid} survived SIGKILL"
        time.sleep(0.05)


def files_under(root: Path, pattern: str) -> dict[str, bytes]:
    """Relative path -> content of the files matching `pattern` under `root`."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob(pattern))}


def mtimes(root: Path, paths: list[str]) -> dict[str, int]:
    return {p: (root / p).stat().st_mtime_ns for p in paths}


def assert_same_files(actual_root: Path, expected_root: Path, patterns: tuple[str, ...]) -> None:
    """Files matching `patterns` exist at the same relative paths and are byte-identical."""
    for pattern in patterns:
        actual, expected = files_under(actual_root, pattern), files_under(expected_root, pattern)
        assert sorted(actual) == sorted(expected), f"{pattern}: different files"
        differing = [name for name in expected if actual[name] != expected[name]]
        assert not differing, f"not byte-identical to the uninterrupted run: {differing}"


_REFERENCE: dict[str, Any] = {}


def start_kill_reference_run(base: Path) -> None:
    """Start the uninterrupted run of KILL_EXPERIMENT in the background, once per session, so
    that it can use the core a test leaves idle (the kill/resume trials mostly run one
    single-threaded process at a time); `kill_reference_run` waits for it."""
    if not _REFERENCE:
        work = kill_workdir(base)
        log = work.path / "reference.log"
        _REFERENCE["started"] = (work, log, work.start(log))


def kill_reference_run(base: Path) -> tuple[Workdir, Result]:
    """One uninterrupted run of KILL_EXPERIMENT (all targets) and its output, made once per
    test session and shared by the workflow and kill/resume tests; callers must not modify it."""
    if "run" not in _REFERENCE:
        start_kill_reference_run(base)
        work, log, proc = _REFERENCE.pop("started")
        try:
            proc.wait(timeout=900)
        finally:
            if proc.poll() is None:
                kill_group(proc)
        _REFERENCE["run"] = (work, Result(proc.returncode, log.read_text()).check())
    return _REFERENCE["run"]


def kill_workdir(path: Path) -> Workdir:
    work = Workdir(path)
    work.write_config([work.write_experiment(KILL_NAME, KILL_EXPERIMENT)])
    return work
