"""Detectron2 Faster R-CNN behind the common interface.

The model is a Detectron2 YAML shipped under ``configs/detectron2/``; the model config's
``options`` are extra Detectron2 keys (``{MODEL.RESNETS.NORM: BN, ...}``). Training runs
Detectron2's own `SimpleTrainer` with its data loader, optimizer and LR schedule; under
``torchrun --nproc_per_node N`` each process takes its share (DistributedDataParallel).
Every weights file is read by the adapter without running code (`adapters.base.load_weights`):
``.pth`` files (Detectron2's ``model_final.pth``, the checkpoints CXRFuse writes) with
``torch.load(weights_only=True)``, Detectron2/Caffe2 ``.pkl`` model-zoo files with an unpickler
that only rebuilds numpy arrays; then they are laid out as Detectron2's own loader lays them out
(name-matching heuristics for Caffe2 and pycls files). Starting from weights made for other
classes loads every tensor whose name and shape fit; the box predictor's class scores and
class-specific box deltas start as initialised (``OUT/weights_report.json``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from adapters._detectron2_env import prepare_detectron2
from adapters.base import (
    AdapterError,
    CategoryMap,
    DetectorAdapter,
    LossLog,
    batched,
    checkpoint_period,
    checkpoint_written,
    read_image_bgr,
    resolve_device,
    to_detections,
    training_image_count,
)
from adapters.config import ModelConfig
from adapters.quiet import progress
from adapters.weights import WeightsReport, load_weights, save_torch_file
from core.coco import CocoDataset
from core.detections import Detections

#: the resumable checkpoint (model, optimizer, LR schedule, iteration), replaced as training goes on
RESUME_FILE = Path("detectron2") / "resume.pth"


def dataset_dicts(dataset: CocoDataset, cats: CategoryMap) -> list[dict[str, Any]]:
    """The COCO dataset as Detectron2 dataset dicts (contiguous class indices, XYWH_ABS boxes)."""
    from detectron2.structures import BoxMode

    index = {c: k for k, c in enumerate(cats.ids)}
    out = []
    for iid in dataset.image_ids:
        im = dataset.image(iid)
        anns = [
            {
                "bbox": [float(v) for v in a["bbox"]],
                "bbox_mode": BoxMode.XYWH_ABS,
                "category_id": index[int(a["category_id"])],
                "iscrowd": 0,
            }
            for a in dataset.annotations_of(iid)
        ]
        out.append(
            {
                "file_name": str(dataset.image_path(iid)),
                "image_id": iid,
                "height": int(im["height"]),
                "width": int(im["width"]),
                "annotations": anns,
            }
        )
    return out


def checkpoint_dict(data: Any, path: Path) -> dict[str, Any]:
    """A weights file's contents laid out as Detectron2's checkpointer takes them.

    ``.pkl``: a Detectron2 model-zoo dict (``model`` and ``__author__``) as it is, else a Caffe2 /
    Detectron1 file (its ``blobs``, momenta dropped) marked for name matching; ``.pyth`` (pycls):
    its ``model_state``, marked for name matching; anything else: a dict with ``model``, or a bare
    state dict. CXRFuse's own keys are dropped.

    Raises:
        AdapterError: no mapping of names to tensors or arrays where the weights should be.
    """
    if not isinstance(data, dict):
        raise AdapterError(f"{path}: not a Detectron2 checkpoint (a {type(data).__name__}, not a dict)")
    if path.suffix == ".pkl" and not ("model" in data and "__author__" in data):
        blobs = data.get("blobs", data)
        if not isinstance(blobs, dict):
            raise AdapterError(f"{path}: not a Detectron2 or Caffe2 checkpoint (no 'model' nor 'blobs')")
        model = {k: v for k, v in blobs.items() if not str(k).endswith("_momentum")}
        data = {"model": model, "__author__": "Caffe2", "matching_heuristics": True}
    elif path.suffix == ".pyth":
        state = data.get("model_state")
        if not isinstance(state, dict):
            raise AdapterError(f"{path}: a .pyth (pycls) checkpoint without 'model_state'")
        model = {k: v for k, v in state.items() if not str(k).endswith("num_batches_tracked")}
        data = {"model": model, "__author__": "pycls", "matching_heuristics": True}
    elif not isinstance(data.get("model"), dict):
        data = {"model": data}
    model = {k: v for k, v in data["model"].items() if hasattr(v, "shape")} if isinstance(data["model"], dict) else {}
    if not model:
        raise AdapterError(f"{path}: holds no Detectron2 weights (no mapping of names to tensors or arrays)")
    extra = {k: v for k, v in data.items() if k not in ("model", "cxrfuse_categories", "framework", "config")}
    return {**extra, "model": model}


def load_into(model: Any, data: dict[str, Any], path: Path) -> WeightsReport:
    """Load a `checkpoint_dict` into ``model`` with Detectron2's checkpointer (name matching,
    numpy → tensors, tensors of another shape skipped) and say what was loaded."""
    from detectron2.checkpoint import DetectionCheckpointer

    report: dict[str, Any] = {}

    class Checkpointer(DetectionCheckpointer):
        def _load_file(self, filename):
            return dict(data)  # already read safely by load_weights

        def _load_model(self, checkpoint):
            incompatible = super()._load_model(checkpoint)
            report["incompatible"] = incompatible
            return incompatible

    Checkpointer(model, save_dir="").load(str(path))
    inc = report["incompatible"]
    names = list(model.state_dict())
    missing = set(inc.missing_keys)
    return WeightsReport(
        str(path),
        [k for k in names if k not in missing],
        [*inc.unexpected_keys, *(k for k, *_ in inc.incorrect_shapes)],
        [k for k in names if k in missing],
    )


class Detectron2Detector(DetectorAdapter):
    """Faster R-CNN (or any GeneralizedRCNN) from a Detectron2 YAML."""

    def __init__(self, cfg: ModelConfig, weights: str | Path | None = None) -> None:
        prepare_detectron2()
        super().__init__(cfg, weights)
        self._d2cfg = None

    def _build_cfg(self, num_classes: int, device: str):
        from detectron2.config import get_cfg

        c = get_cfg()
        c.merge_from_file(str(self.cfg.model_path()))
        opts: list[str] = []
        for k, v in self.cfg.options.items():
            opts += [k, str(v)]
        if opts:
            c.merge_from_list(opts)
        size, s, p = self.cfg.image_size, self.cfg.schedule, self.cfg.predict
        c.MODEL.ROI_HEADS.NUM_CLASSES = num_classes
        c.MODEL.DEVICE = "cuda" if device.startswith("cuda") or device[0].isdigit() else "cpu"
        c.INPUT.MIN_SIZE_TRAIN = (size,)
        c.INPUT.MAX_SIZE_TRAIN = size
        c.INPUT.MIN_SIZE_TEST = size
        c.INPUT.MAX_SIZE_TEST = size
        c.SOLVER.IMS_PER_BATCH = s.batch_size
        c.SOLVER.BASE_LR = float(s.lr)
        c.SOLVER.MOMENTUM = float(s.momentum)
        c.SOLVER.WEIGHT_DECAY = float(s.weight_decay)
        c.SOLVER.WARMUP_ITERS = s.warmup_iters
        c.DATALOADER.NUM_WORKERS = s.workers
        # schedule.empty_images: images without a box are background (keep) or left out (drop)
        c.DATALOADER.FILTER_EMPTY_ANNOTATIONS = s.empty_images == "drop"
        c.SEED = s.seed
        c.MODEL.ROI_HEADS.SCORE_THRESH_TEST = float(p.score_thr)
        c.MODEL.ROI_HEADS.NMS_THRESH_TEST = float(p.nms_iou)
        c.TEST.DETECTIONS_PER_IMAGE = p.max_dets
        return c

    def training_images(self, dataset: CocoDataset, out_dir: Path | None = None) -> int:
        """How many images Detectron2's training data holds for ``dataset`` under ``schedule.empty_images``.

        The list `build_detection_train_loader` samples from (``get_detection_dataset_dicts`` with
        the config's ``DATALOADER.FILTER_EMPTY_ANNOTATIONS``), built without training.
        """
        from detectron2.data import DatasetCatalog, MetadataCatalog, get_detection_dataset_dicts

        cats = CategoryMap.from_dataset(dataset)
        c = self._build_cfg(len(cats), "cpu")
        name = f"cxrfuse_count_{self.name}_{os.getpid()}_{id(dataset)}"
        dicts = dataset_dicts(dataset, cats)
        DatasetCatalog.register(name, lambda: dicts)
        MetadataCatalog.get(name).thing_classes = list(cats.names)
        try:
            return len(get_detection_dataset_dicts([name], filter_empty=c.DATALOADER.FILTER_EMPTY_ANNOTATIONS))
        finally:
            DatasetCatalog.remove(name)

    @staticmethod
    def resume_checkpoint(run_dir: Path) -> Path | None:
        """``RUN/detectron2/resume.pth``, written every ``schedule.checkpoint_period`` iterations, if any."""
        path = Path(run_dir) / RESUME_FILE
        return path if path.is_file() else None

    # ------------------------------------------------------------------ train
    def train(self, dataset: CocoDataset, out_dir: Path) -> Path:
        import torch
        from detectron2.data import DatasetCatalog, MetadataCatalog, build_detection_train_loader
        from detectron2.engine import SimpleTrainer, hooks
        from detectron2.modeling import build_model
        from detectron2.solver import build_lr_scheduler, build_optimizer
        from detectron2.utils import comm

        out_dir = Path(out_dir)
        cats = CategoryMap.from_dataset(dataset)
        start = self.start_weights()
        if start is not None:
            start = checkpoint_dict(start, Path(self.cfg.weights))
            self._start = None
        device = resolve_device(self.cfg.device)
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world > 1 and not torch.distributed.is_initialized():
            torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
            if torch.cuda.is_available():
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        c = self._build_cfg(len(cats), device)
        s = self.cfg.schedule
        n = training_image_count(dataset, s.empty_images)
        iters = s.iterations or max(1, -(-n // s.batch_size)) * (s.epochs or 1)
        c.SOLVER.MAX_ITER = iters
        c.SOLVER.STEPS = tuple(int(iters * f) for f in (0.67, 0.89)) if iters >= 10 else ()
        name = f"cxrfuse_{self.name}_{os.getpid()}_{id(dataset)}"
        dicts = dataset_dicts(dataset, cats)
        DatasetCatalog.register(name, lambda: dicts)
        MetadataCatalog.get(name).thing_classes = list(cats.names)
        c.DATASETS.TRAIN = (name,)
        c.DATASETS.TEST = ()
        c.freeze()
        from detectron2.utils.env import seed_all_rng

        seed_all_rng(s.seed + comm.get_rank())
        model = build_model(c)
        if start is not None:
            report = load_into(model, start, Path(self.cfg.weights))
            if comm.is_main_process():
                report.write(out_dir)
        if world > 1:
            model = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[comm.get_local_rank()] if c.MODEL.DEVICE == "cuda" else None
            )
        loader = build_detection_train_loader(c)
        optimizer = build_optimizer(c, model)
        trainer = SimpleTrainer(model, loader, optimizer)
        resume = load_weights(self.resume_from) if self.resume_from else None
        if resume is not None and not {"model", "trainer"} <= set(resume):
            raise AdapterError(f"{self.resume_from}: not a CXRFuse Detectron2 resume checkpoint")
        start_iter = int(resume["trainer"]["iteration"]) + 1 if resume is not None else 0
        main = comm.is_main_process()
        log = LossLog(out_dir / "loss.csv", resume_step=start_iter if resume is not None else None) if main else None
        steps_per_epoch = max(1, -(-n // s.batch_size))
        period = checkpoint_period(s.checkpoint_period, iters)
        bar = progress(total=iters, initial=start_iter, desc=f"train {self.name}", unit="it", disable=None if main else True)
        core_model = model.module if world > 1 else model

        class LossHook(hooks.HookBase):
            def after_step(self) -> None:
                it = self.trainer.iter
                if log is not None:
                    st = self.trainer.storage
                    terms = {k: v[0] for k, v in st.latest().items() if k.startswith("loss_")}
                    terms["loss"] = sum(terms.values())
                    log.write(it + 1, it // steps_per_epoch + 1, terms)
                bar.update(1)
                if period and (it + 1) % period == 0 and it + 1 < iters and main:
                    log.flush()
                    path = out_dir / RESUME_FILE
                    state = {"model": core_model.state_dict(), "trainer": self.trainer.state_dict()}
                    save_torch_file(path, {**state, "cxrfuse_model": model_record})
                    checkpoint_written(path)

        model_record = self.model_record()
        trainer.register_hooks(
            [
                hooks.IterationTimer(),
                hooks.LRScheduler(optimizer, build_lr_scheduler(c, optimizer)),
                LossHook(),
            ]
        )
        if resume is not None:  # after the hooks: the LR schedule's state is one of theirs
            core_model.load_state_dict(resume["model"])
            trainer.load_state_dict(resume["trainer"])
        try:
            if start_iter < iters:
                trainer.train(start_iter, iters)
        except FloatingPointError as e:
            raise AdapterError(
                f"{self.name}: training diverged ({e}); lower schedule.lr or clip gradients "
                "(SOLVER.CLIP_GRADIENTS in options)"
            ) from None
        finally:
            bar.close()
            if log is not None:
                log.close()
        weights = out_dir / "weights.pth"
        if comm.is_main_process():
            core = model.module if world > 1 else model
            save_torch_file(
                weights,
                {
                    "model": core.state_dict(),
                    "cxrfuse_categories": cats.to_json(),
                    "framework": "detectron2",
                    "config": c.dump(),
                    "cxrfuse_model": self.model_record(),
                },
            )
        DatasetCatalog.remove(name)
        self.weights, self._model, self.categories = weights, None, cats
        return weights

    # ------------------------------------------------------------------ predict
    def _load(self):
        if self._model is not None:
            return self._model
        from detectron2.modeling import build_model

        ckpt = self._checkpoint()
        if not isinstance(ckpt, dict) or "model" not in ckpt:
            raise AdapterError(f"{self.weights}: not a Detectron2 checkpoint (no 'model' entry)")
        if "cxrfuse_categories" not in ckpt:
            raise AdapterError(f"{self.weights}: no class list; train it with `python -m adapters train`")
        self.check_model(self.recorded_model(ckpt), self.weights)
        self.categories = CategoryMap.from_json(ckpt["cxrfuse_categories"])
        c = self._build_cfg(len(self.categories), resolve_device(self.cfg.device))
        c.freeze()
        model = build_model(c)
        self._check_fits(model, ckpt["model"])
        model.load_state_dict(ckpt["model"], strict=False)
        model.eval()
        self._d2cfg, self._model = c, model
        return model

    def predict(self, images: Iterable[Path | np.ndarray], batch_size: int = 4) -> Iterator[Detections]:
        import torch
        from detectron2.data import transforms as T

        model = self._load()
        c = self._d2cfg
        aug = T.ResizeShortestEdge([c.INPUT.MIN_SIZE_TEST] * 2, c.INPUT.MAX_SIZE_TEST)
        for batch in batched(images, batch_size):
            inputs = []
            for im in batch:
                arr = read_image_bgr(im)
                h, w = arr.shape[:2]
                resized = aug.get_transform(arr).apply_image(arr)
                inputs.append(
                    {"image": torch.as_tensor(resized.transpose(2, 0, 1).copy()), "height": h, "width": w}
                )
            with torch.no_grad():
                outputs = model(inputs)
            for inp, out in zip(inputs, outputs, strict=True):
                inst = out["instances"].to("cpu")
                labels = self.categories.category(inst.pred_classes.numpy())
                yield to_detections(
                    inst.pred_boxes.tensor.numpy(), inst.scores.numpy(), labels, inp["width"], inp["height"]
                )
