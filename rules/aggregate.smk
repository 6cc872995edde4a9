rule collect:
    input:
        lambda w: experiment_metrics(w.experiment),
    output:
        "results/{experiment}/metrics.parquet",
    log:
        "results/logs/{experiment}/collect.log",
    wildcard_constraints:
        experiment=_names(imp_experiments()),  # Early-Bird ones: rules/earlybird.smk
    conda:
        "../envs/lotto.yaml"
    shell:
        "python -m lotto collect --experiment {wildcards.experiment} --out {output} {input} > {log} 2>&1"


rule render_figure:
    input:
        "results/{experiment}/metrics.parquet",
    output:
        png=report(
            "results/figures/{experiment}/{kind}.png",
            caption="../report/figure.rst",
            category="{experiment}",
        ),
        pdf="results/figures/{experiment}/{kind}.pdf",
    log:
        "results/logs/{experiment}/figure-{kind}.log",
    conda:
        "../envs/lotto.yaml"
    params:
        which=config.get("plots", {}).get("which", "early_stop"),
        densities=" ".join(
            map(
                str,
                config.get("plots", {}).get("curve_densities", [1.0, 0.5, 0.2, 0.1]),
            )
        ),
    shell:
        "python -m lotto figure --metrics {input} --kind {wildcards.kind} --which {params.which} "
        "--densities {params.densities} --title {wildcards.experiment} --out {output.png} > {log} 2>&1"


rule render_tables:
    input:
        "results/{experiment}/metrics.parquet",
    output:
        md="results/tables/{experiment}.md",
        tex="results/tables/{experiment}.tex",
        html="results/tables/{experiment}.html",
    log:
        "results/logs/{experiment}/tables.log",
    conda:
        "../envs/lotto.yaml"
    params:
        energy=lambda w: energy_records(w.experiment),
    shell:
        "python -m lotto tables --metrics {input} --md {output.md} --tex {output.tex} "
        "--html {output.html} --energy {params.energy:q} > {log} 2>&1"


rule html_report:
    input:
        specs=expand("results/{experiment}/spec.json", experiment=EXPERIMENTS),
        figures=figure_targets(),
        tables=expand("results/tables/{experiment}.html", experiment=imp_experiments())
        + expand("results/tables/{experiment}-eb.html", experiment=EB_EXPERIMENTS),
        benchmarks=report_benchmarks(),
    output:
        "results/report.html",
    log:
        "results/logs/report.log",
    conda:
        "../envs/lotto.yaml"
    shell:
        "python -m lotto report --out {output} --specs {input.specs} --figures {input.figures} "
        "--tables {input.tables} --benchmarks {input.benchmarks} > {log} 2>&1"
