"""The whole flow as one command, driven by a pipeline config (``configs/pipelines/*.yaml``).

Steps, each a run of the project's own command line in a fresh process (so the frameworks
never share one interpreter, and each step's memory is returned when it ends):

1. ``synth``: synthetic VinBigData raw data (DICOMs + train.csv), when the config asks for it;
2. ``convert``: raw data → COCO dataset with folds;
3. ``train:NAME`` and ``predict:NAME`` for every detector config;
4. ``train:gate`` and ``predict:gate`` for the classifier gate;
5. ``fuse:METHOD`` and ``fuse:METHOD+gate`` for every fusion method;
6. ``leaderboard``: the headline metric (with the findings of this run) and the HTML report,
   plus a COCO-mAP leaderboard;
7. ``submission``: the Kaggle CSV of the best fusion.

A step whose outputs all exist is skipped (``--force`` redoes everything, ``--force STEP``
one step). Everything lands under the config's ``work_dir``.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
METHODS = ("wbf", "nms", "soft-nms", "nmw")


class PipelineError(ValueError):
    """A pipeline config that does not validate, or a step that failed; names the key or the step."""


_TOP = {"work_dir", "data", "models", "gate", "ensemble", "leaderboard", "submission"}
_DATA = {"kind", "synth", "raw", "convert"}
_SYNTH = {"n_images", "seed", "min_size", "max_size", "workers"}
_RAW = {"csv", "images", "size_table"}
_CONVERT = {"size", "folds", "val_fold", "annotators", "iou_thr", "workers"}
_ENSEMBLE = {"methods", "iou_thr", "skip_box_thr", "conf_type", "sigma", "gate_mode", "low", "high"}
_LEADERBOARD = {"metric", "examples", "conf"}
_SUBMISSION = {"kind"}


def _check_keys(section: str, data: Any, allowed: set[str], where: str) -> dict:
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise PipelineError(f"{where}: {section or 'the top level'} must be a mapping, got {data!r}")
    unknown = sorted(set(data) - allowed)
    if unknown:
        name = f"{section}.{unknown[0]}" if section else unknown[0]
        raise PipelineError(f"{where}: unknown key {name!r} (known: {', '.join(sorted(allowed))})")
    return data


@dataclass
class ModelEntry:
    config: Path
    overrides: list[str] = field(default_factory=list)
    name: str = ""
    adapter: str = ""


@dataclass
class Pipeline:
    """A validated pipeline config."""

    source: Path
    work_dir: Path
    data: dict[str, Any]
    models: list[ModelEntry]
    gate: ModelEntry | None
    ensemble: dict[str, Any]
    leaderboard: dict[str, Any]
    submission: dict[str, Any]

    @property
    def coco(self) -> Path:
        return self.work_dir / "coco"

    @property
    def preds(self) -> Path:
        return self.work_dir / "preds"


def _entry(item: Any, where: str, key: str, overrides: Sequence[str]) -> ModelEntry:
    if isinstance(item, str):
        item = {"config": item}
    item = _check_keys(key, item, {"config", "set"}, where)
    if "config" not in item:
        raise PipelineError(f"{where}: {key} needs 'config'")
    cfg = Path(item["config"])
    cfg = cfg if cfg.is_absolute() else REPO / cfg
    if not cfg.is_file():
        raise PipelineError(f"{where}: {key}: config {item['config']} not found")
    sets = item.get("set") or []
    if isinstance(sets, dict):
        sets = [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in sets.items()]
    from adapters.config import load_config

    extra = [*sets, *overrides]
    model = load_config(cfg, extra)
    return ModelEntry(cfg, extra, model.name, model.adapter)


def load_pipeline(
    path: str | Path, model_overrides: Sequence[str] = (), work_dir: str | None = None
) -> Pipeline:
    """Read and validate a pipeline YAML; ``model_overrides`` (``key=value``) apply to every model and the gate.

    Raises:
        PipelineError: naming the file and the key at fault.
    """
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: no such pipeline config")
    where = str(path)
    data = _check_keys("", yaml.safe_load(path.read_text()) or {}, _TOP, where)
    d = _check_keys("data", data.get("data"), _DATA, where)
    if d.get("kind", "vinbig") != "vinbig":
        raise PipelineError(f"{where}: data.kind must be vinbig (the pipeline's metric and submission)")
    _check_keys("data.synth", d.get("synth"), _SYNTH, where)
    _check_keys("data.raw", d.get("raw"), _RAW, where)
    _check_keys("data.convert", d.get("convert"), _CONVERT, where)
    if bool(d.get("synth")) == bool(d.get("raw")):
        raise PipelineError(f"{where}: data needs exactly one of 'synth' (generate) or 'raw' (csv, images)")
    ens = _check_keys("ensemble", data.get("ensemble"), _ENSEMBLE, where)
    methods = ens.get("methods", list(METHODS))
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise PipelineError(f"{where}: ensemble.methods: unknown {bad} (known: {', '.join(METHODS)})")
    models = data.get("models") or []
    if not isinstance(models, list) or not models:
        raise PipelineError(f"{where}: models must be a non-empty list of configs")
    entries = [_entry(m, where, f"models[{k}]", model_overrides) for k, m in enumerate(models)]
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        raise PipelineError(f"{where}: two models share a name: {names}")
    gate = _entry(data["gate"], where, "gate", model_overrides) if data.get("gate") else None
    wd = Path(work_dir or data.get("work_dir") or "work/pipeline")
    return Pipeline(
        source=path,
        work_dir=wd,
        data=d,
        models=entries,
        gate=gate,
        ensemble={**ens, "methods": methods},
        leaderboard=_check_keys("leaderboard", data.get("leaderboard"), _LEADERBOARD, where),
        submission=_check_keys("submission", data.get("submission"), _SUBMISSION, where),
    )


@dataclass
class Step:
    name: str
    command: list[str] | None  # None: a Python callable does the work
    outputs: list[Path]
    fn: Callable[[], None] | None = None


def _py(*args: object) -> list[str]:
    return [sys.executable, "-m", *(str(a) for a in args)]


def plan(p: Pipeline) -> list[Step]:
    """The steps of ``p`` in order, with the files each must leave behind."""
    steps: list[Step] = []
    wd, coco, preds = p.work_dir, p.coco, p.preds
    d, conv = p.data, p.data.get("convert", {})
    if d.get("synth"):
        s = d["synth"]
        raw = wd / "raw"
        steps.append(
            Step(
                "synth",
                _py("convert", "synth", "vinbig", "--out", raw, "--n-images", s.get("n_images", 160),
                    "--seed", s.get("seed", 0), "--min-size", s.get("min_size", 384),
                    "--max-size", s.get("max_size", 512), "--workers", s.get("workers", 2)),
                [raw / "train.csv"],
            )
        )  # fmt: skip
        csv_path, images, size_table = raw / "train.csv", raw / "train", None
    else:
        r = d["raw"]
        csv_path, images, size_table = Path(r["csv"]), Path(r["images"]), r.get("size_table")
    cmd = _py("convert", "vinbig", "--csv", csv_path, "--images", images, "--out", coco,
              "--size", conv.get("size", 1024), "--folds", conv.get("folds", 5),
              "--val-fold", conv.get("val_fold", 0), "--annotators", conv.get("annotators", "wbf"),
              "--iou-thr", conv.get("iou_thr", 0.4), "--workers", conv.get("workers", 2))  # fmt: skip
    if size_table:
        cmd += ["--size-table", str(size_table)]
    steps.append(Step("convert", cmd, [coco / "train.json", coco / "val.json", coco / "all.json"]))
    train_json, val_json = coco / "train.json", coco / "val.json"
    for m in [*p.models, *([p.gate] if p.gate else [])]:
        run = wd / "runs" / m.name
        sets = [x for o in [*m.overrides, f"dataset.val={val_json}"] for x in ("--set", o)]
        weights = run / ("weights.pt" if m.adapter == "ultralytics" else "weights.pth")
        steps.append(
            Step(f"train:{m.name}", _py("adapters", "train", m.config, "--dataset", train_json,
                                        "--out-dir", run, *sets), [weights, run / "loss.csv"])
        )  # fmt: skip
        out = preds / ("gate.json" if m is p.gate else f"{m.name}.json")
        steps.append(
            Step(f"predict:{m.name}", _py("adapters", "predict", m.config, "--weights", weights,
                                          "--dataset", val_json, "--out", out, *sets), [out])
        )  # fmt: skip
    model_preds = [preds / f"{m.name}.json" for m in p.models]
    e = p.ensemble
    opts = []
    for key, flag in (("iou_thr", "--iou-thr"), ("skip_box_thr", "--skip-box-thr"),
                      ("conf_type", "--conf-type"), ("sigma", "--sigma")):  # fmt: skip
        if key in e:
            opts += [flag, str(e[key])]
    gate_opts = ["--gate-mode", e.get("gate_mode", "append")]
    if e.get("gate_mode") == "filter":
        gate_opts += ["--low", str(e.get("low", 0.1)), "--high", str(e.get("high", 0.9))]
    for method in e["methods"] if len(p.models) > 1 else []:
        for gated in (False, True) if p.gate else (False,):
            name = f"{method}+gate" if gated else method
            out = preds / f"fusion_{name.replace('+', '_')}.json"
            cmd = _py("ensemble", "run", "--method", method, "--dataset", val_json, "--preds", *model_preds,
                      *opts, "--name", name, "--out", out)  # fmt: skip
            if gated:
                cmd += ["--gate", str(preds / "gate.json"), *gate_opts]
            steps.append(Step(f"fuse:{name}", cmd, [out]))
    lb = p.leaderboard
    metric = lb.get("metric", "vinbig")
    report = wd / "report"
    steps.append(Step("leaderboard", None, [wd / "leaderboard" / "leaderboard.json", report / "index.html"]))
    steps[-1].fn = lambda: _leaderboards(p, metric, lb, report)
    steps.append(Step("submission", None, [wd / "submission.csv"]))
    steps[-1].fn = lambda: _submission(p)
    return steps


def _all_preds(p: Pipeline) -> list[Path]:
    return sorted(x for x in p.preds.glob("*.json") if not x.name.endswith(".meta.json"))


def findings(rows: Sequence[Any], metric_label: str) -> list[str]:
    """Plain statements, from scored leaderboard rows, on fusion vs the best model and on the gate.

    ``rows`` need ``name``, ``kind`` (``detector``/``fusion``) and ``score``; a gated fusion is
    named ``METHOD+gate`` beside its ungated ``METHOD``.
    """
    notes: list[str] = []
    singles = [r for r in rows if r.kind == "detector"]
    fusions = [r for r in rows if r.kind == "fusion"]
    # like against like: the models carry no gate, so fusion is judged on its ungated runs
    plain = [r for r in fusions if not r.name.endswith("+gate")] or fusions
    if singles and plain:
        bs = max(singles, key=lambda r: r.score)
        bf = max(plain, key=lambda r: r.score)
        verdict = "beat" if bf.score > bs.score else "did not beat"
        notes.append(
            f"Fusion {verdict} the best single model on {metric_label} (both without the gate): "
            f"best fusion {bf.name} {bf.score:.4f} vs best model {bs.name} {bs.score:.4f} "
            f"({bf.score - bs.score:+.4f})."
        )
    by_name = {r.name: r for r in fusions}
    pairs = [(r, by_name[f"{r.name}+gate"]) for r in fusions if f"{r.name}+gate" in by_name]
    if pairs:
        gains = [b.score - a.score for a, b in pairs]
        helped = sum(g > 0 for g in gains)
        verdict = "helped" if helped == len(pairs) else "did not help" if helped == 0 else "helped in part"
        detail = ", ".join(f"{a.name} {a.score:.4f} → {b.score:.4f}" for a, b in pairs)
        notes.append(
            f"The gate {verdict}: {helped} of {len(pairs)} fusion methods improved with it "
            f"(mean change {sum(gains) / len(gains):+.4f}): {detail}."
        )
    return notes


def _leaderboards(p: Pipeline, metric: str, lb: dict, report: Path) -> None:
    from eval.leaderboard import build_leaderboard, leaderboard

    preds = [str(x) for x in _all_preds(p)]
    val = p.coco / "val.json"
    board = build_leaderboard(val, preds, metric=metric)
    notes = findings(board.rows, board.metric.label)
    res = leaderboard(
        val,
        preds,
        metric=metric,
        out=p.work_dir / "leaderboard",
        html=report,
        runs=[str(p.work_dir / "runs" / "*")],
        examples=lb.get("examples", 4),
        score_thr=lb.get("conf", 0.25),
        notes=notes,
    )
    print(res.board.to_text())
    if metric != "coco":
        coco = leaderboard(val, preds, metric="coco", out=p.work_dir / "leaderboard_coco", examples=0)
        print(coco.board.to_text())
    for n in notes:
        print(n)
    from core.io import atomic_open

    with atomic_open(p.work_dir / "findings.md") as f:
        f.write("".join(f"- {n}\n" for n in notes))


def _submission(p: Pipeline) -> None:
    from eval.leaderboard import build_leaderboard

    board = build_leaderboard(p.coco / "val.json", [str(x) for x in _all_preds(p)], metric="vinbig")
    best = next((r for r in board.rows if r.kind == "fusion"), board.rows[0])  # rows: best first
    src = best.path
    cmd = _py("convert", "submission", "--dataset", p.coco / "val.json", "--preds", src, "--kind",
              p.submission.get("kind", "vinbig"), "--out", p.work_dir / "submission.csv")  # fmt: skip
    if p.gate and best.no_finding != "predicted":
        cmd += ["--gate", str(p.preds / "gate.json")]
    _run(cmd)
    print(f"submission from {best.name}: {p.work_dir / 'submission.csv'}")


def _run(cmd: list[str]) -> None:
    env = {**os.environ, "YOLO_OFFLINE": "1", "MPLBACKEND": "Agg", "PYTHONPATH": str(REPO)}
    r = subprocess.run(cmd, cwd=os.getcwd(), env=env)
    if r.returncode != 0:
        raise PipelineError(f"step failed (exit {r.returncode}): {shlex.join(cmd)}")


def run(
    p: Pipeline, force: Sequence[str] | bool = False, only: Sequence[str] = ()
) -> list[tuple[str, str, float]]:
    """Run the steps of ``p``; returns ``(step, done|skipped, seconds)`` per step.

    ``force=True`` redoes every step; a list redoes the steps named (or prefixed) there.
    """
    steps = plan(p)
    p.work_dir.mkdir(parents=True, exist_ok=True)
    report: list[tuple[str, str, float]] = []
    t_all = time.perf_counter()
    for k, step in enumerate(steps, 1):
        if only and not any(step.name == o or step.name.startswith(f"{o}:") for o in only):
            continue
        forced = force is True or (
            not isinstance(force, bool)
            and any(step.name == f or step.name.startswith(f"{f}:") for f in force)
        )
        head = f"[{k}/{len(steps)}] {step.name}"
        if not forced and all(o.exists() for o in step.outputs):
            print(f"\033[1m{head}\033[0m: outputs exist, skipped (--force {step.name} redoes it)", flush=True)
            report.append((step.name, "skipped", 0.0))
            continue
        print(f"\033[1m{head}\033[0m", flush=True)
        t0 = time.perf_counter()
        if step.fn is not None:
            step.fn()
        else:
            _run(step.command)
        missing = [o for o in step.outputs if not o.exists()]
        if missing:
            raise PipelineError(f"step {step.name} ended without writing {missing[0]}")
        dt = time.perf_counter() - t0
        print(f"\033[1m{head}\033[0m done in {dt:.0f} s", flush=True)
        report.append((step.name, "done", dt))
    total = time.perf_counter() - t_all
    print(f"pipeline finished in {total:.0f} s; report: {p.work_dir / 'report' / 'index.html'}")
    (p.work_dir / "timings.json").write_text(json.dumps(report, indent=1))
    return report
