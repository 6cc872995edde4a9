"""A training in 2 processes through the real single-node SLURM cluster (profiles/slurm): a CPU
round 0 with training.devices: 2 becomes one sbatch job of 2 tasks, whose job step runs
lotto.gpu_slot, which starts the ranks with srun; they meet through SLURM's task variables
(lotto.core.distributed.environ_from_slurm) and train with gloo. Its outputs equal the same round
trained by 1 process locally (within test_distributed's tolerance).

Skipped only where the cluster cannot run (test_slurm's reasons). Cost: ~30 s, most of it
Snakemake's start in the job and torch's import in each rank.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from test_slurm import HARNESS, PROFILE, cluster  # noqa: F401 - the module-scoped cluster fixture
from workflow_util import SNAKEFILE, TINY_EXPERIMENT, Workdir, experiment, job_env

from lotto.core.spec import load_experiment

pytestmark = pytest.mark.slurm

DOC = experiment(TINY_EXPERIMENT, training={"duration": 60, "eval_every": 20, "devices": 2, "device": "cpu"},
                 pruning={"rounds": 0}, seeds=[0], branches=None)


def test_two_task_gloo_round_through_slurm_equals_one_process(cluster, tmp_path):  # noqa: F811
    work = Workdir(tmp_path / "work")
    work.write_config([work.write_experiment("slurm2", DOC)])
    spec = load_experiment(work.path / "experiments" / "slurm2.yaml")
    out = f"results/dense/{spec.dense_key}/seed0"
    command = [
        sys.executable, str(HARNESS / "snakemake_fast_poll.py"), f"{out}/metrics.parquet",
        "-s", str(SNAKEFILE), "--directory", str(work.path), "--configfile", str(work.path / "config.yaml"),
        "--profile", str(PROFILE), "--slurm-init-seconds-before-status-checks", "1",
    ]  # fmt: skip
    run = subprocess.run(command, cwd=work.path, env=job_env(), capture_output=True, text=True, timeout=600)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-8000:]
    jobs = re.findall(r"^Job \S+ has been submitted with SLURM jobid (\d+)", output, re.M)
    records = {}
    for job in jobs:
        shown = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True, timeout=30)
        records[job] = " ".join(shown.stdout.split())
        fields = re.findall(r"\b(?:JobId|JobState|ExitCode|RunTime|NumNodes|NumCPUs|NumTasks|TRES|Command)=\S+",
                            records[job])
        print(f"\nSLURM job {job}: {' '.join(fields)}")
    training_records = [record for record in records.values() if re.search(r"NumTasks=2\b", record)]
    assert len(training_records) == 1, records  # round 0: one job of 2 tasks
    assert re.search(r"JobState=COMPLETED", training_records[0]), training_records[0]
    round_log = (work.results / "logs" / "dense" / spec.dense_key / "seed0.log").read_text()
    assert "2 processes (gloo)" in round_log, round_log

    alone = work.path / "alone"
    subprocess.run([sys.executable, "-m", "lotto", "round", "--spec", f"{out}/../spec.json", "--data",
                    str(work.results / "data" / f"{spec.data_key}.pt"), "--seed", "0", "--round", "0",
                    "--out", str(alone)], cwd=work.path, env=job_env(), check=True, capture_output=True,
                   timeout=120)  # fmt: skip
    ours, reference = torch.load(work.path / out / "checkpoint.pt"), torch.load(alone / "checkpoint.pt")
    assert max(float((ours[k] - reference[k]).abs().max()) for k in ours) < 1e-5
    losses = [pd.read_parquet(Path(path) / "metrics.parquet")["loss"] for path in (work.path / out, alone)]
    assert float((losses[0] - losses[1]).abs().max()) < 1e-4
