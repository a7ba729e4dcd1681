"""``python -m infer``: a finished run exported as one folder, and that folder run on new images.

Most tests use two deterministic stand-in detectors and a stand-in gate registered as adapters (no
framework: they box the image's brightest pixels), so export, checking, decoding, fusion, the outputs
and the DICOM SRs are tested in seconds; the slow test trains a tiny real pipeline and compares the
bundle's answers with the pipeline's own fused results box for box.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import yaml

import adapters
from adapters.base import AdapterError
from adapters.config import load_config
from core.classes import NO_FINDING, VINBIG_CLASSES, coco_categories
from core.coco import CocoDataset
from core.detections import Detections
from core.io import write_json, write_png
from core.predictions import read_predictions
from infer.__main__ import main
from infer.api import predict
from infer.bundle import BundleError, InferError, export_bundle, load_bundle, model_files
from infer.sources import find_sources
from infer.sr import FINDING_CODES, NO_FINDING_CODE, PRIVATE_SCHEME, ReportWriter

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "configs" / "pipelines" / "demo.yaml"


# ------------------------------------------------------------------------------ stand-in models
def _gray(image) -> np.ndarray:
    """A path (read as the adapters read it) or an array, as a grey array."""
    from core.io import read_image_gray

    return image if isinstance(image, np.ndarray) else read_image_gray(image)


class _Fake:
    """What both stand-ins share: a config, weights naming the classes they were trained for."""

    def __init__(self, cfg, weights=None):
        self.cfg, self.name, self.weights = cfg, cfg.name, weights

    def train(self, dataset, out_dir):
        raise NotImplementedError

    def start_weights(self):
        return None

    def check_categories(self, dataset):
        trained = json.loads(Path(self.weights).read_text())["categories"]
        if trained != dataset.category_ids:
            raise AdapterError(f"{self.weights}: trained for {trained}, not {dataset.category_ids}")


class FakeDetector(_Fake):
    """One box around the pixels brighter than ``options.thr``, padded, scored by their mean brightness."""

    def predict(self, images, batch_size=4):
        o = self.cfg.options
        for im in map(_gray, images):
            ys, xs = np.nonzero(im > o["thr"])
            if not len(xs):
                yield Detections.empty()
                continue
            h, w = im.shape[:2]
            box = np.array([xs.min() - o["pad"], ys.min() - o["pad"], xs.max() + 1 + o["pad"], ys.max() + 1 + o["pad"]])
            box = np.clip(box + 1 / 3, 0, [w, h, w, h])
            score = float(im[ys, xs].mean()) / 255 * o["scale"]
            yield Detections(box[None], [score], [o["label"]])


class FakeGate(_Fake):
    """``p_abnormal``: the image's mean brightness."""

    def predict(self, images, batch_size=4):
        for im in map(_gray, images):
            yield float(np.asarray(im, np.float64).mean() / 255)

    def grad_cam(self, dataset, image_ids, out_dir):
        return []


@pytest.fixture
def fakes(monkeypatch):
    """Register the stand-ins as the adapters ``fake`` and ``fake_gate``."""
    classes = {"fake": FakeDetector, "fake_gate": FakeGate}
    monkeypatch.setitem(adapters.ADAPTERS, "fake", f"{__name__}:FakeDetector")
    monkeypatch.setitem(adapters.ADAPTERS, "fake_gate", f"{__name__}:FakeGate")
    real = adapters.adapter_class
    monkeypatch.setattr(adapters, "adapter_class", lambda name: classes.get(name) or real(name))


def _fake_run(tmp: Path, classes=VINBIG_CLASSES) -> Path:
    """A finished pipeline run of two stand-in detectors and the stand-in gate: runs, settings, leaderboard."""
    from fusion.settings import write_settings
    from pipeline.config import load_pipeline
    from pipeline.plan import settings_path

    cfg_dir = tmp / "configs"
    cfg_dir.mkdir(parents=True)
    specs = {
        "fake_a": {"adapter": "fake", "options": {"thr": 200, "pad": 0, "scale": 0.9, "label": 3}},
        "fake_b": {"adapter": "fake", "options": {"thr": 180, "pad": 1, "scale": 0.7, "label": 3}},
        "fake_gate": {"adapter": "fake_gate", "options": {}},
    }
    paths = {}
    for name, spec in specs.items():
        paths[name] = cfg_dir / f"{name}.yaml"
        paths[name].write_text(yaml.safe_dump(
            {"name": name, "model": "stand-in", "image_size": 64, "predict": {"batch_size": 2}, **spec}
        ))  # fmt: skip
    pipe = {
        "work_dir": str(tmp / "w"),
        "data": {"kind": "vinbig", "synth": {"n_images": 6}, "convert": {"size": 64}},
        "models": [str(paths["fake_a"]), str(paths["fake_b"])],
        "gate": str(paths["fake_gate"]),
        "ensemble": {"methods": ["wbf", "nms"], "iou_thr": 0.5, "skip_box_thr": 0.0, "gate_mode": "append"},
    }
    config = tmp / "pipe.yaml"
    config.write_text(yaml.safe_dump(pipe))
    p = load_pipeline(config)
    for name, path in paths.items():
        run = p.work_dir / "runs" / name
        run.mkdir(parents=True)
        (run / "config.yaml").write_text(yaml.safe_dump(load_config(path).to_dict()))
        (run / "weights.pth").write_text(json.dumps({"categories": sorted(classes)}))
        write_json(run / "categories.json", coco_categories(classes))
    for method in p.methods:
        for gated in (False, True):
            name = f"{method}+gate" if gated else method
            write_settings(settings_path(p, name), p.fusion_settings(method, gated), {"inputs": ["fake_a", "fake_b"]})
    rows = [("wbf+gate", "fusion"), ("fake_a", "detector"), ("nms", "fusion"), ("wbf", "fusion")]
    write_json(p.work_dir / "leaderboard" / "leaderboard.json", {
        "metric_name": "mAP@0.4",
        "rows": [{"rank": k, "name": n, "kind": kind, "score": 1 - k / 10} for k, (n, kind) in enumerate(rows, 1)],
    })  # fmt: skip
    return config


@pytest.fixture
def bundle(tmp_path, fakes) -> Path:
    return export_bundle(_fake_run(tmp_path / "run"), tmp_path / "bundle")


# ------------------------------------------------------------------------------ export and loading
def test_export_writes_a_self_describing_folder(tmp_path, fakes):
    config = _fake_run(tmp_path / "run")
    out = export_bundle(config, tmp_path / "b")
    m = json.loads((out / "manifest.json").read_text())
    assert m["format"] == "cxrfuse-bundle" and m["format_version"] == 1
    assert m["versions"]["cxrfuse"] == "0.1.0" and m["versions"]["python"] and "torch" in m["versions"]
    assert m["source"]["fusion"] == "wbf+gate" and m["source"]["leaderboard"]["rank"] == 1  # the best fusion
    assert [x["name"] for x in m["models"]] == ["fake_a", "fake_b"] and m["gate"]["name"] == "fake_gate"
    assert m["fusion"] == {"name": "wbf+gate", "settings": "fusion.yaml", "method": "wbf", "gate_mode": "append"}
    assert m["classes"] == [{"id": c, "name": n} for c, n in sorted(VINBIG_CLASSES.items())]
    assert m["no_finding"] == {"id": NO_FINDING, "name": "No finding"}
    assert m["preprocessing"]["size"] == 64 and m["preprocessing"]["dicom"]["voi_lut"] is True
    listed = set(m["files"])
    on_disk = {f.relative_to(out).as_posix() for f in out.rglob("*") if f.is_file()} - {"manifest.json"}
    assert listed == on_disk and "models/fake_a/weights.pth" in listed and "gate/fake_gate/config.yaml" in listed
    assert m["models"][0]["sha256"] == m["files"]["models/fake_a/weights.pth"]
    cfg = yaml.safe_load((out / "models" / "fake_a" / "config.yaml").read_text())
    assert "dataset" not in cfg and "out_dir" not in cfg and cfg["weights"] is None  # nothing of the old machine
    b = load_bundle(out)
    assert b.fusion_name == "wbf+gate" and b.gate_mode == "append" and b.size == 64 and not b.differences
    assert b.settings.method == "wbf" and b.settings.iou_thr == 0.5

    with pytest.raises(InferError, match="exists; choose another folder or pass --force"):
        export_bundle(config, out)
    nms = load_bundle(export_bundle(config, out, fusion="nms", force=True))
    assert nms.fusion_name == "nms" and nms.gate is None  # an ungated fusion leaves the gate out
    assert not (out / "gate").exists()
    assert sorted(x.name for x in tmp_path.iterdir()) == ["b", "run"]  # no temporary folder left
    with pytest.raises(InferError, match="makes no fusion 'nmw'"):
        export_bundle(config, tmp_path / "c", fusion="nmw")


def test_export_names_what_the_run_lacks(tmp_path, fakes, capsys):
    config = _fake_run(tmp_path / "run")
    (tmp_path / "run" / "w" / "runs" / "fake_b" / "weights.pth").unlink()
    assert main(["export", str(config), "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert "fake_b/weights.pth: missing: the model fake_b has not been trained" in err
    assert not (tmp_path / "b").exists()
    shutil.rmtree(tmp_path / "run" / "w" / "leaderboard")
    with pytest.raises(InferError, match="no leaderboard: finish the pipeline"):
        export_bundle(config, tmp_path / "b")


def test_model_files_follow_relative_bases():
    d2 = model_files(REPO / "configs" / "detectron2" / "faster_rcnn_R_18_FPN_cpu.yaml")
    assert [f.name for f in d2] == ["faster_rcnn_R_18_FPN_cpu.yaml", "Base-RCNN-FPN.yaml"]
    mm = model_files(REPO / "configs" / "mmdet" / "faster_rcnn_r18_fpn_cpu.py")
    assert [f.name for f in mm] == ["faster_rcnn_r18_fpn_cpu.py"]  # mmdet:: bases come with the package


def test_a_tampered_or_missing_file_is_refused(bundle, tmp_path, capsys):
    weights = bundle / "models" / "fake_b" / "weights.pth"
    weights.write_bytes(weights.read_bytes() + b" ")
    with pytest.raises(BundleError, match=r"fake_b/weights.pth: SHA-256 .* differs from the manifest's"):
        load_bundle(bundle)
    img = tmp_path / "x.png"
    write_png(img, np.full((20, 20), 255, np.uint8))
    assert main(["predict", str(bundle), str(img), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "weights.pth: SHA-256" in err and "refusing to use it" in err
    assert not (tmp_path / "o").exists()
    weights.unlink()
    with pytest.raises(BundleError, match="fake_b/weights.pth: missing from the bundle"):
        load_bundle(bundle)


def test_another_version_is_named_in_a_warning(bundle, caplog):
    m = json.loads((bundle / "manifest.json").read_text())
    m["versions"].update(cxrfuse="0.0.9", torch="1.0.0")
    (bundle / "manifest.json").write_text(json.dumps(m))
    with caplog.at_level("WARNING", logger="infer"):
        b = load_bundle(bundle)
    assert any("cxrfuse 0.0.9 (here 0.1.0)" in d for d in b.differences)
    assert any(d.startswith("torch 1.0.0 (here ") for d in b.differences)
    assert "made with other versions" in caplog.text and "torch 1.0.0" in caplog.text
    m["format_version"] = 2
    (bundle / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="bundle format 2 was made by a newer CXRFuse"):
        load_bundle(bundle)


def test_weights_for_other_classes_are_refused(tmp_path, fakes):
    config = _fake_run(tmp_path / "run", classes={0: "Lung Opacity"})
    b = export_bundle(config, tmp_path / "b")
    assert load_bundle(b).classes == {0: "Lung Opacity"}
    for member in ("fake_a", "fake_b"):  # the manifest's classes disagree with the weights: refused
        (tmp_path / "run" / "w" / "runs" / member / "weights.pth").write_text(json.dumps({"categories": [5]}))
    b2 = export_bundle(config, tmp_path / "b2")
    write_png(tmp_path / "x.png", np.full((20, 20), 255, np.uint8))
    with pytest.raises(AdapterError, match="trained for \\[5\\], not \\[0\\]"):
        predict(b2, [tmp_path / "x.png"], tmp_path / "o")
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------ inputs
def test_inputs_are_found_in_folders_and_named_uniquely(tmp_path):
    (tmp_path / "a" / "deep").mkdir(parents=True)
    (tmp_path / "b").mkdir()
    for rel in ("a/x.png", "a/deep/y.dcm", "b/x.jpg", "a/.hidden.png", "a/notes.txt"):
        (tmp_path / rel).write_bytes(b"")
    (tmp_path / "a" / "IM0001").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 8)  # a PACS file without suffix
    sources, failures = find_sources([tmp_path / "a", tmp_path / "b", tmp_path / "a" / "x.png", tmp_path / "nope"])
    assert [(s.path.relative_to(tmp_path).as_posix(), s.key, s.dicom) for s in sources] == [
        ("a/IM0001", "IM0001", True),
        ("a/deep/y.dcm", "y", True),
        ("a/x.png", "x", False),
        ("b/x.jpg", "x_2", False),
    ]
    assert [(f.stage, f.error) for f in failures] == [("read", f"{tmp_path / 'nope'}: no such file or folder")]


# ------------------------------------------------------------------------------ prediction
@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    """Six synthetic VinBigData DICOMs (every photometric and syntax variant among them), 96-160 px."""
    from convert.synth import make_vinbig

    return make_vinbig(tmp_path_factory.mktemp("raw"), n_images=6, seed=3, sizes=(96, 160))


def _pipeline_steps(raw: Path, tmp: Path, config: Path, fusion: str, size: int) -> tuple[CocoDataset, dict]:
    """What the pipeline's own steps give on ``raw``: convert, adapters predict per model, ensemble run."""
    from convert.vinbig import convert_vinbig
    from ensemble.run import run as ensemble_run
    from fusion.settings import read_settings
    from pipeline.config import load_pipeline
    from pipeline.plan import settings_path

    p = load_pipeline(config)
    convert_vinbig(raw / "train.csv", tmp / "coco", images_dir=raw / "train", size=size, n_folds=2)
    ds_path = tmp / "coco" / "all.json"
    preds = []
    for m in p.models:
        weights = p.work_dir / "runs" / m.name / "weights.pth"
        preds.append(adapters.predict(m.config, weights, ds_path, tmp / "preds" / f"{m.name}.json"))
    gate = adapters.predict(p.gate.config, p.work_dir / "runs" / p.gate.name / "weights.pth", ds_path, tmp / "preds" / "gate.json")
    settings, _ = read_settings(settings_path(p, fusion))
    out = ensemble_run(preds, ds_path, settings, tmp / "preds" / "fused.json", gate=gate if settings.gate_mode else None)
    ds = CocoDataset.load(ds_path)
    return ds, read_predictions(out, ds, extra_categories=(NO_FINDING,))


def _compare(ds: CocoDataset, fused: dict, doc: dict, box_tol: float) -> int:
    """Assert ``predictions.json`` holds the pipeline's fused boxes in original pixels; return the number of boxes."""
    by_id = {r["source_id"]: r for r in doc["images"]}
    n = 0
    for iid in ds.image_ids:
        im = ds.image(iid)
        rec = by_id[im["source_id"]]
        assert (rec["width"], rec["height"]) == (im["orig_width"], im["orig_height"])
        d = fused[iid].scaled(im["orig_width"] / im["width"], im["orig_height"] / im["height"])
        want = sorted(
            (int(c), float(s), b) for c, s, b in zip(d.labels, d.scores, d.boxes.tolist(), strict=True) if c != NO_FINDING
        )
        got = sorted((r["class_id"], r["score"], r["xyxy"]) for r in rec["boxes"])
        assert len(got) == len(want), im["source_id"]
        for (gc, gs, gb), (wc, ws, wb) in zip(got, want, strict=True):
            assert gc == wc and gs == pytest.approx(ws, abs=2e-6) and gb == pytest.approx(wb, abs=box_tol)
        nf = [float(s) for c, s in zip(d.labels, d.scores, strict=True) if c == NO_FINDING]
        assert rec["no_finding"] == (pytest.approx(nf[0], abs=2e-6) if nf else None)
        n += len(got)
    return n


def _check_reports(out: Path, doc: dict, raw: Path) -> int:
    """Read every SR back with highdicom and pydicom: boxes as closed polylines, the source's UIDs; return the count."""
    import highdicom as hd

    n = 0
    for rec in doc["images"]:
        if rec["kind"] != "dicom":
            assert rec["sr"] is None
            continue
        src = pydicom.dcmread(raw / "train" / f"{rec['source_id']}.dicom", stop_before_pixels=True)
        path = out / rec["sr"]
        ds = pydicom.dcmread(path)
        assert ds.Modality == "SR" and ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
        assert ds.StudyInstanceUID == src.StudyInstanceUID and ds.SOPInstanceUID != src.SOPInstanceUID
        ev = ds.CurrentRequestedProcedureEvidenceSequence[0]
        assert ev.StudyInstanceUID == src.StudyInstanceUID
        assert ev.ReferencedSeriesSequence[0].SeriesInstanceUID == src.SeriesInstanceUID
        assert ev.ReferencedSeriesSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
        assert ds.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == PRIVATE_SCHEME
        sr = hd.sr.srread(path)
        assert ds.ContentTemplateSequence[0].TemplateIdentifier == "1500"  # TID 1500 Measurement Report
        assert isinstance(sr.content, hd.sr.MeasurementReport)
        groups = sr.content.get_planar_roi_measurement_groups()
        want = sorted((b["score"], b["class_id"], tuple(b["xyxy"])) for b in rec["boxes"])
        got = []
        for g in groups:
            assert g.roi.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
            pts = g.roi.value
            assert pts.shape == (5, 2) and (pts[0] == pts[-1]).all()
            x1, y1 = pts[0]
            x2, y2 = pts[2]
            assert pts[1].tolist() == [x2, y1] and pts[3].tolist() == [x1, y2]
            ref = g.roi.ContentSequence[0].ReferencedSOPSequence[0]
            assert ref.ReferencedSOPInstanceUID == src.SOPInstanceUID and ref.ReferencedSOPClassUID == src.SOPClassUID
            (m,) = g.get_measurements()
            assert m.name.value == "111012" and m.unit.value == "%"
            cid = next(c for c, code in FINDING_CODES.items() if code.value == g.finding_type.value)
            got.append((float(m.value) / 100, cid, (x1, y1, x2, y2)))
        got.sort()
        assert len(got) == len(want)
        for (gs, gc, gb), (ws, wc, wb) in zip(got, want, strict=True):
            assert gc == wc and gs == pytest.approx(ws, abs=1e-6) and gb == pytest.approx(wb, abs=1e-3)
        nf = [g for g in sr.content.get_image_measurement_groups() if g.finding_type.value == NO_FINDING_CODE.value]
        assert len(nf) == (rec["no_finding"] is not None)
        if nf:
            assert float(nf[0].get_measurements()[0].value) / 100 == pytest.approx(rec["no_finding"], abs=1e-6)
        n += len(groups)
    return n


def test_predict_equals_the_pipeline_steps_and_reports_bad_files(bundle, raw, tmp_path, capsys):
    inputs = tmp_path / "in"
    shutil.copytree(raw / "train", inputs)
    png = np.zeros((150, 300), np.uint8)
    png[30:90, 120:240] = 255
    write_png(inputs / "photo.png", png)
    (inputs / "broken.dicom").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00" * 40)  # truncated
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    out = tmp_path / "out"
    argv = ["predict", str(bundle), str(inputs), str(notes), "--out", str(out), "--overlays", "--sr", "--min-score", "0"]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert "predicted 7 images" in captured.out
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: 2 failure(s), listed in ")
    assert "broken.dicom (read: " in err[0] and f"{notes} (read: " in err[0] and "not a DICOM" in err[0]
    with open(out / "failures.csv", newline="") as f:
        assert sorted(Path(r["file"]).name for r in csv.DictReader(f)) == ["broken.dicom", "notes.txt"]
    doc = json.loads((out / "predictions.json").read_text())
    assert [f["file"] for f in doc["failures"]] == [str(r["file"]) for r in json.loads((out / "failures.json").read_text())]
    assert doc["fusion"] == "wbf+gate" and len(doc["images"]) == 7

    # the same images through convert, adapters predict and ensemble run
    ds, fused = _pipeline_steps(raw, tmp_path / "steps", tmp_path / "run" / "pipe.yaml", "wbf+gate", 64)
    assert _compare(ds, fused, doc, box_tol=0.011 * 160 / 64) >= 6

    # the PNG: its white rectangle, found at 64 px, back in its own pixels
    (photo,) = [r for r in doc["images"] if r["source_id"] == "photo"]
    assert photo["kind"] == "image" and (photo["width"], photo["height"]) == (300, 150)
    assert photo["boxes"][0]["class_name"] == "Cardiomegaly"
    assert photo["boxes"][0]["xyxy"] == pytest.approx([120, 30, 240, 90], abs=300 / 64 * 1.5)

    # the Kaggle CSV: the same boxes, one row per image
    from convert.submission import parse_vinbig_submission

    sub = parse_vinbig_submission(out / "predictions.csv")
    assert set(sub) == {r["source_id"] for r in doc["images"]}
    for rec in doc["images"]:
        got = np.array(sorted(r for r in sub[rec["source_id"]] if r[0] != NO_FINDING)).reshape(-1, 6)
        want = np.array(sorted((b["class_id"], b["score"], *b["xyxy"]) for b in rec["boxes"])).reshape(-1, 6)
        np.testing.assert_allclose(got, want, atol=0.051)  # the CSV has one decimal

    # overlays for every image, a report for every DICOM read back
    assert sorted(p.name for p in (out / "overlays").iterdir()) == sorted(f"{r['source_id']}.png" for r in doc["images"])
    assert _check_reports(out, doc, raw) >= 6
    assert not [p for p in out.rglob("*") if p.name.startswith(".")]  # nothing half-written


def test_finding_codes_are_real_where_they_say_so():
    from pydicom.sr.codedict import codes

    known = {(getattr(getattr(codes, s), n).value, s) for s in ("SCT", "DCM") for n in getattr(codes, s).dir()}
    for cid, code in FINDING_CODES.items():
        if code.scheme_designator == PRIVATE_SCHEME:
            assert code.value == f"CXRF{cid:04d}" and code.meaning
        else:
            assert (code.value, code.scheme_designator) in known, code
    assert sum(c.scheme_designator != PRIVATE_SCHEME for c in FINDING_CODES.values()) == 5


def test_a_report_of_an_image_without_uids_is_a_failure_not_a_crash(tmp_path):
    header = pydicom.Dataset()
    header.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    with pytest.raises(ValueError, match="no StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID"):
        ReportWriter(VINBIG_CLASSES).write(tmp_path / "r.dcm", header, Detections.empty())
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------------------ end to end
@pytest.mark.slow
def test_bundle_of_a_real_pipeline_gives_its_fused_boxes(tmp_path):
    """A tiny real run (two YOLOv8n of other seeds, one epoch each, and the gate), exported and run on its
    validation DICOMs: the bundle's boxes are the pipeline's fused results in original pixels."""
    data = yaml.safe_load(DEMO.read_text())
    data["data"]["synth"].update(n_images=16, min_size=160, max_size=224)
    data["data"]["convert"].update(size=96, folds=2)
    data["models"] = [
        {"config": "configs/cpu/yolov8n.yaml", "set": {"schedule.epochs": 1, "image_size": 96, "predict.score_thr": 0.0, "predict.max_dets": 20}},
        {"config": "configs/cpu/yolov8n.yaml",
         "set": {"name": "yolov8n_b", "schedule.epochs": 1, "schedule.seed": 1, "image_size": 96, "predict.score_thr": 0.0, "predict.max_dets": 20}},
    ]
    data["gate"] = {"config": "configs/cpu/gate_resnet18.yaml", "set": {"schedule.epochs": 1, "image_size": 64}}
    data["ensemble"]["methods"] = ["wbf"]
    data["leaderboard"]["examples"] = 0
    config = tmp_path / "pipe.yaml"
    config.write_text(yaml.safe_dump(data))
    work = tmp_path / "w"
    from pipeline.__main__ import main as pipeline_main

    assert pipeline_main(["run", str(config), "--work-dir", str(work)]) == 0
    bundle = tmp_path / "bundle"
    assert main(["export", str(config), "--work-dir", str(work), "--out", str(bundle)]) == 0
    b = load_bundle(bundle)
    assert b.fusion_name in ("wbf", "wbf+gate") and [m.name for m in b.models] == ["yolov8n_cpu", "yolov8n_b"]

    val = CocoDataset.load(work / "coco" / "val.json")
    files = [work / "raw" / "train" / f"{im['source_id']}.dicom" for im in val.images]
    out = tmp_path / "out"
    argv = ["predict", str(bundle), *map(str, files), "--out", str(out), "--sr", "--overlays", "--min-score", "0"]
    assert main([*argv, "--device", "cpu"]) == 0
    doc = json.loads((out / "predictions.json").read_text())
    name = b.fusion_name.replace("+", "_")
    fused = read_predictions(work / "preds" / f"fusion_{name}.json", val, extra_categories=(NO_FINDING,))
    scale = max(max(im["orig_width"], im["orig_height"]) / max(im["width"], im["height"]) for im in val.images)
    assert _compare(val, fused, doc, box_tol=0.011 * scale) > len(files)  # untrained, but boxes on every image
    assert _check_reports(out, doc, work / "raw") == sum(len(r["boxes"]) for r in doc["images"])
    assert len(list((out / "overlays").glob("*.png"))) == len(files)
