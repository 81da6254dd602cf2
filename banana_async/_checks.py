"""Checks that several layers share, written once.

This module sits below every other one and imports nothing from the
package: each check returns what it found (a reason, or the parsed value),
and its caller raises the error that suits its own layer.
"""

from __future__ import annotations

import math
from urllib.parse import SplitResult, urlsplit

HTTP_SCHEMES = frozenset({"http", "https"})


def split_http_url(url: str) -> SplitResult | str:
    """``url``'s parts when it is an http(s) URL with a host; else why it is not.

    The port is read too, so that a port out of range (or not a number)
    counts as a URL that cannot be parsed.

    Returns:
        The parts, or a short reason to follow "the URL ...".
    """
    try:
        parts = urlsplit(url)
        host = parts.hostname
        _ = parts.port  # raises for a port that is not a number in 0-65535
    except ValueError as exc:
        return f"cannot be parsed ({exc})"
    if parts.scheme.lower() not in HTTP_SCHEMES:
        return "is not an http(s) URL"
    if not host:
        return "has no host"
    return parts


def positive_number(text: str) -> float | str:
    """Read ``text`` as a finite number above zero: the number, or why it is not one.

    For options given as text (the command line, the fake provider's
    command): ``inf``, ``nan``, ``0`` and ``1e400`` are refused.
    """
    try:
        value = float(text)
    except ValueError:
        return f"not a number: {text!r}"
    if not (value > 0 and math.isfinite(value)):
        return f"must be a finite number above zero, not {text!r}"
    return value


def count_problem(value: object, name: str, *, minimum: int = 1) -> str | None:
    """Why ``value`` is not a whole number of at least ``minimum``; None when it is.

    ``True`` and ``False`` are refused although Python counts them as ints:
    nobody means a concurrency of ``True``.
    """
    if isinstance(value, int) and not isinstance(value, bool) and value >= minimum:
        return None
    what = "a positive integer" if minimum == 1 else f"an integer of at least {minimum}"
    if minimum == 0:
        what = "a non-negative integer"
    return f"{name} must be {what}, not {value!r}"


def error_text(error: BaseException) -> str:
    """An exception nobody foresaw, as it goes into a message: its type and its text."""
    return f"{type(error).__name__}: {error}"


def error_message(error: BaseException, *, one_line: bool = False) -> str:
    """An exception's own message, or its class name when it has none.

    For an error the reader expects (the journal's stored error, the CLI's
    ``error:`` line), where the type would only repeat what the message says.

    Args:
        error: The exception.
        one_line: Collapse every run of whitespace (newlines too) into one
            space, for output that is read line by line.
    """
    text = str(error)
    if one_line:
        text = " ".join(text.split())
    return text or type(error).__name__
