# The only place where config meets the workflow: the config files checked, the experiments
# resolved, and every other setting read from `config` into a name the rules use. The lotto
# package never sees `config`.
import json
import os
import re
import shlex
import sys
from dataclasses import replace
from pathlib import Path

from lotto.core import layout
from lotto.core.criteria import learns_mask
from lotto.core.inputs import (
    DuplicateKeyError,
    InputError,
    load_yaml,
    name_problem,
    outside_results,
)
from lotto.core.spec import (
    PruningSpec,
    RewindingSpec,
    SpecError,
    load_experiment,
    validate_document,
)
from lotto.core.spec_types import execution_settings, with_execution_settings
from lotto.methods import eb_plan
from lotto.gpu_slot import sees_cuda_device
from lotto.round_plan import (
    LOCAL_BRANCHES,
    branches_with_round,
    start_point,
    trains_seeds_together,
)

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
DATA = {spec.data_key: spec for spec in EXPERIMENTS.values()}


def imp_experiments():
    """Experiments run as IMP rounds (those with an earlybird section run rules/earlybird.smk)."""
    return [e for e, spec in EXPERIMENTS.items() if spec.earlybird is None]


EB_EXPERIMENTS = [
    name for name, spec in EXPERIMENTS.items() if spec.earlybird is not None
]

# The other settings (config/schema/config.schema.yaml documents each).
USE_GPU = str(config.get("use_gpu", "auto")).lower()
GPU_SLOTS = config.get("gpu_slots", 1)
TRAINING_THREADS = config.get("threads", 1)
TRAINING_MEM_MB = config.get("mem_mb", 3000)
PLOT_WHICH = config.get("plots", {}).get("which", "early_stop")
PLOT_DENSITIES = config.get("plots", {}).get("curve_densities", [1.0, 0.5, 0.2, 0.1])
STUDY_ENTRIES = config.get("studies", [])


wildcard_constraints:
    experiment="|".join(re.escape(name) for name in EXPERIMENTS),
    key=r"[0-9a-f]{12}",
    seed=r"\d+",
    round=r"\d+",
    step=r"\d+",
    branch="|".join(LOCAL_BRANCHES),
    kind="|".join(FIGURE_KINDS),
    dataset=r"[A-Za-z0-9_-]+",
