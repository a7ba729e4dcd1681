"""Running a pipeline's steps (`run`): skip what is done, run the rest, write the leaderboards and the submission.

A step whose outputs all exist is skipped (``force=True`` redoes everything, ``force=[STEP, ...]``
the steps named). Everything lands under the config's ``work_dir``; ``timings.json`` records what
each step took. `run` reports each step to its ``on_event`` callback (the CLI prints a line as a
step starts and as it ends); without one it logs them at INFO. With ``step_logs`` each command's
standard output goes to ``work_dir/logs/STEP.log`` instead of ours (its standard error, where
warnings and errors go, stays ours).
"""

from __future__ import annotations

import glob
import json
import logging
import os
import shlex
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.config import REPO, Pipeline, PipelineError
from pipeline.plan import IN_PROCESS, Step, findings, module_command, plan

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StepEvent:
    """What `run` says about a step.

    Attributes:
        index, total: the step's number (from 1) and the number of steps in the plan.
        name: the step's name.
        status: ``start``, ``done`` or ``skipped`` (its outputs exist).
        seconds: how long the step took (``done`` only).
        summary: what an in-process step has to show (the leaderboards and findings, the
            submission's source), on ``done``; empty otherwise.
    """

    index: int
    total: int
    name: str
    status: str
    seconds: float = 0.0
    summary: str = ""


def describe(event: StepEvent) -> str:
    """One line for ``event``: ``[3/20] train:yolov8n_cpu done in 41 s``."""
    head = f"[{event.index}/{event.total}] {event.name}"
    if event.status == "skipped":
        return f"{head}: outputs exist, skipped (--force {event.name} redoes it)"
    if event.status == "done":
        return f"{head} done in {event.seconds:.0f} s"
    return head


def _log_event(event: StepEvent) -> None:
    log.info(describe(event))
    if event.summary:
        log.info(event.summary)


def _matches(name: str, patterns: Sequence[str]) -> bool:
    return any(name == x or name.startswith(f"{x}:") for x in patterns)


def run(
    p: Pipeline,
    force: Sequence[str] | bool = False,
    only: Sequence[str] = (),
    on_event: Callable[[StepEvent], None] | None = None,
    step_logs: bool = False,
) -> list[tuple[str, str, float]]:
    """Run the steps of ``p``; returns ``(step, done|skipped, seconds)`` per step run or skipped.

    Args:
        p: the pipeline (`pipeline.config.load_pipeline`).
        force: True redoes every step; a list redoes the steps named there (``train`` names every
            ``train:`` step).
        only: run only these steps (named the same way); empty for all.
        on_event: called as each step starts, ends or is skipped; None logs at INFO.
        step_logs: send each command's standard output to ``work_dir/logs/STEP.log``.

    Raises:
        PipelineError: naming the step, for a step that fails or ends without writing its outputs.
    """
    report_to = on_event or _log_event
    log_dir = p.work_dir / "logs" if step_logs else None
    steps = plan(p)
    p.work_dir.mkdir(parents=True, exist_ok=True)
    report: list[tuple[str, str, float]] = []
    for k, step in enumerate(steps, 1):
        if only and not _matches(step.name, only):
            continue
        forced = force is True or (not isinstance(force, bool) and _matches(step.name, force))
        if not forced and all(o.exists() for o in step.outputs):
            report_to(StepEvent(k, len(steps), step.name, "skipped"))
            report.append((step.name, "skipped", 0.0))
            continue
        report_to(StepEvent(k, len(steps), step.name, "start"))
        t0 = time.perf_counter()
        summary = run_step(p, step, log_dir)
        missing = [o for o in step.outputs if not o.exists()]
        if missing:
            raise PipelineError(f"step {step.name} ended without writing {missing[0]}")
        dt = time.perf_counter() - t0
        report_to(StepEvent(k, len(steps), step.name, "done", dt, summary))
        report.append((step.name, "done", dt))
    (p.work_dir / "timings.json").write_text(json.dumps(report, indent=1))
    return report


def run_step(p: Pipeline, step: Step, log_dir: Path | None = None) -> str:
    """Do one step of ``p``, whether or not its outputs exist.

    ``log_dir``: where its command's standard output goes (``STEP.log``); None for ours.

    Returns:
        What an in-process step has to show (empty for a command).

    Raises:
        PipelineError: naming the step's command, if it fails.
    """
    if step.command is None:
        if step.name not in IN_PROCESS:
            raise PipelineError(f"step {step.name}: no command and no in-process work")
        if step.name == "oof":
            return _oof(p)
        if step.name == "fold_fuse:gate":
            return _fold_gate(p)
        if step.name == "fuse_test":
            return _fuse_test(p, log_dir)
        return _leaderboards(p) if step.name == "leaderboard" else _submission(p, log_dir)
    if step.settings is not None:
        from fusion.settings import write_settings

        step.settings.path.parent.mkdir(parents=True, exist_ok=True)
        write_settings(step.settings.path, step.settings.settings, step.settings.info)
        log.debug("wrote %s", step.settings.path)
    _run(step.command, step.name, log_dir)
    return ""


def _all_preds(p: Pipeline) -> list[Path]:
    return sorted(x for x in p.eval_preds.glob("*.json") if not x.name.endswith(".meta.json"))


def oof_dataset(p: Pipeline):
    """The labelled images of the trained folds' validation sets, checked to cover each image once.

    Raises:
        PipelineError: if an image is in two of the folds' validation sets, or an image of
            ``all.json`` in a trained fold is in none.
    """
    from core.coco import CocoDataset

    all_ds = CocoDataset.load(p.coco / "all.json")
    seen: dict[int, int] = {}
    for k in p.cv_folds or ():
        for iid in CocoDataset.load(p.coco / f"fold{k}_val.json").image_ids:
            if iid in seen:
                raise PipelineError(f"oof: image {iid} is in the validation sets of folds {seen[iid]} and {k}")
            seen[iid] = k
    folds = set(p.cv_folds or ())
    expected = {im["id"] for im in all_ds.images if im.get("fold") in folds}
    if expected != set(seen):
        odd = sorted(expected ^ set(seen))
        raise PipelineError(f"oof: the folds' validation sets and all.json disagree on images {odd[:5]}")
    return all_ds.subset(sorted(seen)), seen


def _oof(p: Pipeline) -> str:
    """Join each model's (and the gate's) fold predictions into one out-of-fold file on ``coco/oof.json``.

    Raises:
        PipelineError: if the folds do not cover the OOF images exactly once (`oof_dataset`), or a
            fold's results hold an image outside its validation set.
    """
    from core.coco import CocoDataset
    from core.predictions import read_gate, read_meta, read_predictions, write_gate, write_predictions

    oof, fold_of = oof_dataset(p)
    oof.info = {**oof.info, "split": "oof", "folds": list(p.cv_folds or ())}
    folds = list(p.cv_folds or ())
    vals = {k: CocoDataset.load(p.coco / f"fold{k}_val.json") for k in folds}
    out = p.eval_preds
    for m in [*p.models, *([p.gate] if p.gate else [])]:
        stem = "gate" if m is p.gate else m.name
        files = {k: p.preds / f"fold{k}" / f"{stem}.json" for k in folds}
        meta = {**read_meta(files[folds[0]]), "name": p.row_name(stem) if m is not p.gate else "gate"}
        meta.update(dataset=str(p.eval_dataset), folds={str(k): str(f) for k, f in files.items()})
        if m is p.gate:
            scores: dict[int, float] = {}
            for k, f in files.items():
                scores.update(read_gate(f, vals[k]))
            _check_covered(scores, fold_of, stem)
            write_gate(out / "gate.json", scores, meta)
        else:
            dets = {}
            for k, f in files.items():
                dets.update(read_predictions(f, vals[k]))
            _check_covered(dets, fold_of, stem)
            write_predictions(out / f"{stem}.json", dets, meta, kind=meta.get("kind", "detector"))
    oof.write(p.eval_dataset)  # last: a step that failed half-way has not written its outputs
    return f"out-of-fold results of folds {folds} on {len(oof.images)} images: {out}"


def _check_covered(per_image, fold_of: dict[int, int], name: str) -> None:
    if set(per_image) != set(fold_of):
        odd = sorted(set(per_image) ^ set(fold_of))
        raise PipelineError(f"oof: {name}'s fold predictions do not cover the OOF images once: {odd[:5]}")


def _fold_gate(p: Pipeline) -> str:
    """The gate's test scores: the mean ``p_abnormal`` of its fold models."""
    from core.coco import CocoDataset
    from core.predictions import read_gate, read_meta, write_gate

    test = CocoDataset.load(p.coco_test / "all.json")
    files = [p.preds_test / f"fold{k}" / "gate.json" for k in p.cv_folds or ()]
    per_fold = [read_gate(f, test) for f in files]
    mean = {iid: sum(g[iid] for g in per_fold) / len(per_fold) for iid in test.image_ids}
    meta = {**read_meta(files[0]), "dataset": str(p.coco_test / "all.json"), "folds": [str(f) for f in files]}
    write_gate(p.preds_test / "gate.json", mean, meta)
    return f"gate: mean of {len(files)} fold models on {len(mean)} test images"


def _fuse_test(p: Pipeline, log_dir: Path | None) -> str:
    """Fuse the models' test results with the sweep's ``best.yaml`` (its gate rule included)."""
    from fusion.settings import read_settings
    from pipeline.plan import fused_test_path, sweep_dir

    best = sweep_dir(p) / "best.yaml"
    settings, _ = read_settings(best)
    out = fused_test_path(p)
    cmd = module_command(
        "ensemble", "run", "--config", best, "--dataset", p.coco_test / "all.json",
        "--preds", *[p.preds_test / f"{m.name}.json" for m in p.models], "--name", "test", "--out", out,
    )  # fmt: skip
    if settings.weights is not None:  # the sweep's model names carry @oof; the order is the same
        cmd += ["--weights", ",".join(f"{w:g}" for w in settings.weights)]
    if settings.gate_mode is not None:
        cmd += ["--gate", str(p.preds_test / "gate.json")]
    _run(cmd, "fuse_test", log_dir)
    return f"test set fused with {best}: {settings.method}" + (f", gate {settings.gate_mode}" if settings.gate_mode else "")


def _leaderboards(p: Pipeline) -> str:
    from core.io import atomic_open
    from eval.leaderboard import build_leaderboard, leaderboard
    from eval.scoring import Scorer

    lb = p.leaderboard
    metric = p.metric
    preds = [str(x) for x in _all_preds(p)]
    val = p.eval_dataset
    runs = str(p.work_dir / "runs" / "*" / ("fold*" if p.cv_folds else ""))
    board = build_leaderboard(val, preds, metric=metric, bootstrap=0)  # findings run paired bootstraps
    notes = findings(board.rows, board.metric.label, scorer=Scorer(board.dataset, metric))
    res = leaderboard(
        val,
        preds,
        metric=metric,
        out=p.work_dir / "leaderboard",
        html=p.work_dir / "report",
        runs=[runs] if glob.glob(runs) else [],  # the loss plots of the runs there are
        examples=lb.get("examples", 4),
        score_thr=lb.get("conf", 0.25),
        notes=notes,
    )
    texts = [res.board.to_text()]
    if metric != "coco":
        coco = leaderboard(val, preds, metric="coco", out=p.work_dir / "leaderboard_coco", examples=0)
        texts.append(coco.board.to_text())
    with atomic_open(p.work_dir / "findings.md") as f:
        f.write("".join(f"- {n}\n" for n in notes))
    return "\n".join([*texts, *notes])


def _submission(p: Pipeline, log_dir: Path | None) -> str:
    out = p.work_dir / "submission.csv"
    kind = p.submission_kind
    if p.test is not None:
        return _test_submission(p, out, log_dir)
    from eval.leaderboard import build_leaderboard

    metric = "vinbig" if kind == "vinbig" else p.metric
    board = build_leaderboard(p.eval_dataset, [str(x) for x in _all_preds(p)], metric=metric, bootstrap=0)
    best = next((r for r in board.rows if r.kind == "fusion"), board.rows[0])  # rows: best first
    cmd = module_command("convert", "submission", "--dataset", p.eval_dataset, "--preds", best.path,
                         "--kind", kind, "--out", out)  # fmt: skip
    if p.gate and kind == "vinbig" and best.no_finding != "predicted":
        cmd += ["--gate", str(p.eval_preds / "gate.json")]
    _run(cmd, "submission", log_dir)
    return f"submission from {best.name}: {out}"


def _test_submission(p: Pipeline, out: Path, log_dir: Path | None) -> str:
    """``submission.csv`` of the test set: one row per test id (checked against ``test.ids``)."""
    from fusion.settings import read_settings
    from pipeline.plan import fused_test_path, sweep_dir

    settings, _ = read_settings(sweep_dir(p) / "best.yaml")
    kind = p.submission_kind
    cmd = module_command("convert", "submission", "--dataset", p.coco_test / "all.json",
                         "--preds", fused_test_path(p), "--kind", kind, "--out", out)  # fmt: skip
    if p.gate and kind == "vinbig" and settings.gate_mode is None:  # "No finding" from the gate
        cmd += ["--gate", str(p.preds_test / "gate.json")]
    ids = (p.test or {}).get("ids")
    if ids:
        cmd += ["--ids", str(ids)]
    _run(cmd, "submission", log_dir)
    return f"test-set submission ({'checked against ' + str(ids) if ids else 'every test image'}): {out}"


def _run(cmd: Sequence[object], step: str, log_dir: Path | None) -> None:
    """Run one of the project's commands in a fresh process, its standard output going to ours or to
    ``log_dir/STEP.log``.

    Raises:
        PipelineError: with the step, the command line and the log file, if it exits non-zero.
    """
    argv = [str(c) for c in cmd]
    env = {**os.environ, "YOLO_OFFLINE": "1", "MPLBACKEND": "Agg", "PYTHONPATH": str(REPO)}
    log.info("running %s", shlex.join(argv))
    if log_dir is None:
        r = subprocess.run(argv, cwd=os.getcwd(), env=env)
        where = ""
    else:
        log_dir.mkdir(parents=True, exist_ok=True)
        log_file = log_dir / f"{step.replace(':', '_').replace('+', '_')}.log"
        with open(log_file, "w", encoding="utf-8") as out:
            out.write(f"$ {shlex.join(argv)}\n")
            out.flush()
            r = subprocess.run(argv, cwd=os.getcwd(), env=env, stdout=out)
        where = f"; its output: {log_file}"
    if r.returncode != 0:
        raise PipelineError(f"step {step} failed (exit {r.returncode}): {shlex.join(argv)}{where}")
