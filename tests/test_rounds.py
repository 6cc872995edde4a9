"""lotto.rounds: whole rounds on synthetic data. Outputs and their schema, densities, where
each rewinding recipe (PAPERS.md section 2) starts and how its LR runs, exact replays,
byte-identical reruns, in-round resume, divergence, and the control branches."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import torch
from conftest import tiny_spec

from lotto import round_plan, rounds
from lotto.core import io, masks, metrics, prune
from lotto.core.spec import ExperimentSpec, build_model
from lotto.core.train import train as real_train

ROUND_FILES = ("checkpoint.pt", "mask.pt", "metrics.parquet")


@dataclass
class TrainSpy:
    """Stands in for rounds.train: records each call's arguments and the state at step 0
    (plus any `extra` steps), so a test sees exactly where a round started."""

    extra: set[int] = field(default_factory=set)
    calls: list[dict[str, Any]] = field(default_factory=list)

    def __call__(self, model, data, spec, *, mask, **kwargs):
        kwargs["snapshot_at"] = set(kwargs.get("snapshot_at", ())) | {0} | self.extra
        result = real_train(model, data, spec, mask=mask, **kwargs)
        self.calls.append({"mask": mask, "result": result, **kwargs})
        return result

    @property
    def last(self) -> dict[str, Any]:
        return self.calls[-1]


def spied_round(spec: ExperimentSpec, data: Path, round_: int, out: Path, extra=(), **dirs):
    """Run one round with the spy in place; return the spy's record of its training."""
    spy = TrainSpy(extra=set(extra))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(rounds, "train", spy)
        rounds.run_round(spec, data, 0, round_, out, **dirs)
    return spy.last


def load(path: Path) -> dict[str, torch.Tensor]:
    return io.load_torch(path)


def rows_of(directory: Path) -> list[dict[str, Any]]:
    return pq.read_table(directory / "metrics.parquet").to_pylist()


def assert_starts_from(start: dict, weights: dict, mask: masks.Mask) -> None:
    """Survivors hold exactly `weights`, pruned weights are 0, other tensors equal `weights`."""
    assert start.keys() == weights.keys()
    for key, value in start.items():
        layer = key.removesuffix(".weight")
        if key.endswith(".weight") and layer in mask:
            assert torch.equal(value, weights[key] * mask[layer]), key
        else:
            assert torch.equal(value, weights[key]), key


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


# ---------------------------------------------------------------------------- the LTH chain

CHAIN_STEPS = 300


@pytest.fixture(scope="module")
def lth_chain(synthetic_data, tmp_path_factory):
    """Rounds 0, 1, 2 of the lottery-ticket recipe (rewind to theta_0 every round)."""
    spec = tiny_spec(training={"duration": CHAIN_STEPS, "eval_every": 100})
    root = tmp_path_factory.mktemp("lth")
    dirs = [root / f"round{r}" for r in range(3)]
    starts = [spied_round(spec, synthetic_data, 0, dirs[0])]
    for r in (1, 2):
        starts.append(spied_round(spec, synthetic_data, r, dirs[r], dense_dir=dirs[0],
                                  prev_dir=dirs[r - 1]))
    return spec, dirs, starts


def test_round_outputs_exist_with_the_metrics_schema(lth_chain):
    spec, dirs, _ = lth_chain
    for r, directory in enumerate(dirs):
        for name in (*ROUND_FILES, "init.pt" if r == 0 else "rewind.pt"):
            assert (directory / name).is_file(), (r, name)
        assert not (directory / "resume.pt").exists()
        assert pq.read_table(directory / "metrics.parquet").schema.equals(metrics.SCHEMA)
        rows = rows_of(directory)
        assert {(row["experiment"], row["seed"], row["round"], row["branch"]) for row in rows} == {
            ("tiny", 0, r, "main")}
        steps = sorted({row["step"] for row in rows})
        assert steps == list(range(0, CHAIN_STEPS + 1, 100))
        assert {row["split"] for row in rows if row["step"] == 0} == {"val", "test"}
        assert {row["split"] for row in rows if row["step"] == CHAIN_STEPS} == {
            "train", "val", "test"}
        assert all(row["status"] == "ok" for row in rows)
    assert load(dirs[1] / "rewind.pt") == {}  # only 'back' recipes keep a rewind point


def test_density_of_round_r_is_the_product_of_per_round_rates(lth_chain):
    spec, dirs, _ = lth_chain
    model = build_model(spec.model, spec.dataset, "meta")
    kinds = {name: kind for name, kind, _ in masks.prunable_layers(model)}
    for r, directory in enumerate(dirs):
        mask = masks.load(directory / "mask.pt", model)
        for name, m in mask.items():
            expected = (1 - spec.pruning.rate_for(kinds[name])) ** r
            assert abs(float(m.float().mean()) - expected) <= r / m.numel(), (r, name)
        total = sum(m.numel() for m in mask.values())
        expected_density = sum(m.numel() * (1 - spec.pruning.rate_for(kinds[n])) ** r
                               for n, m in mask.items()) / total
        assert masks.density(mask) == pytest.approx(expected_density, abs=r * len(mask) / total)
        assert {row["density"] for row in rows_of(directory)} == {masks.density(mask)}


def test_dense_round_learns_the_synthetic_task(lth_chain):
    """Chance is 10%; a learnable dataset gets far above it within a few hundred steps."""
    _, dirs, _ = lth_chain
    final = {row["split"]: row["accuracy"] for row in rows_of(dirs[0])
             if row["step"] == CHAIN_STEPS}
    assert final["test"] > 0.5 and final["val"] > 0.5


def test_each_mask_prunes_the_previous_rounds_trained_weights(lth_chain):
    """m_r comes from round r-1's final weights under m_{r-1} (not from theta_0), and
    masks only shrink."""
    spec, dirs, _ = lth_chain
    model = build_model(spec.model, spec.dataset)
    for r in (1, 2):
        previous = masks.load(dirs[r - 1] / "mask.pt")
        model.load_state_dict(load(dirs[r - 1] / "checkpoint.pt"))
        expected = prune.prune(model, previous, spec.pruning)
        mask = masks.load(dirs[r] / "mask.pt")
        assert masks.hamming(mask, expected) == 0
        assert all(bool((mask[n] <= previous[n]).all()) for n in mask)
        model.load_state_dict(load(dirs[0] / "init.pt"))
        assert masks.hamming(mask, prune.prune(model, previous, spec.pruning)) > 0


def test_pruned_rounds_restart_survivors_exactly_at_theta_0(lth_chain):
    _, dirs, starts = lth_chain
    theta_0 = load(dirs[0] / "init.pt")
    for r in (1, 2):
        mask = masks.load(dirs[r] / "mask.pt")
        assert masks.hamming(starts[r]["mask"], mask) == 0  # trained under the saved mask
        assert_starts_from(starts[r]["result"].snapshots[0], theta_0, mask)


def test_pruned_weights_stay_zero_in_every_checkpoint(lth_chain):
    _, dirs, _ = lth_chain
    for directory in dirs[1:]:
        mask = masks.load(directory / "mask.pt")
        state = load(directory / "checkpoint.pt")
        for name, m in mask.items():
            assert bool((state[f"{name}.weight"][~m] == 0).all()), (directory.name, name)


# ---------------------------------------------------------------------------- GIMP recipes

T, K, BACK = 60, 20, 0.25
BACK_STEP = T - round(BACK * T)
GIMP_TRAINING = {"duration": T, "eval_every": 10, "milestones": [20, 40], "gamma": 0.5}
RECIPES = {
    "fine-tuning": {"weights": "final", "lr": "final"},
    "weight rewinding": {"weights": "init"},
    "stable weight rewinding": {"weights": "step", "step": K},
    "learning-rate rewinding": {"weights": "final"},
    "sGIMP": {"weights": "back", "back": BACK},
}


def recipe(name: str) -> ExperimentSpec:
    return tiny_spec(training=GIMP_TRAINING, rewinding=RECIPES[name])


@pytest.fixture(scope="module")
def gimp_dense(synthetic_data, tmp_path_factory):
    """Round 0 shared by all recipes, with its weights at K and BACK_STEP recorded."""
    directory = tmp_path_factory.mktemp("gimp") / "round0"
    record = spied_round(recipe("weight rewinding"), synthetic_data, 0, directory,
                         extra={K, BACK_STEP})
    return directory, record["result"].snapshots


@pytest.fixture(scope="module")
def replays(synthetic_data, gimp_dense, tmp_path_factory):
    """Replay jobs for the rewind points K and BACK_STEP."""
    directory, _ = gimp_dense
    out = tmp_path_factory.mktemp("replays")
    for step in (K, BACK_STEP):
        rounds.run_replay(recipe("stable weight rewinding"), synthetic_data, 0, step, directory,
                          out / f"replay{step}.pt")
    return {step: out / f"replay{step}.pt" for step in (K, BACK_STEP)}


def test_recipes_share_the_dense_round():
    assert len({recipe(name).dense_key for name in RECIPES}) == 1
    assert len({recipe(name).recipe_key for name in RECIPES}) == len(RECIPES)


@pytest.mark.parametrize("step", [K, BACK_STEP])
def test_replay_reproduces_round_0_bit_for_bit(gimp_dense, replays, step):
    _, snapshots = gimp_dense
    assert_same_state(load(replays[step]), snapshots[step])


def test_start_points_of_each_recipe():
    assert round_plan.start_point(recipe("weight rewinding"), 3) == round_plan.StartPoint("init")
    stable = recipe("stable weight rewinding")
    assert round_plan.start_point(stable, 3) == round_plan.StartPoint("replay", K)
    assert round_plan.start_point(recipe("fine-tuning"), 3) == round_plan.StartPoint("previous")
    assert round_plan.start_point(recipe("sGIMP"), 1) == round_plan.StartPoint("replay", BACK_STEP)
    assert round_plan.start_point(recipe("sGIMP"), 2) == round_plan.StartPoint("previous_rewind")
    back_all = tiny_spec(training=GIMP_TRAINING, rewinding={"weights": "back", "back": 1.0})
    assert round_plan.start_point(back_all, 1) == round_plan.StartPoint("init")


def lrs(record) -> dict[int, float]:
    return {row["step"]: row["lr"] for row in record["result"].rows}


def test_fine_tuning_continues_from_final_weights_at_the_final_lr(synthetic_data, gimp_dense,
                                                                    splits, tmp_path):
    dense, _ = gimp_dense
    spec = recipe("fine-tuning")
    record = spied_round(spec, synthetic_data, 1, tmp_path, dense_dir=dense, prev_dir=dense)
    assert_starts_from(record["result"].snapshots[0], load(dense / "checkpoint.pt"),
                       record["mask"])
    final_lr = spec.training.lr_at(T)
    assert final_lr == pytest.approx(spec.training.lr / 4)
    assert set(lrs(record).values()) == {final_lr}
    assert max(lrs(record)) == T
    # the weights really trained at that constant LR: a run with no schedule at all matches
    model = build_model(spec.model, spec.dataset)
    model.load_state_dict(load(dense / "checkpoint.pt"))
    constant = replace(spec.training, lr=final_lr, milestones=())
    real_train(model, splits, constant, mask=record["mask"], seed=0, steps=T)
    assert_same_state(model.state_dict(), load(tmp_path / "checkpoint.pt"))


def test_weight_rewinding_restarts_theta_0_and_the_schedule(synthetic_data, gimp_dense, tmp_path):
    dense, _ = gimp_dense
    spec = recipe("weight rewinding")
    record = spied_round(spec, synthetic_data, 1, tmp_path, dense_dir=dense, prev_dir=dense)
    assert_starts_from(record["result"].snapshots[0], load(dense / "init.pt"), record["mask"])
    assert lrs(record) == {s: spec.training.lr_at(max(s - 1, 0)) for s in range(0, T + 1, 10)}


def test_stable_weight_rewinding_starts_at_theta_k_and_lr_at_k(synthetic_data, gimp_dense,
                                                                 replays, tmp_path):
    dense, snapshots = gimp_dense
    spec = recipe("stable weight rewinding")
    record = spied_round(spec, synthetic_data, 1, tmp_path, dense_dir=dense, prev_dir=dense,
                         rewind_file=replays[K])
    assert_starts_from(record["result"].snapshots[0], snapshots[K], record["mask"])
    schedule = lrs(record)
    assert schedule[0] == spec.training.lr_at(K) == spec.training.lr / 2
    assert schedule == {s: spec.training.lr_at(K + max(s - 1, 0)) for s in range(0, T - K + 1, 10)}
    assert max(schedule) == T - K  # retrains T - k iterations


def test_learning_rate_rewinding_keeps_final_weights_and_restarts_the_lr(synthetic_data,
                                                                          gimp_dense, tmp_path):
    dense, _ = gimp_dense
    spec = recipe("learning-rate rewinding")
    record = spied_round(spec, synthetic_data, 1, tmp_path, dense_dir=dense, prev_dir=dense)
    assert_starts_from(record["result"].snapshots[0], load(dense / "checkpoint.pt"),
                       record["mask"])
    schedule = lrs(record)
    assert schedule[0] == spec.training.lr
    assert schedule == {s: spec.training.lr_at(max(s - 1, 0)) for s in range(0, T + 1, 10)}


def test_sgimp_rewinds_x_back_and_hands_its_point_to_the_next_round(synthetic_data, gimp_dense,
                                                                     replays, tmp_path):
    """Round 1 starts at round 0's step T - X*T; it writes its own step T - X*T weights to
    rewind.pt, and round 2 starts from exactly those."""
    dense, snapshots = gimp_dense
    spec = recipe("sGIMP")
    first, second = tmp_path / "round1", tmp_path / "round2"
    record = spied_round(spec, synthetic_data, 1, first, extra={BACK_STEP}, dense_dir=dense,
                         prev_dir=dense, rewind_file=replays[BACK_STEP])
    assert_starts_from(record["result"].snapshots[0], snapshots[BACK_STEP], record["mask"])
    assert max(lrs(record)) == T and lrs(record)[0] == spec.training.lr
    rewind_point = load(first / "rewind.pt")
    assert_same_state(rewind_point, record["result"].snapshots[BACK_STEP])
    assert not torch.equal(rewind_point["1.weight"], load(first / "checkpoint.pt")["1.weight"])

    record = spied_round(spec, synthetic_data, 2, second, dense_dir=dense, prev_dir=first,
                         rewind_file=first / "rewind.pt")
    assert_starts_from(record["result"].snapshots[0], rewind_point, record["mask"])
    assert masks.hamming(record["mask"], masks.load(first / "mask.pt")) > 0  # pruned again


@pytest.mark.parametrize("name", ["weight rewinding", "stable weight rewinding"])
def test_rewinding_with_nothing_pruned_retraces_round_0(synthetic_data, tmp_path, name):
    """With stateless SGD and a 0% pruning rate, a rewound round must retrace round 0 exactly
    (same start, same batches, same LR at every global step, same number of steps)."""
    spec = tiny_spec(training={**GIMP_TRAINING, "optimizer": "sgd", "lr": 0.05},
                     pruning={"rates": {"fc": 0.0, "output": 0.0}}, rewinding=RECIPES[name])
    dense, pruned, replay = tmp_path / "round0", tmp_path / "round1", tmp_path / "replay.pt"
    rounds.run_round(spec, synthetic_data, 0, 0, dense)
    rounds.run_replay(spec, synthetic_data, 0, K, dense, replay)
    rounds.run_round(spec, synthetic_data, 0, 1, pruned, dense_dir=dense, prev_dir=dense,
                     rewind_file=replay)
    assert masks.density(masks.load(pruned / "mask.pt")) == 1.0
    assert_same_state(load(pruned / "checkpoint.pt"), load(dense / "checkpoint.pt"))


def test_rewinding_to_a_replay_without_its_file_is_refused(synthetic_data, gimp_dense, tmp_path):
    dense, _ = gimp_dense
    with pytest.raises(ValueError, match="--rewind-from"):
        rounds.run_round(recipe("stable weight rewinding"), synthetic_data, 0, 1, tmp_path,
                         dense_dir=dense, prev_dir=dense)


# ---------------------------------------------------------------------------- reruns

SHORT = {"duration": 40, "eval_every": 10}


@pytest.fixture(scope="module")
def reruns(synthetic_data, tmp_path_factory):
    """Round 0 and 1 run twice with seed 0 and once with seed 1, uninterrupted."""
    spec = tiny_spec(training=SHORT)
    root = tmp_path_factory.mktemp("reruns")
    for run, seed in (("a", 0), ("b", 0), ("c", 1)):
        r0, r1 = root / run / "round0", root / run / "round1"
        rounds.run_round(spec, synthetic_data, seed, 0, r0)
        rounds.run_round(spec, synthetic_data, seed, 1, r1, dense_dir=r0, prev_dir=r0)
    return root


OUTPUT_FILES = [f"round0/{name}" for name in (*ROUND_FILES, "init.pt")] + [
    f"round1/{name}" for name in (*ROUND_FILES, "rewind.pt")]


@pytest.mark.parametrize("name", OUTPUT_FILES)
def test_same_seed_gives_byte_identical_files(reruns, name):
    assert (reruns / "a" / name).read_bytes() == (reruns / "b" / name).read_bytes()


def test_another_seed_gives_other_weights(reruns):
    for name in ("round0/init.pt", "round1/checkpoint.pt"):
        assert (reruns / "a" / name).read_bytes() != (reruns / "c" / name).read_bytes()


class Interrupted(Exception):
    """Stands in for the job being killed."""


def interrupt_round(spec: ExperimentSpec, data: Path, out: Path, at: int) -> None:
    """Run round 0 into `out` and kill it at the evaluation of step `at`."""

    def killed(model, splits, training, **kwargs):
        def kill(step, _model):
            if step == at:
                raise Interrupted
        return real_train(model, splits, training, on_eval=kill, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(rounds, "train", killed)
        with pytest.raises(Interrupted):
            rounds.run_round(spec, data, 0, 0, out)


def test_interrupted_round_resumes_to_identical_files(synthetic_data, reruns, tmp_path):
    spec = tiny_spec(training={**SHORT, "checkpoint_every": 20})
    interrupt_round(spec, synthetic_data, tmp_path, at=30)
    assert (tmp_path / "resume.pt").is_file()

    evaluated = []

    def recording(model, splits, training, **kwargs):
        return real_train(model, splits, training,
                          on_eval=lambda step, _model: evaluated.append(step), **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(rounds, "train", recording)
        rounds.run_round(spec, synthetic_data, 0, 0, tmp_path)
    assert evaluated == [30, 40]  # continued after the step-20 checkpoint
    assert not (tmp_path / "resume.pt").exists()
    for name in (*ROUND_FILES, "init.pt"):
        assert (tmp_path / name).read_bytes() == (reruns / "a" / "round0" / name).read_bytes(), name


def test_resume_file_of_another_spec_is_not_silently_used(synthetic_data, reruns, tmp_path):
    """A job killed under one spec, rerun after the spec changed (same directory), must not
    continue the old run's progress: results of two specs would be silently mixed."""
    interrupt_round(tiny_spec(training={**SHORT, "checkpoint_every": 20, "lr": 0.01}),
                    synthetic_data, tmp_path, at=30)
    spec = tiny_spec(training={**SHORT, "checkpoint_every": 20})
    try:
        rounds.run_round(spec, synthetic_data, 0, 0, tmp_path)
    except (ValueError, io.CorruptFileError) as err:  # refusing, naming the file, is fine too
        assert "resume.pt" in str(err)
        return
    for name in (*ROUND_FILES, "init.pt"):
        assert (tmp_path / name).read_bytes() == (reruns / "a" / "round0" / name).read_bytes(), name


def test_divergence_is_recorded_and_outputs_written(synthetic_data, tmp_path):
    spec = tiny_spec(training={"optimizer": "sgd", "lr": 1e6, "duration": 40, "eval_every": 10})
    result = rounds.run_round(spec, synthetic_data, 0, 0, tmp_path)
    assert result.status == "diverged"
    for name in (*ROUND_FILES, "init.pt"):
        assert (tmp_path / name).is_file(), name
    rows = rows_of(tmp_path)
    diverged = [row for row in rows if row["status"] == "diverged"]
    assert [(row["step"], row["split"]) for row in diverged] == [(result.diverged_step, "train")]
    assert not math.isfinite(diverged[0]["loss"]) or diverged[0]["loss"] > 1e4
    state = load(tmp_path / "checkpoint.pt")
    assert all(bool(torch.isfinite(v).all()) for v in state.values())


# ---------------------------------------------------------------------------- branches


CORE_BRANCHES = ("reinit", "random_mask", "oneshot")  # Frankle & Carbin's controls


def test_core_branches_are_registered():
    assert set(CORE_BRANCHES) <= set(round_plan.BRANCHES)


@pytest.mark.parametrize("kind", CORE_BRANCHES)
def test_branches_train_once_from_the_rounds_mask(lth_chain, synthetic_data, tmp_path, kind):
    """Controls of round 2 (round 1's mask is itself a one-shot mask of the dense weights)."""
    spec, dirs, _ = lth_chain
    spy = TrainSpy()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(rounds, "train", spy)
        rounds.run_branch(spec, synthetic_data, 0, 2, kind, dirs[2], dirs[0], tmp_path)
    round_mask = masks.load(dirs[2] / "mask.pt")
    mask = masks.load(tmp_path / "mask.pt")
    counts = {n: int(m.sum()) for n, m in mask.items()}
    assert counts == {n: int(m.sum()) for n, m in round_mask.items()}
    start = spy.last["result"].snapshots[0]
    theta_0 = load(dirs[0] / "init.pt")
    if kind == "reinit":
        assert masks.hamming(mask, round_mask) == 0
        assert not torch.equal(start["1.weight"], theta_0["1.weight"] * mask["1"])
    else:
        if kind == "oneshot":  # the dense network's largest final weights, layer by layer
            final = load(dirs[0] / "checkpoint.pt")
            for name, m in mask.items():
                magnitude = final[f"{name}.weight"].abs()
                assert magnitude[~m].max() <= magnitude[m].min(), name
        assert masks.hamming(mask, round_mask) > 0
        assert_starts_from(start, theta_0, mask)
    rows = rows_of(tmp_path)
    assert {(row["round"], row["branch"]) for row in rows} == {(2, kind)}
    assert max(row["step"] for row in rows) == spec.training.duration


def test_unknown_branch_is_refused_with_the_choices(lth_chain, synthetic_data, tmp_path):
    spec, dirs, _ = lth_chain
    with pytest.raises(ValueError, match="unknown branch 'rinit'; choose one of: reinit"):
        rounds.run_branch(spec, synthetic_data, 0, 1, "rinit", dirs[1], dirs[0], tmp_path)
