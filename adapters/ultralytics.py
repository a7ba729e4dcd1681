"""Ultralytics YOLOv8 / YOLOv5u behind the common interface.

Training exports the COCO dataset to Ultralytics' layout (`convert.yolo`), trains with
Ultralytics' own trainer (which also runs multi-GPU DDP for ``device: 0,1``) and copies
the best weights to ``OUT/weights.pt``. Everything runs offline: ``YOLO_OFFLINE`` is set,
plots (which fetch a font) are off, and the AMP check (which fetches weights) is replaced by
"AMP on" for CUDA devices.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from adapters.base import (
    AdapterError,
    CategoryMap,
    DetectorAdapter,
    LossLog,
    batched,
    load_torch_file,
    read_image_bgr,
    resolve_device,
    save_torch_file,
    to_detections,
)
from core.coco import CocoDataset
from core.detections import Detections


def _import():
    os.environ.setdefault("YOLO_OFFLINE", "1")
    import ultralytics  # noqa: F401  (framework import, only here)
    from ultralytics import YOLO

    return YOLO


class UltralyticsDetector(DetectorAdapter):
    """YOLO detector from an Ultralytics model YAML (``yolov8n.yaml``, ``yolov5nu.yaml`` → ``yolov5n``)."""

    # ------------------------------------------------------------------ model
    def _model_yaml(self) -> str:
        """A bare name (``yolov8n.yaml``) is Ultralytics' built-in model; a path (with ``/``) is a file."""
        if "/" in self.cfg.model or "\\" in self.cfg.model:
            return str(self.cfg.model_path())
        return self.cfg.model

    def _load(self):
        YOLO = _import()
        if self._model is not None:
            return self._model
        ckpt = self._checkpoint()
        if not isinstance(ckpt, dict) or "model" not in ckpt:
            raise AdapterError(f"{self.weights}: not an Ultralytics checkpoint (no 'model' entry)")
        cats = ckpt.get("cxrfuse_categories")
        names = getattr(ckpt["model"], "names", None)
        if cats is not None:
            self.categories = CategoryMap.from_json(cats)
        elif names is not None:  # a checkpoint from plain Ultralytics: ids are its indices
            self.categories = CategoryMap(
                tuple(range(len(names))), tuple(names[i] for i in range(len(names)))
            )
        self._model = YOLO(str(self.weights), task="detect")
        return self._model

    # ------------------------------------------------------------------ train
    def train(self, dataset: CocoDataset, out_dir: Path) -> Path:
        YOLO = _import()
        from ultralytics.engine import trainer as ul_trainer

        from convert.yolo import coco_to_yolo

        out_dir = Path(out_dir).resolve()
        cats = CategoryMap.from_dataset(dataset)
        val_path = Path(self.cfg.dataset.get("val") or dataset.path)
        data_yaml = coco_to_yolo(Path(dataset.path), val_path, out_dir / "yolo_data")
        device = resolve_device(self.cfg.device)
        s = self.cfg.schedule
        if s.iterations is not None and s.epochs is None:
            raise AdapterError(f"{self.cfg.source}: Ultralytics trains in epochs; set schedule.epochs")
        model = YOLO(self._model_yaml(), task="detect")
        if self.cfg.weights:
            load_torch_file(self.cfg.weights)  # clear error for a missing/damaged file before Ultralytics
            model.load(self.cfg.weights)
        amp = bool(self.cfg.options.get("amp", device != "cpu"))
        if amp:
            ul_trainer.check_amp = lambda *a, **k: True  # the real check downloads weights
        log = LossLog(out_dir / "loss.csv")
        state = {"step": 0}

        def on_batch_end(trainer) -> None:
            state["step"] += 1
            items = trainer.loss_items
            if isinstance(items, dict):
                terms = {f"loss_{k.split('/')[-1].replace('_loss', '')}": float(v) for k, v in items.items()}
            else:
                vals = items.detach().cpu().numpy().reshape(-1)
                terms = {
                    f"loss_{n.split('/')[-1].replace('_loss', '')}": float(v)
                    for n, v in zip(trainer.loss_names, vals, strict=False)
                }
            log.write(state["step"], trainer.epoch + 1, terms)

        model.add_callback("on_train_batch_end", on_batch_end)
        args = {
            "data": str(data_yaml),
            "epochs": s.epochs or 1,
            "imgsz": self.cfg.image_size,
            "batch": s.batch_size,
            "device": device,
            "workers": s.workers,
            "project": str(out_dir),
            "name": "ultralytics",
            "exist_ok": True,
            "plots": False,
            "amp": amp,
            "seed": s.seed,
            "lr0": s.lr,
            "momentum": s.momentum,
            "weight_decay": s.weight_decay,
            "warmup_epochs": 0,
            "verbose": False,
        }
        # options: any Ultralytics train argument (mosaic, hsv_h, val, warmup_epochs, ...)
        args.update({k: v for k, v in self.cfg.options.items() if k != "amp"})
        try:
            model.train(**args)
        finally:
            log.close()
        save_dir = Path(model.trainer.save_dir)
        best = save_dir / "weights" / "best.pt"
        src = best if best.is_file() else save_dir / "weights" / "last.pt"
        if not src.is_file():
            raise AdapterError(f"Ultralytics wrote no weights under {save_dir / 'weights'}")

        ckpt = load_torch_file(src)
        ckpt["cxrfuse_categories"] = cats.to_json()
        save_torch_file(out_dir / "weights.pt", ckpt)
        shutil.rmtree(out_dir / "yolo_data" / "labels", ignore_errors=True)  # a cache, rebuilt on demand
        self.weights, self._model, self.categories = out_dir / "weights.pt", None, cats
        return out_dir / "weights.pt"

    # ------------------------------------------------------------------ predict
    def predict(self, images: Iterable[Path | np.ndarray], batch_size: int = 4) -> Iterator[Detections]:
        model = self._load()
        p = self.cfg.predict
        device = resolve_device(self.cfg.device)
        for batch in batched(images, batch_size):
            arrays = [read_image_bgr(im) for im in batch]
            results = model.predict(
                arrays,
                imgsz=self.cfg.image_size,
                conf=p.score_thr,
                iou=p.nms_iou,
                max_det=p.max_dets,
                device=device,
                verbose=False,
            )
            for arr, r in zip(arrays, results, strict=True):
                b = r.boxes
                labels = self.categories.category(b.cls.cpu().numpy().astype(np.int64))
                yield to_detections(
                    b.xyxy.cpu().numpy(), b.conf.cpu().numpy(), labels, arr.shape[1], arr.shape[0]
                )
