# Experiments whose pruned rounds train all seeds in one job (training.vectorize_seeds), each
# with its own rule in rules/train.smk, named here (a rule's outputs cannot depend on a
# wildcard's value, and they list every seed); prune_round runs the other experiments' rounds.


def _names(names):
    """A wildcard constraint matching exactly these names (nothing when there are none)."""
    return "|".join(re.escape(n) for n in names) or "(?!)"


SEEDS_TOGETHER = {}
for _i, _name in enumerate(imp_experiments()):
    _spec = EXPERIMENTS[_name]
    if _spec.training.vectorize_seeds and len(_spec.seeds) > 1:
        _rule = f"prune_round_seeds_{re.sub(r'[^A-Za-z0-9_]', '_', _name)}"
        SEEDS_TOGETHER[_name] = (
            f"{_rule}_{_i}" if _rule in SEEDS_TOGETHER.values() else _rule
        )
ONE_SEED_PER_JOB = [e for e in imp_experiments() if e not in SEEDS_TOGETHER]


def seeds_round_inputs(wildcards):
    """The inputs of a round of every seed together: spec and data once, the rest per seed."""
    seeds = EXPERIMENTS[wildcards.experiment].seeds
    per_seed = [_round_inputs(wildcards.experiment, s, wildcards.round) for s in seeds]
    return {
        key: value if key in ("spec", "data") else [inputs[key] for inputs in per_seed]
        for key, value in per_seed[0].items()
    }


def seeds_round_params(wildcards):
    seeds = EXPERIMENTS[wildcards.experiment].seeds
    paths = _round_paths(wildcards.experiment, "{seed}", wildcards.round)
    return {**paths, "seeds": " ".join(f"--seed {s}" for s in seeds)}
