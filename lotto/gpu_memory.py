"""An estimate of one training job's GPU memory, so that lotto.gpu_slot puts jobs side by side
on a GPU only where they fit (config ``gpu_slots``).

    estimate = CUDA context + resident dataset + 4 bytes x parameters x (weights, gradients,
               mask, optimizer state) + activations of one training batch + one evaluation batch

The model is built on the meta device (no memory, no weights), its activations are the outputs
of every leaf module for one batch (what autograd keeps for the backward pass, counted once
more for their gradients), and the dataset counts as float32 train and test images resident on
the GPU (lotto.core.data). Limits, by design of a simple estimate: cuDNN and cuBLAS workspaces,
allocator fragmentation and CUDA graph pools are covered only by the fixed context term and the
headroom gpu_slot leaves (5% of the GPU); bf16 activations are counted at 4 bytes (an
over-estimate); the vectorised seeds of lotto.core.vmap, and the control branches trained with them,
are counted as one training (an under-estimate by about the number of trainings in the job for
the model part).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lotto.core.spec import DATASET_FACTS, SYNTHETIC_DEFAULTS, ExperimentSpec, build_model
from lotto.core.train import EVAL_BATCH

CONTEXT_MB = 600  # CUDA context, cuDNN/cuBLAS handles and workspaces (measured ~500 on an H100)
BYTES = 4  # float32


def _examples(spec: ExperimentSpec) -> int:
    """Training plus test examples held on the GPU."""
    if spec.dataset.streamed:  # read from disk batch by batch (lotto.core.stream): none resident
        return 0
    if spec.dataset.torchvision is not None:  # the test split's size is not stated: counted as large
        return 2 * int(dict(spec.dataset.torchvision)["train_size"])  # as the training split's (an over-estimate)
    if spec.dataset.synthetic is not None:
        options = {**SYNTHETIC_DEFAULTS, **dict(spec.dataset.synthetic)}
        return int(options["n_train"]) + int(options["n_test"])
    facts = DATASET_FACTS[spec.dataset.name]
    return facts["train_size"] + facts["test_size"]


def _activation_elements(model: nn.Module, batch: int, shape: tuple[int, ...]) -> tuple[int, int]:
    """(sum, largest) of the output sizes of the leaf modules for one batch, on the meta device."""
    sizes: list[int] = []

    def record(_module, _inputs, output) -> None:
        if isinstance(output, torch.Tensor):
            sizes.append(output.numel())

    hooks = [m.register_forward_hook(record) for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            model(torch.empty((batch, *shape), device="meta"))
    finally:
        for hook in hooks:
            hook.remove()
    return sum(sizes), max(sizes, default=0)


def estimate_mb(spec: ExperimentSpec) -> int:
    """Estimated peak GPU memory of one training of `spec`, in MB (rounded up)."""
    shape = tuple(spec.dataset.input_shape)
    model = build_model(spec.model, spec.dataset, "meta")
    parameters = sum(p.numel() for p in model.parameters())
    optimizer_states = 2 if spec.training.optimizer == "adam" else int(spec.training.momentum > 0)
    model_bytes = BYTES * parameters * (3 + optimizer_states)  # weights, gradients, mask
    train_total, _ = _activation_elements(model, spec.training.batch_size, shape)
    _, eval_largest = _activation_elements(model, EVAL_BATCH, shape)
    activation_bytes = BYTES * (2 * train_total + 2 * eval_largest)
    data_bytes = BYTES * _examples(spec) * math.prod(shape)
    return CONTEXT_MB + math.ceil((model_bytes + activation_bytes + data_bytes) / 2**20)
