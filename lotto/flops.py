"""Analytic training FLOPs: what a dense or channel-pruned model costs per example.

Counted: convolutions and linear layers, one multiply-add = 2 FLOPs, plus one FLOP per
output for a bias. BatchNorm, ReLU, pooling and the loss are left out (a few percent of a
conv net's work). Output sizes come from one forward pass of a single example (on the
meta device, so no arithmetic is done). The backward pass is taken as 2x the forward
(gradients w.r.t. activations and weights), so one training iteration costs
3 x forward x batch size. Unstructured (masked) sparsity is not discounted: dense kernels
do the same work whatever the zeros.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

BACKWARD_FACTOR = 2.0


def conv_flops(conv: nn.Conv2d, output_hw: tuple[int, int]) -> int:
    """Forward FLOPs of one example through `conv` producing `output_hw` spatial positions."""
    kernel = math.prod(conv.kernel_size) * (conv.in_channels // conv.groups)
    positions = conv.out_channels * output_hw[0] * output_hw[1]
    return 2 * kernel * positions + (positions if conv.bias is not None else 0)


def linear_flops(linear: nn.Linear) -> int:
    """Forward FLOPs of one example through `linear`."""
    return 2 * linear.in_features * linear.out_features + (linear.out_features if linear.bias is not None else 0)


def forward_flops(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Forward FLOPs of one example of shape (C, H, W) through every conv and linear layer."""
    total = 0

    def count(module: nn.Module, _inputs, output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            total += conv_flops(module, (output.shape[-2], output.shape[-1]))
        else:
            total += linear_flops(module)

    meta = _on_meta(model)
    hooks = [m.register_forward_hook(count) for m in meta.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    try:
        with torch.no_grad():
            meta.eval()(torch.empty(1, *input_shape, device="meta"))
    finally:
        for hook in hooks:
            hook.remove()
    return total


def _on_meta(model: nn.Module) -> nn.Module:
    """A weightless copy of `model` (shapes only), so counting costs no arithmetic."""
    return copy.deepcopy(model).to("meta")


def iteration_flops(forward: int, batch_size: int) -> float:
    """FLOPs of one training iteration: forward + backward (2x forward) over the batch."""
    return (1.0 + BACKWARD_FACTOR) * forward * batch_size


def training_flops(forward: int, batch_size: int, iterations: int) -> float:
    """FLOPs of `iterations` training iterations."""
    return iteration_flops(forward, batch_size) * iterations
