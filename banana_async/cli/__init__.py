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

import argparse
import asyncio
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
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
    """Stop the command cleanly on SIGTERM (a service manager, ``timeout``, ``kill``) or Ctrl-C.

    The first signal only asks the event loop to cancel the command: it
    unwinds (a journal stays consistent, the interruption message says what
    was in flight), and :meth:`run` raises :class:`asyncio.CancelledError`.
    No handler raises anything into whatever code the interpreter happens
    to run: ``timeout`` sends its signal twice (to the command, then to its
    process group), and ``asyncio.run``'s own SIGINT handler raised
    ``KeyboardInterrupt`` at the second one, sometimes inside the event
    loop's callbacks, losing a wake-up that the unwinding then waited for
    forever.

    More SIGTERMs change nothing (SIGKILL is the way past a stop that
    waits). A second Ctrl-C raises ``KeyboardInterrupt`` from a callback of
    the loop, which leaves :meth:`run` at once and the rest of the
    unwinding to ``asyncio.run``'s clean-up, which a third Ctrl-C cuts
    short. SIGTERM does not depend on SIGINT: a job started with ``&`` has
    SIGINT ignored, and it stays ignored. The handlers stay in place until
    :func:`main` returns, so a second signal never kills the process before
    its message is out.
    """

    def __init__(self, state: RunState) -> None:
        self._state = state
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[Any] | None = None
        self._cancelled = False
        self.interrupts = 0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> Self:
        if sys.platform != "win32":
            self._previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, self._on_sigterm)
            # Only in place of the default: an ignored SIGINT stays ignored,
            # and asyncio.run installs no handler of its own over this one.
            if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
                self._previous[signal.SIGINT] = signal.signal(signal.SIGINT, self._on_sigint)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)

    def _schedule(self, callback: Callable[[], None]) -> bool:
        """Have the running loop call ``callback``; False when no loop runs the command."""
        loop = self._loop
        if loop is None:
            return False
        try:
            # Thread-safe and signal-safe: appends to the loop's queue and
            # wakes it through its self-pipe, whatever it is doing.
            loop.call_soon_threadsafe(callback)
        except RuntimeError:  # the loop is closed
            return False
        return True

    def _on_sigterm(self, signum: int, frame: object) -> None:
        self._state.terminated = True
        self._schedule(self._cancel)  # without a loop, _guarded sees the flag

    def _on_sigint(self, signum: int, frame: object) -> None:
        self.interrupts += 1
        self._state.interrupts = self.interrupts
        if self._loop is None:
            raise KeyboardInterrupt  # the command has not started: no loop to break
        # With the loop closed, the command has ended: only its message is left.
        self._schedule(self._cancel if self.interrupts == 1 else self._interrupt)

    def _cancel(self) -> None:
        task = self._task
        if task is not None and not task.done() and not self._cancelled:
            self._cancelled = True  # once: a second cancel would only interrupt the unwinding
            task.cancel()

    @staticmethod
    def _interrupt() -> None:
        raise KeyboardInterrupt  # from a callback of its own: no other callback is cut

    async def _guarded(self, command: Coroutine[Any, Any, int]) -> int:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        if self._state.terminated:  # SIGTERM came before the loop ran
            command.close()
            raise asyncio.CancelledError
        return await command

    def run(self, command: Coroutine[Any, Any, int]) -> int:
        """Run ``command`` in a new event loop; SIGTERM and Ctrl-C cancel it.

        Raises:
            asyncio.CancelledError: SIGTERM or Ctrl-C stopped the command.
            KeyboardInterrupt: a second Ctrl-C cut the stop short.
        """
        return asyncio.run(self._guarded(command))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``banana-async`` command line; return the exit code.

    Args:
        argv: The arguments without the program name; default ``sys.argv[1:]``.
            Without it (the program itself), a command stopped by Ctrl-C or
            SIGTERM returns with both signals ignored: the process is about
            to exit, and a late second signal must not interrupt its shutdown.

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
        code = _command(args, state, termination)
    if argv is None and code in (ExitCode.INTERRUPTED, ExitCode.TERMINATED):
        # The program itself (argv read from sys.argv), stopped by a signal,
        # with its message out: the process exits now. One more Ctrl-C (a
        # double press, ``timeout -s INT``) must not land in the
        # interpreter's shutdown, where it printed a traceback.
        _ignore_stop_signals()
    return code


def _ignore_stop_signals() -> None:
    if sys.platform != "win32":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _command(args: argparse.Namespace, state: RunState, termination: _Termination) -> int:
    """Run the parsed command under ``termination``; its exit code."""
    try:
        get_dialect(args.dialect)
        command = commands.load(args.command)
        return termination.run(command(args, state))
    except (KeyboardInterrupt, asyncio.CancelledError) as exc:
        signalled = state.terminated or termination.interrupts > 0
        if isinstance(exc, asyncio.CancelledError) and not signalled:
            raise  # not a signal's: a bug, not an interruption
        # Still under the handlers: a second signal cannot kill the
        # process before the message is out.
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
