"""Throughput of one training in several processes (lotto.core.distributed) against one process.

CPU (default): LeNet-300-100 on Fashion-MNIST (batch 60) and ResNet-20 on CIFAR-shaped data
(batch 128), trained by lotto.core.train.train in 1 process with 1 thread, 1 process with 2
threads, and 2 gloo processes of 1 thread each (torchrun), launched alternately. Each launch
trains `--repeats` times in its processes (the first, a warm-up, is dropped); the table shows
the median steps/s and its range over the launches' repeats, and the ratio to 1 process x 1
thread.

GPU (`--gpu-overhead`, prepared, not run here; ~8 min on one H200): on one GPU, the plain job
(CUDA graph), the same eager (what several processes run: lotto.core.train disables the graph
then), and a world of 1 on the collective path (process group of 1 NCCL rank: the flat
gradient all-reduce, GlobalBatchNorm's all-reduces, sharded evaluation, eager), for
LeNet-300-100 (Fashion-MNIST, batch 60), ResNet-20 and VGG-16 (CIFAR-shaped, batch 128), fp32
and bf16. The time ratio collective path / plain is what a multi-GPU job pays per GPU before
any communication between GPUs (which NCCL adds on top: ~2 x gradient bytes / bus bandwidth).

    python benchmarks/distributed.py                        # CPU, ~3 min on 2 cores
    python benchmarks/distributed.py --models lenet_300_100 --repeats 4 --launches 2
    python benchmarks/distributed.py --gpu-overhead         # one GPU
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from common import DEFAULT_CACHE, REPO, header, markdown_table, median, prepared

MODELS = {  # model -> (data, batch size, training steps per repeat on a CPU)
    "lenet_300_100": ("fashion_mnist", 60, 300),
    "resnet20": ("cifar_like", 128, 8),
    "vgg16": ("cifar_like", 128, 4),
}
CPU_MODELS = ["lenet_300_100", "resnet20"]


def worker(args: argparse.Namespace) -> None:
    """One process of a launch: train `repeats` times, print rank 0's steps/s as JSON."""
    import torch
    import torch.distributed as dist

    from lotto import rounds
    from lotto.core import masks
    from lotto.core.distributed import launched
    from lotto.core.spec import build_model, resolve
    from lotto.core.train import train

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    data_name, batch, steps = MODELS[args.model]
    steps = args.steps or steps
    doc = {"name": "bench", "dataset": {"name": "synthetic" if data_name == "cifar_like" else data_name,
                                        "val_size": 0},
           "model": {"name": args.model},
           "training": {"optimizer": "sgd", "lr": 0.01, "momentum": 0.9, "batch_size": batch, "duration": steps,
                        "eval_every": steps, "precision": args.precision, "cuda_graph": args.variant == "plain"}}
    if data_name == "cifar_like":
        from common import CIFAR_LIKE

        doc["dataset"]["synthetic"] = {**CIFAR_LIKE, "shape": list(CIFAR_LIKE["shape"])}
    spec = resolve(doc)
    splits = rounds.load_data(spec, prepared(data_name, Path(args.cache)), device)
    splits = dataclasses.replace(splits, test_x=splits.test_x[:1000], test_y=splits.test_y[:1000])
    if args.variant == "collective":  # a world of one on the collective path
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(29000 + os.getpid() % 1000))
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=0, world_size=1)
    with launched(device) as world:
        rates = []
        for repeat in range(args.repeats):
            torch.manual_seed(0)
            model = build_model(spec.model, spec.dataset).to(device)
            result = train(model, splits, spec.training, mask=masks.ones(model), seed=repeat, steps=steps,
                           label="bench")
            if repeat:  # the first is a warm-up
                rates.append(steps / result.seconds)
        if world.writer:
            print("RATES " + json.dumps(rates), flush=True)
    if dist.is_initialized():
        dist.destroy_process_group()


def launch(processes: int, threads: int, args: argparse.Namespace, model: str, variant: str = "plain",
           precision: str = "fp32") -> list[float]:
    base = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"] \
        if processes > 1 else [sys.executable]
    command = [*base, __file__, "--worker", "--model", model, "--threads", str(threads), "--repeats",
               str(args.repeats), "--device", args.device, "--cache", args.cache, "--variant", variant,
               "--precision", precision, "--steps", str(args.steps or 0)]  # fmt: skip
    # REPO first, the rest kept: on the GPU device, carried packages (jsonschema) are on PYTHONPATH
    env = dict(os.environ, OMP_NUM_THREADS=str(threads),
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1800)
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stdout}{done.stderr}")
    line = next(line for line in done.stdout.splitlines() if line.startswith("RATES "))
    return json.loads(line[len("RATES "):])


def cpu_scaling(args: argparse.Namespace) -> None:
    configs = [("1 process x 1 thread", 1, 1), ("1 process x 2 threads", 1, 2), ("2 processes x 1 thread (gloo)", 2, 1)]
    print(header([1, 2], "cpu"))
    print(f"- {args.launches} launches per row, alternating, {args.repeats - 1} timed repeats each "
          "(first dropped); steps/s of the training loop (evaluation at start and end on 1,000 test images)\n")
    rows = []
    for model in args.models:
        rates: dict[str, list[float]] = {name: [] for name, _, _ in configs}
        for _ in range(args.launches):
            for name, processes, threads in configs:
                rates[name] += launch(processes, threads, args, model)
        base = median(rates[configs[0][0]])
        for name, _, _ in configs:
            values = rates[name]
            rows.append((model, name, f"{median(values):,.1f} ({min(values):,.1f}-{max(values):,.1f})",
                         f"{median(values) / base:.2f}"))
    print(markdown_table(["model", "processes", "steps/s median (range)", "ratio to 1 x 1"], rows))


def gpu_overhead(args: argparse.Namespace) -> None:
    """One GPU: plain (CUDA graph) vs eager vs a world of 1 on the collective path."""
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("--gpu-overhead needs a CUDA GPU")
    print(header(1, "cuda"))
    rows = []
    for model in args.models:
        for precision in ("fp32", "bf16"):
            rates = {variant: launch(1, 1, args, model, variant, precision)
                     for variant in ("plain", "eager", "collective")}
            plain = median(rates["plain"])
            for variant, values in rates.items():
                rows.append((model, precision, variant, f"{median(values):,.1f}", f"{plain / median(values):.3f}"))
    print(markdown_table(["model", "precision", "variant", "steps/s", "time ratio to plain"], rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=list(MODELS),
                        help=f"default: {' '.join(CPU_MODELS)} on a CPU, all on a GPU")
    parser.add_argument("--repeats", type=int, default=4, help="trainings per launch (the first is a warm-up)")
    parser.add_argument("--launches", type=int, default=3, help="launches per configuration")
    parser.add_argument("--steps", type=int, default=0, help="steps per training (default: per model)")
    parser.add_argument("--cache", default=str(DEFAULT_CACHE))
    parser.add_argument("--gpu-overhead", action="store_true", help="one GPU: plain vs eager vs collective path")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    parser.add_argument("--variant", default="plain", help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    args.models = args.models or (list(MODELS) if args.gpu_overhead else CPU_MODELS)
    if args.gpu_overhead:
        args.device = "cuda"
        if not args.steps:
            args.steps = 500
        gpu_overhead(args)
    else:
        t0 = time.monotonic()
        cpu_scaling(args)
        print(f"\n({time.monotonic() - t0:.0f} s)")


if __name__ == "__main__":
    main()
