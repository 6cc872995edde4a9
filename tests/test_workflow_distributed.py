"""Trainings in several processes through lotto.gpu_slot and Snakemake (training.devices), with
fake GPU ids (no GPU needed: the ranks run gloo on the CPU).

Cost: ~5 s (three torchrun launches of a tiny script) + ~25 s (a Snakemake run of one 2-process
round 0 and a 1-process reference) on 2 busy cores.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from test_gpu_slot import WRAPPER, wrapper_env
from workflow_util import TINY_EXPERIMENT, Workdir, experiment

from lotto.core.distributed import environ_from_slurm, first_host
from lotto.core.errors import InvalidValue
from lotto.core.spec import load_experiment
from lotto.gpu_slot import launch_command

# Each rank records its rank and GPUs, then waits until all 8 ranks of the three jobs have
# recorded theirs: it ends only if the jobs ran side by side.
RANK_SCRIPT = """import json, os, sys, time
from pathlib import Path
folder = Path(sys.argv[1])
record = {k: os.environ.get(k) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "CUDA_VISIBLE_DEVICES")}
(folder / f"{os.getpid()}.json").write_text(json.dumps(record))
deadline = time.monotonic() + 60
while len(list(folder.glob("*.json"))) < 8:
    assert time.monotonic() < deadline, "the other jobs' ranks never ran at the same time"
    time.sleep(0.02)
"""


def test_a_4_gpu_and_two_2_gpu_jobs_run_side_by_side_on_an_8_gpu_box(tmp_path):
    """profiles/local's case: each job holds its own GPUs (all or nothing) and torchrun starts
    one process per GPU, each seeing the job's GPUs (CUDA_VISIBLE_DEVICES) and its rank."""
    script, ranks = tmp_path / "rank.py", tmp_path / "ranks"
    script.write_text(RANK_SCRIPT)
    ranks.mkdir()
    env = wrapper_env(tmp_path, LOTTO_GPUS="0,1,2,3,4,5,6,7")
    jobs = [
        subprocess.Popen([*WRAPPER, "-n", str(n), "--processes", str(n), "--", sys.executable, str(script),
                          str(ranks)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for n in (4, 2, 2)
    ]  # fmt: skip
    for job in jobs:
        output, _ = job.communicate(timeout=120)
        assert job.returncode == 0, output
    records = [json.loads(path.read_text()) for path in ranks.glob("*.json")]
    by_job: dict[str, list[dict]] = {}
    for record in records:
        by_job.setdefault(record["CUDA_VISIBLE_DEVICES"], []).append(record)
    assert sorted(len(r) for r in by_job.values()) == [2, 2, 4], by_job
    held = [gpu for visible in by_job for gpu in visible.split(",")]
    assert sorted(held) == [str(i) for i in range(8)]  # no GPU given to two jobs
    for visible, job_ranks in by_job.items():
        n = len(visible.split(","))
        assert sorted(int(r["RANK"]) for r in job_ranks) == list(range(n))
        assert {r["WORLD_SIZE"] for r in job_ranks} == {str(n)}


def test_launch_command_under_torchrun_srun_and_its_refusals():
    command = ["python", "-m", "lotto", "round", "--out", "a b"]
    assert launch_command(command, 1, 1, {}) == command
    assert launch_command(command, 2, 1, {}) == [
        "python", "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "--max-restarts=0",
        "-m", "lotto", "round", "--out", "a b"]  # fmt: skip
    slurm = {"SLURM_JOB_ID": "7", "SLURM_CPUS_PER_TASK": "3"}
    assert launch_command(command, 4, 2, slurm) == [
        "srun", "--ntasks=8", "--ntasks-per-node=4", "--nodes=2", "--cpus-per-task=3", "--kill-on-bad-exit=1",
        *command]  # fmt: skip
    with pytest.raises(InvalidValue, match="several nodes runs in a SLURM job only"):
        launch_command(command, 2, 2, {})
    with pytest.raises(InvalidValue, match="must start with python"):
        launch_command(["bash", "-c", "x"], 2, 1, {})


def test_slurm_tasks_give_the_rendezvous():
    task = {"SLURM_PROCID": "5", "SLURM_STEP_NUM_TASKS": "8", "SLURM_LOCALID": "1", "SLURM_JOB_ID": "123",
            "SLURM_STEP_NODELIST": "gpu[03-04]", "SLURM_LAUNCH_NODE_IPADDR": "10.0.0.3"}
    assert environ_from_slurm(task) == {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1",
                                        "MASTER_ADDR": "10.0.0.3", "MASTER_PORT": "20123"}
    assert environ_from_slurm({**task, "SLURM_STEP_NUM_TASKS": "1"}) == {}  # one task: no world
    assert environ_from_slurm({**task, "RANK": "0"}) == {}  # torchrun inside SLURM set its own
    without_ip = {k: v for k, v in task.items() if k != "SLURM_LAUNCH_NODE_IPADDR"}
    assert environ_from_slurm(without_ip)["MASTER_ADDR"] == "gpu03"
    assert first_host("node7,gpu[1,3]") == "node7" and first_host("a[09-12,15]") == "a09"



@pytest.mark.workflow
def test_snakemake_runs_a_2_process_round_on_2_fake_gpus(tmp_path, monkeypatch):
    """training.devices: 2 with use_gpu: the round asks Snakemake for 2 GPUs (and SLURM's task
    resources), lotto.gpu_slot holds 2 fake GPUs and torchrun runs 2 gloo ranks; the result
    equals the same round trained by 1 process (within test_distributed's tolerance)."""
    log = tmp_path / "slots.jsonl"
    monkeypatch.setenv("LOTTO_GPUS", "0,1,2,3")
    monkeypatch.setenv("LOTTO_GPU_LOCK_DIR", str(tmp_path / "locks"))
    monkeypatch.setenv("LOTTO_GPU_SLOT_LOG", str(log))
    work = Workdir(tmp_path / "work")
    doc = experiment(TINY_EXPERIMENT, training={"duration": 60, "eval_every": 20, "devices": 2},
                     pruning={"rounds": 0}, seeds=[0], branches=None)
    work.write_config([work.write_experiment("twoproc", doc)], use_gpu=True)
    spec = load_experiment(work.path / "experiments" / "twoproc.yaml")
    out = f"results/dense/{spec.dense_key}/seed0"
    t0 = time.monotonic()
    result = work.snakemake(f"{out}/metrics.parquet", "--resources", "gpu=4").check()
    print(f"\nsnakemake with a 2-process round 0: {time.monotonic() - t0:.1f} s")
    assert "gpu=2, gpu_slot=2, tasks=2, tasks_per_gpu=1, nodes=1, mpi=srun" in result.output, result.output
    (record,) = [json.loads(line) for line in log.read_text().splitlines()]
    assert record["gpus"] == ["0", "1"] and record["returncode"] == 0
    assert "--nproc-per-node=2" in record["job"]
    round_log = (work.results / "logs" / "dense" / spec.dense_key / "seed0.log").read_text()
    assert "2 processes (gloo)" in round_log, round_log

    alone = work.path / "alone"
    subprocess.run([sys.executable, "-m", "lotto", "round", "--spec", f"{out}/../spec.json", "--data",
                    str(work.results / "data" / f"{spec.data_key}.pt"), "--seed", "0", "--round", "0",
                    "--out", str(alone)], cwd=work.path, check=True, capture_output=True, timeout=120)  # fmt: skip
    ours, reference = torch.load(work.path / out / "checkpoint.pt"), torch.load(alone / "checkpoint.pt")
    assert max(float((ours[k] - reference[k]).abs().max()) for k in ours) < 1e-5
    losses = [pd.read_parquet(path / "metrics.parquet")["loss"] for path in (work.path / out, alone)]
    assert float((losses[0] - losses[1]).abs().max()) < 1e-4
    assert Path(work.path / out / "mask.pt").exists()
