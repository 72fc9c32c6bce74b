"""PaDiM: fit a per-position Gaussian of backbone features on good parts, export it as ONNX.

Defard et al., "PaDiM: a Patch Distribution Modeling Framework for Anomaly Detection and
Localization" (ICPR 2021). Features of three backbone stages (strides 4, 8 and 16) are
nearest-upsampled to the stride-4 grid and concatenated. A seeded random subset of channels is
kept, and every grid position gets a mean and a covariance (plus 0.01 times the identity). The
exported graph returns the Mahalanobis-distance anomaly map, bilinearly upsampled to the input
size and smoothed with a Gaussian of sigma 4, and the image score, the map's maximum.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from export.backbones import FeatureExtractor

COVARIANCE_REGULARIZATION = 0.01
GAUSSIAN_SIGMA = 4.0
FEATURE_STRIDE = 4


def select_channels(total: int, count: int | None, seed: int) -> np.ndarray:
    """Return the sorted channel indices kept, drawn without replacement with a seeded generator."""
    if count is None:
        return np.arange(total)
    if not 1 <= count <= total:
        raise ValueError(
            f"--channels {count} is invalid: the backbone's three stages have {total} channels; "
            f"use a number from 1 to {total}, or 0 to keep all"
        )
    if count == total:
        return np.arange(total)
    generator = np.random.default_rng(seed)
    return np.sort(generator.choice(total, size=count, replace=False))


def embed(backbone: FeatureExtractor, images: torch.Tensor, channel_indices: torch.Tensor) -> torch.Tensor:
    """Return the stride-4 embedding (N, C, H/4, W/4) of the selected channels."""
    features = backbone(images)
    grid = features[0].shape[-2:]
    upsampled = [features[0]] + [F.interpolate(feature, size=grid, mode="nearest") for feature in features[1:]]
    return torch.cat(upsampled, dim=1).index_select(1, channel_indices)


class GaussianAccumulator:
    """Streaming per-position mean and covariance of embeddings, in float64."""

    def __init__(self, channels: int, positions: int) -> None:
        self.count = 0
        self.sum = torch.zeros(positions, channels, dtype=torch.float64)
        self.outer_sum = torch.zeros(positions, channels, channels, dtype=torch.float64)

    def add(self, embedding: torch.Tensor) -> None:
        batch, channels = embedding.shape[:2]
        vectors = embedding.reshape(batch, channels, -1).permute(2, 0, 1).to(torch.float64)
        self.sum += vectors.sum(dim=1)
        self.outer_sum += torch.bmm(vectors.transpose(1, 2), vectors)
        self.count += batch

    def mean_and_covariance(self) -> tuple[np.ndarray, np.ndarray]:
        """Return (P, C) means and (P, C, C) unbiased covariances plus the regularisation."""
        if self.count < 2:
            raise ValueError(f"PaDiM needs at least 2 fitting images, got {self.count}; add good images")
        mean = self.sum / self.count
        covariance = (self.outer_sum - self.count * mean.unsqueeze(2) * mean.unsqueeze(1)) / (self.count - 1)
        identity = torch.eye(covariance.shape[-1], dtype=torch.float64)
        covariance = covariance + COVARIANCE_REGULARIZATION * identity
        return mean.numpy(), covariance.numpy()


def invert_covariances(covariance: np.ndarray) -> np.ndarray:
    """Invert (P, C, C) symmetric positive-definite matrices in float64 through Cholesky factors.

    NOTE: batched `torch.linalg.inv` with more than one thread printed oneMKL DLASWP errors and
    hung with the torch 2.13 and 2.14 CPU builds, so the inversion runs in numpy instead:
    cov = L Lᵀ, so cov⁻¹ = L⁻ᵀ L⁻¹, with L⁻¹ from a solve against the identity.
    """
    covariance = np.asarray(covariance, dtype=np.float64)
    lower = np.linalg.cholesky(covariance)
    identity = np.broadcast_to(np.eye(covariance.shape[-1]), covariance.shape)
    lower_inverse = np.linalg.solve(lower, identity)
    inverse = np.matmul(lower_inverse.transpose(0, 2, 1), lower_inverse)
    return 0.5 * (inverse + inverse.transpose(0, 2, 1))


def gaussian_kernel_1d(sigma: float) -> torch.Tensor:
    radius = int(4.0 * sigma + 0.5)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return (kernel / kernel.sum()).to(torch.float32)


class PadimGraph(nn.Module):
    """The exported network: preprocessed image in, anomaly map and image score out."""

    def __init__(
        self,
        backbone: FeatureExtractor,
        channel_indices: np.ndarray,
        mean: np.ndarray,
        inverse_covariance: np.ndarray,
        input_size: tuple[int, int],
        sigma: float = GAUSSIAN_SIGMA,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.input_size = input_size
        self.register_buffer("channel_indices", torch.as_tensor(channel_indices, dtype=torch.long))
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("inverse_covariance", torch.as_tensor(inverse_covariance, dtype=torch.float32))
        kernel = gaussian_kernel_1d(sigma)
        self.blur_padding = kernel.numel() // 2
        self.register_buffer("blur_rows", kernel.reshape(1, 1, 1, -1))
        self.register_buffer("blur_columns", kernel.reshape(1, 1, -1, 1))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embedding = embed(self.backbone, images, self.channel_indices)
        batch, channels, grid_height, grid_width = embedding.shape

        # Mahalanobis distance per position: sqrt(dᵀ Σ⁻¹ d) with d = x - μ, batched over positions.
        delta = embedding.reshape(batch, channels, -1).permute(2, 1, 0) - self.mean.unsqueeze(2)
        weighted = torch.bmm(self.inverse_covariance, delta)
        squared = (delta * weighted).sum(dim=1).clamp(min=0.0)
        distances = torch.sqrt(squared).permute(1, 0).reshape(batch, 1, grid_height, grid_width)

        upsampled = F.interpolate(distances, size=self.input_size, mode="bilinear", align_corners=False)
        anomaly_map = self._blur(upsampled)
        image_score = anomaly_map.amax(dim=(1, 2, 3))
        return anomaly_map, image_score

    def _blur(self, maps: torch.Tensor) -> torch.Tensor:
        padding = self.blur_padding
        maps = F.conv2d(F.pad(maps, (padding, padding, 0, 0), mode="reflect"), self.blur_rows)
        return F.conv2d(F.pad(maps, (0, 0, padding, padding), mode="reflect"), self.blur_columns)


@dataclass
class ThresholdEstimate:
    value: float
    details: dict


def image_threshold_from_good(scores: np.ndarray, target_false_reject: float) -> ThresholdEstimate:
    """Set the image threshold from image scores of held-out good parts.

    A few dozen held-out images cannot resolve a false-reject rate of 0.5% empirically, so a
    normal distribution is fitted to the scores and the threshold is its (1 - R) quantile. It
    is never below the highest held-out good score, so no held-out good part fails.
    """
    scores = np.asarray(scores, dtype=np.float64)
    z = _normal_quantile(1.0 - target_false_reject)
    mean = float(scores.mean())
    std = float(scores.std(ddof=1)) if scores.size > 1 else 0.0
    gaussian = mean + z * std
    # A part fails at score >= threshold, so the threshold sits just above the highest good score.
    value = max(gaussian, float(np.nextafter(scores.max(), np.inf)))
    return ThresholdEstimate(
        value=value,
        details={
            "method": "normal fit to held-out good image scores, (1 - R) quantile, at least their maximum",
            "target_false_reject": target_false_reject,
            "calibration_images": int(scores.size),
            "good_score_mean": mean,
            "good_score_std": std,
            "good_score_max": float(scores.max()),
            "z": z,
        },
    )


def pixel_threshold_from_good(maps: np.ndarray, target_false_reject: float) -> ThresholdEstimate:
    """Set the pixel threshold as the (1 - R) quantile of anomaly-map pixels of held-out good parts."""
    pixels = np.asarray(maps, dtype=np.float32).ravel()
    value = float(np.quantile(pixels, 1.0 - target_false_reject))
    return ThresholdEstimate(
        value=value,
        details={
            "method": "empirical (1 - R) quantile of held-out good anomaly-map pixels",
            "target_false_positive_pixels": target_false_reject,
            "calibration_pixels": int(pixels.size),
        },
    )


def _normal_quantile(probability: float) -> float:
    """Inverse of the standard normal CDF (Acklam's rational approximation, relative error < 1.2e-9)."""
    if not 0.0 < probability < 1.0:
        raise ValueError(f"probability {probability} must lie strictly between 0 and 1")
    a = (-3.969683028665376e01, 2.209460984245205e02, -2.759285104469687e02, 1.383577518672690e02, -3.066479806614716e01, 2.506628277459239e00)
    b = (-5.447609879822406e01, 1.615858368580409e02, -1.556989798598866e02, 6.680131188771972e01, -1.328068155288572e01)
    c = (-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e00, -2.549732539343734e00, 4.374664141464968e00, 2.938163982698783e00)
    d = (7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e00, 3.754408661907416e00)
    low = 0.02425
    if probability < low:
        q = math.sqrt(-2 * math.log(probability))
        return (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) / ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1)
    if probability > 1 - low:
        return -_normal_quantile(1 - probability)
    q = probability - 0.5
    r = q * q
    return (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q / (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1)
