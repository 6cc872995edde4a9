"""`python -m lotto status`: which trainings of each experiment are done, in progress or
pending, read from the results folder alone (no Snakemake, no torch).

Expected trainings come from `results/<experiment>/spec.json`: for every seed, the dense
round 0 (shared, in `results/dense/<dense_key>/seed<S>/`), the pruned rounds 1..N in
`results/<experiment>/seed<S>/round<R>/`, and each control branch of each pruned round in
`round<R>/<branch>/`. A training is done when its metrics.parquet exists, in progress when
its folder exists without one (a running or interrupted job; resume.pt holds its progress),
and pending otherwise. Every path comes from lotto.core.layout, as the workflow's do.

An Early-Bird experiment (an `earlybird` section) has no rounds: per seed, its search in
`results/<experiment>/eb/seed<S>/search/` and each retraining in `.../<ratio>/<ticket>-<mode>/`
(lotto.methods.eb_plan), listed by ratio and retraining instead of round and branch.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from lotto.core import io, layout, metrics
from lotto.core.spec import ExperimentSpec
from lotto.methods import eb_plan

HEADER = ("seed", "round", "branch", "state", "density", "acc@stop", "acc@final", "note")
EB_HEADER = ("seed", "ratio", "retraining", *HEADER[3:])


@dataclass(frozen=True)
class Training:
    seed: int
    round: int | str  # Early-Bird: 'search' or the ratio ('p30')
    branch: str  # Early-Bird: 'dense' (the search) or '<ticket>-<mode>'
    directory: Path


def expected_trainings(spec: ExperimentSpec, results: Path) -> list[Training]:
    """Every training the workflow runs for `spec`, in chain order."""
    if spec.earlybird is not None:
        return _earlybird_trainings(spec, results)
    out = []
    for seed in spec.seeds:
        out.append(Training(seed, 0, "main", Path(layout.dense_dir(spec.dense_key, seed, results))))
        for round_ in range(1, spec.pruning.rounds + 1):
            round_dir = Path(layout.pruned_round_dir(spec.name, seed, round_, results))
            out.append(Training(seed, round_, "main", round_dir))
            out.extend(Training(seed, round_, branch, Path(layout.branch_dir(spec.name, seed, round_, branch, results)))
                       for branch in spec.branches)
    return out


def _earlybird_trainings(spec: ExperimentSpec, results: Path) -> list[Training]:
    out = []
    for seed in spec.seeds:
        seed_dir = Path(layout.eb_seed_dir(spec.name, seed, results))
        out.append(Training(seed, "search", "dense", Path(layout.eb_search_dir(spec.name, seed, results))))
        for name in eb_plan.retrainings(spec):
            ratio, retraining = name.split("/")
            out.append(Training(seed, ratio, retraining, seed_dir / name))
    return out


def training_state(training: Training) -> dict[str, str]:
    """State and, when done, density and test accuracies (at early stop and final) in %."""
    row = {"state": "pending", "density": "-", "acc@stop": "-", "acc@final": "-", "note": ""}
    metrics_file = training.directory / "metrics.parquet"
    if metrics_file.exists():
        try:
            summary = metrics.summarize(metrics.read([metrics_file])).iloc[0]
        except (io.CorruptFileError, ValueError, KeyError) as err:
            return {**row, "state": "corrupt", "note": str(err).splitlines()[0]}
        return {
            "state": "done",
            "density": f"{summary.density * 100:.3g}%",
            "acc@stop": "no val set" if math.isnan(summary.early_stop_accuracy)
            else f"{summary.early_stop_accuracy * 100:.2f}%",
            "acc@final": f"{summary.final_accuracy * 100:.2f}%",
            "note": "diverged" if summary.status == "diverged" else _earlybird_note(training.directory),
        }
    if training.directory.is_dir():
        resumable = (training.directory / "resume.pt").exists()
        return {**row, "state": "in progress", "note": "resume.pt saved" if resumable else ""}
    return row


def _earlybird_note(directory: Path) -> str:
    """Where an Early-Bird search drew its tickets, or which epoch a retrained ticket is from."""
    for name in ("eb.json", "summary.json"):
        try:
            facts = json.loads((directory / name).read_text())
        except (OSError, ValueError):
            continue
        if "draw_epoch" in facts:
            draws = (f"{ratio}@{epoch if epoch is not None else 'none'}" for ratio, epoch in facts["draw_epoch"].items())
            return f"drawn at epoch: {', '.join(draws)} of {facts['epochs_total']}"
        return f"ticket of epoch {facts['epoch']}" + ("" if facts["drawn"] else " (never drawn: last mask)")
    return ""


def render(results: Path) -> str:
    """A plain-text status of every experiment under `results`."""
    spec_files = sorted(Path(results).glob("*/spec.json"))
    if not spec_files:
        return f"{results}: no experiments yet (no {results}/<experiment>/spec.json)"
    return "\n\n".join(_render_experiment(path, Path(results)) for path in spec_files)


def _render_experiment(spec_file: Path, results: Path) -> str:
    try:
        spec = ExperimentSpec.from_dict(json.loads(spec_file.read_text()))
    except (ValueError, KeyError, TypeError) as err:
        return f"{spec_file}: unreadable spec ({type(err).__name__}: {err}); rerun the workflow to rewrite it"
    rows = []
    for training in expected_trainings(spec, results):
        state = training_state(training)
        rows.append((str(training.seed), str(training.round), training.branch, *state.values()))
    header = HEADER if spec.earlybird is None else EB_HEADER
    counts = {s: sum(r[3] == s for r in rows) for s in ("done", "in progress", "pending", "corrupt")}
    collected = Path(layout.experiment_file(spec.name, "metrics.parquet", results)).exists()
    title = (
        f"{spec.name}  (dense {spec.dense_key}; {spec.pruning.rounds} pruned rounds; "
        f"branches: {', '.join(spec.branches) or 'none'}; seeds: {', '.join(map(str, spec.seeds))})"
    )
    if spec.earlybird is not None:
        title = (
            f"{spec.name}  (Early-Bird search and {len(eb_plan.retrainings(spec))} retrainings per seed; "
            f"ratios: {', '.join(eb_plan.ratio_label(r) for r in spec.earlybird.ratios)}; "
            f"seeds: {', '.join(map(str, spec.seeds))})"
        )
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n) + f" of {len(rows)}"
    summary += "; collected table written" if collected else ""
    return "\n".join([title, *_table([header, *rows]), f"  {summary}"])


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADER))]
    return ["  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
