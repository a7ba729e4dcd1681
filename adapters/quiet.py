"""The frameworks' own chatter goes to a log file, not the console.

Ultralytics prints its argument dump and layer table, MMEngine its environment and config,
Detectron2 and torch their deprecation warnings. While a training or a prediction runs inside
`framework_output`, everything the frameworks write to ``sys.stdout``/``sys.stderr``, their
loggers and Python warnings go to one log file (``RUN_DIR/train.log``, ``OUT.log`` beside a
prediction), with ANSI colour codes stripped; with ``echo`` (``-v``) they are shown on the
console too, coloured only where the console is a terminal. CXRFuse's own log records and
progress bars are not affected: they keep the console streams of the caller.

Nothing here imports a framework.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, TextIO

from core.io import atomic_open

#: the loggers of the frameworks (and their helpers) whose console handlers are redirected
FRAMEWORK_LOGGERS: tuple[str, ...] = (
    "ultralytics",
    "mmengine",
    "mmdet",
    "mmcv",
    "detectron2",
    "d2",
    "fvcore",
    "iopath",
    "torch",
    "py.warnings",
)

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")


def strip_ansi(text: str) -> str:
    """``text`` without ANSI escape sequences (colours, cursor moves)."""
    return _ANSI.sub("", text)


class _Tee(io.TextIOBase):
    """A text stream writing to the log file (colour stripped) and, when echoing, to the console."""

    def __init__(self, log: TextIO, console: TextIO | None) -> None:
        self._log = log
        self._console = console
        self._colour = bool(console is not None and getattr(console, "isatty", lambda: False)())

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if not self._log.closed:  # a framework logger made inside the block may outlive it
            # a progress bar's carriage returns become new lines in a file
            self._log.write(strip_ansi(text).replace("\r", "\n") if "\r" in text else strip_ansi(text))
        if self._console is not None:
            self._console.write(text if self._colour else strip_ansi(text))
        return len(text)

    def flush(self) -> None:
        if not self._log.closed:
            self._log.flush()
        if self._console is not None:
            self._console.flush()

    def isatty(self) -> bool:
        return False  # the frameworks see a file: no colour, no in-place bars

    def fileno(self) -> int:  # some libraries ask; the log file's descriptor is the honest answer
        if self._log.closed:
            raise OSError("the framework log is closed")
        return self._log.fileno()


@contextlib.contextmanager
def framework_output(log_path: str | Path, echo: bool = False, held: bool = False) -> Iterator[Path]:
    """Route what the frameworks print, log and warn to ``log_path`` while the block runs.

    Args:
        log_path: the log file (appended to, so a resumed run keeps its first part).
        echo: also show it on the console (``-v``).
        held: keep the output in memory and write it to ``log_path`` at the end, in place of
            an earlier one, only if its folder exists by then (a prediction that failed before
            writing anything leaves no folder behind; a re-run's log replaces the last one's).

    Yields:
        ``log_path``.
    """
    global _console
    log_path = Path(log_path)
    if not held:
        log_path.parent.mkdir(parents=True, exist_ok=True)
    outer = _console
    _console = sys.stderr
    opened = io.StringIO() if held else open(log_path, "a", encoding="utf-8", buffering=1)
    with _held(opened, log_path) if held else opened as log:
        out = _Tee(log, sys.__stdout__ if echo else None)
        err = _Tee(log, sys.__stderr__ if echo else None)
        handler = logging.StreamHandler(err)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        outer_out, outer_err = sys.stdout, sys.stderr
        swapped: dict[int, logging.Handler] = {}  # id(handler in the block) → the original
        levels = {}  # the frameworks' progress (INFO) belongs in the log, whatever the process set before
        for name in FRAMEWORK_LOGGERS:
            lg = logging.getLogger(name)
            if name not in ("torch", "py.warnings") and lg.getEffectiveLevel() > logging.INFO:
                levels[name] = lg.level
                lg.setLevel(logging.INFO)
            new_handlers = []
            for h in lg.handlers:
                r = _redirected(h, out, err)
                swapped[id(r)] = h
                new_handlers.append(r)
            lg.handlers[:] = new_handlers  # a logger without handlers propagates to the root's, below
        root = logging.getLogger()
        root_handlers = root.handlers[:]
        root.handlers[:] = [handler]

        def show(message: Any, category: type, filename: str, lineno: int, file: IO | None = None, line: Any = None):
            err.write(warnings.formatwarning(message, category, filename, lineno, line))

        with warnings.catch_warnings(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            warnings.simplefilter("default")
            warnings.showwarning = show
            try:
                yield log_path
            finally:
                root.handlers[:] = root_handlers
                for name, level in levels.items():
                    logging.getLogger(name).setLevel(level)
                for name in FRAMEWORK_LOGGERS:
                    lg = logging.getLogger(name)
                    kept: list[logging.Handler] = []
                    for h in lg.handlers:
                        if id(h) in swapped:
                            kept.append(swapped[id(h)])
                        elif isinstance(h, logging.StreamHandler) and getattr(h, "stream", None) in (out, err):
                            # made during the block (a framework imported in it): point it at the console
                            kept.append(_copy(h, outer_out if h.stream is out else outer_err))
                        else:
                            kept.append(h)
                    lg.handlers[:] = kept
                out.flush()
                err.flush()
                _console = outer


@contextlib.contextmanager
def _held(buffer: io.StringIO, log_path: Path) -> Iterator[io.StringIO]:
    try:
        yield buffer
    finally:
        text = buffer.getvalue()
        if text and log_path.parent.is_dir():  # the prediction's log replaces an earlier run's, whole
            with atomic_open(log_path, "w", encoding="utf-8") as f:
                f.write(text)
        buffer.close()


def _redirected(handler: logging.Handler, out: TextIO, err: TextIO) -> logging.Handler:
    """A console handler of a framework pointed at the log streams; other handlers as they are."""
    if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
        # any stream but a file is a console, also one that was sys.stdout when the handler was
        # made and has been replaced since (a framework set up earlier in the same process)
        stream = getattr(handler, "stream", None)
        if stream in (sys.__stdout__, sys.stdout) or getattr(stream, "name", None) == "<stdout>":
            return _copy(handler, out)
        return _copy(handler, err)
    return handler


def _copy(handler: logging.StreamHandler, stream: TextIO) -> logging.Handler:
    new = logging.StreamHandler(stream)
    new.setLevel(handler.level)
    new.setFormatter(handler.formatter)
    for f in handler.filters:
        new.addFilter(f)
    return new


_console: TextIO | None = None


def progress(iterable: Any = None, **kw: Any) -> Any:
    """`core.cli.progress` on the console stream of the caller, also inside `framework_output`."""
    from core.cli import progress as bar

    if kw.pop("disable", None):  # e.g. the other ranks under torchrun
        from tqdm import tqdm

        return tqdm(iterable, disable=True, **kw)
    return bar(iterable, file=_console or sys.stderr, **kw)


def echo_enabled() -> bool:
    """Whether the CLI asked for detail (``-v``): then the frameworks' output is shown as well."""
    return logging.getLogger("adapters").isEnabledFor(logging.INFO)
