"""GDXray preparation on the real casting radiographs with the default options."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from export.gdxray import DEFAULT_TEST_SERIES, GdxrayOptions, prepare_gdxray

pytestmark = pytest.mark.real_data


@pytest.fixture(scope="module")
def prepared(real_data, tmp_path_factory) -> tuple[Path, Path, dict]:
    data_dir = real_data / "gdxray_castings"
    if not data_dir.is_dir():
        pytest.skip(f"{data_dir} is missing; it holds the GDXray castings series")
    out_dir = tmp_path_factory.mktemp("gdxray") / "out"
    summary = prepare_gdxray(GdxrayOptions(data_dir=data_dir, out_dir=out_dir, progress=False))
    return data_dir, out_dir, summary


def test_real_types(prepared):
    _, out_dir, summary = prepared

    types_dir = out_dir / "types"
    assert sorted(path.name for path in types_dir.iterdir()) == ["knuckle", "wheel"]
    names = [path.name for path in types_dir.rglob("*.png")]
    assert len(names) == sum(summary["types"].values())
    assert not [name for name in names if name.split("_")[0] in DEFAULT_TEST_SERIES]


def test_real_split(prepared):
    _, out_dir, _ = prepared

    split = json.loads((out_dir / "split.json").read_text())
    assert split["test"] == sorted(DEFAULT_TEST_SERIES)
    assert not set(split["train"]) & set(split["test"])
    assert {"C0001", "C0002"} <= set(split["train"])
    assert set(split["types"].values()) == {"wheel", "knuckle"}


def test_real_defect_windows(prepared):
    _, out_dir, summary = prepared

    for split in ("train", "test"):
        split_dir = out_dir / "defects" / split
        defect_files = sorted(f"defect/{path.name}" for path in (split_dir / "defect").iterdir())
        ok_files = list((split_dir / "ok").iterdir())
        assert defect_files
        assert ok_files
        assert summary["defects"][split]["defect"] == len(defect_files)
        assert summary["defects"][split]["ok"] == len(ok_files)

        windows = json.loads((split_dir / "boxes.json").read_text())["windows"]
        assert sorted(windows) == defect_files
        empty = [name for name in defect_files if not windows[name]]
        assert not empty


def test_real_window_pixels(prepared):
    data_dir, out_dir, _ = prepared

    files = sorted((out_dir / "defects").rglob("*.png"))
    for path in files[:: max(1, len(files) // 12)]:
        stem, position = path.stem.split("__")
        x, y = (int(part[1:]) for part in position.split("_"))
        source = cv2.imread(str(data_dir / stem.split("_")[0] / f"{stem}.png"), cv2.IMREAD_UNCHANGED)
        window = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        assert window.shape == (128, 128), path.name
        np.testing.assert_array_equal(window, source[y : y + 128, x : x + 128], err_msg=path.name)
