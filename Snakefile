# lotto: lottery-ticket pruning studies as a cached, resumable DAG.
#   snakemake --cores all                      run config/config.yaml (the quickstart)
#   snakemake --cores all --resources gpu=4    a 4-GPU workstation
#   snakemake --profile profiles/slurm         a SLURM cluster
#   snakemake figures | tables | report        re-render from cached results
from snakemake.utils import min_version

min_version("9.0")

# Snakemake's reader fails with a traceback on a config.yaml that is not UTF-8 or nests too
# deep; lotto's strict reader (lotto.core.inputs) says which file and why first.
import sys

from lotto.core.inputs import config_file_problem

if _problem := config_file_problem("config/config.yaml"):
    sys.exit(f"lotto: invalid configuration\n{_problem}")


configfile: "config/config.yaml"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/train.smk"
include: "rules/aggregate.smk"
include: "rules/earlybird.smk"
include: "rules/presets.smk"


# Targets and the JSON spec writers run in the Snakemake process itself: on a cluster a job
# just to write a small file costs a scheduling round trip.
localrules:
    all,
    figures,
    tables,
    report,
    experiment_spec,
    dense_spec,


rule all:
    default_target: True
    input:
        layout.REPORT,
        figure_targets(),
        table_targets(),
        study_targets(),


rule figures:
    input:
        figure_targets(),


rule tables:
    input:
        table_targets(),


rule report:
    input:
        layout.REPORT,
