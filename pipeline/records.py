"""What each step was made from (its record), and which steps are done, stale or missing (`statuses`).

A step's record, ``WORK_DIR/steps/STEP.json``, holds what the step was made from: its command
(the interpreter left out), its ``config`` (a model's resolved config, a fusion's settings, ...),
a fingerprint of every input (a file's SHA-256; a folder's list of file names and sizes, hashed:
large image folders are not read) and the project's version; and, once the step has finished,
when and where it ran and the fingerprints of its outputs. It is written twice, atomically: as
``started`` just before the step runs (replacing the last record, so a step that is killed or
fails is never "done"), and as ``done`` after the step's outputs are all written.

A step is

- ``done`` when its record says ``done``, what it is made from is what the record says, and its
  outputs are still those it wrote;
- ``stale`` when one of these differs (the reason names the config key, the input or the command
  argument), when it was interrupted or failed, when its outputs exist but no record says what
  made them, or when a step it depends on is not done (every step downstream re-runs);
- ``missing`` when it never finished and its outputs do not exist.

A file whose size and modification time are those a record gives for it keeps the recorded
SHA-256, so checking a large work folder reads only what changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.io import sha256_of, write_json
from pipeline.config import REPO, Pipeline
from pipeline.plan import Step

#: the record of a step that is running (or was killed), of one that failed, and of one that finished
STARTED, FAILED, DONE = "started", "failed", "done"
#: statuses `statuses` gives
STATUS_DONE, STATUS_STALE, STATUS_MISSING = "done", "stale", "missing"


def project_version() -> str:
    """The installed project's version (``pyproject.toml``), or ``unknown``."""
    try:
        from importlib.metadata import PackageNotFoundError, version

        return version("cxrfuse")
    except (ImportError, PackageNotFoundError):
        return "unknown"


def safe_name(step: str) -> str:
    """A step's name as a file name (``train:yolov8n_cpu`` → ``train_yolov8n_cpu``), as its log uses."""
    return step.replace(":", "_").replace("+", "_")


def record_path(p: Pipeline, step: str) -> Path:
    """Where the record of ``step`` is kept."""
    return p.work_dir / "steps" / f"{safe_name(step)}.json"


def read_record(p: Pipeline, step: str) -> dict[str, Any] | None:
    """The record of ``step``, or None when there is none (or it cannot be read: then it counts as none)."""
    path = record_path(p, step)
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) else None


class Fingerprints:
    """Fingerprints of files and folders, each computed once; seeded with the recorded ones (`remember`).

    A file's fingerprint is ``{"sha256", "size", "mtime_ns"}``; a folder's ``{"files", "bytes",
    "sha256"}`` (the SHA-256 of its sorted ``relative/name<TAB>size`` lines, hidden files left out);
    a missing path's is None.
    """

    def __init__(self) -> None:
        self._known: dict[str, dict[str, Any]] = {}
        self._seen: dict[str, dict[str, Any] | None] = {}

    def remember(self, fps: Mapping[str, Any] | None) -> None:
        """Trust the SHA-256 of these recorded file fingerprints while size and mtime match."""
        for path, fp in (fps or {}).items():
            if isinstance(fp, dict) and "mtime_ns" in fp:
                self._known[path] = fp

    def forget(self, paths: Iterable[Path]) -> None:
        """Compute these again on the next call (a step has just written them)."""
        for path in paths:
            self._seen.pop(str(path), None)
            self._known.pop(str(path), None)

    def __call__(self, path: Path) -> dict[str, Any] | None:
        key = str(path)
        if key not in self._seen:
            self._seen[key] = self._compute(path)
        return self._seen[key]

    def _compute(self, path: Path) -> dict[str, Any] | None:
        try:
            st = path.stat()
        except OSError:
            return None
        if path.is_dir():
            lines, total = [], 0
            for root, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in files:
                    if name.startswith("."):
                        continue  # a killed writer's temporary file is not content
                    f = Path(root, name)
                    size = f.stat().st_size
                    total += size
                    lines.append(f"{f.relative_to(path).as_posix()}\t{size}\n")
            digest = hashlib.sha256("".join(sorted(lines)).encode()).hexdigest()
            return {"files": len(lines), "bytes": total, "sha256": digest}
        known = self._known.get(str(path))
        if known and known.get("size") == st.st_size and known.get("mtime_ns") == st.st_mtime_ns:
            return dict(known)
        return {"sha256": sha256_of(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _same(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
    """Two fingerprints are the same content (times left out)."""
    if a is None or b is None:
        return a is b
    return a.get("sha256") == b.get("sha256") and a.get("files") == b.get("files")


def command_key(step: Step) -> list[str] | None:
    """The step's command as recorded: without the interpreter, and without ``--resume``/``--overwrite``
    (how a training treats its run folder, not what it is made from)."""
    if step.command is None:
        return None
    return [str(c) for c in step.command[1:] if c not in ("--resume", "--overwrite")]


def _shown(path: Path | str) -> str:
    """A path as said in a reason: relative to the repository when under it."""
    p = Path(path)
    try:
        return p.resolve().relative_to(REPO).as_posix() if p.is_absolute() else p.as_posix()
    except ValueError:
        return p.as_posix()


@dataclass
class Identity:
    """What a step is made from now: command, config, input fingerprints and the project's version."""

    command: list[str] | None
    config: Any
    inputs: dict[str, dict[str, Any] | None]
    version: str

    def to_json(self) -> dict[str, Any]:
        return {"command": self.command, "config": self.config, "inputs": self.inputs, "version": self.version}


def identity(step: Step, fps: Fingerprints, version: str | None = None) -> Identity:
    """``step``'s `Identity`, its inputs fingerprinted now."""
    config = json.loads(json.dumps(step.config, default=str)) if step.config is not None else None
    return Identity(
        command_key(step),
        config,
        {str(path): fps(path) for path in step.inputs},
        version or project_version(),
    )


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict) and obj:
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: obj}


def _config_changes(old: Any, new: Any) -> list[str]:
    """``KEY OLD → NEW`` for each key that differs (``(unset)`` where one side lacks it)."""
    a, b = _flatten(old or {}), _flatten(new or {})

    def show(d: dict[str, Any], key: str) -> str:
        return json.dumps(d[key]) if key in d else "(unset)"

    return [f"{k} {show(a, k)} → {show(b, k)}" for k in sorted(set(a) | set(b)) if show(a, k) != show(b, k)]


def _pairs(argv: Sequence[str]) -> list[tuple[str, str]]:
    """A command line as ``(flag, value)`` pairs (``("", word)`` before the first flag)."""
    out: list[tuple[str, str]] = []
    for word in argv:
        if word.startswith("--"):
            out.append((word, ""))
        elif out and out[-1][0]:
            out[-1] = (out[-1][0], f"{out[-1][1]} {word}".strip())
        else:
            out.append(("", word))
    return out


def _command_changes(old: Sequence[str], new: Sequence[str]) -> list[str]:
    """What differs between two command lines: ``--size 64 → 128``, ``--set KEY=VALUE added``."""
    a, b = _pairs(old), _pairs(new)
    out: list[str] = []
    flags_a, flags_b = [f for f, _ in a], [f for f, _ in b]
    for flag, value in b:
        if (flag, value) in a:
            continue
        if flag and flags_a.count(flag) == 1 and flags_b.count(flag) == 1:
            out.append(f"command: {flag} {dict(a)[flag]} → {value}")
        else:
            out.append(f"command: {flag} {value} added".replace("  ", " ").strip())
    for flag, value in a:
        if (flag, value) not in b and not (flag and flags_a.count(flag) == 1 and flags_b.count(flag) == 1):
            out.append(f"command: {flag} {value} removed".replace("  ", " ").strip())
    return out or ["command changed"]


def changes(step: Step, now: Identity, rec: Mapping[str, Any]) -> list[str]:
    """Why ``step``'s record ``rec`` is not what it is made from ``now`` (empty: the same)."""
    out: list[str] = []
    if rec.get("config") != now.config:
        where = f"{_shown(step.source)} " if step.source else "config "
        out += [where + d for d in _config_changes(rec.get("config"), now.config)] or [where + "changed"]
    if rec.get("command") != now.command:
        out += _command_changes(rec.get("command") or [], now.command or [])
    old_inputs = rec.get("inputs") or {}
    for path, fp in now.inputs.items():
        if path not in old_inputs:
            out.append(f"new input {_shown(path)}")
        elif not _same(old_inputs[path], fp):
            out.append(f"input {_shown(path)} {'is missing' if fp is None else 'changed'}")
    out += [f"input {_shown(path)} no longer read" for path in old_inputs if path not in now.inputs]
    if rec.get("version") != now.version:
        out.append(f"project version {rec.get('version')} → {now.version}")
    return out


def own_status(p: Pipeline, step: Step, fps: Fingerprints) -> tuple[str, str, dict[str, Any] | None]:
    """``step``'s status from its own record alone (not its upstream steps'): status, reason, record.

    Raises:
        OSError: if an input cannot be read.
    """
    rec = read_record(p, step.name)
    outputs_exist = all(o.exists() for o in step.outputs)
    if rec is None:
        if outputs_exist:
            return STATUS_STALE, "its outputs exist but no record says what made them", None
        return STATUS_MISSING, "never run", None
    fps.remember(rec.get("inputs"))
    fps.remember(rec.get("outputs"))
    now = identity(step, fps)
    diffs = changes(step, now, rec)
    state = rec.get("state")
    if state in (STARTED, FAILED):
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(rec.get("start", 0)))
        what = "failed" if state == FAILED else "interrupted"
        head = f"{what} (started {when} on {rec.get('host', '?')})"
        if diffs:
            return STATUS_STALE, f"{head}; since then {diffs[0]}", rec
        return STATUS_STALE, head, rec
    if diffs:
        more = f" (+{len(diffs) - 1} more)" if len(diffs) > 1 else ""
        return STATUS_STALE, diffs[0] + more, rec
    for path, fp in (rec.get("outputs") or {}).items():
        if not _same(fp, fps(Path(path))):
            gone = fps(Path(path)) is None
            return STATUS_STALE, f"output {_shown(path)} {'is missing' if gone else 'changed since it was written'}", rec
    if not outputs_exist:  # an output the record does not list (an older record)
        missing = next(o for o in step.outputs if not o.exists())
        return STATUS_STALE, f"output {_shown(missing)} is missing", rec
    return STATUS_DONE, f"done {time.strftime('%Y-%m-%d %H:%M', time.localtime(rec.get('end', 0)))}, nothing changed", rec


def resumable(rec: Mapping[str, Any] | None, now: Identity) -> bool:
    """Whether a step whose last record is ``rec`` was interrupted (or failed) with the inputs of ``now``."""
    return bool(rec) and rec.get("state") in (STARTED, FAILED) and not changes_in_identity(rec, now)


def changes_in_identity(rec: Mapping[str, Any], now: Identity) -> bool:
    """Whether ``rec`` was made from something other than ``now`` (input times left out)."""
    if rec.get("command") != now.command or rec.get("config") != now.config or rec.get("version") != now.version:
        return True
    old = rec.get("inputs") or {}
    return set(old) != set(now.inputs) or any(not _same(old[k], v) for k, v in now.inputs.items())


def statuses(
    p: Pipeline, steps: Sequence[Step], force: Sequence[str] | bool = False, fps: Fingerprints | None = None
) -> list[tuple[Step, str, str]]:
    """Each step's status (``done``, ``stale`` or ``missing``) and why, with upstream re-runs carried down.

    Args:
        p: the pipeline.
        steps: its steps, in plan order (`pipeline.plan.plan`).
        force: steps to count as stale (True: all), named as ``python -m pipeline run --force`` names them.
        fps: the fingerprint cache to use.

    Raises:
        OSError: if an input cannot be read.
    """
    from pipeline.plan import matches

    fps = fps or Fingerprints()
    out: list[tuple[Step, str, str]] = []
    rerun: dict[str, bool] = {}
    for step in steps:
        status, reason, _ = own_status(p, step, fps)
        forced = force is True or (not isinstance(force, bool) and matches(step.name, force))
        if forced:
            status, reason = (STATUS_STALE if status != STATUS_MISSING else status), "forced (--force)"
        elif status == STATUS_DONE:
            up = [d for d in step.deps if rerun.get(d)]
            if up:
                status, reason = STATUS_STALE, f"upstream {up[0]} re-runs" + (f" (+{len(up) - 1} more)" if len(up) > 1 else "")
        rerun[step.name] = status != STATUS_DONE
        out.append((step, status, reason))
    return out


def started_record(step: Step, now: Identity, reason: str) -> dict[str, Any]:
    """The record written just before ``step`` runs."""
    return {
        "step": step.name, "state": STARTED, **now.to_json(), "reason": reason,
        "start": time.time(), "host": socket.gethostname(), "pid": os.getpid(),
    }  # fmt: skip


def write_record(p: Pipeline, rec: Mapping[str, Any]) -> Path:
    """Write a step's record atomically (``WORK_DIR/steps/STEP.json``)."""
    return write_json(record_path(p, rec["step"]), dict(rec), indent=1)


def finished_record(
    step: Step, started: Mapping[str, Any], fps: Fingerprints, start: float, end: float, host: str, pid: int
) -> dict[str, Any]:
    """The record of ``step`` once its outputs are written: ``started`` plus times, place and outputs."""
    fps.forget(step.outputs)
    outputs = {str(o): fps(o) for o in step.outputs}
    return {**started, "state": DONE, "start": start, "end": end, "seconds": round(end - start, 3),
            "host": host, "pid": pid, "outputs": outputs}  # fmt: skip
