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
- ``95% CI``: the 95% bootstrap interval of the headline metric over images
  (``--bootstrap N`` resamples, default 1000, the same resamples for every row;
  0 disables it; see `eval.bootstrap`);
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
``--gate`` is applied to rows. A multiclass or multilabel classifier file
(`core.class_probs`: per-class probabilities, the task and classes in its
sidecar) is a gate through its ``p_abnormal`` and also a classifier row: its
AUROC per class and macro AUROC (the classifiers tables), ROC curves per class,
the confusion matrix for multiclass, and its Grad-CAM overlays
(``NAME_cam/cams.json``) per class in the report.

A results or gate file whose image ids or category ids are not in the dataset
is an error naming the file and the ids. Nothing here imports a training
framework; matplotlib is imported only when plots are drawn.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from core.class_probs import read_class_probs
from core.classes import NO_FINDING, NO_FINDING_NAME
from core.coco import CocoDataset
from core.detections import Detections
from core.io import check_out_dir, check_out_file, read_json
from core.predictions import read_gate, read_meta, read_predictions
from eval.analysis import classifier_analysis, gate_confusion, gate_roc
from eval.board import Gate, Leaderboard, Row
from eval.bootstrap import DEFAULT_RESAMPLES, Bootstrap
from eval.inputs import expand_dirs, expand_paths, gated_label, images_per_second, peek_json_list
from eval.scoring import Scorer
from fusion.gate import has_no_finding, with_no_finding

__all__ = ["build_leaderboard", "check_example_images", "expand_paths", "leaderboard", "load_gate", "rank_rows", "score_file"]


def load_gate(path: Path, dataset: CocoDataset, applied: bool) -> Gate:
    """Read a gate or classifier file and its sidecar; compute its ROC and confusion matrix.

    A multiclass or multilabel classifier file (`core.class_probs`) also gets its per-class ROC
    curves, AUROC and macro AUROC (`eval.analysis.classifier_analysis`), and the Grad-CAM overlays
    indexed in ``NAME_cam/cams.json`` beside it, if any (``adapters predict --cam``).

    Raises:
        ValueError: naming the file and the entry or image ids at fault.
    """
    meta = read_meta(path)
    scores = read_gate(path, dataset)
    if not scores:
        raise ValueError(f"{path}: the gate file has no entries")
    classifier = None
    if meta.get("task") in ("multiclass", "multilabel"):
        try:
            classifier = classifier_analysis(dataset, read_class_probs(path, dataset))
        except ValueError as e:
            raise ValueError(e if str(e).startswith(f"{path}") else f"{path}: {e}") from None
    return Gate(
        name=str(meta.get("name") or path.stem),
        path=path,
        meta=meta,
        p_abnormal=scores,
        roc=gate_roc(dataset, scores),
        confusion=gate_confusion(dataset, scores),
        applied=applied,
        classifier=classifier,
        cams=read_cam_index(path),
    )


def read_cam_index(path: Path) -> list[dict[str, Any]]:
    """The Grad-CAM overlays beside a classifier file: ``NAME_cam/cams.json``'s entries whose PNG
    exists, each with ``path`` added; ``[]`` when there is no index.

    Raises:
        ValueError: naming the index when it is not a list of ``{image_id, class, p, file}``.
    """
    index = path.with_name(f"{path.stem}_cam") / "cams.json"
    if not index.is_file():
        return []
    entries = read_json(index)
    out = []
    for k, e in enumerate(entries if isinstance(entries, list) else [None]):
        if not isinstance(e, Mapping) or not all(key in e for key in ("image_id", "class", "p", "file")):
            raise ValueError(f"{index}: entry {k} is not {{image_id, class, p, file}}: {e!r}")
        png = index.parent / str(e["file"])
        if png.is_file() and png.parent == index.parent:
            out.append({**e, "path": png})
    return out


def read_results(path: Path, scorer: Scorer) -> dict[int, Detections]:
    """A results file read for ``scorer``'s dataset ("No finding" rows allowed), every image present.

    Raises:
        ValueError: naming the file and the ids it has that the dataset lacks, its first malformed
            entry, or that it looks like a gate file without its sidecar.
    """
    try:
        return read_predictions(path, scorer.dataset, extra_categories=scorer.extra_categories)
    except ValueError:
        rows = peek_json_list(path)
        if rows and isinstance(rows[0], Mapping) and "p_abnormal" in rows[0] and "bbox" not in rows[0]:
            raise ValueError(
                f"{path}: looks like a gate file ({{image_id, p_abnormal}}) but its sidecar does not say "
                f"kind: gate; pass it with --gate or write its .meta.json"
            ) from None
        raise


def score_file(
    scorer: Scorer,
    path: Path,
    meta: Mapping[str, Any],
    gate: Gate | None = None,
    boot: Bootstrap | None = None,
) -> Row:
    """Score one results file with ``scorer`` (unranked `Row`).

    Args:
        scorer: the dataset's ground truth and the headline metric.
        path: a COCO results file.
        meta: its sidecar (`core.predictions.read_meta`).
        gate: for ``vinbig``, a file without "No finding" rows gets them from this gate by the one
            rule, `fusion.gate.with_no_finding` (P(normal) = 1 - p_abnormal).
        boot: resamples of the scorer's images; the row's ``ci_low``/``ci_high`` are the 95%
            bootstrap interval of its score on them (NaN without).

    Raises:
        ValueError: naming the file and the image or category ids it has that
            the dataset lacks, or its first malformed entry.
    """
    dets = read_results(path, scorer)
    has14 = bool(scorer.extra_categories) and any(has_no_finding(d) for d in dets.values())
    no_finding, scored = "", dets
    if scorer.metric.key == "vinbig":
        no_finding = "predicted" if has14 else "none"
        if not has14 and gate is not None:
            p = gate.p_abnormal
            scored = {i: (with_no_finding(d, p[i]) if i in p else d) for i, d in dets.items()}
            no_finding = f"gate {gate.name}"
    ev = scorer.evaluate(scored)
    ci_low = ci_high = math.nan
    if boot is not None:
        interval = boot.interval(scored)
        ci_low, ci_high = interval.low, interval.high
    kind = str(meta.get("kind", "detector"))
    return Row(
        name=str(meta.get("name") or path.stem),
        kind=kind,
        path=path,
        meta=dict(meta),
        score=ev.score,
        ap50=ev.ap50,
        map=ev.map,
        recall=ev.recall,
        per_class_ap=ev.per_class_ap,
        per_class_recall=ev.per_class_recall,
        images_per_second=images_per_second(meta),
        no_finding=no_finding,
        gated=gated_label(meta, kind),
        detections=dets,
        curves=ev.curves,
        curve_ap=ev.curve_ap,
        ci_low=ci_low,
        ci_high=ci_high,
    )


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
    bootstrap: int = DEFAULT_RESAMPLES,
    seed: int = 0,
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
        bootstrap: resamples of the dataset's images for each row's 95% interval
            (`eval.bootstrap`; the same resamples for every row); 0 computes none.
        seed: the resamples' random seed.

    Returns:
        The `Leaderboard`.

    Raises:
        FileNotFoundError: naming a missing dataset, file or a pattern that matches nothing.
        ValueError: for a negative ``bootstrap``, an unknown metric or sidecar kind, two rows with one
            name, no results file among ``preds``, or a file that does not
            match the dataset (naming the file and the ids).
    """
    if bootstrap < 0:
        raise ValueError(f"--bootstrap must be >= 0 (0: no intervals), got {bootstrap}")
    ds = dataset if isinstance(dataset, CocoDataset) else CocoDataset.load(dataset)
    scorer = Scorer(ds, metric)  # the ground truth is parsed once for every file
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
    boot = Bootstrap(scorer, bootstrap, seed) if bootstrap else None
    rows = rank_rows([score_file(scorer, p, meta, applied, boot) for p, meta in entries])
    names = dict(ds.category_names)
    if scorer.metric.key == "vinbig" and NO_FINDING not in names:
        names[NO_FINDING] = NO_FINDING_NAME
    class_ids = sorted({c for r in rows for c in r.per_class_ap})
    return Leaderboard(ds, scorer.metric, rows, gates, class_ids, names)



# --------------------------------------------------------------------------- the verb


def check_example_images(dataset: CocoDataset, examples: int) -> None:
    """Raise unless the files of the ``examples`` images the report would draw are on disk.

    Raises:
        FileNotFoundError: "no such image", naming the first missing image and suggesting
            ``--examples 0`` (a ``--labels-only`` dataset has no images).
        core.coco.UnsafePathError: for an image whose file lies outside the dataset's folder.
    """
    from eval.analysis import example_images

    for image_id in example_images(dataset, examples):
        path = dataset.image_path(image_id)
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: no such image (image {image_id} of {dataset.path}, drawn as an example); "
                "a dataset without its images (--labels-only) needs --examples 0"
            )


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
    dataset: str | Path | CocoDataset,
    preds: Sequence[str | Path],
    metric: str = "vinbig",
    gate: str | Path | None = None,
    out: str | Path | None = None,
    html: str | Path | None = None,
    runs: Sequence[str | Path] = (),
    examples: int = 4,
    score_thr: float = 0.25,
    notes: Sequence[str] = (),
    bootstrap: int = DEFAULT_RESAMPLES,
) -> LeaderboardOutput:
    """Score, rank and write: ``python -m eval leaderboard``.

    Plots are drawn only when ``out`` or ``html`` is given: PNGs under
    ``out/plots/`` and/or embedded in the page.

    Args:
        dataset: the COCO dataset file (or a loaded `CocoDataset`).
        preds: results and gate files or glob patterns (see `build_leaderboard`).
        metric: ``vinbig``, ``coco`` or ``rsna``.
        gate: the gate applied to rows without class 14 (``vinbig``) and plotted.
        out: folder for ``leaderboard.md``/``.csv``/``.json`` and ``plots/*.png``.
        html: folder (``index.html`` is written there) or ``.html`` file of the report.
        runs: training run folders or glob patterns (each with ``loss.csv``) for the loss plot.
        examples: example images to draw (0: none).
        score_thr: lowest box score in the confusion matrices and examples.
        notes: findings shown at the top of the HTML page (e.g. the demo's conclusions).
        bootstrap: resamples for each row's 95% bootstrap interval (0: none; see `build_leaderboard`).

    Raises:
        FileNotFoundError: naming the first example image not on disk ("no such image", before any
            scoring; ``examples=0`` draws none and needs no image), or as below.
        FileNotFoundError, ValueError: as `build_leaderboard`, `eval.analysis.read_loss_log`
            and `eval.report.make_plots`, naming the file at fault; for ``out`` or ``html`` where a
            file or folder is in the way (`core.io.check_out_dir`), before any work.
    """
    if examples < 0:
        raise ValueError(f"--examples must be >= 0, got {examples}")
    if not math.isfinite(score_thr):
        raise ValueError(f"--conf must be finite, got {score_thr}")
    if out is not None:
        check_out_dir(out)
    if html is not None:
        from eval.report import html_path

        check_out_file(html_path(html), "--html")
    from eval.analysis import read_loss_log

    logs = [read_loss_log(d) for d in expand_dirs(runs)]  # fail on a bad log before any scoring
    ds = dataset if isinstance(dataset, CocoDataset) else CocoDataset.load(dataset)
    if (out is not None or html is not None) and examples > 0:
        check_example_images(ds, examples)  # before any scoring
    board = build_leaderboard(ds, preds, metric=metric, gate=gate, bootstrap=bootstrap)
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
