rule prepare_data:
    output:
        layout.data_file("{dataset}"),
    log:
        layout.log_file("data/{dataset}"),
    conda:
        "../envs/lotto.yaml"
    params:
        name=lambda w: DATA[w.dataset].dataset.name,
        root=lambda w: (
            f"--root {shlex.quote(DATA[w.dataset].dataset.root)}"
            if DATA[w.dataset].dataset.root
            else ""
        ),
        download=lambda w: "--download" if DATA[w.dataset].dataset.download else "",
        synthetic=lambda w: (
            f"--synthetic {shlex.quote(json.dumps(dict(DATA[w.dataset].dataset.synthetic)))}"
            if DATA[w.dataset].dataset.synthetic
            else ""
        ),
        torchvision=lambda w: (
            f"--torchvision {shlex.quote(json.dumps(DATA[w.dataset].dataset.torchvision_options()))}"
            if DATA[w.dataset].dataset.torchvision
            else ""
        ),
    shell:
        "python -m lotto prepare-data --dataset {params.name:q} {params.root} {params.download} "
        "{params.synthetic} {params.torchvision} --out {output} > {log} 2>&1"


rule experiment_spec:
    output:
        recipe=RECIPE_FILE,
        full=layout.experiment_file("{experiment}", "spec.json"),
    log:
        layout.log_file("{experiment}/spec"),
    conda:
        "../envs/lotto.yaml"
    params:
        recipe=lambda w: recipe_json(w.experiment),
        full=lambda w: full_json(w.experiment),
    shell:
        "(python -m lotto write-spec --json {params.recipe:q} --out {output.recipe} && "
        "python -m lotto write-spec --json {params.full:q} --out {output.full}) > {log} 2>&1"


rule dense_spec:
    output:
        DENSE_SPEC_FILE,
    log:
        layout.log_file("dense/{key}/spec"),
    conda:
        "../envs/lotto.yaml"
    params:
        spec=lambda w: dense_json(w.key),
    shell:
        "python -m lotto write-spec --json {params.spec:q} --out {output} > {log} 2>&1"
