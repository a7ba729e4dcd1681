"""Fusion (`fusion.engine`) against ensemble-boxes 1.0.9 on the same inputs, plus its own contract."""

from __future__ import annotations

import warnings

import ensemble_boxes as eb  # the reference implementation
import numpy as np
import pytest

from core.detections import Detections
from fusion.engine import fuse, fuse_many
from tests.conftest_paths import VINBIG_CSV, VINBIG_META

W, H = 640, 512


def random_models(
    seed: int, n_models: int, n_boxes: int, n_labels: int = 4, w: int = W, h: int = H, n_objects: int = 6
) -> list[Detections]:
    """Models that see the same objects with jitter, plus random false positives and some empty models."""
    rng = np.random.default_rng(seed)
    cx, cy = rng.uniform(0.1, 0.9, n_objects) * w, rng.uniform(0.1, 0.9, n_objects) * h
    bw, bh = rng.uniform(0.05, 0.4, n_objects) * w, rng.uniform(0.05, 0.4, n_objects) * h
    obj_lab = rng.integers(0, n_labels, n_objects)
    out = []
    for _ in range(n_models):
        n = int(rng.integers(0, n_boxes + 1))
        o = rng.integers(0, n_objects, n)
        jit = rng.normal(0, 0.06, (n, 4)) * np.stack([bw[o], bh[o], bw[o], bh[o]], 1)
        b = np.stack([cx[o] - bw[o] / 2, cy[o] - bh[o] / 2, cx[o] + bw[o] / 2, cy[o] + bh[o] / 2], 1) + jit
        fp = rng.random(n) < 0.3
        x1, y1 = rng.uniform(0, w, n), rng.uniform(0, h, n)
        b[fp] = np.stack([x1, y1, x1 + rng.uniform(1, 0.3 * w, n), y1 + rng.uniform(1, 0.3 * h, n)], 1)[fp]
        b = np.clip(b, 0, [w, h, w, h])
        b[:, 2:] = np.maximum(b[:, 2:], b[:, :2])
        labels = np.where(fp, rng.integers(0, n_labels, n), obj_lab[o])
        scores = np.round(rng.random(n), 2)  # rounded: ties in score, as real detectors give
        out.append(Detections(b.astype(np.float32), scores.astype(np.float32), labels))
    return out


def reference(dets: list[Detections], w: int, h: int, method: str, **kw):
    """ensemble-boxes on the same boxes divided by the image size; returns pixels boxes, scores, labels."""
    scale = np.array([w, h, w, h], np.float64)
    boxes = [d.boxes.astype(np.float64) / scale for d in dets]
    scores = [d.scores.copy() for d in dets]
    labels = [d.labels.copy() for d in dets]
    if method in ("nms", "soft-nms"):
        thr = kw.pop("skip_box_thr", 0.0)
        keep = [s >= thr for s in scores]
        boxes, scores, labels = (
            [a[k] for a, k in zip(x, keep, strict=True)] for x in (boxes, scores, labels)
        )
        if sum(len(b) for b in boxes) == 0:
            return np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if method == "wbf":
            b, s, lab = eb.weighted_boxes_fusion(boxes, scores, labels, **kw)
        elif method == "nmw":
            b, s, lab = eb.non_maximum_weighted(boxes, scores, labels, **kw)
        elif method == "nms":
            b, s, lab = eb.nms(boxes, scores, labels, **kw)
        else:
            sm = {"gaussian": 2, "linear": 1}[kw.pop("soft_method", "gaussian")]
            kw["thresh"] = kw.pop("soft_score_thr", 0.001)
            b, s, lab = eb.soft_nms(boxes, scores, labels, method=sm, **kw)
    return np.asarray(b, np.float64) * scale, np.asarray(s, np.float64), np.asarray(lab).astype(np.int64)


def canonical(boxes, scores, labels, w, h):
    """Rows sorted by score, then label, then box; boxes normalised to compare in [0, 1]."""
    b = np.asarray(boxes, np.float64) / np.array([w, h, w, h])
    s = np.asarray(scores, np.float64)
    lab = np.asarray(labels, np.int64)
    o = np.lexsort((b[:, 3], b[:, 2], b[:, 1], b[:, 0], lab, np.round(-s, 5)))
    return b[o], s[o], lab[o]


def assert_same(ours: Detections, ref, w: int, h: int, clip: bool = True) -> None:
    rb, rs, rl = ref
    if clip:
        rs = np.minimum(rs, 1.0)
    assert len(ours) == len(rs), f"{len(ours)} fused boxes, ensemble-boxes has {len(rs)}"
    ob, os_, ol = canonical(ours.boxes, ours.scores, ours.labels, w, h)
    rb, rs, rl = canonical(rb, rs, rl, w, h)
    np.testing.assert_array_equal(ol, rl)
    np.testing.assert_allclose(os_, rs, atol=1e-5, rtol=0)
    np.testing.assert_allclose(ob, rb, atol=1e-5, rtol=0)


CASES = [
    # method, options
    ("wbf", {}),
    ("wbf", {"iou_thr": 0.4, "skip_box_thr": 0.2}),
    ("wbf", {"conf_type": "max", "weights": "random"}),
    ("wbf", {"conf_type": "box_and_model_avg", "weights": "random", "iou_thr": 0.3}),
    ("wbf", {"conf_type": "absent_model_aware_avg", "weights": "random"}),
    ("wbf", {"conf_type": "avg", "weights": "random", "iou_thr": 0.7}),
    ("nms", {}),
    ("nms", {"iou_thr": 0.3, "weights": "random", "skip_box_thr": 0.1}),
    ("soft-nms", {}),
    ("soft-nms", {"sigma": 0.1, "weights": "random"}),
    ("soft-nms", {"soft_method": "linear", "iou_thr": 0.3, "soft_score_thr": 0.05}),
    ("nmw", {}),
    ("nmw", {"iou_thr": 0.35, "weights": "random", "skip_box_thr": 0.3}),
]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(("method", "opts"), CASES)
def test_matches_ensemble_boxes_on_random_models(method, opts, seed):
    n_models = 2 + seed
    dets = random_models(seed, n_models, 40)
    opts = dict(opts)
    if opts.get("weights") == "random":
        opts["weights"] = list(np.random.default_rng(seed).uniform(0.5, 3.0, n_models).round(2))
    ours = fuse(dets, W, H, method=method, **opts)
    assert ours.labels.dtype == np.int64 and ours.scores.max(initial=0) <= 1.0
    assert_same(ours, reference(dets, W, H, method, **opts), W, H)


@pytest.mark.parametrize("method", ["wbf", "nms", "soft-nms", "nmw"])
def test_fuse_many_equals_fuse_per_image(method):
    sizes = {i: (300 + 37 * i, 200 + 11 * i) for i in range(12)}
    per_image = {i: random_models(100 + i, 3, 30, w=sizes[i][0], h=sizes[i][1]) for i in sizes}
    per_model = [{i: per_image[i][t] for i in sizes if i % 4 != t} for t in range(3)]  # gaps: absent images
    many = fuse_many(per_model, sizes, method=method, iou_thr=0.5)
    assert set(many) == set(sizes)
    for i, (w, h) in sizes.items():
        dets = [per_model[t].get(i, Detections.empty()) for t in range(3)]
        one = fuse(dets, w, h, method=method, iou_thr=0.5)
        np.testing.assert_array_equal(many[i].boxes, one.boxes)
        np.testing.assert_array_equal(many[i].scores, one.scores)
        np.testing.assert_array_equal(many[i].labels, one.labels)
        assert_same(one, reference(dets, w, h, method, iou_thr=0.5), w, h)


def _real_images(n: int = 200):
    import pandas as pd

    assert VINBIG_CSV.is_file(), f"real data missing: {VINBIG_CSV}"
    df = pd.read_csv(VINBIG_CSV)
    meta = pd.read_csv(VINBIG_META).set_index("image_id")
    df = df[df["class_id"] != 14].dropna(subset=["x_min", "y_min", "x_max", "y_max"])
    ids = sorted(set(df["image_id"]) & set(meta.index))[:n]
    rng = np.random.default_rng(7)
    out = []
    for image_id in ids:
        rows = df[df["image_id"] == image_id]
        h, w = int(meta.loc[image_id, "dim0"]), int(meta.loc[image_id, "dim1"])
        dets = []
        for _, r in rows.groupby("rad_id", sort=True):
            b = r[["x_min", "y_min", "x_max", "y_max"]].to_numpy(np.float32)
            dets.append(Detections(b, np.ones(len(b), np.float32), r["class_id"].to_numpy(np.int64)))
        seeded = [Detections(d.boxes, rng.uniform(0.3, 1, len(d)).astype(np.float32), d.labels) for d in dets]
        out.append((image_id, w, h, dets, seeded))
    return out


def test_matches_ensemble_boxes_on_real_radiologists_boxes():
    images = _real_images()
    assert len(images) >= 100
    for _, w, h, dets, seeded in images:
        for d in (dets, seeded):  # score 1.0 (all ties: order must match exactly) and seeded scores
            assert_same(
                fuse(d, w, h, method="wbf", iou_thr=0.4), reference(d, w, h, "wbf", iou_thr=0.4), w, h
            )
    sizes = {k: (w, h) for k, (_, w, h, _, _) in enumerate(images)}
    n_rad = max(len(x[3]) for x in images)
    per_model = [{k: x[3][t] for k, x in enumerate(images) if t < len(x[3])} for t in range(n_rad)]
    many = fuse_many(per_model, sizes, method="wbf", iou_thr=0.4)
    for k, (_, w, h, dets, _) in enumerate(images):
        dets = dets + [Detections.empty()] * (n_rad - len(dets))
        assert_same(many[k], reference(dets, w, h, "wbf", iou_thr=0.4), w, h)


@pytest.mark.parametrize("method", ["wbf", "nms", "nmw"])  # Soft-NMS decays duplicates, keeps them
@pytest.mark.parametrize("n", [1, 2, 5])
def test_identical_models_give_the_same_boxes(method, n):
    (d,) = random_models(3, 1, 30)
    one = fuse([d], W, H, method=method)
    many = fuse([d] * n, W, H, method=method)
    if method == "wbf":  # each input box comes back once, with its score
        ref = fuse([d], W, H, method="nms", iou_thr=1.0)
        np.testing.assert_allclose(np.sort(many.scores), np.sort(ref.scores), atol=1e-6)
    np.testing.assert_allclose(many.boxes, one.boxes, atol=1e-3)
    if method in ("wbf", "nmw"):
        np.testing.assert_allclose(many.scores, one.scores, atol=1e-6)
    np.testing.assert_array_equal(many.labels, one.labels)


def test_identical_boxes_fuse_to_that_box():
    box = Detections(np.array([[10.5, 20.25, 200.0, 300.0]], np.float32), np.array([0.8], np.float32), [3])
    for method in ("wbf", "nms", "soft-nms", "nmw"):
        out = fuse([box] * 4, W, H, method=method, soft_method="linear")
        assert len(out) == 1
        np.testing.assert_allclose(out.boxes[0], box.boxes[0], atol=1e-3)
        assert out.labels[0] == 3 and out.labels.dtype == np.int64
    assert fuse([box] * 4, W, H, method="wbf").scores[0] == pytest.approx(0.8)
    assert fuse([box] * 4, W, H, method="nms").scores[0] == pytest.approx(0.8)  # no weights: scores as given


@pytest.mark.parametrize("method", ["wbf", "nms", "soft-nms", "nmw"])
def test_empty_inputs_give_empty_detections(method):
    e = Detections.empty()
    for dets in ([e], [e, e, e]):
        out = fuse(dets, W, H, method=method)
        assert len(out) == 0 and out.boxes.shape == (0, 4) and out.labels.dtype == np.int64
    (d,) = random_models(5, 1, 20)
    with_empty = fuse([d, e], W, H, method=method)
    assert_same(with_empty, reference([d, e], W, H, method), W, H)
    out = fuse([d], W, H, method=method, skip_box_thr=2.0)  # everything filtered out
    assert len(out) == 0
    many = fuse_many([{}, {1: e}], {1: (W, H), 2: (W, H)}, method=method)
    assert set(many) == {1, 2} and all(len(v) == 0 for v in many.values())


def test_inputs_not_mutated():
    dets = random_models(11, 3, 30)
    copies = [(d.boxes.copy(), d.scores.copy(), d.labels.copy()) for d in dets]
    weights = [1.0, 2.0, 0.5]
    for method in ("wbf", "nms", "soft-nms", "nmw"):
        fuse(dets, W, H, method=method, weights=weights)
        fuse_many([{0: d} for d in dets], {0: (W, H)}, method=method, weights=weights)
    assert weights == [1.0, 2.0, 0.5]
    for d, (b, s, lab) in zip(dets, copies, strict=True):
        np.testing.assert_array_equal(d.boxes, b)
        np.testing.assert_array_equal(d.scores, s)
        np.testing.assert_array_equal(d.labels, lab)


def test_scores_clipped_at_one_where_ensemble_boxes_exceeds_it():
    b = np.array([[10, 10, 100, 100], [12, 11, 101, 99]], np.float32)
    d0 = Detections(b, np.ones(2, np.float32), [0, 0])
    d1 = Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))
    ref = reference([d0, d1], W, H, "wbf", weights=[3.0, 1.0])
    assert ref[1].max() > 1.0  # ensemble-boxes: 3 * 2 / 4 = 1.5
    ours = fuse([d0, d1], W, H, method="wbf", weights=[3.0, 1.0])
    assert ours.scores.max() == 1.0
    assert_same(ours, ref, W, H, clip=True)


def test_box_within_tolerance_is_clipped_like_ensemble_boxes():
    d = Detections(np.array([[-0.5, 0, 100, H + 0.9]], np.float32), np.array([0.9], np.float32), [1])
    out = fuse([d, d], W, H)
    np.testing.assert_allclose(out.boxes[0], [0, 0, 100, H], atol=1e-3)
    assert_same(out, reference([d, d], W, H, "wbf"), W, H)


@pytest.mark.parametrize(
    ("box", "model"),
    [([-5, 0, 10, 10], 1), ([0, 0, W + 2, 10], 0), ([0, -1.5, 10, 10], 1), ([0, 0, 10, H + 40], 0)],
)
def test_box_outside_image_raises_naming_model_and_box(box, model):
    good = Detections(np.array([[1, 1, 5, 5]], np.float32), np.array([0.5], np.float32), [0])
    bad = Detections(np.array([[1, 1, 5, 5], box], np.float32), np.array([0.5, 0.5], np.float32), [0, 0])
    dets = [good, good]
    dets[model] = bad
    with pytest.raises(ValueError, match=rf"model {model} box 1 .*outside the {W}x{H} image"):
        fuse(dets, W, H)
    with pytest.raises(ValueError, match=rf"image 7: model {model} box 1"):
        fuse_many([{7: d} for d in dets], {7: (W, H)})


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"method": "wbf2"}, "unknown method 'wbf2'"),
        ({"conf_type": "mean"}, "unknown conf_type 'mean'"),
        ({"soft_method": "cubic"}, "unknown soft_method 'cubic'"),
        ({"weights": [1.0]}, r"1 weights \[1.0\] for 2 models"),
        ({"weights": [1.0, 2.0, 3.0]}, "3 weights"),
        ({"weights": [1.0, 0.0]}, "weights must be finite and > 0"),
        ({"iou_thr": 1.5}, "iou_thr must be in"),
        ({"sigma": 0.0}, "sigma must be > 0"),
    ],
)
def test_bad_options_raise_value_error(kw, match):
    dets = random_models(0, 2, 5)
    with pytest.raises(ValueError, match=match):
        fuse(dets, W, H, **kw)


def test_fuse_many_rejects_unknown_image_and_option():
    d = Detections.empty()
    with pytest.raises(ValueError, match="not in sizes"):
        fuse_many([{1: d, 9: d}], {1: (W, H)})
    with pytest.raises(ValueError, match="unknown fusion options"):
        fuse_many([{1: d}], {1: (W, H)}, iou=0.5)
    with pytest.raises(ValueError, match="image size must be positive"):
        fuse([d], 0, H)
    with pytest.raises(TypeError, match="expected Detections"):
        fuse([np.zeros((1, 4))], W, H)  # type: ignore[list-item]
