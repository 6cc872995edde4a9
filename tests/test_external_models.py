"""Models outside the registry (lotto.core.external_models): torchvision's by name and a user's by
import path, pruned by lotto's own mask code, refused clearly when they cannot be, and run end
to end through Snakemake. Cost: the unit tests ~15 s; the one Snakemake run (a user model and
ResNet-18 IMP rounds, a ResNet-18 Early-Bird search and two retrainings; 24 jobs, each
importing torch) ~60 s of CPU, 156 s wall on 2 cores shared at load 6."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn
from workflow_util import REPO, Workdir, experiment, job_env, rule_counts

from lotto.cli import main
from lotto.core import channels, masks, model_facts
from lotto.core.external_models import name_problem
from lotto.core.io import load_torch
from lotto.core.spec import DatasetSpec, ExperimentSpec, ModelSpec, SpecError, build_model, resolve
from lotto.methods import earlybird, flops, structured

# A user's model file: one good builder and one of each mistake the errors below name.
USER_MODULE = textwrap.dedent("""
    import math
    from torch import nn

    def tiny_cnn(input_shape, num_classes, hidden=4):
        channels, height, width = input_shape
        return nn.Sequential(nn.Conv2d(channels, hidden, 3, padding=1), nn.BatchNorm2d(hidden),
                             nn.ReLU(), nn.Flatten(), nn.Linear(hidden * height * width, num_classes))

    not_a_function = 3

    def not_a_module(input_shape, num_classes):
        return "a string"

    def nothing_prunable(input_shape, num_classes):
        return nn.Sequential(nn.Flatten(), nn.BatchNorm1d(math.prod(input_shape)))

    def tied(input_shape, num_classes):
        first, second = nn.Linear(math.prod(input_shape), math.prod(input_shape)), nn.Linear(1, 1)
        second.weight = first.weight
        return nn.Sequential(nn.Flatten(), first, second)
""")


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """userpkg/nets.py written into tmp_path, which goes on PYTHONPATH (here and for jobs)."""
    package = tmp_path / "userpkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "nets.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(tmp_path), os.environ.get("PYTHONPATH")) if p))
    yield "userpkg.nets"
    for name in ("userpkg.nets", "userpkg"):
        sys.modules.pop(name, None)


SYNTHETIC = {"name": "synthetic", "val_size": 40, "synthetic": {"n_train": 120, "n_test": 40, "shape": [3, 8, 8]}}
TRAINING = {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "batch_size": 16, "duration": 6, "eval_every": 3}


def synthetic_data(shape: tuple[int, int, int], num_classes: int) -> DatasetSpec:
    return DatasetSpec("synthetic", synthetic=(("num_classes", num_classes), ("shape", shape)))


def spec_doc(model: dict) -> dict:
    return {"dataset": SYNTHETIC, "model": model, "training": TRAINING,
            "pruning": {"rounds": 1, "rates": {"conv": 0.5, "fc": 0.5, "output": 0.5}}}


# --- building: same seed, same θ_0; the prunable layers ---------------------------------------


def test_torchvision_resnet18_layers_are_its_convs_and_fc(capsys):
    """`lotto layers torchvision:resnet18` lists the 20 convs (3 of them 1x1 downsampling) and
    the fc as output, with counts equal to the built model's weights."""
    assert main(["layers", "torchvision:resnet18"]) == 0
    out = capsys.readouterr().out.splitlines()
    net = build_model(ModelSpec("torchvision:resnet18"), DatasetSpec("cifar10"), "meta")
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    total = sum(m.weight.numel() for m in convs) + net.fc.weight.numel()
    assert len(convs) == 20
    assert out[0] == (f"torchvision:resnet18 on cifar10 (3x32x32): 21 prunable layers, {total:,} weights; "
                      "pruning.exclude takes the name or the module")
    rows = [line.split() for line in out[2:]]
    assert [r[2] for r in rows] == ["conv"] * 20 + ["output"]
    assert rows[-1] == ["output", "fc", "output", "10x512", "5,120"]
    assert ["conv8", "layer2.0.downsample.0", "conv", "128x64x1x1", "8,192"] in rows


def test_same_seed_same_theta_0_and_options_reach_the_builder(user_module):
    def built(seed: int, options=None) -> nn.Module:
        torch.manual_seed(seed)
        model = ModelSpec(f"{user_module}:tiny_cnn", options=options, bn_momentum=0.3)
        return build_model(model, DatasetSpec("cifar10"))

    a, b, c = built(0), built(0), built(1)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert not torch.equal(a[0].weight, c[0].weight)
    assert a[0].out_channels == 4 and built(0, (("hidden", 6),))[0].out_channels == 6
    assert a[1].momentum == 0.3, "bn_momentum is set on the user's BatchNorm layers too"
    assert [kind for _, kind, _ in masks.prunable_layers(a)] == ["conv", "output"]


def test_options_enter_the_hashes_only_when_set(user_module):
    plain = resolve(spec_doc({"name": f"{user_module}:tiny_cnn"}))
    same = resolve(spec_doc({"name": f"{user_module}:tiny_cnn", "options": {"hidden": 4}}))
    assert plain.model.options is None and "options" not in plain.to_dict()["model"]
    assert same.model.options == (("hidden", 4),)
    assert same.dense_key != plain.dense_key, "explicit options are part of the identity"
    assert type(same).from_dict(same.to_dict()) == same


# --- errors, before any work ------------------------------------------------------------------


@pytest.mark.parametrize(("model", "message"), [
    ({"name": "no_such_pkg.nets:net"}, "model: model no_such_pkg.nets:net: cannot import module 'no_such_pkg.nets' "
     "(ModuleNotFoundError: No module named 'no_such_pkg'); put its folder on PYTHONPATH"),
    ({"name": "{mod}:missing"}, "has no attribute 'missing'; its callables: not_a_module, nothing_prunable, tied, tiny_cnn"),
    ({"name": "{mod}:not_a_function"}, "'not_a_function' is a int, not callable"),
    ({"name": "{mod}:not_a_module"}, "returned a str, not a torch.nn.Module"),
    ({"name": "{mod}:nothing_prunable"}, "has nothing to prune: lotto prunes the weights of nn.Conv2d and nn.Linear"),
    ({"name": "{mod}:tied"}, "layers '1' and '2' share one weight tensor"),
    ({"name": "{mod}:tiny_cnn", "options": {"depth": 3}},
     "(input_shape, num_classes, **model.options) failed: TypeError: tiny_cnn() got an unexpected keyword argument 'depth'"),
    ({"name": "torchvision:resnet5"}, "unknown torchvision model 'resnet5' (did you mean 'torchvision:resnet50'?)"),
    ({"name": "torchvision:resnet18", "options": {"num_classes": 5}}, "model.options: num_classes is set by lotto"),
    ({"name": "torchvision:resnet18", "width": 2.0}, "does not support width=2.0 (registry options)"),
    ({"name": "lenet5", "options": {"x": 1}}, "model.options: only for 'torchvision:<name>' and '<module>:<callable>'"),
    ({"name": "my pkg:net"}, "model.name: 'my pkg:net' is not a model name"),
])
def test_a_model_that_cannot_be_used_is_refused_naming_file_key_and_value(user_module, model, message):
    doc = spec_doc({**model, "name": model["name"].format(mod=user_module)})
    with pytest.raises(SpecError) as caught:
        resolve(doc, source="exp.yaml")
    assert f"exp.yaml: {'model' if message.startswith('model') else ''}" in str(caught.value)
    assert message in str(caught.value)


def test_name_spelling_is_checked_without_importing():
    assert name_problem("torchvision:resnet50") is None
    assert name_problem("a.b_c:d1") is None
    for bad in ("torchvision:", ":net", "a..b:c", "a:b.c", "../x:y"):
        assert "is not a model name" in name_problem(bad)


def test_validation_in_a_process_without_torch_measures_in_a_child(user_module, tmp_path):
    """Resolving a user model where torch is not imported (a Snakefile parse) leaves this
    process without torch and without the user's module: a child process builds the model,
    importing the same lotto and finding the module where this process does (here both only
    on sys.path, as Snakemake puts its workflow's folder there, not on PYTHONPATH)."""
    code = (f"import sys\nsys.path[:0] = [{str(REPO)!r}, {str(tmp_path)!r}]\n"
            "from lotto.core.spec import resolve\n"
            f"spec = resolve({spec_doc({'name': f'{user_module}:tiny_cnn'})!r})\n"
            "print(spec.model.name, 'torch' in sys.modules, 'userpkg' in sys.modules)\n")
    env = {k: v for k, v in job_env().items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=tmp_path.parent)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [f"{user_module}:tiny_cnn", "False", "False"]


def test_an_untabulated_model_has_the_facts_its_module_gives(user_module):
    options = model_facts.model_options(ModelSpec("torchvision:resnet18"), DatasetSpec("cifar10"))
    facts = model_facts.facts(options)
    assert facts.build_error is None and len(facts.layers) == 21 and facts.layers[-1] == ("output", "fc", "output")
    assert facts.not_channel_prunable is None, "Early-Bird prunes its inner block channels"
    assert "BatchNorm" in facts.not_vectorisable


# --- end to end through Snakemake -------------------------------------------------------------


@pytest.mark.workflow
def test_user_and_torchvision_models_prune_and_train_through_snakemake(user_module, tmp_path):
    """The default target runs a user model (import path) and torchvision's ResNet-18 on
    3x32x32 synthetic data: round 0 and one pruned round at 50% per kind, the pruned weights
    exactly zero after training and the density what was asked; and an Early-Bird search of
    ResNet-18 at p = 30% with EB Train (ff, reinit) of its inner block channels."""
    work = Workdir(tmp_path / "work")
    data = {**SYNTHETIC, "synthetic": {**SYNTHETIC["synthetic"], "shape": [3, 32, 32]}}
    base = experiment(spec_doc({}), dataset=data, seeds=[0])
    user = work.write_experiment("user", experiment(base, model={"name": f"{user_module}:tiny_cnn",
                                                                 "options": {"hidden": 3}}))
    resnet = work.write_experiment("tv", experiment(base, model={"name": "torchvision:resnet18"},
                                                    training={**TRAINING, "duration": 2, "eval_every": 2}))
    early_bird = work.write_experiment("tv_eb", experiment(
        base, model={"name": "torchvision:resnet18"}, pruning=None,
        training={**TRAINING, "duration": "2ep", "eval_every": "2ep"},
        earlybird={"ratios": [0.3], "window": 2, "epsilon": 0.9, "retrain": ["ff", "reinit"]}))
    work.write_config([user, resnet, early_bird])
    run = work.snakemake().check()
    counts = rule_counts(run.output)
    assert (counts["dense_round"], counts["prune_round"], counts["eb_search"], counts["eb_train"]) == (2, 2, 1, 2)
    for mode in ("ff", "reinit"):
        summary = json.loads((work.results / "tv_eb" / "eb" / "seed0" / "p30" / f"eb-{mode}" / "summary.json").read_text())
        assert summary["drawn"] and summary["equivalence_error"] < 1e-4
        assert summary["forward_flops_pruned"] < 0.9 * summary["forward_flops_dense"]
        assert summary["retrain_flops"] < 0.9 * summary["full_training_flops"], "the smaller net trains cheaper"
    assert (work.results / "report.html").is_file()
    for name in ("user", "tv"):
        spec = ExperimentSpec.from_dict(json.loads((work.results / name / "spec.json").read_text()))
        round_dir = work.results / name / "seed0" / "round1"
        mask, state = masks.load(round_dir / "mask.pt"), load_torch(round_dir / "checkpoint.pt")
        masks.check(mask, build_model(spec.model, spec.dataset, "meta"))
        assert math.isclose(masks.density(mask), 0.5, abs_tol=0.01)
        for layer, keep in mask.items():
            weight = state[f"{layer}.weight"]
            assert (weight[~keep] == 0).all(), f"{name}: pruned weights of {layer} moved in training"
            assert (weight[keep] != 0).any()


# --- FLOPs ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_resnet_forward_flops_equal_torchvision_published_gflops(name):
    """Half our FLOPs (multiply-adds) at 224 px is the GFLOPS torchvision publishes for the
    ImageNet weights (read from its metadata; nothing is downloaded)."""
    import torchvision.models

    published = torchvision.models.get_model_weights(name).IMAGENET1K_V1.meta["_ops"]
    net = build_model(ModelSpec(f"torchvision:{name}"), synthetic_data((3, 224, 224), 1000), "meta")
    assert round(flops.forward_flops(net, (3, 224, 224)) / 2e9, 3) == published


def test_masked_flops_scale_each_layer_by_its_kept_weights(user_module):
    """tiny_cnn on 3x8x8, hidden 4: conv 2*27*4*64 multiply-add FLOPs + 256 bias, linear
    2*256*10 + 10. Keeping a quarter of the conv and half of the linear weights scales only the
    multiply-adds."""
    net = build_model(ModelSpec(f"{user_module}:tiny_cnn"), synthetic_data((3, 8, 8), 10))
    conv, linear = 2 * 27 * 4 * 64, 2 * 256 * 10
    assert flops.forward_flops(net, (3, 8, 8)) == conv + 256 + linear + 10
    mask = masks.ones(net)
    mask["0"].view(-1)[: mask["0"].numel() * 3 // 4] = False
    mask["4"].view(-1)[: mask["4"].numel() // 2] = False
    assert flops.masked_forward_flops(net, mask, (3, 8, 8)) == conv / 4 + 256 + linear / 2 + 10
    assert flops.masked_forward_flops(net, masks.ones(net), (3, 8, 8)) == flops.forward_flops(net, (3, 8, 8))


# --- Early-Bird channel pruning of torchvision's ResNets -------------------------------------


@pytest.mark.parametrize(("name", "groups"), [("resnet18", 8), ("resnet50", 32)])
def test_resnet_inner_channels_prune_to_the_same_function(name, groups):
    """Every block's inner BNs (1 per BasicBlock, 2 per Bottleneck) are the channel groups; the
    physically pruned network equals the masked one in eval mode, and costs fewer FLOPs."""
    torch.manual_seed(0)
    net = build_model(ModelSpec(f"torchvision:{name}"), synthetic_data((3, 32, 32), 10))
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):  # γ, β and statistics that are not all alike
            nn.init.uniform_(module.weight)
            nn.init.uniform_(module.bias, -0.1, 0.1)
    net.train()(torch.randn(8, 3, 32, 32))
    found = channels.channel_groups(net)
    assert len(found) == groups
    assert all(g.bn.rsplit(".", 1)[1] in ("bn1", "bn2") and g.producer is not None for g in found)
    cm = earlybird.channel_mask(net, 0.5)
    assert structured.check_equivalence(net, cm, torch.randn(4, 3, 32, 32)) < 1e-4
    pruned = structured.prune_channels(net, cm)
    assert flops.forward_flops(pruned, (3, 32, 32)) < 0.8 * flops.forward_flops(net, (3, 32, 32))


def test_early_bird_on_resnext_is_refused_before_any_work():
    doc = {**spec_doc({"name": "torchvision:resnext50_32x4d"}), "earlybird": {"ratios": [0.3]}}
    del doc["pruning"]
    with pytest.raises(SpecError, match="cannot run earlybird: layer1.0: grouped convolutions"):
        resolve(doc, source="exp.yaml")


@pytest.mark.parametrize("with_top5", [True, False])
def test_early_bird_table_shows_top5_only_where_the_runs_have_it(tmp_path, with_top5):
    """ImageNet-sized datasets give top-5 rows (EB Table 3 reports it): the table gains a top-5
    column for the dense row and each retraining; a 10-class dataset's table keeps its columns."""
    import pandas as pd

    from lotto.outputs import eb_figures

    top5 = {"test_top5": 0.8912} if with_top5 else {}
    summaries = pd.DataFrame([{"ratio": 0.3, "ticket": "eb", "mode": "ff", "epoch": 12, "test_accuracy": 0.6828,
                               "total_flops": 9.5e17, "forward_flops_pruned": 2.6e9, "forward_flops_dense": 3.6e9,
                               "weight_density": 0.7, "full_training_flops": 1.26e18, **top5}])
    search = {"trained_to_end": True, "epochs_total": 90, "dense_test_accuracy": 0.6957,
              **({"dense_test_top5": 0.8924} if with_top5 else {})}
    text = eb_figures.write_table(summaries, [search], tmp_path / "t.md")
    header, *_ = text.splitlines()[next(i for i, line in enumerate(text.splitlines()) if line.startswith("|")):]
    assert ("top-5 acc. (%)" in header) == with_top5
    assert ("| 89.24 |" in text and "| 89.12 |" in text) == with_top5
    assert "| 69.57 |" in text and "| 68.28 |" in text
