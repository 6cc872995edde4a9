"""Early-Bird tickets: mask distances and the FIFO draw, global channel masks, physical channel
removal equal to BN masking, analytic FLOPs, the search -> retrain path through the CLI, and a
tiny experiment through Snakemake's default target."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from workflow_util import Workdir, rule_counts

from lotto.core import channels, data, io, models
from lotto.core.spec import SpecError, resolve
from lotto.methods import earlybird, eb_plan, flops, structured

torch.set_num_threads(1)


# ---------------------------------------------------------------- distances and the draw


def masks_from_rows(rows: list[str]) -> torch.Tensor:
    return torch.tensor([[c == "1" for c in row] for row in rows])


def test_mask_distance_is_the_fraction_of_channels_that_differ():
    a, b = masks_from_rows(["1100110011", "1100110000"])
    assert earlybird.mask_distance(a, b) == pytest.approx(0.2)
    assert earlybird.mask_distance(a, a) == 0.0


def test_pairwise_distances_match_the_pairwise_hamming_distance():
    stack = torch.rand(6, 37) > 0.5
    matrix = earlybird.pairwise_distances(stack)
    for i in range(6):
        for j in range(6):
            assert matrix[i, j].item() == pytest.approx(earlybird.mask_distance(stack[i], stack[j]))


def first_draw(stack: torch.Tensor, window: int, epsilon: float) -> int | None:
    """The 1-based epoch at which the masks `stack` ([E, C], epoch 1 first) draw the ticket,
    by the search's own test (earlybird.is_drawn) on the masks recorded so far."""
    history: list[torch.Tensor] = []
    for epoch, mask in enumerate(stack, start=1):
        history.append(mask)
        if earlybird.is_drawn(history, window, epsilon):
            return epoch
    return None


def test_the_ticket_is_drawn_at_the_first_epoch_whose_window_is_within_epsilon():
    # 10 channels: each row changes 2, 2, 1, 1, 0, 0, 1 channels from the previous.
    rows = ["1111100000", "0011111000", "0000111110", "1000111100", "1100111000",
            "1100111000", "1100111000", "1100111001"]
    stack = masks_from_rows(rows)
    # window 3, eps 0.25: epoch 5 compares rows 3,4 with 5: distances 0.4 and 0.2 -> no;
    # epoch 6: rows 4, 5 vs 6: 0.2, 0.0 -> drawn
    assert first_draw(stack, window=3, epsilon=0.25) == 6
    # a strict epsilon is met only where the last three masks are identical (epoch 7)
    assert first_draw(stack, window=3, epsilon=0.05) == 7
    # the window must be full: identical masks do not draw before `window` epochs
    assert first_draw(masks_from_rows(["1100"] * 4), window=5, epsilon=0.1) is None
    assert first_draw(masks_from_rows(["1100"] * 5), window=5, epsilon=0.1) == 5


def test_is_drawn_compares_every_mask_in_the_window_with_the_newest():
    old, near, newest = masks_from_rows(["0000000000", "1111111110", "1111111111"])
    assert earlybird.is_drawn([near, near, newest], window=3, epsilon=0.15)
    assert not earlybird.is_drawn([old, near, newest], window=3, epsilon=0.15)
    assert earlybird.is_drawn([old, near, near, newest], window=3, epsilon=0.15)  # old left the window


# ---------------------------------------------------------------- channel masks


@pytest.mark.parametrize("ratio", [0.0, 0.3, 0.5, 0.7])
def test_channel_mask_prunes_exactly_ratio_of_all_channels_under_one_threshold(ratio):
    scores = torch.randperm(100).float() + 1.0  # distinct scores, every layer has large ones
    scores[:10] += 1000.0
    scores[40:50] += 1000.0
    scores[80:90] += 1000.0
    keep = earlybird.flat_channel_mask(scores, [30, 40, 30], ratio)
    assert int((~keep).sum()) == round(ratio * 100)
    if ratio:
        assert scores[keep].min() > scores[~keep].max()


def test_a_layer_the_global_threshold_empties_keeps_its_largest_channel():
    scores = torch.tensor([0.1, 0.3, 0.2, 5.0, 6.0, 7.0, 8.0])
    keep = earlybird.flat_channel_mask(scores, [3, 4], 3 / 7)  # removes the 3 smallest
    assert keep.tolist() == [False, True, False, True, True, True, True]


def test_channel_mask_of_a_model_pools_bn_scales_over_all_layers():
    torch.manual_seed(0)
    model = models.create_model("vgg11", input_shape=(3, 16, 16), num_classes=10, width=0.125)
    bns = structured.batch_norms(model)
    with torch.no_grad():
        for index, (_, bn) in enumerate(bns):
            bn.weight.copy_(torch.rand(bn.num_features) * (1 + 0.2 * index))
            bn.weight[0] = -10.0  # magnitude, not sign, decides; and no layer is emptied
    mask = earlybird.channel_mask(model, 0.5)
    total = sum(bn.num_features for _, bn in bns)
    assert list(mask) == [name for name, _ in bns]
    assert sum(int((~m).sum()) for m in mask.values()) == round(0.5 * total)
    kept = torch.cat([bn.weight.abs()[mask[name]] for name, bn in bns])
    pruned = torch.cat([bn.weight.abs()[~mask[name]] for name, bn in bns])
    assert kept.min() > pruned.max()


# ---------------------------------------------------------------- physical channel removal


def randomise_batch_norms(model: nn.Module) -> None:
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(-1, 1)
                module.bias.uniform_(-1, 1)
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)


@pytest.mark.parametrize("name, width", [
    ("vgg16", 0.125),
    ("preresnet101", 0.25),  # bottleneck blocks, 1x1 shortcuts on the raw stream
    ("preresnet20", 0.5),  # basic pre-activation blocks
    ("wrn_16_8", 0.0625),  # pre-activated 1x1 shortcuts read the pruned BN output
])
def test_physically_pruned_model_equals_the_masked_model(name, width):
    torch.manual_seed(0)
    model = models.create_model(name, input_shape=(3, 16, 16), num_classes=10, width=width).eval()
    randomise_batch_norms(model)
    mask = {n: torch.rand(bn.num_features) > 0.5 for n, bn in structured.batch_norms(model)}
    for keep in mask.values():
        keep[0] = True
    x = torch.randn(8, 3, 16, 16)

    pruned = structured.prune_channels(model, mask).eval()
    masked = models.create_model(name, input_shape=(3, 16, 16), num_classes=10, width=width).eval()
    masked.load_state_dict(model.state_dict())
    structured.mask_bn_(masked, mask)
    with torch.no_grad():
        assert (model(x) - masked(x)).abs().max() > 1e-2  # masking changes the function
        assert torch.allclose(pruned(x), masked(x), atol=1e-5, rtol=1e-4)
    assert flops.forward_flops(pruned, (3, 16, 16)) < flops.forward_flops(model, (3, 16, 16))
    kept = sum(int(m.sum()) for m in mask.values())
    assert sum(m.num_features for m in pruned.modules() if isinstance(m, nn.BatchNorm2d)) == kept


def test_post_activation_resnets_are_refused_with_the_supported_families():
    model = models.create_model("resnet20", input_shape=(3, 16, 16), num_classes=10)
    with pytest.raises(ValueError, match="VGG, pre-activation ResNets .* and torchvision.s ResNets"):
        channels.channel_groups(model)


def test_pruning_every_channel_of_a_layer_is_refused():
    model = models.create_model("vgg11", input_shape=(3, 16, 16), num_classes=10, width=0.125)
    mask = {n: torch.ones(bn.num_features, dtype=torch.bool) for n, bn in structured.batch_norms(model)}
    first = next(iter(mask))
    mask[first][:] = False
    with pytest.raises(ValueError, match=f"{first}: every channel is pruned"):
        structured.prune_channels(model, mask)


# ---------------------------------------------------------------- FLOPs


def test_flops_of_a_known_conv_and_linear_layer():
    conv = nn.Conv2d(3, 8, 3, padding=1, stride=2, bias=True)
    assert flops.conv_flops(conv, (5, 5)) == 2 * 3 * 9 * 8 * 25 + 8 * 25
    assert flops.linear_flops(nn.Linear(20, 5)) == 2 * 20 * 5 + 5
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, stride=2, bias=False), nn.ReLU(),
                        nn.Flatten(), nn.Linear(8 * 5 * 5, 4, bias=False))
    forward = flops.forward_flops(net, (3, 10, 10))
    assert forward == 2 * 3 * 9 * 8 * 25 + 2 * 200 * 4
    assert flops.training_flops(forward, batch_size=16, iterations=10) == 3 * forward * 16 * 10


# ---------------------------------------------------------------- precision


def test_int8_simulation_quantises_forward_and_keeps_gradients():
    t = torch.randn(1000, requires_grad=True)
    q = earlybird.fake_quantise(t)
    assert len(torch.unique(q.detach())) <= 255
    assert (q - t).abs().max() <= t.abs().max() / 127 / 2 + 1e-6
    q.sum().backward()
    assert torch.equal(t.grad, torch.ones(1000))  # straight-through
    torch.manual_seed(0)
    model = models.create_model("vgg11", input_shape=(3, 16, 16), num_classes=10, width=0.125).eval()
    x = torch.randn(4, 3, 16, 16)
    reference = model(x)
    earlybird.set_precision_(model, "int8sim")
    quantised = model(x)
    assert not torch.equal(quantised, reference)
    assert torch.allclose(quantised, reference, atol=0.2 * reference.abs().max().item())
    with pytest.raises(ValueError, match="choose one of: fp32, bf16, int8sim"):
        earlybird.set_precision_(model, "int4")


# ---------------------------------------------------------------- spec


def eb_doc(**earlybird_options) -> dict:
    return {
        "name": "eb_tiny",
        "dataset": {"name": "synthetic", "val_size": 50,
                    "synthetic": {"shape": [3, 16, 16], "n_train": 250, "n_test": 60}},
        "model": {"name": "vgg11", "width": 0.125},
        "training": {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "batch_size": 50,
                     "duration": "10ep", "eval_every": "5ep", "device": "cpu"},
        "earlybird": {"ratios": [0.3, 0.5], "window": 3, "epsilon": 0.5, **earlybird_options},
    }


def test_earlybird_section_resolves_and_round_trips():
    spec = resolve(eb_doc(draw_epochs=[2, "final"]))
    eb = spec.earlybird
    assert eb.record_every == 4 and eb.draw_epochs == (2, 10)  # 200 examples / 50 per batch
    assert eb.slimming == 1e-4 and eb.retrain == ("ff", "reinit")
    assert type(spec).from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert eb_plan.ticket_labels(spec) == ["eb", "e2", "final"]


def test_specs_without_earlybird_keep_their_old_json():
    doc = eb_doc()
    del doc["earlybird"]
    plain = resolve(doc).to_dict()
    assert "earlybird" not in plain
    assert type(resolve(doc)).from_dict(plain).earlybird is None


@pytest.mark.parametrize("change, message", [
    ({"model": {"name": "resnet20"}}, "cannot run earlybird"),
    ({"earlybird": {"precision": "fp8"}}, "choose one of: fp32, bf16, int8sim"),
    ({"earlybird": {"draw_epochs": [11]}}, r"after the last epoch \(10\)"),
    ({"pruning": {"rounds": 1, "rates": {"conv": 0.2, "output": 0.1}}}, "instead of IMP rounds"),
])
def test_bad_earlybird_experiments_are_refused(change, message):
    doc = eb_doc()
    for key, value in change.items():
        doc[key] = {**doc.get(key, {}), **value}
    with pytest.raises(SpecError, match=message):
        resolve(doc)


# ---------------------------------------------------------------- search and retrain


@pytest.fixture(scope="module")
def eb_data(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ebdata") / "synthetic.pt"
    data.prepare("synthetic", path, synthetic_options={"shape": [3, 16, 16], "n_train": 250, "n_test": 60})
    return path


def test_search_stops_at_the_last_draw_and_saves_each_ticket(eb_data, tmp_path):
    spec = resolve(eb_doc())
    outcome = earlybird.search(spec, eb_data, 0, tmp_path)
    summary = json.loads((tmp_path / "eb.json").read_text())
    draws = list(outcome.draw_epoch.values())
    assert all(d is not None for d in draws), draws
    assert outcome.epochs_trained == max(draws) < 10
    for label, draw in outcome.draw_epoch.items():
        stack = io.load_torch(tmp_path / "masks.pt")[label]
        assert len(stack) == outcome.epochs_trained
        assert first_draw(stack, 3, 0.5) == draw
        assert len(summary["distances"][label]) == outcome.epochs_trained
        ticket = io.load_torch(tmp_path / "tickets" / f"{label}_eb.pt")
        assert ticket["epoch"] == draw and ticket["drawn"]
        assert torch.equal(torch.cat(list(ticket["channel_mask"].values())), stack[draw - 1])


def lotto(*args, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "LOTTO_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "lotto", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def test_search_retrain_and_figures_run_end_to_end_through_the_cli(eb_data, tmp_path):
    spec_file = tmp_path / "spec.json"
    doc = eb_doc(draw_epochs=["final"], stop_at_draw=False)
    doc["training"]["duration"] = "6ep"
    doc["model"]["width"] = 0.0625
    io.write_json(spec_file, resolve(doc).to_dict())
    search = tmp_path / "search"
    done = lotto("eb-search", "--spec", spec_file, "--data", eb_data, "--seed", 0, "--out", search, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads((search / "eb.json").read_text())["trained_to_end"]
    summaries = []
    for ticket, mode in [("eb", "ff"), ("eb", "reinit"), ("final", "ff"), ("final", "lt_oneshot")]:
        out = tmp_path / "p50" / f"{ticket}-{mode}"
        done = lotto("eb-train", "--spec", spec_file, "--data", eb_data, "--seed", 0, "--search", search,
                     "--ratio", 0.5, "--ticket", ticket, "--mode", mode, "--out", out, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        summaries.append(out / "summary.json")
    ff, reinit, slimming, lottery = (json.loads(p.read_text()) for p in summaries)
    assert ff["forward_flops_pruned"] == reinit["forward_flops_pruned"] < ff["forward_flops_dense"]
    assert ff["equivalence_error"] < 1e-4
    assert ff["total_flops"] < slimming["total_flops"] < lottery["total_flops"]
    assert lottery["weight_density"] == pytest.approx(0.5, abs=0.01)
    done = lotto("eb-figures", "--searches", search / "eb.json", "--summaries", *summaries,
                 "--out-dir", tmp_path / "figures", "--table", tmp_path / "table.md", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    for kind in ("accuracy", "distances", "flops"):
        assert (tmp_path / "figures" / f"eb_{kind}.png").stat().st_size > 0
    table = (tmp_path / "table.md").read_text()
    for method in ("EB Train (FF)", "EB Train (re-init)", "One-shot LT", "Network slimming"):
        assert method in table


def test_eb_train_refuses_a_ratio_that_was_not_searched(eb_data, tmp_path):
    spec_file = tmp_path / "spec.json"
    io.write_json(spec_file, resolve(eb_doc()).to_dict())
    done = lotto("eb-train", "--spec", spec_file, "--data", eb_data, "--seed", 0, "--search", tmp_path,
                 "--ratio", 0.9, "--ticket", "eb", "--mode", "ff", "--out", tmp_path / "x", cwd=tmp_path)
    assert done.returncode == 2 and "ratio 0.9 is not searched" in done.stderr, done.stderr


# ---------------------------------------------------------------- through Snakemake


@pytest.mark.workflow
def test_default_target_runs_search_retrainings_figures_table_and_report(tmp_path):
    """A tiny Early-Bird experiment through `snakemake` with no target (~37 s; its jobs in 2
    processes each: +14 s): the search, each retraining, Fig. 1/3/5 and the table, the report
    showing them; no IMP job; status lists all."""
    doc = eb_doc(ratios=[0.5], retrain=["ff"], baselines=["lt_oneshot"])
    doc["training"]["duration"] = "6ep"
    doc["training"]["devices"] = 2  # each job in 2 gloo processes (1 vs 2: test_earlybird_distributed)
    doc["model"]["width"] = 0.0625
    work = Workdir(tmp_path)
    work.write_config([work.write_experiment("eb_tiny", doc)])
    result = work.snakemake().check()
    logs = [path.read_text() for path in (work.results / "logs").rglob("*.log")]
    assert sum("2 processes (gloo), 25-25 examples of each batch each" in log for log in logs) == 4, logs

    counts = rule_counts(result.output)
    assert {rule: counts[rule] for rule in ("eb_search", "eb_train", "eb_figures", "html_report")} == {
        "eb_search": 1, "eb_train": 3, "eb_figures": 1, "html_report": 1}  # eb-ff, final-ff, final-lt_oneshot
    assert not {"dense_round", "prune_round", "collect", "render_figure", "render_tables"} & set(counts)
    rule_of = {job.jobid: job.rule for job in result.jobs}
    finished = [rule_of[int(jobid)] for jobid in re.findall(r"^Finished jobid: (\d+)", result.output, re.MULTILINE)]
    stages = [rule for rule in finished if rule in ("eb_search", "eb_train", "eb_figures", "html_report")]
    assert stages == ["eb_search", "eb_train", "eb_train", "eb_train", "eb_figures", "html_report"]

    results = work.results
    table = (results / "tables" / "eb_tiny-eb.md").read_text()
    assert "| - | Dense" in table and "EB Train (FF)" in table and "One-shot LT" in table
    report = (results / "report.html").read_text()
    for kind in ("accuracy", "distances", "flops"):
        assert f'src="figures/eb_tiny/eb_{kind}.png"' in report
    assert "Fig. 1 of You et al. (2020)" in report and "Early-Bird tickets against the dense model" in report
    assert 'src="figures/eb_tiny/accuracy.png"' not in report  # no IMP figure

    status = subprocess.run([sys.executable, "-m", "lotto", "status", "--results", str(results)],
                            capture_output=True, text=True, check=True).stdout
    assert "4 done of 4" in status, status
    for retraining in ("eb-ff", "final-ff", "final-lt_oneshot"):
        assert re.search(rf"^\s+0\s+p50\s+{retraining}\s+done", status, re.MULTILINE), status


def test_the_table_gives_every_row_the_seeds_spread_the_dense_row_too():
    """The caption promises '± std when there are several' seeds: the dense row keeps it."""
    import pandas as pd

    from lotto.outputs import eb_figures

    searches = [{"trained_to_end": True, "dense_test_accuracy": a, "epochs_total": 12} for a in (0.86, 0.88)]
    summaries = pd.DataFrame([
        {"ratio": 0.3, "ticket": "eb", "mode": "ff", "epoch": e, "test_accuracy": a, "total_flops": 1.0,
         "full_training_flops": 2.0, "forward_flops_dense": 3.0, "forward_flops_pruned": 1.0,
         "weight_density": 0.5}
        for e, a in ((8, 0.85), (9, 0.87))
    ])
    dense, ff = eb_figures.table_rows(summaries, searches)[:2]
    assert dense["accuracy"] == "87.00 ± 1.41"
    assert ff["accuracy"] == "86.00 ± 1.41"
    one_seed = eb_figures.table_rows(summaries.iloc[:1], searches[:1])
    assert [row["accuracy"] for row in one_seed[:2]] == ["86.00", "85.00"]
