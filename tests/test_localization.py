"""Localisation scores on hand-made maps and boxes whose scores are known."""

from __future__ import annotations

import numpy as np
import pytest

from attnviz.evaluation.localization import (
    LocalizationScores,
    best_iou,
    box_mask,
    contour_boxes,
    ious_per_threshold,
    to_unit_map,
)

H = W = 100


def _map_of(boxes: list[tuple[int, int, int, int]]) -> np.ndarray:
    values = np.zeros((H, W), np.float32)
    for x0, y0, x1, y1 in boxes:
        values[y0 : y1 + 1, x0 : x1 + 1] = 1.0
    return values


def test_a_map_that_is_the_box_scores_100_on_everything() -> None:
    box = (20, 30, 59, 79)
    scores = LocalizationScores()
    scores.add(_map_of([box]), [box])

    summary = scores.summary()

    assert summary["pointing"] == 100.0
    assert summary["energy"] == pytest.approx(100.0)
    assert summary["maxboxacc_v2"] == 100.0


def test_a_map_outside_every_box_scores_0() -> None:
    scores = LocalizationScores()
    scores.add(_map_of([(70, 70, 99, 99)]), [(0, 0, 40, 40)])

    summary = scores.summary()

    assert summary["pointing"] == 0.0 and summary["energy"] == 0.0
    assert summary["maxboxacc_v2"] == 0.0


def test_energy_is_the_share_of_mass_inside() -> None:
    values = _map_of([(0, 0, 49, 99)]) + 3 * _map_of([(50, 0, 99, 99)])
    scores = LocalizationScores()
    scores.add(values / 4, [(50, 0, 99, 99)])

    assert scores.summary()["energy"] == pytest.approx(75.0)


def test_box_mask_covers_every_pixel_a_fractional_box_overlaps() -> None:
    mask = box_mask([(1.5, 2.2, 3.0, 4.9)], 8, 8)

    assert np.argwhere(mask.any(0)).ravel().tolist() == [1, 2, 3]  # columns
    assert np.argwhere(mask.any(1)).ravel().tolist() == [2, 3, 4]  # rows


def test_iou_of_known_boxes() -> None:
    a = np.array([[0, 0, 9, 9]], float)  # 10 x 10
    b = np.array([[5, 0, 14, 9]], float)  # overlaps half: 50 / 150

    assert best_iou(a, b) == pytest.approx(1 / 3)
    assert best_iou(a, np.zeros((0, 4))) == 0.0


def test_every_blob_gets_its_own_box() -> None:
    binary = _map_of([(5, 5, 14, 14), (60, 60, 89, 79)]).astype(np.uint8)

    boxes = sorted(contour_boxes(binary).tolist())

    assert boxes == [[5, 5, 14, 14], [60, 60, 89, 79]]


def test_a_graded_map_is_best_at_the_threshold_that_cuts_out_the_box() -> None:
    # Background 0.3, the object 1.0: thresholds below 0.3 box the whole image.
    values = np.full((H, W), 0.3, np.float32)
    values[40:60, 10:90] = 1.0
    ious = ious_per_threshold(values, [(10, 40, 89, 59)])

    assert ious[0] == pytest.approx(80 * 20 / (H * W))
    assert ious[50] == pytest.approx(1.0)


def test_maxboxacc_takes_the_best_threshold_per_iou_level_then_averages() -> None:
    scores = LocalizationScores()
    scores.add(_map_of([(0, 0, 49, 99)]), [(0, 0, 49, 99)])  # IoU 1
    scores.add(_map_of([(0, 0, 59, 99)]), [(0, 0, 99, 99)])  # IoU 0.6

    summary = scores.summary()

    assert (summary["boxacc@0.3"], summary["boxacc@0.5"], summary["boxacc@0.7"]) == (
        100.0,
        100.0,
        50.0,
    )
    assert summary["maxboxacc_v2"] == pytest.approx(250 / 3)


def test_unit_map_is_upsampled_and_stretched_to_0_1() -> None:
    unit = to_unit_map(np.array([[1.0, 3.0], [5.0, 9.0]]), 10, 12)

    assert unit.shape == (10, 12) and unit.min() == 0.0 and unit.max() == pytest.approx(1.0)
    assert not to_unit_map(np.full((2, 2), 7.0), 4, 4).any()  # flat maps carry no location


def test_a_flat_map_points_nowhere_and_boxes_outside_the_image_cover_nothing() -> None:
    flat = np.full((H, W), 0.5, np.float32)
    scores = LocalizationScores()
    scores.add(flat, [(0, 0, 99, 99)])
    assert scores.summary()["pointing"] == 0.0
    assert not box_mask([(-5, -5, -2, -2)], H, W).any()
