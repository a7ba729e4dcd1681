"""The set-up installed every framework we promise, and each one works on the CPU (no skips)."""

from __future__ import annotations

import importlib
import subprocess
import sys

import numpy as np

from tests.conftest_paths import REPO


def test_ultralytics_builds_yolov8_and_yolov5u_offline(monkeypatch):
    monkeypatch.setenv("YOLO_OFFLINE", "1")
    from ultralytics import YOLO

    for cfg in ("yolov8n.yaml", "yolov5nu.yaml"):
        model = YOLO(cfg)  # architecture from the package's YAML: no download
        assert sum(p.numel() for p in model.model.parameters()) > 1_000_000


def test_detectron2_imports_with_our_shims_and_runs_torchvision_ops():
    from adapters._detectron2_env import prepare_detectron2

    prepare_detectron2()
    modeling = importlib.import_module("detectron2.modeling")
    assert hasattr(modeling, "build_model")
    import torch
    from detectron2.layers import ROIAlign, batched_nms

    feats = torch.arange(64, dtype=torch.float32).reshape(1, 1, 8, 8)
    out = ROIAlign((2, 2), 1.0, 0, aligned=True)(feats, torch.tensor([[0, 0, 0, 4, 4]], dtype=torch.float32))
    assert out.shape == (1, 1, 2, 2)
    keep = batched_nms(
        torch.tensor([[0, 0, 10, 10], [1, 1, 10, 10.0]]), torch.tensor([0.9, 0.8]), torch.tensor([0, 0]), 0.5
    )
    assert keep.tolist() == [0]


def test_mmdet_and_mmcv_compiled_ops():
    importlib.import_module("mmdet.models")
    import mmcv
    import torch
    from mmcv.ops import nms, roi_align

    assert mmcv.__version__ == "2.1.0"
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]], dtype=torch.float32)
    dets, keep = nms(boxes, torch.tensor([0.9, 0.8, 0.7]), 0.5)
    assert keep.tolist() == [0, 2]
    out = roi_align(torch.ones(1, 1, 8, 8), torch.tensor([[0, 0, 0, 4, 4]], dtype=torch.float32), (2, 2))
    np.testing.assert_allclose(out.numpy(), 1.0)


def test_framework_free_packages_import_no_framework():
    code = (
        "import sys, core, convert.vinbig, convert.submission, ensemble, eval; "
        "bad = [m for m in ('torch', 'ultralytics', 'detectron2', 'mmdet', 'mmcv') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
