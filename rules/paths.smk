# Paths of an experiment's files (lotto.core.layout) and the input functions of its IMP rounds.

# The layout's folders and jobs as wildcard templates, for the rules' inputs and outputs.
RECIPE_FILE = layout.experiment_file("{experiment}", "recipe.json")
DENSE_SPEC_FILE = layout.dense_spec_file("{key}")
DENSE_SEED_DIR = layout.dense_dir("{key}", "{seed}")
ROUND_DIR = layout.pruned_round_dir("{experiment}", "{seed}", "{round}")
# every seed of a round, for expand(..., seed=...): the other wildcards stay wildcards
SEEDS_ROUND_DIR = layout.pruned_round_dir("{{experiment}}", "{seed}", "{{round}}")
BRANCH_DIR = layout.branch_dir("{experiment}", "{seed}", "{round}", "{branch}")
TRANSFER_DIR = layout.branch_dir("{experiment}", "{seed}", "{round}", "transfer")
EB_SEED_DIR = layout.eb_seed_dir("{experiment}", "{seed}")
EB_SEARCH_DIR = layout.eb_search_dir("{experiment}", "{seed}")
DENSE_JOB = layout.dense_job("{key}", "{seed}")
ROUND_JOB = layout.round_job("{experiment}", "{seed}", "{round}")
BRANCH_JOB = layout.branch_job("{experiment}", "{seed}", "{round}", "{branch}")
TRANSFER_JOB = layout.branch_job("{experiment}", "{seed}", "{round}", "transfer")
EB_SEARCH_JOB = layout.eb_search_job("{experiment}", "{seed}")
EB_TRAIN_JOB = layout.eb_train_job(
    "{experiment}", "{seed}", "{ratio}", "{ticket}-{mode}"
)


def data_file(spec):
    return layout.data_file(spec.data_key)


def dense_dir(spec, seed):
    return layout.dense_dir(spec.dense_key, seed)


def round_dir(experiment, seed, round_):
    round_ = int(round_)
    if round_ == 0:
        return dense_dir(EXPERIMENTS[experiment], seed)
    return layout.pruned_round_dir(experiment, seed, round_)


def _round_inputs(experiment, seed, round_):
    """A pruned round's inputs; `seed` may be the template '{seed}'."""
    spec = EXPERIMENTS[experiment]
    r = int(round_)
    dense = dense_dir(spec, seed)
    prev = round_dir(experiment, seed, r - 1)
    inputs = {
        "spec": layout.experiment_file(experiment, "recipe.json"),
        "data": data_file(spec),
        "init": f"{dense}/init.pt",
        "prev_checkpoint": f"{prev}/checkpoint.pt",
        "prev_mask": f"{prev}/mask.pt",
    }
    point = start_point(spec, r)
    if point.source == "replay":
        inputs["rewind"] = layout.replay_file(dense, point.step)
    elif point.source == "previous_rewind":
        inputs["rewind"] = f"{prev}/rewind.pt"
    if learns_mask(spec.pruning.criterion):
        inputs["scores"] = layout.logits_file(experiment, seed)
    return inputs


def round_inputs(wildcards):
    return _round_inputs(wildcards.experiment, wildcards.seed, wildcards.round)


def pretrained_weights(wildcards):
    """Round 0's weights after mask_training.pretrain iterations (theta_0 when that is 0)."""
    spec = EXPERIMENTS[wildcards.experiment]
    dense = dense_dir(spec, wildcards.seed)
    step = spec.pruning.mask_training.pretrain
    return layout.replay_file(dense, step) if step else f"{dense}/init.pt"


def _round_paths(experiment, seed, round_):
    """Command-line paths of a pruned round; with seed '{seed}' the templates `lotto round`
    fills in for each --seed."""
    inputs = _round_inputs(experiment, seed, round_)
    options = f"--rewind-from {inputs['rewind']}" if "rewind" in inputs else ""
    if "scores" in inputs:
        options += f" --scores {inputs['scores']}"
    return {
        "dense": dense_dir(EXPERIMENTS[experiment], seed),
        "prev": round_dir(experiment, seed, int(round_) - 1),
        "out": round_dir(experiment, seed, round_),
        "options": options,
    }


def round_params(wildcards):
    return _round_paths(wildcards.experiment, wildcards.seed, wildcards.round)


def experiment_metrics(experiment):
    """Every metrics file of one experiment: round 0 of each seed, its rounds and branches."""
    spec = EXPERIMENTS[experiment]
    files = []
    for seed in spec.seeds:
        files.append(f"{dense_dir(spec, seed)}/metrics.parquet")
        for r in range(1, spec.pruning.rounds + 1):
            files.append(f"{round_dir(experiment, seed, r)}/metrics.parquet")
            for branch in spec.branches:
                files.append(
                    f"{layout.branch_dir(experiment, seed, r, branch)}/metrics.parquet"
                )
    return files


def training_jobs(experiment):
    """Every training job of one IMP experiment, named as lotto.core.layout names them."""
    spec = EXPERIMENTS[experiment]
    jobs = []
    if experiment in SEEDS_TOGETHER:
        rounds = range(1, spec.pruning.rounds + 1)
        jobs += [layout.seeds_round_job(experiment, r) for r in rounds]
    for seed in spec.seeds:
        jobs.append(layout.dense_job(spec.dense_key, seed))
        for r in range(1, spec.pruning.rounds + 1):
            if experiment not in SEEDS_TOGETHER:
                jobs.append(layout.round_job(experiment, seed, r))
            for branch in spec.branches:
                if branch not in branches_with_round(spec):
                    jobs.append(layout.branch_job(experiment, seed, r, branch))
    return jobs


def experiment_benchmarks(experiment):
    return [layout.benchmark_file(job) for job in training_jobs(experiment)]


def energy_records(experiment):
    """Each training job's energy record (lotto.gpu_slot --energy, beside its log); only
    GPU jobs measured by NVML have one, so these are read when present, not inputs."""
    return [layout.energy_record(job) for job in training_jobs(experiment)]
