"""The library behind ``python -m infer``: `export` and `predict`, one function per verb.

Both log with `logging` and print nothing; the CLI prints their results.
"""

from __future__ import annotations

import csv
import datetime as _dt
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.cli import one_line, progress
from core.detections import BOX_DECIMALS, SCORE_DECIMALS, Detections
from core.io import atomic_open, write_json, write_png
from infer.bundle import Bundle, InferError, cxrfuse_version, load_bundle
from infer.sources import Decoded, Failure, Source, decode, find_sources

logger = logging.getLogger(__name__)

PREDICTIONS_JSON = "predictions.json"
PREDICTIONS_CSV = "predictions.csv"
FAILURES_JSON = "failures.json"
FAILURES_CSV = "failures.csv"
OVERLAYS = "overlays"
REPORTS = "sr"


@dataclass
class PredictResult:
    """What `predict` wrote.

    Attributes:
        out: the output folder.
        predictions: ``predictions.json``; ``csv``: ``predictions.csv`` (Kaggle VinBigData format).
        images: the number of images predicted.
        failures: inputs (or their overlay or report) that failed, also in ``failures.json``/``.csv``.
        overlays, reports: the overlay PNGs and DICOM SR files written.
    """

    out: Path
    predictions: Path
    csv: Path
    images: int
    failures: list[Failure] = field(default_factory=list)
    overlays: list[Path] = field(default_factory=list)
    reports: list[Path] = field(default_factory=list)


def _boxes(d: Detections, classes: dict[int, str]) -> tuple[list[dict[str, Any]], float | None]:
    """The lesion boxes of ``d`` as JSON rows (best first), and its "No finding" score (or None)."""
    from core.classes import NO_FINDING

    rows, no_finding = [], None
    for k in range(len(d)):
        c, s = int(d.labels[k]), round(float(d.scores[k]), SCORE_DECIMALS)
        if c == NO_FINDING:
            no_finding = s if no_finding is None else no_finding
            continue
        rows.append({
            "class_id": c,
            "class_name": classes.get(c, str(c)),
            "score": s,
            "xyxy": [round(float(v), BOX_DECIMALS) for v in d.boxes[k]],
        })  # fmt: skip
    rows.sort(key=lambda r: -r["score"])
    return rows, no_finding


def _record(d: Decoded, dets: Detections, p_abnormal: float | None, classes: dict[int, str]) -> dict[str, Any]:
    boxes, no_finding = _boxes(dets, classes)
    w, h = d.original_size
    rec: dict[str, Any] = {
        "file": str(d.source.path),
        "source_id": d.source.key,
        "kind": "dicom" if d.source.dicom else "image",
        "width": w,
        "height": h,
    }
    if d.header is not None:
        for key, name in (("StudyInstanceUID", "study_instance_uid"), ("SeriesInstanceUID", "series_instance_uid"),
                          ("SOPInstanceUID", "sop_instance_uid")):  # fmt: skip
            value = d.header.get(key)
            rec[name] = str(value) if value else None
    rec.update(p_abnormal=p_abnormal, no_finding=no_finding, boxes=boxes, overlay=None, sr=None)
    return rec


def _chunks(items: Sequence[Source], n: int) -> Iterable[Sequence[Source]]:
    for a in range(0, len(items), n):
        yield items[a : a + n]


def _write_failures(out: Path, failures: Sequence[Failure]) -> None:
    write_json(out / FAILURES_JSON, [f.to_dict() for f in failures], indent=1)
    with atomic_open(out / FAILURES_CSV, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "stage", "error"])
        w.writerows([x.file, x.stage, x.error] for x in failures)


def predict(
    bundle: str | Path | Bundle,
    inputs: Sequence[str | Path],
    out: str | Path,
    *,
    overlays: bool = False,
    sr: bool = False,
    device: str | None = "auto",
    batch_size: int | None = None,
    min_score: float = 0.25,
) -> PredictResult:
    """Predict new DICOM or PNG/JPEG images with a bundle and write the answers into ``out``.

    Every input is decoded as ``python -m convert`` does and resized to the bundle's size
    (`infer.sources`), predicted by every model and fused as the pipeline does (`infer.models`), and
    its boxes scaled back to the original image's pixels. Written into ``out``, each file atomically:

    - ``predictions.json``: ``bundle``, ``fusion``, ``created``, ``classes`` and per image ``file``,
      ``source_id`` (the file stem), ``kind`` (``dicom``/``image``), the original ``width`` and
      ``height``, a DICOM's ``study_instance_uid``, ``series_instance_uid`` and ``sop_instance_uid``,
      ``p_abnormal`` (the gate's, or null), ``no_finding`` (the "No finding" score the fusion gives,
      or null), ``boxes`` (``class_id``, ``class_name``, ``score``, ``xyxy`` in original pixels, best
      first), ``overlay`` and ``sr`` (paths relative to ``out``, or null); then ``failures``;
    - ``predictions.csv``: the Kaggle VinBigData submission (``image_id,PredictionString``, as
      ``python -m convert submission`` writes it), ``image_id`` being ``source_id``;
    - ``overlays/SOURCE_ID.png`` with ``overlays``: the original image with the boxes scoring at least
      ``min_score`` drawn (`infer.overlay`);
    - ``sr/SOURCE_ID.dcm`` with ``sr``, for each DICOM input: a DICOM Structured Report (TID 1500) of
      the boxes scoring at least ``min_score`` (`infer.sr`);
    - ``failures.json`` and ``failures.csv``: the inputs that failed (``file``, ``stage``, ``error``),
      empty when none did.

    A file that is not a readable DICOM or PNG/JPEG is a failure, and the other images are still
    predicted.

    Args:
        bundle: a bundle folder (`infer.bundle.load_bundle`) or a loaded bundle.
        inputs: DICOM or PNG/JPEG files, or folders of them.
        out: the output folder.
        overlays: write overlay PNGs.
        sr: write a DICOM SR per DICOM input.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` for every model; None keeps each config's.
        batch_size: images per forward pass (default each model's ``predict.batch_size``).
        min_score: boxes drawn on overlays and put in reports score at least this (all go into the
            JSON and CSV).

    Returns:
        A `PredictResult`.

    Raises:
        BundleError: the bundle is incomplete or was altered (`infer.bundle.load_bundle`).
        InferError: no input names an image, or ``min_score`` is outside ``[0, 1]``.
        adapters.base.AdapterError, adapters.config.ConfigError: a model the adapter refuses.
    """
    from convert.submission import vinbig_rows
    from infer.models import Ensemble

    if not 0.0 <= min_score <= 1.0:
        raise InferError(f"min score must be in [0, 1], got {min_score}")
    b = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    sources, failures = find_sources(inputs)
    if not sources:
        named = ", ".join(str(i) for i in inputs) or "(nothing)"
        raise InferError(f"no DICOM or PNG/JPEG image in {named}")
    ensemble = Ensemble(b, device, batch_size)  # a model that refuses its weights fails before anything is written
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    writer = None
    if sr:
        from infer.sr import ReportWriter

        writer = ReportWriter(
            b.classes, version=cxrfuse_version(), parameters=(f"fusion {b.fusion_name or b.models[0].name}",),
            min_score=min_score,
        )  # fmt: skip
    result = PredictResult(out, out / PREDICTIONS_JSON, out / PREDICTIONS_CSV, 0, failures)
    records: list[dict[str, Any]] = []
    rows: list[tuple[str, str]] = []
    next_id = 0
    bar = progress(total=len(sources), desc="predicting", unit="img")
    try:
        for chunk in _chunks(sources, ensemble.chunk):
            decoded: list[Decoded] = []
            for s in chunk:
                try:
                    decoded.append(decode(s, b.size, b.voi_lut))
                except (OSError, ValueError) as e:
                    failures.append(Failure(str(s.path), "read", one_line(e)))
                    logger.info("%s: not predicted: %s", s.path, one_line(e))
            if decoded:
                images = []
                for d in decoded:
                    (w, h), (ow, oh) = d.size, d.original_size
                    images.append({"id": next_id, "file_name": str(d.source.path), "width": w, "height": h,
                                   "orig_width": ow, "orig_height": oh, "source_id": d.source.key})  # fmt: skip
                    next_id += 1
                ds = ensemble.dataset(images)
                dets, p_abnormal = ensemble.predict(ds, [d.image for d in decoded])
                rows += vinbig_rows(ds, dets)
                for im, d in zip(images, decoded, strict=True):
                    original = dets[im["id"]].scaled(im["orig_width"] / im["width"], im["orig_height"] / im["height"])
                    p = p_abnormal.get(im["id"]) if p_abnormal is not None else None
                    rec = _record(d, original, p, b.classes)
                    _extras(out, d, original, rec, result, writer, b, overlays, min_score)
                    records.append(rec)
                    result.images += 1
            bar.update(len(chunk))
    finally:
        bar.close()
    doc = {
        "bundle": str(b.root),
        "fusion": b.fusion_name,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "classes": {str(c): n for c, n in sorted(b.classes.items())},
        "images": records,
        "failures": [f.to_dict() for f in failures],
    }
    write_json(result.predictions, doc, indent=1)
    with atomic_open(result.csv, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(("image_id", "PredictionString"))
        w.writerows(rows)
    _write_failures(out, failures)
    return result


def _extras(
    out: Path,
    d: Decoded,
    original: Detections,
    rec: dict[str, Any],
    result: PredictResult,
    writer: Any,
    b: Bundle,
    overlays: bool,
    min_score: float,
) -> None:
    """Write the overlay and the report of one image, recording a failure of either instead of raising."""
    if overlays:
        from infer.overlay import draw_overlay

        path = out / OVERLAYS / f"{d.source.key}.png"
        try:
            write_png(path, draw_overlay(d.original, original, b.classes, min_score))
            rec["overlay"] = path.relative_to(out).as_posix()
            result.overlays.append(path)
        except (OSError, ValueError) as e:
            result.failures.append(Failure(str(d.source.path), "overlay", f"{path}: {one_line(e)}"))
    if writer is not None and d.header is not None:
        path = out / REPORTS / f"{d.source.key}.dcm"
        try:
            writer.write(path, d.header, original)
            rec["sr"] = path.relative_to(out).as_posix()
            result.reports.append(path)
        except (OSError, ValueError, TypeError, AttributeError) as e:
            result.failures.append(Failure(str(d.source.path), "sr", f"{d.source.path}: {one_line(e)}"))
