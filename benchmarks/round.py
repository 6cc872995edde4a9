"""A round at the papers' evaluation cadence: its time, the share spent evaluating, memory.

    python benchmarks/round.py                                  # CPU, LeNet-300-100
    python benchmarks/round.py --device cuda --models lenet_300_100 conv6 resnet20
    python benchmarks/round.py --device cuda --full             # the papers' whole rounds
    python benchmarks/round.py --device cuda --eager            # + steps without CUDA graphs

A round is `lotto.core.train.train` with validation (5,000 held-out training images) and test
(10,000) evaluated every 100 iterations and at step 0, as every lotto round does. Without --full
each timed run is `--steps` iterations, made twice back to back: with evaluation and with
empty val/test splits. Their medians give the time per step and per evaluation, from which
the whole round (50K iterations for LeNet-300-100, 30K for Conv-6 and ResNet-20, 501 or 301
evaluations) and its eval share are computed. With --full the whole round runs once per
variant (no eval share then).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import common
import torch
from throughput import CASES, Case, load_splits, new_model, without_evaluation

from lotto.core import masks
from lotto.core.train import train

EVAL_EVERY = 100
ROUND_TARGET_S = {"lenet_300_100": 15.0, "conv6": 60.0, "resnet20": 90.0}  # on an H100
EVAL_SHARE_TARGET = 0.25


def run_round(
    case: Case,
    splits,
    device: torch.device,
    steps: int,
    bf16: bool,
    graph: bool,
    clock: common.Clock,
) -> tuple[float, float]:
    """Seconds for `steps` iterations with evaluation every EVAL_EVERY, and final test acc."""
    model = new_model(case, splits, device)
    precision = "bf16" if bf16 else "fp32"
    spec = replace(case.training, eval_every=EVAL_EVERY, cuda_graph=graph, precision=precision)
    result = None

    def go() -> None:
        nonlocal result
        result = train(model, splits, spec, mask=masks.ones(model), seed=0, steps=steps)

    seconds = common.time_call(go, device, clock)
    test = [r for r in result.rows if r["split"] == "test"]
    return seconds, test[-1]["accuracy"]


def measure(
    case: Case,
    device: torch.device,
    steps: int,
    repeats: int,
    full: bool,
    bf16: bool,
    graph: bool,
    cache_dir: Path,
    clock: common.Clock,
) -> dict[str, float]:
    splits = load_splits(case, cache_dir, device)
    quiet = without_evaluation(splits)
    duration = case.training.duration
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    run_round(case, splits, device, 2 * EVAL_EVERY, bf16, graph, clock)  # warm-up
    if full:
        seconds, accuracy = run_round(case, splits, device, duration, bf16, graph, clock)
        return {
            "round_s": seconds,
            "share": float("nan"),
            "eval_s": float("nan"),
            "step_ms": float("nan"),
            "accuracy": accuracy,
            **_memory(device),
        }
    with_eval, without, accuracy = [], [], 0.0
    for _ in range(repeats):
        seconds, accuracy = run_round(case, splits, device, steps, bf16, graph, clock)
        with_eval.append(seconds)
        without.append(run_round(case, quiet, device, steps, bf16, graph, clock)[0])
    evals = steps // EVAL_EVERY + 1  # lotto also evaluates at step 0
    per_eval = max(0.0, common.median(with_eval) - common.median(without)) / evals
    per_step = common.median(without) / steps
    eval_total = (duration // EVAL_EVERY + 1) * per_eval
    round_s = duration * per_step + eval_total
    share = eval_total / round_s
    return {
        "round_s": round_s,
        "share": share,
        "eval_s": per_eval,
        "step_ms": 1e3 * per_step,
        "accuracy": accuracy,
        **_memory(device),
    }


def _memory(device: torch.device) -> dict[str, float]:
    cuda = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else float("nan")
    return {"rss_mib": common.peak_rss_mib(), "cuda_mib": cuda}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_run_options(parser)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--models", nargs="+", choices=list(CASES), default=["lenet_300_100"])
    parser.add_argument("--steps", type=int, default=1000, help="iterations per timed run")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--full", action="store_true", help="run whole rounds, once each")
    parser.add_argument(
        "--bf16",
        action="store_true",
        help="on CUDA also run each model with training.precision: bf16",
    )
    parser.add_argument(
        "--eager",
        action="store_true",
        help="on CUDA also run each model eagerly (training.cuda_graph: false)",
    )
    args = parser.parse_args(argv)
    device = common.run_device(parser, args)
    torch.set_num_threads(args.threads)
    # (bf16, CUDA graph): the default step (a graph on a GPU), then what was asked for
    variants = [(False, True)]
    if args.device == "cuda":
        variants += ([(False, False)] if args.eager else []) + ([(True, True)] if args.bf16 else [])

    what = (
        "whole rounds, one run each"
        if args.full
        else (
            f"{args.steps} iterations per run, median of {args.repeats}, whole round extrapolated"
        )
    )
    what += f"; {args.clock}-clock seconds"
    print(f"## A round with evaluation every {EVAL_EVERY} iterations ({args.device}; {what})\n")
    print(common.header(args.threads, args.device) + "\n")
    rows, checks = [], []
    for model in args.models:
        case = CASES[model]
        for bf16, graph in variants:
            r = measure(
                case,
                device,
                args.steps,
                args.repeats,
                args.full,
                bf16,
                graph,
                args.cache,
                common.Clock(args.clock),
            )
            print(f"[{model} bf16={bf16} graph={graph} done]", file=sys.stderr, flush=True)
            precision = (
                "bf16" + (" + channels_last" if model != "lenet_300_100" else "")
                if bf16
                else "fp32"
            )
            if args.device == "cuda":
                precision += ", CUDA graph" if graph else ", eager"
            rows.append(
                [
                    model,
                    precision,
                    f"{case.training.duration:,}",
                    f"{r['round_s']:,.1f}",
                    f"{r['step_ms']:.3f}",
                    f"{r['eval_s']:.3f}",
                    f"{100 * r['share']:.0f}%",
                    f"{r['accuracy']:.3f}",
                    f"{r['rss_mib']:,.0f}",
                    f"{r['cuda_mib']:,.0f}",
                ]
            )
            if not args.full:
                checks.append(
                    common.target(
                        f"{model} {precision}: eval share of a round",
                        100 * r["share"],
                        100 * EVAL_SHARE_TARGET,
                        at_most=True,
                        unit="%",
                    )
                )
            if args.device == "cuda":
                checks.append(
                    common.target(
                        f"{model} {precision}: whole round",
                        r["round_s"],
                        ROUND_TARGET_S[model],
                        at_most=True,
                        unit=" s",
                    )
                )
    headers = [
        "model",
        "precision, step",
        "iterations",
        "round s",
        "step ms",
        "s per eval",
        "eval share",
        "final test acc",
        "peak RSS MiB",
        "CUDA max alloc MiB",
    ]
    print(common.markdown_table(headers, rows))
    print("\nTargets:\n" + "\n".join(checks))
    return 0


if __name__ == "__main__":
    sys.exit(main())
