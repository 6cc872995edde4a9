rule collect:
    input:
        lambda w: experiment_metrics(w.experiment),
    output:
        layout.experiment_file("{experiment}", "metrics.parquet"),
    log:
        layout.log_file("{experiment}/collect"),
    wildcard_constraints:
        experiment=_names(imp_experiments()),  # Early-Bird ones: rules/earlybird.smk
    conda:
        "../envs/lotto.yaml"
    shell:
        "python -m lotto collect --experiment {wildcards.experiment} --out {output} {input} > {log} 2>&1"


rule render_figure:
    input:
        layout.experiment_file("{experiment}", "metrics.parquet"),
    output:
        png=report(
            layout.figure_file("{experiment}", "{kind}"),
            caption="../report/figure.rst",
            category="{experiment}",
        ),
        pdf=layout.figure_file("{experiment}", "{kind}", "pdf"),
    log:
        layout.log_file("{experiment}/figure-{kind}"),
    conda:
        "../envs/lotto.yaml"
    params:
        which=PLOT_WHICH,
        densities=" ".join(map(str, PLOT_DENSITIES)),
    shell:
        "python -m lotto figure --metrics {input} --kind {wildcards.kind} --which {params.which} "
        "--densities {params.densities} --title {wildcards.experiment} --out {output.png} > {log} 2>&1"


rule render_tables:
    input:
        layout.experiment_file("{experiment}", "metrics.parquet"),
    output:
        md=layout.table_file("{experiment}", "md"),
        tex=layout.table_file("{experiment}", "tex"),
        html=layout.table_file("{experiment}", "html"),
    log:
        layout.log_file("{experiment}/tables"),
    conda:
        "../envs/lotto.yaml"
    params:
        energy=lambda w: energy_records(w.experiment),
    shell:
        "python -m lotto tables --metrics {input} --md {output.md} --tex {output.tex} "
        "--html {output.html} --energy {params.energy:q} > {log} 2>&1"


rule html_report:
    input:
        specs=[layout.experiment_file(e, "spec.json") for e in EXPERIMENTS],
        figures=figure_targets(),
        tables=[layout.table_file(e, "html") for e in imp_experiments()]
        + [layout.table_file(f"{e}-eb", "html") for e in EB_EXPERIMENTS],
        benchmarks=report_benchmarks(),
    output:
        layout.REPORT,
    log:
        layout.log_file("report"),
    conda:
        "../envs/lotto.yaml"
    shell:
        "python -m lotto report --out {output} --specs {input.specs} --figures {input.figures} "
        "--tables {input.tables} --benchmarks {input.benchmarks} > {log} 2>&1"
