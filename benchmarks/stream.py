"""Images/s of lotto's streamed data path (lotto.core.stream) against a plain torchvision
ImageFolder + DataLoader loop, on JPEG files this script writes first (ImageNet-sized).

CPU part (default): the data path alone at 224 px (random-resized crop + flip, normalised float
batches), both loops with the same number of worker processes, interleaved repeat by repeat.

GPU part (--train): ResNet-50 training images/s at 224 px, bf16 autocast, channels_last, batch
256, SGD: (a) the batch already on the device (the limit), (b) lotto's streamed path (nvjpeg
decoding on the device; workers read the files), (b') lotto's streamed path decoding in the
workers, (c) ImageFolder + DataLoader (PIL decoding in the workers, pinned memory). Targets:
(b) >= 0.9 x (a) and (b) > (c). `--train --device cpu --quick` runs the same code on a tiny
setting (the CPU check of the script, not a measurement).

    python benchmarks/stream.py                                   # CPU, ~4 min on 2 cores
    python benchmarks/stream.py --train --device cuda             # one GPU, ~8 min
    python benchmarks/stream.py --train --device cpu --quick      # CPU smoke run, ~1 min
"""

from __future__ import annotations

import argparse
import gc
import shutil
import warnings
from pathlib import Path

import torch
from common import Clock, header, markdown_table, median, spread, target, time_call

from lotto.core import stream

warnings.filterwarnings("ignore", "The image decoding", DeprecationWarning)  # torchvision 0.29


def write_jpegs(root: Path, count: int, width: int, height: int, classes: int = 10) -> None:
    """`count` training JPEGs of width x height in root/train/<class>/ (and a few in val/):
    smooth random colour fields plus noise, about ImageNet's bytes per pixel at quality 90."""
    from torchvision.io import encode_jpeg

    marker = root / f".done-{count}-{width}x{height}"
    if marker.exists():
        return
    shutil.rmtree(root, ignore_errors=True)
    generator = torch.Generator().manual_seed(0)
    for i in range(count + classes):
        split, label = ("train", i % classes) if i < count else ("val", i - count)
        field = torch.rand(1, 3, 6, 8, generator=generator) * 255
        smooth = torch.nn.functional.interpolate(field, size=(height, width), mode="bicubic")[0]
        image = (smooth + torch.randn(3, height, width, generator=generator) * 12).clamp(0, 255).to(torch.uint8)
        directory = root / split / f"n{label:08d}"
        directory.mkdir(parents=True, exist_ok=True)
        (directory / f"img_{i}.JPEG").write_bytes(encode_jpeg(image, quality=90).numpy().tobytes())
    marker.touch()


def lotto_source(index: Path, batch: int, device: torch.device, workers: int, size: int, on_device: bool | None):
    """lotto's streamed path: a function returning the next training batch (step by step)."""
    data = stream.load(index, val_size=0, image_size=size, resize=size * 8 // 7, augment=True, device=device,
                       workers=workers, decode_on_device=on_device)
    batches, steps = data.batches(batch, seed=0), iter(range(10**9))
    return lambda: batches(next(steps))


def reference_source(root: Path, batch: int, device: torch.device, workers: int, size: int):
    """The plain loop: torchvision's ImageFolder (PIL decoding) and a shuffling DataLoader."""
    from torchvision import datasets, transforms

    transform = transforms.Compose([
        transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip(), transforms.ToTensor(),
        transforms.Normalize(stream.IMAGENET_MEAN, stream.IMAGENET_STD),
    ])  # fmt: skip
    folder = datasets.ImageFolder(str(root / "train"), transform=transform)
    loader = torch.utils.data.DataLoader(folder, batch_size=batch, shuffle=True, num_workers=workers,
                                         pin_memory=device.type == "cuda", drop_last=True,
                                         persistent_workers=workers > 0, prefetch_factor=4 if workers else None)

    def endless():
        while True:
            for x, y in loader:
                yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)

    return endless().__next__


def images_per_second(make_source, consume, args, device: torch.device, clock: Clock) -> float:
    """One repeat on a fresh pipeline: warm-up batches (worker start and the first burst of
    batches the workers made while nothing was consumed: 2 per worker), then args.batches
    timed. Each loop's workers end before the next loop runs, so none prefetches while another
    is timed."""
    pipeline = [make_source()]
    for _ in range(max(2, 2 * args.workers)):
        consume(*pipeline[0]())

    def run():
        for _ in range(args.batches):
            consume(*pipeline[0]())

    seconds = time_call(run, device, clock)
    pipeline.clear()  # ends this pipeline's worker processes
    gc.collect()
    return args.batches * args.batch / seconds


def measure(sources: dict, consume, args, device: torch.device, clock: Clock) -> dict[str, list[float]]:
    """images/s of each source, args.repeats times, the sources interleaved repeat by repeat."""
    rates = {name: [] for name in sources}
    for _ in range(args.repeats):
        for name, make_source in sources.items():
            rates[name].append(images_per_second(make_source, consume, args, device, clock))
    return rates


def ratio(a: list[float], b: list[float]) -> float:
    return median([x / y for x, y in zip(a, b, strict=True)])


def settings(args) -> str:
    return (f"{args.repeats} repeats of {args.batches} timed batches of {args.batch} at {args.size} px (after "
            f"{max(2, 2 * args.workers)} warm-up batches, on a fresh pipeline each), {args.workers} loader "
            f"worker(s) each, from {args.images} JPEGs of {args.width}x{args.height}")


def cpu_part(args, index: Path, device: torch.device, clock: Clock) -> None:
    common = (args.batch, device, args.workers, args.size)
    sources = {
        "lotto streamed (decode in workers)": lambda: lotto_source(index, *common, None),
        "torchvision ImageFolder + DataLoader": lambda: reference_source(args.dir, *common),
    }
    rates = measure(sources, lambda x, y: None, args, device, clock)
    lotto, plain = rates.values()
    print(markdown_table(
        ["loop", "images/s (median, min-max)", "ratio to ImageFolder (median)"],
        [["lotto streamed (decode in workers)", spread(lotto), f"{ratio(lotto, plain):.2f}"],
         ["torchvision ImageFolder + DataLoader", spread(plain), "1.00"]],
    ))  # fmt: skip
    print(f"\n{settings(args)}")
    print(target("lotto streamed / ImageFolder (CPU)", ratio(lotto, plain), 1.0))


def train_part(args, index: Path, device: torch.device, clock: Clock) -> None:
    from torchvision.models import resnet50

    model = resnet50(num_classes=1000).to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)

    def train_step(x, y):
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    resident = (torch.randn(args.batch, 3, args.size, args.size, device=device)
                .contiguous(memory_format=torch.channels_last), torch.randint(0, 1000, (args.batch,), device=device))
    common = (args.batch, device, args.workers, args.size)
    sources = {
        "(a) data on the device": lambda: lambda: resident,
        "(b) lotto streamed, decode on the device": lambda: lotto_source(index, *common, None),
        "(b') lotto streamed, decode in workers": lambda: lotto_source(index, *common, False),
        "(c) ImageFolder + DataLoader": lambda: reference_source(args.dir, *common),
    }
    rates = measure(sources, train_step, args, device, clock)
    limit = rates["(a) data on the device"]
    print(markdown_table(["ResNet-50 training, bf16, channels_last", "images/s (median, min-max)", "ratio to (a)"],
                         [[name, spread(r), f"{ratio(r, limit):.2f}"] for name, r in rates.items()]))
    print(f"\n{settings(args)}")
    b, c = rates["(b) lotto streamed, decode on the device"], rates["(c) ImageFolder + DataLoader"]
    print(target("(b) / (a)", ratio(b, limit), 0.9))
    print(target("(b) / (c)", ratio(b, c), 1.0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--train", action="store_true", help="the GPU part: ResNet-50 training images/s")
    parser.add_argument("--quick", action="store_true", help="tiny setting (a check that the code runs)")
    parser.add_argument("--dir", type=Path, default=Path("/tmp/lotto-bench-jpegs"), help="where the JPEGs go")
    parser.add_argument("--images", type=int, help="training JPEGs (default 400; --train 8000)")
    parser.add_argument("--width", type=int, default=500)
    parser.add_argument("--height", type=int, default=375)
    parser.add_argument("--size", type=int, help="input side in pixels (default 224)")
    parser.add_argument("--batch", type=int, help="images per batch (default 32; --train 256)")
    parser.add_argument("--batches", type=int, help="timed batches per repeat (default 8; --train 20)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workers", type=int, default=stream.auto_workers(),
                        help="loader worker processes for both loops (default: lotto's auto count)")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    tiny = {"images": 40, "size": 64, "batch": 8, "batches": 2, "repeats": 1}
    defaults = {"images": 8000, "size": 224, "batch": 256, "batches": 20} if args.train else \
        {"images": 400, "size": 224, "batch": 32, "batches": 8}
    for key, value in (tiny if args.quick else defaults).items():
        if key == "repeats" or getattr(args, key) is None:
            setattr(args, key, value)
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True
    torch.set_num_threads(1 if device.type == "cpu" and not args.train else torch.get_num_threads())

    write_jpegs(args.dir, args.images, args.width, args.height)
    index = args.dir / "index.pt"
    stream.prepare("imagefolder", args.dir, index)
    print(header(torch.get_num_threads(), args.device))
    (train_part if args.train else cpu_part)(args, index, device, Clock("wall"))


if __name__ == "__main__":
    main()
