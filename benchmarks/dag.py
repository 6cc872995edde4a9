"""How long Snakemake takes to plan big lotto DAGs (`snakemake -n`), and where that time goes.

    python benchmarks/dag.py                       # ~1k, 5k and 20k jobs
    python benchmarks/dag.py --jobs 1000 --profile # plus a cProfile of the 1k plan

Each size is one generated experiment (10 pruning rounds, 2 control branches, as many seeds
as needed; synthetic data, nothing is trained) in a temporary directory, planned with
`snakemake -n -q -s Snakefile --directory TMP --configfile TMP/config.yaml`. A dry run does
all the work of the real run's planning: parsing, config validation, resolving every
experiment, input functions, wildcard matching and the file-existence checks of a new run.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROUNDS, BRANCHES = 10, ("reinit", "random_mask")
FIXED_JOBS = 10  # data, 2 specs, collect, 3 figures, tables, report, all


def seeds_for(jobs: int) -> int:
    """Seeds giving about `jobs` jobs: each seed is 1 dense round + ROUNDS x (1 + branches)."""
    return max(1, round((jobs - FIXED_JOBS) / (1 + ROUNDS * (1 + len(BRANCHES)))))


def job_count(seeds: int) -> int:
    return FIXED_JOBS + seeds * (1 + ROUNDS * (1 + len(BRANCHES)))


def write_config(directory: Path, seeds: int) -> Path:
    experiment = directory / "many_seeds.yaml"
    experiment.write_text(
        f"seeds: {list(range(seeds))}\n"
        "dataset: {name: synthetic, val_size: 200}\n"
        "model: {name: lenet_300_100}\n"
        "training: {optimizer: adam, lr: 1.2e-3, batch_size: 60, duration: 100, device: cpu}\n"
        f"pruning: {{rates: {{fc: 0.2}}, rounds: {ROUNDS}}}\n"
        f"branches: [{', '.join(BRANCHES)}]\n"
    )
    config = directory / "config.yaml"
    config.write_text(f"experiments: ['{experiment}']\n")
    return config


def snakemake_args(directory: Path, config: Path) -> list[str]:
    return [
        "-n",
        "-q",
        "-s",
        str(REPO / "Snakefile"),
        "--directory",
        str(directory),
        "--configfile",
        str(config),
    ]


def dry_run_seconds(directory: Path, config: Path) -> float:
    executable = shutil.which("snakemake") or str(Path(sys.executable).with_name("snakemake"))
    start = time.perf_counter()
    subprocess.run(
        [executable, *snakemake_args(directory, config)],
        check=True,
        capture_output=True,
        cwd=directory,
    )
    return time.perf_counter() - start


def profile(directory: Path, config: Path, top: int) -> str:
    """cProfile of one dry run in this process: the slowest functions of lotto's Snakefile
    and rules (by cumulative time), then Snakemake's own top functions."""
    from snakemake.cli import main as snakemake_main

    profiler = cProfile.Profile()
    cwd = os.getcwd()
    os.chdir(directory)
    try:
        profiler.enable()
        try:
            snakemake_main(snakemake_args(directory, config))
        except SystemExit:
            pass
        profiler.disable()
    finally:
        os.chdir(cwd)
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out).sort_stats("cumulative")
    stats.print_stats(r"(\.smk|Snakefile|lotto/)", top)
    stats.print_stats(top)
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, nargs="+", default=[1000, 5000, 20000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="profile the smallest size")
    parser.add_argument("--top", type=int, default=25, help="rows of each profile listing")
    args = parser.parse_args(argv)

    print("## Planning time of `snakemake -n -q` by DAG size\n")
    print(
        f"- CPU: {os.cpu_count()} logical cores, load average at start {os.getloadavg()[0]:.1f}; "
        f"median of {args.repeats} runs\n"
    )
    print("| jobs | seeds | dry-run s | ms per job |\n|---|---|---|---|")
    for jobs in args.jobs:
        seeds = seeds_for(jobs)
        with tempfile.TemporaryDirectory() as tmp:
            directory = Path(tmp)
            config = write_config(directory, seeds)
            seconds = statistics.median(
                dry_run_seconds(directory, config) for _ in range(args.repeats)
            )
        total = job_count(seeds)
        print(f"| {total:,} | {seeds} | {seconds:.1f} | {1e3 * seconds / total:.2f} |", flush=True)
    if args.profile:
        with tempfile.TemporaryDirectory() as tmp:
            directory = Path(tmp)
            config = write_config(directory, seeds_for(min(args.jobs)))
            print("\n```\n" + profile(directory, config, args.top) + "```")
    return 0


if __name__ == "__main__":
    sys.exit(main())
