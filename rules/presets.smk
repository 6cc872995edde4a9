# Paper presets that reach across experiments: studies (one figure or table comparing several
# experiments, from config `studies:`) and ticket transfer (the 'transfer' branch trains the
# tickets of the experiment named by `transfer: {from: ...}`). Included after aggregate.smk.


include: "presets_common.smk"


rule study_figure:
    input:
        study_metrics,
    output:
        png=layout.study_file("{study}", "png"),
        pdf=layout.study_file("{study}", "pdf"),
    log:
        layout.log_file("studies/{study}"),
    wildcard_constraints:
        study=_names(FIGURE_STUDIES),
    conda:
        "../envs/lotto.yaml"
    params:
        command=study_command,
        title=lambda w: STUDIES[w.study].get("title", w.study),
    shell:
        "python -m lotto {params.command} --metrics {input} --title {params.title:q} "
        "--out {output.png} > {log} 2>&1"


rule study_table:
    input:
        study_metrics,
    output:
        md=layout.study_file("{study}", "md"),
        tex=layout.study_file("{study}", "tex"),
        html=layout.study_file("{study}", "html"),
    log:
        layout.log_file("studies/{study}"),
    wildcard_constraints:
        study=_names(TABLE_STUDIES),
    conda:
        "../envs/lotto.yaml"
    params:
        which=lambda w: STUDIES[w.study].get("which", "final"),
    shell:
        "python -m lotto modification-table --metrics {input} --which {params.which} "
        "--md {output.md} --tex {output.tex} --html {output.html} > {log} 2>&1"


rule transfer_branch:
    input:
        spec=RECIPE_FILE,
        data=lambda w: data_file(EXPERIMENTS[w.experiment]),
        mask=lambda w: f"{transfer_dirs(w)['round_dir']}/mask.pt",
        init=lambda w: f"{transfer_dirs(w)['dense']}/init.pt",
    output:
        checkpoint=f"{TRANSFER_DIR}/checkpoint.pt",
        mask=f"{TRANSFER_DIR}/mask.pt",
        metrics=f"{TRANSFER_DIR}/metrics.parquet",
    log:
        layout.log_file(TRANSFER_JOB),
    benchmark:
        layout.benchmark_file(TRANSFER_JOB)
    wildcard_constraints:
        experiment=_names(TRANSFER_EXPERIMENTS),
    conda:
        "../envs/lotto.yaml"
    threads: TRAINING_THREADS
    resources:
        **TRAINING_RESOURCES,
    params:
        slot=slot_options,
        execution=execution_options,
        dirs=transfer_dirs,
        out=TRANSFER_DIR,
    shell:
        "python -m lotto.gpu_slot {params.slot} --energy {log}.energy.json -- "
        "python -m lotto branch --spec {input.spec} --data {input.data} --seed {wildcards.seed} "
        "--round {wildcards.round} --kind transfer --round-dir {params.dirs[round_dir]} "
        "--dense {params.dirs[dense]} {params.execution} --threads {threads} --out {params.out} > {log} 2>&1"
