"""Ring localisation and unwrapping on the real cast impeller images.

Needs the real image folder named by EDGE_INSPECT_DATA and skips without it.
"""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.preprocess.polar import UnwrapSpec, angular_offset_px, unwrap
from edge.preprocess.ring import RingNotFound, RingSearch, find_ring

pytestmark = pytest.mark.real_data

# Outer edge radius band, as a fraction of the 300 px frame, seen on all 1,215 images
# (0.38 to 0.48) with a margin on both sides.
EDGE_BAND = (0.36, 0.49)


@pytest.fixture(scope="module")
def impeller_paths(real_data) -> list[Path]:
    folder = real_data / "casting_impeller"
    paths = sorted(folder.glob("*/*/*.jpeg"))
    if not paths:
        pytest.skip(f"{folder} has no */*/*.jpeg images")
    return paths


def test_ring_found_on_impellers(impeller_paths):
    search = RingSearch()
    spec = UnwrapSpec(radial_px=64)
    found = 0
    failures = []
    outside_band = []
    elapsed_s = 0.0

    for path in impeller_paths:
        image = cv2.imread(str(path))
        start = time.perf_counter()
        try:
            ring = find_ring(image, search)
            unwrap(image, ring, spec)
        except RingNotFound as error:
            failures.append(f"{path.name}: {error}")
            continue
        finally:
            elapsed_s += time.perf_counter() - start
        found += 1

        side = min(image.shape[:2])
        edge_fraction = ring.outer_radius_px / (1 + search.outer_margin_fraction) / side
        if not EDGE_BAND[0] <= edge_fraction <= EDGE_BAND[1] or ring.axis_ratio < 0.88:
            outside_band.append(f"{path.name}: edge {edge_fraction:.3f} of the frame, axis ratio {ring.axis_ratio:.3f}")

    count = len(impeller_paths)
    print(f"\nring found on {found} of {count} images; find_ring + unwrap {1000 * elapsed_s / count:.2f} ms per image")
    assert found >= 0.99 * count, "\n".join(failures[:20])
    assert not outside_band, "\n".join(outside_band[:20])


def test_rotation_recovered_on_impeller(impeller_paths):
    path = next(path for path in impeller_paths if "ok_front" in str(path))
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    search = RingSearch()
    ring = find_ring(image, search)
    spec = UnwrapSpec(radial_px=64, angular_px=720)

    # Turning the image 40 degrees counter-clockwise on screen moves every feature 40
    # degrees (80 columns of 720) towards smaller strip angles.
    rotation = cv2.getRotationMatrix2D((ring.centre_x, ring.centre_y), 40.0, 1.0)
    shape = (image.shape[1], image.shape[0])
    rotated = cv2.warpAffine(image, rotation, shape, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    rotated_ring = find_ring(rotated, search)

    offset = angular_offset_px(unwrap(rotated, rotated_ring, spec), unwrap(image, ring, spec))
    assert abs(offset - 80) <= 3
    assert np.hypot(rotated_ring.centre_x - ring.centre_x, rotated_ring.centre_y - ring.centre_y) <= 1.5
