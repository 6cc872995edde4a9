"""Paper presets (config/experiments, config/studies) and what they need: every preset and study
config validates; a tiny synthetic override of each preset kind runs end to end the way the workflow
runs it (dense round shared by dense_key, replays, rounds, branches, transfers, collect) and renders
its figure or table; the mask modifications, SNIP, L1-filter pruning, Scratch-B, supermasks and
transfer are checked property by property."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from functools import cache
from pathlib import Path

import jsonschema
import pandas as pd
import pytest
import torch
import yaml
from conftest import VAL_SIZE, tiny_spec

from lotto import cli, round_plan, rounds
from lotto.core import io, layout, masks, metrics, prune, startup
from lotto.core.spec import (
    ExperimentSpec,
    PruningSpec,
    SpecError,
    build_model,
    load_experiment,
    resolve,
    transfer_problems,
)
from lotto.core.train import train as real_train
from lotto.outputs import figures, tables

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = REPO / "config" / "experiments"
PRESETS = sorted(EXPERIMENTS.glob("*.yaml"))
STUDY_CONFIGS = sorted((REPO / "config" / "studies").glob("*.yaml"))
TRAINING_FILES = ("checkpoint.pt", "mask.pt", "metrics.parquet")


# ---------------------------------------------------------------------------- the preset files


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_every_preset_validates(path):
    spec = preset(path)
    assert spec.name == path.stem


def test_transfer_presets_name_a_compatible_source():
    specs = {s.name: s for s in map(preset, PRESETS)}
    targets = [s for s in specs.values() if s.transfer_from]
    assert {s.name for s in targets} >= {
        f"transfer_task{t}_{x}"
        for t, x in ((1, "half1_mnist"), (2, "labels59_mnist"), (3, "adam_mnist"))
    }
    for spec in targets:
        assert transfer_problems(spec, specs) == [], spec.name


@pytest.mark.parametrize("path", STUDY_CONFIGS, ids=lambda p: p.stem)
def test_study_configs_validate_and_name_presets(path):
    doc = yaml.safe_load(path.read_text())
    jsonschema.validate(
        doc, yaml.safe_load((REPO / "config/schema/config.schema.yaml").read_text())
    )
    names = {preset(EXPERIMENTS / f"{e}.yaml").name for e in doc["experiments"]}
    for study in doc.get("studies", []):
        assert set(study["experiments"]) <= names, study["name"]
        if study["kind"] == "modifications":
            assert len(study["experiments"]) == 1


def test_bn_presets_resolve_the_tf_convention():
    """TF momentum is the running-average decay; PyTorch's momentum is 1 minus it."""
    spec = preset(EXPERIMENTS / "bn_vgg19_tf0.997.yaml")
    assert (spec.model.bn_momentum, spec.model.bn_eps) == (pytest.approx(0.003), 1e-5)
    norms = [
        m
        for m in build_model(spec.model, spec.dataset, "meta").modules()
        if isinstance(m, torch.nn.BatchNorm2d)
    ]
    assert norms and all(m.momentum == pytest.approx(0.003) and m.eps == 1e-5 for m in norms)


# ---------------------------------------------------------------------------- tiny overrides

TINY_STEPS = 20


@cache
def preset(path: Path) -> ExperimentSpec:
    return load_experiment(path)


def tiny(
    name: str, rounds_: int = 1, seeds: tuple[int, ...] = (0,), model: str | None = None
) -> ExperimentSpec:
    """Preset `name` on the synthetic dataset for TINY_STEPS iterations per round: the recipe
    (optimizer, pruning criterion and scope, rewinding, branches, transfer) is the preset's; the
    model is LeNet-300-100 (the fastest on 1x8x8 images), Conv-2 for l1_filter (it prunes conv
    filters), or `model`."""
    doc = yaml.safe_load((EXPERIMENTS / f"{name}.yaml").read_text())
    subset = {k: v for k, v in doc["dataset"].items() if k in ("half", "labels")}
    doc["dataset"] = {"name": "synthetic", "val_size": VAL_SIZE, **subset}
    l1_filter = doc.get("pruning", {}).get("criterion") == "l1_filter"
    if model is None:  # a stand-in takes none of the preset model's options (batch norm, width)
        doc["model"] = {"name": "conv2" if l1_filter else "lenet_300_100"}
    else:
        doc["model"]["name"] = model
    kept = ("optimizer", "lr", "momentum", "nesterov", "weight_decay", "l2", "gamma")
    doc["training"] = {
        **{k: v for k, v in doc["training"].items() if k in kept},
        "batch_size": 60,
        "duration": TINY_STEPS,
        "eval_every": 10,
        "device": "cpu",
    }
    pruning = doc.setdefault("pruning", {})
    pruning.pop("exclude", None)
    pruning["rounds"] = rounds_
    if l1_filter:
        pruning["rates"] = {"conv": 0.25, "fc": 0.0, "output": 0.0}
    if "step" in doc.get("rewinding", {}):
        doc["rewinding"]["step"] = 5
    if "mask_training" in pruning:
        pruning["mask_training"]["steps"] = TINY_STEPS
    doc["seeds"] = list(seeds)
    return resolve(doc, source=name, default_name=name)


def run_all(specs: list[ExperimentSpec], data: Path, root: Path) -> dict[str, Path]:
    """Every training of `specs` in the workflow's order and layout; returns each experiment's
    collected metrics table. A transfer target must come after its source."""
    tables_ = {}
    for spec in specs:
        files = []
        for seed in spec.seeds:
            dense = root / "dense" / spec.dense_key / f"seed{seed}"
            if not (dense / "metrics.parquet").exists():
                rounds.run_round(spec, data, seed, 0, dense)
            files.append(dense / "metrics.parquet")
            scores = learned_logits(spec, data, seed, dense, root)
            prev = dense
            for r in range(1, spec.pruning.rounds + 1):
                out = root / spec.name / f"seed{seed}" / f"round{r}"
                point = round_plan.start_point(spec, r)
                rewind = None
                if point.source == "replay":
                    rewind = replayed(spec, data, seed, point.step, dense)
                elif point.source == "previous_rewind":
                    rewind = prev / "rewind.pt"
                rounds.run_round(
                    spec, data, seed, r, out, dense_dir=dense, prev_dir=prev, rewind_file=rewind,
                    scores_file=scores,
                )
                files.append(out / "metrics.parquet")
                for branch in spec.branches:
                    round_dir, dense_dir = out, dense
                    if branch == "transfer":
                        source = next(s for s in specs if s.name == spec.transfer_from)
                        round_dir = root / source.name / f"seed{seed}" / f"round{r}"
                        dense_dir = root / "dense" / source.dense_key / f"seed{seed}"
                    rounds.run_branch(
                        spec, data, seed, r, branch, round_dir, dense_dir, out / branch
                    )
                    files.append(out / branch / "metrics.parquet")
                prev = out
        for path in files:
            for name in TRAINING_FILES:
                assert (path.parent / name).is_file(), path.parent / name
        tables_[spec.name] = root / spec.name / "metrics.parquet"
        assert (
            cli.main(
                [
                    "collect",
                    "--experiment",
                    spec.name,
                    "--out",
                    str(tables_[spec.name]),
                    *map(str, files),
                ]
            )
            == 0
        )
    return tables_


def replayed(spec: ExperimentSpec, data: Path, seed: int, step: int, dense: Path) -> Path:
    """Round 0's weights at `step`, replayed once per dense round as the workflow's replay job."""
    path = dense / "replay" / f"step{step}.pt"
    if not path.exists():
        rounds.run_replay(spec, data, seed, step, dense, path)
    return path


def learned_logits(spec: ExperimentSpec, data: Path, seed: int, dense: Path, root: Path) -> Path | None:
    """Criterion optimal_mask: replay round 0 to the pretraining step and learn the mask logits
    there, as the workflow's replay and learn_mask jobs do (None for other criteria)."""
    settings = spec.pruning.mask_training
    if settings is None:
        return None
    weights = dense / "init.pt"
    if settings.pretrain:
        weights = replayed(spec, data, seed, settings.pretrain, dense)
    out = root / spec.name / f"seed{seed}" / layout.LOGITS_FILE
    rounds.run_learn_mask(spec, data, seed, weights, out)
    return out


def render(verb: list[str], metrics_files, out: Path) -> Path:
    """Run a figure verb as the workflow's rules do; the PNG and PDF must exist."""
    assert cli.main([*verb, "--metrics", *map(str, metrics_files), "--out", str(out)]) == 0
    for path in (out, out.with_suffix(".pdf")):
        assert path.is_file() and path.stat().st_size > 1000, path
    return out


def experiment_figures(table: Path, out: Path) -> None:
    for kind in ("accuracy", "early_stop"):
        render(["figure", "--kind", kind], [table], out / f"{kind}.png")
    render(["figure", "--kind", "curves", "--densities", "1.0", "0.5"], [table], out / "curves.png")


def test_lth_kind(synthetic_data, tmp_path):
    table = run_all([tiny("lth_lenet_fashion")], synthetic_data, tmp_path)["lth_lenet_fashion"]
    frame = metrics.read([table])
    assert set(frame.branch) == {"main", "reinit", "random_mask", "oneshot"}
    experiment_figures(table, tmp_path / "figures")


def test_rewinding_family_kind_and_study_figure(synthetic_data, tmp_path):
    """Five recipes sharing one dense round; two pruned rounds so sGIMP and LRR read round 1."""
    names = [f"gimp_resnet20_{m}" for m in ("finetune", "wr", "swr", "lrr", "sgimp75")]
    specs = [tiny(n, rounds_=2) for n in names]
    assert len({s.dense_key for s in specs}) == 1
    found = run_all(specs, synthetic_data, tmp_path)
    assert len(list((tmp_path / "dense").iterdir())) == 1
    figure = render(
        ["figure", "--kind", "accuracy", "--which", "final"],
        found.values(),
        tmp_path / "studies" / "rewinding_resnet20.png",
    )
    frame = metrics.read(list(found.values()))
    assert set(frame.experiment) == set(names) and figure.exists()


def test_four_models_kind_box_plot(synthetic_data, tmp_path):
    specs = [
        tiny("four_models_lenet5_fashion", seeds=(0, 1)),
        tiny("four_models_lenet5_fashion_finetune", seeds=(0, 1)),
    ]
    found = run_all(specs, synthetic_data, tmp_path)
    render(["boxes"], found.values(), tmp_path / "studies" / "four_models.png")


def test_liu_kind_l1_filter_with_scratch_b(synthetic_data, tmp_path):
    spec = tiny("liu_vgg16_l1filter_lr0.1")
    table = run_all([spec], synthetic_data, tmp_path)[spec.name]
    frame = metrics.read([table])
    density = float(frame[frame["round"] == 1].density.iloc[0])
    scratch = frame[frame.branch == "scratch_b"]
    assert scratch.step.max() == round(TINY_STEPS * min(1 / density, rounds.SCRATCH_B_MAX_FACTOR))
    assert frame[frame.branch == "reinit"].step.max() == TINY_STEPS  # Scratch-E
    experiment_figures(table, tmp_path / "figures")


def test_supermask_kind_rows_are_step_0_only(synthetic_data, tmp_path):
    spec = tiny("supermask_lenet_fashion")
    table = run_all([spec], synthetic_data, tmp_path)[spec.name]
    frame = metrics.read([table])
    for branch in rounds.UNTRAINED_BRANCHES:
        rows = frame[frame.branch == branch]
        assert set(rows.step) == {0} and set(rows.split) == {"val", "test"}, branch
    ticket_mask = masks.load(tmp_path / spec.name / "seed0" / "round1" / "mask.pt")
    assert (
        masks.hamming(
            masks.load(tmp_path / spec.name / "seed0" / "round1" / "supermask" / "mask.pt"),
            ticket_mask,
        )
        == 0
    )
    experiment_figures(table, tmp_path / "figures")


def test_mask_modification_kind_table(synthetic_data, tmp_path):
    spec = tiny("maskmod_mlp_fashion")
    table = run_all([spec], synthetic_data, tmp_path)[spec.name]
    out = tmp_path / "studies"
    assert (
        cli.main(
            [
                "modification-table",
                "--metrics",
                str(table),
                "--md",
                str(out / "t.md"),
                "--tex",
                str(out / "t.tex"),
                "--html",
                str(out / "t.html"),
            ]
        )
        == 0
    )
    text = (out / "t.md").read_text()
    for label in tables.MODIFICATIONS.values():
        assert label in text
    assert r"\pm" in (out / "t.tex").read_text() and "<table" in (out / "t.html").read_text()


def test_transfer_kind(synthetic_data, tmp_path):
    source, target = (
        tiny("transfer_task2_labels04_fashion"),
        tiny("transfer_task2_labels59_fashion"),
    )
    assert transfer_problems(target, {s.name: s for s in (source, target)}) == []
    table = run_all([source, target], synthetic_data, tmp_path)[target.name]
    frame = metrics.read([table])
    assert set(frame.branch) == {"main", "transfer", "reinit"}
    source_mask = masks.load(tmp_path / source.name / "seed0" / "round1" / "mask.pt")
    transferred = masks.load(tmp_path / target.name / "seed0" / "round1" / "transfer" / "mask.pt")
    assert masks.hamming(source_mask, transferred) == 0
    experiment_figures(table, tmp_path / "figures")


def test_snip_kind_against_imp(synthetic_data, tmp_path):
    found = run_all(
        [tiny("lth_lenet_fashion", rounds_=2), tiny("snip_lenet_fashion", rounds_=2)],
        synthetic_data,
        tmp_path,
    )
    render(["figure", "--kind", "accuracy"], found.values(), tmp_path / "studies" / "snip.png")


def test_optimal_mask_kind_against_imp(synthetic_data, tmp_path):
    found = run_all(
        [tiny("lth_lenet_fashion", rounds_=2), tiny("tom_lenet_fashion", rounds_=2)],
        synthetic_data,
        tmp_path,
    )
    imp, tom = (pd.read_parquet(found[n]) for n in ("lth_lenet_fashion", "tom_lenet_fashion"))
    assert sorted(imp.density.unique()) == sorted(tom.density.unique())  # same densities as IMP
    render(["figure", "--kind", "accuracy"], found.values(), tmp_path / "studies" / "tom.png")


def test_bn_kind_runs_with_tf_batch_norm(synthetic_data, tmp_path):
    spec = tiny("bn_resnet20_tf0.99", model="resnet20")
    table = run_all([spec], synthetic_data, tmp_path)[spec.name]
    state = io.load_torch(tmp_path / spec.name / "seed0" / "round1" / "checkpoint.pt")
    assert any(k.endswith("running_var") for k in state)
    assert spec.model.bn_momentum == pytest.approx(0.01) and spec.model.bn_eps == 1e-3
    assert len(metrics.read([table])) > 0


# ---------------------------------------------------------------------------- mask modifications


def random_ticket(
    seed: int = 0, n: int = 400, keep: float = 0.3
) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(20, n // 20, generator=g)
    alive = torch.rand(20, n // 20, generator=g) < keep
    return weight, alive


def test_shuffle_survivors_permutes_exactly_the_surviving_values():
    weight, alive = random_ticket()
    shuffled = prune.shuffle_survivors(weight, alive, torch.Generator().manual_seed(1))
    assert torch.equal(shuffled[~alive], weight[~alive])
    assert torch.equal(shuffled[alive].sort().values, weight[alive].sort().values)
    assert (shuffled[alive] != weight[alive]).float().mean() > 0.9


def test_shuffle_positions_moves_mask_and_values_together():
    weight, alive = random_ticket()
    new_weight, new_alive = prune.shuffle_positions(weight, alive, torch.Generator().manual_seed(1))
    assert int(new_alive.sum()) == int(alive.sum())
    assert torch.equal(new_weight[new_alive].sort().values, weight[alive].sort().values)
    assert masks.hamming({"w": new_alive}, {"w": alive}) > 0.2


class StartSpy:
    """Stands in for rounds.train: records the weights and mask a branch starts training from."""

    def __init__(self):
        self.calls = []

    def __call__(self, model, data, spec, *, mask, **kwargs):
        self.calls.append(({k: v.clone() for k, v in model.state_dict().items()}, mask))
        return real_train(model, data, spec, mask=mask, **kwargs)


@pytest.fixture(scope="module")
def ticket(synthetic_data, tmp_path_factory):
    """Rounds 0 and 1 of the tiny lottery-ticket chain."""
    spec = tiny_spec(
        training={"duration": TINY_STEPS, "eval_every": 10},
        pruning={"rounds": 1, "rates": {"fc": 0.5}},
    )
    root = tmp_path_factory.mktemp("ticket")
    rounds.run_round(spec, synthetic_data, 0, 0, root / "round0")
    rounds.run_round(
        spec,
        synthetic_data,
        0,
        1,
        root / "round1",
        dense_dir=root / "round0",
        prev_dir=root / "round0",
    )
    return spec, root / "round0", root / "round1"


@pytest.mark.parametrize("kind", ["shuffle_weights", "shuffle_mask"])
def test_mask_modification_branches_start_from_the_shuffled_ticket(
    ticket, synthetic_data, tmp_path, kind
):
    spec, dense, round1 = ticket
    spy = StartSpy()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(rounds, "train", spy)
        rounds.run_branch(spec, synthetic_data, 0, 1, kind, round1, dense, tmp_path)
    start, mask = spy.calls[-1]
    round_mask = masks.load(round1 / "mask.pt")
    theta_0 = io.load_torch(dense / "init.pt")
    for name, m in round_mask.items():
        survivors = theta_0[f"{name}.weight"][m]
        assert int(mask[name].sum()) == int(m.sum()), name
        assert torch.equal(
            start[f"{name}.weight"][mask[name]].sort().values, survivors.sort().values
        ), name
        assert not torch.equal(start[f"{name}.weight"][mask[name]], survivors), name
        assert torch.equal(mask[name], m) == (kind == "shuffle_weights"), name
    for key, value in theta_0.items():  # biases are theta_0's, untouched
        if not key.endswith(".weight"):
            assert torch.equal(start[key], value), key


def test_transfer_of_a_rounds_own_ticket_reproduces_that_round(ticket, synthetic_data, tmp_path):
    """The transfer branch is 'reset the ticket to theta_0 and train': given its own experiment's
    round it must retrain that round exactly (same batches, same mask, same start)."""
    spec, dense, round1 = ticket
    rounds.run_branch(spec, synthetic_data, 0, 1, "transfer", round1, dense, tmp_path)
    columns = ["step", "split", "loss", "accuracy"]
    mine = metrics.read([tmp_path / "metrics.parquet"])[columns]
    assert mine.equals(metrics.read([round1 / "metrics.parquet"])[columns])


def test_supermask_random_uses_the_random_mask_branchs_mask(ticket, synthetic_data, tmp_path):
    spec, dense, round1 = ticket
    for kind in ("random_mask", "supermask_random"):
        rounds.run_branch(spec, synthetic_data, 0, 1, kind, round1, dense, tmp_path / kind)
    assert (
        masks.hamming(
            masks.load(tmp_path / "random_mask" / "mask.pt"),
            masks.load(tmp_path / "supermask_random" / "mask.pt"),
        )
        == 0
    )
    rows = metrics.read([tmp_path / "supermask_random" / "metrics.parquet"])
    assert set(rows.step) == {0} and rows.lr.isna().all()


def test_scratch_b_schedule_stretches_by_inverse_density_capped():
    training = tiny_spec(
        training={"duration": 1000, "milestones": [500, 800], "warmup": 100}
    ).training
    half = rounds.scratch_b_schedule(training, 0.8)
    assert (half.duration, half.milestones, half.warmup) == (1250, (625, 1000), 125)
    capped = rounds.scratch_b_schedule(training, 0.01)
    assert capped.duration == 2000 and capped.milestones == (1000, 1600)
    with pytest.raises(ValueError, match="density 0 is out of range"):
        rounds.scratch_b_schedule(training, 0)


# ---------------------------------------------------------------------------- SNIP and L1 filters


def test_snip_scores_are_weight_times_gradient(splits):
    spec = tiny_spec()
    torch.manual_seed(0)
    model = build_model(spec.model, spec.dataset)
    x, y = splits.train_x[:60], splits.train_y[:60]
    scores = prune.snip_scores(model, x, y)
    torch.nn.functional.cross_entropy(model(x), y).backward()
    for name, _, module in masks.prunable_layers(model):
        assert torch.allclose(scores[name], (module.weight * module.weight.grad).abs().flatten()), (
            name
        )


def test_snip_global_pruning_removes_exactly_the_lowest_scores():
    spec = tiny_spec()
    model = build_model(spec.model, spec.dataset)
    scores = {
        n: torch.rand(m.weight.numel(), generator=torch.Generator().manual_seed(i))
        for i, (n, _, m) in enumerate(masks.prunable_layers(model))
    }
    mask = masks.ones(model)
    new = prune.prune(
        model, mask, PruningSpec(criterion="snip", scope="global", rate=0.3), scores=scores
    )
    total = sum(m.numel() for m in mask.values())
    assert total - sum(int(m.sum()) for m in new.values()) == round(0.3 * total)
    kept = torch.cat([scores[n][new[n].flatten()] for n in new])
    removed = torch.cat([scores[n][~new[n].flatten()] for n in new])
    assert removed.max() <= kept.min()
    with pytest.raises(ValueError, match="snip scores need a batch"):
        prune.prune(model, mask, PruningSpec(criterion="snip", scope="global", rate=0.3))


def test_snip_rounds_are_one_shot_snip_at_their_density(synthetic_data, tmp_path, splits):
    spec = tiny("snip_lenet_fashion", rounds_=2)
    run_all([spec], synthetic_data, tmp_path)
    dense = tmp_path / "dense" / spec.dense_key / "seed0"
    scores = rounds._snip_scores(
        spec,
        startup.load_splits(spec, synthetic_data, torch.device("cpu")),
        0,
        dense,
        torch.device("cpu"),
    )
    mask = masks.load(tmp_path / spec.name / "seed0" / "round2" / "mask.pt")
    model = build_model(spec.model, spec.dataset, "meta")
    one_shot = prune.prune(
        model,
        masks.ones(model),
        PruningSpec(criterion="snip", scope="global", rate=1 - masks.density(mask)),
        scores=scores,
    )
    assert masks.hamming(mask, one_shot) == 0


def test_l1_filter_removes_whole_units_with_the_smallest_norms():
    spec = tiny_spec(
        model={"name": "conv2"},
        pruning={"criterion": "l1_filter", "rates": {"conv": 0.25, "fc": 0.0}},
    )
    torch.manual_seed(0)
    model = build_model(spec.model, spec.dataset)
    mask = masks.ones(model)
    for round_ in range(2):
        new = prune.prune(model, mask, spec.pruning)
        for name, kind, module in masks.prunable_layers(model):
            units_before = mask[name].flatten(1).all(1)
            units_after = new[name].flatten(1).all(1)
            assert torch.equal(new[name].flatten(1).any(1), units_after), (
                round_,
                name,
            )  # whole units
            removed = units_before & ~units_after
            expected = round(0.25 * int(units_before.sum())) if kind == "conv" else 0
            assert int(removed.sum()) == expected, (round_, name)
            if expected:
                norms = module.weight.detach().abs().flatten(1).sum(1)
                assert norms[removed].max() <= norms[units_after].min(), (round_, name)
        mask = new


@pytest.mark.parametrize(
    "pruning, message",
    [
        ({"criterion": "l1_filter", "scope": "global", "rate": 0.2}, "use scope: layerwise"),
        ({"criterion": "l1_filter", "rates": {"fc": 0.2}}, "would remove classes"),
    ],
)
def test_l1_filter_refuses_what_it_cannot_do(pruning, message):
    with pytest.raises(SpecError, match=message):
        tiny_spec(
            pruning={"rounds": 1, **pruning, **({"rates": None} if "rate" in pruning else {})}
        )


def test_snip_needs_rewinding_to_theta_0():
    with pytest.raises(SpecError, match="use weights: init"):
        tiny_spec(pruning={"criterion": "snip"}, rewinding={"weights": "final"})


def test_transfer_problems_name_the_mismatch():
    source = tiny_spec(name="source")
    target = tiny_spec(
        name="target", branches=["transfer"], transfer={"from": "source"}, seeds=[0, 1]
    )
    other_model = tiny_spec(name="source", model={"name": "mlp_400x3"})
    other_pruning = tiny_spec(name="source", pruning={"rounds": 3, "rates": {"fc": 0.2}})
    assert "is not an experiment of this config" in transfer_problems(target, {"target": target})[0]
    assert any(
        "has no chain for seeds [1]" in p for p in transfer_problems(target, {"source": source})
    )
    assert any(
        "a ticket only fits the model" in p
        for p in transfer_problems(target, {"source": other_model})
    )
    assert any(
        "use the same pruning section" in p
        for p in transfer_problems(target, {"source": other_pruning})
    )
    with pytest.raises(SpecError, match="'transfer' needs transfer.from"):
        tiny_spec(branches=["transfer"])
    with pytest.raises(SpecError, match="add it to branches"):
        tiny_spec(transfer={"from": "source"})


# ---------------------------------------------------------------------------- table and box plot


def summary_frame(values: dict[tuple[str, int], list[float]]) -> pd.DataFrame:
    """A metrics table with one final test accuracy per (branch, round) and seed."""
    rows = []
    for (branch, round_), accuracies in values.items():
        for seed, accuracy in enumerate(accuracies):
            for split in ("val", "test"):
                rows.append(
                    {
                        "experiment": "e",
                        "seed": seed,
                        "round": round_,
                        "branch": branch,
                        "density": 0.5**round_,
                        "step": 10,
                        "split": split,
                        "loss": 1.0,
                        "accuracy": accuracy,
                        "lr": 0.1,
                        "status": "ok",
                    }
                )
    return pd.DataFrame(rows)


def test_modification_table_gives_mean_std_and_difference_to_the_ticket():
    frame = summary_frame(
        {
            ("main", 0): [0.9, 0.9],
            ("main", 2): [0.90, 0.92],
            ("reinit", 2): [0.80, 0.84],
            ("shuffle_mask", 2): [0.70, 0.70],
            ("main", 1): [0.5, 0.5],
        }
    )
    table = tables.modification_table(frame)
    assert list(table.branch) == ["main", "reinit", "shuffle_mask"]
    reinit = table.set_index("branch").loc["reinit"]
    assert reinit["mean"] == pytest.approx(82.0) and reinit["std"] == pytest.approx(2**0.5 * 2)
    assert reinit["difference"] == pytest.approx(-9.0) and reinit["percent"] == pytest.approx(25.0)
    with pytest.raises(ValueError, match="round 5 is not a pruned round of e; choose one of: 1, 2"):
        tables.modification_table(frame, round_=5)


def test_box_plot_draws_one_box_per_branch_and_density(tmp_path):
    frame = summary_frame(
        {
            ("main", 0): [0.9, 0.8],
            **{(b, r): [0.7, 0.75, 0.8] for b in ("main", "reinit") for r in (1, 2, 3)},
        }
    )
    fig = figures.accuracy_boxes(frame, tmp_path / "boxes.png")
    boxes = [p for p in fig.axes[0].patches if type(p).__name__ == "PathPatch"]
    assert len(boxes) == 2 * 3
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["50", "25", "12.5"]
    assert (tmp_path / "boxes.pdf").is_file()


# ---------------------------------------------------------------------------- the workflow


def write_yaml(path: Path, doc: dict) -> str:
    path.write_text(yaml.safe_dump(doc))
    return str(path)


@pytest.mark.workflow
def test_workflow_dag_has_transfer_and_study_jobs(tmp_path):
    """rules/presets.smk wired into the Snakefile: a transfer target depends on its source's round,
    studies become figure and table jobs, and a bad study is refused before any job starts."""
    base = {
        "dataset": {"name": "synthetic", "val_size": VAL_SIZE},
        "model": {"name": "lenet_300_100"},
        "training": {
            "optimizer": "adam",
            "lr": 1e-3,
            "batch_size": 60,
            "duration": 20,
            "device": "cpu",
        },
        "pruning": {"rounds": 1, "rates": {"fc": 0.5}},
    }
    source = write_yaml(
        tmp_path / "src.yaml", {**base, "name": "src", "branches": ["shuffle_mask"]}
    )
    target = write_yaml(
        tmp_path / "dst.yaml",
        {**base, "name": "dst", "branches": ["transfer"], "transfer": {"from": "src"}},
    )
    config = {
        "experiments": [source, target],
        "studies": [
            {"name": "both", "kind": "accuracy", "experiments": ["src", "dst"]},
            {"name": "box", "kind": "boxes", "experiments": ["src"]},
            {"name": "table", "kind": "modifications", "experiments": ["src"]},
        ],
    }

    def dry_run(config_doc: dict) -> subprocess.CompletedProcess:
        write_yaml(tmp_path / "config.yaml", config_doc)
        env = {
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        }
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "snakemake",
                "-n",
                "--snakefile",
                str(REPO / "Snakefile"),
                "--directory",
                str(tmp_path),
                "--configfile",
                str(tmp_path / "config.yaml"),
                "--cores",
                "1",
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )

    process = dry_run(config)
    assert process.returncode == 0, process.stderr + process.stdout
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", process.stdout, re.MULTILINE))
    assert counts["transfer_branch"] == "1" and counts["control_branch"] == "1"
    assert counts["study_figure"] == "2" and counts["study_table"] == "1"
    config["studies"].append(
        {"name": "bad", "kind": "modifications", "experiments": ["src", "nope"]}
    )
    process = dry_run(config)
    assert process.returncode != 0
    assert "['nope'] are not experiments of this config" in process.stdout + process.stderr


def test_untrained_branches_are_evaluated_in_the_experiments_precision(ticket, synthetic_data, tmp_path):
    """A bf16 experiment evaluates θ_0 ⊙ m under bf16 autocast, as its trained branches' evaluations
    are (they were evaluated in fp32 whatever the experiment said)."""
    from dataclasses import replace

    spec, dense, round1 = ticket
    bf16 = replace(spec, training=replace(spec.training, precision="bf16"))
    losses = {}
    for name, each in (("fp32", spec), ("bf16", bf16)):
        rounds.run_branch(each, synthetic_data, 0, 1, "supermask", round1, dense, tmp_path / name)
        losses[name] = metrics.read([tmp_path / name / "metrics.parquet"]).set_index("split").loss
    assert (losses["fp32"] != losses["bf16"]).all()
    assert (losses["fp32"] - losses["bf16"]).abs().max() < 0.05  # the same network, rounded
