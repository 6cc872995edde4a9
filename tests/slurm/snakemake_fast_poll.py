"""`python -m snakemake`, with the SLURM executor's status checks at most POLL_S seconds apart.

For tests/test_slurm.py only. The plugin (snakemake-executor-plugin-slurm 2.x) waits 10 s
longer after every status check that finds no finished job (up to 180 s), so on a test
cluster whose jobs take tens of seconds each wave of jobs was noticed ~10-30 s after it ended
(about a minute of a ~5 minute test). Capping the wait changes when Snakemake looks, not what
it sees or does: sbatch, squeue, retries and the jobs themselves are the plugin's own. Jobs
submitted from here run the ordinary `python -m snakemake`.

    python tests/slurm/snakemake_fast_poll.py [snakemake arguments]
"""

from __future__ import annotations

import os

import snakemake_executor_plugin_slurm as slurm
from snakemake.cli import main

POLL_S = float(os.environ.get("LOTTO_SLURM_POLL_S", "1"))

_check_active_jobs = slurm.Executor.check_active_jobs


async def _check_then_cap(self, active_jobs):
    """The plugin's check, then its next wait capped at POLL_S."""
    async for job in _check_active_jobs(self, active_jobs):
        yield job
    self.next_seconds_between_status_checks = min(self.next_seconds_between_status_checks, POLL_S)


slurm.Executor.check_active_jobs = _check_then_cap

if __name__ == "__main__":
    main()
