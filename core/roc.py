"""ROC curves and the area under them for binary scores: the one implementation in CXRFuse.

The conventions are scikit-learn's (`sklearn.metrics.roc_curve` and `roc_auc_score`), so the
numbers agree with it to rounding:

- ``labels`` are 0/1 (or bool); 1 is the positive class (for the gate: abnormal);
- a sample is called positive when its score is ``>=`` the threshold. Samples with equal scores
  enter the curve together, one point per distinct score, so a tie between a positive and a
  negative counts one half in the AUC;
- the curve starts at ``(0, 0)`` with threshold ``+inf`` and ends at ``(1, 1)``;
- the AUC is the trapezoidal area under that curve (equal to the probability that a random
  positive scores above a random negative, ties counted one half).

Where they differ: with only one class present (or no samples at all) the AUC is undefined.
`roc_auc` returns NaN instead of raising, and `roc_curve` returns NaN for the rate that has no
denominator (as scikit-learn's `roc_curve` does, without its warning): a gate validated or
analysed on a set that happens to hold one class reports NaN and carries on.

Nothing here imports more than numpy.
"""

from __future__ import annotations

import numpy as np


def _check(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(labels, scores)`` as 1-D bool and float64 arrays, checked."""
    y = np.asarray(labels)
    s = np.asarray(scores)
    if y.ndim != 1 or s.ndim != 1 or len(y) != len(s):
        raise ValueError(f"labels and scores must be 1-D of the same length, got {y.shape} and {s.shape}")
    if y.dtype != bool:
        if not (np.issubdtype(y.dtype, np.number) and np.isin(y, (0, 1)).all()):
            bad = sorted({str(v) for v in np.unique(y)} - {"0", "1", "0.0", "1.0"})[:5]
            raise ValueError(f"labels must be 0/1 or bool, got values such as {', '.join(bad)}")
        y = y == 1
    s = s.astype(np.float64)
    if not np.isfinite(s).all():
        raise ValueError(f"scores must be finite; {int((~np.isfinite(s)).sum())} are NaN or infinite")
    return y, s


def roc_curve(
    labels: np.ndarray, scores: np.ndarray, drop_intermediate: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ROC curve of ``scores`` against binary ``labels`` (scikit-learn's ``roc_curve``).

    Args:
        labels: ``(N,)`` 0/1 or bool; 1 (True) is the positive class.
        scores: ``(N,)`` finite scores, higher = more positive.
        drop_intermediate: leave out the points that lie on a straight line between their
            neighbours (they change neither the curve's shape nor its area), as scikit-learn does
            by default; ``False`` keeps one point per distinct score.

    Returns:
        ``(fpr, tpr, thresholds)``, each ``(T,)`` float64. Point ``t`` calls a sample positive
        when its score is ``>= thresholds[t]``; ``thresholds`` falls from ``inf`` (nothing called
        positive: ``fpr = tpr = 0``) to the lowest score (everything called positive:
        ``fpr = tpr = 1``). Without negatives ``fpr`` is all NaN; without positives ``tpr`` is.

    Raises:
        ValueError: shapes differ or are not 1-D, labels other than 0/1, or a score that is NaN
            or infinite.
    """
    y, s = _check(labels, scores)
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    # the last sample of each run of equal scores: the curve moves once per distinct score
    last = np.flatnonzero(np.r_[s[1:] != s[:-1], True]) if len(s) else np.zeros(0, np.int64)
    tps = np.cumsum(y)[last].astype(np.float64)
    fps = (last + 1) - tps
    thresholds = s[last]
    if drop_intermediate and len(fps) > 2:
        # keep the ends and every point where the curve bends
        bend = np.r_[True, (np.diff(fps, 2) != 0) | (np.diff(tps, 2) != 0), True]
        fps, tps, thresholds = fps[bend], tps[bend], thresholds[bend]
    fps, tps = np.r_[0.0, fps], np.r_[0.0, tps]
    thresholds = np.r_[np.inf, thresholds]
    fpr = fps / fps[-1] if fps[-1] > 0 else np.full(len(fps), np.nan)
    tpr = tps / tps[-1] if tps[-1] > 0 else np.full(len(tps), np.nan)
    return fpr, tpr, thresholds


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (scikit-learn's ``roc_auc_score`` for binary labels).

    Args:
        labels: ``(N,)`` 0/1 or bool; 1 (True) is the positive class.
        scores: ``(N,)`` finite scores, higher = more positive.

    Returns:
        The AUC in [0, 1], ties between a positive and a negative counted one half; NaN when
        ``labels`` hold only one class or nothing (scikit-learn raises there).

    Raises:
        ValueError: as `roc_curve`.
    """
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=True)
    if np.isnan(fpr[-1]) or np.isnan(tpr[-1]):
        return float("nan")
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))
