"""Several processes of one node through torchrun: Detectron2 and MMDetection train with DDP on the
gloo backend (CPUs), rank 0 writes the run, and its weights predict."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from core.coco import CocoDataset
from core.predictions import read_predictions
from tests.conftest_paths import REPO
from tests.test_adapters import TINY, square_dataset


@pytest.fixture(scope="module")
def squares(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("ddp")
    return square_dataset(root / "train", 8, 0), square_dataset(root / "test", 2, 1)


@pytest.mark.parametrize("adapter", ["detectron2", "mmdet"])
def test_torchrun_two_cpu_processes_train_weights_that_predict(adapter, squares, tmp_path):
    from adapters.__main__ import main

    train_json, test_json = squares
    cfg = tmp_path / f"{adapter}.yaml"
    data = {"name": f"ddp_{adapter}", "adapter": adapter, "image_size": 64, "device": "cpu", **TINY[adapter]}
    data["schedule"] = {"iterations": 2, "batch_size": 2, "workers": 0}
    cfg.write_text(yaml.safe_dump(data))
    run = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "adapters", "train", str(cfg), "--dataset", str(train_json), "--out-dir", str(run),
    ]  # fmt: skip
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert [line for line in r.stdout.splitlines() if line.startswith("wrote ")] == [r.stdout.strip()]  # rank 0 only
    assert yaml.safe_load((run / "run.json").read_text())["world_size"] == 2
    with open(run / "loss.csv", newline="") as f:
        assert [int(row["step"]) for row in csv.DictReader(f)] == [1, 2]
    out = tmp_path / "preds.json"
    weights = run / "weights.pth"
    rc = main(["predict", str(cfg), "--weights", str(weights), "--dataset", str(test_json), "--out", str(out)])
    assert rc == 0
    assert set(read_predictions(out, CocoDataset.load(test_json))) == {0, 1}
