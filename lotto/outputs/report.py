"""The HTML report: per experiment its figures, its table and its resolved spec, then the
facts of the run (package versions, machine, wall time of each job).

Figures are linked by paths relative to the report, never absolute, so the whole results
folder can be moved or copied and the report still shows them. A figure or table belongs to
an experiment when the experiment's name is one of its folders, its file stem, or the start
of its stem followed by '_', '-' or '.' (the longest such name wins); the rest go into a
section of comparisons across experiments. A figure whose file stem has a caption in
lotto.outputs.eb_figures.CAPTIONS (the Early-Bird figures) shows it under its name.
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pandas as pd

from lotto import __version__
from lotto.core import io
from lotto.core.errors import InvalidValue
from lotto.core.spec_types import EXECUTION_ONLY
from lotto.outputs.eb_figures import CAPTIONS
from lotto.outputs.tables import template_environment

VERSIONED_PACKAGES = ("torch", "torchvision", "numpy", "pandas", "matplotlib", "snakemake")
SHARED_SECTION = "Across experiments"


def collect_run_facts(benchmark_files: Iterable[str | Path], root: str | Path) -> dict[str, Any]:
    """Versions, the machine building the report (`device`), and the wall time of each benchmarked job
    (Snakemake benchmark TSVs; a job is named by its file's path under `root`, minus '.tsv').
    A file listed twice (a dense round shared by experiments) counts once."""
    unique = dict.fromkeys(Path(path).resolve() for path in benchmark_files)
    jobs = [_read_benchmark(path, Path(root)) for path in unique]
    jobs.sort(key=lambda job: job["job"])
    return {
        "versions": package_versions(),
        "device": describe_device(),
        "jobs": jobs,
        "total_seconds": float(sum(job["seconds"] for job in jobs)),
    }


def package_versions() -> dict[str, str]:
    """Installed versions, read from package metadata (nothing is imported, nothing required)."""
    versions = {"python": platform.python_version(), "lotto": __version__}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def describe_device() -> str:
    """OS, CPU count and the GPUs torch can see."""
    import torch

    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    cpu = platform.processor() or platform.machine()
    text = f"{platform.system()} {platform.release()}, {os.cpu_count()} CPUs ({cpu})"
    return text + (f", GPU: {', '.join(gpus)}" if gpus else ", no GPU")


def _read_benchmark(path: Path, root: Path) -> dict[str, Any]:
    try:
        table = pd.read_csv(path, sep="\t")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: benchmark file not found") from None
    if "s" not in table.columns or table.empty:
        raise InvalidValue(
            f"{path}: not a Snakemake benchmark file; expected a tab-separated table with an "
            f"'s' column and at least one row, found columns {list(table.columns)}"
        )
    rss = pd.to_numeric(table.get("max_rss", pd.Series(dtype=float)), errors="coerce").max()
    return {
        "job": _job_name(path, root),
        "seconds": float(pd.to_numeric(table["s"], errors="coerce").mean()),
        "max_rss_mb": None if pd.isna(rss) else float(rss),
    }


def _job_name(path: Path, root: Path) -> str:
    try:
        relative = path.resolve().relative_to(root.resolve())
    except ValueError:
        relative = path
    return relative.with_suffix("").as_posix() if relative.suffix == ".tsv" else relative.as_posix()


def owner(path: Path, experiments: Iterable[str], relative_to: Path) -> str | None:
    """The experiment a figure or table file belongs to (see the module docstring), or None."""
    try:
        parts = path.resolve().relative_to(relative_to.resolve()).parts
    except ValueError:
        parts = path.parts
    folders = set(parts[:-1])
    matches = [
        name
        for name in experiments
        if name in folders or any(path.name.startswith(name + sep) for sep in "_-.")
    ]
    return max(matches, key=len) if matches else None


def _results_part(spec: dict[str, Any]) -> dict[str, Any]:
    """The spec without its execution-only settings: spec files carry those at their defaults
    (jobs get the real values as --execution), so showing them would show defaults, not what
    ran; they do not change results."""
    training = {k: v for k, v in spec.get("training", {}).items() if k not in EXECUTION_ONLY}
    return {**spec, "training": training} if "training" in spec else spec


def write_report(
    out_html: str | Path,
    *,
    specs: dict[str, dict[str, Any]],
    figures: Iterable[str | Path],
    tables: Iterable[str | Path],
    run_facts: dict[str, Any],
) -> None:
    """Write the report. `tables` are HTML fragments from `tables.write_tables` (any other
    file, e.g. Markdown, is shown as preformatted text)."""
    out = Path(out_html)
    base = out.parent
    sections: dict[str, dict[str, Any]] = {
        name: {"name": name, "description": spec.get("description", ""), "figures": [], "tables": [],
               "spec": json.dumps(_results_part(spec), indent=2, sort_keys=True)}
        for name, spec in specs.items()
    }
    shared = {"name": SHARED_SECTION, "description": "", "figures": [], "tables": [], "spec": None}
    for path in map(Path, figures):
        _require(path, "figure")
        section = sections.get(owner(path, specs, base), shared)
        pdf = path.with_suffix(".pdf")
        section["figures"].append(
            {"src": _relative_url(path, base), "pdf": _relative_url(pdf, base) if pdf.exists() else None,
             "name": path.stem, "caption": CAPTIONS.get(path.stem, "")}
        )
    for path in map(Path, tables):
        _require(path, "table")
        section = sections.get(owner(path, specs, base), shared)
        section["tables"].append(
            {"href": _relative_url(path, base), "body": path.read_text(), "is_html": path.suffix == ".html"}
        )
    ordered = list(sections.values()) + ([shared] if shared["figures"] or shared["tables"] else [])
    html = template_environment().get_template("report.html.j2").render(sections=ordered, facts=run_facts)
    io.write_text(out, html)


def _require(path: Path, what: str) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} file not found; build it before the report")


def _relative_url(path: Path, base: Path) -> str:
    return quote(Path(os.path.relpath(path.resolve(), base.resolve())).as_posix())
