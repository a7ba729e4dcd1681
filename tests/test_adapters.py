"""The three detector adapters: configs, category maps, train → save → reload → predict, on the CPU."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from adapters import ADAPTERS, build
from adapters.base import AdapterError, CategoryMap, Classifier, Detector
from adapters.config import ConfigError, load_config, parse_config
from core.coco import CocoDataset
from core.detections import Detections
from core.io import write_png
from core.predictions import read_meta, read_predictions

REPO = Path(__file__).resolve().parents[1]

TINY = {
    "ultralytics": {
        "model": "yolov8n.yaml",
        "schedule": {"epochs": 1, "batch_size": 4, "workers": 0},
        "options": {"mosaic": 0.0, "val": False},
    },
    "detectron2": {
        "model": "configs/detectron2/faster_rcnn_R_18_FPN_cpu.yaml",
        "schedule": {"iterations": 3, "batch_size": 2, "workers": 0},
    },
    "mmdet": {
        "model": "configs/mmdet/faster_rcnn_r18_fpn_cpu.py",
        "schedule": {"iterations": 3, "batch_size": 2, "workers": 0},
    },
}
DETECTORS = sorted(TINY)


def _cfg(adapter: str, tmp: Path, **extra) -> Path:
    data = {
        "name": f"tiny_{adapter}",
        "adapter": adapter,
        "image_size": 128,
        "device": "cpu",
        **TINY[adapter],
    }
    data.update(extra)
    path = tmp / f"{adapter}.yaml"
    import yaml

    path.write_text(yaml.safe_dump(data))
    return path


def square_dataset(root: Path, n: int, seed: int, w: int = 160, h: int = 128) -> Path:
    """Dark noisy images with one bright rectangle of category 7 (category 3 exists, never drawn)."""
    rng = np.random.default_rng(seed)
    images, anns = [], []
    for i in range(n):
        img = rng.normal(40, 8, (h, w)).clip(0, 255).astype(np.uint8)
        bw, bh = int(rng.integers(36, 60)), int(rng.integers(30, 50))
        x, y = int(rng.integers(4, w - bw - 4)), int(rng.integers(4, h - bh - 4))
        img[y : y + bh, x : x + bw] = 220
        write_png(root / "images" / f"sq{seed}_{i:03d}.png", img)
        images.append({"id": i, "file_name": f"images/sq{seed}_{i:03d}.png", "width": w, "height": h})
        bbox = [float(x), float(y), float(bw), float(bh)]
        anns.append(
            {"id": i + 1, "image_id": i, "category_id": 7, "bbox": bbox, "area": bw * bh, "iscrowd": 0}
        )
    cats = [{"id": 3, "name": "never drawn"}, {"id": 7, "name": "square"}]
    return CocoDataset(images, anns, cats, root=root).write(root / "ds.json")


@pytest.fixture(scope="module")
def squares(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("squares")
    return square_dataset(root / "train", 12, 0), square_dataset(root / "test", 3, 1)


# ---------------------------------------------------------------------------- configs


def test_shipped_configs_validate_and_name_their_native_files():
    paths = sorted((REPO / "configs").glob("*.yaml")) + sorted((REPO / "configs" / "cpu").glob("*.yaml"))
    adapters = set()
    for p in paths:
        cfg = load_config(p)
        adapters.add(cfg.adapter)
        if cfg.adapter in ("detectron2", "mmdet"):
            assert cfg.model_path().is_file()
    assert {"ultralytics", "detectron2", "mmdet"} <= adapters
    names = {load_config(p).name for p in paths}
    assert {"yolov8n", "yolov8s", "yolov5nu", "faster_rcnn_r50_fpn_d2", "faster_rcnn_r50_fpn_mmdet"} <= names


@pytest.mark.parametrize(
    "data, message",
    [
        ({"adapter": "ultralytics", "model": "m.yaml", "lr": 0.1}, "unknown key 'lr'"),
        ({"adapter": "ultralytics", "model": "m.yaml", "schedule": {"epoch": 3}}, "schedule.epoch"),
        ({"adapter": "ultralytics", "model": "m.yaml", "image_size": "big"}, "image_size must be int"),
        (
            {"adapter": "ultralytics", "model": "m.yaml", "schedule": {"batch_size": 0}},
            "batch_size must be >= 1",
        ),
        ({"adapter": "yolo", "model": "m.yaml"}, "adapter 'yolo' is not one of"),
        ({"model": "m.yaml"}, "missing required key 'adapter'"),
        ({"adapter": "mmdet", "model": "m.py", "dataset": {"test": "x.json"}}, "dataset.test"),
    ],
)
def test_bad_configs_name_the_key(data, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        parse_config(data, Path("configs/x.yaml"))


def test_set_overrides_are_parsed_as_yaml_and_validated():
    base = {"adapter": "mmdet", "model": "m.py"}
    cfg = parse_config(base, None, ["schedule.iterations=7", "predict.score_thr=0.05", "device=cpu"])
    assert cfg.schedule.iterations == 7 and cfg.predict.score_thr == 0.05 and cfg.device == "cpu"
    with pytest.raises(ConfigError, match="schedule.iterations must be int"):
        parse_config(base, None, ["schedule.iterations=many"])


def test_category_map_round_trips_sparse_ids():
    cats = CategoryMap((0, 3, 8, 10), ("a", "b", "c", "d"))
    ids = np.array([10, 0, 8, 3, 3])
    assert cats.index(ids).tolist() == [3, 0, 2, 1, 1]
    assert cats.category(cats.index(ids)).tolist() == ids.tolist()
    with pytest.raises(AdapterError, match="category id 5"):
        cats.index(np.array([5]))
    with pytest.raises(AdapterError, match="outside 0..3"):
        cats.category(np.array([4]))
    assert CategoryMap.from_json(cats.to_json()) == cats


def test_importing_adapters_loads_no_framework():
    code = (
        "import sys, adapters, adapters.base, adapters.config, adapters.__main__\n"
        "assert 'adapters.api' not in sys.modules  # the verbs load on first use\n"
        "adapters.train, adapters.predict\n"
        "heavy = [m for m in ('torch', 'ultralytics', 'detectron2', 'mmdet', 'mmcv', 'mmengine', 'torchvision')"
        " if m in sys.modules]\nprint(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_library_verbs_are_the_api_functions_and_errors_are_user_errors():
    import adapters
    import adapters.api
    from core.errors import UserError

    assert adapters.train is adapters.api.train and adapters.predict is adapters.api.predict
    assert issubclass(AdapterError, UserError) and issubclass(ConfigError, UserError)
    with pytest.raises(AttributeError):
        adapters.fit  # noqa: B018


def test_each_adapter_module_imports_only_its_own_framework():
    others = {"ultralytics": "ultralytics", "detectron2": "detectron2", "mmdet": "mmdet"}
    for name in DETECTORS:
        code = f"import sys; from adapters import adapter_class; adapter_class({name!r}); print(sorted(sys.modules))"
        out = subprocess.run(
            [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
        )
        loaded = set(out.stdout.strip().strip("[]").replace("'", "").split(", "))
        for other, module in others.items():
            if other != name:
                assert module not in loaded, f"adapters.{name} imported {module}"


# ---------------------------------------------------------------------------- train / predict


@pytest.fixture(scope="module", params=DETECTORS)
def trained(request, squares, tmp_path_factory):
    """Each adapter trained a few iterations through the CLI, and the run directory."""
    from adapters.__main__ import main

    tmp = tmp_path_factory.mktemp(f"run_{request.param}")
    cfg = _cfg(request.param, tmp)
    train_json, _ = squares
    assert main(["train", str(cfg), "--dataset", str(train_json), "--out-dir", str(tmp / "run")]) == 0
    return request.param, cfg, tmp / "run"


def test_train_writes_weights_config_and_loss_log(trained):
    adapter, cfg, run = trained
    weights = sorted(run.glob("weights.p*"))
    assert len(weights) == 1 and weights[0].stat().st_size > 100_000
    import torch

    ckpt = torch.load(weights[0], map_location="cpu", weights_only=True)  # tensors and plain data only
    assert ckpt["framework"] == adapter and [c["id"] for c in ckpt["cxrfuse_categories"]] == [3, 7]
    assert not (run / "weights_report.json").exists()  # trained from scratch
    saved = load_config(run / "config.yaml")
    assert saved.adapter == adapter and saved.out_dir == str(run.resolve())  # the folder really used
    assert Path(saved.dataset["train"]).is_absolute() and (run / "train.log").is_file()
    assert [c["id"] for c in json.loads((run / "categories.json").read_text())] == [3, 7]
    with open(run / "loss.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows and list(rows[0])[:3] == ["step", "epoch", "loss"]
    assert [int(r["step"]) for r in rows] == list(range(1, len(rows) + 1))
    assert all(np.isfinite(float(r["loss"])) and float(r["loss"]) > 0 for r in rows)
    assert not list(run.glob("*.part"))


def test_reload_and_predict_in_the_dataset_frame(trained, squares):
    adapter, cfg, run = trained
    _, test_json = squares
    test = CocoDataset.load(test_json)
    det = build(load_config(cfg, ["predict.score_thr=0.0"]), next(run.glob("weights.p*")))
    assert isinstance(det, Detector) and not isinstance(det, Classifier)
    det.check_categories(test)
    paths = [test.image_path(i) for i in test.image_ids]
    arrays = [np.full((20, 30), 50, np.uint8)]  # a small gray array works too
    outs = list(det.predict([*paths, *arrays], batch_size=2))
    assert len(outs) == len(paths) + 1
    for d, (w, h) in zip(outs, [(160, 128)] * len(paths) + [(30, 20)], strict=True):
        assert isinstance(d, Detections)
        assert d.boxes.dtype == np.float32 and d.labels.dtype == np.int64
        if len(d):
            assert set(d.labels.tolist()) <= {3, 7}
            assert (d.boxes[:, 0] >= 0).all() and (d.boxes[:, 2] <= w).all() and (d.boxes[:, 3] <= h).all()
            assert (np.diff(d.scores) <= 0).all()


def test_predict_cli_writes_results_and_sidecar(trained, squares, tmp_path):
    from adapters.__main__ import main

    adapter, cfg, run = trained
    _, test_json = squares
    out = tmp_path / "preds" / f"{adapter}.json"
    weights = next(run.glob("weights.p*"))
    rc = main(
        ["predict", str(cfg), "--weights", str(weights), "--dataset", str(test_json), "--out", str(out)]
    )
    assert rc == 0
    dets = read_predictions(out, CocoDataset.load(test_json))
    assert set(dets) == {0, 1, 2}
    meta = read_meta(out)
    assert meta["kind"] == "detector" and meta["adapter"] == adapter and meta["images"] == 3
    assert meta["weights"] == str(weights) and meta["images_per_second"] > 0


def test_weights_for_other_classes_are_refused(trained, squares, tmp_path):
    adapter, cfg, run = trained
    train_json, _ = squares
    ds = CocoDataset.load(train_json)
    other = CocoDataset(
        ds.images, [], [{"id": 3, "name": "never drawn"}, {"id": 9, "name": "circle"}], root=ds.root
    ).write(tmp_path / "other.json")
    det = build(load_config(cfg), next(run.glob("weights.p*")))
    with pytest.raises(AdapterError, match="trained for classes"):
        det.check_categories(CocoDataset.load(other))


def test_weights_for_another_model_or_image_size_are_refused_naming_both(trained, squares, tmp_path, capsys):
    from adapters.__main__ import main

    adapter, cfg, run = trained
    _, test_json = squares
    weights = next(run.glob("weights.p*"))
    other = {
        "ultralytics": "yolov8s.yaml",
        "detectron2": "configs/detectron2/faster_rcnn_R_50_FPN.yaml",
        "mmdet": "configs/mmdet/faster_rcnn_r50_fpn.py",
    }[adapter]
    out = tmp_path / "p.json"
    argv = ["predict", str(cfg), "--weights", str(weights), "--dataset", str(test_json), "--out", str(out)]
    assert main([*argv, "--set", f"model={other}"]) == 2
    err = capsys.readouterr().err
    trained_as = Path(TINY[adapter]["model"]).name
    assert f"trained as {trained_as}, but {cfg.resolve()} is {Path(other).name}" in err, err
    assert main([*argv, "--set", "image_size=256"]) == 2
    assert "trained at image_size 128, but" in capsys.readouterr().err and not out.exists()
    # and as start weights of a training, before the run folder is made
    argv = ["train", str(cfg), "--dataset", str(test_json), "--out-dir", str(tmp_path / "r")]
    assert main([*argv, "--set", f"weights={weights}", "--set", "image_size=256"]) == 2
    assert "trained at image_size 128" in capsys.readouterr().err and not (tmp_path / "r").exists()


def test_missing_or_foreign_weights_are_clear_errors(trained, tmp_path):
    adapter, cfg, _ = trained
    with pytest.raises(AdapterError, match="not found"):
        build(load_config(cfg), tmp_path / "nope.pth").check_categories(None)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(AdapterError, match="not a readable torch checkpoint"):
        build(load_config(cfg), junk).check_categories(None)


def test_cli_errors_exit_2_with_a_message(tmp_path, capsys):
    from adapters.__main__ import main

    bad = tmp_path / "bad.yaml"
    bad.write_text("adapter: ultralytics\nmodel: yolov8n.yaml\nschedule: {epochs: two}\n")
    assert main(["train", str(bad), "--dataset", "x.json"]) == 2
    assert "schedule.epochs must be int" in capsys.readouterr().err
    assert ADAPTERS  # registry is populated


def test_adapter_error_is_exit_2_and_one_line_unless_debug(tmp_path, capsys):
    """An AdapterError (here: weights that do not exist) ends like every user error of every CLI."""
    from adapters.__main__ import main

    ds = square_dataset(tmp_path, 1, 0)
    missing = tmp_path / "nope.pth"
    gate_cfg = REPO / "configs" / "cpu" / "gate_resnet18.yaml"
    out = tmp_path / "g.json"
    argv = ["predict", str(gate_cfg), "--weights", str(missing), "--dataset", str(ds), "--out", str(out)]
    message = f"error: {missing}: weights file not found (nothing is downloaded: pass a local file)"
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.splitlines() == [message]
    assert main([*argv, "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "adapters.errors.AdapterError" in err
    assert err.splitlines()[-1] == message
    assert not out.exists()


def test_grad_cam_of_a_detector_is_refused_before_predicting(squares, tmp_path, capsys):
    from adapters.__main__ import main

    _, test_json = squares
    cfg = _cfg("mmdet", tmp_path)
    argv = ["predict", str(cfg), "--weights", str(tmp_path / "w.pth"), "--dataset", str(test_json)]
    assert main([*argv, "--out", str(tmp_path / "p.json"), "--cam", "0"]) == 2
    err = capsys.readouterr().err
    assert err == "error: Grad-CAM (--cam) is for a gate (resnet_gate) config, not mmdet\n"


# ---------------------------------------------------------------------------- the same pixel frame

LEARN = {
    "ultralytics": {
        "schedule": {"epochs": 25, "batch_size": 8, "lr": 0.005, "workers": 0},
        "options": {"mosaic": 0.0, "val": False, "optimizer": "AdamW"},
    },
    "detectron2": {
        "schedule": {"iterations": 60, "batch_size": 4, "lr": 0.01, "warmup_iters": 10, "workers": 0}
    },
    "mmdet": {"schedule": {"iterations": 60, "batch_size": 4, "lr": 0.02, "warmup_iters": 10, "workers": 0}},
}


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@pytest.mark.slow
@pytest.mark.parametrize("adapter", DETECTORS)
def test_all_adapters_find_an_unmistakable_object_in_the_same_pixel_frame(adapter, tmp_path):
    """After a short training, each adapter's top box on held-out non-square images overlaps the truth."""
    train_json = square_dataset(tmp_path / "train", 48 if adapter == "ultralytics" else 24, 0)
    test_json = square_dataset(tmp_path / "test", 3, 1)
    cfg = load_config(_cfg(adapter, tmp_path, **LEARN[adapter], image_size=160))
    det = build(cfg)
    weights = det.train(CocoDataset.load(train_json), tmp_path / "run")
    det = build(cfg, weights)  # reloaded from disk
    test = CocoDataset.load(test_json)
    outs = list(det.predict([test.image_path(i) for i in test.image_ids], batch_size=3))
    for iid, d in zip(test.image_ids, outs, strict=True):
        truth = test.ground_truth(iid).boxes[0]
        assert len(d), f"{adapter}: no box on image {iid}"
        assert int(d.labels[0]) == 7
        assert _iou(d.boxes[0], truth) > 0.3, (adapter, d.boxes[0], truth)


def test_yolov5u_checkpoint_reloads_and_predicts(squares, tmp_path):
    """Ultralytics' scaled names (yolov5nu.yaml → its unified yolov5u.yaml) rebuild from a CXRFuse checkpoint."""
    from adapters.__main__ import main

    cfg = _cfg("ultralytics", tmp_path, model="yolov5nu.yaml")
    train_json, test_json = squares
    assert main(["train", str(cfg), "--dataset", str(train_json), "--out-dir", str(tmp_path / "run")]) == 0
    out = tmp_path / "preds.json"
    weights = tmp_path / "run" / "weights.pt"
    assert main(["predict", str(cfg), "--weights", str(weights), "--dataset", str(test_json), "--out", str(out)]) == 0
    assert read_meta(out)["model"] == "yolov5nu.yaml"
    assert set(read_predictions(out, CocoDataset.load(test_json))) == {0, 1, 2}
