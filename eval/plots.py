"""The leaderboard's plots, drawn with matplotlib's Agg canvas into PNG bytes.

Every function returns the PNG file's bytes (the caller writes them or embeds
them), draws on its own `matplotlib.figure.Figure` (no pyplot, no global
state, no GUI backend) with matplotlib's bundled DejaVu fonts: nothing is
downloaded. The PNG carries no "Software" text chunk, so it names no web
address. matplotlib is imported on first use only, so ``python -m eval``
starts fast when no plot is asked for.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence

import numpy as np

from core.detections import Detections
from eval.analysis import ConfusionMatrix, LossLog, RocCurve
from eval.coco_map import RECALL_THRESHOLDS, PrCurve

DPI = 90


def _figure(width: float, height: float, left: float, right: float, bottom: float, top: float, **adjust):
    """A new figure on an Agg canvas with fixed margins.

    All sizes are in inches: the figure is ``width`` x ``height``; the axes
    area leaves ``left``, ``right``, ``bottom``, ``top`` free around it
    (sized from the measured text, see `_text_width`, so nothing is clipped
    without a costly automatic layout). ``adjust`` goes to ``subplots_adjust``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    fig.subplots_adjust(
        left=left / width, right=1 - right / width, bottom=bottom / height, top=1 - top / height, **adjust
    )
    return fig


def _text_width(texts, size: float) -> float:
    """Width in inches of the widest of ``texts`` at font ``size`` (points), as Agg draws it."""
    from matplotlib.backends.backend_agg import RendererAgg
    from matplotlib.font_manager import FontProperties

    renderer = RendererAgg(8, 8, 72)
    prop = FontProperties(size=size)
    widths = [renderer.get_text_width_height_descent(str(t), prop, ismath=False)[0] for t in texts]
    return max(widths, default=0.0) / 72.0


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def _colors(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(k % cmap.N) for k in range(max(n, 1))]


def _fmt(v: float) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{v:.3f}"


# --------------------------------------------------------------------------- per-class AP


def per_class_ap(
    title: str, per_class: Mapping[int, float], names: Mapping[int, str], xlabel: str = "AP"
) -> bytes:
    """Horizontal bars of AP per class (a class without ground truth is absent from ``per_class``)."""
    ids = sorted(per_class)
    labels = [f"{c} {names.get(c, '')}".strip() for c in ids]
    left = _text_width(labels, 8) + 0.2
    fig = _figure(left + 4.6, 0.26 * len(ids) + 1.0, left, 0.25, 0.5, 0.35)
    ax = fig.add_subplot()
    y = np.arange(len(ids))
    values = np.array([per_class[c] for c in ids], np.float64)
    ax.barh(y, np.nan_to_num(values), color=_colors(1)[0])
    for k, v in enumerate(values):
        ax.text(min(float(np.nan_to_num(v)), 0.9) + 0.01, k, _fmt(v), va="center", fontsize=8)
    ax.set_yticks(y, labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.0)
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


# --------------------------------------------------------------------------- precision-recall


def pr_curves(
    title: str, curves: Mapping[int, PrCurve], per_class: Mapping[int, float], names: Mapping[int, str]
) -> bytes:
    """One row's interpolated precision-recall curve per class, AP in the legend."""
    ids = sorted(curves)
    labels = [f"{c} {names.get(c, '')} ({_fmt(per_class.get(c, math.nan))})".replace("  ", " ") for c in ids]
    fig = _legend_figure(labels, 7, max(4.4, 0.16 * len(ids) + 1.0))
    ax = fig.add_subplot()
    for c, label, color in zip(ids, labels, _colors(len(ids)), strict=False):
        ax.plot(RECALL_THRESHOLDS, curves[c].interpolated, color=color, lw=1.4, label=label)
    _pr_axes(ax, title)
    if ids:
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    return _png(fig)


def _legend_figure(labels: Sequence[str], size: float, height: float, plot_width: float = 5.0):
    """A figure with one axes and room on its right for a legend of ``labels`` at font ``size``."""
    right = _text_width(labels, size) + 0.85 if labels else 0.3
    return _figure(plot_width + 0.75 + right, height, 0.75, right, 0.55, 0.35)


def pr_summary(title: str, rows: Sequence[tuple[str, np.ndarray, float]]) -> bytes:
    """Mean interpolated precision over classes against recall, one curve per row.

    Args:
        rows: ``(name, (101,) mean interpolated precision, mAP)`` per row.
    """
    labels = [f"{name} ({_fmt(ap)})" for name, _, ap in rows]
    fig = _legend_figure(labels, 8, 4.4)
    ax = fig.add_subplot()
    for (_, precision, _), label, color in zip(rows, labels, _colors(len(rows)), strict=False):
        ax.plot(RECALL_THRESHOLDS, precision, color=color, lw=1.6, label=label)
    _pr_axes(ax, title)
    if rows:
        ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    return _png(fig)


def _pr_axes(ax, title: str) -> None:
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision (interpolated)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)


# --------------------------------------------------------------------------- confusion, ROC


def confusion(title: str, cm: ConfusionMatrix, xlabel: str = "predicted", ylabel: str = "truth") -> bytes:
    """A confusion matrix: colour is the share of its truth row, the cell text the count."""
    k = len(cm.labels)
    size = 8 if k <= 10 else 7
    label_w = _text_width(cm.labels, size)
    cell = 0.36 if k > 4 else 0.8
    left, bottom, right, top = label_w + 0.5, label_w * 0.87 + 0.55, 1.25, 0.4
    width = max(left + cell * k + right, _text_width([title], 10) + 0.4)
    fig = _figure(width, bottom + cell * k + top, left, right, bottom, top)
    ax = fig.add_subplot()
    counts = cm.counts.astype(np.float64)
    totals = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1, aspect="auto")
    w, h = fig.get_size_inches()
    cax = fig.add_axes((1 - (right - 0.15) / w, bottom / h, 0.15 / w, 1 - (bottom + top) / h))
    fig.colorbar(im, cax=cax, label="share of the truth row")
    for t in range(k):
        for p in range(k):
            if cm.counts[t, p]:
                color = "white" if share[t, p] > 0.6 else "black"
                ax.text(p, t, str(int(cm.counts[t, p])), ha="center", va="center", fontsize=size, color=color)
    ax.set_xticks(range(k), cm.labels, rotation=60, ha="right", fontsize=size)
    ax.set_yticks(range(k), cm.labels, fontsize=size)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    return _png(fig)


def roc(
    title: str, curves: Sequence[tuple[str, RocCurve]], positive: str = "abnormal", negative: str = "normal"
) -> bytes:
    """ROC curves (of gates, or of a classifier's classes), AUC in the legend, the chance diagonal dashed.

    ``positive`` and ``negative`` name the two sides in the legend and the axis labels.
    """
    fig = _figure(5.6, 4.8, 0.75, 0.2, 0.55, 0.35)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--", label="chance")
    for (name, c), color in zip(curves, _colors(len(curves)), strict=False):
        label = f"{name} (AUC {_fmt(c.auc)}; {c.n_abnormal} {positive}, {c.n_normal} {negative})"
        ax.plot(c.fpr, c.tpr, color=color, lw=1.8, drawstyle="default", label=label)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    if positive == "abnormal":
        ax.set_xlabel("false-positive rate (normal called abnormal)")
        ax.set_ylabel("true-positive rate (abnormal found)")
    else:
        ax.set_xlabel("false-positive rate")
        ax.set_ylabel("true-positive rate")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8 if len(curves) < 8 else 6, loc="lower right")
    return _png(fig)


# --------------------------------------------------------------------------- training


def loss_curves(title: str, logs: Sequence[LossLog]) -> bytes:
    """Total loss against step, one colour per run; its components dashed in the same colour."""
    labels = [f"{log.label}: {name}" for log in logs for name in ("loss", *log.components)]
    fig = _legend_figure(labels, 7, max(4.4, 0.16 * len(labels) + 1.0), plot_width=5.4)
    ax = fig.add_subplot()
    for log, color in zip(logs, _colors(len(logs)), strict=False):
        ax.plot(log.step, log.loss, color=color, lw=1.8, label=f"{log.label}: loss")
        for k, (name, values) in enumerate(log.components.items()):
            ls = (0, (5, 2 + 2 * k))  # dashed; a longer gap for each further component
            ax.plot(log.step, values, color=color, lw=1.0, ls=ls, alpha=0.85, label=f"{log.label}: {name}")
    ax.set_xlabel("step")
    positive = [v for log in logs for v in log.loss if v > 0]
    # runs of several frameworks (and divergence spikes) span decades: a log axis keeps each readable
    if positive and max(positive) > 100 * min(positive):
        ax.set_yscale("log")
        ax.set_ylabel("loss (log scale)")
    else:
        ax.set_ylabel("loss")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if logs:
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    return _png(fig)


# --------------------------------------------------------------------------- examples


def example(
    title: str,
    image: np.ndarray,
    panels: Sequence[tuple[str, Detections]],
    names: Mapping[int, str],
    class_ids: Sequence[int],
    max_boxes: int = 30,
) -> bytes:
    """One image drawn once per panel (truth first, then each model) with its boxes.

    Args:
        title: the figure's title (image id and file name).
        image: ``(H, W)`` uint8 grey image.
        panels: ``(label, Detections)`` per panel, boxes xyxy pixels of ``image``;
            boxes whose label is not in ``class_ids`` are not drawn.
        names: class names.
        class_ids: the classes to draw; the colour of a class is fixed by its
            position here, so it is the same in every panel.
        max_boxes: at most this many top-scored boxes per panel.
    """
    from matplotlib.patches import Rectangle

    n = len(panels)
    cols = min(n, 4)
    nrows = math.ceil(n / cols)
    h, w = image.shape[:2]
    panel_w = 3.2
    panel_h = panel_w * h / max(w, 1)
    gap, top, bottom = 0.3, 0.45, 0.35
    fig = _figure(
        panel_w * cols + 0.1 * (cols + 1),
        (panel_h + gap) * nrows - gap + top + bottom,
        0.1,
        0.1,
        bottom,
        top,
        wspace=0.1 * cols / (panel_w * cols),
        hspace=gap / panel_h,
    )
    palette = _colors(max(len(class_ids), 1))
    color_of = {int(c): palette[k % len(palette)] for k, c in enumerate(class_ids)}
    fig.suptitle(title, fontsize=9, y=1 - 0.05 / fig.get_size_inches()[1], va="top")
    for k, (label, dets) in enumerate(panels):
        ax = fig.add_subplot(nrows, cols, k + 1)
        ax.imshow(image, cmap="gray", vmin=0, vmax=255, interpolation="antialiased")
        keep = np.flatnonzero(np.isin(dets.labels, list(color_of)))
        keep = keep[np.argsort(-dets.scores[keep], kind="stable")][:max_boxes]
        for j in keep.tolist():
            x1, y1, x2, y2 = dets.boxes[j].tolist()
            c = int(dets.labels[j])
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, lw=1.2, ec=color_of[c]))
            text = str(c) if k == 0 else f"{c} {dets.scores[j]:.2f}"
            ax.text(x1, y1, text, fontsize=6, color="white", va="bottom", bbox=_label_box(color_of[c]))
        ax.set_title(f"{label} ({len(keep)} box{'' if len(keep) == 1 else 'es'})", fontsize=8)
        ax.set_xlim(0, w)
        ax.set_ylim(h, 0)
        ax.set_xticks([])
        ax.set_yticks([])
    legend = [c for c in class_ids if any(int(c) in d.labels.tolist() for _, d in panels)]
    if legend:
        text = ";  ".join(f"{c} {names.get(int(c), '')}".strip() for c in legend)
        fig.text(0.5, 0.08 / fig.get_size_inches()[1], text, fontsize=7, ha="center", va="bottom")
    return _png(fig)


def _label_box(color) -> dict:
    return {"boxstyle": "square,pad=0.1", "fc": color, "ec": "none", "alpha": 0.8}
