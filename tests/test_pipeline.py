"""The pipeline command: config validation, the plan, the findings, and the demo end to end on a reduced config."""

from __future__ import annotations

import csv
import json
from dataclasses import fields
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from core.classes import VINBIG_CLASSES, coco_categories
from core.coco import CocoDataset
from core.detections import Detections
from core.predictions import read_gate, read_meta, read_predictions, write_gate, write_predictions
from fusion.settings import FusionSettings, read_settings
from pipeline.__main__ import main
from pipeline.config import PipelineError, load_pipeline
from pipeline.execute import run
from pipeline.plan import findings, plan, settings_path

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "configs" / "pipelines" / "demo.yaml"


def _write(tmp: Path, data: dict) -> Path:
    p = tmp / "pipe.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def test_shipped_pipelines_validate():
    for path in sorted((REPO / "configs" / "pipelines").glob("*.yaml")):
        p = load_pipeline(path)
        assert len(p.models) == 4 and (p.gate is not None) == (p.kind == "vinbig")
        assert {m.name for m in p.models} >= {"yolov8n_cpu"} or path.stem in ("vinbig", "rsna")


@pytest.mark.parametrize(
    "patch, message",
    [
        ({"modles": []}, "unknown key 'modles'"),
        ({"data": {"kind": "vinbig", "synth": {"n_images": 10, "colour": 1}}}, "data.synth.colour"),
        ({"data": {"kind": "vinbig"}}, "exactly one of 'synth'"),
        ({"ensemble": {"methods": ["wbf", "mean"]}}, "unknown \\['mean'\\]"),
        ({"models": ["configs/cpu/nope.yaml"]}, "config configs/cpu/nope.yaml not found"),
        ({"models": ["configs/cpu/yolov8n.yaml", "configs/cpu/yolov8n.yaml"]}, "share a name"),
        # the fusion options are FusionSettings fields, checked by fusion.settings
        (
            {"ensemble": {"methods": ["wbf"], "iou_th": 0.5}},
            "ensemble: unknown key 'iou_th'; did you mean 'iou_thr'",
        ),
        ({"ensemble": {"methods": ["wbf"], "iou_thr": 1.5}}, "ensemble: iou_thr must be in \\[0, 1\\]"),
        ({"ensemble": {"methods": ["wbf"], "sigma": "wide"}}, "sigma must be a finite number"),
        ({"ensemble": {"method": "wbf"}}, "ensemble.method: the pipeline runs every fusion in 'methods'"),
        ({"ensemble": {"methods": "wbf"}}, "ensemble.methods must be a non-empty list"),
        ({"ensemble": {"weights": [2, 1]}}, "got 2 weights \\[2.0, 1.0\\] for 4"),
        ({"ensemble": {"gate_mode": "filter", "low": 0.9, "high": 0.1}}, "low \\(0.9\\) must be <= high"),
        ({"ensemble": {"gate_mode": "append", "low": 0.1}}, "apply to the gate mode 'filter' only"),
        ({"ensemble": {"score": 0.3}}, "unknown key 'ensemble.score'"),
    ],
)
def test_bad_pipeline_configs_name_the_key(tmp_path, patch, message):
    data = yaml.safe_load(DEMO.read_text())
    data.update(patch)
    with pytest.raises(PipelineError, match=message):
        load_pipeline(_write(tmp_path, data))


def test_plan_has_every_step_with_its_outputs(tmp_path):
    p = load_pipeline(DEMO, work_dir=str(tmp_path / "w"))
    names = [s.name for s in plan(p)]
    assert names[:2] == ["synth", "convert"]
    for m in [
        "yolov8n_cpu",
        "yolov5nu_cpu",
        "faster_rcnn_d2_cpu",
        "faster_rcnn_mmdet_cpu",
        "gate_resnet18_cpu",
    ]:
        assert f"train:{m}" in names and f"predict:{m}" in names
    for method in ["wbf", "nms", "soft-nms", "nmw"]:
        assert f"fuse:{method}" in names and f"fuse:{method}+gate" in names
    assert names[-2:] == ["leaderboard", "submission"]
    assert all(s.outputs for s in plan(p))


def test_fusion_steps_read_one_settings_file_built_from_the_ensemble_section(tmp_path):
    p = load_pipeline(REPO / "configs" / "pipelines" / "vinbig.yaml", work_dir=str(tmp_path / "w"))
    fuse = {s.name: s for s in plan(p) if s.name.startswith("fuse:")}
    assert set(fuse) == {f"fuse:{m}{g}" for m in ("wbf", "nms", "soft-nms", "nmw") for g in ("", "+gate")}
    plain, gated = fuse["fuse:soft-nms"], fuse["fuse:soft-nms+gate"]
    assert plain.settings.settings == FusionSettings(method="soft-nms", iou_thr=0.5, skip_box_thr=0.001)
    assert gated.settings.settings == FusionSettings(
        method="soft-nms", iou_thr=0.5, skip_box_thr=0.001, gate_mode="filter", low=0.08, high=0.95
    )
    assert gated.settings.info["inputs"] == [m.name for m in p.models]
    for step in fuse.values():
        cmd = step.command
        assert cmd[cmd.index("--config") + 1] == str(step.settings.path)
        # no fusion option is spelled as a flag: the settings file carries them all
        flags = {"--" + f.name.replace("_", "-") for f in fields(FusionSettings)}
        assert not flags & set(cmd)
        assert ("--gate" in cmd) == step.name.endswith("+gate")
    assert len({s.settings.path for s in fuse.values()}) == len(fuse)


def test_gate_rule_defaults_when_the_config_names_none(tmp_path):
    data = yaml.safe_load(DEMO.read_text())
    data["ensemble"] = {"methods": ["wbf"], "weights": [2, 1, 1, 1]}
    p = load_pipeline(_write(tmp_path, data))
    assert p.fusion_settings("wbf", gated=False) == FusionSettings(weights=(2.0, 1.0, 1.0, 1.0))
    assert p.fusion_settings("nmw", gated=True).gate_mode == "append"
    data["ensemble"]["gate_mode"] = "filter"
    got = load_pipeline(_write(tmp_path, data)).fusion_settings("wbf", gated=True)
    assert (got.gate_mode, got.low, got.high) == ("filter", 0.1, 0.9)


def _fusion_inputs(p, n_images: int = 12) -> tuple[Path, CocoDataset]:
    """``val.json`` (every third image normal), a noisy copy of its truth per model, and a gate file."""
    rng = np.random.default_rng(0)
    images, anns = [], []
    for i in range(n_images):
        images.append({"id": i, "file_name": f"im{i}.png", "width": 200, "height": 160, "orig_width": 800,
                       "orig_height": 640, "source_id": f"s{i}"})  # fmt: skip
        for j in range(i % 3):
            x, y = rng.uniform(5, 100), rng.uniform(5, 80)
            bbox = [x, y, rng.uniform(20, 90), rng.uniform(20, 70)]
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": [0, 3, 8][j], "bbox": bbox})
    val = CocoDataset(images, anns, coco_categories(VINBIG_CLASSES)).write(p.coco / "val.json")
    ds = CocoDataset.load(val)
    for m in p.models:
        dets = {}
        for i in ds.image_ids:
            gt = ds.ground_truth(i)
            boxes = np.concatenate([gt.boxes + rng.normal(0, 3, gt.boxes.shape), [[10, 10, 50, 40]]])
            boxes = np.clip(boxes, 0, [200, 160, 200, 160])
            boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
            labels = np.concatenate([gt.labels, [int(rng.choice([0, 3]))]])
            dets[i] = Detections(boxes, rng.uniform(0.05, 1.0, len(boxes)), labels)
        write_predictions(p.preds / f"{m.name}.json", dets, {"dataset": str(val)})
    p_abnormal = {i: 0.1 if ds.is_normal(i) else 0.9 for i in ds.image_ids}
    write_gate(p.preds / "gate.json", p_abnormal, {"dataset": str(val)})
    return val, ds


def test_fuse_step_writes_its_settings_and_ensemble_run_uses_them(tmp_path):
    """The settings file the pipeline writes drives ``python -m ensemble run`` exactly."""
    from ensemble.inputs import read_inputs
    from ensemble.run import fuse_and_gate

    data = yaml.safe_load(DEMO.read_text())
    data["ensemble"] = {"methods": ["wbf"], "weights": [3, 1, 1, 2], "iou_thr": 0.45, "conf_type": "max",
                        "gate_mode": "filter", "low": 0.2, "high": 0.8}  # fmt: skip
    p = load_pipeline(_write(tmp_path, data), work_dir=str(tmp_path / "w"))
    val, ds = _fusion_inputs(p)
    report = run(p, only=["fuse"], on_event=lambda event: None)
    assert [(name, status) for name, status, _ in report] == [("fuse:wbf", "done"), ("fuse:wbf+gate", "done")]
    model_preds = [p.preds / f"{m.name}.json" for m in p.models]
    for name, gated in (("wbf", False), ("wbf+gate", True)):
        expected = p.fusion_settings("wbf", gated)
        settings_file = settings_path(p, name)
        assert read_settings(settings_file)[0] == expected
        out = p.preds / f"fusion_{name.replace('+', '_')}.json"
        meta = read_meta(out)
        assert meta["config"] == str(settings_file) and meta["options"] == expected.fusion_options()
        gate = p.preds / "gate.json" if gated else None
        assert meta["gate"] == (None if gate is None else {"path": str(gate), **expected.gate_options()})
        want = fuse_and_gate(read_inputs(model_preds, val, gate), expected)
        got = read_predictions(out, ds, extra_categories=(14,))
        rows = lambda d: sorted(zip(d.labels.tolist(), d.scores.tolist(), d.boxes.tolist(), strict=True))  # noqa: E731
        for i in ds.image_ids:
            assert rows(got.get(i, Detections.empty())) == rows(want.get(i, Detections.empty()).as_written())


def test_findings_state_what_the_numbers_say():
    row = lambda name, kind, score: SimpleNamespace(name=name, kind=kind, score=score)  # noqa: E731
    rows = [row("a", "detector", 0.30), row("b", "detector", 0.20), row("wbf", "fusion", 0.35),
            row("wbf+gate", "fusion", 0.40), row("nms", "fusion", 0.25), row("nms+gate", "fusion", 0.24)]  # fmt: skip
    notes = findings(rows, "mAP@0.4")
    assert (
        notes[0].startswith("Fusion beat the best single model")
        and "wbf 0.3500 vs best model a 0.3000" in notes[0]
    )
    assert notes[1].startswith("The gate helped in part: 1 of 2")
    worse = findings(
        [row("a", "detector", 0.5), row("wbf", "fusion", 0.4), row("wbf+gate", "fusion", 0.3)], "m"
    )
    assert worse[0].startswith("Fusion did not beat") and worse[1].startswith("The gate did not help")


def test_rerun_skips_steps_that_are_done(tmp_path, capsys):
    data = yaml.safe_load(DEMO.read_text())
    data["data"]["synth"].update(n_images=6, min_size=96, max_size=128)
    data["data"]["convert"].update(size=64, folds=2)
    cfg = _write(tmp_path, data)
    work = str(tmp_path / "w")
    assert main(["run", str(cfg), "--work-dir", work, "--only", "synth", "convert"]) == 0
    first = capsys.readouterr().out
    assert "[1/31] synth (never run)" in first and ": skipped," not in first
    assert "2 ran" in first and ", 0 skipped" in first  # the summary
    # each command's own output goes to its step's log, the command line first
    log = (tmp_path / "w" / "logs" / "convert.log").read_text()
    assert log.startswith("$ ") and " -m convert vinbig " in log and "train.json, val.json" in log
    stamp = (tmp_path / "w" / "coco" / "all.json").stat().st_mtime_ns
    assert main(["run", str(cfg), "--work-dir", work, "--only", "synth", "convert"]) == 0
    assert capsys.readouterr().out.count(", nothing changed (--force ") == 2
    assert (tmp_path / "w" / "coco" / "all.json").stat().st_mtime_ns == stamp
    assert main(["run", str(cfg), "--work-dir", work, "--only", "convert", "--force", "convert"]) == 0
    assert (tmp_path / "w" / "coco" / "all.json").stat().st_mtime_ns != stamp


def test_cli_error_is_exit_2(tmp_path, capsys):
    assert main(["run", str(tmp_path / "missing.yaml")]) == 2
    assert "no such pipeline config" in capsys.readouterr().err


def test_pipeline_error_is_one_line_and_debug_shows_the_traceback(tmp_path, capsys):
    data = yaml.safe_load(DEMO.read_text())
    data["ensemble"]["iou_th"] = 0.5
    cfg = str(_write(tmp_path, data))
    assert main(["plan", cfg]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: ") and captured.err.count("\n") == 1
    assert "unknown key 'iou_th'; did you mean 'iou_thr'?" in captured.err and "Traceback" not in captured.err
    for argv in (["plan", cfg, "--debug"], ["--debug", "run", cfg]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "Traceback (most recent call last)" in err and "pipeline.config.PipelineError" in err
        assert err.splitlines()[-1].startswith("error: ") and "iou_th" in err.splitlines()[-1]


def test_failed_step_is_exit_2_naming_the_step(tmp_path, capfd):
    p = tmp_path / "w"
    # no predictions exist: ensemble run fails, and the pipeline says which command did
    assert main(["run", str(DEMO), "--work-dir", str(p), "--only", "fuse:nms", "--force"]) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert (
        err[-1].startswith("error: step fuse:nms failed (exit 2): ")
        and " -m ensemble run --config " in err[-1]
    )
    assert (p / "fusion_settings" / "nms.yaml").is_file()


def test_plan_command_lists_steps_and_settings(tmp_path, capsys):
    assert main(["plan", str(DEMO), "--work-dir", str(tmp_path / "w"), "--commands"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split() == ["step", "status", "why"] and lines[1].split() == ["synth", "missing", "never", "run"]
    assert "0 done, 0 stale, 31 missing" in out
    assert "[1] synth: " in out and "leaderboard: (in process)" in out
    assert "after train:yolov8n_cpu, convert" in out  # predict:yolov8n_cpu's dependencies
    assert "reads " + str(tmp_path / "w" / "fusion_settings" / "wbf_gate.yaml") in out
    assert "method wbf, iou_thr 0.5, skip_box_thr 0.0" in out and "gate_mode append" in out
    assert not (tmp_path / "w").exists()  # planning writes nothing


@pytest.mark.slow
def test_demo_pipeline_end_to_end_on_a_reduced_config(tmp_path):
    """Every artefact of the demo, on fewer images and steps."""
    data = yaml.safe_load(DEMO.read_text())
    data["data"]["synth"].update(n_images=24, min_size=192, max_size=256)
    data["data"]["convert"].update(size=128, folds=3)
    data["models"] = [
        {"config": "configs/cpu/yolov8n.yaml", "set": {"schedule.epochs": 1}},
        {"config": "configs/cpu/yolov5nu.yaml", "set": {"schedule.epochs": 1}},
        {"config": "configs/cpu/faster_rcnn_d2.yaml", "set": {"schedule.iterations": 2}},
        {"config": "configs/cpu/faster_rcnn_mmdet.yaml", "set": {"schedule.iterations": 2}},
    ]
    data["gate"] = {"config": "configs/cpu/gate_resnet18.yaml", "set": {"schedule.epochs": 1}}
    data["leaderboard"]["examples"] = 2
    data["test"]["synth"].update(n_images=3, min_size=192, max_size=256)
    data["sweep"] = {"iou_thr": [0.5], "skip_box_thr": [0.0]}
    work = tmp_path / "w"
    assert main(["run", str(_write(tmp_path, data)), "--work-dir", str(work), "--set", "image_size=128"]) == 0

    val = CocoDataset.load(work / "coco" / "val.json")
    for name in ("train.json", "val.json", "all.json", "fold0_train.json", "fold2_val.json"):
        assert (work / "coco" / name).is_file()
    models = ["yolov8n_cpu", "yolov5nu_cpu", "faster_rcnn_d2_cpu", "faster_rcnn_mmdet_cpu"]
    for m in models:
        read_predictions(work / "preds" / f"{m}.json", val)
        assert read_meta(work / "preds" / f"{m}.json")["kind"] == "detector"
        assert (work / "runs" / m / "loss.csv").is_file()
    assert set(read_gate(work / "preds" / "gate.json", val)) == set(val.image_ids)
    fusions = [f"{m}{g}" for m in ("wbf", "nms", "soft-nms", "nmw") for g in ("", "_gate")]
    for f in fusions:
        path = work / "preds" / f"fusion_{f}.json"
        read_predictions(path, val, extra_categories=(14,))
        assert read_meta(path)["kind"] == "fusion"
    board = json.loads((work / "leaderboard" / "leaderboard.json").read_text())
    names = {r["name"] for r in board["rows"]}
    assert names == set(models) | {f.replace("_gate", "+gate") for f in fusions}
    assert (work / "leaderboard" / "leaderboard.md").is_file() and (
        work / "leaderboard_coco" / "leaderboard.csv"
    ).is_file()
    html = (work / "report" / "index.html").read_text()
    assert 'id="leaderboard"' in html and 'id="findings-list"' in html and "data:image/png;base64," in html
    lines = (work / "findings.md").read_text().splitlines()
    # data the pipeline drew itself: the first finding says the scores are no evidence about real X-rays
    assert lines[0].startswith("- Synthetic data:") and "no evidence about real chest X-rays" in lines[0]
    assert lines[1].startswith("- Fusion ") and "Synthetic data" in html
    # the submission is the unlabelled test set's, fused with the settings the sweep chose on val
    test = CocoDataset.load(work / "coco_test" / "all.json")
    assert len(test.images) == 3 and test.annotations == []
    assert read_settings(work / "sweep" / "best.yaml")[0].method in ("wbf", "nms", "soft-nms", "nmw")
    for m in models:
        read_predictions(work / "preds_test" / f"{m}.json", test)
    with open(work / "submission.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["image_id", "PredictionString"]
    assert sorted(r[0] for r in rows[1:]) == sorted(im["source_id"] for im in test.images)
    assert all(" 0 0 1 1" in r[1] for r in rows[1:])  # every image carries its "No finding" row
