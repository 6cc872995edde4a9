"""Training throughput of lotto's loop against two references, model by model.

    python benchmarks/throughput.py                       # CPU, 1 and 2 threads, all models
    python benchmarks/throughput.py --device cuda         # GPU, plus eager, bf16 and TF32 variants
    python benchmarks/throughput.py --models lenet_300_100 --repeats 7 --clock cpu

Loops, all with the same model, optimizer (fused Adam / SGD) and batch size:

- lotto: `lotto.core.train.train` with evaluation effectively off (empty val/test splits), dense
  mask; `lotto 20%` is the same under a random mask of 20% density (re-zeroing included);
- plain: the training set in one tensor, a shuffled index per epoch, `x[idx]` gathers; the
  fastest loop one writes by hand, and the reference lotto must keep up with;
- DataLoader: a torchvision Dataset (PIL image per example, ToTensor, Normalize, and for
  ResNet-20 RandomCrop + RandomHorizontalFlip) through torch.utils.data.DataLoader, the loop
  most training scripts use (num_workers=0 on CPU so every loop has the same cores; 4 workers
  and pinned memory on CUDA).

On CUDA lotto replays each step from a CUDA graph (training.cuda_graph, the default), and the
benchmark adds: lotto eager (cuda_graph: false), lotto with training.precision: bf16 (bf16
autocast, + channels_last for conv nets) and lotto with TF32 matmuls.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import common
import torch
import torch.nn.functional as F

from lotto.core import data as datasets
from lotto.core import masks
from lotto.core.io import load_torch
from lotto.core.models import create_model
from lotto.core.spec import TrainingSpec
from lotto.core.train import make_optimizer, train


@dataclass(frozen=True)
class Case:
    """One model with the recipe the papers train it with."""

    model: str
    data: str  # fashion_mnist | cifar_like
    training: TrainingSpec
    augment: bool
    steps_cpu: int  # iterations per timed run
    steps_cuda: int


CASES = {
    "lenet_300_100": Case(
        "lenet_300_100",
        "fashion_mnist",
        TrainingSpec(optimizer="adam", lr=1.2e-3, batch_size=60, duration=50_000),
        augment=False,
        steps_cpu=300,
        steps_cuda=2000,
    ),
    "conv6": Case(
        "conv6",
        "cifar_like",
        TrainingSpec(optimizer="adam", lr=3e-4, batch_size=60, duration=30_000),
        augment=False,
        steps_cpu=4,
        steps_cuda=1000,
    ),
    "resnet20": Case(
        "resnet20",
        "cifar_like",
        TrainingSpec(
            optimizer="sgd",
            lr=0.1,
            momentum=0.9,
            weight_decay=1e-4,
            batch_size=128,
            duration=30_000,
            milestones=(20_000, 25_000),
        ),
        augment=True,
        steps_cpu=3,
        steps_cuda=600,
    ),
}


def load_splits(case: Case, cache_dir: Path, device: torch.device) -> datasets.Splits:
    splits = datasets.load(common.prepared(case.data, cache_dir), device=device)
    return replace(splits, augment=case.augment)


def without_evaluation(splits: datasets.Splits) -> datasets.Splits:
    """The same training data with empty val/test splits: evaluations cost nothing."""
    return replace(
        splits,
        val_x=splits.val_x[:0],
        val_y=splits.val_y[:0],
        test_x=splits.test_x[:0],
        test_y=splits.test_y[:0],
    )


def new_model(case: Case, splits: datasets.Splits, device: torch.device) -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model(
        case.model, input_shape=splits.input_shape, num_classes=splits.num_classes
    ).to(device)
    return model


def random_mask(model: torch.nn.Module, density: float) -> masks.Mask:
    generator = torch.Generator().manual_seed(0)
    return {
        name: torch.rand(m.weight.shape, generator=generator) < density
        for name, _, m in masks.prunable_layers(model)
    }


# ---------------------------------------------------------------------------------- loops
# Each builder does its setup and returns `run(steps)`, the part that is timed.


def lotto_loop(
    case: Case,
    splits: datasets.Splits,
    device: torch.device,
    density: float = 1.0,
    precision: str = "fp32",
    tf32: bool = False,
    graph: bool = True,
) -> Callable[[int], None]:
    quiet = without_evaluation(splits)
    model = new_model(case, splits, device)
    mask = masks.ones(model) if density == 1.0 else random_mask(model, density)
    spec = replace(case.training, eval_every=10**9, cuda_graph=graph, precision=precision)

    def run(steps: int) -> None:
        torch.backends.cuda.matmul.allow_tf32 = tf32
        try:
            train(model, quiet, spec, mask=mask, seed=0, steps=steps)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = False

    return run


def plain_loop(case: Case, splits: datasets.Splits, device: torch.device) -> Callable[[int], None]:
    model = new_model(case, splits, device)
    optimizer = make_optimizer(model.parameters(), case.training)
    x_all, y_all, batch = splits.train_x, splits.train_y, case.training.batch_size
    generator = torch.Generator(device=device).manual_seed(0)
    batches = _index_batches(len(x_all), batch, device)

    def run(steps: int) -> None:
        for idx in itertools.islice(batches, steps):
            x = x_all[idx]
            if case.augment:
                x = datasets.augment_batch(x, generator)
            loss = F.cross_entropy(model(x), y_all[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    return run


def _index_batches(n: int, batch: int, device: torch.device) -> Iterator[torch.Tensor]:
    """Shuffled index batches, epoch after epoch, on the device."""
    generator = torch.Generator().manual_seed(0)
    while True:
        order = torch.randperm(n, generator=generator).to(device)
        for i in range(n // batch):
            yield order[i * batch : (i + 1) * batch]


def dataloader_loop(
    case: Case, splits: datasets.Splits, device: torch.device, cache_dir: Path
) -> Callable[[int], None]:
    from torch.utils.data import DataLoader
    from torchvision import transforms

    model = new_model(case, splits, device)
    optimizer = make_optimizer(model.parameters(), case.training)
    raw = load_torch(common.prepared(case.data, cache_dir))
    channels = raw["train_x"].shape[1]
    mean = [float(raw["train_x"][:, c].float().mean()) / 255 for c in range(channels)]
    std = [float(raw["train_x"][:, c].float().std()) / 255 for c in range(channels)]
    steps_ = (
        [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()]
        if case.augment
        else []
    )
    transform = transforms.Compose(
        [*steps_, transforms.ToTensor(), transforms.Normalize(mean, std)]
    )
    if case.data == "fashion_mnist":
        from torchvision.datasets import FashionMNIST

        dataset = FashionMNIST(datasets.locate("fashion_mnist"), train=True, transform=transform)
    else:
        dataset = ImageArrays(raw["train_x"], raw["train_y"], transform)
    cuda = device.type == "cuda"
    loader = DataLoader(
        dataset,
        batch_size=case.training.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=4 if cuda else 0,
        pin_memory=cuda,
        persistent_workers=cuda,
    )
    batches = _forever(loader)

    def run(steps: int) -> None:
        for x, y in itertools.islice(batches, steps):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    return run


def _forever(loader) -> Iterator:
    while True:
        yield from loader


class ImageArrays:
    """A torchvision-style dataset over uint8 (N, C, H, W) images, read like CIFAR10 does:
    one PIL image per example, then the transform."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform) -> None:
        self.images = images.permute(0, 2, 3, 1).numpy()  # (N, H, W, C), as CIFAR10 keeps them
        self.labels = labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), self.labels[i]


# ---------------------------------------------------------------------------------- main


def loops_for(case: Case, splits, device: torch.device, cache_dir: Path) -> dict[str, Callable]:
    loops = {
        "lotto": lambda: lotto_loop(case, splits, device),
        "lotto 20% density": lambda: lotto_loop(case, splits, device, density=0.2),
        "plain": lambda: plain_loop(case, splits, device),
        "DataLoader": lambda: dataloader_loop(case, splits, device, cache_dir),
    }
    if device.type == "cuda":
        conv = case.model != "lenet_300_100"
        loops["lotto eager (cuda_graph: false)"] = lambda: lotto_loop(
            case, splits, device, graph=False
        )
        loops["lotto tf32"] = lambda: lotto_loop(case, splits, device, tf32=True)
        name = "lotto bf16" + (" + channels_last" if conv else "")
        loops[name] = lambda: lotto_loop(case, splits, device, precision="bf16")
    return loops


def measure(
    case: Case,
    device: torch.device,
    threads: int,
    repeats: int,
    clock: common.Clock,
    cache_dir: Path,
    steps: int | None,
    skip: frozenset[str] = frozenset(),
) -> tuple[list[list[object]], dict[str, float]]:
    """Rows of the table for one model; and the median ratio of lotto to each reference."""
    torch.set_num_threads(threads)
    splits = load_splits(case, cache_dir, device)
    steps = steps or (case.steps_cuda if device.type == "cuda" else case.steps_cpu)
    runs, failed = {}, {}
    for name, build in loops_for(case, splits, device, cache_dir).items():
        if name in skip:
            continue
        print(f"[{case.model}] {name}: building, warm-up", file=sys.stderr, flush=True)
        try:  # a variant the device or torch version cannot run is reported, not fatal
            runs[name] = build()
            runs[name](max(2, steps // 10))  # warm-up: allocator, kernels, DataLoader workers
        except Exception as err:  # noqa: BLE001
            runs.pop(name, None)
            failed[name] = f"failed: {type(err).__name__}: {str(err).splitlines()[0][:80]}"
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):  # interleaved, so drifting machine load hits every loop alike
        for name, run in runs.items():
            rates[name].append(steps / common.time_call(lambda r=run: r(steps), device, clock))
    ratios = {
        ref: common.median([a / b for a, b in zip(rates["lotto"], rates[ref], strict=True)])
        for ref in ("plain", "DataLoader")
        if ref in rates
    }
    rows = []
    for name, values in rates.items():
        vs_plain = common.median([a / b for a, b in zip(values, rates["plain"], strict=True)])
        rows.append(
            [case.model, device.type, threads, name, common.spread(values), f"{vs_plain:.2f}"]
        )
    rows += [[case.model, device.type, threads, name, why, ""] for name, why in failed.items()]
    return rows, ratios


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_run_options(parser)
    parser.add_argument(
        "--threads",
        type=int,
        nargs="+",
        default=None,
        help="torch threads (default: 1 2 on CPU, 1 on CUDA)",
    )
    parser.add_argument("--models", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=None, help="iterations per timed run")
    parser.add_argument(
        "--skip", nargs="+", default=[], help="loops to leave out (not lotto or plain), by name"
    )
    args = parser.parse_args(argv)
    if {"lotto", "plain"} & set(args.skip):
        parser.error("--skip: lotto and plain are what every ratio is taken against")
    device = common.run_device(parser, args)
    threads = args.threads or ([1, 2] if args.device == "cpu" else [1])
    clock = common.Clock(args.clock)

    print(f"## Training throughput ({args.device}, {clock.kind}-clock iterations/s)\n")
    print(common.header(threads, args.device) + f"\n- median of {args.repeats} repeats\n")
    headers = ["model", "device", "threads", "loop", "it/s median (min-max)", "vs plain"]
    print(common.markdown_table(headers, []), flush=True)
    checks = []
    for model in args.models:
        for n in threads:
            rows, ratios = measure(
                CASES[model],
                device,
                n,
                args.repeats,
                clock,
                args.cache,
                args.steps,
                frozenset(args.skip),
            )
            # rows as they come: a crash of a later model (a CUDA error ends the process) keeps them
            print("\n".join(common.markdown_table(headers, rows).splitlines()[2:]), flush=True)
            if args.device == "cpu":
                checks.append(
                    common.target(
                        f"{model}, {n} thread(s): lotto / plain", ratios["plain"], 0.9, unit="x"
                    )
                )
                if model == "lenet_300_100" and "DataLoader" in ratios:  # conv nets: see docs
                    checks.append(
                        common.target(
                            f"{model}, {n} thread(s): lotto / DataLoader",
                            ratios["DataLoader"],
                            4.0,
                            unit="x",
                        )
                    )
    if checks:
        print("\nTargets (CPU):\n" + "\n".join(checks))
    print(
        f"\npeak RSS {common.peak_rss_mib():,.0f} MiB"
        + (
            f", CUDA max allocated {torch.cuda.max_memory_allocated() / 2**20:,.0f} MiB"
            if args.device == "cuda"
            else ""
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
