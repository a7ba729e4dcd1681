"""The leaderboard's plots as PNG files, and one self-contained HTML page holding the tables and plots.

`make_plots` decides which figures a leaderboard gets (drawn by `eval.plots`):

- ``ap_NAME``: per-class AP bars of each row;
- ``pr_all`` and ``pr_NAME``: precision-recall curves at the metric's IoU,
  every row's mean over classes, then each row's per class;
- ``confusion_NAME``: each row's confusion matrix of detections at the
  metric's IoU, with ``score >= score_thr`` (the dataset's classes + background;
  classes neither in the truth nor predicted are left out);
- ``gate_roc`` and ``gate_confusion_NAME``: the gates' ROC curves (AUC) and
  normal/abnormal confusion matrices at ``p_abnormal >= 0.5``;
- ``loss``: training loss against step, one curve per run (components dashed);
- ``example_ID``: dataset images with the truth and each row's boxes side by side;
- ``classifier_roc_NAME`` and ``classifier_confusion_NAME``: a multiclass or multilabel
  classifier's ROC curves per class (AUROC in the legend) and, for multiclass, its confusion
  matrix of the most probable class;
- ``cam_NAME_ID_CLASS``: the Grad-CAM overlays found beside a gate or classifier file
  (``NAME_cam/cams.json``), up to three per class.

`write_html` writes one static page: inline CSS, PNGs embedded as base64
``data:`` URIs, no script, font, stylesheet or any other external reference,
so it reads offline from a single file.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from core.detections import Detections
from core.io import atomic_open, read_image_gray
from eval import plots
from eval.analysis import LossLog, detection_confusion, example_images
from eval.board import (
    CLASS_COLUMNS,
    CLASSIFIER_COLUMNS,
    GATE_COLUMNS,
    Leaderboard,
    class_cells,
    gate_cells,
    mean_interpolated,
    slug,
)

SECTIONS = (
    "Per-class AP bars",
    "Precision-recall",
    "Confusion matrices",
    "Gate",
    "Training",
    "Examples",
    "Classifiers",
    "Grad-CAM",
)
#: Grad-CAM overlays shown per gate or classifier and class
CAMS_PER_CLASS = 3


@dataclass(frozen=True)
class Plot:
    """One figure.

    Attributes:
        key: file stem (``plots/KEY.png``), unique within a report.
        section: one of `SECTIONS`.
        title: a caption.
        png: the PNG file's bytes.
    """

    key: str
    section: str
    title: str
    png: bytes


def _unique_slugs(names: Sequence[str]) -> list[str]:
    out: list[str] = []
    for n in names:
        s, k = slug(n), 2
        while s in out:
            s = f"{slug(n)}_{k}"
            k += 1
        out.append(s)
    return out


def make_plots(
    board: Leaderboard,
    runs: Sequence[LossLog] = (),
    n_examples: int = 4,
    score_thr: float = 0.25,
) -> list[Plot]:
    """Draw every plot of ``board`` (see the module docstring).

    Args:
        board: the scored leaderboard.
        runs: training logs for the loss plot (none: no loss plot).
        n_examples: how many example images (0: none).
        score_thr: lowest score of a box in the confusion matrices and examples.

    Raises:
        FileNotFoundError: naming an example image whose file is missing (use ``n_examples=0``
            for a dataset without its images).
    """
    ds, metric = board.dataset, board.metric
    names = board.class_names
    iou = f"IoU {metric.iou:g}"
    slugs = _unique_slugs([r.name for r in board.rows])
    pictures = {}  # read first: a missing image fails before any drawing
    for image_id in example_images(ds, n_examples):
        try:
            pictures[image_id] = read_image_gray(ds.image_path(image_id))
        except (FileNotFoundError, ValueError) as e:
            raise type(e)(f"example image {image_id}: {e} (use --examples 0 to draw none)") from None
    out: list[Plot] = []
    for r, s in zip(board.rows, slugs, strict=True):
        xlabel = "AP@0.4" if metric.key == "vinbig" else "AP@[.5:.95]"
        title = f"{r.name}: per-class {xlabel}"
        out.append(
            Plot(f"ap_{s}", SECTIONS[0], title, plots.per_class_ap(title, r.per_class_ap, names, xlabel))
        )
    summary = [(r.name, mean_interpolated(r), _mean(r.curve_ap.values())) for r in board.rows]
    title = f"Precision-recall at {iou}, mean over classes (mAP in the legend)"
    out.append(Plot("pr_all", SECTIONS[1], title, plots.pr_summary(title, summary)))
    for r, s in zip(board.rows, slugs, strict=True):
        title = f"{r.name}: precision-recall per class at {iou} (AP in the legend)"
        out.append(Plot(f"pr_{s}", SECTIONS[1], title, plots.pr_curves(title, r.curves, r.curve_ap, names)))
    class_ids = sorted(ds.category_ids)
    for r, s in zip(board.rows, slugs, strict=True):
        cm = detection_confusion(ds, r.detections, metric.iou, score_thr, class_ids).compact()
        title = f"{r.name}: detections at {iou}, score >= {score_thr:g}"
        out.append(Plot(f"confusion_{s}", SECTIONS[2], title, plots.confusion(title, cm)))
    if board.gates:
        title = "Gate ROC (abnormal is positive)"
        out.append(
            Plot("gate_roc", SECTIONS[3], title, plots.roc(title, [(g.name, g.roc) for g in board.gates]))
        )
        for g, s in zip(board.gates, _unique_slugs([g.name for g in board.gates]), strict=True):
            title = f"Gate {g.name} at p_abnormal >= 0.5"
            png = plots.confusion(title, g.confusion, xlabel="gate's call")
            out.append(Plot(f"gate_confusion_{s}", SECTIONS[3], title, png))
    out += classifier_plots(board)
    if runs:
        title = "Training loss (components dashed)"
        out.append(Plot("loss", SECTIONS[4], title, plots.loss_curves(title, runs)))
    for image_id, image in pictures.items():
        im = ds.image(image_id)
        panels: list[tuple[str, Detections]] = [("truth", ds.ground_truth(image_id))]
        for r in board.rows:
            d = r.detections.get(image_id, Detections.empty())
            panels.append((r.name, d.select(d.scores >= score_thr)))
        state = "normal" if ds.is_normal(image_id) else f"{len(ds.annotations_of(image_id))} boxes"
        title = f"image {image_id} ({im['file_name']}, {state}); boxes with score >= {score_thr:g}"
        png = plots.example(title, image, panels, names, class_ids)
        out.append(Plot(f"example_{image_id}", SECTIONS[5], title, png))
    return out


def classifier_plots(board: Leaderboard) -> list[Plot]:
    """Each classifier's ROC curves per class and (multiclass) confusion matrix; every gate's and
    classifier's Grad-CAM overlays, up to `CAMS_PER_CLASS` per class."""
    out: list[Plot] = []
    gates = board.gates
    for g, s in zip(gates, _unique_slugs([g.name for g in gates]), strict=True):
        c = g.classifier
        if c is not None:
            title = f"{g.name}: ROC per class, one against the rest ({c.task}; macro AUROC {c.macro_auc:.3f})"
            curves = [(name, r) for name, r in c.roc.items() if r.n_abnormal and r.n_normal]
            png = plots.roc(title, curves, positive="with the class", negative="without")
            out.append(Plot(f"classifier_roc_{s}", SECTIONS[6], title, png))
            if c.confusion is not None:
                title = f"{g.name}: truth against the most probable class"
                png = plots.confusion(title, c.confusion, xlabel="most probable class")
                out.append(Plot(f"classifier_confusion_{s}", SECTIONS[6], title, png))
        shown: dict[str, int] = {}
        for e in g.cams:
            cls = str(e["class"])
            if shown.get(cls, 0) >= CAMS_PER_CLASS:
                continue
            shown[cls] = shown.get(cls, 0) + 1
            title = f"{g.name}: Grad-CAM of {cls} on image {e['image_id']} (p = {float(e['p']):.3f})"
            key = f"cam_{s}_{int(e['image_id'])}_{slug(cls)}"
            out.append(Plot(key, SECTIONS[7], title, Path(e["path"]).read_bytes()))
    return out


def _mean(values) -> float:
    v = list(values)
    return sum(v) / len(v) if v else float("nan")


def write_plots(plot_list: Sequence[Plot], out_dir: str | Path) -> list[Path]:
    """Write each plot to ``out_dir/KEY.png`` atomically; returns the paths."""
    out = Path(out_dir)
    paths = []
    for p in plot_list:
        path = out / f"{p.key}.png"
        with atomic_open(path, "wb") as f:
            f.write(p.png)
        paths.append(path)
    return paths


# --------------------------------------------------------------------------- HTML

_CSS = """
body { font-family: sans-serif; margin: 1.5em auto; max-width: 1200px; color: #222; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 1.8em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.9em; }
th, td { border: 1px solid #bbb; padding: 0.25em 0.6em; }
th { background: #eef2f7; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.best td { background: #e3f5e1; font-weight: bold; }
figure { display: inline-block; margin: 0.5em 1em 1em 0; vertical-align: top; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.85em; color: #555; max-width: 640px; }
p.note { font-size: 0.9em; color: #444; max-width: 900px; }
nav a { margin-right: 1em; }
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _table(table_id: str, header: Sequence[str], rows: Sequence[Sequence[str]], classes=None) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = []
    for k, r in enumerate(rows):
        cls = f' class="{_e(classes[k])}"' if classes and classes[k] else ""
        cells = "".join(f'<td class="num">{_e(c)}</td>' if _numeric(c) else f"<td>{_e(c)}</td>" for c in r)
        body.append(f"<tr{cls}>{cells}</tr>")
    return f'<table id="{_e(table_id)}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _numeric(text: str) -> bool:
    t = str(text)
    return t == "–" or t.replace(".", "", 1).replace("-", "", 1).isdigit()


def render_html(
    board: Leaderboard,
    plot_list: Sequence[Plot],
    title: str = "CXRFuse leaderboard",
    notes: Sequence[str] = (),
) -> str:
    """The report page as a string: the findings ``notes``, the tables and every plot, self-contained."""
    ds, metric = board.dataset, board.metric
    n_normal = sum(ds.is_normal(i) for i in ds.image_ids)
    rows = [board.cells(r) for r in board.rows]
    for cells, r in zip(rows, board.rows, strict=True):
        if r.best:
            cells[1] = f"{cells[1]} (best)"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        f'<p class="note">Dataset <code>{_e(ds.path)}</code>: {len(ds.images)} images ({n_normal} normal), '
        f"{len(ds.annotations)} boxes. Metric: <b>{_e(metric.label)}</b>; rows sorted best first, "
        "the best highlighted. AP50 and mAP@[.5:.95] are COCO mAP over the dataset's categories, "
        "all detections kept.</p>",
    ]
    if notes:
        parts.append('<h2 id="findings">Findings</h2><ul id="findings-list">')
        parts += [f"<li>{_e(n)}</li>" for n in notes]
        parts.append("</ul>")
    sections = [s for s in SECTIONS if any(p.section == s for p in plot_list)]
    nav = ['<a href="#table">Leaderboard</a>', '<a href="#per-class-ap">Per-class AP</a>']
    nav += [f'<a href="#{_anchor(s)}">{_e(s)}</a>' for s in sections]
    parts.append(f"<nav>{''.join(nav)}</nav>")
    parts.append('<h2 id="table">Leaderboard</h2>')
    parts.append(_table("leaderboard", board.columns(), rows, ["best" if r.best else "" for r in board.rows]))
    if board.has_ci:
        parts.append(
            '<p class="note" id="ci-note">95% CI: the 2.5% and 97.5% quantiles of the score over bootstrap '
            "resamples of the images (the same resamples for every row); two rows whose intervals "
            "overlap may still differ, which the paired bootstrap of the findings decides.</p>"
        )
    if metric.key == "vinbig":
        parts.append(
            '<p class="note">"No finding" (class 14): <i>predicted</i> = the file has class-14 rows; '
            "<i>gate NAME</i> = the --gate file's P(normal) = 1 - p_abnormal was supplied; "
            "<i>none</i> = scored without No-finding predictions. <i>gated</i>: a fusion's sidecar "
            "names its gate.</p>"
        )
    parts.append('<h2 id="per-class-ap">Per-class AP</h2>')
    parts.append(_table("per-class", ["class", *(r.name for r in board.rows)], board.per_class_table()))
    if board.gates:
        parts.append("<h3>Gates</h3>")
        parts.append(_table("gates", GATE_COLUMNS, [gate_cells(g) for g in board.gates]))
    if board.classifiers:
        parts.append('<h3 id="classifiers-table">Classifiers</h3>')
        parts.append(
            '<p class="note">AUROC of each class, one against the rest, on the images scored; the macro '
            "AUROC is their mean over the classes with images on both sides (\u2013: one side only).</p>"
        )
        parts.append(_table("classifiers", CLASSIFIER_COLUMNS, board.classifier_table()))
        for k, g in enumerate(board.classifiers):
            parts.append(f"<h4>{_e(g.name)}: AUROC per class</h4>")
            parts.append(_table(f"classifier-{k}", CLASS_COLUMNS, class_cells(g)))
    for s in sections:
        parts.append(f'<h2 id="{_anchor(s)}">{_e(s)}</h2>')
        for p in plot_list:
            if p.section == s:
                data = base64.b64encode(p.png).decode("ascii")
                parts.append(
                    f'<figure id="fig-{_e(p.key)}"><img alt="{_e(p.title)}" '
                    f'src="data:image/png;base64,{data}"><figcaption>{_e(p.title)}</figcaption></figure>'
                )
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _anchor(section: str) -> str:
    return slug(section.lower()).replace(".", "-")


def html_path(dest: str | Path) -> Path:
    """``report/`` → ``report/index.html``; a path ending in ``.html`` is kept."""
    dest = Path(dest)
    return dest if dest.suffix.lower() in (".html", ".htm") else dest / "index.html"


def write_html(
    board: Leaderboard,
    plot_list: Sequence[Plot],
    dest: str | Path,
    title: str = "CXRFuse leaderboard",
    notes: Sequence[str] = (),
) -> Path:
    """Write the report page atomically to `html_path` of ``dest``; returns its path."""
    path = html_path(dest)
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(render_html(board, plot_list, title, notes))
    return path
