"""Summary tables of an experiment: one row per (experiment, branch, round), in Markdown,
LaTeX (booktabs) and HTML, all rendered by jinja2 from the same numbers.

Each row gives the percent of weights remaining and, over the seeds that did not diverge,
mean ± sample std (ddof=1) of the early-stop iteration, the test accuracy there and the final
test accuracy (in %), plus how many seeds ran and how many diverged.
"""

from __future__ import annotations

import math
from functools import cache
from pathlib import Path

import jinja2
import pandas as pd

from lotto.core import io, metrics
from lotto.core.errors import InvalidValue

STATS = {
    "early_stop": "early_stop_step",
    "early_stop_accuracy": "early_stop_accuracy",
    "final_accuracy": "final_accuracy",
    "final_top5": "final_top5",
}
CAPTION = "Mean ± std over the seeds that did not diverge (accuracies in %)."


@cache
def template_environment() -> jinja2.Environment:
    """The package's templates; HTML templates are autoescaped, Markdown and LaTeX are not."""
    return jinja2.Environment(
        loader=jinja2.PackageLoader("lotto", "templates"),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2",), default_for_string=False),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def summary_table(frame: pd.DataFrame) -> pd.DataFrame:
    """The numbers behind every table: one row per (experiment, branch, round), main branch first."""
    if frame.empty:
        raise InvalidValue("the metrics table has no rows; nothing to tabulate")
    runs = metrics.summarize(frame)
    runs["early_stop_accuracy"] *= 100
    runs["final_accuracy"] *= 100
    runs["final_top5"] *= 100
    rows = []
    for (experiment, branch, round_), group in runs.groupby(["experiment", "branch", "round"]):
        ok = group[group.status == "ok"]
        row = {
            "experiment": experiment,
            "branch": branch,
            "round": int(round_),
            "percent": float(group.density.mean() * 100),
            "seeds": len(group),
            "diverged": int((group.status != "ok").sum()),
        }
        for name, column in STATS.items():
            row[f"{name}_mean"] = float(ok[column].mean()) if len(ok) else math.nan
            row[f"{name}_std"] = float(ok[column].std(ddof=1)) if len(ok) > 1 else math.nan
        rows.append(row)
    table = pd.DataFrame(rows)
    order = table.assign(_not_main=table.branch != "main")
    return table.loc[order.sort_values(["experiment", "_not_main", "branch", "round"]).index].reset_index(
        drop=True
    )


def write_tables(
    frame: pd.DataFrame, out_md: str | Path, out_tex: str | Path, out_html: str | Path | None = None,
    energy: str = "",
) -> pd.DataFrame:
    """Write the Markdown and LaTeX tables (and the HTML fragment when asked); return the numbers.
    `energy` (lotto.outputs.energy's sentence, '' when nothing was measured) ends the caption."""
    table = summary_table(frame)
    env = template_environment()
    outputs = [(out_md, "table.md.j2", " ± ", _plain), (out_tex, "table.tex.j2", r" $\pm$ ", _latex)]
    if out_html is not None:
        outputs.append((out_html, "table.html.j2", " ± ", _plain))
    for out, template, pm, escape in outputs:
        header, rows = _cells(table, pm, escape)
        text = env.get_template(template).render(
            header=header, rows=rows, caption=escape(" ".join(filter(None, [_caption(table), energy]))),
            numeric_from=len(header) - (7 if _has_top5(table) else 6),
        )
        io.write_text(out, text)
    return table


NO_EARLY_STOP = "– at early stop: no validation set (dataset.val_size: 0), so no early-stop iteration."


def _caption(table: pd.DataFrame) -> str:
    caption = f"{', '.join(table.experiment.unique())}. {CAPTION}"
    no_stop = table.early_stop_mean.isna() & table.final_accuracy_mean.notna()
    return f"{caption} {NO_EARLY_STOP}" if no_stop.any() else caption


def _has_top5(table: pd.DataFrame) -> bool:
    """Whether the runs measured top-5 accuracy (streamed datasets of many classes): its column then shows."""
    return bool(table.final_top5_mean.notna().any())


def _cells(table: pd.DataFrame, pm: str, escape) -> tuple[list[str], list[dict]]:
    """Header and formatted rows; `group_start` marks where a new (experiment, branch) begins."""
    several, top5 = table.experiment.nunique() > 1, _has_top5(table)
    header = [escape(name) for name in (["Experiment"] if several else []) + [
        "Branch", "Weights remaining (%)", "Early-stop iteration",
        "Test acc. at early stop (%)", "Final test acc. (%)",
        *(["Final top-5 acc. (%)"] if top5 else []), "Seeds", "Diverged",
    ]]
    rows, previous = [], None
    for row in table.itertuples(index=False):
        cells = [escape(row.experiment)] if several else []
        cells += [
            escape(row.branch),
            f"{row.percent:.3g}",
            _mean_std(row.early_stop_mean, row.early_stop_std, 0, pm),
            _mean_std(row.early_stop_accuracy_mean, row.early_stop_accuracy_std, 2, pm),
            _mean_std(row.final_accuracy_mean, row.final_accuracy_std, 2, pm),
            *([_mean_std(row.final_top5_mean, row.final_top5_std, 2, pm)] if top5 else []),
            str(row.seeds),
            str(row.diverged),
        ]
        key = (row.experiment, row.branch)
        rows.append({"cells": cells, "group_start": previous is not None and key != previous})
        previous = key
    return header, rows


def _mean_std(mean: float, std: float, digits: int, pm: str) -> str:
    if math.isnan(mean):
        return "–"
    if math.isnan(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f}{pm}{std:.{digits}f}"


def _plain(text: str) -> str:
    return str(text)


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$",
}


def _latex(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))


# Mikler's Table 3.1, in its order: branch -> the modification it applies to the ticket. Its last row
# ("shuffle masks in layer and reinitialize") is the random_mask branch: theta_0's values at
# positions drawn independently of theta_0 are a fresh draw from the initialisation.
MODIFICATIONS = {
    "main": "None (the ticket)",
    "shuffle_weights": "Shuffle weights within the mask (A)",
    "reinit": "Re-initialise weights",
    "shuffle_mask": "Shuffle mask and weights within each layer (B)",
    "random_mask": "Shuffle mask within each layer, re-initialise",
}
MODIFICATION_ACCURACY = {"early_stop": "early_stop_accuracy", "final": "final_accuracy"}


def modification_table(frame: pd.DataFrame, round_: int | None = None, which: str = "final") -> pd.DataFrame:
    """Table 3.1's numbers for one experiment at one pruned round (default: the last): per branch,
    test accuracy mean and sample std (ddof=1) over the seeds that did not diverge, in %, and the
    difference of the means to the unmodified ticket (the main branch)."""
    if which not in MODIFICATION_ACCURACY:
        raise InvalidValue(f"unknown accuracy {which!r}; choose one of: {', '.join(MODIFICATION_ACCURACY)}")
    if frame.empty:
        raise InvalidValue("the metrics table has no rows; nothing to tabulate")
    experiments = sorted(frame.experiment.unique())
    if len(experiments) != 1:
        raise InvalidValue(f"a modification table is of one experiment; got {', '.join(experiments)}")
    runs = metrics.summarize(frame)
    pruned_rounds = sorted(int(r) for r in runs.loc[runs.branch == "main", "round"].unique() if r > 0)
    if not pruned_rounds:
        raise InvalidValue(f"{experiments[0]} has no pruned main-branch round to compare against")
    round_ = pruned_rounds[-1] if round_ is None else round_
    if round_ not in pruned_rounds:
        raise InvalidValue(f"round {round_} is not a pruned round of {experiments[0]}; choose one of: "
                           f"{', '.join(map(str, pruned_rounds))}")
    at = runs[runs["round"] == round_]
    order = [b for b in MODIFICATIONS if b in set(at.branch)] + sorted(set(at.branch) - set(MODIFICATIONS))
    rows = []
    for branch in order:
        group = at[at.branch == branch]
        ok = group[group.status == "ok"][MODIFICATION_ACCURACY[which]] * 100
        rows.append({
            "branch": branch,
            "modification": MODIFICATIONS.get(branch, branch.replace("_", " ")),
            "percent": float(group.density.mean() * 100),
            "mean": float(ok.mean()) if len(ok) else math.nan,
            "std": float(ok.std(ddof=1)) if len(ok) > 1 else math.nan,
            "seeds": len(group),
            "diverged": int((group.status != "ok").sum()),
        })
    table = pd.DataFrame(rows)
    table["difference"] = table["mean"] - float(table.loc[table.branch == "main", "mean"].iloc[0])
    table.attrs.update(experiment=experiments[0], round=round_, which=which)
    return table


def write_modification_table(
    frame: pd.DataFrame, out_md: str | Path, out_tex: str | Path, out_html: str | Path | None = None, *,
    round_: int | None = None, which: str = "final",
) -> pd.DataFrame:
    """Write Table 3.1 (Markdown, LaTeX and, when asked, HTML); return its numbers."""
    table = modification_table(frame, round_, which)
    header = ["Modification", "Weights remaining (%)", "Test acc. (%)", "Difference", "Seeds", "Diverged"]
    moment = "at early stop" if which == "early_stop" else "at the end of training"
    caption = (f"{table.attrs['experiment']}, round {table.attrs['round']}: test accuracy {moment}, mean ± std "
               "over the seeds that did not diverge, and the difference to the unmodified ticket (in points).")
    outputs = [(out_md, "table.md.j2", " ± ", _plain), (out_tex, "table.tex.j2", r" $\pm$ ", _latex)]
    if out_html is not None:
        outputs.append((out_html, "table.html.j2", " ± ", _plain))
    for out, template, pm, escape in outputs:
        rows = [
            {"cells": [escape(row.modification), f"{row.percent:.3g}", _mean_std(row.mean, row.std, 2, pm),
                       "–" if math.isnan(row.difference) else f"{row.difference:+.2f}", str(row.seeds),
                       str(row.diverged)],
             "group_start": False}
            for row in table.itertuples(index=False)
        ]
        text = template_environment().get_template(template).render(
            header=[escape(h) for h in header], rows=rows, caption=escape(caption), numeric_from=1
        )
        io.write_text(out, text)
    return table
