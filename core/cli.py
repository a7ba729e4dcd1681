"""What every ``python -m PACKAGE`` entry point shares: flags, logging, and one way to fail.

Each package's ``__main__.py`` builds an `argparse` parser, calls `add_common_flags`, and hands
its dispatch function to `run_cli`:

- a user error (`core.errors.UserError`, ``ValueError``, ``OSError``) ends in exit code 2 and one
  line ``error: MESSAGE`` on stderr; ``--debug`` shows the traceback instead;
- Ctrl-C ends in exit code 130 and ``interrupted``;
- library code logs with `logging` (``logging.getLogger(__name__)``); `run_cli` decides what is
  shown: warnings by default, INFO with ``-v``, DEBUG with ``-vv``; ``-q`` shows errors only.
  Progress bars (`progress`) show on a terminal only.

One list syntax (`add_list_option`): an option that takes several numbers or names takes them
separated by spaces, commas or both (``--weights 2 1`` = ``--weights 2,1``, ``--methods wbf nms`` =
``--methods wbf,nms``); repeating the option adds more values, or, for an option whose values are
sets (``ensemble sweep --weights``), another set (``--weights 2,1,1 --weights 1,2,1``). A bad value is
an error about the option (``argument --methods: 'wbx' is not one of wbf, nms, soft-nms, nmw``).
Options that take files take them separated by spaces only (a file name may hold a comma).
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import traceback
from collections.abc import Callable, Iterable
from typing import Any

#: exceptions that mean "the user must fix something": exit 2 with one line, no traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError)
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130

_PACKAGES = ("core", "fusion", "convert", "adapters", "ensemble", "eval", "pipeline", "infer")


def add_common_flags(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``-v``/``--verbose`` (repeatable), ``-q``/``--quiet`` and ``--debug`` to ``parser``.

    `run_cli` also gives them to every sub-command, so ``python -m X VERB ... --debug`` works too.
    """
    return _add_flags(parser, defaults=True)


def _add_flags(parser: argparse.ArgumentParser, defaults: bool) -> argparse.ArgumentParser:
    # on sub-commands the defaults are suppressed, so an absent flag keeps the top level's value
    kw = {} if defaults else {"default": argparse.SUPPRESS}
    g = parser.add_argument_group("output")
    g.add_argument("-v", "--verbose", action="count", help="more detail (-vv: debug)", **({"default": 0} | kw))
    g.add_argument("-q", "--quiet", action="store_true", help="errors only", **kw)
    g.add_argument("--debug", action="store_true", help="show the traceback of an error", **kw)
    return parser


def _share_flags(parser: argparse.ArgumentParser) -> None:
    """Give the common flags to every sub-command of ``parser`` that lacks them."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                if "--debug" not in sub._option_string_actions:
                    _add_flags(sub, defaults=False)
                _share_flags(sub)


def number(text: str) -> float:
    """A finite number.

    Raises:
        ValueError: ``'x' is not a number`` (or not a finite one).
    """
    try:
        v = float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number") from None
    if not math.isfinite(v):
        raise ValueError(f"{text!r} is not a finite number")
    return v


def split_values(
    tokens: Iterable[str], item: Callable[[str], Any] = str, allowed: Iterable[Any] | None = None
) -> tuple[Any, ...]:
    """The values of command-line tokens separated by spaces (one token each) or commas.

    Args:
        tokens: the words given to one option (``["2,1", "3"]``).
        item: parses one value (e.g. `number`); its ``ValueError`` is the message.
        allowed: the only values accepted, or None for any.

    Returns:
        The values in order (``(2.0, 1.0, 3.0)``).

    Raises:
        ValueError: naming the first value that is empty, does not parse or is not allowed.
    """
    allowed = None if allowed is None else tuple(allowed)
    out: list[Any] = []
    for tok in tokens:
        for part in str(tok).split(","):
            part = part.strip()
            if not part:
                raise ValueError(f"empty value in {tok!r} (separate values by spaces or commas)")
            try:
                v = item(part)
            except (ValueError, TypeError, argparse.ArgumentTypeError) as e:
                raise ValueError(str(e) or f"{part!r} is not valid") from None
            if allowed is not None and v not in allowed:
                raise ValueError(f"{part!r} is not one of {', '.join(str(a) for a in allowed)}")
            out.append(v)
    return tuple(out)


class ListAction(argparse.Action):
    """Collects an option's values by `split_values`: a tuple, or with ``sets`` a tuple of tuples.

    The first use of the option replaces its default; a repeat adds values (or, with ``sets``,
    another set). Errors name the option.
    """

    def __init__(self, option_strings, dest, item=str, allowed=None, sets=False, **kw) -> None:
        kw.setdefault("nargs", "+")
        super().__init__(option_strings, dest, **kw)
        self.item, self.allowed, self.sets = item, allowed, sets

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        try:
            vals = split_values(values, self.item, self.allowed)
        except ValueError as e:
            raise argparse.ArgumentError(self, str(e)) from None
        current = getattr(namespace, self.dest, None)
        current = () if current is None or current is self.default else tuple(current)
        setattr(namespace, self.dest, (*current, vals) if self.sets else (*current, *vals))


def add_list_option(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    *flags: str,
    item: Callable[[str], Any] = str,
    allowed: Iterable[Any] | None = None,
    sets: bool = False,
    **kw: Any,
) -> argparse.Action:
    """Add an option that takes several values in the one list syntax (see the module docstring).

    Args:
        parser: the parser (or argument group) to add it to.
        flags: its flags (``"--methods"``).
        item: parses one value (`number` for numbers; default: the text).
        allowed: the only values accepted (listed in the error), or None.
        sets: each use of the option is one set of values (``--weights 2,1 --weights 1,2``).
        kw: passed to ``add_argument`` (``default``, ``help``, ``metavar``, ``required``, ...).

    Returns:
        The argparse action; the parsed value is a tuple (of tuples with ``sets``), or the default.
    """
    if allowed is not None:
        allowed = tuple(allowed)
        kw.setdefault("metavar", "{" + ",".join(str(a) for a in allowed) + "}")
    return parser.add_argument(*flags, action=ListAction, item=item, allowed=allowed, sets=sets, **kw)


def setup_logging(verbose: int = 0, quiet: bool = False) -> None:
    """Send CXRFuse's log records to stderr: WARNING by default, INFO with -v, DEBUG with -vv."""
    level = logging.ERROR if quiet else (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    for name in _PACKAGES:
        log = logging.getLogger(name)
        log.handlers[:] = [handler]
        log.setLevel(level)
        log.propagate = False


def one_line(error: BaseException) -> str:
    """The error's message on one line (a ``KeyError``'s quotes removed)."""
    text = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
    text = " ".join(part.strip() for part in text.splitlines() if part.strip())
    return text or type(error).__name__


def run_cli(
    parser: argparse.ArgumentParser,
    dispatch: Callable[[argparse.Namespace], int | None],
    argv: list[str] | None = None,
) -> int:
    """Parse ``argv``, set up logging, call ``dispatch(args)`` and turn its errors into exit codes.

    Returns:
        ``dispatch``'s return value (0 for None), 2 for a user error, 130 for Ctrl-C. Argument errors
        exit 2 through argparse itself.
    """
    if "--debug" not in parser._option_string_actions:
        add_common_flags(parser)
    _share_flags(parser)
    args = parser.parse_args(argv)
    setup_logging(getattr(args, "verbose", 0), getattr(args, "quiet", False))
    debug = getattr(args, "debug", False)
    try:
        rc = dispatch(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except USER_ERRORS as e:
        if debug:
            traceback.print_exc()
        print(f"error: {one_line(e)}", file=sys.stderr)
        return EXIT_USER_ERROR
    return 0 if rc is None else int(rc)


def progress(iterable: Iterable | None = None, **kw: Any):
    """A ``tqdm`` bar on stderr, shown only on a terminal (``disable=None``), cleared when done."""
    from tqdm import tqdm

    kw.setdefault("leave", False)
    return tqdm(iterable, disable=None, **kw)
