"""What an Early-Bird experiment runs, from its spec alone (no torch): the tickets each search
saves, the retrainings per pruning ratio, and how files name them. Read by the search
(lotto.methods.earlybird), the workflow (rules/earlybird_plan.smk) and `lotto status`."""

from __future__ import annotations

from lotto.core.errors import InvalidValue
from lotto.core.spec_types import EarlyBirdSpec, ExperimentSpec


def ratio_label(ratio: float) -> str:
    """'p30' for 0.3: how files and JSON keys name a pruning ratio."""
    return f"p{round(ratio * 100):d}"


def settings(spec: ExperimentSpec) -> EarlyBirdSpec:
    """The earlybird section, refused for an experiment without one."""
    if spec.earlybird is None:
        raise InvalidValue(f"experiment {spec.name!r} has no earlybird section")
    return spec.earlybird


def total_epochs(spec: ExperimentSpec) -> int:
    eb = settings(spec)
    return spec.training.duration // eb.record_every


def must_train_to_end(spec: ExperimentSpec) -> bool:
    """The final ticket, the baselines or stop_at_draw: false need the whole dense training."""
    eb = settings(spec)
    return not eb.stop_at_draw or bool(eb.baselines) or total_epochs(spec) in eb.draw_epochs


def ticket_labels(spec: ExperimentSpec) -> list[str]:
    """Tickets saved per ratio: 'eb' (the draw), 'e<n>' per draw epoch, 'final' for the last
    epoch (a draw epoch, or the network-slimming baseline's starting point)."""
    eb, epochs = settings(spec), total_epochs(spec)
    labels = ["eb", *("final" if e == epochs else f"e{e}" for e in eb.draw_epochs)]
    if eb.baselines and "final" not in labels:
        labels.append("final")
    return labels


def ticket_epoch(spec: ExperimentSpec, label: str) -> int:
    """The epoch of a fixed ticket label ('e<n>' or 'final')."""
    return total_epochs(spec) if label == "final" else int(label.removeprefix("e"))


def retrain_jobs(spec: ExperimentSpec) -> list[tuple[str, str]]:
    """(ticket, mode) retrainings per ratio: every ticket x retrain mode, plus the baselines
    (network slimming = the final ticket retrained from its weights)."""
    eb = settings(spec)
    jobs = [(label, mode) for label in ticket_labels(spec) for mode in eb.retrain]
    if "slimming" in eb.baselines and ("final", "ff") not in jobs:
        jobs.append(("final", "ff"))
    if "lt_oneshot" in eb.baselines:
        jobs.append(("final", "lt_oneshot"))
    return list(dict.fromkeys(jobs))


def retrainings(spec: ExperimentSpec) -> list[str]:
    """Every retraining of one seed, named by its folder under results/<experiment>/eb/seed<S>/:
    '<ratio>/<ticket>-<mode>', e.g. 'p30/eb-ff'."""
    return [f"{ratio_label(r)}/{ticket}-{mode}" for r in settings(spec).ratios for ticket, mode in retrain_jobs(spec)]
