"""Energy per training, as lotto.gpu_slot measured it (``--energy FILE``: NVML's board energy
counter over the job, shared by time among the jobs on the same GPU; see that module).

A record is JSON beside the job's log, ``results/logs/<job>.log.energy.json``:
``{"joules", "board_joules", "seconds", "samples", "mean_jobs", "gpus"}``. Like wall-clock
times it is kept out of the metrics table, so that two runs of the same seed still write
byte-identical metrics; CPU jobs, and GPU jobs without NVML, have no record. The tables of an
experiment say the sum over the trainings that have one, and how many those were.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from lotto.core import io


@dataclass(frozen=True)
class EnergySum:
    joules: float  # the jobs' shares
    board_joules: float  # the GPUs' whole energy over the jobs' time (counted once per job)
    trainings: int  # jobs with a record
    jobs: int  # jobs asked about

    def sentence(self) -> str:
        """One line for a table's caption ('' when no job was measured)."""
        if not self.trainings:
            return ""
        return (f"GPU energy: {self.joules / 1e3:.3g} kJ over {self.trainings} of {self.jobs} training "
                f"jobs ({self.joules / self.trainings:.3g} J each), NVML board energy shared by time "
                "among the jobs on a GPU.")


def read(paths: Iterable[str | Path]) -> EnergySum:
    """Sum the records among `paths` that exist; refuse one that is not a record."""
    paths = list(paths)
    joules = board = 0.0
    found = 0
    for path in paths:
        try:
            record = json.loads(Path(path).read_text())
            share, whole = float(record["joules"]), float(record["board_joules"])
        except FileNotFoundError:
            continue
        except (ValueError, KeyError, TypeError) as err:
            raise io.CorruptFileError(f"{path}: not an energy record ({err}); delete it (the "
                                      "training's results are not affected)") from err
        if not (math.isfinite(share) and math.isfinite(whole)):
            raise io.CorruptFileError(f"{path}: energy {share!r} J is not a number; delete it")
        joules, board, found = joules + share, board + whole, found + 1
    return EnergySum(joules=joules, board_joules=board, trainings=found, jobs=len(paths))
