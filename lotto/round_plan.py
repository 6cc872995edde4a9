"""What an IMP experiment's rounds read, from its spec alone (no torch): the control branches
and where each pruned round's start weights come from. Read by the jobs (lotto.rounds) and by
the workflow, which must plan without importing torch."""

from __future__ import annotations

from dataclasses import dataclass

from lotto.core.spec import ExperimentSpec

BRANCHES = (
    "reinit", "random_mask", "oneshot", "supermask", "supermask_random",
    "shuffle_weights", "shuffle_mask", "scratch_b", "transfer",
)
# Branches that read only their own experiment's files (the workflow's control_branch rule);
# 'transfer' reads another experiment's round and has a rule of its own.
LOCAL_BRANCHES = tuple(b for b in BRANCHES if b != "transfer")


def branches_with_round(spec: ExperimentSpec) -> tuple[str, ...]:
    """The control branches trained in the seeds-together job of each pruned round
    (training.vectorize_seeds): every local branch of the experiment; none without the option."""
    return tuple(b for b in spec.branches if b in LOCAL_BRANCHES) if spec.training.vectorize_seeds else ()


def trains_seeds_together(spec: ExperimentSpec) -> bool:
    """Whether one job per pruned round trains the experiment's seeds (and their local branches)."""
    return spec.training.vectorize_seeds and (len(spec.seeds) > 1 or bool(branches_with_round(spec)))


@dataclass(frozen=True)
class StartPoint:
    """Where a pruned round's weights come from: theta_0, a replay of round 0 to `step`,
    the previous round's final weights, or the previous round's rewind.pt."""

    source: str  # init | replay | previous | previous_rewind
    step: int = 0


def start_point(spec: ExperimentSpec, round_: int) -> StartPoint:
    r = spec.rewinding
    if r.weights == "init":
        return StartPoint("init")
    if r.weights == "step":
        return StartPoint("replay", r.step) if r.step else StartPoint("init")
    if r.weights == "final":
        return StartPoint("previous")
    back_step = spec.training.duration - round(r.back * spec.training.duration)
    if round_ == 1:
        return StartPoint("replay", back_step) if back_step else StartPoint("init")
    return StartPoint("previous_rewind")
