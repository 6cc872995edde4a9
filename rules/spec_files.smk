# Resolved specs passed to jobs as JSON (a param, so only real changes rerun): rules
# experiment_spec and dense_spec write them.


def _as_written(spec):
    """The spec as its files show it: its execution-only fields (device, checkpoint_every, ...)
    at their defaults, so changing one leaves every spec file, and every job, as it was; the
    jobs get the real values from `execution_options`."""
    return with_execution_settings(spec, {})


def execution_options(wildcards, output):
    """`--execution` of a training job: the experiment's execution-only settings. Snakemake
    counts a params function taking `output` as derived from the outputs and leaves it out
    of its params rerun trigger, as wanted here (tests/test_workflow.py checks it)."""
    settings = execution_settings(_job_spec(wildcards))
    return f"--execution {shlex.quote(json.dumps(settings, sort_keys=True))}"


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
