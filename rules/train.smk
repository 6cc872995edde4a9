# Training jobs. Each runs through lotto.gpu_slot, which picks a free GPU for
# resources.gpu=1 jobs (and runs CPU jobs, gpu=0, directly).


rule dense_round:
    input:
        spec="results/dense/{key}/spec.json",
        data=lambda w: data_file(DENSE[w.key]),
    output:
        init="results/dense/{key}/seed{seed}/init.pt",
        checkpoint="results/dense/{key}/seed{seed}/checkpoint.pt",
        mask="results/dense/{key}/seed{seed}/mask.pt",
        metrics="results/dense/{key}/seed{seed}/metrics.parquet",
    log:
        "results/logs/dense/{key}/seed{seed}.log",
    benchmark:
        "results/benchmarks/dense/{key}/seed{seed}.tsv"
    conda:
        "../envs/lotto.yaml"
    threads: config.get("threads", 1)
    resources:
        mem_mb=config.get("mem_mb", 3000),
        gpu=whole_gpus,
        gpu_slot=gpus,
    params:
        slot=slot_options,
        out=lambda w, output: os.path.dirname(output.checkpoint),
    shell:
        "python -m lotto.gpu_slot {params.slot} --energy {log}.energy.json -- "
        "python -m lotto round --spec {input.spec} --data {input.data} --seed {wildcards.seed} "
        "--round 0 --threads {threads} --out {params.out} > {log} 2>&1"


rule replay:
    input:
        spec="results/dense/{key}/spec.json",
        data=lambda w: data_file(DENSE[w.key]),
        init="results/dense/{key}/seed{seed}/init.pt",
    output:
        "results/dense/{key}/seed{seed}/replay/step{step}.pt",
    log:
        "results/logs/dense/{key}/seed{seed}-replay{step}.log",
    conda:
        "../envs/lotto.yaml"
    threads: config.get("threads", 1)
    resources:
        mem_mb=config.get("mem_mb", 3000),
        gpu=whole_gpus,
        gpu_slot=gpus,
    params:
        slot=slot_options,
        dense=lambda w, input: os.path.dirname(input.init),
    shell:
        "python -m lotto.gpu_slot {params.slot} --energy {log}.energy.json -- "
        "python -m lotto replay --spec {input.spec} --data {input.data} --seed {wildcards.seed} "
        "--step {wildcards.step} --dense {params.dense} --threads {threads} --out {output} > {log} 2>&1"


rule learn_mask:
    input:
        spec="results/{experiment}/recipe.json",
        data=lambda w: data_file(EXPERIMENTS[w.experiment]),
        weights=pretrained_weights,
    output:
        f"results/{{experiment}}/seed{{seed}}/{LOGITS_FILE}",
    log:
        "results/logs/{experiment}/seed{seed}/learn_mask.log",
    benchmark:
        "results/benchmarks/{experiment}/seed{seed}/learn_mask.tsv"
    conda:
        "../envs/lotto.yaml"
    threads: config.get("threads", 1)
    resources:
        mem_mb=config.get("mem_mb", 3000),
        gpu=whole_gpus,
        gpu_slot=gpus,
    params:
        slot=slot_options,
    shell:
        "python -m lotto.gpu_slot {params.slot} --energy {log}.energy.json -- "
        "python -m lotto learn-mask --spec {input.spec} --data {input.data} --seed {wildcards.seed} "
        "--weights {input.weights} --threads {threads} --out {output} > {log} 2>&1"


rule prune_round:
    input:
        unpack(round_inputs),
    output:
        checkpoint="results/{experiment}/seed{seed}/round{round}/checkpoint.pt",
        mask="results/{experiment}/seed{seed}/round{round}/mask.pt",
        metrics="results/{experiment}/seed{seed}/round{round}/metrics.parquet",
        rewind="results/{experiment}/seed{seed}/round{round}/rewind.pt",
    log:
        "results/logs/{experiment}/seed{seed}/round{round}.log",
    benchmark:
        "results/benchmarks/{experiment}/seed{seed}/round{round}.tsv"
    wildcard_constraints:
        experiment=_names(ONE_SEED_PER_JOB),
    conda:
        "../envs/lotto.yaml"
    threads: config.get("threads", 1)
    resources:
        mem_mb=config.get("mem_mb", 3000),
        gpu=whole_gpus,
        gpu_slot=gpus,
    params:
        slot=slot_options,
        paths=round_params,
    shell:
        "python -m lotto.gpu_slot {params.slot} --energy {log}.energy.json -- "
        "python -m lotto round --spec {input.spec} --data {input.data} --seed {wildcards.seed} "
        "--round {wildcards.round} --dense {params.paths[dense]} --prev {params.paths[prev]} "
        "{params.paths[options]} --threads {threads} --out {params.paths[out]} > {log} 2>&1"


# The same rounds for experiments with training.vectorize_seeds: one job per round trains every
# seed together and writes each seed's files where prune_round would; paths hold '{seed}',
# which `lotto round` fills in for each --seed.
for _experiment, _rule_name in SEEDS_TOGETHER.items():

    rule:
        name:
            _rule_name
        input:
            unpack(seeds_round_inputs),
        output:
            checkpoint=expand(
                "results/{{experiment}}/seed{seed}/round{{round}}/checkpoint.pt",
                seed=EXPERIMENTS[_experiment].seeds,
            ),
            mask=expand(
                "results/{{experiment}}/seed{seed}/round{{round}}/mask.pt",
                seed=EXPERIMENTS[_experiment].seeds,
            ),
            metrics=expand(
                "results/{{experiment}}/seed{seed}/round{{round}}/metrics.parquet",
                seed=EXPERIMENTS[_experiment].seeds,
            ),
            rewind=expand(
                "results/{{experiment}}/seed{seed}/round{{round}}/rewind.pt",
                seed=EXPERIMENTS[_experiment].seeds,
            ),
        log:
            "results/logs/{experiment}/round{round}-seeds.log",
        benchmark:
            "results/benchmarks/{experiment}/round{round}-seeds.tsv"
        wildcard_constraints:
            experiment=_names([_experiment]),
        conda:
            "../envs/lotto.yaml"
        threads: config.get("threads", 1)
        resources:
            mem_mb=config.get("mem_mb", 3000),
            gpu=whole_gpus,
            gpu_slot=gpus,
        params:
            slot=slot_options,
            paths=seeds_round_params,
        shell:
            "python -m lotto.gpu_slot {params.slot} --energy {log}.energy.json -- "
            "python -m lotto round --spec {input.spec} --data {input.data} {params.paths[seeds]} "
            "--round {wildcards.round} --dense {params.paths[dense]:q} --prev {params.paths[prev]:q} "
            "{params.paths[options]} --threads {threads} --out {params.paths[out]:q} > {log} 2>&1"


rule control_branch:
    input:
        spec="results/{experiment}/recipe.json",
        data=lambda w: data_file(EXPERIMENTS[w.experiment]),
        mask="results/{experiment}/seed{seed}/round{round}/mask.pt",
        init=lambda w: f"{dense_dir(EXPERIMENTS[w.experiment], w.seed)}/init.pt",
        dense=lambda w: f"{dense_dir(EXPERIMENTS[w.experiment], w.seed)}/checkpoint.pt",
    output:
        checkpoint="results/{experiment}/seed{seed}/round{round}/{branch}/checkpoint.pt",
        mask="results/{experiment}/seed{seed}/round{round}/{branch}/mask.pt",
        metrics="results/{experiment}/seed{seed}/round{round}/{branch}/metrics.parquet",
    log:
        "results/logs/{experiment}/seed{seed}/round{round}-{branch}.log",
    benchmark:
        "results/benchmarks/{experiment}/seed{seed}/round{round}-{branch}.tsv"
    conda:
        "../envs/lotto.yaml"
    threads: config.get("threads", 1)
    resources:
        mem_mb=config.get("mem_mb", 3000),
        gpu=whole_gpus,
        gpu_slot=gpus,
    params:
        slot=slot_options,
        dense=lambda w, input: os.path.dirname(input.init),
        round_dir=lambda w, input: os.path.dirname(input.mask),
        out=lambda w, output: os.path.dirname(output.checkpoint),
    shell:
        "python -m lotto.gpu_slot {params.slot} --energy {log}.energy.json -- "
        "python -m lotto branch --spec {input.spec} --data {input.data} --seed {wildcards.seed} "
        "--round {wildcards.round} --kind {wildcards.branch} --round-dir {params.round_dir} "
        "--dense {params.dense} --threads {threads} --out {params.out} > {log} 2>&1"
