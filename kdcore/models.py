"""Model registry: every architecture by name, built for a dataset's input shape and class count.

Every model is a `KDModel`: `forward(x)` returns logits, and `forward_features(x)` also returns
the penultimate features and per-stage activations that feature-based distillation losses need.
`MODELS` is a plain dict built at the bottom of this file. Names, descriptions and fit checks
live in the torch-free `kdcore.model_names`, so config validation need not import torch.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from kdcore.errors import ModelError
from kdcore.model_names import (ARCH_NAMES, ARCHS, MLP_PRESETS, check_fits, fits, hf_name, mlp_widths, timm_name,
                                transformer_size, validate_arch)

__all__ = [
    "ARCH_NAMES", "MODELS", "KDModel", "ModelSpec", "build_model", "check_fits", "count_parameters",
    "fits", "list_models", "parameter_count", "validate_arch",
]

InputShape = tuple[int, ...]  # (C, H, W) for images, (D,) for flat point data, (tokens, vocabulary) for text
SMALL_IMAGE_SIDE = 64  # up to this size, torchvision nets get a stride-1 stem so 8x8 inputs survive


class KDModel(nn.Module):
    """Base class: every model returns logits from `forward(x)` and exposes features the same way.

    Subclasses set `feature_dim` and `num_classes` and implement `forward_features`.
    """

    feature_dim: int  # size of the penultimate feature vector
    num_classes: int

    def forward(self, x: Tensor) -> Tensor:
        """Logits [B, num_classes]."""
        return self.forward_features(x)[0]

    def forward_features(self, x: Tensor) -> tuple[Tensor, Tensor, list[Tensor]]:
        """(logits [B, num_classes], penultimate features [B, feature_dim], stage outputs).

        Stage outputs are intermediate activations: one 4-D [B, C, H, W] map per stage for conv
        nets, one 2-D [B, width] hidden activation per hidden layer for MLPs.
        """
        raise NotImplementedError


class MLP(KDModel):
    """Fully connected ReLU network; flattens any input shape."""

    def __init__(self, input_shape: InputShape, num_classes: int, widths: tuple[int, ...]) -> None:
        super().__init__()
        sizes = (math.prod(input_shape), *widths)
        self.hidden = nn.ModuleList(nn.Linear(n_in, n_out) for n_in, n_out in zip(sizes, sizes[1:]))
        self.head = nn.Linear(widths[-1], num_classes)
        self.feature_dim, self.num_classes = widths[-1], num_classes

    def forward_features(self, x: Tensor) -> tuple[Tensor, Tensor, list[Tensor]]:
        x = x.flatten(1)
        stages = []
        for layer in self.hidden:
            x = torch.relu(layer(x))
            stages.append(x)
        return self.head(x), x, stages


def _conv_bn_relu(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def _init_conv_weights(model: nn.Module) -> None:
    """He init for convs (fan_out, as torchvision and RepDistiller do); BN and Linear keep defaults."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")


class SmallCNN(KDModel):
    """Three conv-BN-ReLU blocks (max-pool after the first two), a 2x2 average pool, then a hidden
    fully connected layer. Keeping a little spatial layout before the classifier (instead of a
    global average) is what lets a shallow CNN learn digits in a couple of epochs."""

    def __init__(self, in_channels: int, num_classes: int, widths: tuple[int, int, int], hidden: int) -> None:
        super().__init__()
        width1, width2, width3 = widths
        self.blocks = nn.ModuleList([
            nn.Sequential(_conv_bn_relu(in_channels, width1), nn.MaxPool2d(2)),
            nn.Sequential(_conv_bn_relu(width1, width2), nn.MaxPool2d(2)),
            _conv_bn_relu(width2, width3),
        ])
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(width3 * 4, hidden), nn.ReLU(inplace=True))
        self.head = nn.Linear(hidden, num_classes)
        self.feature_dim, self.num_classes = hidden, num_classes
        _init_conv_weights(self)

    def forward_features(self, x: Tensor) -> tuple[Tensor, Tensor, list[Tensor]]:
        stages = []
        for block in self.blocks:
            x = block(x)
            stages.append(x)
        features = self.fc(self.pool(x))
        return self.head(features), features, stages


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual connection; a 1x1 conv shortcut when the shape changes."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class CifarResNet(KDModel):
    """ResNet for small images (He et al. 2016, sec. 4.2) in RepDistiller's variant.

    Depth 6n+2: a 3x3 stem, then three stages of n BasicBlocks (the 2nd and 3rd halve the
    resolution), global average pool and linear. `widths` is (stem, stage1, stage2, stage3).
    """

    def __init__(self, in_channels: int, num_classes: int, depth: int, widths: tuple[int, ...]) -> None:
        super().__init__()
        blocks_per_stage = (depth - 2) // 6
        stem_width, *stage_widths = widths
        self.stem = _conv_bn_relu(in_channels, stem_width)
        stages, channels = [], stem_width
        for stage_index, width in enumerate(stage_widths):
            first_stride = 1 if stage_index == 0 else 2
            blocks = [BasicBlock(channels, width, first_stride)]
            blocks += [BasicBlock(width, width, 1) for _ in range(blocks_per_stage - 1)]
            stages.append(nn.Sequential(*blocks))
            channels = width
        self.stages = nn.ModuleList(stages)
        self.head = nn.Linear(channels, num_classes)
        self.feature_dim, self.num_classes = channels, num_classes
        _init_conv_weights(self)

    def forward_features(self, x: Tensor) -> tuple[Tensor, Tensor, list[Tensor]]:
        x = self.stem(x)
        stage_outputs = []
        for stage in self.stages:
            x = stage(x)
            stage_outputs.append(x)
        features = x.mean(dim=(2, 3))
        return self.head(features), features, stage_outputs


def _is_small(input_shape: InputShape) -> bool:
    return min(input_shape[1:]) <= SMALL_IMAGE_SIDE


class TorchvisionResNet18(KDModel):
    """torchvision ResNet-18 taking the dataset's channels; small images get a 3x3 stride-1 stem, no max-pool."""

    def __init__(self, input_shape: InputShape, num_classes: int) -> None:
        super().__init__()
        from torchvision.models import resnet18  # lazy: importing torchvision costs ~1.5 s

        net = resnet18(weights=None, num_classes=num_classes)
        in_channels = input_shape[0]
        if _is_small(input_shape):
            net.conv1 = nn.Conv2d(in_channels, 64, 3, 1, padding=1, bias=False)
            net.maxpool = nn.Identity()
        else:
            net.conv1 = nn.Conv2d(in_channels, 64, 7, 2, padding=3, bias=False)
        _init_conv_weights(net.conv1)
        self.net = net
        self.feature_dim, self.num_classes = net.fc.in_features, num_classes

    def forward_features(self, x: Tensor) -> tuple[Tensor, Tensor, list[Tensor]]:
        net = self.net
        x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        stages = []
        for layer in (net.layer1, net.layer2, net.layer3, net.layer4):
            x = layer(x)
            stages.append(x)
        features = torch.flatten(net.avgpool(x), 1)
        return net.fc(features), features, stages


class TorchvisionMobileNetV3Small(KDModel):
    """torchvision MobileNetV3-Small taking the dataset's channels; small images get a stride-1 first conv.

    Penultimate features are the 1024-d hidden layer of the classifier, the input of its last Linear.
    """

    STAGE_ENDS = (1, 3, 8, 12)  # the last block at each resolution (strides 4, 8, 16, 32 at full size)

    def __init__(self, input_shape: InputShape, num_classes: int) -> None:
        super().__init__()
        from torchvision.models import mobilenet_v3_small  # lazy: importing torchvision costs ~1.5 s

        net = mobilenet_v3_small(weights=None, num_classes=num_classes)
        stem = net.features[0][0]
        stride = 1 if _is_small(input_shape) else 2
        net.features[0][0] = nn.Conv2d(input_shape[0], stem.out_channels, 3, stride, padding=1, bias=False)
        _init_conv_weights(net.features[0][0])
        self.net = net
        self.feature_dim, self.num_classes = net.classifier[-1].in_features, num_classes

    def forward_features(self, x: Tensor) -> tuple[Tensor, Tensor, list[Tensor]]:
        stages = []
        for index, block in enumerate(self.net.features):
            x = block(x)
            if index in self.STAGE_ENDS:
                stages.append(x)
        pooled = torch.flatten(self.net.avgpool(x), 1)
        features = self.net.classifier[:-1](pooled)
        return self.net.classifier[-1](features), features, stages


class TimmModel(KDModel):
    """A model of the optional timm package (`timm:<name>`), for the dataset's channels and classes.

    Penultimate features are what timm's head gives before its classifier; the one stage output is
    the last feature map (for conv nets).
    """

    def __init__(self, name: str, input_shape: InputShape, num_classes: int) -> None:
        super().__init__()
        from kdcore.pretrained import import_timm

        timm = import_timm()
        try:
            self.net = timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=input_shape[0])
        except RuntimeError as exc:  # an unknown name
            raise ModelError(f"timm:{name}: {str(exc).splitlines()[0]}") from None
        self.in_channels, self.feature_dim, self.num_classes = input_shape[0], self.net.num_features, num_classes

    def forward_features(self, x: Tensor) -> tuple[Tensor, Tensor, list[Tensor]]:
        maps = self.net.forward_features(x)
        features = self.net.forward_head(maps, pre_logits=True)
        return self.net.get_classifier()(features), features, [maps] if maps.dim() == 4 else []


ModelFactory = Callable[[InputShape, int], KDModel]


@dataclass(frozen=True)
class ModelSpec:
    name: str
    description: str
    factory: ModelFactory  # (input_shape, num_classes) -> model
    needs_image: bool


def _mlp(widths: tuple[int, ...], input_shape: InputShape, num_classes: int) -> KDModel:
    return MLP(input_shape, num_classes, widths)


def _cnn(widths: tuple[int, int, int], hidden: int, input_shape: InputShape, num_classes: int) -> KDModel:
    return SmallCNN(input_shape[0], num_classes, widths, hidden)


def _cifar_resnet(depth: int, widths: tuple[int, ...], input_shape: InputShape, num_classes: int) -> KDModel:
    return CifarResNet(input_shape[0], num_classes, depth, widths)


def _text(name: str, input_shape: InputShape, num_classes: int) -> KDModel:
    """The text models (`kdcore.text_models`), imported only when one is built; the vocabulary is input_shape[1]."""
    from kdcore import text_models

    vocab = input_shape[1]
    if name == "minilm-l6":
        return text_models.minilm_l6(vocab, num_classes)
    if name == "bilstm":
        return text_models.BiLSTM(vocab, num_classes)
    if name == "bag-of-embeddings":
        return text_models.BagOfEmbeddings(vocab, num_classes)
    if hf_name(name) is not None:
        return text_models.HFClassifier(hf_name(name), num_classes)
    return text_models.tiny_transformer(*transformer_size(name), vocab, num_classes)


_RESNET_WIDTHS = (16, 16, 32, 64)
_RESNET_X4_WIDTHS = (32, 64, 128, 256)  # RepDistiller's x4: a 32-channel stem, not 4 x 16

_FACTORIES: dict[str, ModelFactory] = {
    "mlp": functools.partial(_mlp, MLP_PRESETS["mlp"]),
    "mlp-small": functools.partial(_mlp, MLP_PRESETS["mlp-small"]),
    "mlp-tiny": functools.partial(_mlp, MLP_PRESETS["mlp-tiny"]),
    "cnn": functools.partial(_cnn, (32, 64, 64), 128),
    "cnn-small": functools.partial(_cnn, (8, 16, 16), 32),
    "resnet8": functools.partial(_cifar_resnet, 8, _RESNET_WIDTHS),
    "resnet14": functools.partial(_cifar_resnet, 14, _RESNET_WIDTHS),
    "resnet20": functools.partial(_cifar_resnet, 20, _RESNET_WIDTHS),
    "resnet32": functools.partial(_cifar_resnet, 32, _RESNET_WIDTHS),
    "resnet56": functools.partial(_cifar_resnet, 56, _RESNET_WIDTHS),
    "resnet8x4": functools.partial(_cifar_resnet, 8, _RESNET_X4_WIDTHS),
    "resnet32x4": functools.partial(_cifar_resnet, 32, _RESNET_X4_WIDTHS),
    "resnet18": TorchvisionResNet18,
    "mobilenet_v3_small": TorchvisionMobileNetV3Small,
    **{name: functools.partial(_text, name) for name in ("minilm-l6", "tiny-transformer", "bilstm", "bag-of-embeddings")},
}
assert _FACTORIES.keys() == ARCHS.keys(), "kdcore.model_names.ARCHS and _FACTORIES must name the same models"

MODELS: dict[str, ModelSpec] = {
    name: ModelSpec(name, ARCHS[name].description, _FACTORIES[name], ARCHS[name].needs_image)
    for name in ARCH_NAMES
}


def build_model(arch: str, input_shape: InputShape, num_classes: int) -> KDModel:
    """Build `arch` (a name in MODELS or `mlp:W1,W2,...`) for `input_shape` and `num_classes` outputs.

    Raises ModelError for an unknown name, malformed MLP widths, a conv net on non-image data,
    or a class count below 1.
    """
    input_shape = tuple(input_shape)
    check_fits(arch, input_shape)
    if num_classes < 1:
        raise ModelError(f"num_classes must be at least 1, got {num_classes}")
    if arch in MODELS:
        return MODELS[arch].factory(input_shape, num_classes)
    if timm_name(arch) is not None:
        return TimmModel(timm_name(arch), input_shape, num_classes)
    if transformer_size(arch) is not None or hf_name(arch) is not None:
        return _text(arch, input_shape, num_classes)
    return MLP(input_shape, num_classes, mlp_widths(arch))


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(param.numel() for param in model.parameters() if param.requires_grad)


def saved_parameter_count(model: nn.Module) -> int:
    """Trainable parameters of `model` as its state_dict holds them: a text student's compact token table
    (`kdcore.text_models.CompactTokenTable`) trains some rows and saves, and counts, the whole table."""
    trainable = {name for name, param in model.named_parameters() if param.requires_grad}
    return sum(tensor.numel() for name, tensor in model.state_dict().items() if name in trainable)


def parameter_count(arch: str, input_shape: InputShape, num_classes: int) -> int:
    """Trainable parameters `build_model(arch, input_shape, num_classes)` would have; cached, allocates nothing."""
    return _parameter_count(arch, tuple(input_shape), num_classes)


@functools.lru_cache(maxsize=512)
def _parameter_count(arch: str, input_shape: InputShape, num_classes: int) -> int:
    with torch.device("meta"):  # shapes only: no memory, no init cost
        return count_parameters(build_model(arch, input_shape, num_classes))


def list_models(input_shape: InputShape | None = None, num_classes: int | None = None) -> list[dict[str, Any]]:
    """One row per registered architecture: name, description, needs_image, params.

    params is the trainable parameter count for (input_shape, num_classes); None when either is
    not given or the architecture does not fit that shape.
    """
    rows = []
    for spec in MODELS.values():
        params = None
        if input_shape is not None and num_classes is not None and fits(spec.name, input_shape):
            params = parameter_count(spec.name, input_shape, num_classes)
        rows.append(
            {"name": spec.name, "description": spec.description, "needs_image": spec.needs_image, "params": params}
        )
    return rows
