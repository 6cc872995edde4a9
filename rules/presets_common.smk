# Functions of rules/presets.smk (kept apart from its rules, as `snakemake --lint` asks):
# studies and transfers checked against the resolved experiments, targets and inputs.
from lotto.core.spec import transfer_problems

STUDY_TABLE_KINDS = {"modifications"}


def _load_studies(entries):
    """Check every study and transfer against the resolved experiments before any job starts."""
    studies, problems = {}, []
    known = ", ".join(sorted(EXPERIMENTS))
    where = f"{CONFIG_SOURCE}: studies"
    for entry in entries:
        name = entry["name"]
        if name_problem(name):
            problems.append(f"{where}: name: {name_problem(name)}")
        if name in studies:
            problems.append(f"{where}: {name!r} is used by two studies")
        missing = [e for e in entry["experiments"] if e not in EXPERIMENTS]
        if missing:
            problems.append(
                f"{where}: {name}: {missing} are not experiments of this config; "
                f"add them to experiments (now: {known})"
            )
        if entry["kind"] in STUDY_TABLE_KINDS and len(entry["experiments"]) != 1:
            problems.append(
                f"{where}: {name}: kind {entry['kind']!r} tabulates one experiment's branches; "
                f"got {len(entry['experiments'])} experiments"
            )
        studies[name] = entry
    for spec in EXPERIMENTS.values():
        problems += transfer_problems(spec, EXPERIMENTS)
    if problems:
        sys.exit("lotto: invalid configuration\n" + "\n".join(problems))
    return studies


STUDIES = _load_studies(STUDY_ENTRIES)
FIGURE_STUDIES = [n for n, s in STUDIES.items() if s["kind"] not in STUDY_TABLE_KINDS]
TABLE_STUDIES = [n for n, s in STUDIES.items() if s["kind"] in STUDY_TABLE_KINDS]
TRANSFER_EXPERIMENTS = [n for n, s in EXPERIMENTS.items() if s.transfer_from]


def study_targets():
    return [layout.study_file(n, "png") for n in FIGURE_STUDIES] + [
        layout.study_file(n, ext)
        for n in TABLE_STUDIES
        for ext in ("md", "tex", "html")
    ]


def study_metrics(wildcards):
    return [
        layout.experiment_file(e, "metrics.parquet")
        for e in STUDIES[wildcards.study]["experiments"]
    ]


def study_command(wildcards):
    """The lotto verb and options that draw a figure study."""
    study = STUDIES[wildcards.study]
    which = study.get("which", "early_stop")
    if study["kind"] == "boxes":
        return f"boxes --which {which}"
    if study["kind"] == "accuracy":
        return f"figure --kind accuracy --which {which}"
    return "figure --kind early_stop"


def transfer_source(wildcards):
    return EXPERIMENTS[EXPERIMENTS[wildcards.experiment].transfer_from]


def transfer_dirs(wildcards):
    source = transfer_source(wildcards)
    return {
        "round_dir": round_dir(source.name, wildcards.seed, wildcards.round),
        "dense": dense_dir(source, wildcards.seed),
    }


def _check_outputs_inside_results():
    """Every target path lands under results/ (guaranteed by safe names; checked anyway)."""
    escaping = outside_results(
        [
            *figure_targets(),
            *table_targets(),
            *study_targets(),
            *(layout.experiment_file(e, "metrics.parquet") for e in EXPERIMENTS),
        ]
    )
    if escaping:
        sys.exit(
            "lotto: invalid configuration\n"
            + "\n".join(f"{p}: would be written outside results/" for p in escaping)
        )


_check_outputs_inside_results()
