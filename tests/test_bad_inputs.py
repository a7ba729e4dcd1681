"""The catalogue of bad inputs (issue #13): every verb, one table, each row's outcome stated.

Each row of `CATALOGUE` builds its inputs from small synthetic data (the `world` fixture: a few
synthetic VinBigData DICOMs converted to COCO, two models' results and a gate file) and tiny files
written to the row's own folder, runs the real command line (``main(argv)`` of ``python -m convert``,
``adapters``, ``ensemble``, ``eval``, ``pipeline``, ``infer``) in this process, and checks the
outcome the row states:

- ``ok``: accepted as valid (a CSV with a byte-order mark, CRLF line ends or quoted fields is valid
  CSV), exit code 0, and where the row gives one, its check of what was written;
- an error: exit code 2, stderr exactly one non-empty line, starting with ``error:``, holding every
  substring the row names (the file, and the row, entry or field at fault), no ``Traceback``, and
  no file new or changed under the row's folder or the shared data (names, sizes, times and
  SHA-256 compared before and after).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml

from core.coco import CocoDataset
from core.detections import Detections
from core.predictions import write_gate, write_predictions
from tests.conftest_paths import REPO

HEADER = "image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max"
GOOD = [
    "aaa,No finding,14,R1,,,,",
    "aaa,No finding,14,R2,,,,",
    "bbb,Cardiomegaly,3,R1,100.0,200.0,300.0,350.0",
    "bbb,Cardiomegaly,3,R2,105.0,205.0,300.0,352.0",
    "ccc,Nodule/Mass,8,R3,10.0,10.0,40.0,40.0",
]
SIZES = ["image_id,dim0,dim1", "aaa,500,400", "bbb,500,400", "ccc,500,400"]
RSNA_HEADER = "patientId,x,y,width,height,Target"
RSNA_GOOD = ["p1,,,,,0", "p2,100,120,200,150,1", "p2,500,520,100,90,1", "p3,,,,,0"]
MPEG4 = "1.2.840.10008.1.2.4.102"  # a compressed transfer syntax (H.264 video) with no installed decoder


# --------------------------------------------------------------------------- the shared data


@dataclass
class World:
    """Shared inputs, built once: a converted synthetic dataset with its images, results and a gate."""

    root: Path
    raw: Path  # convert synth vinbig output: train.csv, train/*.dicom
    coco: Path  # its conversion (64 px, 2 folds)
    val: Path  # coco/val.json
    labels_only: Path  # the same labels converted --labels-only (no images on disk)
    preds: Path  # folder: model_a.json, model_b.json (+ sidecars and companions), gate.json
    plain_dicoms: list[Path]  # uncompressed DICOMs of the raw set
    _yolo_ckpt: Path | None = None

    @property
    def a(self) -> Path:
        return self.preds / "model_a.json"

    @property
    def b(self) -> Path:
        return self.preds / "model_b.json"

    @property
    def gate(self) -> Path:
        return self.preds / "gate.json"

    def dataset(self) -> CocoDataset:
        return CocoDataset.load(self.val)

    def rows(self) -> list[dict]:
        """model_a's results as plain dicts."""
        return json.loads(self.a.read_text())

    def yolo_other_classes(self) -> Path:
        """A CXRFuse Ultralytics checkpoint (yolov8n) trained for two classes this dataset lacks."""
        if self._yolo_ckpt is None:
            import torch
            from ultralytics.nn.tasks import yaml_model_load

            from adapters.ultralytics import CHECKPOINT_FORMAT, _network

            model_yaml = yaml_model_load("yolov8n.yaml")
            net = _network(model_yaml, ("cat", "dog"))
            path = self.root / "ckpt" / "other_classes.pt"
            path.parent.mkdir(exist_ok=True)
            torch.save(
                {
                    "format": CHECKPOINT_FORMAT,
                    "framework": "ultralytics",
                    "model_yaml": model_yaml,
                    "state_dict": net.state_dict(),
                    "cxrfuse_categories": [{"id": 0, "name": "cat"}, {"id": 1, "name": "dog"}],
                },
                path,
            )
            self._yolo_ckpt = path
        return self._yolo_ckpt


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    from convert.__main__ import main as convert_main
    from convert.dicom import read_dicom_header
    from convert.synth import make_vinbig

    # Ultralytics binds its log handler to the sys.stdout of its import: import it here, where that is
    # the session's capture, not inside one row's capsys (whose stream is closed after the row)
    os.environ.setdefault("YOLO_OFFLINE", "1")
    import ultralytics  # noqa: F401

    root = tmp_path_factory.mktemp("world")
    raw = make_vinbig(root / "raw", n_images=8, seed=3, sizes=(64, 96))
    coco = root / "coco"
    args = ["vinbig", "--csv", raw / "train.csv", "--images", raw / "train", "--out", coco]
    assert convert_main([str(a) for a in [*args, "--size", "64", "--folds", "2", "-q"]]) == 0
    full = CocoDataset.load(coco / "all.json")
    table = root / "sizes.csv"
    table.write_text(
        "image_id,dim0,dim1\n"
        + "".join(f"{im['source_id']},{im['orig_height']},{im['orig_width']}\n" for im in full.images)
    )
    labels = root / "labels"
    args = ["vinbig", "--csv", raw / "train.csv", "--size-table", table, "--labels-only", "--out", labels]
    assert convert_main([str(a) for a in [*args, "--size", "64", "--folds", "2", "-q"]]) == 0
    val = coco / "val.json"
    ds = CocoDataset.load(val)
    preds = root / "preds"
    for name, score in (("model_a", 0.9), ("model_b", 0.7)):
        dets = {}
        for iid in ds.image_ids:
            gt = ds.ground_truth(iid)
            dets[iid] = Detections(gt.boxes, np.full(len(gt), score, np.float32), gt.labels)
        write_predictions(preds / f"{name}.json", dets, {"dataset": str(val)})
    write_gate(preds / "gate.json", {i: 0.2 if ds.is_normal(i) else 0.8 for i in ds.image_ids}, {})
    plain = [
        p
        for p in sorted((raw / "train").iterdir())
        if read_dicom_header(p)["transfer_syntax"] in ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1")
    ]
    assert len(plain) >= 2
    return World(root, raw, coco, val, labels / "val.json", preds, plain)


# --------------------------------------------------------------------------- input builders


def _text(path: Path, lines: list[str], *, bom: bool = False, crlf: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = ("\r\n" if crlf else "\n").join(lines) + ("\r\n" if crlf else "\n")
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
    return path


def _quoted(lines: list[str]) -> list[str]:
    return [",".join(f'"{v}"' for v in line.split(",")) for line in lines]


def vinbig(t: Path, rows: list[str] | None = None, sizes: list[str] | None = None, *extra, **kw) -> list:
    """``convert vinbig --labels-only`` of a small CSV + size table written into ``t``."""
    csv_path = _text(t / "train.csv", [HEADER, *(GOOD if rows is None else rows)], **kw)
    meta = _text(t / "meta.csv", SIZES if sizes is None else sizes)
    return ["vinbig", "--csv", csv_path, "--size-table", meta, "--labels-only", "--out", t / "out",
            "--folds", "2", "--annotators", "raw", *extra]  # fmt: skip


def _vinbig_raw(t: Path, lines: list[str]) -> list:
    _text(t / "train.csv", lines)
    meta = _text(t / "meta.csv", SIZES)
    return ["vinbig", "--csv", t / "train.csv", "--size-table", meta, "--labels-only", "--out", t / "out",
            "--folds", "2", "--annotators", "raw"]  # fmt: skip


def dicoms(w: World, t: Path, bad: Callable[[Path], None], name: str = "bad.dicom", sizes: bool = False) -> list:
    """``convert vinbig --images``: two good DICOMs and one bad file made by ``bad(path)``."""
    folder = t / "imgs"
    folder.mkdir(parents=True)
    shutil.copy(w.plain_dicoms[0], folder / "g1.dicom")
    shutil.copy(w.plain_dicoms[1], folder / "g2.dicom")
    bad(folder / name)
    stem = Path(name).stem
    rows = [f"{k},No finding,14,R1,,,," for k in ("g1", "g2", stem)]
    _text(t / "train.csv", [HEADER, *rows])
    argv = ["vinbig", "--csv", t / "train.csv", "--images", folder, "--out", t / "out", "--size", "32",
            "--folds", "2"]  # fmt: skip
    if sizes:
        argv += ["--size-table", _text(t / "meta.csv", ["image_id,dim0,dim1", *(f"{k},96,80" for k in ("g1", "g2", stem))])]
    return argv


def _dicom_bytes(w: World) -> bytes:
    return w.plain_dicoms[0].read_bytes()


def _header_only(w: World) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        import pydicom

        ds = pydicom.dcmread(w.plain_dicoms[0])
        del ds.PixelData
        ds.save_as(path)

    return make


def _undecodable_syntax(w: World) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        import pydicom
        from pydicom.encaps import encapsulate

        ds = pydicom.dcmread(w.plain_dicoms[0])
        ds.PixelData = encapsulate([b"\xff\x0a" + bytes(64)])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = MPEG4
        ds.save_as(path, enforce_file_format=True)

    return make


def _png_bytes() -> bytes:
    import cv2

    ok, buf = cv2.imencode(".png", np.zeros((8, 8), np.uint8))
    assert ok
    return buf.tobytes()


def rsna(t: Path, rows: list[str] | None = None, *, header: str = RSNA_HEADER, info: list[str] | None = None, **kw) -> list:
    labels = _text(t / "labels.csv", [header, *(RSNA_GOOD if rows is None else rows)], **kw)
    argv = ["rsna", "--labels", labels, "--labels-only", "--out", t / "out", "--folds", "2"]
    if info is not None:
        argv += ["--class-info", _text(t / "info.csv", ["patientId,class", *info])]
    return argv


def results(w: World, t: Path, edit: Callable[[list[dict]], object], name: str = "bad.json") -> Path:
    """model_a's results, changed by ``edit`` (in place), as a plain JSON file without a sidecar."""
    rows = w.rows()
    edit(rows)
    path = t / name
    path.write_text(json.dumps(rows))
    return path


def _set(k: int, **values) -> Callable[[list[dict]], None]:
    def edit(rows: list[dict]) -> None:
        rows[k].update(values)

    return edit


def _nan_score(rows: list[dict]) -> None:
    rows[1]["score"] = float("nan")


def gate_file(w: World, t: Path, edit: Callable[[list[dict]], object]) -> Path:
    rows = json.loads(w.gate.read_text())
    edit(rows)
    path = t / "gate.json"
    path.write_text(json.dumps(rows))
    (t / "gate.meta.json").write_text(json.dumps({"kind": "gate"}))
    return path


def dataset_with(w: World, t: Path, file_name: str, link: bool = False) -> Path:
    """val.json copied into ``t`` (images copied beside it), the file_name of the first image a
    leaderboard draws changed to ``file_name`` (with ``link``: ``images/link.png``, a symbolic link to
    a copy of that image outside ``t``)."""
    from eval.analysis import example_images

    d = json.loads(w.val.read_text())
    k = [im["id"] for im in d["images"]].index(example_images(w.dataset(), 1)[0])
    shutil.copytree(w.coco / "images", t / "images")
    if link:
        outside = t.parent / f"{t.name}_outside.png"
        shutil.copy(t / "images" / Path(d["images"][k]["file_name"]).name, outside)
        (t / "images" / "link.png").symlink_to(outside)
    d["images"][k]["file_name"] = file_name
    path = t / "val.json"
    path.write_text(json.dumps(d))
    return path


def fuse(w: World, t: Path, *preds, extra: tuple = ()) -> list:
    return ["run", "--dataset", w.val, "--preds", *(preds or (w.a, w.b)), "--out", t / "fused.json", *extra]


def board(w: World, t: Path, *preds, dataset: Path | None = None, extra: tuple = ()) -> list:
    return ["leaderboard", "--dataset", dataset or w.val, "--preds", *(preds or (w.a, w.b)), "--out", t / "board",
            *extra]  # fmt: skip


def submission(w: World, t: Path, preds: Path | None = None, *extra, dataset: Path | None = None) -> list:
    return ["submission", "--dataset", dataset or w.val, "--preds", preds or w.a, "--out", t / "sub.csv", *extra]


def model_config(w: World, t: Path, **changes) -> Path:
    """configs/cpu/yolov8n.yaml on the world's dataset, on the CPU, run folder in ``t``, ``changes`` applied."""
    data = yaml.safe_load((REPO / "configs" / "cpu" / "yolov8n.yaml").read_text())
    train = str(w.coco / "train.json")
    data.update(device="cpu", out_dir=str(t / "run"), dataset={"train": train, "val": str(w.val)})
    for k, v in changes.items():
        if isinstance(v, dict) and isinstance(data.get(k), dict):
            data[k] = {**data[k], **v}
        else:
            data[k] = v
    path = t / "model.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def predict(w: World, t: Path, weights: Path, *extra, config: Path | None = None) -> list:
    return ["predict", config or model_config(w, t), "--weights", weights, "--dataset", w.val, "--out",
            t / "preds" / "m.json", *extra]  # fmt: skip


def _evil(t: Path) -> Path:
    """A .pt file whose unpickling would create ``t/../MARKER``: it must never be unpickled."""
    import pathlib
    import pickle

    class Touch:
        def __reduce__(self):
            return (pathlib.Path.touch, (pathlib.Path(t.parent / f"{t.name}_MARKER"),))

    path = t / "evil.pt"
    t.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump({"model": Touch()}, f, protocol=2)
    return path


def _foreign(t: Path) -> Path:
    """A Detectron2-style checkpoint (numpy arrays under 'model'), not an Ultralytics one."""
    import torch

    path = t / "d2.pth"
    t.mkdir(parents=True, exist_ok=True)
    torch.save({"model": {"backbone.conv1.weight": torch.zeros(4, 3, 3, 3)}, "__author__": "Detectron2"}, path)
    return path


def pipeline_config(t: Path, **changes) -> Path:
    data = yaml.safe_load((REPO / "configs" / "pipelines" / "demo.yaml").read_text())
    data["work_dir"] = str(t / "work")
    for dotted, v in changes.items():
        node = data
        *parents, last = dotted.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = v
    path = t / "pipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


# --------------------------------------------------------------------------- checks of accepted rows


def same_labels_as_plain(w: World, t: Path, out: str) -> None:
    """The conversion wrote the dataset the plain CSV gives (same images and boxes)."""
    from convert.__main__ import main as convert_main

    base = t / "plain"
    assert convert_main([str(a) for a in vinbig(base, None, None)] + ["-q"]) == 0
    got, want = (json.loads((d / "out" / "all.json").read_text()) for d in (t, base))
    assert got["images"] == want["images"] and got["annotations"] == want["annotations"]
    assert len(got["images"]) == 3 and len(got["annotations"]) == 3


def rsna_written(w: World, t: Path, out: str) -> None:
    ds = CocoDataset.load(t / "out" / "all.json")
    assert sorted(im["source_id"] for im in ds.images) == ["p1", "p2", "p3"] and len(ds.annotations) == 2


def no_examples_said(w: World, t: Path, out: str) -> None:
    assert "examples: none drawn (--examples 0)" in out
    assert (t / "board" / "leaderboard.json").is_file()
    assert not [p for p in (t / "board").rglob("example_*")]


# --------------------------------------------------------------------------- the catalogue


@dataclass(frozen=True)
class Row:
    """One bad input: the command, how its arguments are built, and the outcome.

    ``expect``: None = accepted (exit 0); else the substrings the one-line error must hold.
    """

    id: str
    tool: str  # convert | adapters | ensemble | eval | pipeline | infer
    build: Callable[[World, Path], list]
    expect: tuple[str, ...] | None
    check: Callable[[World, Path, str], None] | None = None


def err(*parts: str) -> tuple[str, ...]:
    return parts


CATALOGUE: list[Row] = [
    # ---- convert vinbig: CSVs (valid variants are accepted and give the plain CSV's dataset)
    Row("vinbig-csv-bom", "convert", lambda w, t: vinbig(t, bom=True), None, same_labels_as_plain),
    Row("vinbig-csv-crlf", "convert", lambda w, t: vinbig(t, crlf=True), None, same_labels_as_plain),
    Row("vinbig-csv-bom-crlf-quoted", "convert",
        lambda w, t: _vinbig_quoted(t), None, same_labels_as_plain),  # fmt: skip
    Row("vinbig-csv-extra-column", "convert", lambda w, t: _vinbig_raw(
        t, [HEADER + ",note", *(r + ",x" for r in GOOD)]), None, same_labels_as_plain),  # fmt: skip
    Row("vinbig-csv-missing-column", "convert", lambda w, t: _vinbig_raw(
        t, [HEADER.replace(",rad_id", ""), *(",".join(r.split(",")[:3] + r.split(",")[4:]) for r in GOOD)]),
        err("train.csv", "missing columns ['rad_id']")),  # fmt: skip
    Row("vinbig-csv-row-extra-field", "convert", lambda w, t: vinbig(t, [*GOOD, "ccc,Nodule/Mass,8,R1,1,1,2,2,9"]),
        err("train.csv, row 7", "9 fields; the header has 8")),  # fmt: skip
    Row("vinbig-csv-row-missing-field", "convert", lambda w, t: vinbig(t, [*GOOD[:2], "bbb,Cardiomegaly,3", *GOOD[2:]]),
        err("train.csv, row 4", "3 fields; the header has 8")),  # fmt: skip
    Row("vinbig-csv-empty", "convert", lambda w, t: _vinbig_raw(t, [""]), err("train.csv", "empty file")),
    Row("vinbig-csv-header-only", "convert", lambda w, t: vinbig(t, []), err("train.csv", "no rows after the header")),
    Row("vinbig-csv-duplicate-header", "convert", lambda w, t: _vinbig_raw(
        t, [HEADER + ",image_id", *(r + ",zzz" for r in GOOD)]), err("train.csv", "['image_id'] twice")),  # fmt: skip
    Row("vinbig-csv-not-utf8", "convert", lambda w, t: _latin1(t), err("train.csv", "not UTF-8")),
    Row("vinbig-csv-class-id-not-int", "convert", lambda w, t: vinbig(t, [*GOOD, "ccc,Nodule/Mass,eight,R1,1,1,2,2"]),
        err("train.csv, row 7", "class_id 'eight'")),  # fmt: skip
    Row("vinbig-csv-class-id-inf", "convert", lambda w, t: vinbig(t, [*GOOD, "ccc,Nodule/Mass,inf,R1,1,1,2,2"]),
        err("train.csv, row 7", "class_id 'inf'")),  # fmt: skip
    Row("vinbig-csv-nan-box", "convert", lambda w, t: vinbig(t, [*GOOD, "ccc,Nodule/Mass,8,R1,nan,1,2,2"]),
        err("train.csv, row 7", "NaN box")),  # fmt: skip
    # ---- convert vinbig: size tables
    Row("size-table-bom-crlf", "convert", lambda w, t: _sizes_bom_crlf(t), None, same_labels_as_plain),
    Row("size-table-missing-column", "convert", lambda w, t: vinbig(t, None, ["image_id,dim0", "aaa,5"]),
        err("meta.csv", "missing columns ['dim1']")),  # fmt: skip
    Row("size-table-negative", "convert", lambda w, t: vinbig(t, None, [*SIZES[:2], "bbb,-5,400", SIZES[3]]),
        err("meta.csv, row 3", "non-positive size")),  # fmt: skip
    Row("size-table-not-a-number", "convert", lambda w, t: vinbig(t, None, [*SIZES[:2], "bbb,tall,400", SIZES[3]]),
        err("meta.csv, row 3", "not integers")),  # fmt: skip
    Row("size-table-infinite", "convert", lambda w, t: vinbig(t, None, [*SIZES[:2], "bbb,inf,400", SIZES[3]]),
        err("meta.csv, row 3", "not integers")),  # fmt: skip
    Row("size-table-lacks-image", "convert", lambda w, t: vinbig(t, None, SIZES[:3]),
        err("meta.csv", "image ccc", "missing from the size table")),  # fmt: skip
    Row("size-table-contradicts-itself", "convert", lambda w, t: vinbig(t, None, [*SIZES, "ccc,600,400"]),
        err("meta.csv, row 5", "image ccc")),  # fmt: skip
    Row("size-table-box-outside", "convert", lambda w, t: vinbig(t, None, [*SIZES[:2], "bbb,300,250", SIZES[3]]),
        err("train.csv, row 4", "outside the 250x300 image")),  # fmt: skip
    # ---- convert vinbig: arguments
    Row("vinbig-size-negative", "convert", lambda w, t: vinbig(t, None, None, "--size", "-5"), err("--size", "-5")),
    Row("vinbig-folds-zero", "convert", lambda w, t: vinbig(t, None, None, "--folds", "0"), err("--folds", "got 0")),
    Row("vinbig-val-fold-out-of-range", "convert", lambda w, t: vinbig(t, None, None, "--folds", "5", "--val-fold", "7"),
        err("--val-fold", "0..4", "got 7")),  # fmt: skip
    Row("vinbig-iou-thr-out-of-range", "convert", lambda w, t: vinbig(t, None, None, "--iou-thr", "1.5"),
        err("--iou-thr", "1.5")),  # fmt: skip
    Row("vinbig-workers-negative", "convert", lambda w, t: vinbig(t, None, None, "--workers", "-2"), err("--workers")),
    Row("vinbig-out-is-a-file", "convert", lambda w, t: _out_file(t, vinbig(t)), err("out", "--out is an existing file")),
    Row("vinbig-labels-only-and-images", "convert", lambda w, t: vinbig(t, None, None, "--images", str(w.raw / "train")),
        err("--labels-only and --images")),  # fmt: skip
    Row("vinbig-labels-only-without-sizes", "convert", lambda w, t: _no_sizes(t), err("--labels-only needs --size-table")),
    # ---- convert vinbig: bad DICOMs (two good ones converted first are removed again)
    Row("dicom-empty", "convert", lambda w, t: dicoms(w, t, lambda p: p.write_bytes(b"")), err("bad.dicom")),
    Row("dicom-random-bytes", "convert", lambda w, t: dicoms(
        w, t, lambda p: p.write_bytes(np.random.default_rng(0).bytes(3000))), err("bad.dicom", "not a DICOM")),  # fmt: skip
    Row("dicom-truncated", "convert", lambda w, t: dicoms(
        w, t, lambda p: p.write_bytes(_dicom_bytes(w)[: len(_dicom_bytes(w)) // 2])), err("bad.dicom")),  # fmt: skip
    Row("dicom-header-only", "convert", lambda w, t: dicoms(w, t, _header_only(w)), err("bad.dicom", "no pixel data")),
    Row("dicom-undecodable-transfer-syntax", "convert", lambda w, t: dicoms(w, t, _undecodable_syntax(w)),
        err("bad.dicom", "cannot decode pixel data")),  # fmt: skip
    Row("dicom-is-a-png", "convert", lambda w, t: dicoms(w, t, lambda p: p.write_bytes(_png_bytes())),
        err("bad.dicom", "not a DICOM")),  # fmt: skip
    Row("png-is-a-dicom", "convert", lambda w, t: dicoms(
        w, t, lambda p: p.write_bytes(_dicom_bytes(w)), "bad.png", sizes=True), err("bad.png", "not a readable image")),  # fmt: skip
    # ---- convert rsna
    Row("rsna-bom-crlf-quoted", "convert", lambda w, t: rsna(t, _quoted(RSNA_GOOD), header='"patientId","x","y","width","height","Target"', bom=True, crlf=True),
        None, rsna_written),  # fmt: skip
    Row("rsna-missing-column", "convert", lambda w, t: rsna(t, [r.rsplit(",", 1)[0] for r in RSNA_GOOD],
        header=RSNA_HEADER.rsplit(",", 1)[0]), err("labels.csv", "missing columns ['Target']")),  # fmt: skip
    Row("rsna-bad-target", "convert", lambda w, t: rsna(t, [*RSNA_GOOD, "p4,,,,,2"]),
        err("labels.csv, row 6", "Target '2'")),  # fmt: skip
    Row("rsna-negative-size", "convert", lambda w, t: rsna(t, [*RSNA_GOOD, "p4,10,10,-5,20,1"]),
        err("labels.csv, row 6", "negative width/height")),  # fmt: skip
    Row("rsna-class-info-disagrees", "convert", lambda w, t: rsna(
        t, info=["p1,Lung Opacity", "p2,Lung Opacity", "p3,Normal"]), err("info.csv, row 2", "p1")),  # fmt: skip
    Row("rsna-class-info-missing-column", "convert", lambda w, t: _rsna_info_header(t), err("info.csv", "missing columns ['class']")),
    # ---- convert synth, yolo, submission
    Row("synth-no-images", "convert", lambda w, t: ["synth", "vinbig", "--out", t / "raw", "--n-images", "0"],
        err("n_images", "0")),  # fmt: skip
    Row("synth-sizes-contradict", "convert", lambda w, t: ["synth", "vinbig", "--out", t / "raw", "--min-size",
        "200", "--max-size", "100"], err("sizes", "200")),  # fmt: skip
    Row("synth-out-is-a-file", "convert", lambda w, t: ["synth", "vinbig", "--out", _file(t / "raw")],
        err("raw", "--out is an existing file")),  # fmt: skip
    Row("yolo-images-not-on-disk", "convert", lambda w, t: ["yolo", "--train", w.labels_only, "--val", w.labels_only,
        "--out", t / "yolo"], err("labels", "images", "not found")),  # fmt: skip
    Row("yolo-out-is-a-file", "convert", lambda w, t: ["yolo", "--train", w.val, "--val", w.val, "--out", _file(t / "y")],
        err("--out is an existing file")),  # fmt: skip
    Row("yolo-categories-differ", "convert", lambda w, t: ["yolo", "--train", w.val, "--val", _other_categories(w, t),
        "--out", t / "yolo"], err("different categories")),  # fmt: skip
    Row("yolo-symlink-outside", "convert", lambda w, t: ["yolo", "--train", dataset_with(w, t, "images/link.png", link=True),
        "--val", w.val, "--out", t / "yolo"], err("file_name 'images/link.png'", "outside the dataset's folder")),  # fmt: skip
    Row("submission-score-above-1", "convert", lambda w, t: submission(w, t, results(w, t, _set(0, score=5.0))),
        err("bad.json", "entry 0", "score 5.0")),  # fmt: skip
    Row("submission-score-negative", "convert", lambda w, t: submission(w, t, results(w, t, _set(2, score=-0.1))),
        err("bad.json", "entry 2", "score -0.1")),  # fmt: skip
    Row("submission-negative-width", "convert", lambda w, t: submission(w, t, results(w, t, _set(0, bbox=[1, 1, -4, 5]))),
        err("bad.json", "entry 0", "negative width")),  # fmt: skip
    Row("submission-unknown-image", "convert", lambda w, t: submission(w, t, results(w, t, _set(0, image_id=999))),
        err("bad.json", "image ids [999]")),  # fmt: skip
    Row("submission-unknown-category", "convert", lambda w, t: submission(w, t, results(w, t, _set(0, category_id=99))),
        err("bad.json", "category ids [99]")),  # fmt: skip
    Row("submission-entry-lacks-bbox", "convert", lambda w, t: submission(w, t, results(w, t, lambda r: r[1].pop("bbox"))),
        err("bad.json", "entry 1")),  # fmt: skip
    Row("submission-gate-outside-range", "convert", lambda w, t: submission(w, t, None, "--gate", gate_file(
        w, t, _set(0, p_abnormal=1.5))), err("gate.json", "entry 0", "outside [0, 1]")),  # fmt: skip
    Row("submission-gate-unknown-image", "convert", lambda w, t: submission(w, t, None, "--gate", gate_file(
        w, t, _set(0, image_id=12345))), err("gate.json", "entry 0", "image 12345")),  # fmt: skip
    Row("submission-rsna-with-gate", "convert", lambda w, t: submission(w, t, None, "--kind", "rsna", "--gate", w.gate),
        err("drop --gate")),  # fmt: skip
    Row("submission-out-is-a-folder", "convert", lambda w, t: submission(w, t) [:-1] + [_dir(t / "sub.csv")],
        err("sub.csv", "--out is an existing folder")),  # fmt: skip
    Row("submission-dataset-names-absolute-file", "convert", lambda w, t: submission(
        w, t, dataset=dataset_with(w, t, "/etc/hostname")), err("val.json", "image", "'/etc/hostname'", "outside")),  # fmt: skip
    Row("submission-dataset-escapes-folder", "convert", lambda w, t: submission(
        w, t, dataset=dataset_with(w, t, "images/../../x.png")), err("val.json", "'images/../../x.png'", "outside")),  # fmt: skip
    # ---- ensemble run / sweep
    Row("ensemble-score-above-1", "ensemble", lambda w, t: fuse(w, t, results(w, t, _set(0, score=5.0)), w.b),
        err("bad.json", "entry 0", "score 5.0")),  # fmt: skip
    Row("ensemble-score-nan", "ensemble", lambda w, t: fuse(w, t, results(w, t, _nan_score), w.b),
        err("bad.json", "entry 1", "score nan")),  # fmt: skip
    Row("ensemble-columnar-score-above-1", "ensemble", lambda w, t: fuse(w, t, _columnar_bad_score(w, t), w.b),
        err("c.json", "entry 0", "score 5.0")),  # fmt: skip
    Row("ensemble-weights-count", "ensemble", lambda w, t: fuse(w, t, extra=("--weights", "1,1,1")),
        err("3 weights", "2 prediction files")),  # fmt: skip
    Row("ensemble-iou-out-of-range", "ensemble", lambda w, t: fuse(w, t, extra=("--iou-thr", "1.5")), err("iou_thr", "1.5")),
    Row("ensemble-gate-without-mode", "ensemble", lambda w, t: fuse(w, t, extra=("--gate", str(w.gate))),
        err("--gate needs --gate-mode")),  # fmt: skip
    Row("ensemble-gate-misses-images", "ensemble", lambda w, t: fuse(w, t, extra=("--gate", str(gate_file(
        w, t, lambda r: r.pop())), "--gate-mode", "append")), err("gate.json", "no p_abnormal")),  # fmt: skip
    Row("ensemble-same-file-twice", "ensemble", lambda w, t: fuse(w, t, w.a, w.a), err("model_a.json", "given twice")),
    Row("ensemble-other-dataset", "ensemble", lambda w, t: fuse(w, t, results(w, t, _set(0, image_id=4242)), w.b),
        err("bad.json", "image ids [4242]")),  # fmt: skip
    Row("ensemble-config-unknown-key", "ensemble", lambda w, t: fuse(w, t, extra=("--config", str(_yaml(
        t / "s.yaml", {"method": "wbf", "iou_threshold": 0.5})))), err("s.yaml", "iou_threshold")),  # fmt: skip
    Row("ensemble-config-wrong-type", "ensemble", lambda w, t: fuse(w, t, extra=("--config", str(_yaml(
        t / "s.yaml", {"method": "wbf", "iou_thr": "high"})))), err("s.yaml", "iou_thr", "high")),  # fmt: skip
    Row("ensemble-out-is-a-folder", "ensemble", lambda w, t: fuse(w, t)[:-1] + [_dir(t / "fused.json")],
        err("fused.json", "--out is an existing folder")),  # fmt: skip
    Row("sweep-out-is-a-file", "ensemble", lambda w, t: ["sweep", "--dataset", w.val, "--preds", w.a, w.b, "--out",
        _file(t / "sweep")], err("sweep", "--out is an existing file")),  # fmt: skip
    Row("sweep-gate-modes-without-gate", "ensemble", lambda w, t: ["sweep", "--dataset", w.val, "--preds", w.a, w.b,
        "--out", t / "sweep", "--gate-modes", "append"], err("--gate-modes", "need --gate")),  # fmt: skip
    # ---- eval leaderboard
    Row("leaderboard-images-not-on-disk", "eval", lambda w, t: board(w, t, *_preds_for(w, t, w.labels_only),
        dataset=w.labels_only), err("no such image", "--examples 0")),  # fmt: skip
    Row("leaderboard-images-not-on-disk-examples-0", "eval", lambda w, t: board(
        w, t, *_preds_for(w, t, w.labels_only), dataset=w.labels_only, extra=("--examples", "0")),
        None, no_examples_said),  # fmt: skip
    Row("leaderboard-examples-negative", "eval", lambda w, t: board(w, t, extra=("--examples", "-1")), err("--examples")),
    Row("leaderboard-score-above-1", "eval", lambda w, t: board(w, t, results(w, t, _set(3, score=1.5))),
        err("bad.json", "entry 3", "score 1.5")),  # fmt: skip
    Row("leaderboard-gate-nan", "eval", lambda w, t: board(w, t, w.a, gate_file(w, t, _set(0, p_abnormal=float("nan")))),
        err("gate.json", "entry 0", "p_abnormal nan")),  # fmt: skip
    Row("leaderboard-pattern-matches-nothing", "eval", lambda w, t: board(w, t, str(t / "nothing*.json")),
        err("nothing*.json")),  # fmt: skip
    Row("leaderboard-metric-rsna-on-vinbig", "eval", lambda w, t: board(w, t, extra=("--metric", "rsna")),
        err("--metric rsna", "has 14 categories", "use --metric vinbig or coco")),  # fmt: skip
    Row("leaderboard-predicted-on-another-dataset", "eval", lambda w, t: board(w, t, _on_other_dataset(w, t), w.b),
        err("model_a.json", "says it was predicted on", "a different dataset from")),  # fmt: skip
    Row("submission-predicted-on-another-dataset", "convert", lambda w, t: submission(w, t, _on_other_dataset(w, t)),
        err("model_a.json", "says it was predicted on", "a different dataset from")),  # fmt: skip
    Row("submission-dataset-copy", "convert", lambda w, t: submission(w, t, dataset=_copy(w.val, t / "copy.json")),
        None),  # fmt: skip
    Row("leaderboard-out-is-a-file", "eval", lambda w, t: board(w, t)[:-1] + [_file(t / "board")],
        err("board", "--out is an existing file")),  # fmt: skip
    Row("leaderboard-dataset-escapes-folder", "eval", lambda w, t: board(
        w, t, dataset=dataset_with(w, t, "../elsewhere.png")), err("val.json", "'../elsewhere.png'", "outside")),  # fmt: skip
    Row("leaderboard-symlink-outside", "eval", lambda w, t: board(
        w, t, *_preds_for(w, t, w.val, "p"), dataset=dataset_with(w, t, "images/link.png", link=True)),
        err("'images/link.png'", "outside the dataset's folder")),  # fmt: skip
    # ---- adapters train / predict (no training: every failure comes before it)
    Row("adapters-config-unknown-key", "adapters", lambda w, t: ["train", model_config(w, t, epochs=3)],
        err("model.yaml", "unknown key 'epochs'")),  # fmt: skip
    Row("adapters-config-wrong-type", "adapters", lambda w, t: ["train", model_config(w, t, schedule={"epochs": "many"})],
        err("model.yaml", "schedule.epochs")),  # fmt: skip
    Row("adapters-weights-missing", "adapters", lambda w, t: predict(w, t, t / "none.pt"),
        err("none.pt", "not found")),  # fmt: skip
    Row("adapters-weights-run-code", "adapters", lambda w, t: predict(w, t, _evil(t)),
        err("evil.pt", "refused", "--trust-weights")),  # fmt: skip
    Row("adapters-start-weights-run-code", "adapters", lambda w, t: ["train", model_config(w, t, weights=str(_evil(t)))],
        err("evil.pt", "refused", "--trust-weights")),  # fmt: skip
    Row("adapters-weights-other-framework", "adapters", lambda w, t: predict(w, t, _foreign(t)),
        err("d2.pth", "not an Ultralytics checkpoint")),  # fmt: skip
    Row("adapters-weights-other-classes", "adapters", lambda w, t: predict(w, t, w.yolo_other_classes()),
        err("other_classes.pt", "trained for classes", "cat")),  # fmt: skip
    # ---- pipeline plan / run
    Row("pipeline-unknown-key", "pipeline", lambda w, t: ["plan", pipeline_config(t, data__convert__fold=2)],
        err("pipe.yaml", "data.convert.fold")),  # fmt: skip
    Row("pipeline-wrong-type", "pipeline", lambda w, t: ["plan", pipeline_config(t, data__convert__folds="five")],
        err("pipe.yaml", "data.convert.folds", "five")),  # fmt: skip
    Row("pipeline-folds-zero", "pipeline", lambda w, t: ["run", pipeline_config(t, data__convert__folds=0)],
        err("pipe.yaml", "data.convert.folds", "got 0")),  # fmt: skip
    Row("pipeline-val-fold-out-of-range", "pipeline", lambda w, t: ["run", pipeline_config(t, data__convert__val_fold=5)],
        err("pipe.yaml", "val_fold")),  # fmt: skip
    Row("pipeline-model-config-missing", "pipeline", lambda w, t: ["run", pipeline_config(t, models=["configs/cpu/nope.yaml"])],
        err("pipe.yaml", "models[0]", "nope.yaml")),  # fmt: skip
    Row("pipeline-unknown-method", "pipeline", lambda w, t: ["plan", pipeline_config(t, ensemble__methods=["wbf", "avg"])],
        err("pipe.yaml", "ensemble.methods", "avg")),  # fmt: skip
    # ---- infer export / predict (python -m infer)
    Row("infer-bundle-missing", "infer", lambda w, t: ["predict", t / "nobundle", w.plain_dicoms[0], "--out", t / "o"],
        err("nobundle", "no such bundle folder")),  # fmt: skip
    Row("infer-bundle-without-manifest", "infer", lambda w, t: ["predict", _dir(t / "bundle"), w.plain_dicoms[0],
        "--out", t / "o"], err("bundle", "not a CXRFuse bundle")),  # fmt: skip
    Row("infer-bundle-foreign-manifest", "infer", lambda w, t: ["predict", _manifest(t, {"format": "other"}),
        w.plain_dicoms[0], "--out", t / "o"], err("manifest.json", "not a CXRFuse bundle manifest")),  # fmt: skip
    Row("infer-export-pipeline-not-run", "infer", lambda w, t: ["export", pipeline_config(t), "--out", t / "bundle"],
        err("leaderboard.json", "no leaderboard")),  # fmt: skip
    Row("infer-export-bad-pipeline-config", "infer", lambda w, t: ["export", pipeline_config(t, data__convert__size=-1),
        "--out", t / "bundle"], err("pipe.yaml", "data.convert.size")),  # fmt: skip
]


# --------------------------------------------------------------------------- small helpers of the rows


def _vinbig_quoted(t: Path) -> list:
    csv_path = _text(t / "train.csv", _quoted([HEADER, *GOOD]), bom=True, crlf=True)
    meta = _text(t / "meta.csv", SIZES)
    return ["vinbig", "--csv", csv_path, "--size-table", meta, "--labels-only", "--out", t / "out", "--folds", "2",
            "--annotators", "raw"]  # fmt: skip


def _sizes_bom_crlf(t: Path) -> list:
    argv = vinbig(t)
    _text(t / "meta.csv", _quoted(SIZES), bom=True, crlf=True)
    return argv


def _latin1(t: Path) -> list:
    argv = _vinbig_raw(t, [HEADER, *GOOD])
    (t / "train.csv").write_bytes(((HEADER + "\n" + "\n".join(GOOD) + "\nccc,Nodule/Mass,8,Ré,1,1,2,2\n")).encode("latin-1"))
    return argv


def _no_sizes(t: Path) -> list:
    argv = vinbig(t)
    k = argv.index("--size-table")
    return argv[:k] + argv[k + 2 :]


def _rsna_info_header(t: Path) -> list:
    argv = rsna(t, info=[])
    _text(t / "info.csv", ["patientId,klass", "p1,Normal"])
    return argv


def _manifest(t: Path, data: dict) -> Path:
    (t / "bundle").mkdir()
    (t / "bundle" / "manifest.json").write_text(json.dumps(data))
    return t / "bundle"


def _file(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("in the way\n")
    return path


def _dir(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


def _out_file(t: Path, argv: list) -> list:
    _file(t / "out")
    return argv


def _yaml(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    return path


def _other_categories(w: World, t: Path) -> Path:
    d = json.loads(w.val.read_text())
    d["categories"] = [*d["categories"], {"id": 77, "name": "extra"}]
    out = t / "val77.json"
    out.write_text(json.dumps(d))
    return out


def _copy(src: Path, dst: Path) -> Path:
    shutil.copy(src, dst)
    return dst


def _on_other_dataset(w: World, t: Path) -> Path:
    """model_a's results and sidecar, as if predicted on another dataset with the same image ids."""
    from core.predictions import dataset_identity

    other = t / "other" / "val.json"
    other.parent.mkdir()
    d = json.loads(w.val.read_text())
    d["info"] = {**d.get("info", {}), "note": "another conversion"}
    other.write_text(json.dumps(d))
    out = _copy(w.a, t / "model_a.json")
    meta = json.loads(w.a.with_name("model_a.meta.json").read_text())
    (t / "model_a.meta.json").write_text(json.dumps({**meta, "dataset": str(other), **dataset_identity(other)}))
    return out


def _preds_for(w: World, t: Path, dataset: Path, prefix: str = "") -> list[Path]:
    """model_a and model_b's results re-read for ``dataset`` (the same ids), without sidecars naming val.json."""
    out = []
    for src in (w.a, w.b):
        path = t / f"{prefix}{src.name}"
        path.write_text(src.read_text())
        out.append(path)
    assert CocoDataset.load(dataset).image_ids
    return out


def _columnar_bad_score(w: World, t: Path) -> Path:
    """A results file written with its columnar companion (the fast path), one score 5.0."""
    dets = {}
    ds = w.dataset()
    for iid in ds.image_ids:
        gt = ds.ground_truth(iid)
        dets[iid] = Detections(gt.boxes, np.full(len(gt), 0.5, np.float32), gt.labels)
    first = next(i for i in ds.image_ids if len(dets[i]))
    d = dets[first]
    dets[first] = Detections(d.boxes, np.r_[np.float32(5.0), d.scores[1:]], d.labels)
    path = write_predictions(t / "c.json", dets, {})
    assert (t / "c.npz").is_file()
    return path


# --------------------------------------------------------------------------- running a row


def snapshot(*roots: Path) -> dict[str, tuple[int, int, str]]:
    """Every file under ``roots``: path → (size, mtime in ns, SHA-256)."""
    out = {}
    for root in roots:
        for p in sorted(root.rglob("*")):
            if p.is_file() or p.is_symlink():
                st = p.lstat()
                digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "link"
                out[str(p)] = (st.st_size, st.st_mtime_ns, digest)
    return out


def _main(tool: str) -> Callable[[list[str]], int]:
    if tool == "convert":
        from convert.__main__ import main
    elif tool == "adapters":
        from adapters.__main__ import main
    elif tool == "ensemble":
        from ensemble.__main__ import main
    elif tool == "eval":
        from eval.__main__ import main
    elif tool == "pipeline":
        from pipeline.__main__ import main
    else:
        from infer.__main__ import main
    return main


def test_catalogue_is_large_and_covers_every_verb():
    ids = [r.id for r in CATALOGUE]
    assert len(ids) == len(set(ids)) and len(ids) >= 40
    kinds = {r.id.split("-")[0] for r in CATALOGUE}
    assert kinds >= {"vinbig", "size", "dicom", "rsna", "synth", "yolo", "submission", "ensemble", "sweep",
                     "leaderboard", "adapters", "pipeline"}  # fmt: skip
    assert {r.tool for r in CATALOGUE} >= {"convert", "adapters", "ensemble", "eval", "pipeline"}
    assert sum(r.expect is None for r in CATALOGUE) >= 6  # valid variants are accepted


@pytest.mark.parametrize("row", CATALOGUE, ids=[r.id for r in CATALOGUE])
def test_bad_input(row: Row, world: World, tmp_path: Path, capsys):
    t = tmp_path / "row"
    t.mkdir()
    argv = [str(a) for a in row.build(world, t)]
    capsys.readouterr()
    before = snapshot(tmp_path, world.root)
    try:
        rc = _main(row.tool)(argv)
    except SystemExit as e:  # argparse
        rc = e.code
    out, errtext = capsys.readouterr()
    assert "Traceback" not in errtext and "Traceback" not in out
    if row.expect is None:
        assert rc == 0, errtext
        if row.check is not None:
            row.check(world, t, out)
        return
    lines = [ln for ln in errtext.splitlines() if ln.strip()]
    assert rc == 2, (rc, errtext)
    assert len(lines) == 1 and lines[0].startswith("error: "), errtext
    for part in row.expect:
        assert part in lines[0], (part, lines[0])
    assert snapshot(tmp_path, world.root) == before, "a refused input changed or wrote files"
    assert not (tmp_path / "row_MARKER").exists()  # no pickled code ran
