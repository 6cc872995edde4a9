"""lotto.gpu_memory: the GPU-memory estimate gpu_slot uses to co-schedule jobs (meta device,
no GPU; well under a second)."""

from __future__ import annotations

import math

from conftest import tiny_spec

from lotto import gpu_memory
from lotto.core.models import create_model


def test_estimate_counts_its_terms():
    """LeNet-300-100 on 8x8 synthetic data with Adam: context + data + 5 x 4 bytes per
    parameter + activations, term by term."""
    spec = tiny_spec()
    model = create_model("lenet_300_100", input_shape=(1, 8, 8), num_classes=10)
    parameters = sum(p.numel() for p in model.parameters())
    examples = 2000 + 500  # the synthetic defaults
    batch = spec.training.batch_size
    activations = 2 * batch * (64 + 300 + 300 + 100 + 100 + 10) + 2 * 2000 * 300  # leaf outputs
    expected_bytes = 4 * (5 * parameters + examples * 64 + activations)
    assert spec.training.optimizer == "adam"
    assert gpu_memory.estimate_mb(spec) == gpu_memory.CONTEXT_MB + math.ceil(expected_bytes / 2**20)


def test_estimate_grows_with_batch_model_and_data():
    small = gpu_memory.estimate_mb(tiny_spec())
    assert gpu_memory.estimate_mb(tiny_spec(training={"batch_size": 4096})) > small
    conv6 = {"dataset": {"name": "cifar10"}, "model": {"name": "conv6"},
             "pruning": {"rates": {"conv": 0.1, "fc": 0.2}}}
    adam = gpu_memory.estimate_mb(tiny_spec(**conv6))
    assert gpu_memory.estimate_mb(tiny_spec(**conv6, training={"optimizer": "sgd"})) < adam
    assert adam > small + 700  # CIFAR's 60,000 float32 images alone are 703 MB
