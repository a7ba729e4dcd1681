"""eval.bootstrap: the fast bootstrap agrees exactly with scoring duplicated datasets; intervals and
the paired bootstrap behave; the leaderboard and the pipeline findings use them."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from core.classes import NO_FINDING
from core.coco import CocoDataset
from core.detections import Detections
from eval.bootstrap import Bootstrap, paired_bootstrap, resample_weights
from eval.scoring import Scorer
from pipeline.plan import findings

W, H = 100, 80
N_IMAGES, N_NORMAL = 14, 4
CATEGORIES = [{"id": k, "name": f"c{k}"} for k in range(3)]


def _dataset(seed: int = 0, categories: list[dict] = CATEGORIES) -> CocoDataset:
    rng = np.random.default_rng(seed)
    images, anns = [], []
    for i in range(N_IMAGES):
        iid = 10 + 3 * i  # ids not 0..N-1: the resamples must follow the sorted ids
        images.append({"id": iid, "file_name": f"{iid}.png", "width": W, "height": H})
        if i < N_NORMAL:
            continue
        for _ in range(int(rng.integers(1, 4))):
            x, y = rng.uniform(0, 60), rng.uniform(0, 45)
            w, h = rng.uniform(10, 35), rng.uniform(10, 30)
            anns.append(
                {"id": len(anns) + 1, "image_id": iid, "category_id": categories[int(rng.integers(0, 3))]["id"],
                 "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0}
            )  # fmt: skip
    return CocoDataset(images, anns, categories)


def _predict(ds: CocoDataset, noise: float, seed: int, no_finding: bool = True) -> dict[int, Detections]:
    """Noisy copies of the truth plus false positives; scores rounded to 1 decimal, so many ties,
    and tied true and false positives of one image and class (the blocks the bootstrap repeats)."""
    rng = np.random.default_rng(seed)
    out = {}
    for iid in ds.image_ids:
        boxes, scores, labels = [], [], []
        for a in ds.annotations_of(iid):
            x, y, w, h = a["bbox"]
            j = rng.normal(0, noise, 4) * [w, h, w, h]
            x1, x2 = sorted([x + j[0], x + w + j[2]])
            y1, y2 = sorted([y + j[1], y + h + j[3]])
            boxes.append([x1, y1, x2, y2])
            s = round(float(rng.uniform(0.3, 1.0)), 1)
            scores.append(s)
            labels.append(a["category_id"])
            if rng.uniform() < 0.5:  # a false positive of the same class and score
                boxes.append([0, 0, 5, 5])
                scores.append(s)
                labels.append(a["category_id"])
        for _ in range(int(rng.integers(0, 3))):
            x, y = rng.uniform(0, 80), rng.uniform(0, 60)
            boxes.append([x, y, x + 15, y + 15])
            scores.append(round(float(rng.uniform(0.0, 0.8)), 1))
            labels.append(sorted(ds.category_ids)[int(rng.integers(0, 3))])
        if no_finding:
            p = 0.9 if ds.is_normal(iid) else 0.2
            boxes.append([0, 0, 1, 1])
            scores.append(round(float(np.clip(p + rng.normal(0, 0.2), 0, 1)), 1))
            labels.append(NO_FINDING)
        out[iid] = Detections(
            np.clip(np.asarray(boxes, np.float32).reshape(-1, 4), 0, [W, H, W, H]).astype(np.float32),
            np.asarray(scores, np.float32),
            np.asarray(labels, np.int64),
        )
    return out


def _naive(ds: CocoDataset, dets: dict[int, Detections], w: np.ndarray, metric: str) -> float:
    """Score a resample the slow way: a new dataset where image k comes w[k] times (copies numbered
    after it, in order), each copy with its ground truth and its detections."""
    ids = sorted(ds.image_ids)
    stride = int(w.max()) + 1
    images, anns, new_dets = [], [], {}
    for k, iid in enumerate(ids):
        for c in range(int(w[k])):
            nid = k * stride + c
            images.append({**ds.image(iid), "id": nid})
            for a in ds.annotations_of(iid):
                anns.append({**a, "id": len(anns) + 1, "image_id": nid})
            new_dets[nid] = dets[iid]
    return Scorer(CocoDataset(images, anns, ds.categories), metric).score(new_dets)


@pytest.mark.parametrize("metric", ["vinbig", "coco", "rsna", "coco-own-14"])
def test_fast_bootstrap_equals_scoring_duplicated_images(metric):
    ds = _dataset()
    if metric == "coco-own-14":  # class 14 is one of the dataset's own: its rows are scored as boxes
        ds, metric = _dataset(categories=[*CATEGORIES[:2], {"id": NO_FINDING, "name": "own"}]), "coco"
    dets = _predict(ds, 0.08, seed=1)
    scorer = Scorer(ds, metric)
    boot = Bootstrap(scorer, n_resamples=12, seed=3)
    fast = boot.scores(dets)
    naive = np.array([_naive(ds, dets, w, metric) for w in boot.weights])
    if metric == "rsna":  # a weighted mean against a mean of repeated values: equal up to rounding
        np.testing.assert_allclose(fast, naive, rtol=0, atol=1e-12)
    else:
        np.testing.assert_array_equal(fast, naive)  # bit for bit
    assert len(set(fast.round(12))) > 3  # the resamples differ
    # every weight 1 is the dataset itself
    ones = Bootstrap(scorer, n_resamples=1)
    ones.weights[:] = 1
    if metric != "rsna":
        ones._n_gt[:] = ones.weights @ _per_image_counts(ones)
    assert ones.scores(dets)[0] == pytest.approx(scorer.score(dets), abs=1e-12)


def _per_image_counts(boot: Bootstrap) -> np.ndarray:
    t = boot.table
    out = np.zeros((len(t.image_ids), len(t.category_ids)), np.int64)
    np.add.at(out, (t.image, t.category), 1)
    return out


def test_resample_weights_are_seeded_draws():
    a = resample_weights(7, 50, seed=5)
    assert a.shape == (50, 7) and (a.sum(axis=1) == 7).all()
    np.testing.assert_array_equal(a, resample_weights(7, 50, seed=5))
    assert not np.array_equal(a, resample_weights(7, 50, seed=6))
    with pytest.raises(ValueError, match="at least 1 resample"):
        resample_weights(7, 0)


def test_interval_contains_the_score():
    ds = _dataset()
    dets = _predict(ds, 0.1, seed=2)
    iv = Bootstrap(Scorer(ds, "vinbig"), n_resamples=200, seed=0).interval(dets)
    assert iv.low < iv.score < iv.high
    assert iv.n_images == N_IMAGES and iv.n_resamples == 200 and iv.level == 0.95
    assert 0 <= iv.low and iv.high <= 1


def test_identical_inputs_differ_by_nothing():
    ds = _dataset()
    dets = _predict(ds, 0.1, seed=2)
    res = paired_bootstrap(Scorer(ds, "vinbig"), dets, dets, n_resamples=100)
    assert res.difference == 0 and res.low == 0 and res.high == 0 and res.p_better == 0
    assert not res.significant


def test_clearly_better_model_is_significant():
    ds = _dataset()
    good = _predict(ds, 0.02, seed=2)
    bad = _predict(ds, 0.6, seed=2)
    scorer = Scorer(ds, "vinbig")
    res = paired_bootstrap(scorer, good, bad, n_resamples=300)
    assert res.difference == pytest.approx(scorer.score(good) - scorer.score(bad))
    assert res.significant and res.low > 0 and res.p_better > 0.97
    assert "95% CI [+" in res.describe()
    rev = paired_bootstrap(scorer, bad, good, n_resamples=300)
    assert rev.significant and rev.high < 0


def _row(name, kind, dets, score):
    return SimpleNamespace(name=name, kind=kind, detections=dets, score=score)


def test_findings_say_beat_only_when_significant():
    ds = _dataset()
    scorer = Scorer(ds, "vinbig")
    good, bad = _predict(ds, 0.02, seed=2), _predict(ds, 0.6, seed=2)
    rows = [
        _row("model_a", "detector", bad, scorer.score(bad)),
        _row("wbf", "fusion", good, scorer.score(good)),
        _row("wbf+gate", "fusion", good, scorer.score(good)),
    ]
    notes = findings(rows, "mAP", scorer=scorer, n_resamples=200)
    assert len(notes) == 2
    assert notes[0].startswith("Fusion wbf beat the best single model model_a by +") and "95% CI [+" in notes[0]
    assert f"{N_IMAGES} images" in notes[0]
    assert notes[1].startswith("The gate on wbf: no significant difference between wbf+gate and wbf"), notes[1]
    # the same detections as the model: no significant difference, with its interval
    rows[1] = _row("wbf", "fusion", bad, scorer.score(bad))
    notes = findings(rows, "mAP", scorer=scorer, n_resamples=200)
    assert notes[0].startswith("Fusion wbf vs the best single model model_a on mAP: no significant difference")
    assert "(+0.0000, 95% CI [+0.0000, +0.0000]" in notes[0]
    assert not math.isnan(scorer.score(bad))


def test_leaderboard_rows_carry_intervals_in_every_format(tmp_path):
    import csv
    import json

    from core.predictions import write_predictions
    from eval.__main__ import build_parser
    from eval.leaderboard import build_leaderboard, leaderboard

    ds = _dataset()
    ds_path = ds.write(tmp_path / "val.json")
    good, bad = _predict(ds, 0.02, seed=2), _predict(ds, 0.6, seed=2)
    preds = [
        write_predictions(tmp_path / "good.json", good, {"name": "good"}),
        write_predictions(tmp_path / "bad.json", bad, {"name": "bad"}),
    ]
    res = leaderboard(ds_path, preds, out=tmp_path / "lb", html=tmp_path / "report", examples=0, bootstrap=200)
    board = res.board
    scorer = Scorer(CocoDataset.load(ds_path), "vinbig")
    for r in board.rows:
        dets = good if r.name == "good" else bad
        iv = Bootstrap(scorer, 200).interval({i: d.as_written() for i, d in dets.items()})
        assert (r.ci_low, r.ci_high) == (iv.low, iv.high) and r.ci_low < r.score < r.ci_high
    assert board.columns()[3:5] == [board.metric.label, "95% CI"]
    best = board.rows[0]
    assert board.cells(best)[4] == f"[{best.ci_low:.2f}, {best.ci_high:.2f}]"
    assert "95% CI" in (tmp_path / "lb" / "leaderboard.md").read_text()
    with open(tmp_path / "lb" / "leaderboard.csv") as f:
        lines = list(csv.DictReader(f))
    assert float(lines[0]["vinbig_ci_low"]) == best.ci_low and float(lines[0]["vinbig_ci_high"]) == best.ci_high
    rows = json.loads((tmp_path / "lb" / "leaderboard.json").read_text())["rows"]
    assert rows[0]["ci_low"] == best.ci_low and rows[0]["ci_high"] == best.ci_high
    html = (tmp_path / "report" / "index.html").read_text()
    assert f"[{best.ci_low:.2f}, {best.ci_high:.2f}]" in html and 'id="ci-note"' in html
    # 0 disables them: no column, NaN in the rows
    off = build_leaderboard(ds_path, preds, bootstrap=0)
    assert "95% CI" not in off.columns() and all(math.isnan(r.ci_low) for r in off.rows)
    with pytest.raises(ValueError, match="--bootstrap must be >= 0"):
        build_leaderboard(ds_path, preds, bootstrap=-1)
    args = build_parser().parse_args(["leaderboard", "--dataset", "d", "--preds", "p", "--bootstrap", "0"])
    assert args.bootstrap == 0
