"""The ResNet gate (adapters.gate, registered as resnet_gate): trains on synthetic data, separates
normal from abnormal held-out images, writes gate files and Grad-CAM overlays, refuses wrong inputs.

One CLI training run (module fixture) serves the AUC, file and Grad-CAM tests. Torch runs on
one thread: on a shared 2-core machine two threads are many times slower when the other core
is busy.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from tests.adapters_cli import adapters_cli, one_torch_thread  # noqa: F401 (a fixture)
from tests.conftest_paths import REPO

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CPU_CONFIG = REPO / "configs" / "cpu" / "gate_resnet18.yaml"
#: the test's schedule: 64 training images, 96 px, 4 epochs of 8 steps
TEST_SET = ["image_size=96", "schedule.epochs=4", "schedule.batch_size=8", "schedule.log_period=8"]


@pytest.fixture(scope="module")
def coco(tmp_path_factory) -> Path:
    """96 synthetic VinBigData images (half normal) → COCO at 128 px, 64 train / 32 val."""
    from convert.synth import make_vinbig
    from convert.vinbig import convert_vinbig

    root = tmp_path_factory.mktemp("gate_data")
    make_vinbig(root / "raw", n_images=96, seed=1, sizes=(96, 128), normal_fraction=0.5)
    convert_vinbig(
        root / "raw" / "train.csv", root / "coco", images_dir=root / "raw" / "train", size=128, n_folds=3
    )
    return root / "coco"


@pytest.fixture(scope="module")
def run(coco, tmp_path_factory) -> dict:
    """``python -m adapters train`` then ``predict --cam`` on the held-out images."""
    from core.coco import CocoDataset

    out = tmp_path_factory.mktemp("gate_run")
    r = adapters_cli(
        "train", CPU_CONFIG, "--dataset", coco / "train.json", "--out-dir", out / "run", "-v",
        "--set", f"dataset.val={coco / 'val.json'}", *(a for kv in TEST_SET for a in ("--set", kv)),
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    # the library logs its progress (shown with -v, on stderr); the CLI prints the result
    assert "step 8/32 epoch 1" in r.stderr and "val epoch 4: AUC" in r.stderr, r.stderr
    assert r.stdout.startswith(f"wrote {out / 'run' / 'weights.pth'} in "), r.stdout
    val = CocoDataset.load(coco / "val.json")
    normal = next(i for i in val.image_ids if val.is_normal(i))
    abnormal = next(i for i in val.image_ids if not val.is_normal(i))
    r2 = adapters_cli(
        "predict", CPU_CONFIG, "--weights", out / "run" / "weights.pth", "--dataset", coco / "val.json",
        "--out", out / "preds" / "gate.json", "--cam", normal, abnormal,
    )  # fmt: skip
    assert r2.returncode == 0, r2.stdout + r2.stderr
    assert f"wrote {out / 'preds' / 'gate.json'} ({len(val.images)} images" in r2.stdout
    assert f"Grad-CAM overlays: 2 in {out / 'preds' / 'gate_cam'}" in r2.stdout
    return {"out": out, "run": out / "run", "val": val, "cam_ids": [normal, abnormal], "train_log": r.stderr}


def test_gate_separates_normal_from_abnormal_on_held_out_images(run):
    from sklearn.metrics import roc_auc_score

    from core.predictions import read_gate
    from core.roc import roc_auc

    val = run["val"]
    p = read_gate(run["out"] / "preds" / "gate.json", val)
    assert sorted(p) == sorted(val.image_ids)
    truth = np.array([0 if val.is_normal(i) else 1 for i in val.image_ids])
    assert 5 < truth.sum() < len(truth) - 5  # both classes well represented
    scores = np.array([p[i] for i in val.image_ids])
    auc = roc_auc_score(truth, scores)
    print(f"held-out AUC {auc:.4f} on {len(truth)} images")
    assert auc > 0.8, f"held-out AUC {auc:.3f}\n{run['train_log']}"
    assert roc_auc(truth, scores) == pytest.approx(auc, abs=1e-12)
    assert float(((scores >= 0.5) == truth.astype(bool)).mean()) > 0.7
    # validation after the last epoch scored the same network on the same set
    with open(run["run"] / "val_metrics.csv") as f:
        last = list(csv.DictReader(f))[-1]
    assert float(last["auc"]) == pytest.approx(auc, abs=1e-6)
    assert float(last["accuracy"]) == pytest.approx(float(((scores >= 0.5) == truth).mean()), abs=1e-6)


def test_train_writes_checkpoint_loss_log_and_val_metrics(run):
    import torch

    d = run["run"]
    assert not list(d.glob("*.part")) and not list(d.glob(".*.part"))
    ckpt = torch.load(d / "weights.pth", map_location="cpu", weights_only=True)  # plain data only
    assert ckpt["kind"] == "gate" and ckpt["arch"] == "resnet18" and ckpt["head"] == "single_logit"
    assert ckpt["image_size"] == 96 and ckpt["resize"] == "stretch"
    assert len(ckpt["mean"]) == 3 and len(ckpt["std"]) == 3
    assert tuple(ckpt["state_dict"]["fc.weight"].shape) == (1, 512)
    with open(d / "loss.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["step", "epoch", "loss", "loss_bce"]
    assert [int(r["step"]) for r in rows] == list(range(1, 33))  # 64 images / 8 x 4 epochs
    assert {int(r["epoch"]) for r in rows} == {1, 2, 3, 4}
    losses = np.array([float(r["loss"]) for r in rows])
    assert np.isfinite(losses).all() and losses[-8:].mean() < losses[:8].mean()
    with open(d / "val_metrics.csv") as f:
        val_rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in val_rows] == [1, 2, 3, 4]
    assert all(int(r["images"]) == len(run["val"].images) for r in val_rows)
    assert (d / "config.yaml").is_file()


def test_predict_writes_gate_sidecar_and_grad_cam_overlays(run):
    import cv2

    from core.predictions import read_meta

    meta = read_meta(run["out"] / "preds" / "gate.json")
    assert meta["kind"] == "gate" and meta["adapter"] == "resnet_gate" and meta["model"] == "resnet18"
    assert meta["images"] == len(run["val"].images)
    cam_dir = run["out"] / "preds" / "gate_cam"
    assert meta["task"] == "binary" and meta["classes"] == ["abnormal"] and meta["category_ids"] == [None]
    assert sorted(p.name for p in cam_dir.iterdir()) == sorted([*(f"cam_{i}.png" for i in run["cam_ids"]), "cams.json"])
    index = json.loads((cam_dir / "cams.json").read_text())
    assert [(e["image_id"], e["class"], e["file"]) for e in index] == [
        (i, "abnormal", f"cam_{i}.png") for i in run["cam_ids"]
    ]
    for iid in run["cam_ids"]:
        im = run["val"].image(iid)
        png = cv2.imread(str(cam_dir / f"cam_{iid}.png"), cv2.IMREAD_UNCHANGED)
        assert png.shape == (im["height"], im["width"], 3)
        gray = cv2.imread(str(run["val"].image_path(iid)), cv2.IMREAD_GRAYSCALE).astype(int)
        assert np.corrcoef(png.mean(axis=2).ravel(), gray.ravel())[0, 1] > 0.5  # the X-ray shows through
    abnormal = cv2.imread(str(cam_dir / f"cam_{run['cam_ids'][1]}.png")).astype(int)
    assert (np.abs(abnormal[:, :, 0] - abnormal[:, :, 2]) > 30).mean() > 0.05, (
        "no heat map on the abnormal image"
    )


def test_overlay_keeps_the_xray_where_the_map_is_zero():
    from adapters.gate import overlay

    gray = np.tile(np.arange(0, 250, 5, dtype=np.uint8), (40, 1))  # (40, 50)
    cam = np.zeros(gray.shape, np.float32)
    cam[:, 25:] = 1.0
    out = overlay(gray, cam)
    assert out.shape == (40, 50, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[:, :25], np.repeat(gray[:, :25, None], 3, axis=2))
    assert (out[:, 25:, 2].astype(int) - out[:, 25:, 0] > 20).all()  # JET's top end is red
    assert not np.array_equal(overlay(gray, cam * 0, p_abnormal=0.5), overlay(gray, cam * 0))  # the score


def test_python_api_arrays_paths_and_batches_agree(run):
    import cv2

    from adapters import build
    from adapters.base import AdapterError, Classifier
    from adapters.config import load_config

    gate = build(load_config(CPU_CONFIG), run["run"] / "weights.pth")
    assert isinstance(gate, Classifier)
    val = run["val"]
    paths = [val.image_path(i) for i in val.image_ids[:9]]
    by_path = np.array(list(gate.predict(paths, 4)))
    grays = [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in paths]
    by_gray = np.array(list(gate.predict(grays, 1)))
    by_bgr = np.array(list(gate.predict([cv2.cvtColor(g, cv2.COLOR_GRAY2BGR) for g in grays], 9)))
    assert len(by_path) == 9 and ((by_path >= 0) & (by_path <= 1)).all()
    np.testing.assert_allclose(by_gray, by_path, atol=1e-5)
    np.testing.assert_allclose(by_bgr, by_path, atol=1e-5)
    with pytest.raises(AdapterError, match=r"image ids \[987654\] are not in"):
        gate.grad_cam(val, [val.image_ids[0], 987654], run["out"] / "cam_bad")


def test_predict_is_one_pure_function_of_network_and_input(run):
    """predict and the validation during training share predict_p_abnormal(model, spec, images, bs)."""
    from adapters import build
    from adapters.config import load_config
    from adapters.gate import GateInput, predict_p_abnormal
    from adapters.gate.model import load_gate

    model, spec = load_gate(run["run"] / "weights.pth", "resnet18", "cpu")
    assert spec == GateInput(96, "stretch") and not model.training
    val = run["val"]
    paths = [val.image_path(i) for i in val.image_ids[:6]]
    direct = np.array(list(predict_p_abnormal(model, spec, paths, 4)))
    gate = build(load_config(CPU_CONFIG), run["run"] / "weights.pth")
    np.testing.assert_allclose(np.array(list(gate.predict(paths, 4))), direct, atol=1e-6)
    assert list(predict_p_abnormal(model, spec, [], 4)) == []


def test_seeded_training_repeats_and_starts_from_imagenet_weights(coco, tmp_path):
    import torch
    import torchvision

    from adapters.config import load_config
    from adapters.gate import ResNetGate
    from core.coco import CocoDataset

    imagenet = tmp_path / "resnet18_imagenet.pth"  # the shape of torchvision's file (1000-class head)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), imagenet)
    ds = CocoDataset.load(coco / "train.json")
    sets = [
        "image_size=64", "schedule.iterations=3", "schedule.batch_size=4", "schedule.seed=7", "schedule.log_period=0",
        f"weights={imagenet}", "options={balance: sampler, resize: letterbox, optimizer: sgd}",
        f"dataset={{train: {coco / 'train.json'}}}",
    ]  # fmt: skip
    states, logs = [], []
    for k in range(2):
        out = tmp_path / f"run{k}"
        gate = ResNetGate(load_config(CPU_CONFIG, sets))
        weights = gate.train(ds, out)
        states.append(torch.load(weights, map_location="cpu", weights_only=True))
        logs.append((out / "loss.csv").read_text())
    # the trained adapter predicts with its network in memory, as the file does
    paths = [ds.image_path(i) for i in ds.image_ids[:4]]
    reloaded = ResNetGate(load_config(CPU_CONFIG), weights)
    np.testing.assert_allclose(list(gate.predict(paths, 2)), list(reloaded.predict(paths, 2)), atol=1e-6)
    assert logs[0] == logs[1] and len(logs[0].splitlines()) == 4
    assert states[0]["resize"] == "letterbox" and states[0]["image_size"] == 64
    for key, value in states[0]["state_dict"].items():
        assert torch.equal(value, states[1]["state_dict"][key]), key
    # the trunk started from the file, the single-logit head is new
    start = torch.load(imagenet, weights_only=True)["conv1.weight"]
    trained = states[0]["state_dict"]["conv1.weight"]
    assert not torch.equal(start, trained) and (trained - start).abs().max() < 0.1 * start.abs().max()
    assert tuple(states[0]["state_dict"]["fc.weight"].shape) == (1, 512)
    import json

    report = json.loads((tmp_path / "run0" / "weights_report.json").read_text())
    assert report["weights"] == str(imagenet) and report["new_tensors"] == ["fc.weight", "fc.bias"]
    assert report["skipped_tensors"] == ["fc.weight", "fc.bias"]  # the 1000-class head
    assert report["loaded"] == len(states[0]["state_dict"]) - 2
    # Grad-CAM maps a letterboxed input back onto the whole image
    gate = ResNetGate(load_config(CPU_CONFIG), tmp_path / "run0" / "weights.pth")
    iid = ds.image_ids[0]
    (png,) = gate.grad_cam(ds, [iid], tmp_path / "cam")
    import cv2

    assert cv2.imread(str(png)).shape == (ds.image(iid)["height"], ds.image(iid)["width"], 3)


def test_wrong_architecture_is_a_clear_error(coco, tmp_path):
    from adapters.base import AdapterError
    from adapters.config import load_config
    from adapters.gate import ResNetGate

    with pytest.raises(AdapterError, match=r"resnet101.*resnet18, resnet34, resnet50"):
        ResNetGate(load_config(CPU_CONFIG, ["model=resnet101"]))
    r = adapters_cli(
        "train", CPU_CONFIG, "--dataset", coco / "train.json", "--out-dir", tmp_path, "--set", "model=vgg16"
    )
    assert r.returncode == 2
    assert (
        "gate_resnet18.yaml" in r.stderr
        and "'vgg16'" in r.stderr
        and "resnet18, resnet34, resnet50" in r.stderr
    )
    with pytest.raises(AdapterError, match="unknown option 'balanse'"):
        ResNetGate(load_config(CPU_CONFIG, ["options={balanse: loss}"]))


def test_checkpoint_of_another_arch_or_a_detector_is_refused(run, coco, tmp_path):
    import torch

    from adapters.base import AdapterError
    from adapters.config import load_config
    from adapters.gate import ResNetGate
    from core.coco import CocoDataset

    val = CocoDataset.load(coco / "val.json")
    gate34 = ResNetGate(load_config(CPU_CONFIG, ["model=resnet34"]), run["run"] / "weights.pth")
    with pytest.raises(AdapterError, match="a resnet18 gate, but .* says model: resnet34"):
        gate34.check_categories(val)
    # a detector's checkpoint, as adapters/detectron2.py writes it
    det = tmp_path / "weights.pth"
    torch.save(
        {
            "model": {"backbone.conv1.weight": torch.zeros(2, 3, 1, 1)},
            "cxrfuse_categories": [{"id": 0, "name": "Aortic enlargement"}],
            "framework": "detectron2",
        },
        det,
    )
    r = adapters_cli(
        "predict", CPU_CONFIG, "--weights", det, "--dataset", coco / "val.json", "--out", tmp_path / "g.json"
    )
    assert r.returncode == 2, r.stdout + r.stderr
    assert str(det) in r.stderr and "a detectron2 detector checkpoint (1 category), not a gate" in r.stderr
    assert not (tmp_path / "g.json").exists()
    starting = ResNetGate(
        load_config(CPU_CONFIG, [f"weights={det}", f"dataset={{train: {coco / 'train.json'}}}"])
    )
    with pytest.raises(AdapterError, match="detector checkpoint"):
        starting.train(CocoDataset.load(coco / "train.json"), tmp_path / "run")
    with pytest.raises(AdapterError, match="predict needs weights"):
        list(ResNetGate(load_config(CPU_CONFIG)).predict([val.image_path(val.image_ids[0])], 1))
