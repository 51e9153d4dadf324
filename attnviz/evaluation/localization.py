"""Does a map land on the object? Localisation scores of saliency maps against boxes.

Pure numpy/OpenCV on maps already at the photo's resolution and min-max normalised to
[0, 1] (``to_unit_map``). Boxes are ``(x0, y0, x1, y1)`` in pixels with inclusive corners,
as in ``boxes.csv``.

- pointing game: the map's maximum falls inside a box;
- energy-based pointing game: the share of the map's mass inside the boxes;
- MaxBoxAccV2 (Choe et al., CVPR 2020): threshold the map at 0, 0.01, ..., 0.99, draw a
  box around every contour of each binary map, take its best IoU with any true box; for
  each IoU level (0.3, 0.5, 0.7) keep the best threshold's accuracy; average the levels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

Box = tuple[float, float, float, float]

THRESHOLDS = np.arange(100) / 100.0  # 0.00 ... 0.99
IOU_LEVELS = (0.3, 0.5, 0.7)


def to_unit_map(native: np.ndarray, height: int, width: int) -> np.ndarray:
    """A map at its native resolution -> (height, width), bilinear, min-max to [0, 1]."""
    native = np.asarray(native, dtype=np.float32)
    if native.shape != (height, width):
        native = cv2.resize(native, (width, height), interpolation=cv2.INTER_LINEAR)
    lo, hi = float(native.min()), float(native.max())
    return (native - lo) / (hi - lo) if hi > lo else np.zeros_like(native)


def box_mask(boxes: Sequence[Box], height: int, width: int) -> np.ndarray:
    """Pixels that any box overlaps: pixel i spans [i, i + 1), a box [x0, x1] (inclusive)."""
    mask = np.zeros((height, width), dtype=bool)
    for x0, y0, x1, y1 in boxes:
        if x1 < 0 or y1 < 0:
            continue  # wholly outside (and negative slice ends would wrap around)
        mask[max(int(np.floor(y0)), 0) : int(np.floor(y1)) + 1,
             max(int(np.floor(x0)), 0) : int(np.floor(x1)) + 1] = True  # fmt: skip
    return mask


def pointing_hit(unit_map: np.ndarray, mask: np.ndarray) -> bool:
    """The maximum falls in a box; a flat map has no maximum to point with, so it misses."""
    if float(unit_map.max()) <= float(unit_map.min()):
        return False
    return bool(mask.flat[int(np.argmax(unit_map))])


def energy_share(unit_map: np.ndarray, mask: np.ndarray) -> float:
    """The share of the map's mass inside ``mask``, on [0, 1] (0 for a map that is all zeros)."""
    total = float(unit_map.sum())
    return float(unit_map[mask].sum()) / total if total > 0 else 0.0


def contour_boxes(binary: np.ndarray) -> np.ndarray:
    """(K, 4) inclusive boxes around every contour (holes too) of a binary map (K >= 0)."""
    contours, _ = cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return np.zeros((0, 4), np.float64)
    rects = np.array([cv2.boundingRect(c) for c in contours], np.float64)  # x, y, w, h
    return np.stack([rects[:, 0], rects[:, 1], rects[:, 0] + rects[:, 2] - 1,
                     rects[:, 1] + rects[:, 3] - 1], axis=1)  # fmt: skip


def best_iou(predicted: np.ndarray, truth: np.ndarray) -> float:
    """The largest IoU between any predicted and any true box (inclusive pixel corners)."""
    if len(predicted) == 0 or len(truth) == 0:
        return 0.0
    p, t = predicted[:, None, :], truth[None, :, :]
    iw = np.minimum(p[..., 2], t[..., 2]) - np.maximum(p[..., 0], t[..., 0]) + 1
    ih = np.minimum(p[..., 3], t[..., 3]) - np.maximum(p[..., 1], t[..., 1]) + 1
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    area_p = (p[..., 2] - p[..., 0] + 1) * (p[..., 3] - p[..., 1] + 1)
    area_t = (t[..., 2] - t[..., 0] + 1) * (t[..., 3] - t[..., 1] + 1)
    return float((inter / (area_p + area_t - inter)).max())


def ious_per_threshold(unit_map: np.ndarray, boxes: Sequence[Box]) -> np.ndarray:
    """For each threshold of THRESHOLDS, the best IoU of the thresholded map's boxes."""
    truth = np.asarray(boxes, np.float64).reshape(-1, 4)
    # 8-bit like the reference protocol, so ties at a threshold fall the same way.
    levels = (unit_map * 255).astype(np.uint8)
    peak = int(levels.max())
    out = np.zeros(len(THRESHOLDS))
    for i, threshold in enumerate(THRESHOLDS):
        binary = (levels > int(threshold * peak)).astype(np.uint8)
        out[i] = best_iou(contour_boxes(binary), truth)
    return out


@dataclass
class LocalizationScores:
    """Accumulates the three scores over photos; ``summary()`` gives them in percent."""

    hits: list[float] = field(default_factory=list)
    energies: list[float] = field(default_factory=list)
    ious: list[np.ndarray] = field(default_factory=list)

    def add(self, unit_map: np.ndarray, boxes: Sequence[Box]) -> None:
        mask = box_mask(boxes, *unit_map.shape)
        self.hits.append(float(pointing_hit(unit_map, mask)))
        self.energies.append(energy_share(unit_map, mask))
        self.ious.append(ious_per_threshold(unit_map, boxes))

    def max_box_acc(self) -> dict[float, tuple[float, float]]:
        """Per IoU level: (best accuracy over thresholds, in percent; that threshold)."""
        ious = np.stack(self.ious)  # (photos, thresholds)
        result = {}
        for level in IOU_LEVELS:
            accuracy = (ious >= level).mean(axis=0)
            best = int(np.argmax(accuracy))
            result[level] = (100.0 * float(accuracy[best]), float(THRESHOLDS[best]))
        return result

    def photo_ious(self, level: float = 0.5) -> list[float]:
        """Each photo's best box IoU at the threshold MaxBoxAccV2 chose for ``level``."""
        if not self.ious:
            return []
        threshold = self.max_box_acc()[level][1]
        column = int(np.argmin(np.abs(THRESHOLDS - threshold)))
        return [float(ious[column]) for ious in self.ious]

    def summary(self) -> dict[str, float]:
        if not self.hits:
            return {"pointing": 0.0, "energy": 0.0, "maxboxacc_v2": 0.0, "photos": 0}
        per_level = self.max_box_acc()
        return {
            "pointing": 100.0 * float(np.mean(self.hits)),
            "energy": 100.0 * float(np.mean(self.energies)),
            "maxboxacc_v2": float(np.mean([acc for acc, _ in per_level.values()])),
            **{f"boxacc@{level:.1f}": acc for level, (acc, _) in per_level.items()},
            "photos": len(self.hits),
        }
