# The only place where config meets the workflow: validation, resolved experiments,
# paths and the input functions the rules call. The lotto package never sees `config`.
import json
import os
import re
import shlex
import sys
from dataclasses import replace
from pathlib import Path

from lotto.inputs import (
    DuplicateKeyError,
    InputError,
    load_yaml,
    name_problem,
    outside_results,
)
from lotto.spec import (
    PruningSpec,
    RewindingSpec,
    SpecError,
    load_experiment,
    validate_document,
)
from lotto import eb_plan
from lotto.optimal_masks import LOGITS_FILE
from lotto.rounds import LOCAL_BRANCHES, start_point

# lotto's own files (Snakefile, rules/, config/experiments/): this file's parent folder, also
# when lotto is a module of a user's workflow (workflow.basedir is then the user's folder).
LOTTO_DIR = Path(str(workflow.current_basedir)).parent


CONFIG_SOURCE = ", ".join(map(str, workflow.configfiles)) or "config"


def _config_problems():
    """The config files (strict YAML: duplicate keys, encoding) and the merged config
    (lotto's schema), one line per problem naming the file(s)."""
    problems, unreadable = [], False
    for path in workflow.configfiles:
        try:
            load_yaml(path, "config file")
        except DuplicateKeyError as err:
            problems.append(str(err))
        except InputError as err:
            problems.append(str(err))
            unreadable = True
    if unreadable:  # e.g. an alias bomb: the schema check would walk all of it
        return problems
    schema = load_yaml(LOTTO_DIR / "config/schema/config.schema.yaml", "schema")
    try:
        validate_document(config, CONFIG_SOURCE, schema)
    except SpecError as err:
        problems += str(err).splitlines()
    return problems


RESERVED = {"data", "dense", "figures", "tables", "logs", "benchmarks", "studies"}
FIGURE_KINDS = ["accuracy", "early_stop", "curves"]


def _experiment_file(entry):
    """A path as given, or a preset name: config/experiments/<name>.yaml in the working
    directory, else in the workflow's own directory (for --directory runs)."""
    path = Path(entry)
    if path.suffix in (".yaml", ".yml"):
        return path
    local = Path("config/experiments") / f"{entry}.yaml"
    shipped = LOTTO_DIR / local
    return local if local.exists() or not shipped.exists() else shipped


def _load_experiments(entries, problems):
    """Resolve every experiment before any job starts; report all errors at once (with
    `problems` found before), no traceback. An unexpected exception is reported with its
    type, naming the file, and does not hide the other files' problems."""
    specs = {}
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, str):
            continue  # reported by the config schema
        path = _experiment_file(entry)
        try:
            spec = load_experiment(path)
        except SpecError as err:
            problems.append(str(err))
            continue
        except Exception as err:  # a bug in lotto: reported, with the file, not hidden
            message = " ".join(str(err).split())[:300]
            problems.append(f"{path}: unexpected {type(err).__name__}: {message}")
            continue
        if spec.name in RESERVED:
            problems.append(
                f"{path}: name: {spec.name!r} is reserved; choose another name"
            )
        elif spec.name in specs:
            problems.append(f"{path}: name: {spec.name!r} is used by two experiments")
        specs[spec.name] = spec
    if problems:
        sys.exit("lotto: invalid configuration\n" + "\n".join(problems))
    return specs


EXPERIMENTS = _load_experiments(config.get("experiments"), _config_problems())
DENSE = {}  # dense_key -> the spec whose data/model/training round 0 uses
for _spec in EXPERIMENTS.values():
    DENSE.setdefault(_spec.dense_key, _spec)


def use_gpu(spec):
    if spec.training.device != "auto":
        return spec.training.device == "cuda"
    choice = str(config.get("use_gpu", "auto")).lower()
    if choice == "auto":
        import torch

        return torch.cuda.is_available()
    return choice == "true"


DATA = {spec.data_key: spec for spec in EXPERIMENTS.values()}


wildcard_constraints:
    experiment="|".join(re.escape(name) for name in EXPERIMENTS),
    key=r"[0-9a-f]{12}",
    seed=r"\d+",
    round=r"\d+",
    step=r"\d+",
    branch="|".join(LOCAL_BRANCHES),
    kind="|".join(FIGURE_KINDS),
    dataset=r"[A-Za-z0-9_-]+",


# --- resolved specs passed to jobs as JSON (a param, so only real changes rerun) ----------


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


# --- paths --------------------------------------------------------------------------


def data_file(spec):
    return f"results/data/{spec.data_key}.pt"


def dense_dir(spec, seed):
    return f"results/dense/{spec.dense_key}/seed{seed}"


def round_dir(experiment, seed, round_):
    round_ = int(round_)
    if round_ == 0:
        return dense_dir(EXPERIMENTS[experiment], seed)
    return f"results/{experiment}/seed{seed}/round{round_}"


def replay_file(dense, step):
    """Round 0's weights after `step` iterations (rule replay)."""
    return f"{dense}/replay/step{step}.pt"


def training_files(directory):
    return {
        "checkpoint": f"{directory}/checkpoint.pt",
        "mask": f"{directory}/mask.pt",
        "metrics": f"{directory}/metrics.parquet",
    }


def _round_inputs(experiment, seed, round_):
    """A pruned round's inputs; `seed` may be the template '{seed}'."""
    spec = EXPERIMENTS[experiment]
    r = int(round_)
    dense = dense_dir(spec, seed)
    prev = round_dir(experiment, seed, r - 1)
    inputs = {
        "spec": f"results/{experiment}/recipe.json",
        "data": data_file(spec),
        "init": f"{dense}/init.pt",
        "prev_checkpoint": f"{prev}/checkpoint.pt",
        "prev_mask": f"{prev}/mask.pt",
    }
    point = start_point(spec, r)
    if point.source == "replay":
        inputs["rewind"] = replay_file(dense, point.step)
    elif point.source == "previous_rewind":
        inputs["rewind"] = f"{prev}/rewind.pt"
    if spec.pruning.criterion == "optimal_mask":
        inputs["scores"] = f"results/{experiment}/seed{seed}/{LOGITS_FILE}"
    return inputs


def round_inputs(wildcards):
    return _round_inputs(wildcards.experiment, wildcards.seed, wildcards.round)


def seeds_round_inputs(wildcards):
    """The inputs of a round of every seed together: spec and data once, the rest per seed."""
    seeds = EXPERIMENTS[wildcards.experiment].seeds
    per_seed = [_round_inputs(wildcards.experiment, s, wildcards.round) for s in seeds]
    return {
        key: value if key in ("spec", "data") else [inputs[key] for inputs in per_seed]
        for key, value in per_seed[0].items()
    }


def pretrained_weights(wildcards):
    """Round 0's weights after mask_training.pretrain iterations (theta_0 when that is 0)."""
    spec = EXPERIMENTS[wildcards.experiment]
    dense = dense_dir(spec, wildcards.seed)
    step = spec.pruning.mask_training.pretrain
    return replay_file(dense, step) if step else f"{dense}/init.pt"


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


def seeds_round_params(wildcards):
    seeds = EXPERIMENTS[wildcards.experiment].seeds
    paths = _round_paths(wildcards.experiment, "{seed}", wildcards.round)
    return {**paths, "seeds": " ".join(f"--seed {s}" for s in seeds)}


def _job_spec(wildcards):
    if "experiment" in wildcards.keys():
        return EXPERIMENTS[wildcards.experiment]
    return DENSE[wildcards.key]


def gpus(wildcards):
    """resources.gpu_slot: a GPU job takes one slot of one GPU."""
    return int(use_gpu(_job_spec(wildcards)))


# --- several trainings per GPU (config gpu_slots; lotto.gpu_slot) ---------------------

GPU_SLOTS = config.get("gpu_slots", 1)


def whole_gpus(wildcards):
    """resources.gpu: GPUs a job holds alone. With gpu_slots k > 1 a job holds a slot instead
    (resources.gpu_slot), so `--resources gpu=4` still counts GPUs and
    `--resources gpu_slot=4k` bounds the jobs sharing them."""
    return gpus(wildcards) if GPU_SLOTS == 1 else 0


_MEMORY_MB = {}


def slot_options(wildcards):
    """lotto.gpu_slot's options: GPUs, slots per GPU and, when GPUs are shared, the job's
    estimated GPU memory (lotto.gpu_memory; imports torch once, only then)."""
    n = gpus(wildcards)
    options = f"-n {n} -k {GPU_SLOTS}"
    if n and GPU_SLOTS > 1:
        spec = _job_spec(wildcards)
        if spec.dense_key not in _MEMORY_MB:
            from lotto.gpu_memory import estimate_mb

            _MEMORY_MB[spec.dense_key] = estimate_mb(spec)
        options += f" --mem-mb {_MEMORY_MB[spec.dense_key]}"
    return options


def energy_records(experiment):
    """Each training job's energy record (lotto.gpu_slot --energy, beside its log); only
    GPU jobs measured by NVML have one, so these are read when present, not inputs."""
    return [
        b.replace("results/benchmarks/", "results/logs/", 1)[: -len(".tsv")]
        + ".log.energy.json"
        for b in experiment_benchmarks(experiment)
    ]


# --- what the targets need ----------------------------------------------------------


def imp_experiments():
    """Experiments run as IMP rounds (those with an earlybird section run rules/earlybird.smk)."""
    return [e for e, spec in EXPERIMENTS.items() if spec.earlybird is None]


def _names(names):
    """A wildcard constraint matching exactly these names (nothing when there are none)."""
    return "|".join(re.escape(n) for n in names) or "(?!)"


# Experiments whose pruned rounds train all seeds in one job (training.vectorize_seeds), each
# with its own rule in rules/train.smk, named here (a rule's outputs cannot depend on a
# wildcard's value, and they list every seed); prune_round runs the other experiments' rounds.
SEEDS_TOGETHER = {}
for _i, _name in enumerate(imp_experiments()):
    _spec = EXPERIMENTS[_name]
    if _spec.training.vectorize_seeds and len(_spec.seeds) > 1:
        _rule = f"prune_round_seeds_{re.sub(r'[^A-Za-z0-9_]', '_', _name)}"
        SEEDS_TOGETHER[_name] = (
            f"{_rule}_{_i}" if _rule in SEEDS_TOGETHER.values() else _rule
        )
ONE_SEED_PER_JOB = [e for e in imp_experiments() if e not in SEEDS_TOGETHER]


# Early-Bird experiments (rules/earlybird.smk)

EB_EXPERIMENTS = [
    name for name, spec in EXPERIMENTS.items() if spec.earlybird is not None
]


def eb_seed_dir(experiment, seed):
    return f"results/{experiment}/eb/seed{seed}"


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


def eb_energy_records(experiment):
    """The energy record (lotto.energy) of each search and retraining, beside its log."""
    spec = EXPERIMENTS[experiment]
    logs = [
        f"results/logs/{experiment}/eb/seed{seed}/search.log" for seed in spec.seeds
    ]
    logs += [
        f"results/logs/{experiment}/eb/seed{seed}/{eb_plan.ratio_label(ratio)}-{ticket}-{mode}.log"
        for seed in spec.seeds
        for ratio in spec.earlybird.ratios
        for ticket, mode in eb_plan.retrain_jobs(spec)
    ]
    return [f"{log}.energy.json" for log in logs]


EB_FIGURE_KINDS = ["accuracy", "distances", "flops"]  # the paper's Fig. 1, 3 and 5


def eb_figure_targets():
    return [
        f"results/figures/{e}/eb_{kind}.png"
        for e in EB_EXPERIMENTS
        for kind in EB_FIGURE_KINDS
    ]


def eb_table_targets():
    """Table 2's shape: Markdown, and the HTML fragment the report shows."""
    return [
        f"results/tables/{e}-eb.{ext}" for e in EB_EXPERIMENTS for ext in ("md", "html")
    ]


def eb_benchmarks(experiment):
    """Benchmark files of an Early-Bird experiment: each seed's search and every retraining."""
    spec = EXPERIMENTS[experiment]
    return [
        f"results/benchmarks/{experiment}/eb/seed{seed}/{job}.tsv"
        for seed in spec.seeds
        for job in (
            "search",
            *(
                f"{eb_plan.ratio_label(ratio)}-{ticket}-{mode}"
                for ratio in spec.earlybird.ratios
                for ticket, mode in eb_plan.retrain_jobs(spec)
            ),
        )
    ]


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
                    f"{round_dir(experiment, seed, r)}/{branch}/metrics.parquet"
                )
    return files


def experiment_benchmarks(experiment):
    spec = EXPERIMENTS[experiment]
    files = []
    if experiment in SEEDS_TOGETHER:
        rounds = range(1, spec.pruning.rounds + 1)
        files += [f"results/benchmarks/{experiment}/round{r}-seeds.tsv" for r in rounds]
    for seed in spec.seeds:
        files.append(f"results/benchmarks/dense/{spec.dense_key}/seed{seed}.tsv")
        for r in range(1, spec.pruning.rounds + 1):
            if experiment not in SEEDS_TOGETHER:
                files.append(f"results/benchmarks/{experiment}/seed{seed}/round{r}.tsv")
            for branch in spec.branches:
                files.append(
                    f"results/benchmarks/{experiment}/seed{seed}/round{r}-{branch}.tsv"
                )
    return files


def figure_targets():
    """IMP experiments' lottery-ticket figures, Early-Bird experiments' own figures."""
    return [
        f"results/figures/{e}/{kind}.png"
        for e in imp_experiments()
        for kind in FIGURE_KINDS
    ] + eb_figure_targets()


def table_targets():
    return [
        f"results/tables/{e}.{ext}"
        for e in imp_experiments()
        for ext in ("md", "tex", "html")
    ] + eb_table_targets()


def report_benchmarks():
    return [b for e in imp_experiments() for b in experiment_benchmarks(e)] + [
        b for e in EB_EXPERIMENTS for b in eb_benchmarks(e)
    ]
