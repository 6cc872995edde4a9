"""training.precision: tf32 (lotto.core.train.matmul_precision). CPU tests: identity, accepted and
refused values, the flags during training (forward and backward) and after, unchanged numbers on
a CPU and the job's log saying so once; the CUDA test runs only where a GPU is (about 2 s here)."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_spec
from test_gpu_step import lenet

from lotto import cli
from lotto.core import io, masks, startup
from lotto.core.spec import ExperimentSpec, SpecError
from lotto.core.train import matmul_precision, train
from lotto.core.vmap import train_seeds

TF32 = {"training": {"precision": "tf32"}}


def test_tf32_is_part_of_the_identity_and_round_trips():
    tf32, fp32, bf16 = tiny_spec(**TF32), tiny_spec(), tiny_spec(training={"precision": "bf16"})
    assert len({tf32.dense_key, fp32.dense_key, bf16.dense_key}) == 3
    assert tf32.recipe_key != fp32.recipe_key
    assert ExperimentSpec.from_dict(tf32.to_dict()) == tf32
    assert tf32.to_dict()["training"]["precision"] == "tf32"
    with pytest.raises(SpecError, match=r"training.precision: 'tf16' is not allowed.*fp32, bf16, tf32"):
        tiny_spec(training={"precision": "tf16"})


def tf32_flags() -> tuple[bool, bool]:
    return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32


def test_flags_hold_for_forward_and_backward_and_are_restored(splits):
    before = tf32_flags()
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        seen = []
        model = lenet(0)
        model[1].register_forward_hook(lambda *_: seen.append(("forward", tf32_flags())))
        model[3].register_full_backward_hook(lambda *_: seen.append(("backward", tf32_flags())))
        train(model, splits, tiny_spec(**TF32).training, mask=masks.ones(model), seed=0, steps=3)
        assert {("forward", (True, True)), ("backward", (True, True))} <= set(seen)
        assert tf32_flags()[0] is False  # restored
        seen.clear()
        train(model, splits, tiny_spec().training, mask=masks.ones(model), seed=0, steps=1)
        assert all(flags[0] is False for _, flags in seen)  # fp32 leaves torch's flags alone
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def test_the_flags_are_restored_when_training_fails():
    before = tf32_flags()
    with pytest.raises(RuntimeError), matmul_precision("tf32"):
        assert tf32_flags() == (True, True)
        raise RuntimeError("boom")
    assert tf32_flags() == before


def test_on_a_cpu_tf32_trains_the_same_numbers_as_fp32(splits):
    results = []
    for overrides in ({}, TF32):
        model = lenet(0)
        results.append(train(model, splits, tiny_spec(**overrides).training, mask=masks.ones(model), seed=0, steps=20))
    assert results[0].rows == results[1].rows
    assert all(torch.equal(v, results[1].state[k]) for k, v in results[0].state.items())


CPU_NOTE = "precision tf32: no effect on cpu, trains as fp32"


@pytest.mark.parametrize("precision", ["tf32", "fp32", "bf16"])
def test_a_round_job_with_a_branch_says_once_that_tf32_trains_as_fp32_on_a_cpu(synthetic_data, tmp_path, capsys,
                                                                                 precision):
    spec = tmp_path / "spec.json"
    io.write_json(spec, tiny_spec(training={"precision": precision, "duration": 4, "eval_every": 2}).to_dict())
    common = ["--spec", str(spec), "--data", str(synthetic_data), "--seed", "0"]
    r0, r1 = tmp_path / "round0", tmp_path / "round1"
    assert cli.main(["round", *common, "--round", "0", "--out", str(r0)]) == 0
    capsys.readouterr()
    assert cli.main(["round", *common, "--round", "1", "--dense", str(r0), "--prev", str(r0), "--branch", "reinit",
                     "--out", str(r1)]) == 0  # one job, two trainings
    log = capsys.readouterr().err.splitlines()
    assert log.count(CPU_NOTE) == (precision == "tf32") and not [line for line in log if "no effect" in line
                                                                 and line != CPU_NOTE]


def test_a_gpu_before_ampere_is_named_in_the_note(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: (7, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: "Tesla V100")
    note = startup.precision_note("tf32", torch.device("cuda"))
    assert note == ("precision tf32: no effect on Tesla V100 (compute capability 7.0; TF32 needs 8.0, Ampere, "
                    "or later), trains as fp32")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: (9, 0))
    assert startup.precision_note("tf32", torch.device("cuda")) is None
    assert startup.precision_note("bf16", torch.device("cpu")) is None


def test_vectorised_seeds_train_under_tf32_too(splits):
    seen = []
    models = [lenet(0), lenet(1)]
    models[0][1].register_forward_hook(lambda *_: seen.append(tf32_flags()[0]))
    before = tf32_flags()
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        train_seeds(models, splits, tiny_spec(**TF32).training, masks=[masks.ones(m) for m in models],
                    seeds=[0, 1], steps=2)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
    assert seen and all(seen)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_tf32_changes_a_cuda_matmul():
    """TF32 rounds the inputs of a float32 product to 10 mantissa bits: a 512x512 product of
    random matrices differs from the fp32 one (on Ampere and later)."""
    a, b = torch.randn(512, 512, device="cuda"), torch.randn(512, 512, device="cuda")
    torch.backends.cuda.matmul.allow_tf32 = False
    exact = a @ b
    with matmul_precision("tf32"):
        fast = a @ b
    assert not torch.equal(exact, fast)
    assert torch.allclose(exact, fast, rtol=0, atol=0.5)
