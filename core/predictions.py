"""Prediction files: COCO results JSON + a ``.meta.json`` sidecar, and gate score files.

Every step that writes predictions (``adapters predict``, ``ensemble run``) writes
``NAME.json`` (COCO results: ``image_id, category_id, bbox [x, y, w, h]`` in absolute
pixels of the dataset's images, ``score``) and ``NAME.meta.json`` beside it. The
sidecar is a JSON object; these keys have a fixed meaning (others may be added):

- ``name``: the row name on a leaderboard (default: the file stem);
- ``kind``: ``detector``, ``fusion`` or ``gate``;
- ``dataset``: path of the COCO dataset the predictions were made on, as it was given;
- ``dataset_path``, ``dataset_sha256``: that dataset's absolute path and the SHA-256 of its bytes
  when the file was written (`write_predictions` and `write_gate` add them; never copied from
  another sidecar). Every reader checks them (`check_same_dataset`): results are read against a
  dataset only if it is the same file's content, however its path is spelled and wherever a copy
  lies;
- ``adapter``, ``config``, ``weights``: for a detector or a gate;
- ``method``, ``inputs``, ``options``, ``gate``: for a fusion;
- ``images``, ``seconds``, ``images_per_second``: how long predicting took;
- ``created``: ISO 8601 time of writing.

A gate file holds ``[{image_id, p_abnormal}, ...]`` with its sidecar (``kind: gate``).

Columnar companion. `write_predictions` also writes ``NAME.npz`` beside ``NAME.json``: the same rows
as NumPy columns (``image_id``, ``category_id``, ``bbox`` ``[x, y, w, h]`` float64, ``score`` float64,
the values the JSON holds) plus the fingerprint of the JSON they mirror (its size and SHA-256).
`read_predictions` reads the companion instead of the JSON when it is there and its fingerprint
matches the JSON as it is now (hashing is about 30 times faster than parsing); a companion that is
stale (the JSON was rewritten), belongs to another file or cannot be read is ignored and the JSON is
read. Copying both files keeps the companion valid. The JSON stays the file
users see and exchange; the companion only makes reading it fast (no pickle: ``allow_pickle=False``).
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from core.boxes import round_xyxy_as_coco
from core.coco import CocoDataset
from core.detections import BOX_DECIMALS, SCORE_DECIMALS, Detections, from_coco_columns, from_coco_results
from core.io import atomic_open, check_out_file, file_sha256, read_json, sha256_of, write_json

log = logging.getLogger(__name__)

KINDS = ("detector", "fusion", "gate")
#: version of the columnar companion's layout; a companion of another version is ignored
COLUMNAR_VERSION = 1
_COLUMNS = ("image_id", "category_id", "bbox", "score")


def meta_path(path: str | Path) -> Path:
    """``preds/NAME.json`` → ``preds/NAME.meta.json``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.meta.json")


#: the sidecar keys that identify the dataset's file; always computed when a sidecar is written
DATASET_KEYS = ("dataset_path", "dataset_sha256")


def sidecar_meta(path: Path, meta: Mapping[str, Any], kind: str) -> dict[str, Any]:
    """The sidecar of ``path``: its ``name``, ``kind``, ``meta``'s keys, the dataset's identity and ``created``.

    Raises:
        ValueError: for a ``kind`` not in `KINDS`.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    out = {"name": path.stem, "kind": kind, **{k: v for k, v in meta.items() if k not in DATASET_KEYS}}
    if isinstance(out.get("dataset"), str) and out["dataset"]:
        out.update(dataset_identity(out["dataset"]))
    out.setdefault("created", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    return out


def dataset_identity(dataset: str | Path) -> dict[str, str]:
    """``{dataset_path, dataset_sha256}`` of a dataset file as it is now, for a sidecar.

    ``dataset_path`` is absolute (the working directory a relative path was given in is lost once
    the command ends); ``dataset_sha256`` is left out while the file does not exist yet.
    """
    p = Path(dataset)
    out = {"dataset_path": str(p.resolve())}
    if p.is_file():
        out["dataset_sha256"] = file_sha256(p)
    return out


def check_same_dataset(path: str | Path, meta: Mapping[str, Any], dataset: CocoDataset) -> None:
    """Raise if ``path``'s sidecar says it was made on another dataset than ``dataset``'s file.

    Files are compared by what they are, not by how their path was typed: a sidecar with
    ``dataset_sha256`` matches any file with those bytes (the same file by another path, or a
    copy). An older sidecar without it names its dataset by ``dataset_path`` or by ``dataset``,
    whose relative path is tried against the working directory and against each folder above the
    results file (where it was written from is unknown); it matches when one of those is the same
    file or has the same bytes. When none of them exists the sidecar cannot be checked: a warning
    is logged and the image and category checks of the readers remain. A sidecar without
    ``dataset``, or a dataset that is not a file on disk, is not checked.

    Raises:
        ValueError: naming ``path``, its sidecar, the dataset it names and ``dataset``'s file.
    """
    named = meta.get("dataset")
    if not isinstance(named, str) or not named or dataset.path is None or not Path(dataset.path).is_file():
        return
    path, target = Path(path), Path(dataset.path)
    mine = file_sha256(target)
    said = f"{path}: its sidecar {meta_path(path)} says it was predicted on {named}"
    sha = meta.get("dataset_sha256")
    if isinstance(sha, str) and sha:
        if sha == mine:
            return
        raise ValueError(
            f"{said} (SHA-256 {sha[:12]}...), a different dataset from {target} (SHA-256 {mine[:12]}...)"
        )
    found = [c for c in _named_candidates(path, named, meta.get("dataset_path")) if c.is_file()]
    for c in found:
        if os.path.samefile(c, target) or file_sha256(c) == mine:
            return
    if found:
        raise ValueError(f"{said} ({found[0].resolve()}), a different dataset from {target}")
    log.warning("%s: cannot check it against %s (%s not found)", said, target, named)


def _named_candidates(path: Path, named: str, absolute: Any) -> list[Path]:
    """Where an older sidecar's dataset may be: its absolute path, else as named from here and above."""
    out = [Path(absolute)] if isinstance(absolute, str) and absolute else []
    n = Path(named)
    if n.is_absolute():
        return [*out, n]
    here = path.resolve().parent
    return [*out, n, *(d / n for d in (here, *here.parents))]


def columnar_path(path: str | Path) -> Path:
    """``preds/NAME.json`` → ``preds/NAME.npz``, the columnar companion."""
    path = Path(path)
    return path.with_name(f"{path.stem}.npz")


def write_predictions(
    path: str | Path, dets: Mapping[int, Detections], meta: Mapping[str, Any], kind: str = "detector"
) -> Path:
    """Write ``dets`` as COCO results to ``path``, its columnar companion and ``meta`` to its sidecar.

    Each file is written atomically: the sidecar first, then the JSON (so a run killed before the
    end never leaves a results file without its sidecar), then the companion (``NAME.npz``) with
    the fingerprint of the JSON just written.
    """
    path = check_out_file(path)
    columns = coco_columns(dets)
    write_json(meta_path(path), sidecar_meta(path, meta, kind), indent=1)
    write_json(path, _rows(*columns))
    _write_columnar(path, columns)
    return path


def coco_columns(dets: Mapping[int, Detections]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(image_id, category_id, bbox, score)`` of the COCO results of ``dets``, as columns.

    The rows of `core.detections.to_coco_results`, in its order (image ids ascending, each image's
    rows in order), with the same rounded values.
    """
    ids = [i for i in sorted(dets) if len(dets[i])]
    if not ids:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 4)), np.zeros(0)
    counts = [len(dets[i]) for i in ids]
    image_id = np.repeat(np.array(ids, np.int64), counts)
    category_id = np.concatenate([dets[i].labels for i in ids]).astype(np.int64)
    xywh, _ = round_xyxy_as_coco(np.concatenate([dets[i].boxes for i in ids]), BOX_DECIMALS)
    score = np.round(np.concatenate([dets[i].scores for i in ids]).astype(np.float64), SCORE_DECIMALS)
    return image_id, category_id, xywh, score


def _rows(image_id, category_id, bbox, score) -> list[dict]:
    """COCO results dicts of columns (Python numbers, so JSON writes them as `to_coco_results` does)."""
    return [
        {"image_id": i, "category_id": c, "bbox": b, "score": s}
        for i, c, b, s in zip(image_id.tolist(), category_id.tolist(), bbox.tolist(), score.tolist(), strict=True)
    ]


def _write_columnar(path: Path, columns: tuple[np.ndarray, ...]) -> Path:
    out = columnar_path(path)
    with atomic_open(out, "wb") as f:
        np.savez(
            f,
            **dict(zip(_COLUMNS, columns, strict=True)),
            version=np.int64(COLUMNAR_VERSION),
            json_size=np.int64(os.path.getsize(path)),
            json_sha256=np.str_(sha256_of(path)),
        )
    return out


def read_columnar(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """The columns of ``path``'s companion (``NAME.npz``) if it mirrors ``path`` as it is now, else None.

    None when there is no companion, when its fingerprint (size and SHA-256 of the JSON) differs
    from ``path``'s, when it has another layout version or when it cannot be read: such a
    companion is never trusted, and the caller reads the JSON.

    Returns:
        ``(image_id int64, category_id int64, bbox (N, 4) float64, score float64)`` or None.
    """
    path = Path(path)
    comp = columnar_path(path)
    if not comp.is_file() or not path.is_file():
        return None
    try:
        with np.load(comp, allow_pickle=False) as z:
            if int(z["version"]) != COLUMNAR_VERSION:
                log.debug("%s: columnar layout version %s, not %s; reading the JSON", comp, z["version"], COLUMNAR_VERSION)
                return None
            if int(z["json_size"]) != os.path.getsize(path) or str(z["json_sha256"]) != sha256_of(path):
                log.debug("%s: does not mirror %s as it is now (stale); reading the JSON", comp, path)
                return None
            image_id, category_id, bbox, score = (z[k] for k in _COLUMNS)
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:
        log.debug("%s: unreadable columnar companion (%s); reading the JSON", comp, e)
        return None
    n = len(image_id)
    if not (
        image_id.shape == (n,) and category_id.shape == (n,) and bbox.shape == (n, 4) and score.shape == (n,)
        and image_id.dtype.kind == "i" and category_id.dtype.kind == "i"
        and bbox.dtype == np.float64 and score.dtype == np.float64
    ):  # fmt: skip
        log.debug("%s: columns of unexpected shapes or types; reading the JSON", comp)
        return None
    return image_id.astype(np.int64), category_id.astype(np.int64), bbox, score


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
    path: str | Path, dataset: CocoDataset, extra_categories: tuple[int, ...] = (), *, columnar: bool = True
) -> dict[int, Detections]:
    """A results file grouped per image, with an entry (maybe empty) for every dataset image.

    ``extra_categories`` are allowed beside the dataset's own (VinBigData's "No finding", 14,
    which a gated fusion adds but no dataset annotates). With ``columnar`` (the default) the
    file's columnar companion is read instead when it mirrors the file (`read_columnar`).

    Raises:
        ValueError: naming the file and the image or category ids it has that ``dataset`` lacks,
            the first entry whose score is not within [0, 1] (NaN included), the first
            malformed entry, or a sidecar that names another dataset (`check_same_dataset`).
    """
    path = Path(path)
    if path.is_file():
        check_same_dataset(path, read_meta(path), dataset)
    columns = read_columnar(path) if columnar else None
    try:
        if columns is not None:
            _check_score_column(path, columns[0], columns[3])
            dets = from_coco_columns(*columns, image_ids=dataset.image_ids)
        else:
            rows = read_json(path)
            if not isinstance(rows, list):
                raise ValueError(f"expected a COCO results list, got {type(rows).__name__}")
            try:
                dets = from_coco_results(rows, dataset.image_ids)
            except ValueError:
                _check_row_scores(path, rows)  # a NaN score: name its entry
                raise
            if not _scores_in_range(dets):
                _check_row_scores(path, rows)
                raise ValueError("a score is outside [0, 1]")
            del rows
    except ValueError as e:
        if str(e).startswith(f"{path}: "):
            raise
        raise ValueError(f"{path}: {e}") from None
    where = dataset.path or "the dataset"
    unknown = sorted(set(dets) - set(dataset.image_ids))
    if unknown:
        raise ValueError(
            f"{path}: image ids {unknown[:10]} are not in {where}; predicted on another dataset?"
        )
    cats = set(dataset.category_ids) | set(extra_categories)
    present = np.unique(np.concatenate([d.labels for d in dets.values()])) if dets else np.zeros(0, np.int64)
    bad = sorted(set(present.tolist()) - cats)
    if bad:
        raise ValueError(f"{path}: category ids {bad[:10]} are not in {where} (categories {sorted(cats)})")
    return dets


def _score_error(path: Path, k: int, image_id: Any, score: Any) -> ValueError:
    return ValueError(f"{path}: results entry {k} (image {image_id}) has score {score}, not within [0, 1]")


def _check_score_column(path: Path, image_id: np.ndarray, score: np.ndarray) -> None:
    """Raise naming the first row of a columnar file whose score is NaN or outside [0, 1]."""
    bad = ~((score >= 0.0) & (score <= 1.0))
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise _score_error(path, k, int(image_id[k]), float(score[k]))


def _check_row_scores(path: Path, rows: list) -> None:
    """Raise naming the first results entry whose score is a number that is NaN or outside [0, 1]."""
    for k, r in enumerate(rows):
        try:
            s = float(r["score"])
        except (KeyError, TypeError, ValueError, IndexError):
            continue  # not a detection: the row-by-row reading names it
        if not 0.0 <= s <= 1.0:
            raise _score_error(path, k, r.get("image_id") if isinstance(r, Mapping) else "?", r["score"])


def _scores_in_range(dets: Mapping[int, Detections]) -> bool:
    """Whether every score of ``dets`` is within [0, 1]."""
    scores = [d.scores for d in dets.values() if len(d)]
    if not scores:
        return True
    s = np.concatenate(scores)
    return bool(((s >= 0.0) & (s <= 1.0)).all())


def write_gate(path: str | Path, p_abnormal: Mapping[int, float], meta: Mapping[str, Any]) -> Path:
    """Write gate scores ``[{image_id, p_abnormal}]`` and the sidecar (``kind: gate``), atomically.

    The sidecar is written first, so a gate file never exists without it.
    """
    path = check_out_file(path)
    rows = [{"image_id": int(i), "p_abnormal": round(float(p), 6)} for i, p in sorted(p_abnormal.items())]
    write_json(meta_path(path), sidecar_meta(path, meta, "gate"), indent=1)
    write_json(path, rows)
    return path


def read_gate(path: str | Path, dataset: CocoDataset | None = None) -> dict[int, float]:
    """Gate file → ``{image_id: p_abnormal}``.

    Raises:
        ValueError: naming entries that are malformed, outside ``[0, 1]``, or (given ``dataset``)
            not in the dataset, or a sidecar that names another dataset (`check_same_dataset`).
    """
    path = Path(path)
    if dataset is not None and path.is_file():
        check_same_dataset(path, read_meta(path), dataset)
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
