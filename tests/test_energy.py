"""lotto.outputs.energy: the jobs' energy records summed per experiment, and the tables' captions
(CPU only, well under a second)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from test_figures_tables_report import build_metrics

from lotto.core import io
from lotto.outputs import energy


def write_record(path, joules, board):
    path.write_text(json.dumps({"joules": joules, "board_joules": board, "seconds": 1.0, "samples": 1,
                                "mean_jobs": 1.0, "gpus": ["0"]}))
    return path


def test_sum_over_the_records_that_exist(tmp_path):
    paths = [write_record(tmp_path / "a.json", 100.0, 200.0), write_record(tmp_path / "b.json", 50.5, 50.5),
             tmp_path / "cpu-job-has-none.json"]
    total = energy.read(paths)
    assert total == energy.EnergySum(joules=150.5, board_joules=250.5, trainings=2, jobs=3)
    assert total.sentence().startswith("GPU energy: 0.15 kJ over 2 of 3 training jobs (75.2 J each)")
    assert energy.read([tmp_path / "none.json"]).sentence() == ""


@pytest.mark.parametrize("text", ["{", '{"joules": 1}', '{"joules": "NaN", "board_joules": 1}'])
def test_a_broken_record_is_refused_with_its_path(tmp_path, text):
    path = tmp_path / "broken.json"
    path.write_text(text)
    with pytest.raises(io.CorruptFileError, match="broken.json"):
        energy.read([path])


def run_tables(tmp_path, metrics_path, *energy_args):
    out = tmp_path / "out"
    command = [sys.executable, "-m", "lotto", "tables", "--metrics", str(metrics_path), "--md", f"{out}.md",
               "--tex", f"{out}.tex", "--html", f"{out}.html", *energy_args]
    subprocess.run(command, check=True, capture_output=True, timeout=120)
    return {ext: (tmp_path / f"out.{ext}").read_bytes() for ext in ("md", "tex", "html")}


def test_tables_say_the_energy_only_when_measured(tmp_path):
    """No record (a CPU run): the tables are byte-identical to tables made without --energy."""
    metrics_path = tmp_path / "metrics.parquet"
    build_metrics(metrics_path)
    plain = run_tables(tmp_path, metrics_path)
    assert run_tables(tmp_path, metrics_path, "--energy", str(tmp_path / "missing.json")) == plain
    record = write_record(tmp_path / "job.log.energy.json", 1234.0, 2000.0)
    measured = run_tables(tmp_path, metrics_path, "--energy", str(record), str(tmp_path / "missing.json"))
    for ext, text in measured.items():
        assert b"GPU energy: 1.23 kJ over 1 of 2 training jobs" in text, ext
        assert b"GPU energy" not in plain[ext]
