"""Windows over a flat frame: origins without wrapping, stitching, size checks and normalisation."""

from __future__ import annotations

import numpy as np
import pytest

from edge.preprocess.tiling import TileSpec, stitch_tiles, tile_origins, tile_strip
from edge.preprocess.transform import NORMALIZATIONS, PreprocessError, PreprocessSpec, Preprocessor, Roi
from edge.preprocess.windows import (
    WindowPreprocessor,
    check_windows_match_input,
    cut_windows,
    parse_windows_section,
    window_origins,
    windows_for_model,
)


def tf_spec(height_px: int, width_px: int, roi: Roi | None = None) -> PreprocessSpec:
    mean, std = NORMALIZATIONS["tf"]
    return PreprocessSpec(height_px, width_px, normalization="tf", mean=mean, std=std, roi=roi)


def test_origins_last_aligned_no_wrap():
    origins = window_origins((40, 70), TileSpec(16, 32, 16))

    rows = sorted({row for row, _ in origins})
    columns = sorted({column for _, column in origins})
    assert rows == [0, 16, 24]
    assert columns == [0, 16, 32, 38]
    assert len(origins) == len(rows) * len(columns)
    assert max(column for _, column in origins) + 32 == 70


def test_origins_exact_fit_no_extra():
    assert window_origins((32, 64), TileSpec(32, 32, 16)) == [(0, 0), (0, 16), (0, 32)]
    assert window_origins((32, 32), TileSpec(32, 32, 16)) == [(0, 0)]


def test_origins_wrap_unchanged():
    spec = TileSpec(8, 16, 16)

    wrapped = tile_origins((8, 40), spec)
    flat = tile_origins((8, 40), spec, wrap_columns=False)

    # The strip's last tile crosses the seam; a window's last origin is pulled back inside the image.
    assert [column for _, column in wrapped] == [0, 16, 32]
    assert [column for _, column in flat] == [0, 16, 24]


def test_cut_windows_without_wrap():
    image = np.arange(20 * 50, dtype=np.int32).reshape(20, 50)

    windows, origins = tile_strip(image, TileSpec(20, 30, 15), wrap_columns=False)

    assert origins == [(0, 0), (0, 15), (0, 20)]
    for window, (row, column) in zip(windows, origins):
        np.testing.assert_array_equal(window, image[row : row + 20, column : column + 30])


def test_stitch_without_wrap():
    spec = TileSpec(10, 30, 20)
    origins = tile_origins((10, 70), spec, wrap_columns=False)
    scores = np.array([0.1, 0.5, 0.3], np.float32)

    stitched = stitch_tiles(scores, origins, spec, (10, 70), wrap_columns=False)

    assert origins == [(0, 0), (0, 20), (0, 40)]
    assert stitched[0, 5] == pytest.approx(0.1)  # no tile wraps over the left edge
    assert stitched[0, 25] == pytest.approx(0.5)  # tiles 0 and 1 overlap
    assert stitched[0, 45] == pytest.approx(0.5)
    assert stitched[0, 65] == pytest.approx(0.3)


def test_stitch_maps_take_maximum():
    spec = TileSpec(4, 4, 2)
    origins = tile_origins((4, 6), spec, wrap_columns=False)
    maps = np.zeros((2, 4, 4), np.float32)
    maps[0, 1, 3] = 0.4
    maps[1, 1, 1] = 0.9
    maps[1, 2, 0] = 0.2

    stitched = stitch_tiles(maps, origins, spec, (4, 6), wrap_columns=False)

    assert stitched.shape == (4, 6)
    assert stitched[1, 3] == pytest.approx(0.9)  # both windows cover column 3
    assert stitched[2, 2] == pytest.approx(0.2)
    assert float(stitched.sum()) == pytest.approx(1.1)


def test_stitch_rejects_tile_leaving_image():
    spec = TileSpec(4, 4, 4)

    with pytest.raises(PreprocessError, match="leaves the 6-column image"):
        stitch_tiles(np.zeros(2, np.float32), [(0, 0), (0, 4)], spec, (4, 6), wrap_columns=False)


def test_frame_smaller_than_window():
    with pytest.raises(PreprocessError, match=r"20x40 px \(width x height\).*32x32 px window.*larger ROI.*smaller windows"):
        window_origins((40, 20), TileSpec(32, 32, 16))
    with pytest.raises(PreprocessError, match="smaller than the model's"):
        cut_windows(np.zeros((20, 100, 3), np.uint8), TileSpec(32, 32, 16))


def test_section_parse_and_errors():
    assert parse_windows_section(None) is None
    assert parse_windows_section({"tile_height_px": 32, "tile_width_px": 48, "stride_px": 16}) == TileSpec(32, 48, 16)
    with pytest.raises(ValueError, match="not a mapping"):
        parse_windows_section([32, 32, 16])
    with pytest.raises(ValueError, match="use exactly"):
        parse_windows_section({"tile_height_px": 32, "tile_width_px": 32})
    with pytest.raises(ValueError, match="use exactly"):
        parse_windows_section({"tile_height_px": 32, "tile_width_px": 32, "stride_px": 16, "pad": 0})
    with pytest.raises(ValueError, match="without gaps"):
        parse_windows_section({"tile_height_px": 32, "tile_width_px": 32, "stride_px": 40})
    with pytest.raises(ValueError, match="exceeds the window height"):
        parse_windows_section({"tile_height_px": 16, "tile_width_px": 64, "stride_px": 32})


def test_window_size_must_match_input():
    check_windows_match_input(TileSpec(32, 48, 16), tf_spec(32, 48))
    with pytest.raises(ValueError, match=r"windows are 32x32 px.*model input is 32x48.*export the model again"):
        check_windows_match_input(TileSpec(32, 32, 16), tf_spec(32, 48))


def test_preprocessor_normalises_each_window():
    rng = np.random.default_rng(4)
    frame = rng.integers(0, 256, (50, 60, 3), dtype=np.uint8)
    spec = TileSpec(32, 32, 16)
    preprocessor = WindowPreprocessor(spec, tf_spec(32, 32))

    model_input = preprocessor(frame)

    assert model_input.crop_shape == (50, 60)
    assert model_input.tile_origins == [(0, 0), (0, 16), (0, 28), (16, 0), (16, 16), (16, 28), (18, 0), (18, 16), (18, 28)]
    assert model_input.strip_shape is None
    assert model_input.tensor.shape == (9, 3, 32, 32)
    assert model_input.tensor.dtype == np.float32
    whole = Preprocessor(tf_spec(32, 32))
    for window, (row, column) in zip(model_input.tensor, model_input.tile_origins):
        np.testing.assert_array_equal(window, whole(frame[row : row + 32, column : column + 32])[0])


def test_preprocessor_crops_roi_first():
    frame = np.zeros((100, 100), np.uint8)
    frame[60, 70] = 255
    roi = Roi(x=50, y=40, width=40, height=40)
    preprocessor = WindowPreprocessor(TileSpec(32, 32, 8), tf_spec(32, 32), roi=roi)

    model_input = preprocessor(frame)

    assert model_input.crop_shape == (40, 40)
    assert model_input.tensor.shape == (4, 3, 32, 32)
    # The bright pixel sits at (20, 20) of the ROI, so window (8, 8) shows it at (12, 12).
    index = model_input.tile_origins.index((8, 8))
    assert np.unravel_index(int(np.argmax(model_input.tensor[index, 0])), (32, 32)) == (12, 12)


def test_preprocessor_rejects_other_input_size():
    with pytest.raises(ValueError, match="export the model again"):
        WindowPreprocessor(TileSpec(16, 16, 8), tf_spec(32, 32))


def test_windows_for_model_matches_daemon():
    rng = np.random.default_rng(7)
    frame = rng.integers(0, 256, (80, 90, 3), dtype=np.uint8)
    roi = Roi(x=5, y=10, width=70, height=60)
    section = {"tile_height_px": 32, "tile_width_px": 32, "stride_px": 16}
    spec = tf_spec(32, 32, roi=roi)

    windows, origins = windows_for_model(frame, section, spec)
    model_input = WindowPreprocessor(TileSpec.from_dict(section), spec)(frame)

    assert windows.dtype == np.uint8
    assert windows.shape == (len(origins), 32, 32, 3)
    assert origins == model_input.tile_origins
    normaliser = Preprocessor(tf_spec(32, 32))
    np.testing.assert_array_equal(np.concatenate([normaliser(window) for window in windows]), model_input.tensor)
