"""A weights file can never run code (issue #13), and public pretrained weights start a training.

A crafted pickle that creates a marker file when unpickled, saved as ``.pt``, ``.pth`` and
``.pkl``, is given to every command (``predict --weights`` and ``train`` with ``weights:``) of
every adapter: none creates the marker, each exits 2 with one line naming the file, and only
``--trust-weights`` makes the full unpickle happen (the marker appears). Checkpoints made for
80 COCO classes in each framework's own format start a 15-class training: the classification
head starts new, every other tensor is loaded, and the run says how many were loaded and skipped.
"""

from __future__ import annotations

import json
import pathlib
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from adapters.base import AdapterError
from adapters.weights import (
    PickledObjectsError,
    load_checkpoint_safe,
    load_pickle_numpy_safe,
    load_trusted,
    load_weights,
    pickled_objects,
)
from core.coco import CocoDataset
from tests.test_adapters import TINY, square_dataset

REPO = Path(__file__).resolve().parents[1]
ADAPTERS = ["ultralytics", "detectron2", "mmdet", "resnet_gate"]
SUFFIXES = [".pt", ".pth", ".pkl"]


class _Touch:
    """Unpickling this creates the file ``path``: what a crafted weights file could do instead."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.path),))


def crafted(path: Path, marker: Path) -> Path:
    """A weights file shaped like a checkpoint whose unpickling creates ``marker``."""
    import torch

    payload = {"model": _Touch(marker), "__author__": "someone"}
    if path.suffix == ".pkl":  # as Detectron2's model-zoo files: a plain pickle, protocol 2
        with open(path, "wb") as f:
            pickle.dump(payload, f, protocol=2)
    else:
        torch.save(payload, path)
    return path


def config(adapter: str, tmp: Path, **extra) -> Path:
    """A tiny CPU config of ``adapter`` (the gate: resnet18 at 64 px)."""
    if adapter == "resnet_gate":
        base = {"model": "resnet18", "schedule": {"iterations": 1, "batch_size": 2, "workers": 0}}
    else:
        base = TINY[adapter]
    data = {"name": f"safe_{adapter}", "adapter": adapter, "image_size": 64, "device": "cpu", **base, **extra}
    path = tmp / f"{adapter}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Four square images (one without annotations, so the gate has a normal image too)."""
    root = tmp_path_factory.mktemp("safe_data")
    ds = CocoDataset.load(square_dataset(root, 4, 0, w=96, h=80))
    anns = [a for a in ds.annotations if a["image_id"] != 3]
    return CocoDataset(ds.images, anns, ds.categories, root=root).write(root / "ds.json")


@pytest.fixture(scope="module")
def fifteen(tmp_path_factory) -> Path:
    """Four images of a 15-class dataset (ids 0..14), for trainings from 80-class weights."""
    root = tmp_path_factory.mktemp("fifteen")
    ds = CocoDataset.load(square_dataset(root, 4, 2, w=96, h=80))
    anns = [{**a, "category_id": (3 * a["image_id"]) % 15} for a in ds.annotations]
    cats = [{"id": i, "name": f"class {i}"} for i in range(15)]
    return CocoDataset(ds.images, anns, cats, root=root).write(root / "ds15.json")


def _run(argv: list, capsys) -> tuple[int, str, str]:
    from adapters.__main__ import main

    rc = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


# ---------------------------------------------------------------------------- the loaders


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_loaders_refuse_a_crafted_pickle_unless_trusted(suffix, tmp_path):
    marker = tmp_path / "marker"
    evil = crafted(tmp_path / f"evil{suffix}", marker)
    with pytest.raises(PickledObjectsError) as e:
        load_weights(evil)
    assert not marker.exists()
    message = str(e.value)
    assert message.startswith(f"{evil}: refused: the file pickles Python objects (")
    assert "pathlib" in message and "run code" in message and "--trust-weights" in message
    assert "\n" not in message
    safe = load_pickle_numpy_safe if suffix == ".pkl" else load_checkpoint_safe
    with pytest.raises(PickledObjectsError):
        safe(evil)
    with pytest.raises(PickledObjectsError):
        load_trusted(evil, trust=False)
    assert not marker.exists()
    assert any("pathlib" in name for name in pickled_objects(evil))  # read without unpickling
    assert not marker.exists()
    loaded = load_weights(evil, trust=True)  # the full unpickle runs the file's code
    assert marker.exists() and loaded["model"] is None


def test_numpy_pickles_load_without_a_full_unpickle(tmp_path):
    """Detectron2 / Caffe2 ``.pkl`` files: numpy arrays, scalars and plain containers, numpy 1 or 2 names."""
    from collections import OrderedDict

    arrays = OrderedDict(
        [("conv1.weight", np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2)), ("fc.bias", np.zeros(3))]
    )
    payload = {"model": arrays, "__author__": "Detectron2 Model Zoo", "scale": np.float64(0.5), "ids": [1, (2, 3)]}
    paths = []
    for proto in (2, 4):
        paths.append(tmp_path / f"zoo{proto}.pkl")
        paths[-1].write_bytes(pickle.dumps(payload, protocol=proto))
    old = tmp_path / "zoo_numpy1.pkl"  # protocol 2 as numpy 1 names its functions
    old.write_bytes(paths[0].read_bytes().replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    assert b"numpy.core.multiarray\n_reconstruct" in old.read_bytes()
    for p in (*paths, old):
        got = load_weights(p)
        assert got["__author__"] == "Detectron2 Model Zoo" and got["ids"] == [1, (2, 3)]
        assert float(got["scale"]) == 0.5 and isinstance(got["model"], OrderedDict)
        np.testing.assert_array_equal(got["model"]["conv1.weight"], arrays["conv1.weight"])
        assert got["model"]["fc.bias"].dtype == np.float64
        assert pickled_objects(p) == []
    # an object array whose element would run code is refused all the same
    marker = tmp_path / "marker"
    sneaky = tmp_path / "sneaky.pkl"
    sneaky.write_bytes(pickle.dumps({"model": {"w": np.array([_Touch(marker)], dtype=object)}}, protocol=2))
    with pytest.raises(PickledObjectsError, match="pathlib"):
        load_weights(sneaky)
    assert not marker.exists()


def test_torch_checkpoints_load_tensors_numpy_and_plain_data(tmp_path):
    import torch

    path = tmp_path / "ckpt.pth"
    torch.save({"state_dict": {"w": torch.ones(2)}, "meta": {"epoch": 3, "mean": np.array([1.0, 2.0])}}, path)
    got = load_checkpoint_safe(path)
    assert torch.equal(got["state_dict"]["w"], torch.ones(2)) and got["meta"]["epoch"] == 3
    np.testing.assert_array_equal(got["meta"]["mean"], [1.0, 2.0])
    legacy = tmp_path / "legacy.pth"
    torch.save({"w": torch.zeros(3)}, legacy, _use_new_zipfile_serialization=False)
    assert torch.equal(load_weights(legacy)["w"], torch.zeros(3))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(AdapterError, match="not a readable torch checkpoint") as e:
        load_weights(junk, trust=True)
    assert not isinstance(e.value, PickledObjectsError)
    with pytest.raises(AdapterError, match="weights file not found"):
        load_weights(tmp_path / "nope.pt", trust=True)


# ---------------------------------------------------------------------------- every command


@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize("adapter", ADAPTERS)
def test_no_command_runs_a_crafted_weights_file(adapter, suffix, data, tmp_path, capsys):
    marker = tmp_path / "marker"
    evil = crafted(tmp_path / f"evil{suffix}", marker)
    cfg = config(adapter, tmp_path)
    out = tmp_path / "preds" / "p.json"
    rc, stdout, err = _run(["predict", cfg, "--weights", evil, "--dataset", data, "--out", out], capsys)
    assert rc == 2 and stdout == ""
    assert err.splitlines() == [err.rstrip("\n")] and err.startswith(f"error: {evil}: refused: ")
    assert "--trust-weights" in err and not marker.exists() and not out.parent.exists()
    run = tmp_path / "run"
    argv = ["train", cfg, "--dataset", data, "--out-dir", run, "--set", f"weights={evil}"]
    rc, stdout, err = _run(argv, capsys)
    assert rc == 2 and stdout == ""
    assert err.splitlines() == [err.rstrip("\n")] and err.startswith(f"error: {evil}: refused: ")
    assert not marker.exists() and not run.exists()  # refused before the run directory is made


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_trust_weights_is_what_allows_the_full_unpickle(adapter, data, tmp_path, capsys):
    """With --trust-weights the file is unpickled (its code runs) and then fails as a checkpoint."""
    cfg = config(adapter, tmp_path)
    for verb in ("predict", "train"):
        marker = tmp_path / f"marker_{verb}"
        evil = crafted(tmp_path / f"evil_{verb}.pt", marker)
        if verb == "predict":
            argv = ["predict", cfg, "--weights", evil, "--dataset", data, "--out", tmp_path / "p.json"]
        else:
            argv = ["train", cfg, "--dataset", data, "--out-dir", tmp_path / "run", "--set", f"weights={evil}"]
        rc, _, err = _run([*argv, "--trust-weights"], capsys)
        assert marker.exists(), f"{adapter} {verb}: --trust-weights did not unpickle the file"
        assert rc == 2, err
        last = err.splitlines()[-1]
        assert last.startswith(f"error: {evil}: ") and "refused" not in last, err


def test_the_config_key_trusts_as_the_flag_does(data, tmp_path, capsys):
    marker = tmp_path / "marker"
    evil = crafted(tmp_path / "evil.pt", marker)
    cfg = config("mmdet", tmp_path, trust_weights=True)
    rc, _, err = _run(["predict", cfg, "--weights", evil, "--dataset", data, "--out", tmp_path / "p.json"], capsys)
    assert rc == 2 and marker.exists() and "not an MMDetection checkpoint" in err
    bad = config("mmdet", tmp_path, trust_weights="yes")
    rc, _, err = _run(["predict", bad, "--weights", evil, "--dataset", data, "--out", tmp_path / "p.json"], capsys)
    assert rc == 2 and "trust_weights must be bool" in err


def test_python_m_adapters_refuses_it_too(data, tmp_path):
    """The real entry point, in its own process."""
    marker = tmp_path / "marker"
    evil = crafted(tmp_path / "yolov8n.pt", marker)
    cfg = config("ultralytics", tmp_path)
    out = tmp_path / "p.json"
    r = subprocess.run(
        [sys.executable, "-m", "adapters", "predict", cfg, "--weights", evil, "--dataset", data, "--out", out],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2 and not marker.exists() and not out.exists()
    assert r.stderr.startswith(f"error: {evil}: refused: ") and len(r.stderr.splitlines()) == 1, r.stderr


# ---------------------------------------------------------------------------- from 80 COCO classes


def _report(run: Path) -> dict:
    return json.loads((run / "weights_report.json").read_text())


def _train(cfg: Path, ds: Path, run: Path, capsys, *extra: str) -> str:
    rc, out, err = _run(["train", cfg, "--dataset", ds, "--out-dir", run, *extra], capsys)
    assert rc == 0, err
    r = _report(run)
    assert f"started from {r['weights']}: {r['loaded']} tensors loaded, {r['skipped']} skipped, " in out
    return out


#: a value no initialisation draws: one tensor of each start file is filled with it
MARK_VALUE = 0.05


def _own_checkpoint_is_plain_data(weights: Path, marked: str, key: str = "model") -> dict:
    """The run's checkpoint loads with weights_only=True and trained on from the start file."""
    import torch

    ckpt = torch.load(weights, map_location="cpu", weights_only=True)  # no allowlist at all
    assert [c["id"] for c in ckpt["cxrfuse_categories"]] == list(range(15))
    trained = ckpt[key][marked].float()
    assert (trained - MARK_VALUE).abs().max() < 0.02, f"{marked} did not start from the file"
    return ckpt


def test_ultralytics_starts_from_an_80_class_yolov8n(fifteen, tmp_path, capsys):
    """Ultralytics' own .pt (a pickled model) needs --trust-weights; its state dict does not."""
    import torch

    from adapters.ultralytics import _import

    YOLO = _import()
    coco = YOLO("yolov8n.yaml", task="detect")  # 80 classes, as yolov8n.pt
    assert coco.model.yaml["nc"] == 80
    marked = "model.0.conv.weight"
    with torch.no_grad():
        coco.model.state_dict()[marked].fill_(MARK_VALUE)
    own = tmp_path / "yolov8n.pt"
    coco.save(own)  # as Ultralytics writes it: the model object pickled
    state = tmp_path / "yolov8n_state.pt"
    torch.save(coco.model.state_dict(), state)
    n80 = len(coco.model.state_dict())
    cfg = config("ultralytics", tmp_path, schedule={"epochs": 1, "batch_size": 4, "workers": 0})

    rc, _, err = _run(["train", cfg, "--dataset", fifteen, "--out-dir", tmp_path / "r0", "--set", f"weights={own}"], capsys)
    assert rc == 2 and f"error: {own}: refused" in err and "--trust-weights" in err
    for weights, extra, run in ((own, ["--trust-weights"], tmp_path / "r1"), (state, [], tmp_path / "r2")):
        _train(cfg, fifteen, run, capsys, "--set", f"weights={weights}", *extra)
        r = _report(run)
        # the classification branch (cv3) was made for 80 classes; every other tensor is loaded
        assert r["new"] > 0 and all(".cv3." in k for k in r["new_tensors"]), r["new_tensors"]
        assert all(".cv3." in k for k in r["skipped_tensors"]) and r["loaded"] + r["skipped"] == n80
        assert r["loaded"] + r["new"] == n80  # yolov8n at 15 classes has the same tensor names
        ckpt = _own_checkpoint_is_plain_data(run / "weights.pt", marked, "state_dict")
        assert ckpt["format"] == "cxrfuse-ultralytics" and ckpt["model_yaml"]["nc"] == 15


def _detectron2_coco_state(tmp_path: Path) -> dict:
    from adapters.config import load_config
    from adapters.detectron2 import Detectron2Detector

    det = Detectron2Detector(load_config(config("detectron2", tmp_path)))
    from detectron2.modeling import build_model

    c = det._build_cfg(80, "cpu")
    c.freeze()
    return build_model(c).state_dict()


def test_detectron2_starts_from_an_80_class_model_final_pth_and_pkl(fifteen, tmp_path, capsys):
    import torch

    sd = _detectron2_coco_state(tmp_path)
    marked = "backbone.bottom_up.stem.conv1.weight"
    sd[marked].fill_(MARK_VALUE)
    pth = tmp_path / "model_final_coco.pth"
    torch.save({"model": sd, "iteration": 90000, "__author__": "Detectron2 Model Zoo"}, pth)
    pkl = tmp_path / "model_final_coco.pkl"
    with open(pkl, "wb") as f:  # the model zoo's numpy pickles
        pickle.dump({"model": {k: v.numpy() for k, v in sd.items()}, "__author__": "Detectron2 Model Zoo"}, f)
    cfg = config("detectron2", tmp_path, schedule={"iterations": 1, "batch_size": 2, "workers": 0})
    head = {f"roi_heads.box_predictor.{m}.{p}" for m in ("cls_score", "bbox_pred") for p in ("weight", "bias")}
    for weights in (pth, pkl):
        run = tmp_path / f"run_{weights.suffix[1:]}"
        _train(cfg, fifteen, run, capsys, "--set", f"weights={weights}")
        r = _report(run)
        assert set(r["new_tensors"]) == head and set(r["skipped_tensors"]) == head
        assert r["loaded"] == len(sd) - len(head)
        _own_checkpoint_is_plain_data(run / "weights.pth", marked)


def test_mmdet_starts_from_an_80_class_checkpoint(fifteen, tmp_path, capsys):
    import torch
    from mmdet.apis import init_detector

    from adapters.base import CategoryMap
    from adapters.config import load_config
    from adapters.mmdet import MMDetDetector

    det = MMDetDetector(load_config(config("mmdet", tmp_path)))
    cats = CategoryMap(tuple(range(80)), tuple(f"coco {i}" for i in range(80)))
    sd = init_detector(det._mm_cfg(cats), checkpoint=None, device="cpu").state_dict()
    marked = "backbone.conv1.weight"
    sd[marked].fill_(MARK_VALUE)
    ckpt = tmp_path / "faster-rcnn_coco.pth"
    torch.save({"meta": {"mmdet_version": "3.3.0", "dataset_meta": {"classes": cats.names}}, "state_dict": sd}, ckpt)
    cfg = config("mmdet", tmp_path, schedule={"iterations": 1, "batch_size": 2, "workers": 0})
    run = tmp_path / "run"
    _train(cfg, fifteen, run, capsys, "--set", f"weights={ckpt}")
    r = _report(run)
    head = {f"roi_head.bbox_head.{m}.{p}" for m in ("fc_cls", "fc_reg") for p in ("weight", "bias")}
    assert set(r["new_tensors"]) == head and set(r["skipped_tensors"]) == head
    assert r["loaded"] == len(sd) - len(head)
    _own_checkpoint_is_plain_data(run / "weights.pth", marked, "state_dict")
