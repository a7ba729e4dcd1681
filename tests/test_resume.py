"""A training killed mid-way resumes from its framework's last checkpoint and ends like an uninterrupted one.

Each framework trains a tiny model in a subprocess that is SIGKILLed right after its first resumable
checkpoint (``CXRFUSE_TEST_KILL_AFTER_CHECKPOINT=1`` makes the process kill itself there, so the
kill lands at a known step); ``--resume`` then continues the run, and its ``loss.csv`` has as many
steps as the uninterrupted run's, the first ones unchanged. The uninterrupted runs also show that
training is quiet: one line on the console, the frameworks' output in ``train.log``.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest_paths import REPO
from tests.test_adapters import TINY, square_dataset

#: per framework: the schedule of the tiny run and the steps it logs
RUNS = {
    # 8 images, batch 4: 2 steps per epoch; a checkpoint after every epoch
    "ultralytics": ({"epochs": 3, "batch_size": 4, "workers": 0}, 6),
    "detectron2": ({"iterations": 6, "batch_size": 2, "workers": 0, "checkpoint_period": 2}, 6),
    "mmdet": ({"iterations": 6, "batch_size": 2, "workers": 0, "checkpoint_period": 2}, 6),
}


@pytest.fixture(scope="module")
def eight(tmp_path_factory) -> Path:
    return square_dataset(tmp_path_factory.mktemp("eight"), 8, 0)


def _config(adapter: str, tmp: Path) -> Path:
    schedule, _ = RUNS[adapter]
    data = {"name": f"resume_{adapter}", "adapter": adapter, "image_size": 64, "device": "cpu", **TINY[adapter]}
    data["schedule"] = schedule
    path = tmp / f"{adapter}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _train(cfg: Path, data: Path, run: Path, *extra: str, kill: bool = False) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "CXRFUSE_TEST_KILL_AFTER_CHECKPOINT"}
    if kill:
        env["CXRFUSE_TEST_KILL_AFTER_CHECKPOINT"] = "1"
    cmd = [sys.executable, "-m", "adapters", "train", str(cfg), "--dataset", str(data), "--out-dir", str(run), *extra]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("adapter", sorted(RUNS))
def test_a_killed_training_resumes_to_the_same_number_of_steps(adapter, eight, tmp_path, capfd):
    from adapters.__main__ import main

    cfg = _config(adapter, tmp_path)
    _, steps = RUNS[adapter]

    def train(run: Path, *extra: str) -> int:
        return main(["train", str(cfg), "--dataset", str(eight), "--out-dir", str(run), *extra])

    capfd.readouterr()
    assert train(tmp_path / "whole") == 0
    out, err = capfd.readouterr()  # what reached the console's file descriptors, framework output included
    # quiet: one line (no terminal, so no bar); the frameworks' chatter is in train.log, uncoloured
    assert out.splitlines() == [out.strip()] and out.startswith("wrote "), out
    assert err == "", err
    log = (tmp_path / "whole" / "train.log").read_text()
    assert log.strip() and "\x1b[" not in log
    assert len(_rows(tmp_path / "whole" / "loss.csv")) == steps

    run = tmp_path / "killed"
    killed = _train(cfg, eight, run, kill=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    weights = "weights.pt" if adapter == "ultralytics" else "weights.pth"
    assert not (run / weights).exists() and not (run / "loss.csv").exists()
    before = _rows(run / "loss.csv.part")
    assert 0 < len(before) < steps

    # re-running without a flag is refused, naming the ways out; --resume continues
    capfd.readouterr()
    assert train(run) == 2
    assert "pass --resume to continue it" in capfd.readouterr().err
    assert train(run, "--resume") == 0
    after = _rows(run / "loss.csv")
    assert len(after) == steps
    assert [int(r["step"]) for r in after] == list(range(1, steps + 1))
    assert after[: len(before)] == before  # the steps before the kill are kept as they were
    assert (run / weights).is_file() and not (run / "loss.csv.part").exists()
    resumed = yaml.safe_load((run / "run.json").read_text())
    assert resumed["resume"] is True and resumed["resumed_from"]
