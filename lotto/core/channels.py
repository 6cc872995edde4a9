"""Which batch-norm channels of a model can be removed, and what removing one touches: a fact
of the architecture (lotto.core.models; torchvision's ResNets too), read by channel pruning (lotto.methods.structured, Early-Bird) and
by spec validation (lotto.core.model_facts: can Early-Bird prune this model's channels?)."""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass

from torch import nn

from lotto.core.errors import InvalidValue
from lotto.core.models import VGG, PreActBlock, PreActBottleneck, PreActResNet


@dataclass(frozen=True)
class ChannelGroup:
    """One prunable BN layer: the conv producing its channels (None: a residual stream, the
    BN is prefixed by a channel selection) and the layers reading its channels."""

    bn: str
    producer: str | None
    consumers: tuple[str, ...]


def channel_groups(model: nn.Module) -> list[ChannelGroup]:
    """Every prunable BN layer of `model` in forward order; refuses unsupported families."""
    if isinstance(model, VGG):
        return _vgg_groups(model)
    if isinstance(model, PreActResNet):
        return _preact_groups(model)
    torchvision_resnet = sys.modules.get("torchvision.models.resnet")  # not imported: not one of its models
    if torchvision_resnet is not None and isinstance(model, torchvision_resnet.ResNet):
        return _torchvision_resnet_groups(model, torchvision_resnet)
    raise InvalidValue(
        f"structured channel pruning supports VGG, pre-activation ResNets (vgg*, preresnet*, "
        f"wrn_*) and torchvision's ResNets (torchvision:resnet*), not {type(model).__name__}; "
        "lotto's post-activation ResNets add BN outputs to the shortcut, so their channels cannot be removed"
    )


def _vgg_groups(model: VGG) -> list[ChannelGroup]:
    layers = list(model.features.named_children())
    groups, conv = [], None
    for position, (name, module) in enumerate(layers):
        if isinstance(module, nn.Conv2d):
            conv = f"features.{name}"
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):  # GlobalBatchNorm too (several processes)
            following = [f"features.{n}" for n, m in layers[position + 1 :] if isinstance(m, nn.Conv2d)]
            groups.append(ChannelGroup(f"features.{name}", conv, (following[0] if following else "fc",)))
    return groups


def _preact_groups(model: PreActResNet) -> list[ChannelGroup]:
    groups = []
    for stage_name, stage in model.stages.named_children():
        for block_name, block in stage.named_children():
            prefix = f"stages.{stage_name}.{block_name}"
            groups.append(ChannelGroup(f"{prefix}.bn1", None, _stream_readers(prefix, block)))
            groups.append(ChannelGroup(f"{prefix}.bn2", f"{prefix}.conv1", (f"{prefix}.conv2",)))
            if isinstance(block, PreActBottleneck):
                groups.append(ChannelGroup(f"{prefix}.bn3", f"{prefix}.conv2", (f"{prefix}.conv3",)))
    groups.append(ChannelGroup("bn", None, ("fc",)))
    return groups


def _torchvision_resnet_groups(model: nn.Module, resnet: types.ModuleType) -> list[ChannelGroup]:
    """The inner BNs of every block (see the module docstring), stage by stage."""
    groups = []
    for stage in ("layer1", "layer2", "layer3", "layer4"):
        for block_name, block in getattr(model, stage).named_children():
            prefix = f"{stage}.{block_name}"
            if isinstance(block, resnet.Bottleneck):
                if block.conv2.groups != 1:
                    raise InvalidValue(f"{prefix}: grouped convolutions (ResNeXt) are not supported by "
                                       "channel pruning; use a resnet* or wide_resnet* model")
                inner = (("bn1", "conv1", "conv2"), ("bn2", "conv2", "conv3"))
            elif isinstance(block, resnet.BasicBlock):
                inner = (("bn1", "conv1", "conv2"),)
            else:
                raise InvalidValue(f"{prefix}: unknown residual block {type(block).__name__}")
            groups += [ChannelGroup(f"{prefix}.{bn}", f"{prefix}.{producer}", (f"{prefix}.{consumer}",))
                       for bn, producer, consumer in inner]
    return groups


def _stream_readers(prefix: str, block: nn.Module) -> tuple[str, ...]:
    """Layers reading a block's BN-ReLU'd input: conv1, and a pre-activated 1x1 shortcut."""
    if not isinstance(block, PreActBlock | PreActBottleneck):
        raise InvalidValue(f"{prefix}: unknown residual block {type(block).__name__}")
    if isinstance(block, PreActBlock) and block.shortcut is not None and block.preactivated_shortcut:
        return (f"{prefix}.conv1", f"{prefix}.shortcut")
    return (f"{prefix}.conv1",)
