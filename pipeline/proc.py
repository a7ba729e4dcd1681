"""One step's command in a fresh process (`run_command`), the same whichever executor runs it.

Its standard output and standard error go to the step's log file (``WORK_DIR/logs/STEP.log``, the
command line first), so the log holds the framework's own progress (epochs, iterations) as well as
warnings and errors; without a log file they go to ours. A Ctrl-C or a cancelled task ends the
command too.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

#: the environment every step's command gets on top of ours
STEP_ENV = {"YOLO_OFFLINE": "1", "MPLBACKEND": "Agg", "PYTHONUNBUFFERED": "1"}


@dataclass(frozen=True)
class CommandResult:
    """How a command ended: exit code, wall-clock start and end (``time.time()``), host and process id."""

    returncode: int
    start: float
    end: float
    host: str
    pid: int


def step_env(repo: str | Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Our environment plus `STEP_ENV`, the repository on ``PYTHONPATH`` and ``extra``."""
    return {**os.environ, **STEP_ENV, "PYTHONPATH": str(repo), **(extra or {})}


def log_tail(log_file: str | Path | None, lines: int = 5) -> str:
    """The last non-empty ``lines`` of a log file, joined with `` | `` (empty without one)."""
    if log_file is None:
        return ""
    try:
        text = Path(log_file).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    kept = [line.strip() for line in text.splitlines() if line.strip()]
    return " | ".join(kept[-lines:])


def run_command(
    argv: Sequence[object], cwd: str | Path, env: Mapping[str, str], log_file: str | Path | None = None
) -> CommandResult:
    """Run ``argv`` to its end in ``cwd`` with ``env``; its output goes to ``log_file`` (or ours).

    An ``argv`` that starts ``PYTHON -m`` runs with this process's interpreter (on a Ray worker,
    the worker's). A KeyboardInterrupt (Ctrl-C, or Ray cancelling the task) stops the command first.

    Returns:
        The `CommandResult`; a non-zero ``returncode`` is the caller's to report.

    Raises:
        OSError: if the log file cannot be written or the command cannot be started.
    """
    args = [str(a) for a in argv]
    if len(args) > 1 and args[1] == "-m":
        args[0] = sys.executable
    start = time.time()
    out = None
    if log_file is not None:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        out = open(log_file, "w", encoding="utf-8")  # noqa: SIM115 (closed below)
        out.write(f"$ {shlex.join(args)}\n")
        out.flush()
    try:
        proc = subprocess.Popen(args, cwd=cwd, env=dict(env), stdout=out, stderr=subprocess.STDOUT if out else None)
        try:
            rc = proc.wait()
        except BaseException:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            raise
    finally:
        if out is not None:
            out.close()
    return CommandResult(rc, start, time.time(), socket.gethostname(), proc.pid)
