"""Where every file of a study lives under results/: the one description of the layout, read
by the workflow (rules/*.smk) and by `lotto status`. Plain strings, no torch; `root` is the
results folder, and a wildcard template such as '{seed}' may stand for any part.

    data/<data_key>.pt                                 a prepared dataset
    data/<data_key>.pt.splits-<sha>-<hash>.pt          its standardised splits (lotto.core.data_cache)
    dense/<dense_key>/spec.json, seed<S>/              round 0, shared by experiments
    dense/<dense_key>/seed<S>/replay/step<k>.pt        round 0's weights after k iterations
    <experiment>/recipe.json, spec.json, metrics.parquet
    <experiment>/seed<S>/round<R>/[<branch>/]          pruned rounds and their control branches
    <experiment>/seed<S>/mask_logits.pt                learned mask scores (optimal_mask)
    <experiment>/eb/seed<S>/search/, <ratio>/<ticket>-<mode>/   Early-Bird search, retrainings
    logs/<job>.log, logs/<job>.log.energy.json, benchmarks/<job>.tsv   per job
    figures/<experiment>/<kind>.png|pdf, tables/<name>.<ext>, studies/<study>.<ext>, report.html
"""

from __future__ import annotations

RESULTS = "results"
LOGITS_FILE = "mask_logits.pt"
REPORT = f"{RESULTS}/report.html"


def data_dir(root: str = RESULTS) -> str:
    """The prepared datasets and their splits files."""
    return f"{root}/data"


def data_file(data_key: str, root: str = RESULTS) -> str:
    return f"{data_dir(root)}/{data_key}.pt"


def dense_spec_file(dense_key: str, root: str = RESULTS) -> str:
    return f"{root}/dense/{dense_key}/spec.json"


def dense_dir(dense_key: str, seed: object, root: str = RESULTS) -> str:
    """Round 0 of one seed."""
    return f"{root}/dense/{dense_key}/seed{seed}"


def replay_file(dense: str, step: object) -> str:
    """Round 0's weights after `step` iterations, in the dense folder `dense` (rule replay)."""
    return f"{dense}/replay/step{step}.pt"


def experiment_file(experiment: str, name: str, root: str = RESULTS) -> str:
    """recipe.json, spec.json or the collected metrics.parquet of an experiment."""
    return f"{root}/{experiment}/{name}"


def seed_dir(experiment: str, seed: object, root: str = RESULTS) -> str:
    return f"{root}/{experiment}/seed{seed}"


def pruned_round_dir(experiment: str, seed: object, round_: object, root: str = RESULTS) -> str:
    """A pruned round (1..N); round 0 is the experiment's dense_dir."""
    return f"{seed_dir(experiment, seed, root)}/round{round_}"


def branch_dir(experiment: str, seed: object, round_: object, branch: str, root: str = RESULTS) -> str:
    return f"{pruned_round_dir(experiment, seed, round_, root)}/{branch}"


def logits_file(experiment: str, seed: object, root: str = RESULTS) -> str:
    return f"{seed_dir(experiment, seed, root)}/{LOGITS_FILE}"


def eb_seed_dir(experiment: str, seed: object, root: str = RESULTS) -> str:
    """An Early-Bird seed: search/ and one folder per retraining (lotto.methods.eb_plan.retrainings)."""
    return f"{root}/{experiment}/eb/seed{seed}"


def eb_search_dir(experiment: str, seed: object, root: str = RESULTS) -> str:
    """An Early-Bird seed's dense search: eb.json, masks, tickets (lotto.methods.earlybird.search)."""
    return f"{eb_seed_dir(experiment, seed, root)}/search"


# A job's name places its log, energy record and benchmark: logs/<job>.log, benchmarks/<job>.tsv.


def dense_job(dense_key: str, seed: object) -> str:
    return f"dense/{dense_key}/seed{seed}"


def replay_job(dense_key: str, seed: object, step: object) -> str:
    return f"{dense_job(dense_key, seed)}-replay{step}"


def learn_mask_job(experiment: str, seed: object) -> str:
    return f"{experiment}/seed{seed}/learn_mask"


def round_job(experiment: str, seed: object, round_: object) -> str:
    return f"{experiment}/seed{seed}/round{round_}"


def seeds_round_job(experiment: str, round_: object) -> str:
    """A pruned round of every seed trained together (training.vectorize_seeds)."""
    return f"{experiment}/round{round_}-seeds"


def branch_job(experiment: str, seed: object, round_: object, branch: str) -> str:
    return f"{round_job(experiment, seed, round_)}-{branch}"


def eb_search_job(experiment: str, seed: object) -> str:
    return f"{experiment}/eb/seed{seed}/search"


def eb_train_job(experiment: str, seed: object, ratio: str, retraining: str) -> str:
    """retraining: '<ticket>-<mode>'."""
    return f"{experiment}/eb/seed{seed}/{ratio}-{retraining}"


def log_file(job: str, root: str = RESULTS) -> str:
    return f"{root}/logs/{job}.log"


def energy_record(job: str, root: str = RESULTS) -> str:
    """lotto.gpu_slot --energy's record, beside the job's log."""
    return f"{log_file(job, root)}.energy.json"


def benchmark_file(job: str, root: str = RESULTS) -> str:
    return f"{root}/benchmarks/{job}.tsv"


def figure_file(experiment: str, kind: str, ext: str = "png", root: str = RESULTS) -> str:
    return f"{root}/figures/{experiment}/{kind}.{ext}"


def table_file(name: str, ext: str, root: str = RESULTS) -> str:
    """An IMP experiment's tables are named after it, an Early-Bird one's '<experiment>-eb'."""
    return f"{root}/tables/{name}.{ext}"


def study_file(study: str, ext: str, root: str = RESULTS) -> str:
    return f"{root}/studies/{study}.{ext}"
