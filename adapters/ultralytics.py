"""Ultralytics YOLOv8 / YOLOv5u behind the common interface.

Training exports the COCO dataset to Ultralytics' layout (`convert.yolo`), trains with
Ultralytics' own trainer (which also runs multi-GPU DDP for ``device: 0,1``) and writes the
best weights to ``OUT/weights.pt``. Everything runs offline: ``YOLO_OFFLINE`` is set,
plots (which fetch a font) are off, and the AMP check (which fetches weights) is replaced by
"AMP on" for CUDA devices.

``OUT/weights.pt`` is not Ultralytics' own checkpoint (a pickle of the model object, which
only a full unpickle can read) but tensors and plain data that load with
``torch.load(weights_only=True)``: ``{format: "cxrfuse-ultralytics", framework, model_yaml,
state_dict, cxrfuse_categories, image_size, ...}``; predicting rebuilds the network from
``model_yaml`` (Ultralytics' model dict) and loads the state dict into it. Ultralytics' own
``.pt`` files (a COCO-pretrained ``yolov8s.pt``) need ``trust_weights`` to be read, to start
from or to predict with; a plain state dict of a YOLO model starts a training without it.
Starting from weights made for other classes loads every tensor whose name and shape fit the
new model; the Detect head's classification branch (``cv3``) then starts as initialised
(`adapters.base.WeightsReport` in ``OUT/weights_report.json`` says what was loaded).
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from adapters.base import (
    AdapterError,
    CategoryMap,
    DetectorAdapter,
    LossLog,
    batched,
    checkpoint_written,
    read_image_bgr,
    resolve_device,
    to_detections,
)
from adapters.quiet import progress
from adapters.weights import load_weights, save_torch_file, tensor_dict, transfer_weights
from core.coco import CocoDataset
from core.detections import Detections

#: ``format`` of the checkpoints this adapter writes
CHECKPOINT_FORMAT = "cxrfuse-ultralytics"
#: ``format`` of the resumable checkpoint written after every epoch (``OUT/ultralytics/resume.pt``)
RESUME_FORMAT = "cxrfuse-ultralytics-resume"
RESUME_FILE = Path("ultralytics") / "resume.pt"


def _resume_trainer(state: dict[str, Any]) -> type:
    """Ultralytics' detection trainer that starts from a CXRFuse resume checkpoint.

    Ultralytics' own resume reads ``last.pt``, a pickle of the model object (a full unpickle);
    CXRFuse's ``resume.pt`` holds state dicts only, so the trainer restores the model, EMA,
    optimizer (and AMP scaler) from them and continues at the epoch after the checkpoint's.
    """
    from ultralytics.models.yolo.detect import DetectionTrainer
    from ultralytics.utils.torch_utils import unwrap_model

    class ResumeTrainer(DetectionTrainer):
        def resume_training(self, ckpt):
            unwrap_model(self.model).load_state_dict(state["model"])
            self.ema.ema.load_state_dict(state["ema"])
            self.ema.updates = int(state["updates"])
            self.optimizer.load_state_dict(state["optimizer"])
            if state.get("scaler") and getattr(self, "scaler", None) is not None:
                self.scaler.load_state_dict(state["scaler"])
            self.best_fitness = state.get("best_fitness")
            self.start_epoch = int(state["epoch"]) + 1
            self.resume = True

    return ResumeTrainer


def _import():
    os.environ.setdefault("YOLO_OFFLINE", "1")
    import ultralytics  # noqa: F401  (framework import, only here)
    from ultralytics import YOLO

    return YOLO


def _network(model_yaml: dict, names: tuple[str, ...]) -> Any:
    """An Ultralytics detection network built from its model dict for ``len(names)`` classes."""
    from ultralytics.nn.tasks import DetectionModel

    net = DetectionModel(copy.deepcopy(model_yaml), nc=len(names), verbose=False)
    net.names = dict(enumerate(names))
    return net


def _pickled_network(ckpt: Any) -> Any:
    """The model object of a trusted Ultralytics checkpoint (EMA first), or None."""
    import torch

    if not isinstance(ckpt, dict):
        return None
    net = ckpt.get("ema") or ckpt.get("model")
    return net if isinstance(net, torch.nn.Module) else None


class UltralyticsDetector(DetectorAdapter):
    """YOLO detector from an Ultralytics model YAML (``yolov8n.yaml``, ``yolov5nu.yaml`` → ``yolov5n``)."""

    # ------------------------------------------------------------------ model
    def _model_yaml(self) -> str:
        """A bare name (``yolov8n.yaml``) is Ultralytics' built-in model; a path (with ``/``) is a file."""
        if "/" in self.cfg.model or "\\" in self.cfg.model:
            return str(self.cfg.model_path())
        return self.cfg.model

    def _wrap(self, net: Any) -> Any:
        """A ``YOLO`` object (Ultralytics' predict API) around the network ``net``."""
        import yaml

        YOLO = _import()
        # a neutral file name: Ultralytics maps names like yolov5nu.yaml to its own unified files
        # (yolov5u.yaml + scale), which do not exist beside this temporary copy; the dict holds the scale
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.yaml"
            path.write_text(yaml.safe_dump(net.yaml, sort_keys=False))
            model = YOLO(str(path), task="detect")
        net.args, net.task = model.model.args, "detect"
        model.model = net.float().eval()
        return model

    def recorded_model(self, ckpt: Any) -> dict[str, Any] | None:
        """The model and image size a checkpoint of ours was made with (older ones: from its model dict)."""
        if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
            return None
        rec = dict(ckpt.get("cxrfuse_model") or {})
        model_yaml = ckpt.get("model_yaml") if isinstance(ckpt.get("model_yaml"), dict) else {}
        rec.setdefault("model", model_yaml.get("yaml_file"))
        rec.setdefault("image_size", ckpt.get("image_size"))
        return rec

    @staticmethod
    def resume_checkpoint(run_dir: Path) -> Path | None:
        """``RUN/ultralytics/resume.pt``, written after every epoch, if there is one."""
        path = Path(run_dir) / RESUME_FILE
        return path if path.is_file() else None

    def _load(self):
        if self._model is not None:
            return self._model
        _import()
        ckpt = self._checkpoint()
        if isinstance(ckpt, dict) and ckpt.get("format") == CHECKPOINT_FORMAT:
            for key in ("model_yaml", "state_dict", "cxrfuse_categories"):
                if key not in ckpt:
                    raise AdapterError(f"{self.weights}: CXRFuse Ultralytics checkpoint lacks {key!r}")
            self.check_model(self.recorded_model(ckpt), self.weights)
            self.categories = CategoryMap.from_json(ckpt["cxrfuse_categories"])
            net = _network(ckpt["model_yaml"], self.categories.names)
            state = ckpt["state_dict"]
        elif (net := _pickled_network(ckpt)) is not None:  # Ultralytics' own file, read with trust_weights
            cats = ckpt.get("cxrfuse_categories")
            names = getattr(net, "names", None) or {}
            if cats is not None:
                self.categories = CategoryMap.from_json(cats)
            else:  # a checkpoint from plain Ultralytics: ids are its indices
                self.categories = CategoryMap(tuple(range(len(names))), tuple(names[i] for i in range(len(names))))
            net = net.float()
            state = net.state_dict()
        elif isinstance(ckpt, dict) and ckpt and all(hasattr(v, "shape") for v in ckpt.values()):
            raise AdapterError(
                f"{self.weights}: a state dict without a class list; predict with weights written by "
                "`python -m adapters train` (a state dict can start a training: weights: in the config)"
            )
        else:
            raise AdapterError(f"{self.weights}: not an Ultralytics checkpoint (no 'model' entry)")
        self._check_fits(net, state)
        net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
        self._model = self._wrap(net)
        return self._model

    def _start_state_dict(self, start: Any) -> dict[str, Any]:
        """The state dict of the start weights: ours, Ultralytics' own (trusted) or a plain one."""
        if isinstance(start, dict) and start.get("format") == CHECKPOINT_FORMAT:
            return tensor_dict(start, self.cfg.weights, ("state_dict",))
        net = _pickled_network(start)
        if net is not None:
            return net.float().state_dict()
        return tensor_dict(start, self.cfg.weights, ("state_dict", "model"))

    def _export(self, dataset: CocoDataset, out_dir: Path) -> Path:
        """Ultralytics' layout of ``dataset`` (and the config's val set) under ``out_dir/yolo_data``.

        ``schedule.empty_images: drop`` leaves the training images without a box out (their image
        and label files); with ``keep`` Ultralytics trains on them as background.

        Returns:
            The data YAML.
        """
        from convert.yolo import coco_to_yolo

        val_path = Path(self.cfg.dataset.get("val") or dataset.path)
        data_yaml = coco_to_yolo(Path(dataset.path), val_path, out_dir / "yolo_data")
        if self.cfg.schedule.empty_images == "drop":
            root = out_dir / "yolo_data"
            for iid in dataset.image_ids:
                if dataset.annotations_of(iid):
                    continue
                stem = Path(dataset.image(iid)["file_name"]).stem
                (root / "images" / "train" / f"{stem}{dataset.image_path(iid).suffix}").unlink(missing_ok=True)
                (root / "labels" / "train" / f"{stem}.txt").unlink(missing_ok=True)
        return data_yaml

    def training_images(self, dataset: CocoDataset, out_dir: Path) -> int:
        """How many images Ultralytics' training dataset holds for ``dataset`` under ``schedule.empty_images``.

        Exports the data into ``out_dir`` (as `train` does) and builds Ultralytics' own
        ``YOLODataset`` of the training images, without training.
        """
        _import()
        from ultralytics.data.dataset import YOLODataset
        from ultralytics.data.utils import check_det_dataset

        out_dir = Path(out_dir).resolve()
        data = check_det_dataset(str(self._export(dataset, out_dir)))
        ds = YOLODataset(img_path=str(data["train"]), data=data, imgsz=self.cfg.image_size, augment=False)
        return len(ds.im_files)

    # ------------------------------------------------------------------ train
    def train(self, dataset: CocoDataset, out_dir: Path) -> Path:
        YOLO = _import()
        from ultralytics.engine import trainer as ul_trainer

        out_dir = Path(out_dir).resolve()
        cats = CategoryMap.from_dataset(dataset)
        start = self.start_weights()
        start_state = self._start_state_dict(start) if start is not None else None
        self._start = start = None
        data_yaml = self._export(dataset, out_dir)
        device = resolve_device(self.cfg.device)
        s = self.cfg.schedule
        if s.iterations is not None and s.epochs is None:
            raise AdapterError(f"{self.cfg.source}: Ultralytics trains in epochs; set schedule.epochs")
        model = YOLO(self._model_yaml(), task="detect")
        if start_state is not None:
            # the network Ultralytics' trainer builds (this many classes), filled from the file; the
            # trainer starts from it (it copies every tensor, all shapes being the same)
            net = _network(model.model.yaml, cats.names)
            transfer_weights(net, start_state, self.cfg.weights).write(out_dir)
            net.args, net.task = model.model.args, "detect"
            model.model, model.ckpt, model.ckpt_path = net, {"model": net}, None
            model.overrides.pop("pretrained", None)
        amp = bool(self.cfg.options.get("amp", device != "cpu"))
        if amp:
            ul_trainer.check_amp = lambda *a, **k: True  # the real check downloads weights
        resume = load_weights(self.resume_from) if self.resume_from else None
        if resume is not None and (not isinstance(resume, dict) or resume.get("format") != RESUME_FORMAT):
            raise AdapterError(f"{self.resume_from}: not a CXRFuse Ultralytics resume checkpoint")
        done = int(resume["step"]) if resume is not None else 0
        log = LossLog(out_dir / "loss.csv", resume_step=done if resume is not None else None)
        state = {"step": done}
        epochs = s.epochs or 1
        bar = progress(total=epochs, initial=int(resume["epoch"]) + 1 if resume else 0, desc=f"train {self.name}", unit="epoch")

        def on_model_save(trainer) -> None:  # after every epoch's last.pt: ours, with state dicts only
            from ultralytics.utils.torch_utils import unwrap_model

            log.flush()
            path = out_dir / RESUME_FILE
            scaler = getattr(trainer, "scaler", None)
            save_torch_file(
                path,
                {
                    "format": RESUME_FORMAT,
                    "epoch": int(trainer.epoch),
                    "step": state["step"],
                    "model": {k: v.detach().cpu() for k, v in unwrap_model(trainer.model).state_dict().items()},
                    "ema": {k: v.detach().cpu() for k, v in trainer.ema.ema.state_dict().items()},
                    "updates": int(trainer.ema.updates),
                    "optimizer": trainer.optimizer.state_dict(),
                    "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
                    "best_fitness": None if trainer.best_fitness is None else float(trainer.best_fitness),
                    "cxrfuse_model": self.model_record(),
                },
            )
            bar.update(1)
            checkpoint_written(path)

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
        model.add_callback("on_model_save", on_model_save)
        args = {
            "data": str(data_yaml),
            "epochs": epochs,
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
        if resume is not None and int(resume["epoch"]) + 1 >= epochs:
            # killed after its last epoch's checkpoint: nothing left to train, the EMA is the result
            log.close()
            bar.close()
            net = _network(model.model.yaml, cats.names)
            net.load_state_dict(resume["ema"])
            src = out_dir / RESUME_FILE
        else:
            try:
                if resume is not None:
                    model.train(**args, trainer=_resume_trainer(resume))
                else:
                    model.train(**args)
            finally:
                log.close()
                bar.close()
            save_dir = Path(model.trainer.save_dir)
            best = save_dir / "weights" / "best.pt"
            src = best if best.is_file() else save_dir / "weights" / "last.pt"
            if not src.is_file():
                raise AdapterError(f"Ultralytics wrote no weights under {save_dir / 'weights'}")
            # after training, Ultralytics holds the network of the file it just wrote (best, else last)
            net = model.model
        if not hasattr(net, "yaml") or not hasattr(net, "state_dict"):
            raise AdapterError(f"Ultralytics kept no trained network after training ({src})")
        ckpt = {
            "format": CHECKPOINT_FORMAT,
            "framework": "ultralytics",
            "model_yaml": copy.deepcopy(net.yaml),
            # FP16 like Ultralytics' own files; predicting loads it into an FP32 network
            "state_dict": {
                k: (v.half() if v.is_floating_point() else v).detach().cpu() for k, v in net.state_dict().items()
            },
            "cxrfuse_categories": cats.to_json(),
            "image_size": self.cfg.image_size,
            "cxrfuse_model": self.model_record(),
            "ultralytics_weights": str(src.relative_to(out_dir) if src.is_relative_to(out_dir) else src),
        }
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
