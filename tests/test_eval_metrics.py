"""eval metrics: COCO mAP and the VinBigData metric against pycocotools, the RSNA metric against a loop."""

from __future__ import annotations

import contextlib
import copy
import csv
import io
import math

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from core.detections import Detections
from eval.metrics import NO_FINDING, RSNA_IOU_THRESHOLDS, coco_map, rsna_per_image, rsna_score, vinbig_map
from tests.conftest_paths import VINBIG_CSV, open_text

TOL = 1e-6


# --------------------------------------------------------------------------- helpers


def make_dataset(image_ids, categories, anns) -> dict:
    """COCO dict; ``anns`` is a list of (image_id, category_id, [x, y, w, h]); ids from 1."""
    return {
        "images": [{"id": int(i), "file_name": f"{i}.png", "width": 1024, "height": 1024} for i in image_ids],
        "categories": [{"id": int(c), "name": f"c{c}"} for c in categories],
        "annotations": [
            {
                "id": k + 1,
                "image_id": int(i),
                "category_id": int(c),
                "bbox": [float(v) for v in b],
                "area": float(b[2] * b[3]),
                "iscrowd": 0,
            }
            for k, (i, c, b) in enumerate(anns)
        ],
    }


def pycoco(gt: dict, results: list[dict], iou_thrs=None, max_dets: int = 100):
    """pycocotools' precision (T, R, K) and recall (T, K), area "all", one maxDets."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        ev = COCOeval(coco_gt, coco_gt.loadRes(copy.deepcopy(results)), "bbox")
        if iou_thrs is not None:
            ev.params.iouThrs = np.asarray(iou_thrs, dtype=float)
        ev.params.maxDets = [max_dets]
        ev.params.areaRng, ev.params.areaRngLbl = [[0, 1e5**2]], ["all"]
        ev.evaluate()
        ev.accumulate()
    return ev.eval["precision"][:, :, :, 0, 0], ev.eval["recall"][:, :, 0, 0], list(ev.params.catIds)


def assert_same_as_pycocotools(ours, gt, results, iou_thrs=None, max_dets=100):
    prec, rec, cat_ids = pycoco(gt, results, iou_thrs, max_dets)
    assert abs(ours.map - prec[prec > -1].mean()) < TOL
    assert abs(ours.recall - rec[rec > -1].mean()) < TOL
    for t, key in enumerate(ours.per_iou):
        p = prec[t]
        assert abs(ours.per_iou[key] - p[p > -1].mean()) < TOL
    evaluated = [c for k, c in enumerate(cat_ids) if (prec[:, :, k] > -1).all()]
    assert sorted(ours.per_class) == evaluated
    assert set(ours.classes_without_gt) == set(cat_ids) - set(evaluated)
    for k, c in enumerate(cat_ids):
        if c in ours.per_class:
            assert abs(ours.per_class[c] - prec[:, :, k].mean()) < TOL
            assert abs(ours.per_class_recall[c] - rec[:, k].mean()) < TOL
            assert np.allclose(ours.curves[c].interpolated, prec[0, :, k], atol=TOL, rtol=0)


def random_case(seed: int, n_images: int = 40, crowded: bool = False):
    """Images with and without GT, a class with no GT (5), one with no predictions (3), score ties,
    duplicated GT boxes (IoU ties) and non-contiguous, shuffled image ids."""
    rng = np.random.default_rng(seed)
    image_ids = rng.permutation(np.arange(n_images) * 3 + 7)
    categories = [1, 2, 3, 5]
    anns, results = [], []
    for i in image_ids:
        for _ in range(rng.integers(0, 5)):
            c = int(rng.choice([1, 2, 3]))
            x, y = rng.uniform(0, 800, 2)
            b = [x, y, *rng.uniform(10, 200, 2)]
            anns.append((i, c, b))
            if rng.random() < 0.15:
                anns.append((i, c, list(b)))  # identical GT: equal IoU for any detection
    by_image: dict[int, list] = {}
    for i, c, b in anns:
        by_image.setdefault(int(i), []).append((c, b))
    for i in image_ids:
        n_det = int(rng.integers(0, 400 if crowded else 25))
        for _ in range(n_det):
            gts = by_image.get(int(i), [])
            if gts and rng.random() < 0.5:
                c, b = gts[rng.integers(len(gts))]
                b = (np.asarray(b) + rng.normal(0, 8, 4) * [1, 1, 0.5, 0.5]).clip(0.5).tolist()
                c = c if rng.random() < 0.9 else int(rng.choice([1, 2, 5]))
            else:
                c = int(rng.choice([1, 2, 5]))
                b = [*rng.uniform(0, 800, 2), *rng.uniform(5, 200, 2)]
            if c == 3:
                c = 1  # class 3 gets no predictions
            score = float(np.round(rng.random(), 1 if rng.random() < 0.5 else 6))  # many ties
            results.append({"image_id": int(i), "category_id": int(c), "bbox": b, "score": score})
    return make_dataset(image_ids, categories, anns), results


# --------------------------------------------------------------------------- COCO mAP


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_coco_map_equals_pycocotools_random(seed):
    gt, results = random_case(seed)
    before = copy.deepcopy((gt, results))
    assert_same_as_pycocotools(coco_map(gt, results, max_dets=100), gt, results)
    assert_same_as_pycocotools(coco_map(gt, results, iou_thrs=[0.4], max_dets=100), gt, results, [0.4])
    # fewer than 10**6 detections per (image, class): pycocotools' cap is then no cap
    assert_same_as_pycocotools(coco_map(gt, results, iou_thrs=[0.3, 0.75]), gt, results, [0.3, 0.75], 10**6)
    assert (gt, results) == before  # inputs untouched


@pytest.mark.parametrize(("seed", "max_dets"), [(10, 100), (11, 3), (12, 1)])
def test_coco_map_detection_cap_equals_pycocotools(seed, max_dets):
    gt, results = random_case(seed, n_images=12, crowded=True)
    assert_same_as_pycocotools(coco_map(gt, results, max_dets=max_dets), gt, results, max_dets=max_dets)


def test_coco_map_equals_cocoeval_stats():
    gt, results = random_case(7)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        ev = COCOeval(coco_gt, coco_gt.loadRes(copy.deepcopy(results)), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    ours = coco_map(gt, results, max_dets=100)
    assert abs(ours.map - ev.stats[0]) < TOL  # AP @[.5:.95], all areas, maxDets 100
    assert abs(ours.per_iou[0.5] - ev.stats[1]) < TOL
    assert abs(ours.per_iou[0.75] - ev.stats[2]) < TOL
    assert abs(ours.recall - ev.stats[8]) < TOL  # AR, maxDets 100


def _vinbig_rows():
    with open_text(VINBIG_CSV) as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def radiologists_case():
    """300 abnormal + 100 normal VinBigData images: one radiologist's boxes as predictions, the others' as GT."""
    assert VINBIG_CSV.is_file(), f"real data missing: {VINBIG_CSV}"
    rows = _vinbig_rows()
    abnormal = sorted({r["image_id"] for r in rows if r["class_id"] != "14"})
    rng = np.random.default_rng(2024)
    normal = sorted({r["image_id"] for r in rows} - set(abnormal))
    chosen = (
        rng.choice(abnormal, size=300, replace=False).tolist()
        + rng.choice(normal, size=100, replace=False).tolist()
    )
    chosen.sort()
    index = {s: k + 1 for k, s in enumerate(chosen)}
    rads = {}
    for r in rows:
        if r["image_id"] in index:
            rads.setdefault(r["image_id"], set()).add(r["rad_id"])
    predictor = {s: rng.choice(sorted(rads[s])) for s in chosen}
    anns, results, normal_by_rad = [], [], set()
    for r in rows:
        i = index.get(r["image_id"])
        if i is None:
            continue
        if r["class_id"] == "14":
            if r["rad_id"] == predictor[r["image_id"]]:
                normal_by_rad.add(i)
            continue
        x1, y1, x2, y2 = (float(r[k]) for k in ("x_min", "y_min", "x_max", "y_max"))
        box, c = [x1, y1, x2 - x1, y2 - y1], int(r["class_id"])
        if r["rad_id"] == predictor[r["image_id"]]:
            score = float(np.round(rng.random(), 2))  # ties
            results.append({"image_id": i, "category_id": c, "bbox": box, "score": score})
        else:
            anns.append((i, c, box))
    gt = make_dataset(range(1, len(chosen) + 1), range(14), anns)
    return gt, results, normal_by_rad


def test_coco_map_equals_pycocotools_on_real_radiologists_boxes(radiologists_case):
    gt, results, _ = radiologists_case
    assert len(results) > 300 and len(gt["annotations"]) > 500
    assert_same_as_pycocotools(coco_map(gt, results, max_dets=100), gt, results)
    for thr in (0.4, 0.5):
        assert_same_as_pycocotools(coco_map(gt, results, iou_thrs=[thr]), gt, results, [thr], 10**6)


def test_vinbig_map_equals_pycocotools_on_real_radiologists_boxes(radiologists_case):
    gt, results, normal_by_rad = radiologists_case
    rng = np.random.default_rng(5)
    images = [im["id"] for im in gt["images"]]
    p_normal = {i: float(rng.uniform(0.5, 1) if i in normal_by_rad else rng.uniform(0, 0.6)) for i in images}
    rows14 = [
        {"image_id": i, "category_id": NO_FINDING, "bbox": [0, 0, 1, 1], "score": p_normal[i]} for i in images
    ]
    ours = vinbig_map(gt, results + rows14)
    # the same thing spelled out for pycocotools: class 14 GT on images without annotations
    with_gt = {a["image_id"] for a in gt["annotations"]}
    normals = [i for i in images if i not in with_gt]
    assert len(normals) >= 100
    gt14 = copy.deepcopy(gt)
    gt14["categories"].append({"id": NO_FINDING, "name": "No finding"})
    n = len(gt14["annotations"])
    gt14["annotations"] += [
        {
            "id": n + k + 1,
            "image_id": i,
            "category_id": NO_FINDING,
            "bbox": [0, 0, 1, 1],
            "area": 1,
            "iscrowd": 0,
        }
        for k, i in enumerate(normals)
    ]
    assert_same_as_pycocotools(ours, gt14, results + rows14, [0.4], 10**6)
    assert NO_FINDING in ours.per_class


# --------------------------------------------------------------------------- behaviour and errors


def test_empty_results_give_zero_and_no_gt_gives_nan():
    gt, _ = random_case(3)
    r = coco_map(gt, [])
    assert r.map == 0.0 and r.recall == 0.0 and all(v == 0.0 for v in r.per_class.values())
    assert r.classes_without_gt == (5,)
    empty = make_dataset([1, 2], [0], [])
    assert math.isnan(
        coco_map(empty, [{"image_id": 1, "category_id": 0, "bbox": [0, 0, 1, 1], "score": 1}]).map
    )


def test_detections_mapping_equals_results_list():
    gt = make_dataset([1, 2], [0, 1], [(1, 0, [10, 10, 20, 20]), (2, 1, [0, 0, 50, 40])])
    dets = {
        1: Detections([[10, 10, 30, 30], [0, 0, 8, 8]], [0.9, 0.3], [0, 1]),
        2: Detections([[2, 0, 50, 40]], [0.5], [1]),
    }
    results = [
        {"image_id": 1, "category_id": 0, "bbox": [10, 10, 20, 20], "score": 0.9},
        {"image_id": 1, "category_id": 1, "bbox": [0, 0, 8, 8], "score": 0.3},
        {"image_id": 2, "category_id": 1, "bbox": [2, 0, 48, 40], "score": 0.5},
    ]
    a, b = coco_map(gt, dets), coco_map(gt, results)
    assert a.map == pytest.approx(b.map, abs=1e-6) and a.per_class == pytest.approx(b.per_class, abs=1e-6)


@pytest.mark.parametrize(
    ("entry", "match"),
    [
        (
            {"image_id": 99, "category_id": 0, "bbox": [0, 0, 1, 1], "score": 1},
            r"image ids not in the dataset: \[99\]",
        ),
        (
            {"image_id": 1, "category_id": 7, "bbox": [0, 0, 1, 1], "score": 1},
            r"category ids not in the dataset: \[7\]",
        ),
        ({"image_id": 1, "category_id": 0, "bbox": [0, 0, -1, 1], "score": 1}, "negative width"),
        ({"image_id": 1, "category_id": 0, "bbox": [0, 0, 1], "score": 1}, "entry 1 has no 'bbox'"),
        ({"image_id": 1, "category_id": 0, "bbox": [0, 0, 1, 1]}, "score"),
        ({"category_id": 0, "bbox": [0, 0, 1, 1], "score": 1}, "entry 1 has no integer 'image_id'"),
    ],
)
def test_bad_results_raise_naming_the_offender(entry, match):
    gt = make_dataset([1, 2], [0], [(1, 0, [0, 0, 5, 5])])
    ok = {"image_id": 2, "category_id": 0, "bbox": [0, 0, 1, 1], "score": 0.5}
    with pytest.raises(ValueError, match=match):
        coco_map(gt, [ok, entry])


# --------------------------------------------------------------------------- VinBigData hand cases


def _vinbig_hand_case():
    # image 2 has one lesion (class 0); images 1 and 3 are normal
    gt = make_dataset([1, 2, 3], range(14), [(2, 0, [100, 100, 50, 50])])
    results = [{"image_id": 2, "category_id": 0, "bbox": [100, 100, 50, 50], "score": 0.9}]
    return gt, results


def test_vinbig_map_perfect_no_finding():
    gt, results = _vinbig_hand_case()
    # "No finding" ranked 1 (0.9, TP), 3 (0.8, TP), 2 (0.1, FP): AP 1; class 0: AP 1 → mAP 1
    r = vinbig_map(gt, results + _no_finding_rows({1: 0.9, 2: 0.1, 3: 0.8}))
    # (precision is tp / (tp + fp + eps), as pycocotools, so "1" is 1 - 1e-16)
    assert r.per_class == pytest.approx({0: 1.0, NO_FINDING: 1.0}, abs=1e-12) and r.map == pytest.approx(1.0)
    assert r.classes_without_gt == tuple(range(1, 14))


def _no_finding_rows(p_normal: dict[int, float]) -> list[dict]:
    """Class-14 results rows ``[0, 0, 1, 1]`` scored P(normal), as a gated fusion writes them."""
    return [
        {"image_id": i, "category_id": NO_FINDING, "bbox": [0, 0, 1, 1], "score": s} for i, s in p_normal.items()
    ]


def test_vinbig_map_misranked_no_finding():
    gt, results = _vinbig_hand_case()
    # ranked 1 (TP: R .5, P 1), 2 (FP: R .5, P .5), 3 (TP: R 1, P 2/3); monotone P = 1, 2/3, 2/3
    # recall thresholds 0.00..0.50 (51 points) read P 1, 0.51..1.00 (50 points) read 2/3
    ap14 = (51 * 1 + 50 * 2 / 3) / 101  # 0.834983...
    r = vinbig_map(gt, results + _no_finding_rows({1: 0.9, 2: 0.8, 3: 0.1}))
    assert r.per_class[NO_FINDING] == pytest.approx(ap14, abs=1e-12)
    assert r.map == pytest.approx((1 + ap14) / 2, abs=1e-12)  # 0.917491...
    # no gate and no class-14 rows: "No finding" has GT but no prediction → AP 0
    assert vinbig_map(gt, results).per_class[NO_FINDING] == 0.0


def test_vinbig_map_errors():
    gt, results = _vinbig_hand_case()
    with pytest.raises(ValueError, match=r"results: image ids not in the dataset: \[42\]"):
        vinbig_map(gt, results + _no_finding_rows({1: 0.5, 42: 0.5}))
    bad = make_dataset([1], range(15), [(1, 14, [0, 0, 1, 1])])
    with pytest.raises(ValueError, match="No finding"):
        vinbig_map(bad, [])


# --------------------------------------------------------------------------- RSNA


def _iou(a, b) -> float:
    """IoU of two [x, y, w, h] boxes, written out."""
    ax2, ay2, bx2, by2 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    iw = min(ax2, bx2) - max(a[0], b[0])
    ih = min(ay2, by2) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def rsna_reference(gt: dict, results: list[dict], score_thr: float = 0.0) -> float:
    """The RSNA formula as loops: per image mean over thresholds of TP / (TP + FP + FN)."""
    scores = []
    for im in gt["images"]:
        gts = [a["bbox"] for a in gt["annotations"] if a["image_id"] == im["id"]]
        preds = [r for r in results if r["image_id"] == im["id"] and r["score"] >= score_thr]
        preds = sorted(preds, key=lambda r: -r["score"])  # stable
        if not gts and not preds:
            continue
        total = 0.0
        for t in RSNA_IOU_THRESHOLDS:
            used = [False] * len(gts)
            tp = 0
            for p in preds:
                best, best_j = -1.0, -1
                for j, g in enumerate(gts):
                    v = _iou(p["bbox"], g)
                    if not used[j] and v > t and v >= best:
                        best, best_j = v, j
                if best_j >= 0:
                    used[best_j] = True
                    tp += 1
            total += tp / (tp + (len(preds) - tp) + (len(gts) - tp))
        scores.append(total / len(RSNA_IOU_THRESHOLDS))
    return float(np.mean(scores)) if scores else math.nan


def _det(i, box, score):
    return {"image_id": i, "category_id": 0, "bbox": box, "score": score}


RSNA_HAND_CASES = [
    # image 1: exact hit → 1 at all 8 thresholds; image 2: no GT, one prediction → 0;
    # image 3: nothing → skipped.  mean(1, 0) = 0.5
    ([(1, [0, 0, 10, 10])], [_det(1, [0, 0, 10, 10], 0.9), _det(2, [5, 5, 10, 10], 0.3)], 0.0, 0.5),
    # IoU exactly 0.5 (50 / 100): a hit only where IoU > t, i.e. t = 0.40, 0.45 → 2 of 8 = 0.25
    ([(1, [0, 0, 10, 10])], [_det(1, [0, 0, 10, 5], 0.9)], 0.0, 0.25),
    # GT A, B; predictions: exact on A, IoU 0.6 on B, one far away.
    # t = .40 .. .55: TP 2, FP 1, FN 0 → 2/3; t = .60 .. .75: TP 1, FP 2, FN 1 → 1/4
    # (4 * 2/3 + 4 * 1/4) / 8 = 11/24
    (
        [(1, [0, 0, 10, 10]), (1, [20, 0, 10, 10])],
        [_det(1, [0, 0, 10, 10], 0.9), _det(1, [20, 0, 10, 6], 0.8), _det(1, [200, 200, 5, 5], 0.7)],
        0.0,
        11 / 24,
    ),
    # greedy by score: the 0.9 box (IoU 0.5) takes the GT where t < 0.5, the exact 0.8 box where t >= 0.5;
    # either way TP 1, FP 1, FN 0 → 1/2 at every threshold
    ([(1, [0, 0, 10, 10])], [_det(1, [0, 0, 10, 5], 0.9), _det(1, [0, 0, 10, 10], 0.8)], 0.0, 0.5),
    # same with score_thr 0.85: the exact box is dropped → 2 of 8 = 0.25
    ([(1, [0, 0, 10, 10])], [_det(1, [0, 0, 10, 5], 0.9), _det(1, [0, 0, 10, 10], 0.8)], 0.85, 0.25),
]


@pytest.mark.parametrize(("anns", "results", "score_thr", "expected"), RSNA_HAND_CASES)
def test_rsna_hand_cases(anns, results, score_thr, expected):
    gt = make_dataset([1, 2, 3], [0], [(i, 0, b) for i, b in anns])
    assert rsna_score(gt, results, score_thr) == pytest.approx(expected, abs=1e-12)
    assert rsna_reference(gt, results, score_thr) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_rsna_equals_loop_reference_random(seed):
    rng = np.random.default_rng(seed)
    anns, results = [], []
    for i in range(1, 61):
        gts = [[*rng.uniform(0, 300, 2), *rng.uniform(20, 120, 2)] for _ in range(rng.integers(0, 4))]
        anns += [(i, 0, b) for b in gts]
        for _ in range(rng.integers(0, 5)):
            if gts and rng.random() < 0.7:
                b = (np.asarray(gts[rng.integers(len(gts))]) + rng.normal(0, 10, 4)).clip(1).tolist()
            else:
                b = [*rng.uniform(0, 300, 2), *rng.uniform(20, 120, 2)]
            results.append(_det(i, b, float(np.round(rng.random(), 1))))
    gt = make_dataset(range(1, 61), [0], anns)
    for thr in (0.0, 0.5):
        assert rsna_score(gt, results, thr) == pytest.approx(rsna_reference(gt, results, thr), abs=1e-12)
    per_image = rsna_per_image(gt, results)
    assert set(per_image) == {i for i, _, _ in anns} | {r["image_id"] for r in results}
    assert math.isnan(rsna_score(make_dataset([1], [0], []), []))


@pytest.mark.parametrize("huge", [False, True])
def test_sort_order_is_a_stable_multi_key_sort(huge):
    from eval.coco_map import rank_within_groups, sort_order

    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 4, 500), rng.integers(0, 6, 500)
    size_b = 2**62 if huge else 6  # huge: no 63-bit key, falls back to np.lexsort
    assert (sort_order([(a, 4), (b, size_b)]) == np.lexsort((b, a))).all()
    scores = np.round(rng.random(500), 1)
    rank = rank_within_groups(a, scores)
    for g in range(4):
        rows = np.flatnonzero(a == g)
        assert (rank[rows][np.argsort(-scores[rows], kind="stable")] == np.arange(len(rows))).all()
