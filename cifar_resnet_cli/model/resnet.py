"""ResNet34, written to mirror ``torchvision/models/resnet.py`` name for name.

A torchvision ResNet34 state dict loads into :func:`resnet34` with ``stem="imagenet"`` one to
one, and both compute the same numbers (``cifar-resnet inspect`` proves it). The ``cifar`` stem is
the usual adaptation to 32x32 inputs (He et al., 2016, section 4.2 uses a 3x3 first layer on
CIFAR): a 3x3 stride-1 ``conv1`` and no max pool, so the last feature map is 4x4 instead of 1x1.

Deep Residual Learning for Image Recognition, He et al., 2016: https://arxiv.org/abs/1512.03385
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

Stem = Literal["imagenet", "cifar"]
STEMS: tuple[str, ...] = ("imagenet", "cifar")
RESNET34_LAYERS = (3, 4, 6, 3)
STAGES = ("layer1", "layer2", "layer3", "layer4")
FEATURE_DIM = 512


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding; no bias, a BatchNorm follows."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution: the projection shortcut where the shape changes."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions and a shortcut; ResNet18/34 use it (``expansion = 1``)."""

    expansion: int = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x

        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)

        out = self.conv2(out)
        out = self.bn2(out)

        if self.downsample is not None:
            identity = self.downsample(x)

        out += identity
        out = self.relu(out)
        return out


class ResNet(nn.Module):
    """The ResNet body of torchvision with a choice of stem.

    Attribute names (``conv1, bn1, relu, maxpool, layer1..layer4, avgpool, fc``) are torchvision's,
    so state dicts map one to one. :meth:`train` keeps the BatchNorm layers of a frozen backbone in
    eval mode, so their running statistics do not move during feature extraction.
    """

    def __init__(
        self,
        layers: tuple[int, int, int, int] = RESNET34_LAYERS,
        *,
        num_classes: int = 1000,
        stem: str = "imagenet",
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        if stem not in STEMS:
            raise ValueError(f"unknown stem {stem!r}; choose one of {', '.join(STEMS)}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}")
        self.stem = stem
        self.backbone_frozen = False
        self.inplanes = 64

        if stem == "imagenet":
            # 7x7/2 conv then 3x3/2 max pool: 224 px -> 56 px before layer1 (torchvision).
            conv1 = nn.Conv2d(3, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
            maxpool: nn.Module = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        else:
            # 3x3/1 conv, no pooling: 32 px stays 32 px before layer1, 4x4 after layer4.
            conv1 = conv3x3(3, self.inplanes)
            maxpool = nn.Identity()
        self.conv1 = conv1
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = maxpool
        self.layer1 = self._make_layer(64, layers[0])
        self.layer2 = self._make_layer(128, layers[1], stride=2)
        self.layer3 = self._make_layer(256, layers[2], stride=2)
        self.layer4 = self._make_layer(512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * BasicBlock.expansion, num_classes)

        # torchvision's initialisation: He-normal convolutions, unit BatchNorm.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        # Zero-initialise the last BN of each residual branch, so each block starts as identity
        # (Goyal et al., 2017, https://arxiv.org/abs/1706.02677).
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, BasicBlock):
                    nn.init.constant_(m.bn2.weight, 0)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * BasicBlock.expansion:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * BasicBlock.expansion, stride),
                nn.BatchNorm2d(planes * BasicBlock.expansion),
            )
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * BasicBlock.expansion
        for _ in range(1, blocks):
            layers.append(BasicBlock(self.inplanes, planes))
        return nn.Sequential(*layers)

    def forward_features(self, x: Tensor) -> Tensor:
        """The pooled 512-d features: everything but ``fc``."""
        x = self.conv1(x)
        x = self.bn1(x)
        x = self.relu(x)
        x = self.maxpool(x)

        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.layer4(x)

        x = self.avgpool(x)
        return torch.flatten(x, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.forward_features(x))

    def train(self, mode: bool = True) -> ResNet:
        super().train(mode)
        if mode and self.backbone_frozen:
            for module in backbone_modules(self):
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self


def resnet34(*, num_classes: int = 1000, stem: str = "imagenet", zero_init_residual: bool = False) -> ResNet:
    """ResNet34 (3, 4, 6, 3 BasicBlocks), random-initialised as torchvision does."""
    return ResNet(RESNET34_LAYERS, num_classes=num_classes, stem=stem, zero_init_residual=zero_init_residual)


def backbone_modules(model: ResNet) -> list[nn.Module]:
    """Every module except the classification head ``fc`` (and the root)."""
    return [m for name, m in model.named_modules() if name and name != "fc" and not name.startswith("fc.")]


def replace_head(model: ResNet, num_classes: int, *, generator: torch.Generator | None = None) -> ResNet:
    """Put a new ``fc`` for ``num_classes`` on the model, initialised as ``nn.Linear`` does.

    With a ``generator`` the initialisation is reproducible without touching the global RNG.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    fc = nn.Linear(model.fc.in_features, num_classes)
    if generator is not None:
        # nn.Linear's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias.
        bound = 1.0 / model.fc.in_features**0.5
        with torch.no_grad():
            fc.weight.uniform_(-bound, bound, generator=generator)
            fc.bias.uniform_(-bound, bound, generator=generator)
    fc.to(device=model.fc.weight.device, dtype=model.fc.weight.dtype)
    model.fc = fc
    return model


def freeze_backbone(model: ResNet) -> ResNet:
    """Feature extraction: only ``fc`` trains; backbone BatchNorm stays in eval mode for good."""
    for module in backbone_modules(model):
        for p in module.parameters(recurse=False):
            p.requires_grad_(False)
    model.backbone_frozen = True
    return model.train(model.training)


def unfreeze_backbone(model: ResNet) -> ResNet:
    """Fine-tuning: every parameter trains, BatchNorm follows ``model.train()`` again."""
    for p in model.parameters():
        p.requires_grad_(True)
    model.backbone_frozen = False
    return model.train(model.training)
