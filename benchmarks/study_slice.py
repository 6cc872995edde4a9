"""A slice of the LTH study through Snakemake on one GPU, k trainings per GPU, and the whole
figure set's wall time extrapolated from it.

    python benchmarks/study_slice.py --out DIR [--budget 400]          # on a GPU box
    python benchmarks/study_slice.py --out DIR --quick --fake-gpu      # CPU dry run (~3 min)

For each configuration (model, k slots per GPU, precision) it writes an experiment on
synthetic data of the paper dataset's shape (LeNet-300-100: 60,000 + 10,000 images of
1x28x28; Conv-2/4/6: 50,000 + 10,000 of 3x32x32) with k seeds, one pruned round and the
branches reinit and random_mask (4k trainings: k dense rounds, k pruned rounds, 2k branches),
the papers' optimiser, batch and evaluation cadence, and a SHORT duration (--iterations), and
runs it with ``snakemake --config gpu_slots=k --resources gpu=1 gpu_slot=k`` in a fresh
directory (the prepared data is shared). Measured per configuration:

- trainings per hour: trainings / makespan (first job start to last job end, from the
  lotto.gpu_slot job log), at the shortened duration;
- per job: training seconds (the job log's summary line) and fixed cost = the job's wall time
  (slot log) - training seconds (process start, imports, data load, CUDA init and graph
  capture, evaluation at step 0, outputs);
- per-job iteration rate r = iterations / training seconds while k jobs shared the GPU
  (evaluations at the papers' cadence included; CUDA-graph warm-up is amortised over the short
  run, so r is an underestimate);
- GPU utilisation and power: nvidia-smi sampled every 0.5 s in the background, mean over the
  makespan;
- joules per training: mean of the jobs' lotto.gpu_slot energy records (NVML board energy,
  shared by time among the jobs on the GPU).

Extrapolation to the LTH figure set (LeNet-300-100 50K iterations x (1 + 18 rounds x 3),
Conv-2 20K, Conv-4 25K, Conv-6 30K x (1 + 20 rounds x 3), 5 seeds each: 1,190 trainings; the
presets config/experiments/lth_*.yaml): a job of model m at k slots takes
T = fixed(m, k) + N_m / r(m, k), and the set's wall time on one GPU is
max(sum over jobs of T / k, longest chain), the longest chain being a seed's rounds one after
another plus its last branches: (rounds + 2) x T. The first term assumes k jobs are ready at all
times (20 independent seed chains, each fanning out two branches per round, keep 8 slots busy
except at the very start and end) and that jobs of different models share a GPU as jobs of one
model do. A model not measured at k is scaled from Conv-6 at k by forward FLOPs per example
(lotto.methods.flops), said in the table.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GOAL_S = 3600.0

# The LTH figure set: (model, paper iterations, rounds, dataset shape); 5 seeds, ticket +
# reinit + random_mask; rounds and iterations as config/experiments/lth_*.yaml say.
STUDY = {
    "lenet_300_100": {"iterations": 50_000, "rounds": 18, "eval_every": 100, "shape": [1, 28, 28], "n_train": 60_000,
                      "rates": {"fc": 0.2, "output": 0.1}, "lr": 1.2e-3},
    "conv2": {"iterations": 20_000, "rounds": 20, "eval_every": 500, "shape": [3, 32, 32], "n_train": 50_000,
              "rates": {"conv": 0.1, "fc": 0.2, "output": 0.1}, "lr": 2e-4},
    "conv4": {"iterations": 25_000, "rounds": 20, "eval_every": 500, "shape": [3, 32, 32], "n_train": 50_000,
              "rates": {"conv": 0.1, "fc": 0.2, "output": 0.1}, "lr": 3e-4},
    "conv6": {"iterations": 30_000, "rounds": 20, "eval_every": 500, "shape": [3, 32, 32], "n_train": 50_000,
              "rates": {"conv": 0.15, "fc": 0.2, "output": 0.1}, "lr": 3e-4},
}
SEEDS = 5
BRANCHES = ["reinit", "random_mask"]
SHORT_NAMES = {"lenet_300_100": "lenet", "conv2": "conv2", "conv4": "conv4", "conv6": "conv6"}


def study_jobs(model: str) -> int:
    return SEEDS * (1 + STUDY[model]["rounds"] * (1 + len(BRANCHES)))


STUDY_JOBS = {model: study_jobs(model) for model in STUDY}  # 275 + 3 x 305 = 1,190


# ------------------------------------------------------------------------ GPU sampling


class GpuSampler:
    """nvidia-smi every 0.5 s in the background: (time, utilisation %, power W, memory MiB)."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float, float, float]] = []
        self.process = None
        if shutil.which("nvidia-smi"):
            self.process = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=utilization.gpu,power.draw,memory.used",
                 "--format=csv,noheader,nounits", "-lms", "500"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            )
            threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            try:
                util, power, memory = (float(v) for v in line.split(",")[:3])
            except ValueError:
                continue
            self.samples.append((time.time(), util, power, memory))

    def mean(self, start: float, end: float) -> dict[str, float]:
        inside = [s for s in self.samples if start <= s[0] <= end]
        if not inside:
            return {"util": math.nan, "power": math.nan, "memory_peak": math.nan}
        return {"util": statistics.fmean(s[1] for s in inside), "power": statistics.fmean(s[2] for s in inside),
                "memory_peak": max(s[3] for s in inside)}

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()


# ------------------------------------------------------------------------ one configuration


def experiment_yaml(model: str, k: int, precision: str, iterations: int, quick: bool) -> str:
    facts = STUDY[model]
    n_train = 1000 if quick else facts["n_train"]
    n_test = 200 if quick else 10_000
    eval_every = min(facts["eval_every"], max(1, iterations // 2)) if quick else facts["eval_every"]
    synthetic = {"shape": facts["shape"], "n_train": n_train, "n_test": n_test, "num_classes": 10, "seed": 0}
    doc = {
        "name": f"slice_{SHORT_NAMES[model]}",
        "description": "study_slice benchmark",
        "seeds": list(range(k)),
        "dataset": {"name": "synthetic", "synthetic": synthetic, "val_size": 200 if quick else 5000},
        "model": {"name": model},
        "training": {"optimizer": "adam", "lr": facts["lr"], "batch_size": 60, "duration": iterations,
                     "eval_every": eval_every, "precision": precision},
        "pruning": {"criterion": "magnitude", "scope": "layerwise", "rates": facts["rates"], "rounds": 1},
        "rewinding": {"weights": "init"},
        "branches": BRANCHES,
    }
    return json.dumps(doc)  # JSON is YAML


SUMMARY = re.compile(r"status (\w+)\s+([\d.]+) s\s*$", re.MULTILINE)


def run_config(args, model: str, k: int, precision: str, data_cache: Path, sampler: GpuSampler,
               deadline: float) -> dict:
    """Run one slice through Snakemake; return its measurements (or why it failed)."""
    name = f"{SHORT_NAMES[model]}-k{k}-{precision}"
    work = Path(args.work) / name
    shutil.rmtree(work, ignore_errors=True)
    (work / "results").mkdir(parents=True)
    if data_cache.exists():
        shutil.copytree(data_cache, work / "results" / "data")
    iterations = args.iterations[SHORT_NAMES[model]]
    experiment = work / "experiment.yaml"
    experiment.write_text(experiment_yaml(model, k, precision, iterations, args.quick))
    config = work / "config.yaml"
    config.write_text(json.dumps({"experiments": [str(experiment)], "use_gpu": True, "gpu_slots": k,
                                  "threads": 1}))
    slot_log = work / "slots.jsonl"
    env = dict(os.environ, LOTTO_GPU_SLOT_LOG=str(slot_log), LOTTO_GPU_LOCK_DIR=str(work / "locks"))
    target = f"results/tables/slice_{SHORT_NAMES[model]}.md"
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(work),
               "--configfile", str(config), "--cores", str(args.cores), "--resources", "gpu=1",
               f"gpu_slot={k}", "--quiet", "--nolock", target]
    started = time.time()
    timeout = max(5.0, deadline - time.monotonic())
    # its own process group, so that a slice cut by the budget leaves no job running
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    try:
        output, _ = process.communicate(timeout=timeout)
        failed, tail = process.returncode != 0, output[-3000:]
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            output, _ = process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            output, _ = process.communicate()
        failed, tail = True, f"stopped by the budget after {timeout:.0f} s\n" + (output or "")[-2000:]
    except BaseException:  # stopped from outside (SIGTERM, Ctrl-C): end the slice's jobs too
        os.killpg(process.pid, signal.SIGKILL)
        raise
    if (work / "results" / "data").exists():  # the next slices of this model skip data preparation
        shutil.copytree(work / "results" / "data", data_cache, dirs_exist_ok=True)
    jobs = [json.loads(line) for line in slot_log.read_text().splitlines()] if slot_log.exists() else []
    row: dict = {"config": name, "model": model, "k": k, "precision": precision, "iterations": iterations,
                 "snakemake_s": time.time() - started, "failed": failed, "jobs": len(jobs)}
    if failed:
        row["error"] = tail
        (Path(args.out) / f"{name}.error.txt").write_text(tail)
    if not jobs:
        return row
    first, last = min(j["start"] for j in jobs), max(j["end"] for j in jobs)
    per_job = []
    for log in glob.glob(str(work / "results" / "logs" / "**" / "*.log"), recursive=True):
        text = Path(log).read_text(errors="replace")
        found = SUMMARY.findall(text)
        if not found:
            continue
        train_s = float(found[-1][1])
        energy_path = Path(log + ".energy.json")
        energy = json.loads(energy_path.read_text()) if energy_path.exists() else None
        per_job.append({"log": os.path.relpath(log, work), "train_s": train_s,
                        "joules": energy["joules"] if energy else math.nan,
                        "board_joules": energy["board_joules"] if energy else math.nan})
    walls = sorted(j["end"] - j["start"] for j in jobs)
    trains = sorted(j["train_s"] for j in per_job)
    makespan = last - first
    row.update({
        "makespan_s": makespan,
        "trainings_per_hour": len(jobs) / makespan * 3600 if makespan > 0 else math.nan,
        "job_wall_median_s": statistics.median(walls),
        "train_median_s": statistics.median(trains) if trains else math.nan,
        "fixed_median_s": (statistics.median(walls) - statistics.median(trains)) if trains else math.nan,
        "rate_it_s": iterations / statistics.median(trains) if trains and statistics.median(trains) > 0 else math.nan,
        "joules_per_training": statistics.fmean(j["joules"] for j in per_job) if per_job else math.nan,
        "measured_energy_jobs": sum(not math.isnan(j["joules"]) for j in per_job),
        **sampler.mean(first, last),
        "per_job": per_job,
    })
    return row


# ------------------------------------------------------------------------ extrapolation


def forward_flops(model: str) -> float:
    from lotto.core.models import create_model
    from lotto.methods import flops

    shape = tuple(STUDY[model]["shape"])
    return float(flops.forward_flops(create_model(model, input_shape=shape, num_classes=10), shape))


def extrapolate(rows: list[dict], k: int, precision: str) -> dict | None:
    """The LTH figure set's wall time at k slots (see the module docstring), or None."""
    measured = {r["model"]: r for r in rows if r["k"] == k and r["precision"] == precision and not r["failed"]
                and not math.isnan(r.get("rate_it_s", math.nan))}
    if "conv6" not in measured or "lenet_300_100" not in measured:
        return None
    total = 0.0
    chain = 0.0
    notes = []
    per_model = {}
    for model, facts in STUDY.items():
        if model in measured:
            rate, fixed = measured[model]["rate_it_s"], measured[model]["fixed_median_s"]
            source = "measured"
        else:
            ref = measured["conv6"]
            rate = ref["rate_it_s"] * forward_flops("conv6") / forward_flops(model)
            fixed = ref["fixed_median_s"]
            source = "scaled from conv6 by FLOPs"
            notes.append(f"{model}: {source}")
        job_s = fixed + facts["iterations"] / rate
        per_model[model] = {"job_s": job_s, "jobs": study_jobs(model), "source": source}
        total += study_jobs(model) * job_s
        chain = max(chain, (facts["rounds"] + 2) * job_s)
    wall = max(total / k, chain)
    return {"k": k, "precision": precision, "wall_s": wall, "slot_bound_s": total / k, "chain_s": chain,
            "per_model": per_model, "notes": notes}


# ------------------------------------------------------------------------ tables


def fmt(value: float, digits: int = 1) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:,.{digits}f}"


def tables(rows: list[dict], extrapolations: list[dict], header: str) -> str:
    lines = [header, "", "## Slot scaling (shortened durations; see the script's docstring)", "",
             "| config | jobs | iterations | makespan (s) | trainings/h | job wall (s) | training (s) | fixed (s) "
             "| it/s per job | GPU util (%) | power (W) | peak mem (MiB) | J/training | status |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['config']} | {r['jobs']} | {r['iterations']} | {fmt(r.get('makespan_s', math.nan))} "
            f"| {fmt(r.get('trainings_per_hour', math.nan), 0)} | {fmt(r.get('job_wall_median_s', math.nan))} "
            f"| {fmt(r.get('train_median_s', math.nan))} | {fmt(r.get('fixed_median_s', math.nan))} "
            f"| {fmt(r.get('rate_it_s', math.nan), 0)} | {fmt(r.get('util', math.nan), 0)} "
            f"| {fmt(r.get('power', math.nan), 0)} | {fmt(r.get('memory_peak', math.nan), 0)} "
            f"| {fmt(r.get('joules_per_training', math.nan))} | {'FAILED' if r['failed'] else 'ok'} |")
    lines += ["", "## LTH figure set on one GPU, extrapolated (1,190 trainings at the papers' iterations)", "",
              "| k | precision | LeNet job (s) | Conv-2 job (s) | Conv-4 job (s) | Conv-6 job (s) | sum/k (h) "
              "| longest chain (h) | wall (h) | trainings/h | goal 1 h | notes |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for e in extrapolations:
        jobs = [fmt(e["per_model"][m]["job_s"]) for m in STUDY]
        verdict = "met" if e["wall_s"] <= GOAL_S else "NOT met"
        lines.append(f"| {e['k']} | {e['precision']} | {' | '.join(jobs)} | {e['slot_bound_s'] / 3600:.2f} "
                     f"| {e['chain_s'] / 3600:.2f} | {e['wall_s'] / 3600:.2f} "
                     f"| {sum(STUDY_JOBS.values()) / e['wall_s'] * 3600:,.0f} | {verdict} | {'; '.join(e['notes'])} |")
    return "\n".join(lines) + "\n"


def machine_header() -> str:
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU only (fake GPU ids)"
    return (f"# study_slice: {device}, torch {torch.__version__}, Python {sys.version.split()[0]}, "
            f"{os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")


# ------------------------------------------------------------------------ main


def plan(args) -> list[tuple[str, int, str]]:
    """Configurations in priority order: what is cut when the budget runs out is the least needed."""
    if args.quick:
        return [("lenet_300_100", 1, "fp32"), ("conv6", 1, "fp32"), ("lenet_300_100", 2, "fp32"),
                ("conv6", 2, "fp32"), ("conv6", 2, "tf32")]
    configs = [("lenet_300_100", 1, "fp32"), ("conv6", 1, "fp32"), ("lenet_300_100", 8, "fp32"),
               ("conv6", 8, "fp32"), ("lenet_300_100", 4, "fp32"), ("conv6", 4, "fp32"),
               ("lenet_300_100", 2, "fp32"), ("conv6", 2, "fp32"), ("conv6", 8, "bf16"), ("conv6", 8, "tf32"),
               ("conv2", 8, "fp32"), ("conv4", 8, "fp32"), ("lenet_300_100", 8, "tf32")]
    return configs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder for study_slice.md / .json")
    parser.add_argument("--budget", type=float, default=400, help="seconds for the whole script (hard cap)")
    parser.add_argument("--quick", action="store_true", help="tiny data and durations (CPU dry run)")
    parser.add_argument("--fake-gpu", action="store_true",
                        help="on a CPU box: jobs take slots of a fake GPU 0 and train on the CPU")
    parser.add_argument("--work", default=None, help="scratch folder (default: a temp dir)")
    parser.add_argument("--cores", type=int, default=os.cpu_count())
    parser.add_argument("--configs", nargs="*", help="run only these, e.g. lenet-k2-fp32 conv6-k8-bf16")
    parser.add_argument("--lenet-iterations", type=int, default=None)
    parser.add_argument("--conv-iterations", type=int, default=None)
    args = parser.parse_args()
    start = time.monotonic()
    deadline = start + args.budget - 15  # 15 s for the tables
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    args.work = args.work or tempfile.mkdtemp(prefix="study_slice-")
    lenet_it = args.lenet_iterations or (40 if args.quick else 3000)
    conv_it = args.conv_iterations or (20 if args.quick else 1000)
    args.iterations = {"lenet": lenet_it, "conv2": conv_it, "conv4": conv_it, "conv6": conv_it}
    # Jobs run `python -m ...`: make `python` this interpreter (a GPU box may only have python3).
    bin_dir = Path(args.work) / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    (bin_dir / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')  # not a symlink: a
    (bin_dir / "python").chmod(0o755)  # venv's interpreter finds its packages by the path it runs as
    os.environ["PATH"] = f"{bin_dir}{os.pathsep}{os.environ['PATH']}"
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    # One GPU, named, so that no wrapper imports torch to count the GPUs (seconds per job).
    # With --fake-gpu on a CPU box the jobs still take slots of it and train on the CPU.
    os.environ["LOTTO_GPUS"] = "0"
    if not args.fake_gpu and not shutil.which("nvidia-smi"):
        parser.error("no nvidia-smi here: on a CPU box run with --fake-gpu (and --quick)")
    header = machine_header()
    print(header, flush=True)
    # `timeout` (or a closed session) sends SIGTERM: leave through `finally`, tables written
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(f"study_slice: stopped by SIGTERM after "
                                                      f"{time.monotonic() - start:.0f} s"))
    sampler = GpuSampler()
    data_cache = Path(args.work) / "data-cache"
    rows: list[dict] = []
    seconds_per_job: dict[str, float] = {}
    try:
        configs = plan(args)
        if args.configs:
            configs = [(m, int(k[1:]), p) for m, k, p in (c.split("-") for c in args.configs)]
            configs = [({v: m for m, v in SHORT_NAMES.items()}[m], k, p) for m, k, p in configs]
        for model, k, precision in configs:
            remaining = deadline - time.monotonic()
            # Skip a configuration the slices so far say would not finish in time: 4k jobs on k
            # slots are about 4 waves of the slowest job seen for this model (conv6's for an
            # unseen conv net), plus Snakemake's start.
            fallback = seconds_per_job.get("conv6", 8.0) if model.startswith("conv") else 8.0
            slowest = seconds_per_job.get(model, fallback)
            guess = 4 * slowest + 15
            if remaining < guess:
                print(f"skipped {model} k={k} {precision}: {remaining:.0f} s left, needs ~{guess:.0f} s", flush=True)
                continue
            row = run_config(args, model, k, precision, data_cache, sampler, deadline)
            rows.append(row)
            if "makespan_s" in row:
                seconds_per_job[model] = max(seconds_per_job.get(model, 0), row["job_wall_median_s"])
            print(f"{row['config']}: {row['jobs']} jobs, makespan {fmt(row.get('makespan_s', math.nan))} s, "
                  f"{fmt(row.get('trainings_per_hour', math.nan), 0)} trainings/h, "
                  f"util {fmt(row.get('util', math.nan), 0)}%, J/training "
                  f"{fmt(row.get('joules_per_training', math.nan))}{'  FAILED' if row['failed'] else ''}",
                  flush=True)
            write_results(out, rows, header)  # after each slice: a run killed later keeps these
    finally:
        sampler.stop()
        print(write_results(out, rows, header), flush=True)
        print(f"total {time.monotonic() - start:.0f} s; scratch in {args.work}", flush=True)


def write_results(out: Path, rows: list[dict], header: str) -> str:
    """study_slice.md and .json of the slices so far; returns the markdown."""
    extrapolations = [e for k in (1, 2, 4, 8) for p in ("fp32", "bf16", "tf32")
                      if (e := extrapolate(rows, k, p)) is not None]
    text = tables(rows, extrapolations, header)
    (out / "study_slice.md").write_text(text)
    (out / "study_slice.json").write_text(json.dumps({"rows": rows, "extrapolations": extrapolations},
                                                     indent=1, default=str))
    return text


if __name__ == "__main__":
    main()
