"""The pipeline on Ray (issue #12): a local Ray of 2 CPUs runs the tiny pipeline's two trainings at the
same time, with the local executor's results, and a step that fails on Ray fails the pipeline
naming the step and its log.

The local reference is `tests.test_pipeline_records.tiny_run` (one run for the session). Ray starts
once for this module (about 10-20 s here).
"""

from __future__ import annotations

import os
import sys

import pytest

from pipeline.__main__ import main
from pipeline.config import PipelineError, load_pipeline
from pipeline.execute import run
from pipeline.records import read_record
from tests.test_pipeline_records import MODELS, STEPS, outputs_of, tiny_config, tiny_run  # noqa: F401 (a fixture)


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray with 2 CPUs, no dashboard and no usage reporting; the executor joins it."""
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_runs_the_two_trainings_at_once_with_the_local_results(local_ray, tiny_run, tmp_path):  # noqa: F811
    work = tmp_path / "w"
    p = load_pipeline(tiny_config(tmp_path, work))
    report = run(p, executor="ray", on_event=lambda event: None)
    assert sorted(name for name, _, _ in report) == sorted(STEPS)
    a, b = (read_record(p, f"train:{m}") for m in MODELS)
    assert a["state"] == b["state"] == "done"
    assert a["start"] < b["end"] and b["start"] < a["end"], "the two trainings did not overlap"
    # one epoch of YOLO on the CPU is deterministic across processes: the same boxes, scores, leaderboard
    got = outputs_of(work)
    assert got == tiny_run.reference
    assert sum(len(v) for k, v in got.items() if k != "leaderboard") > 0  # boxes, not two empty files
    assert (work / "logs" / "train_yolov8n_cpu.log").read_text().startswith("$ ")
    # nothing changed: a second run on Ray skips every step
    again = run(p, executor="ray", on_event=lambda event: None)
    assert {status for _, status, _ in again} == {"skipped"}


def test_a_step_failing_on_ray_fails_the_pipeline_with_its_name_and_log(local_ray, tmp_path, capfd):
    cfg = tiny_config(tmp_path, tmp_path / "w")
    # no predictions exist: ensemble run fails in its Ray task
    assert main(["run", str(cfg), "--only", "fuse:wbf", "--executor", "ray"]) == 2
    err = capfd.readouterr().err.strip().splitlines()[-1]
    log = tmp_path / "w" / "logs" / "fuse_wbf.log"
    assert err.startswith("error: step fuse:wbf failed (exit 2): ") and f"its log: {log}" in err
    assert "it ends: " in err and "error: " in err.split("it ends: ")[1]  # the command's own error, from its log
    p = load_pipeline(cfg)
    assert read_record(p, "fuse:wbf")["state"] == "failed"


def test_executor_ray_without_ray_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    p = load_pipeline(tiny_config(tmp_path, tmp_path / "w"))
    with pytest.raises(PipelineError, match=r"needs Ray, which is not installed: pip install ray"):
        run(p, executor="ray")
    assert not (tmp_path / "w").exists()  # nothing written before the check
