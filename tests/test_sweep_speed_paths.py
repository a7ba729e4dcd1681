"""The sweep's fast paths give exactly what the plain paths give: fusion on flattened columns, the gate's
rules on columns, scoring of columns and of per-class AP joined, in one process or in several."""

from __future__ import annotations

import numpy as np
import pytest

from core.classes import VINBIG_CLASSES, coco_categories
from core.coco import CocoDataset
from core.detections import Detections, as_written_columns
from ensemble.sweep import ClassTable, SweepState, gate_columns
from eval.scoring import Scorer
from fusion.engine import _order_by, flatten_many, fuse_flat, fuse_many
from fusion.gate import apply_gate
from fusion.settings import FusionSettings

N_IMAGES = 40
CLASSES = (0, 3, 8, 10)


def make_case(seed: int = 0):
    """A dataset (every third image normal), three noisy models with tied scores, and gate scores."""
    rng = np.random.default_rng(seed)
    images, anns = [], []
    for i in range(N_IMAGES):
        w, h = int(rng.integers(200, 400)), int(rng.integers(200, 400))
        images.append({"id": 10 + i, "file_name": f"{i}.png", "width": w, "height": h})
        if i % 3 == 0:
            continue
        for _ in range(int(rng.integers(1, 4))):
            bw, bh = rng.uniform(0.1, 0.3) * w, rng.uniform(0.1, 0.3) * h
            x, y = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
            anns.append({"id": len(anns) + 1, "image_id": 10 + i, "category_id": int(rng.choice(CLASSES)),
                         "bbox": [x, y, bw, bh]})  # fmt: skip
    ds = CocoDataset(images, anns, coco_categories(VINBIG_CLASSES))
    models = []
    for _ in range(3):
        dets = {}
        for im in images:
            w, h = im["width"], im["height"]
            gt = ds.ground_truth(im["id"])
            b = gt.boxes.astype(np.float64) + rng.normal(0, 4, gt.boxes.shape)
            n_fp = int(rng.integers(0, 12))
            xy = rng.uniform(0, 0.7, (n_fp, 2)) * [w, h]
            b = np.concatenate([b, np.concatenate([xy, xy + rng.uniform(0.05, 0.3, (n_fp, 2)) * [w, h]], 1)])
            b = np.clip(b, 0, [w, h, w, h])
            b[:, 2:] = np.maximum(b[:, 2:], b[:, :2] + 1)
            b = np.minimum(b, [w, h, w, h])
            s = np.round(rng.uniform(0.06, 1, len(b)), 1)  # ties in score (none 0)
            lab = np.concatenate([gt.labels, rng.choice(CLASSES, n_fp)])
            dets[im["id"]] = Detections(b.astype(np.float32), s.astype(np.float32), lab)
        models.append(dets)
    p = {im["id"]: float(np.clip((0.15 if ds.is_normal(im["id"]) else 0.85) + rng.normal(0, 0.2), 0, 1))
         for im in images}  # fmt: skip
    sizes = {im["id"]: (im["width"], im["height"]) for im in images}
    return ds, models, sizes, p


CASE = make_case()


def class_probs_of(ds: CocoDataset, seed: int = 1) -> dict[int, dict[int, float]]:
    """Per-class probabilities for ``rescore``: informative, of three of the four classes (10 falls back)."""
    rng = np.random.default_rng(seed)
    out = {}
    for im in ds.images:
        present = {a["category_id"] for a in ds.annotations_of(im["id"])}
        out[im["id"]] = {c: float(np.clip((0.8 if c in present else 0.2) + rng.normal(0, 0.2), 0, 1)) for c in (0, 3, 8)}
    return out


P_CLASS = class_probs_of(CASE[0])
SETTINGS = [
    FusionSettings(method="wbf", weights=(1.0, 1.0, 1.0), iou_thr=0.5),
    FusionSettings(method="wbf", weights=(2.0, 1.0, 1.0), iou_thr=0.4, skip_box_thr=0.3),
    FusionSettings(method="wbf", weights=(2.0, 1.0, 1.0), iou_thr=0.6, conf_type="max"),
    FusionSettings(method="wbf", weights=(1.0, 3.0, 1.0), iou_thr=0.5, conf_type="box_and_model_avg"),
    FusionSettings(method="wbf", weights=(1.0, 3.0, 1.0), iou_thr=0.5, conf_type="absent_model_aware_avg"),
    FusionSettings(method="nms", iou_thr=0.5),
    FusionSettings(method="nms", weights=(1.0, 2.0, 1.0), iou_thr=0.3, skip_box_thr=0.2),
    FusionSettings(method="soft-nms", iou_thr=0.5),
    FusionSettings(method="soft-nms", weights=(1.0, 2.0, 1.0), iou_thr=0.4, sigma=0.2, soft_method="linear"),
    FusionSettings(method="nmw", iou_thr=0.5),
    FusionSettings(method="nmw", weights=(3.0, 1.0, 1.0), iou_thr=0.6, skip_box_thr=0.4),
]
GATES = [(None, None, None), ("append", None, None), ("rescale", None, None), ("filter", 0.1, 0.9),
         ("filter", 0.3, 0.3), ("filter", 0.0, 1.0), ("rescore", None, None)]  # fmt: skip


def assert_same(a: Detections, b: Detections) -> None:
    for x, y in ((a.boxes, b.boxes), (a.scores, b.scores), (a.labels, b.labels)):
        assert x.dtype == y.dtype
        np.testing.assert_array_equal(x, y)


def test_fuse_flat_equals_fuse_many_for_every_setting_on_one_flattening():
    """One `FlatBoxes` serves every setting in turn (its cached sort orders included)."""
    _, models, sizes, _ = CASE
    flat = flatten_many(models, sizes)
    for s in SETTINGS + SETTINGS[::-1]:
        fast = dict(zip(sizes, fuse_flat(flat, s).split(), strict=True))
        slow = fuse_many(models, sizes, **s.fusion_options())
        assert list(fast) == list(slow)
        for i in slow:
            assert_same(fast[i], slow[i])


def test_order_by_is_lexsort():
    rng = np.random.default_rng(3)
    major = rng.integers(0, 7, 500)
    key = np.round(rng.random(500), 1)  # many ties
    np.testing.assert_array_equal(_order_by(major, 7, key), np.lexsort((-key, major)))
    np.testing.assert_array_equal(_order_by(major, 7), np.lexsort((major,)))


@pytest.mark.parametrize("mode,low,high", [g for g in GATES if g[0]])
def test_gate_columns_equal_apply_gate(mode, low, high):
    _, models, sizes, p = CASE
    flat = flatten_many(models, sizes)
    ids = np.array(list(sizes))
    fused = fuse_flat(flat, SETTINGS[1])
    pa = np.array([p[i] for i in sizes])
    table = ClassTable.build(P_CLASS, list(sizes), pa)
    img, labels, boxes, scores = gate_columns(fused, ids, pa, mode, low, high, table)
    expected = apply_gate(dict(zip(sizes, fused.split(), strict=True)), p, mode, low, high, P_CLASS)
    bounds = np.searchsorted(img, np.arange(len(ids) + 1))
    for k, i in enumerate(ids):
        a, b = bounds[k], bounds[k + 1]
        assert_same(Detections(boxes[a:b], scores[a:b], labels[a:b]), expected[int(i)])


def test_gate_columns_refuse_gated_rows_as_apply_gate_does():
    _, models, sizes, p = CASE
    flat = flatten_many(models, sizes)
    fused = fuse_flat(flat, SETTINGS[0])
    ids = np.array(list(sizes))
    object.__setattr__(fused, "labels", np.where(fused.image == 5, 14, fused.labels))
    with pytest.raises(ValueError, match=f"image {ids[5]} already has 'No finding'"):
        gate_columns(fused, ids, np.full(len(ids), 0.5), "append")


@pytest.mark.parametrize("metric", ["vinbig", "coco", "rsna"])
def test_score_columns_equals_score(metric):
    ds, models, sizes, p = CASE
    scorer = Scorer(ds, metric)
    dets = apply_gate(fuse_many(models, sizes, method="wbf", iou_thr=0.5), p, "append")
    dets = {i: d.as_written() for i, d in dets.items()}
    ids = np.concatenate([np.full(len(d), i) for i, d in dets.items()])
    cols = [np.concatenate([getattr(d, k) for d in dets.values()]) for k in ("labels", "boxes", "scores")]
    assert scorer.score_columns(ids, *cols) == scorer.score(dets)


@pytest.mark.parametrize("metric", ["vinbig", "coco"])
def test_per_class_ap_joined_is_the_score_of_the_joined_rows(metric):
    """AP columns of lesions and of "No finding", scored apart and joined, give the score of all rows."""
    ds, models, sizes, p = CASE
    scorer = Scorer(ds, metric)
    dets = apply_gate(fuse_many(models, sizes, method="nms", iou_thr=0.5), p, "rescale")
    ids = np.concatenate([np.full(len(d), i) for i, d in dets.items()])
    labels, boxes, scores = (np.concatenate([getattr(d, k) for d in dets.values()]) for k in ("labels", "boxes", "scores"))
    whole = scorer.score_columns(ids, labels, boxes, scores)
    nf = labels == 14
    ap = scorer.class_ap_columns(ids[~nf], labels[~nf], boxes[~nf], scores[~nf])
    ap14 = scorer.class_ap_columns(ids[nf], labels[nf], boxes[nf], scores[nf])
    k = int(np.searchsorted(scorer.headline_table.category_ids, 14))
    if metric == "vinbig":
        ap[:, k] = ap14[:, k]
    assert scorer.score_from_class_ap(ap) == whole
    assert 0 < whole < 1


@pytest.mark.parametrize("metric", ["vinbig", "coco", "rsna"])
def test_sweep_state_scores_are_the_plain_scores_bit_for_bit(metric):
    """Every fusion x gate setting: the sweep's score == Scorer.score(as_written(apply_gate(fuse_many)))."""
    ds, models, sizes, p = CASE
    scorer = Scorer(ds, metric)
    state = SweepState.build(models, sizes, scorer, p, P_CLASS)
    for s in SETTINGS:
        scores, seconds = state.score(s, GATES)
        fused = fuse_many(models, sizes, **s.fusion_options())
        assert seconds >= 0
        for (mode, low, high), got in zip(GATES, scores, strict=True):
            dets = fused if mode is None else apply_gate(fused, p, mode, low, high, P_CLASS)
            assert got == scorer.score({i: d.as_written() for i, d in dets.items()}), (s, mode, low, high)


def test_parallel_sweep_equals_serial():
    ds, models, sizes, p = CASE
    state = SweepState.build(models, sizes, Scorer(ds, "vinbig"), p, P_CLASS)
    serial, _ = state.run(SETTINGS, GATES, workers=1)
    parallel, _ = state.run(SETTINGS, GATES, workers=2)
    assert serial == parallel
    assert len({x for row in serial for x in row}) > 10  # the settings do differ


def test_as_written_columns_equal_as_written():
    _, models, _, _ = CASE
    d = next(iter(models[0].values()))
    boxes, scores = as_written_columns(d.boxes, d.scores)
    assert_same(Detections(boxes, scores, d.labels), d.as_written())


@pytest.mark.filterwarnings("ignore:invalid value encountered in divide:RuntimeWarning")
def test_zero_score_clusters_fail_the_same_in_both_paths():
    """Boxes scored 0 that cluster give NaN in ensemble-boxes' arithmetic: both paths refuse them."""
    box = np.array([[10, 10, 50, 50]], np.float32)
    models = [{1: Detections(box, np.zeros(1, np.float32), [0])} for _ in range(2)]
    sizes = {1: (100, 100)}
    with pytest.raises(ValueError, match="non-finite"):
        fuse_many(models, sizes, method="nmw", iou_thr=0.5)
    with pytest.raises(ValueError, match="non-finite"):
        fuse_flat(flatten_many(models, sizes), FusionSettings(method="nmw", iou_thr=0.5))
    fused = fuse_many(models, sizes, method="nmw", iou_thr=0.5, skip_box_thr=0.01)  # dropped first: fine
    assert len(fused[1]) == 0
