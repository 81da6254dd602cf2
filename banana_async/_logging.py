"""``BANANA_LOG``: switch the ``banana_async`` logger's output on without code.

Read once, when the package is imported. With ``BANANA_LOG=info`` (or
``debug``, ``warning``, ``error``) a handler writing one line per record to
standard error is added to the ``banana_async`` logger, and the logger's
level is set; unset or empty, nothing is touched (the library's records then
go wherever the application's logging configuration sends them).

What each level records is listed in ``docs/logging.md``. No record carries
the API key: it travels only in a header that is never logged, and every
error message is redacted before it can reach a record.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Mapping
from typing import Final

__all__ = [
    "LOG_ENV",
    "LOG_FORMAT",
    "RAISED_LATER",
    "env_handler",
    "install_from_env",
    "level_from_env",
]

LOG_ENV: Final = "BANANA_LOG"
"""The environment variable read at import: ``debug``, ``info``, ``warning`` or ``error``."""

LOG_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"
"""The format of the lines the handler writes."""

RAISED_LATER: Final = "banana_async_raised_later"
"""A record attribute (set through ``extra``): the caller gets the same failure as an exception.

The command line, which prints that exception as its one ``error:`` line,
leaves such records out of its plain (not ``-v``) output.
"""

_LEVELS: Final = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}

# Control characters other than tab: provider text in a record must not
# drive the terminal (move the cursor, clear the screen).
_CONTROL: Final = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")

_installed: logging.Handler | None = None


class StderrHandler(logging.Handler):
    """Writes each record as one escaped line to whatever ``sys.stderr`` is at the time.

    Looking ``sys.stderr`` up on every record (not once) keeps up with a
    progress bar or a test capture that replaces it.
    """

    def emit(self, record: logging.LogRecord) -> None:
        """Write the record, escaped, on one line."""
        try:
            text = self.format(record)
            if not text.isascii():
                text = text.encode("utf-8", "backslashreplace").decode("utf-8")
            sys.stderr.write(_CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text) + "\n")
        except Exception:  # logging must never break the caller
            self.handleError(record)


def level_from_env(environ: Mapping[str, str] | None = None) -> int | None:
    """The level ``BANANA_LOG`` asks for, or None when it is unset or empty.

    A value that names no level (``1``, ``yes``) means ``info``: whoever set
    it wants to see something.
    """
    value = (os.environ if environ is None else environ).get(LOG_ENV, "").strip().lower()
    if not value:
        return None
    return _LEVELS.get(value, logging.INFO)


def install_from_env(environ: Mapping[str, str] | None = None) -> logging.Handler | None:
    """Add the stderr handler and set the level if ``BANANA_LOG`` asks for it (once).

    Returns:
        The handler added (or added before), or None when the variable is unset.
    """
    global _installed  # noqa: PLW0603 - one handler per process, whoever asks
    level = level_from_env(environ)
    if level is None:
        return _installed
    logger = logging.getLogger("banana_async")
    logger.setLevel(level)
    if _installed is None:
        handler = StderrHandler()
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        logger.addHandler(handler)
        _installed = handler
    return _installed


def env_handler() -> logging.Handler | None:
    """The handler ``BANANA_LOG`` added, if it did."""
    return _installed
