"""Per-seed throughput of several seeds trained together (`lotto.vmap.train_seeds`) against
the same seeds trained one after another (`lotto.train.train`), LeNet-300-100.

    python benchmarks/seeds.py                          # CPU, 1 thread, 8 seeds
    python benchmarks/seeds.py --device cuda --seeds 1 8 16

Evaluation is off (empty val/test splits) so the numbers are training steps alone.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import common
import torch
from throughput import CASES, load_splits, new_model, without_evaluation

from lotto import masks
from lotto.train import train
from lotto.vmap import train_seeds

TARGET_GAIN = 3.0  # per-seed throughput at 8 seeds, on a GPU


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seeds", type=int, nargs="+", default=[8])
    parser.add_argument("--steps", type=int, default=None, help="iterations per timed run")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    parser.add_argument("--cache", type=Path, default=common.DEFAULT_CACHE, help="prepared data")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
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
    for n in args.seeds:
        seeds = list(range(n))

        def one_by_one(seeds=seeds) -> None:
            for s in seeds:
                model = new_model(case, splits, device)
                train(model, splits, spec, mask=masks.ones(model), seed=s, steps=steps)

        def together(seeds=seeds) -> None:
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
        rows.append([n, common.spread(separate), common.spread(joint), f"{gain:.2f}"])
        if n == 8 and args.device == "cuda":
            checks.append(common.target("per-seed gain at 8 seeds", gain, TARGET_GAIN, unit="x"))
    headers = ["seeds", "one by one: seed-it/s", "together: seed-it/s", "gain"]
    print(common.markdown_table(headers, rows))
    if checks:
        print("\nTargets:\n" + "\n".join(checks))
    return 0


if __name__ == "__main__":
    sys.exit(main())
