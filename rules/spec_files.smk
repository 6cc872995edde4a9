# Resolved specs passed to jobs as JSON (a param, so only real changes rerun): rules
# experiment_spec and dense_spec write them.


def _as_written(spec):
    """The spec as its files show it: without vectorize_seeds, which only chooses the jobs
    (switching it leaves every spec file, and so every job's inputs, as they were)."""
    return replace(spec, training=replace(spec.training, vectorize_seeds=False))


def recipe_json(experiment):
    """What determines an experiment's rounds: not its seeds, branches or description."""
    spec = _as_written(EXPERIMENTS[experiment])
    recipe = replace(spec, seeds=(0,), branches=(), description="", transfer_from=None)
    return json.dumps(recipe.to_dict(), sort_keys=True)


def dense_json(key):
    spec = _as_written(DENSE[key])
    dense = replace(
        spec,
        name=f"dense-{key}",
        seeds=(0,),
        branches=(),
        description="",
        pruning=PruningSpec(),
        rewinding=RewindingSpec(),
    )
    return json.dumps(dense.to_dict(), sort_keys=True)


def full_json(experiment):
    return json.dumps(_as_written(EXPERIMENTS[experiment]).to_dict(), sort_keys=True)
