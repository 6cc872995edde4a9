# Early-Bird tickets: experiments with an `earlybird:` section run this instead of IMP rounds.
#   eb_search  dense training with network slimming; channel masks each epoch; tickets drawn
#   eb_train   one ticket (ratio x ticket x mode) with its channels removed, retrained
#   eb_figures Fig. 1 / 3 / 5 and the Table-2-shaped table
# Needs from common.smk: EXPERIMENTS, EB_EXPERIMENTS, eb_* helpers (earlybird_plan.smk), data_file.
rule eb_search:
    input:
        spec=RECIPE_FILE,
        data=lambda w: data_file(EXPERIMENTS[w.experiment]),
    output:
        eb=f"{EB_SEARCH_DIR}/eb.json",
        masks=f"{EB_SEARCH_DIR}/masks.pt",
        init=f"{EB_SEARCH_DIR}/init.pt",
        last=f"{EB_SEARCH_DIR}/last.pt",
        metrics=f"{EB_SEARCH_DIR}/metrics.parquet",
        tickets=directory(f"{EB_SEARCH_DIR}/tickets"),
    log:
        layout.log_file(EB_SEARCH_JOB),
    benchmark:
        layout.benchmark_file(EB_SEARCH_JOB)
    conda:
        "../envs/lotto.yaml"
    threads: TRAINING_THREADS
    resources:
        **TRAINING_RESOURCES,
    params:
        slot=slot_options,
        execution=execution_options,
        out=lambda w, output: os.path.dirname(output.eb),
    shell:
        "python -m lotto.gpu_slot {params.slot} --energy {log}.energy.json -- "
        "python -m lotto eb-search --spec {input.spec} --data {input.data} --seed {wildcards.seed} "
        "{params.execution} --threads {threads} --out {params.out} > {log} 2>&1"


rule eb_train:
    input:
        spec=RECIPE_FILE,
        data=lambda w: data_file(EXPERIMENTS[w.experiment]),
        eb=f"{EB_SEARCH_DIR}/eb.json",
        tickets=f"{EB_SEARCH_DIR}/tickets",
    output:
        summary=f"{EB_SEED_DIR}/{{ratio}}/{{ticket}}-{{mode}}/summary.json",
        checkpoint=f"{EB_SEED_DIR}/{{ratio}}/{{ticket}}-{{mode}}/checkpoint.pt",
        metrics=f"{EB_SEED_DIR}/{{ratio}}/{{ticket}}-{{mode}}/metrics.parquet",
    log:
        layout.log_file(EB_TRAIN_JOB),
    benchmark:
        layout.benchmark_file(EB_TRAIN_JOB)
    wildcard_constraints:
        ratio=r"p\d+",
        ticket=r"eb|e\d+|final",
        mode="ff|reinit|lt_oneshot",
    conda:
        "../envs/lotto.yaml"
    threads: TRAINING_THREADS
    resources:
        **TRAINING_RESOURCES,
    params:
        slot=slot_options,
        execution=execution_options,
        ratio=lambda w: eb_ratio(w.experiment, w.ratio),
        search=lambda w, input: os.path.dirname(input.eb),
        out=lambda w, output: os.path.dirname(output.summary),
    shell:
        "python -m lotto.gpu_slot {params.slot} --energy {log}.energy.json -- "
        "python -m lotto eb-train --spec {input.spec} --data {input.data} --seed {wildcards.seed} "
        "--search {params.search} --ratio {params.ratio} --ticket {wildcards.ticket} "
        "--mode {wildcards.mode} {params.execution} --threads {threads} --out {params.out} > {log} 2>&1"


rule eb_figures:
    input:
        searches=lambda w: [
            f"{layout.eb_search_dir(w.experiment, seed)}/eb.json"
            for seed in EXPERIMENTS[w.experiment].seeds
        ],
        summaries=lambda w: eb_summaries(w.experiment),
    output:
        accuracy=report(
            layout.figure_file("{experiment}", "eb_accuracy"),
            caption="../report/eb_figure.rst",
            category="{experiment}",
        ),
        distances=report(
            layout.figure_file("{experiment}", "eb_distances"),
            caption="../report/eb_figure.rst",
            category="{experiment}",
        ),
        flops=report(
            layout.figure_file("{experiment}", "eb_flops"),
            caption="../report/eb_figure.rst",
            category="{experiment}",
        ),
        table=layout.table_file("{experiment}-eb", "md"),
        table_html=layout.table_file("{experiment}-eb", "html"),
    log:
        layout.log_file("{experiment}/eb/figures"),
    conda:
        "../envs/lotto.yaml"
    params:
        out_dir=lambda w, output: os.path.dirname(output.accuracy),
        energy=lambda w: eb_energy_records(w.experiment),
    shell:
        "python -m lotto eb-figures --searches {input.searches} --summaries {input.summaries} "
        "--out-dir {params.out_dir} --table {output.table} --table-html {output.table_html} "
        "--title {wildcards.experiment} --energy {params.energy:q} > {log} 2>&1"
