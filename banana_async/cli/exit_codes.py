"""The exit codes of ``banana-async``, and the one place that maps an error to one."""

from __future__ import annotations

import enum
import sqlite3
from typing import Final

from banana_async.errors import BananaError, InvalidRequestError, JournalError, SharedBudgetError

__all__ = ["ExitCode", "exit_code_for"]


class ExitCode(enum.IntEnum):
    """What the exit status of ``banana-async`` means.

    The values are part of the command's contract: scripts test them. A new
    member takes a new value; an existing value never changes meaning.
    """

    OK = 0
    """Everything succeeded; for ``status``, the query succeeded."""

    FAILED = 1
    """A task, a download, an input of a batch, or the API failed."""

    USAGE = 2
    """Bad options, no API key, an unknown model, a missing file or an unreachable shared budget."""

    JOURNAL = 3
    """The batch's journal cannot be used (damaged, another batch's, or in use) or failed."""

    INTERRUPTED = 130
    """Interrupted by Ctrl-C (128 + SIGINT, as shells report it)."""

    TERMINATED = 143
    """Stopped by SIGTERM (128 + SIGTERM), as cleanly as by Ctrl-C."""


# The single place that decides which error ends the command with which code.
# The first entry whose type matches wins, so a subclass goes before its base.
# JournalError is a BananaError: it goes first.
_ERROR_CODES: Final[tuple[tuple[type[BaseException], ExitCode], ...]] = (
    (JournalError, ExitCode.JOURNAL),
    (InvalidRequestError, ExitCode.USAGE),
    (SharedBudgetError, ExitCode.USAGE),  # a --rate-limit-url that does not work
    (BananaError, ExitCode.FAILED),
    (OSError, ExitCode.FAILED),
    (sqlite3.Error, ExitCode.FAILED),
)


def exit_code_for(error: BaseException) -> ExitCode | None:
    """The exit code for an error that ends a command, or None for an unexpected one.

    Args:
        error: What the command raised.

    Returns:
        The code to exit with after printing the error as one line; None for
        an error the command does not expect, which should propagate (a bug).
    """
    for kind, code in _ERROR_CODES:
        if isinstance(error, kind):
            return code
    return None
