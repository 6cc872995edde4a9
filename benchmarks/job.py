"""The fixed cost of one job: process start, imports, data load, outputs; and of a small DAG.

    python benchmarks/job.py                  # LeNet-300-100 on Fashion-MNIST, CPU
    python benchmarks/job.py --dag            # also a quickstart-sized Snakemake run

A one-iteration round (`python -m lotto round`, the command a Snakemake rule runs) does
everything a round does except train: import, read the data's splits (from the splits file
the first job wrote, lotto.core.data_cache), build the model and optimizer, evaluate at steps 0 and
1, write checkpoint, mask and metrics. Its time is the cost every job pays on top of its
training; each process is also given as a ratio to `import torch` in the same repeat. The breakdown times the same
phases one by one in a fresh process; the in-process row is the same round run again in a
process where everything is already imported and loaded.
"""

from __future__ import annotations

import argparse
import io as stdio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_S = 3.0
TORCH = "python -c 'import torch'"  # the floor every job pays; lotto's cost is read against it
REPO = Path(__file__).resolve().parents[1]


def spec_file(out: Path, data: str) -> Path:
    """A resolved one-iteration LeNet-300-100 spec, as the workflow writes it."""
    from lotto.core.spec import DatasetSpec, ExperimentSpec, ModelSpec, TrainingSpec

    spec = ExperimentSpec(
        name="job",
        dataset=DatasetSpec(name=data),
        model=ModelSpec(name="lenet_300_100"),
        training=TrainingSpec(optimizer="adam", lr=1.2e-3, batch_size=60, duration=1, device="cpu"),
    )
    path = out / "spec.json"
    path.write_text(json.dumps(spec.to_dict()))
    return path


# Runs one command and prints its wall time and resource usage. Started as a small process
# of its own, because a child forked straight from this (large) process would report this
# process's resident memory as its own peak.
_RUNNER = """
import json, os, subprocess, sys, time
start = time.perf_counter()
child = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
_, status, usage = os.wait4(child.pid, 0)
print(json.dumps({"wall": time.perf_counter() - start, "code": os.waitstatus_to_exitcode(status),
                  "cpu": usage.ru_utime + usage.ru_stime, "rss": usage.ru_maxrss / 1024}))
"""


def timed_process(command: list[str]) -> dict[str, float]:
    """Wall seconds, CPU seconds (user + system) and peak RSS (MiB) of one child process."""
    runner = subprocess.run(
        [sys.executable, "-c", _RUNNER, *command], check=True, capture_output=True, text=True
    )
    result = json.loads(runner.stdout)
    if result["code"] != 0:
        raise RuntimeError(f"{' '.join(command)} exited with code {result['code']}")
    return result


def phases(data: Path, spec_path: Path, out: Path) -> dict[str, tuple[float, float]]:
    """(wall, CPU) seconds of each phase of a round's fixed cost, in this (fresh) process."""
    marks: dict[str, tuple[float, float]] = {}
    last = [time.perf_counter(), time.process_time()]

    def mark(name: str) -> None:
        now = [time.perf_counter(), time.process_time()]
        marks[name] = (now[0] - last[0], now[1] - last[1])
        last[:] = [time.perf_counter(), time.process_time()]

    import torch

    mark("import torch")
    torch.set_num_threads(1)
    from lotto import rounds
    from lotto.core import data as datasets
    from lotto.core import data_cache, io, startup, train
    from lotto.core.spec import ExperimentSpec

    mark("import lotto (rounds, metrics: pyarrow)")
    raw = data.read_bytes()
    mark("read the data cache file")
    io.sha256_of(raw)
    mark("sha256 of the data cache")
    torch.load(stdio.BytesIO(raw), weights_only=True)
    mark("torch.load of the data cache")
    datasets.load(data)  # all three again (file now in page cache) + split + standardise
    load_s = (
        marks["read the data cache file"][0]
        + marks["sha256 of the data cache"][0]
        + marks["torch.load of the data cache"][0]
    )
    load_cpu = (
        marks["read the data cache file"][1]
        + marks["sha256 of the data cache"][1]
        + marks["torch.load of the data cache"][1]
    )
    mark("split + standardise")
    marks["split + standardise"] = (
        marks["split + standardise"][0] - load_s,
        marks["split + standardise"][1] - load_cpu,
    )
    data_cache.load_splits(data, val_size=5000)
    mark("what a job pays for its data: lotto.core.data_cache.load_splits (the four above, once per file)")
    spec = ExperimentSpec.from_dict(json.loads(spec_path.read_text()))
    model = startup.new_model(spec, 0, torch.device("cpu"))
    optimizer = train.make_optimizer(model.parameters(), spec.training)
    model(torch.zeros(1, 1, 28, 28)).sum().backward()
    optimizer.step()
    mark("model + optimizer + first step (torch.optim would import torch._dynamo)")
    rounds.run_round(spec, data, 0, 0, out / "round-a")
    mark("rest of a 1-iteration round (2 evaluations, writes)")
    rounds.run_round(spec, data, 0, 0, out / "round-b")
    mark("the whole 1-iteration round again, in-process")
    return marks


def snakemake_executable() -> str | None:
    """snakemake on PATH, else beside this Python (a virtual environment not activated)."""
    beside = Path(sys.executable).with_name("snakemake")
    return shutil.which("snakemake") or (str(beside) if beside.exists() else None)


def quickstart_dag(workdir: Path) -> dict[str, float]:
    """Wall time of `snakemake --cores 2` on a quickstart-shaped experiment of tiny rounds."""
    workdir.mkdir(parents=True)
    experiment = workdir / "quick.yaml"
    experiment.write_text(
        "seeds: [0, 1]\ndataset: {name: synthetic, val_size: 200}\nmodel: {name: lenet_300_100}\n"
        "training: {optimizer: adam, lr: 1.2e-3, batch_size: 60, duration: 20, eval_every: 10,"
        " device: cpu}\npruning: {rates: {fc: 0.3}, rounds: 2}\nbranches: [reinit, random_mask]\n"
    )
    config = workdir / "config.yaml"
    config.write_text(f"experiments: ['{experiment}']\nthreads: 1\n")
    command = [
        snakemake_executable(),
        "--cores",
        "2",
        "-q",
        "-s",
        str(REPO / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(config),
    ]
    start = time.perf_counter()
    # the jobs' `python -m lotto` must be this Python, with lotto and torch
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    subprocess.run(command, check=True, capture_output=True, env={**os.environ, "PATH": path})
    wall = time.perf_counter() - start
    jobs = sum(1 for _ in (workdir / "results" / "logs").rglob("*.log"))
    return {"wall": wall, "jobs": jobs}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path(__file__).resolve().parents[1] / "build" / "bench-data",
        help="prepared data",
    )
    parser.add_argument("--dag", action="store_true", help="also time a quickstart-sized DAG")
    parser.add_argument(
        "--phases", nargs=3, metavar=("DATA", "SPEC", "OUT"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.phases:  # the child that times the phases in a fresh process
        data, spec, out = map(Path, args.phases)
        print(json.dumps(phases(data, spec, out)))
        return 0

    import common

    data = common.prepared("fashion_mnist", args.cache)
    # children import this checkout's lotto, and stay off any GPU (a CPU job)
    os.environ.update(PYTHONPATH=str(common.REPO), CUDA_VISIBLE_DEVICES="")
    print("## Fixed cost of one job (LeNet-300-100, Fashion-MNIST, CPU, 1 thread)\n")
    print(common.header(1, "cpu") + f"\n- median of {args.repeats} processes\n")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        spec = spec_file(tmp, "fashion_mnist")
        python = sys.executable
        commands = {
            "python -c pass": [python, "-c", "pass"],
            TORCH: [python, "-c", "import torch"],
            "python -c 'import lotto.rounds' (a round's lotto modules)": [
                python, "-c", "import lotto.cli, lotto.rounds"],
            "python -m lotto round (1 iteration)": [
                python,
                "-m",
                "lotto",
                "round",
                "--spec",
                str(spec),
                "--data",
                str(data),
                "--seed",
                "0",
                "--round",
                "0",
                "--threads",
                "1",
                "--out",
                str(tmp / "cli"),
            ],
        }
        timed_process(commands["python -m lotto round (1 iteration)"])  # as a workflow's first job:
        # it writes the splits file (lotto.core.data_cache) that the timed jobs then read
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in commands}
        for _ in range(args.repeats):  # round-robin, so a drifting load hits every command alike
            for name, command in commands.items():
                runs[name].append(timed_process(command))

        def ratio(name: str, key: str) -> str:
            """Median over repeats of this command's time / import torch's in the same repeat."""
            return f"{common.median([r[key] / t[key] for r, t in zip(runs[name], runs[TORCH], strict=True)]):.2f}"

        rows = [
            [
                name,
                f"{common.median([r['wall'] for r in rs]):.2f}",
                f"{common.median([r['cpu'] for r in rs]):.2f}",
                ratio(name, "wall"),
                ratio(name, "cpu"),
                f"{common.median([r['rss'] for r in rs]):,.0f}",
            ]
            for name, rs in runs.items()
        ]
        print(common.markdown_table(
            ["process", "wall s", "CPU s", "wall / import torch", "CPU / import torch", "peak RSS MiB"], rows))

        breakdowns = []
        for i in range(args.repeats):
            child = subprocess.run(
                [python, __file__, "--phases", str(data), str(spec), str(tmp / f"p{i}")],
                check=True,
                capture_output=True,
                text=True,
            )
            breakdowns.append(json.loads(child.stdout.strip().splitlines()[-1]))
        print("\nWhere the time goes (one fresh process, phases in order):\n")
        rows = [
            [
                name,
                f"{common.median([b[name][0] for b in breakdowns]):.2f}",
                f"{common.median([b[name][1] for b in breakdowns]):.2f}",
            ]
            for name in breakdowns[0]
        ]
        print(common.markdown_table(["phase", "wall s", "CPU s"], rows))
        job_wall = common.median([r["wall"] for r in runs["python -m lotto round (1 iteration)"]])
        print(
            "\nTargets:\n"
            + common.target(
                "fixed cost of one job (wall)", job_wall, TARGET_S, at_most=True, unit=" s"
            )
        )
        if args.dag:
            if snakemake_executable() is None:
                print("\n(snakemake not found: DAG timing skipped)")
            else:
                dag = quickstart_dag(tmp / "dag")
                print(
                    f"\nQuickstart-shaped DAG (2 seeds, 2 rounds, 2 branches, 20-iteration rounds "
                    f"on synthetic 8x8 data, --cores 2): {dag['jobs']} jobs in {dag['wall']:.1f} s "
                    f"wall ({dag['wall'] / dag['jobs']:.2f} s per job)"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
