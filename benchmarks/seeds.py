"""Per-seed throughput of several seeds trained together (`lotto.core.vmap.train_seeds`) against
the same seeds trained one after another (`lotto.core.train.train`), LeNet-300-100; then a whole
pruned round of S seeds in one call (`lotto.rounds.run_round_seeds`, what one job of an
experiment with training.vectorize_seeds runs) against S single-seed rounds (`run_round`).

    python benchmarks/seeds.py                          # CPU, 1 thread, 8 seeds
    python benchmarks/seeds.py --device cuda --seeds 1 8 16

In the throughput table evaluation is off (empty val/test splits), so the numbers are training
steps alone. The whole rounds evaluate every 100 iterations on Fashion-MNIST's validation
(5,000) and test (10,000) images and include reading the data, pruning and writing the files,
not the start of a process (benchmarks/job.py measures that: one per job saved).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import common
import torch
from throughput import CASES, load_splits, new_model, without_evaluation

from lotto import rounds
from lotto.core import masks
from lotto.core.spec import resolve
from lotto.core.train import train
from lotto.core.vmap import train_seeds

TARGET_GAIN = 3.0  # per-seed throughput at 8 seeds, on a GPU


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_run_options(parser)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seeds", type=int, nargs="+", default=[8])
    parser.add_argument("--steps", type=int, default=None, help="iterations per timed run")
    parser.add_argument(
        "--round-steps", type=int, default=None, help="iterations of each whole pruned round"
    )
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    device = common.run_device(parser, args)
    torch.set_num_threads(args.threads)
    clock = common.Clock(args.clock)
    case = CASES["lenet_300_100"]
    steps = args.steps or (1000 if args.device == "cuda" else 200)
    splits = without_evaluation(load_splits(case, args.cache, device))
    spec = case.training

    print(
        f"## Seeds trained together vs one by one (LeNet-300-100, {args.device}, "
        f"{clock.kind}-clock)\n"
    )
    print(common.header(args.threads, args.device) + f"\n- median of {args.repeats} repeats\n")
    rows, checks = [], []
    # on a GPU each way runs eagerly and replayed from CUDA graphs (training.cuda_graph)
    graph_modes = [False, True] if args.device == "cuda" else [True]
    for n in args.seeds:
        seeds = list(range(n))
        for graph in graph_modes:
            spec = replace(case.training, cuda_graph=graph)

            def one_by_one(seeds=seeds, spec=spec) -> None:
                for s in seeds:
                    model = new_model(case, splits, device)
                    train(model, splits, spec, mask=masks.ones(model), seed=s, steps=steps)

            def together(seeds=seeds, spec=spec) -> None:
                models = [new_model(case, splits, device) for _ in seeds]
                train_seeds(
                    models,
                    splits,
                    spec,
                    masks=[masks.ones(m) for m in models],
                    seeds=seeds,
                    steps=steps,
                )

            together()  # warm-up
            separate, joint = [], []
            for _ in range(args.repeats):
                separate.append(n * steps / common.time_call(one_by_one, device, clock))
                joint.append(n * steps / common.time_call(together, device, clock))
            gain = common.median([b / a for a, b in zip(separate, joint, strict=True)])
            mode = ("CUDA graph" if graph else "eager") if args.device == "cuda" else "-"
            rows.append([n, mode, common.spread(separate), common.spread(joint), f"{gain:.2f}"])
            if n == 8 and args.device == "cuda":
                checks.append(
                    common.target(f"per-seed gain at 8 seeds, {mode}", gain, TARGET_GAIN, unit="x")
                )
    headers = ["seeds", "step", "one by one: seed-it/s", "together: seed-it/s", "gain"]
    print(common.markdown_table(headers, rows))
    round_steps = args.round_steps or (2000 if args.device == "cuda" else 300)
    print(
        f"\n## A whole pruned round ({round_steps} iterations, evaluation every 100): S seeds "
        f"in one run_round_seeds call vs S run_round calls\n"
    )
    rows = [whole_round(n, round_steps, args, clock) for n in args.seeds if n > 1]
    headers = ["seeds", "S rounds one by one: s", "one round of S seeds: s", "speed-up"]
    print(common.markdown_table(headers, rows))
    if checks:
        print("\nTargets:\n" + "\n".join(checks))
    return 0


def whole_round(n: int, steps: int, args: argparse.Namespace, clock: common.Clock) -> list:
    """Seconds of round 1 of `n` seeds (from their round 0, trained here first, untimed) run
    seed by seed and all together, interleaved repeat by repeat; the speed-up is the median of
    the per-repeat ratios."""
    training = CASES["lenet_300_100"].training
    spec = resolve(
        {
            "name": "bench",
            "seeds": list(range(n)),
            "dataset": {"name": "fashion_mnist"},
            "model": {"name": "lenet_300_100"},
            "training": {
                "optimizer": training.optimizer,
                "lr": training.lr,
                "eval_every": 100,
                "batch_size": training.batch_size,
                "duration": steps,
                "device": args.device,
                "vectorize_seeds": True,
            },
            "pruning": {"rounds": 1, "rates": {"fc": 0.2}},
        }
    )
    data = common.prepared("fashion_mnist", args.cache)
    seeds = list(range(n))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        dense = [root / "dense" / f"seed{s}" for s in seeds]
        for seed, out in zip(seeds, dense, strict=True):
            rounds.run_round(spec, data, seed, 0, out)

        def one_by_one() -> None:
            for seed in seeds:
                rounds.run_round(
                    spec,
                    data,
                    seed,
                    1,
                    root / "alone" / f"seed{seed}",
                    dense_dir=dense[seed],
                    prev_dir=dense[seed],
                )

        def together() -> None:
            rounds.run_round_seeds(
                spec,
                data,
                seeds,
                1,
                [root / "joint" / f"seed{s}" for s in seeds],
                dense_dirs=dense,
                prev_dirs=dense,
            )

        together()  # warm-up
        separate, joint = [], []
        for _ in range(args.repeats):
            separate.append(common.time_call(one_by_one, args.device, clock))
            joint.append(common.time_call(together, args.device, clock))
    gain = common.median([a / b for a, b in zip(separate, joint, strict=True)])
    return [n, common.spread(separate), common.spread(joint), f"{gain:.2f}"]


if __name__ == "__main__":
    sys.exit(main())
