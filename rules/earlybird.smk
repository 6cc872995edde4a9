# Early-Bird tickets: experiments with an `earlybird:` section run this instead of IMP rounds.
#   eb_search  dense training with network slimming; channel masks each epoch; tickets drawn
#   eb_train   one ticket (ratio x ticket x mode) with its channels removed, retrained
#   eb_figures Fig. 1 / 3 / 5 and the Table-2-shaped table
# Needs from common.smk: EXPERIMENTS, EB_EXPERIMENTS, eb_* helpers, data_file, gpus.
rule eb_search:
    input:
        spec="results/{experiment}/recipe.json",
        data=lambda w: data_file(EXPERIMENTS[w.experiment]),
    output:
        eb="results/{experiment}/eb/seed{seed}/search/eb.json",
        masks="results/{experiment}/eb/seed{seed}/search/masks.pt",
        init="results/{experiment}/eb/seed{seed}/search/init.pt",
        last="results/{experiment}/eb/seed{seed}/search/last.pt",
        metrics="results/{experiment}/eb/seed{seed}/search/metrics.parquet",
        tickets=directory("results/{experiment}/eb/seed{seed}/search/tickets"),
    log:
        "results/logs/{experiment}/eb/seed{seed}/search.log",
    benchmark:
        "results/benchmarks/{experiment}/eb/seed{seed}/search.tsv"
    conda:
        "../envs/lotto.yaml"
    threads: config.get("threads", 1)
    resources:
        mem_mb=config.get("mem_mb", 3000),
        gpu=whole_gpus,
        gpu_slot=gpus,
    params:
        slot=slot_options,
        out=lambda w, output: os.path.dirname(output.eb),
    shell:
        "python -m lotto.gpu_slot {params.slot} --energy {log}.energy.json -- "
        "python -m lotto eb-search --spec {input.spec} --data {input.data} --seed {wildcards.seed} "
        "--threads {threads} --out {params.out} > {log} 2>&1"


rule eb_train:
    input:
        spec="results/{experiment}/recipe.json",
        data=lambda w: data_file(EXPERIMENTS[w.experiment]),
        eb="results/{experiment}/eb/seed{seed}/search/eb.json",
        tickets="results/{experiment}/eb/seed{seed}/search/tickets",
    output:
        summary="results/{experiment}/eb/seed{seed}/{ratio}/{ticket}-{mode}/summary.json",
        checkpoint="results/{experiment}/eb/seed{seed}/{ratio}/{ticket}-{mode}/checkpoint.pt",
        metrics="results/{experiment}/eb/seed{seed}/{ratio}/{ticket}-{mode}/metrics.parquet",
    log:
        "results/logs/{experiment}/eb/seed{seed}/{ratio}-{ticket}-{mode}.log",
    benchmark:
        "results/benchmarks/{experiment}/eb/seed{seed}/{ratio}-{ticket}-{mode}.tsv"
    wildcard_constraints:
        ratio=r"p\d+",
        ticket=r"eb|e\d+|final",
        mode="ff|reinit|lt_oneshot",
    conda:
        "../envs/lotto.yaml"
    threads: config.get("threads", 1)
    resources:
        mem_mb=config.get("mem_mb", 3000),
        gpu=whole_gpus,
        gpu_slot=gpus,
    params:
        slot=slot_options,
        ratio=lambda w: eb_ratio(w.experiment, w.ratio),
        search=lambda w, input: os.path.dirname(input.eb),
        out=lambda w, output: os.path.dirname(output.summary),
    shell:
        "python -m lotto.gpu_slot {params.slot} --energy {log}.energy.json -- "
        "python -m lotto eb-train --spec {input.spec} --data {input.data} --seed {wildcards.seed} "
        "--search {params.search} --ratio {params.ratio} --ticket {wildcards.ticket} "
        "--mode {wildcards.mode} --threads {threads} --out {params.out} > {log} 2>&1"


rule eb_figures:
    input:
        searches=lambda w: [
            f"{eb_seed_dir(w.experiment, seed)}/search/eb.json"
            for seed in EXPERIMENTS[w.experiment].seeds
        ],
        summaries=lambda w: eb_summaries(w.experiment),
    output:
        accuracy=report(
            "results/figures/{experiment}/eb_accuracy.png",
            caption="../report/eb_figure.rst",
            category="{experiment}",
        ),
        distances=report(
            "results/figures/{experiment}/eb_distances.png",
            caption="../report/eb_figure.rst",
            category="{experiment}",
        ),
        flops=report(
            "results/figures/{experiment}/eb_flops.png",
            caption="../report/eb_figure.rst",
            category="{experiment}",
        ),
        table="results/tables/{experiment}-eb.md",
        table_html="results/tables/{experiment}-eb.html",
    log:
        "results/logs/{experiment}/eb/figures.log",
    conda:
        "../envs/lotto.yaml"
    params:
        out_dir=lambda w, output: os.path.dirname(output.accuracy),
        energy=lambda w: eb_energy_records(w.experiment),
    shell:
        "python -m lotto eb-figures --searches {input.searches} --summaries {input.summaries} "
        "--out-dir {params.out_dir} --table {output.table} --table-html {output.table_html} "
        "--title {wildcards.experiment} --energy {params.energy:q} > {log} 2>&1"
