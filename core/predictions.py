"""Prediction files: COCO results JSON + a ``.meta.json`` sidecar, and gate score files.

Every step that writes predictions (``adapters predict``, ``ensemble run``) writes
``NAME.json`` (COCO results: ``image_id, category_id, bbox [x, y, w, h]`` in absolute
pixels of the dataset's images, ``score``) and ``NAME.meta.json`` beside it. The
sidecar is a JSON object; these keys have a fixed meaning (others may be added):

- ``name``: the row name on a leaderboard (default: the file stem);
- ``kind``: ``detector``, ``fusion`` or ``gate``;
- ``dataset``: path of the COCO dataset the predictions were made on;
- ``adapter``, ``config``, ``weights``: for a detector or a gate;
- ``method``, ``inputs``, ``options``, ``gate``: for a fusion;
- ``images``, ``seconds``, ``images_per_second``: how long predicting took;
- ``created``: ISO 8601 time of writing.

A gate file holds ``[{image_id, p_abnormal}, ...]`` with its sidecar (``kind: gate``).
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from core.coco import CocoDataset
from core.detections import Detections, from_coco_results, to_coco_results
from core.io import read_json, write_json

KINDS = ("detector", "fusion", "gate")


def meta_path(path: str | Path) -> Path:
    """``preds/NAME.json`` → ``preds/NAME.meta.json``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.meta.json")


def _meta(path: Path, meta: Mapping[str, Any], kind: str) -> dict[str, Any]:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    out = {"name": path.stem, "kind": kind, **meta}
    out.setdefault("created", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    return out


def write_predictions(
    path: str | Path, dets: Mapping[int, Detections], meta: Mapping[str, Any], kind: str = "detector"
) -> Path:
    """Write ``dets`` as COCO results to ``path`` and ``meta`` to its sidecar, each atomically."""
    path = Path(path)
    write_json(path, to_coco_results(dets))
    write_json(meta_path(path), _meta(path, meta, kind), indent=1)
    return path


def read_meta(path: str | Path) -> dict[str, Any]:
    """The sidecar of ``path``; a file without one gets ``{name: stem, kind: detector}``."""
    path = Path(path)
    mp = meta_path(path)
    if not mp.is_file():
        return {"name": path.stem, "kind": "detector"}
    meta = read_json(mp)
    if not isinstance(meta, dict):
        raise ValueError(f"{mp}: expected a JSON object")
    meta.setdefault("name", path.stem)
    meta.setdefault("kind", "detector")
    return meta


def read_predictions(
    path: str | Path, dataset: CocoDataset, extra_categories: tuple[int, ...] = ()
) -> dict[int, Detections]:
    """A results file grouped per image, with an entry (maybe empty) for every dataset image.

    ``extra_categories`` are allowed beside the dataset's own (VinBigData's "No finding", 14,
    which a gated fusion adds but no dataset annotates).

    Raises:
        ValueError: naming the file and the image or category ids it has that ``dataset`` lacks,
            or the first malformed entry.
    """
    path = Path(path)
    rows = read_json(path)
    if not isinstance(rows, list):
        raise ValueError(f"{path}: expected a COCO results list, got {type(rows).__name__}")
    try:
        dets = from_coco_results(rows, dataset.image_ids)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    where = dataset.path or "the dataset"
    unknown = sorted(set(dets) - set(dataset.image_ids))
    if unknown:
        raise ValueError(
            f"{path}: image ids {unknown[:10]} are not in {where}; predicted on another dataset?"
        )
    cats = set(dataset.category_ids) | set(extra_categories)
    bad = sorted({int(c) for d in dets.values() for c in d.labels.tolist()} - cats)
    if bad:
        raise ValueError(f"{path}: category ids {bad[:10]} are not in {where} (categories {sorted(cats)})")
    return dets


def write_gate(path: str | Path, p_abnormal: Mapping[int, float], meta: Mapping[str, Any]) -> Path:
    """Write gate scores ``[{image_id, p_abnormal}]`` and the sidecar (``kind: gate``), atomically."""
    path = Path(path)
    rows = [{"image_id": int(i), "p_abnormal": round(float(p), 6)} for i, p in sorted(p_abnormal.items())]
    write_json(path, rows)
    write_json(meta_path(path), _meta(path, meta, "gate"), indent=1)
    return path


def read_gate(path: str | Path, dataset: CocoDataset | None = None) -> dict[int, float]:
    """Gate file → ``{image_id: p_abnormal}``.

    Raises:
        ValueError: naming entries that are malformed, outside ``[0, 1]``, or (given ``dataset``)
            not in the dataset.
    """
    path = Path(path)
    rows = read_json(path)
    if not isinstance(rows, list):
        raise ValueError(f"{path}: expected a list of {{image_id, p_abnormal}}")
    known = set(dataset.image_ids) if dataset is not None else None
    out: dict[int, float] = {}
    for k, r in enumerate(rows):
        try:
            iid, p = int(r["image_id"]), float(r["p_abnormal"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{path}: entry {k} is not {{image_id, p_abnormal}}: {r!r}") from None
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{path}: entry {k} (image {iid}) has p_abnormal {p} outside [0, 1]")
        if known is not None and iid not in known:
            raise ValueError(f"{path}: entry {k} names image {iid}, which is not in {dataset.path}")
        out[iid] = p
    return out
