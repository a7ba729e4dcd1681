"""Running a pipeline's steps (`run`): skip what is done, run the rest, write the leaderboards and the submission.

A step runs when `pipeline.records` says it is not done (its record is missing or differs from
what it is made from now, it was interrupted, its outputs changed) or when a step it depends on ran
in this run; otherwise it is skipped. ``force=True`` redoes everything, ``force=[STEP, ...]`` the
steps named (and, as always, what depends on them). Just before a step runs its record is replaced
by a ``started`` one; it becomes ``done`` only once the step's outputs are all written, so a step
that is killed or fails is never taken for finished work. A ``train:`` step whose run folder holds
an earlier run gets ``--resume`` when that run is unfinished and was interrupted with the same
inputs (`train_flag`), ``--overwrite`` otherwise.

Steps form a graph (`pipeline.plan.link`); a step starts once the steps it depends on have ended.
The ``local`` executor runs ``jobs`` commands at a time in subprocesses (one by default, in the
plan's order); the ``ray`` executor (`pipeline.ray_executor`) runs each command as a Ray task with
the resources its model asks for. In-process steps run here, in the driver. When a step fails the
steps already running are waited for, nothing new starts, and `PipelineError` names the step, its
log file and the log's last lines.

Everything lands under the config's ``work_dir``: ``steps/STEP.json`` (the records), ``logs/STEP.log``
(each command's output, with ``step_logs``; always with Ray), ``summary.json`` (per step: ran,
skipped, failed or not run, why, seconds, start, end, host) and ``timings.json``. `run` reports each
step to its ``on_event`` callback (the CLI prints a line as a step starts and as it ends); without
one it logs them at INFO.
"""

from __future__ import annotations

import concurrent.futures as cf
import glob
import logging
import os
import shlex
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.class_probs import join_class_probs, mean_class_probs, read_class_probs
from core.io import write_json
from pipeline.config import REPO, Pipeline, PipelineError
from pipeline.plan import IN_PROCESS, Step, findings, matches, module_command, plan
from pipeline.proc import CommandResult, log_tail, run_command, step_env
from pipeline.records import (
    FAILED,
    STATUS_DONE,
    Fingerprints,
    Identity,
    finished_record,
    identity,
    own_status,
    project_version,
    resumable,
    safe_name,
    started_record,
    write_record,
)

log = logging.getLogger(__name__)

#: the executors `run` knows
EXECUTORS = ("local", "ray")


@dataclass(frozen=True)
class StepEvent:
    """What `run` says about a step.

    Attributes:
        index, total: the step's number (from 1) and the number of steps in the plan.
        name: the step's name.
        status: ``start``, ``done``, ``skipped`` (nothing it is made from changed) or ``failed``.
        seconds: how long the step took (``done`` and ``failed``).
        summary: what an in-process step has to show (the leaderboards and findings, the
            submission's source), on ``done``; empty otherwise.
        reason: why the step runs (on ``start``) or is skipped.
    """

    index: int
    total: int
    name: str
    status: str
    seconds: float = 0.0
    summary: str = ""
    reason: str = ""


def describe(event: StepEvent) -> str:
    """One line for ``event``: ``[3/20] train:yolov8n_cpu done in 41 s``."""
    head = f"[{event.index}/{event.total}] {event.name}"
    if event.status == "skipped":
        return f"{head}: skipped, {event.reason} (--force {event.name} redoes it)"
    if event.status == "done":
        return f"{head} done in {event.seconds:.0f} s"
    if event.status == "failed":
        return f"{head} failed after {event.seconds:.0f} s"
    return f"{head} ({event.reason})" if event.reason else head


def _log_event(event: StepEvent) -> None:
    log.info(describe(event))
    if event.summary:
        log.info(event.summary)


def log_file(log_dir: Path | None, step: str) -> Path | None:
    """Where the output of ``step``'s command goes (None: to ours)."""
    return None if log_dir is None else log_dir / f"{safe_name(step)}.log"


def train_flag(step: Step, rec: dict[str, Any] | None, now: Identity) -> str | None:
    """``--resume``, ``--overwrite`` or None: how a ``train:`` step treats its run folder.

    None when the folder holds no run (`adapters.base.prepare_run_dir`'s ``new``); ``--resume``
    when it holds an unfinished run and the step's last record shows it was interrupted (or failed)
    with the inputs of ``now``; ``--overwrite`` otherwise (a finished run, or one made from other
    inputs, or a forced step).
    """
    from adapters.base import prepare_run_dir

    if step.run_dir is None:
        return None
    state = prepare_run_dir(step.run_dir, overwrite=True, dry_run=True)  # looks only
    if state.status == "new":
        return None
    return "--resume" if state.status == "unfinished" and resumable(rec, now) else "--overwrite"


class LocalBackend:
    """Commands in subprocesses of this process, ``jobs`` at a time (one: in this thread)."""

    def __init__(self, jobs: int = 1) -> None:
        if jobs < 1:
            raise PipelineError(f"--jobs must be >= 1, got {jobs}")
        self.capacity = jobs
        self._pool = cf.ThreadPoolExecutor(jobs, thread_name_prefix="step") if jobs > 1 else None

    def submit(self, step: Step, argv: list[str], log_path: Path | None) -> cf.Future:
        env = step_env(REPO)
        if self._pool is not None:
            return self._pool.submit(run_command, argv, os.getcwd(), env, log_path)
        fut: cf.Future = cf.Future()
        try:
            fut.set_result(run_command(argv, os.getcwd(), env, log_path))
        except OSError as e:
            fut.set_exception(e)
        return fut

    def wait(self, handles: list[Any]) -> list[tuple[Any, CommandResult | BaseException]]:
        done, _ = cf.wait(handles, return_when=cf.FIRST_COMPLETED)
        return [(h, h.exception() or h.result()) for h in handles if h in done]

    def cancel(self, handles: list[Any]) -> None:
        for h in handles:
            h.cancel()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)


def _backend(executor: str, jobs: int, address: str | None, ray_cpus: int | None, p: Pipeline):
    if executor == "local":
        return LocalBackend(jobs)
    if executor == "ray":
        from pipeline.ray_executor import RayBackend

        return RayBackend(p, address=address, num_cpus=ray_cpus)
    raise PipelineError(f"unknown executor {executor!r} (known: {', '.join(EXECUTORS)})")


def run(
    p: Pipeline,
    force: Sequence[str] | bool = False,
    only: Sequence[str] = (),
    on_event: Callable[[StepEvent], None] | None = None,
    step_logs: bool = False,
    executor: str = "local",
    jobs: int = 1,
    address: str | None = None,
    ray_cpus: int | None = None,
) -> list[tuple[str, str, float]]:
    """Run the steps of ``p``; returns ``(step, done|skipped, seconds)`` per step run or skipped.

    Args:
        p: the pipeline (`pipeline.config.load_pipeline`).
        force: True redoes every step; a list redoes the steps named there (``train`` names every
            ``train:`` step); the steps that depend on them run too.
        only: run only these steps (named the same way); empty for all.
        on_event: called as each step starts, ends or is skipped; None logs at INFO.
        step_logs: send each command's output to ``work_dir/logs/STEP.log`` (always with Ray).
        executor: ``local`` or ``ray``.
        jobs: with ``local``, how many commands may run at the same time.
        address: with ``ray``, the cluster to join (``auto``, ``HOST:6379``); None starts Ray here.
        ray_cpus: with ``ray`` and no ``address``, the CPUs of the local Ray (default: all).

    Raises:
        PipelineError: naming the step, for a step that fails or ends without writing its outputs
            (the steps already running end first), or a missing Ray.
        OSError: if an input cannot be read or a record cannot be written.
    """
    report_to = on_event or _log_event
    log_dir = p.work_dir / "logs" if step_logs or executor == "ray" else None
    steps = plan(p)
    index = {s.name: k for k, s in enumerate(steps, 1)}
    selected = [s for s in steps if not only or matches(s.name, only)]
    chosen = {s.name for s in selected}
    backend = _backend(executor, jobs, address, ray_cpus, p)
    p.work_dir.mkdir(parents=True, exist_ok=True)
    fps, version = Fingerprints(), project_version()
    pending = list(selected)
    ended: dict[str, str] = {}  # step → ran | skipped
    running: dict[Any, tuple[Step, dict[str, Any]]] = {}
    rows: list[dict[str, Any]] = []
    failure: PipelineError | None = None

    def event(step: Step, status: str, **kw: Any) -> None:
        report_to(StepEvent(index[step.name], len(steps), step.name, status, **kw))

    def finish(step: Step, started: dict[str, Any], result: CommandResult | BaseException, summary: str = "") -> None:
        nonlocal failure
        seconds = result.end - result.start if isinstance(result, CommandResult) else time.time() - started["start"]
        row = {"step": step.name, "reason": started["reason"], "seconds": round(seconds, 3), "start": started["start"]}
        err = None
        if isinstance(result, PipelineError):
            err = result
        elif isinstance(result, BaseException):  # a task that raised, or a command that could not start
            first = next((line for line in str(result).splitlines() if line.strip()), type(result).__name__)
            err = PipelineError(f"step {step.name} failed: {first}")
        elif result.returncode != 0:
            err = _failed(step.name, step.command or [], result.returncode, log_file(log_dir, step.name))
        else:
            missing = [o for o in step.outputs if not o.exists()]
            if missing:
                err = PipelineError(f"step {step.name} ended without writing {missing[0]}")
        if err is not None:
            write_record(p, {**started, "state": FAILED, "error": str(err), "end": time.time()})
            event(step, "failed", seconds=seconds)
            rows.append({**row, "status": "failed", "error": str(err)})
            failure = failure or err
            return
        assert isinstance(result, CommandResult)
        done = finished_record(step, started, fps, result.start, result.end, result.host, result.pid)
        write_record(p, done)
        ended[step.name] = "ran"
        rows.append({**row, "status": "ran", "end": result.end, "host": result.host})
        event(step, "done", seconds=seconds, summary=summary)

    try:
        while pending or running:
            while failure is None and len(running) < backend.capacity:
                step = next((s for s in pending if all(d in ended for d in s.deps if d in chosen)), None)
                if step is None:
                    break
                pending.remove(step)
                status, reason, rec = own_status(p, step, fps)
                upstream = [d for d in step.deps if ended.get(d) == "ran"]
                forced = force is True or (not isinstance(force, bool) and matches(step.name, force))
                if forced:
                    reason = "forced (--force)"
                elif upstream and status == STATUS_DONE:
                    reason = f"upstream {upstream[0]} ran"
                elif status == STATUS_DONE:
                    ended[step.name] = "skipped"
                    rows.append({"step": step.name, "status": "skipped", "reason": reason, "seconds": 0.0})
                    event(step, "skipped", reason=reason)
                    continue
                now = identity(step, fps, version)
                argv = list(step.command or [])
                flag = train_flag(step, None if forced else rec, now) if step.run_dir is not None else None
                if flag:
                    argv.append(flag)
                    reason += "; resumes from its last checkpoint" if flag == "--resume" else "; replaces its run folder"
                started = started_record(step, now, reason)
                write_record(p, started)
                event(step, "start", reason=reason)
                if step.command is None:  # in process, here
                    t0 = time.time()
                    try:
                        summary = run_step(p, step, log_dir)
                    except PipelineError as e:
                        finish(step, started, e)
                        continue
                    finish(step, started, CommandResult(0, t0, time.time(), started["host"], os.getpid()), summary)
                    continue
                _write_settings(step)
                running[backend.submit(step, argv, log_file(log_dir, step.name))] = (step, started)
            if not running:
                break
            for handle, result in backend.wait(list(running)):
                step, started = running.pop(handle)
                finish(step, started, result)
        if failure is not None:
            raise failure
    except BaseException:
        backend.cancel(list(running))
        raise
    finally:
        backend.close()
        rows += [{"step": s.name, "status": "not run", "reason": "a step failed", "seconds": 0.0} for s in pending]
        write_json(p.work_dir / "summary.json", {"steps": rows, "executor": executor}, indent=1)
        report = [(r["step"], "done" if r["status"] == "ran" else r["status"], r["seconds"]) for r in rows
                  if r["status"] in ("ran", "skipped")]  # fmt: skip
        write_json(p.work_dir / "timings.json", report, indent=1)
    return report


def summary_text(summary: dict[str, Any]) -> str:
    """``summary.json`` as a table: step, status, seconds, why; then the totals."""
    rows = summary.get("steps", [])
    if not rows:
        return "no steps"
    width = max(len(r["step"]) for r in rows)
    lines = [f"{'step':<{width}}  {'status':<8} {'seconds':>8}  why"]
    for r in rows:
        secs = f"{r['seconds']:.0f}" if r["status"] in ("ran", "failed") else "-"
        lines.append(f"{r['step']:<{width}}  {r['status']:<8} {secs:>8}  {r.get('reason', '')}")
    ran = [r for r in rows if r["status"] == "ran"]
    skipped = sum(r["status"] == "skipped" for r in rows)
    lines.append(f"{len(ran)} ran ({sum(r['seconds'] for r in ran):.0f} s of step time), {skipped} skipped")
    return "\n".join(lines)


def _write_settings(step: Step) -> None:
    """Write the settings file a ``fuse:`` step reads, just before it runs."""
    if step.settings is not None:
        from fusion.settings import write_settings

        step.settings.path.parent.mkdir(parents=True, exist_ok=True)
        write_settings(step.settings.path, step.settings.settings, step.settings.info)
        log.debug("wrote %s", step.settings.path)


def _failed(step: str, argv: Sequence[object], rc: int, log: Path | None) -> PipelineError:
    """The error of a command that exited ``rc``: the step, the command, its log and the log's last lines."""
    text = f"step {step} failed (exit {rc}): {shlex.join(str(a) for a in argv)}"
    if log is not None:
        tail = log_tail(log)
        text += f"; its log: {log}" + (f"; it ends: {tail}" if tail else "")
    return PipelineError(text)


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
    _write_settings(step)
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


#: the first finding of a pipeline whose data it made itself (``data.synth``)
SYNTHETIC_NOTE = (
    "Synthetic data: these scores show that every step works, not how well. The lesions are bright "
    "shapes drawn to be learnt in minutes and the gate separates normal from abnormal perfectly, so "
    "they are no evidence about real chest X-rays."
)


def _oof(p: Pipeline) -> str:
    """Join each model's (and the gate's) fold predictions into one out-of-fold file on ``coco/oof.json``.

    Every fold file is read and checked before anything is written; then ``coco/oof.json``, so the
    joined files' sidecars carry its fingerprint; the step's record (`pipeline.records`), written
    after all of them, is what says the step is done.

    Raises:
        PipelineError: if the folds do not cover the OOF images exactly once (`oof_dataset`), or a
            fold's results hold an image outside its validation set.
    """
    from core.coco import CocoDataset
    from core.predictions import read_meta, read_predictions, write_predictions

    oof, fold_of = oof_dataset(p)
    oof.info = {**oof.info, "split": "oof", "folds": list(p.cv_folds or ())}
    folds = list(p.cv_folds or ())
    vals = {k: CocoDataset.load(p.coco / f"fold{k}_val.json") for k in folds}
    out = p.eval_preds
    joined = []  # every file is read and checked before anything is written
    for m in [*p.models, *([p.gate] if p.gate else [])]:
        stem = "gate" if m is p.gate else m.name
        files = {k: p.preds / f"fold{k}" / f"{stem}.json" for k in folds}
        meta = {**read_meta(files[folds[0]]), "name": p.row_name(stem) if m is not p.gate else "gate"}
        meta.update(dataset=str(p.eval_dataset), folds={str(k): str(f) for k, f in files.items()})
        if m is p.gate:
            probs = join_class_probs([read_class_probs(f, vals[k]) for k, f in files.items()])
            _check_covered(dict.fromkeys(probs.image_ids.tolist()), fold_of, stem)
            joined.append((True, stem, probs, meta))
        else:
            dets = {}
            for k, f in files.items():
                dets.update(read_predictions(f, vals[k]))
            _check_covered(dets, fold_of, stem)
            joined.append((False, stem, dets, meta))
    oof.write(p.eval_dataset)  # first, so the joined files' sidecars carry its fingerprint
    for is_gate, stem, data, meta in joined:
        if is_gate:
            _write_classifier(out / "gate.json", data, meta)
        else:
            write_predictions(out / f"{stem}.json", data, meta, kind=meta.get("kind", "detector"))
    return f"out-of-fold results of folds {folds} on {len(oof.images)} images: {out}"


def _write_classifier(path: Path, cp, meta: dict) -> None:
    """A plain gate file for a binary classifier (as its fold files are), else every class's probability."""
    from core.class_probs import write_class_probs
    from core.predictions import write_gate

    if cp.task == "binary":
        write_gate(path, cp.p_abnormal(), meta)
    else:
        write_class_probs(path, cp, meta)


def _check_covered(per_image, fold_of: dict[int, int], name: str) -> None:
    if set(per_image) != set(fold_of):
        odd = sorted(set(per_image) ^ set(fold_of))
        raise PipelineError(f"oof: {name}'s fold predictions do not cover the OOF images once: {odd[:5]}")


def _fold_gate(p: Pipeline) -> str:
    """The gate's test scores: the mean of its fold models' probabilities (every class's, for a classifier)."""
    from core.coco import CocoDataset
    from core.predictions import read_meta

    test = CocoDataset.load(p.coco_test / "all.json")
    files = [p.preds_test / f"fold{k}" / "gate.json" for k in p.cv_folds or ()]
    mean = mean_class_probs([read_class_probs(f, test) for f in files])
    meta = {**read_meta(files[0]), "dataset": str(p.coco_test / "all.json"), "folds": [str(f) for f in files]}
    _write_classifier(p.preds_test / "gate.json", mean, meta)
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
    if p.data.get("synth"):
        notes.insert(0, SYNTHETIC_NOTE)
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
    """Run one of the project's commands in a fresh process, its output going to ours or to
    ``log_dir/STEP.log``.

    Raises:
        PipelineError: with the step, the command line, the log file and its last lines, if it exits non-zero.
    """
    argv = [str(c) for c in cmd]
    log.info("running %s", shlex.join(argv))
    r = run_command(argv, os.getcwd(), step_env(REPO), log_file(log_dir, step))
    if r.returncode != 0:
        raise _failed(step, argv, r.returncode, log_file(log_dir, step))
