"""Do two checkouts of lotto write the same results? Run a tiny experiment of each kind, then
compare the two run trees file by file.

    python benchmarks/compare_outputs.py run /tmp/before --repo /tmp/base   # old checkout
    python benchmarks/compare_outputs.py run /tmp/after                     # this checkout
    python benchmarks/compare_outputs.py compare /tmp/before /tmp/after

`run` writes the experiments below (synthetic data, a few dozen iterations each: one of every
kind a refactor of the training loop can touch) into a fresh directory and runs the workflow of
`--repo` on one core, with that checkout first on PYTHONPATH: 5 to 8 minutes (2-core machine).

`compare` hashes every file under each tree's results/ and pairs them by path. A file is
`identical` when its bytes are. Files whose bytes differ are compared again without what
records when or how fast they were made (`same but timing`): a metrics parquet as a table
without its wall-clock columns, a PDF figure without its /CreationDate, the HTML report without
its section of job wall times and memory. Snakemake's benchmark tables and the job logs hold
times by nature and are counted apart (`timing only`). Exit status 0 only if every other file
is identical and both trees hold the same paths.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
# columns of metrics.parquet that measure time, not results
WALL_CLOCK_COLUMNS = ("seconds", "wall_seconds", "time", "duration_s")
# paths (relative to results/) that record times or machine state by nature
TIMING_DIRS = ("benchmarks/", "logs/")
# lotto.core.data_cache's splits files beside a prepared dataset: a cache of lotto.core.data.load, not a
# result (checkouts before it have none; before the content prefix, their names had only the key)
SPLITS_FILE = re.compile(r"\.splits-(?:[0-9a-f]{16}-)?[0-9a-f]{16}\.pt$")

BASE = {
    "dataset": {"name": "synthetic", "val_size": 200},
    "model": {"name": "lenet_300_100"},
    "training": {"optimizer": "adam", "lr": 0.002, "batch_size": 32, "duration": 60,
                 "eval_every": 25, "device": "cpu"},
    "pruning": {"rounds": 2, "rates": {"fc": 0.5}},
    "seeds": [0],
}
LOCAL_BRANCHES = ["reinit", "random_mask", "oneshot", "supermask", "supermask_random",
                  "shuffle_weights", "shuffle_mask", "scratch_b"]


def merged(base: dict, **sections: dict | list) -> dict:
    out = yaml.safe_load(yaml.safe_dump(base))
    for key, value in sections.items():
        out[key] = {**out[key], **value} if isinstance(value, dict) and key in out else value
    return out


EXPERIMENTS = {
    # round 0, pruned rounds from theta_0, every local control branch, in-round checkpoints, L2
    "cmp_lth": merged(BASE, training={"checkpoint_every": 20, "l2": 1e-4},
                      branches=LOCAL_BRANCHES),
    # rewind to step k (a replay of round 0), SGD with Nesterov, warm-up, a milestone, dropout
    "cmp_rewind_step": merged(BASE, model={"dropout": 0.2},
                              training={"optimizer": "sgd", "lr": 0.05, "momentum": 0.9,
                                        "nesterov": True, "warmup": 10, "milestones": [40]},
                              rewinding={"weights": "step", "step": 10, "lr": "rewind"}),
    # fine-tuning: keep the trained weights, constant final LR, own round length
    "cmp_finetune": merged(BASE, training={"milestones": [30]},
                           rewinding={"weights": "final", "lr": "final", "retrain": 30}),
    # rewind X% back along the previous round
    "cmp_back": merged(BASE, rewinding={"weights": "back", "back": 0.5}),
    # several seeds of each pruned round trained together (lotto.core.vmap), bf16 forward passes
    "cmp_vmap": merged(BASE, seeds=[0, 1],
                       training={"vectorize_seeds": True, "precision": "bf16", "l2": 1e-4},
                       rewinding={"weights": "step", "step": 10, "lr": "rewind"}),
    # learned masks (Training Optimal Masks): pretrain, then mask training
    "cmp_learn_mask": merged(BASE, pruning={"criterion": "optimal_mask",
                                            "mask_training": {"pretrain": 0.2, "steps": 20}}),
    # another experiment's tickets trained under this one's training
    "cmp_transfer": merged(BASE, training={"lr": 0.001}, branches=["transfer"],
                           transfer={"from": "cmp_lth"}),
    # Early-Bird: slimming search with BatchNorm L1, channel pruning, retraining, baselines
    "cmp_earlybird": {
        "dataset": {"name": "synthetic", "val_size": 50,
                    "synthetic": {"shape": [3, 16, 16], "n_train": 250, "n_test": 60}},
        "model": {"name": "vgg11", "width": 0.125},
        "training": {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "batch_size": 50,
                     "duration": "6ep", "eval_every": "2ep", "device": "cpu"},
        "seeds": [0],
        "earlybird": {"ratios": [0.3, 0.5], "window": 2, "epsilon": 0.5,
                      "baselines": ["lt_oneshot", "slimming"]},
    },
}


def run(out: Path, repo: Path) -> None:
    if out.exists() and any(out.iterdir()):
        sys.exit(f"{out} is not empty; give a fresh directory")
    (out / "experiments").mkdir(parents=True)
    names = []
    for name, doc in EXPERIMENTS.items():
        (out / "experiments" / f"{name}.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
        names.append(f"experiments/{name}.yaml")
    config = {"experiments": names, "use_gpu": False}
    (out / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    # `all` leaves out the Early-Bird figures and tables: name them
    early_bird = [path for name, doc in EXPERIMENTS.items() if "earlybird" in doc
                  for path in (*(f"results/figures/{name}/eb_{kind}.png" for kind in ("accuracy", "distances", "flops")),
                               f"results/tables/{name}-eb.md")]
    command = [sys.executable, "-m", "snakemake", "-s", str(repo / "Snakefile"),
               "--directory", str(out), "--configfile", str(out / "config.yaml"), "--cores", "1",
               "all", *early_bird]
    with open(out / "snakemake.log", "w") as log:
        done = subprocess.run(command, cwd=out, env=env, stdout=log, stderr=subprocess.STDOUT)
    if done.returncode:
        sys.exit(f"snakemake exited {done.returncode}; see {out / 'snakemake.log'}")


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def table_without_clock(data: bytes) -> pd.DataFrame:
    frame = pd.read_parquet(io.BytesIO(data))
    return frame.drop(columns=[c for c in WALL_CLOCK_COLUMNS if c in frame.columns])


# what a figure or the report says about when or how fast it was made
TIMESTAMPS = {
    ".pdf": re.compile(rb"/CreationDate \(D:[0-9Z+'-]*\)"),
    ".html": re.compile(rb"<p>Benchmarked jobs:.*?</details>", re.S),
}


def verdict(rel: str, a: bytes, b: bytes) -> str:
    if a == b:
        return "identical"
    if rel.startswith(TIMING_DIRS):
        return "timing only"
    suffix = Path(rel).suffix
    if suffix == ".parquet":
        left, right = table_without_clock(a), table_without_clock(b)
        if left.shape == right.shape and left.equals(right):
            return "same but timing"
    elif suffix in TIMESTAMPS:
        pattern = TIMESTAMPS[suffix]
        if pattern.search(a) and pattern.sub(b"", a) == pattern.sub(b"", b):
            return "same but timing"
    return "DIFFERENT"


def compare(left: Path, right: Path) -> int:
    files = {}
    for root in (left, right):
        base = root / "results"
        files[root] = {p.relative_to(base).as_posix(): p for p in sorted(base.rglob("*"))
                       if p.is_file() and not SPLITS_FILE.search(p.name)}
    only = set(files[left]) ^ set(files[right])
    counts: Counter[str] = Counter()
    for rel in sorted(set(files[left]) & set(files[right])):
        a, b = files[left][rel].read_bytes(), files[right][rel].read_bytes()
        kind = verdict(rel, a, b)
        counts[kind] += 1
        if kind != "identical":
            print(f"{kind:16} {rel}  {digest(a)[:12]} {digest(b)[:12]}")
    for rel in sorted(only):
        print(f"{'ONLY IN ' + (left.name if rel in files[left] else right.name):16} {rel}")
    print(f"{sum(counts.values())} files in both trees: "
          + ", ".join(f"{n} {kind}" for kind, n in counts.most_common())
          + f"; {len(only)} in one tree only")
    return 1 if counts["DIFFERENT"] or only else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    verbs = parser.add_subparsers(dest="verb", required=True)
    run_verb = verbs.add_parser("run", help="run the tiny experiments into a fresh directory")
    run_verb.add_argument("out", type=Path)
    run_verb.add_argument("--repo", type=Path, default=REPO, help="the checkout whose workflow runs")
    compare_verb = verbs.add_parser("compare", help="compare the results/ of two run directories")
    compare_verb.add_argument("left", type=Path)
    compare_verb.add_argument("right", type=Path)
    args = parser.parse_args()
    if args.verb == "run":
        run(args.out.resolve(), args.repo.resolve())
        return 0
    return compare(args.left, args.right)


if __name__ == "__main__":
    sys.exit(main())
