"""benchmarks/gpu_session.sh, the one command of a GPU session: a failing step does not stop the
next, steps that no longer fit the budget are skipped, and the summary says which did what.
The steps' Python is /bin/false here, so each test takes well under a second."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FALSE = shutil.which("false")


def session(out: Path, budget: int, steps: str) -> str:
    env = dict(os.environ, OUT=str(out), PYTHON=FALSE, GPU_SESSION_BUDGET=str(budget), GPU_SESSION_STEPS=steps)
    done = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_session.sh"), "--dry-run"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr  # some step failed
    return (out / "session.log").read_text()


@pytest.mark.skipif(FALSE is None or shutil.which("timeout") is None, reason="needs false and timeout")
def test_a_failing_step_does_not_stop_the_next(tmp_path):
    log = session(tmp_path, budget=400, steps="tests extras")
    summary = log.split("== gpu_session summary", 1)[1]
    for name in ("cuda-tests", "stream", "distributed-gpu-overhead"):
        assert re.search(rf"^  {name}: exit 1, \d+ s$", summary, re.MULTILINE), summary
    assert "study-slice" not in log  # not asked for
    assert len(list(tmp_path.iterdir())) <= 8  # what the device returns


@pytest.mark.skipif(FALSE is None or shutil.which("timeout") is None, reason="needs false and timeout")
def test_steps_that_no_longer_fit_the_budget_are_skipped(tmp_path):
    summary = session(tmp_path, budget=40, steps="tests slice extras").split("== gpu_session summary", 1)[1]
    assert re.search(r"^  cuda-tests: exit 1, \d+ s$", summary, re.MULTILINE), summary  # needs 30 s
    for name, needs in (("study-slice", 90), ("stream", 60), ("distributed-gpu-overhead", 90)):
        assert f"  {name}: skipped ({needs} s needed)" in summary
