"""Early-Bird tickets (You et al. 2020): find a channel-pruned ticket early in dense training.

The search trains the dense model with network slimming (an L1 penalty s * sign(γ) on every
BN scale, `earlybird.slimming`). After every search "epoch" (`record_every` iterations) it
pools |γ| over all prunable BN layers and, for each pruning ratio p, keeps all channels but
the p smallest under one global threshold: a 0/1 channel mask. The mask distance is the
normalised Hamming distance. The ticket for p is drawn at the first epoch t where the last
`window` masks (t's included) are all closer than `epsilon` to t's mask. Tickets (weights and
channel mask) are saved at the draw epoch and at `draw_epochs`; EB Train then removes the
pruned channels (lotto.methods.structured) and retrains the smaller model from the drawn weights
(ff) or a fresh initialisation (reinit), with the experiment's training schedule.

Files of one seed (results/<experiment>/eb/seed<S>/):

    search/init.pt           theta_0 of the dense model
    search/last.pt           weights where the search stopped (the final dense model if it
                             trained to the end)
    search/masks.pt          {p30: bool [epochs, channels], ...} every recorded channel mask
    search/eb.json           draw epochs, pairwise mask distances, iterations trained
    search/metrics.parquet   the dense search's evaluation rows (branch eb_search)
    search/tickets/p30_eb.pt, p30_e10.pt, ...   {state, channel_mask, epoch, ratio, drawn}
    p30/<ticket>-<mode>/     a retraining: checkpoint.pt, channels.pt (or mask.pt for the
                             unstructured lt_oneshot baseline), metrics.parquet, summary.json

In several processes (training.devices x nodes, lotto.core.distributed) the search and the
retrainings are one training each, as a plain round is: gradients are all-reduced, so every rank
holds the same weights; the search ranks channels by rank 0's |γ| after checking that every
rank's are bit-identical (`agreed_scores`), so all draw the same masks and stop together; network
slimming's L1 is added once, after the all-reduce (TrainingLoop); rank 0 alone writes the files.

Approximations: the retraining schedule is the experiment's full schedule for every ticket;
"int8sim" quantises weights and activations of conv/linear layers to 8 bits per tensor in the
forward pass with straight-through gradients (the paper also quantises gradients); bf16 is
autocast of the forward pass.
"""

from __future__ import annotations

import json
import sys
import types
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lotto.core import io, masks, metrics, prune
from lotto.core.distributed import World
from lotto.core.errors import CannotRun, InvalidValue
from lotto.core.models import init_kaiming
from lotto.core.spec import ExperimentSpec, PruningSpec
from lotto.core.startup import derived_seed, new_model, start_job
from lotto.core.train import train
from lotto.methods import flops, structured
from lotto.methods.eb_plan import (
    must_train_to_end,
    ratio_label,
    settings,
    ticket_epoch,
    ticket_labels,
    total_epochs,
)

PRECISIONS = ("fp32", "bf16", "int8sim")
RETRAIN_MODES = ("ff", "reinit", "lt_oneshot")
CHECK_BATCH = 64


# --- channel masks, distances, draw ---------------------------------------------------------


def channel_scores(model: nn.Module) -> Tensor:
    """|γ| of every prunable BN channel, concatenated in lotto.methods.structured order (on the CPU)."""
    return torch.cat([bn.weight.detach().abs().float().cpu() for _, bn in structured.batch_norms(model)])


def layer_sizes(model: nn.Module) -> dict[str, int]:
    return {name: bn.num_features for name, bn in structured.batch_norms(model)}


def flat_channel_mask(scores: Tensor, sizes: list[int], ratio: float) -> Tensor:
    """Keep all but the round(ratio * total) smallest scores under one global threshold (ties
    by position). A layer left empty keeps its largest channel, so every layer survives."""
    if not 0.0 <= ratio < 1.0:
        raise InvalidValue(f"pruning ratio {ratio!r} is out of range; allowed: 0 <= ratio < 1")
    remove = round(ratio * len(scores))
    keep = torch.ones(len(scores), dtype=torch.bool)
    keep[torch.sort(scores, stable=True).indices[:remove]] = False
    start = 0
    for size in sizes:
        layer = keep[start : start + size]
        if not layer.any():
            layer[int(scores[start : start + size].argmax())] = True
        start += size
    return keep


def unflatten(flat: Tensor, sizes: dict[str, int]) -> structured.ChannelMask:
    """A flat channel mask split into one tensor per BN layer."""
    if len(flat) != sum(sizes.values()):
        raise InvalidValue(f"flat mask has {len(flat)} channels, the model {sum(sizes.values())}")
    return dict(zip(sizes, torch.split(flat, list(sizes.values())), strict=True))


def channel_mask(model: nn.Module, ratio: float) -> structured.ChannelMask:
    """The channel mask of `model` at pruning ratio `ratio` (global |γ| threshold)."""
    sizes = layer_sizes(model)
    return unflatten(flat_channel_mask(channel_scores(model), list(sizes.values()), ratio), sizes)


def agreed_scores(scores: Tensor, world: World, device: torch.device, epoch: int) -> Tensor:
    """Rank 0's channel scores, on every rank of `world`, once every rank has checked that its own
    are bit-identical (same weights on every rank, so the same masks, draws and stop); a
    difference fails the search on every rank instead of drawing rank-dependent tickets."""
    if not world.joined:
        return scores
    ours = scores.to(device)
    theirs = ours.clone()
    world.broadcast_([theirs])
    differ = (~((ours == theirs) | (ours.isnan() & theirs.isnan()))).any().to(torch.float32).reshape(1)
    world.sum_([differ])
    if differ.item():
        raise CannotRun(f"the BN scales of {int(differ.item())} of {world.size} processes differ from rank 0's at "
                        f"search epoch {epoch}: the processes no longer train one model")
    return theirs.cpu()


def mask_distance(a: Tensor, b: Tensor) -> float:
    """Normalised Hamming distance: the fraction of channels where two flat masks differ."""
    if a.shape != b.shape:
        raise InvalidValue(f"masks of different sizes: {tuple(a.shape)} vs {tuple(b.shape)}")
    return float((a != b).float().mean())


def pairwise_distances(stack: Tensor) -> Tensor:
    """[E, E] distances between every pair of the E flat masks in `stack` ([E, C] bool)."""
    x = stack.float()
    differ = x @ (1 - x).T + (1 - x) @ x.T
    return differ / stack.shape[1]


def is_drawn(history: list[Tensor], window: int, epsilon: float) -> bool:
    """True when `history` holds `window` masks and each of the last window-1 before the
    newest is closer than `epsilon` to it (the paper's FIFO queue test)."""
    if len(history) < window:
        return False
    newest = history[-1]
    return max(mask_distance(old, newest) for old in history[-window:-1]) < epsilon


# --- reduced precision ----------------------------------------------------------------------


def fake_quantise(t: Tensor, bits: int = 8) -> Tensor:
    """Symmetric per-tensor quantisation to `bits` bits; the gradient passes straight through."""
    levels = 2 ** (bits - 1) - 1
    scale = t.detach().abs().amax().clamp_min(1e-12) / levels
    return t + ((t / scale).round().clamp(-levels, levels) * scale - t).detach()


def set_precision_(model: nn.Module, precision: str) -> None:
    """Make `model`'s forward run in `precision`; parameters and names stay as they are."""
    if precision not in PRECISIONS:
        raise InvalidValue(f"unknown precision {precision!r}; choose one of: {', '.join(PRECISIONS)}")
    if precision == "bf16":
        full_precision_forward = model.forward

        def autocast_forward(self: nn.Module, x: Tensor) -> Tensor:
            with torch.autocast(x.device.type, dtype=torch.bfloat16):
                return full_precision_forward(x).float()

        model.forward = types.MethodType(autocast_forward, model)
    elif precision == "int8sim":
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                module.forward = types.MethodType(
                    lambda m, x: m._conv_forward(fake_quantise(x), fake_quantise(m.weight), m.bias), module)
            elif isinstance(module, nn.Linear):
                module.forward = types.MethodType(
                    lambda m, x: F.linear(fake_quantise(x), fake_quantise(m.weight), m.bias), module)


# --- the search -----------------------------------------------------------------------------


def _ticket_file(search_dir: Path, ratio: float, label: str) -> Path:
    return search_dir / "tickets" / f"{ratio_label(ratio)}_{label}.pt"


def _cpu_state(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


@dataclass
class SearchOutcome:
    draw_epoch: dict[str, int | None]
    epochs_trained: int
    iterations: int


def search(spec: ExperimentSpec, data_path: str | Path, seed: int, out: str | Path) -> SearchOutcome:
    """Train the dense model with network slimming, record channel masks every epoch, draw the
    tickets, and write the files listed in the module docstring into `out`."""
    eb, out, world = settings(spec), Path(out), World.current()
    job = start_job(spec, data_path)
    splits = job.splits
    model = job.new_model(seed)
    if world.writer:
        out.mkdir(parents=True, exist_ok=True)
        io.save_torch(out / "init.pt", _cpu_state(model))
    set_precision_(model, eb.precision)

    sizes = layer_sizes(model)
    epochs = total_epochs(spec)
    to_end = must_train_to_end(spec)
    last_needed = max(eb.draw_epochs, default=0)
    history: dict[str, list[Tensor]] = {ratio_label(r): [] for r in eb.ratios}
    draw: dict[str, int | None] = {label: None for label in history}
    fixed_epochs = {ticket_epoch(spec, label) for label in ticket_labels(spec) if label != "eb"}
    kept: dict[int, dict[str, Tensor]] = {}  # weights at the epochs some ticket is drawn
    trained = {"epoch": 0}

    def record(step: int, net: nn.Module) -> bool:
        """Record this epoch's masks, draw tickets, keep the weights tickets need; True = stop."""
        if step == 0 or step % eb.record_every:
            return False
        epoch = step // eb.record_every
        trained["epoch"] = epoch
        scores = agreed_scores(channel_scores(net), world, job.device, epoch)
        keep_state = epoch in fixed_epochs or epoch == epochs  # the last: for undrawn tickets
        for ratio in eb.ratios:
            label = ratio_label(ratio)
            history[label].append(flat_channel_mask(scores, list(sizes.values()), ratio))
            if draw[label] is None and is_drawn(history[label], eb.window, eb.epsilon):
                draw[label] = epoch
                keep_state = True
                if world.writer:
                    print(f"[eb search] {label}: ticket drawn at epoch {epoch}", file=sys.stderr, flush=True)
        if keep_state:
            kept[epoch] = _cpu_state(net)
        return not to_end and all(d is not None for d in draw.values()) and epoch >= last_needed

    training = replace(spec.training, bn_l1=eb.slimming, eval_every=eb.record_every)
    result = train(model, splits, training, mask=masks.ones(model), seed=seed,
                   steps=spec.training.duration, label=f"{spec.name} seed{seed} eb-search", on_eval=record)
    if result.status != "ok":
        raise CannotRun(f"the dense search diverged at step {result.diverged_step}; lower training.lr")
    last_epoch = trained["epoch"]
    if last_epoch < max(eb.window, 1):
        raise InvalidValue(f"the search recorded {last_epoch} masks, fewer than earlybird.window "
                           f"({eb.window}); lower earlybird.record_every or the window")
    iterations = max(r["step"] for r in result.rows)
    if not world.writer:  # the other processes hold the same weights and draws; rank 0 writes them
        return SearchOutcome(draw_epoch=draw, epochs_trained=last_epoch, iterations=iterations)

    for ratio in eb.ratios:
        label = ratio_label(ratio)
        stack = torch.stack(history[label])
        for ticket in ticket_labels(spec):
            epoch = draw[label] if ticket == "eb" else ticket_epoch(spec, ticket)
            drawn = epoch is not None
            epoch = epoch if drawn else last_epoch  # never drawn: the last mask (flagged)
            io.save_torch(_ticket_file(out, ratio, ticket), {
                "state": kept[epoch],
                "channel_mask": unflatten(stack[epoch - 1], sizes),
                "epoch": epoch,
                "ratio": ratio,
                "drawn": drawn,
            })
    io.save_torch(out / "last.pt", {k: v.cpu() for k, v in result.state.items()})
    io.save_torch(out / "masks.pt", {label: torch.stack(h) for label, h in history.items()})
    summary = {
        "experiment": spec.name,
        "seed": seed,
        "record_every": eb.record_every,
        "window": eb.window,
        "epsilon": eb.epsilon,
        "ratios": list(eb.ratios),
        "epochs_total": epochs,
        "epochs_trained": last_epoch,
        "iterations": iterations,
        "trained_to_end": last_epoch == epochs,
        "dense_test_accuracy": [r for r in result.rows if r["split"] == "test"][-1]["accuracy"],
        **_top5("dense_test_top5", [r for r in result.rows if r["split"] == "test"][-1]),
        "draw_epoch": draw,
        "distances": {label: [[round(float(v), 6) for v in row] for row in pairwise_distances(torch.stack(h))]
                      for label, h in history.items()},
        "channels": sizes,
    }
    io.write_json(out / "eb.json", summary)
    metrics.write(out / "metrics.parquet", result.rows, experiment=spec.name, seed=seed, round=0,
                  branch="eb_search", density=1.0)
    return SearchOutcome(draw_epoch=draw, epochs_trained=last_epoch, iterations=iterations)


# --- EB Train and the baselines --------------------------------------------------------------


def _reinitialised(pruned: nn.Module) -> nn.Module:
    """Fresh Kaiming init of the pruned architecture (fan-in of the smaller layers)."""
    init_kaiming(pruned)  # the BN nets' own initialisation
    return pruned


def retrain(spec: ExperimentSpec, data_path: str | Path, seed: int, search_dir: str | Path,
            ratio: float, ticket: str, mode: str, out: str | Path) -> dict[str, Any]:
    """Retrain one ticket (mode ff / reinit) or the one-shot LT baseline (mode lt_oneshot,
    ticket 'final'); write checkpoint, mask, metrics and summary.json into `out`."""
    if mode not in RETRAIN_MODES:
        raise InvalidValue(f"unknown retrain mode {mode!r}; choose one of: {', '.join(RETRAIN_MODES)}")
    eb, search_dir, out = settings(spec), Path(search_dir), Path(out)
    if ratio not in eb.ratios:
        raise InvalidValue(f"ratio {ratio} is not searched; choose one of: {', '.join(map(str, eb.ratios))}")
    job = start_job(spec, data_path)
    device, splits = job.device, job.splits
    dense = job.new_model(seed)
    dense_forward = flops.forward_flops(dense, spec.dataset.input_shape)
    search = json.loads((search_dir / "eb.json").read_text())
    writer = World.current().writer  # in several processes rank 0 alone writes (the others train the same)
    if writer:
        out.mkdir(parents=True, exist_ok=True)
    equivalence = None

    if mode == "lt_oneshot":
        if not search["trained_to_end"]:
            raise InvalidValue("lt_oneshot prunes the final dense model; the search stopped early "
                               "(set earlybird.baselines or stop_at_draw: false before searching)")
        dense.load_state_dict(io.load_torch(search_dir / "last.pt", map_location=device))
        mask = prune.prune(dense, masks.ones(dense), PruningSpec(scope="global", rate=ratio))
        dense.load_state_dict(io.load_torch(search_dir / "init.pt", map_location=device))
        model, epoch, drawn = dense, search["epochs_total"], True
        pruned_forward, search_iterations = dense_forward, spec.training.duration
        density = masks.density(mask)
        if writer:
            masks.save(out / "mask.pt", mask)
    else:
        saved = io.load_torch(_ticket_file(search_dir, ratio, ticket), map_location=device)
        cm = {k: v.to(device) for k, v in saved["channel_mask"].items()}
        dense.load_state_dict(saved["state"])
        equivalence = structured.check_equivalence(dense, cm, splits.test_x[:CHECK_BATCH])
        if mode == "ff":
            model = structured.prune_channels(dense, cm)
        else:
            model = _reinitialised(structured.prune_channels(new_model(
                spec, derived_seed(seed, "eb-reinit", ratio, ticket), device), cm))
        epoch, drawn = int(saved["epoch"]), bool(saved["drawn"])
        pruned_forward = flops.forward_flops(model, spec.dataset.input_shape)
        search_iterations = min(epoch * eb.record_every, spec.training.duration)
        if ticket == "final":
            search_iterations = spec.training.duration
        density = _parameter_count(model) / _parameter_count(dense)
        mask = masks.ones(model)
        if writer:
            io.save_torch(out / "channels.pt", {k: v.cpu() for k, v in cm.items()})

    result = train(model, splits, spec.training, mask=mask, seed=seed, steps=spec.training.duration,
                   label=f"{spec.name} seed{seed} {ratio_label(ratio)} {ticket}-{mode}")
    if writer:
        io.save_torch(out / "checkpoint.pt", {k: v.cpu() for k, v in result.state.items()})
        metrics.write(out / "metrics.parquet", result.rows, experiment=spec.name, seed=seed, round=0,
                      branch=f"eb_{mode}", density=density)
    tests = [r for r in result.rows if r["split"] == "test"]
    batch = spec.training.batch_size
    search_flops = flops.training_flops(dense_forward, batch, search_iterations)
    retrain_flops = flops.training_flops(pruned_forward, batch, spec.training.duration)
    summary = {
        "experiment": spec.name,
        "seed": seed,
        "ratio": ratio,
        "ticket": ticket,
        "mode": mode,
        "epoch": epoch,
        "drawn": drawn,
        "status": result.status,
        "test_accuracy": tests[-1]["accuracy"],
        **_top5("test_top5", tests[-1]),
        "weight_density": density,
        "forward_flops_dense": dense_forward,
        "forward_flops_pruned": pruned_forward,
        "search_iterations": search_iterations,
        "retrain_iterations": spec.training.duration,
        "search_flops": search_flops,
        "retrain_flops": retrain_flops,
        "total_flops": search_flops + retrain_flops,
        "full_training_flops": flops.training_flops(dense_forward, batch, spec.training.duration),
        "equivalence_error": equivalence,
    }
    if writer:
        io.write_json(out / "summary.json", summary)
    return summary


def _top5(key: str, row: dict[str, Any]) -> dict[str, float]:
    """{key: top-5 accuracy} where the evaluation has one (many classes), else nothing, so the
    files of datasets without it stay as they were."""
    return {key: row["top5"]} if row.get("top5") is not None else {}


def _parameter_count(model: nn.Module) -> int:
    """Conv and linear weights: what the density column counts."""
    return sum(m.weight.numel() for _, _, m in masks.prunable_layers(model))
