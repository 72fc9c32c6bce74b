"""Attention networks: bilinear pooling, Bi-CAM, the frozen type module and ONNX parity of the exported map."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch")

from export.attention_export import INPUT_NAME, OUTPUT_NAMES, PARITY_TOLERANCE, export_graph  # noqa: E402
from export.attention_nets import (  # noqa: E402
    DESCRIPTOR_CHANNELS,
    AttentionGraph,
    DefectClassificationModule,
    bicam,
    bilinear_pool,
    build_attention_classifier,
    build_tcm,
)


def _descriptors(seed: int = 0, count: int = 3, height: int = 4, width: int = 5) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(count, DESCRIPTOR_CHANNELS, height, width, generator=generator)


def test_bilinear_pool_is_normalised_rooted_gram() -> None:
    descriptors = _descriptors()
    pooled = bilinear_pool(descriptors)

    flat = descriptors.reshape(3, DESCRIPTOR_CHANNELS, -1)
    gram = (flat @ flat.transpose(1, 2) / flat.shape[2]).reshape(3, -1)
    expected = torch.sqrt(gram + 1e-6)
    expected = expected / expected.norm(dim=1, keepdim=True)

    assert pooled.shape == (3, DESCRIPTOR_CHANNELS * DESCRIPTOR_CHANNELS)
    torch.testing.assert_close(pooled, expected)
    torch.testing.assert_close(pooled.norm(dim=1), torch.ones(3))


def test_bicam_mean_is_classifier_term_of_gram() -> None:
    descriptors = _descriptors(seed=1)
    weights = torch.randn(DESCRIPTOR_CHANNELS, DESCRIPTOR_CHANNELS, generator=torch.Generator().manual_seed(2))
    defect_map = bicam(descriptors, weights)

    flat = descriptors.reshape(3, DESCRIPTOR_CHANNELS, -1)
    gram = flat @ flat.transpose(1, 2) / flat.shape[2]
    # mean_l f_l^T W f_l = sum_ij W_ij mean_l f_i f_j
    expected = (gram * weights).sum(dim=(1, 2))

    assert defect_map.shape == (3, 4, 5)
    torch.testing.assert_close(defect_map.mean(dim=(1, 2)), expected, rtol=1e-5, atol=1e-5)
    position = descriptors[0, :, 2, 3]
    torch.testing.assert_close(defect_map[0, 2, 3], position @ weights @ position, rtol=1e-5, atol=1e-5)


def test_gap_cam_mean_is_logit_without_bias() -> None:
    module = DefectClassificationModule("gap").eval()
    descriptors = _descriptors(seed=3)
    weights = module.classifier.weight[0]
    cam = module.defect_map(descriptors)
    expected = descriptors.mean(dim=(2, 3)) @ weights
    torch.testing.assert_close(cam.mean(dim=(1, 2)), expected, rtol=1e-5, atol=1e-5)


def test_unknown_head_is_refused() -> None:
    with pytest.raises(ValueError, match="head 'max' is unknown"):
        DefectClassificationModule("max")


def test_tcm_has_output_stride_8() -> None:
    tcm = build_tcm(2).eval()
    with torch.no_grad():
        features = tcm(torch.zeros(1, 3, 64, 96))
    assert features.shape == (1, 112, 8, 12)


def test_frozen_tcm_stays_in_eval_and_drops_types() -> None:
    tcm = build_tcm(2)
    tcm.freeze()
    tcm.train()
    assert not tcm.training
    assert not any(parameter.requires_grad for parameter in tcm.parameters())
    with pytest.raises(RuntimeError, match="type classifier was dropped"):
        tcm.type_logits(torch.zeros(1, 112, 2, 2))


def test_one_type_is_refused() -> None:
    with pytest.raises(ValueError, match="at least two type folders"):
        build_tcm(1)


@pytest.mark.parametrize("head", ["bilinear", "gap"])
def test_onnx_map_matches_pytorch(head: str) -> None:
    torch.manual_seed(0)
    classifier = build_attention_classifier(2, head).eval()
    # Trained-looking weights, so the map is far from constant.
    with torch.no_grad():
        classifier.dcm.classifier.weight.normal_(0.0, 0.5)
    onnx_bytes = export_graph(classifier, (64, 64))
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])

    windows = torch.from_numpy(np.random.default_rng(0).uniform(-1, 1, (5, 3, 64, 64)).astype(np.float32))
    with torch.no_grad():
        torch_probability, torch_map = (output.numpy() for output in AttentionGraph(classifier)(windows))
    onnx_probability, onnx_map = session.run(OUTPUT_NAMES, {INPUT_NAME: windows.numpy()})

    assert onnx_map.shape == (5, 64, 64)
    assert onnx_probability.shape == (5,)
    map_range = float(torch_map.max() - torch_map.min())
    assert map_range > 0
    assert np.abs(onnx_map - torch_map).max() <= PARITY_TOLERANCE * map_range
    assert np.abs(onnx_probability - torch_probability).max() <= PARITY_TOLERANCE
