"""core.boxes: the one IoU, compared with torchvision-style definitions and with pycocotools."""

from __future__ import annotations

import numpy as np
import pytest

from core.boxes import (
    box_area,
    box_iou,
    box_iou_xywh_pairs,
    clip_boxes,
    iou_above,
    iou_with_areas,
    round_xyxy_as_coco,
    scale_boxes,
    xywh_to_xyxy,
    xyxy_to_xywh,
)


def _random_boxes(rng, n, size=100.0):
    xy = rng.uniform(0, size, (n, 2))
    return np.c_[xy, xy + rng.uniform(0, size / 2, (n, 2))]


def test_box_iou_matches_a_plain_loop():
    rng = np.random.default_rng(0)
    a, b = _random_boxes(rng, 17), _random_boxes(rng, 9)
    b[0] = a[0]  # identical boxes: IoU 1
    b[1] = [500, 500, 510, 510]  # far away: IoU 0
    got = box_iou(a, b)
    assert got.shape == (17, 9)
    for i in range(17):
        for j in range(9):
            ix = max(0.0, min(a[i, 2], b[j, 2]) - max(a[i, 0], b[j, 0]))
            iy = max(0.0, min(a[i, 3], b[j, 3]) - max(a[i, 1], b[j, 1]))
            inter = ix * iy
            union = (a[i, 2] - a[i, 0]) * (a[i, 3] - a[i, 1]) + (b[j, 2] - b[j, 0]) * (b[j, 3] - b[j, 1]) - inter
            assert got[i, j] == pytest.approx(inter / union if inter > 0 else 0.0, abs=1e-12)
    assert got[0, 0] == pytest.approx(1.0) and (got[:, 1] == 0).all()


def test_xywh_pair_iou_is_bit_identical_to_pycocotools():
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(1)
    a = xyxy_to_xywh(_random_boxes(rng, 300))
    b = xyxy_to_xywh(_random_boxes(rng, 300))
    b[:50] = a[:50] + rng.normal(0, 2, (50, 4)).clip(-1, 1)  # overlapping pairs
    ours = box_iou_xywh_pairs(a, b)
    theirs = np.array([mask_utils.iou([a[i].tolist()], [b[i].tolist()], [0])[0, 0] for i in range(300)])
    np.testing.assert_array_equal(ours, theirs)
    assert (ours[:50] > 0).sum() >= 45  # most pairs overlap, so the arithmetic is exercised


def test_zero_area_boxes_give_zero_not_nan():
    z = np.zeros((1, 4))
    assert box_iou(z, z).tolist() == [[0.0]]
    assert iou_with_areas(z, box_area(z), z, box_area(z)).tolist() == [0.0]


@pytest.mark.parametrize("thr", [0.0, 0.3, 0.55, 1.0])
def test_iou_above_is_exactly_the_iou_compared(thr):
    rng = np.random.default_rng(3)
    xy = rng.uniform(0, 1, (400, 2))
    a = np.concatenate([xy, xy + rng.uniform(0, 0.4, (400, 2))], 1)
    a[::7, 2:] = a[::7, :2]  # zero-area boxes, and pairs of them (0/0 in a plain division)
    a[::11] = a[::11][::-1]  # some identical pairs (IoU 1) and disjoint ones
    b = np.roll(a, 1, axis=0)
    area_a, area_b = box_area(a), box_area(b)
    expected = iou_with_areas(a, area_a, b, area_b) > thr
    np.testing.assert_array_equal(iou_above(a, area_a, b, area_b, thr), expected)
    assert expected.any() or thr == 1.0


def test_conversions_clip_scale_and_coco_rounding():
    b = np.array([[1.0, 2.0, 4.0, 8.0]])
    assert xyxy_to_xywh(b).tolist() == [[1.0, 2.0, 3.0, 6.0]]
    assert xywh_to_xyxy(xyxy_to_xywh(b)).tolist() == b.tolist()
    assert clip_boxes(np.array([[-5.0, 3.0, 120.0, 50.0]]), 100, 40).tolist() == [[0.0, 3.0, 100.0, 40.0]]
    assert scale_boxes(b.astype(np.float32), 2, 0.5).dtype == np.float32
    assert scale_boxes(b, 2, 0.5).tolist() == [[2.0, 1.0, 8.0, 4.0]]
    xywh, back = round_xyxy_as_coco(np.array([[1.004, 2.0, 4.019, 8.0]], np.float32))
    assert xywh.tolist() == [[1.0, 2.0, 3.02, 6.0]] and back.dtype == np.float32
    assert back.tolist() == np.array([[1.0, 2.0, 4.02, 8.0]], np.float32).tolist()
