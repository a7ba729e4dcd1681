"""The pipeline's K-fold path (out-of-fold results, the sweep on them), its test set and its RSNA flow."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from core.class_probs import ClassProbs, read_class_probs, write_class_probs
from core.coco import CocoDataset
from core.detections import Detections
from core.predictions import read_gate, read_meta, read_predictions, write_gate, write_predictions
from fusion.settings import read_settings
from pipeline.__main__ import main
from pipeline.config import PipelineError, load_pipeline
from pipeline.execute import run
from pipeline.plan import plan

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "configs" / "pipelines" / "demo.yaml"
RSNA = REPO / "configs" / "pipelines" / "rsna.yaml"
MODELS = ["yolov8n_cpu", "yolov5nu_cpu", "faster_rcnn_d2_cpu", "faster_rcnn_mmdet_cpu"]


def _write(tmp: Path, data: dict, name: str = "pipe.yaml") -> Path:
    p = tmp / name
    p.write_text(yaml.safe_dump(data))
    return p


def _small(cv=None, n_test=4) -> dict:
    """The demo config on a few tiny images (2 folds), with ``cv`` and a synthetic test set."""
    data = yaml.safe_load(DEMO.read_text())
    data["data"]["synth"].update(n_images=12, min_size=96, max_size=128)
    data["data"]["convert"].update(size=64, folds=2)
    data["test"] = {"synth": {"n_images": n_test, "seed": 7, "min_size": 96, "max_size": 128, "workers": 1}}
    data["sweep"] = {"iou_thr": [0.5], "skip_box_thr": [0.0], "gate_modes": ["append", "none"]}
    data["ensemble"]["methods"] = ["wbf", "nms"]
    if cv is not None:
        data["cv"] = cv
    return data


@pytest.mark.parametrize(
    "patch, message",
    [
        ({"cv": {"folds": [0, 5]}}, "cv.folds: no fold 5"),
        ({"cv": {"folds": [1, 1]}}, "lists a fold twice"),
        ({"cv": {"folds": "some"}}, "cv.folds must be 'all' or a non-empty list"),
        ({"cv": {"fold": [0]}}, "unknown key 'cv.fold'"),
        ({"test": {"images": "x", "synth": {"n_images": 2}}}, "test needs exactly one of"),
        ({"test": {"synth": {"n_images": 0}}}, "test.synth.n_images must be an integer >= 1"),
        ({"test": {"synth": {"n_images": 2}, "ids": "s.csv"}}, "test.ids is for test.images"),
        ({"test": {"images": "x", "labels": "y"}}, "unknown key 'test.labels'"),
        ({"sweep": {"iou_thr": 0.5}}, "sweep.iou_thr must be a non-empty list"),
        ({"sweep": {"gate_modes": ["sometimes"]}}, "sweep.gate_modes: unknown"),
        ({"data": {"kind": "nih", "synth": {"n_images": 4}}}, "data.kind must be one of vinbig, rsna"),
        ({"submission": {"kind": "rsna"}}, "submission.kind rsna does not match data.kind vinbig"),
        ({"data": {"kind": "rsna", "raw": {"csv": "a.csv", "images": "i"}}}, "data.raw needs 'labels'"),
        ({"data": {"kind": "vinbig", "raw": {"labels": "a.csv", "images": "i"}}}, "data.raw needs 'csv'"),
    ],
)
def test_bad_cv_test_and_kind_settings_name_the_key(tmp_path, patch, message):
    data = yaml.safe_load(DEMO.read_text())
    data.update(patch)
    with pytest.raises(PipelineError, match=message):
        load_pipeline(_write(tmp_path, data))


def test_without_cv_or_test_the_plan_is_as_before(tmp_path):
    data = yaml.safe_load(DEMO.read_text())
    data.pop("test"), data.pop("sweep")
    p = load_pipeline(_write(tmp_path, data), work_dir=str(tmp_path / "w"))
    names = [s.name for s in plan(p)]
    assert not [n for n in names if "test" in n or "@" in n or n in ("oof", "sweep")]
    assert p.eval_dataset == p.coco / "val.json" and p.eval_preds == p.preds


def test_cv_plan_trains_every_model_per_fold_and_scores_oof(tmp_path):
    p = load_pipeline(_write(tmp_path, _small(cv={"folds": "all"})), work_dir=str(tmp_path / "w"))
    assert p.cv_folds == (0, 1)
    steps = {s.name: s for s in plan(p)}
    names = list(steps)
    for m in [*MODELS, "gate_resnet18_cpu"]:
        for k in (0, 1):
            train, predict = steps[f"train:{m}@fold{k}"], steps[f"predict:{m}@fold{k}"]
            assert str(p.coco / f"fold{k}_train.json") in train.command
            assert train.outputs[0].parent == p.work_dir / "runs" / m / f"fold{k}"
            assert str(p.coco / f"fold{k}_val.json") in predict.command
            assert f"predict_test:{m}@fold{k}" in steps
    assert steps["oof"].outputs[0] == p.coco / "oof.json"
    assert names.index("oof") > max(names.index(n) for n in names if n.startswith("predict:"))
    fuse = steps["fuse:wbf+gate"].command
    assert fuse[fuse.index("--dataset") + 1] == str(p.coco / "oof.json")
    assert fuse[fuse.index("--name") + 1] == "wbf@oof+gate"
    sweep = steps["sweep"].command
    assert sweep[sweep.index("--dataset") + 1] == str(p.coco / "oof.json")
    assert all(str(p.preds / "oof" / f"{m}.json") in sweep for m in MODELS)
    for m in MODELS:
        cmd = steps[f"fold_fuse:{m}"].command
        assert cmd[cmd.index("--method") + 1] == "wbf" and "--weights" not in cmd
    assert names[-4:] == ["fold_fuse:gate", "fuse_test", "leaderboard", "submission"]
    assert names.index("fuse_test") > names.index("sweep") > names.index("fuse:nms+gate")
    # a subset of the folds
    data = _small(cv={"folds": [1]})
    p1 = load_pipeline(_write(tmp_path, data, "one.yaml"), work_dir=str(tmp_path / "w1"))
    assert not [s for s in plan(p1) if s.name.endswith("@fold0")]


def _fake_preds(ds: CocoDataset, seed: int, offset: float) -> dict[int, Detections]:
    """Each truth box, shifted by ``offset`` pixels, with a random score; plus one stray box per image."""
    rng = np.random.default_rng(seed)
    out = {}
    for iid in ds.image_ids:
        im = ds.image(iid)
        anns = [a for a in ds.annotations if a["image_id"] == iid]
        boxes = [[a["bbox"][0] + offset, a["bbox"][1], a["bbox"][0] + a["bbox"][2] + offset, a["bbox"][1] + a["bbox"][3]] for a in anns]
        labels = [a["category_id"] for a in anns]
        boxes.append([1, 1, im["width"] / 4, im["height"] / 4])
        labels.append(0)
        b = np.clip(np.array(boxes, np.float32), 0, [im["width"], im["height"]] * 2)
        out[iid] = Detections(b, rng.uniform(0.3, 1.0, len(b)).astype(np.float32), np.array(labels))
    return out


def _fake_model_outputs(p, folds) -> None:
    """What the train/predict steps would leave: fold predictions on val and test, and gate scores."""
    test = CocoDataset.load(p.coco_test / "all.json")
    for k in folds:
        val = CocoDataset.load(p.coco / f"fold{k}_val.json")
        for j, m in enumerate(MODELS):
            meta = {"name": m, "model": m}
            write_predictions(p.preds / f"fold{k}" / f"{m}.json", _fake_preds(val, j, j), meta)
            write_predictions(p.preds_test / f"fold{k}" / f"{m}.json", _fake_preds(test, j + k, j), meta)
        gate = {iid: float(not val.is_normal(iid)) * 0.8 + 0.1 for iid in val.image_ids}
        write_gate(p.preds / f"fold{k}" / "gate.json", gate, {"name": "gate"})
        write_gate(p.preds_test / f"fold{k}" / "gate.json", {i: 0.1 + 0.4 * k for i in test.image_ids}, {"name": "gate"})


def test_oof_sweep_and_test_submission_on_fake_model_outputs(tmp_path, capsys):
    """Everything after training, on predictions written here: OOF, fusions, sweep, test fusion, submission."""
    p = load_pipeline(_write(tmp_path, _small(cv={"folds": [0, 1]})), work_dir=str(tmp_path / "w"))
    run(p, only=["synth", "convert", "synth_test", "convert_test"], step_logs=True)
    assert CocoDataset.load(p.coco_test / "all.json").annotations == []
    _fake_model_outputs(p, (0, 1))
    rest = ["oof", "fuse", "sweep", "fold_fuse", "fuse_test", "leaderboard", "submission"]
    run(p, only=rest, step_logs=True)

    all_ds = CocoDataset.load(p.coco / "all.json")
    oof = CocoDataset.load(p.coco / "oof.json")
    assert sorted(oof.image_ids) == sorted(all_ds.image_ids)  # two folds of two: every image
    for m in MODELS:
        dets = read_predictions(p.preds / "oof" / f"{m}.json", oof)
        for k in (0, 1):  # each image's boxes are those of the fold model that did not see it
            fold = read_predictions(p.preds / f"fold{k}" / f"{m}.json", CocoDataset.load(p.coco / f"fold{k}_val.json"))
            for iid, d in fold.items():
                np.testing.assert_allclose(dets[iid].boxes, d.boxes, atol=0.01)
        assert read_meta(p.preds / "oof" / f"{m}.json")["name"] == f"{m}@oof"
    assert set(read_gate(p.preds / "oof" / "gate.json", oof)) == set(oof.image_ids)

    board = json.loads((p.work_dir / "leaderboard" / "leaderboard.json").read_text())
    names = {r["name"] for r in board["rows"]}
    assert names == {f"{m}@oof" for m in MODELS} | {f"{f}@oof{g}" for f in ("wbf", "nms") for g in ("", "+gate")}
    best, _ = read_settings(p.work_dir / "sweep" / "best.yaml")
    assert best.method in ("wbf", "nms")
    meta = read_meta(p.preds_test / "fusion_best.json")
    assert meta["method"] == best.method and meta["dataset"] == str(p.coco_test / "all.json")
    test = CocoDataset.load(p.coco_test / "all.json")
    # a model's test results: its two fold models fused by WBF
    assert read_meta(p.preds_test / f"{MODELS[0]}.json")["method"] == "wbf"
    assert read_meta(p.preds_test / f"{MODELS[0]}.json")["inputs"] == [
        str(p.preds_test / f"fold{k}" / f"{MODELS[0]}.json") for k in (0, 1)
    ]
    gate = read_gate(p.preds_test / "gate.json", test)
    assert all(v == pytest.approx(0.3) for v in gate.values())  # the mean of 0.1 and 0.5
    with open(p.work_dir / "submission.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["image_id", "PredictionString"]
    assert sorted(r[0] for r in rows[1:]) == sorted(im["source_id"] for im in test.images)
    assert all(" 0 0 1 1" in r[1] for r in rows[1:])  # "No finding" from the gate on every image
    for r in rows[1:]:  # in original DICOM pixels: the one (stray) box [1, 1, w/4, h/4] of every model
        im = next(i for i in test.images if i["source_id"] == r[0])
        vals = r[1].split()
        boxes = [[float(v) for v in vals[i + 2 : i + 6]] for i in range(0, len(vals), 6) if vals[i] != "14"]
        assert boxes and im["orig_width"] > im["width"]
        for x1, y1, x2, y2 in boxes:
            assert x1 == pytest.approx(im["orig_width"] / im["width"], abs=0.2)
            assert y1 == pytest.approx(im["orig_height"] / im["height"], abs=0.2)
            assert x2 == pytest.approx(im["orig_width"] / 4, abs=0.2)
            assert y2 == pytest.approx(im["orig_height"] / 4, abs=0.2)


def test_oof_refuses_folds_that_do_not_cover_the_images_once(tmp_path):
    p = load_pipeline(_write(tmp_path, _small(cv={"folds": [0, 1]})), work_dir=str(tmp_path / "w"))
    run(p, only=["synth", "convert", "synth_test", "convert_test"], step_logs=True)
    _fake_model_outputs(p, (0, 1))
    val0, val1 = (CocoDataset.load(p.coco / f"fold{k}_val.json") for k in (0, 1))
    # a fold file holding the other fold's images is not that fold model's prediction
    write_predictions(p.preds / "fold0" / f"{MODELS[0]}.json", _fake_preds(val1, 0, 0), {"name": MODELS[0]})
    with pytest.raises(ValueError, match=r"fold0/yolov8n_cpu.json: image ids .* are not in .*fold0_val.json"):
        run(p, only=["oof"])
    _fake_model_outputs(p, (0, 1))
    # an image in two folds' validation sets
    twice = CocoDataset.load(p.coco / "all.json").subset([*val1.image_ids, val0.image_ids[0]])
    twice.write(p.coco / "fold1_val.json")
    with pytest.raises(PipelineError, match=f"image {val0.image_ids[0]} is in the validation sets of folds 0 and 1"):
        run(p, only=["oof"])
    assert not (p.coco / "oof.json").exists()


def test_submission_is_checked_against_the_test_id_list(tmp_path, capfd):
    data = _small()
    p0 = load_pipeline(_write(tmp_path, data), work_dir=str(tmp_path / "w"))
    run(p0, only=["synth", "synth_test"], step_logs=True)
    images = p0.work_dir / "raw_test" / "train"
    ids = sorted(x.stem for x in images.iterdir())
    ids_csv = tmp_path / "sample_submission.csv"
    ids_csv.write_text("image_id,PredictionString\n" + "".join(f"{i},14 1 0 0 1 1\n" for i in ids[1:]))
    data["test"] = {"images": str(images), "ids": str(ids_csv)}
    cfg = _write(tmp_path, data, "ids.yaml")
    rc = main(["run", str(cfg), "--work-dir", str(p0.work_dir), "--only", "convert_test"])
    err = capfd.readouterr().err
    assert rc == 2 and "step convert_test failed" in err
    assert f"not in {ids_csv}: {ids[0]}" in err  # the converter's own one-line error, on our stderr
    assert not (p0.work_dir / "coco_test" / "all.json").exists()


def test_rsna_pipeline_validates_and_plans_the_rsna_flow(tmp_path):
    p = load_pipeline(RSNA, work_dir=str(tmp_path / "w"))
    assert p.kind == "rsna" and p.metric == "rsna" and p.submission_kind == "rsna" and p.gate is None
    steps = {s.name: s for s in plan(p)}
    conv = steps["convert"].command
    assert conv[conv.index("convert") + 1] == "rsna" and "--labels" in conv and "--annotators" not in conv
    test = steps["convert_test"].command
    assert "--ids" in test and "--labels" not in test
    sweep = steps["sweep"].command
    assert sweep[sweep.index("--metric") + 1] == "rsna" and "--gate" not in sweep
    assert p.cv_folds == (0, 1, 2, 3, 4)


@pytest.mark.slow
def test_kfold_every_model_oof_sweep_and_test_submission(tmp_path):
    """Two folds, every model kind and the gate, tiny schedules: OOF, sweep on OOF, test submission."""
    data = _small(cv={"folds": [0, 1]}, n_test=3)
    data["data"]["synth"].update(n_images=10)
    data["models"] = [
        {"config": "configs/cpu/yolov8n.yaml", "set": {"schedule.epochs": 1}},
        {"config": "configs/cpu/yolov5nu.yaml", "set": {"schedule.epochs": 1}},
        {"config": "configs/cpu/faster_rcnn_d2.yaml", "set": {"schedule.iterations": 1, "schedule.warmup_iters": 0}},
        {"config": "configs/cpu/faster_rcnn_mmdet.yaml", "set": {"schedule.iterations": 1, "schedule.warmup_iters": 0}},
    ]
    data["gate"] = {"config": "configs/cpu/gate_resnet18.yaml", "set": {"schedule.epochs": 1, "image_size": 64}}
    data["leaderboard"]["examples"] = 0
    work = tmp_path / "w"
    assert main(["run", str(_write(tmp_path, data)), "--work-dir", str(work), "--set", "image_size=64"]) == 0
    oof = CocoDataset.load(work / "coco" / "oof.json")
    assert len(oof.images) == 10
    for m in MODELS:
        for k in (0, 1):
            assert (work / "runs" / m / f"fold{k}" / "loss.csv").is_file()
        assert set(read_predictions(work / "preds" / "oof" / f"{m}.json", oof)) == set(oof.image_ids)
    board = json.loads((work / "leaderboard" / "leaderboard.json").read_text())
    assert all(r["name"].endswith(("@oof", "@oof+gate")) for r in board["rows"])
    assert (work / "sweep" / "best.yaml").is_file()
    test = CocoDataset.load(work / "coco_test" / "all.json")
    with open(work / "submission.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert sorted(r[0] for r in rows[1:]) == sorted(im["source_id"] for im in test.images)


@pytest.mark.slow
def test_rsna_flow_on_synthetic_rsna(tmp_path):
    """RSNA layout end to end: synthetic RSNA train and test sets, RSNA metric, RSNA submission."""
    data = yaml.safe_load(RSNA.read_text())
    data["data"] = {"kind": "rsna", "synth": {"n_images": 8, "seed": 0, "size": 128, "workers": 1},
                    "convert": {"size": 64, "folds": 2, "workers": 1}}  # fmt: skip
    data["cv"] = {"folds": [0, 1]}
    data["test"] = {"synth": {"n_images": 3, "seed": 5, "size": 128, "workers": 1}}
    data["models"] = [
        {"config": "configs/cpu/yolov8n.yaml", "set": {"schedule.epochs": 1}},
        {"config": "configs/cpu/faster_rcnn_d2.yaml", "set": {"schedule.iterations": 1, "schedule.warmup_iters": 0}},
    ]
    data["ensemble"]["methods"] = ["wbf"]
    data["sweep"] = {"iou_thr": [0.5], "skip_box_thr": [0.0]}
    data["leaderboard"]["examples"] = 0
    work = tmp_path / "w"
    assert main(["run", str(_write(tmp_path, data)), "--work-dir", str(work), "--set", "image_size=64"]) == 0
    board = json.loads((work / "leaderboard" / "leaderboard.json").read_text())
    assert {r["name"] for r in board["rows"]} == {"yolov8n_cpu@oof", "faster_rcnn_d2_cpu@oof", "wbf@oof"}
    test = CocoDataset.load(work / "coco_test" / "all.json")
    with open(work / "submission.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["patientId", "PredictionString"]
    assert sorted(r[0] for r in rows[1:]) == sorted(im["source_id"] for im in test.images)
    for r in rows[1:]:
        vals = r[1].split()
        assert len(vals) % 5 == 0  # conf x y width height, in the 128-px original frame
        assert all(float(v) <= 128.1 for v in vals[1::5] + vals[2::5])


def _fake_class_probs(ds: CocoDataset, p_of) -> ClassProbs:
    """A multi-label classifier's file content on ``ds``: the dataset's classes + "No finding"."""
    cats = sorted(ds.category_ids)
    names = [ds.category_names[c] for c in cats]
    ids = sorted(ds.image_ids)
    probs = np.array([[p_of(iid, c) for c in [*cats, 14]] for iid in ids], np.float64)
    return ClassProbs("multilabel", (*names, "No finding"), (*cats, 14), np.array(ids), probs)


def test_a_multilabel_classifier_stands_in_for_the_gate_through_oof_rescore_and_the_test_set(tmp_path):
    """The gate entry may be a multi-label classifier: its every-class probabilities survive the
    out-of-fold join and the test set's fold mean, and the rescore rule fuses with them."""
    data = _small(cv={"folds": [0, 1]})
    data["gate"] = "configs/cpu/classifier_resnet18_multilabel.yaml"
    data["ensemble"]["gate_mode"] = "rescore"
    data["sweep"]["gate_modes"] = ["rescore", "append"]
    p = load_pipeline(_write(tmp_path, data), work_dir=str(tmp_path / "w"))
    run(p, only=["synth", "convert", "synth_test", "convert_test"], step_logs=True)
    _fake_model_outputs(p, (0, 1))
    test = CocoDataset.load(p.coco_test / "all.json")
    folds = {}
    for k in (0, 1):  # an informative classifier: P(class) high where the image has it
        val = CocoDataset.load(p.coco / f"fold{k}_val.json")
        has = {iid: {a["category_id"] for a in val.annotations_of(iid)} or {14} for iid in val.image_ids}
        folds[k] = _fake_class_probs(val, lambda iid, c, has=has: 0.9 if c in has[iid] else 0.1)
        write_class_probs(p.preds / f"fold{k}" / "gate.json", folds[k], {"name": "gate"})
        const = _fake_class_probs(test, lambda iid, c, k=k: 0.1 + 0.4 * k)
        write_class_probs(p.preds_test / f"fold{k}" / "gate.json", const, {"name": "gate"})
    run(p, only=["oof", "fuse", "sweep", "fold_fuse", "fuse_test", "leaderboard", "submission"], step_logs=True)

    oof = read_class_probs(p.preds / "oof" / "gate.json", CocoDataset.load(p.coco / "oof.json"))
    assert oof.task == "multilabel" and oof.classes == folds[0].classes
    for k in (0, 1):  # each image's probabilities are those of the fold model that did not see it
        rows = np.searchsorted(oof.image_ids, folds[k].image_ids)
        np.testing.assert_allclose(oof.probs[rows], folds[k].probs, atol=1e-6)
    assert read_meta(p.preds / "oof" / "fusion_wbf_gate.json")["gate"]["mode"] == "rescore"
    with open(p.work_dir / "sweep" / "results.csv", newline="") as f:
        modes = {r["gate_mode"] for r in csv.DictReader(f)}
    assert {"rescore", "append"} <= modes  # the sweep tried the per-class rule beside the binary one
    mean = read_class_probs(p.preds_test / "gate.json", test)
    assert mean.task == "multilabel" and np.allclose(mean.probs, 0.3)  # the mean of 0.1 and 0.5
    with open(p.work_dir / "submission.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert sorted(r[0] for r in rows[1:]) == sorted(im["source_id"] for im in test.images)
