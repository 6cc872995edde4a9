"""Several seeds of a pruned round in one job (training.vectorize_seeds): the spec option and its
refusals, `lotto.rounds.run_round_seeds` against per-seed `run_round`, the `round` verb with
several --seed, and the workflow's one job per (experiment, round)."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from conftest import tiny_spec
from workflow_util import TINY_EXPERIMENT, Workdir, experiment, job_stats, parse_jobs

from lotto import cli, round_plan, rounds
from lotto.core import io, masks, metrics
from lotto.core.spec import ExperimentSpec, SpecError, build_model

SEEDS = [0, 1, 2]
ROUND_FILES = ("checkpoint.pt", "mask.pt", "metrics.parquet", "rewind.pt")
VECTORISED = {"training": {"vectorize_seeds": True}}

# ---------------------------------------------------------------------------- the spec option


def test_option_is_parsed_and_changes_neither_hash():
    spec = tiny_spec(**VECTORISED)
    assert spec.training.vectorize_seeds is True
    assert tiny_spec().training.vectorize_seeds is False
    assert (spec.dense_key, spec.recipe_key) == (tiny_spec().dense_key, tiny_spec().recipe_key)


def test_spec_files_round_trip_and_stay_as_before_when_off():
    """On, the option round-trips through spec.json; off, it is not written, so spec files of
    results made before it existed are unchanged, and they still load."""
    on = tiny_spec(**VECTORISED)
    assert ExperimentSpec.from_dict(on.to_dict()) == on
    off = tiny_spec().to_dict()
    assert "vectorize_seeds" not in off["training"]
    assert ExperimentSpec.from_dict(off) == tiny_spec()


BN_MODEL = {
    "model": {"name": "resnet20"},
    "dataset": {"synthetic": {"shape": [3, 8, 8]}},
    "pruning": {"rates": {"conv": 0.2, "fc": 0.2}},
}
REFUSED = {
    "BatchNorm": (BN_MODEL, "model: 'resnet20' cannot train its seeds together", "BatchNorm"),
    "in-round resume": ({"training": {"checkpoint_every": 10}}, "training.checkpoint_every: 10 it",
                        "allowed: 0"),
    "rewind X% back": ({"rewinding": {"weights": "back", "back": 0.5}}, "rewinding.weights: 'back'",
                       "allowed: init, step, final"),
}


@pytest.mark.parametrize(("overrides", "key", "why"), REFUSED.values(), ids=REFUSED.keys())
def test_what_cannot_train_together_is_refused_naming_key_value_and_the_way_out(overrides, key,
                                                                                 why):
    training = {**overrides.get("training", {}), "vectorize_seeds": True}
    with pytest.raises(SpecError) as refused:
        tiny_spec(**{**overrides, "training": training})
    message = str(refused.value)
    assert key in message and why in message and "training.vectorize_seeds: false" in message
    tiny_spec(**overrides)  # the same settings without the option are fine


def test_every_refusal_is_reported_at_once():
    with pytest.raises(SpecError) as refused:
        tiny_spec(**BN_MODEL, training={"vectorize_seeds": True, "checkpoint_every": 10},
                  rewinding={"weights": "back", "back": 0.5})
    assert len(str(refused.value).splitlines()) == 3


def test_option_must_be_a_boolean():
    with pytest.raises(SpecError, match=r"training.vectorize_seeds: 'yes' has the wrong type"):
        tiny_spec(training={"vectorize_seeds": "yes"})


# ---------------------------------------------------------------------------- the library

# Every rewinding recipe that can train seeds together, and the criteria that need more than the
# weights (snip: theta_0's gradients, per seed; optimal_mask: each seed's learned logits).
RECIPES = {
    "lottery ticket": {},
    "stable rewinding (theta_k, LR from k)": {"rewinding": {"weights": "step", "step": 20}},
    "learning-rate rewinding": {"rewinding": {"weights": "final"}},
    "fine-tuning (constant final LR)": {"rewinding": {"weights": "final", "lr": "final"},
                                        "training": {"milestones": [30]}},
    "snip": {"pruning": {"criterion": "snip"}},
    "random": {"pruning": {"criterion": "random"}},
    "optimal_mask": {"pruning": {"criterion": "optimal_mask", "mask_training": {"steps": 1}}},
}


@pytest.fixture(scope="module")
def dense(synthetic_data, tmp_path_factory) -> dict[int, Path]:
    """Round 0 of each seed (shared by every recipe: it depends on data, model and training)."""
    root = tmp_path_factory.mktemp("dense")
    dirs = {seed: root / f"seed{seed}" for seed in SEEDS}
    for seed, out in dirs.items():
        rounds.run_round(tiny_spec(seeds=SEEDS), synthetic_data, seed, 0, out)
    return dirs


def inputs_of(spec: ExperimentSpec, data: Path, dense: dict[int, Path], prev: dict[int, Path],
              round_: int, root: Path) -> dict[str, list]:
    """Per-seed inputs of a pruned round, as the workflow gives them (replays, logits made here)."""
    point = round_plan.start_point(spec, round_)
    rewind, scores = [], []
    for seed in SEEDS:
        if point.source == "replay":
            rewind.append(root / f"replay{seed}.pt")
            rounds.run_replay(spec, data, seed, point.step, dense[seed], rewind[-1])
        if spec.pruning.criterion == "optimal_mask":
            torch.manual_seed(100 + seed)
            scores.append(root / f"logits{seed}.pt")
            model = build_model(spec.model, spec.dataset)
            io.save_torch(scores[-1], {n: torch.randn_like(m.weight)
                                       for n, _, m in masks.prunable_layers(model)})
    return {"dense_dirs": [dense[s] for s in SEEDS], "prev_dirs": [prev[s] for s in SEEDS],
            "rewind_files": rewind or None, "scores_files": scores or None}


def run_both_ways(spec, data, inputs, round_, root, branches=()) -> tuple[list[Path], list[Path]]:
    """The round of every seed as separate run_round calls, and as one run_round_seeds call
    (with `branches`, which the caller runs alone)."""
    alone = [root / "alone" / f"seed{s}" for s in SEEDS]
    together = [root / "together" / f"seed{s}" for s in SEEDS]
    for i, seed in enumerate(SEEDS):
        rounds.run_round(spec, data, seed, round_, alone[i], dense_dir=inputs["dense_dirs"][i],
                         prev_dir=inputs["prev_dirs"][i],
                         rewind_file=(inputs["rewind_files"] or [None] * 3)[i],
                         scores_file=(inputs["scores_files"] or [None] * 3)[i])
    rounds.run_round_seeds(spec, data, SEEDS, round_, together, **inputs, branches=branches)
    return alone, together


def nan_as_none(value):
    """NaN compares unequal to itself; untrained branches' rows have lr NaN."""
    return None if isinstance(value, float) and math.isnan(value) else value


def assert_same_round(alone: Path, together: Path, exact: bool = False, same_name: bool = True) -> None:
    """A pruned round's files (assert_same_training), and an empty rewind.pt in both."""
    assert set(ROUND_FILES) <= {p.name for p in together.iterdir()}
    assert io.load_torch(together / "rewind.pt") == io.load_torch(alone / "rewind.pt") == {}
    assert_same_training(alone, together, exact, same_name)


def assert_same_training(alone: Path, together: Path, exact: bool = False, same_name: bool = True) -> None:
    """Same files and metrics schema, the identical mask, weights and metrics equal up to float
    rounding (batched and single matrix products round differently), or exactly.

    Weights agree to 2e-4, a tenth of one Adam step at this lr (2e-3): Adam divides each
    step by the gradient's running RMS, so a rounding difference in a near-zero gradient moves
    a weight by a fraction of the lr (on an AVX-512 AMD EPYC, 7 of 19,200 weights differed by up
    to 6.4e-5 under learning-rate rewinding; on the Intel boxes of earlier sessions all < 1e-5)."""
    assert sorted(p.name for p in together.iterdir()) == sorted(p.name for p in alone.iterdir())
    mask_a, mask_t = masks.load(alone / "mask.pt"), masks.load(together / "mask.pt")
    assert mask_a.keys() == mask_t.keys() and all(torch.equal(mask_a[k], mask_t[k]) for k in mask_a)
    state_a, state_t = io.load_torch(alone / "checkpoint.pt"), io.load_torch(together / "checkpoint.pt")
    assert state_a.keys() == state_t.keys()
    for key in state_a:
        torch.testing.assert_close(state_t[key], state_a[key], rtol=0, atol=0 if exact else 2e-4)
    table_a, table_t = pq.read_table(alone / "metrics.parquet"), pq.read_table(together / "metrics.parquet")
    assert table_t.schema.equals(metrics.SCHEMA) and table_a.schema.equals(metrics.SCHEMA)
    rows_a, rows_t = table_a.to_pylist(), table_t.to_pylist()
    assert len(rows_a) == len(rows_t) >= 2  # untrained branches: val and test at step 0
    for a, t in zip(rows_a, rows_t, strict=True):
        same = ("experiment", "seed", "round", "branch", "density", "step", "split", "lr", "status")
        same = same if same_name else same[1:]  # two experiments of one workflow run
        assert {k: nan_as_none(t[k]) for k in same} == {k: nan_as_none(a[k]) for k in same}
        assert t["loss"] == pytest.approx(a["loss"], rel=0 if exact else 1e-4, nan_ok=True)
        assert t["accuracy"] == pytest.approx(a["accuracy"], abs=0 if exact else 2e-3, nan_ok=True)


@pytest.mark.parametrize("overrides", RECIPES.values(), ids=RECIPES.keys())
def test_seeds_together_write_what_each_seed_alone_writes(synthetic_data, dense, tmp_path,
                                                          overrides):
    spec = tiny_spec(seeds=SEEDS, **overrides)
    inputs = inputs_of(spec, synthetic_data, dense, dense, 1, tmp_path)
    alone, together = run_both_ways(spec, synthetic_data, inputs, 1, tmp_path)
    for a, t in zip(alone, together, strict=True):
        assert_same_round(a, t)
    # the seeds trained apart from each other (a vectorisation that mixed them would not)
    first, second = (io.load_torch(t / "checkpoint.pt")["1.weight"] for t in together[:2])
    assert not torch.allclose(first, second)


LOCAL = list(round_plan.LOCAL_BRANCHES)


@pytest.mark.parametrize("overrides", [
    {"branches": LOCAL},
    {"branches": ["reinit", "random_mask"], "model": {"dropout": 0.5},
     "rewinding": {"weights": "step", "step": 20}},
], ids=["every local branch", "dropout, theta_k"])
def test_branches_trained_with_the_round_write_what_their_own_jobs_write(synthetic_data, tmp_path,
                                                                         overrides):
    """Each seed's ticket and control branches in one run_round_seeds call: every branch's files as
    run_branch writes them from the round's mask (weights to 2e-4, masks and metric keys exactly).
    The second case has dropout (per-seed noise) and a ticket on another schedule than its
    branches (theta_k: 40 steps from step 20; branches: 60 from 0), so two vectorised loops."""
    spec = tiny_spec(seeds=SEEDS, **overrides)
    dense = {s: tmp_path / "dense" / f"seed{s}" for s in SEEDS}
    for seed in SEEDS:
        rounds.run_round(spec, synthetic_data, seed, 0, dense[seed])
    inputs = inputs_of(spec, synthetic_data, dense, dense, 1, tmp_path)
    alone, together = run_both_ways(spec, synthetic_data, inputs, 1, tmp_path, branches=spec.branches)
    for seed, a, t in zip(SEEDS, alone, together, strict=True):
        for kind in spec.branches:
            rounds.run_branch(spec, synthetic_data, seed, 1, kind, a, dense[seed], a / kind)
            assert_same_training(a / kind, t / kind)
        assert_same_round(a, t)
    first, second = (io.load_torch(t / "reinit" / "checkpoint.pt")["1.weight"] for t in together[:2])
    assert not torch.allclose(first, second)


def test_a_later_round_reads_each_seeds_previous_round(synthetic_data, dense, tmp_path):
    """Round 2 from each seed's own round 1 (not round 0): masks shrink from round 1's."""
    spec = tiny_spec(seeds=SEEDS)
    round1 = {seed: tmp_path / "round1" / f"seed{seed}" for seed in SEEDS}
    for seed in SEEDS:
        rounds.run_round(spec, synthetic_data, seed, 1, round1[seed], dense_dir=dense[seed],
                         prev_dir=dense[seed])
    inputs = inputs_of(spec, synthetic_data, dense, round1, 2, tmp_path)
    alone, together = run_both_ways(spec, synthetic_data, inputs, 2, tmp_path)
    for seed, a, t in zip(SEEDS, alone, together, strict=True):
        assert_same_round(a, t)
        assert masks.density(masks.load(t / "mask.pt")) < masks.density(
            masks.load(round1[seed] / "mask.pt"))


def test_seeds_together_are_repeatable_bit_for_bit(synthetic_data, dense, tmp_path):
    spec = tiny_spec(seeds=SEEDS)
    inputs = inputs_of(spec, synthetic_data, dense, dense, 1, tmp_path)
    runs = [[tmp_path / run / f"seed{s}" for s in SEEDS] for run in ("a", "b")]
    for outs in runs:
        rounds.run_round_seeds(spec, synthetic_data, SEEDS, 1, outs, **inputs)
    for a, b in zip(*runs, strict=True):
        for name in ROUND_FILES:
            assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_a_diverging_seed_makes_every_seed_train_alone(synthetic_data, dense, tmp_path, capsys):
    """Divergence is recorded per seed by lotto.core.train.train, so the round falls back to it: the
    files are then exactly run_round's."""
    spec = tiny_spec(seeds=SEEDS)
    spec = replace(spec, training=replace(spec.training, divergence_loss=0.5))
    inputs = inputs_of(spec, synthetic_data, dense, dense, 1, tmp_path)
    alone, together = run_both_ways(spec, synthetic_data, inputs, 1, tmp_path)
    assert "training the seeds one by one" in capsys.readouterr().err
    for a, t in zip(alone, together, strict=True):
        assert_same_round(a, t, exact=True)
        statuses = {row["status"] for row in pq.read_table(t / "metrics.parquet").to_pylist()}
        assert "diverged" in statuses


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"prev_dirs": ["x"]}, "prev_dirs: 1 paths for 3 seeds [0, 1, 2]; give one per seed"),
        ({"seeds": [0, 0, 1]}, "seeds [0, 0, 1]: give at least one seed, each once"),
        ({"round_": 0}, "round 0: only pruned rounds (>= 1) train seeds together"),
        ({"spec": tiny_spec(seeds=SEEDS, rewinding={"weights": "back", "back": 0.5})},
         "tiny: rewinding.weights: 'back'"),
    ],
    ids=["paths per seed", "repeated seed", "dense round", "back recipe"],
)
def test_bad_calls_are_refused_before_any_work(tmp_path, change, message):
    """Refused before the data is read (the data path here does not exist)."""
    call = {"spec": tiny_spec(seeds=SEEDS), "data_path": tmp_path / "absent.pt", "seeds": SEEDS,
            "round_": 1, "outs": [tmp_path / f"s{s}" for s in SEEDS],
            "dense_dirs": [tmp_path] * 3, "prev_dirs": [tmp_path] * 3, **change}
    with pytest.raises(ValueError) as refused:
        rounds.run_round_seeds(**call)
    assert message in str(refused.value)


# ---------------------------------------------------------------------------- the CLI


def test_round_verb_with_several_seeds_fills_in_each_seeds_paths(synthetic_data, dense, tmp_path,
                                                                 capsys):
    spec = tmp_path / "spec.json"
    io.write_json(spec, tiny_spec(seeds=SEEDS).to_dict())
    template = str(dense[0]).replace("seed0", "seed{seed}")
    out = tmp_path / "x" / "seed{seed}" / "round1"
    args = ["round", "--spec", str(spec), "--data", str(synthetic_data), "--round", "1",
            "--dense", template, "--prev", template]
    assert cli.main([*args, "--seed", "0", "--seed", "2", "--out", str(out)]) == 0
    for seed in (0, 2):
        rows = pq.read_table(tmp_path / "x" / f"seed{seed}" / "round1" / "metrics.parquet")
        assert set(rows.column("seed").to_pylist()) == {seed}
    assert not (tmp_path / "x" / "seed1").exists()
    assert capsys.readouterr().err.count("final test acc") == 2  # one summary line per seed

    assert cli.main([*args, "--seed", "0", "--seed", "2", "--out", str(tmp_path / "same")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"lotto round: error: --out {tmp_path / 'same'}: with several --seed")
    assert "{seed}" in err


# ---------------------------------------------------------------------------- the workflow

WORKFLOW_EXPERIMENT = experiment(
    TINY_EXPERIMENT,
    training={"duration": 40, "eval_every": 20, "vectorize_seeds": True},
    pruning={"rounds": 2, "rates": {"fc": 0.5}},
    rewinding={"weights": "step", "step": 20},  # replays, and --rewind-from with {seed}
    branches=None,
)


@pytest.mark.workflow
def test_dry_run_plans_one_job_per_round_beside_per_seed_experiments(tmp_path):
    """The vectorised experiment's rounds are one job each, with every seed's round and local
    branch files as outputs; a per-seed experiment of the same config keeps prune_round and
    control_branch, round 0 stays shared and per seed, and the transfer branch (another
    experiment's tickets) keeps its own job."""
    work = Workdir(tmp_path)
    per_seed = experiment(WORKFLOW_EXPERIMENT, training={"vectorize_seeds": False},
                          pruning={"rates": {"fc": 0.3}}, branches=["random_mask"])
    transfer = experiment(WORKFLOW_EXPERIMENT, branches=["transfer"], transfer={"from": "tp"},
                          pruning={"rates": {"fc": 0.3}})
    work.write_config([work.write_experiment("tv-1", experiment(WORKFLOW_EXPERIMENT,
                                                                branches=["reinit"])),
                       work.write_experiment("tp", per_seed), work.write_experiment("tt", transfer)])
    result = work.snakemake("-n").check()
    stats = job_stats(result.output)
    assert stats["prune_round_seeds_tv_1"] == 2 and stats["prune_round_seeds_tt"] == 2  # rounds
    assert stats["prune_round"] == 2 * 2  # seeds x rounds, of tp
    assert stats["dense_round"] == 2 and stats["replay"] == 2  # shared by the three experiments
    assert stats["control_branch"] == 2 * 2  # seeds x rounds, of tp only
    assert stats["transfer_branch"] == 2 * 2  # seeds x rounds, of tt
    vectorised = [job for job in result.jobs if job.rule == "prune_round_seeds_tv_1"]
    assert sorted(job.wildcards["round"] for job in vectorised) == ["1", "2"]
    for job in vectorised:
        r = job.wildcards["round"]
        assert set(job.outputs) == {f"results/tv-1/seed{s}/round{r}/{name}"
                                    for s in (0, 1) for name in ROUND_FILES} | {
            f"results/tv-1/seed{s}/round{r}/reinit/{name}"
            for s in (0, 1) for name in ("checkpoint.pt", "mask.pt", "metrics.parquet")}
    assert all(job.wildcards["experiment"] == "tp" for job in result.jobs
               if job.rule in ("prune_round", "control_branch"))


# ticket + re-init + random mask with dropout (per-seed noise), vectorised and not; the same
# recipe, so one round 0. (A ticket on another schedule than its branches: the library test.)
TOGETHER_EXPERIMENT = experiment(WORKFLOW_EXPERIMENT, model={"name": "lenet_300_100", "dropout": 0.5},
                                 pruning={"rounds": 1}, rewinding=None, branches=["reinit", "random_mask"])


def differences(alone: Path, together: Path) -> tuple[float, bool, float, float]:
    """max |weight difference|, masks identical, max |loss difference|, max |accuracy difference|."""
    state_a, state_t = io.load_torch(alone / "checkpoint.pt"), io.load_torch(together / "checkpoint.pt")
    weight = max(float((state_a[k] - state_t[k]).abs().max()) for k in state_a)
    mask_a, mask_t = masks.load(alone / "mask.pt"), masks.load(together / "mask.pt")
    same_mask = mask_a.keys() == mask_t.keys() and all(torch.equal(mask_a[k], mask_t[k]) for k in mask_a)
    rows_a, rows_t = (pq.read_table(d / "metrics.parquet").to_pylist() for d in (alone, together))
    loss = max(abs(a["loss"] - t["loss"]) for a, t in zip(rows_a, rows_t, strict=True))
    accuracy = max(abs(a["accuracy"] - t["accuracy"]) for a, t in zip(rows_a, rows_t, strict=True))
    return weight, same_mask, loss, accuracy


@pytest.mark.workflow
def test_vectorised_rounds_and_branches_through_the_default_target_match_separate_jobs(tmp_path):
    """One real run of the default target with the experiment vectorised (tv) and not (ts): one
    job per round in tv, trains ticket, re-init and random mask of both seeds; each of its files
    lies where ts's per-seed and per-branch jobs put theirs and matches them (weights to 2e-4,
    masks exactly, metric keys exactly); figures, tables and report are made; a second run has
    nothing to do."""
    work = Workdir(tmp_path)
    work.write_config([work.write_experiment("tv", TOGETHER_EXPERIMENT),
                       work.write_experiment("ts", experiment(TOGETHER_EXPERIMENT,
                                                              training={"vectorize_seeds": False}))])
    result = work.snakemake().check()
    stats = job_stats(result.output)
    assert stats["prune_round_seeds_tv"] == 1
    assert stats["prune_round"] == 2 and stats["control_branch"] == 2 * 2  # all of ts
    assert stats["dense_round"] == 2 and "replay" not in stats  # round 0 shared by tv and ts
    print("\n| seed | round | branch | max abs d weight | masks equal | max abs d loss | max abs d acc |")
    for seed in (0, 1):
        for r in (1,):
            for branch in ("main", "reinit", "random_mask"):
                where = f"seed{seed}/round{r}" + ("" if branch == "main" else f"/{branch}")
                alone, together = work.results / "ts" / where, work.results / "tv" / where
                weight, same_mask, loss, accuracy = differences(alone, together)
                print(f"| {seed} | {r} | {branch} | {weight:.2e} | {same_mask} | {loss:.2e} | {accuracy:.2e} |")
                if branch == "main":
                    assert_same_round(alone, together, same_name=False)
                else:
                    assert_same_training(alone, together, same_name=False)
    for name in ("tv", "ts"):
        assert (work.results / "figures" / name / "accuracy.png").is_file()
        frame = metrics.read([work.results / name / "metrics.parquet"])
        assert sorted(set(zip(frame["seed"], frame["round"], frame["branch"], strict=True))) == sorted(
            [(s, 0, "main") for s in (0, 1)]
            + [(s, 1, b) for s in (0, 1) for b in ("main", "random_mask", "reinit")])
    assert (work.results / "report.html").is_file()
    assert (work.results / "benchmarks" / "tv" / "round1-seeds.tsv").is_file()
    assert not (work.results / "benchmarks" / "tv" / "seed0").exists()  # no per-branch jobs in tv
    log = (work.results / "logs" / "tv" / "round1-seeds.log").read_text()
    assert log.count("final test acc") == 2 * 3 and "status ok" in log
    rerun = work.snakemake("-n").check()
    assert "Nothing to be done" in rerun.output and not parse_jobs(rerun.output)
