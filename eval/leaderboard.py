"""The leaderboard: every results file scored on one dataset, ranked, written as Markdown, CSV and JSON.

``python -m eval leaderboard`` is a thin shim over `leaderboard`. One row per
results file (a detector or a fusion; its name and kind come from the
``NAME.meta.json`` sidecar, see `core.predictions`), with these columns:

- the headline metric (``--metric``): ``vinbig`` = the VinBigData metric,
  mAP@0.4 over the 14 lesion classes plus "No finding" (`eval.metrics.vinbig_map`);
  ``coco`` = COCO mAP@[.5:.95]; ``rsna`` = the RSNA pneumonia score;
- ``AP50`` and ``mAP@[.5:.95]``: COCO mAP at IoU 0.5 and averaged over
  0.5:0.95, over the dataset's own categories (class-14 "No finding" rows are
  left out of both);
- per-class AP: from the headline metric for ``vinbig`` (AP@0.4, "No finding"
  included when the dataset has a normal image), else AP@[.5:.95];
- recall: mean over classes of the highest recall reached (at IoU 0.4 for
  ``vinbig``, averaged over 0.5:0.95 otherwise);
- images per second, where the sidecar records ``images_per_second`` (or
  ``images`` and ``seconds``);
- for ``vinbig``, where the "No finding" predictions came from, and for a
  fusion, whether its sidecar says it was gated (its ``gate`` key).

Every COCO computation keeps all detections (no ``maxDets`` cap). Rows are
sorted by the headline metric, best first (NaN last, ties by name; tied rows
share a rank); the best row, and every row tied with it, is marked.

"No finding" (class 14). A results file may hold class-14 rows (a gated
fusion writes one ``[0, 0, 1, 1]`` box per image scored ``P(normal)``) when
the dataset has no category 14 of its own; only the ``vinbig`` metric counts
them. For ``vinbig``, a row without class-14 predictions is scored as it is,
with no "No finding" predictions, unless ``--gate GATE.json`` is given: then
the gate's ``P(normal) = 1 - p_abnormal`` is supplied to every such row as
its "No finding" score (column "No finding": ``predicted``, ``gate NAME`` or
``none``). A row that has class-14 predictions is never changed.

Gate files (sidecar ``kind: gate``, ``[{image_id, p_abnormal}]``) passed among
the predictions are not rows: they, and ``--gate``, feed the gate plots (ROC
with AUC, normal/abnormal confusion matrix) and the gates table. Only
``--gate`` is applied to rows.

A results or gate file whose image ids or category ids are not in the dataset
is an error naming the file and the ids. Nothing here imports a training
framework; matplotlib is imported only when plots are drawn.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from core.coco import CocoDataset
from core.detections import Detections
from core.io import atomic_open, write_json
from core.predictions import read_gate, read_meta, read_predictions
from eval.analysis import ConfusionMatrix, RocCurve, gate_confusion, gate_roc
from eval.coco_map import PrCurve
from eval.metrics import NO_FINDING, coco_map, rsna_score, vinbig_map

NO_FINDING_NAME = "No finding"


@dataclass(frozen=True)
class Metric:
    """A headline metric.

    Attributes:
        key: ``vinbig``, ``coco`` or ``rsna``.
        label: the column header.
        iou: the IoU threshold of its precision-recall curves and detection confusion matrix.
    """

    key: str
    label: str
    iou: float


METRICS: dict[str, Metric] = {
    "vinbig": Metric("vinbig", "mAP@0.4 (VinBigData)", 0.4),
    "coco": Metric("coco", "mAP@[.5:.95] (COCO)", 0.5),
    "rsna": Metric("rsna", "RSNA score", 0.4),
}


@dataclass(frozen=True)
class Gate:
    """A gate file: scores, ROC and confusion matrix (at ``p_abnormal >= 0.5``).

    Attributes:
        name: from the sidecar (default: the file stem).
        path: the gate file.
        meta: its sidecar.
        p_abnormal: ``{image_id: p_abnormal}``.
        roc: `eval.analysis.RocCurve` over the images it scored.
        confusion: normal/abnormal `eval.analysis.ConfusionMatrix`.
        applied: True for the ``--gate`` file (its ``P(normal)`` fed rows without class 14).
    """

    name: str
    path: Path
    meta: dict[str, Any]
    p_abnormal: dict[int, float]
    roc: RocCurve
    confusion: ConfusionMatrix
    applied: bool


@dataclass(frozen=True)
class Row:
    """One results file, scored. Metric values are floats (NaN where undefined).

    Attributes:
        name, kind, path, meta: from the file and its sidecar.
        score: the headline metric.
        ap50: COCO AP at IoU 0.5 over the dataset's categories.
        map: COCO mAP@[.5:.95] over the dataset's categories.
        recall: mean max recall over classes (see the module docstring).
        per_class_ap: ``{category_id: AP}`` for classes with ground truth.
        per_class_recall: ``{category_id: max recall}``.
        images_per_second: from the sidecar, or None.
        no_finding: ``predicted``, ``gate NAME``, ``none`` (``vinbig``), or ``""``.
        gated: a fusion's gate as its sidecar names it (``no`` if it has none); ``""`` otherwise.
        rank: 1 for the best; tied scores share a rank.
        best: True for the best row and rows tied with it.
        detections: ``{image_id: Detections}`` as read (for the plots).
        curves: ``{category_id: PrCurve}`` at the metric's IoU.
        curve_ap: ``{category_id: AP}`` at the metric's IoU.
    """

    name: str
    kind: str
    path: Path
    meta: dict[str, Any]
    score: float
    ap50: float
    map: float
    recall: float
    per_class_ap: dict[int, float]
    per_class_recall: dict[int, float]
    images_per_second: float | None
    no_finding: str
    gated: str
    rank: int = 0
    best: bool = False
    detections: Mapping[int, Detections] = field(default_factory=dict, repr=False, compare=False)
    curves: dict[int, PrCurve] = field(default_factory=dict, repr=False, compare=False)
    curve_ap: dict[int, float] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class Leaderboard:
    """Scored rows (best first), the gates, and what they were scored on.

    Attributes:
        dataset: the ground truth.
        metric: the headline `Metric`.
        rows: the rows, sorted, ranked and marked.
        gates: every gate file given, ``--gate`` first.
        class_ids: the per-class AP columns (classes with ground truth), sorted.
        class_names: ``{category_id: name}``, "No finding" included for ``vinbig``.
    """

    dataset: CocoDataset
    metric: Metric
    rows: list[Row]
    gates: list[Gate]
    class_ids: list[int]
    class_names: dict[int, str]

    # ---------------------------------------------------------------- table
    def columns(self) -> list[str]:
        """Headers of the main table (without the per-class AP columns)."""
        cols = ["rank", "name", "kind", self.metric.label, "AP50", "mAP@[.5:.95]", "recall", "img/s"]
        if self.metric.key == "vinbig":
            cols.append("No finding")
        return [*cols, "gated"]

    def cells(self, row: Row, digits: int = 4) -> list[str]:
        """A row's main-table cells as text (``–`` where a value is missing)."""
        cells = [
            str(row.rank),
            row.name,
            row.kind,
            _num(row.score, digits),
            _num(row.ap50, digits),
            _num(row.map, digits),
            _num(row.recall, digits),
            _num(row.images_per_second, 1),
        ]
        if self.metric.key == "vinbig":
            cells.append(row.no_finding)
        return [*cells, row.gated]

    def class_label(self, category_id: int) -> str:
        return f"{category_id} {self.class_names.get(category_id, '')}".strip()

    def to_text(self) -> str:
        """The main table as aligned plain text; ``*`` marks the best row."""
        header = ["", *self.columns()]
        body = [["*" if r.best else "", *(c.replace("–", "-") for c in self.cells(r))] for r in self.rows]
        return _text_table(header, body)

    def to_markdown(self) -> str:
        """The report in Markdown: main table, per-class AP table (classes × rows), gates."""
        ds = self.dataset
        n_normal = sum(ds.is_normal(i) for i in ds.image_ids)
        lines = [
            "# Leaderboard",
            "",
            f"Dataset `{ds.path}`: {len(ds.images)} images ({n_normal} normal), "
            f"{len(ds.annotations)} boxes. Metric: **{self.metric.label}**. Best row in bold.",
            "",
            _md_table(self.columns(), [self._md_cells(r) for r in self.rows]),
            "",
            "## Per-class AP",
            "",
            _md_table(["class", *(r.name for r in self.rows)], self.per_class_table()),
        ]
        if self.gates:
            lines += ["", "## Gates", "", _md_table(GATE_COLUMNS, [gate_cells(g) for g in self.gates])]
        return "\n".join(lines) + "\n"

    def _md_cells(self, row: Row) -> list[str]:
        cells = self.cells(row)
        if row.best:
            cells[1] = f"**{cells[1]}** (best)"
        return cells

    def per_class_table(self, digits: int = 4) -> list[list[str]]:
        """One line per class: its label, then each row's AP."""
        return [
            [self.class_label(c), *(_num(r.per_class_ap.get(c), digits) for r in self.rows)]
            for c in self.class_ids
        ]

    def to_csv(self) -> str:
        """The table as CSV: one line per row, per-class AP columns ``AP <id> <name>``."""
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(
            [
                "rank",
                "best",
                "name",
                "kind",
                "file",
                f"{self.metric.key}",
                "ap50",
                "map_50_95",
                "recall",
                "images_per_second",
                "no_finding",
                "gated",
                *(f"AP {self.class_label(c)}" for c in self.class_ids),
            ]
        )
        for r in self.rows:
            w.writerow(
                [
                    r.rank,
                    int(r.best),
                    r.name,
                    r.kind,
                    str(r.path),
                    *(_csv_num(v) for v in (r.score, r.ap50, r.map, r.recall, r.images_per_second)),
                    r.no_finding,
                    r.gated,
                    *(_csv_num(r.per_class_ap.get(c)) for c in self.class_ids),
                ]
            )
        return buf.getvalue()

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict (NaN written as null)."""
        ds = self.dataset
        return {
            "dataset": str(ds.path),
            "images": len(ds.images),
            "normal_images": sum(ds.is_normal(i) for i in ds.image_ids),
            "metric": self.metric.key,
            "metric_name": self.metric.label,
            "classes": {str(c): self.class_names.get(c, "") for c in self.class_ids},
            "rows": [
                {
                    "rank": r.rank,
                    "best": r.best,
                    "name": r.name,
                    "kind": r.kind,
                    "file": str(r.path),
                    "score": _json_num(r.score),
                    "ap50": _json_num(r.ap50),
                    "map_50_95": _json_num(r.map),
                    "recall": _json_num(r.recall),
                    "images_per_second": _json_num(r.images_per_second),
                    "no_finding": r.no_finding,
                    "gated": r.gated,
                    "per_class_ap": {str(c): _json_num(v) for c, v in r.per_class_ap.items()},
                    "per_class_recall": {str(c): _json_num(v) for c, v in r.per_class_recall.items()},
                    "meta": r.meta,
                }
                for r in self.rows
            ],
            "gates": [
                {
                    "name": g.name,
                    "file": str(g.path),
                    "applied": g.applied,
                    "auc": _json_num(g.roc.auc),
                    "normal_images": g.roc.n_normal,
                    "abnormal_images": g.roc.n_abnormal,
                    "confusion": {"labels": list(g.confusion.labels), "counts": g.confusion.counts.tolist()},
                }
                for g in self.gates
            ],
        }

    def write(self, out_dir: str | Path) -> list[Path]:
        """Write ``leaderboard.md``, ``leaderboard.csv`` and ``leaderboard.json`` (atomically) into ``out_dir``."""
        out = Path(out_dir)
        paths = [out / "leaderboard.md", out / "leaderboard.csv", out / "leaderboard.json"]
        with atomic_open(paths[0], "w", encoding="utf-8") as f:
            f.write(self.to_markdown())
        with atomic_open(paths[1], "w", encoding="utf-8", newline="") as f:
            f.write(self.to_csv())
        write_json(paths[2], self.to_json(), indent=1)
        return paths


GATE_COLUMNS = ["gate", "AUC", "abnormal", "normal", "TN", "FP", "FN", "TP", "applied to rows"]


def gate_cells(g: Gate) -> list[str]:
    """A gate's line of the gates table (confusion counts at ``p_abnormal >= 0.5``)."""
    (tn, fp), (fn, tp) = g.confusion.counts.tolist()
    return [
        g.name,
        _num(g.roc.auc, 4),
        str(g.roc.n_abnormal),
        str(g.roc.n_normal),
        *(str(v) for v in (tn, fp, fn, tp)),
        "yes" if g.applied else "no",
    ]


# --------------------------------------------------------------------------- inputs


def expand_paths(patterns: Sequence[str | Path]) -> list[Path]:
    """Files named by ``patterns`` (glob patterns expanded), in order, without repeats or sidecars.

    ``*.meta.json`` sidecars are skipped, so ``preds/*.json``, quoted or
    expanded by the shell, names the results and gate files only.

    Raises:
        FileNotFoundError: naming a pattern that matches nothing or a path that is not a file.
    """
    out: dict[Path, None] = {}
    for pattern in patterns:
        text = str(pattern)
        if glob.has_magic(text):
            matches = sorted(glob.glob(text))
            if not matches:
                raise FileNotFoundError(f"{text}: matches no file")
        else:
            matches = [text]
        for m in matches:
            p = Path(m)
            if p.name.endswith(".meta.json"):
                continue
            if not p.is_file():
                raise FileNotFoundError(f"{p}: no such file")
            out.setdefault(p, None)
    return list(out)


def expand_dirs(patterns: Sequence[str | Path]) -> list[Path]:
    """Directories named by ``patterns`` (glob patterns expanded), in order, without repeats.

    Raises:
        FileNotFoundError: naming a pattern that matches no directory.
    """
    out: dict[Path, None] = {}
    for pattern in patterns:
        text = str(pattern)
        matches = sorted(glob.glob(text)) if glob.has_magic(text) else [text]
        dirs = [Path(m) for m in matches if Path(m).is_dir()]
        if not dirs:
            raise FileNotFoundError(f"{text}: no such run directory")
        for d in dirs:
            out.setdefault(d, None)
    return list(out)


def _images_per_second(meta: Mapping[str, Any]) -> float | None:
    v = meta.get("images_per_second")
    if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0:
        return float(v)
    n, s = meta.get("images"), meta.get("seconds")
    if all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (n, s)) and n > 0 and s > 0:
        return float(n) / float(s)
    return None


def _gated(meta: Mapping[str, Any], kind: str) -> str:
    """A fusion's gate as its sidecar names it: ``gate`` is a path, or ``{path, mode, low, high}``
    as ``ensemble run`` writes it (``GATE (MODE)``, ``GATE (filter LOW..HIGH)``); ``no`` if null."""
    if kind != "fusion":
        return ""
    g = meta.get("gate")
    if not g:
        return "no"
    if isinstance(g, str):
        return Path(g).stem if g.endswith(".json") else g
    if not isinstance(g, Mapping):
        return "yes"
    where = next((g[k] for k in ("name", "path", "file") if isinstance(g.get(k), str)), "gate")
    text = Path(where).stem if where.endswith(".json") else where
    mode = g.get("mode")
    if isinstance(mode, str) and mode:
        low, high = g.get("low"), g.get("high")
        if mode == "filter" and all(isinstance(v, (int, float)) for v in (low, high)):
            mode = f"filter {low:g}..{high:g}"
        text += f" ({mode})"
    return text


def load_gate(path: Path, dataset: CocoDataset, applied: bool) -> Gate:
    """Read a gate file and its sidecar; compute its ROC and confusion matrix.

    Raises:
        ValueError: naming the file and the entry or image ids at fault.
    """
    meta = read_meta(path)
    scores = read_gate(path, dataset)
    if not scores:
        raise ValueError(f"{path}: the gate file has no entries")
    return Gate(
        name=str(meta.get("name") or path.stem),
        path=path,
        meta=meta,
        p_abnormal=scores,
        roc=gate_roc(dataset, scores),
        confusion=gate_confusion(dataset, scores),
        applied=applied,
    )


def score_file(
    dataset: CocoDataset,
    path: Path,
    meta: Mapping[str, Any],
    metric: Metric,
    gate: Gate | None = None,
) -> Row:
    """Score one results file on ``dataset`` (unranked `Row`).

    Args:
        dataset: the ground truth.
        path: a COCO results file.
        meta: its sidecar (`core.predictions.read_meta`).
        metric: the headline metric.
        gate: for ``vinbig``, supplies ``P(normal)`` when the file has no class-14 row.

    Raises:
        ValueError: naming the file and the image or category ids it has that
            the dataset lacks, or its first malformed entry.
    """
    own14 = NO_FINDING in dataset.category_ids
    extra = () if own14 else (NO_FINDING,)
    try:
        dets = read_predictions(path, dataset, extra_categories=extra)
    except ValueError:
        rows = _peek(path)
        if rows and isinstance(rows[0], Mapping) and "p_abnormal" in rows[0] and "bbox" not in rows[0]:
            raise ValueError(
                f"{path}: looks like a gate file ({{image_id, p_abnormal}}) but its sidecar does not say "
                f"kind: gate; pass it with --gate or write its .meta.json"
            ) from None
        raise
    gt = dataset.to_dict()
    has14 = not own14 and any((d.labels == NO_FINDING).any() for d in dets.values())
    lesions = {i: d.select(d.labels != NO_FINDING) for i, d in dets.items()} if has14 else dets
    cocor = coco_map(gt, lesions)
    ap50 = cocor.per_iou.get(0.5, math.nan)
    no_finding = ""
    if metric.key == "vinbig":
        gate_scores = None
        no_finding = "predicted" if has14 else "none"
        if not has14 and gate is not None:
            gate_scores = {i: 1.0 - p for i, p in gate.p_abnormal.items()}
            no_finding = f"gate {gate.name}"
        head = vinbig_map(gt, dets, gate_scores=gate_scores, iou_thr=metric.iou)
        score, per_class, per_recall, recall = head.map, head.per_class, head.per_class_recall, head.recall
        curves, curve_ap = head.curves, head.per_class
    else:
        score = cocor.map if metric.key == "coco" else rsna_score(gt, lesions)
        per_class, per_recall, recall = cocor.per_class, cocor.per_class_recall, cocor.recall
        if metric.key == "coco":
            key = round(metric.iou, 6)
            curves = cocor.curves
            curve_ap = {c: v[key] for c, v in cocor.per_class_per_iou.items()}
        else:
            at = coco_map(gt, lesions, iou_thrs=(metric.iou,))
            curves, curve_ap = at.curves, at.per_class
    kind = str(meta.get("kind", "detector"))
    return Row(
        name=str(meta.get("name") or path.stem),
        kind=kind,
        path=path,
        meta=dict(meta),
        score=float(score),
        ap50=float(ap50),
        map=float(cocor.map),
        recall=float(recall),
        per_class_ap=dict(per_class),
        per_class_recall=dict(per_recall),
        images_per_second=_images_per_second(meta),
        no_finding=no_finding,
        gated=_gated(meta, kind),
        detections=dets,
        curves=dict(curves),
        curve_ap=dict(curve_ap),
    )


def _peek(path: Path) -> list | None:
    try:
        with open(path, encoding="utf-8") as f:
            rows = json.load(f)
    except (OSError, ValueError):
        return None
    return rows if isinstance(rows, list) else None


def rank_rows(rows: Sequence[Row]) -> list[Row]:
    """Rows sorted by score, best first (NaN last, ties by name), with ``rank`` and ``best`` set.

    Tied scores share a rank (1, 1, 3, ...); ``best`` marks every row tied
    with the top score (none if every score is NaN).
    """

    def key(r: Row) -> float:
        return -r.score if math.isfinite(r.score) else math.inf

    ordered = sorted(rows, key=lambda r: (key(r), r.name))
    out: list[Row] = []
    for k, r in enumerate(ordered):
        rank = out[-1].rank if out and key(ordered[k - 1]) == key(r) else k + 1
        out.append(replace(r, rank=rank, best=rank == 1 and math.isfinite(r.score)))
    return out


def build_leaderboard(
    dataset: str | Path | CocoDataset,
    preds: Sequence[str | Path],
    metric: str = "vinbig",
    gate: str | Path | None = None,
) -> Leaderboard:
    """Score every results file in ``preds`` on ``dataset`` and rank them.

    Args:
        dataset: a COCO dataset file (or a loaded `CocoDataset`).
        preds: results files or glob patterns; gate files among them
            (sidecar ``kind: gate``) become gates, not rows; ``*.meta.json``
            sidecars are skipped.
        metric: ``vinbig``, ``coco`` or ``rsna``.
        gate: a gate file whose ``P(normal)`` is supplied, for ``vinbig``, to
            rows without class-14 predictions (see the module docstring).

    Returns:
        The `Leaderboard`.

    Raises:
        FileNotFoundError: naming a missing dataset, file or a pattern that matches nothing.
        ValueError: for an unknown metric or sidecar kind, two rows with one
            name, no results file among ``preds``, or a file that does not
            match the dataset (naming the file and the ids).
    """
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose one of {sorted(METRICS)}")
    spec = METRICS[metric]
    ds = dataset if isinstance(dataset, CocoDataset) else CocoDataset.load(dataset)
    paths = expand_paths(preds)
    gate_path = Path(gate) if gate is not None else None
    if gate_path is not None and not gate_path.is_file():
        raise FileNotFoundError(f"{gate_path}: no such gate file")
    gates: list[Gate] = []
    if gate_path is not None:
        gates.append(load_gate(gate_path, ds, applied=True))
    applied = gates[0] if gates else None
    entries: list[tuple[Path, dict[str, Any]]] = []
    for p in paths:
        if gate_path is not None and p.resolve() == gate_path.resolve():
            continue
        meta = read_meta(p)
        kind = meta.get("kind")
        if kind == "gate":
            gates.append(load_gate(p, ds, applied=False))
        elif kind in ("detector", "fusion"):
            entries.append((p, meta))
        else:
            raise ValueError(f"{p}: sidecar kind {kind!r} is not one of detector, fusion, gate")
    if not entries:
        raise ValueError(
            "no results file to rank among --preds"
            + (f" (only gate files: {', '.join(str(g.path) for g in gates)})" if gates else "")
        )
    seen: dict[str, Path] = {}
    for p, meta in entries:
        name = str(meta.get("name") or p.stem)
        if name in seen:
            raise ValueError(f"two results files are both named {name!r}: {seen[name]} and {p}")
        seen[name] = p
    gate_names: dict[str, Path] = {}
    for g in gates:
        if g.name in gate_names:
            raise ValueError(f"two gate files are both named {g.name!r}: {gate_names[g.name]} and {g.path}")
        gate_names[g.name] = g.path
    rows = rank_rows([score_file(ds, p, meta, spec, applied) for p, meta in entries])
    names = dict(ds.category_names)
    if spec.key == "vinbig" and NO_FINDING not in names:
        names[NO_FINDING] = NO_FINDING_NAME
    class_ids = sorted({c for r in rows for c in r.per_class_ap})
    return Leaderboard(ds, spec, rows, gates, class_ids, names)


# --------------------------------------------------------------------------- formatting


def _num(v: float | None, digits: int) -> str:
    if v is None or not math.isfinite(v):
        return "–"
    return f"{v:.{digits}f}"


def _csv_num(v: float | None) -> str:
    return "" if v is None or not math.isfinite(v) else repr(float(v))


def _json_num(v: float | None) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    numeric = [bool(rows) and all(_looks_numeric(r[k]) for r in rows) for k in range(len(header))]
    lines = [
        "| " + " | ".join(_md_escape(h) for h in header) + " |",
        "|" + "|".join("---:" if num else "---" for num in numeric) + "|",
    ]
    lines += ["| " + " | ".join(_md_escape(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _text_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    numeric = [bool(rows) and all(_looks_numeric(r[k]) for r in rows) for k in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        parts = [
            str(c).rjust(w) if num else str(c).ljust(w)
            for c, w, num in zip(cells, widths, numeric, strict=True)
        ]
        return "  ".join(parts).rstrip()

    return "\n".join([line(header), "  ".join("-" * w for w in widths), *(line(r) for r in rows)])


_NUMERIC = re.compile(r"^[-+]?[0-9.]+$|^[–-]$")


def _looks_numeric(text: str) -> bool:
    return bool(_NUMERIC.match(text))


def slug(name: str) -> str:
    """A file-name-safe form of ``name`` (letters, digits, ``.``, ``_``, ``-``)."""
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "row"
    return s[:80]


def mean_interpolated(row: Row) -> np.ndarray:
    """``(101,)`` mean over classes of a row's interpolated precision at the metric's IoU."""
    ids = [c for c in row.curves if c in row.curve_ap]
    if not ids:
        return np.zeros(101)
    return np.mean([row.curves[c].interpolated for c in ids], axis=0)


# --------------------------------------------------------------------------- the verb


@dataclass(frozen=True)
class LeaderboardOutput:
    """What `leaderboard` made.

    Attributes:
        board: the scored `Leaderboard`.
        files: every file written (tables, plots, the HTML page), in writing order.
        html: the HTML page, or None.
    """

    board: Leaderboard
    files: list[Path]
    html: Path | None


def leaderboard(
    dataset: str | Path,
    preds: Sequence[str | Path],
    metric: str = "vinbig",
    gate: str | Path | None = None,
    out: str | Path | None = None,
    html: str | Path | None = None,
    runs: Sequence[str | Path] = (),
    examples: int = 4,
    score_thr: float = 0.25,
    notes: Sequence[str] = (),
) -> LeaderboardOutput:
    """Score, rank and write: ``python -m eval leaderboard``.

    Plots are drawn only when ``out`` or ``html`` is given: PNGs under
    ``out/plots/`` and/or embedded in the page.

    Args:
        dataset: the COCO dataset file.
        preds: results and gate files or glob patterns (see `build_leaderboard`).
        metric: ``vinbig``, ``coco`` or ``rsna``.
        gate: the gate applied to rows without class 14 (``vinbig``) and plotted.
        out: folder for ``leaderboard.md``/``.csv``/``.json`` and ``plots/*.png``.
        html: folder (``index.html`` is written there) or ``.html`` file of the report.
        runs: training run folders or glob patterns (each with ``loss.csv``) for the loss plot.
        examples: example images to draw (0: none).
        score_thr: lowest box score in the confusion matrices and examples.
        notes: findings shown at the top of the HTML page (e.g. the demo's conclusions).

    Raises:
        FileNotFoundError, ValueError: as `build_leaderboard`, `eval.analysis.read_loss_log`
            and `eval.report.make_plots`, naming the file at fault.
    """
    if examples < 0:
        raise ValueError(f"examples must be >= 0, got {examples}")
    if not math.isfinite(score_thr):
        raise ValueError(f"score_thr must be finite, got {score_thr}")
    from eval.analysis import read_loss_log

    logs = [read_loss_log(d) for d in expand_dirs(runs)]  # fail on a bad log before any scoring
    board = build_leaderboard(dataset, preds, metric=metric, gate=gate)
    files: list[Path] = []
    page = None
    if out is not None or html is not None:
        from eval import report

        figures = report.make_plots(board, logs, n_examples=examples, score_thr=score_thr)
        if out is not None:
            files += board.write(out)
            files += report.write_plots(figures, Path(out) / "plots")
        if html is not None:
            page = report.write_html(board, figures, html, notes=notes)
            files.append(page)
    return LeaderboardOutput(board, files, page)
