"""MMDetection 3.x Faster R-CNN behind the common interface.

The model is an MMDetection Python config shipped under ``configs/mmdet/`` (inheriting
mmdet's own model definitions with ``mmdet::``); the adapter adds the data pipeline,
the schedule and the class count, and trains with MMEngine's `Runner` (so
``torchrun --nproc_per_node N -m adapters train ...`` trains on N GPUs with
``launcher='pytorch'``). The model config's ``options`` are dotted MMEngine config keys
merged last (``{model.rpn_head.anchor_generator.scales: [4]}``). Checkpoints are read by
the adapter without running code (`adapters.base.load_weights`: ``torch.load(weights_only=True)``),
never by MMEngine's loader: an MMDetection model-zoo ``.pth`` (``{state_dict, meta}``) and the
checkpoints CXRFuse writes hold tensors and plain data. Starting from weights made for other
classes loads every tensor whose name and shape fit; the box head's ``fc_cls`` and
class-specific ``fc_reg`` start as initialised (``OUT/weights_report.json``).
"""

from __future__ import annotations

import os
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
    read_image_bgr,
    resolve_device,
    to_detections,
    training_image_count,
)
from adapters.weights import save_torch_file, tensor_dict, transfer_weights
from core.coco import CocoDataset
from core.detections import Detections


def _state_dict(ckpt: Any, path: Path) -> dict:
    try:
        return tensor_dict(ckpt, path, ("state_dict", "model"))
    except AdapterError:
        raise AdapterError(f"{path}: not an MMDetection checkpoint (no 'state_dict')") from None


class MMDetDetector(DetectorAdapter):
    """Faster R-CNN (or another two-stage detector) from an MMDetection config."""

    def _pipelines(self) -> tuple[list, list]:
        size = self.cfg.image_size
        train = [
            dict(type="LoadImageFromFile"),
            dict(type="LoadAnnotations", with_bbox=True),
            dict(type="Resize", scale=(size, size), keep_ratio=True),
            dict(type="RandomFlip", prob=0.5),
            dict(type="PackDetInputs"),
        ]
        test = [
            dict(type="LoadImageFromFile"),
            dict(type="Resize", scale=(size, size), keep_ratio=True),
            dict(
                type="PackDetInputs",
                meta_keys=("img_id", "img_path", "ori_shape", "img_shape", "scale_factor"),
            ),
        ]
        return train, test

    def _mm_cfg(self, cats: CategoryMap):
        from mmengine.config import Config

        c = Config.fromfile(str(self.cfg.model_path()))
        c.default_scope = "mmdet"
        c.model.roi_head.bbox_head.num_classes = len(cats)
        p = self.cfg.predict
        c.model.test_cfg.rcnn.score_thr = float(p.score_thr)
        c.model.test_cfg.rcnn.nms.iou_threshold = float(p.nms_iou)
        c.model.test_cfg.rcnn.max_per_img = p.max_dets
        _, test = self._pipelines()
        c.test_dataloader = dict(
            dataset=dict(type="CocoDataset", pipeline=test, metainfo=dict(classes=cats.names))
        )
        if self.cfg.options:
            c.merge_from_dict(dict(self.cfg.options))
        return c

    def _train_dataset(self, dataset: CocoDataset, cats: CategoryMap) -> dict:
        """The MMDetection training dataset config; ``schedule.empty_images`` sets ``filter_empty_gt``."""
        train_pipe, _ = self._pipelines()
        return dict(
            type="CocoDataset",
            data_root="",
            ann_file=str(Path(dataset.path).resolve()),
            data_prefix=dict(img=str(Path(dataset.root).resolve()) + os.sep),
            metainfo=dict(classes=cats.names),
            filter_cfg=dict(filter_empty_gt=self.cfg.schedule.empty_images == "drop", min_size=1),
            pipeline=train_pipe,
        )

    def training_images(self, dataset: CocoDataset, out_dir: Path | None = None) -> int:
        """How many images MMDetection's training dataset holds for ``dataset`` under ``schedule.empty_images``.

        The dataset the runner's train dataloader builds (`_train_dataset`), built without training;
        ``dataset`` must have been written to a file (its ``path``).
        """
        import mmdet  # noqa: F401  (framework import, only here)
        from mmdet.registry import DATASETS
        from mmdet.utils import register_all_modules

        register_all_modules(init_default_scope=True)
        return len(DATASETS.build(self._train_dataset(dataset, CategoryMap.from_dataset(dataset))))

    # ------------------------------------------------------------------ train
    def train(self, dataset: CocoDataset, out_dir: Path) -> Path:
        import mmdet  # noqa: F401  (framework import, only here)
        from mmengine.hooks import Hook
        from mmengine.runner import Runner

        out_dir = Path(out_dir).resolve()
        cats = CategoryMap.from_dataset(dataset)
        start = self.start_weights()
        init = (_state_dict(start, Path(self.cfg.weights)), self.cfg.weights) if start is not None else None
        self._start = None
        ids = [int(c["id"]) for c in dataset.categories]
        if ids != sorted(ids):
            raise AdapterError(f"{dataset.path}: categories must be listed in id order for MMDetection")
        device = resolve_device(self.cfg.device)
        s = self.cfg.schedule
        n = training_image_count(dataset, s.empty_images)
        steps_per_epoch = max(1, -(-n // s.batch_size))
        iters = s.iterations or steps_per_epoch * (s.epochs or 1)
        c = self._mm_cfg(cats)
        c.work_dir = str(out_dir / "mmdet")
        c.train_dataloader = dict(
            batch_size=s.batch_size,
            num_workers=s.workers,
            persistent_workers=s.workers > 0,
            sampler=dict(type="InfiniteSampler", shuffle=True),
            batch_sampler=dict(type="AspectRatioBatchSampler"),
            dataset=self._train_dataset(dataset, cats),
        )
        c.train_cfg = dict(type="IterBasedTrainLoop", max_iters=iters, val_interval=iters + 1)
        for k in (
            "val_dataloader",
            "val_cfg",
            "val_evaluator",
            "test_dataloader",
            "test_cfg",
            "test_evaluator",
        ):
            c[k] = None
        c.optim_wrapper = dict(
            type="OptimWrapper",
            optimizer=dict(
                type="SGD", lr=float(s.lr), momentum=float(s.momentum), weight_decay=float(s.weight_decay)
            ),
            clip_grad=dict(max_norm=35, norm_type=2),
        )
        sched = []
        if s.warmup_iters:
            sched.append(
                dict(type="LinearLR", start_factor=0.001, by_epoch=False, begin=0, end=s.warmup_iters)
            )
        if iters >= 10:
            sched.append(
                dict(
                    type="MultiStepLR",
                    by_epoch=False,
                    begin=0,
                    end=iters,
                    milestones=[int(iters * 0.67), int(iters * 0.89)],
                    gamma=0.1,
                )
            )
        c.param_scheduler = sched
        c.default_hooks = dict(
            timer=dict(type="IterTimerHook"),
            logger=dict(type="LoggerHook", interval=max(1, s.log_period)),
            param_scheduler=dict(type="ParamSchedulerHook"),
            # intermediate checkpoints only on request: the final weights are ours (weights.pth)
            checkpoint=dict(
                type="CheckpointHook", by_epoch=False, interval=s.checkpoint_period, max_keep_ckpts=2
            )
            if s.checkpoint_period
            else None,
            sampler_seed=dict(type="DistSamplerSeedHook"),
        )
        c.log_processor = dict(type="LogProcessor", window_size=1, by_epoch=False)
        c.env_cfg = dict(
            cudnn_benchmark=False,
            mp_cfg=dict(mp_start_method="fork", opencv_num_threads=0),
            dist_cfg=dict(backend="nccl"),
        )
        c.launcher = "pytorch" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else "none"
        c.randomness = dict(seed=s.seed)
        c.load_from, c.resume = None, False
        if device == "cpu":
            os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # MMEngine takes a visible GPU on its own
        runner = Runner.from_cfg(c)
        log = LossLog(out_dir / "loss.csv")

        class CxrfuseHook(Hook):
            priority = "LOWEST"

            def before_train(self, runner) -> None:
                if init is not None:  # after MMEngine's own init_weights, which would overwrite them
                    model = runner.model.module if hasattr(runner.model, "module") else runner.model
                    report = transfer_weights(model, *init)
                    if runner.rank == 0:
                        report.write(out_dir)

            def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
                if runner.rank != 0 or not outputs:
                    return
                terms = {k: float(v) for k, v in outputs.items() if k.startswith("loss")}
                log.write(runner.iter + 1, runner.iter // steps_per_epoch + 1, terms)

        runner.register_hook(CxrfuseHook(), priority="LOWEST")
        try:
            runner.train()
        finally:
            log.close()
        weights = out_dir / "weights.pth"
        if runner.rank == 0:
            model = runner.model.module if hasattr(runner.model, "module") else runner.model
            save_torch_file(
                weights,
                {
                    "state_dict": model.state_dict(),
                    "cxrfuse_categories": cats.to_json(),
                    "framework": "mmdet",
                },
            )
        self.weights, self._model, self.categories = weights, None, cats
        return weights

    # ------------------------------------------------------------------ predict
    def _load(self):
        if self._model is not None:
            return self._model
        from mmdet.apis import init_detector
        from mmengine.runner.checkpoint import load_state_dict

        ckpt = self._checkpoint()
        sd = _state_dict(ckpt, self.weights)
        if not isinstance(ckpt, dict) or "cxrfuse_categories" not in ckpt:
            raise AdapterError(f"{self.weights}: no class list; train it with `python -m adapters train`")
        self.categories = CategoryMap.from_json(ckpt["cxrfuse_categories"])
        device = resolve_device(self.cfg.device)
        c = self._mm_cfg(self.categories)
        model = init_detector(c, checkpoint=None, device="cuda" if device != "cpu" else "cpu")
        self._check_fits(model, sd)
        load_state_dict(model, sd, strict=True)
        model.dataset_meta = {"classes": self.categories.names}
        model.eval()
        self._model = model
        return model

    def predict(self, images: Iterable[Path | np.ndarray], batch_size: int = 4) -> Iterator[Detections]:
        from mmdet.apis import inference_detector

        model = self._load()
        for batch in batched(images, batch_size):
            arrays = [read_image_bgr(im) for im in batch]
            for arr, res in zip(arrays, inference_detector(model, arrays), strict=True):
                inst = res.pred_instances.cpu()
                labels = self.categories.category(inst.labels.numpy())
                yield to_detections(
                    inst.bboxes.numpy(), inst.scores.numpy(), labels, arr.shape[1], arr.shape[0]
                )
