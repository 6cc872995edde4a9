# The workflow's functions, by topic; every rule file reads them. Only experiments.smk reads
# `config`; paths come from lotto.core.layout. Nothing here imports torch (tests/test_workflow.py).


include: "experiments.smk"
include: "spec_files.smk"
include: "resources.smk"
include: "paths.smk"
include: "seeds_together.smk"
include: "earlybird_plan.smk"
include: "targets.smk"
