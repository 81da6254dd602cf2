"""The ``banana-async`` command line: generate, batch, status, download, models, demo, gallery.

The API key comes from the ``BANANA_API_KEY`` environment variable only: a key
given as an option would end up in shell history and process listings.
Results go to standard output (one JSON object per line with ``--json``);
progress, warnings and errors go to standard error.

Exit codes are the members of :class:`ExitCode`: 0 everything succeeded,
1 some generation failed, 2 usage error (bad arguments, no API key),
3 the journal cannot be used, 130 interrupted by Ctrl-C, 143 stopped by SIGTERM.

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
from collections.abc import Coroutine, Sequence
from typing import Any, Self

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


class _Termination:
    """Make SIGTERM (a service manager, ``timeout``, ``kill``) stop the command as Ctrl-C does.

    The handler only asks the event loop to cancel the command, once: the
    command unwinds as after Ctrl-C (a journal stays consistent, the
    interruption message says what was in flight), and :meth:`run` raises
    :class:`asyncio.CancelledError`. It does not go through SIGINT: a job
    started with ``&`` has SIGINT ignored, and that must not make it deaf
    to SIGTERM (the ignored SIGINT stays ignored). And it raises nothing
    itself: ``timeout`` sends SIGTERM twice (to the command, then to its
    process group), and an exception raised by a signal handler lands
    wherever the interpreter happens to be, possibly inside the event
    loop's own callbacks, where it loses a wake-up that the unwinding
    waits for forever. The handler stays in place until :func:`main`
    returns, so a second SIGTERM is never the default one that kills the
    process without its message.
    """

    def __init__(self, state: RunState) -> None:
        self._state = state
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[Any] | None = None
        self._cancelled = False
        self._previous: Any = None

    def __enter__(self) -> Self:
        if sys.platform != "win32":
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if sys.platform != "win32":
            signal.signal(signal.SIGTERM, self._previous)

    def _on_sigterm(self, signum: int, frame: object) -> None:
        self._state.terminated = True
        loop = self._loop
        if loop is not None:
            # Thread-safe and signal-safe: appends to the loop's queue and
            # wakes it through its self-pipe, whatever it is doing.
            with contextlib.suppress(RuntimeError):  # the loop is closed: all is done
                loop.call_soon_threadsafe(self._cancel)

    def _cancel(self) -> None:
        task = self._task
        if task is not None and not task.done() and not self._cancelled:
            self._cancelled = True  # once: a second cancel would only interrupt the unwinding
            task.cancel()

    async def _guarded(self, command: Coroutine[Any, Any, int]) -> int:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        if self._state.terminated:  # SIGTERM came before the loop ran
            command.close()
            raise asyncio.CancelledError
        return await command

    def run(self, command: Coroutine[Any, Any, int]) -> int:
        """Run ``command`` in a new event loop; SIGTERM cancels it.

        Raises:
            asyncio.CancelledError: SIGTERM stopped the command.
            KeyboardInterrupt: Ctrl-C stopped it.
        """
        return asyncio.run(self._guarded(command))


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
    with log_to_stderr(args.verbose), warnings_as_lines(), _Termination(state) as termination:
        try:
            get_dialect(args.dialect)
            command = commands.load(args.command)
            return termination.run(command(args, state))
        except (KeyboardInterrupt, asyncio.CancelledError) as exc:
            if isinstance(exc, asyncio.CancelledError) and not state.terminated:
                raise  # not SIGTERM's: a bug, not an interruption
            # Still under the SIGTERM handler: a second SIGTERM cannot kill
            # the process before the message is out.
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
