"""Wheels that let the GPU device machine run lotto's workflow, gathered here and checked offline.

The device (docs: the workplace's device README) has Python 3.12, torch, torchvision, numpy,
pandas, pyarrow, matplotlib, pyyaml and more, but no Snakemake and no network. This script puts
Snakemake (the version installed here, which the tests run with) and every package of its and
lotto's dependency closure that the device does not provide into the ignored `.whl/` folder,
as CPython 3.12 manylinux x86_64 wheels, one version each; `benchmarks/gpu_session.sh` installs
them there (`run(..., carry=[".whl"])`).

    python benchmarks/device_wheels.py              # download into .whl/, then validate
    python benchmarks/device_wheels.py --validate   # validate the .whl/ there is, offline
    python3 benchmarks/device_wheels.py --check     # on the device: are the requirements met?

PROVIDED names what is not carried: torch and what torch relies on (carrying another version
would shadow the one torch was built with), lotto's pinned scientific stack, and two packages
the closure takes in any version. Their versions are the device's where the workplace's notes
give them, else a conservative floor (older than any 2026 image would hold): the closure is
resolved against those versions, so that e.g. pydantic is one that accepts the floor's
typing-extensions. Validation resolves Snakemake and lotto's requirements with pip, offline,
from `.whl/` plus metadata-only stand-in wheels of PROVIDED: it fails if anything is missing,
doubled, forbidden or unused. `--check` (on the device, after the install) reads the installed
metadata and names every requirement of the closure the device does not meet.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from base64 import urlsafe_b64encode
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WHEELS = REPO / ".whl"
STAGE = REPO / "build" / "device-wheels"
LIMIT_MIB = 40  # the whole travelling tree may hold 64 MiB
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64",
             "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux_2_12_x86_64",
             "manylinux2010_x86_64", "manylinux_2_5_x86_64", "manylinux1_x86_64"]
TARGET = ["--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
          *(arg for platform in PLATFORMS for arg in ("--platform", platform))]

# Not carried: the device image has them (its versions where known, else a floor).
PROVIDED = {
    "torch": "2.11.0",              # the device's
    "torchvision": "0.26.0",        # the device's
    "numpy": "2.5.2",               # the device's
    "typing-extensions": "4.12.2",  # torch relies on it: never carried
    "jinja2": "3.1.4",              # torch relies on it: never carried
    "markupsafe": "2.1.5",          # jinja2's
    "filelock": "3.13.1", "fsspec": "2024.2.0", "sympy": "1.13.1", "networkx": "3.2.1",
    "setuptools": "70.0.0", "triton": "3.6.0", "pillow": "10.3.0",  # torch's and torchvision's
    "pandas": "2.2.0", "pyarrow": "15.0.0", "matplotlib": "3.8.0",  # lotto's stack
    "psutil": "5.9.8", "tabulate": "0.9.0",  # Snakemake takes any version
}
# Never carried either, beyond PROVIDED: torch's CUDA libraries and sympy's own dependency.
NEVER_CARRIED = re.compile(r"^(torch.*|nvidia-.*|cuda-.*|mpmath)$")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def wheel_name(path: Path) -> tuple[str, str]:
    name, version = path.name.split("-")[:2]
    return canonical(name), version


def snakemake_version() -> str:
    try:
        return importlib.metadata.version("snakemake")
    except importlib.metadata.PackageNotFoundError:
        sys.exit("device_wheels: no Snakemake here to take the version from; pass --snakemake VERSION")


def lotto_requirements() -> list[str]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]


def requirement_name(requirement: str) -> str:
    return canonical(re.match(r"[A-Za-z0-9_.-]+", requirement).group(0))


def python312() -> list[str]:
    """An interpreter of the device's Python version, so that markers are read as there."""
    candidates = ["python3.12", *sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.12*/bin/python3.12")))]
    for candidate in candidates:
        try:
            out = subprocess.run([candidate, "-c", "import sys, pip; print(sys.version_info[:2])"],
                                 capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if out.returncode == 0 and out.stdout.strip() == "(3, 12)":
            return [candidate]
    print("device_wheels: no Python 3.12 with pip here; resolving with this Python "
          f"{sys.version.split()[0]} (markers are read for it, not for 3.12)", file=sys.stderr)
    return [sys.executable]


def stand_in(name: str, version: str, folder: Path) -> None:
    """A metadata-only wheel of name==version: what the device provides, for the resolver."""
    dist = f"{name.replace('-', '_')}-{version}"
    files = {f"{dist}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{dist}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: device_wheels\nRoot-Is-Purelib: true\n"
                                        "Tag: py3-none-any\n"}
    record = [f"{path},sha256={urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).decode().rstrip('=')},"
              f"{len(text.encode())}" for path, text in files.items()]
    files[f"{dist}.dist-info/RECORD"] = "\n".join([*record, f"{dist}.dist-info/RECORD,,"]) + "\n"
    with zipfile.ZipFile(folder / f"{dist}-py3-none-any.whl", "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)


def stand_ins() -> Path:
    folder = STAGE / "provided"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for name, version in PROVIDED.items():
        stand_in(name, version, folder)
    constraints = STAGE / "provided.txt"
    constraints.write_text("".join(f"{name}=={version}\n" for name, version in PROVIDED.items()))
    return folder


def requirements(snakemake: str) -> list[str]:
    return [f"snakemake=={snakemake}", *lotto_requirements()]


def download(python: list[str], snakemake: str) -> None:
    """The closure into build/device-wheels/all (sdist-only pure-Python packages built into
    wheels), then all but PROVIDED into .whl/."""
    provided = stand_ins()
    everything, built = STAGE / "all", STAGE / "built"
    shutil.rmtree(everything, ignore_errors=True)
    built.mkdir(parents=True, exist_ok=True)
    command = [*python, "-m", "pip", "download", "-q", "--disable-pip-version-check", *TARGET,
               "--find-links", str(provided), "--find-links", str(built), "-c", str(STAGE / "provided.txt"),
               "-d", str(everything),  # what PROVIDED names needs no download (nor its own closure)
               *(r for r in requirements(snakemake) if requirement_name(r) not in PROVIDED)]
    for _ in range(6):
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode == 0:
            break
        missing = re.search(r"No matching distribution found for (\S+)", result.stderr)
        if not missing:
            sys.exit(f"device_wheels: pip download failed:\n{result.stderr[-3000:]}")
        # e.g. connection_pool: published as a source archive only; build it into a wheel here
        print(f"device_wheels: no wheel of {missing.group(1)}; building one from its source", file=sys.stderr)
        subprocess.run([*python, "-m", "pip", "wheel", "-q", "--no-deps", "--disable-pip-version-check",
                        "-w", str(built), missing.group(1)], check=True)
        if not all(path.name.endswith("-none-any.whl") for path in built.glob("*.whl")):
            sys.exit(f"device_wheels: {missing.group(1)} built a platform wheel here; it would not run there")
    else:
        sys.exit(f"device_wheels: pip download kept failing:\n{result.stderr[-3000:]}")
    WHEELS.mkdir(exist_ok=True)
    for old in WHEELS.glob("*.whl"):
        old.unlink()
    for path in sorted(everything.glob("*.whl")):
        if wheel_name(path)[0] not in PROVIDED:
            shutil.copy2(path, WHEELS / path.name)


def validate(python: list[str], snakemake: str) -> None:
    """Offline: .whl/ plus stand-ins of PROVIDED resolve Snakemake and lotto's requirements;
    one version per package, nothing forbidden, nothing unused, size under the limit."""
    provided = stand_ins()
    wheels = sorted(WHEELS.glob("*.whl"))
    if not wheels:
        sys.exit("device_wheels: .whl/ holds no wheels; run this script without --validate first")
    names = [wheel_name(path)[0] for path in wheels]
    doubled = sorted({name for name in names if names.count(name) > 1})
    forbidden = sorted(name for name in names if NEVER_CARRIED.match(name) or name in PROVIDED)
    if doubled or forbidden:
        sys.exit(f"device_wheels: .whl/ holds two versions of {doubled} / packages never carried {forbidden}")
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "report.json"
        env = dict(os.environ, PIP_CONFIG_FILE=os.devnull)  # no index, find-links or constraints of this machine
        result = subprocess.run(
            [*python, "-m", "pip", "install", "--isolated", "--dry-run", "--ignore-installed", "--no-index",
             "--disable-pip-version-check", *TARGET, "--target", str(Path(scratch) / "site"),
             "--find-links", str(WHEELS), "--find-links", str(provided), "-c", str(STAGE / "provided.txt"),
             "--report", str(report), *requirements(snakemake)],
            capture_output=True, text=True, env=env)
        if result.returncode != 0:
            sys.exit(f"device_wheels: NOT complete: pip cannot resolve offline:\n{result.stderr[-3000:]}")
        resolved = {canonical(item["metadata"]["name"]): item["metadata"]["version"]
                    for item in json.loads(report.read_text())["install"]}
    unused = sorted(set(names) - set(resolved))
    if unused:
        sys.exit(f"device_wheels: .whl/ holds wheels nothing needs: {unused}")
    total = sum(path.stat().st_size for path in wheels)
    print(f"device_wheels: complete for snakemake=={snakemake} and lotto's requirements on CPython 3.12 "
          f"manylinux x86_64 ({len(wheels)} wheels carried, {total / 2**20:.1f} MiB):")
    for path in wheels:
        print(f"  {path.stat().st_size / 2**20:6.2f} MiB  {path.name}")
    taken = sorted(f"{name}=={PROVIDED[name]}" for name in resolved if name in PROVIDED)
    print(f"provided by the device (version assumed as a floor unless the device's): {', '.join(taken)}")
    if total > LIMIT_MIB * 2**20:
        sys.exit(f"device_wheels: {total / 2**20:.1f} MiB is over the {LIMIT_MIB} MiB allowed")


def check_installed(snakemake: str) -> int:
    """On the device, after the install: every requirement of the closure is met by what this
    Python imports (carried and provided alike). Prints the shortfalls; returns their count."""
    from packaging.requirements import Requirement

    pending, seen, problems = [Requirement(r) for r in requirements(snakemake)], set(), []
    while pending:
        requirement = pending.pop()
        name = canonical(requirement.name)
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        try:
            version = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            problems.append(f"{requirement}: not installed")
            continue
        if not requirement.specifier.contains(version, prereleases=True):
            problems.append(f"{requirement}: {version} is installed")
        if name in seen:
            continue
        seen.add(name)
        pending += [Requirement(r) for r in importlib.metadata.requires(name) or []]
    for problem in problems:
        print(f"device_wheels --check: unmet {problem}")
    print(f"device_wheels --check: {len(seen)} packages checked, {len(problems)} unmet requirement(s)")
    return len(problems)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--snakemake", help="the version to carry (default: the one installed here)")
    parser.add_argument("--validate", action="store_true", help="only validate the .whl/ there is")
    parser.add_argument("--check", action="store_true", help="on the device: are the requirements met?")
    args = parser.parse_args()
    snakemake = args.snakemake or snakemake_version()
    if args.check:
        sys.exit(1 if check_installed(snakemake) else 0)
    python = python312()
    if not args.validate:
        download(python, snakemake)
    validate(python, snakemake)


if __name__ == "__main__":
    main()
