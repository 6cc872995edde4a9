"""The workflow through a real single-node SLURM cluster with 4 fake GPUs (profiles/slurm).

tests/slurm/start_slurm.sh starts slurmctld and slurmd (installing them with apt-get if
needed); the module fixture stops them by their pid files afterwards. One tiny experiment
(2 seeds, round 0, one pruned round, a reinit control each) runs twice: through
`snakemake --profile profiles/slurm` with `use_gpu: true` and job groups, and locally on the
CPU as the reference. While the SLURM run trains, seed 0's round 0 is pre-empted
(`scontrol requeue`: SLURM restarts the same job) and seed 1's is cancelled (Snakemake
retries it as a new job, as after a time limit); both resume from their in-round checkpoint.
Snakemake runs through tests/slurm/snakemake_fast_poll.py, which only caps the plugin's
growing wait between status checks (jobs here take seconds, not hours).

What is checked, from the jobs' own view: a `python` shim first on PATH records each call's
SLURM job id, step and GPUs (SLURM sets CUDA_VISIBLE_DEVICES per job and step, and
lotto.gpu_slot steps aside under SLURM, so the shim is where the GPU a round saw is visible).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from workflow_util import (
    REPO,
    SNAKEFILE,
    TINY_EXPERIMENT,
    Result,
    Workdir,
    experiment,
    job_env,
    job_stats,
    kill_group,
)

from lotto.core.spec import load_experiment

pytestmark = pytest.mark.slurm

HARNESS = REPO / "tests" / "slurm"
PROFILE = REPO / "profiles" / "slurm"
SLURM_TOOLS = ("slurmctld", "slurmd", "sbatch", "munged")
RUN_TIMEOUT_S = 1200

# Rounds long enough (1200 steps) to be interrupted after their first in-round checkpoint
# (step 300) and before they end.
EXPERIMENT: dict[str, Any] = experiment(
    TINY_EXPERIMENT,
    training={"duration": 1200, "eval_every": 300, "checkpoint_every": 300},
    pruning={"rounds": 1},
    branches=["reinit"],
)
NAME = "slurmtiny"

# A seed's round 0 and round 1 as one SLURM job ("chain", one per seed); both seeds' controls
# as one job ("controls"). gpu is a local resource capped at 1: a group job asks for one GPU
# and runs its members one after another (the jobstep executor runs them serially anyway).
GROUP_ARGS = (
    "--groups", "dense_round=chain", "prune_round=chain", "control_branch=controls",
    "--group-components", "controls=2",
    "--set-resource-scopes", "gpu=local",
    "--resources", "gpu=1",
)  # fmt: skip

SHIM = '''#!{python}
"""`python` for the jobs: records each call's SLURM job, step and GPUs, then runs it."""
import json, os, subprocess, sys, time

KEYS = ("SLURM_JOB_ID", "SLURM_STEP_ID", "CUDA_VISIBLE_DEVICES", "SLURM_STEP_GPUS")


def note(record):
    fd = os.open({log!r}, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(fd, (json.dumps(record) + "\\n").encode())
    os.close(fd)


note(dict(event="start", pid=os.getpid(), time=time.time(), argv=sys.argv[1:],
          env={{key: os.environ.get(key) for key in KEYS}}))
code = subprocess.call([{python!r}, *sys.argv[1:]])
note(dict(event="end", pid=os.getpid(), time=time.time(), returncode=code))
sys.exit(code if code >= 0 else 128 - code)
'''


def _skip_reason() -> str | None:
    """Why this machine cannot run a cluster; None if it can (never skip for other reasons)."""
    if os.geteuid() != 0:
        return "needs root: start_slurm.sh starts munged, slurmctld and slurmd"
    if not all(shutil.which(tool) for tool in SLURM_TOOLS) and shutil.which("apt-get") is None:
        return f"SLURM ({', '.join(SLURM_TOOLS)}) is not installed and apt-get is unavailable"
    return None


def _harness(script: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(HARNESS / script)], capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def cluster():
    """A running single-node cluster; stopped (daemons by pid file) after the module."""
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    started = _harness("start_slurm.sh")
    try:
        assert started.returncode == 0, f"start_slurm.sh failed:\n{started.stdout}{started.stderr}"
        print(started.stdout, end="")
        yield
    finally:
        stopped = _harness("stop_slurm.sh")
        print(stopped.stdout, end="")


# --- the runs ---------------------------------------------------------------------------------


def _workdir(path: Path, **options: Any) -> Workdir:
    work = Workdir(path)
    work.write_config([work.write_experiment(NAME, EXPERIMENT)], **options)
    return work


def _training_dirs(work: Workdir) -> list[str]:
    """Output folders of every training job, as the rules name them (relative to the workdir)."""
    spec = load_experiment(work.path / f"experiments/{NAME}.yaml")
    dirs = []
    for seed in EXPERIMENT["seeds"]:
        dirs.append(f"results/dense/{spec.dense_key}/seed{seed}")
        dirs.append(f"results/{NAME}/seed{seed}/round1")
        dirs.append(f"results/{NAME}/seed{seed}/round1/reinit")
    return dirs


def _slurm_command(work: Workdir, targets: list[str]) -> list[str]:
    # The workdir's config sets use_gpu: false; the profile's `config: use_gpu: true` wins.
    return [
        sys.executable, str(HARNESS / "snakemake_fast_poll.py"), *targets,
        "-s", str(SNAKEFILE),
        "--directory", str(work.path),
        "--configfile", str(work.path / "config.yaml"),
        "--profile", str(PROFILE),
        "--slurm-init-seconds-before-status-checks", "1",
        *GROUP_ARGS,
    ]  # fmt: skip


def _read_calls(log: Path) -> list[dict[str, Any]]:
    """The shim's records of `python -m lotto round|branch` calls: start, end and env."""
    starts, ends = {}, {}
    for line in log.read_text().splitlines():
        record = json.loads(line)
        (starts if record["event"] == "start" else ends)[record["pid"]] = record
    calls = []
    for pid, start in starts.items():
        argv = start["argv"]
        if argv[:2] != ["-m", "lotto"] or argv[2] not in ("round", "branch"):
            continue
        end = ends.get(pid)
        calls.append({
            "out": argv[argv.index("--out") + 1],
            "start": start["time"],
            "end": end["time"] if end else None,
            "returncode": end["returncode"] if end else None,
            **start["env"],
        })  # fmt: skip
    return sorted(calls, key=lambda call: call["start"])


def _job_of(calls_log: Path, out: str) -> str:
    """The SLURM job id of the running call that writes `out`."""
    running = [c for c in _read_calls(calls_log) if c["out"] == out and c["end"] is None]
    assert running, f"no running call writes {out}"
    return running[-1]["SLURM_JOB_ID"]


def _interrupt_while_training(
    work: Workdir, run: subprocess.Popen, log: Path, calls_log: Path, actions: dict[str, str]
) -> dict[str, tuple[str, float]]:
    """Once a round's first in-round checkpoint exists, requeue or cancel its SLURM job.
    Returns, per round, what was done and when (time.time(): the attempt ends then)."""
    pending, done = dict(actions), {}
    deadline = time.monotonic() + RUN_TIMEOUT_S / 2
    while pending:
        for out, action in list(pending.items()):
            if not (work.path / out / "resume.pt").exists():
                assert not (work.path / out / "metrics.parquet").exists(), (
                    f"{out} finished before it could be interrupted; lengthen its training"
                )
                continue
            job = _job_of(calls_log, out)
            command = ["scontrol", "requeue", job] if action == "requeue" else ["scancel", job]
            subprocess.run(command, check=True, capture_output=True, text=True, timeout=30)
            done[out] = (f"{action} of SLURM job {job}", time.time())
            del pending[out]
        if run.poll() is not None:
            raise AssertionError(
                f"snakemake ended before {list(pending)} checkpointed:\n{log.read_text()[-5000:]}"
            )
        assert time.monotonic() < deadline, f"timed out waiting for a checkpoint in {list(pending)}"
        time.sleep(0.05)
    return done


@pytest.fixture(scope="module")
def runs(cluster, tmp_path_factory):
    """The SLURM run (with two interruptions) and the local CPU run of the same experiment."""
    base = tmp_path_factory.mktemp("slurm_runs")
    slurm, local = _workdir(base / "slurm"), _workdir(base / "local", use_gpu=False)
    dirs = _training_dirs(slurm)
    targets = [f"{d}/metrics.parquet" for d in dirs]
    requeued, cancelled = (d for d in dirs if d.startswith("results/dense/"))

    shim_dir, calls_log = base / "shim", base / "calls.jsonl"
    shim_dir.mkdir()
    (shim_dir / "python").write_text(SHIM.format(python=sys.executable, log=str(calls_log)))
    (shim_dir / "python").chmod(0o755)
    env = job_env()
    env["PATH"] = f"{shim_dir}{os.pathsep}{env['PATH']}"

    log, local_log = base / "slurm.log", base / "local.log"
    t0 = time.monotonic()
    with open(log, "w") as out:
        run = subprocess.Popen(
            _slurm_command(slurm, targets), cwd=slurm.path, env=env, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    reference = local.start(local_log, *targets)  # the CPU reference, side by side
    try:
        interrupted = _interrupt_while_training(
            slurm, run, log, calls_log, {requeued: "requeue", cancelled: "cancel"}
        )
        run.wait(timeout=RUN_TIMEOUT_S)
        reference.wait(timeout=RUN_TIMEOUT_S)
    finally:
        for process in (run, reference):  # each leads its own process group
            if process.poll() is None:
                kill_group(process)
    return {
        "slurm": slurm,
        "local": local,
        "local_result": Result(reference.returncode, local_log.read_text()),
        "returncode": run.returncode,
        "output": log.read_text(),
        "calls": _read_calls(calls_log),
        "dirs": dirs,
        "requeued": requeued,
        "cancelled": cancelled,
        "interrupted": interrupted,
        "wall": time.monotonic() - t0,
    }


# --- the checks -------------------------------------------------------------------------------


def test_slurm_run_succeeds_with_fewer_sbatch_jobs_than_rules(runs):
    output = runs["output"]
    assert runs["returncode"] == 0, output[-8000:]
    submitted = re.findall(
        r"^Job (\S+) has been submitted with SLURM jobid (\d+) \(log: (\S+)\)", output, re.M
    )
    first_submissions = {job for job, _, _ in submitted}
    rule_jobs = job_stats(output)["total"]
    groups = [job for job in first_submissions if "-" in job]  # group ids are uuids
    print(
        f"\n{rule_jobs} rule jobs in {len(first_submissions)} SLURM submissions "
        f"({len(groups)} group jobs), {len(submitted)} sbatch calls with retries; "
        f"SLURM job ids {sorted(int(j) for _, j, _ in submitted)}; wall {runs['wall']:.0f} s"
    )
    assert len(first_submissions) < rule_jobs, output[-5000:]
    assert len(groups) == 3  # a chain per seed, one for both controls

    # Two independent controls in one group job: capped by `--resources gpu=1` (local scope),
    # it asks SLURM for one GPU, not one per member. (Its record outlives it by MinJobAge.)
    (controls,) = [job for _, job, log in submitted if "/group_controls_" in log]
    record = subprocess.run(
        ["scontrol", "show", "job", controls], capture_output=True, text=True, check=True
    ).stdout
    assert re.search(r"TresPerJob=gres:gpu:1\b", record), record


def test_every_training_job_ran_in_slurm_on_its_own_gpu(runs):
    calls = [dict(call) for call in runs["calls"]]
    finished = [c for c in calls if c["returncode"] == 0]
    assert sorted(c["out"] for c in finished) == sorted(runs["dirs"]), calls
    for call in calls:
        if call["end"] is None:  # an interrupted attempt held its GPU until it was interrupted
            call["end"] = runs["interrupted"][call["out"]][1]
    for call in calls:
        print(
            f"  SLURM job {call['SLURM_JOB_ID']} step {call['SLURM_STEP_ID']} "
            f"GPU {call['SLURM_STEP_GPUS']} (CUDA_VISIBLE_DEVICES={call['CUDA_VISIBLE_DEVICES']}) "
            f"{'ok' if call['returncode'] == 0 else 'interrupted'}  {call['out']}"
        )
        assert call["SLURM_JOB_ID"], f"{call['out']} did not run in a SLURM job"
        # SLURM_STEP_GPUS is the GPU SLURM gave the job step. This cluster confines no devices
        # with cgroups, so CUDA_VISIBLE_DEVICES is not renumbered and must name that GPU.
        assert re.fullmatch(r"\d+", call["SLURM_STEP_GPUS"] or ""), call
        assert call["CUDA_VISIBLE_DEVICES"] == call["SLURM_STEP_GPUS"], call
    overlapping = [
        (a, b) for i, a in enumerate(calls) for b in calls[i + 1 :]
        if a["start"] < b["end"] and b["start"] < a["end"]
    ]  # fmt: skip
    print(f"  {len(overlapping)} pairs of training jobs ran at the same time")
    for a, b in overlapping:
        assert a["SLURM_STEP_GPUS"] != b["SLURM_STEP_GPUS"], (
            f"{a['out']} and {b['out']} shared GPU {a['SLURM_STEP_GPUS']} at once"
        )


def test_preempted_and_cancelled_rounds_resume_from_their_checkpoint(runs):
    """Requeue: the same SLURM job starts again; cancel: Snakemake resubmits a new one. Both
    continue from resume.pt (the log of the last attempt says where)."""
    calls, work = runs["calls"], runs["slurm"]
    requeued, cancelled = runs["requeued"], runs["cancelled"]
    print(f"\n  interrupted: {[what for what, _ in runs['interrupted'].values()]}")
    attempts = {out: [c for c in calls if c["out"] == out] for out in (requeued, cancelled)}
    assert len(attempts[requeued]) == 2 and len(attempts[cancelled]) == 2, attempts
    first, second = attempts[requeued]
    assert first["SLURM_JOB_ID"] == second["SLURM_JOB_ID"], attempts[requeued]
    first, second = attempts[cancelled]
    assert first["SLURM_JOB_ID"] != second["SLURM_JOB_ID"], attempts[cancelled]
    key = requeued.split("/")[2]
    for seed in EXPERIMENT["seeds"]:
        round_log = (work.results / "logs" / "dense" / key / f"seed{seed}.log").read_text()
        assert re.search(r"resumed at step [1-9]\d*/", round_log), round_log
        assert not (work.path / f"results/dense/{key}/seed{seed}/resume.pt").exists()


def test_slurm_outputs_equal_local_cpu_run_byte_for_byte(runs):
    runs["local_result"].check()
    slurm, local = runs["slurm"].path, runs["local"].path
    for directory in runs["dirs"]:
        for name in ("metrics.parquet", "checkpoint.pt", "mask.pt"):
            ours, theirs = slurm / directory / name, local / directory / name
            assert ours.read_bytes() == theirs.read_bytes(), f"{directory}/{name} differs"
