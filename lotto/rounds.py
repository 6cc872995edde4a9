"""Rounds, replays and control branches: the jobs of the DAG, as plain functions.

Files of one training directory:

    checkpoint.pt     final weights (state dict)
    mask.pt           the mask this training ran under
    metrics.parquet   its evaluation rows (lotto.core.metrics.SCHEMA)
    init.pt           round 0 only: the initial weights theta_0
    rewind.pt         pruned rounds: the weights the next round rewinds to when
                      rewinding.weights is 'back' (an empty dict otherwise)

A pruned round r reads round r-1's final weights and mask, prunes them into its own
mask m_r, takes its start weights from the rewinding recipe, and trains under m_r.
Round 0 depends only on data, model and training (spec.dense_key), so experiments that
differ only in pruning or rewinding share it. Weights at iteration k of round 0 come from
a replay job (train from theta_0 for k steps), which reproduces round 0's trajectory
exactly on CPU because the batch order depends only on (seed, step). A pruned round of
several seeds can also run as one job (run_round_seeds): each seed is prepared as run_round
prepares it, all train together in lotto.core.vmap, and each writes the same files.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from lotto.core import data as datasets
from lotto.core import io, layout, masks, metrics, prune
from lotto.core.criteria import BATCH, CRITERION_FACTS, LEARNED_LOGITS
from lotto.core.distributed import World
from lotto.core.errors import InvalidValue
from lotto.core.spec import ExperimentSpec, TrainingSpec, seed_vectorisation_problems
from lotto.core.startup import derived_seed, new_model, start_job
from lotto.core.train import TrainResult, evaluate, train
from lotto.core.vmap import DivergedError, train_seeds
from lotto.methods import optimal_masks
from lotto.round_plan import BRANCHES, LOCAL_BRANCHES, start_point

# Liu et al.'s Scratch-B trains for the dense model's FLOPs budget, but at most twice the epochs
# (seed 001: "if pruning decreases the FLOPs by at least a factor of 2, the epochs are doubled").
SCRATCH_B_MAX_FACTOR = 2.0


def _load_state(path: Path, device: torch.device) -> dict:
    return io.load_torch(path, map_location=device)


def _writes() -> bool:
    """Whether this process writes the job's files: always, except for ranks other than 0 of a
    training launched in several processes (lotto.core.distributed), which compute the same."""
    return World.current().writer


def _write_training(out: Path, spec: ExperimentSpec, seed: int, round_: int, branch: str,
                    mask: masks.Mask, result: TrainResult) -> None:
    if not _writes():
        return
    out.mkdir(parents=True, exist_ok=True)
    masks.save(out / "mask.pt", mask)
    io.save_torch(out / "checkpoint.pt", result.state)
    metrics.write(
        out / "metrics.parquet",
        result.rows,
        experiment=spec.name,
        seed=seed,
        round=round_,
        branch=branch,
        density=masks.density(mask),
    )


def _resume_file(out: Path) -> Path:
    """In-round progress lives beside the outputs, never as one, so Snakemake keeps it."""
    return out / "resume.pt"


def _finish(out: Path) -> None:
    if not _writes():
        return
    _resume_file(out).unlink(missing_ok=True)
    _resume_file(out).with_name("resume.pt.sha256").unlink(missing_ok=True)


def run_round(
    spec: ExperimentSpec,
    data_path: Path,
    seed: int,
    round_: int,
    out: Path,
    *,
    dense_dir: Path | None = None,
    prev_dir: Path | None = None,
    rewind_file: Path | None = None,
    scores_file: Path | None = None,
) -> TrainResult:
    """Run round `round_` of one seed's chain and write its files into `out`. Criterion
    optimal_mask reads its scores (the learned mask logits) from `scores_file`."""
    job = start_job(spec, data_path)
    device, splits = job.device, job.splits
    label = f"{spec.name} seed{seed} round{round_}"
    out.mkdir(parents=True, exist_ok=True)
    if round_ == 0:
        model = job.new_model(seed)
        if _writes():
            io.save_torch(out / "init.pt", model.state_dict())
        mask = masks.ones(model)
        result = train(model, splits, spec.training, mask=mask, seed=seed, steps=spec.training.duration,
                       resume_path=_resume_file(out), label=label)
        _write_training(out, spec, seed, 0, "main", mask, result)
        _finish(out)
        return result

    model, mask = _pruned_start(spec, splits, seed, round_, device, dense_dir=dense_dir, prev_dir=prev_dir,
                                rewind_file=rewind_file, scores_file=scores_file)
    result = _train_pruned(spec, splits, model, mask, seed, out, label)
    _write_pruned(out, spec, seed, round_, mask, result)
    return result


def run_round_seeds(
    spec: ExperimentSpec,
    data_path: Path,
    seeds: list[int],
    round_: int,
    outs: list[Path],
    *,
    dense_dirs: list[Path],
    prev_dirs: list[Path],
    rewind_files: list[Path] | None = None,
    scores_files: list[Path] | None = None,
    branches: Sequence[str] = (),
) -> dict[Path, TrainResult]:
    """Pruned round `round_` of several seeds' chains trained together (lotto.core.vmap), each seed's
    files written into its `outs[i]` as run_round writes them; the per-seed lists pair up with
    `seeds`. With `branches` (local control branches), each seed's branches of this round are
    built from the round's new mask as run_branch builds them, trained in the same call and
    written into `outs[i]/<branch>` (lotto.core.layout.branch_dir) as run_branch writes them. Trainings
    with the same schedule (steps, start, LR rule) share one vectorised loop. Should a seed
    diverge, its loop's trainings run one by one instead, as their own jobs would, which records
    the divergence. Returns each training's result by its output directory."""
    n = len(seeds)
    if n == 0 or len(set(seeds)) != n:
        raise InvalidValue(f"seeds {list(seeds)}: give at least one seed, each once")
    per_seed = {"outs": outs, "dense_dirs": dense_dirs, "prev_dirs": prev_dirs,
                "rewind_files": rewind_files or [None] * n, "scores_files": scores_files or [None] * n}
    for name, paths in per_seed.items():
        if len(paths) != n:
            raise InvalidValue(f"{name}: {len(paths)} paths for {n} seeds {list(seeds)}; give one per seed")
    if round_ < 1:
        raise InvalidValue(f"round {round_}: only pruned rounds (>= 1) train seeds together; "
                           "run round 0 per seed with run_round")
    for kind in branches:
        if kind not in LOCAL_BRANCHES or list(branches).count(kind) > 1:
            raise InvalidValue(f"branch {kind!r}: give each at most once, one of: {', '.join(LOCAL_BRANCHES)} "
                               "('transfer' reads another experiment and trains in a job of its own)")
    problems = seed_vectorisation_problems(spec.model, spec.dataset, spec.training, spec.rewinding)
    if problems:
        raise InvalidValue(f"{spec.name}: " + "; ".join(f"{key}: {message}" for key, message in problems))
    job = start_job(spec, data_path)
    device, splits = job.device, job.splits
    r = spec.rewinding
    runs = []
    for seed, dense, prev, rewind, scores, out in zip(seeds, dense_dirs, prev_dirs, per_seed["rewind_files"],
                                                      per_seed["scores_files"], outs, strict=True):
        model, mask = _pruned_start(spec, splits, seed, round_, device, dense_dir=dense, prev_dir=prev,
                                    rewind_file=rewind, scores_file=scores)
        runs.append(_Run(seed, "main", out, model, mask, spec.training, r.retrain, r.schedule_offset,
                         r.lr == "final"))
        saved_mask = {k: v.cpu() for k, v in mask.items()}  # the mask run_branch reads from mask.pt
        for kind in branches:
            ticket = _Ticket(spec, seed, round_, job.new_model(seed), saved_mask, dense, device)
            b_model, b_mask, training = BRANCH_REGISTRY[kind].start(ticket)
            runs.append(_Run(seed, kind, out / kind, b_model, b_mask, training, training.duration, 0, False))

    results: dict[Path, TrainResult] = {}
    for run in runs:
        if run.kind != "main" and not BRANCH_REGISTRY[run.kind].trained:
            results[run.out] = evaluate_untrained(run.model, splits, run.mask, run.training.precision)
    groups: dict[tuple, list[_Run]] = {}
    for run in runs:
        if run.out not in results:
            groups.setdefault((run.training, run.steps, run.start, run.constant_lr), []).append(run)
    for (training, steps, start, constant_lr), group in groups.items():
        kinds = sorted({run.kind for run in group})
        try:
            trained = train_seeds([run.model for run in group], splits, training, masks=[run.mask for run in group],
                                  seeds=[run.seed for run in group], steps=steps, start=start,
                                  constant_lr=constant_lr, label=f"{spec.name} round{round_} {'+'.join(kinds)}")
        except DivergedError as err:
            print(f"[{spec.name} round{round_}] {err}; training the seeds one by one ({'+'.join(kinds)})",
                  file=sys.stderr, flush=True)
            trained = [_train_alone(spec, splits, run, round_) for run in group]
        results.update({run.out: result for run, result in zip(group, trained, strict=True)})
    for run in runs:
        if run.kind == "main":
            _write_pruned(run.out, spec, run.seed, round_, run.mask, results[run.out])
        else:
            _write_training(run.out, spec, run.seed, round_, run.kind, run.mask, results[run.out])
            _finish(run.out)
    return results


@dataclass
class _Run:
    """One training of a seeds-together round: a seed's ticket ('main') or one of its branches."""

    seed: int
    kind: str
    out: Path
    model: torch.nn.Module
    mask: masks.Mask
    training: TrainingSpec
    steps: int
    start: int
    constant_lr: bool


def _train_alone(spec: ExperimentSpec, splits: datasets.Splits, run: _Run, round_: int) -> TrainResult:
    """A run of a seeds-together round trained as its own job trains it (run_round, run_branch)."""
    if run.kind == "main":
        return _train_pruned(spec, splits, run.model, run.mask, run.seed, run.out,
                             f"{spec.name} seed{run.seed} round{round_}")
    return train(run.model, splits, run.training, mask=run.mask, seed=run.seed, steps=run.steps,
                 resume_path=_resume_file(run.out), label=f"{spec.name} seed{run.seed} round{round_} {run.kind}")


def _pruned_start(spec: ExperimentSpec, splits: datasets.Splits, seed: int, round_: int, device: torch.device,
                  *, dense_dir: Path | None, prev_dir: Path | None, rewind_file: Path | None,
                  scores_file: Path | None) -> tuple[torch.nn.Module, masks.Mask]:
    """One seed's pruned round before training: the previous round's final weights pruned by the
    criterion into the round's mask, and the network set to the rewinding recipe's start point."""
    if prev_dir is None or dense_dir is None:
        raise InvalidValue("a pruned round needs the previous round's directory and the dense round's directory")
    model = new_model(spec, seed, device)
    model.load_state_dict(_load_state(prev_dir / "checkpoint.pt", device))
    prev_mask = masks.load(prev_dir / "mask.pt", model)
    generator = torch.Generator().manual_seed(derived_seed(seed, "prune", round_))
    scores = _criterion_scores(spec, splits, seed, dense_dir, scores_file, device)
    mask = prune.prune(model, prev_mask, spec.pruning, generator, scores)

    point = start_point(spec, round_)
    if point.source == "init":
        model.load_state_dict(_load_state(dense_dir / "init.pt", device))
    elif point.source == "previous":
        pass  # keep the previous round's final weights (already loaded)
    else:
        if rewind_file is None:
            raise InvalidValue(f"rewinding from {point.source} needs --rewind-from")
        state = _load_state(rewind_file, device)
        if not state:
            raise io.CorruptFileError(f"{rewind_file}: holds no weights; was it written by a 'back' recipe?")
        model.load_state_dict(state)
    return model, mask


def _back_step(spec: ExperimentSpec) -> int | None:
    """The round-local step whose weights the next round rewinds to (weights: back), else None."""
    r = spec.rewinding
    return r.retrain - round(r.back * r.retrain) if r.weights == "back" else None


def _train_pruned(spec: ExperimentSpec, splits: datasets.Splits, model: torch.nn.Module, mask: masks.Mask,
                  seed: int, out: Path, label: str) -> TrainResult:
    """One seed's pruned round trained alone, as the rewinding recipe says."""
    r = spec.rewinding
    back = _back_step(spec)
    return train(model, splits, spec.training, mask=mask, seed=seed, steps=r.retrain,
                 start=r.schedule_offset, constant_lr=r.lr == "final",
                 snapshot_at=() if back is None else {back}, resume_path=_resume_file(out), label=label)


def _write_pruned(out: Path, spec: ExperimentSpec, seed: int, round_: int, mask: masks.Mask,
                  result: TrainResult) -> None:
    """A pruned round's files, rewind.pt included (the next round's 'back' point, else {})."""
    _write_training(out, spec, seed, round_, "main", mask, result)
    back = _back_step(spec)
    if _writes():
        io.save_torch(out / "rewind.pt", {} if back is None else result.snapshots.get(back, {}))
    _finish(out)


def _criterion_scores(spec: ExperimentSpec, splits: datasets.Splits, seed: int, dense_dir: Path,
                      scores_file: Path | None, device: torch.device) -> dict[str, torch.Tensor] | None:
    """Scores of the criteria that need more than the weights (None: prune computes them)."""
    scored_from = CRITERION_FACTS[spec.pruning.criterion].scored_from
    if scored_from == BATCH:
        return _snip_scores(spec, splits, seed, dense_dir, device)
    if scored_from == LEARNED_LOGITS:
        if scores_file is None:
            raise InvalidValue(f"criterion {spec.pruning.criterion} needs the learned logits: pass --scores "
                               f"(the {layout.LOGITS_FILE} written by 'lotto learn-mask')")
        return optimal_masks.as_scores(_load_state(scores_file, torch.device("cpu")))
    return None


def _snip_scores(spec: ExperimentSpec, splits: datasets.Splits, seed: int, dense_dir: Path,
                 device: torch.device) -> dict[str, torch.Tensor]:
    """SNIP scores of the dense theta_0 on one fixed training batch of the seed. They are the same
    every round, so round r's mask is exactly one-shot SNIP at round r's density."""
    model = new_model(spec, seed, device)
    model.load_state_dict(_load_state(dense_dir / "init.pt", device))
    generator = torch.Generator().manual_seed(derived_seed(seed, "snip"))
    batch = torch.randperm(len(splits.train_x), generator=generator)[: spec.training.batch_size].to(device)
    return prune.snip_scores(model, splits.train_x[batch], splits.train_y[batch])


def run_learn_mask(spec: ExperimentSpec, data_path: Path, seed: int, weights_file: Path, out: Path) -> None:
    """Learn the mask logits of criterion optimal_mask from the pretrained dense weights
    (`weights_file`: round 0 replayed to mask_training.pretrain, or theta_0 when that is 0)."""
    settings = spec.pruning.mask_training
    if settings is None:
        raise InvalidValue(f"{spec.name}: learn-mask is for criterion optimal_mask, not {spec.pruning.criterion!r}")
    job = start_job(spec, data_path)
    device, splits = job.device, job.splits
    model = job.new_model(seed)
    model.load_state_dict(_load_state(weights_file, device))
    logits = optimal_masks.learn_logits(model, splits, settings, batch_size=spec.training.batch_size,
                                        seed=seed, exclude=spec.pruning.exclude,
                                        label=f"{spec.name} seed{seed} mask training")
    io.save_torch(out, logits)


def run_replay(spec: ExperimentSpec, data_path: Path, seed: int, step: int, dense_dir: Path, out: Path) -> None:
    """Weights of round 0 after `step` iterations, by retraining from theta_0 (same batches)."""
    job = start_job(spec, data_path)
    device, splits = job.device, job.splits
    model = job.new_model(seed)
    model.load_state_dict(_load_state(dense_dir / "init.pt", device))
    quiet = replace(spec.training, eval_every=max(step, 1))
    result = train(model, splits, quiet, mask=masks.ones(model), seed=seed, steps=step,
                   snapshot_at={step}, label=f"{spec.name} seed{seed} replay{step}")
    if _writes():
        io.save_torch(out, result.snapshots[step])


def run_branch(
    spec: ExperimentSpec,
    data_path: Path,
    seed: int,
    round_: int,
    kind: str,
    round_dir: Path,
    dense_dir: Path,
    out: Path,
) -> TrainResult:
    """A control built once from round `round_`'s mask (round_dir) and theta_0 (dense_dir), trained
    for the full schedule from step 0 unless it is an untrained one.

    reinit: same mask, fresh initialisation (also Liu et al.'s Scratch-E); random_mask: a random
    mask with the same per-layer counts, theta_0 weights; oneshot: the dense network's final
    weights pruned in one step to the same density (per layer, or globally), reset to theta_0;
    supermask / supermask_random: theta_0 under the round's mask / under random_mask's mask,
    evaluated without training (Zhou et al. 2019; rows at step 0 only); shuffle_weights /
    shuffle_mask: the ticket with its surviving theta_0 values permuted within each layer's mask /
    with mask and weights permuted together within each layer (Mikler's Table 3.1 A and B; layers
    in pruning.exclude are left alone); scratch_b: reinit's network trained for Liu et al.'s
    Scratch-B budget (`scratch_b_schedule`); transfer: the ticket itself, theta_0 under the mask,
    where round_dir and dense_dir are another experiment's (transfer.from).
    """
    if kind not in BRANCH_REGISTRY:
        raise InvalidValue(f"unknown branch {kind!r}; choose one of: {', '.join(BRANCHES)}")
    job = start_job(spec, data_path)
    device, splits = job.device, job.splits
    model = job.new_model(seed)
    ticket = _Ticket(spec, seed, round_, model, masks.load(round_dir / "mask.pt", model), dense_dir, device)
    model, mask, training = BRANCH_REGISTRY[kind].start(ticket)
    label = f"{spec.name} seed{seed} round{round_} {kind}"
    if not BRANCH_REGISTRY[kind].trained:
        result = evaluate_untrained(model, splits, mask, training.precision)
    else:
        result = train(model, splits, training, mask=mask, seed=seed, steps=training.duration,
                       resume_path=_resume_file(out), label=label)
    _write_training(out, spec, seed, round_, kind, mask, result)
    _finish(out)
    return result


@dataclass(frozen=True)
class _Ticket:
    """What a branch starts from: round `round_`'s mask, `model` built with the seed's
    initialisation, and the dense round's directory (theta_0 in init.pt, final weights)."""

    spec: ExperimentSpec
    seed: int
    round_: int
    model: torch.nn.Module
    mask: masks.Mask
    dense_dir: Path
    device: torch.device

    def theta_0(self) -> torch.nn.Module:
        self.model.load_state_dict(_load_state(self.dense_dir / "init.pt", self.device))
        return self.model


BranchStart = tuple[torch.nn.Module, masks.Mask, TrainingSpec]  # its network, mask and schedule


def _fresh_init(t: _Ticket) -> BranchStart:
    return new_model(t.spec, derived_seed(t.seed, "reinit", t.round_), t.device), t.mask, t.spec.training


def _scratch_b(t: _Ticket) -> BranchStart:
    model, mask, _ = _fresh_init(t)
    return model, mask, scratch_b_schedule(t.spec.training, masks.density(mask))


def _random_mask(t: _Ticket) -> BranchStart:
    mask = prune.random_like(t.mask, torch.Generator().manual_seed(derived_seed(t.seed, "random_mask", t.round_)))
    return t.theta_0(), mask, t.spec.training


def _oneshot(t: _Ticket) -> BranchStart:
    t.model.load_state_dict(_load_state(t.dense_dir / "checkpoint.pt", t.device))
    mask = prune.prune_to_match(t.model, t.mask, t.spec.pruning.scope, t.spec.pruning.exclude)
    return t.theta_0(), mask, t.spec.training


def _the_ticket(t: _Ticket) -> BranchStart:
    return t.theta_0(), t.mask, t.spec.training


def _shuffled(kind: str) -> Callable[[_Ticket], BranchStart]:
    def start(t: _Ticket) -> BranchStart:
        model = t.theta_0()
        generator = torch.Generator().manual_seed(derived_seed(t.seed, kind, t.round_))
        return model, shuffle_ticket_(model, t.mask, kind, generator, t.spec.pruning.exclude), t.spec.training

    return start


@dataclass(frozen=True)
class Branch:
    """A control branch: how it turns the round's ticket into its network, mask and schedule
    (run_branch's docstring says what each does), and whether it trains."""

    start: Callable[[_Ticket], BranchStart]
    trained: bool = True  # False: evaluated as it starts, at step 0 only


# The control branches by name, in lotto.round_plan.BRANCHES's order: the names the workflow
# plans without torch, and which are local, are written there (tests/test_masks_prune.py checks
# both lists and the schema's branches enum agree).
BRANCH_REGISTRY: dict[str, Branch] = {
    "reinit": Branch(_fresh_init),
    "random_mask": Branch(_random_mask),
    "oneshot": Branch(_oneshot),
    "supermask": Branch(_the_ticket, trained=False),
    "supermask_random": Branch(_random_mask, trained=False),
    "shuffle_weights": Branch(_shuffled("shuffle_weights")),
    "shuffle_mask": Branch(_shuffled("shuffle_mask")),
    "scratch_b": Branch(_scratch_b),
    "transfer": Branch(_the_ticket),
}
UNTRAINED_BRANCHES = tuple(name for name, branch in BRANCH_REGISTRY.items() if not branch.trained)


def scratch_b_schedule(training: TrainingSpec, density: float) -> TrainingSpec:
    """Liu et al.'s Scratch-B: the schedule stretched by the dense/sparse FLOPs ratio, taken to be
    1/density (FLOPs of the masked layers scale with their weights; per-layer costs differ, so this
    is an approximation), capped at SCRATCH_B_MAX_FACTOR. Milestones and warm-up stretch with it."""
    if not 0 < density <= 1:
        raise InvalidValue(f"density {density!r} is out of range; allowed: 0 < density <= 1")
    factor = min(1.0 / density, SCRATCH_B_MAX_FACTOR)
    return replace(
        training,
        duration=round(training.duration * factor),
        milestones=tuple(round(m * factor) for m in training.milestones),
        warmup=round(training.warmup * factor),
    )


def shuffle_ticket_(model: torch.nn.Module, mask: masks.Mask, kind: str, generator: torch.Generator,
                    exclude: tuple[str, ...] = ()) -> masks.Mask:
    """Modify the ticket in `model` (weights theta_0) in place, layer by layer, and return its mask.

    shuffle_weights: the surviving values are permuted among the surviving positions (same mask);
    shuffle_mask: mask and weights move together under one permutation of each layer's positions.
    """
    if kind not in ("shuffle_weights", "shuffle_mask"):
        raise InvalidValue(f"unknown ticket shuffle {kind!r}; choose one of: shuffle_weights, shuffle_mask")
    new_mask = dict(mask)
    with torch.no_grad():
        for name, _, module in masks.prunable_layers(model):
            if name in exclude:
                continue
            if kind == "shuffle_weights":
                module.weight.copy_(prune.shuffle_survivors(module.weight, mask[name], generator))
            else:
                weight, new_mask[name] = prune.shuffle_positions(module.weight, mask[name], generator)
                module.weight.copy_(weight)
    return new_mask


def evaluate_untrained(model: torch.nn.Module, splits: datasets.Splits, mask: masks.Mask,
                       precision: str) -> TrainResult:
    """Validation and test rows of the masked network as it is, at step 0 (no training, so no
    train row and no learning rate: lr is NaN), in the experiment's precision as every
    trained branch's evaluations are."""
    start = time.perf_counter()
    masks.apply_(model, mask)
    rows = []
    for split, x, y in (("val", splits.val_x, splits.val_y), ("test", splits.test_x, splits.test_y)):
        loss, accuracy = evaluate(model, x, y, precision) if len(x) else (math.nan, math.nan)
        rows.append({"step": 0, "split": split, "loss": loss, "accuracy": accuracy, "lr": math.nan, "status": "ok"})
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return TrainResult(rows=rows, state=state, seconds=time.perf_counter() - start)


def print_summary(result: TrainResult, density: float, stream=None) -> None:
    """One line per training for its log; `stream` defaults to the current sys.stderr."""
    test = [r for r in result.rows if r["split"] == "test"]
    print(f"density {density:.4f}  final test acc {test[-1]['accuracy']:.4f}  status {result.status}  "
          f"{result.seconds:.1f} s", file=stream or sys.stderr, flush=True)
