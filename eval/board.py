"""The leaderboard as data and as text: `Row`, `Gate`, `Leaderboard` and their Markdown, CSV, JSON and plain tables.

`eval.leaderboard` fills a `Leaderboard`; `eval.report` draws it. Nothing here scores or reads files.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.coco import CocoDataset
from core.detections import Detections
from core.io import atomic_open, write_json
from eval.analysis import ClassifierAnalysis, ConfusionMatrix, RocCurve
from eval.coco_map import PrCurve
from eval.scoring import Metric
from eval.scoring import mean_interpolated as _mean_interpolated


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
        classifier: for a multiclass or multilabel classifier file, its per-class ROC and AUROC
            (`eval.analysis.ClassifierAnalysis`); None for a plain gate.
        cams: its Grad-CAM overlays, ``{image_id, class, p, file, path}`` each (may be empty).
    """

    name: str
    path: Path
    meta: dict[str, Any]
    p_abnormal: dict[int, float]
    roc: RocCurve
    confusion: ConfusionMatrix
    applied: bool
    classifier: ClassifierAnalysis | None = None
    cams: list[dict[str, Any]] = field(default_factory=list)


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
        ci_low, ci_high: the 95% bootstrap interval of ``score`` over images (`eval.bootstrap`);
            NaN when not computed.
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
    ci_low: float = math.nan
    ci_high: float = math.nan
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
        cols = ["rank", "name", "kind", self.metric.label]
        if self.has_ci:
            cols.append("95% CI")
        cols += ["AP50", "mAP@[.5:.95]", "recall", "img/s"]
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
            *([_ci(row, 2)] if self.has_ci else []),
            _num(row.ap50, digits),
            _num(row.map, digits),
            _num(row.recall, digits),
            _num(row.images_per_second, 1),
        ]
        if self.metric.key == "vinbig":
            cells.append(row.no_finding)
        return [*cells, row.gated]

    @property
    def has_ci(self) -> bool:
        """Whether any row has a bootstrap interval (then the tables show it)."""
        return any(math.isfinite(r.ci_low) for r in self.rows)

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
        if self.classifiers:
            lines += ["", "## Classifiers", "", _md_table(CLASSIFIER_COLUMNS, self.classifier_table())]
            for g in self.classifiers:
                lines += ["", f"### {g.name}: AUROC per class", "", _md_table(CLASS_COLUMNS, class_cells(g))]
        return "\n".join(lines) + "\n"

    @property
    def classifiers(self) -> list[Gate]:
        """The gates that are multiclass or multilabel classifiers, in the gates' order."""
        return [g for g in self.gates if g.classifier is not None]

    def classifier_table(self) -> list[list[str]]:
        """One line per classifier: name, task, classes, macro AUROC, images."""
        return [
            [g.name, g.classifier.task, str(len(g.classifier.classes)), _num(g.classifier.macro_auc, 4),
             str(g.classifier.images)]
            for g in self.classifiers
        ]  # fmt: skip

    def classifiers_csv(self) -> str:
        """Every classifier's AUROC per class as CSV (``classifier,task,class,auroc,positives,negatives``),
        its macro AUROC on a line of class ``macro``."""
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["classifier", "task", "class", "auroc", "positives", "negatives"])
        for g in self.classifiers:
            c = g.classifier
            for name, roc in c.roc.items():
                w.writerow([g.name, c.task, name, _csv_num(roc.auc), roc.n_abnormal, roc.n_normal])
            w.writerow([g.name, c.task, "macro", _csv_num(c.macro_auc), "", ""])
        return buf.getvalue()

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
                f"{self.metric.key}_ci_low",
                f"{self.metric.key}_ci_high",
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
                    _csv_num(r.ci_low),
                    _csv_num(r.ci_high),
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
                    "ci_low": _json_num(r.ci_low),
                    "ci_high": _json_num(r.ci_high),
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
                    "classifier": _classifier_json(g.classifier) if g.classifier is not None else None,
                }
                for g in self.gates
            ],
        }

    def write(self, out_dir: str | Path) -> list[Path]:
        """Write ``leaderboard.md``, ``leaderboard.csv`` and ``leaderboard.json`` (atomically) into ``out_dir``,
        and ``classifiers.csv`` when a classifier was given."""
        out = Path(out_dir)
        paths = [out / "leaderboard.md", out / "leaderboard.csv", out / "leaderboard.json"]
        with atomic_open(paths[0], "w", encoding="utf-8") as f:
            f.write(self.to_markdown())
        with atomic_open(paths[1], "w", encoding="utf-8", newline="") as f:
            f.write(self.to_csv())
        write_json(paths[2], self.to_json(), indent=1)
        if self.classifiers:
            paths.append(out / "classifiers.csv")
            with atomic_open(paths[3], "w", encoding="utf-8", newline="") as f:
                f.write(self.classifiers_csv())
        return paths


CLASSIFIER_COLUMNS = ["classifier", "task", "classes", "macro AUROC", "images"]
CLASS_COLUMNS = ["class", "AUROC", "positives", "negatives"]


def class_cells(g: Gate) -> list[list[str]]:
    """A classifier's AUROC table: one line per class (``–`` where a class has one side only)."""
    return [[name, _num(r.auc, 4), str(r.n_abnormal), str(r.n_normal)] for name, r in g.classifier.roc.items()]


def _classifier_json(c: ClassifierAnalysis) -> dict[str, Any]:
    return {
        "task": c.task,
        "classes": list(c.classes),
        "images": c.images,
        "macro_auc": _json_num(c.macro_auc),
        "per_class": {
            name: {"auc": _json_num(r.auc), "positives": r.n_abnormal, "negatives": r.n_normal}
            for name, r in c.roc.items()
        },
        "confusion": (
            {"labels": list(c.confusion.labels), "counts": c.confusion.counts.tolist()} if c.confusion else None
        ),
    }


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



# --------------------------------------------------------------------------- formatting


def _ci(row: Row, digits: int) -> str:
    """``[0.40, 0.46]``, or ``–`` without an interval."""
    if not (math.isfinite(row.ci_low) and math.isfinite(row.ci_high)):
        return "–"
    return f"[{row.ci_low:.{digits}f}, {row.ci_high:.{digits}f}]"


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
    return _mean_interpolated(row.curves, row.curve_ap)


