# Training jobs. Each runs through lotto.gpu_slot, which picks a free GPU for
# resources.gpu=1 jobs (and runs CPU jobs, gpu=0, directly).


rule dense_round:
    input:
        spec=DENSE_SPEC_FILE,
        data=lambda w: data_file(DENSE[w.key]),
    output:
        init=f"{DENSE_SEED_DIR}/init.pt",
        checkpoint=f"{DENSE_SEED_DIR}/checkpoint.pt",
        mask=f"{DENSE_SEED_DIR}/mask.pt",
        metrics=f"{DENSE_SEED_DIR}/metrics.parquet",
    log:
        layout.log_file(DENSE_JOB),
    benchmark:
        layout.benchmark_file(DENSE_JOB)
    conda:
        "../envs/lotto.yaml"
    threads: TRAINING_THREADS
    resources:
        **TRAINING_RESOURCES,
    params:
        slot=slot_options,
        execution=execution_options,
        out=lambda w, output: os.path.dirname(output.checkpoint),
    shell:
        "python -m lotto.gpu_slot {params.slot} --energy {log}.energy.json -- "
        "python -m lotto round --spec {input.spec} --data {input.data} --seed {wildcards.seed} "
        "--round 0 {params.execution} --threads {threads} --out {params.out} > {log} 2>&1"


rule replay:
    input:
        spec=DENSE_SPEC_FILE,
        data=lambda w: data_file(DENSE[w.key]),
        init=f"{DENSE_SEED_DIR}/init.pt",
    output:
        layout.replay_file(DENSE_SEED_DIR, "{step}"),
    log:
        layout.log_file(layout.replay_job("{key}", "{seed}", "{step}")),
    conda:
        "../envs/lotto.yaml"
    threads: TRAINING_THREADS
    resources:
        **TRAINING_RESOURCES,
    params:
        slot=slot_options,
        execution=execution_options,
        dense=lambda w, input: os.path.dirname(input.init),
    shell:
        "python -m lotto.gpu_slot {params.slot} --energy {log}.energy.json -- "
        "python -m lotto replay --spec {input.spec} --data {input.data} --seed {wildcards.seed} "
        "--step {wildcards.step} --dense {params.dense} {params.execution} --threads {threads} --out {output} > {log} 2>&1"


rule learn_mask:
    input:
        spec=RECIPE_FILE,
        data=lambda w: data_file(EXPERIMENTS[w.experiment]),
        weights=pretrained_weights,
    output:
        layout.logits_file("{experiment}", "{seed}"),
    log:
        layout.log_file(layout.learn_mask_job("{experiment}", "{seed}")),
    benchmark:
        layout.benchmark_file(layout.learn_mask_job("{experiment}", "{seed}"))
    conda:
        "../envs/lotto.yaml"
    threads: TRAINING_THREADS
    resources:
        **TRAINING_RESOURCES,
    params:
        slot=slot_options,
        execution=execution_options,
    shell:
        "python -m lotto.gpu_slot {params.slot} --energy {log}.energy.json -- "
        "python -m lotto learn-mask --spec {input.spec} --data {input.data} --seed {wildcards.seed} "
        "--weights {input.weights} {params.execution} --threads {threads} --out {output} > {log} 2>&1"


rule prune_round:
    input:
        unpack(round_inputs),
    output:
        checkpoint=f"{ROUND_DIR}/checkpoint.pt",
        mask=f"{ROUND_DIR}/mask.pt",
        metrics=f"{ROUND_DIR}/metrics.parquet",
        rewind=f"{ROUND_DIR}/rewind.pt",
    log:
        layout.log_file(ROUND_JOB),
    benchmark:
        layout.benchmark_file(ROUND_JOB)
    wildcard_constraints:
        experiment=_names(ONE_SEED_PER_JOB),
    conda:
        "../envs/lotto.yaml"
    threads: TRAINING_THREADS
    resources:
        **TRAINING_RESOURCES,
    params:
        slot=slot_options,
        execution=execution_options,
        paths=round_params,
    shell:
        "python -m lotto.gpu_slot {params.slot} --energy {log}.energy.json -- "
        "python -m lotto round --spec {input.spec} --data {input.data} --seed {wildcards.seed} "
        "--round {wildcards.round} --dense {params.paths[dense]} --prev {params.paths[prev]} "
        "{params.paths[options]} {params.execution} --threads {threads} --out {params.paths[out]} > {log} 2>&1"


# The same rounds for experiments with training.vectorize_seeds: one job per round trains every
# seed together, with each seed's local control branches, and writes each seed's files where
# prune_round and control_branch would; paths hold '{seed}', which `lotto round` fills in for
# each --seed.
for _experiment, _rule_name in SEEDS_TOGETHER.items():

    rule:
        name:
            _rule_name
        input:
            unpack(seeds_round_inputs),
        output:
            **seeds_round_outputs(_experiment),
        log:
            layout.log_file(layout.seeds_round_job("{experiment}", "{round}")),
        benchmark:
            layout.benchmark_file(layout.seeds_round_job("{experiment}", "{round}"))
        wildcard_constraints:
            experiment=_names([_experiment]),
        conda:
            "../envs/lotto.yaml"
        threads: TRAINING_THREADS
        resources:
            **TRAINING_RESOURCES,
        params:
            slot=slot_options,
            execution=execution_options,
            paths=seeds_round_params,
        shell:
            "python -m lotto.gpu_slot {params.slot} --energy {log}.energy.json -- "
            "python -m lotto round --spec {input.spec} --data {input.data} {params.paths[seeds]} "
            "--round {wildcards.round} --dense {params.paths[dense]:q} --prev {params.paths[prev]:q} "
            "{params.paths[options]} {params.paths[branches]} {params.execution} --threads {threads} --out {params.paths[out]:q} > {log} 2>&1"


rule control_branch:
    input:
        spec=RECIPE_FILE,
        data=lambda w: data_file(EXPERIMENTS[w.experiment]),
        mask=f"{ROUND_DIR}/mask.pt",
        init=lambda w: f"{dense_dir(EXPERIMENTS[w.experiment], w.seed)}/init.pt",
        dense=lambda w: f"{dense_dir(EXPERIMENTS[w.experiment], w.seed)}/checkpoint.pt",
    output:
        checkpoint=f"{BRANCH_DIR}/checkpoint.pt",
        mask=f"{BRANCH_DIR}/mask.pt",
        metrics=f"{BRANCH_DIR}/metrics.parquet",
    log:
        layout.log_file(BRANCH_JOB),
    benchmark:
        layout.benchmark_file(BRANCH_JOB)
    wildcard_constraints:
        experiment=_names(ONE_SEED_PER_JOB),  # the others train their branches with the round
    conda:
        "../envs/lotto.yaml"
    threads: TRAINING_THREADS
    resources:
        **TRAINING_RESOURCES,
    params:
        slot=slot_options,
        execution=execution_options,
        dense=lambda w, input: os.path.dirname(input.init),
        round_dir=lambda w, input: os.path.dirname(input.mask),
        out=lambda w, output: os.path.dirname(output.checkpoint),
    shell:
        "python -m lotto.gpu_slot {params.slot} --energy {log}.energy.json -- "
        "python -m lotto branch --spec {input.spec} --data {input.data} --seed {wildcards.seed} "
        "--round {wildcards.round} --kind {wildcards.branch} --round-dir {params.round_dir} "
        "--dense {params.dense} {params.execution} --threads {threads} --out {params.out} > {log} 2>&1"
