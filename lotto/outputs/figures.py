"""The papers' figures from a metrics table, sized for a single paper column.

Every function takes a metrics DataFrame (one or several experiments, lotto.core.metrics.SCHEMA)
and an output `*.png`; it writes the PNG (200 dpi) and a PDF with the same stem beside it,
each atomically, and returns the matplotlib Figure so that callers and tests can inspect it.

Conventions shared by the density plots: x is the percent of prunable weights remaining on
a log scale, inverted so the dense network (100%) is on the left; one line per
(experiment, branch) is the mean over seeds with min/max error bars; runs that diverged are
drawn as red crosses and left out of the mean; the dense network's mean (round 0) is a
dashed horizontal line.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.container import ErrorbarContainer
from matplotlib.figure import Figure
from matplotlib.ticker import FixedFormatter, FixedLocator, NullFormatter, NullLocator

from lotto.core import io, metrics
from lotto.core.errors import InvalidValue

matplotlib.use("Agg")  # no display needed on cluster nodes; figures are only saved

SIZE_IN = (3.5, 2.6)  # single column
BOXES_MAX_WIDTH_IN = 7.0  # box plots widen with their boxes, up to two columns
DPI = 200
MAX_DENSITY_TICKS = 7
LEGEND_INSIDE_MAX = 4  # more entries go below the axes
LEGEND_ROW_IN, LEGEND_PAD_IN = 0.17, 0.1
LEGEND_TWO_COLUMN_CHARS = 22  # longer labels would be cut at the figure's edges: one column
STYLE = {
    "font.size": 8,
    "axes.titlesize": 9,
    "axes.labelsize": 8,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "legend.fontsize": 8,
    "lines.linewidth": 1.2,
    "lines.markersize": 3.5,
    "errorbar.capsize": 2,
    "pdf.fonttype": 42,  # embed TrueType so the PDF text stays editable/searchable
}
MARKERS = ("o", "s", "^", "D", "v", "P", "*")
DIVERGED_LABEL = "diverged (not in mean)"
NO_EARLY_STOP = "no early stop: no validation set\n(dataset.val_size: 0); plot `which: final`"
WHICH = {
    "early_stop": ("early_stop_accuracy", "Test accuracy at early stop (%)"),
    "final": ("final_accuracy", "Final test accuracy (%)"),
}


def accuracy_vs_density(
    frame: pd.DataFrame, out: str | Path, *, which: str = "early_stop", title: str | None = None
) -> Figure:
    """Test accuracy (at the early-stop iteration, or at the end) vs percent of weights remaining."""
    if which not in WHICH:
        raise InvalidValue(f"unknown accuracy {which!r}; choose one of: {', '.join(WHICH)}")
    column, ylabel = WHICH[which]
    runs = _summaries(frame)
    runs["value"] = runs[column] * 100
    return _density_figure(runs, out, ylabel=ylabel, title=title)


def early_stop_vs_density(frame: pd.DataFrame, out: str | Path, *, title: str | None = None) -> Figure:
    """Early-stop iteration (minimum validation loss) vs percent of weights remaining."""
    runs = _summaries(frame)
    runs["value"] = runs["early_stop_step"].astype(float)
    return _density_figure(runs, out, ylabel="Early-stop iteration", title=title)


def curves(
    frame: pd.DataFrame, out: str | Path, *, densities: list[float], title: str | None = None
) -> Figure:
    """Test accuracy vs iteration of the main-branch rounds closest (in log density) to each
    requested density; mean over the seeds that did not diverge."""
    if not densities:
        raise InvalidValue("curves need at least one density, e.g. 1.0 0.5 0.2")
    for d in densities:
        if not 0 < d <= 1:
            raise InvalidValue(f"density {d!r} is out of range; allowed: 0 < density <= 1")
    main = _require_rows(frame)
    main = main[main.branch == "main"]
    if main.empty:
        raise InvalidValue("no 'main' branch rows in the metrics; curves plot the pruning chain only")
    runs = metrics.summarize(main)
    experiments = sorted(main.experiment.unique())
    with matplotlib.rc_context(STYLE):
        fig, ax = _new_axes()
        colors = matplotlib.colormaps["viridis"](np.linspace(0, 0.9, len(densities)))
        for exp_index, experiment in enumerate(experiments):
            exp_runs = runs[runs.experiment == experiment]
            round_density = exp_runs.groupby("round").density.mean()
            chosen = list(dict.fromkeys(_closest_round(round_density, d) for d in densities))
            for round_, color in zip(chosen, colors, strict=False):
                ok_seeds = exp_runs[(exp_runs["round"] == round_) & (exp_runs.status == "ok")].seed
                n_diverged = int(((exp_runs["round"] == round_) & (exp_runs.status != "ok")).sum())
                rows = main[
                    (main.experiment == experiment)
                    & (main["round"] == round_)
                    & (main.split == "test")
                    & main.seed.isin(ok_seeds)
                ]
                label = _percent_label(round_density[round_] * 100) + "%"
                if len(experiments) > 1:
                    label = f"{experiment}: {label}"
                if n_diverged:
                    label += f" ({n_diverged} diverged, not in mean)"
                if rows.empty:
                    continue
                mean = rows.groupby("step").accuracy.mean() * 100
                ax.plot(mean.index, mean.values, color=color, label=label,
                        linestyle=("-", "--", ":", "-.")[exp_index % 4])
        ax.set_xlabel("Training iteration")
        ax.set_ylabel("Test accuracy (%)")
        _finish(fig, ax, out, title)
    return fig


def accuracy_boxes(
    frame: pd.DataFrame, out: str | Path, *, which: str = "early_stop", title: str | None = None
) -> Figure:
    """Test accuracy over seeds as box plots per density, one box per (experiment, branch) side by
    side: seed 001's Fig. 6, the four models over trials. Boxes span the quartiles with the median
    marked, whiskers reach 1.5 IQR and points beyond are circles. The dense round 0 (shared, counted
    once per seed) is the grey band from its minimum to its maximum, its median dashed. Diverged runs
    are red crosses, left out of the boxes."""
    if which not in WHICH:
        raise InvalidValue(f"unknown accuracy {which!r}; choose one of: {', '.join(WHICH)}")
    column, ylabel = WHICH[which]
    runs = _summaries(frame)
    runs["value"] = runs[column] * 100
    runs["label"] = runs.percent.map(_percent_label)
    pruned = runs[runs["round"] > 0]
    if pruned.empty:
        raise InvalidValue("no pruned rounds in the metrics; box plots compare densities below 100%")
    groups = sorted({(e, b) for e, b in zip(pruned.experiment, pruned.branch, strict=True)},
                    key=lambda g: (g[0], g[1] != "main", g[1]))
    categories = sorted(pruned.label.unique(), key=lambda label: -pruned[pruned.label == label].percent.mean())
    width = 0.8 / len(groups)
    with matplotlib.rc_context(STYLE):
        fig, ax = _new_axes()
        fig.set_figwidth(min(BOXES_MAX_WIDTH_IN, max(SIZE_IN[0], 0.22 * len(categories) * len(groups) + 1.0)))
        dense = runs[(runs["round"] == 0) & (runs.status == "ok")].drop_duplicates(["seed", "value"])
        if len(dense):
            ax.axhspan(dense.value.min(), dense.value.max(), color="0.85", zorder=0)
            ax.axhline(dense.value.median(), color="0.4", linestyle="--", linewidth=0.8,
                       label="dense (median, range)")
        colors = matplotlib.colormaps["tab10"].colors
        for index, (experiment, branch) in enumerate(groups):
            color = colors[index % len(colors)]
            line = pruned[(pruned.experiment == experiment) & (pruned.branch == branch)]
            ok = line[line.status == "ok"]
            present = [c for c in categories if (ok.label == c).any()]
            positions = [categories.index(c) + (index - (len(groups) - 1) / 2) * width for c in present]
            ax.boxplot(
                [ok[ok.label == c].value.to_numpy() for c in present], positions=positions,
                widths=width * 0.85, patch_artist=True, manage_ticks=False,
                boxprops={"facecolor": color, "alpha": 0.6, "linewidth": 0.6},
                medianprops={"color": "black", "linewidth": 0.8},
                whiskerprops={"linewidth": 0.6}, capprops={"linewidth": 0.6},
                flierprops={"markersize": 2.5, "markeredgewidth": 0.5},
            )
            ax.plot([], [], marker="s", linestyle="none", color=color, alpha=0.6,
                    label=_line_label(experiment, branch))
        diverged = pruned[pruned.status != "ok"]
        if len(diverged):
            ax.plot([categories.index(c) for c in diverged.label], diverged.value.to_numpy(), linestyle="none",
                    marker="x", color="red", markersize=5, label=DIVERGED_LABEL)
        ax.set_xticks(range(len(categories)), categories)
        ax.set_xlim(-0.6, len(categories) - 0.4)
        ax.set_xlabel("Weights remaining (%)")
        _say_if_no_early_stop(ax, runs)
        ax.set_ylabel(ylabel)
        _finish(fig, ax, out, title)
    return fig


def _summaries(frame: pd.DataFrame) -> pd.DataFrame:
    runs = metrics.summarize(_require_rows(frame))
    runs["percent"] = runs.density * 100
    return runs


def _require_rows(frame: pd.DataFrame) -> pd.DataFrame:
    if frame.empty:
        raise InvalidValue("the metrics table has no rows; nothing to plot")
    return frame


def _closest_round(round_density: pd.Series, density: float) -> int:
    distance = (np.log(round_density) - math.log(density)).abs()
    return int(distance.idxmin())


def _line_label(experiment: str, branch: str) -> str:
    return experiment if branch == "main" else f"{experiment}: {branch.replace('_', ' ')}"


def _density_figure(runs: pd.DataFrame, out: str | Path, *, ylabel: str, title: str | None) -> Figure:
    experiments = sorted(runs.experiment.unique())
    dense_runs = runs[(runs["round"] == 0) & (runs.status == "ok")]
    dense_means = {round(float(v), 9) for v in dense_runs.groupby("experiment").value.mean()}
    shared_dense = len(experiments) > 1 and dense_runs.experiment.nunique() == len(experiments) and len(dense_means) == 1
    with matplotlib.rc_context(STYLE):
        fig, ax = _new_axes()
        colors = iter(matplotlib.colormaps["tab10"].colors * 4)
        for experiment in experiments:
            exp_runs = runs[runs.experiment == experiment]
            branches = sorted(exp_runs.branch.unique(), key=lambda b: (b != "main", b))
            main_color = None
            for index, branch in enumerate(branches):
                color = next(colors)
                main_color = main_color or color
                line = exp_runs[(exp_runs.branch == branch) & (exp_runs.status == "ok")]
                stats = line.groupby("round").agg(
                    x=("percent", "mean"), y=("value", "mean"), lo=("value", "min"), hi=("value", "max")
                )
                x, y, lo, hi = (stats[c].to_numpy(dtype=float) for c in ("x", "y", "lo", "hi"))
                ax.errorbar(
                    x, y, yerr=[y - lo, hi - y],
                    color=color, marker=MARKERS[index % len(MARKERS)],
                    label=_line_label(experiment, branch),
                )
            dense = exp_runs[(exp_runs["round"] == 0) & (exp_runs.status == "ok")].value
            if len(dense) and not shared_dense:
                label = "dense" if len(experiments) == 1 else f"{experiment}: dense"
                ax.axhline(dense.mean(), color=main_color, linestyle="--", linewidth=0.8, label=label)
        if shared_dense:  # experiments that differ only in pruning share round 0: one line
            ax.axhline(dense_means.pop(), color="0.4", linestyle="--", linewidth=0.8, label="dense")
        diverged = runs[runs.status != "ok"]
        if len(diverged):
            ax.plot(diverged.percent.to_numpy(), diverged.value.to_numpy(), linestyle="none", marker="x", color="red",
                    markersize=5, label=DIVERGED_LABEL)
        _density_axis(ax, runs.percent.unique())
        _say_if_no_early_stop(ax, runs)
        ax.set_ylabel(ylabel)
        _finish(fig, ax, out, title)
    return fig


def _density_axis(ax, percents: np.ndarray) -> None:
    """Log x axis, 100% on the left, labelled at the densities present (thinned to fit)."""
    ax.set_xscale("log")
    ticks = density_ticks(percents)
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(FixedFormatter([_percent_label(t) for t in ticks]))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_minor_formatter(NullFormatter())
    low, high = float(np.min(percents)), float(np.max(percents))
    pad = 1.15 if high > low else 1.5
    ax.set_xlim(high * pad, low / pad)  # inverted: dense on the left
    ax.set_xlabel("Weights remaining (%)")


def density_ticks(percents, max_ticks: int = MAX_DENSITY_TICKS) -> list[float]:
    """The densities to label, from the largest down, skipping those that would crowd the axis
    (closer in log10 than the span divided into `max_ticks - 1` gaps)."""
    values = sorted({float(p) for p in percents if p > 0}, reverse=True)
    if not values:
        return []
    gap = math.log10(values[0] / values[-1]) / max(max_ticks - 1, 1)
    ticks = [values[0]]
    for value in values[1:]:
        if math.log10(ticks[-1] / value) >= gap * 0.999:
            ticks.append(value)
    return ticks


def _percent_label(percent: float) -> str:
    return f"{percent:.3g}"


def _new_axes():
    fig = Figure(figsize=SIZE_IN, dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    ax.grid(True, linewidth=0.3, alpha=0.5)
    return fig, ax


def _say_if_no_early_stop(ax, runs: pd.DataFrame) -> None:
    """Runs without a validation set have no early-stop value (NaN): say so on the axes rather
    than leave them silently empty."""
    if runs.value.isna().all() and runs.final_accuracy.notna().any():
        ax.text(0.5, 0.5, NO_EARLY_STOP, transform=ax.transAxes, ha="center", va="center")


def _finish(fig: Figure, ax, out: str | Path, title: str | None) -> None:
    if title:
        ax.set_title(title)
    handles, labels = ax.get_legend_handles_labels()
    # the mean lines (error-bar containers) first, then reference lines and markers
    order = sorted(range(len(handles)), key=lambda i: not isinstance(handles[i], ErrorbarContainer))
    handles, labels = [handles[i] for i in order], [labels[i] for i in order]
    if len(handles) > LEGEND_INSIDE_MAX:
        # a long legend would hide the data: put it below and grow the figure to keep the axes
        ncol = 2 if max(map(len, labels)) <= LEGEND_TWO_COLUMN_CHARS else 1
        rows = math.ceil(len(handles) / ncol)
        fig.set_figheight(SIZE_IN[1] + LEGEND_PAD_IN + rows * LEGEND_ROW_IN)
        fig.legend(handles, labels, loc="outside lower center", ncol=ncol, handlelength=1.8, frameon=False)
    elif handles:
        ax.legend(handles, labels, loc="best", framealpha=0.8, handlelength=1.8, borderaxespad=0.3)
    save(fig, out)


def save(fig: Figure, out: str | Path) -> None:
    """Write `out` (PNG, 200 dpi) and the PDF beside it, each atomically."""
    png = Path(out)
    if png.suffix.lower() != ".png":
        raise InvalidValue(f"{png}: figure output must end in .png (the PDF is written beside it)")
    for path, fmt in ((png, "png"), (png.with_suffix(".pdf"), "pdf")):
        with io.atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt, dpi=DPI)
