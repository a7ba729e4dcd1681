"""Classifier predictions: per image, the probability of every class, plus the task and the classes.

One file format for the three classifier tasks (`TASKS`):

- ``binary``: one column, the probability of the positive class (the gate's ``p_abnormal``);
- ``multiclass``: one column per class, each row summing to 1 (softmax);
- ``multilabel``: one column per class, each in [0, 1] on its own (a sigmoid per class).

On disk it is a gate file (`core.predictions.read_gate` reads it unchanged): ``NAME.json`` holds
``[{image_id, p_abnormal, probs: [k floats]}]`` (6 decimals), and the sidecar ``NAME.meta.json``
(``kind: gate``) adds ``task``, ``classes`` (the column names, in order) and ``category_ids`` (the
dataset category id each column stands for, or null). ``p_abnormal`` is `ClassProbs.p_abnormal`:
the binary column, else ``1 - P(normal)`` where a class is the normal one ("No finding",
"No Finding" or "Normal"), else the highest probability. A plain gate file ``[{image_id,
p_abnormal}]`` reads as a binary task with the one class ``"abnormal"``.

Nothing here imports more than numpy and `core`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.classes import NO_FINDING
from core.coco import CocoDataset
from core.io import check_out_file, read_json, write_json
from core.predictions import check_same_dataset, meta_path, read_meta, sidecar_meta

TASKS: tuple[str, ...] = ("binary", "multiclass", "multilabel")
#: class names that mean "nothing found" (their probability is P(normal))
NORMAL_NAMES: tuple[str, ...] = ("No finding", "No Finding", "Normal")
#: decimals of the probabilities in the file
DECIMALS = 6
#: how far a multiclass row may sum from 1 (the file's rounding, float32 softmax)
SUM_TOLERANCE = 1e-3


@dataclass(frozen=True)
class ClassProbs:
    """Per-image probabilities of every class of one classifier.

    Attributes:
        task: one of `TASKS`.
        classes: class names, in column order (binary: the one positive class).
        category_ids: the dataset (COCO) category id each class stands for, None where none
            (VinBigData multilabel: lesions 0..13 and "No finding" 14).
        image_ids: ``(n,)`` int64, strictly increasing.
        probs: ``(n, k)`` float64 in [0, 1]; multiclass rows sum to 1.
    """

    task: str
    classes: tuple[str, ...]
    category_ids: tuple[int | None, ...]
    image_ids: np.ndarray
    probs: np.ndarray

    def __post_init__(self) -> None:
        """Normalise the types and check the shapes and values.

        Raises:
            ValueError: an unknown task, classes and category ids of different lengths, a repeated
                class name, a binary task with other than one class, ids that repeat, probabilities
                of another shape, outside [0, 1] (NaN included) or, for multiclass, a row that
                does not sum to 1 (naming the image).
        """
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}, got {self.task!r}")
        classes = tuple(str(c) for c in self.classes)
        cats = tuple(None if c is None else int(c) for c in self.category_ids)
        if not classes:
            raise ValueError("a classifier needs at least one class")
        if len(cats) != len(classes):
            raise ValueError(f"{len(classes)} classes but {len(cats)} category ids")
        if len(set(classes)) != len(classes):
            raise ValueError(f"class names repeat: {list(classes)}")
        if self.task == "binary" and len(classes) != 1:
            raise ValueError(f"a binary task has one class (the positive one), got {list(classes)}")
        if self.task == "multiclass" and len(classes) < 2:
            raise ValueError(f"a multiclass task needs at least two classes, got {list(classes)}")
        ids = np.asarray(self.image_ids, dtype=np.int64).reshape(-1)
        probs = np.asarray(self.probs, dtype=np.float64)
        if probs.size == 0:
            probs = probs.reshape(len(ids), len(classes))
        if probs.shape != (len(ids), len(classes)):
            raise ValueError(f"probs must be ({len(ids)}, {len(classes)}), got {probs.shape}")
        order = np.argsort(ids, kind="stable")
        ids, probs = ids[order], probs[order]
        if len(ids) > 1 and (np.diff(ids) == 0).any():
            raise ValueError(f"image {int(ids[np.flatnonzero(np.diff(ids) == 0)[0]])} appears twice")
        bad = ~((probs >= 0.0) & (probs <= 1.0))
        if bad.any():
            r, c = np.argwhere(bad)[0]
            raise ValueError(f"image {int(ids[r])}: P({classes[c]}) = {probs[r, c]} is not within [0, 1]")
        if self.task == "multiclass" and len(ids):
            off = np.abs(probs.sum(axis=1) - 1.0) > SUM_TOLERANCE
            if off.any():
                r = int(np.flatnonzero(off)[0])
                raise ValueError(
                    f"image {int(ids[r])}: multiclass probabilities sum to {probs[r].sum():.6f}, not 1"
                )
        ids.flags.writeable = False
        probs.flags.writeable = False
        object.__setattr__(self, "classes", classes)
        object.__setattr__(self, "category_ids", cats)
        object.__setattr__(self, "image_ids", ids)
        object.__setattr__(self, "probs", probs)

    def __len__(self) -> int:
        return len(self.image_ids)

    @property
    def normal_index(self) -> int | None:
        """The column of the normal class ("No finding", "No Finding" or "Normal"), or None."""
        if self.task == "binary":
            return None
        for k, name in enumerate(self.classes):
            if name in NORMAL_NAMES:
                return k
        return None

    def abnormal_scores(self) -> np.ndarray:
        """``(n,)`` P(abnormal) per image, in `image_ids` order (see `p_abnormal`)."""
        if self.task == "binary":
            return self.probs[:, 0].copy()
        k = self.normal_index
        if k is not None:
            return 1.0 - self.probs[:, k]
        if not len(self):
            return np.zeros(0)
        return self.probs.max(axis=1)

    def p_abnormal(self) -> dict[int, float]:
        """``{image_id: P(abnormal)}``: the binary column; else ``1 - P(normal class)`` where the
        classes have one ("No finding", "No Finding", "Normal"); else the highest probability."""
        return dict(zip(self.image_ids.tolist(), self.abnormal_scores().tolist(), strict=True))

    def index(self, name: str) -> int:
        """The column of class ``name``.

        Raises:
            KeyError: no class of that name (the message lists the classes).
        """
        try:
            return self.classes.index(name)
        except ValueError:
            raise KeyError(f"no class {name!r}; the classes are {list(self.classes)}") from None

    def column(self, name: str) -> np.ndarray:
        """``(n,)`` P(class ``name``) per image, in `image_ids` order.

        Raises:
            KeyError: no class of that name.
        """
        return self.probs[:, self.index(name)].copy()

    def prob_of(self, category_id: int) -> dict[int, float]:
        """``{image_id: P(the class that stands for category_id)}``.

        Raises:
            KeyError: no class stands for ``category_id``.
        """
        cid = int(category_id)
        if cid not in self.category_ids:
            known = [c for c in self.category_ids if c is not None]
            raise KeyError(f"no class stands for category {cid}; the classes' categories are {known}")
        col = self.probs[:, self.category_ids.index(cid)]
        return dict(zip(self.image_ids.tolist(), col.tolist(), strict=True))


def write_class_probs(path: str | Path, cp: ClassProbs, meta: Mapping[str, Any]) -> Path:
    """Write ``cp`` as a gate file with probabilities, and its sidecar, atomically.

    The sidecar (``kind: gate``, ``task``, ``classes``, ``category_ids`` and ``meta``'s keys) is
    written first, then ``[{image_id, p_abnormal, probs}]`` (6 decimals), each under a temporary
    name and renamed, so the file never exists without its sidecar.

    Args:
        path: the predictions file to write (``NAME.json``).
        cp: the probabilities.
        meta: more sidecar keys (``name``, ``dataset``, ``adapter``, ``config``, ``weights``, timing).

    Returns:
        ``path``.

    Raises:
        UserError: ``path`` is an existing folder or lies under a file.
    """
    path = check_out_file(path)
    classes = {"task": cp.task, "classes": list(cp.classes), "category_ids": list(cp.category_ids)}
    side = sidecar_meta(path, {**meta, **classes}, "gate")
    probs = np.round(cp.probs, DECIMALS).tolist()
    p_abn = np.round(cp.abnormal_scores(), DECIMALS).tolist()
    rows = [
        {"image_id": i, "p_abnormal": a, "probs": p}
        for i, a, p in zip(cp.image_ids.tolist(), p_abn, probs, strict=True)
    ]
    write_json(meta_path(path), side, indent=1)
    write_json(path, rows)
    return path


def read_class_probs(path: str | Path, dataset: CocoDataset | None = None) -> ClassProbs:
    """A classifier predictions file (or a plain gate file) → `ClassProbs`.

    Args:
        path: a file `write_class_probs` wrote, or a gate file ``[{image_id, p_abnormal}]`` (read
            as task ``binary``, classes ``("abnormal",)``, category ids ``(None,)``).
        dataset: when given, the sidecar must name it (`core.predictions.check_same_dataset`) and
            every image id must be one of its images.

    Raises:
        FileNotFoundError: no such file.
        ValueError: naming the file (and the entry): not JSON, not a list, an entry without
            ``image_id`` and its probabilities, probabilities of the wrong count or outside
            [0, 1], an image id twice or (given ``dataset``) not in it, or a sidecar whose
            ``task``, ``classes`` or ``category_ids`` are malformed.
    """
    path = Path(path)
    rows = read_json(path)
    if not isinstance(rows, list):
        raise ValueError(f"{path}: expected a list of {{image_id, p_abnormal, probs}}")
    if dataset is not None:
        check_same_dataset(path, read_meta(path), dataset)
    task, classes, cats = _sidecar_classes(path)
    k = len(classes)
    ids = np.zeros(len(rows), np.int64)
    probs = np.zeros((len(rows), k), np.float64)
    known = set(dataset.image_ids) if dataset is not None else None
    for n, r in enumerate(rows):
        try:
            if not isinstance(r, Mapping):
                raise TypeError
            iid = r["image_id"]
            if isinstance(iid, bool) or int(iid) != iid:
                raise TypeError
            rich = task != "binary" or "probs" in r
            vals = r["probs"] if rich else [r["p_abnormal"]]
            if not isinstance(vals, Sequence) or isinstance(vals, str):
                raise TypeError
            row = [float(v) for v in vals if not isinstance(v, bool | str)]
            if len(row) != len(vals):
                raise TypeError
        except (KeyError, TypeError, ValueError):
            want = "{image_id, p_abnormal, probs}" if task != "binary" else "{image_id, p_abnormal}"
            raise ValueError(f"{path}: entry {n} is not {want}: {_short(r)}") from None
        if len(row) != k:
            raise ValueError(f"{path}: entry {n} (image {iid}) has {len(row)} probabilities for {k} classes")
        bad = [c for c, v in zip(classes, row, strict=True) if not (0.0 <= v <= 1.0 and math.isfinite(v))]
        if bad:
            raise ValueError(
                f"{path}: entry {n} (image {iid}) has P({bad[0]}) = {row[classes.index(bad[0])]}, not within [0, 1]"
            )
        if known is not None and int(iid) not in known:
            raise ValueError(
                f"{path}: entry {n} names image {iid}, which is not in {dataset.path or 'the dataset'}"
            )
        ids[n] = int(iid)
        probs[n] = row
    try:
        return ClassProbs(task, classes, cats, ids, probs)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def _same_classes(parts: Sequence[ClassProbs]) -> ClassProbs:
    """The first of ``parts``, after checking that all have its task, classes and category ids.

    Raises:
        ValueError: no parts, or parts of different classifiers.
    """
    if not parts:
        raise ValueError("no classifier predictions to combine")
    first = parts[0]
    for cp in parts[1:]:
        if (cp.task, cp.classes, cp.category_ids) != (first.task, first.classes, first.category_ids):
            raise ValueError(
                f"cannot combine a {cp.task} classifier of classes {list(cp.classes)} with a "
                f"{first.task} one of classes {list(first.classes)}"
            )
    return first


def join_class_probs(parts: Sequence[ClassProbs]) -> ClassProbs:
    """The predictions of several classifiers of the same classes on disjoint images (K folds) as one.

    Raises:
        ValueError: parts of different classes, or an image in two parts.
    """
    first = _same_classes(parts)
    ids = np.concatenate([cp.image_ids for cp in parts])
    probs = np.concatenate([cp.probs for cp in parts]).reshape(len(ids), len(first.classes))
    return ClassProbs(first.task, first.classes, first.category_ids, ids, probs)


def mean_class_probs(parts: Sequence[ClassProbs]) -> ClassProbs:
    """The mean probabilities of several classifiers of the same classes on the same images.

    Raises:
        ValueError: parts of different classes or of different images.
    """
    first = _same_classes(parts)
    for cp in parts[1:]:
        if not np.array_equal(cp.image_ids, first.image_ids):
            odd = sorted(set(cp.image_ids.tolist()) ^ set(first.image_ids.tolist()))
            raise ValueError(f"cannot average classifiers over different images, e.g. image ids {odd[:5]}")
    mean = np.mean(np.stack([cp.probs for cp in parts]), axis=0)
    return ClassProbs(first.task, first.classes, first.category_ids, first.image_ids, mean)


def classification_block(dataset: CocoDataset) -> dict[str, Any] | None:
    """The dataset's ``classification`` block (``{task, classes}``), or None.

    Looked up in ``info.classification`` (which `core.coco.CocoDataset` keeps), then in the
    file's top-level ``classification`` key.

    Raises:
        ValueError: naming the dataset when the block is not ``{task, classes: [names]}``.
    """
    block = dataset.info.get("classification") if isinstance(dataset.info, dict) else None
    if block is None and dataset.path is not None and Path(dataset.path).is_file():
        raw = read_json(dataset.path)
        block = raw.get("classification") if isinstance(raw, dict) else None
    if block is None:
        return None
    classes = block.get("classes") if isinstance(block, dict) else None
    if (
        not isinstance(classes, list)
        or not classes
        or not all(isinstance(c, str) for c in classes)
        or block.get("task", "multilabel") not in TASKS
    ):
        raise ValueError(
            f"{dataset.path or 'the dataset'}: classification must be {{task: one of {', '.join(TASKS)}, "
            f"classes: [names]}}, got {_short(block)}"
        )
    return block


def _has_image_labels(dataset: CocoDataset) -> bool:
    return any("labels" in im for im in dataset.images)


def dataset_classes(dataset: CocoDataset, task: str) -> tuple[tuple[str, ...], tuple[int | None, ...]]:
    """The classes (column order) and their category ids that a ``task`` classifier learns from ``dataset``.

    - A ``classification`` block (`classification_block`) names the classes; a class whose name is
      a category's gets that category's id, the normal class (`NORMAL_NAMES`) "No finding"'s id 14
      unless a category has it.
    - Else images carrying ``labels`` give the sorted union of their names.
    - Else the boxes do: the categories (by id) plus "No finding" (14) for ``multilabel`` and
      ``multiclass``.
    - ``binary`` has one class: the dataset's one non-normal class where it names exactly one,
      else ``"abnormal"`` (an image with any annotation or non-normal label).

    Raises:
        ValueError: an unknown task, or a malformed classification block.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    block = classification_block(dataset)
    if block is not None:
        names = list(block["classes"])
    elif _has_image_labels(dataset):
        names = sorted({str(n) for im in dataset.images for n in (im.get("labels") or [])})
    else:
        names = None
    by_name = {v: k for k, v in dataset.category_names.items()}
    if task == "binary":
        positive = [n for n in names or [] if n not in NORMAL_NAMES]
        if len(positive) == 1:
            return (positive[0],), (by_name.get(positive[0]),)
        return ("abnormal",), (None,)
    if names is None:
        cats = sorted(dataset.category_names.items())
        names = [n for _, n in cats]
        ids: list[int | None] = [c for c, _ in cats]
        if NO_FINDING not in ids and not any(n in NORMAL_NAMES for n in names):
            names.append(NORMAL_NAMES[0])
            ids.append(NO_FINDING)
        return tuple(names), tuple(ids)
    free = NO_FINDING not in by_name.values()
    ids = [by_name.get(n, NO_FINDING if n in NORMAL_NAMES and free else None) for n in names]
    return tuple(names), tuple(ids)


def truth_matrix(
    dataset: CocoDataset,
    image_ids: Sequence[int],
    task: str,
    classes: Sequence[str],
    category_ids: Sequence[int | None],
) -> np.ndarray:
    """``(n, k)`` uint8: 1 where image ``image_ids[i]`` has class ``classes[j]``.

    An image's ``labels`` (class names), when it carries them, decide; otherwise its boxes do: a
    class standing for a category is present when the image has a box of it, the normal class
    (`NORMAL_NAMES` or category 14 "No finding") when it has none, ``"abnormal"`` (binary) when it
    has any. For ``binary`` with labels, the one class is present when any label other than a
    normal one is (or the class's own name, where it is not ``"abnormal"``).

    Raises:
        ValueError: naming the image: ``labels`` that are not a list of names, a label that is not
            one of ``classes``, a class the boxes cannot tell, or (multiclass) an image with other
            than exactly one class.
        KeyError: an image id not in ``dataset``.
    """
    where = dataset.path or "the dataset"
    k = len(classes)
    known = set(dataset.category_ids)
    col = {n: j for j, n in enumerate(classes)}
    out = np.zeros((len(image_ids), k), np.uint8)
    for i, iid in enumerate(image_ids):
        im = dataset.image(int(iid))
        labels = im.get("labels")
        if labels is not None:
            if not isinstance(labels, list) or not all(isinstance(n, str) for n in labels):
                raise ValueError(
                    f"{where}: image {iid} has labels {_short(labels)}; expected a list of names"
                )
            if task == "binary":
                name = classes[0]
                out[i, 0] = (
                    (name in labels) if name != "abnormal" else any(n not in NORMAL_NAMES for n in labels)
                )
                continue
            for n in labels:
                if n not in col:
                    raise ValueError(
                        f"{where}: image {iid} has label {n!r}, not one of the classes {list(classes)}"
                    )
                out[i, col[n]] = 1
        else:
            cats = {int(a["category_id"]) for a in dataset.annotations_of(int(iid))}
            for j, (name, cid) in enumerate(zip(classes, category_ids, strict=True)):
                if cid is not None and cid in known:
                    out[i, j] = cid in cats
                elif name in NORMAL_NAMES or cid == NO_FINDING:
                    out[i, j] = not cats
                elif task == "binary" and cid is None:
                    out[i, j] = bool(cats)
                else:
                    raise ValueError(
                        f"{where}: class {name!r} is no category of the dataset and image {iid} has no labels"
                    )
        if task == "multiclass" and out[i].sum() != 1:
            have = [classes[j] for j in np.flatnonzero(out[i])]
            raise ValueError(
                f"{where}: image {iid} has {len(have)} classes {have}; a multiclass image has one"
            )
    return out


def _short(obj: Any, limit: int = 120) -> str:
    """``repr(obj)``, cut to ``limit`` characters."""
    s = repr(obj)
    return s if len(s) <= limit else s[: limit - 3] + "..."


def _sidecar_classes(path: Path) -> tuple[str, tuple[str, ...], tuple[int | None, ...]]:
    """``(task, classes, category_ids)`` from the sidecar of ``path``; a plain gate's without one.

    Raises:
        ValueError: naming the sidecar and the key that is malformed.
    """
    mp = meta_path(path)
    meta = read_json(mp) if mp.is_file() else {}
    if not isinstance(meta, dict):
        raise ValueError(f"{mp}: expected a JSON object")
    if "task" not in meta and "classes" not in meta:
        return "binary", ("abnormal",), (None,)
    task, classes = meta.get("task"), meta.get("classes")
    if task not in TASKS:
        raise ValueError(f"{mp}: task must be one of {', '.join(TASKS)}, got {task!r}")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise ValueError(f"{mp}: classes must be a non-empty list of names, got {_short(classes)}")
    cats = meta.get("category_ids", [None] * len(classes))
    if (
        not isinstance(cats, list)
        or len(cats) != len(classes)
        or not all(c is None or (isinstance(c, int) and not isinstance(c, bool)) for c in cats)
    ):
        raise ValueError(
            f"{mp}: category_ids must list one integer or null per class ({len(classes)}), got {_short(cats)}"
        )
    try:
        ClassProbs(task, tuple(classes), tuple(cats), np.zeros(0, np.int64), np.zeros((0, len(classes))))
    except ValueError as e:
        raise ValueError(f"{mp}: {e}") from None
    return task, tuple(classes), tuple(cats)


__all__ = [
    "DECIMALS", "NORMAL_NAMES", "TASKS", "ClassProbs", "classification_block", "dataset_classes",
    "join_class_probs", "mean_class_probs", "read_class_probs", "truth_matrix", "write_class_probs",
]  # fmt: skip
