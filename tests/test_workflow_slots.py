"""The workflow with several trainings per GPU (config gpu_slots): each training job's
resources and its lotto.gpu_slot options, read from a dry run (~10 s, no training)."""

from __future__ import annotations

import re

import pytest
from workflow_util import TINY_EXPERIMENT, Workdir

from lotto.core.spec import resolve
from lotto.gpu_memory import estimate_mb

pytestmark = pytest.mark.workflow

TRAINING_RULES = {"dense_round", "prune_round", "control_branch"}


def dry_run(tmp_path, **options):
    work = Workdir(tmp_path)
    work.write_config([work.write_experiment("tiny", TINY_EXPERIMENT)], **options)
    return work.snakemake("-n", "-p", "--resources", "gpu=1", "gpu_slot=3").check().output


def training_blocks(output: str) -> list[str]:
    """The dry run's text of each training job: its header, resources and shell command."""
    blocks = re.split(r"\n(?=(?:local)?rule \w+:)", output)
    return [b for b in blocks if (header := re.match(r"rule (\w+):", b)) and header[1] in TRAINING_RULES]


def test_k_slots_ask_for_a_slot_not_a_gpu_and_carry_the_memory_estimate(tmp_path):
    output = dry_run(tmp_path, use_gpu=True, gpu_slots=3)
    blocks = training_blocks(output)
    assert len(blocks) == 2 + 2 * 3 + 2 * 3 * 2  # the tiny experiment: 2 seeds, 3 rounds, 2 branches
    spec = resolve({**TINY_EXPERIMENT, "name": "tiny"})
    for block in blocks:
        assert "gpu=0" in block and "gpu_slot=1" in block, block
        log = re.search(r"log: (\S+\.log)", block)[1]
        assert f"python -m lotto.gpu_slot -n 1 -k 3 --mem-mb {estimate_mb(spec)} --energy {log}.energy.json --" in block


def test_one_slot_is_a_whole_gpu_as_before(tmp_path):
    blocks = training_blocks(dry_run(tmp_path, use_gpu=True))
    assert blocks
    for block in blocks:
        assert "gpu=1" in block and "gpu_slot=1" in block
        assert re.search(r"python -m lotto.gpu_slot -n 1 -k 1 --energy \S+\.log\.energy\.json --", block)
        assert "--mem-mb" not in block


def test_cpu_jobs_take_no_slot(tmp_path):
    for block in training_blocks(dry_run(tmp_path, gpu_slots=3)):
        assert "gpu=0" in block and "gpu_slot=0" in block
        assert "python -m lotto.gpu_slot -n 0 -k 3 --energy" in block
