"""Early-Bird figures and table from the search's eb.json and the retrainings' summary.json.

- `accuracy_vs_epoch` (paper Fig. 1): retrain test accuracy vs the epoch the ticket was
  drawn at, one line per (ratio, retrain mode); EB draws are starred; the dense model's final
  accuracy is dashed (only when the search trained to the end).
- `distance_matrices` (Fig. 3): the pairwise channel-mask distances, one panel per ratio, the
  draw epoch marked; from the first seed.
- `flops_vs_epoch` (Fig. 5): total training FLOPs (search up to the draw + retrain) vs the
  draw epoch, with full dense training + retraining of the final ticket dashed.
- `write_table` (Table 2's shape): accuracy and total training FLOPs of EB Train FF / re-init,
  one-shot LT and network slimming per ratio; mean (and std over seeds when there are several).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from lotto.core import io
from lotto.core.errors import InvalidValue
from lotto.outputs.figures import DPI, MARKERS, STYLE, save
from lotto.outputs.tables import template_environment

METHODS = (
    ("EB Train (FF)", "eb", "ff"),
    ("EB Train (re-init)", "eb", "reinit"),
    ("One-shot LT (unstructured)", "final", "lt_oneshot"),
    ("Network slimming", "final", "ff"),
)
MODE_STYLE = {"ff": "-", "reinit": ":"}
# Shown under each figure in the HTML report (lotto.outputs.report), keyed by the file's stem.
CAPTIONS = {
    "eb_accuracy": (
        "Fig. 1 of You et al. (2020): test accuracy of each ticket retrained with the full schedule "
        "vs the search epoch it was drawn at, per pruning ratio p; solid: retrained from the drawn "
        "weights (FF), dotted: re-initialised; stars: the Early-Bird draw; dashed: the dense model."
    ),
    "eb_distances": (
        "Fig. 3: distance between the channel masks of every two search epochs (the fraction of "
        "channels that differ), one panel per p; red: the epoch at which the last `window` masks "
        "were all within epsilon and the ticket was drawn."
    ),
    "eb_flops": (
        "Fig. 5: total training FLOPs (the search up to the draw, plus retraining the pruned "
        "network) vs the epoch the ticket is drawn at; dashed: full dense training plus retraining."
    ),
}


def read_searches(paths: list[str | Path]) -> list[dict]:
    return [json.loads(Path(p).read_text()) for p in paths]


def read_summaries(paths: list[str | Path]) -> pd.DataFrame:
    frame = pd.DataFrame([json.loads(Path(p).read_text()) for p in paths])
    if frame.empty:
        raise InvalidValue("no retraining summaries given; run eb-train first")
    return frame


def _dense_finals(searches: list[dict], key: str = "dense_test_accuracy") -> list[float]:
    """The dense model's final accuracy of each seed whose search trained to the end."""
    return [s[key] for s in searches if s["trained_to_end"] and s.get(key) is not None]


def _dense_accuracy(searches: list[dict], key: str = "dense_test_accuracy") -> float | None:
    finals = _dense_finals(searches, key)
    return float(np.mean(finals)) if finals else None


def _has_top5(summaries: pd.DataFrame) -> bool:
    """Whether the retrainings report top-5 accuracy (datasets of many classes)."""
    return "test_top5" in summaries and bool(summaries["test_top5"].notna().any())


def _figure(width_panels: int = 1) -> Figure:
    import matplotlib

    matplotlib.rcParams.update(STYLE)
    return Figure(figsize=(3.5 * width_panels, 2.8), dpi=DPI, layout="constrained")


def accuracy_vs_epoch(summaries: pd.DataFrame, searches: list[dict], out: str | Path,
                      title: str | None = None) -> Figure:
    fig = _figure()
    ax = fig.add_subplot()
    ax.grid(True, linewidth=0.3, alpha=0.5)
    tickets = summaries[summaries["mode"].isin(MODE_STYLE)]
    for i, (ratio, by_ratio) in enumerate(tickets.groupby("ratio")):
        for mode, rows in by_ratio.groupby("mode"):
            mean = rows.groupby("epoch")["test_accuracy"].mean().sort_index() * 100
            color = f"C{i}"
            ax.plot(mean.index, mean.values, MODE_STYLE[mode], marker=MARKERS[i % len(MARKERS)],
                    color=color, label=f"p={ratio:.0%} {mode}")
            drawn = rows[(rows["ticket"] == "eb") & rows["drawn"]]
            if len(drawn):
                ax.plot(drawn["epoch"], drawn["test_accuracy"] * 100, "*", color=color, markersize=9)
    dense = _dense_accuracy(searches)
    if dense is not None:
        ax.axhline(dense * 100, color="k", linestyle="--", linewidth=1, label="dense (final)")
    ax.set_xlabel("Epoch the ticket is drawn at (* = EB draw)")
    ax.set_ylabel("Retrain test accuracy (%)")
    _finish(fig, ax, out, title)
    return fig


def distance_matrices(searches: list[dict], out: str | Path, title: str | None = None) -> Figure:
    search = searches[0]
    labels = list(search["distances"])
    fig = _figure(len(labels))
    axes = fig.subplots(1, len(labels), squeeze=False)[0]
    for ax, label in zip(axes, labels, strict=True):
        matrix = np.array(search["distances"][label])
        epochs = len(matrix)
        image = ax.imshow(matrix, origin="lower", cmap="viridis", vmin=0,
                          extent=(0.5, epochs + 0.5, 0.5, epochs + 0.5))
        draw = search["draw_epoch"][label]
        if draw is not None:
            ax.axvline(draw, color="r", linewidth=0.8)
            ax.axhline(draw, color="r", linewidth=0.8)
            ax.plot([draw], [draw], "r*", markersize=8)
        ratio = label.removeprefix("p")
        ax.set_title(f"p={ratio}%  draw: {draw if draw is not None else 'none'}")
        ax.set_xlabel("epoch")
        ax.set_ylabel("epoch")
        fig.colorbar(image, ax=ax, shrink=0.8, label="mask distance")
    if title:
        fig.suptitle(f"{title} (seed {search['seed']})")
    save(fig, out)
    return fig


def flops_vs_epoch(summaries: pd.DataFrame, out: str | Path, title: str | None = None) -> Figure:
    fig = _figure()
    ax = fig.add_subplot()
    ax.grid(True, linewidth=0.3, alpha=0.5)
    tickets = summaries[summaries["mode"] == "ff"]
    for i, (ratio, rows) in enumerate(tickets.groupby("ratio")):
        total = rows.groupby("epoch")["total_flops"].mean().sort_index()
        ax.plot(total.index, total.values, "-", marker=MARKERS[i % len(MARKERS)], color=f"C{i}",
                label=f"p={ratio:.0%} search + retrain")
        final = rows[rows["ticket"] == "final"]
        if len(final):
            reference = float((final["full_training_flops"] + final["retrain_flops"]).mean())
            ax.axhline(reference, color=f"C{i}", linestyle="--", linewidth=0.8)
    ax.set_xlabel("Epoch the ticket is drawn at")
    ax.set_ylabel("Total training FLOPs")
    ax.set_yscale("log")
    _finish(fig, ax, out, title, note="dashed: full training + retrain")
    return fig


def _finish(fig: Figure, ax, out: str | Path, title: str | None, note: str | None = None) -> None:
    if title:
        ax.set_title(title)
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncol=2, frameon=False,
                   title=note, fontsize=7)
        fig.set_figheight(2.8 + 0.17 * math.ceil(len(handles) / 2) + (0.2 if note else 0))
    save(fig, out)


def table_rows(summaries: pd.DataFrame, searches: list[dict]) -> list[dict]:
    """One row per (ratio, method) that was run: accuracy and FLOPs, mean over seeds."""
    rows = []
    finals = _dense_finals(searches)
    if finals:
        full = float(summaries["full_training_flops"].mean())
        dense_top5 = _dense_accuracy(searches, "dense_test_top5")
        spread = f" ± {np.std(finals, ddof=1) * 100:.2f}" if len(finals) > 1 else ""
        rows.append({"p": "-", "method": "Dense (full training only, no retrain)", "epoch": searches[0]["epochs_total"],
                     "accuracy": f"{np.mean(finals) * 100:.2f}{spread}",
                     "top5": "-" if dense_top5 is None else f"{dense_top5 * 100:.2f}", "total_flops": f"{full:.3g}",
                     "inference_flops": f"{summaries['forward_flops_dense'].iloc[0]:.3g}", "density": "1.000"})
    for ratio, by_ratio in summaries.groupby("ratio"):
        for method, ticket, mode in METHODS:
            chosen = by_ratio[(by_ratio["ticket"] == ticket) & (by_ratio["mode"] == mode)]
            if chosen.empty:
                continue
            accuracy = chosen["test_accuracy"] * 100
            spread = f" ± {accuracy.std():.2f}" if len(chosen) > 1 else ""
            rows.append({
                "p": f"{ratio:.0%}",
                "method": method,
                "epoch": f"{chosen['epoch'].mean():.3g}",
                "accuracy": f"{accuracy.mean():.2f}{spread}",
                "top5": f"{chosen['test_top5'].mean() * 100:.2f}" if _has_top5(chosen) else "-",
                "total_flops": f"{chosen['total_flops'].mean():.3g}",
                "inference_flops": f"{chosen['forward_flops_pruned'].mean():.3g}",
                "density": f"{chosen['weight_density'].mean():.3f}",
            })
    return rows


HEADERS = {
    "p": "p",
    "method": "method",
    "epoch": "ticket epoch",
    "accuracy": "test acc. (%)",
    "top5": "top-5 acc. (%)",  # shown only where the retrainings have it (lotto.outputs.eb_figures._has_top5)
    "total_flops": "training FLOPs (search + retrain)",
    "inference_flops": "inference FLOPs / example",
    "density": "weights kept",
}


TABLE_NOTE = (
    "Mean over seeds (± std when there are several). One-shot LT: unstructured global magnitude "
    "pruning of the final dense weights at rate p, retrained from theta_0 (its FLOPs count dense "
    "kernels). Network slimming: the final dense model's channels pruned at p, retrained from its "
    "weights. Training FLOPs are analytic (conv + linear, backward = 2x forward)."
)


def write_table(summaries: pd.DataFrame, searches: list[dict], out: str | Path,
                out_html: str | Path | None = None, title: str | None = None,
                energy: str = "") -> str:
    """Table 2's shape in Markdown (and as an HTML fragment for the report when asked), from the
    package's table templates; returns the Markdown written. `energy` (lotto.outputs.energy's sentence
    for the search and retraining jobs, '' when none was measured) follows the FLOPs note."""
    headers = {key: name for key, name in HEADERS.items() if key != "top5" or _has_top5(summaries)}
    rows = [{"cells": [str(row[key]) for key in headers], "group_start": False}
            for row in table_rows(summaries, searches)]
    caption = f"{title + ': ' if title else ''}Early-Bird tickets against the dense model. {TABLE_NOTE}"
    if energy:
        caption += f" {energy}"
    environment = template_environment()
    texts = {}
    for path, template in ((out, "table.md.j2"), (out_html, "table.html.j2")):
        if path is not None:
            texts[template] = environment.get_template(template).render(
                header=list(headers.values()), rows=rows, caption=caption, numeric_from=2)
            io.write_text(path, texts[template])
    return texts["table.md.j2"]
