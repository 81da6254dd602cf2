"""Retry decisions: small pure functions beside the constants they use.

The client's retry loop asks :func:`should_retry_query` or
:func:`should_retry_create` whether to try again and :func:`retry_delay` how
long to wait; sleeping happens in the client through its injectable clock.
Exponential delays come from ``backoff``'s generators with full jitter.
"""

from __future__ import annotations

import math
import random
from collections.abc import Generator, Mapping
from email.utils import parsedate_to_datetime
from typing import Any

import backoff

from banana_async.errors import (
    APIConnectionError,
    APIStatusError,
    BananaError,
    RateLimitError,
    ResponseValidationError,
)

DEFAULT_MAX_RETRIES = 3
"""Retries after the first attempt of one request (so 4 attempts at most)."""

INITIAL_RETRY_DELAY = 0.5
"""Seconds before the first retry, before jitter."""

MAX_RETRY_DELAY = 8.0
"""Cap of the exponential delay, before jitter."""

MAX_RETRY_AFTER = 60.0
"""Cap on a provider's Retry-After: a bogus header must not park a task for hours."""

RETRYABLE_STATUSES = frozenset({408, 429})
"""Statuses worth a retry besides every 5xx."""


def parse_retry_after(value: str | None, *, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date).

    Args:
        value: The header value, or None.
        now: The current Unix time, for the HTTP-date form.

    Returns:
        Non-negative seconds, uncapped, or None when absent or unreadable.
    """
    if value is None:
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # RFC 9110 dates are GMT
            return None
        seconds = when.timestamp() - now
    if math.isnan(seconds):
        return None
    return max(0.0, seconds)


def _is_transient_status(status: int) -> bool:
    return status in RETRYABLE_STATUSES or 500 <= status <= 599


def should_retry_query(error: BananaError) -> bool:
    """Whether a failed status query may be sent again (queries are idempotent)."""
    if isinstance(error, APIConnectionError):
        return True
    if isinstance(error, APIStatusError):
        return _is_transient_status(error.status_code)
    return False


def should_retry_create(error: BananaError) -> bool:
    """Whether a failed create may be sent again without risking a second task.

    The provider bills every task and has no idempotency key, so only failures
    that prove the request was not processed qualify: a connection that was
    never established, or a 429 (rejected before any work).
    """
    if isinstance(error, APIConnectionError):
        return not error.request_sent
    return isinstance(error, RateLimitError)


def is_transient(error: BananaError) -> bool:
    """Whether an error while waiting on a task should only delay the next poll.

    A body that does not read as a task is included: a proxy's error page
    answered with 200 should not end a wait that the next poll may finish.
    """
    return should_retry_query(error) or isinstance(error, ResponseValidationError)


def requested_delay(error: BananaError) -> float | None:
    """The wait the provider asked for with this error, capped, if it asked."""
    if isinstance(error, APIStatusError) and error.retry_after is not None:
        return min(error.retry_after, MAX_RETRY_AFTER)
    return None


def _exponential_delays() -> Generator[float, Any, None]:
    gen: Generator[float, Any, None] = backoff.expo(
        base=2, factor=INITIAL_RETRY_DELAY, max_value=MAX_RETRY_DELAY
    )
    gen.send(None)  # backoff's generators are primed with one empty send
    return gen


def retry_delay(
    attempt: int,
    error: BananaError,
    *,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait before retry number ``attempt`` (1 for the first retry).

    A provider's Retry-After wins (capped, no jitter: it is an instruction);
    otherwise the delay grows exponentially from :data:`INITIAL_RETRY_DELAY`
    to :data:`MAX_RETRY_DELAY` with full jitter, so that many clients hit by
    the same outage do not come back in step.
    """
    asked = requested_delay(error)
    if asked is not None:
        return asked
    delays = _exponential_delays()
    for _ in range(max(1, attempt) - 1):
        next(delays)
    ceiling = next(delays)
    if rng is None:
        return float(backoff.full_jitter(ceiling))
    return rng.uniform(0.0, ceiling)


def retry_after_from_headers(headers: Mapping[str, str], *, now: float) -> float | None:
    """Read ``Retry-After`` from response headers (case-insensitive mapping)."""
    return parse_retry_after(headers.get("Retry-After"), now=now)
