"""The pipeline command: config validation, the plan, the findings, and the demo end to end on a reduced config."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from core.coco import CocoDataset
from core.predictions import read_gate, read_meta, read_predictions
from pipeline.__main__ import main
from pipeline.run import PipelineError, findings, load_pipeline, plan

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "configs" / "pipelines" / "demo.yaml"


def _write(tmp: Path, data: dict) -> Path:
    p = tmp / "pipe.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def test_shipped_pipelines_validate():
    for path in sorted((REPO / "configs" / "pipelines").glob("*.yaml")):
        p = load_pipeline(path)
        assert len(p.models) == 4 and p.gate is not None
        assert {m.name for m in p.models} >= {"yolov8n_cpu"} or path.stem == "vinbig"


@pytest.mark.parametrize(
    "patch, message",
    [
        ({"modles": []}, "unknown key 'modles'"),
        ({"data": {"kind": "vinbig", "synth": {"n_images": 10, "colour": 1}}}, "data.synth.colour"),
        ({"data": {"kind": "vinbig"}}, "exactly one of 'synth'"),
        ({"ensemble": {"methods": ["wbf", "mean"]}}, "unknown \\['mean'\\]"),
        ({"models": ["configs/cpu/nope.yaml"]}, "config configs/cpu/nope.yaml not found"),
        ({"models": ["configs/cpu/yolov8n.yaml", "configs/cpu/yolov8n.yaml"]}, "share a name"),
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


def test_rerun_skips_steps_whose_outputs_exist(tmp_path, capsys):
    data = yaml.safe_load(DEMO.read_text())
    data["data"]["synth"].update(n_images=6, min_size=96, max_size=128)
    data["data"]["convert"].update(size=64, folds=2)
    cfg = _write(tmp_path, data)
    work = str(tmp_path / "w")
    assert main(["run", str(cfg), "--work-dir", work, "--only", "synth", "convert"]) == 0
    first = capsys.readouterr().out
    assert "[1/" in first and "skipped" not in first
    stamp = (tmp_path / "w" / "coco" / "all.json").stat().st_mtime_ns
    assert main(["run", str(cfg), "--work-dir", work, "--only", "synth", "convert"]) == 0
    assert capsys.readouterr().out.count("outputs exist, skipped") == 2
    assert (tmp_path / "w" / "coco" / "all.json").stat().st_mtime_ns == stamp
    assert main(["run", str(cfg), "--work-dir", work, "--only", "convert", "--force", "convert"]) == 0
    assert (tmp_path / "w" / "coco" / "all.json").stat().st_mtime_ns != stamp


def test_cli_error_is_exit_2(tmp_path, capsys):
    assert main(["run", str(tmp_path / "missing.yaml")]) == 2
    assert "no such pipeline config" in capsys.readouterr().err


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
    assert (work / "findings.md").read_text().startswith("- Fusion ")
    with open(work / "submission.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["image_id", "PredictionString"]
    assert {r[0] for r in rows[1:]} == {im["source_id"] for im in val.images}
    assert all(" 0 0 1 1" in r[1] for r in rows[1:])  # every image carries its "No finding" row
