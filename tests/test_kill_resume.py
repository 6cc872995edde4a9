"""Reliability (issue "Reliability", item 2): SIGKILL the whole Snakemake run again and again.

One working directory runs the small kill/resume experiment (one seed, round 0, two pruned
rounds, a control branch per round, figures, tables, report). Each trial restarts the run
with `--rerun-incomplete` (after clearing the lock a killed run leaves: once with
`snakemake --unlock`, as the README says, else by removing the lock files as it does)
and SIGKILLs its whole process group at the trial's moment. The moments are one of each kind
of interruption, not many of one kind (each restart costs Snakemake's start-up): training just
after an in-round checkpoint (round 0, a pruned round, a control branch), between a
checkpoint's checksum and its file, between a round's outputs, two jobs at once (the branch and
the next round run side by side), while plotting and while writing the report. A last run is
left to finish. Then:

- every planned kill happened, with the job it aimed at running (the moment was really hit)
  and, when killed while training, its outputs not yet written;
- each job killed after a checkpoint resumed from it on the next run (its log says so);
- the run completed, with nothing left marked incomplete and no resume file left behind;
- no job Snakemake had logged as finished was started again, and its files kept their mtimes;
- metrics, checkpoints, masks and tables equal an uninterrupted run's byte for byte.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from workflow_util import (
    ARTIFACTS,
    KILL_NAME,
    Job,
    Workdir,
    assert_same_files,
    finished_jobids,
    kill_group,
    kill_reference_run,
    kill_workdir,
    lotto_jobs_running,
    mtimes,
    parse_jobs,
    start_kill_reference_run,
)

from lotto.core.spec import load_experiment

pytestmark = pytest.mark.workflow

DELAY_SEED = 2024  # the random parts of the kill moments; fixed, so a failure replays them


def stage(job: Job) -> int:
    """How far along the run a job is: data/specs, round 0, round r, its branch, aggregation."""
    if job.rule in ("prune_round", "control_branch"):
        return 2 * int(job.wildcards["round"]) + (job.rule == "control_branch")
    return {
        "prepare_data": 0, "dense_spec": 0, "experiment_spec": 0, "dense_round": 1,
        "collect": 6, "render_figure": 7, "render_tables": 7, "html_report": 8, "all": 9,
    }[job.rule]  # fmt: skip


@dataclass(frozen=True)
class KillPoint:
    """Kill once `watch` (a file of the job `expect` names) is written anew; without `watch`,
    once a job of `stage` (or a later one) has started, plus a random wait of up to
    `max_delay` seconds. `expect`: a job that must be running when the kill lands, `absent`:
    its output that must not exist yet; `resumes`: the log of the job that must resume from
    its checkpoint on the next run; `unlock`: start this trial with `snakemake --unlock`."""

    moment: str
    stage: int
    watch: str | None = None
    max_delay: float = 0.0
    expect: str | None = None
    absent: str | None = None
    resumes: str | None = None
    unlock: bool = False


# In DAG order; each watched file is still ahead of the run when its trial starts.
PLAN = [
    KillPoint(
        "round 0 training (after a checkpoint)", 1, "{dense}/resume.pt",
        expect="round --round 0", absent="{dense}/metrics.parquet", resumes="{dense_log}",
    ),
    # the next checkpoint's checksum is written, the file not yet replaced
    KillPoint(
        "round 0 writing a checkpoint", 1, "{dense}/resume.pt.sha256", expect="round --round 0"
    ),
    KillPoint(
        "round 1 training (after a checkpoint)", 2, "{chain}/round1/resume.pt",
        expect="round --round 1", absent="{chain}/round1/metrics.parquet",
        resumes="{chain_log}/round1.log",
    ),
    # mask and checkpoint written, metrics not yet
    KillPoint(
        "round 1 writing outputs", 2, "{chain}/round1/checkpoint.pt", expect="round --round 1",
        unlock=True,
    ),
    # round 1's branch and round 2 start together and run side by side (2 cores)
    KillPoint(
        "round 1 branch and round 2 training", 3, "{chain}/round1/random_mask/resume.pt",
        expect="branch --round 1 --kind random_mask",
        resumes="{chain_log}/round1-random_mask.log",
    ),
    KillPoint("plotting figures and tables", 7, max_delay=1.5),
    KillPoint("writing the report", 8, max_delay=1.0),
]  # fmt: skip


@dataclass
class Trial:
    number: int
    moment: str
    seconds: float
    running: str
    outcome: str


def _mtime(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return None


def run_trial(
    work: Workdir, number: int, point: KillPoint | None, delay: float, watch: Path | None
) -> tuple[Trial, str]:
    """One restart of the run, killed at `point` (None: left to finish); returns its log.
    A watched moment fires on its file alone: a later job starting (the branch and the next
    round start together) must not fire it early; a moment that never comes lets the run
    complete, which the test reports."""
    if point is not None and point.unlock:
        work.snakemake("--unlock").check()
    else:
        work.remove_stale_locks()
    log = work.path / f"trial-{number:02d}.log"
    watched_before = _mtime(watch) if watch else None
    start = time.monotonic()
    proc = work.start(log, "--rerun-incomplete")
    fire_at, size, jobs = None, -1, []
    while proc.poll() is None:
        now = time.monotonic()
        if point is not None and fire_at is None:
            if watch is not None:
                fired = _mtime(watch) != watched_before
            else:
                if log.stat().st_size != size:
                    size = log.stat().st_size
                    jobs = parse_jobs(log.read_text())
                fired = any(stage(job) >= point.stage for job in jobs)
            if fired:
                fire_at = now + delay
        if fire_at is not None and now >= fire_at:
            with contextlib.suppress(ProcessLookupError):  # freeze the moment, see what ran
                os.killpg(proc.pid, signal.SIGSTOP)
            running = ", ".join(lotto_jobs_running(proc.pid)) or "snakemake only"
            kill_group(proc)
            trial = Trial(number, point.moment, now - start, running, "killed")
            return trial, log.read_text()
        time.sleep(0.002)  # a checkpoint's write (checksum, then file) takes milliseconds
    text = log.read_text()
    assert proc.returncode == 0, f"trial {number} failed (exit {proc.returncode}):\n{text[-6000:]}"
    return Trial(
        number,
        point.moment if point else "(left to finish)",
        time.monotonic() - start,
        "-",
        "completed",
    ), text


def format_table(trials: list[Trial]) -> str:
    rows = [("trial", "kill at (s)", "moment", "running when killed", "outcome")]
    rows += [(str(t.number), f"{t.seconds:.2f}", t.moment, t.running, t.outcome) for t in trials]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows
    )


def record_table(trials: list[Trial]) -> str:
    """Print the trials and keep them as a test artifact (also when a trial failed)."""
    table = format_table(trials)
    print("\n" + table)
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "kill_resume.txt").write_text(table + "\n")
    return table


def resumed_logs(work: Workdir) -> set[str]:
    """Job logs (relative to the workdir) that say their training resumed from a checkpoint."""
    return {
        p.relative_to(work.path).as_posix()
        for p in (work.results / "logs").rglob("*.log")
        if "resumed at step" in p.read_text(errors="replace")
    }


def test_repeated_sigkill_then_rerun_incomplete_finishes_identically(tmp_path, tmp_path_factory):
    reference_dir = tmp_path_factory.mktemp("reference")
    start_kill_reference_run(reference_dir)  # side by side with the trials
    work = kill_workdir(tmp_path / "killed")
    spec = load_experiment(work.path / f"experiments/{KILL_NAME}.yaml")
    dirs = {
        "dense": f"results/dense/{spec.dense_key}/seed0",
        "chain": f"results/{KILL_NAME}/seed0",
        "dense_log": f"results/logs/dense/{spec.dense_key}/seed0.log",
        "chain_log": f"results/logs/{KILL_NAME}/seed0",
    }
    rng = random.Random(DELAY_SEED)
    delays = [rng.uniform(0, point.max_delay) for point in PLAN]

    trials: list[Trial] = []
    finished: dict[str, int] = {}  # output -> its mtime when Snakemake logged its job finished
    restarted: list[str] = []
    missed: list[str] = []  # kills that did not find the job they aimed at, or came too late
    not_resumed: list[str] = []  # jobs killed after a checkpoint that started over
    try:
        for number, point in enumerate([*PLAN, None], start=1):
            watch = work.path / point.watch.format(**dirs) if point and point.watch else None
            trial, text = run_trial(
                work, number, point, delays[number - 1] if point else 0.0, watch
            )
            trials.append(trial)
            if point and point.expect and point.expect not in trial.running.split(", "):
                missed.append(f"trial {number}: {point.expect} not running")
            if point and point.absent and (work.path / point.absent.format(**dirs)).exists():
                missed.append(f"trial {number}: {point.absent.format(**dirs)} already written")
            previous = PLAN[number - 2] if number >= 2 else None
            if previous and previous.resumes:
                resumes = previous.resumes.format(**dirs)
                if resumes not in resumed_logs(work):
                    not_resumed.append(f"trial {number}: {resumes}")
            jobs = parse_jobs(text)
            restarted += [
                f"trial {number}: {job.rule} {out}"
                for job in jobs
                for out in job.outputs
                if out in finished
            ]
            done = finished_jobids(text)
            for job in jobs:
                if job.jobid in done:
                    finished.update(mtimes(work.path, list(job.outputs)))
            if trial.outcome == "completed":
                break
    finally:
        table = record_table(trials)
        reference, _ = kill_reference_run(reference_dir)

    outcomes = [t.outcome for t in trials]
    assert outcomes == ["killed"] * len(PLAN) + ["completed"], table
    assert not missed, f"kills that missed their moment: {missed}\n{table}"
    assert not not_resumed, f"killed after a checkpoint, then started over: {not_resumed}\n{table}"
    assert not restarted, f"finished jobs started again:\n{restarted}\n{table}"
    assert mtimes(work.path, list(finished)) == finished, "finished outputs were rewritten"
    assert not list((work.path / ".snakemake" / "incomplete").iterdir())
    assert not list(work.results.rglob("resume.pt"))
    assert_same_files(
        work.results, reference.results,
        ("metrics.parquet", "checkpoint.pt", "mask.pt", "rewind.pt", "init.pt", "*.md", "*.tex"),
    )  # fmt: skip
