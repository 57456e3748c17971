"""One vocabulary, one logging setup and one error policy for every command-line entry point.

Every CLI builds its parser from the parent parsers here, so the same flag means the same thing everywhere:
``--data-root`` (dataset root), ``--out`` (always a folder), ``--plates`` (comma-separated barcodes),
``--num-workers``, ``--overwrite``, ``--no-progress``, ``--debug``. ``run_main`` applies the error policy: bad input
(:class:`UsageError`, a missing file, a bad value, an existing output) prints one line ``error: ...`` naming the
culprit and exits with status 2; an unexpected exception does the same with status 1; ``--debug`` shows tracebacks.

This module imports only the standard library, so every CLI's ``--help`` and bad-input path is fast.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Callable, Sequence

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_DATEFMT = "%H:%M:%S"

# Exceptions that mean "the input is wrong": reported in one line, exit 2. Everything else is a bug or an
# environment failure: one line too, exit 1, and a traceback with --debug.
BAD_INPUT_EXCEPTIONS: tuple[type[BaseException], ...] = (
    FileNotFoundError,
    FileExistsError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
    ValueError,
    KeyError,
)


class UsageError(Exception):
    """Bad input that the user can fix; the message names the file, column, key or flag at fault."""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows ``(default: X)`` only for meaningful defaults and keeps the description's own line breaks."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or action.help is None:
            return action.help
        if action.default is argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


def comma_list(value: str) -> list[str]:
    """argparse type: ``"A,B, C"`` -> ``["A", "B", "C"]`` (empty items dropped).

    Args:
        value: the raw flag value.

    Returns:
        The stripped, non-empty items.
    """
    return [v.strip() for v in str(value).split(",") if v.strip()]


def positive_int(value: str) -> int:
    """argparse type for counts that must be >= 1.

    Args:
        value: the raw flag value.

    Returns:
        The integer.
    """
    try:
        out = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}") from None
    if out < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return out


def non_negative_int(value: str) -> int:
    """argparse type for counts that may be 0 (e.g. ``--num-workers 0`` = read in the main process).

    Args:
        value: the raw flag value.

    Returns:
        The integer.
    """
    try:
        out = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value!r}") from None
    if out < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value!r}")
    return out


def fraction(value: str) -> float:
    """argparse type for fractions in [0, 1].

    Args:
        value: the raw flag value.

    Returns:
        The float.
    """
    try:
        out = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1], got {value!r}") from None
    if not 0.0 <= out <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1], got {value!r}")
    return out


def common_parser() -> argparse.ArgumentParser:
    """Flags every CLI has: ``--debug`` and ``--no-progress``.

    Returns:
        A parent parser (``add_help=False``).
    """
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("general")
    g.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")
    g.add_argument("--no-progress", action="store_true", help="no progress bars (e.g. in batch logs)")
    return p


def data_parser(required: bool = True, plates_help: str | None = None) -> argparse.ArgumentParser:
    """``--data-root`` and ``--plates``.

    Args:
        required: whether ``--data-root`` is required.
        plates_help: help text of ``--plates`` (default: all plates under the root).

    Returns:
        A parent parser.
    """
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("data")
    g.add_argument(
        "--data-root",
        required=required,
        metavar="DIR",
        help="dataset root: Cell Painting Gallery layout (LoadData CSVs / Phenix folders) or a prepared store",
    )
    g.add_argument(
        "--plates",
        type=comma_list,
        default=None,
        metavar="A,B,...",
        help=plates_help or "comma-separated plate barcodes (default: every plate under --data-root)",
    )
    return p


def output_parser(required: bool = True, help: str = "output folder") -> argparse.ArgumentParser:
    """``--out`` (always a folder) and ``--overwrite``.

    Args:
        required: whether ``--out`` is required.
        help: help text of ``--out``.

    Returns:
        A parent parser.
    """
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("output")
    g.add_argument("--out", required=required, metavar="DIR", help=help)
    g.add_argument("--overwrite", action="store_true", help="replace existing outputs instead of refusing")
    return p


def workers_parser(default: int | None = None) -> argparse.ArgumentParser:
    """``--num-workers``.

    Args:
        default: default worker count (None: the CLI chooses, e.g. from the CPU count).

    Returns:
        A parent parser.
    """
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument(
        "--num-workers",
        type=non_negative_int,
        default=default,
        metavar="N",
        help="worker processes (0: work in the main process)",
    )
    return p


class ConsoleHandler(logging.StreamHandler):
    """The CLIs' console handler (stderr): each record once on the console, also after upstream attaches its own.

    Training hands logging to upstream: ``dinov2.utils.config.default_setup`` attaches handlers to the root logger, a
    console one (stdout) on the main process and ``<output-dir>/logs/log.txt`` on every process, and two console
    handlers printed every line twice. This handler mutes any other handler on the root logger that writes to the
    console and prints the record itself: logs stay on stderr in one format, stdout keeps only a command's result,
    and every process (each torchrun rank) prints its own records, as before.
    """

    def emit(self, record: logging.LogRecord) -> None:
        """Mutes the root logger's other console handlers, then writes the record.

        Args:
            record: the log record.
        """
        for handler in logging.getLogger().handlers:
            if handler is not self and _writes_to_console(handler) and _mute not in handler.filters:
                handler.addFilter(_mute)
        super().emit(record)


def _writes_to_console(handler: logging.Handler) -> bool:
    stream = getattr(handler, "stream", None)
    return stream is not None and stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)


def _mute(record: logging.LogRecord) -> bool:
    return False  # a filter that drops every record (the ConsoleHandler prints it)


def setup_logging(debug: bool = False) -> None:
    """One logging format for every CLI (INFO, or DEBUG with ``--debug``), on stderr, each line once.

    Replaces any handler already on the root logger. Handlers attached later (upstream's training setup) do not
    print a line a second time: see :class:`ConsoleHandler`.

    Args:
        debug: log at DEBUG level.
    """
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format=LOG_FORMAT,
        datefmt=LOG_DATEFMT,
        handlers=[ConsoleHandler(sys.stderr)],
        force=True,
    )


def _message(exc: BaseException) -> str:
    if isinstance(exc, KeyError) and exc.args:
        return str(exc.args[0])
    if isinstance(exc, OSError) and exc.filename and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    text = str(exc).strip()
    return text or type(exc).__name__


def run_main(
    main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None, prog: str = ""
) -> int:
    """Run a CLI ``main(argv)`` under the project's error policy.

    Args:
        main: the CLI's main; it parses ``argv`` itself.
        argv: arguments (default ``sys.argv[1:]``).
        prog: program name for the ``error:`` line (default: the script name).

    Returns:
        The exit status: main's return value (0 if None), 2 for bad input, 1 for any other failure, 130 on Ctrl-C.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("DINOV2_CELL_DEBUG") == "1"
    name = prog or os.path.basename(sys.argv[0] or "dinov2_cell")
    try:
        status = main(argv)
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return 130
    except SystemExit as e:  # argparse errors (status 2) and explicit exits pass through unchanged
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except (UsageError, *BAD_INPUT_EXCEPTIONS) as e:
        if debug:
            raise
        print(f"{name}: error: {_message(e)}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001  (the policy: one line unless --debug)
        if debug:
            raise
        print(f"{name}: error: {type(e).__name__}: {_message(e)} (run with --debug for the traceback)", file=sys.stderr)
        return 1
    return 0 if status is None else int(status)


def add_legacy_aliases(parser: argparse.ArgumentParser, root: bool = False, workers: bool = False) -> None:
    """Hidden old spellings kept for one release: ``--root`` (= ``--data-root``), ``--workers`` (= ``--num-workers``).

    Args:
        parser: the CLI's parser (already holding the new flags).
        root: add ``--root``.
        workers: add ``--workers``.
    """
    if root:
        parser.add_argument("--root", dest="data_root", help=argparse.SUPPRESS)
    if workers:
        parser.add_argument("--workers", dest="num_workers", type=non_negative_int, help=argparse.SUPPRESS)


def rename_flags(argv: Sequence[str], renames: dict[str, str]) -> list[str]:
    """Old flag spellings rewritten to the new ones before parsing (``--root X``/``--root=X`` -> ``--data-root X``).

    Used where the new flag is required: argparse would not count a separate hidden alias as giving it.

    Args:
        argv: the command line.
        renames: old spelling -> new spelling.

    Returns:
        The rewritten command line.
    """
    out = []
    for a in argv:
        name, eq, value = a.partition("=")
        out.append(renames[name] + eq + value if a.startswith("--") and name in renames else a)
    return out


def join_space_separated(argv: Sequence[str], flag: str = "--plates") -> list[str]:
    """Old spelling ``--plates A B C`` -> ``--plates A,B,C`` (values up to the next ``-`` token are joined).

    Args:
        argv: the command line.
        flag: the list-valued flag.

    Returns:
        The rewritten command line.
    """
    argv, out, i = list(argv), [], 0
    while i < len(argv):
        out.append(argv[i])
        if argv[i] == flag:
            values = []
            i += 1
            while i < len(argv) and not argv[i].startswith("-"):
                values.append(argv[i])
                i += 1
            if values:
                out.append(",".join(values))
            continue
        i += 1
    return out
