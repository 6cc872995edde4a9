"""How far one precision moves an experiment's numbers against another: paired by seed.

    python benchmarks/precision_effect.py results/A/metrics.parquet results/B/metrics.parquet

A and B are the same experiment but for training.precision (same seeds, so the same θ_0, masks
drawn from the same generators and the same batch order). For every training (branch, round,
seed) present in both, lotto.core.metrics.summarize gives the early-stop and final test
accuracy; the script prints, per branch, the mean over densities of the paired difference
B - A, its largest absolute value, the seed-to-seed spread of A at the same density (the noise a
reader compares with) and the spread of the paired differences themselves; then the mean paired
difference over all trainings with its standard error (a systematic shift shows there).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lotto.core import metrics  # noqa: E402

COLUMNS = {"early_stop_accuracy": "test acc. at early stop", "final_accuracy": "final test acc.",
           "early_stop_step": "early-stop iteration"}


def paired(a_path: str, b_path: str):
    import pandas as pd

    keys = ["branch", "round", "seed"]
    a = metrics.summarize(metrics.read([a_path])).set_index(keys)
    b = metrics.summarize(metrics.read([b_path])).set_index(keys)
    common = a.index.intersection(b.index)
    frame = pd.DataFrame({"density": a.loc[common, "density"]})
    for column in COLUMNS:
        frame[f"a_{column}"] = a.loc[common, column]
        frame[f"delta_{column}"] = b.loc[common, column] - a.loc[common, column]
    return frame.reset_index()


def branch_rows(frame, column: str, scale: float) -> list[str]:
    rows = []
    for branch, runs in frame.groupby("branch", sort=True):
        cells = runs.groupby("round")
        delta = cells[f"delta_{column}"].mean() * scale
        delta_sd = cells[f"delta_{column}"].std() * scale
        spread = cells[f"a_{column}"].std() * scale
        rows.append(
            f"| {branch} | {len(delta)} | {delta.mean():+.2f} | {delta.abs().max():.2f} "
            f"({runs.loc[runs['round'] == delta.abs().idxmax(), 'density'].iloc[0] * 100:.3g}%) | "
            f"{spread.mean():.2f} | {delta_sd.mean():.2f} |"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", help="metrics.parquet of the reference run (e.g. fp32)")
    parser.add_argument("b", help="metrics.parquet of the other run (e.g. bf16)")
    args = parser.parse_args()
    frame = paired(args.a, args.b)
    print(f"B = {args.b}\nA = {args.a}\n{len(frame)} trainings paired by (branch, round, seed)\n")
    for column, title in COLUMNS.items():
        scale = 1.0 if column == "early_stop_step" else 100.0
        unit = "iterations" if column == "early_stop_step" else "points"
        print(f"{title} ({unit}): B - A per density (mean over seeds), then over the densities")
        print("| branch | densities | mean Δ | largest abs Δ (at) | A's seed sd | sd of Δ over seeds |")
        print("|---|---:|---:|---:|---:|---:|")
        print("\n".join(branch_rows(frame, column, scale)))
        overall = frame[f"delta_{column}"] * scale
        print(f"all trainings: mean Δ {overall.mean():+.3f}, mean abs Δ {overall.abs().mean():.3f}, "
              f"sd {overall.std():.3f}, n {len(overall)}, SE of the mean {overall.std() / math.sqrt(len(overall)):.3f}\n")


if __name__ == "__main__":
    main()
