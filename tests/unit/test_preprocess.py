import numpy as np
import pytest

from edge.preprocess.transform import NORMALIZATIONS, PreprocessError, PreprocessSpec, Preprocessor, Roi


def test_tf_normalisation_maps_pixel_range():
    preprocessor = Preprocessor(PreprocessSpec.with_normalization(16, "tf"))
    black = preprocessor(np.zeros((40, 30, 3), np.uint8))
    white = preprocessor(np.full((40, 30, 3), 255, np.uint8))
    assert black.shape == (1, 3, 16, 16)
    assert black.dtype == np.float32
    np.testing.assert_allclose(black, -127.5 / 128, atol=1e-6)
    np.testing.assert_allclose(white, 127.5 / 128, atol=1e-6)


def test_imagenet_normalisation_per_channel():
    preprocessor = Preprocessor(PreprocessSpec.with_normalization(8, "imagenet"))
    tensor = preprocessor(np.full((8, 8, 3), 255, np.uint8))
    mean, std = NORMALIZATIONS["imagenet"]
    for channel in range(3):
        np.testing.assert_allclose(tensor[0, channel], (1.0 - mean[channel]) / std[channel], rtol=1e-5)


def test_colour_order_rgb_swaps_bgr_frame():
    preprocessor = Preprocessor(PreprocessSpec.with_normalization(8, "tf"))
    frame = np.zeros((8, 8, 3), np.uint8)
    frame[..., 0] = 255  # blue in OpenCV's BGR order
    tensor = preprocessor(frame)
    assert tensor[0, 2].mean() > 0.9
    assert tensor[0, 0].mean() < -0.9


def test_grey_frame_becomes_three_channels():
    preprocessor = Preprocessor(PreprocessSpec.with_normalization(8, "tf"))
    assert preprocessor(np.zeros((20, 20), np.uint8)).shape == (1, 3, 8, 8)


def test_roi_crops_before_resize():
    frame = np.zeros((100, 100, 3), np.uint8)
    frame[10:30, 50:90] = 255
    preprocessor = Preprocessor(PreprocessSpec.with_normalization(8, "tf"), roi=Roi(50, 10, 40, 20))
    np.testing.assert_allclose(preprocessor(frame), 127.5 / 128, atol=1e-6)
    assert preprocessor.map_to_frame(frame.shape) == (5.0, 2.5, 50, 10)


def test_roi_outside_frame_is_rejected():
    preprocessor = Preprocessor(PreprocessSpec.with_normalization(8, "tf"), roi=Roi(90, 0, 20, 20))
    with pytest.raises(PreprocessError, match="does not fit in a 100x100 frame"):
        preprocessor(np.zeros((100, 100, 3), np.uint8))


def test_non_uint8_frame_is_rejected():
    preprocessor = Preprocessor(PreprocessSpec.with_normalization(8, "tf"))
    with pytest.raises(PreprocessError, match="uint8"):
        preprocessor(np.zeros((10, 10, 3), np.float32))


def test_spec_round_trips_through_dict():
    spec = PreprocessSpec.with_normalization(224, "imagenet", resize_interpolation="linear", roi=Roi(1, 2, 3, 4))
    assert PreprocessSpec.from_dict(spec.to_dict()) == spec


def test_unknown_interpolation_is_rejected():
    with pytest.raises(ValueError, match="resize_interpolation 'bicubic'"):
        PreprocessSpec(32, 32, resize_interpolation="bicubic")
