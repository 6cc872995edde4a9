"""Analytic training FLOPs: what a dense or channel-pruned model costs per example.

Counted: convolutions and linear layers, one multiply-add = 2 FLOPs, plus one FLOP per
output for a bias. BatchNorm, ReLU, pooling and the loss are left out (a few percent of a
conv net's work). Output sizes come from one forward pass of a single example (on the
meta device, so no arithmetic is done). The backward pass is taken as 2x the forward
(gradients w.r.t. activations and weights), so one training iteration costs
3 x forward x batch size. Unstructured (masked) sparsity is not discounted by
`forward_flops`: dense kernels do the same work whatever the zeros; `masked_forward_flops`
gives the work a sparse kernel would do (each layer's multiply-adds scaled by the fraction of
its weights the mask keeps), the figure pruning papers quote for IMP tickets.

Any model works (lotto's registry, torchvision's, a user's): the counted layers are those the
mask code prunes, nn.Conv2d and nn.Linear; matrix products outside them (attention scores, a
ViT's in_proj via F.linear) are not counted. For torchvision's ResNets forward_flops / 2
equals the GFLOPS torchvision publishes (resnet18 1.814, resnet50 4.089 at 224 px).
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
    return sum(weights + bias for weights, bias in layer_flops(model, input_shape).values())


def masked_forward_flops(model: nn.Module, mask: dict[str, torch.Tensor], input_shape: tuple[int, ...]) -> float:
    """Forward FLOPs of one example with only the weights `mask` keeps (lotto.core.masks): a layer's
    multiply-adds scale with its kept fraction; bias additions and unmasked layers count in full."""
    total = 0.0
    for name, (weights, bias) in layer_flops(model, input_shape).items():
        kept = float(mask[name].float().mean()) if name in mask else 1.0
        total += weights * kept + bias
    return total


def layer_flops(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, tuple[int, int]]:
    """Module path -> (multiply-add FLOPs, bias FLOPs) of one example through each conv and linear
    layer that runs in the forward pass (a layer run twice counts twice)."""
    counted: dict[str, tuple[int, int]] = {}
    names = {}

    def count(module: nn.Module, _inputs, output: torch.Tensor) -> None:
        if isinstance(module, nn.Conv2d):
            total = conv_flops(module, (output.shape[-2], output.shape[-1]))
            bias = output[0].numel() if module.bias is not None else 0
        else:
            total = linear_flops(module) * math.prod(output.shape[1:-1])  # per token, if any
            bias = output[0].numel() if module.bias is not None else 0
        weights, biases = counted.get(names[module], (0, 0))
        counted[names[module]] = (weights + total - bias, biases + bias)

    meta = _on_meta(model)
    hooks = []
    for name, module in meta.named_modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            names[module] = name
            hooks.append(module.register_forward_hook(count))
    try:
        with torch.no_grad():
            meta.eval()(torch.empty(1, *input_shape, device="meta"))
    finally:
        for hook in hooks:
            hook.remove()
    return counted


def _on_meta(model: nn.Module) -> nn.Module:
    """A weightless copy of `model` (shapes only), so counting costs no arithmetic."""
    return copy.deepcopy(model).to("meta")


def iteration_flops(forward: int, batch_size: int) -> float:
    """FLOPs of one training iteration: forward + backward (2x forward) over the batch."""
    return (1.0 + BACKWARD_FACTOR) * forward * batch_size


def training_flops(forward: int, batch_size: int, iterations: int) -> float:
    """FLOPs of `iterations` training iterations."""
    return iteration_flops(forward, batch_size) * iterations
