# What the targets (Snakefile: all, figures, tables, report) and the HTML report need.

EB_FIGURE_KINDS = ["accuracy", "distances", "flops"]  # the paper's Fig. 1, 3 and 5


def eb_figure_targets():
    return [
        layout.figure_file(e, f"eb_{kind}")
        for e in EB_EXPERIMENTS
        for kind in EB_FIGURE_KINDS
    ]


def eb_table_targets():
    """Table 2's shape: Markdown, and the HTML fragment the report shows."""
    return [
        layout.table_file(f"{e}-eb", ext)
        for e in EB_EXPERIMENTS
        for ext in ("md", "html")
    ]


def figure_targets():
    """IMP experiments' lottery-ticket figures, Early-Bird experiments' own figures."""
    return [
        layout.figure_file(e, kind) for e in imp_experiments() for kind in FIGURE_KINDS
    ] + eb_figure_targets()


def table_targets():
    return [
        layout.table_file(e, ext)
        for e in imp_experiments()
        for ext in ("md", "tex", "html")
    ] + eb_table_targets()


def report_benchmarks():
    return [b for e in imp_experiments() for b in experiment_benchmarks(e)] + [
        b for e in EB_EXPERIMENTS for b in eb_benchmarks(e)
    ]
