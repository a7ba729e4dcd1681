"""The pipeline knows what changed (issue #12): step records, done/stale/missing, re-runs of exactly
what changed and what reads it, and a killed step that is never taken for done.

One tiny pipeline (8 synthetic images, two YOLO models of one epoch at 64 px, one fusion) is run
once for the session (`tiny_run`, also the reference of the Ray tests); the tests here then edit
one model's config, kill a training mid-way and re-run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from core.io import read_json
from pipeline.__main__ import main
from pipeline.config import load_pipeline
from pipeline.execute import train_flag
from pipeline.plan import plan
from pipeline.records import (
    Fingerprints,
    identity,
    read_record,
    record_path,
    started_record,
    statuses,
    write_record,
)

REPO = Path(__file__).resolve().parents[1]
MODELS = ("yolov8n_cpu", "yolov5nu_cpu")
STEPS = [
    "synth", "convert", "train:yolov8n_cpu", "predict:yolov8n_cpu", "train:yolov5nu_cpu",
    "predict:yolov5nu_cpu", "fuse:wbf", "leaderboard", "submission",
]  # fmt: skip


def tiny_config(root: Path, work: Path) -> Path:
    """The tiny pipeline's YAML under ``root``, its two model configs copied to ``root/models`` (to be edited)."""
    models = root / "models"
    models.mkdir(parents=True, exist_ok=True)
    entries = []
    for stem in ("yolov8n", "yolov5nu"):
        shutil.copy(REPO / "configs" / "cpu" / f"{stem}.yaml", models / f"{stem}.yaml")
        sets = {"schedule.epochs": 1, "image_size": 64, "predict.score_thr": 0.0, "predict.max_dets": 20}
        entries.append({"config": str(models / f"{stem}.yaml"), "set": sets, "resources": {"cpus": 1}})
    data = {
        "work_dir": str(work),
        "data": {"kind": "vinbig", "synth": {"n_images": 8, "seed": 0, "min_size": 96, "max_size": 128, "workers": 1},
                 "convert": {"size": 64, "folds": 2, "val_fold": 0, "workers": 1}},
        "models": entries,
        "ensemble": {"methods": ["wbf"]},
        "leaderboard": {"metric": "vinbig", "examples": 0},
    }  # fmt: skip
    cfg = root / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(data))
    return cfg


def outputs_of(work: Path) -> dict[str, object]:
    """What the tiny pipeline computes, for comparing two runs: each model's and the fusion's boxes
    (image, class, box, score, as written) and the leaderboard's scores."""
    out: dict[str, object] = {}
    for name in (*MODELS, "fusion_wbf"):
        rows = json.loads((work / "preds" / f"{name}.json").read_text())
        out[name] = sorted((r["image_id"], r["category_id"], r["bbox"], r["score"]) for r in rows)
    board = json.loads((work / "leaderboard" / "leaderboard.json").read_text())
    out["leaderboard"] = sorted((r["name"], r["score"]) for r in board["rows"])
    return out


_RUNS: dict[str, SimpleNamespace] = {}


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> SimpleNamespace:
    """The tiny pipeline run once with the local executor; ``reference`` is what it computed then.

    Run once per session even where another module imports this fixture (`tests.test_pipeline_ray`).
    """
    if "tiny" not in _RUNS:
        root = tmp_path_factory.mktemp("tiny")
        work = root / "w"
        cfg = tiny_config(root, work)
        assert main(["run", str(cfg), "-q"]) == 0
        _RUNS["tiny"] = SimpleNamespace(root=root, work=work, config=cfg, reference=outputs_of(work))
    return _RUNS["tiny"]


def _status(cfg: Path) -> dict[str, tuple[str, str]]:
    p = load_pipeline(cfg)
    return {step.name: (status, reason) for step, status, reason in statuses(p, plan(p))}


def test_every_step_records_what_it_was_made_from(tiny_run):
    p = load_pipeline(tiny_run.config)
    assert [s.name for s in plan(p)] == STEPS
    for name in STEPS:
        rec = read_record(p, name)
        assert rec["state"] == "done" and rec["step"] == name
        assert rec["start"] <= rec["end"] and rec["host"] and rec["pid"] > 0 and rec["version"]
        assert all(fp is not None for fp in rec["outputs"].values())
    train = read_record(p, "train:yolov8n_cpu")
    assert train["command"][:3] == ["-m", "adapters", "train"] and "--overwrite" not in train["command"]
    assert train["config"]["schedule"]["epochs"] == 1 and train["config"]["image_size"] == 64
    assert "predict" not in train["config"]  # a training does not read predict:, so editing it re-trains nothing
    coco = str(tiny_run.work / "coco")
    assert set(train["inputs"]) >= {f"{coco}/train.json", f"{coco}/val.json", f"{coco}/images"}
    assert set(train["inputs"][f"{coco}/images"]) == {"files", "bytes", "sha256"}  # a folder: names and sizes
    assert train["outputs"][str(tiny_run.work / "runs" / "yolov8n_cpu" / "weights.pt")]["size"] > 0
    fuse = read_record(p, "fuse:wbf")
    assert fuse["config"]["method"] == "wbf" and fuse["config"]["inputs"] == list(MODELS)
    assert {s: st for s, (st, _) in _status(tiny_run.config).items()} == dict.fromkeys(STEPS, "done")
    # the progress of each command, the framework's included, is in its log; the summary says what ran
    log = (tiny_run.work / "logs" / "train_yolov8n_cpu.log").read_text()
    assert log.startswith("$ ") and " -m adapters train " in log
    summary = read_json(tiny_run.work / "summary.json")["steps"]
    assert [r["step"] for r in summary] == STEPS and {r["status"] for r in summary} == {"ran"}
    assert all(r["reason"] == "never run" and r["seconds"] > 0 for r in summary)


def test_editing_one_model_config_reruns_exactly_that_model_and_what_reads_it(tiny_run, capsys):
    model = tiny_run.root / "models" / "yolov8n.yaml"
    cfg = yaml.safe_load(model.read_text())
    cfg["schedule"]["lr"] = 0.006
    model.write_text(yaml.safe_dump(cfg))
    status = _status(tiny_run.config)
    rerun = {"train:yolov8n_cpu", "predict:yolov8n_cpu", "fuse:wbf", "leaderboard", "submission"}
    assert {s for s, (st, _) in status.items() if st != "done"} == rerun
    assert status["train:yolov8n_cpu"] == ("stale", f"{model} schedule.lr 0.005 → 0.006")
    assert status["predict:yolov8n_cpu"] == ("stale", "upstream train:yolov8n_cpu re-runs")
    assert status["fuse:wbf"][1] == "upstream predict:yolov8n_cpu re-runs"
    assert main(["plan", str(tiny_run.config)]) == 0
    table = capsys.readouterr().out
    assert f"train:yolov8n_cpu     stale    {model} schedule.lr 0.005 → 0.006" in table
    assert "4 done, 5 stale, 0 missing" in table
    # a real re-run: exactly those steps run, the training replacing its finished run folder
    assert main(["run", str(tiny_run.config), "-q"]) == 0
    summary = read_json(tiny_run.work / "summary.json")["steps"]
    assert {r["step"] for r in summary if r["status"] == "ran"} == rerun
    assert {r["step"] for r in summary if r["status"] == "skipped"} == set(STEPS) - rerun
    why = {r["step"]: r["reason"] for r in summary}
    assert why["train:yolov8n_cpu"].startswith(f"{model} schedule.lr 0.005 → 0.006; replaces its run folder")
    assert why["predict:yolov8n_cpu"] == f"input {tiny_run.work / 'runs' / 'yolov8n_cpu' / 'weights.pt'} changed"
    assert why["convert"].endswith("nothing changed")
    first = (tiny_run.work / "logs" / "train_yolov8n_cpu.log").read_text().splitlines()[0]
    assert first.endswith(" --overwrite")
    p = load_pipeline(tiny_run.config)
    assert read_record(p, "train:yolov8n_cpu")["config"]["schedule"]["lr"] == 0.006
    assert {st for st, _ in _status(tiny_run.config).values()} == {"done"}


def test_an_output_changed_by_hand_makes_its_step_stale(tiny_run):
    sub = tiny_run.work / "submission.csv"
    text = sub.read_bytes()
    sub.write_bytes(text + b"\n")
    try:
        assert _status(tiny_run.config)["submission"] == ("stale", f"output {sub} changed since it was written")
    finally:
        sub.write_bytes(text)  # the same content again (a new mtime): done
    assert _status(tiny_run.config)["submission"][0] == "done"


def test_a_killed_training_is_never_done_and_resumes_on_the_rerun(tiny_run):
    """SIGKILL the pipeline (and its training) mid-step: the step stays "started", the plan says it
    was interrupted, and the re-run continues the unfinished run with --resume."""
    p = load_pipeline(tiny_run.config)
    rec_file = record_path(p, "train:yolov5nu_cpu")
    argv = [sys.executable, "-m", "pipeline", "run", str(tiny_run.config), "--force", "train:yolov5nu_cpu",
            "--only", "train:yolov5nu_cpu", "-q"]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(argv, cwd=REPO, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    run_dir = tiny_run.work / "runs" / "yolov5nu_cpu"
    t0 = time.monotonic()
    try:
        # killed once the training has started over its run folder (the finished run's weights gone)
        while not (json.loads(rec_file.read_text()).get("state") == "started" and not (run_dir / "weights.pt").exists()):
            assert proc.poll() is None, "the step ended before it could be killed"
            assert time.monotonic() - t0 < 120
            time.sleep(0.05)
        time.sleep(1.0)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    status, reason = _status(tiny_run.config)["train:yolov5nu_cpu"]
    assert status == "stale" and reason.startswith("interrupted (started ")
    assert read_record(p, "train:yolov5nu_cpu")["state"] == "started"
    assert _status(tiny_run.config)["predict:yolov5nu_cpu"][0] == "stale"  # its input, the weights, is gone
    assert main(["run", str(tiny_run.config), "--only", "train:yolov5nu_cpu", "-q"]) == 0
    first = (tiny_run.work / "logs" / "train_yolov5nu_cpu.log").read_text().splitlines()[0]
    assert first.endswith(" --resume")
    assert read_record(p, "train:yolov5nu_cpu")["state"] == "done" and (run_dir / "weights.pt").is_file()


def test_train_flag_resumes_only_an_interrupted_run_with_the_same_inputs(tiny_run, tmp_path):
    p = load_pipeline(tiny_run.config)
    step = next(s for s in plan(p) if s.name == "train:yolov8n_cpu")
    now = identity(step, Fingerprints())
    started = started_record(step, now, "test")
    finished_run = step.run_dir
    assert train_flag(step, started, now) == "--overwrite"  # final weights exist: a finished run
    step.run_dir = tmp_path / "unfinished"
    step.run_dir.mkdir()
    assert train_flag(step, started, now) is None  # nothing there: a new run needs no flag
    (step.run_dir / "loss.csv").write_text("step,epoch,loss\n")  # ours, without final weights
    assert train_flag(step, started, now) == "--resume"
    assert train_flag(step, None, now) == "--overwrite"  # no record: nothing says what made it
    assert train_flag(step, {**started, "state": "done"}, now) == "--overwrite"
    other = identity(step, Fingerprints())
    other.config = {**other.config, "image_size": 128}
    assert train_flag(step, started, other) == "--overwrite"  # interrupted, but the config changed since
    step.run_dir = finished_run
    # a "started" record left by a killed step is never "done", whatever outputs exist
    done = read_record(p, step.name)
    try:
        write_record(p, started_record(step, now, "test"))
        assert _status(tiny_run.config)["train:yolov8n_cpu"][0] == "stale"
        write_record(p, {**read_record(p, "train:yolov8n_cpu"), "state": "failed"})
        assert _status(tiny_run.config)["train:yolov8n_cpu"][1].startswith("failed (started ")
    finally:
        write_record(p, done)
    assert _status(tiny_run.config)["train:yolov8n_cpu"][0] == "done"


def test_jobs_2_runs_the_two_trainings_at_once_with_the_same_results(tiny_run, tmp_path):
    """``--jobs 2`` (the local executor, two independent steps at a time): the trainings overlap in
    time, as their records show, and every box, score and leaderboard row is the one-at-a-time run's."""
    cfg = tiny_config(tmp_path, tmp_path / "w")
    assert main(["run", str(cfg), "--jobs", "2", "-q"]) == 0
    p = load_pipeline(cfg)
    a, b = (read_record(p, f"train:{m}") for m in MODELS)
    assert a["state"] == b["state"] == "done"
    assert a["start"] < b["end"] and b["start"] < a["end"], "the two trainings did not overlap"
    assert outputs_of(tmp_path / "w") == tiny_run.reference
