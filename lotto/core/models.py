"""Model registry: every architecture the papers prune, built by name with `create_model`.

Each variant is one short function registered under its own name; its keyword-only
parameters (`dropout`, `width`) declare which options it supports. BatchNorm momentum
and epsilon are set on every `nn.BatchNorm2d` after construction, so no family has to
pass them down. An option a model does not support must stay at its default.

Contract the pruning code relies on: weights live only in `nn.Conv2d` and `nn.Linear`
(plus `nn.BatchNorm2d` scale/shift), with no parametrizations or shared weights, and the
last `nn.Linear` in `model.modules()` order is the output layer.

Families, their sources and their initialisation:

- MLP (LeNet-300-100, Mikler's 784-400-400-400-10), LeNet-5, Conv-2/4/6 (Frankle & Carbin
  2019): Glorot (Xavier) normal weights, zero biases.
- VGG with BatchNorm, CIFAR ResNet (He et al. 2016), PreResNet (He et al. 2016b, as in
  network slimming / Early-Bird), Wide ResNet (Zagoruyko & Komodakis 2016): Kaiming normal
  (fan_in, ReLU gain) for conv and linear weights, zero biases, BatchNorm weight 1, bias 0.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor, nn

from lotto.core.errors import InvalidValue
from lotto.core.external_models import create_external, is_external

Shape = tuple[int, int, int]
ModelBuilder = Callable[..., nn.Module]

_OPTION_DEFAULTS: dict[str, float] = {"dropout": 0.0, "width": 1.0}
_BN_DEFAULTS: dict[str, float] = {"bn_momentum": 0.1, "bn_eps": 1e-5}
_REGISTRY: dict[str, tuple[ModelBuilder, frozenset[str]]] = {}


def register(builder: ModelBuilder) -> ModelBuilder:
    """Register a variant under its function name; its keyword-only parameters are its options."""
    name = builder.__name__
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is registered twice")
    options = frozenset(
        parameter.name
        for parameter in inspect.signature(builder).parameters.values()
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY
    )
    unknown = sorted(options - frozenset(_OPTION_DEFAULTS))
    if unknown:
        raise InvalidValue(
            f"model {name!r} declares unknown options {unknown}; "
            f"choose from: {', '.join(_OPTION_DEFAULTS)}"
        )
    _REGISTRY[name] = (builder, options)
    return builder


def model_names() -> list[str]:
    """All registered model names, sorted."""
    return sorted(_REGISTRY)


def create_model(
    name: str,
    *,
    input_shape: tuple[int, int, int],
    num_classes: int,
    dropout: float = 0.0,
    bn_momentum: float = 0.1,
    bn_eps: float = 1e-5,
    width: float = 1.0,
    options: dict[str, Any] | None = None,
) -> nn.Module:
    """Build model `name` for inputs of shape (C, H, W); initialised from torch's global RNG.

    A name with a colon is a torchvision or user model built with `options`
    (lotto.core.external_models); registry models take no options.
    """
    if is_external(name):
        return _create_external(name, _checked_shape(input_shape), num_classes, options or {},
                                dropout=dropout, width=width, bn_momentum=bn_momentum, bn_eps=bn_eps)
    if options is not None:
        raise InvalidValue(f"model {name!r} takes no model.options (they are for 'torchvision:<name>' "
                           f"and '<module>:<callable>' models); its options: dropout, width, bn_momentum, bn_eps")
    if name not in _REGISTRY:
        raise InvalidValue(f"unknown model {name!r}; choose one of: {', '.join(model_names())}")
    builder, supported = _REGISTRY[name]
    shape = _checked_shape(input_shape)
    if not isinstance(num_classes, int) or num_classes < 1:
        raise InvalidValue(f"num_classes must be a positive integer, got {num_classes!r}")
    _check_range("dropout", dropout, 0.0 <= dropout < 1.0, "[0, 1)")
    _check_range("width", width, width > 0.0, "> 0")
    _check_range("bn_momentum", bn_momentum, 0.0 <= bn_momentum <= 1.0, "[0, 1]")
    _check_range("bn_eps", bn_eps, bn_eps > 0.0, "> 0")

    options = {"dropout": dropout, "width": width}
    model = builder(shape, num_classes, **{key: options[key] for key in supported})
    batch_norms = [module for module in model.modules() if isinstance(module, nn.BatchNorm2d)]
    if batch_norms:
        supported = supported | frozenset(_BN_DEFAULTS)
    requested = options | {"bn_momentum": bn_momentum, "bn_eps": bn_eps}
    defaults = _OPTION_DEFAULTS | _BN_DEFAULTS
    refused = [
        key for key, value in requested.items() if key not in supported and value != defaults[key]
    ]
    if refused:
        raise InvalidValue(
            f"model {name!r} does not support "
            f"{', '.join(f'{key}={requested[key]!r}' for key in refused)}; leave it at the default "
            f"({', '.join(f'{key}={defaults[key]!r}' for key in refused)}); "
            f"options of {name!r}: {', '.join(sorted(supported)) or 'none'}"
        )
    for batch_norm in batch_norms:
        batch_norm.momentum = bn_momentum
        batch_norm.eps = bn_eps
    return model


def _create_external(name: str, shape: Shape, num_classes: int, options: dict[str, Any], *,
                     dropout: float, width: float, bn_momentum: float, bn_eps: float) -> nn.Module:
    """A torchvision or user model, its BatchNorm momentum and epsilon set as for registry models."""
    refused = [f"{key}={value!r}" for key, value in (("dropout", dropout), ("width", width))
               if value != _OPTION_DEFAULTS[key]]
    if refused:
        raise InvalidValue(f"model {name!r} does not support {', '.join(refused)} (registry options); "
                           "pass the model's own keywords in model.options")
    _check_range("bn_momentum", bn_momentum, 0.0 <= bn_momentum <= 1.0, "[0, 1]")
    _check_range("bn_eps", bn_eps, bn_eps > 0.0, "> 0")
    model = create_external(name, input_shape=shape, num_classes=num_classes, options=options)
    for batch_norm in model.modules():
        if isinstance(batch_norm, nn.BatchNorm2d):
            batch_norm.momentum = bn_momentum
            batch_norm.eps = bn_eps
    return model


def _checked_shape(input_shape: Sequence[int]) -> Shape:
    shape = tuple(input_shape)
    if len(shape) != 3 or not all(isinstance(size, int) and size > 0 for size in shape):
        raise InvalidValue(
            f"input_shape must be (channels, height, width) of positive ints, got {input_shape!r}"
        )
    return shape  # type: ignore[return-value]


def _check_range(option: str, value: float, valid: bool, allowed: str) -> None:
    if not valid:
        raise InvalidValue(f"{option} must be in {allowed}, got {value!r}")


def _require_min_size(family: str, input_shape: Shape, min_size: int, reason: str) -> None:
    _, height, width = input_shape
    if height < min_size or width < min_size:
        raise InvalidValue(
            f"input {height}x{width} is too small for {family}: {reason}, "
            f"so it needs at least {min_size}x{min_size}"
        )


def _scaled(channels: int, width: float) -> int:
    return max(1, round(channels * width))


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=bias)


def _on_meta(model: nn.Module) -> bool:
    """A shapes-only model (spec validation): initialising its weights would compute nothing
    but import torch._dynamo (~3 s, at every Snakefile parse)."""
    return any(p.is_meta for p in model.parameters())


def _init_glorot(model: nn.Module) -> None:
    """Glorot normal weights and zero biases (Frankle & Carbin 2019)."""
    if _on_meta(model):
        return
    for module in model.modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            nn.init.xavier_normal_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


def init_kaiming(model: nn.Module) -> None:
    """Kaiming normal (fan_in, ReLU) weights, zero biases, BatchNorm 1/0 (open_lth, He 2015)."""
    if _on_meta(model):
        return
    for module in model.modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


def _fc_layers(
    in_features: int, hidden: Sequence[int], num_classes: int, dropout: float
) -> list[nn.Module]:
    """Linear-ReLU(-Dropout) per hidden width, then the output Linear."""
    layers: list[nn.Module] = []
    for features in hidden:
        layers += [nn.Linear(in_features, features), nn.ReLU()]
        if dropout > 0.0:
            layers.append(nn.Dropout(dropout))
        in_features = features
    layers.append(nn.Linear(in_features, num_classes))
    return layers


# --- fully connected and small conv nets (Glorot normal) ------------------------------------


class MLP(nn.Sequential):
    """Fully connected ReLU net on the flattened input. Init: Glorot normal, zero biases."""

    def __init__(
        self, input_shape: Shape, num_classes: int, hidden: Sequence[int], dropout: float
    ) -> None:
        super().__init__(
            nn.Flatten(), *_fc_layers(math.prod(input_shape), hidden, num_classes, dropout)
        )
        _init_glorot(self)


class LeNet5(nn.Module):
    """LeNet-5 with ReLU and max-pooling; the first conv pads by 2 so 28x28 gives 16x5x5.

    Init: Glorot normal, zero biases.
    """

    def __init__(self, input_shape: Shape, num_classes: int, dropout: float) -> None:
        super().__init__()
        _require_min_size(
            "LeNet-5", input_shape, 12, "its unpadded 5x5 conv and two 2x2 max-pools shrink it"
        )
        in_channels, height, width = input_shape
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        flat = 16 * ((height // 2 - 4) // 2) * ((width // 2 - 4) // 2)
        self.classifier = nn.Sequential(*_fc_layers(flat, (120, 84), num_classes, dropout))
        _init_glorot(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


class ConvNet(nn.Module):
    """Conv-2/4/6 of Frankle & Carbin 2019: per stage two 3x3 convs (padding 1) and a 2x2
    max-pool, then fc 256, 256, out; dropout, when set, follows each hidden fc layer.

    Init: Glorot normal, zero biases.
    """

    def __init__(
        self,
        input_shape: Shape,
        num_classes: int,
        stage_channels: Sequence[int],
        dropout: float,
        width: float,
    ) -> None:
        super().__init__()
        pools = len(stage_channels)
        _require_min_size(
            f"Conv-{2 * pools}", input_shape, 2**pools, f"its {pools} max-pools halve it"
        )
        in_channels, height, image_width = input_shape
        layers: list[nn.Module] = []
        for base in stage_channels:
            out_channels = _scaled(base, width)
            layers += [
                _conv3x3(in_channels, out_channels, bias=True),
                nn.ReLU(),
                _conv3x3(out_channels, out_channels, bias=True),
                nn.ReLU(),
                nn.MaxPool2d(2),
            ]
            in_channels = out_channels
        layers.append(nn.Flatten())
        self.features = nn.Sequential(*layers)
        flat = in_channels * (height >> pools) * (image_width >> pools)
        self.classifier = nn.Sequential(*_fc_layers(flat, (256, 256), num_classes, dropout))
        _init_glorot(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


# --- BatchNorm nets (Kaiming normal) ---------------------------------------------------------


class VGG(nn.Module):
    """CIFAR VGG with BatchNorm as in open_lth and network slimming: conv3x3-BN-ReLU stages
    joined by 2x2 max-pools, a global average pool (the 2x2 average pool at 32 px) and one
    linear layer. Init: Kaiming normal, BatchNorm 1/0.
    """

    def __init__(
        self,
        input_shape: Shape,
        num_classes: int,
        stages: Sequence[Sequence[int]],
        width: float,
    ) -> None:
        super().__init__()
        pools = len(stages) - 1
        _require_min_size("VGG", input_shape, 2**pools, f"its {pools} max-pools halve it")
        in_channels = input_shape[0]
        layers: list[nn.Module] = []
        for index, stage in enumerate(stages):
            if index > 0:
                layers.append(nn.MaxPool2d(2))
            for base in stage:
                out_channels = _scaled(base, width)
                layers += [
                    _conv3x3(in_channels, out_channels),
                    nn.BatchNorm2d(out_channels),
                    nn.ReLU(),
                ]
                in_channels = out_channels
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(in_channels, num_classes)
        init_kaiming(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features(x))


def _projection(in_channels: int, out_channels: int, stride: int) -> nn.Conv2d | None:
    """1x1 strided conv where a block changes shape; None where the identity fits."""
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Post-activation block (He et al. 2016): conv-BN-ReLU-conv-BN, add shortcut, ReLU.
    The shortcut is the identity or, where the shape changes, 1x1 conv + BN (open_lth).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_channels, out_channels, stride)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = _conv3x3(out_channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        projection = _projection(in_channels, out_channels, stride)
        self.shortcut = (
            nn.Identity()
            if projection is None
            else nn.Sequential(projection, nn.BatchNorm2d(out_channels))
        )

    def forward(self, x: Tensor) -> Tensor:
        out = nn.functional.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return nn.functional.relu(out + self.shortcut(x))


class PreActBlock(nn.Module):
    """Pre-activation basic block: BN-ReLU-conv3x3-BN-ReLU(-dropout)-conv3x3, plus shortcut.

    A 1x1 conv shortcut where the shape changes reads the raw input (network slimming's
    PreResNet) or, with `preactivated_shortcut`, the BN-ReLU output (Zagoruyko's WRN).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        dropout: float = 0.0,
        preactivated_shortcut: bool = False,
    ) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = _conv3x3(in_channels, out_channels, stride)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.dropout = nn.Dropout(dropout) if dropout > 0.0 else nn.Identity()
        self.conv2 = _conv3x3(out_channels, out_channels)
        self.shortcut = _projection(in_channels, out_channels, stride)
        self.preactivated_shortcut = preactivated_shortcut

    def forward(self, x: Tensor) -> Tensor:
        preactivated = nn.functional.relu(self.bn1(x))
        out = self.conv1(preactivated)
        out = self.conv2(self.dropout(nn.functional.relu(self.bn2(out))))
        if self.shortcut is None:
            return out + x
        return out + self.shortcut(preactivated if self.preactivated_shortcut else x)


class PreActBottleneck(nn.Module):
    """Pre-activation bottleneck (network slimming's PreResNet): BN-ReLU-conv1x1,
    BN-ReLU-conv3x3 (strided), BN-ReLU-conv1x1 to 4x the planes; a 1x1 conv shortcut on the
    raw input where the shape changes.
    """

    expansion = 4

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        planes = out_channels // self.expansion
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_channels, 1, bias=False)
        self.shortcut = _projection(in_channels, out_channels, stride)

    def forward(self, x: Tensor) -> Tensor:
        relu = nn.functional.relu
        out = self.conv1(relu(self.bn1(x)))
        out = self.conv2(relu(self.bn2(out)))
        out = self.conv3(relu(self.bn3(out)))
        return out + (x if self.shortcut is None else self.shortcut(x))


BlockFactory = Callable[[int, int, int], nn.Module]


def _residual_stages(
    make_block: BlockFactory,
    in_channels: int,
    stage_channels: Sequence[int],
    blocks_per_stage: int,
) -> nn.Sequential:
    """Stages of `blocks_per_stage` blocks; every stage after the first starts with stride 2."""
    stages = []
    for index, out_channels in enumerate(stage_channels):
        blocks = []
        for position in range(blocks_per_stage):
            stride = 2 if index > 0 and position == 0 else 1
            blocks.append(make_block(in_channels, out_channels, stride))
            in_channels = out_channels
        stages.append(nn.Sequential(*blocks))
    return nn.Sequential(*stages)


def _blocks_per_stage(family: str, depth: int, convs_per_block: int, other_layers: int) -> int:
    """Blocks per stage n of a three-stage net of depth 3 * convs_per_block * n + other_layers."""
    per_block_layers = 3 * convs_per_block
    blocks, remainder = divmod(depth - other_layers, per_block_layers)
    if blocks < 1 or remainder:
        raise InvalidValue(
            f"{family} depth {depth} is not {per_block_layers}n+{other_layers} with n >= 1; "
            f"use e.g. {per_block_layers + other_layers} or {2 * per_block_layers + other_layers}"
        )
    return blocks


class ResNet(nn.Module):
    """CIFAR ResNet of He et al. 2016 (depth 6n+2): conv-BN-ReLU stem, three stages of n
    post-activation basic blocks with 16/32/64 channels, global average pool, linear layer.
    Init: Kaiming normal, BatchNorm 1/0.
    """

    def __init__(self, input_shape: Shape, num_classes: int, depth: int, width: float) -> None:
        super().__init__()
        blocks = _blocks_per_stage("ResNet", depth, convs_per_block=2, other_layers=2)
        channels = [_scaled(base, width) for base in (16, 32, 64)]
        self.stem = nn.Sequential(
            _conv3x3(input_shape[0], channels[0]), nn.BatchNorm2d(channels[0]), nn.ReLU()
        )
        self.stages = _residual_stages(BasicBlock, channels[0], channels, blocks)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(channels[-1], num_classes)
        init_kaiming(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.stages(self.stem(x))))


class PreActResNet(nn.Module):
    """Pre-activation ResNet trunk shared by PreResNet and WRN: a bare 3x3 conv stem, three
    stages of pre-activation blocks, BN-ReLU, global average pool, linear layer.
    Init: Kaiming normal, BatchNorm 1/0.
    """

    def __init__(
        self,
        input_shape: Shape,
        num_classes: int,
        make_block: BlockFactory,
        stem_channels: int,
        stage_channels: Sequence[int],
        blocks_per_stage: int,
    ) -> None:
        super().__init__()
        self.stem = _conv3x3(input_shape[0], stem_channels)
        self.stages = _residual_stages(make_block, stem_channels, stage_channels, blocks_per_stage)
        self.bn = nn.BatchNorm2d(stage_channels[-1])
        self.pool = nn.Sequential(nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(stage_channels[-1], num_classes)
        init_kaiming(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.bn(self.stages(self.stem(x)))))


def _preresnet(
    input_shape: Shape, num_classes: int, depth: int, bottleneck: bool, width: float
) -> PreActResNet:
    """PreResNet: basic blocks (depth 6n+2) or bottlenecks (depth 9n+2, planes 16/32/64 x4)."""
    stem = _scaled(16, width)
    planes = [_scaled(base, width) for base in (16, 32, 64)]
    if bottleneck:
        blocks = _blocks_per_stage("PreResNet (bottleneck)", depth, 3, other_layers=2)
        stage_channels = [PreActBottleneck.expansion * plane for plane in planes]
        return PreActResNet(
            input_shape, num_classes, PreActBottleneck, stem, stage_channels, blocks
        )
    blocks = _blocks_per_stage("PreResNet", depth, 2, other_layers=2)
    return PreActResNet(input_shape, num_classes, PreActBlock, stem, planes, blocks)


def _wide_resnet(
    input_shape: Shape,
    num_classes: int,
    depth: int,
    widen_factor: int,
    dropout: float,
    width: float,
) -> PreActResNet:
    """WRN-depth-k (Zagoruyko & Komodakis 2016): depth 6n+4, stage widths 16k/32k/64k."""
    blocks = _blocks_per_stage("WRN", depth, 2, other_layers=4)
    stage_channels = [_scaled(base * widen_factor, width) for base in (16, 32, 64)]
    make_block = functools.partial(PreActBlock, dropout=dropout, preactivated_shortcut=True)
    return PreActResNet(
        input_shape, num_classes, make_block, _scaled(16, width), stage_channels, blocks
    )


# --- registered variants ---------------------------------------------------------------------


@register
def lenet_300_100(input_shape: Shape, num_classes: int, *, dropout: float) -> nn.Module:
    return MLP(input_shape, num_classes, hidden=(300, 100), dropout=dropout)


@register
def mlp_400x3(input_shape: Shape, num_classes: int, *, dropout: float) -> nn.Module:
    return MLP(input_shape, num_classes, hidden=(400, 400, 400), dropout=dropout)


@register
def lenet5(input_shape: Shape, num_classes: int, *, dropout: float) -> nn.Module:
    return LeNet5(input_shape, num_classes, dropout=dropout)


@register
def conv2(input_shape: Shape, num_classes: int, *, dropout: float, width: float) -> nn.Module:
    return ConvNet(input_shape, num_classes, (64,), dropout=dropout, width=width)


@register
def conv4(input_shape: Shape, num_classes: int, *, dropout: float, width: float) -> nn.Module:
    return ConvNet(input_shape, num_classes, (64, 128), dropout=dropout, width=width)


@register
def conv6(input_shape: Shape, num_classes: int, *, dropout: float, width: float) -> nn.Module:
    return ConvNet(input_shape, num_classes, (64, 128, 256), dropout=dropout, width=width)


@register
def vgg11(input_shape: Shape, num_classes: int, *, width: float) -> nn.Module:
    stages = ((64,), (128,), (256, 256), (512, 512), (512, 512))
    return VGG(input_shape, num_classes, stages, width=width)


@register
def vgg16(input_shape: Shape, num_classes: int, *, width: float) -> nn.Module:
    stages = ((64, 64), (128, 128), (256,) * 3, (512,) * 3, (512,) * 3)
    return VGG(input_shape, num_classes, stages, width=width)


@register
def vgg19(input_shape: Shape, num_classes: int, *, width: float) -> nn.Module:
    stages = ((64, 64), (128, 128), (256,) * 4, (512,) * 4, (512,) * 4)
    return VGG(input_shape, num_classes, stages, width=width)


@register
def resnet20(input_shape: Shape, num_classes: int, *, width: float) -> nn.Module:
    return ResNet(input_shape, num_classes, depth=20, width=width)


@register
def resnet32(input_shape: Shape, num_classes: int, *, width: float) -> nn.Module:
    return ResNet(input_shape, num_classes, depth=32, width=width)


@register
def resnet56(input_shape: Shape, num_classes: int, *, width: float) -> nn.Module:
    return ResNet(input_shape, num_classes, depth=56, width=width)


@register
def resnet110(input_shape: Shape, num_classes: int, *, width: float) -> nn.Module:
    return ResNet(input_shape, num_classes, depth=110, width=width)


@register
def preresnet20(input_shape: Shape, num_classes: int, *, width: float) -> nn.Module:
    return _preresnet(input_shape, num_classes, depth=20, bottleneck=False, width=width)


@register
def preresnet56(input_shape: Shape, num_classes: int, *, width: float) -> nn.Module:
    return _preresnet(input_shape, num_classes, depth=56, bottleneck=False, width=width)


@register
def preresnet110(input_shape: Shape, num_classes: int, *, width: float) -> nn.Module:
    return _preresnet(input_shape, num_classes, depth=110, bottleneck=False, width=width)


@register
def preresnet101(input_shape: Shape, num_classes: int, *, width: float) -> nn.Module:
    return _preresnet(input_shape, num_classes, depth=101, bottleneck=True, width=width)


@register
def wrn_16_8(input_shape: Shape, num_classes: int, *, dropout: float, width: float) -> nn.Module:
    return _wide_resnet(input_shape, num_classes, 16, 8, dropout=dropout, width=width)


@register
def wrn_28_10(input_shape: Shape, num_classes: int, *, dropout: float, width: float) -> nn.Module:
    return _wide_resnet(input_shape, num_classes, 28, 10, dropout=dropout, width=width)
