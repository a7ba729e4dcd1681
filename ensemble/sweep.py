"""``python -m ensemble sweep``: score a grid of fusion (and gate) settings on a validation set.

Every fusion setting (method × ``iou_thr`` × ``skip_box_thr`` × weights, × ``conf_type`` for WBF,
× ``sigma`` for Soft-NMS) is fused once with `fusion.engine.fuse_many`; with a gate file, each
fused result is then combined with every gate setting (mode, and for ``filter`` every ``low <= high``
pair). Each result is scored by ``metric`` on the fused `Detections` themselves:

- ``vinbig``: `eval.metrics.vinbig_map` (mAP@0.4 over classes 0..14; "No finding" rows come from the
  gate, so without a gate class 14 scores 0 on a dataset with normal images);
- ``coco``: `eval.metrics.coco_map` at IoU 0.50:0.95, at most 100 detections per image and class;
- ``rsna``: `eval.metrics.rsna_score`.

"No finding" rows are removed before the ``coco`` and ``rsna`` metrics (they have no class 14).
The file ``run`` writes with the same settings holds the same rows rounded as COCO results are
(boxes to 0.01 px, scores to 1e-6), so ``python -m eval`` may score it a little differently
(around 1e-7 on test data; a box on an IoU threshold could flip a match). Scoring the rounded rows
instead would build a results list per setting, three quarters of a setting's time.
The folder ``out`` receives ``results.csv`` and ``results.json`` (every setting with its score, best
first; ties keep grid order) and ``best.yaml`` (`fusion.settings`), which ``run --config`` takes.
"""

from __future__ import annotations

import csv
import itertools
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from core.coco import CocoDataset
from core.detections import Detections
from core.io import atomic_open, write_json
from fusion.engine import METHODS, fuse_many
from fusion.gate import GATE_MODES, apply_gate, check_gate_options, strip_no_finding
from ensemble.inputs import read_inputs
from fusion.settings import FusionSettings, write_settings

METRICS = ("vinbig", "coco", "rsna")
CSV_COLUMNS = (
    "rank",
    "score",
    "method",
    "weights",
    "iou_thr",
    "skip_box_thr",
    "conf_type",
    "sigma",
    "soft_method",
    "soft_score_thr",
    "gate_mode",
    "low",
    "high",
    "fuse_seconds",
)


@dataclass(frozen=True)
class SweepGrid:
    """The values to try. Fusion options not listed keep `FusionSettings`' defaults.

    Attributes:
        methods: fusion methods.
        iou_thrs, skip_box_thrs: thresholds of every method.
        weights: weight sets, one weight per model each; None for `default_weights`.
        conf_types: WBF's ``conf_type`` values (other methods ignore it).
        sigmas: Soft-NMS's ``sigma`` values (other methods ignore it).
        gate_modes: gate rules tried when there is a gate file; ``none`` tries no gate.
        lows, highs: the ``filter`` thresholds; every pair with ``low <= high`` is tried.
    """

    methods: tuple[str, ...] = ("wbf",)
    iou_thrs: tuple[float, ...] = (0.4, 0.5, 0.6)
    skip_box_thrs: tuple[float, ...] = (0.0, 0.02)
    weights: tuple[tuple[float, ...], ...] | None = None
    conf_types: tuple[str, ...] = ("avg",)
    sigmas: tuple[float, ...] = (0.5,)
    gate_modes: tuple[str, ...] = GATE_MODES
    lows: tuple[float, ...] = (0.05, 0.1, 0.2)
    highs: tuple[float, ...] = (0.8, 0.9, 0.95)

    def fusion_settings(self, n_models: int) -> list[FusionSettings]:
        """Every fusion setting of the grid (no gate), validated, without duplicates.

        Raises:
            ValueError: for an empty list, an unknown method, a bad value or a weight set whose
                length is not ``n_models``.
        """
        for name in ("methods", "iou_thrs", "skip_box_thrs", "conf_types", "sigmas"):
            if not getattr(self, name):
                raise ValueError(f"the sweep grid's {name} is empty")
        bad = [m for m in self.methods if m not in METHODS]
        if bad:
            raise ValueError(f"unknown methods {bad}; known: {', '.join(METHODS)}")
        weight_sets = self.weights if self.weights is not None else default_weights(n_models)
        if not weight_sets:
            raise ValueError("the sweep grid's weights is empty")
        out: list[FusionSettings] = []
        for method, w, iou, skip in itertools.product(
            self.methods, weight_sets, self.iou_thrs, self.skip_box_thrs
        ):
            confs = self.conf_types if method == "wbf" else (FusionSettings.conf_type,)
            sigmas = self.sigmas if method == "soft-nms" else (FusionSettings.sigma,)
            for conf, sigma in itertools.product(confs, sigmas):
                s = FusionSettings(
                    method=method,
                    weights=tuple(float(x) for x in w),
                    iou_thr=float(iou),
                    skip_box_thr=float(skip),
                    conf_type=conf,
                    sigma=float(sigma),
                )
                s.validate(n_models)
                if s not in out:
                    out.append(s)
        return out

    def gate_settings(self) -> list[tuple[str | None, float | None, float | None]]:
        """Every ``(mode, low, high)`` of the grid; ``(None, None, None)`` for ``none``.

        Raises:
            ValueError: for an unknown mode, a threshold outside ``[0, 1]``, or ``filter`` with no
                pair ``low <= high``.
        """
        if not self.gate_modes:
            raise ValueError("the sweep grid's gate_modes is empty")
        out: list[tuple[str | None, float | None, float | None]] = []
        for mode in self.gate_modes:
            if mode == "none":
                out.append((None, None, None))
            elif mode == "filter":
                pairs = [(lo, hi) for lo, hi in itertools.product(self.lows, self.highs) if lo <= hi]
                if not pairs:
                    raise ValueError(
                        f"the gate mode 'filter' needs thresholds with low <= high, got lows "
                        f"{list(self.lows)} and highs {list(self.highs)}"
                    )
                for lo, hi in pairs:
                    check_gate_options("filter", float(lo), float(hi))
                    out.append(("filter", float(lo), float(hi)))
            else:
                check_gate_options(mode)
                out.append((mode, None, None))
        return list(dict.fromkeys(out))


def default_weights(n_models: int) -> list[tuple[float, ...]]:
    """All 1, then each model in turn weighted 2 (``n + 1`` sets; one set for one model)."""
    sets = [tuple(1.0 for _ in range(n_models))]
    if n_models > 1:
        sets += [tuple(2.0 if j == i else 1.0 for j in range(n_models)) for i in range(n_models)]
    return sets


def score(dataset: CocoDataset, dets: Mapping[int, Detections], metric: str = "vinbig") -> float:
    """``dets`` scored on ``dataset`` by ``metric`` (see the module docstring).

    Raises:
        ValueError: for an unknown ``metric``, or as the metric.
    """
    from eval.metrics import coco_map, rsna_score, vinbig_map

    gt = dataset.to_dict()
    if metric == "vinbig":
        return float(vinbig_map(gt, dets).map)
    if metric == "coco":
        return float(coco_map(gt, strip_no_finding(dets), max_dets=100).map)
    if metric == "rsna":
        return float(rsna_score(gt, strip_no_finding(dets)))
    raise ValueError(f"unknown metric {metric!r}; known: {', '.join(METRICS)}")


@dataclass(frozen=True)
class SweepResult:
    """A finished sweep.

    Attributes:
        rows: one dict per setting (the ``CSV_COLUMNS``), best first.
        best: the settings of the first row.
        best_score: its score.
        out: the folder holding ``results.csv``, ``results.json`` and ``best.yaml``.
    """

    rows: list[dict[str, Any]]
    best: FusionSettings
    best_score: float
    out: Path


def sweep(
    preds: Sequence[str | Path],
    dataset: str | Path,
    out: str | Path,
    grid: SweepGrid = SweepGrid(),
    *,
    metric: str = "vinbig",
    gate: str | Path | None = None,
    progress: Callable[..., Any] | None = None,
) -> SweepResult:
    """Score every setting of ``grid`` on ``dataset`` and write the ranking and the best settings.

    Args:
        preds: COCO results files of the models, in the order of the weights.
        dataset: the validation dataset (with ground truth) they were predicted on.
        out: folder for ``results.csv``, ``results.json`` and ``best.yaml`` (created).
        grid: the values to try.
        metric: ``vinbig``, ``coco`` or ``rsna``.
        gate: gate file of ``p_abnormal`` scores; without it no gate setting is tried.
        progress: a ``tqdm``-like class for a progress bar, or None.

    Returns:
        `SweepResult`.

    Raises:
        FileNotFoundError: naming a missing input.
        ValueError: naming the file or value at fault (`ensemble.inputs`, `SweepGrid`), or for an
            unknown ``metric``.
    """
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; known: {', '.join(METRICS)}")
    t_start = time.perf_counter()
    inputs = read_inputs(preds, dataset, gate)
    fusions = grid.fusion_settings(len(inputs.per_model))
    gates = grid.gate_settings() if inputs.gate is not None else [(None, None, None)]
    sizes = inputs.sizes
    rows: list[dict[str, Any]] = []
    settings_of: list[FusionSettings] = []
    bar = progress(total=len(fusions) * len(gates), unit="setting", desc="sweep") if progress else None
    try:
        for fs in fusions:
            t0 = time.perf_counter()
            fused = fuse_many(inputs.per_model, sizes, **fs.fusion_options())
            fuse_seconds = time.perf_counter() - t0
            for mode, low, high in gates:
                s = replace(fs, gate_mode=mode, low=low, high=high)
                dets = fused if mode is None else apply_gate(fused, inputs.gate, mode, low, high)  # type: ignore[arg-type]
                rows.append(_row(s, score(inputs.dataset, dets, metric), fuse_seconds))
                settings_of.append(s)
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    order = sorted(range(len(rows)), key=lambda k: _rank_key(rows[k]["score"]))
    rows = [rows[k] for k in order]
    for rank, r in enumerate(rows, start=1):
        r["rank"] = rank
    best, best_score = settings_of[order[0]], rows[0]["score"]

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({**r, "weights": ",".join(f"{x:g}" for x in r["weights"])})
    info = {
        "metric": metric,
        "dataset": str(dataset),
        "inputs": list(inputs.names),
        "gate": None if gate is None else str(gate),
    }
    write_json(
        out / "results.json",
        {
            **info,
            "input_files": [str(p) for p in inputs.paths],
            "settings": len(rows),
            "seconds": round(time.perf_counter() - t_start, 3),
            "results": rows,
        },
        indent=1,
    )
    write_settings(out / "best.yaml", best, {**info, "score": best_score})
    return SweepResult(rows, best, best_score, out)


def _row(s: FusionSettings, value: float, fuse_seconds: float) -> dict[str, Any]:
    d = s.to_dict()
    return {"rank": 0, "score": value, **d, "fuse_seconds": round(fuse_seconds, 4)}


def _rank_key(value: float) -> float:
    """Descending score, NaN last (a metric is NaN when no class has ground truth)."""
    return math.inf if math.isnan(value) else -value
