"""Structured (channel) pruning: physically remove the channels a BN channel mask prunes.

A channel mask is `dict[BN layer name, bool tensor]` (True = keep), one entry per batch-norm
layer that `lotto.core.channels.channel_groups` lists. Pruning a channel of a BN layer is defined by the
"masked" model: that BN's scale γ and shift β are zero, so (after the ReLU that follows
every BN in these models) the channel carries zeros to the layers that read it. The
physically pruned model computes the same function in eval mode with smaller layers:

- a BN that follows a conv (VGG; a residual block's inner BNs) loses the channel together
  with the conv's output channel and the next layer's input channel;
- a BN on a residual stream (the first BN of a pre-activation block and the final BN of a
  PreResNet, network slimming's "channel selection") cannot shrink the stream, which the
  shortcut still carries: it becomes `ChannelSelect(kept) -> smaller BN`, and the layers
  reading its output (the block's first conv, a pre-activated shortcut, the classifier)
  lose the input channel.

Supported: VGG and pre-activation ResNets (PreResNet, WRN), and torchvision's ResNets
(`torchvision:resnet18/34/50/101/152`, `wide_resnet50_2/101_2`). lotto's own post-activation
CIFAR ResNets add a BN output to the shortcut, so their channels cannot be removed by this rule.
In torchvision's (post-activation) ResNets only each block's inner channels are pruned: bn1
of a BasicBlock, bn1 and bn2 of a Bottleneck, each between two convs of its block. The BNs whose
output joins the residual stream (the stem's bn1, each block's last BN, the downsampling BN)
keep all their channels, as the stream's width is shared by every block of a stage.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from lotto.core.channels import channel_groups
from lotto.core.errors import InvalidValue

ChannelMask = dict[str, Tensor]


class ChannelSelect(nn.Module):
    """Keeps the channels `index` of an (N, C, H, W) tensor (network slimming's selection)."""

    def __init__(self, index: Tensor) -> None:
        super().__init__()
        self.register_buffer("index", index.clone().long())

    def forward(self, x: Tensor) -> Tensor:
        return x.index_select(1, self.index)


def batch_norms(model: nn.Module) -> list[tuple[str, nn.BatchNorm2d]]:
    """(name, module) of every prunable BN layer, in `channel_groups` order."""
    modules = dict(model.named_modules())
    return [(group.bn, modules[group.bn]) for group in channel_groups(model)]


def mask_bn_(model: nn.Module, channel_mask: ChannelMask) -> None:
    """The masked model: zero γ and β of every pruned channel, in place."""
    with torch.no_grad():
        for name, bn in batch_norms(model):
            keep = channel_mask[name].to(bn.weight.device, bn.weight.dtype)
            bn.weight.mul_(keep)
            bn.bias.mul_(keep)


def prune_channels(model: nn.Module, channel_mask: ChannelMask) -> nn.Module:
    """A smaller copy of `model` without the pruned channels (same function as the masked
    model in eval mode). Every BN layer must keep at least one channel."""
    groups = channel_groups(model)
    expected = {g.bn for g in groups}
    if set(channel_mask) != expected:
        missing, extra = sorted(expected - set(channel_mask)), sorted(set(channel_mask) - expected)
        raise InvalidValue(f"channel mask does not fit the model (missing: {missing}, unknown: {extra})")
    pruned = copy.deepcopy(model)
    modules = dict(pruned.named_modules())
    for group in groups:
        bn = modules[group.bn]
        keep = channel_mask[group.bn].to(bn.weight.device)
        if keep.shape != bn.weight.shape:
            raise InvalidValue(f"{group.bn}: mask has {keep.numel()} channels, the layer {bn.num_features}")
        index = torch.nonzero(keep, as_tuple=True)[0]
        if len(index) == 0:
            raise InvalidValue(f"{group.bn}: every channel is pruned; keep at least one per layer")
        small = _select_bn(bn, index)
        if group.producer is None:
            _replace(pruned, group.bn, nn.Sequential(ChannelSelect(index), small))
        else:
            _replace(pruned, group.bn, small)
            _replace(pruned, group.producer, _select_out(pruned.get_submodule(group.producer), index))
        for reader in group.consumers:
            _replace(pruned, reader, _select_in(pruned.get_submodule(reader), index))
    return pruned


def _select_bn(bn: nn.BatchNorm2d, index: Tensor) -> nn.BatchNorm2d:
    small = nn.BatchNorm2d(len(index), eps=bn.eps, momentum=bn.momentum, affine=bn.affine,
                           track_running_stats=bn.track_running_stats,
                           device=bn.weight.device, dtype=bn.weight.dtype)
    with torch.no_grad():
        for attribute in ("weight", "bias", "running_mean", "running_var"):
            source = getattr(bn, attribute)
            if source is not None:
                getattr(small, attribute).copy_(source[index])
        if bn.num_batches_tracked is not None:
            small.num_batches_tracked.copy_(bn.num_batches_tracked)
    small.train(bn.training)
    return small


def _select_out(conv: nn.Conv2d, index: Tensor) -> nn.Conv2d:
    return _resized(conv, conv.weight[index], None if conv.bias is None else conv.bias[index])


def _select_in(layer: nn.Module, index: Tensor) -> nn.Module:
    if isinstance(layer, nn.Linear | nn.Conv2d):
        return _resized(layer, layer.weight[:, index], layer.bias)
    raise InvalidValue(f"cannot remove input channels of {type(layer).__name__}")


def _resized(layer: nn.Module, weight: Tensor, bias: Tensor | None) -> nn.Module:
    """A conv/linear layer like `layer` whose parameters are `weight` and `bias`."""
    if isinstance(layer, nn.Linear):
        new = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None,
                        device=weight.device, dtype=weight.dtype)
    else:
        if layer.groups != 1:
            raise InvalidValue("grouped convolutions are not supported by channel pruning")
        new = nn.Conv2d(weight.shape[1], weight.shape[0], layer.kernel_size, stride=layer.stride,
                        padding=layer.padding, dilation=layer.dilation, bias=bias is not None,
                        padding_mode=layer.padding_mode, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
    new.train(layer.training)
    return new


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


@torch.no_grad()
def max_output_difference(model: nn.Module, channel_mask: ChannelMask, x: Tensor) -> float:
    """Largest |pruned(x) - masked(x)| in eval mode, computed in float64: ~1e-12 when pruning
    is right (in float32 a deep net's large outputs, e.g. a ResNet-18's, differ by ~1e-4 from
    summation order alone)."""
    masked = copy.deepcopy(model).double().eval()
    mask_bn_(masked, channel_mask)
    pruned = prune_channels(masked, channel_mask).eval()
    x = x.double()
    return float((pruned(x) - masked(x)).abs().max())


def check_equivalence(model: nn.Module, channel_mask: ChannelMask, x: Tensor, tolerance: float = 1e-4) -> float:
    """Raise if the pruned model's output differs from the masked model's on batch `x`."""
    difference = max_output_difference(model, channel_mask, x)
    if not difference <= tolerance:
        raise RuntimeError(
            f"physically pruned model differs from the masked model by {difference:.3g} "
            f"(tolerance {tolerance:g}); the channel pruning rule is wrong for {type(model).__name__}"
        )
    return difference
