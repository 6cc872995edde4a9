# Experiments whose pruned rounds train all seeds, and their local control branches, in one job
# (training.vectorize_seeds; lotto.round_plan), each with its own rule in rules/train.smk, named
# here (a rule's outputs cannot depend on a wildcard's value, and they list every seed);
# prune_round and control_branch run the other experiments' rounds and branches.


def _names(names):
    """A wildcard constraint matching exactly these names (nothing when there are none)."""
    return "|".join(re.escape(n) for n in names) or "(?!)"


SEEDS_TOGETHER = {}
for _i, _name in enumerate(imp_experiments()):
    _spec = EXPERIMENTS[_name]
    if trains_seeds_together(_spec):
        _rule = f"prune_round_seeds_{re.sub(r'[^A-Za-z0-9_]', '_', _name)}"
        SEEDS_TOGETHER[_name] = (
            f"{_rule}_{_i}" if _rule in SEEDS_TOGETHER.values() else _rule
        )
ONE_SEED_PER_JOB = [e for e in imp_experiments() if e not in SEEDS_TOGETHER]


def seeds_round_inputs(wildcards):
    """The inputs of a round of every seed together: spec and data once, the rest per seed."""
    spec = EXPERIMENTS[wildcards.experiment]
    per_seed = [
        _round_inputs(wildcards.experiment, s, wildcards.round) for s in spec.seeds
    ]
    inputs = {
        key: value if key in ("spec", "data") else [inputs[key] for inputs in per_seed]
        for key, value in per_seed[0].items()
    }
    if branches_with_round(spec):  # oneshot prunes the dense round's final weights
        inputs["dense"] = [f"{dense_dir(spec, s)}/checkpoint.pt" for s in spec.seeds]
    return inputs


def seeds_round_params(wildcards):
    spec = EXPERIMENTS[wildcards.experiment]
    paths = _round_paths(wildcards.experiment, "{seed}", wildcards.round)
    return {
        **paths,
        "seeds": " ".join(f"--seed {s}" for s in spec.seeds),
        "branches": " ".join(f"--branch {b}" for b in branches_with_round(spec)),
    }


def seeds_round_outputs(experiment):
    """Every seed's round files and its branches' files, by kind of file (rules/train.smk)."""
    spec = EXPERIMENTS[experiment]
    dirs = [SEEDS_ROUND_DIR.format(seed=s) for s in spec.seeds]
    branch_dirs = [f"{d}/{b}" for d in dirs for b in branches_with_round(spec)]
    outputs = {
        name: [f"{d}/{name}.{ext}" for d in dirs]
        for name, ext in (
            ("checkpoint", "pt"),
            ("mask", "pt"),
            ("metrics", "parquet"),
            ("rewind", "pt"),
        )
    }
    if branch_dirs:
        for name, ext in (("checkpoint", "pt"), ("mask", "pt"), ("metrics", "parquet")):
            outputs[f"branch_{name}"] = [f"{d}/{name}.{ext}" for d in branch_dirs]
    return outputs
