"""The ``banana-async`` command line: generate, batch, status, download, models, demo, gallery.

The API key comes from the ``BANANA_API_KEY`` environment variable only: a key
given as an option would end up in shell history and process listings.
Results go to standard output (one JSON object per line with ``--json``);
progress, warnings and errors go to standard error.

Exit codes are the members of :class:`ExitCode`: 0 everything succeeded,
1 some generation failed, 2 usage error (bad arguments, no API key),
3 the journal cannot be used, 130 interrupted by Ctrl-C.

The package: :mod:`~banana_async.cli.parser` (the options),
:mod:`~banana_async.cli.output` (printing), :mod:`~banana_async.cli.progress`,
:mod:`~banana_async.cli.prompt_file` (reading ``batch``'s FILE),
:mod:`~banana_async.cli.common` (what the commands share),
:mod:`~banana_async.cli.gallery` (the page of an output folder),
:mod:`~banana_async.cli.exit_codes`, and one module per command under
:mod:`~banana_async.cli.commands`, imported only when that command runs.
Only the names in ``__all__`` here are meant for use from Python.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Iterator, Sequence

from banana_async.cli import commands
from banana_async.cli.common import RunState
from banana_async.cli.exit_codes import ExitCode, exit_code_for
from banana_async.cli.output import (
    log_to_stderr,
    one_line,
    silence_stdout,
    to_stderr,
    warnings_as_lines,
)
from banana_async.cli.parser import BASE_URL_ENV, DIALECT_ENV, build_parser
from banana_async.dialects import get_dialect

__all__ = ["BASE_URL_ENV", "DIALECT_ENV", "ExitCode", "build_parser", "main"]


def _parse_exit_code(exc: SystemExit) -> int:
    """The exit code argparse asked for (``--help``, ``--version``, a usage error)."""
    if exc.code is None:
        return ExitCode.OK
    if isinstance(exc.code, int):
        return exc.code
    return ExitCode.USAGE


@contextlib.contextmanager
def _terminate_as_interrupt(state: RunState) -> Iterator[None]:
    """Make SIGTERM (a service manager, ``timeout``, ``kill``) stop the command as Ctrl-C does.

    The signal is handed on as SIGINT, whose handler (``asyncio.run``'s)
    cancels the command cleanly: a journal stays consistent, and the
    interruption message says what was in flight.
    """
    if not hasattr(signal, "SIGTERM") or sys.platform == "win32":
        yield
        return

    def terminate(signum: int, frame: object) -> None:
        state.terminated = True
        signal.raise_signal(signal.SIGINT)

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``banana-async`` command line; return the exit code.

    Args:
        argv: The arguments without the program name; default ``sys.argv[1:]``.

    Returns:
        The exit code, an :class:`ExitCode` (or argparse's own code for
        ``--help`` and usage errors, which are 0 and 2).
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return _parse_exit_code(exc)
    state = RunState()
    with log_to_stderr(args.verbose), warnings_as_lines():
        try:
            get_dialect(args.dialect)
            command = commands.load(args.command)
            with _terminate_as_interrupt(state):
                return asyncio.run(command(args, state))
        except KeyboardInterrupt:
            to_stderr(state.interrupted())
            return ExitCode.TERMINATED if state.terminated else ExitCode.INTERRUPTED
        except BrokenPipeError:
            silence_stdout()
            return ExitCode.FAILED
        except Exception as exc:
            code = exit_code_for(exc)
            if code is None:
                raise
            to_stderr(f"error: {one_line(exc)}")
            return code
