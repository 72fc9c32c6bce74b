import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from export.padim import (  # noqa: E402
    GaussianAccumulator,
    PadimGraph,
    _normal_quantile,
    image_threshold_from_good,
    invert_covariances,
    pixel_threshold_from_good,
    select_channels,
)


class TinyBackbone(torch.nn.Module):
    """Three fixed feature maps at strides 4, 8 and 16, enough to check the PaDiM arithmetic."""

    channels = [2, 3, 4]
    layer_names = ["a", "b", "c"]

    def forward(self, images):
        return [
            torch.nn.functional.avg_pool2d(images[:, :2], 4),
            torch.nn.functional.avg_pool2d(images, 8),
            torch.nn.functional.avg_pool2d(torch.cat([images, images[:, :1]], dim=1), 16),
        ]


def random_spd(count, size, seed=0):
    generator = np.random.default_rng(seed)
    factors = generator.normal(size=(count, size, size))
    return factors @ factors.transpose(0, 2, 1) + 0.01 * np.eye(size)


def test_inverse_matches_identity():
    covariance = random_spd(50, 40)
    inverse = invert_covariances(covariance)
    np.testing.assert_allclose(covariance @ inverse, np.broadcast_to(np.eye(40), covariance.shape), atol=1e-6)
    np.testing.assert_allclose(inverse, inverse.transpose(0, 2, 1))


def test_inverse_with_threads_does_not_hang():
    # Regression: batched torch.linalg.inv with several threads hung on torch 2.13/2.14 CPU builds.
    script = (
        "import numpy as np, torch; torch.set_num_threads(2);"
        "from export.padim import invert_covariances;"
        "g=np.random.default_rng(1); a=g.normal(size=(3136,100,100)); c=a@a.transpose(0,2,1)/100+0.01*np.eye(100);"
        "i=invert_covariances(c); print(float(np.abs(c[:8]@i[:8]-np.eye(100)).max()))"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr
    assert float(result.stdout.strip()) < 1e-6
    assert "DLASWP" not in result.stderr


def test_accumulator_matches_numpy_covariance():
    generator = np.random.default_rng(2)
    embeddings = generator.normal(size=(12, 3, 2, 2)).astype(np.float32)
    accumulator = GaussianAccumulator(channels=3, positions=4)
    accumulator.add(torch.from_numpy(embeddings[:5]))
    accumulator.add(torch.from_numpy(embeddings[5:]))
    mean, covariance = accumulator.mean_and_covariance()
    vectors = embeddings.reshape(12, 3, 4)
    for position in range(4):
        np.testing.assert_allclose(mean[position], vectors[:, :, position].mean(axis=0), rtol=1e-6)
        expected = np.cov(vectors[:, :, position], rowvar=False) + 0.01 * np.eye(3)
        np.testing.assert_allclose(covariance[position], expected, rtol=1e-5, atol=1e-7)


def test_accumulator_needs_two_images():
    accumulator = GaussianAccumulator(channels=2, positions=1)
    accumulator.add(torch.zeros(1, 2, 1, 1))
    with pytest.raises(ValueError, match="at least 2 fitting images"):
        accumulator.mean_and_covariance()


def test_graph_distance_matches_reference():
    generator = np.random.default_rng(3)
    backbone = TinyBackbone()
    channel_indices = np.array([0, 2, 5, 8])
    positions = 4 * 4
    mean = generator.normal(size=(positions, 4))
    inverse = invert_covariances(random_spd(positions, 4, seed=4))
    graph = PadimGraph(backbone, channel_indices, mean, inverse, (16, 16), sigma=0.5)
    image = torch.from_numpy(generator.normal(size=(1, 3, 16, 16)).astype(np.float32))

    features = backbone(image)
    upsampled = [features[0]] + [torch.nn.functional.interpolate(f, size=(4, 4), mode="nearest") for f in features[1:]]
    embedding = torch.cat(upsampled, 1)[0, channel_indices].reshape(4, -1).numpy().T
    delta = embedding - mean
    expected = np.sqrt(np.einsum("pc,pcd,pd->p", delta, inverse, delta)).reshape(4, 4)

    graph.blur_rows.fill_(0)
    graph.blur_columns.fill_(0)
    center = graph.blur_padding
    graph.blur_rows[..., center] = 1
    graph.blur_columns[..., center, :] = 1
    anomaly_map, score = graph(image)
    coarse = torch.nn.functional.interpolate(torch.from_numpy(expected[None, None]).float(), size=(16, 16),
                                             mode="bilinear", align_corners=False)
    np.testing.assert_allclose(anomaly_map.detach().numpy(), coarse.numpy(), rtol=1e-4, atol=1e-5)
    assert float(score[0]) == pytest.approx(float(coarse.max()), rel=1e-5)


def test_channel_selection_seeded_and_sorted():
    first = select_channels(176, 100, seed=0)
    assert len(first) == 100
    assert np.all(np.diff(first) > 0)
    np.testing.assert_array_equal(first, select_channels(176, 100, seed=0))
    assert not np.array_equal(first, select_channels(176, 100, seed=1))
    np.testing.assert_array_equal(select_channels(10, None, 0), np.arange(10))


def test_normal_quantile_known_values():
    assert _normal_quantile(0.5) == pytest.approx(0.0, abs=1e-9)
    assert _normal_quantile(0.995) == pytest.approx(2.5758293, rel=1e-6)
    assert _normal_quantile(0.01) == pytest.approx(-2.3263479, rel=1e-6)


def test_image_threshold_never_below_good_maximum():
    scores = np.array([1.0, 1.1, 0.9, 1.05, 5.0])
    estimate = image_threshold_from_good(scores, 0.005)
    assert estimate.value > 5.0
    assert estimate.details["calibration_images"] == 5


def test_pixel_threshold_is_quantile():
    maps = np.linspace(0, 1, 10001, dtype=np.float32).reshape(1, 1, -1)
    estimate = pixel_threshold_from_good(maps, 0.01)
    assert estimate.value == pytest.approx(0.99, abs=1e-4)


def test_channel_count_above_total_rejected():
    with pytest.raises(ValueError, match="use a number from 1 to 176"):
        select_channels(176, 500, seed=0)
