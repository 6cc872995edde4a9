"""Every preset's default target plans the jobs its kind needs, and none it does not.

One Snakemake dry run plans the default target of all presets in config/experiments together
(one dry run per preset would cost ~78 x 4 s); each planned job is attributed to its experiment
by its `experiment` wildcard, and round 0 and its replays (shared by `dense_key`) to the
experiments of that key. What each experiment needs is derived from its resolved spec:

- Early-Bird (an `earlybird` section): a search per seed, every retraining of
  lotto.methods.eb_plan.retrainings, the Early-Bird figures and table; no IMP round, collect or IMP figure.
- IMP: round 0 and rounds 1..N per seed, collect, the three figures and the tables; a control
  branch job for every listed branch (transfer_branch for 'transfer'); learn_mask per seed for
  Training Optimal Masks; a replay of round 0 to every step that rewinding to theta_k or X% back
  (or mask_training.pretrain) starts from; nothing Early-Bird.

Cost: one dry run planning ~6,300 jobs, ~35 s on a loaded 2-core machine.
"""

from __future__ import annotations

import subprocess
import sys
from collections import defaultdict

import pytest
import yaml
from workflow_util import REPO, SNAKEFILE, Job, job_env, parse_jobs

from lotto.core.spec import ExperimentSpec, load_experiment
from lotto.methods import eb_plan
from lotto.round_plan import LOCAL_BRANCHES, branches_with_round, start_point, trains_seeds_together

pytestmark = pytest.mark.workflow

PRESETS = sorted(p.stem for p in (REPO / "config" / "experiments").glob("*.yaml"))
IMP_FIGURE_KINDS = ("accuracy", "early_stop", "curves")

# A planned job as (rule, wildcards); the vectorised-seeds rounds have one rule per experiment.
Planned = tuple[str, tuple[tuple[str, str], ...]]


def planned(rule: str, **wildcards: object) -> Planned:
    return rule, tuple(sorted((k, str(v)) for k, v in wildcards.items()))


def _key(job: Job) -> Planned:
    rule = "prune_round_seeds" if job.rule.startswith("prune_round_seeds_") else job.rule
    return rule, tuple(sorted(job.wildcards.items()))


@pytest.fixture(scope="module")
def specs() -> dict[str, ExperimentSpec]:
    return {name: load_experiment(REPO / "config" / "experiments" / f"{name}.yaml") for name in PRESETS}


@pytest.fixture(scope="module")
def plan(tmp_path_factory) -> list[Job]:
    """The default target's jobs for all presets at once, from one dry run in an empty folder."""
    work = tmp_path_factory.mktemp("all-presets")
    (work / "config.yaml").write_text(yaml.safe_dump({"experiments": PRESETS, "use_gpu": False}))
    command = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "--directory", str(work),
               "--configfile", str(work / "config.yaml"), "--cores", "1", "--dry-run"]
    done = subprocess.run(command, cwd=work, env=job_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:] + done.stdout[-4000:]
    jobs = parse_jobs(done.stdout)
    assert jobs, done.stdout[-3000:]
    return jobs


def experiment_jobs(spec: ExperimentSpec) -> set[Planned]:
    """The jobs that carry the experiment's name: what its kind needs, exactly."""
    name = spec.name
    jobs = {planned("experiment_spec", experiment=name)}
    if spec.earlybird is not None:
        jobs.add(planned("eb_figures", experiment=name))
        for seed in spec.seeds:
            jobs.add(planned("eb_search", experiment=name, seed=seed))
            for retraining in eb_plan.retrainings(spec):
                ratio, _, job = retraining.partition("/")
                ticket, _, mode = job.partition("-")
                jobs.add(planned("eb_train", experiment=name, seed=seed, ratio=ratio, ticket=ticket, mode=mode))
        return jobs
    jobs |= {planned("collect", experiment=name), planned("render_tables", experiment=name)}
    jobs |= {planned("render_figure", experiment=name, kind=kind) for kind in IMP_FIGURE_KINDS}
    rounds = range(1, spec.pruning.rounds + 1)
    seeds_together = trains_seeds_together(spec)
    if seeds_together:
        jobs |= {planned("prune_round_seeds", experiment=name, round=r) for r in rounds}
    for seed in spec.seeds:
        if not seeds_together:
            jobs |= {planned("prune_round", experiment=name, seed=seed, round=r) for r in rounds}
        if spec.pruning.criterion == "optimal_mask":
            jobs.add(planned("learn_mask", experiment=name, seed=seed))
        for branch in spec.branches:
            if branch in branches_with_round(spec):
                continue  # trained in the round's seeds-together job
            if branch in LOCAL_BRANCHES:
                jobs |= {planned("control_branch", experiment=name, seed=seed, round=r, branch=branch)
                         for r in rounds}
            else:
                assert branch == "transfer", branch
                jobs |= {planned("transfer_branch", experiment=name, seed=seed, round=r) for r in rounds}
    return jobs


def dense_jobs(spec: ExperimentSpec) -> set[Planned]:
    """Round 0 of every seed and each replay of it the experiment starts a round from."""
    if spec.earlybird is not None:
        return set()
    key, jobs = spec.dense_key, set()
    steps = {start_point(spec, r).step for r in range(1, spec.pruning.rounds + 1)
             if start_point(spec, r).source == "replay"}
    if spec.pruning.mask_training is not None and spec.pruning.mask_training.pretrain:
        steps.add(spec.pruning.mask_training.pretrain)
    for seed in spec.seeds:
        jobs.add(planned("dense_round", key=key, seed=seed))
        jobs |= {planned("replay", key=key, seed=seed, step=step) for step in steps}
    return jobs


@pytest.mark.parametrize("name", PRESETS)
def test_default_target_plans_what_the_preset_kind_needs_and_nothing_else(name, plan, specs):
    spec = specs[name]
    mine = {_key(job) for job in plan if job.wildcards.get("experiment") == name}
    expected = experiment_jobs(spec)
    assert not expected - mine, f"{name}: jobs its kind needs are not planned: {sorted(expected - mine)}"
    assert not mine - expected, f"{name}: jobs planned that its kind does not need: {sorted(mine - expected)}"
    shared = {_key(job) for job in plan if job.rule in ("dense_round", "replay")}
    assert dense_jobs(spec) <= shared, f"{name}: round 0 or replays missing: {sorted(dense_jobs(spec) - shared)}"
    shares_key = any(s.dense_key == spec.dense_key and s.earlybird is None for s in specs.values())
    if spec.earlybird is not None and not shares_key:
        own_round0 = sorted(w for rule, w in shared if dict(w)["key"] == spec.dense_key)
        assert not own_round0, f"{name}: an Early-Bird experiment trains no IMP round 0: {own_round0}"


def test_every_planned_job_belongs_to_some_preset(plan, specs):
    """No job outside what the presets need: shared rounds 0 and replays, data and specs included."""
    by_rule = defaultdict(set)
    for job in plan:
        by_rule[job.rule].add(_key(job))
    attributed = {key for rule, keys in by_rule.items() for key in keys if dict(key[1]).get("experiment") in specs}
    assert attributed == set().union(*map(experiment_jobs, specs.values()))
    assert by_rule["dense_round"] | by_rule["replay"] == set().union(*map(dense_jobs, specs.values()))
    imp = [s for s in specs.values() if s.earlybird is None]
    assert by_rule["dense_spec"] == {planned("dense_spec", key=s.dense_key) for s in imp}
    assert by_rule["prepare_data"] == {planned("prepare_data", dataset=s.data_key) for s in specs.values()}
    assert {job.rule for job in plan if not job.wildcards} == {"html_report", "all"}
