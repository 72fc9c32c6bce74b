"""Tile classifiers: a CNN body cut at stride 16, a small head, and the class activation map of the defect class.

The bodies follow the published architectures with torchvision's module names, so local
torchvision state dicts load with strict key matching: EfficientNet-Lite0 (bundled ImageNet
weights), SqueezeNet 1.1 and ResNet-18 (from scratch, or from `--weights`).
"""

from __future__ import annotations

from pathlib import Path

import structlog
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from export.backbones import EfficientNetLite0, ResNet, BasicBlock, build_network, load_weights

log = structlog.get_logger(__name__)

ARCHITECTURES = ("efficientnet_lite0", "squeezenet1_1", "resnet18")
HEAD_CHANNELS = 128
CLASS_COUNT = 2
DEFECT_CLASS = 1


class Fire(nn.Module):
    """SqueezeNet Fire module: a 1x1 squeeze, then 1x1 and 3x3 expansions concatenated."""

    def __init__(self, in_channels: int, squeeze: int, expand1x1: int, expand3x3: int) -> None:
        super().__init__()
        self.squeeze = nn.Conv2d(in_channels, squeeze, 1)
        self.squeeze_activation = nn.ReLU(inplace=True)
        self.expand1x1 = nn.Conv2d(squeeze, expand1x1, 1)
        self.expand1x1_activation = nn.ReLU(inplace=True)
        self.expand3x3 = nn.Conv2d(squeeze, expand3x3, 3, padding=1)
        self.expand3x3_activation = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        x = self.squeeze_activation(self.squeeze(x))
        return torch.cat(
            [self.expand1x1_activation(self.expand1x1(x)), self.expand3x3_activation(self.expand3x3(x))], dim=1
        )


class SqueezeNet11(nn.Module):
    """SqueezeNet 1.1 ImageNet classifier (Iandola et al. 2016, the v1.1 layout of torchvision).

    `features` ends at stride 16 with 512 channels. Its convolutions and pools are unpadded,
    so a 96 px input gives a 5x5 map.
    """

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 3, stride=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, ceil_mode=True),
            Fire(64, 16, 64, 64),
            Fire(128, 16, 64, 64),
            nn.MaxPool2d(3, stride=2, ceil_mode=True),
            Fire(128, 32, 128, 128),
            Fire(256, 32, 128, 128),
            nn.MaxPool2d(3, stride=2, ceil_mode=True),
            Fire(256, 48, 192, 192),
            Fire(384, 48, 192, 192),
            Fire(384, 64, 256, 256),
            Fire(512, 64, 256, 256),
        )
        self.classifier = nn.Sequential(
            nn.Dropout(p=0.5), nn.Conv2d(512, num_classes, 1), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1)
        )

    def forward(self, x: Tensor) -> Tensor:
        return torch.flatten(self.classifier(self.features(x)), 1)


class TileClassifier(nn.Module):
    """Body, a 1x1 convolution head and a linear classifier on the average-pooled head features.

    forward() returns (logits [N, 2], head features [N, C, h, w]). Because the classifier is
    linear after global average pooling, the defect class's logit is the spatial mean of its
    class activation map before ReLU, plus the bias, so the CAM locates what raised the tile's score.

    `frozen` modules (early stages of a pretrained body) keep their weights and BatchNorm
    statistics during training.
    """

    def __init__(self, body: nn.Module, body_channels: int, frozen: list[nn.Module], normalization: str) -> None:
        super().__init__()
        self.body = body
        self.head = nn.Sequential(
            nn.Conv2d(body_channels, HEAD_CHANNELS, 1, bias=False), nn.BatchNorm2d(HEAD_CHANNELS), nn.ReLU(inplace=True)
        )
        self.dropout = nn.Dropout(p=0.2)
        self.classifier = nn.Linear(HEAD_CHANNELS, CLASS_COUNT)
        self.normalization = normalization
        self._frozen = frozen
        for module in frozen:
            module.requires_grad_(False)

    def train(self, mode: bool = True) -> TileClassifier:
        super().train(mode)
        for module in self._frozen:
            module.eval()
        return self

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        features = self.head(self.body(x))
        logits = self.classifier(self.dropout(features.mean(dim=(2, 3))))
        return logits, features

    def defect_cam(self, features: Tensor) -> Tensor:
        """Return the defect class's activation map [N, h, w], after ReLU and not normalised."""
        weights = self.classifier.weight[DEFECT_CLASS]
        return F.relu(torch.einsum("c,nchw->nhw", weights, features))


class TileClassifierGraph(nn.Module):
    """The exported graph: `tiles` [N, 3, H, W] to `defect_probability` [N] and `cam` [N, h, w]."""

    def __init__(self, classifier: TileClassifier) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, tiles: Tensor) -> tuple[Tensor, Tensor]:
        logits, features = self.classifier(tiles)
        probability = torch.softmax(logits, dim=1)[:, DEFECT_CLASS]
        return probability, self.classifier.defect_cam(features)


def build_tile_classifier(arch: str, weights_path: Path | None = None) -> TileClassifier:
    """Build a tile classifier; EfficientNet-Lite0 starts from its bundled ImageNet weights, the others
    from `weights_path` (a torchvision state dict of the whole network) or from scratch.

    With pretrained weights the stride-4 stages stay frozen, because their generic edge filters
    need no retraining on a few hundred parts and the backward pass skips them.
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"--arch {arch!r} is unknown; use one of {', '.join(ARCHITECTURES)}")

    if arch == "efficientnet_lite0":
        network = build_network(arch, weights_path)
        assert isinstance(network, EfficientNetLite0)
        stem = nn.Sequential(network._conv_stem, network._bn0, nn.ReLU6())
        body = nn.Sequential(stem, *network._blocks[:11])
        classifier = TileClassifier(body, 112, [stem, *network._blocks[:3]], "tf")
    elif arch == "squeezenet1_1":
        network = SqueezeNet11()
        if weights_path is not None:
            load_weights(network, Path(weights_path), arch)
        frozen = list(network.features[:3]) if weights_path is not None else []
        classifier = TileClassifier(network.features, 512, frozen, "imagenet")
    else:
        network = ResNet(BasicBlock, (2, 2, 2, 2))
        if weights_path is not None:
            load_weights(network, Path(weights_path), arch)
        stem = nn.Sequential(network.conv1, network.bn1, network.relu, network.maxpool)
        body = nn.Sequential(stem, network.layer1, network.layer2, network.layer3)
        frozen = [stem, network.layer1] if weights_path is not None else []
        classifier = TileClassifier(body, 256, frozen, "imagenet")

    if weights_path is not None:
        weights = str(weights_path)
    elif arch == "efficientnet_lite0":
        weights = "bundled ImageNet"
    else:
        weights = "none"
    trainable = sum(parameter.numel() for parameter in classifier.parameters() if parameter.requires_grad)
    log.info("tile classifier built", arch=arch, weights=weights, trainable_parameters=trainable)
    return classifier
