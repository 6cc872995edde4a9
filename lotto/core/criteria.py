"""What each pruning criterion needs, without torch: read by spec validation, the workflow (which
files a round reads) and the jobs; lotto.core.prune.CRITERIA pairs each with its scoring function
(tests/test_masks_prune.py checks both registries and the schema's enum name the same criteria)."""

from __future__ import annotations

from dataclasses import dataclass

# What a criterion's scores are computed from:
WEIGHTS = "weights"  # the model's weights and mask alone (lotto.core.prune scores them)
DRAWS = "draws"  # random numbers drawn while pruning (prune_counts' generator)
BATCH = "a batch of data"  # one training batch through theta_0 (the job computes them)
LEARNED_LOGITS = "learned logits"  # lotto.methods.optimal_masks' logits, a file of their own (learn-mask)


@dataclass(frozen=True)
class CriterionFacts:
    """A criterion's needs: what its scores come from, whether it removes whole output units,
    and, for criteria that score once (one-shot), which rewinding.weights keep every round on
    the point they were scored for, and why."""

    scored_from: str = WEIGHTS
    whole_units: bool = False  # counts are rounded to units; ranks units of one layer only
    one_shot_starts: tuple[str, ...] = ()  # () = any rewinding.weights
    one_shot_reason: str = ""


CRITERION_FACTS: dict[str, CriterionFacts] = {
    "magnitude": CriterionFacts(),
    "random": CriterionFacts(scored_from=DRAWS),
    "snip": CriterionFacts(scored_from=BATCH, one_shot_starts=("init",),
                           one_shot_reason="snip scores theta_0 once (one-shot at init), so every round "
                           "must train from theta_0"),
    "l1_filter": CriterionFacts(whole_units=True),
    "optimal_mask": CriterionFacts(scored_from=LEARNED_LOGITS, one_shot_starts=("init", "step"),
                                   one_shot_reason="optimal_mask learns its mask once (one-shot), so every "
                                   "round retrains from a fixed point"),
}


def learns_mask(criterion: str) -> bool:
    """Whether the criterion's scores are learned logits (a learn-mask job and its settings)."""
    return CRITERION_FACTS[criterion].scored_from == LEARNED_LOGITS
