# Early-Bird experiments' files (lotto.methods.eb_plan names the retrainings; lotto.core.layout places them),
# for rules/earlybird.smk and the targets.


def eb_seed_dir(experiment, seed):
    return layout.eb_seed_dir(experiment, seed)


def eb_ratio(experiment, label):
    """The ratio a 'p30' wildcard names, refused when the experiment does not search it."""
    ratios = {
        eb_plan.ratio_label(r): r for r in EXPERIMENTS[experiment].earlybird.ratios
    }
    if label not in ratios:
        raise ValueError(
            f"{experiment}: ratio {label} is not searched; choose one of: {', '.join(ratios)}"
        )
    return ratios[label]


def eb_summaries(experiment):
    """summary.json of every retraining the experiment asks for, all seeds and ratios."""
    spec = EXPERIMENTS[experiment]
    return [
        f"{eb_seed_dir(experiment, seed)}/{name}/summary.json"
        for seed in spec.seeds
        for name in eb_plan.retrainings(spec)
    ]


def eb_jobs(experiment):
    """Each seed's search and every retraining, named as lotto.core.layout names jobs."""
    spec = EXPERIMENTS[experiment]
    return [
        job
        for seed in spec.seeds
        for job in (
            layout.eb_search_job(experiment, seed),
            *(
                layout.eb_train_job(
                    experiment, seed, eb_plan.ratio_label(ratio), f"{ticket}-{mode}"
                )
                for ratio in spec.earlybird.ratios
                for ticket, mode in eb_plan.retrain_jobs(spec)
            ),
        )
    ]


def eb_energy_records(experiment):
    """The energy record (lotto.outputs.energy) of each search and retraining, beside its log."""
    return [layout.energy_record(job) for job in eb_jobs(experiment)]


def eb_benchmarks(experiment):
    """Benchmark files of an Early-Bird experiment: each seed's search and every retraining."""
    return [layout.benchmark_file(job) for job in eb_jobs(experiment)]
