"""What the leaderboard's plots show, computed with NumPy: no drawing here.

- `detection_confusion`: a confusion matrix of detections against ground truth
  at one IoU threshold, the dataset's classes plus "background".
- `gate_roc` and `gate_confusion`: a normal/abnormal gate's ROC curve, AUC and
  confusion matrix; an image with no annotations is normal, abnormal is the
  positive class and the gate's ``p_abnormal`` its score.
- `classifier_analysis`: a multiclass or multilabel classifier's ROC curve and AUROC per class,
  their macro mean and, for multiclass, its confusion matrix.
- `read_loss_log`: a training run's ``loss.csv`` (and ``config.yaml``).
- `example_images`: which dataset images to draw side by side.

Nothing here imports a training framework or matplotlib.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.boxes import box_iou
from core.class_probs import ClassProbs, truth_matrix
from core.coco import CocoDataset
from core.detections import Detections
from core.roc import roc_auc, roc_curve

#: Label of the extra row/column of a detection confusion matrix.
BACKGROUND = "background"


# --------------------------------------------------------------------------- detections


@dataclass(frozen=True)
class ConfusionMatrix:
    """Counts of truth (rows) against prediction (columns).

    Attributes:
        labels: ``(K,)`` names of rows and columns, in order.
        counts: ``(K, K)`` int64; ``counts[t, p]`` is how often truth ``t`` was
            predicted as ``p``.
    """

    labels: tuple[str, ...]
    counts: np.ndarray

    def compact(self, keep_last: bool = True) -> ConfusionMatrix:
        """The matrix without labels whose row and column are both all zero (the last label,
        background, kept if ``keep_last``)."""
        used = (self.counts.sum(axis=0) > 0) | (self.counts.sum(axis=1) > 0)
        if keep_last and len(used):
            used[-1] = True
        idx = np.flatnonzero(used)
        return ConfusionMatrix(tuple(self.labels[k] for k in idx), self.counts[np.ix_(idx, idx)])


def detection_confusion(
    dataset: CocoDataset,
    detections: Mapping[int, Detections],
    iou_thr: float,
    score_thr: float,
    class_ids: Sequence[int] | None = None,
) -> ConfusionMatrix:
    """Confusion matrix of detections at ``iou_thr`` over the dataset's classes plus background.

    Per image, detections with ``score >= score_thr`` and a label in
    ``class_ids`` are matched one-to-one to ground-truth boxes regardless of
    class: pairs with ``IoU >= iou_thr`` are taken by descending IoU (ties:
    higher score first), each box used once. A matched pair counts at
    ``[truth class, predicted class]``, an unmatched ground truth at
    ``[truth class, background]``, an unmatched detection at
    ``[background, predicted class]``. Images absent from ``detections`` have
    no detections; detections of other labels (VinBigData's "No finding") are
    left out.

    Args:
        dataset: the ground truth.
        detections: ``{image_id: Detections}`` on the dataset's images.
        iou_thr: IoU threshold in ``[0, 1]``.
        score_thr: lowest score counted.
        class_ids: the classes (default: the dataset's categories, sorted).

    Returns:
        `ConfusionMatrix` with labels ``class names + ("background",)``.

    Raises:
        ValueError: if ``iou_thr`` is outside ``[0, 1]`` or ``score_thr`` is not finite.
    """
    if not 0.0 <= iou_thr <= 1.0:
        raise ValueError(f"iou_thr must be in [0, 1], got {iou_thr}")
    if not math.isfinite(score_thr):
        raise ValueError(f"score_thr must be finite, got {score_thr}")
    ids = sorted(dataset.category_ids) if class_ids is None else [int(c) for c in class_ids]
    names = dataset.category_names
    index = {c: k for k, c in enumerate(ids)}
    bg = len(ids)
    counts = np.zeros((bg + 1, bg + 1), np.int64)
    for image_id in dataset.image_ids:
        gt = dataset.ground_truth(image_id)
        gt = gt.select(np.isin(gt.labels, ids))
        det = detections.get(image_id, Detections.empty())
        det = det.select((det.scores >= score_thr) & np.isin(det.labels, ids))
        g_idx = np.array([index[int(c)] for c in gt.labels], np.int64)
        d_idx = np.array([index[int(c)] for c in det.labels], np.int64)
        g_used = np.zeros(len(gt), bool)
        d_used = np.zeros(len(det), bool)
        if len(gt) and len(det):
            iou = box_iou(gt.boxes, det.boxes)
            gi, di = np.nonzero(iou >= iou_thr)
            order = np.lexsort((-det.scores[di], -iou[gi, di]))
            for g, d in zip(gi[order].tolist(), di[order].tolist(), strict=True):
                if not g_used[g] and not d_used[d]:
                    g_used[g] = d_used[d] = True
                    counts[g_idx[g], d_idx[d]] += 1
        np.add.at(counts, (g_idx[~g_used], bg), 1)
        np.add.at(counts, (bg, d_idx[~d_used]), 1)
    labels = tuple(names.get(c, f"class {c}") for c in ids) + (BACKGROUND,)
    return ConfusionMatrix(labels, counts)


# --------------------------------------------------------------------------- gate


@dataclass(frozen=True)
class RocCurve:
    """A gate's ROC curve over the dataset images it scored (abnormal is positive).

    Attributes:
        fpr: ``(T,)`` float64 false-positive rate, from 0 rising to 1.
        tpr: ``(T,)`` float64 true-positive rate at the same thresholds.
        thresholds: ``(T,)`` float64; point ``t`` calls ``p_abnormal >= thresholds[t]``
            abnormal (the first is ``inf``: nothing called abnormal).
        auc: area under the curve (ties count one half); NaN if only one class is present.
        n_normal: normal images scored.
        n_abnormal: abnormal images scored.
    """

    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray
    auc: float
    n_normal: int
    n_abnormal: int


def _gate_arrays(dataset: CocoDataset, p_abnormal: Mapping[int, float]) -> tuple[np.ndarray, np.ndarray]:
    unknown = sorted(set(p_abnormal) - set(dataset.image_ids))
    if unknown:
        raise ValueError(f"gate scores name images not in the dataset: {unknown[:10]}")
    ids = [i for i in dataset.image_ids if i in p_abnormal]
    abnormal = np.array([not dataset.is_normal(i) for i in ids], bool)
    scores = np.array([float(p_abnormal[i]) for i in ids], np.float64)
    return abnormal, scores


def gate_roc(dataset: CocoDataset, p_abnormal: Mapping[int, float]) -> RocCurve:
    """ROC curve and AUC of gate scores ``{image_id: p_abnormal}`` on the images they cover.

    Raises:
        ValueError: if the scores name images absent from ``dataset``.
    """
    abnormal, scores = _gate_arrays(dataset, p_abnormal)
    fpr, tpr, thresholds = roc_curve(abnormal, scores, drop_intermediate=False)
    n_pos = int(abnormal.sum())
    return RocCurve(fpr, tpr, thresholds, roc_auc(abnormal, scores), len(abnormal) - n_pos, n_pos)


def gate_confusion(
    dataset: CocoDataset, p_abnormal: Mapping[int, float], threshold: float = 0.5
) -> ConfusionMatrix:
    """Normal/abnormal confusion matrix, ``p_abnormal >= threshold`` called abnormal.

    Rows are the truth (normal: no annotations), columns the gate's call, both
    ordered ``("normal", "abnormal")``. Images the gate did not score are left out.

    Raises:
        ValueError: if the scores name images absent from ``dataset``.
    """
    abnormal, scores = _gate_arrays(dataset, p_abnormal)
    called = scores >= threshold
    counts = np.zeros((2, 2), np.int64)
    np.add.at(counts, (abnormal.astype(np.int64), called.astype(np.int64)), 1)
    return ConfusionMatrix(("normal", "abnormal"), counts)


# --------------------------------------------------------------------------- classifiers


@dataclass(frozen=True)
class ClassifierAnalysis:
    """A multiclass or multilabel classifier's ROC per class on the dataset images it scored.

    Attributes:
        task: ``multiclass`` or ``multilabel`` (`core.class_probs.TASKS`).
        classes: the class names, in the file's column order.
        roc: class name → `RocCurve` of that class (one against the rest; ``n_abnormal`` counts
            the images that have the class, ``n_normal`` those that do not).
        macro_auc: the mean AUROC over the classes with both positive and negative images
            (scikit-learn's ``roc_auc_score(average="macro")`` over those classes); NaN if none.
        confusion: multiclass only: truth (rows) against the most probable class (columns).
        images: how many images were scored.
    """

    task: str
    classes: tuple[str, ...]
    roc: dict[str, RocCurve]
    macro_auc: float
    confusion: ConfusionMatrix | None
    images: int


def classifier_analysis(dataset: CocoDataset, cp: ClassProbs) -> ClassifierAnalysis:
    """Per-class ROC curves and AUROC, their macro mean, and (multiclass) the confusion matrix.

    The truth of each class comes from the dataset (`core.class_probs.truth_matrix`: the images'
    ``labels``, else their boxes).

    Raises:
        ValueError: the probabilities name images absent from ``dataset``, or the dataset cannot
            tell a class of the file (naming the image).
    """
    unknown = sorted(set(cp.image_ids.tolist()) - set(dataset.image_ids))
    if unknown:
        raise ValueError(f"classifier scores name images not in the dataset: {unknown[:10]}")
    truth = truth_matrix(dataset, cp.image_ids.tolist(), cp.task, cp.classes, cp.category_ids)
    curves = {}
    for j, name in enumerate(cp.classes):
        y, s = truth[:, j] > 0, cp.probs[:, j]
        fpr, tpr, thresholds = roc_curve(y, s, drop_intermediate=False)
        n_pos = int(y.sum())
        curves[name] = RocCurve(fpr, tpr, thresholds, roc_auc(y, s), len(y) - n_pos, n_pos)
    finite = [c.auc for c in curves.values() if not math.isnan(c.auc)]
    confusion = None
    if cp.task == "multiclass":
        k = len(cp.classes)
        counts = np.zeros((k, k), np.int64)
        if len(cp):
            np.add.at(counts, (truth.argmax(axis=1), cp.probs.argmax(axis=1)), 1)
        confusion = ConfusionMatrix(cp.classes, counts)
    return ClassifierAnalysis(
        cp.task, cp.classes, curves, float(np.mean(finite)) if finite else float("nan"), confusion, len(cp)
    )


# --------------------------------------------------------------------------- training logs

#: The first columns of a run's ``loss.csv``; any further columns are loss components.
LOSS_COLUMNS = ("step", "epoch", "loss")


@dataclass(frozen=True)
class LossLog:
    """A training run's losses, one entry per logged step.

    Attributes:
        name: the run's name (its folder's name).
        path: the ``loss.csv`` read.
        step: ``(N,)`` float64 global step.
        epoch: ``(N,)`` float64 epoch.
        loss: ``(N,)`` float64 total loss.
        components: ``{column: (N,) float64}`` extra loss columns (NaN where a cell is empty).
        config: the run's ``config.yaml`` as a dict (empty if there is none).
    """

    name: str
    path: Path
    step: np.ndarray
    epoch: np.ndarray
    loss: np.ndarray
    components: dict[str, np.ndarray]
    config: dict

    @property
    def label(self) -> str:
        """``name`` plus the adapter named in ``config.yaml``, if any."""
        adapter = self.config.get("adapter")
        return f"{self.name} ({adapter})" if isinstance(adapter, str) and adapter else self.name


def _cell(path: Path, line: int, field: str, text: str, required: bool) -> float:
    text = text.strip()
    if not text:
        if required:
            raise ValueError(f"{path}: line {line}: {field!r} is empty")
        return math.nan
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{path}: line {line}: {field!r} is not a number: {text!r}") from None


def read_loss_log(run_dir: str | Path) -> LossLog:
    """Read ``run_dir/loss.csv`` (header ``step,epoch,loss[,component,...]``) and ``run_dir/config.yaml``.

    ``step``, ``epoch`` and ``loss`` are required in every row (``nan`` is
    allowed for a diverged loss); an empty component cell reads as NaN.

    Raises:
        FileNotFoundError: if ``run_dir`` or its ``loss.csv`` is missing.
        ValueError: naming the file, line and field of a bad header, a row of
            the wrong length or a value that is not a number; or if the file
            has no rows or ``config.yaml`` is not a YAML mapping.
    """
    run_dir = Path(run_dir)
    path = run_dir / "loss.csv"
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: no such run directory")
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: no loss.csv in this run directory")
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise ValueError(f"{path}: empty file (expected a header {','.join(LOSS_COLUMNS)},...)")
    header = [h.strip() for h in rows[0]]
    if tuple(header[:3]) != LOSS_COLUMNS:
        raise ValueError(f"{path}: line 1: header must start with {','.join(LOSS_COLUMNS)}, got {rows[0]!r}")
    extra = header[3:]
    if any(not h for h in extra) or len(set(header)) != len(header):
        raise ValueError(f"{path}: line 1: component columns must be named and unique, got {rows[0]!r}")
    data = [(k + 2, r) for k, r in enumerate(rows[1:]) if any(c.strip() for c in r)]
    if not data:
        raise ValueError(f"{path}: no rows after the header")
    values = np.empty((len(data), len(header)), np.float64)
    for j, (line, r) in enumerate(data):
        if len(r) != len(header):
            raise ValueError(f"{path}: line {line}: {len(r)} fields, the header has {len(header)}")
        for c, (field, text) in enumerate(zip(header, r, strict=True)):
            values[j, c] = _cell(path, line, field, text, required=c < 3)
    config: dict = {}
    cfg_path = run_dir / "config.yaml"
    if cfg_path.is_file():
        import yaml

        try:
            loaded = yaml.safe_load(cfg_path.read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            raise ValueError(f"{cfg_path}: not valid YAML ({e})") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ValueError(f"{cfg_path}: expected a mapping, got {type(loaded).__name__}")
        config = loaded or {}
    return LossLog(
        name=run_dir.resolve().name,
        path=path,
        step=values[:, 0],
        epoch=values[:, 1],
        loss=values[:, 2],
        components={h: values[:, 3 + k] for k, h in enumerate(extra)},
        config=config,
    )


# --------------------------------------------------------------------------- examples


def example_images(dataset: CocoDataset, n: int) -> list[int]:
    """Up to ``n`` image ids to draw: the abnormal images with the most boxes, then one normal image.

    With ``n >= 2`` and a normal image in the dataset, the last pick is the
    normal image of lowest id; the rest are abnormal images by descending box
    count (ties: lowest id first). Deterministic.
    """
    if n <= 0:
        return []
    abnormal = sorted(
        (i for i in dataset.image_ids if not dataset.is_normal(i)),
        key=lambda i: (-len(dataset.annotations_of(i)), i),
    )
    normal = sorted(i for i in dataset.image_ids if dataset.is_normal(i))
    if n >= 2 and normal:
        return abnormal[: n - 1] + normal[:1]
    return (abnormal + normal)[:n]
