"""Shared pieces of the benchmarks: the machine header, timing, data, tables, targets.

Benchmarks are scripts (`python benchmarks/<name>.py`), not tests: they print a markdown
table headed by the hardware and versions they ran on, and a met / not met line per target.
Every number is the median of several repeats; ratios are taken repeat by repeat between
runs made back to back in the same process, so a machine whose load drifts still compares
like with like.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a checkout without installing lotto
    sys.path.insert(0, str(REPO))

from lotto.core import data as datasets  # noqa: E402

DEFAULT_CACHE = REPO / "build" / "bench-data"
# CIFAR-10 is not on this machine: Conv-6 and ResNet-20 train on generated images of its
# shape and size (the speed of a step does not depend on what the pixels show)
CIFAR_LIKE = {"n_train": 50000, "n_test": 10000, "shape": (3, 32, 32), "num_classes": 10, "seed": 0}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def header(threads: int | Sequence[int], device: str) -> str:
    """Markdown lines naming the machine, versions and settings a table was measured with."""
    lines = [
        f"- CPU: {cpu_name()}, {os.cpu_count()} logical cores; "
        f"load average at start {os.getloadavg()[0]:.1f}",
        f"- Python {platform.python_version()}, torch {torch.__version__}, "
        f"torch threads: {threads}",
    ]
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        lines.append(
            f"- GPU: {props.name}, {props.total_memory / 2**30:.0f} GiB, "
            f"CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}"
        )
    return "\n".join(lines)


def sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


@dataclass(frozen=True)
class Clock:
    """Wall-clock seconds, or CPU seconds of this process (steadier on a shared, loaded machine
    when the work runs on one thread)."""

    kind: str = "wall"

    def __post_init__(self) -> None:
        if self.kind not in ("wall", "cpu"):
            raise ValueError(f"clock {self.kind!r} is unknown; choose one of: wall, cpu")

    def now(self) -> float:
        return time.perf_counter() if self.kind == "wall" else time.process_time()


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """--device, --clock and --cache: what every timing benchmark asks."""
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="cpu: process CPU time, steadier on a loaded machine (1 thread only)",
    )
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="prepared data")
    parser.add_argument(
        "--no-cudnn-benchmark",
        dest="cudnn_benchmark",
        action="store_false",
        help="leave cuDNN's algorithm search off (lotto's jobs turn it on)",
    )


def run_device(parser: argparse.ArgumentParser, args: argparse.Namespace) -> torch.device:
    """The device of --device, refused up front when it is CUDA and none is visible; torch set
    up as a lotto job sets it up (lotto.cli)."""
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    return torch.device(args.device)


def time_call(fn: Callable[[], object], device: torch.device | str, clock: Clock) -> float:
    """Seconds `fn` takes, the device's queued work included."""
    sync(device)
    start = clock.now()
    fn()
    sync(device)
    return clock.now() - start


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def spread(values: Sequence[float]) -> str:
    """'median (min-max)' of a few repeats, to show how steady a number is."""
    return f"{median(values):,.1f} ({min(values):,.1f}-{max(values):,.1f})"


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def prepared(name: str, cache_dir: Path) -> Path:
    """The lotto tensor cache of `name` ('fashion_mnist' or 'cifar_like'), built once."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    out = cache_dir / f"{name}.pt"
    if not out.exists():
        if name == "cifar_like":
            datasets.prepare("synthetic", out, synthetic_options=CIFAR_LIKE)
        elif name == "fashion_mnist":
            datasets.prepare("fashion_mnist", out)
        else:
            raise ValueError(
                f"unknown benchmark data {name!r}; choose one of: fashion_mnist, cifar_like"
            )
    return out


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def target(name: str, value: float, bound: float, at_most: bool = False, unit: str = "") -> str:
    """One 'met / NOT met' line: `value` against `bound` (at least, or at most)."""
    met = value <= bound if at_most else value >= bound
    sign = "<=" if at_most else ">="
    return f"- {name}: {value:,.2f}{unit} (target {sign} {bound:g}{unit}): {'met' if met else 'NOT met'}"
