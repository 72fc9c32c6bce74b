"""Defect regions: connected components of the anomaly map above the pixel threshold."""

from __future__ import annotations

import cv2
import numpy as np

from edge.parts import Region


def find_regions(
    anomaly_map: np.ndarray,
    pixel_threshold: float,
    to_frame: tuple[float, float, int, int],
    min_area_px: int = 1,
    max_regions: int = 20,
) -> list[Region]:
    """Return the regions above the threshold, largest first, in frame pixel coordinates.

    `to_frame` is (scale_x, scale_y, offset_x, offset_y) from map pixels to frame pixels, as
    returned by `Preprocessor.map_to_frame`. `min_area_px` is counted in map pixels.
    """
    mask = (anomaly_map > pixel_threshold).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    scale_x, scale_y, offset_x, offset_y = to_frame

    regions = []
    for label in range(1, count):
        x, y, width, height, area = (int(value) for value in stats[label])
        if area < min_area_px:
            continue

        window = anomaly_map[y : y + height, x : x + width]
        inside = labels[y : y + height, x : x + width] == label
        masked = np.where(inside, window, -np.inf)
        peak_row, peak_col = np.unravel_index(int(np.argmax(masked)), masked.shape)

        regions.append(
            Region(
                area_px=int(round(area * scale_x * scale_y)),
                bbox_xywh=(
                    int(round(offset_x + x * scale_x)),
                    int(round(offset_y + y * scale_y)),
                    max(1, int(round(width * scale_x))),
                    max(1, int(round(height * scale_y))),
                ),
                peak_score=float(masked[peak_row, peak_col]),
                peak_xy=(
                    int(offset_x + (x + peak_col + 0.5) * scale_x),
                    int(offset_y + (y + peak_row + 0.5) * scale_y),
                ),
            )
        )

    regions.sort(key=lambda region: region.area_px, reverse=True)
    return regions[:max_regions]
