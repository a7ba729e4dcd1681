"""The gate's combination rules (`fusion.gate`): each rule, its direction, its thresholds, the metric."""

from __future__ import annotations

import numpy as np
import pytest

from core.detections import Detections, to_coco_results
from eval.metrics import vinbig_map
from fusion.gate import NO_FINDING, NO_FINDING_BOX, apply_gate, strip_no_finding


def two_boxes() -> Detections:
    return Detections(
        np.array([[10, 20, 50, 60], [30, 30, 90, 80]], np.float32),
        np.array([0.9, 0.4], np.float32),
        np.array([3, 8], np.int64),
    )


def rows(d: Detections) -> list[tuple]:
    return sorted(
        (int(c), round(float(s), 6), tuple(round(v, 4) for v in b))
        for b, s, c in zip(d.boxes.tolist(), d.scores.tolist(), d.labels.tolist(), strict=True)
    )


def no_finding(d: Detections) -> list[float]:
    """Scores of the "No finding" rows (checking their box)."""
    nf = d.labels == NO_FINDING
    assert (d.boxes[nf] == np.array(NO_FINDING_BOX, np.float32)).all()
    return d.scores[nf].tolist()


def lesions(d: Detections) -> Detections:
    return d.select(d.labels != NO_FINDING)


def test_append_adds_p_normal_and_keeps_boxes():
    dets = {1: two_boxes(), 2: Detections.empty()}
    out = apply_gate(dets, {1: 0.75, 2: 0.0}, "append")
    assert no_finding(out[1]) == pytest.approx([0.25])
    assert rows(lesions(out[1])) == rows(dets[1])
    assert no_finding(out[2]) == [1.0] and len(out[2]) == 1
    assert list(out[1].scores) == sorted(out[1].scores, reverse=True)


@pytest.mark.parametrize(
    ("mode", "kw"), [("append", {}), ("rescale", {}), ("filter", {"low": 0.05, "high": 0.95})]
)
def test_no_finding_score_is_p_normal_never_p_abnormal(mode, kw):
    out = apply_gate({7: two_boxes()}, {7: 0.9}, mode, **kw)
    assert no_finding(out[7]) == pytest.approx([0.1])  # P(normal) = 1 - 0.9, not 0.9


# p_abnormal → expected (keeps boxes, "No finding" scores); low = 0.25, high = 0.75 (exact in binary)
FILTER_CASES = [
    (0.0, False, [1.0]),
    (0.24, False, [1.0]),
    (0.25, True, [0.75]),  # == low: the middle band, inclusive
    (0.5, True, [0.5]),
    (0.75, True, [0.25]),  # == high: still the middle band
    (0.76, True, []),
    (1.0, True, []),
]


@pytest.mark.parametrize(("p", "keeps", "nf"), FILTER_CASES)
def test_filter_bands_and_boundaries(p, keeps, nf):
    d = two_boxes()
    out = apply_gate({3: d}, {3: p}, "filter", low=0.25, high=0.75)[3]
    assert no_finding(out) == pytest.approx(nf)
    assert rows(lesions(out)) == (rows(d) if keeps else [])


def test_filter_with_full_band_is_append():
    dets = {i: two_boxes() for i in range(5)}
    p = {i: i / 4 for i in range(5)}
    a = apply_gate(dets, p, "append")
    f = apply_gate(dets, p, "filter", low=0.0, high=1.0)
    assert all(rows(a[i]) == rows(f[i]) for i in dets)


def test_rescale_multiplies_scores_by_p_abnormal_and_appends_p_normal():
    d = two_boxes()
    out = apply_gate({1: d}, {1: 0.5}, "rescale")[1]
    np.testing.assert_allclose(sorted(lesions(out).scores), sorted(d.scores * 0.5), rtol=1e-6)
    assert no_finding(out) == pytest.approx([0.5])
    np.testing.assert_array_equal(lesions(out).boxes[np.argsort(lesions(out).labels)], d.boxes)


def test_inputs_are_not_mutated():
    d = two_boxes()
    dets = {1: d, 2: Detections.empty()}
    p = {1: 0.1, 2: 0.9, 3: 0.5}
    before = ({k: rows(v) for k, v in dets.items()}, dict(p))
    for mode, kw in (("append", {}), ("rescale", {}), ("filter", {"low": 0.2, "high": 0.8})):
        out = apply_gate(dets, p, mode, **kw)
        assert out is not dets and set(out) == {1, 2}  # extra gate ids are fine, not added
    assert ({k: rows(v) for k, v in dets.items()}, p) == before and dets[1] is d


def test_missing_images_are_named():
    dets = {i: two_boxes() for i in (4, 5, 6)}
    with pytest.raises(ValueError, match=r"no score for 2 of 3 images, e.g. image ids \[5, 6\]"):
        apply_gate(dets, {4: 0.3}, "append")


def test_gating_twice_is_an_error():
    once = apply_gate({1: two_boxes()}, {1: 0.3}, "append")
    with pytest.raises(ValueError, match="image 1 already has 'No finding'"):
        apply_gate(once, {1: 0.3}, "append")
    assert rows(strip_no_finding(once)[1]) == rows(two_boxes())


@pytest.mark.parametrize(
    ("mode", "kw", "match"),
    [
        ("drop", {}, "unknown gate mode 'drop'"),
        ("filter", {"low": 0.2}, "needs both thresholds"),
        ("filter", {"low": 0.8, "high": 0.2}, r"low \(0.8\) must be <= high \(0.2\)"),
        ("filter", {"low": -0.1, "high": 0.5}, "low must be in"),
        ("filter", {"low": 0.1, "high": 1.5}, "high must be in"),
        ("append", {"low": 0.1}, "apply to the gate mode 'filter' only"),
    ],
)
def test_bad_options(mode, kw, match):
    with pytest.raises(ValueError, match=match):
        apply_gate({1: two_boxes()}, {1: 0.5}, mode, **kw)


def test_p_abnormal_outside_unit_interval_is_an_error():
    with pytest.raises(ValueError, match=r"image 1: p_abnormal must be in \[0, 1\], got 1.2"):
        apply_gate({1: two_boxes()}, {1: 1.2}, "append")


# ---------------------------------------------------------------- the VinBigData metric


def vinbig_case(seed: int = 0, n: int = 40):
    """A dataset dict (half the images normal) and a detector that also fires on normal images."""
    rng = np.random.default_rng(seed)
    images, anns, dets = [], [], {}
    for i in range(n):
        images.append({"id": i, "file_name": f"{i}.png", "width": 256, "height": 256})
        b, s, c = [], [], []
        if i % 2:  # abnormal: one or two lesions, found with jitter
            for _ in range(int(rng.integers(1, 3))):
                x, y = rng.uniform(10, 150, 2)
                w, h = rng.uniform(30, 90, 2)
                cat = int(rng.integers(0, 4))
                anns.append({"id": len(anns), "image_id": i, "category_id": cat, "bbox": [x, y, w, h]})
                b.append([x + 2, y - 1, x + w + 1, y + h + 2])
                s.append(rng.uniform(0.3, 0.9))
                c.append(cat)
        for _ in range(2):  # false positives on every image, scored like the true ones
            x, y = rng.uniform(0, 180, 2)
            b.append([x, y, x + 40, y + 40])
            s.append(rng.uniform(0.3, 0.9))
            c.append(int(rng.integers(0, 4)))
        dets[i] = Detections(np.array(b, np.float32), np.array(s, np.float32), np.array(c))
    cats = [{"id": k, "name": f"class {k}"} for k in range(14)]
    gt = {"images": images, "annotations": anns, "categories": cats}
    informative = {i: float(np.clip((0.85 if i % 2 else 0.15) + rng.normal(0, 0.05), 0, 1)) for i in range(n)}
    return gt, dets, informative


def test_informative_gate_improves_the_vinbig_metric():
    gt, dets, p = vinbig_case()
    plain = vinbig_map(gt, dets).map
    scores = {
        "append": vinbig_map(gt, apply_gate(dets, p, "append")).map,
        "filter": vinbig_map(gt, apply_gate(dets, p, "filter", low=0.5, high=0.5)).map,
        "rescale": vinbig_map(gt, apply_gate(dets, p, "rescale")).map,
    }
    assert all(s > plain + 0.05 for s in scores.values()), (plain, scores)
    # filter drops the false positives of normal images: better than append on this data
    assert scores["filter"] > scores["append"]
    # the gate read the wrong way round scores worse: the direction matters to the metric
    inverted = vinbig_map(gt, apply_gate(dets, {i: 1 - v for i, v in p.items()}, "append")).map
    assert inverted < scores["append"] - 0.05


def test_append_equals_the_metrics_own_gate_convention():
    gt, dets, p = vinbig_case(seed=1)
    ours = vinbig_map(gt, apply_gate(dets, p, "append")).map
    # the rule spelled out independently: every image gets "No finding" [0, 0, 1, 1] scored P(normal)
    rows14 = [{"image_id": i, "category_id": 14, "bbox": [0, 0, 1, 1], "score": 1.0 - v} for i, v in p.items()]
    theirs = vinbig_map(gt, to_coco_results(dets, decimals=6) + rows14).map
    assert ours == pytest.approx(theirs, abs=1e-6)
