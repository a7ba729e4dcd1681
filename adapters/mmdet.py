"""MMDetection 3.x Faster R-CNN behind the common interface.

The model is an MMDetection Python config shipped under ``configs/mmdet/`` (inheriting
mmdet's own model definitions with ``mmdet::``); the adapter adds the data pipeline,
the schedule and the class count, and trains with MMEngine's `Runner` (so
``torchrun --nproc_per_node N -m adapters train ...`` trains on N GPUs with
``launcher='pytorch'``). The model config's ``options`` are dotted MMEngine config keys
merged last (``{model.rpn_head.anchor_generator.scales: [4]}``). Checkpoints are read by
the adapter: MMEngine's loader calls ``torch.load`` with torch's default, which since
torch 2.6 refuses MMEngine's own checkpoints.
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
    load_torch_file,
    read_image_bgr,
    resolve_device,
    save_torch_file,
    to_detections,
)
from core.coco import CocoDataset
from core.detections import Detections


def _state_dict(ckpt: Any, path: Path) -> dict:
    if isinstance(ckpt, dict):
        for key in ("state_dict", "model"):
            if key in ckpt and isinstance(ckpt[key], dict):
                return ckpt[key]
        if ckpt and all(hasattr(v, "shape") for v in ckpt.values()):
            return ckpt
    raise AdapterError(f"{path}: not an MMDetection checkpoint (no 'state_dict')")


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

    # ------------------------------------------------------------------ train
    def train(self, dataset: CocoDataset, out_dir: Path) -> Path:
        import mmdet  # noqa: F401  (framework import, only here)
        from mmengine.hooks import Hook
        from mmengine.runner import Runner
        from mmengine.runner.checkpoint import load_state_dict

        out_dir = Path(out_dir).resolve()
        cats = CategoryMap.from_dataset(dataset)
        ids = [int(c["id"]) for c in dataset.categories]
        if ids != sorted(ids):
            raise AdapterError(f"{dataset.path}: categories must be listed in id order for MMDetection")
        device = resolve_device(self.cfg.device)
        s = self.cfg.schedule
        n = len(dataset.images)
        steps_per_epoch = max(1, -(-n // s.batch_size))
        iters = s.iterations or steps_per_epoch * (s.epochs or 1)
        train_pipe, _ = self._pipelines()
        c = self._mm_cfg(cats)
        c.work_dir = str(out_dir / "mmdet")
        c.train_dataloader = dict(
            batch_size=s.batch_size,
            num_workers=s.workers,
            persistent_workers=s.workers > 0,
            sampler=dict(type="InfiniteSampler", shuffle=True),
            batch_sampler=dict(type="AspectRatioBatchSampler"),
            dataset=dict(
                type="CocoDataset",
                data_root="",
                ann_file=str(Path(dataset.path).resolve()),
                data_prefix=dict(img=str(Path(dataset.root).resolve()) + os.sep),
                metainfo=dict(classes=cats.names),
                filter_cfg=dict(filter_empty_gt=True, min_size=1),
                pipeline=train_pipe,
            ),
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
        init_weights = self.cfg.weights

        class CxrfuseHook(Hook):
            priority = "LOWEST"

            def before_train(self, runner) -> None:
                if init_weights:  # after MMEngine's own init_weights, which would overwrite them
                    model = runner.model.module if hasattr(runner.model, "module") else runner.model
                    load_state_dict(
                        model, _state_dict(load_torch_file(init_weights), Path(init_weights)), strict=False
                    )

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
