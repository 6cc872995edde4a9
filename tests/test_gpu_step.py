"""How a step runs on a GPU. training.cuda_graph: each training step is replayed from a CUDA
graph (lotto.core.train.Stepper) and must train exactly what the eager step trains.
training.precision: bf16 autocast of every forward pass (and channels_last conv nets on a GPU).

The spec and CPU tests run everywhere; the graph itself needs a CUDA device (CI has none: these
ran on the device machine, see docs/performance.md).
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from conftest import tiny_spec

from lotto.core import data, masks, prune
from lotto.core.models import create_model
from lotto.core.spec import ExperimentSpec, PruningSpec, SpecError
from lotto.core.train import Stepper, train
from lotto.core.vmap import train_seeds

EAGER = {"training": {"cuda_graph": False}}
BF16 = {"training": {"precision": "bf16"}}
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

# ---------------------------------------------------------------------------- the spec option


def test_option_defaults_on_and_changes_neither_hash():
    assert tiny_spec().training.cuda_graph is True
    eager = tiny_spec(**EAGER)
    assert eager.training.cuda_graph is False
    assert (eager.dense_key, eager.recipe_key) == (tiny_spec().dense_key, tiny_spec().recipe_key)


def test_spec_files_round_trip_and_stay_as_before_when_on():
    eager = tiny_spec(**EAGER)
    assert ExperimentSpec.from_dict(eager.to_dict()) == eager
    default = tiny_spec().to_dict()
    assert "cuda_graph" not in default["training"]
    assert ExperimentSpec.from_dict(default) == tiny_spec()


def test_a_wrong_type_is_refused_with_the_key():
    with pytest.raises(SpecError, match=r"training.cuda_graph: 'no' has the wrong type"):
        tiny_spec(training={"cuda_graph": "no"})


def test_cpu_training_ignores_the_option(splits):
    """On a CPU the step always runs eagerly: both settings give the same bits."""
    results = []
    for overrides in ({}, EAGER):
        spec = tiny_spec(**overrides).training
        model = lenet(0)
        results.append(train(model, splits, spec, mask=masks.ones(model), seed=0, steps=25))
    for key, value in results[0].state.items():
        assert torch.equal(value, results[1].state[key])
    assert results[0].rows == results[1].rows


def test_precision_is_part_of_the_identity_and_checked():
    bf16 = tiny_spec(**BF16)
    assert bf16.dense_key != tiny_spec().dense_key and bf16.recipe_key != tiny_spec().recipe_key
    assert ExperimentSpec.from_dict(bf16.to_dict()) == bf16
    assert "precision" not in tiny_spec().to_dict()["training"]  # fp32 spec files as before
    with pytest.raises(SpecError, match=r"training.precision: 'fp16' is not allowed.*fp32, bf16"):
        tiny_spec(training={"precision": "fp16"})


def test_bf16_runs_every_forward_pass_in_bf16_and_keeps_fp32_weights(splits):
    """Training steps and evaluations see bf16 activations; weights, the optimizer and the
    metrics stay fp32; the run learns about as well as fp32 on this easy task."""
    results, dtypes = {}, {}
    for name, overrides in (("fp32", {}), ("bf16", BF16)):
        spec = tiny_spec(**overrides).training
        model = lenet(0)
        seen = dtypes[name] = []
        model[-1].register_forward_hook(lambda _m, _i, out, seen=seen: seen.append((torch.is_grad_enabled(), out.dtype)))
        results[name] = train(model, splits, spec, mask=masks.ones(model), seed=0, steps=40)
    assert set(dtypes["fp32"]) == {(True, torch.float32), (False, torch.float32)}
    assert set(dtypes["bf16"]) == {(True, torch.bfloat16), (False, torch.bfloat16)}
    assert all(v.dtype == torch.float32 for v in results["bf16"].state.values())
    final = {name: [r for r in res.rows if r["split"] == "test"][-1]["accuracy"] for name, res in results.items()}
    assert final["bf16"] == pytest.approx(final["fp32"], abs=0.05)
    assert not torch.equal(results["bf16"].state["1.weight"], results["fp32"].state["1.weight"])


# ---------------------------------------------------------------------------- on a GPU


def lenet(seed: int, dropout: float = 0.0, device: str = "cpu") -> torch.nn.Module:
    torch.manual_seed(seed)
    model = create_model("lenet_300_100", input_shape=(1, 8, 8), num_classes=10, dropout=dropout)
    return model.to(device)


@pytest.fixture(scope="module")
def gpu_splits(synthetic_data) -> data.Splits:
    return data.load(synthetic_data, val_size=200, device="cuda")


@pytest.fixture(scope="module")
def gpu_images(tmp_path_factory) -> data.Splits:
    """3x16x16 images, augmented, for the conv nets with BatchNorm."""
    path = tmp_path_factory.mktemp("images") / "images.pt"
    data.prepare("synthetic", path, synthetic_options={"shape": (3, 16, 16), "n_train": 1024})
    return replace(data.load(path, val_size=128, device="cuda"), augment=True)


@pytest.fixture
def replays(monkeypatch) -> list[int]:
    """Counts CUDA graph replays, so a test knows the graph really ran its steps."""
    count = [0]
    original = torch.cuda.CUDAGraph.replay

    def counting(self):
        count[0] += 1
        return original(self)

    monkeypatch.setattr(torch.cuda.CUDAGraph, "replay", counting)
    return count


@pytest.fixture
def exact_cudnn(monkeypatch):
    """Deterministic fp32 convolutions: by default cuDNN may pick algorithms that sum in a
    different order from run to run, and TF32, so two eager runs already differ by more than
    a wrong graph would."""
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)


def _train_both(build, splits, training, mask_of, replays, steps, **kwargs):
    """(eager result, graphed result) of the same training from the same weights."""
    out = []
    for graph in (False, True):
        spec = tiny_spec(training={**training, "cuda_graph": graph, "device": "cuda"}).training
        model = build()
        out.append(train(model, splits, spec, mask=mask_of(model), seed=5, steps=steps, **kwargs))
        assert replays[0] == (steps - Stepper.WARMUP if graph else 0)  # the graph ran every later step
    return out


def image_net(name: str, seed: int):
    """A builder of model `name` for the 3x16x16 images, on the GPU, from torch seed `seed`."""
    def build() -> torch.nn.Module:
        torch.manual_seed(seed)
        return create_model(name, input_shape=(3, 16, 16), num_classes=10).cuda()
    return build


def _assert_same_training(eager, graphed, atol):
    assert [(r["step"], r["split"], r["lr"]) for r in graphed.rows] == [
        (r["step"], r["split"], r["lr"]) for r in eager.rows
    ]
    for a, b in zip(eager.rows, graphed.rows, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4, abs=1e-5)
        assert b["accuracy"] == pytest.approx(a["accuracy"], abs=0.01)
    for key, value in eager.state.items():
        torch.testing.assert_close(graphed.state[key], value, rtol=0, atol=atol)


@needs_cuda
def test_graphed_lenet_matches_eager_through_lr_changes(gpu_splits, replays):
    """Adam, a pruned mask, L2 and weight decay, warm-up then a milestone inside the graphed
    steps, a start part-way through the schedule: the graph must follow every LR change."""
    training = {"optimizer": "adam", "lr": 3e-3, "weight_decay": 1e-4, "l2": 1e-4,
                "warmup": 30, "milestones": [60], "gamma": 0.1, "duration": 100, "eval_every": 15}
    spec = PruningSpec(rates=(("fc", 0.7), ("output", 0.3)))

    def pruned(model):
        return {k: v.cuda() for k, v in prune.prune(model, masks.ones(model), spec).items()}

    eager, graphed = _train_both(lambda: lenet(1, device="cuda"), gpu_splits, training, pruned,
                                 replays, steps=90, start=5)
    _assert_same_training(eager, graphed, atol=1e-5)
    mask = pruned(lenet(1, device="cuda"))
    for name, keep in mask.items():
        assert torch.all(graphed.state[f"{name}.weight"][~keep] == 0)


@needs_cuda
def test_graphed_resnet_with_batchnorm_and_augmentation_matches_eager(gpu_images, replays, exact_cudnn):
    """SGD with Nesterov momentum, BN running statistics, the network-slimming L1 on BN scales
    and augmentation (drawn on the host side of the graph) over more than one epoch."""
    training = {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True,
                "weight_decay": 5e-4, "bn_l1": 1e-4, "batch_size": 64, "milestones": [30],
                "duration": 40, "eval_every": 10}
    eager, graphed = _train_both(image_net("resnet20", 2), gpu_images, training, masks.ones, replays, steps=40)
    _assert_same_training(eager, graphed, atol=1e-5)
    assert torch.equal(graphed.state["stem.1.num_batches_tracked"], eager.state["stem.1.num_batches_tracked"])


@needs_cuda
def test_graphed_dropout_is_repeatable_and_keeps_pruned_weights_zero(gpu_splits, replays):
    """Dropout draws from the CUDA generator inside the graph: a given seed repeats exactly,
    and the run learns."""
    spec = tiny_spec(model={"dropout": 0.3},
                     training={"device": "cuda", "duration": 80, "eval_every": 40}).training
    model = lenet(0, 0.3)
    pruned = prune.prune(model, masks.ones(model), PruningSpec(rates=(("fc", 0.5), ("output", 0.2))))
    mask = {k: v.cuda() for k, v in prune.random_like(pruned, torch.Generator().manual_seed(0)).items()}
    runs = [train(lenet(3, 0.3, "cuda"), gpu_splits, spec, mask=mask, seed=3, steps=80) for _ in range(2)]
    assert replays[0] == 2 * (80 - Stepper.WARMUP)
    for key, value in runs[0].state.items():
        assert torch.equal(value, runs[1].state[key])
    train_loss = [r["loss"] for r in runs[0].rows if r["split"] == "train"]
    assert train_loss[-1] < train_loss[0]
    for name, keep in mask.items():
        assert torch.all(runs[0].state[f"{name}.weight"][~keep] == 0)


@needs_cuda
def test_graphed_seeds_match_eager(gpu_splits, replays):
    """lotto.core.vmap.train_seeds replays the same Stepper: several seeds, one graph."""
    spec_of = {g: tiny_spec(training={"cuda_graph": g, "device": "cuda", "milestones": [40],
                                      "duration": 50, "eval_every": 25}).training
               for g in (False, True)}
    seeds = [0, 1, 2]
    prune_spec = PruningSpec(rates=(("fc", 0.5), ("output", 0.2)))
    mask_list = [{k: v.cuda() for k, v in prune.prune(lenet(s), masks.ones(lenet(s)), prune_spec).items()}
                 for s in seeds]
    eager, graphed = (
        train_seeds([lenet(s, device="cuda") for s in seeds], gpu_splits, spec_of[g], masks=mask_list,
                    seeds=seeds, steps=50)
        for g in (False, True)
    )
    assert replays[0] == 50 - Stepper.WARMUP
    for a, b in zip(eager, graphed, strict=True):
        _assert_same_training(a, b, atol=1e-5)


@needs_cuda
def test_graphed_bf16_conv_net_matches_eager_in_channels_last(gpu_images, replays, exact_cudnn):
    training = {"optimizer": "adam", "lr": 1e-3, "precision": "bf16", "batch_size": 64,
                "duration": 30, "eval_every": 10}
    eager, graphed = _train_both(image_net("conv4", 4), gpu_images, training, masks.ones, replays, steps=30)
    _assert_same_training(eager, graphed, atol=1e-5)
    conv_weights = [k for k, v in graphed.state.items() if v.ndim == 4]
    assert conv_weights and all(
        graphed.state[k].is_contiguous(memory_format=torch.channels_last) for k in conv_weights
    )
