"""The gate's combination rules (`fusion.gate`): each rule, its direction, its thresholds, the metric."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from core.class_probs import ClassProbs
from core.coco import CocoDataset
from core.detections import Detections, to_coco_results
from eval.metrics import vinbig_map
from eval.scoring import Scorer
from fusion.gate import NO_FINDING, NO_FINDING_BOX, apply_gate, class_scores, strip_no_finding


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


# ---------------------------------------------------------------- rescore: per-class probabilities


def test_rescore_multiplies_each_box_by_its_class_probability():
    d = two_boxes()  # classes 3 (0.9) and 8 (0.4)
    out = apply_gate({1: d}, {1: 0.75}, "rescore", p_class={1: {3: 0.5, 8: 0.25, 0: 1.0}})[1]
    assert rows(lesions(out)) == rows(Detections(d.boxes, np.array([0.45, 0.1], np.float32), d.labels))
    assert no_finding(out) == pytest.approx([0.25])  # P(no finding) = 1 - p_abnormal
    # a category no class stands for falls back to p_abnormal (the rescale rule)
    out = apply_gate({1: d}, {1: 0.75}, "rescore", p_class={1: {3: 0.5}})[1]
    np.testing.assert_allclose(sorted(lesions(out).scores), sorted([0.45, 0.4 * 0.75]), rtol=1e-6)


def test_rescore_needs_per_class_probabilities_for_every_image():
    dets = {1: two_boxes(), 2: two_boxes()}
    with pytest.raises(ValueError, match="needs a classifier's per-class probabilities"):
        apply_gate(dets, {1: 0.5, 2: 0.5}, "rescore")
    with pytest.raises(ValueError, match=r"no per-class probabilities for 1 of 2 images, e.g. image ids \[2\]"):
        apply_gate(dets, {1: 0.5, 2: 0.5}, "rescore", p_class={1: {3: 0.5}})
    with pytest.raises(ValueError, match="image 1: a class probability is outside"):
        apply_gate(dets, {1: 0.5, 2: 0.5}, "rescore", p_class={1: {3: 1.5}, 2: {}})


def multilabel_probs(gt: dict, informative: float, seed: int = 0) -> ClassProbs:
    """A VinBigData multi-label classifier (14 lesions + "No finding" 14) that knows each image's classes.

    ``informative`` in [0, 1]: 0 gives every probability 1 (no information); otherwise a present class
    scores about ``0.5 + informative / 2`` and an absent one ``0.5 - informative / 2``, with noise.
    """
    rng = np.random.default_rng(seed)
    ids = [im["id"] for im in gt["images"]]
    present = {i: set() for i in ids}
    for a in gt["annotations"]:
        present[a["image_id"]].add(a["category_id"])
    truth = np.array([[c in present[i] for c in range(14)] + [not present[i]] for i in ids], np.float64)
    if informative == 0:
        probs = np.ones_like(truth)
    else:
        probs = np.clip(0.5 + informative * (truth - 0.5) + rng.normal(0, 0.08, truth.shape), 0, 1)
    return ClassProbs("multilabel", (*(f"class {k}" for k in range(14)), "No finding"), tuple(range(15)), ids, probs)


def test_rescore_with_every_probability_1_leaves_the_metric_unchanged():
    gt, dets, _ = vinbig_case(seed=2)
    ds = CocoDataset(gt["images"], gt["annotations"], gt["categories"])
    ones = multilabel_probs(gt, informative=0)
    p = ones.p_abnormal()
    assert set(p.values()) == {0.0}  # P(no finding) = 1 everywhere
    out = apply_gate(dets, p, "rescore", p_class=class_scores(ones))
    # the boxes keep their scores, and "No finding" scores P(no finding) = 1 on every image
    assert all(rows(lesions(out[i])) == rows(dets[i]) and no_finding(out[i]) == [1.0] for i in dets)
    scorer = Scorer(ds, "vinbig")
    assert scorer.score(out) == scorer.score(apply_gate(dets, p, "append"))
    lesion_ap = {c: a for c, a in vinbig_map(gt, out).per_class.items() if c != NO_FINDING}
    plain_ap = {c: a for c, a in vinbig_map(gt, dets).per_class.items() if c != NO_FINDING}
    assert lesion_ap == plain_ap


def test_rescore_with_an_informative_classifier_beats_the_binary_gate():
    gt, dets, _ = vinbig_case(seed=3, n=60)
    ds = CocoDataset(gt["images"], gt["annotations"], gt["categories"])
    scorer = Scorer(ds, "vinbig")
    cp = multilabel_probs(gt, informative=0.7)
    p = cp.p_abnormal()  # the binary gate gets the same P(abnormal) as the classifier's "No finding"
    binary = {
        "append": scorer.score(apply_gate(dets, p, "append")),
        "rescale": scorer.score(apply_gate(dets, p, "rescale")),
        "filter": scorer.score(apply_gate(dets, p, "filter", low=0.5, high=0.5)),
    }
    rescored = scorer.score(apply_gate(dets, p, "rescore", p_class=class_scores(cp)))
    assert rescored > max(binary.values()) + 0.03, (rescored, binary)
    # the class probabilities read the wrong way round lose what they gave
    wrong = ClassProbs(cp.task, cp.classes, cp.category_ids, cp.image_ids, 1 - cp.probs)
    p_wrong = {i: 1 - v for i, v in wrong.p_abnormal().items()}  # "No finding" kept the right way
    assert scorer.score(apply_gate(dets, p_wrong, "rescore", p_class=class_scores(wrong))) < binary["rescale"]


def test_class_scores_keep_only_classes_that_are_lesion_categories():
    binary = ClassProbs("binary", ("abnormal",), (None,), [1, 2], [[0.2], [0.9]])
    assert class_scores(binary) is None
    covid = ClassProbs("multiclass", ("COVID", "Normal"), (None, None), [1], [[0.3, 0.7]])
    assert class_scores(covid) is None
    nih = ClassProbs("multilabel", ("Mass", "Hernia", "No Finding"), (4, None, 14), [5, 3], [[0.5, 0.1, 0.2], [0.25, 1, 0]])
    assert class_scores(nih) == {3: {4: 0.25}, 5: {4: 0.5}}


def test_run_and_sweep_use_rescore_only_with_a_per_class_gate_file(tmp_path, capsys):
    from core.class_probs import read_class_probs, write_class_probs
    from core.predictions import read_gate, read_predictions, write_gate, write_predictions
    from ensemble.__main__ import main as ensemble
    from ensemble.sweep import SweepGrid, sweep
    from fusion.engine import fuse_many

    gt, dets, _ = vinbig_case(seed=4, n=30)
    val = tmp_path / "val.json"
    ds = CocoDataset(gt["images"], gt["annotations"], gt["categories"])
    ds.write(val)
    model, rich, binary = tmp_path / "model.json", tmp_path / "classifier.json", tmp_path / "gate.json"
    write_predictions(model, dets, {"dataset": str(val)})
    cp = multilabel_probs(gt, informative=0.7)
    write_class_probs(rich, cp, {"dataset": str(val)})
    write_gate(binary, cp.p_abnormal(), {"dataset": str(val)})

    out = tmp_path / "rescored.json"
    common = ["run", "--preds", str(model), "--dataset", str(val), "--gate-mode", "rescore"]
    assert ensemble([*common, "--gate", str(rich), "--out", str(out)]) == 0
    ds = CocoDataset.load(val)
    fused = fuse_many([read_predictions(model, ds)], {im["id"]: (256, 256) for im in gt["images"]})
    on_file = read_class_probs(rich, ds)  # the file's probabilities: 6 decimals
    expected = apply_gate(fused, read_gate(rich), "rescore", p_class=class_scores(on_file))
    got = read_predictions(out, ds, extra_categories=(NO_FINDING,))
    assert all(rows(got[i]) == rows(expected[i].as_written()) for i in expected)
    assert ensemble([*common, "--gate", str(binary), "--out", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {binary}: the gate mode 'rescore' needs per-class") and err.count("\n") == 1

    grid = SweepGrid(iou_thrs=(0.5,), skip_box_thrs=(0.0,), lows=(0.5,), highs=(0.5,))
    with_classes = sweep([model], val, tmp_path / "s1", grid, gate=rich)
    modes = {r["gate_mode"]: r["score"] for r in with_classes.rows}
    assert set(modes) == {"append", "filter", "rescale", "rescore"}
    assert with_classes.best.gate_mode == "rescore" and modes["rescore"] == with_classes.best_score
    assert modes["rescore"] == Scorer(ds, "vinbig").score({i: d.as_written() for i, d in expected.items()})
    without = sweep([model], val, tmp_path / "s2", grid, gate=binary)
    assert {r["gate_mode"] for r in without.rows} == {"append", "filter", "rescale"}
    with pytest.raises(ValueError, match="need per-class probabilities"):
        sweep([model], val, tmp_path / "s3", replace(grid, gate_modes=("rescore",)), gate=binary)
