"""Killed and re-run, every command ends with the outputs of a run that was never interrupted (issue #13).

``convert vinbig``, ``adapters predict``, ``ensemble run`` and ``eval leaderboard`` are started as
real subprocesses (each in its own process group, so a worker pool dies with it) and killed with
SIGKILL at several points: after a delay, or when a progress marker appears (the first PNG, half
the PNGs, the first fold file, a results file's sidecar, the plots folder). The same command is
then run again to the end, and every output file is compared, byte for byte, with the files of an
uninterrupted run in another folder.

Two things are left out of the comparison, by design:

- fields that are timestamps or timings by design: a written sidecar's (``*.meta.json``)
  ``created``, ``seconds`` and ``images_per_second`` (the JSON is compared with those keys removed;
  the leaderboard's speeds come from its inputs' sidecars, which do not change, so its tables are
  compared as they are);
- the temporary files (``.NAME.XXXX.part``) a killed process leaves beside its outputs: they are
  never under an output's name, which is the point (`core.io.atomic_open`).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from core.coco import CocoDataset
from core.detections import Detections
from core.predictions import write_gate, write_predictions
from tests.conftest_paths import REPO

TIMING_KEYS = {"created", "seconds", "images_per_second"}


# --------------------------------------------------------------------------- helpers


def _cmd(*args: object) -> list[str]:
    return [sys.executable, "-m", *(str(a) for a in args)]


def _env() -> dict[str, str]:
    env = dict(os.environ, YOLO_OFFLINE="1", PYTHONPATH=str(REPO))
    env.pop("PYTHONWARNINGS", None)
    return env


def run_to_end(cmd: list[str]) -> None:
    p = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr


def kill_at(cmd: list[str], *, delay: float | None = None, marker: Callable[[], bool] | None = None) -> bool:
    """Start ``cmd`` and SIGKILL its process group after ``delay`` s or once ``marker()`` is true.

    Returns:
        Whether it was killed (False: it finished first).
    """
    p = subprocess.Popen(
        cmd, cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    t0 = time.monotonic()
    try:
        while p.poll() is None:
            if delay is not None and time.monotonic() - t0 >= delay:
                break
            if marker is not None and marker():
                break
            if time.monotonic() - t0 > 300:
                raise AssertionError(f"{cmd}: neither finished nor reached its kill point in 300 s")
            time.sleep(0.005)
        killed = p.poll() is None
        if killed:
            os.killpg(p.pid, signal.SIGKILL)  # the process group we started: the command and its workers
        return killed
    finally:
        p.wait()


def _strip(obj):
    """JSON with the timing keys removed, at any depth."""
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k not in TIMING_KEYS}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def outputs(folder: Path) -> dict[str, object]:
    """Every output file under ``folder`` (relative path → bytes, or JSON without timing keys)."""
    out: dict[str, object] = {}
    for p in sorted(folder.rglob("*")):
        if not p.is_file() or (p.name.startswith(".") and p.name.endswith(".part")):
            continue
        rel = p.relative_to(folder).as_posix()
        if p.name.endswith(".meta.json"):
            out[rel] = _strip(json.loads(p.read_text()))
        else:
            out[rel] = p.read_bytes()
    return out


def assert_same(ref: Path, got: Path, when: str = "") -> None:
    """Every output under ``got`` is the one under ``ref`` (see `outputs`)."""
    a, b = outputs(ref), outputs(got)
    assert sorted(a) == sorted(b), when
    for k in a:
        assert a[k] == b[k], f"{k} differs after a kill ({when}) and a re-run"


def _count(folder: Path, pattern: str) -> int:
    return len(list(folder.glob(pattern))) if folder.is_dir() else 0


# --------------------------------------------------------------------------- data


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    from convert.synth import make_vinbig

    root = tmp_path_factory.mktemp("kill")
    raw = make_vinbig(root / "raw", n_images=16, seed=5, sizes=(64, 128))
    coco = root / "coco"
    run_to_end(_cmd("convert", "vinbig", "--csv", raw / "train.csv", "--images", raw / "train", "--out", coco,
                    "--size", "64", "--folds", "2", "-q"))  # fmt: skip
    val = coco / "val.json"
    ds = CocoDataset.load(val)
    preds = root / "preds"
    rng = np.random.default_rng(0)
    for name in ("a", "b", "c"):
        dets = {}
        for iid in ds.image_ids:
            gt = ds.ground_truth(iid)
            jitter = rng.uniform(-2, 2, gt.boxes.shape).astype(np.float32)
            boxes = np.clip(gt.boxes + jitter, 0, 64)
            boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2])
            dets[iid] = Detections(boxes, rng.uniform(0.3, 1, len(gt)).astype(np.float32), gt.labels)
        write_predictions(preds / f"{name}.json", dets, {"dataset": str(val), "images": len(ds.images), "seconds": 1.0})
    write_gate(preds / "gate.json", {i: float(rng.uniform()) for i in ds.image_ids}, {"dataset": str(val)})
    return {"root": root, "raw": raw, "coco": coco, "val": val, "preds": preds}


# --------------------------------------------------------------------------- the commands


def test_convert_killed_and_rerun(data, tmp_path):
    raw = data["raw"]

    def cmd(out: Path) -> list[str]:
        return _cmd("convert", "vinbig", "--csv", raw / "train.csv", "--images", raw / "train", "--out", out,
                    "--size", "48", "--folds", "3", "--workers", "2", "-q")  # fmt: skip

    ref = tmp_path / "ref"
    run_to_end(cmd(ref))
    n = _count(ref / "images", "*.png")
    assert n == 16
    points = {
        "starting": dict(delay=0.3),
        "first PNG": dict(marker=lambda o: _count(o / "images", "*.png") >= 1),
        "half the PNGs": dict(marker=lambda o: _count(o / "images", "*.png") >= n // 2),
        "first fold file": dict(marker=lambda o: _count(o, "fold*.json") >= 1),
    }
    killed = 0
    for k, (what, how) in enumerate(points.items()):
        out = tmp_path / f"run{k}"
        marker = how.get("marker")
        killed += kill_at(cmd(out), delay=how.get("delay"), marker=(lambda o=out, m=marker: m(o)) if marker else None)
        if (out / "all.json").exists():
            continue  # finished before the kill point: nothing to learn here
        run_to_end(cmd(out))
        assert_same(ref, out, what)
    assert killed >= 2, "the kills came too late to interrupt anything"


def test_ensemble_run_killed_and_rerun(data, tmp_path):
    p = data["preds"]

    def cmd(out: Path) -> list[str]:
        return _cmd("ensemble", "run", "--dataset", data["val"], "--preds", p / "a.json", p / "b.json", p / "c.json",
                    "--gate", p / "gate.json", "--gate-mode", "append", "--out", out / "fused.json", "-q")  # fmt: skip

    ref = tmp_path / "ref"
    run_to_end(cmd(ref))
    killed = 0
    for k, how in enumerate([dict(delay=0.2), dict(delay=0.6), dict(marker=lambda o: (o / "fused.meta.json").exists())]):
        out = tmp_path / f"run{k}"
        marker = how.get("marker")
        killed += kill_at(cmd(out), delay=how.get("delay"), marker=(lambda o=out, m=marker: m(o)) if marker else None)
        run_to_end(cmd(out))
        assert_same(ref, out)
    assert killed >= 1


@pytest.mark.slow
def test_leaderboard_killed_and_rerun(data, tmp_path):
    p = data["preds"]

    def cmd(out: Path) -> list[str]:
        return _cmd("eval", "leaderboard", "--dataset", data["val"], "--preds", p / "a.json", p / "b.json",
                    p / "c.json", "--gate", p / "gate.json", "--out", out / "board", "--html", out / "report",
                    "--examples", "2", "-q")  # fmt: skip

    ref = tmp_path / "ref"
    run_to_end(cmd(ref))
    killed = 0
    for k, how in enumerate([dict(delay=0.5), dict(delay=1.5), dict(marker=lambda o: _count(o / "board" / "plots", "*.png") >= 1)]):
        out = tmp_path / f"run{k}"
        marker = how.get("marker")
        killed += kill_at(cmd(out), delay=how.get("delay"), marker=(lambda o=out, m=marker: m(o)) if marker else None)
        run_to_end(cmd(out))
        assert_same(ref, out)
    assert killed >= 2


@pytest.mark.slow
def test_adapters_predict_killed_and_rerun(data, tmp_path):
    import torch
    import yaml
    from ultralytics.nn.tasks import yaml_model_load

    from adapters.base import CategoryMap
    from adapters.ultralytics import CHECKPOINT_FORMAT, _network

    ds = CocoDataset.load(data["val"])
    cats = CategoryMap.from_dataset(ds)
    model_yaml = yaml_model_load("yolov8n.yaml")
    torch.manual_seed(0)
    net = _network(model_yaml, cats.names)
    weights = tmp_path / "weights.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "framework": "ultralytics", "model_yaml": model_yaml,
                "state_dict": net.state_dict(), "cxrfuse_categories": cats.to_json()}, weights)  # fmt: skip
    config = tmp_path / "model.yaml"
    cfg = yaml.safe_load((REPO / "configs" / "cpu" / "yolov8n.yaml").read_text())
    cfg.update(device="cpu", image_size=64, out_dir=str(tmp_path / "run"))
    config.write_text(yaml.safe_dump(cfg))

    def cmd(out: Path) -> list[str]:
        return _cmd("adapters", "predict", config, "--weights", weights, "--dataset", data["val"],
                    "--out", out / "m.json", "--batch-size", "2", "-q")  # fmt: skip

    ref = tmp_path / "ref"
    run_to_end(cmd(ref))
    assert (ref / "m.json").is_file() and (ref / "m.meta.json").is_file()
    killed = 0
    for k, how in enumerate([dict(delay=1.0), dict(delay=4.0), dict(marker=lambda o: (o / "m.meta.json").exists())]):
        out = tmp_path / f"run{k}"
        marker = how.get("marker")
        killed += kill_at(cmd(out), delay=how.get("delay"), marker=(lambda o=out, m=marker: m(o)) if marker else None)
        run_to_end(cmd(out))
        assert_same(ref, out)
    assert killed >= 2
