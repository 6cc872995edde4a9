# Paper presets that reach across experiments: studies (one figure or table comparing several
# experiments, from config `studies:`) and ticket transfer (the 'transfer' branch trains the
# tickets of the experiment named by `transfer: {from: ...}`). Included after aggregate.smk.


include: "presets_common.smk"


rule study_figure:
    input:
        study_metrics,
    output:
        png="results/studies/{study}.png",
        pdf="results/studies/{study}.pdf",
    log:
        "results/logs/studies/{study}.log",
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
        md="results/studies/{study}.md",
        tex="results/studies/{study}.tex",
        html="results/studies/{study}.html",
    log:
        "results/logs/studies/{study}.log",
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
        spec="results/{experiment}/recipe.json",
        data=lambda w: data_file(EXPERIMENTS[w.experiment]),
        mask=lambda w: f"{transfer_dirs(w)['round_dir']}/mask.pt",
        init=lambda w: f"{transfer_dirs(w)['dense']}/init.pt",
    output:
        checkpoint="results/{experiment}/seed{seed}/round{round}/transfer/checkpoint.pt",
        mask="results/{experiment}/seed{seed}/round{round}/transfer/mask.pt",
        metrics="results/{experiment}/seed{seed}/round{round}/transfer/metrics.parquet",
    log:
        "results/logs/{experiment}/seed{seed}/round{round}-transfer.log",
    benchmark:
        "results/benchmarks/{experiment}/seed{seed}/round{round}-transfer.tsv"
    wildcard_constraints:
        experiment=_names(TRANSFER_EXPERIMENTS),
    conda:
        "../envs/lotto.yaml"
    threads: config.get("threads", 1)
    resources:
        mem_mb=config.get("mem_mb", 3000),
        gpu=whole_gpus,
        gpu_slot=gpus,
    params:
        slot=slot_options,
        dirs=transfer_dirs,
        out="results/{experiment}/seed{seed}/round{round}/transfer",
    shell:
        "python -m lotto.gpu_slot {params.slot} --energy {log}.energy.json -- "
        "python -m lotto branch --spec {input.spec} --data {input.data} --seed {wildcards.seed} "
        "--round {wildcards.round} --kind transfer --round-dir {params.dirs[round_dir]} "
        "--dense {params.dirs[dense]} --threads {threads} --out {params.out} > {log} 2>&1"
