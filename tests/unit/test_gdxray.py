"""GDXray preparation on small synthetic series written to tmp_path."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from export.gdxray import (
    BOX_FORMAT,
    DEFAULT_TEST_SERIES,
    Box,
    GdxrayOptions,
    axis_origins,
    label_window,
    prepare_gdxray,
    read_boxes,
    series_type,
    split_series,
    window_origins,
)

WHEEL = "Aluminum casting, wheel"
KNUCKLE = "Knuckle"

# Two boxes in 1-based inclusive pixels (x1 x2 y1 y2). On a 200x160 image with 128-pixel windows at
# stride 64 the window origins are x 0, 64, 72 and y 0, 32; 0-based half-open these boxes are
# A = [60, 80) x [40, 50) and B = [100, 140) x [20, 30).
BOX_A = (61, 80, 41, 50)
BOX_B = (101, 140, 21, 30)
# A box far from A and B, contained by the windows at x 0 and every y.
BOX_SMALL = (21, 30, 61, 70)


def draw_image(path: Path, width_px: int, height_px: int, seed: int, boxes=()) -> None:
    rng = np.random.default_rng(seed)
    gradient = np.linspace(60, 180, width_px, dtype=np.float32)[None, :].repeat(height_px, axis=0)
    image = np.clip(gradient + rng.normal(0, 8, (height_px, width_px)), 0, 255).astype(np.uint8)
    for x1, x2, y1, y2 in boxes:
        center = ((x1 + x2) // 2 - 1, (y1 + y2) // 2 - 1)
        axes = (max(1, (x2 - x1) // 2), max(1, (y2 - y1) // 2))
        cv2.ellipse(image, center, axes, 0, 0, 360, 20, thickness=-1)
    assert cv2.imwrite(str(path), image)


def write_series(
    root: Path,
    name: str,
    set_text: str | None,
    images: dict[int, tuple[int, int]],
    boxes: dict[int, list[tuple[int, int, int, int]]],
    extra_rows: list[str] = (),
) -> Path:
    """Write one series: images {number: (width, height)}, boxes {number: [(x1, x2, y1, y2)]} in GDXray format."""
    folder = root / name
    folder.mkdir(parents=True)
    for number, (width_px, height_px) in images.items():
        seed = int(name[1:]) * 100 + number
        draw_image(folder / f"{name}_{number:04d}.png", width_px, height_px, seed, boxes.get(number, ()))

    rows = []
    for number, image_boxes in boxes.items():
        for box in image_boxes:
            rows.append("".join(f"{value:16.7e}" for value in (number, *box)))
    rows.extend(extra_rows)
    (folder / "ground_truth.txt").write_text("\n".join(rows) + "\n")

    readme = "The GRIMA Database of X-ray images\n\n"
    if set_text is not None:
        readme += f"   set: X{int(name[1:]):03d} <{set_text}> \nimages: {len(images)}\n\n<rotation each 5 degrees>\n"
    (folder / f"{name}_readme.txt").write_text(readme)
    (folder / "ManipulatorPosition.txt").write_text("0 0 0 0 0 0\n")
    return folder


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """Two wheel series (C0002 crops of C0001) and a knuckle series for training, one of each type for test."""
    root = tmp_path / "data"
    write_series(root, "C0001", WHEEL, {1: (200, 160), 2: (200, 160), 3: (200, 160)},
                 {1: [BOX_A, BOX_B], 2: [BOX_SMALL]})
    write_series(root, "C0002", WHEEL, {1: (140, 130), 2: (100, 90)}, {1: [(11, 20, 11, 20)], 2: [(5, 9, 5, 9)]})
    write_series(root, "C0003", WHEEL, {1: (200, 160), 2: (200, 160)}, {1: [BOX_SMALL]})
    write_series(root, "C0010", KNUCKLE, {1: (200, 160), 2: (200, 160)}, {1: [BOX_SMALL]})
    write_series(root, "C0011", KNUCKLE, {1: (200, 160), 2: (200, 160)}, {2: [BOX_SMALL]})
    return root


def options_for(data_dir: Path, out_dir: Path, **overrides) -> GdxrayOptions:
    settings = {"test_series": ("C0003", "C0011"), "progress": False} | overrides
    return GdxrayOptions(data_dir=data_dir, out_dir=out_dir, **settings)


def window_files(out_dir: Path) -> list[str]:
    return sorted(str(path.relative_to(out_dir)) for path in (out_dir / "defects").rglob("*.png"))


def test_read_boxes_one_based(tmp_path):
    path = tmp_path / "ground_truth.txt"
    path.write_text(
        "   1.0000000e+00   1.7100000e+02   1.9800000e+02   4.7100000e+02   4.9300000e+02\n"
        "\n"
        "   4.0000000e+00   3.3000000e+02   3.5300000e+02   5.0400000e+02   5.2500000e+02   9.9000000e+01\n"
        "   1.0000000e+00   1.0000000e+00   1.0000000e+00   2.0000000e+00   3.0000000e+00\n"
    )

    boxes = read_boxes(path)

    assert sorted(boxes) == [1, 4]
    assert boxes[1] == [Box(170, 470, 198, 493), Box(0, 1, 1, 3)]
    assert boxes[4] == [Box(329, 503, 353, 525)]


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("1 2 3 4", "expected 5 numbers"),
        ("1 2 x 4 5", "is not a number"),
        ("1 2.5 3 4 5", "not a whole number"),
        ("0 2 3 4 5", "image number 0"),
        ("1 20 10 4 5", "inverted"),
    ],
)
def test_read_boxes_bad_row(tmp_path, row, message):
    path = tmp_path / "ground_truth.txt"
    path.write_text(f"1 1 2 1 2\n{row}\n")

    with pytest.raises(ValueError, match=message) as raised:
        read_boxes(path)
    assert f"{path}:2" in str(raised.value)


def test_series_type_wheel_and_knuckle(tmp_path):
    wheel = write_series(tmp_path, "C0001", WHEEL, {}, {})
    knuckle = write_series(tmp_path, "C0054", KNUCKLE, {}, {})

    assert series_type(wheel / "C0001_readme.txt") == "wheel"
    assert series_type(knuckle / "C0054_readme.txt") == "knuckle"


def test_series_type_missing(tmp_path):
    folder = write_series(tmp_path, "C0001", None, {}, {})

    with pytest.raises(ValueError, match="names no part type"):
        series_type(folder / "C0001_readme.txt")
    with pytest.raises(ValueError, match="is missing"):
        series_type(folder / "C0009_readme.txt")


def test_axis_origins_aligned_last():
    assert axis_origins(200, 128, 64) == [0, 64, 72]
    assert axis_origins(192, 128, 64) == [0, 64]
    assert axis_origins(128, 128, 64) == [0]
    assert axis_origins(127, 128, 64) == []
    assert axis_origins(150, 128, 128) == [0, 22]


def test_window_origins_row_by_row():
    assert window_origins(160, 200, 128, 64) == [(0, 0), (64, 0), (72, 0), (0, 32), (64, 32), (72, 32)]
    assert window_origins(100, 200, 128, 64) == []


def test_label_window_cases():
    box_a = Box(60, 40, 80, 50)
    box_b = Box(120, 100, 150, 110)

    label, boxes = label_window(Box(0, 0, 128, 128), [box_a, box_b])
    assert label == "defect"
    assert boxes == (Box(60, 40, 80, 50), Box(120, 100, 128, 110))

    label, boxes = label_window(Box(64, 0, 192, 128), [box_a, box_b])
    assert label == "defect"
    assert boxes == (Box(0, 40, 16, 50), Box(56, 100, 86, 110))

    label, boxes = label_window(Box(64, 0, 192, 128), [box_a])
    assert label is None
    assert boxes == (Box(0, 40, 16, 50),)

    label, boxes = label_window(Box(80, 0, 208, 128), [box_a])
    assert label == "ok"
    assert boxes == ()


def test_split_series_linked_follow():
    names = ["C0001", "C0002", "C0003", "C0010"]

    train, test = split_series(names, ["C0001"])
    assert test == ["C0001", "C0002"]
    assert train == ["C0003", "C0010"]

    train, test = split_series(names, ["C0003"])
    assert test == ["C0003"]
    assert train == ["C0001", "C0002", "C0010"]
    assert not set(train) & set(test)


def test_split_series_unknown_name():
    with pytest.raises(ValueError, match="C0099 not found; available series: C0001, C0003"):
        split_series(["C0001", "C0003"], ["C0003", "C0099"])


def test_split_series_child_without_parent():
    with pytest.raises(ValueError, match="name C0001 as a test series"):
        split_series(["C0001", "C0002", "C0003"], ["C0002"])


def test_split_series_child_alone():
    assert split_series(["C0002", "C0003"], ["C0002"]) == (["C0003"], ["C0002"])


def test_prepare_layout(data_dir, tmp_path):
    out_dir = tmp_path / "out"

    summary = prepare_gdxray(options_for(data_dir, out_dir))

    wheel = sorted(path.name for path in (out_dir / "types" / "wheel").iterdir())
    knuckle = sorted(path.name for path in (out_dir / "types" / "knuckle").iterdir())
    assert wheel == ["C0001_0001.png", "C0001_0002.png", "C0001_0003.png", "C0002_0001.png", "C0002_0002.png"]
    assert knuckle == ["C0010_0001.png", "C0010_0002.png"]
    assert sorted(path.name for path in (out_dir / "types").iterdir()) == ["knuckle", "wheel"]
    for name in wheel:
        assert (out_dir / "types" / "wheel" / name).read_bytes() == (data_dir / name[:5] / name).read_bytes()

    split = json.loads((out_dir / "split.json").read_text())
    assert split["train"] == ["C0001", "C0002", "C0010"]
    assert split["test"] == ["C0003", "C0011"]
    assert split["types"] == {"C0001": "wheel", "C0002": "wheel", "C0003": "wheel", "C0010": "knuckle",
                              "C0011": "knuckle"}
    assert split["linked"] == {"C0002": "C0001"}

    assert json.loads((out_dir / "summary.json").read_text()) == summary
    assert summary["types"] == {"knuckle": 2, "wheel": 5}
    assert summary["skipped"]["images"]["smaller_than_window"] == ["C0002_0002.png"]


def test_prepare_window_classes(data_dir, tmp_path):
    out_dir = tmp_path / "out"

    summary = prepare_gdxray(options_for(data_dir, out_dir, ok_per_image=0))

    train = out_dir / "defects" / "train"
    image_one = sorted(str(path.relative_to(train)) for path in train.rglob("C0001_0001__*.png"))
    # The windows at x 64 and 72 contain box B at y 0, but at y 32 they only touch box A.
    assert image_one == ["defect/C0001_0001__x0000_y0000.png", "defect/C0001_0001__x0000_y0032.png",
                         "defect/C0001_0001__x0064_y0000.png", "defect/C0001_0001__x0072_y0000.png"]
    # Two from C0001_0001 and two from C0002_0001, whose windows at x 12 touch its box at x 10..19.
    assert summary["defects"]["train"]["dropped_touching"] == 4

    image_two = sorted(str(path.relative_to(train)) for path in train.rglob("C0001_0002__*.png"))
    assert image_two == ["defect/C0001_0002__x0000_y0000.png", "defect/C0001_0002__x0000_y0032.png",
                         "ok/C0001_0002__x0064_y0000.png", "ok/C0001_0002__x0064_y0032.png",
                         "ok/C0001_0002__x0072_y0000.png", "ok/C0001_0002__x0072_y0032.png"]

    # The unannotated image C0001_0003 gives no windows.
    assert not list(train.rglob("C0001_0003__*.png"))
    assert not list((out_dir / "defects" / "test").rglob("C0011_0001__*.png"))


def test_prepare_boxes_json(data_dir, tmp_path):
    out_dir = tmp_path / "out"

    prepare_gdxray(options_for(data_dir, out_dir))

    boxes = json.loads((out_dir / "defects" / "train" / "boxes.json").read_text())
    assert boxes["format"] == BOX_FORMAT
    windows = boxes["windows"]
    assert windows["defect/C0001_0001__x0000_y0000.png"] == [[60, 40, 80, 50], [100, 20, 128, 30]]
    assert windows["defect/C0001_0001__x0000_y0032.png"] == [[60, 8, 80, 18]]
    assert windows["defect/C0001_0001__x0064_y0000.png"] == [[0, 40, 16, 50], [36, 20, 76, 30]]
    assert windows["defect/C0001_0001__x0072_y0000.png"] == [[0, 40, 8, 50], [28, 20, 68, 30]]

    for split in ("train", "test"):
        split_dir = out_dir / "defects" / split
        entries = json.loads((split_dir / "boxes.json").read_text())["windows"]
        defect_files = sorted(f"defect/{path.name}" for path in (split_dir / "defect").iterdir())
        assert sorted(entries) == defect_files
        assert all(entries[name] for name in defect_files)


def test_prepare_window_pixels(data_dir, tmp_path):
    out_dir = tmp_path / "out"

    prepare_gdxray(options_for(data_dir, out_dir))

    source = cv2.imread(str(data_dir / "C0001" / "C0001_0001.png"), cv2.IMREAD_UNCHANGED)
    window = cv2.imread(str(out_dir / "defects" / "train" / "defect" / "C0001_0001__x0064_y0000.png"),
                        cv2.IMREAD_UNCHANGED)
    assert window.dtype == np.uint8
    assert window.shape == (128, 128)
    np.testing.assert_array_equal(window, source[0:128, 64:192])

    crop = cv2.imread(str(out_dir / "defects" / "train" / "defect" / "C0002_0001__x0000_y0002.png"),
                      cv2.IMREAD_UNCHANGED)
    crop_source = cv2.imread(str(data_dir / "C0002" / "C0002_0001.png"), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(crop, crop_source[2:130, 0:128])


def test_prepare_counts_match_files(data_dir, tmp_path):
    out_dir = tmp_path / "out"

    summary = prepare_gdxray(options_for(data_dir, out_dir))

    for split in ("train", "test"):
        for label in ("ok", "defect"):
            written = len(list((out_dir / "defects" / split / label).iterdir()))
            assert summary["defects"][split][label] == written
            by_type = sum(counts[label] for counts in summary["defects"][split]["by_type"].values())
            assert by_type == written
    assert summary["defects"]["test"]["by_type"]["knuckle"]["defect"] > 0
    assert summary["defects"]["test"]["by_type"]["wheel"]["defect"] > 0


def test_prepare_ok_cap(data_dir, tmp_path):
    small = {"window_px": 32, "stride_px": 16}
    all_windows = prepare_gdxray(options_for(data_dir, tmp_path / "all", ok_per_image=0, **small))
    capped = prepare_gdxray(options_for(data_dir, tmp_path / "capped", ok_per_image=3, **small))

    for split in ("train", "test"):
        assert capped["defects"][split]["defect"] == all_windows["defects"][split]["defect"]
        assert capped["defects"][split]["ok"] == 3 * capped["defects"][split]["images"]
        ok_before_cap = capped["defects"][split]["ok"] + capped["defects"][split]["ok_not_kept"]
        assert ok_before_cap == all_windows["defects"][split]["ok"]

    all_ok = {path.name for path in (tmp_path / "all").rglob("ok/*.png")}
    capped_ok = {path.name for path in (tmp_path / "capped").rglob("ok/*.png")}
    assert capped_ok < all_ok


def test_prepare_seeded(data_dir, tmp_path):
    first = tmp_path / "first"
    again = tmp_path / "again"
    other = tmp_path / "other"

    small = {"window_px": 32, "stride_px": 16, "ok_per_image": 3}
    prepare_gdxray(options_for(data_dir, first, seed=5, **small))
    prepare_gdxray(options_for(data_dir, again, seed=5, **small))
    prepare_gdxray(options_for(data_dir, other, seed=6, **small))

    assert window_files(first) == window_files(again)
    assert window_files(first) != window_files(other)


def test_prepare_default_test_series(data_dir, tmp_path):
    with pytest.raises(ValueError, match=f"test series {', '.join(DEFAULT_TEST_SERIES)} not found"):
        prepare_gdxray(GdxrayOptions(data_dir, tmp_path / "out", progress=False))


def test_prepare_box_past_border(data_dir, tmp_path):
    write_series(data_dir, "C0020", WHEEL, {1: (200, 160)}, {1: [(0, 10, 100, 170), (300, 310, 1, 5)]},
                 extra_rows=["7 1 5 1 5"])

    summary = prepare_gdxray(options_for(data_dir, tmp_path / "out"))

    assert summary["skipped"]["boxes_clipped_to_image"] == 1
    assert summary["skipped"]["boxes_outside_image"] == 1
    assert summary["skipped"]["boxes_without_image"] == ["C0020_0007"]
    boxes = json.loads((tmp_path / "out" / "defects" / "train" / "boxes.json").read_text())["windows"]
    assert boxes["defect/C0020_0001__x0000_y0032.png"] == [[0, 67, 10, 128]]


def test_prepare_unreadable_image(data_dir, tmp_path):
    (data_dir / "C0001" / "C0001_0004.png").write_bytes(b"not a png")
    (data_dir / "C0003" / "C0003_0001.png").write_bytes(b"not a png")

    summary = prepare_gdxray(options_for(data_dir, tmp_path / "out"))

    assert summary["skipped"]["images"]["unreadable"] == ["C0001_0004.png", "C0003_0001.png"]
    assert not (tmp_path / "out" / "types" / "wheel" / "C0001_0004.png").exists()
    assert summary["defects"]["test"]["images"] == 1


def test_prepare_missing_folder(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        prepare_gdxray(options_for(tmp_path / "absent", tmp_path / "out"))


def test_prepare_data_is_file(tmp_path):
    path = tmp_path / "data.txt"
    path.write_text("not a folder")

    with pytest.raises(ValueError, match="is not a folder"):
        prepare_gdxray(options_for(path, tmp_path / "out"))


def test_prepare_no_series(tmp_path):
    (tmp_path / "data" / "notes").mkdir(parents=True)

    with pytest.raises(ValueError, match="no series found"):
        prepare_gdxray(options_for(tmp_path / "data", tmp_path / "out"))


def test_prepare_unknown_test_series(data_dir, tmp_path):
    with pytest.raises(ValueError, match="C0099 not found; available series: C0001, C0002, C0003, C0010, C0011"):
        prepare_gdxray(options_for(data_dir, tmp_path / "out", test_series=("C0003", "C0099")))
    assert not (tmp_path / "out").exists()


def test_prepare_readme_without_type(data_dir, tmp_path):
    write_series(data_dir, "C0020", None, {1: (200, 160)}, {})

    with pytest.raises(ValueError, match="C0020_readme.txt names no part type"):
        prepare_gdxray(options_for(data_dir, tmp_path / "out"))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"stride_px": 0}, "stride_px=0 is invalid"),
        ({"stride_px": 129}, "stride_px=129 is invalid"),
        ({"window_px": 16, "stride_px": 8}, "window_px=16 is invalid"),
        ({"window_px": 64.0}, "window_px=64.0 is invalid"),
        ({"ok_per_image": -1}, "ok_per_image=-1 is invalid"),
        ({"seed": -1}, "seed=-1 is invalid"),
        ({"test_series": "C0003"}, "must be a tuple"),
    ],
)
def test_prepare_bad_options(data_dir, tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        prepare_gdxray(options_for(data_dir, tmp_path / "out", **overrides))


def test_prepare_test_without_defects(data_dir, tmp_path):
    write_series(data_dir, "C0020", KNUCKLE, {1: (200, 160)}, {})

    with pytest.raises(ValueError, match=r"test split \(series: C0020\) has no defect windows"):
        prepare_gdxray(options_for(data_dir, tmp_path / "out", test_series=("C0020",)))
    assert not (tmp_path / "out").exists()


def test_prepare_window_larger_than_images(data_dir, tmp_path):
    with pytest.raises(ValueError, match="use a smaller --window"):
        prepare_gdxray(options_for(data_dir, tmp_path / "out", window_px=512, stride_px=64))


def test_prepare_train_without_defects(data_dir, tmp_path):
    test_series = ("C0001", "C0003", "C0010", "C0011")

    with pytest.raises(ValueError, match=r"train split \(series: none\) has no defect windows"):
        prepare_gdxray(options_for(data_dir, tmp_path / "out", test_series=test_series))


def test_prepare_rerun_replaces(data_dir, tmp_path):
    out_dir = tmp_path / "out"
    prepare_gdxray(options_for(data_dir, out_dir, ok_per_image=0))
    stale = out_dir / "defects" / "train" / "ok" / "C0009_0001__x0000_y0000.png"
    stale.write_bytes(b"stale")
    (out_dir / "types" / "gear").mkdir()

    summary = prepare_gdxray(options_for(data_dir, out_dir, ok_per_image=1))

    assert not stale.exists()
    assert not (out_dir / "types" / "gear").exists()
    assert summary["options"]["ok_per_image"] == 1
    ok_files = list((out_dir / "defects" / "train" / "ok").iterdir())
    assert len(ok_files) == summary["defects"]["train"]["ok"]
    prepare_gdxray(options_for(data_dir, tmp_path / "fresh", ok_per_image=1))
    assert window_files(out_dir) == window_files(tmp_path / "fresh")


def test_prepare_foreign_out_rejected(data_dir, tmp_path):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    notes = out_dir / "notes.txt"
    notes.write_text("keep me")

    with pytest.raises(ValueError, match="not empty and contains no split.json"):
        prepare_gdxray(options_for(data_dir, out_dir))
    assert notes.read_text() == "keep me"
    assert sorted(path.name for path in out_dir.iterdir()) == ["notes.txt"]


def test_prepare_empty_out_accepted(data_dir, tmp_path):
    out_dir = tmp_path / "out"
    out_dir.mkdir()

    prepare_gdxray(options_for(data_dir, out_dir))

    assert (out_dir / "split.json").is_file()
