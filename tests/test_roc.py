"""core.roc: the one ROC/AUC implementation agrees with scikit-learn, ties and edge cases included."""

from __future__ import annotations

import math

import numpy as np
import pytest

from core.roc import roc_auc, roc_curve


def _cases():
    """Random labels and scores with many ties (scores rounded to a few levels), of several sizes."""
    rng = np.random.default_rng(0)
    for k in range(40):
        n = int(rng.integers(2, 300))
        labels = rng.integers(0, 2, n)
        labels[:2] = [0, 1]  # both classes present
        rng.shuffle(labels)
        levels = 1000 if k % 4 == 0 else int(rng.integers(1, 12))  # 1..11 levels: ties across classes
        shift = 0.3 * rng.random() if k % 4 == 3 else 0.0  # positives score higher, ties within a class
        scores = np.round(rng.random(n) * levels) / levels + shift * labels
        yield labels, scores
    # ties that straddle the classes, in both orders
    yield np.array([0, 1, 1, 0, 1, 0]), np.array([0.5, 0.5, 0.5, 0.2, 0.9, 0.9])
    yield np.array([1, 0, 0, 1]), np.array([0.3, 0.3, 0.3, 0.3])


@pytest.mark.parametrize("drop_intermediate", [True, False])
def test_curve_matches_scikit_learn_with_ties(drop_intermediate):
    from sklearn.metrics import roc_curve as sk_roc_curve

    n = 0
    for labels, scores in _cases():
        fpr, tpr, thr = roc_curve(labels, scores, drop_intermediate=drop_intermediate)
        sk_fpr, sk_tpr, sk_thr = sk_roc_curve(labels, scores, drop_intermediate=drop_intermediate)
        assert fpr.shape == sk_fpr.shape, (labels, scores)
        np.testing.assert_allclose(fpr, sk_fpr, rtol=0, atol=1e-12)
        np.testing.assert_allclose(tpr, sk_tpr, rtol=0, atol=1e-12)
        assert thr[0] == np.inf
        np.testing.assert_allclose(thr[1:], sk_thr[1:], rtol=0, atol=1e-12)
        n += 1
    assert n == 42


def test_auc_matches_scikit_learn_with_ties():
    from sklearn.metrics import roc_auc_score

    aucs = []
    for labels, scores in _cases():
        auc = roc_auc(labels, scores)
        assert auc == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
        # the same number as counting pairs, a tie counted one half
        pos, neg = scores[labels == 1], scores[labels == 0]
        pairs = ((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])).mean()
        assert auc == pytest.approx(pairs, abs=1e-12)
        aucs.append(auc)
    assert min(aucs) < 0.9 and max(aucs) > 0.6  # the cases are not all trivial


def test_hand_made_curve_and_auc():
    labels = [0, 1, 1, 0, 1, 0]
    scores = [0.5, 0.5, 0.5, 0.2, 0.9, 0.9]
    fpr, tpr, thr = roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_array_equal(thr, [np.inf, 0.9, 0.5, 0.2])
    np.testing.assert_allclose(fpr, [0, 1 / 3, 2 / 3, 1])
    np.testing.assert_allclose(tpr, [0, 1 / 3, 1, 1])
    # pairs: 0.9 vs (0.5, 0.2, 0.9) = 1 + 1 + .5; 0.5 vs them = .5 + 1 + 0 (twice)
    assert roc_auc(labels, scores) == pytest.approx((2.5 + 1.5 + 1.5) / 9)


def test_perfect_reversed_and_all_tied_scores():
    labels = np.array([0, 0, 1, 1])
    assert roc_auc(labels, [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert roc_auc(labels, [0.9, 0.8, 0.2, 0.1]) == 0.0
    assert roc_auc(labels, [0.4, 0.4, 0.4, 0.4]) == 0.5
    fpr, tpr, thr = roc_curve(labels, [0.4] * 4)
    np.testing.assert_array_equal(fpr, [0, 1])
    np.testing.assert_array_equal(tpr, [0, 1])
    np.testing.assert_array_equal(thr, [np.inf, 0.4])


def test_bool_labels_and_float32_scores_agree_with_ints_and_float64():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 50)
    scores = rng.random(50).astype(np.float32)
    a = roc_curve(labels.astype(bool), scores)
    b = roc_curve(labels, scores.astype(np.float64))
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert roc_auc(labels.astype(bool), scores) == roc_auc(labels, scores.astype(np.float64))


@pytest.mark.parametrize("labels", [[1, 1, 1], [0, 0], []])
def test_one_class_or_none_gives_nan_not_an_error(labels):
    """The gate validates on whatever set it is given: one class only is NaN, as eval's analysis reports."""
    scores = np.linspace(0.1, 0.9, len(labels))
    assert math.isnan(roc_auc(labels, scores))
    fpr, tpr, thr = roc_curve(labels, scores)
    assert thr[0] == np.inf and len(fpr) == len(tpr) == len(thr)
    positives = int(np.sum(labels))
    negatives = len(labels) - positives
    assert np.isnan(fpr).all() == (negatives == 0)
    assert np.isnan(tpr).all() == (positives == 0)
    if positives:
        assert tpr[0] == 0 and tpr[-1] == 1
    if negatives:
        assert fpr[0] == 0 and fpr[-1] == 1


@pytest.mark.parametrize(
    "labels, scores, message",
    [
        ([0, 1, 2], [0.1, 0.2, 0.3], "labels must be 0/1 or bool"),
        ([0, 1], [0.1, 0.2, 0.3], "same length"),
        ([[0, 1]], [[0.1, 0.2]], "1-D"),
        ([0, 1], [0.1, float("nan")], "finite"),
        ([0, 1], [0.1, float("inf")], "finite"),
        (["a", "b"], [0.1, 0.2], "labels must be 0/1"),
    ],
)
def test_bad_input_is_a_value_error(labels, scores, message):
    with pytest.raises(ValueError, match=message):
        roc_auc(labels, scores)
    with pytest.raises(ValueError, match=message):
        roc_curve(labels, scores)
