"""The general classifier (adapters.gate: binary, multiclass, multilabel) and its predictions file.

One synthetic VinBigData set (one lesion shape per class, 1-3 lesions on an abnormal image, so an
image often holds several classes) serves both trainings: multilabel on the boxes' classes + "No
finding" through the CLI (train, predict, Grad-CAM of a chosen class), then multiclass on the images
that hold one class or none, relabelled as a class-per-image dataset and fine-tuned from the
multilabel network (which also proves starting from a classifier checkpoint whose head differs).
Both are scored on held-out images the networks never saw. Torch runs on one thread.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest

from tests.adapters_cli import adapters_cli, one_torch_thread  # noqa: F401 (a fixture)
from tests.conftest_paths import REPO

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ML_CONFIG = REPO / "configs" / "cpu" / "classifier_resnet18_multilabel.yaml"
#: the lesion classes the generator draws (`convert.synth.phantom`): three textures a ResNet-18 trained
#: from scratch on the CPU tells apart within a few epochs at 96 px: horizontal stripes, a 3x3 grid of
#: dots, vertical stripes. Outline shapes (ring, triangle, X, disks of either polarity) and the finer
#: textures (checkerboard, diagonal hatch) need many more epochs than a unit test can spend; they are
#: no harder for the code, only for a tiny training.
DRAWN_IDS = (1, 2, 6)
DRAWN = ("Atelectasis", "Calcification", "Infiltration")
#: the tests' schedule: 96 px images (the synthetic lesions are 8-25 % of the side), 6 epochs
SMALL = ("image_size=96", "schedule.epochs=6")


@pytest.fixture(scope="module")
def coco(tmp_path_factory) -> Path:
    """480 synthetic VinBigData images (25 % normal) → COCO at 96 px, 2/3 train, 1/3 val (3 folds)."""
    from convert.synth import make_vinbig
    from convert.vinbig import convert_vinbig

    root = tmp_path_factory.mktemp("classifier_data")
    make_vinbig(root / "raw", n_images=480, seed=3, sizes=(96, 112), normal_fraction=0.25, classes=DRAWN_IDS)
    convert_vinbig(
        root / "raw" / "train.csv", root / "coco", images_dir=root / "raw" / "train", size=96, n_folds=3
    )
    return root / "coco"


@pytest.fixture(scope="module")
def multilabel(coco, tmp_path_factory) -> dict:
    """``python -m adapters train`` (multilabel) then ``predict --cam ... --cam-class Calcification``."""
    from core.coco import CocoDataset

    out = tmp_path_factory.mktemp("ml_run")
    r = adapters_cli(
        "train", ML_CONFIG, "--dataset", coco / "train.json", "--out-dir", out / "run", "-v",
        "--set", f"dataset.val={coco / 'val.json'}", *(a for kv in SMALL for a in ("--set", kv)),
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    val = CocoDataset.load(coco / "val.json")
    calc = [i for i in val.image_ids if 2 in {a["category_id"] for a in val.annotations_of(i)}][:2]
    r2 = adapters_cli(
        "predict", ML_CONFIG, "--weights", out / "run" / "weights.pth", "--dataset", coco / "val.json",
        "--out", out / "preds" / "ml.json", "--cam", *calc, "--cam-class", "Calcification",
        "--set", SMALL[0],
    )  # fmt: skip
    assert r2.returncode == 0, r2.stdout + r2.stderr
    return {"out": out, "run": out / "run", "val": val, "cam_ids": calc, "log": r.stderr}


def test_multilabel_reaches_auroc_above_0_8_for_every_drawn_class_on_held_out_images(multilabel):
    from sklearn.metrics import roc_auc_score, roc_curve

    from core import roc
    from core.class_probs import read_class_probs, truth_matrix

    val = multilabel["val"]
    cp = read_class_probs(multilabel["out"] / "preds" / "ml.json", val)
    assert cp.task == "multilabel" and list(cp.image_ids) == sorted(val.image_ids)
    assert cp.classes[-1] == "No finding" and cp.category_ids[-1] == 14
    truth = truth_matrix(val, cp.image_ids.tolist(), cp.task, cp.classes, cp.category_ids)
    aucs = {}
    for name in (*DRAWN, "No finding"):
        j = cp.index(name)
        y, s = truth[:, j], cp.probs[:, j]
        assert 3 <= y.sum() <= len(y) - 3, name  # both sides represented
        aucs[name] = roc_auc_score(y, s)
        # the one ROC/AUC implementation agrees with scikit-learn's to 1e-9
        assert abs(roc.roc_auc(y, s) - aucs[name]) < 1e-9
        for ours, theirs in zip(roc.roc_curve(y, s), roc_curve(y, s), strict=True):
            np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-9)
    print("held-out AUROC", {k: round(v, 3) for k, v in aucs.items()})
    assert min(aucs.values()) > 0.8, f"{aucs}\n{multilabel['log'][-3000:]}"
    # the validation after the last epoch scored the same network on the same set
    with open(multilabel["run"] / "val_metrics.csv") as f:
        last = list(csv.DictReader(f))[-1]
    for name in DRAWN:
        assert float(last[f"auc:{name}"]) == pytest.approx(aucs[name], abs=1e-4)
    present = [j for j in range(len(cp.classes)) if 0 < truth[:, j].sum() < len(truth)]
    macro = roc_auc_score(truth[:, present], cp.probs[:, present], average="macro")
    assert float(last["auc"]) == pytest.approx(macro, abs=1e-4)


def test_multilabel_predictions_file_sidecar_checkpoint_and_cams(multilabel):
    import cv2
    import torch

    from core.class_probs import read_class_probs
    from core.predictions import read_gate, read_meta

    val, out = multilabel["val"], multilabel["out"]
    meta = read_meta(out / "preds" / "ml.json")
    assert meta["kind"] == "gate" and meta["task"] == "multilabel" and meta["adapter"] == "resnet_gate"
    cp = read_class_probs(out / "preds" / "ml.json")
    # everything that reads gate files today still does: p_abnormal = 1 - P(No finding)
    p = read_gate(out / "preds" / "ml.json", val)
    np.testing.assert_allclose([p[i] for i in cp.image_ids], 1 - cp.column("No finding"), atol=2e-6)
    ckpt = torch.load(multilabel["run"] / "weights.pth", map_location="cpu", weights_only=True)
    assert ckpt["task"] == "multilabel" and ckpt["head"] == "linear" and ckpt["classes"] == list(cp.classes)
    assert tuple(ckpt["state_dict"]["fc.weight"].shape) == (len(cp.classes), 512)
    assert not (multilabel["run"] / "checkpoints").exists()  # the resumable checkpoint goes when done
    cams = out / "preds" / "ml_cam"
    index = json.loads((cams / "cams.json").read_text())
    assert [(e["image_id"], e["class"]) for e in index] == [
        (i, "Calcification") for i in multilabel["cam_ids"]
    ]
    for e in index:
        png = cv2.imread(str(cams / e["file"]))
        assert e["file"] == f"cam_{e['image_id']}_calcification.png"
        assert png.shape[:2] == (val.image(e["image_id"])["height"], val.image(e["image_id"])["width"])
        assert e["p"] == pytest.approx(cp.prob_of(2)[e["image_id"]], abs=1e-4)


def test_grad_cam_ids_and_class_are_checked_before_any_work(multilabel, tmp_path):
    out = tmp_path / "preds" / "x.json"
    val_json = multilabel["val"].path
    base = ("predict", ML_CONFIG, "--set", SMALL[0], "--weights", multilabel["run"] / "weights.pth", "--dataset", val_json)  # fmt: skip
    r = adapters_cli(*base, "--out", out, "--cam", multilabel["cam_ids"][0], 987654, 55555)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "image ids [987654, 55555] are not in" in r.stderr and not out.exists()
    r = adapters_cli(*base, "--out", out, "--cam", multilabel["cam_ids"][0], "--cam-class", "Cardiomegalyy")
    assert r.returncode == 2 and "no class 'Cardiomegalyy'" in r.stderr and "Pleural effusion" in r.stderr
    assert not out.exists()


@pytest.fixture(scope="module")
def multiclass_sets(coco) -> tuple:
    """The images holding one lesion class or none, as a class-per-image dataset (``labels``, and the
    ``classification`` block in ``info``), train and val as in ``coco``."""
    from core.coco import CocoDataset

    root = coco  # beside the images: a dataset names only files inside its own folder
    classes = [*DRAWN, "No finding"]
    out = []
    for split in ("train", "val"):
        ds = CocoDataset.load(coco / f"{split}.json")
        names = ds.category_names
        images = []
        for im in ds.images:
            cats = {names[a["category_id"]] for a in ds.annotations_of(im["id"])}
            if len(cats) <= 1:
                images.append(
                    {
                        **im,
                        "file_name": str(ds.image_path(im["id"])),
                        "labels": sorted(cats) or ["No finding"],
                    }
                )
        d = {"info": {"classification": {"task": "multiclass", "classes": classes}}, "images": images,
             "annotations": [], "categories": ds.categories}  # fmt: skip
        # file names relative to the new file's folder (datasets name only their own images)
        for im in images:
            im["file_name"] = os.path.relpath(im["file_name"], root)
        path = root / f"mc_{split}.json"
        path.write_text(json.dumps(d))
        out.append(path)
    return tuple(out)


def test_multiclass_beats_chance_by_a_wide_margin(multiclass_sets, multilabel, tmp_path):
    from sklearn.metrics import confusion_matrix, roc_auc_score

    from adapters.config import load_config
    from adapters.gate import ImageClassifier
    from core.class_probs import read_class_probs, truth_matrix, write_class_probs
    from core.coco import CocoDataset

    train, val = (CocoDataset.load(p) for p in multiclass_sets)
    # fine-tuned from the multilabel network: its 15-way head is left out, a 4-way softmax head learns
    # (4 epochs: 2 leave the new head half-trained, e.g. 0.80 accuracy; 4 reach about 1.0)
    cfg = load_config(
        ML_CONFIG,
        [
            "options.task=multiclass", SMALL[0], "schedule.epochs=4", f"weights={multilabel['run'] / 'weights.pth'}",
            f"dataset={{train: {train.path}, val: {val.path}}}",
        ],
    )  # fmt: skip
    clf = ImageClassifier(cfg)
    clf.train(train, tmp_path / "run")
    report = json.loads((tmp_path / "run" / "weights_report.json").read_text())
    assert sorted(report["new_tensors"]) == ["fc.bias", "fc.weight"], report  # the trunk came from the file
    ids = val.image_ids
    cp = clf.class_probs(ids, list(clf.predict([val.image_path(i) for i in ids], 16)))
    assert cp.task == "multiclass" and cp.classes == (*DRAWN, "No finding")
    np.testing.assert_allclose(cp.probs.sum(axis=1), 1.0, atol=1e-6)
    write_class_probs(tmp_path / "mc.json", cp, {"name": "mc"})
    back = read_class_probs(tmp_path / "mc.json", val)
    np.testing.assert_allclose(back.probs, cp.probs, atol=5e-7)
    truth = truth_matrix(val, cp.image_ids.tolist(), "multiclass", cp.classes, cp.category_ids).argmax(axis=1)
    pred = cp.probs.argmax(axis=1)
    acc = float((pred == truth).mean())
    chance = float(np.bincount(truth).max() / len(truth))  # always answering the commonest class
    print(f"multiclass held-out accuracy {acc:.3f} (chance {chance:.3f}) on {len(truth)} images")
    print(confusion_matrix(truth, pred))
    assert acc > chance + 0.3, acc
    assert roc_auc_score(truth, cp.probs, multi_class="ovr") > 0.85


def test_backbones_build_and_grad_cam_any_class(tmp_path):
    import torch

    from adapters.gate.cam import cam_maps
    from adapters.gate.data import GateInput
    from adapters.gate.model import ARCHS, ClassHead, build_network

    assert ARCHS == ("resnet18", "resnet34", "resnet50", "densenet121", "efficientnet_b0")
    head = ClassHead("multilabel", ("a", "b", "c"), (0, 1, None))
    rng = np.random.default_rng(0)
    gray = (rng.random((40, 56)) * 255).astype(np.uint8)
    gray[10:20, 30:45] = 255
    for arch in ("resnet34", "densenet121", "efficientnet_b0"):
        torch.manual_seed(0)
        model = build_network(arch, 3).eval()
        (cam, p), (cam2, _) = cam_maps(model, arch, GateInput(64), head, [gray, gray], [2, 0])
        assert cam.shape == gray.shape and cam.dtype == np.float32 and 0 <= cam.min() and cam.max() <= 1, arch
        assert 0 <= p <= 1
        assert not np.allclose(cam, cam2) or cam.max() == 0, arch  # another class, another map


def test_class_balanced_weights():
    from adapters.gate.model import ClassHead
    from adapters.gate.train import class_weights

    truth = np.array([[1, 0, 0], [1, 0, 0], [1, 1, 0], [0, 0, 1]], np.uint8)
    loss, sample = class_weights(ClassHead("multilabel", ("a", "b", "c"), (0, 1, 2)), truth, "loss")
    np.testing.assert_allclose(loss, [1 / 3, 3.0, 3.0])  # negatives / positives
    np.testing.assert_allclose(sample, 1.0)
    _, sample = class_weights(ClassHead("multilabel", ("a", "b", "c"), (0, 1, 2)), truth, "sampler")
    np.testing.assert_allclose(sample, [1 / 3, 1 / 3, 1.0, 1.0])  # by the rarest class
    mc = np.array([[1, 0, 0], [1, 0, 0], [1, 0, 0], [0, 1, 0]], np.uint8)
    loss, _ = class_weights(ClassHead("multiclass", ("a", "b", "c"), (0, 1, 2)), mc, "loss")
    np.testing.assert_allclose(loss, [4 / 9, 4 / 3, 0.0])  # N / (k n_c); a class never seen: 0
    loss, _ = class_weights(ClassHead(), mc[:, :1], "loss")
    np.testing.assert_allclose(loss, [1 / 3])


def test_resume_continues_a_killed_training_to_the_same_weights(coco, tmp_path):
    import torch

    from adapters.base import KILL_AFTER_CHECKPOINT_ENV

    sets = [
        "--set", "image_size=48", "--set", "schedule.epochs=2",
        "--set", "schedule.batch_size=8", "--set", "schedule.log_period=0",
        "--set", f"dataset={{train: {coco / 'val.json'}}}",
    ]  # fmt: skip
    whole = adapters_cli("train", ML_CONFIG, "--out-dir", tmp_path / "whole", *sets)
    assert whole.returncode == 0, whole.stderr
    r = adapters_cli("train", ML_CONFIG, "--out-dir", tmp_path / "cut", *sets, env={KILL_AFTER_CHECKPOINT_ENV: "1"})
    assert r.returncode != 0 and (tmp_path / "cut" / "checkpoints" / "last.pth").is_file()
    assert not (tmp_path / "cut" / "weights.pth").exists()
    again = adapters_cli("train", ML_CONFIG, "--out-dir", tmp_path / "cut", *sets)
    assert again.returncode == 2 and "--resume" in again.stderr  # an unfinished run is not silently mixed
    resumed = adapters_cli("train", ML_CONFIG, "--out-dir", tmp_path / "cut", *sets, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    a = torch.load(tmp_path / "whole" / "weights.pth", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "cut" / "weights.pth", weights_only=True)["state_dict"]
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert (tmp_path / "whole" / "loss.csv").read_text() == (tmp_path / "cut" / "loss.csv").read_text()
    finished = adapters_cli("train", ML_CONFIG, "--out-dir", tmp_path / "cut", *sets)
    assert finished.returncode == 2 and "--overwrite" in finished.stderr
