"""The classifier tests' way of running ``python -m adapters``: a fresh process, torch on one thread."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest_paths import REPO


def adapters_cli(*args: str | Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m adapters ARGS`` from the repository with ``OMP_NUM_THREADS=1`` (and ``env``), captured."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "adapters", *map(str, args)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture
def one_torch_thread():
    """Torch on one thread in this process for the test (the trainings' own processes set it too)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
