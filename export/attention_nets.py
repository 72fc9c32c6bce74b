"""Object-level attention networks for radiographs: type module, defect module, and their activation maps.

Every window is first standardised (its own mean and standard deviation), because exposure
differs between series of radiographs. The Type Classification Module (TCM) is EfficientNet-Lite0
cut after its stride-16 stage, with the stride of block 5 removed. A 128 px window thus gives a
16 x 16 feature map of 112 channels, at output stride 8 because the defects are a few tens of
pixels. The TCM is first trained to tell
the casting types apart, so its features describe the casting and ignore the background.
Its type classifier is then dropped and its weights are frozen.

The Defect Classification Module (DCM) reads the TCM features:

    3x3 conv 112 -> 128, BatchNorm, ReLU        defect features at the TCM's resolution
    1x1 conv 128 -> D = 32, BatchNorm, ReLU     f_l, the descriptor at position l
    bilinear pooling                            z = mean_l f_l f_l^T  (D x D)
    signed square root, L2 normalisation        s = sqrt(z) / ||sqrt(z)||  (z >= 0, as f >= 0)
    dropout 0.3, linear D*D -> 1                the defect logit

Bi-CAM: with W the linear weights reshaped to D x D, the defect map is M(l) = f_l^T W f_l,
whose mean over positions is the logit's linear term before the square root and the
normalisation. The GAP head of the comparison replaces the pooling by the mean of f_l and
its map is the plain CAM w . f_l.

D = 32 keeps the bilinear vector at 1,024 values for a few thousand training windows; the
3x3 convolution gives the DCM enough capacity to learn defect features from frozen TCM
features. Hu and Wang (IEEE Transactions on Industrial Electronics, 2020) do not publish their
layer sizes, so these are chosen here.
"""

from __future__ import annotations

from pathlib import Path

import structlog
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from export.backbones import EfficientNetLite0, build_network

log = structlog.get_logger(__name__)

HEADS = ("bilinear", "gap")
TCM_CHANNELS = 112
DCM_CHANNELS = 128
DESCRIPTOR_CHANNELS = 32
# Keeps the square root's gradient finite where a pooled value is 0.
SQRT_EPSILON = 1e-6
DROPOUT = 0.3
NORMALIZATION = "tf"
# In the tf normalisation's units (1 = 128 grey levels): about 2.5 grey levels.
STD_FLOOR = 0.02


def standardised(windows: Tensor) -> Tensor:
    """Subtract each window's mean and divide by its standard deviation plus STD_FLOOR.

    Exposure and tube voltage differ between series of radiographs. Standardising each window
    in the graph keeps those differences from the classifier and stretches the faint contrast
    of small defects. The floor keeps flat background windows from amplifying their noise.
    """
    mean = windows.mean(dim=(1, 2, 3), keepdim=True)
    std = ((windows - mean) ** 2).mean(dim=(1, 2, 3), keepdim=True).sqrt()
    return (windows - mean) / (std + STD_FLOOR)


class TypeClassificationModule(nn.Module):
    """EfficientNet-Lite0 body at output stride 8 and a type classifier on its average-pooled features.

    `frozen` is set by freeze(): every weight and BatchNorm statistic stays as trained.
    The stem and the first three blocks keep their ImageNet weights throughout, because
    their edge filters need no retraining on a few hundred radiographs.
    """

    def __init__(self, body: nn.Sequential, fixed: list[nn.Module], type_count: int) -> None:
        super().__init__()
        self.body = body
        self.type_classifier: nn.Linear | None = nn.Linear(TCM_CHANNELS, type_count)
        self._fixed = fixed
        self.frozen = False
        for module in fixed:
            module.requires_grad_(False)

    def train(self, mode: bool = True) -> TypeClassificationModule:
        super().train(False if self.frozen else mode)
        for module in self._fixed:
            module.eval()
        return self

    def forward(self, x: Tensor) -> Tensor:
        """Return the feature map [N, 112, H/8, W/8] of the standardised windows."""
        return self.body(standardised(x))

    def type_logits(self, features: Tensor) -> Tensor:
        if self.type_classifier is None:
            raise RuntimeError("the type classifier was dropped after stage 1; the TCM now only gives features")
        return self.type_classifier(features.mean(dim=(2, 3)))

    def freeze(self) -> None:
        """Drop the type classifier and freeze the body: stage 2 trains the DCM on fixed features."""
        self.type_classifier = None
        self.requires_grad_(False)
        self.frozen = True
        self.eval()


class DefectClassificationModule(nn.Module):
    """Defect features, bilinear (or average) pooling and the defect logit, with the matching map."""

    def __init__(self, head: str = "bilinear") -> None:
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"head {head!r} is unknown; use one of {', '.join(HEADS)}")
        self.head = head
        self.features = nn.Sequential(
            nn.Conv2d(TCM_CHANNELS, DCM_CHANNELS, 3, padding=1, bias=False),
            nn.BatchNorm2d(DCM_CHANNELS),
            nn.ReLU(inplace=True),
            nn.Conv2d(DCM_CHANNELS, DESCRIPTOR_CHANNELS, 1, bias=False),
            nn.BatchNorm2d(DESCRIPTOR_CHANNELS),
            nn.ReLU(inplace=True),
        )
        pooled = DESCRIPTOR_CHANNELS * DESCRIPTOR_CHANNELS if head == "bilinear" else DESCRIPTOR_CHANNELS
        self.dropout = nn.Dropout(p=DROPOUT)
        self.classifier = nn.Linear(pooled, 1)

    def forward(self, tcm_features: Tensor) -> tuple[Tensor, Tensor]:
        """Return the defect logit [N] and the descriptors f [N, D, h, w]."""
        descriptors = self.features(tcm_features)
        pooled = bilinear_pool(descriptors) if self.head == "bilinear" else descriptors.mean(dim=(2, 3))
        logit = self.classifier(self.dropout(pooled)).squeeze(1)
        return logit, descriptors

    def defect_map(self, descriptors: Tensor) -> Tensor:
        """Return the defect map [N, h, w]: Bi-CAM f^T W f for the bilinear head, CAM w . f for GAP."""
        weights = self.classifier.weight[0]
        if self.head == "gap":
            return torch.einsum("d,ndhw->nhw", weights, descriptors)
        return bicam(descriptors, weights.view(DESCRIPTOR_CHANNELS, DESCRIPTOR_CHANNELS))


def bilinear_pool(descriptors: Tensor) -> Tensor:
    """Return the average outer product of the descriptors over positions, signed-square-rooted and L2-normalised: [N, D*D]."""
    count, channels, height, width = descriptors.shape
    flat = descriptors.reshape(count, channels, height * width)
    gram = torch.bmm(flat, flat.transpose(1, 2)) / float(height * width)
    gram = gram.reshape(count, channels * channels)
    rooted = torch.sign(gram) * torch.sqrt(gram.abs() + SQRT_EPSILON)
    return F.normalize(rooted, dim=1)


def bicam(descriptors: Tensor, weight_matrix: Tensor) -> Tensor:
    """Return M(l) = f_l^T W f_l for every position l: [N, h, w].

    Written as a 1x1 convolution by W followed by a channel-wise product and sum, which the
    ONNX exporter turns into Conv, Mul and ReduceSum.
    """
    projected = F.conv2d(descriptors, weight_matrix[:, :, None, None])
    return (descriptors * projected).sum(dim=1)


class AttentionClassifier(nn.Module):
    """TCM followed by DCM; forward() returns the defect logit [N] and the descriptors."""

    def __init__(self, tcm: TypeClassificationModule, dcm: DefectClassificationModule) -> None:
        super().__init__()
        self.tcm = tcm
        self.dcm = dcm
        self.normalization = NORMALIZATION

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.dcm(self.tcm(x))


class AttentionGraph(nn.Module):
    """The exported graph: `windows` [N, 3, H, W] to `defect_probability` [N] and `bicam` [N, H, W].

    The map is computed at the feature resolution and resized to the input with bilinear
    interpolation inside the graph, so the daemon receives it at window size.
    """

    def __init__(self, classifier: AttentionClassifier) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, windows: Tensor) -> tuple[Tensor, Tensor]:
        logit, descriptors = self.classifier(windows)
        defect_map = self.classifier.dcm.defect_map(descriptors)
        resized = F.interpolate(defect_map[:, None], size=windows.shape[2:], mode="bilinear", align_corners=False)
        return torch.sigmoid(logit), resized[:, 0]


def build_tcm(type_count: int, weights_path: Path | None = None) -> TypeClassificationModule:
    """Build the TCM from EfficientNet-Lite0 with ImageNet weights (bundled, or `weights_path`)."""
    if type_count < 2:
        raise ValueError(f"the type dataset has {type_count} type(s); stage 1 needs at least two type folders")
    network = build_network("efficientnet_lite0", weights_path)
    assert isinstance(network, EfficientNetLite0)
    # Block 5 is the first of the stride-16 stage; without its stride the remaining blocks
    # run at stride 8 with their ImageNet weights.
    network._blocks[5]._depthwise_conv.stride = (1, 1)
    stem = nn.Sequential(network._conv_stem, network._bn0, nn.ReLU6())
    body = nn.Sequential(stem, *network._blocks[:11])
    return TypeClassificationModule(body, [stem, *network._blocks[:3]], type_count)


def build_attention_classifier(
    type_count: int, head: str = "bilinear", weights_path: Path | None = None
) -> AttentionClassifier:
    classifier = AttentionClassifier(build_tcm(type_count, weights_path), DefectClassificationModule(head))
    trainable = sum(parameter.numel() for parameter in classifier.parameters() if parameter.requires_grad)
    log.info("attention classifier built", head=head, trainable_parameters=trainable)
    return classifier
